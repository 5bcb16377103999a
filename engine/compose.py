"""Paste-back of the generated face (DESIGN.md "The streaming core": Compositor).

The generator returns an S×S face crop. Only its lower face is new, so only
that is pasted: a mask that is 1 over mouth, cheeks and chin and falls
smoothly to 0 before the crop's edges, so neither a seam nor the box edge
can show. Pixels outside the face box are never
written (bit-identical to the input). An optional colour match shifts the
generated face's mean colour under the mask to the input's, which hides
small colour biases of a model.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from engine.face import Box, box_pixels


@lru_cache(maxsize=8)
def lower_face_mask(size: int, feather: float = 0.35) -> np.ndarray:
    """``[size, size]`` float32 mask in [0, 1]: a soft ellipse over the lower face of a crop.

    The ellipse (centre (0.5, 0.68)·size, radii (0.38, 0.30)·size) covers
    mouth, cheeks and chin of a ``crop_box`` square crop and reaches the
    crop's edge only at its lowest point. The mask is 1 inside radius
    ``1 - feather`` (in ellipse units) and falls to exactly 0 at the ellipse
    with a smoothstep, so it is 0 on the whole crop border and its slope is
    at most about ``1 / (feather·0.3·size)`` per pixel.
    """
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    r = np.sqrt(((xx - 0.5) / 0.38) ** 2 + ((yy - 0.68) / 0.30) ** 2)
    u = np.clip((1.0 - r) / feather, 0.0, 1.0)
    return (u * u * (3.0 - 2.0 * u)).astype(np.float32)


def match_colour(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``generated`` (S×S×3 float32, 0–255) so that its mask-weighted mean colour equals ``original``'s."""
    w = mask[..., None]
    total = float(w.sum()) or 1.0
    shift = ((original.astype(np.float32) - generated) * w).sum(axis=(0, 1)) / total
    return generated + shift


class Compositor:
    """Pastes generated faces into frames.

    Args:
        size: generator face size S.
        feather: mask feather (fraction of S), see :func:`lower_face_mask`.
        colour_match: apply :func:`match_colour` before pasting.
    """

    def __init__(self, size: int, feather: float = 0.35, colour_match: bool = True):
        self.size = size
        self.mask = lower_face_mask(size, feather)
        self.colour_match = colour_match

    def paste(self, frame: np.ndarray, box: Box, face: np.ndarray, alpha: float = 1.0,
              original_crop: np.ndarray | None = None) -> np.ndarray:
        """A copy of ``frame`` with ``face`` pasted into ``box``.

        Args:
            frame: H×W×3 uint8 RGB.
            box: the crop box the face was cut from (``engine.face.crop``).
            face: S×S×3 generated face, float32 in [0, 1] (or uint8).
            alpha: overall opacity in [0, 1] (fades on face loss / return).
            original_crop: S×S×3 uint8 input crop, for colour matching.
        Returns: H×W×3 uint8; pixels outside ``box`` (and under a zero mask) equal ``frame``'s.
        """
        out = frame.copy()
        if alpha <= 0:
            return out
        gen = face.astype(np.float32) * (255.0 if face.dtype != np.uint8 else 1.0)
        if self.colour_match and original_crop is not None:
            gen = match_colour(gen, original_crop, self.mask)
        x0, y0, x1, y1 = box_pixels(box)
        w, h = x1 - x0, y1 - y0
        h_img, w_img = frame.shape[:2]
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w_img, x1), min(h_img, y1)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        gen = cv2.resize(gen, (w, h), interpolation=cv2.INTER_LINEAR)[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
        a = cv2.resize(self.mask, (w, h), interpolation=cv2.INTER_LINEAR)[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
        a = (a * alpha)[..., None]
        region = out[cy0:cy1, cx0:cx1].astype(np.float32)
        blended = np.clip(np.rint(region + a * (gen - region)), 0, 255).astype(np.uint8)
        out[cy0:cy1, cx0:cx1] = blended
        return out
