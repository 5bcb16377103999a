"""Derive the MediaPipe mean face of the AV-HuBERT mouth ROI (``engine/assets/mediapipe_mean_face.npy``).

    python tools/mean_face.py [--clips data/grid/clips] [--manifest data/grid/manifest.csv]

The reference recipe aligns faces to ``20words_mean_face.npy``, the mean dlib
68-point landmarks of LRW on a 256×256 canvas (spec §1.6). MediaPipe has 478
points, so this derives their mean the same way from data at hand: every
frame with a face in the training clips of ``train.preprocess`` (GRID), as a
generalised Procrustes mean (each frame's landmarks similarity-aligned to the
running mean until it settles). The mean is then put on the 256×256 canvas
with its outer eye corners level and :data:`EYE_DISTANCE` px apart and its
mouth centre at :data:`MOUTH_CENTRE` (see ``engine/face.py`` on why).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from engine.face import MEAN_FACE, MOUTH_POINTS, OUTER_EYE_CORNERS, apply_affines, similarity_transforms

EYE_DISTANCE = 82.0
"""Outer eye corner distance on the canvas, px."""
MOUTH_CENTRE = (128.0, 163.0)
"""Mouth centre (mean of :data:`engine.face.MOUTH_POINTS`) on the canvas, px (x, y)."""


def procrustes_mean(shapes: np.ndarray, iterations: int = 20, tol: float = 1e-9) -> np.ndarray:
    """Generalised Procrustes mean of ``[N, P, 2]`` point sets: ``[P, 2]``, centred, unit RMS radius."""

    def normalise(shape):
        shape = shape - shape.mean(axis=0)
        return shape / np.sqrt((shape**2).sum(axis=1).mean())

    mean = normalise(shapes[0].astype(np.float64))
    for _ in range(iterations):
        aligned = apply_affines(similarity_transforms(shapes, mean), shapes)
        new = normalise(aligned.mean(axis=0))
        new = apply_affines(similarity_transforms(new, mean)[None], new[None])[0]  # keep the orientation
        done = np.abs(new - mean).max() < tol
        mean = new
        if done:
            break
    return mean


def to_canvas(mean: np.ndarray) -> np.ndarray:
    """Rotate, scale and move a mean shape onto the 256×256 canvas (eye line level, see module doc)."""
    right, left = mean[OUTER_EYE_CORNERS[0]], mean[OUTER_EYE_CORNERS[1]]
    dx, dy = left - right
    angle = -np.arctan2(dy, dx)
    scale = EYE_DISTANCE / np.hypot(dx, dy)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shape = mean @ rot.T
    return shape - shape[list(MOUTH_POINTS)].mean(axis=0) + np.array(MOUTH_CENTRE)


def load_training_landmarks(clips: Path, manifest: Path) -> np.ndarray:
    """``[N, 478, 2]`` float64 landmarks of every frame with a face in the manifest's train clips."""
    with open(manifest, newline="") as f:
        names = [row["clip"] for row in csv.DictReader(f) if row["split"] == "train"]
    if not names:
        raise SystemExit(f"{manifest}: no training clips")
    frames = []
    for name in names:
        with np.load(clips / f"{name}.npz") as clip:
            frames.append(clip["landmarks"][clip["valid"]].astype(np.float64))
    return np.concatenate(frames)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=Path, default=Path("data/grid/clips"), help="train.preprocess clip folder")
    p.add_argument("--manifest", type=Path, default=Path("data/grid/manifest.csv"), help="its manifest.csv")
    p.add_argument("--out", type=Path, default=MEAN_FACE, help=f"output .npy (default: {MEAN_FACE})")
    args = p.parse_args(argv)
    landmarks = load_training_landmarks(args.clips, args.manifest)
    canvas = to_canvas(procrustes_mean(landmarks)).astype(np.float32)
    np.save(args.out, canvas)
    print(f"wrote {args.out}: mean of {len(landmarks)} frames, x {canvas[:, 0].min():.1f}..{canvas[:, 0].max():.1f}, "
          f"y {canvas[:, 1].min():.1f}..{canvas[:, 1].max():.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
