"""Load test and soak of the live commands, as a script that prints figures.

    python -m tools.soak [--serve-seconds 1800] [--cam-seconds 600] [--clients 2] [--stay 20] ...
    python -m tools.soak client URL [--seconds 30]        one aiortc client (tests kill it mid-call)
    python -m tools.soak glass [--seconds 20]             a frame's round trip through serve --webrtc

Phase 1 runs ``realtime serve --webrtc`` and ``--clients`` aiortc clients
that send real clips and speech from ``../shared/data`` paced in real time
(25 fps video, 20 ms audio frames), stay ``--stay`` s (±30 %), hang up and
call again 2 s later (a call refused as busy is retried up to 3 times, 1 s
apart, and counted), until ``--serve-seconds`` have passed. Phase 2 runs ``realtime
cam`` with a clip as the camera, a user-space PulseAudio server as the
sound card (speech played to the microphone in a loop) and its virtual
microphone, for ``--cam-seconds``.

Every ``--every`` s (10) it samples the service's process: RSS, threads,
open file descriptors; for the service also the sessions' measured added
latency p95 and pass-through share (``GET /sessions``); for ``cam`` the
virtual microphone's delay behind the microphone (cross-correlation of the
two channels of one PulseAudio recording, so on one clock). It prints one
line per sample, then per phase: memory growth per hour (least squares
after ``--warmup``), latency p95 over time, delay spread, and how many
sessions held.

Exit status 0 when all is well; 1 when memory grew more than
``--max-growth`` (5 %) after warm-up (the service: idle after the warm-up's
sessions vs idle at the end, all sessions closed), when threads, file
descriptors or sessions leaked, when a call was refused or failed, or when
a process failed; 2 on bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUBCAM_TEST_DATA", ROOT.parent / "shared" / "data"))
CLIPS = ("video/grid_bbaf2n.mpg", "video/grid_brbk7n.mpg", "video/grid_lbax4n.mpg")
SPEECH = ("audio/cmuarctic_a0007.wav", "audio/ljspeech_LJ001-0001.wav", "audio/librivox_ss01_0870.wav")
REALTIME = [sys.executable, "-m", "realtime.cli"]
REDIAL_S = 2.0  # a client calls again this long after hanging up (the service frees a slot in ~1 s)
STAMP_BITS = 12  # frame numbers of FrameStamps, modulo 4096 (164 s at 25 fps)
STAMP_CELL = 16  # pixels per square of a FrameStamps stamp
BUSY_RETRIES = 3  # a call refused with 503 is retried this often, 1 s apart, before it counts as refused


# -- a WebRTC client with real media --------------------------------------------------------------------

def _tracks():
    """The aiortc track classes (imported late: aiortc is an optional dependency)."""
    import aiortc
    import av

    class ClipTrack(aiortc.VideoStreamTrack):
        """The frames of a real clip (``[n, H, W, 3]`` uint8 RGB), looped, at 25 fps in real time; with
        ``stamps`` (:class:`FrameStamps`) each frame carries its number and its send time is kept."""

        def __init__(self, frames: np.ndarray, stamps: FrameStamps | None = None):
            super().__init__()
            self.frames, self.n, self.start, self.stamps = frames, 0, None, stamps

        async def recv(self):
            if self.start is None:
                self.start = time.monotonic()
            wait = self.start + self.n / 25 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            image = self.frames[self.n % len(self.frames)]
            if self.stamps is not None:
                image = self.stamps.send(image, self.n)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = self.n * 3600, fractions.Fraction(1, 90000)
            self.n += 1
            return frame

    class SpeechTrack(aiortc.mediastreams.AudioStreamTrack):
        """A real speech recording (float32 16 kHz mono), looped, in 20 ms s16 frames in real time."""

        def __init__(self, samples: np.ndarray):
            super().__init__()
            self.pcm, self.n, self.start = (np.clip(samples, -1, 1) * 32767).astype(np.int16), 0, None

        async def recv(self):
            if self.start is None:
                self.start = time.monotonic()
            wait = self.start + self.n * 0.02 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            i = (self.n * 320) % (len(self.pcm) - 320)
            frame = av.AudioFrame.from_ndarray(self.pcm[i: i + 320].reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, self.n * 320, fractions.Fraction(1, 16000)
            self.n += 1
            return frame

    return ClipTrack, SpeechTrack


class FrameStamps:
    """Frame numbers written into the pixels of sent frames and read back from the frames that return,
    for the round trip of a frame through a call (``glass``).

    The number (:data:`STAMP_BITS` bits, and a 4-bit checksum) is a row of black and white
    :data:`STAMP_CELL`-pixel squares along the frame's top right edge, away from the face and from the
    live badge (top left): flat squares that VP8 keeps at any bitrate of a call. ``send`` stamps a copy and
    notes the time (``time.monotonic()``); ``receive`` reads a returned frame and notes its round trip in
    ``rtt_s`` (frames whose stamp does not read, or that were not sent, are counted in ``unread``).
    """

    def __init__(self):
        self.sent: dict[int, float] = {}
        self.rtt_s: list[float] = []
        self.unread = 0

    @staticmethod
    def cells(width: int) -> list[slice]:
        n = STAMP_BITS + 4
        x0 = width - n * STAMP_CELL
        if x0 < 0:
            raise ValueError(f"a {width} px wide frame is too narrow for the {n}-cell stamp")
        return [np.s_[0:STAMP_CELL, x0 + i * STAMP_CELL: x0 + (i + 1) * STAMP_CELL] for i in range(n)]

    @staticmethod
    def _bits(number: int) -> list[int]:
        bits = [(number >> i) & 1 for i in range(STAMP_BITS)]
        check = sum((number >> i) & 15 for i in range(0, STAMP_BITS, 4)) & 15
        return bits + [(check >> i) & 1 for i in range(4)]

    def send(self, image: np.ndarray, n: int) -> np.ndarray:
        """A copy of ``image`` (H×W×3 uint8) stamped with ``n`` (mod 2^:data:`STAMP_BITS`)."""
        number = n % (1 << STAMP_BITS)
        out = image.copy()
        for cell, bit in zip(self.cells(image.shape[1]), self._bits(number)):
            out[cell] = 235 if bit else 16
        self.sent[number] = time.monotonic()
        return out

    def read(self, image: np.ndarray) -> int | None:
        """The number stamped in ``image``, or None when the stamp (or its checksum) does not read."""
        q = STAMP_CELL // 4
        bits = [int(image[cell][q:-q, q:-q].mean() > 125) for cell in self.cells(image.shape[1])]
        number = sum(b << i for i, b in enumerate(bits[:STAMP_BITS]))
        return number if bits == self._bits(number) else None

    def receive(self, image: np.ndarray) -> None:
        number = self.read(image)
        sent = self.sent.pop(number, None) if number is not None else None
        if sent is None:
            self.unread += 1
        else:
            self.rtt_s.append(time.monotonic() - sent)


def load_media(i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clip ``i`` (of :data:`CLIPS`, cycled) as ``[n, H, W, 3]`` uint8 RGB and speech ``i`` as float32 16 kHz."""
    from engine.audio import load_audio
    from engine.media import read_frames

    clip, speech = DATA / CLIPS[i % len(CLIPS)], DATA / SPEECH[i % len(SPEECH)]
    for path in (clip, speech):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the real clips of ../shared/data; set DUBCAM_TEST_DATA)")
    return np.stack([f for f, _ in read_frames(clip)]), load_audio(speech)


@dataclass
class Call:
    """One call's outcome: HTTP status of the offer, error text, video frames received, seconds to the first
    (after the answer), the last frame's shape (H, W, 3), seconds connected after the answer."""

    status: int
    error: str = ""
    frames: int = 0
    first_frame_s: float | None = None
    shape: tuple | None = None
    stayed_s: float = 0.0

    @property
    def held(self) -> bool:
        """Answered, still connected at the end of its stay, and video came back (the frame rate it came
        back at is a figure of its own)."""
        return self.status == 200 and not self.error and self.frames > 0


async def call(url: str, frames: np.ndarray, speech: np.ndarray, seconds: float, token: str | None = None,
               send_only: bool = False, on_connected=None, profile: str | None = None,
               stamps: FrameStamps | None = None) -> Call:
    """One client: offer the clip and the speech, stay ``seconds`` after the answer, hang up (``pc.close()``).

    ``send_only``: the offer's transceivers are ``sendonly`` (the peer wants nothing back).
    ``on_connected``: called once the peer connection is ``connected``.
    ``profile``: the personal model to ask for (``serve --profiles``).
    ``stamps``: number the sent frames and time their return (:class:`FrameStamps`).
    """
    import aiohttp
    import aiortc

    ClipTrack, SpeechTrack = _tracks()
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    result, t0 = Call(0), time.monotonic()

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                try:
                    frame = await track.recv()
                except aiortc.mediastreams.MediaStreamError:
                    return
                result.frames += 1
                result.shape = (frame.height, frame.width, 3)
                if stamps is not None:
                    stamps.receive(frame.to_ndarray(format="rgb24"))
                if result.first_frame_s is None:
                    result.first_frame_s = time.monotonic() - t0
        if track.kind == "video":
            asyncio.ensure_future(read())

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected" and on_connected is not None:
            on_connected()

    for track in (ClipTrack(frames, stamps), SpeechTrack(speech)):
        if send_only:
            pc.addTransceiver(track, direction="sendonly")
        else:
            pc.addTrack(track)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        if token is not None:
            body["token"] = token
        if profile is not None:
            body["profile"] = profile
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "offer", json=body) as res:
                answer = await res.json()
                result.status = res.status
                if res.status != 200:
                    result.error = answer.get("error", "")
                    return result
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        result.stayed_s = seconds
        if pc.connectionState != "connected":
            result.error = f"connection {pc.connectionState}"
    except Exception as e:  # a failed call is a figure of the soak, not its end
        result.error = f"{type(e).__name__}: {e}"
    finally:
        await pc.close()
    return result


# -- sampling a process ---------------------------------------------------------------------------------

def proc_figures(pid: int) -> dict:
    """RSS (MB), threads and open file descriptors of process ``pid`` (Linux ``/proc``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return {"rss_mb": round(rss, 1), "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def growth_per_hour(samples: list[dict], since: float) -> tuple[float, float]:
    """Least-squares slope of RSS after ``since`` s: (MB per hour, % of the first such sample per hour)."""
    pts = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= since]
    if len(pts) < 2:
        return 0.0, 0.0
    t, r = np.array(pts).T
    slope = float(np.polyfit(t, r, 1)[0]) * 3600
    return slope, 100 * slope / r[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode} before listening")
            time.sleep(0.2)
    raise RuntimeError(f"the service did not listen on {port} within {timeout:g} s")


def stop_service(server: subprocess.Popen) -> bool:
    """SIGTERM ``server`` and wait up to 20 s for it, else kill it; False when it had to be killed."""
    server.terminate()
    try:
        server.wait(timeout=20)
        return True
    except subprocess.TimeoutExpired:
        server.kill()
        return False


def model_args(args) -> list[str]:
    """The ``realtime`` options of ``args.checkpoint`` and ``args.backend`` (none for what is not set)."""
    return (["--checkpoint", str(args.checkpoint)] if args.checkpoint else []) + (
        ["--backend", args.backend] if args.backend else [])


@dataclass
class Phase:
    """Samples and verdicts of one phase."""

    name: str
    samples: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def _print_sample(s: dict) -> None:
    extra = "".join(f" {k} {v}" for k, v in s.items() if k not in ("t", "rss_mb", "threads", "fds"))
    print(f"  {s['t']:7.0f} s  RSS {s['rss_mb']:7.1f} MB  threads {s['threads']:3d}  fds {s['fds']:4d}{extra}",
          flush=True)


# -- phase 1: the WebRTC service ------------------------------------------------------------------------

def soak_serve(args, model: list[str], logs: Path) -> Phase:
    phase = Phase("serve --webrtc")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [*REALTIME, "serve", "--webrtc", "--port", str(port), "--max-sessions", str(args.clients), *model]
    if args.latency:
        cmd += ["--latency", str(args.latency)]
    if args.shared_batch is not None:
        cmd += ["--shared-batch", str(args.shared_batch)]
    server = subprocess.Popen(cmd, stdout=(logs / "serve.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port, server)
        asyncio.run(_drive_serve(args, url, server.pid, phase))
    finally:
        if not stop_service(server):
            phase.problems.append("the service did not stop within 20 s of SIGTERM")
    return phase


async def _drive_serve(args, url: str, pid: int, phase: Phase) -> None:
    import aiohttp

    media = [load_media(i) for i in range(args.clients)]
    calls: list[Call] = []
    busy: list[int] = []
    t0 = time.monotonic()
    rng = random.Random(0)

    async def sessions(http) -> list[dict]:
        async with http.get(url + "sessions") as r:
            return (await r.json())["sessions"]

    async def client(i: int, until: float) -> None:
        while time.monotonic() < until:
            stay = min(args.stay * rng.uniform(0.7, 1.3), max(1.0, until - time.monotonic()))
            for _ in range(BUSY_RETRIES + 1):
                result = await call(url, *media[i], stay)
                if result.status != 503:
                    break
                busy.append(i)  # its previous session still held the slot: retry like a person would
                await asyncio.sleep(1.0)
            calls.append(result)
            await asyncio.sleep(REDIAL_S)

    async def idle(http) -> dict:
        """Wait until no session is left on the service (≤ 20 s), settle, and take its figures."""
        for _ in range(80):
            if not await sessions(http):
                break
            await asyncio.sleep(0.25)
        else:
            phase.problems.append(f"sessions left on the service 20 s after every client hung up: "
                                  f"{await sessions(http)}")
        await asyncio.sleep(3.0)
        return proc_figures(pid)

    async def sampler(http, stop: asyncio.Event) -> None:
        while not stop.is_set():
            s = {"t": round(time.monotonic() - t0, 1), **proc_figures(pid)}
            live = await sessions(http)
            p95 = [x["latency_ms"]["p95"] for x in live if x["latency_ms"]["p95"] is not None]
            out = sum(x["frames_out"] for x in live)
            passed = sum(sum(x["passthrough"].values()) for x in live)
            s.update(sessions=len(live), calls=len(calls), latency_p95_ms=max(p95) if p95 else None,
                     passthrough=round(passed / out, 2) if out else None)
            phase.samples.append(s)
            _print_sample(s)
            try:
                await asyncio.wait_for(stop.wait(), args.every)
            except asyncio.TimeoutError:
                pass

    async with aiohttp.ClientSession() as http:
        print(f"phase 1: {args.clients} clients on {url} for {args.serve_seconds:g} s "
              f"(warm-up {args.warmup:g} s)", flush=True)
        stop = asyncio.Event()
        sampling = asyncio.ensure_future(sampler(http, stop))
        warm_end = t0 + min(args.warmup, args.serve_seconds / 2)
        await asyncio.gather(*(client(i, warm_end) for i in range(args.clients)))
        base = await idle(http)
        print(f"  idle after warm-up: {base}", flush=True)
        since = time.monotonic() - t0
        end = t0 + args.serve_seconds
        await asyncio.gather(*(client(i, end) for i in range(args.clients)))
        final = await idle(http)
        print(f"  idle at the end: {final}", flush=True)
        stop.set()
        await sampling

    held = [c for c in calls if c.held]
    failed = [c for c in calls if not c.held]
    first = [c.first_frame_s for c in held if c.first_frame_s is not None]
    fps = [c.frames / c.stayed_s for c in held if c.stayed_s]
    growth = 100 * (final["rss_mb"] / base["rss_mb"] - 1)
    slope_mb, slope_pct = growth_per_hour(phase.samples, since)
    p95s = [s["latency_p95_ms"] for s in phase.samples if s["latency_p95_ms"] is not None]
    shares = [s["passthrough"] for s in phase.samples if s["passthrough"] is not None]
    phase.lines += [
        f"sessions: {len(calls)} calls, {len(held)} held (connected throughout, video back), {len(failed)} did not"
        + (f" ({'; '.join(sorted({c.error or f'{c.frames} frames' for c in failed}))})" if failed else ""),
        (f"first frame after the answer: median {statistics.median(first):.2f} s; frames received per call: "
         f"median {statistics.median(fps):.1f} fps, min {min(fps):.1f} fps") if first else "no frame received",
        f"memory: idle {base['rss_mb']:.0f} MB after warm-up → idle {final['rss_mb']:.0f} MB at the end "
        f"({growth:+.1f} %); trend {slope_mb:+.1f} MB/h ({slope_pct:+.1f} %/h)",
        f"threads {base['threads']} → {final['threads']}, file descriptors {base['fds']} → {final['fds']} (idle)",
        f"redials {REDIAL_S:g} s after a hang-up refused as busy (slot not yet freed), retried 1 s later: "
        f"{len(busy)}",
        "latency p95 per sample (ms): " + (f"min {min(p95s):.0f}, median {statistics.median(p95s):.0f}, "
                                           f"max {max(p95s):.0f}" if p95s else "none"),
        "pass-through share per sample: " + (f"median {statistics.median(shares):.2f}, max {max(shares):.2f}"
                                             if shares else "none"),
    ]
    if growth > 100 * args.max_growth:
        phase.problems.append(f"memory grew {growth:.1f} % (> {100 * args.max_growth:g} %) between idle states")
    if final["threads"] > base["threads"] + 2:
        phase.problems.append(f"threads leaked: {base['threads']} → {final['threads']} idle")
    if final["fds"] > base["fds"] + 4:
        phase.problems.append(f"file descriptors leaked: {base['fds']} → {final['fds']} idle")
    refused = [c for c in calls if c.status != 200]
    if refused:
        phase.problems.append(f"{len(refused)} calls refused ({refused[0].status}: {refused[0].error})")
    if len(held) < len(calls):
        phase.problems.append(f"{len(calls) - len(held)} of {len(calls)} sessions did not hold")
    if len(calls) < args.min_sessions:
        phase.problems.append(f"only {len(calls)} sessions (< --min-sessions {args.min_sessions})")


# -- phase 2: realtime cam with PulseAudio --------------------------------------------------------------

def mic_delay(raw: Path, seconds: float, max_lag_s: float = 1.5) -> float | None:
    """Delay (s) of the right channel (virtual mic) behind the left (microphone) over the last ``seconds``
    of a 16 kHz stereo s16le recording; None when either is silent there."""
    from scipy.signal import correlate

    n = int((seconds + max_lag_s) * 16000) * 4
    size = raw.stat().st_size // 4 * 4
    with raw.open("rb") as f:
        f.seek(max(0, size - n))
        x = np.frombuffer(f.read(size - max(0, size - n)), "<i2").reshape(-1, 2).astype(np.float32) / 32768
    heard, played = x[:, 0], x[:, 1]
    if len(x) < 16000 or heard.std() < 0.005 or played.std() < 0.005:
        return None
    c = correlate(played, heard, mode="full", method="fft")
    lags = np.arange(-len(heard) + 1, len(played))
    ok = (lags >= 0) & (lags <= max_lag_s * 16000)
    return float(lags[ok][np.argmax(c[ok])] / 16000)


def soak_cam(args, model: list[str], logs: Path) -> Phase:
    from tools.pulse import PulseServer

    phase = Phase("cam + virtual mic")
    pulse = PulseServer()
    raw = logs / "rig.raw"
    stop = threading.Event()
    procs = []

    def play():
        speech = DATA / SPEECH[0]
        while not stop.is_set():
            subprocess.run(["paplay", "-d", "feed", str(speech)], env=pulse.env, capture_output=True)
            stop.wait(0.7)  # a pause: the correlation finds one lag, and silence is part of a call

    player = threading.Thread(target=play, daemon=True)
    try:
        procs.append(subprocess.Popen(["parec", "-d", "rig.monitor", "--raw", "--format=s16le", "--rate=16000",
                                       "--channels=2", "--latency-msec=10"], stdout=raw.open("wb"), env=pulse.env))
        cmd = [*REALTIME, "cam", "--camera", str(DATA / CLIPS[0]), "--audio-source", "mic:mic", "--virtual-mic",
               "vmic", "--no-virtual-camera", "--seconds", str(args.cam_seconds), *model]
        if args.latency:
            cmd += ["--latency", str(args.latency)]
        cam = subprocess.Popen(cmd, stdout=(logs / "cam.log").open("w"), stderr=subprocess.STDOUT, env=pulse.env,
                               cwd=ROOT)
        procs.append(cam)
        player.start()
        print(f"phase 2: realtime cam with PulseAudio for {args.cam_seconds:g} s", flush=True)
        t0 = time.monotonic()
        while cam.poll() is None:
            if stop.wait(args.every) or cam.poll() is not None:
                break
            try:
                s = {"t": round(time.monotonic() - t0, 1), **proc_figures(cam.pid)}
            except (FileNotFoundError, ProcessLookupError):
                break
            delay = mic_delay(raw, args.every)
            s["mic_delay_ms"] = None if delay is None else round(1000 * delay)
            phase.samples.append(s)
            _print_sample(s)
        rc = cam.wait(timeout=args.cam_seconds + 120)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=20)
        pulse.stop()
    log = (logs / "cam.log").read_text()
    if rc != 0:
        phase.problems.append(f"realtime cam exited with {rc}: {log.strip().splitlines()[-1:] or ''}")
    final = log.split("stopped; every device released")[-1]  # cam's closing report, not its running lines
    report = [line.strip() for line in final.splitlines() if "latency" in line or "generated" in line]
    warm = [s for s in phase.samples if s["t"] >= args.warmup] or phase.samples[-1:]
    delays = [s["mic_delay_ms"] for s in phase.samples if s["mic_delay_ms"] is not None]
    if warm:
        first = statistics.median(s["rss_mb"] for s in warm[:3])
        last = statistics.median(s["rss_mb"] for s in warm[-3:])
        growth = 100 * (last / first - 1)
        slope_mb, slope_pct = growth_per_hour(phase.samples, args.warmup)
        phase.lines += [
            f"memory: {first:.0f} MB after warm-up → {last:.0f} MB at the end ({growth:+.1f} %); "
            f"trend {slope_mb:+.1f} MB/h ({slope_pct:+.1f} %/h)",
            f"threads {warm[0]['threads']} → {warm[-1]['threads']}, file descriptors {warm[0]['fds']} → "
            f"{warm[-1]['fds']}"]
        if growth > 100 * args.max_growth:
            phase.problems.append(f"memory grew {growth:.1f} % (> {100 * args.max_growth:g} %) after warm-up")
        if warm[-1]["threads"] > warm[0]["threads"] + 2 or warm[-1]["fds"] > warm[0]["fds"] + 4:
            phase.problems.append("threads or file descriptors grew after warm-up")
    phase.lines.append("virtual-mic delay per sample (ms): " + (
        f"p5 {np.percentile(delays, 5):.0f}, median {np.median(delays):.0f}, p95 {np.percentile(delays, 95):.0f}, "
        f"min {min(delays)}, max {max(delays)} ({len(delays)} samples)" if delays else "no speech came through"))
    if not delays:
        phase.problems.append("the virtual microphone carried no speech")
    phase.lines += [f"cam's own report: {line}" for line in report]
    return phase


# -- main -----------------------------------------------------------------------------------------------

def run_client(argv: list[str]) -> int:
    """``client URL``: one call with clip 0 and speech 0; prints ``connected`` once connected (for tests)."""
    p = argparse.ArgumentParser(prog="python -m tools.soak client", description=run_client.__doc__)
    p.add_argument("url", help="the service's address, e.g. http://127.0.0.1:8080/")
    p.add_argument("--seconds", type=float, default=30.0, help="stay this long (default: 30)")
    p.add_argument("--token", default=None)
    args = p.parse_args(argv)
    frames, speech = load_media(0)
    result = asyncio.run(call(args.url, frames, speech, args.seconds, token=args.token,
                              on_connected=lambda: print("connected", flush=True)))
    print(json.dumps(result.__dict__), flush=True)
    return 0 if result.held else 1


def run_glass(argv: list[str]) -> int:
    """``glass``: how long a frame takes from a WebRTC client through ``realtime serve --webrtc`` and back.

    One aiortc client on loopback sends clip 0 and speech 0 in real time, each frame numbered in its pixels
    (:class:`FrameStamps`), and times every frame that comes back dubbed, from handing it to its track to
    having it decoded: the glass-to-glass delay less the camera and the display. Beside it, the service's own
    scheduled added latency (``GET /sessions``: each frame leaves that long after its capture), so that the
    rest, WebRTC's share both ways (VP8 encoding and decoding twice, the loopback, the service's receive
    timeline, aiortc's jitter buffer), is the difference. The first second of the call is left out
    (connection and warm-up). Exit status 0 when frames came back, 1 when none did or the service failed.
    """
    import aiohttp

    p = argparse.ArgumentParser(prog="python -m tools.soak glass", description=run_glass.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="length of the call (default: 20)")
    p.add_argument("--latency", type=float, default=None, help="the service's --latency (default: its own)")
    p.add_argument("--checkpoint", type=Path, default=None, help="generator (default: the bundled one)")
    p.add_argument("--backend", default=None, help="inference backend (default: the command's default)")
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "dubcam-soak",
                   help="folder for the service's log (default: TMPDIR/dubcam-soak)")
    args = p.parse_args(argv)
    if args.seconds <= 2:
        print("soak glass: error: --seconds must be more than 2", file=sys.stderr)
        return 2
    args.logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [*REALTIME, "serve", "--webrtc", "--port", str(port), "--max-sessions", "1"]
    cmd += model_args(args) + (["--latency", str(args.latency)] if args.latency else [])
    stamps, seen = FrameStamps(), []

    async def drive() -> Call:
        async with aiohttp.ClientSession() as http:
            task = asyncio.ensure_future(call(url, *load_media(0), args.seconds, stamps=stamps))
            while not task.done():
                await asyncio.sleep(1.0)
                if len(stamps.rtt_s) < 25:  # the first second of returned frames: connection and warm-up
                    stamps.rtt_s.clear()
                async with http.get(url + "sessions") as r:
                    live = (await r.json())["sessions"]
                if live and live[0]["latency_ms"]["p50"] is not None:
                    seen.append(live[0])
            return await task

    server = subprocess.Popen(cmd, stdout=(args.logs / "glass-serve.log").open("w"), stderr=subprocess.STDOUT,
                              cwd=ROOT)
    try:
        wait_port(port, server)
        result = asyncio.run(drive())
    except (FileNotFoundError, RuntimeError) as e:
        print(f"soak glass: error: {e}", file=sys.stderr)
        return 1
    finally:
        stop_service(server)
    rtt = np.array(stamps.rtt_s) * 1000
    if not result.held or rtt.size == 0:
        print(f"soak glass: no numbered frame came back ({result.error or f'{result.frames} frames'})",
              file=sys.stderr)
        return 1
    p50, p95 = np.percentile(rtt, [50, 95])
    service = seen[-1]["latency_ms"] if seen else {"scheduled": float("nan"), "p50": float("nan"),
                                                   "p95": float("nan")}
    print(f"glass: {rtt.size} numbered frames back after the first second ({result.frames} received, "
          f"{stamps.unread} unread), call of {args.seconds:g} s on loopback")
    print(f"  round trip, client track → decoded back: p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {rtt.max():.0f} ms")
    print(f"  of which the service holds each frame its scheduled latency, {service['scheduled']:.0f} ms (its "
          f"own measure of the added latency: p50 {service['p50']:.0f} ms, p95 {service['p95']:.0f} ms; "
          f"GET /sessions)")
    print(f"  WebRTC both ways (VP8 encode + decode twice, loopback, receive timeline, jitter buffer): "
          f"p50 {p50 - service['scheduled']:.0f} ms, p95 {p95 - service['scheduled']:.0f} ms")
    print("  not measured here: the camera (exposure and readout, up to a frame: 40 ms at 25 fps) and the "
          "display (up to a refresh, 17 ms at 60 Hz, and the compositor)", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve-seconds", type=float, default=1800.0, help="length of phase 1 (default: 1800; 0 skips)")
    p.add_argument("--cam-seconds", type=float, default=600.0, help="length of phase 2 (default: 600; 0 skips)")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients in phase 1 (default: 2)")
    p.add_argument("--stay", type=float, default=20.0, help="seconds a client stays per call, ±30 %% (default: 20)")
    p.add_argument("--min-sessions", type=int, default=0, help="fail when phase 1 makes fewer calls (default: 0)")
    p.add_argument("--every", type=float, default=10.0, help="sampling period in seconds (default: 10)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before memory growth counts (default: 60)")
    p.add_argument("--max-growth", type=float, default=0.05, help="memory growth allowed after warm-up "
                                                                    "(default: 0.05 = 5 %%)")
    p.add_argument("--latency", type=float, default=None, help="--latency of the service and of cam")
    p.add_argument("--shared-batch", type=int, default=None, metavar="FRAMES",
                   help="serve's --shared-batch (0: every session calls the generator alone; default: serve's)")
    p.add_argument("--checkpoint", type=Path, default=None, help="generator (default: the bundled one)")
    p.add_argument("--backend", default=None, help="inference backend (default: the command's default)")
    p.add_argument("--logs", type=Path, default=Path(tempfile.gettempdir()) / "dubcam-soak",
                   help="folder for the processes' logs and the PulseAudio recording (default: TMPDIR/dubcam-soak)")
    p.add_argument("--json", type=Path, default=None, help="also write every sample and verdict here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        return run_client(argv[1:])
    if argv[:1] == ["glass"]:
        return run_glass(argv[1:])
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the processes started are stopped
    if args.clients < 1 or args.every <= 0 or args.stay <= 0 or min(args.serve_seconds, args.cam_seconds) < 0:
        print("soak: error: --clients ≥ 1, --every > 0, --stay > 0 and phase lengths ≥ 0", file=sys.stderr)
        return 2
    if args.checkpoint is not None and not args.checkpoint.exists():
        print(f"soak: error: {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    model = model_args(args)
    args.logs.mkdir(parents=True, exist_ok=True)
    phases = []
    try:
        if args.serve_seconds:
            phases.append(soak_serve(args, model, args.logs))
        if args.cam_seconds:
            phases.append(soak_cam(args, model, args.logs))
    except (FileNotFoundError, RuntimeError) as e:
        print(f"soak: error: {e}", file=sys.stderr)
        return 1
    ok = True
    for phase in phases:
        print(f"{phase.name}:")
        for line in phase.lines:
            print("  " + line)
        for problem in phase.problems:
            print("  FAIL: " + problem)
        ok = ok and not phase.problems
    print("soak: " + ("passed" if ok else "FAILED"), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps([phase.__dict__ for phase in phases], indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
