"""The ``realtime`` command: lip-sync files, demo, and (later) live sessions.

    realtime demo                       bundled face + bundled speech → demo.mp4
    realtime run --video FACE --audio SPEECH --out OUT.mp4
    realtime run --video FACE --text "Hello there" --out OUT.mp4
    realtime enroll --video ME.mp4 --out me.dubcam   a personal model (realtime/enroll.py)
    realtime verify FILE                was FILE dubbed by dubcam? (C2PA manifest + watermark)
    realtime cam | serve --webrtc | devices | bench   live use (realtime/cli_live.py)

``realtime <command> --help`` explains each command's options.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import threading
from pathlib import Path

from engine.bundled import ASSETS, DEMO_FACE, DEMO_SPEECH
from realtime.options import DEFAULT_CHECKPOINT, model_options, pipeline_factory, positive

def _disclosure_options(p: argparse.ArgumentParser, files: bool) -> None:
    """The marks of dubbed output (README "Disclosure"): C2PA on files, the watermark, the live badge."""
    g = p.add_argument_group("disclosure")
    g.add_argument("--no-watermark", action="store_true",
                   help="do not embed the invisible watermark in the generated mouth region (warns)")
    if files:
        g.add_argument("--no-provenance", action="store_true", help="write no C2PA manifest (warns)")
        g.add_argument("--sign-cert", type=Path, default=None, metavar="PEM",
                       help="certificate chain (PEM, leaf first) that signs the C2PA manifest, with --sign-key "
                            "(default: a local key made once in $DUBCAM_HOME/signing; its signer is not verified)")
        g.add_argument("--sign-key", type=Path, default=None, metavar="PEM", help="private key of --sign-cert (PEM)")
    else:
        from realtime.sinks import LABEL_CORNERS

        g.add_argument("--label", default=None, metavar="TEXT",
                       help='visible corner badge on the output, e.g. --label "AI-dubbed" (default: none)')
        g.add_argument("--label-corner", choices=LABEL_CORNERS, default="top-left",
                       help="corner of --label (default: top-left)")


def _signing(args, video: Path, audio_path: Path, out: Path, audio_title: str | None):
    """The ``finish`` step of the file sink that signs the output (None with --no-provenance), and a note."""
    from importlib.metadata import version

    from engine import provenance

    if args.no_provenance:
        print(f"realtime: warning: --no-provenance: {out} carries no C2PA manifest", file=sys.stderr)
        return None, None
    signer = provenance.load_signer(args.sign_cert, args.sign_key)
    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    cards = [ASSETS / "generator.md", ASSETS / "lip_expert.md"] if args.checkpoint is None else [ckpt.with_suffix(".md")]

    def sign(part: Path) -> None:
        manifest = provenance.edit_manifest(out.name, video, audio_path, ckpt, cards, version("dubcam"),
                                            watermark=not args.no_watermark, audio_title=audio_title)
        provenance.sign_file(part, manifest, signer, parent=video, components=[audio_path])

    note = ("C2PA manifest signed with the local key in " + str(provenance.local_signer_files()[0].parent)
            + f": {provenance.UNVERIFIED_SIGNER} (--sign-cert/--sign-key sign as you)") if signer.local else \
        f"C2PA manifest signed with {args.sign_cert}"
    return sign, note


def _run_job(args, video: Path, audio_path: Path, out: Path, audio_title: str | None = None) -> int:
    from realtime.runner import run_file
    from realtime.sources import AudioFileSource

    audio = AudioFileSource(audio_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sign, note = _signing(args, Path(video), Path(audio_path), out, audio_title)
    pipeline = pipeline_factory(args)()
    try:
        report = run_file(pipeline, video, audio, out, progress=not args.quiet, finish=sign)
    finally:
        pipeline.close()
    print(f"wrote {out} ({report.duration:.2f} s, backend {pipeline.backend.name})")
    for line in report.lines() + ([note] if note else []):
        print("  " + line)
    return 0


def cmd_verify(args) -> int:
    from engine.provenance import DETECT_P, verify

    v = verify(args.file, max_frames=args.frames)
    m, w = v.manifest, v.watermark
    if m.present:
        print(f"C2PA manifest: present, {m.state}" + (f" ({', '.join(m.failures)})" if m.failures else "")
              + (f", signed by {m.signer}" if m.signer else "") + (f"; {m.note}" if m.note else ""))
        if m.local_signer:
            print("  the signer is not verified: a local key that dubcam made on the machine that wrote the file")
        for a in m.actions:
            print(f"  action {a.get('action')}" + (f" ({a['digitalSourceType'].rsplit('/', 1)[-1]})"
                                                   if a.get("digitalSourceType") else "")
                  + (f" by {a['softwareAgent'].get('name')} {a['softwareAgent'].get('version', '')}".rstrip()
                     if isinstance(a.get("softwareAgent"), dict) else "")
                  + (f": {a['description']}" if a.get("description") else ""))
    else:
        print("C2PA manifest: none" + (f" ({m.note})" if m.note else ""))
    print(f"watermark: {'present' if w.present else 'not found'}, confidence {w.confidence:.6f} "
          f"(p = {w.p_value:.2g}, needs < {DETECT_P:g}; {w.cells} key cells voted, {100 * w.vote_accuracy:.1f} % "
          f"match; bit accuracy {100 * w.bit_accuracy:.1f} % over {w.reads} bit reads in {w.faces} of "
          f"{w.frames} frames with a face)")
    print(f"verdict: {v.line}")
    return 0 if v.dubbed else 1


def cmd_run(args) -> int:
    if args.text is not None:
        from realtime.sources import speak

        with tempfile.TemporaryDirectory() as tmp:
            wav = speak(args.text, Path(tmp) / "speech.wav", voice=args.voice)
            return _run_job(args, args.video, wav, args.out,
                            audio_title=f"text spoken by espeak-ng (voice {args.voice}): {args.text!r}")
    return _run_job(args, args.video, args.audio, args.out)


def cmd_enroll(args) -> int:
    from realtime.enroll import enroll, record_enrollment

    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists: pass --overwrite to replace it")
    if args.camera is not None:
        recording = args.out.with_suffix(".mp4")
        record_enrollment(recording, args.seconds, args.camera, args.microphone)
        print(f"recorded {recording}")
        video = recording
    else:
        video = args.video
    card = enroll(video, args.out, args.checkpoint, args.minutes, args.threads, progress=not args.quiet)
    b, a = card["scores_before"], card["scores_after"]
    print(f"enrolled {card['video']}: {card['seconds']:.0f} s ({card['speech_seconds']:.0f} s of speech), trained "
          f"{card['steps']} steps in {card['train_seconds']} s on frames {card['train_frames'][0]}-"
          f"{card['train_frames'][1] - 1}; scored on the held-out frames {card['held_out_frames'][0]}-"
          f"{card['held_out_frames'][1] - 1}; peak memory {card['peak_memory_mb']} MB")
    print(f"{'held-out score':<26}{'before':>8}{'after':>8}")
    for key, label in (("sharpness", "sharpness ratio ↑"), ("opening", "mouth-opening ratio →1"),
                       ("coupling", "audio-mouth coupling ↑"), ("lip_error", "lip-landmark error % ↓"),
                       ("ssim_low", "lower-face SSIM ↑"), ("expert_conf", "expert confidence ↑")):
        if key in b and key in a:
            print(f"{label:<26}{b[key]:>8.3f}{a[key]:>8.3f}")
    print(f"wrote {args.out}: use it with realtime run | cam | serve --checkpoint {args.out}")
    return 0


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
    model_options(d)
    _disclosure_options(d, files=True)
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
    model_options(r)
    _disclosure_options(r, files=True)
    r.set_defaults(func=cmd_run)
    from realtime.enroll import GOOD_VIDEO

    e = sub.add_parser("enroll", help="fine-tune a personal model on a minute or three of one person speaking",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=GOOD_VIDEO,
                       description="Fine-tune the default generator (or --checkpoint) on a recording of one "
                                   "person talking in their own voice, on the CPU within --minutes, and write "
                                   "one file: the weights and a card (the video, the frames trained on and held "
                                   "out, the scores on the held-out last 20 % before and after). --camera "
                                   "records the user first, showing sentences to read aloud.")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a recording of the person speaking (any container, rate)")
    src.add_argument("--camera", default=None, metavar="DEVICE",
                     help="record from this camera (index or device) and the microphone first")
    e.add_argument("--seconds", type=positive, default=120, help="--camera: seconds to record (default: 120)")
    e.add_argument("--microphone", default=None, metavar="DEVICE",
                   help="--camera: audio input (see realtime devices; default: the default input)")
    e.add_argument("--out", type=Path, required=True, help="the personal model to write, e.g. me.dubcam")
    e.add_argument("--checkpoint", type=Path, default=None,
                   help="the generator to start from (default: the bundled one)")
    e.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget, all steps (default: 10)")
    e.add_argument("--threads", type=positive, default=None, help="torch threads (default: torch's choice)")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_enroll)
    from realtime.cli_live import add_live_commands

    add_live_commands(sub)
    for name in ("cam", "serve"):
        if name in sub.choices:
            _disclosure_options(sub.choices[name], files=False)

    v = sub.add_parser("verify", help="say whether a video or image was dubbed by dubcam (C2PA + watermark)",
                       description="Look for dubcam's marks in a video or image: the C2PA manifest (present, "
                                   "valid, who signed it) and the invisible watermark in the mouth region (with "
                                   "its confidence). Exit status 0: dubbed by dubcam; 1: no marks found; 2: error.")
    v.add_argument("file", type=Path, help="video or image to check")
    v.add_argument("--frames", type=positive, default=300, help="most frames read for the watermark (default: 300)")
    v.set_defaults(func=cmd_verify)
    for command in sub.choices.values():  # -v after the sub-command too (it does not reset one given before)
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log what happens at each step")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it stops like Ctrl-C: every device and thread released."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough: let the clean-up finish
    raise Terminated()


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
    main_thread = threading.current_thread() is threading.main_thread()
    old_sigterm = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, AudioError, MediaError, CheckpointError, BackendError, NoFaceError,
            DeviceError, ValueError) as e:
        print(f"realtime: error: {e}", file=sys.stderr)
        return 2
    except Terminated:  # before a live session ran (one that runs stops cleanly and returns 0)
        print("realtime: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("realtime: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_sigterm)


if __name__ == "__main__":
    sys.exit(main())
