"""The mouth-opening regressor: how far a drawn or filmed mouth is open, from a face crop.

A small CNN (our own; trained by ``python -m train.opening`` on the training
data's MediaPipe landmarks, no outside weights) that reads, from the lower
half of a square face crop (``engine.face``, 96 px), the inner-lip gap over
the face height (``engine.metrics.mouth_opening``: MediaPipe points 13–14
over the clip's face height; about 0 closed, 0.05–0.15 open). It is
differentiable, so training uses it as a loss (``train.losses.OpeningLoss``),
and it costs well under a millisecond a frame, so the live sync gauge reads
the opening of every frame it sends with it (a second landmarker pass would
cost about 10 ms a frame).

Checkpoint: ``{"format": "dubcam-opening", "state_dict", "meta": {"width",
...}}``, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

FORMAT = "dubcam-opening"
SCALE = 10.0  # the net predicts 10 × the gap ratio (values of order 1)


class MouthOpeningNet(nn.Module):
    """Lower halves of face crops → inner-lip gap / face height (module doc).

    Source: our own (DESIGN.md "Layout", engine/models); labels as ``engine.metrics.mouth_opening``.

    Args:
        width: channel multiplier (1.0: 16-32-64-128-128 channels, about 0.3 M parameters).

    ``forward(faces)``: ``[N, 3, S, S]`` float in [0, 1], S even (trained at
    96) → ``[N]`` float, the gap ratio (not clipped; about 0–0.2).
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        chans = [3] + [max(8, int(c * width)) for c in (16, 32, 64, 128, 128)]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 1)
        self.width = width

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        lower = faces[..., faces.shape[-2] // 2:, :]
        x = self.features(lower * 2 - 1).mean(dim=(2, 3))
        return self.head(x).squeeze(1) / SCALE


def load_opening_net(path: str | Path) -> MouthOpeningNet:
    """A :class:`MouthOpeningNet` from a ``dubcam-opening`` checkpoint, in eval mode.

    Raises FileNotFoundError; ValueError (``CheckpointError`` for an unreadable file): not such a
    checkpoint (one line naming it).
    """
    from engine.checkpoints import safe_load

    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a mouth-opening regressor (python -m train.opening writes one)")
    net = MouthOpeningNet(ckpt["meta"]["width"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()
