"""Augmentation that keeps audio and video consistent (issue 9 item 5).

Every transform here changes what a window looks or sounds like without
changing *when* anything happens, so a sample stays in sync:

* **horizontal flip** of every face of the sample (targets, pose and
  identity references alike): a mirrored mouth says the same phoneme;
* **colour jitter**: one brightness, contrast and saturation change for
  the whole sample (the identity reference too, so the generator cannot
  learn to copy a colour difference);
* **audio gain**: a loudness change of ``±gain_db``, applied to the
  Wav2Lip-normalised mel directly: the mel is ``clip(8·(dB + 100)/100 − 4,
  −4, 4)`` (``engine.audio.melspectrogram``), so ``g`` dB of gain adds
  ``0.08·g`` before the clip. Exact except for bins at the −4 floor
  (quieter than −100 dB), which stay at the floor.

Time shifts, speed changes and frame dropping are *not* used: they would
move the audio against the video.

The random draws come from the sample's own ``numpy.random.Generator``, so
a (seed, index) pair still gives one sample (``train.data.WindowDataset``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEL_PER_DB = 8.0 / 100.0  # normalised mel units per dB (engine.audio._frames_to_mel)


@dataclass(frozen=True)
class Augment:
    """Parameters of the augmentation; ``Augment.off()`` changes nothing.

    flip: probability of a horizontal flip.
    brightness, contrast, saturation: maximal relative change (uniform in ±).
    gain_db: maximal loudness change in dB (uniform in ±).
    """

    flip: float = 0.5
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    gain_db: float = 6.0

    @classmethod
    def off(cls) -> "Augment":
        return cls(0.0, 0.0, 0.0, 0.0, 0.0)

    def draw(self, rng: np.random.Generator) -> "Draw":
        """One sample's random choices."""
        u = rng.uniform(-1.0, 1.0, size=4)
        return Draw(flip=bool(rng.random() < self.flip), brightness=1.0 + self.brightness * u[0],
                    contrast=1.0 + self.contrast * u[1], saturation=1.0 + self.saturation * u[2],
                    gain_db=self.gain_db * u[3])


@dataclass(frozen=True)
class Draw:
    """The random choices of one sample (see :class:`Augment`)."""

    flip: bool
    brightness: float
    contrast: float
    saturation: float
    gain_db: float

    def faces(self, faces: np.ndarray) -> np.ndarray:
        """``[..., 3, H, W]`` float32 RGB in [0, 1] → the same shape, flipped and jittered, in [0, 1].

        Contrast and saturation pivot on each image's own mean grey, so a
        face keeps its mean brightness under both.
        """
        x = faces[..., ::-1] if self.flip else faces
        if (self.brightness, self.contrast, self.saturation) == (1.0, 1.0, 1.0):
            return np.ascontiguousarray(x)
        grey = 0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :]
        x = grey + self.saturation * (x - grey)
        mean = grey.mean(axis=(-2, -1), keepdims=True)
        x = mean + self.contrast * (x - mean)
        return np.clip(x * self.brightness, 0.0, 1.0).astype(np.float32)

    def mel(self, mel: np.ndarray) -> np.ndarray:
        """Wav2Lip-normalised mel windows (any shape, values in [−4, 4]) with the gain applied (:func:`gain`)."""
        return gain(mel, self.gain_db)


def gain(mel: np.ndarray, gain_db: float) -> np.ndarray:
    """Wav2Lip-normalised mel windows (any shape, values in [−4, 4]) of the audio made ``gain_db`` louder.

    The mel is linear in dB (``engine.audio``: 100 dB span 8 units), so the gain adds
    :data:`MEL_PER_DB` · ``gain_db`` before the clip to [−4, 4]; bins at the −4 floor (quieter than
    −100 dB: silence) stay at the floor. ``mel`` itself is returned for a gain of 0; else float32.
    """
    if gain_db == 0.0:
        return mel
    floor = mel <= -4.0
    out = np.clip(mel + MEL_PER_DB * gain_db, -4.0, 4.0).astype(np.float32)
    out[floor] = -4.0
    return out
