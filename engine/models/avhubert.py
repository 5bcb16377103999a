"""AV-HuBERT encoder (Shi et al., 2022) in pure PyTorch, reading fairseq checkpoints.

Spec: ``MODELS_SPEC.md`` §1.1-1.5. Module and parameter names equal the keys
of the published checkpoints (after the ``encoder.w2v_model.`` prefix of the
fine-tuned files), so :meth:`AVHubert.from_checkpoint` reads them with a plain
``load_state_dict``; :func:`encoder_state_dict` is the whole key adapter.

Data path (``extract_finetune`` of the reference)::

    audio [B,104,T]     -> feature_extractor_audio: proj                  -> [B,T,D]
    video [B,1,T,88,88] -> feature_extractor_video: ResEncoder [B,512,T],
                                                    proj                  -> [B,T,D]
    concat [audio, video] [B,T,2D] -> layer_norm -> post_extract_proj [B,T,D]
    -> + pos_conv(x) -> N pre-LN transformer layers -> encoder.layer_norm -> [B,T,D]

A missing modality is replaced by zeros after its frontend. One output frame
per video frame (25 Hz); nothing is downsampled in time. The model is fully
differentiable (in eval mode it serves as a frozen loss network).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.fairseq_pickle import load_fairseq_checkpoint

log = logging.getLogger(__name__)

__all__ = [
    "AVHubert",
    "AVHubertConfig",
    "BASE",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "LARGE",
    "checkpoint_stage",
    "encoder_state_dict",
]

# Video input normalisation of the reference data pipeline (spec §1.6 step 4):
# grayscale in [0, 1], then (x - IMAGE_MEAN) / IMAGE_STD.
IMAGE_MEAN = 0.421
IMAGE_STD = 0.165

_RESNET_DIM = 512
_SEQ2SEQ_PREFIX = "encoder.w2v_model."
_PRETRAINING_ONLY = ("final_proj.", "label_embs_concat", "mask_emb")
# Options of the reference ``AVHubertConfig`` that this implementation fixes:
# name -> (the only supported value, the reference default used when absent).
_FIXED_OPTIONS = {
    "layer_norm_first": (True, False),
    "modality_fuse": ("concat", "concat"),
    "sub_encoder_layers": (0, 0),
    "resnet_relu_type": ("prelu", "prelu"),
    "activation_fn": ("gelu", "gelu"),
}


@dataclass(frozen=True)
class AVHubertConfig:
    """Encoder hyper-parameters (spec §1.1); defaults are BASE.

    Field names are those of the reference ``AVHubertConfig``.

    Raises:
        ValueError: ``encoder_embed_dim`` not divisible by
            ``encoder_attention_heads`` or by ``conv_pos_groups``.
    """

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    conv_pos: int = 128
    conv_pos_groups: int = 16
    audio_feat_dim: int = 104

    def __post_init__(self) -> None:
        for name in ("encoder_attention_heads", "conv_pos_groups"):
            if self.encoder_embed_dim % getattr(self, name):
                raise ValueError(f"encoder_embed_dim={self.encoder_embed_dim} is not divisible by {name}")

    @classmethod
    def from_fairseq_cfg(cls, cfg: Mapping[str, Any]) -> "AVHubertConfig":
        """Read the encoder config from a fairseq checkpoint ``cfg`` (plain dicts).

        Pretrained files (``cfg["model"]["_name"] == "av_hubert"``) hold it in
        ``cfg["model"]``; fine-tuned ones (``av_hubert_seq2seq``) nest the
        pretraining config in ``cfg["model"]["w2v_args"]["model"]``. Keys that
        are absent fall back to the dataclass defaults (real configs omit
        e.g. ``encoder_layers`` for BASE, spec §1.1).

        Raises:
            ValueError: the config asks for a variant this implementation does
                not cover (post-LN, ``modality_fuse="add"``, per-modality
                transformer layers, ReLU ResNet, a non-GELU activation).
        """
        model_cfg = cfg.get("model") or {}
        if model_cfg.get("w2v_args"):
            model_cfg = model_cfg["w2v_args"].get("model") or {}
        for name, (supported, default) in _FIXED_OPTIONS.items():
            value = model_cfg.get(name, default)
            if value != supported:
                raise ValueError(f"AV-HuBERT option {name}={value!r} is not supported (only {supported!r})")
        return cls(**{f.name: model_cfg[f.name] for f in fields(cls) if model_cfg.get(f.name) is not None})


BASE = AVHubertConfig()
LARGE = AVHubertConfig(
    encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16
)


class BasicBlock(nn.Module):
    """ResNet BasicBlock with PReLU (spec §1.2 step 3).

    conv3x3 -> bn1 -> relu1 -> conv3x3 -> bn2 -> (+ residual, through
    ``downsample`` = 1x1 conv + BN when stride or width changes) -> relu2.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.PReLU(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + residual)


def _resnet_layer(inplanes: int, planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))


class ResNetTrunk(nn.Module):
    """ResNet-18 without its stem: layer1-4 (64/128/256/512, strides 1/2/2/2),
    global average pool. ``[N,64,H,W] -> [N,512]`` (spec §1.2 step 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _resnet_layer(64, 64, stride=1)
        self.layer2 = _resnet_layer(64, 128, stride=2)
        self.layer3 = _resnet_layer(128, 256, stride=2)
        self.layer4 = _resnet_layer(256, _RESNET_DIM, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class ResEncoder(nn.Module):
    """Visual frontend (spec §1.2): a 3-D conv stem on the clip, then a 2-D
    ResNet-18 trunk on every frame.

    ``[B,1,T,88,88]`` normalised grayscale -> ``[B,512,T]``; T is preserved
    (the stem's temporal kernel 5 is padded by 2).
    """

    def __init__(self) -> None:
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            nn.PReLU(64),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        self.trunk = ResNetTrunk()

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[0], video.shape[2]
        x = self.frontend3D(video)  # [B,64,T,22,22]
        x = self.trunk(x.transpose(1, 2).flatten(0, 1))  # [B*T,512]
        return x.view(batch, frames, -1).transpose(1, 2)


class Frontend(nn.Module):
    """One modality's feature extractor (the reference's ``SubModel``, spec
    §1.2 step 5 and §1.3): optional ``resnet``, then ``proj`` per frame.

    ``[B,C,T]`` (audio, C=104) or ``[B,1,T,H,W]`` (video) -> ``[B,T,D]``.
    """

    def __init__(self, input_dim: int, embed_dim: int, resnet: nn.Module | None = None) -> None:
        super().__init__()
        self.resnet = resnet
        self.proj = nn.Linear(input_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        if self.resnet is not None:
            x = self.resnet(x)
        return self.proj(x.transpose(1, 2))


class PositionalConv(nn.Module):
    """wav2vec 2.0's convolutional positional embedding before its GELU
    (spec §1.4 step 5): grouped Conv1d(D->D, k, padding k//2) under
    ``weight_norm(dim=2)``, then fairseq's ``SamePad`` (an even kernel gives
    one extra frame; the last is dropped).

    The weight is kept as the checkpoint's factors ``weight_g`` [1,1,k] and
    ``weight_v`` [D, D/groups, k]: ``w = g * v / ||v||``, the norm taken over
    dims 0 and 1 for each kernel tap. ``[B,D,T] -> [B,D,T]``.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.kernel_size = kernel_size
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.weight_g = nn.Parameter(torch.empty(1, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (kernel_size * channels)))
        with torch.no_grad():
            self.weight_g.copy_(self.weight_v.norm(dim=(0, 1), keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        out = F.conv1d(x, weight, self.bias, padding=self.kernel_size // 2, groups=self.groups)
        return out[..., :-1] if self.kernel_size % 2 == 0 else out


class SelfAttention(nn.Module):
    """fairseq ``MultiheadAttention`` as self-attention: separate q/k/v/out
    projections with bias, softmax(q k^T / sqrt(head_dim)) v per head.
    ``key_padding_mask`` [B,T] (True = pad) keeps padded keys out."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        batch, frames, dim = x.shape
        q, k, v = (
            proj(x).view(batch, frames, self.num_heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        attend = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        return self.out_proj(out.transpose(1, 2).reshape(batch, frames, dim))


class TransformerSentenceEncoderLayer(nn.Module):
    """Pre-LN transformer layer (spec §1.4 step 6)::

        x = x + self_attn(self_attn_layer_norm(x))
        x = x + fc2(gelu(fc1(final_layer_norm(x))))     # gelu in float32
    """

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = SelfAttention(dim, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), padding_mask)
        hidden = self.fc1(self.final_layer_norm(x))
        return x + self.fc2(F.gelu(hidden.float()).type_as(hidden))


class TransformerEncoder(nn.Module):
    """wav2vec 2.0 ``TransformerEncoder`` with ``layer_norm_first`` (spec §1.4
    steps 4-7): zero padded frames, add ``pos_conv``, run the layers, apply
    the final ``layer_norm`` unless stopped early at ``output_layer``."""

    def __init__(self, cfg: AVHubertConfig) -> None:
        super().__init__()
        self.pos_conv = nn.Sequential(
            PositionalConv(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups), nn.GELU()
        )
        self.layers = nn.ModuleList(TransformerSentenceEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, output_layer: int | None = None) -> Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        for layer in self.layers[:output_layer]:
            x = layer(x, padding_mask)
        return self.layer_norm(x) if output_layer is None else x


class AVHubert(nn.Module):
    """The AV-HuBERT encoder (``AVHubertModel`` without its pretraining heads).

    Build with a config (``AVHubert(BASE)``, ``AVHubert(LARGE)``) or load a
    published checkpoint with :meth:`from_checkpoint`. Parameters are
    float32; ``.to(dtype)`` works as for any module.
    """

    def __init__(self, cfg: AVHubertConfig = BASE) -> None:
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.cfg = cfg
        self.stage = "unknown"  # of a loaded file: "pretrained" | "fine-tuned" (checkpoint_stage)
        self.feature_extractor_audio = Frontend(cfg.audio_feat_dim, dim)
        self.feature_extractor_video = Frontend(_RESNET_DIM, dim, resnet=ResEncoder())
        self.layer_norm = nn.LayerNorm(2 * dim)
        self.post_extract_proj = nn.Linear(2 * dim, dim)
        self.encoder = TransformerEncoder(cfg)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> "AVHubert":
        """Load a fairseq AV-HuBERT checkpoint (pretrained ``av_hubert`` or
        fine-tuned ``av_hubert_seq2seq`` / ``av_hubert_ctc``, BASE or LARGE;
        spec §1.5).

        The config comes from the file's ``cfg`` (see
        :meth:`AVHubertConfig.from_fairseq_cfg`); the weights through
        :func:`encoder_state_dict`. Returns the model on the CPU in eval mode,
        with ``stage`` set to :func:`checkpoint_stage` of the file. A
        pretrained (not fine-tuned) file loads with a warning: Yaman et al.
        2024 use the one fine-tuned for lip reading (§3.4, "We utilize the
        finetuned version"), e.g. ``base_vox_433h.pt``, for the sync loss and
        the AVS metrics.

        Raises:
            FileNotFoundError: no such file.
            engine.checkpoints.CheckpointError: anything else, in one line
                that starts with the path: a file that is not a readable
                fairseq checkpoint, a refused global or state change
                (:class:`engine.fairseq_pickle.UnsafeCheckpointError`), an
                unsupported config (see ``from_fairseq_cfg``), or weights that
                do not fit the config (missing, unexpected or mis-shaped keys
                are listed).
        """
        from engine.checkpoints import CheckpointError

        checkpoint = load_fairseq_checkpoint(path)
        try:
            cfg = AVHubertConfig.from_fairseq_cfg(checkpoint["cfg"])
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a supported AV-HuBERT config: {e}") from e
        model = cls(cfg)
        try:
            model.load_state_dict(encoder_state_dict(checkpoint["model"]))
        except RuntimeError as e:
            raise CheckpointError(f"{path}: the weights do not fit the AV-HuBERT of its config "
                                  f"({cfg.encoder_layers} layers, dim {cfg.encoder_embed_dim}): "
                                  + " ".join(str(e).split())) from e
        model.stage = checkpoint_stage(checkpoint["cfg"], checkpoint["model"])
        if model.stage != "fine-tuned":
            log.warning("%s is a %s AV-HuBERT, not one fine-tuned for lip reading: the paper (Yaman et al. "
                        "2024 §3.4) uses the fine-tuned one, e.g. base_vox_433h.pt", path,
                        "pretrained" if model.stage == "pretrained" else "possibly pretrained")
        return model.eval()

    def extract_features(
        self,
        audio: Tensor | None = None,
        video: Tensor | None = None,
        padding_mask: Tensor | None = None,
        output_layer: int | None = None,
    ) -> Tensor:
        """Encode audio, video or both (``extract_finetune`` semantics, spec §1.4).

        Args:
            audio: ``[B, 104, T]`` float, stacked log filterbanks normalised
                per frame (``engine.audio.avhubert_audio_features``, spec
                §1.7, transposed), or None.
            video: ``[B, 1, T, 88, 88]`` float, grayscale mouth ROI in [0, 1]
                normalised as ``(x - IMAGE_MEAN) / IMAGE_STD`` (spec §1.6), or
                None.
            padding_mask: ``[B, T]`` bool, True marks padded frames; they are
                zeroed before the positional conv and ignored as attention
                keys. Their outputs are meaningless.
            output_layer: 1-based index of the transformer layer to stop
                after, returned **without** the final LayerNorm; None runs all
                layers and applies ``encoder.layer_norm`` (what the
                fine-tuned models expose as ``encoder_out``).

        Returns:
            ``[B, T, D]`` in the model's dtype (the inputs must share it and
            its device), one row per video frame (25 Hz). A missing modality
            is replaced by zeros after its frontend, as in the reference's
            modality dropout.

        Raises:
            ValueError: both inputs None, wrong ranks or channel counts,
                audio and video of different B or T, a padding mask that is
                not ``[B, T]`` bool, or ``output_layer`` outside
                ``1..encoder_layers``.
        """
        self._check_inputs(audio, video, padding_mask, output_layer)
        features_audio = None if audio is None else self.feature_extractor_audio(audio)
        features_video = None if video is None else self.feature_extractor_video(video)
        if features_audio is None:
            features_audio = torch.zeros_like(features_video)
        if features_video is None:
            features_video = torch.zeros_like(features_audio)
        x = self.layer_norm(torch.cat([features_audio, features_video], dim=-1))
        return self.encoder(self.post_extract_proj(x), padding_mask, output_layer)

    forward = extract_features

    def _check_inputs(
        self, audio: Tensor | None, video: Tensor | None, padding_mask: Tensor | None, output_layer: int | None
    ) -> None:
        if audio is None and video is None:
            raise ValueError("AV-HuBERT needs audio, video or both")
        if audio is not None and (audio.ndim != 3 or audio.shape[1] != self.cfg.audio_feat_dim):
            raise ValueError(f"audio must be [B, {self.cfg.audio_feat_dim}, T], got {tuple(audio.shape)}")
        if video is not None and (video.ndim != 5 or video.shape[1] != 1):
            raise ValueError(f"video must be [B, 1, T, H, W], got {tuple(video.shape)}")
        sizes = {(x.shape[0], x.shape[2]) for x in (audio, video) if x is not None}
        if len(sizes) > 1:
            raise ValueError(f"audio and video differ in batch size or frame count: {sorted(sizes)}")
        (size,) = sizes
        if padding_mask is not None and (padding_mask.dtype != torch.bool or tuple(padding_mask.shape) != size):
            raise ValueError(f"padding_mask must be bool {size}, got {padding_mask.dtype} {tuple(padding_mask.shape)}")
        if output_layer is not None and not 1 <= output_layer <= self.cfg.encoder_layers:
            raise ValueError(f"output_layer must be in 1..{self.cfg.encoder_layers}, got {output_layer}")


def checkpoint_stage(cfg: Mapping[str, Any], state_dict: Mapping[str, Any]) -> str:
    """Whether a fairseq AV-HuBERT checkpoint is ``"pretrained"`` (``av_hubert``, e.g.
    ``base_vox_iter5.pt``: self-supervised only) or ``"fine-tuned"`` (``av_hubert_seq2seq`` /
    ``av_hubert_ctc``, e.g. ``base_vox_433h.pt``: trained further for lip reading), from its config
    (``cfg["model"]["_name"]``, a nested ``w2v_args``, spec §1.5) or else its keys (the
    ``encoder.w2v_model.`` prefix of fine-tuned files; the pretraining heads ``final_proj`` /
    ``label_embs_concat`` of pretrained ones); ``"unknown"`` when neither says."""
    model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else None
    model_cfg = model_cfg if isinstance(model_cfg, Mapping) else {}
    name = str(model_cfg.get("_name") or "")
    if model_cfg.get("w2v_args") or name.startswith(("av_hubert_seq2seq", "av_hubert_ctc")):
        return "fine-tuned"
    if any(key.startswith(_SEQ2SEQ_PREFIX) for key in state_dict):
        return "fine-tuned"
    if name == "av_hubert" or any(key.startswith(_PRETRAINING_ONLY[:2]) for key in state_dict):
        return "pretrained"
    return "unknown"


def encoder_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a fairseq AV-HuBERT state dict onto :class:`AVHubert`'s keys (spec §1.5).

    Fine-tuned (seq2seq/CTC) files keep the encoder under
    ``encoder.w2v_model.``: that prefix is stripped and everything else (the
    decoder) dropped. Pretraining-only entries (``final_proj.*``,
    ``label_embs_concat``, ``mask_emb``) are dropped. Tensors are not copied.
    """
    if any(key.startswith(_SEQ2SEQ_PREFIX) for key in state_dict):
        state_dict = {
            key.removeprefix(_SEQ2SEQ_PREFIX): value
            for key, value in state_dict.items()
            if key.startswith(_SEQ2SEQ_PREFIX)
        }
    return {key: value for key, value in state_dict.items() if not key.startswith(_PRETRAINING_ONLY)}
