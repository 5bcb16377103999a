"""Training losses of the generator (Yaman et al. 2024 §3.5–3.6, Table 4).

Total: ``λ_gan·L_gan + λ1·L1 + λ2·L_perceptual + λ3·L_sync`` with the
paper's (λ1, λ2, λ3) = (10, 1, 0.5) (``train.run``'s defaults).

* :func:`l1_loss`, :func:`gan_generator_loss`, :func:`gan_discriminator_loss`;
* :class:`PerceptualLoss` on our own :class:`VGG19` (torchvision's layout,
  ImageNet weights from a file the user gives);
* :class:`OpeningLoss`: how far the drawn mouth is open, read by our own
  ``engine.models.opening.MouthOpeningNet``, against the real frame, per frame and
  in temporal amplitude (L1 alone draws a mean mouth that opens too little);
* :class:`AVHubertSyncLoss` in the three AV-HuBERT variants of Table 4 and
  :class:`LipExpertSyncLoss` (Wav2Lip's lip expert, the baseline);
  :func:`build_sync_loss` picks one by name (:data:`SYNC_KINDS`).

The loss networks are frozen and stay in eval mode (``train()`` does not
change them); gradients flow through them to the generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoints import load_weights
from engine.compose import lower_face_mask
from engine.models.avhubert import AVHubert
from engine.models.syncnet import SyncNetColor, lower_halves
from train.roi import avhubert_video, context_rois

SYNC_KINDS = ("avhubert", "avhubert-visual", "avhubert-multimodal", "syncnet", "none")

# Where the user gets the weights each loss needs (DESIGN.md "Models and weights").
PUBLISHED = {
    "vgg": "torchvision's ImageNet VGG-19, https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "avhubert": "the AV-HuBERT fine-tuned for lip reading, e.g. base_vox_433h.pt (BASE or LARGE, paper 3.4), from "
                "https://facebookresearch.github.io/av_hubert/",
    "syncnet": "Wav2Lip's lip expert lipsync_expert.pth (github.com/Rudrabha/Wav2Lip), or train one with "
               "python -m train.syncnet",
    "lse": "syncnet_python's syncnet_v2.model (github.com/joonson/syncnet_python)",
    "opening": "a mouth-opening regressor trained on your data with python -m train.opening",
}
DEFAULT_FILES = {"vgg": "vgg19-dcbb9e9d.pth", "avhubert": "avhubert.pt", "syncnet": "lipsync_expert.pth",
                 "lse": "syncnet_v2.model", "opening": "mouth_opening.pth"}


def find_weights(kind: str, path: str | Path | None, needed_for: str) -> Path:
    """The weights file of ``kind`` (:data:`PUBLISHED`): ``path`` if given, else
    ``$DUBCAM_HOME/models/<DEFAULT_FILES[kind]>``.

    Raises FileNotFoundError naming the file, what needs it and where it is published.
    """
    from engine.backends.onnx_backend import dubcam_home

    candidate = Path(path) if path else dubcam_home() / "models" / DEFAULT_FILES[kind]
    if not candidate.is_file():
        given = f"{candidate} does not exist" if path else f"no weights.{kind} given and no {candidate}"
        raise FileNotFoundError(f"{needed_for} needs {PUBLISHED[kind]}: {given} "
                                f"(set weights.{kind}=PATH)")
    return candidate


def l1_loss(fake: torch.Tensor, real: torch.Tensor, lower_weight: float = 1.0) -> torch.Tensor:
    """Mean absolute pixel error of ``[N, 3, S, S]`` faces in [0, 1].

    ``lower_weight`` > 1 weighs the lower half (mouth and chin, the part
    the generator must invent) that much more than the upper half; 1 is the
    plain L1 of the paper.
    """
    err = (fake - real).abs()
    if lower_weight == 1.0:
        return err.mean()
    half = err.shape[-2] // 2
    w = torch.ones_like(err[:1, :1, :, :1])
    w[..., half:, :] = lower_weight
    return (err * w).mean() / w.mean()


def lower_half(faces: torch.Tensor) -> torch.Tensor:
    """Rows S/2: of ``[N, C, S, S]`` faces: the part the generator draws (the pose reference masks it)."""
    return faces[..., faces.shape[-2] // 2:, :]


MOUTH_VIEW_SIZE = 64
"""Side (px) of the mouth crops that :func:`mouth_view` gives the discriminator."""
MOUTH_VIEW_SCALE = 1.8
"""Side of a mouth crop over the width of the outer lip contour: the lips, the corners' skin and,
for an open mouth, teeth and tongue (an open mouth is about 0.6 of its width high)."""


def mouth_view(faces: torch.Tensor, lips: torch.Tensor, size: int = MOUTH_VIEW_SIZE) -> torch.Tensor:
    """Square crops of the mouth of ``[N, C, S, S]`` faces, magnified, for a discriminator on the mouth alone.

    ``lips``: ``[N, 33, 2]`` (or ``[..., 33, 2]`` with N rows in all) lip and jaw points in face
    sides (``train.data.window_lips``: the targets' own, so that a generated face and its target are
    cut at the same place). The crop is centred on the outer lip contour's box (points 0–11) with side
    :data:`MOUTH_VIEW_SCALE` × its width (at least 0.2 of the face), bilinear (``grid_sample``,
    border padding; differentiable in ``faces``). Returns ``[N, C, size, size]``.

    Raises ValueError: ``lips`` with another number of faces.
    """
    outer = lips.reshape(-1, lips.shape[-2], 2)[:, :12].to(faces.dtype)
    if outer.shape[0] != faces.shape[0]:
        raise ValueError(f"{outer.shape[0]} lip shapes for {faces.shape[0]} faces")
    lo, hi = outer.amin(dim=1), outer.amax(dim=1)
    half = ((hi[:, 0] - lo[:, 0]) * (MOUTH_VIEW_SCALE / 2)).clamp(min=0.1)
    theta = torch.zeros(faces.shape[0], 2, 3, dtype=faces.dtype, device=faces.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 2 * half  # output [-1, 1] -> face sides centre ± half
    theta[:, :, 2] = (lo + hi) - 1
    grid = F.affine_grid(theta, [faces.shape[0], faces.shape[1], size, size], align_corners=False)
    return F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gradient_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean absolute error of the horizontal and vertical finite differences of ``[N, C, H, W]``
    images (the image-gradient loss of e.g. Mathieu et al. 2016 with α = 1): it penalises edges
    that are missing or blurred, which a plain L1 leaves soft."""
    dx = (fake[..., :, 1:] - fake[..., :, :-1]) - (real[..., :, 1:] - real[..., :, :-1])
    dy = (fake[..., 1:, :] - fake[..., :-1, :]) - (real[..., 1:, :] - real[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating adversarial loss of the generator: BCE(D(fake), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(real), 1) + BCE(D(fake), 0), halved."""
    return 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


class FrozenLossNet(nn.Module):
    """Base of the loss modules: their networks never train and never leave eval mode."""

    def freeze(self) -> "FrozenLossNet":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "FrozenLossNet":
        return self


class OpeningLoss(FrozenLossNet):
    """Mouth opening of generated vs real frames, read by a frozen :class:`engine.models.opening.MouthOpeningNet`.

    Args:
        path: a ``dubcam-opening`` checkpoint (``python -m train.opening``).
        k: frames per window (the batch is ``[B·k, ...]``, window after window).

    ``forward(fake, real)`` with ``[B·k, 3, S, S]`` faces in [0, 1] returns
    ``(shape, amplitude)``, both in units of the natural spread of the
    opening (``engine.metrics.NATURAL_OPENING_STD``, 0.025 of the face height):

    * shape = mean over frames of |o(fake) − o(real)|: the lip-shape term;
    * amplitude = mean over windows of |std_t o(fake) − std_t o(real)| (std
      over the k frames of a window): the mouth must move as much as the
      real one. A regressor's conditional mean moves less than the truth
      (its std is about √R² of the real one); this term is what pushes the
      opening ratio of ``engine.metrics`` towards 1. A moment-matching loss
      of our own; its effect is measured by the opening ratio and the
      lip-landmark error (``tools/evaluate.py``).

    Gradients flow through the regressor to ``fake`` only.
    """

    def __init__(self, path: str | Path, k: int):
        super().__init__()
        from engine.metrics import NATURAL_OPENING_STD
        from engine.models.opening import load_opening_net

        self.net = load_opening_net(path)
        self.k, self.unit = k, NATURAL_OPENING_STD
        self.freeze()

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o_fake = self.net(fake.float())
        with torch.no_grad():
            o_real = self.net(real.float())
        shape = (o_fake - o_real).abs().mean() / self.unit
        amp = (o_fake.view(-1, self.k).std(dim=1) - o_real.view(-1, self.k).std(dim=1)).abs().mean() / self.unit
        return shape, amp


# ---------------------------------------------------------------------------
# Perceptual loss

# torchvision's ``vgg19().features``: 16 3×3 convolutions (each followed by a
# ReLU) in five blocks, "M" = 2×2 max pooling. Module indices, hence state-dict
# keys ``features.<i>.weight``, are torchvision's.
VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M")
# Johnson et al. 2016 take the last ReLU of the first four VGG-16 blocks (relu1_2,
# relu2_2, relu3_3, relu4_3); the five layers on VGG-19 are the last ReLU of each
# of its five blocks. Values: indices in ``features``.
PERCEPTUAL_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19(nn.Module):
    """VGG-19 convolutional part (Simonyan & Zisserman 2015) in torchvision's layout.

    ``forward(images)`` takes ``[N, 3, H, W]`` RGB in [0, 1] (ImageNet
    normalisation is applied inside) and returns the activations at
    :data:`PERCEPTUAL_LAYERS`, a list of five ``[N, C, H/2^i, W/2^i]``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers, prev = [], 3
        for v in VGG19_PLAN:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(prev, v, 3, padding=1), nn.ReLU(inplace=False)]
                prev = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path) -> "VGG19":
        """Load torchvision ImageNet weights (``vgg19-dcbb9e9d.pth``: a state dict with
        ``features.*`` and ``classifier.*``; the classifier is ignored), on the CPU in eval mode.

        Raises FileNotFoundError; CheckpointError for a file that is not a
        VGG-19 state dict (missing, extra or mis-shaped ``features`` weights).
        """
        return load_weights(cls(), path, ignore=("classifier.",))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        outputs, last = [], max(PERCEPTUAL_LAYERS.values())
        for i, layer in enumerate(self.features[: last + 1]):
            x = layer(x)
            if i in PERCEPTUAL_LAYERS.values():
                outputs.append(x)
        return outputs


class PerceptualLoss(FrozenLossNet):
    """Feature reconstruction loss of Johnson et al. 2016 on :class:`VGG19`: per layer of
    :data:`PERCEPTUAL_LAYERS` the squared error normalised by C·H·W (an MSE), averaged
    over the five layers. ``forward(fake, real)``: ``[N, 3, S, S]`` in [0, 1] → scalar."""

    def __init__(self, vgg: VGG19):
        super().__init__()
        self.vgg = vgg
        self.freeze()

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_features = self.vgg(real)
        losses = [F.mse_loss(a.float(), b.float()) for a, b in zip(self.vgg(fake), real_features)]
        return torch.stack(losses).mean()


# ---------------------------------------------------------------------------
# Sync losses


SYNC_LOG_FLOOR = 0.1
"""Below this cosine the sync loss continues ``−log cos`` along its tangent (:func:`log_cosine_loss`)."""


def log_cosine_loss(cos: torch.Tensor, floor: float = SYNC_LOG_FLOOR) -> torch.Tensor:
    """``−log cos`` (paper eq. 1) for ``cos ≥ floor``; below, its tangent at ``floor``:
    ``−log floor + (floor − cos) / floor``, so value and slope are continuous.

    The paper's −log needs a positive cosine. Clamping it (``−log max(cos, ε)``) gives no
    gradient at all on clamped steps (about 20 % of them early in training with a random
    generator); the tangent keeps pulling such steps towards sync with a bounded slope
    (``1/floor`` = 10). Elementwise; same shape as ``cos``.
    """
    safe = cos.clamp_min(floor)
    return torch.where(cos >= floor, -torch.log(safe), -math.log(floor) + (floor - cos) / floor)


def neg_log_cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``−log cos(a, b)`` per row of ``[..., D]`` features (paper eq. 1, continued below
    :data:`SYNC_LOG_FLOOR` by :func:`log_cosine_loss`), averaged, and the mean cosine."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
    return log_cosine_loss(cos).mean(), cos.detach().mean()


class AVHubertSyncLoss(FrozenLossNet):
    """The AV-HuBERT lip-sync loss (Yaman et al. 2024 §3.5, eq. 1; Table 4 variants).

    The k generated faces of each sample are pasted into the real frames of
    their context and the mouth ROIs of the whole context are taken
    differentiably (:func:`train.roi.context_rois`); AV-HuBERT encodes the
    context and the loss compares features at the k generated steps only:

    * ``"avhubert"`` (the paper's "unsupervised", its main recipe):
      video-only features of the generated context vs audio-only features
      of its audio;
    * ``"avhubert-visual"``: video-only, generated vs real lips;
    * ``"avhubert-multimodal"``: audio+video, generated vs real.

    Each is ``−log cos`` averaged over the k steps and the batch
    (:func:`neg_log_cosine`). Features: the last layer with its LayerNorm,
    or ``output_layer`` (as ``AVHubert.extract_features``).

    ``forward(fake, batch)``: ``fake`` ``[B·k, 3, S, S]``, ``batch`` a
    :func:`train.data.collate` batch with the context keys. Returns
    ``(loss, {"cos": mean cosine, "rois": [2, C, 96, 96] real and generated
    ROIs of the first sample, detached})``.
    """

    def __init__(self, avhubert: AVHubert, kind: str = "avhubert", k: int = 5, size: int = 96,
                 output_layer: int | None = None):
        super().__init__()
        if kind not in SYNC_KINDS[:3]:
            raise ValueError(f"unknown AV-HuBERT sync loss {kind!r} ({', '.join(SYNC_KINDS[:3])})")
        self.avhubert, self.kind, self.k, self.output_layer = avhubert, kind, k, output_layer
        self.register_buffer("mask", torch.from_numpy(lower_face_mask(size)), persistent=False)
        self.freeze()

    def _features(self, audio=None, video=None, padding_mask=None):
        return self.avhubert.extract_features(audio=audio, video=video, padding_mask=padding_mask,
                                              output_layer=self.output_layer)

    def forward(self, fake: torch.Tensor, batch: dict[str, torch.Tensor]):
        b = batch["ctx_valid"].shape[0]
        real_rois, fake_rois = context_rois(batch, fake.unflatten(0, (b, self.k)), self.mask)
        pad = None if batch["ctx_valid"].all() else ~batch["ctx_valid"]
        audio = batch["ctx_audio"].transpose(1, 2)
        fake_video = avhubert_video(fake_rois)
        with torch.no_grad():
            if self.kind == "avhubert":
                reference = self._features(audio=audio, padding_mask=pad)
            elif self.kind == "avhubert-visual":
                reference = self._features(video=avhubert_video(real_rois), padding_mask=pad)
            else:
                reference = self._features(audio=audio, video=avhubert_video(real_rois), padding_mask=pad)
        generated = self._features(audio=audio if self.kind == "avhubert-multimodal" else None,
                                   video=fake_video, padding_mask=pad)
        steps = batch["ctx_start"][:, None] + torch.arange(self.k, device=fake.device)
        rows = torch.arange(b, device=fake.device)[:, None]
        loss, cos = neg_log_cosine(generated[rows, steps], reference[rows, steps])
        return loss, {"cos": cos, "rois": torch.stack([real_rois[0], fake_rois[0].detach()])}


class LipExpertSyncLoss(FrozenLossNet):
    """Wav2Lip's sync loss (Prajwal et al. 2020; spec §3.3), the baseline of Table 4:
    ``BCE(cos(a, v), 1) = −log cos`` (:func:`log_cosine_loss`) of the lip expert's embeddings of the mel
    window and of the lower halves of the k = 5 generated faces
    (:func:`engine.models.syncnet.lower_halves`: faces resized to 96×96 when S ≠ 96, then cut).

    ``forward(fake, batch)``: ``fake`` ``[B·5, 3, S, S]``, ``batch["sync_mel"]``
    ``[B, 1, 80, 16]``. Returns ``(loss, {"cos": mean cosine})``.
    """

    def __init__(self, expert: SyncNetColor, k: int = 5):
        super().__init__()
        if k != 5:
            raise ValueError(f"the lip expert sees 5 frames; k={k}")
        self.expert, self.k = expert, k
        self.freeze()

    def forward(self, fake: torch.Tensor, batch: dict[str, torch.Tensor]):
        faces = lower_halves(fake.unflatten(0, (-1, self.k)))  # [B, 15, 48, 96], frame-major
        audio, video = self.expert(batch["sync_mel"], faces)
        cos = (audio.float() * video.float()).sum(1)
        return log_cosine_loss(cos).mean(), {"cos": cos.detach().mean()}


def build_sync_loss(kind: str, weights: dict, k: int, size: int, output_layer: int | None = None):
    """The sync loss called ``kind`` (:data:`SYNC_KINDS`) with its network loaded from
    ``weights`` (``{"avhubert": path, "syncnet": path}``, see :func:`find_weights`);
    None for ``"none"``.

    Raises ValueError for an unknown kind; FileNotFoundError / CheckpointError
    for missing or wrong weights.
    """
    if kind == "none":
        return None
    if kind == "syncnet":
        path = find_weights("syncnet", weights.get("syncnet"), "the syncnet sync loss")
        return LipExpertSyncLoss(SyncNetColor.from_checkpoint(path), k)
    if kind in SYNC_KINDS:
        path = find_weights("avhubert", weights.get("avhubert"), f"the {kind} sync loss")
        return AVHubertSyncLoss(AVHubert.from_checkpoint(path), kind, k, size, output_layer)
    raise ValueError(f"unknown sync loss {kind!r} (one of {', '.join(SYNC_KINDS)})")


def build_perceptual_loss(weights: dict) -> PerceptualLoss:
    """:class:`PerceptualLoss` on the VGG-19 of ``weights["vgg"]``.

    Raises FileNotFoundError (saying where torchvision publishes the file)
    when no weights are given or found; CheckpointError for a wrong file.
    """
    path = find_weights("vgg", weights.get("vgg"), "the perceptual loss (loss.perceptual > 0)")
    return PerceptualLoss(VGG19.from_file(path))
