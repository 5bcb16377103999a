"""Paste-back of the generated face (DESIGN.md "The streaming core": Compositor).

The generator returns an S×S face crop. Only its mouth and jaw are new, so
only they are pasted: :func:`landmark_mask` builds, from the current frame's
face-mesh landmarks, a mask over the lips and the lower face (up to the
mouth corners' height), grown so that it covers the mouth's full range of
motion and feathered so that no seam shows. Nose, eyes, cheeks above the
mouth and the skin texture elsewhere stay the input's own pixels. The mask
is 0 on the crop's border, so the box edge never shows, and pixels outside
the face box are never written (bit-identical to the input). An optional
colour match shifts the generated face's mean colour under the same mask to
the input's, which hides small colour biases of a model.

The generator works at S px (96 by default), so a plain paste replaces the
input's skin texture under the mask by an upsampled, softer picture, even
where the generator drew what the input already shows (chin, cheeks, a
closed mouth that stays closed). :func:`transfer_detail` keeps the input's
own detail there: the generated face gives the low band (a Gaussian of
:data:`DETAIL_SIGMA`), the input the band above it, both in the crop and at
the frame's full resolution, weighted by how well the two low bands agree
(:func:`detail_keep`, on luminance); where the generator changed the picture (the mouth's
new shape) the weight is 0 and its own pixels are pasted. This is the
classic base/detail split of image compositing, restricted by an agreement
test so that the input's old mouth does not show through the new one.

Without landmarks (old callers, tests) the paste falls back to the fixed
soft ellipse :func:`lower_face_mask`, which the training code also uses for
its differentiable paste (train/roi.py, train/losses.py, train/monitor.py).
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from engine.face import OUTER_EYE_CORNERS, Box, box_pixels

LIP_OUTER_POINTS = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375,  # lower lip, corner to corner
                    291, 409, 270, 269, 267, 0, 37, 39, 40, 185)  # upper lip, back to the first corner
"""MediaPipe outer lip contour (the points of ``FACEMESH_LIPS``' outer loop). Of these only the
upper lip and the corners bound the mask (the lower lip lies inside the jaw outline), so the
mask reaches up to the top of the upper lip and no further."""
LOWER_FACE_OVAL_POINTS = (58, 172, 136, 150, 149, 176, 148, 152,  # subject's right jaw to the chin
                          377, 400, 378, 379, 365, 397, 288)  # chin to the subject's left jaw
"""The lower part of MediaPipe's ``FACEMESH_FACE_OVAL``: jaw line and chin, from 58 to 288,
the oval points at about the height of the mouth corners (61, 291) in a frontal face; the
points above them (132/361 and up) are cheeks and temples, which stay the input's."""
PASTE_MASK_POINTS = LIP_OUTER_POINTS + LOWER_FACE_OVAL_POINTS
"""The points whose convex hull is the pasted region before it is grown (:func:`landmark_mask`)."""

# All lengths below are fractions of the inter-ocular distance (IOD, outer eye corners 33-263,
# engine.face.OUTER_EYE_CORNERS) of the current frame: it scales with the face, does not change
# with the mouth, is the same for every crop style and does not change with roll (it shrinks with
# yaw, by cos(yaw), as the mouth's width does). Measured on GRID (frontal): the nose tip
# (point 1) lies 0.30 IOD above the top of the upper lip (point 0), the subnasale (2) 0.22 IOD,
# the chin (152) 0.36 IOD below the lower lip's lowest point (17).
MASK_GROW_UP = 0.05
"""Growth of the hull upwards: the upper lip rises a little when the mouth opens (about 5 mm,
0.05 IOD); kept small, because together with :data:`MASK_FEATHER` it must stay below the
nose tip (0.30 IOD above the lip), which is never pasted."""
MASK_GROW_DOWN = 0.22
"""Growth downwards: the generated jaw may drop further than the input's. Measured with the
bundled model on the seven held-out dub clips of ``tools/heldout_eval.py`` (MediaPipe on input and
output): the generated chin (152) lies at most 0.09–0.15 IOD below the input's on six of them
(95th percentiles 0.00–0.11), on the seventh, a small face whose generated mouth opens wide, up
to 0.5 (95th percentile 0.41). Full weight to 0.22 IOD and the feather beyond keep such a jaw
mostly inside; a larger growth (0.35 until this constant was measured) pastes the generator's
soft neck, collar and background below the chin, where nothing changed. Cut off by the crop's
bottom edge."""
MASK_GROW_SIDE = 0.02
"""Growth sideways: a margin over the jaw outline for landmark noise; the corners moving out in a
smile or an "ee" stay well inside the jaw line. Beyond it lies the background, which the generator
draws soft and which never changes, so it is kept small (0.08 before)."""
MASK_FEATHER = 0.12
"""Width of the feather outside the grown hull, over which the mask falls from 1 to 0 (a
smoothstep of the distance). Wide enough to hide a seam (about 8 px on a GRID face, 27 px on a
1080p close-up; the colour match and the detail paste leave little to hide), narrow enough that
grow-up + feather (0.17 IOD) ends well below the nose tip and that little of the background
beside the jaw is pasted (0.18 before)."""
MASK_BORDER = 0.04
"""Width, as a fraction of the crop side, of the taper that takes the mask to 0 on the crop's
border (so the box edge cannot show); small, because the chin sits close to the crop's bottom."""
PASTE_INTERPOLATION = cv2.INTER_CUBIC
"""How the generated S×S face is enlarged to the face box in the frame (the mask and the detail
weights stay bilinear: a cubic kernel overshoots [0, 1]). Bilinear upsampling is a triangle filter
that damps the generator's finest detail: pasting a "perfect generator" (the input's own 96 px
crop) back into four held-out GRID and web clips and scaling the frames back to the crop's scale
(``engine.metrics.mouth_sharpness`` at 96 px) kept 0.43–0.48 of the lip box's Laplacian variance
with bilinear, 0.62–0.68 with bicubic, 0.66–0.71 with Lanczos (8×8, 2.5× bicubic's time: about 2 ms
against 0.8 ms for a 700 px face)."""
_ARC_STEPS = 16
"""Vertices of the rounded growth shape: the hull's outward corners become steps of at most
22.5°, so the half-plane distance (:func:`landmark_mask`) is short of the true distance by
< 2 % at them (1/cos(11.25°) - 1), invisible in a feather, at half the cost of 32."""


def _smoothstep(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


@lru_cache(maxsize=8)
def lower_face_mask(size: int, feather: float = 0.35) -> np.ndarray:
    """``[size, size]`` float32 mask in [0, 1]: a soft ellipse over the lower face of a crop.

    The ellipse (centre (0.5, 0.68)·size, radii (0.38, 0.30)·size) covers
    mouth, cheeks and chin of a ``crop_box`` square crop and reaches the
    crop's edge only at its lowest point. The mask is 1 inside radius
    ``1 - feather`` (in ellipse units) and falls to exactly 0 at the ellipse
    with a smoothstep, so it is 0 on the whole crop border and its slope is
    at most about ``1 / (feather·0.3·size)`` per pixel.

    The fallback of :meth:`Compositor.paste` without landmarks, and the mask
    of the training code's differentiable paste.
    """
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    r = np.sqrt(((xx - 0.5) / 0.38) ** 2 + ((yy - 0.68) / 0.30) ** 2)
    u = np.clip((1.0 - r) / feather, 0.0, 1.0)
    return (u * u * (3.0 - 2.0 * u)).astype(np.float32)


@lru_cache(maxsize=1)
def _arc() -> np.ndarray:
    """``[_ARC_STEPS, 2]`` unit directions (cos, sin) of the growth shape (image y points down)."""
    a = (np.arange(_ARC_STEPS) + 0.5) * (2 * np.pi / _ARC_STEPS)
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def _grown_hull(points: np.ndarray, iod: float) -> np.ndarray:
    """Convex hull of ``points`` ``[N, 2]`` grown by the half-ellipses of the MASK_GROW_* constants.

    The Minkowski sum of the hull with a convex shape (upper half-ellipse of radii (side, up),
    lower of (side, down)) is the hull of every vertex plus every shape point. Returns its
    vertices ``[M, 2]`` float64 in frame pixels.
    """
    arc = _arc()
    shape = np.stack([arc[:, 0] * MASK_GROW_SIDE,
                      arc[:, 1] * np.where(arc[:, 1] > 0, MASK_GROW_DOWN, MASK_GROW_UP)], axis=1) * iod
    hull = cv2.convexHull(points.astype(np.float32))[:, 0].astype(np.float64)
    grown = (hull[:, None, :] + shape[None, :, :]).reshape(-1, 2)
    return cv2.convexHull(grown.astype(np.float32))[:, 0].astype(np.float64)


def landmark_mask(landmarks: np.ndarray, box: Box, size_hw: tuple[int, int]) -> np.ndarray:
    """The paste mask of one frame from its face-mesh landmarks, on the crop grid of ``box``.

    The region: the convex hull of :data:`PASTE_MASK_POINTS` (upper lip, mouth
    corners, jaw line and chin), grown by :data:`MASK_GROW_UP` /
    :data:`MASK_GROW_DOWN` / :data:`MASK_GROW_SIDE` IOD, is 1; outside it the
    mask falls to 0 over :data:`MASK_FEATHER` IOD with a smoothstep of the
    distance to it (the distance is computed exactly in frame pixels, so the
    mask is smooth and sub-pixel accurate at any crop size, also for a
    non-square box); a taper of :data:`MASK_BORDER` of the crop side takes it
    to exactly 0 on the crop's border.

    Args:
        landmarks: ``[478, 2]`` (at least up to index 397) MediaPipe face-mesh
            points of the current frame, (x, y) in frame pixels (continuous:
            pixel ``k`` spans ``[k, k + 1)``), as ``engine.face.Face.landmarks``.
        box: the crop box the face was cut from (rounded to pixels as
            ``engine.face.crop`` and :meth:`Compositor.paste` round it).
        size_hw: ``(h, w)`` of the grid the box is resampled to, e.g. ``(S, S)``
            for the generator crop; pixel ``(i, j)`` is the frame point
            ``(x0 + (j + 0.5)·bw / w, y0 + (i + 0.5)·bh / h)``, as in ``cv2.resize``.

    Returns:
        ``[h, w]`` float32 in [0, 1]; 0 on the border rows and columns.

    Raises:
        ValueError: landmarks of the wrong shape, not finite, or with coinciding eye corners.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    need = max(max(PASTE_MASK_POINTS), max(OUTER_EYE_CORNERS)) + 1
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] < need:
        raise ValueError(f"expected [478, 2] face-mesh landmarks, got shape {lm.shape}")
    pts = lm[list(PASTE_MASK_POINTS)]
    eyes = lm[list(OUTER_EYE_CORNERS)]
    if not (np.isfinite(pts).all() and np.isfinite(eyes).all()):
        raise ValueError("landmarks are not finite (a frame without a face?)")
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    if iod < 1e-3:
        raise ValueError("degenerate landmarks: the outer eye corners coincide")
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 1 or w < 1:
        raise ValueError(f"size_hw must be positive, got {size_hw}")
    x0, y0, x1, y1 = box_pixels(box)
    sx, sy = (x1 - x0) / w, (y1 - y0) / h

    # Edges of the grown hull as half-planes n·p <= c (outward unit normals n), in frame pixels.
    v = _grown_hull(pts, iod)
    e = np.roll(v, -1, axis=0) - v
    n = np.stack([e[:, 1], -e[:, 0]], axis=1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    c = (n * v).sum(axis=1)
    if ((n * (v.mean(axis=0) - v)).sum(axis=1) > 0).any():  # clockwise in y-down coordinates
        n, c = -n, -c
    # Signed distance of each grid pixel centre: max over edges (exact inside a convex polygon;
    # outside, exact off the corners and short by < 2 % of the feather at them, see _ARC_STEPS).
    # Only the grid's part within the feather of the hull's bounding box can be non-zero.
    feather = MASK_FEATHER * iod
    lo, hi = v.min(axis=0) - feather, v.max(axis=0) + feather
    j0, j1 = (np.clip([np.floor((lo[0] - x0) / sx - 0.5), np.ceil((hi[0] - x0) / sx - 0.5) + 1], 0, w)).astype(int)
    i0, i1 = (np.clip([np.floor((lo[1] - y0) / sy - 0.5), np.ceil((hi[1] - y0) / sy - 0.5) + 1], 0, h)).astype(int)
    mask = np.zeros((h, w), np.float32)
    if j1 > j0 and i1 > i0:
        n32, c32 = n.astype(np.float32), c.astype(np.float32)
        xs = (x0 + (np.arange(j0, j1) + 0.5) * sx).astype(np.float32)
        ys = (y0 + (np.arange(i0, i1) + 0.5) * sy).astype(np.float32)
        # n·p - c = (nx·x) + (ny·y - c): one [h', 1, E] + [1, w', E] sum, then the max over edges
        dist = ((ys[:, None] * n32[:, 1] - c32)[:, None, :] + (xs[:, None] * n32[:, 0])[None, :, :]).max(axis=2)
        mask[i0:i1, j0:j1] = _smoothstep(1.0 - dist / np.float32(feather))
    # Border taper: 0 on the outermost pixels, 1 from MASK_BORDER of the side inwards.
    border = max(1.0, MASK_BORDER * max(h, w))
    ty = _smoothstep(np.minimum(np.arange(h), np.arange(h)[::-1]) / border)
    tx = _smoothstep(np.minimum(np.arange(w), np.arange(w)[::-1]) / border)
    return mask * ty[:, None].astype(np.float32) * tx[None, :].astype(np.float32)


DETAIL_SIGMA = 1.5 / 96
"""σ of the detail band's lower edge in :func:`transfer_detail`, as a fraction of the crop side S
(1.5 px at S = 96): the band above it is where a 96-px generator trained with L1 is soft."""
DETAIL_TEST_SIGMA = 2.0 / 96
"""σ (fraction of S) of the low band that :func:`detail_keep` compares: coarse enough that the
input's own texture and the generator's softness do not count as a change, fine enough that a lip
edge moved by a pixel does (about 18 grey levels for a 60-level edge at 96 px)."""
DETAIL_TOLERANCE = 10.0
"""Luminance difference of the two low bands (0–255 grey levels) at which :func:`detail_keep` keeps
half of the input's detail; at twice it, 1/17 (a 1/(1 + (d/t)^4) fall)."""
_BT601 = np.array([0.299, 0.587, 0.114], np.float32)


def detail_keep(generated: np.ndarray, original: np.ndarray, tolerance: float = DETAIL_TOLERANCE) -> np.ndarray:
    """Where the generated and the input crop show the same picture, so that the input's detail fits.

    The test is on luminance (BT.601), so that a colour shift of the generated face (which the low
    band keeps anyway) does not count as a change, but a moved edge does: ``d`` = the absolute
    difference of the two crops' Gaussian low bands (σ = :data:`DETAIL_TEST_SIGMA` · S), grown by
    two pixels (a 5×5 maximum) and smoothed (σ 1 px), so that the detail fades out before the
    places where the picture changed (no ghost of the input's old lip edge beside the new one) and
    the weight has no blocky holes; weight ``1 / (1 + (d / tolerance)^4)``.

    Args:
        generated: S×S×3 float32, 0–255 (after any colour match).
        original: S×S×3 uint8 or float, 0–255: the input crop of the same box.
        tolerance: the difference (grey levels) at which the weight is 0.5.

    Returns:
        ``[S, S]`` float32 in [0, 1] (1: the same picture).
    """
    sigma = DETAIL_TEST_SIGMA * generated.shape[0]
    low_g = cv2.GaussianBlur(generated @ _BT601, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    low_o = cv2.GaussianBlur(np.asarray(original, np.float32) @ _BT601, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    d = cv2.dilate(np.abs(low_g - low_o), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_REFLECT)
    d = cv2.GaussianBlur(d, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT) / np.float32(tolerance)
    d *= d
    return (1.0 / (1.0 + d * d)).astype(np.float32)


def transfer_detail(generated: np.ndarray, original: np.ndarray,
                    tolerance: float = DETAIL_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """The generated crop with the input's detail band where the two show the same picture (module doc).

    ``generated`` S×S×3 float32 0–255, ``original`` S×S×3 0–255 (the input crop of the same box).
    Returns ``(face, keep)``: ``keep`` = :func:`detail_keep`, and ``face`` S×S×3 float32 (not clipped)
    = ``generated + keep·(detail(original) - detail(generated))``, detail = the image minus its
    Gaussian low band (σ = :data:`DETAIL_SIGMA` · S): where ``keep`` is 1, the generated low band
    plus the input's detail. :meth:`Compositor.paste` uses ``keep`` again for the input's detail above
    the crop's resolution.
    """
    S = generated.shape[0]
    o = np.asarray(original, np.float32)
    keep = detail_keep(generated, o, tolerance)
    sigma = DETAIL_SIGMA * S
    detail_o = o - cv2.GaussianBlur(o, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    detail_g = generated - cv2.GaussianBlur(generated, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    face = generated + keep[..., None] * (detail_o - detail_g)
    return face.astype(np.float32), keep


def match_colour(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``generated`` (S×S×3 float32, 0–255) so that its mask-weighted mean colour equals ``original``'s.

    ``original``: S×S×3 (uint8 or float, 0–255); ``mask``: ``[S, S]`` weights in [0, 1]
    (the paste mask). Returns S×S×3 float32 (not clipped).
    """
    w = mask.reshape(-1).astype(np.float32)
    total = float(w.sum()) or 1.0
    diff = (original.astype(np.float32) - generated).reshape(-1, generated.shape[-1])
    shift = (w @ diff) / total
    return (generated + shift).astype(np.float32)


class Compositor:
    """Pastes generated faces into frames.

    Args:
        size: generator face size S.
        feather: feather of the fallback mask :func:`lower_face_mask` (used without landmarks).
        colour_match: apply :func:`match_colour` (under the paste mask) before pasting.
        detail: keep the input's own detail where the generated face agrees with it
            (:func:`transfer_detail`, in the crop and at full resolution); needs ``original_crop``.
    """

    def __init__(self, size: int, feather: float = 0.35, colour_match: bool = True, detail: bool = True):
        self.size = size
        self.mask = lower_face_mask(size, feather)
        self.colour_match = colour_match
        self.detail = detail

    def mask_for(self, box: Box, landmarks: np.ndarray | None = None) -> np.ndarray:
        """The ``[S, S]`` float32 paste mask in crop coordinates: :func:`landmark_mask` of
        ``landmarks`` on ``box``'s crop, or the fixed :func:`lower_face_mask` without landmarks."""
        if landmarks is None:
            return self.mask
        return landmark_mask(landmarks, box, (self.size, self.size))

    def paste(self, frame: np.ndarray, box: Box, face: np.ndarray, alpha: float = 1.0,
              original_crop: np.ndarray | None = None, landmarks: np.ndarray | None = None) -> np.ndarray:
        """A copy of ``frame`` with ``face`` pasted into ``box``.

        Args:
            frame: H×W×3 uint8 RGB.
            box: the crop box the face was cut from (``engine.face.crop``).
            face: S×S×3 generated face, float32 in [0, 1] (or uint8).
            alpha: overall opacity in [0, 1] (fades on face loss / return).
            original_crop: S×S×3 uint8 input crop (``engine.face.crop`` of ``frame`` and ``box``),
                for colour matching and the detail transfer.
            landmarks: ``[478, 2]`` face-mesh points (frame pixels) of the face the
                mask is built for (:func:`landmark_mask`; normally the current
                frame's); ``None``: the fixed :func:`lower_face_mask`.
        Returns: H×W×3 uint8; pixels outside ``box`` (and under a zero mask) equal ``frame``'s.
        Raises: ValueError from :func:`landmark_mask` for unusable landmarks.
        """
        out = frame.copy()
        if alpha <= 0:
            return out
        x0, y0, x1, y1 = box_pixels(box)
        w, h = x1 - x0, y1 - y0
        mask = self.mask_for(box, landmarks)
        # Only the part of the box whose resampled mask can be non-zero is blended (the rest would
        # come out equal to the input anyway): the mask's support on the crop grid, two crop pixels
        # wider on each side (bicubic upsampling reads the four nearest), in frame pixels.
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size == 0:
            return out
        S_h, S_w = mask.shape
        h_img, w_img = frame.shape[:2]
        cy0 = max(0, y0, y0 + int(np.floor((rows[0] - 1.5) * h / S_h - 0.5)))
        cy1 = min(h_img, y1, y0 + int(np.ceil((rows[-1] + 2.5) * h / S_h + 0.5)))
        cx0 = max(0, x0, x0 + int(np.floor((cols[0] - 1.5) * w / S_w - 0.5)))
        cx1 = min(w_img, x1, x0 + int(np.ceil((cols[-1] + 2.5) * w / S_w + 0.5)))
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        gen = face.astype(np.float32) * (255.0 if face.dtype != np.uint8 else 1.0)
        if self.colour_match and original_crop is not None:
            gen = match_colour(gen, original_crop, mask)
        sub = np.s_[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
        region = out[cy0:cy1, cx0:cx1].astype(np.float32)
        if self.detail and original_crop is not None:
            # region + a·(up(face) - region) + a·up(keep)·(region - up(original)), i.e. the input's detail above
            # the crop's resolution where it is kept, written as region·(1 - a·(1 - keep)) + a·(face - keep·
            # original) with both products formed on the crop grid: two resizes, as the plain paste needs
            # (bilinear upsampling of a product for the product of upsampled smooth maps: sub-pixel differences)
            original = np.asarray(original_crop, np.float32)
            face_d, keep = transfer_detail(gen, original)
            m = (mask * np.float32(alpha))[..., None]
            k = keep[..., None]
            add = cv2.resize(m * (face_d - k * original), (w, h),
                             interpolation=PASTE_INTERPOLATION)[sub]
            drop = cv2.resize(np.repeat(m * (1.0 - k), gen.shape[-1], axis=2), (w, h),
                              interpolation=cv2.INTER_LINEAR)[sub]
            gen = region - region * drop
            gen += add
        else:
            gen = cv2.resize(gen, (w, h), interpolation=PASTE_INTERPOLATION)[sub]
            # the mask resized per channel: numpy broadcasts a [h, w, 1] factor several times slower
            mask3 = np.repeat(mask[..., None], gen.shape[-1], axis=2)
            a = cv2.resize(mask3, (w, h), interpolation=cv2.INTER_LINEAR)[sub]
            if alpha < 1:
                a = a * np.float32(alpha)
            gen -= region  # region + a·(gen - region), in place
            gen *= a
            gen += region
        np.rint(gen, out=gen)
        np.clip(gen, 0, 255, out=gen)
        out[cy0:cy1, cx0:cx1] = gen.astype(np.uint8)
        return out
