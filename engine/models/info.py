"""What the streaming pipeline must know about a generator (its :class:`GeneratorInfo`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from engine.audio import MEL_WINDOW


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
    identity_lips: the model also takes the held identity reference's lip
        and jaw points (``engine.inputs``; our ``lip_sketch`` generators).
    mel_context: mel frames (12.5 ms each) before the 0.2 s window that the
        model also takes: its mel input is ``[N, 1, 80, 16 + mel_context]``,
        the frame's own window last (``engine.audio.mel_window``); past audio
        only, so the lookahead does not change. 0: the window alone.
    """

    kind: Literal["dubcam", "wav2lip"]
    size: int
    mel_offset_s: float
    identity: Literal["held", "current"]
    crop: Literal["square", "wav2lip"]
    identity_lips: bool = False
    mel_context: int = 0

    @property
    def mel_frames(self) -> int:
        """Width of the model's mel input: the 16 frames of the window and :attr:`mel_context` before them."""
        return MEL_WINDOW + self.mel_context

    @property
    def lookahead_s(self) -> float:
        """Audio needed past the frame's timestamp: window end plus half an STFT window (0.025 s)."""
        return self.mel_offset_s + 0.2 + 0.025
