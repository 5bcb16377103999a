"""The live commands of ``realtime`` (registered by :func:`realtime.cli.build_parser`).

    realtime cam --camera 0 --audio-source mic --virtual-mic SINK [--preview]
    realtime serve --webrtc [--host 127.0.0.1] [--port 8080] [--token T] [--max-sessions N]
    realtime serve --janus URL --room ROOM [--token T] [--publisher NAME|ID ...] [--audio-from NAME|ID|tcp://...]
    realtime devices
    realtime bench [--seconds N] [--fast]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.audio import SAMPLE_RATE
from realtime.options import Profiles, model_options, pipeline_factory


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return w, h
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")


def _port(text: str) -> int:
    """A TCP port number, 1–65535 (argparse type)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1–65535, got {text!r}")
    return int(text)


def _at_least_one(text: str) -> int:
    """An integer ≥ 1 (argparse type)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return int(text)


def _at_least_zero(text: str) -> int:
    """An integer ≥ 0 (argparse type)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return int(text)


def _check_listen(host: str, port: int) -> None:
    """DeviceError unless ``host:port`` can be bound now (checked before the model loads, so that it fails fast)."""
    import socket

    from realtime.devices import DeviceError

    try:
        socket.create_server((host, port)).close()
    except OSError as e:  # in use, no permission, or not an address of this machine
        raise DeviceError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e


def _print_report(report, runner=None) -> None:
    for line in report.lines():
        print("  " + line)
    if runner is not None:
        st = runner.stats
        ready = np.percentile(st.ready, [50, 95]) if st.ready else (0.0, 0.0)
        print(f"  scheduled latency {1000 * runner.latency_s:.0f} ms; composites ready after p50 "
              f"{1000 * ready[0]:.0f} ms, p95 {1000 * ready[1]:.0f} ms; most frames queued {st.max_queue}")
        if runner.gauge is not None:
            print(f"  last {runner.gauge.reading.line()}")


def _gauge(args):
    """The live sync gauge (``realtime.gauge``) with ``--sync-gauge``, else None."""
    if not args.sync_gauge:
        return None
    from realtime.gauge import GaugeConfig, load_gauge

    return load_gauge(GaugeConfig(poor_for_s=args.sync_fallback_s))


def _status_line(runner) -> None:
    """``realtime cam``'s status line: fps, latency, generated vs passed through, and the sync gauge."""
    st = runner.stats
    recent = st.recent_latencies(50)
    p95 = 1000 * float(np.percentile(recent, 95)) if recent else 0.0
    passed = sum(st.passthrough.values())
    line = f"{st.frames_out} frames, {st.generated} dubbed, {passed} passed through, latency p95 {p95:.0f} ms"
    if runner.gauge is not None:
        line += "; " + runner.gauge.reading.line()
    end = "\r" if sys.stderr.isatty() else "\n"
    print(line.ljust(100) if end == "\r" else line, end=end, file=sys.stderr, flush=True)


# -- realtime cam ------------------------------------------------------------------------------------

def cmd_cam(args) -> int:
    """``realtime cam``: options are checked, then the model loads, then the devices open; all are released.

    A stop asked by Ctrl-C or SIGTERM while the session runs ends it like
    ``--seconds`` does (report printed, exit 0); before it runs, what was
    opened is closed and :func:`realtime.cli.main` exits 130 / 143.
    """
    from realtime.clock import MediaClock
    from realtime.live import run_live
    from realtime.sinks import PreviewSink, VirtualCameraSink, VirtualMicSink
    from realtime.sources import open_audio_source, open_video_source

    if args.preview:
        PreviewSink.check()
    make_pipeline = pipeline_factory(args)
    clock, stop = MediaClock(), threading.Event()
    opened = []
    try:
        video, width, height = open_video_source(args.camera, clock, args.camera_size, args.fps, args.seconds)
        opened.append(video)
        audio = open_audio_source(args.audio_source, clock, voice=args.voice)
        opened.append(audio)
        sinks = []
        if not args.no_virtual_camera:
            sinks.append(VirtualCameraSink(width, height, args.fps, device=args.vcam_device, backend=args.vcam_backend))
            opened.append(sinks[-1])
            print(f"virtual camera: {sinks[-1].device} ({width}x{height} at {args.fps:g} fps)")
        if args.preview:
            sinks.append(PreviewSink(stop))
            opened.append(sinks[-1])
        pipeline = make_pipeline()
    except BaseException:
        for thing in opened:
            thing.close()
        raise
    audio_sinks = []
    if args.virtual_mic is not None:
        audio_sinks.append(lambda r: VirtualMicSink(r.delay, r.clock, r.latency_s, args.virtual_mic))
    try:
        print(f"live from {args.camera}, driven by {args.audio_source}; Ctrl-C stops", flush=True)
        report, runner = run_live(pipeline, video, audio, sinks=sinks, audio_sinks=audio_sinks, clock=clock,
                                  latency_s=args.latency, seconds=args.seconds, stop=stop, gauge=_gauge(args),
                                  on_status=_status_line, status_every_s=1.0 if sys.stderr.isatty() else 10.0)
    finally:
        pipeline.close()
    print("stopped; every device released")
    _print_report(report, runner)
    return 0


# -- realtime serve --webrtc ---------------------------------------------------------------------------

def cmd_serve(args) -> int:
    from realtime.devices import LIVE_EXTRA, DeviceError

    if args.webrtc and args.janus:
        raise ValueError("--webrtc and --janus together: a process is either the WebRTC service or a Janus worker")
    if args.janus:
        return _serve_janus(args)
    if args.room is not None or args.publisher or args.audio_from is not None:
        raise ValueError("--room, --publisher and --audio-from go with --janus URL")
    if not args.webrtc:
        raise ValueError("serve needs --webrtc (the WebRTC service) or --janus URL --room ROOM (a Janus worker)")
    try:
        from realtime.devices import is_loopback
        from realtime.webrtc.server import Server, serve
    except ImportError as e:
        raise DeviceError(f"the WebRTC service needs aiortc and aiohttp ({e}): {LIVE_EXTRA}") from e
    token = args.token
    if args.no_token:
        if token:
            raise ValueError("--no-token and --token together: give one of them")
        if not is_loopback(args.host):
            print(f"realtime: warning: --no-token: anyone who can reach {args.host}:{args.port} can start "
                  "sessions on this machine", file=sys.stderr, flush=True)
        token = ""  # the Server's "no token needed"
    elif token is not None and not token.strip():
        if not is_loopback(args.host):
            raise ValueError(f"--token is empty: off loopback ({args.host}) that would switch authentication off; "
                             "give a token, leave --token out to have one generated, or pass --no-token")
        token = None  # on loopback no token is needed anyway
    _check_listen(args.host, args.port)
    profiles = Profiles(args.profiles, args) if args.profiles is not None else None
    server = Server(pipeline_factory(args), host=args.host, token=token, max_sessions=args.max_sessions,
                    latency_s=args.latency, make_gauge=(lambda: _gauge(args)) if args.sync_gauge else None,
                    profiles=profiles)
    serve(server, args.host, args.port)
    return 0


def _serve_janus(args) -> int:
    """``realtime serve --janus URL --room ROOM``: the VideoRoom worker (realtime.janus) until Ctrl-C or SIGTERM."""
    import asyncio
    import logging
    import signal

    from realtime.devices import LIVE_EXTRA, DeviceError

    try:
        from realtime.janus import Worker, parse_janus_url, parse_room
    except ImportError as e:
        raise DeviceError(f"the Janus worker needs aiortc and aiohttp ({e}): {LIVE_EXTRA}") from e
    url = parse_janus_url(args.janus)
    if args.room is None:
        raise ValueError("--janus needs --room ROOM (the VideoRoom to join)")
    room = parse_room(args.room)
    clock, audio_from = None, args.audio_from
    if audio_from is not None and audio_from.startswith("tcp://"):
        from realtime.clock import MediaClock
        from realtime.sources import open_audio_source

        clock = MediaClock()
        audio_from = open_audio_source(audio_from, clock)
    logging.getLogger("realtime.janus").setLevel(logging.INFO)  # its one line per event, without -v too
    try:
        worker = Worker(url, room, pipeline_factory(args), token=args.token or None,
                        publishers=tuple(args.publisher or ()), audio_from=audio_from, latency_s=args.latency,
                        make_gauge=(lambda: _gauge(args)) if args.sync_gauge else None, name=args.name, clock=clock)
    except BaseException:
        if hasattr(audio_from, "close"):
            audio_from.close()
        raise

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # a clean stop: the worker leaves the room, sessions close
            loop.add_signal_handler(sig, stop.set)
        await worker.run(stop)

    print(f"dubcam worker for room {room} at {url} (Ctrl-C stops)", flush=True)
    asyncio.run(run())
    print("stopped; every session closed", flush=True)
    return 0


# -- realtime devices --------------------------------------------------------------------------------

def cmd_devices(args) -> int:
    from realtime.devices import list_devices

    for line in list_devices():
        print(line)
    return 0


# -- realtime bench ----------------------------------------------------------------------------------

class _Vp8Probe:
    """Encodes every shown frame with aiortc's VP8 encoder (what the WebRTC service does) and times it."""

    def __init__(self):
        import time

        from aiortc.codecs import get_encoder
        from aiortc.rtcrtpparameters import RTCRtpCodecParameters

        self.encoder = get_encoder(RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000))
        self.seconds, self.frames, self._time = 0.0, 0, time.perf_counter

    def write(self, frame, t):
        import av

        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts, vf.time_base = int(t * 90000), Fraction(1, 90000)
        t0 = self._time()
        self.encoder.encode(vf)
        self.seconds += self._time() - t0
        self.frames += 1

    def close(self):
        pass


class _LoopedAudio:
    """A speech file repeated to cover ``seconds``, in 20 ms pieces ``(samples, t)``."""

    def __init__(self, path, seconds: float):
        from realtime.sources import AudioFileSource

        speech = AudioFileSource(path).samples
        n = int(seconds * SAMPLE_RATE) + SAMPLE_RATE
        self.samples = np.tile(speech, n // len(speech) + 1)[:n]

    def __iter__(self):
        piece = SAMPLE_RATE // 50
        for i in range(0, len(self.samples), piece):
            yield self.samples[i: i + piece], i / SAMPLE_RATE


def cmd_bench(args) -> int:
    from engine.bundled import DEMO_FACE, DEMO_SPEECH
    from realtime.clock import MediaClock, Paced
    from realtime.runner import run_file
    from realtime.live import WAKE_S, run_live
    from realtime.sources import AudioFileSource, VideoFileSource

    video, speech = args.video or DEMO_FACE, args.audio or DEMO_SPEECH
    pipeline = pipeline_factory(args)()
    info, k = pipeline.info, pipeline.config.chunk
    try:
        if args.fast:
            with tempfile.TemporaryDirectory() as tmp:
                report = run_file(pipeline, video, AudioFileSource(speech), Path(tmp) / "bench.mp4", progress=False)
            print(f"fast mode (as fast as possible, H.264 file output), {pipeline.backend.name}:")
            _print_report(report)
            return 0
        clock = MediaClock()
        probe = None
        try:
            probe = _Vp8Probe()
        except ImportError:
            print("(aiortc is not installed: no VP8 encoding figure)")
        source = VideoFileSource(video, duration=args.seconds)
        report, runner = run_live(pipeline, Paced(source, clock), Paced(_LoopedAudio(speech, args.seconds), clock),
                                  gauge=_gauge(args),
                                  sinks=[probe] if probe else [], clock=clock, latency_s=args.latency)
    finally:
        pipeline.close()
    st = pipeline.stats
    fps = source.fps
    print(f"live mode, real-time paced {args.seconds:g} s of {Path(video).name} at {fps:g} fps + "
          f"{Path(speech).name}, backend {pipeline.backend.name}, chunk {k}:")
    _print_report(report, runner)
    per_chunk = 1000 * st.stage_s["generator"] / max(1, st.chunks)
    per_frame = {s: 1000 * v / max(1, st.frames_in) for s, v in st.stage_s.items()}
    enc = 1000 * probe.seconds / max(1, probe.frames) if probe else float("nan")
    fill = (k - 1) / fps if pipeline.config.batching == "fixed" else 0.0  # ready: k caps a batch, no wait
    print("latency budget (one frame, capture → leaving the process):")
    rows = [("mel lookahead (window end + half STFT window)", 1000 * info.lookahead_s),
            (f"chunk wait (k={k}: 0 to {1000 * fill:.0f} ms, mean; batching {pipeline.config.batching})",
             1000 * fill / 2),
            ("audio delivery (one 20 ms block)", 20.0),
            ("face tracking (per frame, on arrival)", per_frame["tracking"]),
            (f"inference (per chunk of {k}, {st.chunks} chunks)", per_chunk),
            (f"compositing (per frame; the chunk's {k} in a row)", per_frame["compositing"]),
            ("encoding (aiortc VP8, per frame)", enc)]
    for name, ms in rows:
        print(f"  {name:<52} {ms:7.1f} ms")
    worst = (1000 * (info.lookahead_s + fill + 0.02) + per_frame["tracking"] + per_chunk
             + per_frame["compositing"] * k)
    print(f"  {'sum for the first frame of a chunk (worst case)':<52} {worst:7.1f} ms "
          f"(+ encoding {enc:.1f} ms, + network and the receiver's jitter buffer)")
    print(f"  when the driving audio pauses, silence is fed by a frame's last call (scheduled latency − one "
          f"chunk's compute − {1000 * WAKE_S:.0f} ms), so a pause adds nothing to this sum")
    print(f"  the output is scheduled at {1000 * runner.latency_s:.0f} ms (--latency); "
          f"pass-through counts say whether that is enough here")
    return 0


def _sync_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sync gauge")
    g.add_argument("--sync-gauge", action="store_true",
                   help="run the live sync gauge (the lip expert's lag and margin, audio-mouth coupling; shown "
                        "in the status line, on the page and in /sessions) and fall back to pass-through on poor "
                        "sync or a small face. Off by default: on 2 cores it costs about 5-10 ms a frame, and the "
                        "bundled expert is weak (it can judge a correct dub out of sync)")
    g.add_argument("--sync-fallback-s", type=float, default=3.0, metavar="SECONDS",
                   help="pass the face through once the lip expert has judged the sync off (best lag beyond "
                        "±3 frames) for this long; dub again once it is back for 2 s (default: 3)")


def add_live_commands(sub, voice_default: str = "en") -> None:
    """Register ``cam``, ``serve``, ``devices`` and ``bench`` on the ``realtime`` sub-parsers."""
    c = sub.add_parser("cam", help="live: camera + microphone (or other driving audio) → virtual camera",
                       description="Read a camera, re-render the mouth to the driving audio, and publish the "
                                   "result as a virtual camera (pyvirtualcam: v4l2loopback on Linux, OBS Virtual "
                                   "Camera on Windows/macOS) that Zoom, Meet or Teams can pick. The driving audio "
                                   "is played to --virtual-mic delayed by exactly the pipeline's latency, so the "
                                   "call gets lips and voice in sync. Ctrl-C stops and releases every device.")
    c.add_argument("--camera", default="0",
                   help="camera index or device (default: 0); a video or image file stands in for a camera")
    c.add_argument("--audio-source", default="mic",
                   help="driving audio: mic, mic:DEVICE, an audio file, text:WORDS (espeak-ng), or "
                        "tcp://HOST:PORT[?token=SECRET] (listen for raw 16 kHz mono s16le PCM, e.g. from a "
                        "translation system; HOST empty: loopback; off loopback the sender must send SECRET and "
                        "a newline first) (default: mic)")
    c.add_argument("--voice", default=voice_default, help="espeak-ng voice for text: (default: en)")
    c.add_argument("--virtual-mic", default=None, metavar="DEVICE",
                   help="play the delayed driving audio to this output: a PulseAudio/PipeWire sink name (e.g. a "
                        "null sink), VB-Cable, BlackHole, or a device index (see `realtime devices`)")
    c.add_argument("--preview", action="store_true", help="show the output in a local window (q closes)")
    c.add_argument("--no-virtual-camera", action="store_true", help="do not publish a virtual camera")
    c.add_argument("--vcam-device", default=None, help="virtual camera device, e.g. /dev/video10")
    c.add_argument("--vcam-backend", default=None, help="pyvirtualcam backend (v4l2loopback, obs, unitycapture)")
    c.add_argument("--camera-size", type=_size, default=(640, 480), metavar="WxH",
                   help="camera frame size to ask for (default: 640x480)")
    c.add_argument("--fps", type=float, default=25.0, help="camera frame rate to ask for (default: 25)")
    c.add_argument("--latency", type=float, default=None, metavar="SECONDS",
                   help="added latency the output is scheduled at (default: mel lookahead + chunk + 0.1 s)")
    c.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    _sync_options(c)
    model_options(c)
    c.set_defaults(func=cmd_cam)

    s = sub.add_parser("serve", help="live: a WebRTC service that browsers call (--webrtc), or a worker in a "
                                     "Janus VideoRoom (--janus)",
                       description="--webrtc: serve a web page: the browser sends its camera and microphone (or a "
                                   "driving-audio file) and receives the lip-synced video with the driving audio "
                                   "over WebRTC (aiortc). Several sessions at once, each with its own pipeline. "
                                   "Bound to anything but loopback it requires a token (--token, or one is "
                                   "generated and printed). --janus URL --room ROOM: join a Janus VideoRoom (an "
                                   "SFU) as a participant, subscribe to the chosen publishers and publish each one "
                                   "dubbed, with its driving audio delayed by the same latency, as \"NAME (dubbed)\"; "
                                   "it follows publishers joining and leaving, reconnects when Janus restarts, and "
                                   "logs one line per event. Several workers on several machines share a room by "
                                   "each taking the publishers it is given (--publisher).")
    s.add_argument("--webrtc", action="store_true", help="the WebRTC service")
    j = s.add_argument_group("Janus VideoRoom worker")
    j.add_argument("--janus", default=None, metavar="URL",
                   help="Janus's HTTP API, e.g. http://127.0.0.1:8088/janus (the HTTP transport; long poll)")
    j.add_argument("--room", default=None, help="the VideoRoom id to join (a number, or a string id)")
    j.add_argument("--publisher", action="append", default=None, metavar="NAME|ID",
                   help="a publisher to dub, by display name or id; repeat for several (default: every publisher "
                        "that sends video, except \"... (dubbed)\" ones and the --audio-from one)")
    j.add_argument("--audio-from", default=None, metavar="NAME|ID|tcp://HOST:PORT",
                   help="the audio that drives the mouths: another publisher's audio, by display name or id (a "
                        "translation feed; silence while it is away), or tcp://HOST:PORT[?token=SECRET] (raw 16 kHz "
                        "mono s16le PCM, as cam --audio-source) (default: each publisher's own microphone)")
    j.add_argument("--name", default="dubcam", help="the worker's own display name in the room (default: dubcam)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    s.add_argument("--port", type=_port, default=8080, help="port, 1–65535 (default: 8080)")
    s.add_argument("--token", default=None, help="--webrtc: token offers must carry (default: none on loopback, "
                                                 "else generated and printed; an empty one is refused off "
                                                 "loopback); --janus: Janus's API token (token_auth), if it wants one")
    s.add_argument("--no-token", action="store_true",
                   help="off loopback, accept offers without a token (prints a warning; anyone who can reach "
                        "the port can use this machine)")
    s.add_argument("--max-sessions", type=_at_least_one, default=4, help="sessions at once, ≥ 1 (default: 4)")
    s.add_argument("--latency", type=float, default=None, metavar="SECONDS",
                   help="added latency the output is scheduled at (default: mel lookahead + chunk + 0.1 s)")
    s.add_argument("--profiles", type=Path, default=None, metavar="DIR",
                   help="personal models (realtime enroll) a session may pick: each DIR/NAME.dubcam, asked for by "
                        'the offer\'s "profile": "NAME" (default: every session runs --checkpoint\'s model)')
    s.add_argument("--shared-batch", type=_at_least_zero, default=16, metavar="FRAMES",
                   help="the sessions' chunks that are ready at the same moment run as one generator call of at "
                        "most FRAMES frames (engine.backends.shared; adds no wait); 0: each session calls the "
                        "generator on its own (default: 16)")
    _sync_options(s)
    model_options(s)
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("devices", help="list cameras, audio devices, virtual cameras, inference backends",
                       description="List cameras, audio inputs and outputs (PulseAudio sinks and sources "
                                   "too), virtual camera backends and inference backends, each with why it is "
                                   "or is not usable here.")
    d.set_defaults(func=cmd_devices)

    b = sub.add_parser("bench", help="run the live pipeline on the bundled demo and print speed and latency",
                       description="Run the live pipeline for N seconds on the bundled demo face and speech (or "
                                   "--video/--audio) at real-time speed and print fps, added latency p50/p95, "
                                   "per-stage time, pass-through counts and the latency budget; --fast runs "
                                   "as fast as possible instead (file mode).")
    b.add_argument("--seconds", type=float, default=10.0, help="length of the run (default: 10)")
    b.add_argument("--fast", action="store_true", help="not paced: throughput of the file mode")
    b.add_argument("--video", type=Path, default=None, help="face video or image (default: the bundled demo face)")
    b.add_argument("--audio", type=Path, default=None, help="speech (default: the bundled demo speech)")
    b.add_argument("--latency", type=float, default=None, metavar="SECONDS", help="scheduled latency (live mode)")
    _sync_options(b)
    model_options(b)
    b.set_defaults(func=cmd_bench)
