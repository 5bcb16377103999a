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

import torch
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
        width: channel multiplier of both encoders (1.0: the published
            layout, 512-d embeddings; 0.5: the bundled expert, 256-d, whose
            audio encoder is exactly the audio encoder of a width-0.5
            generator, paper §3.2).
        face_width: channel multiplier of the face encoder's inner layers
            (default: ``width``); its last two blocks still give the
            ``512·width`` channels of the embedding. The face encoder is
            what a training step costs (the mel window is tiny), so a
            narrower face encoder trains several times faster on a CPU.
    """

    def __init__(self, bgr: bool = False, width: float = 1.0, face_width: float | None = None) -> None:
        super().__init__()
        self.bgr, self.width = bgr, width
        self.face_width = width if face_width is None else face_width
        c = [max(4, round(n * self.face_width)) for n in (32, 64, 128, 256, 512)]
        out = max(4, round(512 * width))
        self.face_encoder = nn.Sequential(
            ConvBlock(15, c[0], 7, 1, 3),
            ConvBlock(c[0], c[1], 5, (1, 2), 1),
            ConvBlock(c[1], c[1], 3, 1, 1, residual=True),
            ConvBlock(c[1], c[1], 3, 1, 1, residual=True),
            ConvBlock(c[1], c[2], 3, 2, 1),
            ConvBlock(c[2], c[2], 3, 1, 1, residual=True),
            ConvBlock(c[2], c[2], 3, 1, 1, residual=True),
            ConvBlock(c[2], c[2], 3, 1, 1, residual=True),
            ConvBlock(c[2], c[3], 3, 2, 1),
            ConvBlock(c[3], c[3], 3, 1, 1, residual=True),
            ConvBlock(c[3], c[3], 3, 1, 1, residual=True),
            ConvBlock(c[3], c[4], 3, 2, 1),
            ConvBlock(c[4], c[4], 3, 1, 1, residual=True),
            ConvBlock(c[4], c[4], 3, 1, 1, residual=True),
            ConvBlock(c[4], c[4], 3, 2, 1),
            ConvBlock(c[4], out, 3, 1, 0),
            ConvBlock(out, out, 1, 1, 0),
        )
        self.audio_encoder = audio_encoder(width, res_after_256=2)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "SyncNetColor":
        """Load Wav2Lip's ``lipsync_expert.pth`` (``{"state_dict", "optimizer",
        "global_step", "global_epoch"}``), or one written by ``train.syncnet``
        (same layout, any ``width``: read from the first convolution's
        output channels, 32·face_width, and the last one's, 512·width), as a BGR-weights model (``bgr=True``), on
        the CPU in eval mode; errors as :func:`engine.checkpoints.load_weights`."""
        from engine.checkpoints import CheckpointError, safe_load

        obj = safe_load(path)
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        sd = {k.removeprefix("module."): v for k, v in sd.items()} if isinstance(sd, dict) else {}
        first, last = sd.get("face_encoder.0.conv_block.0.weight"), sd.get("face_encoder.16.conv_block.0.weight")
        if first is None or last is None or first.ndim != 4:
            raise CheckpointError(f"{path}: not a lip-sync expert (SyncNet_color) state dict")
        return load_weights(cls(bgr=True, width=last.shape[0] / 512, face_width=first.shape[0] / 32), path,
                            checkpoint=obj)

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
        return self.audio_embedding(mels), self.face_embedding(faces)

    def audio_embedding(self, mels: Tensor) -> Tensor:
        """``[N, 1, 80, 16]`` mel windows → ``[N, 512·width]`` L2-normalised audio embeddings."""
        return F.normalize(self.audio_encoder(mels).flatten(1), dim=1)

    def face_embedding(self, faces: Tensor) -> Tensor:
        """``[N, 15, 48, 96]`` RGB lower halves → ``[N, 512·width]`` L2-normalised face embeddings."""
        if self.bgr:
            faces = faces.unflatten(1, (-1, 3)).flip(2).flatten(1, 2)
        return F.normalize(self.face_encoder(faces).flatten(1), dim=1)


EXPERT_FACE_SIZE = 96
"""Side of the face crops :class:`SyncNetColor` sees (Wav2Lip's 96×96)."""


def lower_halves(faces) -> Tensor:
    """5 consecutive face crops → :class:`SyncNetColor`'s face input.

    Args:
        faces: ``[..., 5, 3, S, S]`` float RGB in [0, 1] (numpy or torch; any
            leading batch dimensions, none for one window), resized to 96×96
            (bilinear, antialiased) when S ≠ 96.

    Returns:
        ``[..., 15, 48, 96]``: rows 48:96 (the lower half) of each face,
        frame-major on channels ``[t0 RGB, t1 RGB, ...]``.
    """
    faces = torch.as_tensor(faces)
    lead, (n, c, h, w) = faces.shape[:-4], faces.shape[-4:]
    faces = faces.reshape(-1, c, h, w)
    if (h, w) != (EXPERT_FACE_SIZE, EXPERT_FACE_SIZE):
        faces = F.interpolate(faces, size=(EXPERT_FACE_SIZE, EXPERT_FACE_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)
    return faces[:, :, EXPERT_FACE_SIZE // 2:].reshape(*lead, n * c, EXPERT_FACE_SIZE // 2, EXPERT_FACE_SIZE)
