"""Raw talking-face recordings → training data (``python -m train.preprocess``).

Inputs (``--input``, repeatable) may hold

* videos (mp4/mpg/webm/mov/mkv/avi) in any folder layout, LRS2's
  ``main/<speaker>/<id>.mp4`` included; the parent folder names the speaker;
* Wav2Lip's preprocessed LRS2 layout, ``<speaker>/<id>/<n>.jpg`` face crops
  (n = 0-based 25 fps frame number; numbers missing where S3FD found no
  face) beside ``<speaker>/<id>/audio.wav``, so that existing preprocessed
  data can be reused. Each jpg is treated as a frame of its own.

For every recording this writes ``<output>/clips/<speaker>__<id>.npz`` with

* ``faces``: ``[T, S, S, 3]`` uint8 RGB generator-size face crops at 25 fps
  (resampled by timestamp), the crop of :func:`engine.face.crop_box`;
* ``boxes``: ``[T, 4]`` float32 crop boxes (x0, y0, x1, y1) in source pixels;
* ``landmarks``: ``[T, 478, 2]`` float16 MediaPipe landmarks in source pixels;
* ``valid``: ``[T]`` bool, a face was found in the frame;
* ``audio``: ``[n]`` float32 16 kHz mono speech; ``fps``: 25.0; its Wav2Lip
  mel ``mel`` ``[80, F]`` and AV-HuBERT features ``avhubert_audio``
  ``[T, 104]`` (``engine.audio``), so that training need not compute them;
* ``roi_affine``: ``[T, 2, 3]`` float32, the per-frame transform from source
  pixels to the 96×96 AV-HuBERT mouth ROI (:func:`engine.face.mouth_roi_affines`);
* ``roi_frames``: ``[T, H, W, 3]`` uint8, the source pixels that the ROI
  reads (the ROI's footprint plus a 2-pixel margin, one H×W per clip;
  pixels outside the frame are black, as in the ROI warp), and
  ``roi_origin``: ``[T, 2]`` int32, the source pixel (x, y) of their
  top-left corner. With the boxes these are what the AV-HuBERT sync loss
  needs to paste generated faces back into the real frames and take the
  mouth ROI differentiably (``train.roi``), without keeping whole frames;
  ``frame_size``: ``[T, 2]`` int32 source frame (width, height).

and ``<output>/manifest.csv`` with one row per clip and its split
(train/val/test). Splits hold out whole speakers: LRS2's split files
(``train.txt``, ``val.txt``, ``test.txt`` with lines ``<speaker>/<id>``, in
``--splits`` or beside ``main/``; Wav2Lip's ``filelists/`` have the same
form) when present, else ``--val-speakers`` / ``--test-speakers``. A
recording that fails is logged with its reason and skipped; the summary
counts them.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from engine.audio import avhubert_audio_features, load_audio, melspectrogram
from engine.face import MOUTH_ROI_SIZE, FaceTracker, crop, mouth_roi_affines
from engine.media import read_frames_at

log = logging.getLogger("train.preprocess")
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mpeg", ".webm", ".mov", ".mkv", ".avi", ".flv"}
FPS = 25.0
ROI_MARGIN = 2  # source pixels kept around the ROI footprint (bilinear taps, rounding)


@dataclass(frozen=True)
class Recording:
    """One talking-face recording: a video file, or a Wav2Lip-layout folder of jpg frames + ``audio.wav``."""

    path: Path
    speaker: str
    name: str  # "<speaker>__<id>"

    @property
    def is_frame_folder(self) -> bool:
        return self.path.is_dir()

    def audio(self) -> np.ndarray:
        return load_audio(self.path / "audio.wav" if self.is_frame_folder else self.path)

    def frames(self) -> Iterator[tuple[np.ndarray | None, float]]:
        """``(rgb uint8 H×W×3 or None, t seconds)`` at 25 fps; None where a Wav2Lip folder lacks the jpg."""
        if not self.is_frame_folder:
            yield from read_frames_at(self.path, FPS)
            return
        numbered = {int(p.stem): p for p in self.path.glob("*.jpg") if p.stem.isdigit()}
        if not numbered:
            raise ValueError(f"{self.path}: no <n>.jpg frames")
        for n in range(max(numbered) + 1):
            image = cv2.imread(str(numbered[n])) if n in numbered else None
            yield (None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), n / FPS


def find_recordings(root: Path) -> list[Recording]:
    """Videos and Wav2Lip-layout folders under ``root``, sorted; the parent folder names the speaker."""
    found = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            found.append(p)
        elif p.is_dir() and (p / "audio.wav").is_file() and any(p.glob("*.jpg")):
            found.append(p)
    recordings = []
    for p in found:
        speaker = p.relative_to(root).parent.name or "unknown"
        recordings.append(Recording(p, speaker, f"{speaker}__{p.stem if p.is_file() else p.name}"))
    return recordings


def roi_footprints(affines: np.ndarray) -> np.ndarray:
    """``[T, 4]`` int bounding boxes (x0, y0, x1, y1; x1, y1 exclusive) of the source pixels
    that bilinear sampling of the 96×96 ROI of each ``[T, 2, 3]`` affine can touch, plus
    :data:`ROI_MARGIN`."""
    last = MOUTH_ROI_SIZE - 1
    corners = np.array([[0, 0, 1], [last, 0, 1], [0, last, 1], [last, last, 1]], np.float64)
    out = np.zeros((len(affines), 4), np.int64)
    for i, m in enumerate(affines.astype(np.float64)):
        inv = cv2.invertAffineTransform(m)
        pts = corners @ inv.T
        lo = np.floor(pts.min(axis=0)) - ROI_MARGIN
        hi = np.ceil(pts.max(axis=0)) + ROI_MARGIN + 1
        out[i] = [lo[0], lo[1], hi[0], hi[1]]
    return out


def cut_region(frame: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """``frame[y0:y0+height, x0:x0+width]``; pixels outside the frame are black (the ROI warp's
    ``BORDER_CONSTANT`` 0, :func:`engine.face.mouth_rois`)."""
    h, w = frame.shape[:2]
    region = np.zeros((height, width, 3), np.uint8)
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + width), min(h, y0 + height)
    if sx1 > sx0 and sy1 > sy0:
        region[sy0 - y0: sy1 - y0, sx0 - x0: sx1 - x0] = frame[sy0:sy1, sx0:sx1]
    return region


def preprocess_recording(rec: Recording, size: int = 96) -> dict[str, np.ndarray]:
    """One recording → the arrays of a clip file (see module doc). Raises on a recording that cannot be used."""
    audio = rec.audio()
    faces, boxes, landmarks, valid, sizes = [], [], [], [], []
    last_box, frame_wh = None, (0, 0)
    with FaceTracker(crop="square", hold=0) as tracker:
        for frame, t in rec.frames():
            face = tracker.track(frame, t) if frame is not None else None
            if frame is not None:
                frame_wh = frame.shape[1::-1]
            sizes.append(frame_wh)
            if face is not None:
                last_box = face.box
            box = face.box if face is not None else last_box
            if box is None:  # no face yet: a placeholder, never drawn (valid is False)
                faces.append(np.zeros((size, size, 3), np.uint8))
                boxes.append(np.zeros(4, np.float32))
            elif frame is None:  # a jpg missing from a Wav2Lip folder: repeat the previous frame
                faces.append(faces[-1])
                boxes.append(boxes[-1])
            else:
                faces.append(crop(frame, box, size))
                boxes.append(np.array([box.x0, box.y0, box.x1, box.y1], np.float32))
            landmarks.append(face.landmarks if face is not None else np.zeros((478, 2), np.float32))
            valid.append(face is not None)
    valid = np.array(valid)
    if not valid.any():
        raise ValueError("no face found in any frame")
    landmarks = np.stack(landmarks)
    affines = mouth_roi_affines(np.where(valid[:, None, None], landmarks, np.nan)).astype(np.float32)
    footprints = roi_footprints(affines)
    width = int((footprints[valid, 2] - footprints[valid, 0]).max())  # frames without a face may not fit:
    height = int((footprints[valid, 3] - footprints[valid, 1]).max())  # they are never generated
    origins = np.stack([(footprints[:, 0] + footprints[:, 2] - width) // 2,
                        (footprints[:, 1] + footprints[:, 3] - height) // 2], axis=1).astype(np.int32)
    regions = np.zeros((len(valid), height, width, 3), np.uint8)
    previous = None
    for i, (frame, _) in enumerate(rec.frames()):
        frame = frame if frame is not None else previous
        if frame is not None and i < len(regions):
            regions[i] = cut_region(frame, int(origins[i, 0]), int(origins[i, 1]), width, height)
        previous = frame
    return {"faces": np.stack(faces), "boxes": np.stack(boxes), "landmarks": landmarks.astype(np.float16),
            "valid": valid, "audio": audio, "fps": np.float32(FPS), "mel": melspectrogram(audio),
            "avhubert_audio": avhubert_audio_features(audio, len(valid)), "roi_affine": affines,
            "roi_frames": regions, "roi_origin": origins, "frame_size": np.array(sizes, np.int32)}


MANIFEST_COLUMNS = ["clip", "speaker", "split", "frames", "frames_with_face", "source"]


def write_manifest(output: Path, rows: list[dict]) -> None:
    """``<output>/manifest.csv``: one row per clip, :data:`MANIFEST_COLUMNS` (what ``train.data`` reads)."""
    with open(Path(output) / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _work(job):
    rec, out, size = job
    try:
        arrays = preprocess_recording(rec, size)
        np.savez(out, **arrays)
        return rec, len(arrays["valid"]), int(arrays["valid"].sum()), None
    except Exception as e:  # reported per recording, the others go on
        return rec, 0, 0, f"{type(e).__name__}: {e}"


def read_split_files(folder: Path) -> dict[str, str]:
    """``{"<speaker>__<id>": split}`` from LRS2-style ``train.txt`` / ``val.txt`` / ``test.txt``
    in ``folder`` (first token of a line is ``<speaker>/<id>``; a missing file is skipped)."""
    splits = {}
    for split in ("train", "val", "test"):
        f = folder / f"{split}.txt"
        if f.is_file():
            for line in f.read_text().split("\n"):
                if line.strip():
                    splits[line.split()[0].replace("/", "__")] = split
    return splits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, action="append",
                   help="folder of videos or of Wav2Lip-layout clips (repeatable); the parent folder of a "
                        "recording names its speaker")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    p.add_argument("--size", type=int, default=96, help="face crop size S (default 96)")
    p.add_argument("--splits", type=Path, help="folder with LRS2-style train.txt/val.txt/test.txt "
                                               "(default: beside an input named main/, if there)")
    p.add_argument("--val-speakers", nargs="*", default=[], help="speakers held out for validation")
    p.add_argument("--test-speakers", nargs="*", default=[], help="speakers held out for testing")
    p.add_argument("--workers", type=int, default=max(1, mp.cpu_count()),
                   help="parallel processes (1: all in this process)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm import tqdm

    clips_dir = args.output / "clips"
    listed = read_split_files(args.splits) if args.splits else {}
    if args.splits and not listed:
        p.error(f"--splits {args.splits}: no train.txt, val.txt or test.txt there")
    missing = [str(root) for root in args.input if not root.is_dir()]
    if missing:
        p.error(f"--input {', '.join(missing)}: no such folder")
    jobs, splits = [], {}
    for root in args.input:
        lrs2 = listed or (read_split_files(root.parent) if root.name == "main" else {})
        for rec in find_recordings(root):
            splits[rec.name] = lrs2.get(rec.name) or ("val" if rec.speaker in args.val_speakers
                                                      else "test" if rec.speaker in args.test_speakers
                                                      else "train")
            jobs.append((rec, clips_dir / f"{rec.name}.npz", args.size))
    if not jobs:
        p.error(f"no videos or Wav2Lip clip folders found under {', '.join(map(str, args.input))}")
    clips_dir.mkdir(parents=True, exist_ok=True)  # only now: a run that finds nothing leaves no output behind
    rows, failed = [], 0
    with contextlib.ExitStack() as stack:
        if args.workers > 1:
            pool = stack.enter_context(mp.get_context("spawn").Pool(min(args.workers, len(jobs))))
            results = pool.imap_unordered(_work, jobs)
        else:
            results = map(_work, jobs)
        for rec, n, n_valid, err in tqdm(results, total=len(jobs), desc="clips"):
            if err:
                failed += 1
                log.warning("skipped %s: %s", rec.path, err)
                continue
            rows.append({"clip": rec.name, "speaker": rec.speaker, "split": splits[rec.name], "frames": n,
                         "frames_with_face": n_valid, "source": str(rec.path)})
    rows.sort(key=lambda r: r["clip"])
    write_manifest(args.output, rows)
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    log.info("wrote %d clips to %s (%s), %d failed", len(rows), args.output, counts, failed)
    if rows and not counts["val"]:
        log.warning("no validation split: python -m train.run will train without validation or best.pt; hold out "
                    "speakers with --val-speakers (or LRS2's val.txt with --splits)")
    if rows and not counts["train"]:
        log.warning("no training split: every recording is held out (--val-speakers / --test-speakers)")
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
