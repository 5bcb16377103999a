"""The Wav2Lip generator, layer for layer as published (spec §3.2).

Prajwal et al. 2020, "A Lip Sync Expert Is All You Need for Speech to Lip
Generation In The Wild"; ``Rudrabha/Wav2Lip:models/wav2lip.py``. The module
and parameter names equal those of ``wav2lip.pth`` / ``wav2lip_gan.pth`` so
that the public files load with ``load_state_dict`` after stripping
``module.`` (:data:`CHECKPOINT`, read by ``engine.models.load``).

The published weights were trained on **BGR** crops. :class:`Wav2LipRGB` is
the one adapter that flips channels: everything around it speaks RGB.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.checkpoints import GeneratorFormat, describe, load_state, strip_module
from engine.models.blocks import ConvBlock, TransposeBlock, audio_encoder
from engine.models.info import GeneratorInfo


def _res(c: int, n: int) -> list[nn.Module]:
    return [ConvBlock(c, c, 3, 1, 1, residual=True) for _ in range(n)]


class Wav2Lip(nn.Module):
    """Wav2Lip generator on BGR input (spec §3.2).

    forward(faces, mels):
        faces: ``[N, 6, 96, 96]`` float32 in [0, 1], BGR; channels 0–2 the
            target frame with rows 48:96 zeroed (pose), 3–5 the reference.
        mels: ``[N, 1, 80, 16]`` float32 mel windows in [-4, 4].
        returns ``[N, 3, 96, 96]`` BGR in [0, 1].
    """

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),
            nn.Sequential(ConvBlock(16, 32, 3, 2, 1), *_res(32, 2)),
            nn.Sequential(ConvBlock(32, 64, 3, 2, 1), *_res(64, 3)),
            nn.Sequential(ConvBlock(64, 128, 3, 2, 1), *_res(128, 2)),
            nn.Sequential(ConvBlock(128, 256, 3, 2, 1), *_res(256, 2)),
            nn.Sequential(ConvBlock(256, 512, 3, 2, 1), *_res(512, 1)),
            nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),
        ])
        self.audio_encoder = audio_encoder(1.0, res_after_256=1)
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),
            nn.Sequential(TransposeBlock(1024, 512, 3, 1, 0), *_res(512, 1)),
            nn.Sequential(TransposeBlock(1024, 512, 3, 2, 1, 1), *_res(512, 2)),
            nn.Sequential(TransposeBlock(768, 384, 3, 2, 1, 1), *_res(384, 2)),
            nn.Sequential(TransposeBlock(512, 256, 3, 2, 1, 1), *_res(256, 2)),
            nn.Sequential(TransposeBlock(320, 128, 3, 2, 1, 1), *_res(128, 2)),
            nn.Sequential(TransposeBlock(160, 64, 3, 2, 1, 1), *_res(64, 2)),
        ])
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(mels)
        skips = []
        f = faces
        for block in self.face_encoder_blocks:
            f = block(f)
            skips.append(f)
        for block in self.face_decoder_blocks:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.output_block(x)


class Wav2LipRGB(nn.Module):
    """RGB-in, RGB-out wrapper around a BGR-trained :class:`Wav2Lip`.

    Same shapes as :class:`Wav2Lip`; channel order RGB on both sides. The
    flip is part of the graph, so ONNX / TensorRT exports carry it too.
    """

    def __init__(self, net: Wav2Lip):
        super().__init__()
        self.net = net

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        bgr = faces[:, [2, 1, 0, 5, 4, 3]]
        return self.net(bgr, mels)[:, [2, 1, 0]]


INFO = GeneratorInfo(kind="wav2lip", size=96, mel_offset_s=0.0, identity="current", crop="wav2lip")
"""Wav2Lip's inference: 96 px crops of its own box style, the window that starts at the frame, the current
(unmasked) crop as its own reference."""


def _build(obj: dict, path) -> Wav2LipRGB:
    model = Wav2LipRGB(Wav2Lip())
    model.info = INFO
    sd = {"net." + k: v for k, v in strip_module(obj.get("state_dict", obj)).items()}
    return load_state(model, sd, path, "a Wav2Lip generator")


CHECKPOINT = GeneratorFormat("a Wav2Lip generator", lambda obj: describe(obj) == "a Wav2Lip generator", _build)
"""The published ``wav2lip.pth`` / ``wav2lip_gan.pth`` (``{"state_dict", "optimizer", "global_step",
"global_epoch"}``, keys such as ``face_encoder_blocks.0.0.conv_block.0.weight``, ``module.`` stripped when
present; spec §3.2) in ``engine.models.GENERATOR_FORMATS``."""
