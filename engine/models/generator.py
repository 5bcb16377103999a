"""The talking-face generator of Yaman et al. 2024 (§3.1–3.3).

"Audio-Visual Speech Representation Expert for Enhanced Talking Face Video
Generation and Evaluation". Unlike Wav2Lip, whose single face encoder sees
the masked target and the reference stacked on channels, this generator has

* an **identity encoder** on the identity reference (a frame of the same
  person from elsewhere in the video: appearance, teeth, lips),
* a **pose encoder** on the pose reference (the target frame with its lower
  half zeroed: head pose, framing, light),
* an **audio encoder** on the 80×16 mel window (the SyncNet audio encoder),
* a 1×1 **fusion** convolution on the concatenated identity and pose
  bottlenecks, and
* a **decoder** of transposed convolutions, each followed by two stride-1
  convolutions, fed at every scale by skip connections from *both* encoders,
  ending in a sigmoid.

Each encoder block is a (strided) convolution followed by two non-strided
residual convolutions, with BatchNorm and ReLU (spec §3.2 building blocks).
The face size is a parameter: 96 (default), 128, 192 and 256 build. A
``width`` multiplier scales every channel count; ``width=1`` gives the
Wav2Lip channel plan (16…512), the bundled real-time model uses less.

The mel window of our generator is **centred** on its frame (0.1 s of
lookahead), see DESIGN.md "Conventions".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from engine.models import GeneratorInfo
from engine.models.blocks import ConvBlock, TransposeBlock, audio_encoder

_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of :class:`Generator` (stored in our checkpoints).

    size: face crop side in pixels (96, 128, 192 or 256; any size that
        halves down to 3 or 4 works).
    width: channel multiplier (1.0 = Wav2Lip channel plan).
    """

    size: int = 96
    width: float = 1.0

    def scales(self) -> list[int]:
        """Spatial sizes of the encoder levels, e.g. 96 → [96, 48, 24, 12, 6, 3]."""
        sizes = [self.size]
        while sizes[-1] > 4:
            sizes.append((sizes[-1] + 1) // 2)
        if sizes[-1] not in (3, 4) or any(2 * b != a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"face size {self.size} must halve exactly down to 3 or 4 (96, 128, 192, 256 do)")
        return sizes

    def channels(self) -> list[int]:
        n = len(self.scales())
        return [max(4, round(c * self.width)) for c in _CHANNELS[: n + 1]]


def _encoder(cin: int, cfg: GeneratorConfig) -> nn.ModuleList:
    """Blocks of one face encoder: level i outputs ``channels[i]`` at ``scales[i]``; the last block gives 1×1."""
    scales, ch = cfg.scales(), cfg.channels()
    blocks = []
    prev = cin
    for i, c in enumerate(ch[:-1]):
        first = ConvBlock(prev, c, 7, 1, 3) if i == 0 else ConvBlock(prev, c, 3, 2, 1)
        blocks.append(nn.Sequential(first, *[ConvBlock(c, c, 3, 1, 1, residual=True) for _ in range(2)]))
        prev = c
    blocks.append(nn.Sequential(ConvBlock(prev, ch[-1], scales[-1], 1, 0), ConvBlock(ch[-1], ch[-1], 1, 1, 0)))
    return nn.ModuleList(blocks)


class Generator(nn.Module):
    """Identity/pose/audio encoders, fusion and skip-connected decoder (Yaman et al. 2024 §3.1–3.3).

    forward(faces, mels):
        faces: ``[N, 6, S, S]`` float32 in [0, 1], **RGB**; channels 0–2 the
            pose reference (target frame, rows S/2: zeroed), 3–5 the
            identity reference.
        mels: ``[N, 1, 80, 16]`` float32, Wav2Lip-normalised mel windows in
            [-4, 4] centred on each frame (engine.audio).
        returns ``[N, 3, S, S]`` float32 RGB in [0, 1].
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        self.info = GeneratorInfo(kind="dubcam", size=config.size, mel_offset_s=-0.1, identity="held", crop="square")
        scales, ch = config.scales(), config.channels()
        self.identity_encoder = _encoder(3, config)
        self.pose_encoder = _encoder(3, config)
        audio_ch = ch[-1]
        self.audio_encoder = audio_encoder(audio_ch / 512)
        self.fusion = nn.Conv2d(2 * ch[-1], ch[-1], 1)
        # Decoder: level j works at scales[-1-j] and meets both encoders' skips there.
        dec = [nn.Sequential(ConvBlock(audio_ch + ch[-1], ch[-1], 1, 1, 0))]
        prev = ch[-1]
        for j, s in enumerate(reversed(scales)):
            level = len(scales) - 1 - j
            cout = ch[level]
            up = (TransposeBlock(prev, cout, s, 1, 0) if j == 0
                  else TransposeBlock(prev, cout, 3, 2, 1, 1))
            dec.append(nn.Sequential(up, *[ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(2)]))
            prev = cout + 2 * ch[level]
        self.decoder = nn.ModuleList(dec)
        self.output_block = nn.Sequential(
            ConvBlock(prev, ch[0], 3, 1, 1), nn.Conv2d(ch[0], 3, 1), nn.Sigmoid()
        )

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        pose, identity = faces[:, :3], faces[:, 3:]
        id_feats, pose_feats = [], []
        a, b = identity, pose
        for id_block, pose_block in zip(self.identity_encoder, self.pose_encoder):
            a, b = id_block(a), pose_block(b)
            id_feats.append(a)
            pose_feats.append(b)
        fused = self.fusion(torch.cat([id_feats.pop(), pose_feats.pop()], dim=1))
        x = self.decoder[0](torch.cat([self.audio_encoder(mels), fused], dim=1))
        for block in self.decoder[1:]:
            x = torch.cat([block(x), id_feats.pop(), pose_feats.pop()], dim=1)
        return self.output_block(x)

    def config_dict(self) -> dict:
        return asdict(self.config)
