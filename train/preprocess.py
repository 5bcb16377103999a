"""Raw talking-face videos → training data (``python -m train.preprocess``).

For every video (any folder of mp4/mpg/webm/mov, LRS2's ``main/<spk>/<id>.mp4``
layout included) this writes ``<output>/clips/<speaker>__<id>.npz`` with

* ``faces``: ``[T, S, S, 3]`` uint8 RGB generator-size face crops at 25 fps
  (resampled by timestamp), the crop of :func:`engine.face.crop_box`;
* ``boxes``: ``[T, 4]`` float32 crop boxes (x0, y0, x1, y1) in source pixels;
* ``landmarks``: ``[T, 478, 2]`` float16 MediaPipe landmarks in source pixels;
* ``valid``: ``[T]`` bool, a face was found in the frame;
* ``audio``: ``[n]`` float32 16 kHz mono speech;

and ``<output>/manifest.csv`` with one row per clip and its split
(train/val/test). Splits hold out whole speakers: LRS2's own split files
(``train.txt``, ``val.txt``, ``test.txt`` beside ``main/``) when present,
else ``--val-speakers`` / ``--test-speakers``. A video that fails is logged
with its reason and skipped; the summary counts them.
"""

from __future__ import annotations

import argparse
import csv
import logging
import multiprocessing as mp
from pathlib import Path

import numpy as np

from engine.audio import load_audio
from engine.face import FaceTracker, crop
from engine.media import read_frames_at

log = logging.getLogger("train.preprocess")
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mpeg", ".webm", ".mov", ".mkv", ".avi"}
FPS = 25.0


def find_videos(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)


def clip_name(root: Path, path: Path) -> tuple[str, str]:
    """``(speaker, clip id)`` from ``.../<speaker>/<id>.ext``."""
    rel = path.relative_to(root)
    speaker = rel.parent.name or "unknown"
    return speaker, f"{speaker}__{path.stem}"


def preprocess_video(path: Path, size: int = 96) -> dict[str, np.ndarray]:
    """One video → the arrays of a clip file (see module doc). Raises on a file that cannot be used."""
    audio = load_audio(path)
    faces, boxes, landmarks, valid = [], [], [], []
    last_box = None
    with FaceTracker(crop="square", hold=0) as tracker:
        for frame, t in read_frames_at(path, FPS):
            face = tracker.track(frame, t)
            if face is not None:
                last_box = face.box
            box = face.box if face is not None else last_box
            if box is None:
                faces.append(np.zeros((size, size, 3), np.uint8))
                boxes.append(np.zeros(4, np.float32))
            else:
                faces.append(crop(frame, box, size))
                boxes.append(np.array([box.x0, box.y0, box.x1, box.y1], np.float32))
            landmarks.append(face.landmarks.astype(np.float16) if face is not None
                             else np.zeros((478, 2), np.float16))
            valid.append(face is not None)
    valid = np.array(valid)
    if not valid.any():
        raise ValueError("no face found in any frame")
    return {"faces": np.stack(faces), "boxes": np.stack(boxes), "landmarks": np.stack(landmarks),
            "valid": valid, "audio": audio, "fps": np.float32(FPS)}


def _work(job):
    path, out, size = job
    try:
        arrays = preprocess_video(path, size)
        np.savez(out, **arrays)
        return path, len(arrays["valid"]), int(arrays["valid"].sum()), None
    except Exception as e:  # reported per video, the others go on
        return path, 0, 0, f"{type(e).__name__}: {e}"


def _lrs2_splits(root: Path) -> dict[str, str]:
    splits = {}
    for split in ("train", "val", "test"):
        f = root / f"{split}.txt"
        if f.is_file():
            for line in f.read_text().split("\n"):
                if line.strip():
                    splits[line.split()[0].replace("/", "__")] = split
    return splits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, action="append",
                   help="folder of videos (repeatable); the parent folder of a video names its speaker")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--size", type=int, default=96, help="face crop size S (default 96)")
    p.add_argument("--val-speakers", nargs="*", default=[], help="speakers held out for validation")
    p.add_argument("--test-speakers", nargs="*", default=[], help="speakers held out for testing")
    p.add_argument("--workers", type=int, default=max(1, mp.cpu_count()), help="parallel processes")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm import tqdm

    clips_dir = args.output / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    jobs, meta = [], {}
    for root in args.input:
        lrs2 = _lrs2_splits(root.parent) if root.name == "main" else {}
        for path in find_videos(root):
            speaker, name = clip_name(root, path)
            split = lrs2.get(name) or ("val" if speaker in args.val_speakers
                                       else "test" if speaker in args.test_speakers else "train")
            jobs.append((path, clips_dir / f"{name}.npz", args.size))
            meta[path] = (name, speaker, split)
    if not jobs:
        p.error(f"no videos found under {', '.join(map(str, args.input))}")
    rows, failed = [], 0
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for path, n, n_valid, err in tqdm(pool.imap_unordered(_work, jobs), total=len(jobs), desc="videos"):
            if err:
                failed += 1
                log.warning("skipped %s: %s", path, err)
                continue
            name, speaker, split = meta[path]
            rows.append({"clip": name, "speaker": speaker, "split": split, "frames": n,
                         "frames_with_face": n_valid, "source": str(path)})
    rows.sort(key=lambda r: r["clip"])
    with open(args.output / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["clip"])
        w.writeheader()
        w.writerows(rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    log.info("wrote %d clips to %s (%s), %d failed", len(rows), args.output, counts, failed)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
