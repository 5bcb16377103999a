"""Face tracking and crop geometry (DESIGN.md "The streaming core").

* :class:`FaceTracker` runs MediaPipe Tasks' ``FaceLandmarker`` in VIDEO
  mode (explicit timestamps), picks one face, and smooths its box over time
  with a One-Euro filter (Casiez et al. 2012): still faces do not jitter,
  fast moves do not lag.
* :func:`crop_box` turns 478 landmarks into the box a generator was trained
  on; :func:`crop` cuts the generator's S×S face out of a frame;
  ``engine.compose`` pastes it back into the same pixels.

Zero faces: :meth:`FaceTracker.track` returns ``None`` and the smoothing
state is kept for ``hold`` frames, then reset. Several faces: the one
nearest the face tracked so far is kept; with no track yet, the largest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import math

import cv2
import numpy as np

from engine.bundled import FACE_LANDMARKER as LANDMARKER_MODEL, MEAN_FACE


@dataclass(frozen=True)
class Box:
    """Axis-aligned face box in frame pixels, float (x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


@dataclass(frozen=True)
class Face:
    """One tracked face in one frame.

    landmarks: ``[478, 2]`` float32, MediaPipe face-mesh points in frame pixels (x, y).
    box: the smoothed crop box (style of the tracker's ``crop``).
    """

    landmarks: np.ndarray
    box: Box


SQUARE_CROP_SIDE = 2.33
"""Side of the ``"square"`` crop in inter-ocular distances (outer eye corners, :data:`OUTER_EYE_CORNERS`)."""
SQUARE_CROP_DROP = 0.50
"""Distance of the ``"square"`` crop's centre below the eyes' midpoint, in inter-ocular distances.
With :data:`SQUARE_CROP_SIDE`, over the 161 training clips (GRID and web, median): the top of the
forehead (point 10) lies 3 % of the side below the crop's top, the nose tip (1) just below the
middle (the pose reference's mask starts there), the chin (152) at 88 %, leaving room for a jaw
that opens wider than the input's."""


def crop_box(landmarks: np.ndarray, style: str = "square") -> Box:
    """The crop box of a generator from face-mesh landmarks ``[478, 2]`` (frame pixels).

    ``"square"`` (our generator): placed by the two outer eye corners alone
    (:data:`OUTER_EYE_CORNERS`), the face-mesh points that move least with
    the jaw: over 14 GRID and web clips the inter-ocular distance correlates
    with the inner-lip gap at median r = 0.05, where the nose tip, the face
    outline and a box of all 478 points follow the jaw (r = 0.3–0.7; the
    mesh is deformable). The side is :data:`SQUARE_CROP_SIDE` inter-ocular
    distances and the centre :data:`SQUARE_CROP_DROP` of them below the
    eyes' midpoint, perpendicular to the eye line; the box stays
    axis-aligned. The crop then tells the generator nothing about the
    original mouth (a box of all landmarks grew as the jaw opened: median
    r = 0.70 over the GRID training clips; ``tools/crop_stability.py``
    measures it). Turned heads (yaw) shorten the eye distance, so the crop
    is tighter on 3/4 views.

    ``"wav2lip"``: an approximation of the S3FD box that Wav2Lip was trained
    on, from the brows to the chin with Wav2Lip's 10 px bottom padding
    scaled to the face (spec §3.6); it follows the chin, as S3FD's does.

    Raises ValueError for an unknown style.
    """
    if style == "square":
        left = np.asarray(landmarks[OUTER_EYE_CORNERS[0]], np.float64)
        right = np.asarray(landmarks[OUTER_EYE_CORNERS[1]], np.float64)
        axis = right - left
        iod = float(np.hypot(*axis)) or 1.0
        down = np.array([-axis[1], axis[0]]) / iod  # perpendicular to the eye line, towards the chin
        cx, cy = (left + right) / 2 + SQUARE_CROP_DROP * iod * down
        half = SQUARE_CROP_SIDE * iod / 2
        return Box(cx - half, cy - half, cx + half, cy + half)
    if style == "wav2lip":
        x0, y0 = landmarks.min(axis=0)
        x1, y1 = landmarks.max(axis=0)
        h = y1 - y0
        return Box(float(x0), float(y0 + 0.12 * h), float(x1), float(y1 + 0.06 * h))
    raise ValueError(f"unknown crop style {style!r} (square, wav2lip)")


def box_pixels(box: Box) -> tuple[int, int, int, int]:
    """``box`` rounded to whole pixels ``(x0, y0, x1, y1)``, at least 1×1; may extend past the frame."""
    x0, y0 = round(box.x0), round(box.y0)
    return x0, y0, max(x0 + 1, round(box.x1)), max(y0 + 1, round(box.y1))


def crop(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Cut ``box`` (rounded to pixels) out of ``frame`` (H×W×C uint8), resized to ``size``×``size``.

    Parts of the box outside the frame repeat the edge pixels. Shrinking
    uses area interpolation (no aliasing), enlarging bilinear.
    """
    x0, y0, x1, y1 = box_pixels(box)
    h, w = frame.shape[:2]
    region = frame[max(0, y0): max(0, min(h, y1)), max(0, x0): max(0, min(w, x1))]
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))) + ((0, 0),) * (frame.ndim - 2)
    if region.size == 0:
        raise ValueError(f"face box {box} lies outside the {w}x{h} frame")
    if any(p for pair in pad for p in pair):
        region = np.pad(region, pad, mode="edge")
    interp = cv2.INTER_AREA if (x1 - x0) > size else cv2.INTER_LINEAR
    return cv2.resize(region, (size, size), interpolation=interp)


def lip_shape(landmarks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The lip sketch's points (:data:`LIP_SHAPE_POINTS`) in face-crop units.

    Args:
        landmarks: ``[T, 478, 2]`` face-mesh points in frame pixels (x, y).
        boxes: ``[T, 4]`` the whole-pixel crop boxes ``(x0, y0, x1, y1)`` that :func:`crop` cut
            (:func:`box_pixels`).

    Returns ``[T, 33, 2]`` float32: (x, y) as fractions of the crop side, 0 at its left/top edge and 1 at
    its right/bottom edge (pixel i of an S-pixel crop spans [i/S, (i+1)/S]).
    """
    pts = np.asarray(landmarks, np.float64)[:, list(LIP_SHAPE_POINTS)]
    boxes = np.asarray(boxes, np.float64)
    side = (boxes[:, 2] - boxes[:, 0])[:, None, None]
    return ((pts - boxes[:, None, :2]) / side).astype(np.float32)


def posed_lip_shape(identity_landmarks: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The identity reference's lip sketch points moved into each target frame's head pose.

    The identity reference is another frame of the person, so its mouth sits
    where that frame's head put it. A least-squares similarity transform
    (:func:`similarity_transforms`) fitted on the points that do not move with
    the jaw (:data:`STABLE_POINTS`: eye corners and the base of the nose) maps
    the identity frame onto each target frame; applied to the identity's
    :data:`LIP_SHAPE_POINTS`, it gives the reference's own mouth, still in its
    own shape (nothing of the target's mouth is read), where the target's head
    holds it. The generator's lip sketch starts from these points
    (``GeneratorConfig.lip_sketch``, ``engine.inputs.identity_lip_points``).

    Args:
        identity_landmarks: ``[478, 2]`` or ``[T, 478, 2]`` face-mesh points of the identity reference
            (frame pixels; one held for all T, or one per target frame).
        landmarks: ``[T, 478, 2]`` the target frames' points (frame pixels).
        boxes: ``[T, 4]`` the targets' whole-pixel crop boxes (:func:`box_pixels`).

    Returns ``[T, 33, 2]`` float32 in the targets' face sides, as :func:`lip_shape`.
    """
    landmarks = np.asarray(landmarks, np.float64)
    ident = np.broadcast_to(np.asarray(identity_landmarks, np.float64), landmarks.shape)
    stable = list(STABLE_POINTS)
    affines = similarity_transforms(ident[:, stable], landmarks[:, stable])
    return lip_shape(apply_affines(affines, ident), boxes)


class OneEuroFilter:
    """One-Euro low-pass filter on a vector (Casiez, Roussel & Vogel, CHI 2012).

    The cut-off frequency rises with the signal's speed:
    ``fc = min_cutoff + beta·|dx/dt|``, so slow jitter is smoothed hard and
    fast moves pass with little lag. Units: Hz for cut-offs, the signal's
    units per second for speed. Timestamps in seconds, explicit.
    """

    def __init__(self, min_cutoff: float = 1.5, beta: float = 0.02, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.reset()

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    @staticmethod
    def _alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or t <= self._t:
            self._x, self._dx, self._t = x, np.zeros_like(x), t
            return x
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x


class FaceTracker:
    """MediaPipe face landmarker in VIDEO mode with one smoothed face track.

    Args:
        crop: box style for :func:`crop_box` (the generator's ``info.crop``).
        max_faces: faces MediaPipe looks for; one is tracked (see module doc).
        hold: frames a lost face keeps its smoothing state.
        model_path: the ``face_landmarker.task`` bundle (default: bundled).

    ``track(frame, t)`` takes an RGB uint8 H×W×3 frame and its timestamp in
    seconds (strictly increasing is not required: equal or earlier times are
    nudged forward by 1 ms, as MediaPipe demands) and returns a
    :class:`Face` or ``None``.

    Raises FileNotFoundError when the model bundle is missing.
    """

    def __init__(self, crop: str = "square", max_faces: int = 2, hold: int = 5,
                 min_confidence: float = 0.5, model_path: str | Path | None = None):
        from mediapipe.tasks.python import BaseOptions, vision

        model_path = Path(model_path or LANDMARKER_MODEL)
        if not model_path.is_file():
            raise FileNotFoundError(f"MediaPipe face landmarker model not found: {model_path}")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=max_faces,
            min_face_detection_confidence=min_confidence,
            min_face_presence_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(options)
        self.crop_style = crop
        self.hold = hold
        self._filter = OneEuroFilter()
        self._last_center: tuple[float, float] | None = None
        self._missed = 0
        self._last_ms = -1

    def detect(self, frame: np.ndarray, t: float) -> list[np.ndarray]:
        """All faces in ``frame``: a list of ``[478, 2]`` float32 landmark arrays in pixels."""
        import mediapipe as mp

        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
        ms = max(int(round(t * 1000)), self._last_ms + 1)
        self._last_ms = ms
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        result = self._landmarker.detect_for_video(image, ms)
        h, w = frame.shape[:2]
        return [np.array([(p.x * w, p.y * h) for p in face], dtype=np.float32)
                for face in result.face_landmarks]

    def track(self, frame: np.ndarray, t: float) -> Face | None:
        faces = self.detect(frame, t)
        if not faces:
            self._missed += 1
            if self._missed > self.hold:
                self._filter.reset()
                self._last_center = None
            return None
        if self._last_center is not None:
            cx, cy = self._last_center
            landmarks = min(faces, key=lambda f: (f[:, 0].mean() - cx) ** 2 + (f[:, 1].mean() - cy) ** 2)
        else:
            landmarks = max(faces, key=lambda f: np.ptp(f[:, 0]) * np.ptp(f[:, 1]))
        self._missed = 0
        self._last_center = (float(landmarks[:, 0].mean()), float(landmarks[:, 1].mean()))
        raw = crop_box(landmarks, self.crop_style)
        cx, cy = raw.center
        fx, fy, fw, fh = self._filter(np.array([cx, cy, raw.width, raw.height]), t)
        return Face(landmarks, Box(fx - fw / 2, fy - fh / 2, fx + fw / 2, fy + fh / 2))

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------
# AV-HuBERT's mouth ROI (spec §1.6) from MediaPipe landmarks.
#
# The reference recipe (av_hubert ``preparation/align_mouth.py``, after
# Lipreading_using_TCN) works on dlib's 68 points; this one on MediaPipe's 478.
# Where it differs from the original:
#
# * Landmarks: MediaPipe FaceLandmarker (the tracked face) instead of dlib HOG
#   or CNN detection + ``shape_predictor_68_face_landmarks`` (several faces:
#   the tracker's choice, not the last one found).
# * Mean face: ``engine/assets/mediapipe_mean_face.npy``, the generalised
#   Procrustes mean of MediaPipe landmarks over GRID training clips
#   (``tools/mean_face.py``), placed on the 256x256 canvas with its outer eye
#   corners level and 82 px apart and its mouth centre at (128, 163), instead of
#   ``20words_mean_face.npy`` (the mean dlib landmarks of LRW). That scale was
#   chosen by eye (a 96x96 ROI from above the nose tip to the chin, the mouth
#   about half its width), not measured against the original file.
# * Stable points: the MediaPipe points at dlib's [33, 36, 39, 42, 45]
#   (:data:`STABLE_POINTS`); mouth points: 20 MediaPipe lip points at dlib's
#   48-67 (:data:`MOUTH_POINTS`), a common correspondence, not an exact one.
# * The warp goes straight from the frame to the 96x96 ROI (one affine,
#   :func:`mouth_roi_affines`) with cv2 instead of warping to the 256 canvas
#   with skimage and cutting: the same pixels (within 0.02 grey levels,
#   tests/test_mouth_roi.py).
# * Grey first, float throughout: the frame is converted to grey (BT.601,
#   cv2) and warped bilinearly in float. The original warps the colour frame,
#   truncates it to uint8, stores an H.264 mp4 and converts to grey when
#   loading: up to one grey level of difference, plus its compression.
# * A mouth centre more than 5 px outside the canvas is clamped like a nearer
#   one; the original raises ("too much bias").
# * Frames without a face are interpolated as in the original; a video with no
#   face at all raises instead of being resized whole to 96x96.

ROI_CANVAS = 256
"""Side of the reference canvas the mean face lives on (``STD_SIZE``)."""
MOUTH_ROI_SIZE = 96
"""Side of the mouth ROI cut around the mouth centre (``crop_width/height``)."""
MOUTH_ROI_CROP = 88
"""Side of the centre crop AV-HuBERT sees at test time."""
MOUTH_ROI_WINDOW = 12
"""Frames whose stable points are averaged for one frame's alignment (``window_margin``)."""
STABLE_POINTS = (2, 33, 133, 362, 263)
"""MediaPipe points at dlib's stable points 33 (bottom of the nose, centre),
36 / 39 (right eye outer / inner corner) and 42 / 45 (left eye inner / outer corner)."""
MOUTH_POINTS = (61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lip, dlib 48-59
                78, 82, 13, 312, 308, 317, 14, 87)  # inner lip, dlib 60-67
"""MediaPipe lip points at dlib's mouth points 48-67 (corner, clockwise in the image from the
subject's right corner, outer contour then inner contour)."""
CHIN_POINTS = (397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172)
"""MediaPipe face-oval points of the lower jaw, from below the subject's left mouth corner
round the chin (152) to below the right one (the jaw line that moves as the mouth opens)."""
LIP_SHAPE_POINTS = MOUTH_POINTS + CHIN_POINTS
"""The 33 points of the generator's lip sketch (``GeneratorConfig.lip_sketch``): outer lip (12),
inner lip (8), jaw (13)."""
LIP_SHAPE_MIRROR = (6, 5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7,  # outer: 48↔54, 49↔53, 50↔52, 55↔59, 56↔58
                    16, 15, 14, 13, 12, 19, 18, 17,  # inner: 60↔64, 61↔63, 65↔67
                    32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20)  # jaw: reversed
"""``LIP_SHAPE_POINTS[LIP_SHAPE_MIRROR[i]]`` is the mirror image of point i (for horizontal flips)."""
OUTER_EYE_CORNERS = (33, 263)
"""MediaPipe outer eye corners (dlib 36, 45); their distance is the inter-ocular distance."""


def track_landmarks(frames, fps: float = 25.0, model_path: str | Path | None = None) -> np.ndarray:
    """Landmarks of the tracked face in every frame of a clip.

    Args:
        frames: iterable of RGB uint8 H×W×3 frames, in order.
        fps: their frame rate (timestamps ``i / fps`` for MediaPipe).
        model_path: the face landmarker bundle (default: bundled).

    Returns:
        ``[T, 478, 2]`` float32 pixels (x, y); rows of frames without a face are NaN.

    Raises:
        ValueError: no frames; FileNotFoundError: no model bundle.
    """
    rows = []
    with FaceTracker(hold=0, model_path=model_path) as tracker:
        for i, frame in enumerate(frames):
            face = tracker.track(frame, i / fps)
            rows.append(face.landmarks if face is not None else np.full((478, 2), np.nan, np.float32))
    if not rows:
        raise ValueError("no frames")
    return np.stack(rows).astype(np.float32)


def interpolate_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Fill frames without a face (NaN rows of ``[T, N, 2]``) as the reference
    recipe does (``landmarks_interpolate``, spec §1.6): linearly between the
    nearest frames with a face; before the first and after the last such frame,
    a copy of it. Returns a new float64 array.

    Raises:
        ValueError: no frame has a face.
    """
    landmarks = np.array(landmarks, dtype=np.float64)
    valid = ~np.isnan(landmarks).any(axis=(1, 2))
    if not valid.any():
        raise ValueError("no face found in any frame")
    idx = np.flatnonzero(valid)
    frames = np.arange(len(landmarks))
    flat = landmarks.reshape(len(landmarks), -1)
    for j in range(flat.shape[1]):
        flat[:, j] = np.interp(frames, idx, flat[idx, j])
    return flat.reshape(landmarks.shape)


def similarity_transforms(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms (rotation, uniform scale,
    translation; Umeyama 1991, as skimage's ``estimate_transform('similarity')``)
    that map each point set of ``src`` onto ``dst``.

    Args:
        src: ``[T, N, 2]`` (or ``[N, 2]``) point sets, pixels.
        dst: ``[N, 2]`` target points, one set for all T, or ``[T, N, 2]``, one set per source set.

    Returns:
        ``[T, 2, 3]`` (or ``[2, 3]``) float64 affines: ``dst ≈ A[:, :2] @ src + A[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64)
    single = src.ndim == 2
    src = src[None] if single else src
    dst = np.broadcast_to(np.asarray(dst, dtype=np.float64), src.shape)
    src_mean, dst_mean = src.mean(axis=1), dst.mean(axis=1)
    src_c, dst_c = src - src_mean[:, None], dst - dst_mean[:, None]
    cov = np.einsum("tni,tnj->tij", dst_c, src_c) / src.shape[1]  # [T, 2, 2]
    u, s, vt = np.linalg.svd(cov)
    d = np.ones((len(src), 2))
    d[np.linalg.det(cov) < 0, 1] = -1
    rotation = u @ (d[:, :, None] * vt)
    scale = (s * d).sum(axis=1) / (src_c**2).mean(axis=1).sum(axis=1)
    linear = scale[:, None, None] * rotation
    translation = dst_mean - np.einsum("tij,tj->ti", linear, src_mean)
    out = np.concatenate([linear, translation[:, :, None]], axis=2)
    return out[0] if single else out


def apply_affines(affines: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[T, 2, 3]`` affines applied to ``[T, N, 2]`` points → ``[T, N, 2]`` float64."""
    return np.einsum("tij,tnj->tni", affines[:, :, :2], points) + affines[:, None, :, 2]


def mean_face() -> np.ndarray:
    """The bundled MediaPipe mean face on the 256×256 canvas: ``[478, 2]`` float64 pixels."""
    return np.load(MEAN_FACE).astype(np.float64)


def mouth_roi_affines(landmarks: np.ndarray, window: int = MOUTH_ROI_WINDOW,
                      reference: np.ndarray | None = None) -> np.ndarray:
    """Per-frame affines from frame pixels to the 96×96 mouth ROI (spec §1.6).

    Frame i's stable points (:data:`STABLE_POINTS`) are averaged over frames
    ``i .. i + w - 1`` with ``w = min(T, window)``; the similarity transform
    that best maps them onto the mean face's gives the canvas; the ROI is the
    96×96 square of the canvas around the mean of frame i's own (unsmoothed)
    :data:`MOUTH_POINTS`, its centre clamped to keep it on the canvas and
    rounded to whole pixels. The last ``w - 1`` frames reuse frame ``T - w``'s
    alignment, as the original does. Differences to the dlib original are
    listed above this function in the source.

    The same affine serves the metrics (``cv2.warpAffine``, :func:`mouth_rois`)
    and a differentiable path (``F.grid_sample`` with its inverse); pixel
    centres are at integer coordinates in both frame and ROI.

    Args:
        landmarks: ``[T, 478, 2]`` frame pixels; NaN rows (no face) are
            interpolated (:func:`interpolate_landmarks`).
        window: frames averaged (12 in the recipe).
        reference: ``[478, 2]`` mean face on the 256 canvas (default: bundled).

    Returns:
        ``[T, 2, 3]`` float64: ``roi_xy = A[:, :2] @ frame_xy + A[:, 2]``.

    Raises:
        ValueError: not ``[T, 478, 2]`` with T ≥ 1, ``window`` < 1, or no face in any frame.
    """
    landmarks = np.asarray(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (478, 2) or len(landmarks) == 0:
        raise ValueError(f"expected [T, 478, 2] landmarks, got {landmarks.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    landmarks = interpolate_landmarks(landmarks)
    reference = mean_face() if reference is None else np.asarray(reference, dtype=np.float64)
    w = min(len(landmarks), window)
    stable = landmarks[:, STABLE_POINTS]
    sums = np.concatenate([np.zeros_like(stable[:1]), np.cumsum(stable, axis=0)])
    smoothed = (sums[w:] - sums[:-w]) / w  # frames 0 .. n-w
    smoothed = np.concatenate([smoothed, np.repeat(smoothed[-1:], w - 1, axis=0)])
    affines = similarity_transforms(smoothed, reference[list(STABLE_POINTS)])
    mouth = apply_affines(affines, landmarks[:, MOUTH_POINTS]).mean(axis=1)
    half = MOUTH_ROI_SIZE // 2
    corner = np.round(np.clip(mouth, half, ROI_CANVAS - half)) - half
    affines[:, :, 2] -= corner
    return affines


def mouth_rois(frames, affines: np.ndarray) -> np.ndarray:
    """AV-HuBERT's video input of a clip (spec §1.6): grey mouth ROIs.

    Each RGB frame is converted to grey (BT.601: 0.299 R + 0.587 G + 0.114 B,
    ``cv2.COLOR_RGB2GRAY``), warped by its affine to 96×96 (bilinear, black
    outside the frame), centre-cropped to 88×88, scaled to [0, 1] and
    normalised with AV-HuBERT's ``(x - 0.421) / 0.165``.

    Args:
        frames: iterable of RGB uint8 H×W×3 frames (at least as many as affines).
        affines: ``[T, 2, 3]`` from :func:`mouth_roi_affines`.

    Returns:
        ``[T, 88, 88]`` float32; ``torch.from_numpy(x)[None, None]`` is
        ``AVHubert.extract_features(video=...)``'s ``[1, 1, T, 88, 88]``.

    Raises:
        ValueError: fewer frames than affines, or a frame that is not RGB uint8.
    """
    from engine.models.avhubert import IMAGE_MEAN, IMAGE_STD

    off = (MOUTH_ROI_SIZE - MOUTH_ROI_CROP) // 2
    out = np.empty((len(affines), MOUTH_ROI_CROP, MOUTH_ROI_CROP), np.float32)
    n = 0
    for frame, affine in zip(frames, affines):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
        roi = cv2.warpAffine(grey, affine, (MOUTH_ROI_SIZE, MOUTH_ROI_SIZE), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        out[n] = roi[off: off + MOUTH_ROI_CROP, off: off + MOUTH_ROI_CROP]
        n += 1
    if n < len(affines):
        raise ValueError(f"{len(affines)} affines but only {n} frames")
    return (out / 255.0 - IMAGE_MEAN) / IMAGE_STD
