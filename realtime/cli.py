"""The ``realtime`` command: lip-sync files, demo, and (later) live sessions.

    realtime demo                       bundled face + bundled speech → demo.mp4
    realtime run --video FACE --audio SPEECH --out OUT.mp4
    realtime run --video FACE --text "Hello there" --out OUT.mp4
    realtime cam | serve --webrtc | devices | bench   live use (realtime/cli_live.py)

``realtime <command> --help`` explains each command's options.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from engine.face import ASSETS

DEFAULT_CHECKPOINT = ASSETS / "generator.pt"
DEMO_FACE = ASSETS / "demo_face.png"
DEMO_SPEECH = ASSETS / "demo_speech.wav"

log = logging.getLogger("realtime")


def _model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="generator weights: a dubcam generator.pt or Wav2Lip's wav2lip.pth / wav2lip_gan.pth "
                        f"(default: the bundled model, {DEFAULT_CHECKPOINT.name})")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
                   help="inference backend; auto = TensorRT when an engine was built for the checkpoint "
                        "(tools/export_trt.py) and a GPU is here, else ONNX Runtime if installed, else torch; "
                        "--checkpoint may also name an engine folder (default: auto)")
    g.add_argument("--int8", action="store_true",
                   help="run the INT8 version of the generator in ONNX Runtime (CPU; ~1.5x faster, "
                        "calibrated on the bundled demo face; made once and cached)")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:n] (default: cpu)")
    g.add_argument("--chunk", type=int, default=5, metavar="K",
                   help="frames per generator call; larger chunks are faster but add latency (default: 5)")
    g.add_argument("--size", type=int, default=None,
                   help="face size S the checkpoint must have (default: whatever the checkpoint was trained at)")


def _pipeline_factory(args):
    """Load the backend once; return a function that makes a new Pipeline on it (one per live session)."""
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig

    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    if args.checkpoint is None and not ckpt.is_file():
        raise FileNotFoundError(f"the bundled generator is missing ({ckpt}); pass --checkpoint PATH")
    backend = backends.load(ckpt, kind=args.backend, device=args.device, int8=args.int8)
    if args.size is not None and args.size != backend.info.size:
        raise ValueError(f"{ckpt} works on {backend.info.size}px faces, not --size {args.size}")
    log.info("generator: %s (%s, %dpx) on %s", ckpt, backend.info.kind, backend.info.size, backend.name)
    return lambda: Pipeline(backend, PipelineConfig(chunk=args.chunk))


def _build_pipeline(args):
    return _pipeline_factory(args)()


def _run_job(args, video: Path, audio_path: Path, out: Path) -> int:
    from realtime.runner import run_file
    from realtime.sources import AudioFileSource

    audio = AudioFileSource(audio_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pipeline = _build_pipeline(args)
    try:
        report = run_file(pipeline, video, audio, out, progress=not args.quiet)
    finally:
        pipeline.close()
    print(f"wrote {out} ({report.duration:.2f} s, backend {pipeline.backend.name})")
    for line in report.lines():
        print("  " + line)
    return 0


def cmd_run(args) -> int:
    if args.text is not None:
        from realtime.sources import speak

        with tempfile.TemporaryDirectory() as tmp:
            wav = speak(args.text, Path(tmp) / "speech.wav", voice=args.voice)
            return _run_job(args, args.video, wav, args.out)
    return _run_job(args, args.video, args.audio, args.out)


def cmd_demo(args) -> int:
    return _run_job(args, DEMO_FACE, DEMO_SPEECH, args.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens at each step")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="lip-sync the bundled face photo to the bundled speech → demo.mp4",
                       description="Lip-sync the bundled face photo to the bundled speech recording and "
                                   "write an mp4 with that speech as its audio; prints speed and latency.")
    d.add_argument("--out", type=Path, default=Path("demo.mp4"), help="output file (default: demo.mp4)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(d)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="lip-sync a video or image of a face to a speech file or text",
                       description="Stream a video (mp4/mpg/mov/webm/HEVC…) or a still image of a face "
                                   "through the real-time pipeline, driven by a speech file (wav/flac/mp3 or "
                                   "the audio track of a video, any rate and channel count) or by text "
                                   "spoken with espeak-ng. The video is looped back and forth to cover the "
                                   "speech; the output (H.264 + AAC mp4) ends with the speech and carries it "
                                   "as its audio.")
    r.add_argument("--video", type=Path, required=True, help="video or image file with a face")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, help="driving speech: an audio file or a video with audio")
    src.add_argument("--text", help="driving text, spoken by espeak-ng")
    r.add_argument("--voice", default="en", help="espeak-ng voice for --text (default: en)")
    r.add_argument("--out", type=Path, required=True, help="output mp4")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _model_options(r)
    r.set_defaults(func=cmd_run)
    from realtime.cli_live import add_live_commands

    add_live_commands(sub, _model_options)
    return p


def main(argv: list[str] | None = None) -> int:
    from engine.audio import AudioError
    from engine.backends import BackendError
    from engine.checkpoints import CheckpointError
    from engine.media import MediaError
    from realtime.devices import DeviceError
    from realtime.runner import NoFaceError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, AudioError, MediaError, CheckpointError, BackendError, NoFaceError,
            DeviceError, ValueError) as e:
        print(f"realtime: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("realtime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
