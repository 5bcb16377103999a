"""A contact sheet of the mouth, input against output: does the re-rendered mouth look right?

    python tools/contact_sheet.py INPUT OUTPUT [--out SHEET.png] [--frames 8] [--size 160] [--metrics]

INPUT is the video (or still image) the mouth was re-rendered on, OUTPUT the
re-rendered video with the same frame count and timing (e.g. from
``realtime run --video INPUT ... --out OUTPUT``). Both are read at INPUT's
frame rate (25 fps for a still image), frame i with frame i; a still INPUT is
the input of every frame.

The mouth is found with MediaPipe (``engine.face.track_landmarks``) on the
INPUT only, and the same square is cut from both videos, so that the same
pixels are compared: the lip box (the 20 lip points' bounding box, padded by
25 % on each side) made square on its centre, resized to ``--size`` pixels.
Frames without a face take the landmarks of the nearest frames with one
(interpolated).

The sheet has one column per frame (``--frames`` evenly spaced frames, first
and last included): a label row (frame number and time), the input's mouth,
and the output's below it. It is written as a PNG (default: OUTPUT's name
with ``_mouth.png``) and its path is printed.

``--metrics`` also prints the weights-free mouth metrics of the pair
(``engine.metrics.mouth_metrics``: sharpness ratio at the generator's scale
and at full resolution, opening ratio, audio-mouth coupling of output and
input, PSNR above the nose, lip-landmark error), with the speech of
``--audio`` (default: OUTPUT's own audio track). This tracks the output too.

Exit status 0, or 2 with one line on stderr for a file that cannot be read
or has no face.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from engine.audio import AudioError, load_audio
from engine.face import Box, crop, interpolate_landmarks, track_landmarks
from engine.media import MediaError, probe_video, read_frames_at
from engine.metrics import lip_box, mouth_metrics

LABEL_HEIGHT = 22
"""Height of the label row over each column, in pixels."""
GAP = 4
"""Pixels between the crops and around the sheet."""
SIDE_LABEL_WIDTH = 52
"""Width of the "input" / "output" labels on the left."""
BACKGROUND = (32, 32, 32)
TEXT = (235, 235, 235)


def sheet_size(n_frames: int, size: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a sheet of ``n_frames`` columns of ``size`` px crops."""
    return SIDE_LABEL_WIDTH + n_frames * (size + GAP), LABEL_HEIGHT + 2 * size + 3 * GAP


def mouth_square(landmarks: np.ndarray) -> Box:
    """The square cut for one frame: :func:`engine.metrics.lip_box` (padded by 25 %) made square
    (side = its larger side) on its centre."""
    box = lip_box(landmarks)
    (cx, cy), half = box.center, max(box.width, box.height) / 2
    return Box(cx - half, cy - half, cx + half, cy + half)


def pick_frames(n_available: int, n: int) -> np.ndarray:
    """``n`` evenly spaced frame indices of ``0 .. n_available - 1`` (first and last included; fewer when
    there are fewer frames)."""
    return np.unique(np.linspace(0, n_available - 1, min(n, n_available)).round().astype(int))


def _put_text(image: np.ndarray, text: str, x: int, y: int) -> None:
    cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.42, TEXT, 1, cv2.LINE_AA)


def make_sheet(inputs: list[np.ndarray], outputs: list[np.ndarray], landmarks: np.ndarray, indices: np.ndarray,
               size: int, fps: float) -> np.ndarray:
    """The contact sheet, ``[H, W, 3]`` uint8 RGB (:func:`sheet_size`).

    Args:
        inputs: input frames (one frame for a still input: used for every column).
        outputs: output frames.
        landmarks: ``[len(inputs), 478, 2]`` of the input, no NaN rows.
        indices: output frame numbers of the columns.
        size: crop side in pixels.
        fps: frame rate, for the time labels.
    """
    width, height = sheet_size(len(indices), size)
    sheet = np.full((height, width, 3), BACKGROUND, np.uint8)
    top, bottom = LABEL_HEIGHT + GAP, LABEL_HEIGHT + 2 * GAP + size
    _put_text(sheet, "input", 6, top + size // 2 + 5)
    _put_text(sheet, "output", 6, bottom + size // 2 + 5)
    for column, i in enumerate(indices):
        j = 0 if len(inputs) == 1 else i
        box = mouth_square(landmarks[j])
        x = SIDE_LABEL_WIDTH + column * (size + GAP)
        sheet[top: top + size, x: x + size] = crop(inputs[j], box, size)
        sheet[bottom: bottom + size, x: x + size] = crop(outputs[i], box, size)
        _put_text(sheet, f"#{i}  {i / fps:.2f}s", x + 2, LABEL_HEIGHT - 6)
    return sheet


def read_video(path: Path, fps: float) -> list[np.ndarray]:
    """Every frame of ``path`` at ``fps`` (``engine.media.read_frames_at``), RGB uint8."""
    return [frame for frame, _ in read_frames_at(path, fps)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contact_sheet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", type=Path, help="the input video or still image the mouth was re-rendered on")
    p.add_argument("output", type=Path, help="the output video (same frame count and timing)")
    p.add_argument("--out", type=Path, metavar="PNG", help="sheet to write (default: OUTPUT with _mouth.png)")
    p.add_argument("--frames", type=int, default=8, metavar="N", help="columns: evenly spaced frames (default 8)")
    p.add_argument("--size", type=int, default=160, metavar="PX", help="side of each mouth crop (default 160)")
    p.add_argument("--metrics", action="store_true", help="also print the weights-free mouth metrics of the pair")
    p.add_argument("--audio", type=Path, metavar="FILE",
                   help="speech for the coupling of --metrics (default: OUTPUT's own audio track; without one "
                        "the couplings are n/a)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.size < 16:
        print("contact_sheet: error: --frames must be >= 1 and --size >= 16", file=sys.stderr)
        return 2
    try:
        info = probe_video(args.input)
        fps = info.fps
        inputs = read_video(args.input, fps)
        if info.still:
            inputs = inputs[:1]
        outputs = read_video(args.output, fps)
        wav = load_audio(args.audio) if args.metrics and args.audio else None
        landmarks = track_landmarks(inputs, fps)
        filled = interpolate_landmarks(landmarks)  # raises when no frame has a face
    except (FileNotFoundError, MediaError, ValueError) as e:  # AudioError is a ValueError
        print(f"contact_sheet: error: {e}", file=sys.stderr)
        return 2
    n = len(outputs) if len(inputs) == 1 else min(len(inputs), len(outputs))
    if len(inputs) > 1 and len(inputs) != len(outputs):
        print(f"contact_sheet: warning: {len(inputs)} input frames, {len(outputs)} output frames; "
              f"using the first {n}", file=sys.stderr)
    (ih, iw), (oh, ow) = inputs[0].shape[:2], outputs[0].shape[:2]
    if (oh, ow) != (ih, iw):
        if not (0 <= oh - ih <= 1 and 0 <= ow - iw <= 1):
            print(f"contact_sheet: error: frame sizes differ: {iw}x{ih} input, {ow}x{oh} output", file=sys.stderr)
            return 2
        outputs = [f[:ih, :iw] for f in outputs]  # H.264 writers pad odd sizes by one pixel
    sheet = make_sheet(inputs, outputs, filled, pick_frames(n, args.frames), args.size, fps)
    out = args.out or args.output.with_name(args.output.stem + "_mouth.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        print(f"contact_sheet: error: could not write {out}", file=sys.stderr)
        return 2
    print(out)
    if args.metrics:
        if wav is None:
            try:
                wav = load_audio(args.output)
            except AudioError as e:
                print(f"contact_sheet: no speech for the coupling ({e})", file=sys.stderr)
        scores = mouth_metrics(inputs, outputs[:n], wav, input_landmarks=landmarks, fps=fps)
        for key, value in scores.items():
            print(f"{key:16s} {'n/a' if math.isnan(value) else f'{value:.4f}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
