"""Shared convolutional building blocks (spec §3.1, Wav2Lip ``models/conv.py``).

Every image network of the project is assembled from these three blocks: our
generator (``generator.py``), the Wav2Lip generator (``wav2lip.py``), the
lip-sync expert (``syncnet.py``) and the discriminator (``train``). Parameter
names follow the Wav2Lip layout, ``conv_block.0`` (convolution) and
``conv_block.1`` (batch norm), so that the published checkpoints load
unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv2d (with bias) → BatchNorm2d → (+ input if ``residual``) → ReLU.

    Args:
        cin, cout: channels in and out; ``residual`` needs ``cin == cout`` and
            a shape-preserving convolution.
        kernel_size, stride, padding: as for :class:`torch.nn.Conv2d`.

    Shapes: ``[N, cin, H, W] -> [N, cout, H', W']``, float32.
    """

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0, residual: bool = False):
        super().__init__()
        if residual and cin != cout:
            raise ValueError(f"a residual block needs cin == cout, got {cin} and {cout}")
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            out = out + x
        return self.act(out)


class TransposeBlock(nn.Module):
    """ConvTranspose2d (with bias) → BatchNorm2d → ReLU (Wav2Lip's ``Conv2dTranspose``).

    Shapes: ``[N, cin, H, W] -> [N, cout, H', W']``; the weight is ``[cin, cout, k, k]``.
    """

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


class NoNormBlock(nn.Module):
    """Conv2d (with bias) → LeakyReLU(0.01), no normalisation (Wav2Lip's ``nonorm_Conv2d``).

    ``spectral`` wraps the convolution in spectral normalisation (Yaman et
    al. 2024 §3.6 discriminator); the key then gains ``parametrizations``.
    """

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0, spectral: bool = False):
        super().__init__()
        conv = nn.Conv2d(cin, cout, kernel_size, stride, padding)
        if spectral:
            conv = nn.utils.parametrizations.spectral_norm(conv)
        self.conv_block = nn.Sequential(conv, nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


def audio_encoder(width: float = 1.0, res_after_256: int = 1) -> nn.Sequential:
    """The Wav2Lip / SyncNet audio encoder on one mel window (spec §3.2, §3.3).

    ``[N, 1, 80, 16]`` (mel window, normalised to [-4, 4]) → ``[N, C, 1, 1]``
    with ``C = round(512·width)``. The spatial size goes 80×16 → 27×16 → 9×6
    → 3×3 → 1×1. ``res_after_256`` is 1 in the Wav2Lip generator and 2 in
    the lip-sync expert. ``width`` scales every channel count (1.0 gives the
    published layout).
    """
    c = [max(4, round(n * width)) for n in (32, 64, 128, 256, 512)]
    layers = [ConvBlock(1, c[0], 3, 1, 1)]
    layers += [ConvBlock(c[0], c[0], 3, 1, 1, residual=True) for _ in range(2)]
    layers += [ConvBlock(c[0], c[1], 3, (3, 1), 1)]
    layers += [ConvBlock(c[1], c[1], 3, 1, 1, residual=True) for _ in range(2)]
    layers += [ConvBlock(c[1], c[2], 3, 3, 1)]
    layers += [ConvBlock(c[2], c[2], 3, 1, 1, residual=True) for _ in range(2)]
    layers += [ConvBlock(c[2], c[3], 3, (3, 2), 1)]
    layers += [ConvBlock(c[3], c[3], 3, 1, 1, residual=True) for _ in range(res_after_256)]
    layers += [ConvBlock(c[3], c[4], 3, 1, 0), ConvBlock(c[4], c[4], 1, 1, 0)]
    return nn.Sequential(*layers)
