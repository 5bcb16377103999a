"""How well the lips of a video match its speech, by the project's lip-sync expert.

    python tools/sync_score.py VIDEO [--audio WAV] [--expert PATH] [--max-offset 15]

The video is read at 25 fps (the expert's rate); the speech is its own audio
track, or ``--audio`` (any file FFmpeg reads, sample 0 at the video's first
frame). The face of every frame is found with MediaPipe and cut with the
generator's square crop; every window of 5 consecutive frames with a face
(windows with a frame without a face are dropped) is scored by the lip expert
against the speech shifted by -N .. +N frames (``--max-offset N``), as
``engine.metrics.expert_sync`` defines. Printed:

  sync confidence    mean cosine of the expert's audio and lip embeddings at
                     offset 0 (higher is better, at most 1; the video as it is)
  best offset        the shift with the highest mean cosine, in frames and ms;
                     positive: the audio is LATE (lags the lips), and advancing
                     it by that much would align it; negative: the audio is early
  offset confidence  median minus minimum of the mean cosine distance over the
                     shifts (syncnet_python's LSE-C quantity with this expert):
                     how clearly one shift stands out; near 0 = no clear sync

The expert is OURS: ``SyncNetColor`` (Wav2Lip's architecture) trained by
``python -m train.syncnet`` on GRID and web clips (``../shared/data``), bundled
as ``engine/assets/lip_expert.pth``; it is not Wav2Lip's published
``lipsync_expert.pth`` nor syncnet_python's ``syncnet_v2.model``, so these
numbers are NOT comparable with the LSE-C / LSE-D of papers (use
``tools/evaluate.py --syncnet`` for those). Any SyncNet_color file, Wav2Lip's
included, can be given with ``--expert``.

Exit status 0; 2 with one line on stderr for bad input (missing file, no
video, no audio, no face, too short, a file that is not a lip expert).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from engine.audio import AudioError, load_audio
from engine.bundled import LIP_EXPERT as BUNDLED_EXPERT
from engine.checkpoints import CheckpointError, describe, safe_load
from engine.face import track_landmarks
from engine.media import MediaError, probe_video, read_frames_at
from engine.metrics import expert_crops, expert_sync
from engine.models.syncnet import SyncNetColor

FPS = 25.0
EXPERT_KIND = "a Wav2Lip lip-sync expert"


class InputError(ValueError):
    """Bad input of a user command: reported as one line, exit status 2."""


def load_expert(path: str | Path | None = None, device: str = "cpu") -> SyncNetColor:
    """The lip expert at ``path`` (default: :data:`BUNDLED_EXPERT`), in eval mode on ``device``.

    Raises:
        FileNotFoundError: no such file (for the default: says how to get one).
        CheckpointError: unreadable, or a checkpoint of another kind (the message says which).
    """
    if path is None:
        if not BUNDLED_EXPERT.is_file():
            raise FileNotFoundError(f"no bundled lip expert at {BUNDLED_EXPERT}: train one with "
                                    "python -m train.syncnet --data DIR --out DIR and pass --expert "
                                    "DIR/lipsync_expert.pth")
        path = BUNDLED_EXPERT
    kind = describe(safe_load(path))
    if not kind.startswith(EXPERT_KIND):
        raise CheckpointError(f"{path}: expected a lip-sync expert (SyncNet_color, python -m train.syncnet), "
                              f"found {kind}")
    return SyncNetColor.from_checkpoint(path).to(device)


def score_video(expert, video: str | Path, audio: str | Path | None = None, max_offset: int = 15,
                progress: bool = True) -> dict:
    """:func:`engine.metrics.expert_sync` of a video file (25 fps) with its own or ``audio``'s speech,
    plus ``"frames"`` and ``"faces"`` (frames with a face).

    Raises:
        InputError: missing file, no video or no audio stream, no face, too short.
    """
    video = Path(video)
    for path in (video, audio):
        if path is not None and not Path(path).is_file():
            raise InputError(f"no such file: {path}")
    try:
        probe_video(video)
    except MediaError as e:
        raise InputError(str(e)) from e
    try:
        wav = load_audio(audio if audio is not None else video)
    except AudioError as e:
        hint = "" if audio is not None else " (give the speech with --audio WAV)"
        raise InputError(f"{e}{hint}") from e
    try:
        frames = [f for f, _ in tqdm(read_frames_at(video, FPS), desc="read", unit="frame", leave=False,
                                     disable=not progress, file=sys.stderr)]
    except MediaError as e:
        raise InputError(str(e)) from e
    landmarks = track_landmarks(tqdm(frames, desc="faces", unit="frame", leave=False, disable=not progress,
                                     file=sys.stderr), FPS)
    crops, valid = expert_crops(frames, landmarks)
    if not valid.any():
        raise InputError(f"{video}: no face found in any of its {len(frames)} frames")
    try:
        result = expert_sync(expert, crops, wav, FPS, max_offset, valid=valid)
    except (ValueError, AudioError) as e:
        raise InputError(f"{video}: {e}") from e
    return {**result, "frames": len(frames), "faces": int(valid.sum())}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sync_score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", type=Path, metavar="VIDEO", help="a video file with a face (and speech)")
    p.add_argument("--audio", type=Path, metavar="WAV", help="the speech, if not the video's own audio track")
    p.add_argument("--expert", type=Path, metavar="PATH",
                   help=f"lip expert checkpoint (default: the bundled {BUNDLED_EXPERT.name})")
    p.add_argument("--max-offset", type=int, default=15, metavar="N",
                   help="largest audio shift tried, in frames at 25 fps (default 15: ±600 ms)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:n] (default: cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.max_offset < 0:
            raise InputError(f"--max-offset must be >= 0, got {args.max_offset}")
        expert = load_expert(args.expert, args.device)
        result = score_video(expert, args.video, args.audio, args.max_offset, progress=not args.quiet)
    except (InputError, FileNotFoundError, CheckpointError) as e:
        print(f"sync_score: error: {e}", file=sys.stderr)
        return 2
    offset = result["offset"]
    late = "audio late" if offset > 0 else "audio early" if offset < 0 else "in sync"
    print(f"sync confidence    {result['confidence']:.4f}   (mean expert cosine at offset 0, "
          f"{result['windows']} windows of 5 frames, {result['faces']}/{result['frames']} frames with a face)")
    print(f"best offset        {offset:+d} frames ({offset * 1000 / FPS:+.0f} ms, {late})")
    print(f"offset confidence  {result['offset_confidence']:.4f}   (median - min of the cosine distance over "
          f"±{args.max_offset} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
