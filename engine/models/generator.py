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

Two options beside the paper's layout (``GeneratorConfig``):

* ``audio="expert"``: the audio encoder has the lip-sync expert's layout
  (``engine.models.syncnet.SyncNetColor``, two residual blocks after the
  256-channel stage), so that a trained expert's audio encoder can be
  copied in and frozen, as §3.2 does with SyncNet's
  (:meth:`Generator.load_audio_encoder`); ``"wav2lip"`` is the Wav2Lip
  generator's layout (one block), trained with the rest.
* ``decoder="warp"``: besides the RGB image, the decoder predicts a smooth
  flow field (at a quarter of the face size, upsampled) that warps the
  identity reference into the target's pose, and a per-pixel blend mask;
  the output is ``m·warp(identity) + (1 − m)·rgb``. Texture (skin, lips,
  teeth) then comes from the person's own pixels wherever the warp can
  explain the target, and the RGB branch paints only what it cannot (an
  opening mouth, teeth that the reference does not show), as DINet (Zhang
  et al. 2023) and IP_LAP (Zhong et al. 2023) do with warped references.
  ``"plain"`` is the paper's decoder and the paper configs' default.
* ``lip_sketch=True``: the mouth is drawn to an explicit shape. A small
  predictor gives the 33 lip and jaw landmarks of the frame
  (``engine.face.LIP_SHAPE_POINTS``) as the person's resting shape (the
  identity reference's own tracked points moved into the frame's head pose,
  ``engine.face.posed_lip_shape``, an input that rides in the pose
  reference's masked half, ``engine.inputs``) plus an audio-driven
  displacement (from the audio embedding and either the bottleneck or,
  with ``lip_predictor="resting"``, the resting shape's own points, which
  say how open the reference's mouth already is; ``python -m train.lips``
  fits that predictor alone, in minutes); the points
  are drawn as Gaussian dots on three maps (outer lip, inner lip, jaw;
  :func:`render_lip_sketch`), with a fourth that fills the opening inside
  the inner lip (:func:`mouth_interior`), and join the decoder's skip
  connections at every scale down to S/8. With the warp decoder the points also move the
  pixels: near the lips and jaw the warp's flow is the one that carries
  the reference's own points onto the drawn ones (:func:`lip_flow`), so
  the lips open and close with the person's own texture by construction;
  inside the drawn opening, where the warp does not bring the reference's
  own opening (its teeth, when it shows them), the RGB branch alone paints
  what the reference cannot show (the dark of the mouth, teeth, tongue). In training the sketch is drawn from the
  target's own landmarks (teacher forcing, ``forward(..., lips=…)``) and the
  predictor learns from them by L1, so the image decoder learns a
  geometric task (draw this mouth shape with this person's texture) instead
  of guessing the shape from sound, which is what makes an L1-trained
  decoder draw a blurred mean mouth. A regression to the mean shrinks the
  predicted motion; the displacement is scaled by ``lip_gain`` (a buffer,
  set after training by matching the spread of the real mouth's opening,
  ``train.run``), which in landmark space is one number, where in pixels
  it cannot be done. The two-stage audio → landmarks → image design is
  that of IP_LAP (Zhong et al. 2023) and MakeItTalk (Zhou et al. 2020).
  With ``lip_context`` > 0 the ``"resting"`` predictor also hears the past:
  the audio embeddings of the windows :data:`LIP_CONTEXT_STEP_S`, 2× and 3×
  that before the frame's own (the mel input grows by that much past audio,
  ``GeneratorInfo.mel_context``; the lookahead does not change). A 0.2 s
  window says what sound is made now, not how the mouth got there; on the
  held-out speakers' frames the predicted inner-lip gap follows the real one
  at r 0.47 from the frame's window alone and 0.54 with three past windows
  (0.24 s more speech; engine/assets/generator.md).
The face size is a parameter: 96 (default), 128, 192 and 256 build. A
``width`` multiplier scales every channel count; ``width=1`` gives the
Wav2Lip channel plan (16…512), the bundled real-time model uses less.

The mel window of our generator is **centred** on its frame (0.1 s of
lookahead), see DESIGN.md "Conventions".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.audio import MEL_FPS, MEL_WINDOW
from engine.checkpoints import FORMAT, VERSION, CheckpointError, GeneratorFormat, atomic_save, describe, load_state
from engine.face import LIP_SHAPE_POINTS
from engine.inputs import IDENTITY_LIPS_COLUMNS, IDENTITY_LIPS_ROW
from engine.models.info import GeneratorInfo
from engine.models.blocks import ConvBlock, TransposeBlock, audio_encoder

_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of :class:`Generator` (stored in our checkpoints).

    size: face crop side in pixels (96, 128, 192 or 256; any size that
        halves down to 3 or 4 works).
    width: channel multiplier (1.0 = Wav2Lip channel plan).
    audio: ``"wav2lip"`` (the Wav2Lip generator's audio encoder; the default
        of checkpoints written before this option) or ``"expert"`` (the lip
        expert's, module doc).
    decoder: ``"plain"`` (the paper's) or ``"warp"`` (module doc).
    lip_sketch: draw the mouth to predicted lip and jaw landmarks (module doc).
    lip_predictor: what the lip predictor of a ``lip_sketch`` generator reads: ``"bottleneck"`` (the
        audio embedding and the fused face bottleneck; the default of checkpoints written before this
        option) or ``"resting"`` (the audio embedding and the resting shape's own points, module doc).
    lip_context: past mel windows that a ``"resting"`` lip predictor also reads, one every
        :data:`LIP_CONTEXT_STEP_S` before the frame's own (module doc); 0 (default): the frame's window alone.
    """

    size: int = 96
    width: float = 1.0
    audio: str = "wav2lip"
    decoder: str = "plain"
    lip_sketch: bool = False
    lip_predictor: str = "bottleneck"
    lip_context: int = 0

    def __post_init__(self):
        if self.audio not in AUDIO_LAYOUTS:
            raise ValueError(f"model.audio must be one of {', '.join(AUDIO_LAYOUTS)}, got {self.audio!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"model.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.lip_predictor not in LIP_PREDICTORS:
            raise ValueError(f"model.lip_predictor must be one of {', '.join(LIP_PREDICTORS)}, "
                             f"got {self.lip_predictor!r}")
        if self.lip_context < 0 or (self.lip_context and not (self.lip_sketch and self.lip_predictor == "resting")):
            raise ValueError(f"model.lip_context must be 0, or more with lip_sketch and lip_predictor 'resting' "
                             f"(got {self.lip_context})")

    def context_starts(self) -> list[int]:
        """Mel frames from the start of the model's mel input to each window the lip predictor reads, the
        frame's own last: for ``lip_context`` 3, ``[0, 6, 13, 19]`` (the windows 0.24, 0.16 and 0.08 s
        before the frame's, then its own; the last is ``GeneratorInfo.mel_context``); ``[0]`` without."""
        back = [round(j * LIP_CONTEXT_STEP_S * MEL_FPS) for j in range(self.lip_context, 0, -1)]
        total = back[0] if back else 0
        return [total - b for b in back] + [total]

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


AUDIO_LAYOUTS = {"wav2lip": 1, "expert": 2}  # residual blocks after the 256-channel stage
DECODERS = ("plain", "warp")
FLOW_LEVEL = 2  # the warp's flow is predicted at scales[FLOW_LEVEL] (S/4) and upsampled: a smooth field
SKETCH_GROUPS = ((0, 12), (12, 20), (20, 33))
"""Point ranges of ``engine.face.LIP_SHAPE_POINTS`` drawn on each sketch map: outer lip, inner lip, jaw."""
SKETCH_MAPS = len(SKETCH_GROUPS) + 1
"""Maps of the sketch: one per point group, then the mouth interior (:func:`mouth_interior`)."""
INTERIOR_EDGE = 0.5 / 96
"""Softness of :func:`mouth_interior`'s edges (the logistic's scale), in face sides: 0.5 px at 96."""
SKETCH_LEVELS = 4
"""The sketch joins the decoder at the finest levels S, S/2, S/4, S/8 (coarser levels hold no shape)."""
SKETCH_SIGMA = 1.2 / 96
"""Radius (standard deviation) of a sketch dot, in face sides: 1.2 px at 96 px."""
LIP_HIDDEN = 256
LIP_CONTEXT_STEP_S = 0.08
"""Spacing of the past mel windows of a lip predictor with ``lip_context`` (two video frames at 25 fps)."""
LIP_PREDICTORS = ("bottleneck", "resting")
LIP_DROPOUT = 0.2
"""Dropout of the ``"resting"`` lip predictor's hidden layers (in training only)."""
RESTING_SCALE = 10.0
"""The ``"resting"`` lip predictor reads the resting shape centred on its mean and times this (face sides → about
unit range) and its output is the displacement times this."""
LIP_FLOW_SIGMA = 4.0 / 96
"""Reach (standard deviation) of each lip point's displacement in :func:`lip_flow`, in face sides: 4 px at 96."""
LIP_FLOW_FLOOR = 0.05
"""Total point weight at which :func:`lip_flow`'s coverage is one half: 2.45 reaches (10 px at 96) from a lone point."""


def _offsets(points: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx [N, P, 1, S], dy [N, P, S, 1])``: each pixel centre minus each of ``points`` ``[N, P, 2]``
    (face sides; pixel i of an S-pixel map spans [i/S, (i+1)/S])."""
    centres = (torch.arange(size, device=points.device, dtype=points.dtype) + 0.5) / size
    return (centres.view(1, 1, 1, size) - points[..., 0, None, None],
            centres.view(1, 1, size, 1) - points[..., 1, None, None])


def _dots(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``[N, P, S, S]``: ``exp(−d²/2σ²)`` of each pixel centre's distance d to each of ``points`` ``[N, P, 2]``."""
    dx, dy = _offsets(points, size)
    return torch.exp(-(dx * dx + dy * dy) / (2 * sigma ** 2))


def lip_flow(source: torch.Tensor, target: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense backward flow that carries ``source`` points onto ``target`` points, and where it holds.

    A Gaussian-weighted (Shepard) interpolation of the point displacements:
    at pixel p, ``flow(p) = Σ w_i(p)(source_i − target_i) / (Σ w_i(p) + F)``
    and ``coverage(p) = Σ w_i(p) / (Σ w_i(p) + F)``, with
    ``w_i(p) = exp(−|p − target_i|²/2σ²)``, σ = :data:`LIP_FLOW_SIGMA` and
    F = :data:`LIP_FLOW_FLOOR`. Sampling the reference at ``p + flow(p)``
    puts its pixel at ``source_i`` onto ``target_i``; far from every point
    the flow fades to zero and the coverage with it. Smooth, differentiable
    in both point sets and ONNX-exportable.

    Args:
        source: ``[N, P, 2]`` the points in the image that is sampled (face sides).
        target: ``[N, P, 2]`` where they go (face sides).
        size: side S of the flow in pixels.

    Returns ``(flow [N, 2, S, S] in face sides (x, y), coverage [N, 1, S, S] in [0, 1))``.
    """
    w = _dots(target, size, LIP_FLOW_SIGMA)  # [N, P, S, S]
    total = w.sum(dim=1, keepdim=True)
    flow = torch.einsum("npij,npc->ncij", w, source - target) / (total + LIP_FLOW_FLOOR)
    return flow, total / (total + LIP_FLOW_FLOOR)


def mouth_interior(points: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 1, S, S]`` in [0, 1]: the inside of the inner-lip contour, the opening of the mouth.

    The contour is the inner-lip group of :data:`SKETCH_GROUPS` (dlib 60–67, in order round the
    mouth) taken as a convex polygon: each pixel centre's signed distance to every edge's line
    (positive on the inner side, whichever way the contour turns) through a logistic of scale
    :data:`INTERIOR_EDGE`, multiplied over the edges. Near 0 for a closed mouth, whose contour has
    no inside (0 where its area is exactly 0); 1 inside an open one. Differentiable in ``points``;
    ONNX-exportable.

    Args:
        points: ``[N, 33, 2]`` float, face sides (as :func:`render_lip_sketch`).
        size: side S of the map in pixels.
    """
    a, b = SKETCH_GROUPS[1]
    p = points[:, a:b]  # [N, 8, 2]
    e = torch.roll(p, -1, dims=1) - p
    turn = torch.sign((p[..., 0] * torch.roll(p[..., 1], -1, dims=1)
                       - torch.roll(p[..., 0], -1, dims=1) * p[..., 1]).sum(dim=1))  # sign of the area
    dx, dy = _offsets(p, size)
    cross = e[..., 0, None, None] * dy - e[..., 1, None, None] * dx  # [N, 8, S, S]
    dist = turn.view(-1, 1, 1, 1) * cross / (e.norm(dim=-1)[..., None, None] + 1e-6)
    return F.logsigmoid(dist / INTERIOR_EDGE).sum(dim=1, keepdim=True).exp() * turn.abs().view(-1, 1, 1, 1)


def render_lip_sketch(points: torch.Tensor, size: int) -> torch.Tensor:
    """Draw lip and jaw points as Gaussian dots, one map per group of :data:`SKETCH_GROUPS`, and the
    mouth's opening (:func:`mouth_interior`) as a last map.

    Args:
        points: ``[N, 33, 2]`` float (x, y) in face sides (``engine.face.lip_shape``: pixel i of the
            S-pixel crop spans [i/S, (i+1)/S]).
        size: side S of the maps in pixels.

    Returns ``[N, 4, S, S]`` in [0, 1] (:data:`SKETCH_MAPS`): on the first three each pixel is the
    largest dot value of its group, ``exp(−d²/2σ²)`` with σ = :data:`SKETCH_SIGMA`. Differentiable in
    ``points``; ONNX-exportable.
    """
    dots = _dots(points, size, SKETCH_SIGMA)  # [N, P, S, S]
    return torch.cat([torch.stack([dots[:, a:b].amax(dim=1) for a, b in SKETCH_GROUPS], dim=1),
                      mouth_interior(points, size)], dim=1)


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
            [-4, 4] centred on each frame (engine.audio); with ``lip_context``,
            ``[N, 1, 80, 16 + info.mel_context]``, the past before the window.
        returns ``[N, 3, S, S]`` float32 RGB in [0, 1].
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        self.info = GeneratorInfo(kind="dubcam", size=config.size, mel_offset_s=-0.1, identity="held", crop="square",
                                  identity_lips=config.lip_sketch, mel_context=config.context_starts()[-1])
        scales, ch = config.scales(), config.channels()
        self.identity_encoder = _encoder(3, config)
        self.pose_encoder = _encoder(3, config)
        audio_ch = ch[-1]
        self.audio_encoder = audio_encoder(audio_ch / 512, res_after_256=AUDIO_LAYOUTS[config.audio])
        self.audio_frozen = False
        self.fusion = nn.Conv2d(2 * ch[-1], ch[-1], 1)
        # Decoder: level j works at scales[-1-j] and meets both encoders' skips there.
        dec = [nn.Sequential(ConvBlock(audio_ch + ch[-1], ch[-1], 1, 1, 0))]
        prev = ch[-1]
        flow_in = None
        for j, s in enumerate(reversed(scales)):
            level = len(scales) - 1 - j
            cout = ch[level]
            up = (TransposeBlock(prev, cout, s, 1, 0) if j == 0
                  else TransposeBlock(prev, cout, 3, 2, 1, 1))
            dec.append(nn.Sequential(up, *[ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(2)]))
            prev = cout + 2 * ch[level] + (SKETCH_MAPS if self._sketched(level) else 0)
            if level == FLOW_LEVEL:
                flow_in = prev
        self.decoder = nn.ModuleList(dec)
        self.output_block = nn.Sequential(
            ConvBlock(prev, ch[0], 3, 1, 1), nn.Conv2d(ch[0], 3, 1), nn.Sigmoid()
        )
        if config.decoder == "warp":
            # Zero-initialised: the warp starts as the identity map and the blend at one half.
            self.flow_head = nn.Conv2d(flow_in, 2, 3, 1, 1)
            self.blend_head = nn.Conv2d(prev, 1, 3, 1, 1)
            for head in (self.flow_head, self.blend_head):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        if config.lip_sketch:
            if config.size < IDENTITY_LIPS_COLUMNS:
                raise ValueError(f"lip_sketch needs a face size of at least {IDENTITY_LIPS_COLUMNS} px "
                                 "(the reference's lip points ride in one row, engine.inputs)")
            # The target's points = the resting shape (an input) + the audio-driven displacement (from 0).
            points = 2 * len(LIP_SHAPE_POINTS)
            if config.lip_predictor == "resting":
                heard = audio_ch * (1 + config.lip_context)
                self.lip_delta = nn.Sequential(nn.Linear(heard + points, LIP_HIDDEN), nn.ReLU(),
                                               nn.Dropout(LIP_DROPOUT), nn.Linear(LIP_HIDDEN, LIP_HIDDEN), nn.ReLU(),
                                               nn.Dropout(LIP_DROPOUT), nn.Linear(LIP_HIDDEN, points))
            else:
                self.lip_delta = nn.Sequential(nn.Linear(audio_ch + ch[-1], LIP_HIDDEN), nn.ReLU(),
                                               nn.Linear(LIP_HIDDEN, points))
            nn.init.zeros_(self.lip_delta[-1].weight)
            nn.init.zeros_(self.lip_delta[-1].bias)
            self.register_buffer("lip_gain", torch.ones(()))
            upper = torch.ones(1, 1, config.size, config.size)
            upper[..., config.size // 2:, :] = 0
            self.register_buffer("pose_upper", upper, persistent=False)

    def _sketched(self, level: int) -> bool:
        return self.config.lip_sketch and level < SKETCH_LEVELS

    def forward(self, faces: torch.Tensor, mels: torch.Tensor, *, lips: torch.Tensor | None = None,
                return_lips: bool = False):
        """See the class doc. With ``lip_sketch``: ``lips`` ``[N, 33, 2]`` (face sides) draws the sketch
        from these points instead of the predicted ones (training), and ``return_lips`` also returns the
        predicted points before ``lip_gain`` (``(image, points)``)."""
        pose, identity = faces[:, :3], faces[:, 3:]
        resting = own = None
        if self.config.lip_sketch:
            resting, own = self.identity_lips(faces)
            pose = pose * self.pose_upper
        id_feats, pose_feats = [], []
        a, b = identity, pose
        for id_block, pose_block in zip(self.identity_encoder, self.pose_encoder):
            a, b = id_block(a), pose_block(b)
            id_feats.append(a)
            pose_feats.append(b)
        fused = self.fusion(torch.cat([id_feats.pop(), pose_feats.pop()], dim=1))
        audio, heard = self.hear(mels)
        x = self.decoder[0](torch.cat([audio, fused], dim=1))
        sketch, predicted, drawn = [], None, None
        if self.config.lip_sketch:
            predicted = self.predict_lips(heard, fused, resting)
            drawn = lips if lips is not None else resting + self.lip_gain * (predicted - resting)
            sketch = [render_lip_sketch(drawn, faces.shape[-1])]
            for _ in range(1, SKETCH_LEVELS):
                sketch.append(F.avg_pool2d(sketch[-1], 2))
        flow = None
        for block in self.decoder[1:]:
            parts = [block(x), id_feats.pop(), pose_feats.pop()]
            if self._sketched(len(id_feats)):
                parts.append(sketch[len(id_feats)])
            x = torch.cat(parts, dim=1)
            if self.config.decoder == "warp" and len(id_feats) == FLOW_LEVEL:
                flow = self.flow_head(x)
        out = self.output_block(x)
        if self.config.decoder == "warp":
            out = self._blend(identity, flow, x, out, None if drawn is None else (own, drawn, sketch[0][:, -1:]))
        return (out, predicted) if return_lips else out

    def hear(self, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(audio, heard)`` of mel inputs ``[N, 1, 80, info.mel_frames]``: ``audio`` ``[N, D, 1, 1]``, the
        audio encoder's embedding of the frame's own window (the last 16 mel frames), which the decoder
        reads; ``heard`` ``[N, D·(1 + lip_context), 1, 1]``, what the lip predictor reads: the embeddings of
        the past windows (:meth:`GeneratorConfig.context_starts`) then ``audio`` (``audio`` itself without
        ``lip_context``). Raises ValueError for mels of another width."""
        if mels.shape[-1] != self.info.mel_frames:
            raise ValueError(f"mels of {mels.shape[-1]} frames, this generator takes {self.info.mel_frames} "
                             f"(GeneratorInfo.mel_frames)")
        audio = self.audio_encoder(mels[..., -MEL_WINDOW:])
        if not self.config.lip_context:
            return audio, audio
        past = [mels[..., a: a + MEL_WINDOW] for a in self.config.context_starts()[:-1]]
        return audio, torch.cat([*self.audio_encoder(torch.cat(past)).chunk(len(past)), audio], dim=1)

    @staticmethod
    def identity_lips(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The identity reference's lip points that ride in ``faces`` ``[N, 6, S, S]`` (``engine.inputs``):
        ``(posed, own)``, each ``[N, 33, 2]`` in face sides; ``posed`` is the resting shape of the sketch."""
        row = faces[:, 0:2, IDENTITY_LIPS_ROW, :IDENTITY_LIPS_COLUMNS].transpose(1, 2)
        return row[:, :len(LIP_SHAPE_POINTS)], row[:, len(LIP_SHAPE_POINTS):]

    def predict_lips(self, audio: torch.Tensor, fused: torch.Tensor | None, resting: torch.Tensor) -> torch.Tensor:
        """``[N, 33, 2]`` in face sides: the predicted lip and jaw landmarks of the frame, the resting shape
        ``resting`` (module doc) plus the audio-driven displacement. The predictor reads the audio embedding
        and, by ``config.lip_predictor``, the fused bottleneck features or the resting shape itself (centred,
        times :data:`RESTING_SCALE`: how open the reference's mouth is, which the displacement must undo),
        without moving them (detached): the image path learns from the image losses only. ``audio``
        ``[N, D·(1 + lip_context), 1, 1]`` is the audio encoder's output, with ``lip_context`` that of each
        past window then the frame's (channels, in :meth:`GeneratorConfig.context_starts` order); ``fused``
        may be None for the ``"resting"`` kind (``train.lips`` fits it on cached audio embeddings alone)."""
        audio = audio.detach().flatten(1)
        if self.config.lip_predictor == "resting":
            shape = (resting - resting.mean(dim=1, keepdim=True)).flatten(1) * RESTING_SCALE
            return resting + self.lip_delta(torch.cat([audio, shape], dim=1)).view(resting.shape) / RESTING_SCALE
        fused = fused.detach().flatten(1)
        return resting + self.lip_delta(torch.cat([audio, fused], dim=1)).view(resting.shape)

    def _blend(self, identity, flow, features, rgb, lip_points=None):
        """``m·warp(identity, flow) + (1 − m)·rgb``; the flow is in units of the face side
        (grid_sample's [-1, 1] coordinates halved), bilinear, border pixels repeated. ``lip_points``
        ``(own, drawn, interior)``: near the points the flow is :func:`lip_flow`'s from the reference's
        own points to the drawn ones, weighted by its coverage; and inside the drawn mouth's opening
        (``interior`` ``[N, 1, S, S]``, :func:`mouth_interior`), where the warp does not sample the
        reference's own opening (its :func:`mouth_interior`, warped along), the blend is the RGB
        branch's alone: there a warp could only stretch the reference's lips over an opening that the
        reference does not show, while teeth that it does show are carried in."""
        size = identity.shape[-1]
        flow = F.interpolate(flow, size=(size, size), mode="bilinear", align_corners=False)
        source, interior = identity, None
        if lip_points is not None:
            own, drawn, interior = lip_points
            prior, coverage = lip_flow(own, drawn, size)
            flow = coverage * prior + (1 - coverage) * flow
            source = torch.cat([identity, mouth_interior(own, size)], dim=1)
        n = identity.shape[0]
        base = torch.linspace(-1 + 1 / size, 1 - 1 / size, size, device=identity.device, dtype=identity.dtype)
        grid = torch.stack(torch.meshgrid(base, base, indexing="xy"), dim=-1).expand(n, size, size, 2)
        warped = F.grid_sample(source, grid + 2 * flow.permute(0, 2, 3, 1), mode="bilinear",
                               padding_mode="border", align_corners=False)
        m = torch.sigmoid(self.blend_head(features))
        if interior is not None:
            m = m * (1 - interior * (1 - warped[:, 3:]))
        return m * warped[:, :3] + (1 - m) * rgb

    def load_audio_encoder(self, expert: nn.Module, freeze: bool = True) -> None:
        """Copy a lip-sync expert's audio encoder (``SyncNetColor.audio_encoder``) into this
        generator and, with ``freeze``, keep it fixed: no gradients and BatchNorm in eval mode
        whatever ``train()`` says (paper §3.2: "the audio encoder of SyncNet, frozen").

        Raises ValueError when the layouts differ (the generator needs
        ``audio="expert"`` and the expert's width = the generator's).
        """
        try:
            self.audio_encoder.load_state_dict(expert.audio_encoder.state_dict())
        except RuntimeError as e:
            raise ValueError(f"the expert's audio encoder does not fit this generator (model.audio="
                             f"{self.config.audio!r}, width {self.config.width}; an expert of width "
                             f"{self.config.width} and model.audio='expert' are needed): "
                             f"{str(e).splitlines()[0]}") from e
        if freeze:
            self.audio_encoder.requires_grad_(False)
            self.audio_frozen = True
            self.audio_encoder.eval()

    def train(self, mode: bool = True) -> "Generator":
        super().train(mode)
        if self.audio_frozen:
            self.audio_encoder.eval()
        return self

    def config_dict(self) -> dict:
        return asdict(self.config)


def save_generator(model: Generator, path, meta: dict | None = None, half: bool = False) -> None:
    """Write our generator format (atomic): ``{"format": "dubcam-generator", "version", "config",
    "state_dict", "meta"}``. ``meta``: free-form provenance (data, steps, scores).

    ``half`` stores floating-point tensors as float16 (half the file; they
    load back into float32 parameters, a relative change of about 1e-3).
    """
    sd = model.state_dict()
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    atomic_save({"format": FORMAT, "version": VERSION, "config": model.config_dict(),
                 "state_dict": sd, "meta": dict(meta or {})}, path)


def _build(obj: dict, path) -> Generator:
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer dubcam (format version {obj['version']})")
    model = load_state(Generator(GeneratorConfig(**obj["config"])), obj["state_dict"], path, "a dubcam generator")
    if obj.get("meta"):
        model.meta = obj["meta"]
    return model


CHECKPOINT = GeneratorFormat("a dubcam generator", lambda obj: describe(obj) == "a dubcam generator", _build)
"""Our format in ``engine.models.GENERATOR_FORMATS``."""
