"""Training samples from preprocessed clips (``train.preprocess``).

One sample (Yaman et al. 2024 §3.1; Wav2Lip's sampling, spec §3.5):

* ``target``: k consecutive face crops starting at frame t, ``[k, 3, S, S]``;
* ``faces``: the generator input ``[k, 6, S, S]``: channels 0–2 the pose
  reference (the targets with rows S/2: zeroed), 3–5 the identity
  reference (k frames from a random other window of the same clip, at
  least k frames away);
* ``mels``: the k mel windows ``[k, 1, 80, 16]`` centred on each target
  frame (``GeneratorInfo.mel_offset_s = -0.1``).

All values float32; images in [0, 1] RGB.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.audio import melspectrogram, mel_window


@dataclass
class Clip:
    name: str
    faces: np.ndarray  # [T, S, S, 3] uint8
    valid: np.ndarray  # [T] bool
    mel: np.ndarray  # [80, F]
    fps: float


def load_clips(data_dir: str | Path, split: str) -> list[Clip]:
    """All clips of ``split`` (train/val/test) listed in ``data_dir/manifest.csv``, in memory."""
    data_dir = Path(data_dir)
    clips = []
    with open(data_dir / "manifest.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] != split:
                continue
            z = np.load(data_dir / "clips" / f"{row['clip']}.npz")
            clips.append(Clip(row["clip"], z["faces"], z["valid"], melspectrogram(z["audio"]), float(z["fps"])))
    return clips


def pose_reference(target: np.ndarray) -> np.ndarray:
    """Targets ``[..., S, S]`` with the lower half (rows S/2:) zeroed, a copy."""
    pose = target.copy()
    pose[..., target.shape[-2] // 2:, :] = 0
    return pose


class WindowDataset(torch.utils.data.Dataset):
    """Random k-frame windows; ``len`` is a nominal epoch of ``samples_per_epoch`` draws.

    Windows whose k frames (and identity frames) all have a face are
    drawn; a clip shorter than 3k frames is skipped. The draw is made from
    the index, so a given (seed, index) always gives the same sample:
    resumed runs see the same data.
    """

    def __init__(self, clips: list[Clip], k: int = 5, samples_per_epoch: int = 10_000, seed: int = 0,
                 mel_offset_s: float = -0.1):
        self.clips = [c for c in clips if len(c.valid) >= 3 * k]
        if not self.clips:
            raise ValueError(f"no clip has the {3 * k} frames a window of k={k} needs")
        self.k, self.n, self.seed, self.mel_offset_s = k, samples_per_epoch, seed, mel_offset_s

    def __len__(self) -> int:
        return self.n

    def _window(self, rng, clip: Clip, avoid: int | None = None) -> int:
        T = len(clip.valid)
        for _ in range(50):
            t = int(rng.integers(0, T - self.k + 1))
            if avoid is not None and abs(t - avoid) < self.k:
                continue
            if clip.valid[t: t + self.k].all():
                return t
        return t

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        t = self._window(rng, clip)
        r = self._window(rng, clip, avoid=t)
        target = clip.faces[t: t + self.k].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        identity = clip.faces[r: r + self.k].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        mels = np.stack([mel_window(clip.mel, (t + i) / clip.fps, self.mel_offset_s)
                         for i in range(self.k)])[:, None]
        return {
            "faces": torch.from_numpy(np.concatenate([pose_reference(target), identity], axis=1)),
            "mels": torch.from_numpy(mels),
            "target": torch.from_numpy(target),
        }
