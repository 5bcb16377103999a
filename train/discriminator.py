"""The visual-quality discriminator of Yaman et al. 2024 (§3.6).

Seven strided convolutions with LeakyReLU(0.01) and spectral normalisation,
then a 1×1 convolution to one logit per face. Built from the shared
:class:`engine.models.blocks.NoNormBlock`.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.blocks import NoNormBlock


class Discriminator(nn.Module):
    """``[N, 3, S, S]`` faces in [0, 1] → ``[N]`` real/fake logits.

    Seven stride-2 convolutions halve the face (96 → 1 after the last
    pooling); channels ``width``·(32, 64, 128, 256, 512, 512, 512).
    """

    def __init__(self, width: float = 1.0):
        super().__init__()
        ch = [max(8, round(c * width)) for c in (32, 64, 128, 256, 512, 512, 512)]
        layers, prev = [], 3
        for i, c in enumerate(ch):
            layers.append(NoNormBlock(prev, c, 7 if i == 0 else 3, 2, 3 if i == 0 else 1, spectral=True))
            prev = c
        self.blocks = nn.Sequential(*layers)
        self.head = nn.utils.parametrizations.spectral_norm(nn.Conv2d(prev, 1, 1))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = self.blocks(faces)
        return self.head(x).mean(dim=(1, 2, 3))
