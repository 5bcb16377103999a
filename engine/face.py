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

ASSETS = Path(__file__).parent / "assets"
LANDMARKER_MODEL = ASSETS / "face_landmarker.task"


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


def crop_box(landmarks: np.ndarray, style: str = "square") -> Box:
    """The crop box of a generator from face-mesh landmarks ``[N, 2]`` (pixels).

    ``"square"`` (our generator): a square of side 1.1 × the larger side of
    the landmarks' bounding box, on its centre; the lower half of the crop
    then holds mouth and chin. ``"wav2lip"``: an approximation of the S3FD
    box that Wav2Lip was trained on, from the brows to the chin with
    Wav2Lip's 10 px bottom padding scaled to the face (spec §3.6).
    """
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    w, h = x1 - x0, y1 - y0
    if style == "square":
        side = 1.1 * max(w, h)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return Box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    if style == "wav2lip":
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
