"""Audio-visual synchronisation networks.

* :class:`SyncNet`: syncnet_python's ``S`` (Chung & Zisserman 2016, "Out of
  time: automated lip sync in the wild"), the network behind LSE-C / LSE-D
  (spec §4; :func:`engine.metrics.lse_scores`). Weights: ``syncnet_v2.model``.
* :class:`SyncNetColor`: Wav2Lip's lip-sync expert ``SyncNet_color``
  (Prajwal et al. 2020, spec §3.3), the baseline sync loss. Weights:
  ``lipsync_expert.pth``.

Both published models were trained on BGR frames; they take RGB here and
flip the channels themselves (the one place that does, DESIGN.md
"Conventions").
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from engine.checkpoints import load_weights
from engine.models.blocks import ConvBlock, audio_encoder

__all__ = ["SyncNet", "SyncNetColor"]


def _conv_bn_relu(conv: nn.Conv2d | nn.Conv3d) -> list[nn.Module]:
    norm = nn.BatchNorm3d if isinstance(conv, nn.Conv3d) else nn.BatchNorm2d
    return [conv, norm(conv.out_channels), nn.ReLU()]


def _embedding_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))


class SyncNet(nn.Module):
    """syncnet_python's ``S`` with its module names (``netcnnaud``,
    ``netfcaud``, ``netcnnlip``, ``netfclip``; spec §4).

    Embeddings are 1024-d and **not** normalised; LSE compares them by L2
    distance (:func:`engine.metrics.lse_scores`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, 64, 3, padding=1)), nn.MaxPool2d(1, 1),
            *_conv_bn_relu(nn.Conv2d(64, 192, 3, padding=1)), nn.MaxPool2d(3, (1, 2)),
            *_conv_bn_relu(nn.Conv2d(192, 384, 3, padding=1)),
            *_conv_bn_relu(nn.Conv2d(384, 256, 3, padding=1)),
            *_conv_bn_relu(nn.Conv2d(256, 256, 3, padding=1)), nn.MaxPool2d(3, 2),
            *_conv_bn_relu(nn.Conv2d(256, 512, (5, 4))),
        )
        self.netfcaud = _embedding_head()
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2))), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1))),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))),
            *_conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1))), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6))),
        )
        self.netfclip = _embedding_head()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "SyncNet":
        """Load ``syncnet_v2.model`` (a raw state dict), on the CPU in eval
        mode; errors as :func:`engine.checkpoints.load_weights`."""
        return load_weights(cls(), path)

    def forward_aud(self, mfcc: Tensor) -> Tensor:
        """``[N, 1, 13, 20]`` float MFCC windows (0.2 s, 100 Hz; see
        ``engine.audio.syncnet_mfcc``) -> ``[N, 1024]`` audio embeddings."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: Tensor) -> Tensor:
        """``[N, 3, 5, 224, 224]`` float **RGB** frames with raw values in
        [0, 255] (no normalisation; 5 consecutive frames at 25 fps) ->
        ``[N, 1024]`` video embeddings. Channels are flipped to the BGR the
        weights were trained on."""
        return self.netfclip(self.netcnnlip(frames.flip(1)).flatten(1))


class SyncNetColor(nn.Module):
    """Wav2Lip's lip-sync expert ``SyncNet_color`` (spec §3.3), built from
    :class:`~engine.models.blocks.ConvBlock` with the published key layout
    (``face_encoder.i.conv_block.{0,1}``, ``audio_encoder.i.conv_block.{0,1}``).

    Args:
        bgr: the weights expect BGR frames (True for the published
            ``lipsync_expert.pth``); the RGB input is flipped per frame.
            False for an expert trained on RGB.
    """

    def __init__(self, bgr: bool = False) -> None:
        super().__init__()
        self.bgr = bgr
        self.face_encoder = nn.Sequential(
            ConvBlock(15, 32, 7, 1, 3),
            ConvBlock(32, 64, 5, (1, 2), 1),
            ConvBlock(64, 64, 3, 1, 1, residual=True),
            ConvBlock(64, 64, 3, 1, 1, residual=True),
            ConvBlock(64, 128, 3, 2, 1),
            ConvBlock(128, 128, 3, 1, 1, residual=True),
            ConvBlock(128, 128, 3, 1, 1, residual=True),
            ConvBlock(128, 128, 3, 1, 1, residual=True),
            ConvBlock(128, 256, 3, 2, 1),
            ConvBlock(256, 256, 3, 1, 1, residual=True),
            ConvBlock(256, 256, 3, 1, 1, residual=True),
            ConvBlock(256, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 1, residual=True),
            ConvBlock(512, 512, 3, 1, 1, residual=True),
            ConvBlock(512, 512, 3, 2, 1),
            ConvBlock(512, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        self.audio_encoder = audio_encoder(res_after_256=2)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "SyncNetColor":
        """Load Wav2Lip's ``lipsync_expert.pth`` (``{"state_dict", "optimizer",
        "global_step", "global_epoch"}``) as a BGR-weights model
        (``bgr=True``), on the CPU in eval mode; errors as
        :func:`engine.checkpoints.load_weights`."""
        return load_weights(cls(bgr=True), path)

    def forward(self, mels: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        """Embed a mel window and the lower halves of 5 frames.

        Args:
            mels: ``[N, 1, 80, 16]`` float Wav2Lip mel windows in [-4, 4]
                (``engine.audio.melspectrogram``, spec §3.5).
            faces: ``[N, 15, 48, 96]`` float in [0, 1]: rows 48:96 of 5
                consecutive 96x96 **RGB** face crops stacked on channels
                ``[t0 RGB, t1 RGB, ...]``.

        Returns:
            ``(audio_embedding, face_embedding)``, each ``[N, 512]`` and L2
            normalised; their dot product is the cosine similarity that
            Wav2Lip's sync loss feeds to BCE.
        """
        if self.bgr:
            faces = faces.unflatten(1, (-1, 3)).flip(2).flatten(1, 2)
        audio_embedding = F.normalize(self.audio_encoder(mels).flatten(1), dim=1)
        face_embedding = F.normalize(self.face_encoder(faces).flatten(1), dim=1)
        return audio_embedding, face_embedding
