"""Networks of dubcam and the one factory that loads a generator from a file.

``engine.models.load(path)`` returns the right generator for any supported
checkpoint (ours or Wav2Lip's), with its :class:`GeneratorInfo` attached as
``model.info``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class GeneratorInfo:
    """What the streaming pipeline must know about a generator.

    kind: ``"dubcam"`` (Yaman et al. 2024 generator) or ``"wav2lip"``.
    size: face crop side S in pixels; the model maps ``[N,6,S,S]`` → ``[N,3,S,S]``.
    mel_offset_s: start of the 0.2 s mel window relative to the frame's
        timestamp, in seconds: -0.1 for a window centred on the frame
        (ours), 0.0 for Wav2Lip's window that starts at the frame.
    identity: ``"held"`` (a face crop taken earlier and held, as in
        training) or ``"current"`` (the unmasked current crop, as Wav2Lip's
        inference does).
    crop: face-box style the model was trained on, see
        :func:`engine.face.crop_box`: ``"square"`` or ``"wav2lip"``.
    """

    kind: Literal["dubcam", "wav2lip"]
    size: int
    mel_offset_s: float
    identity: Literal["held", "current"]
    crop: Literal["square", "wav2lip"]

    @property
    def lookahead_s(self) -> float:
        """Audio needed past the frame's timestamp: window end plus half an STFT window (0.025 s)."""
        return self.mel_offset_s + 0.2 + 0.025


def generator_faces(crops: np.ndarray, identity: np.ndarray | None, info: GeneratorInfo) -> np.ndarray:
    """The ``faces`` input of a generator for k face crops (DESIGN.md "The streaming core").

    Args:
        crops: ``[k, S, S, 3]`` uint8 RGB face crops of the frames to generate.
        identity: ``[S, S, 3]`` uint8 RGB identity reference, used when
            ``info.identity == "held"`` (ignored for ``"current"``, where
            each unmasked crop is its own reference, as in Wav2Lip).
        info: the generator's :class:`GeneratorInfo`.

    Returns ``[k, 6, S, S]`` float32 in [0, 1]: channels 0–2 the pose
    reference (the crop with rows S/2: zeroed), 3–5 the identity reference.

    Raises ValueError: crops not ``[k, S, S, 3]``, or a held identity missing.
    """
    S = info.size
    if crops.ndim != 4 or crops.shape[1:] != (S, S, 3):
        raise ValueError(f"expected crops [k, {S}, {S}, 3], got {crops.shape}")
    pose = crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    if info.identity == "current":
        ident = pose.copy()
    elif identity is None:
        raise ValueError("this generator needs a held identity reference")
    else:
        ident = np.broadcast_to(identity.astype(np.float32).transpose(2, 0, 1)[None] / 255.0, pose.shape)
    pose[:, :, S // 2:] = 0.0
    return np.concatenate([pose, ident], axis=1)


def load(path):
    """Load a generator checkpoint (ours or Wav2Lip's), see :func:`engine.checkpoints.load_generator`."""
    from engine.checkpoints import load_generator

    return load_generator(path)
