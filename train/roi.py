"""Differentiable paste-back and AV-HuBERT mouth ROI (Yaman et al. 2024 §3.5; DESIGN.md "Training").

The AV-HuBERT sync loss judges generated faces the way the metrics judge a
finished video: the generated S×S face is pasted into the real frame
exactly as :class:`engine.compose.Compositor` pastes it (resized to the
rounded face box, blended with :func:`engine.compose.lower_face_mask`, no
colour match), and the mouth ROI is cut from the result with the per-frame
affine of :func:`engine.face.mouth_roi_affines` (bilinear, pixel centres at
integer coordinates, as ``cv2.warpAffine``), converted to grayscale with
BT.601 weights, centre-cropped to 88×88 and normalised with AV-HuBERT's
mean/std (spec §1.6). Here every step is a ``torch`` op, so gradients flow
from AV-HuBERT back to the generator.

Frames are not kept whole: ``train.preprocess`` stores, per frame, the
source pixels that the ROI reads (``roi_frames``, a ``region`` below) and
their top-left source pixel (``roi_origin``). The paste only writes region
pixels; the sampling is linear in the pixels, so nothing outside a region matters.
Rounding aside (the compositor writes uint8 frames), the result equals
``Compositor.paste`` followed by the metrics' ROI warp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.face import MOUTH_ROI_CROP, MOUTH_ROI_SIZE
from engine.models.avhubert import IMAGE_MEAN, IMAGE_STD

BT601 = (0.299, 0.587, 0.114)  # RGB weights of cv2's BGR2GRAY on the BGR frame


def _pixel_centres(height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return xs, ys


def _sample(images: torch.Tensor, x: torch.Tensor, y: torch.Tensor, padding: str,
            mode: str = "bilinear") -> torch.Tensor:
    """``images`` ``[N, C, H, W]`` sampled (``mode``: ``"bilinear"`` or ``"bicubic"``, whose kernel
    (a = −0.75) is ``cv2``'s ``INTER_CUBIC``) at pixel coordinates ``x, y`` ``[N, h, w]`` (pixel
    centres at integers) → ``[N, C, h, w]``."""
    height, width = images.shape[-2:]
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], dim=-1)
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode=padding, align_corners=False)


def paste_faces(regions: torch.Tensor, origins: torch.Tensor, faces: torch.Tensor, boxes: torch.Tensor,
                frame_sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste generated faces into frame regions, as ``Compositor.paste`` does (without rounding).

    Args:
        regions: ``[N, 3, H, W]`` float frame pixels in [0, 1] (``roi_frames``).
        origins: ``[N, 2]`` source pixel (x, y) of each region's top-left pixel.
        faces: ``[N, 3, S, S]`` generated faces in [0, 1].
        boxes: ``[N, 4]`` face boxes in whole source pixels ``(x0, y0, x1, y1)``
            (:func:`engine.face.box_pixels` of the crop box).
        frame_sizes: ``[N, 2]`` source frame (width, height): nothing is
            pasted outside the frame.
        mask: ``[S, S]`` paste mask (:func:`engine.compose.lower_face_mask`).

    Returns ``[N, 3, H, W]``: inside the box and the frame,
    ``region + m·(face − region)`` with the face resized bicubically and the
    mask bilinearly (half-pixel centres, edge clamp: ``cv2.resize``
    ``INTER_CUBIC`` and ``INTER_LINEAR``) to the box, clipped to [0, 1] as the
    compositor's uint8 frame is; the region elsewhere. Differentiable in ``faces`` (and ``regions``).
    """
    n, _, height, width = regions.shape
    size = faces.shape[-1]
    dtype = torch.float32
    xs, ys = _pixel_centres(height, width, regions.device, dtype)
    origins, boxes, frame_sizes = origins.to(dtype), boxes.to(dtype), frame_sizes.to(dtype)
    x = xs[None] + origins[:, 0, None, None]  # source pixel of each region pixel
    y = ys[None] + origins[:, 1, None, None]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    sx = (x - x0 + 0.5) * size / (x1 - x0) - 0.5  # cv2.resize: destination → source pixel
    sy = (y - y0 + 0.5) * size / (y1 - y0) - 0.5
    inside = ((x >= x0) & (x < x1) & (y >= y0) & (y < y1) & (x >= 0) & (y >= 0)
              & (x < frame_sizes[:, 0, None, None]) & (y < frame_sizes[:, 1, None, None]))
    pasted = _sample(faces, sx, sy, "border", "bicubic")  # as Compositor enlarges (compose.PASTE_INTERPOLATION)
    alpha = _sample(mask.to(faces)[None, None].expand(n, 1, size, size), sx, sy, "border")
    alpha = alpha * inside[:, None].to(alpha.dtype)
    return (regions + alpha * (pasted - regions)).clamp(0.0, 1.0)  # the bicubic kernel overshoots; cv2 clips


def mouth_rois(regions: torch.Tensor, origins: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
    """The 96×96 grayscale mouth ROIs of frame regions, differentiably.

    Args:
        regions: ``[N, 3, H, W]`` RGB in [0, 1].
        origins: ``[N, 2]`` source pixel (x, y) of each region's top-left pixel.
        affines: ``[N, 2, 3]`` source pixels → ROI pixels (``roi_affine``).

    Returns ``[N, 96, 96]`` float32 in [0, 1]: ROI pixel (c, r) is the region
    sampled bilinearly at ``affine⁻¹·(c, r, 1) − origin`` (zero outside the
    region), then ``0.299 R + 0.587 G + 0.114 B``.
    """
    dtype = torch.float32
    a = affines.to(dtype)
    linear = torch.linalg.inv(a[:, :, :2])
    shift = -(linear @ a[:, :, 2:])[..., 0]
    c, r = _pixel_centres(MOUTH_ROI_SIZE, MOUTH_ROI_SIZE, regions.device, dtype)
    x = linear[:, 0, 0, None, None] * c + linear[:, 0, 1, None, None] * r + shift[:, 0, None, None]
    y = linear[:, 1, 0, None, None] * c + linear[:, 1, 1, None, None] * r + shift[:, 1, None, None]
    rgb = _sample(regions, x - origins[:, 0, None, None].to(dtype), y - origins[:, 1, None, None].to(dtype),
                  "zeros")
    weights = torch.tensor(BT601, device=rgb.device, dtype=rgb.dtype)
    return (rgb * weights[None, :, None, None]).sum(1)


def avhubert_video(rois: torch.Tensor) -> torch.Tensor:
    """``[B, T, 96, 96]`` grayscale ROIs in [0, 1] → AV-HuBERT video input ``[B, 1, T, 88, 88]``
    (centre crop 88, ``(x − 0.421) / 0.165``; spec §1.6 step 4)."""
    o = (MOUTH_ROI_SIZE - MOUTH_ROI_CROP) // 2
    return ((rois[..., o: o + MOUTH_ROI_CROP, o: o + MOUTH_ROI_CROP] - IMAGE_MEAN) / IMAGE_STD)[:, None]


def context_rois(batch: dict[str, torch.Tensor], faces: torch.Tensor | None,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mouth ROIs of sync-loss contexts (``train.data.context_arrays`` keys, batched), real and
    with generated faces pasted in.

    Args:
        batch: ``ctx_frames`` ``[B, C, H, W, 3]`` uint8, ``ctx_origin``,
            ``ctx_affine``, ``ctx_boxes``, ``ctx_frame_size`` ``[B, C, ...]``,
            ``ctx_start`` ``[B]``.
        faces: ``[B, k, 3, S, S]`` generated faces for context frames
            ``ctx_start .. ctx_start + k − 1``, or None.
        mask: ``[S, S]`` paste mask.

    Returns ``(real, fake)``: ``[B, C, 96, 96]`` ROIs of the real frames, and
    the same with the k generated faces pasted (None without ``faces``);
    ``fake`` is differentiable in ``faces``.
    """
    frames = batch["ctx_frames"]
    b, c = frames.shape[:2]
    regions = frames.flatten(0, 1).permute(0, 3, 1, 2).float() / 255.0
    origin, affine = batch["ctx_origin"].flatten(0, 1), batch["ctx_affine"].flatten(0, 1)
    real = mouth_rois(regions, origin, affine)
    if faces is None:
        return real.unflatten(0, (b, c)), None
    k = faces.shape[1]
    steps = batch["ctx_start"][:, None] + torch.arange(k, device=frames.device)
    flat = (torch.arange(b, device=frames.device)[:, None] * c + steps).flatten()
    pasted = paste_faces(regions[flat], origin[flat], faces.flatten(0, 1).float(),
                         batch["ctx_boxes"].flatten(0, 1)[flat], batch["ctx_frame_size"].flatten(0, 1)[flat], mask)
    fake = torch.index_put(real, (flat,), mouth_rois(pasted, origin[flat], affine[flat]))
    return real.unflatten(0, (b, c)), fake.unflatten(0, (b, c))
