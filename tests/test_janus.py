"""The Janus VideoRoom worker (realtime.janus) in a real Janus, with real aiortc publishers and a subscriber.

Each test starts its own Janus (Debian's ``janus``) with a minimal
configuration written to a temporary folder: the VideoRoom plugin and the
HTTP transport on 127.0.0.1 only (no admin API, no other plugin, transport,
event handler or logger). Janus gathers no ICE candidates on the loopback
interface (its ICE code skips ``IFF_LOOPBACK``), so its media and aiortc's
meet on one of this host's own addresses (``ice_enforce_list``; aioice is
told to offer that address only): the traffic never leaves the host.
Publishers send a real clip from ../shared/data paced in real time
(aiortc's ``MediaPlayer``); the worker runs a small random generator.
"""

import asyncio
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, data_file
from live_helpers import until

aiortc = pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'dubcam[live]')")
aiohttp = pytest.importorskip("aiohttp")

JANUS = shutil.which("janus")
pytestmark = pytest.mark.skipif(JANUS is None, reason="janus is not installed (apt-get install janus)")
ROOM = 1234
CLIP, CLIP2 = "video/grid_bbaf2n.mpg", "video/grid_brbk7n.mpg"


def host_address() -> str:
    """A non-loopback IPv4 address of this host (Janus's and aiortc's ICE meet on it); skips where there is none."""
    import aioice.ice

    addresses = [a for a in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) if a != "127.0.0.1"]
    if not addresses:
        pytest.skip(reason="this host has no IPv4 address but loopback's, and Janus gathers no ICE candidates "
                           "on loopback")
    return addresses[0]


def janus_library() -> Path:
    """The folder holding Janus's plugins/ and transports/ (Debian: /usr/lib/<multiarch>/janus)."""
    for folder in [*Path("/usr/lib").glob("*/janus"), Path("/usr/lib/janus"), Path("/opt/janus/lib/janus")]:
        if (folder / "plugins" / "libjanus_videoroom.so").exists():
            return folder
    pytest.fail(f"{JANUS} is installed but its VideoRoom plugin (libjanus_videoroom.so) was not found")


class JanusServer:
    """A Janus process on a minimal configuration in ``folder``: VideoRoom room 1234, HTTP on 127.0.0.1:``port``."""

    def __init__(self, folder: Path, address: str):
        from tools.soak import free_port

        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}/janus"
        lib = janus_library()
        for kind, name in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            (folder / kind).mkdir(parents=True)
            (folder / kind / name).symlink_to(lib / kind / name)
        (folder / "none").mkdir()
        (folder / "janus.jcfg").write_text(f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{folder}/plugins"
    transports_folder = "{folder}/transports"
    events_folder = "{folder}/none"
    loggers_folder = "{folder}/none"
    debug_level = 4
    session_timeout = 60
}}
media: {{}}
nat: {{
    ice_enforce_list = "{address}"
    ignore_mdns = true
}}
plugins: {{}}
transports: {{}}
loggers: {{}}
events: {{}}
""")
        (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    ip = "127.0.0.1"
    port = {self.port}
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
""")
        (folder / "janus.plugin.videoroom.jcfg").write_text(f"""general: {{}}
room-{ROOM}: {{
    description = "dubcam test"
    publishers = 16
    bitrate = 1000000
    fir_freq = 1
}}
""")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "JanusServer":
        import socket

        self.starts += 1
        log = open(self.folder / f"janus{self.starts}.log", "wb")
        self.proc = subprocess.Popen([JANUS, "-C", str(self.folder / "janus.jcfg"), "-F", str(self.folder), "-o"],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"janus did not listen on {self.port}:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return "\n".join((p.read_bytes().replace(b"\0", b"").decode(errors="replace")[-3000:]
                          for p in sorted(self.folder.glob("janus*.log"))))


@pytest.fixture
def janus(tmp_path, monkeypatch):
    """A fresh Janus for the test; aioice offers only the host address Janus uses (it is killed at the end)."""
    import aioice.ice

    address = host_address()
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [address])
    server = JanusServer(tmp_path / "janus", address).start()
    yield server
    server.kill()


@pytest.fixture
def make_pipeline(small_generator):
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig

    backend = backends.load(small_generator, "onnxruntime")
    return lambda: Pipeline(backend, PipelineConfig(chunk=5))


# -- the test's own participants (they speak Janus through the worker's client) ------------------------------

def clip_media(clip: str) -> tuple[np.ndarray, np.ndarray]:
    """A real clip's frames (``[n, H, W, 3]`` RGB) and its own audio (16 kHz float32)."""
    from engine.audio import load_audio
    from engine.media import read_frames

    path = data_file(clip)
    return np.stack([f for f, _ in read_frames(path)]), load_audio(path)


class Publisher:
    """An aiortc participant that publishes a real clip as ``display``: its frames (None: audio only) and an audio
    track, paced in real time and looped (``tools.soak``'s tracks; aiortc's MediaPlayer stops at the end of an MPEG-PS clip even with
    ``loop=True``)."""

    def __init__(self, url: str, display: str, media: tuple[np.ndarray, np.ndarray]):
        self.url, self.display, self.media = url, display, media
        self.http = self.janus = self.pc = None
        self.tracks = ()
        self.id = None

    async def start(self) -> "Publisher":
        from realtime.janus import JanusSession
        from tools.soak import _tracks

        self.http = aiohttp.ClientSession()
        self.janus = JanusSession(self.http, self.url)
        await self.janus.create()
        handle = await self.janus.attach()
        joined, _ = await handle.request({"request": "join", "ptype": "publisher", "room": ROOM,
                                          "display": self.display})
        self.id = joined["id"]
        ClipTrack, SpeechTrack = _tracks()
        frames, audio = self.media
        self.tracks = (*([ClipTrack(frames)] if frames is not None else []), SpeechTrack(audio))
        self.pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        for track in self.tracks:
            self.pc.addTrack(track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        _, answer = await handle.request({"request": "publish"}, self.pc.localDescription)
        await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(answer["sdp"], answer["type"]))
        return self

    async def stop(self) -> None:
        for track in self.tracks:
            track.stop()
        await _hang_up(self)


async def _hang_up(participant) -> None:
    """Close a test participant's peer connection, Janus session and HTTP client, whichever it opened."""
    for part in (participant.pc, participant.janus, participant.http):
        if part is not None:
            await part.close()


class Viewer:
    """An aiortc subscriber that finds the publisher named ``display`` in the room and records what it sends."""

    def __init__(self, url: str, display: str):
        self.url, self.display = url, display
        self.frames: list[tuple[float, np.ndarray]] = []  # (arrival, RGB)
        self.audio: list[np.ndarray] = []  # s16 samples as float in [-1, 1]
        self.http = self.janus = self.pc = None
        self.tasks: list[asyncio.Task] = []

    async def start(self, wait_s: float = 30) -> "Viewer":
        from realtime.janus import JanusSession

        self.http = aiohttp.ClientSession()
        self.janus = JanusSession(self.http, self.url)
        await self.janus.create()
        handle = await self.janus.attach()
        deadline = time.monotonic() + wait_s
        while True:
            listed, _ = await handle.request({"request": "listparticipants", "room": ROOM})
            feed = next((p["id"] for p in listed["participants"] if p.get("display") == self.display
                         and p.get("publisher")), None)
            if feed is not None:
                break
            assert time.monotonic() < deadline, f"no publisher {self.display!r} in the room: {listed}"
            await asyncio.sleep(0.2)
        _, offer = await handle.request({"request": "join", "ptype": "subscriber", "room": ROOM,
                                         "streams": [{"feed": feed}]})
        self.pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
        self.pc.on("track", lambda track: self.tasks.append(asyncio.ensure_future(self._read(track))))
        await self.pc.setRemoteDescription(aiortc.RTCSessionDescription(offer["sdp"], offer["type"]))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await handle.request({"request": "start"}, self.pc.localDescription)
        return self

    async def _read(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.frames.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
            else:
                self.audio.append(frame.to_ndarray().reshape(-1).astype(np.float32) / 32768)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await _hang_up(self)


def compare(received: list[np.ndarray], source: np.ndarray) -> dict:
    """Each received frame against the source frame it shows (the one nearest in its upper half, which the
    worker never changes): the upper half's mean absolute difference, the share of strongly changed pixels
    (> 40 of 255 in some channel) that lie in the mouth region (the face's lower middle), the share of the
    frame changed, and the share of the frame changed outside the mouth region."""
    h, w = source.shape[1:3]
    upper = source[:, : h // 2].astype(np.int16)
    mouth = (slice(h // 2, h), slice(w // 4, 3 * w // 4))
    out = {"upper_mae": [], "in_mouth": [], "changed": [], "outside": []}
    for frame in received:
        frame = frame.astype(np.int16)
        err = np.abs(upper - frame[None, : h // 2]).mean(axis=(1, 2, 3))
        i = int(np.argmin(err))
        changed = np.abs(frame - source[i]).max(axis=2) > 40
        inside = changed[mouth].sum()
        out["upper_mae"].append(float(err[i]))
        out["changed"].append(float(changed.mean()))
        out["in_mouth"].append(float(inside / max(1, changed.sum())))
        out["outside"].append(float((changed.sum() - inside) / changed.size))
    return {k: np.array(v) for k, v in out.items()}


def test_dubbed_publisher_differs_only_around_the_mouth(janus, make_pipeline, caplog):
    """A publisher sends a real clip; the worker publishes "alice (dubbed)"; a viewer that subscribes to it gets
    ≥ 5 s of video that matches the clip except around the mouth, and the driving audio (alice's own)."""
    from realtime.janus import Worker

    caplog.set_level("INFO", logger="realtime.janus")
    media = clip_media(CLIP)
    source = media[0]
    worker = Worker(janus.url, ROOM, make_pipeline, latency_s=0.5)

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.ensure_future(worker.run(stop))
        alice = await Publisher(janus.url, "alice", media).start()
        viewer = None
        try:
            viewer = await Viewer(janus.url, "alice (dubbed)").start()
            got = await until(lambda: len(viewer.frames) > 0, 20)
            assert got < 20, "the viewer received no video"
            await asyncio.sleep(6.0)
            stats = [d.session.stats() for d in worker.dubs.values()]
            return list(viewer.frames), list(viewer.audio), stats
        finally:
            if viewer is not None:
                await viewer.stop()
            await alice.stop()
            stop.set()
            await asyncio.wait_for(run, 20)

    frames, audio, stats = asyncio.run(scenario())
    assert frames[-1][0] - frames[0][0] >= 5.0 and len(frames) >= 5 * 25 * 0.8, (len(frames), stats)
    assert frames[0][1].shape == source[0].shape
    (s,) = stats
    assert s["generated"] > 0 and s["frames_in"] > 100, s
    cmp = compare([f for _, f in frames[::2]], source)
    assert np.median(cmp["upper_mae"]) < 6, cmp["upper_mae"]  # the upper half is the clip's (two VP8 passes)
    assert np.percentile(cmp["outside"], 95) < 0.002, cmp["outside"]  # nothing changed away from the mouth
    dubbed = cmp["changed"] > 0.002  # a generated mouth (on a loaded machine some frames pass through, late)
    assert dubbed.sum() >= 5 and dubbed.mean() > 0.1, (cmp["changed"], s)
    assert np.median(cmp["in_mouth"][dubbed]) > 0.9, cmp["in_mouth"]  # the change is around the mouth
    pcm = np.concatenate(audio)
    assert len(pcm) >= 5 * 48000 and np.sqrt(np.mean(pcm ** 2)) > 0.01  # the driving audio (speech) came with it
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.janus"]
    assert any(m.startswith("joined room 1234") for m in lines), lines
    assert any(m.startswith("publisher added: 'alice'") for m in lines), lines
    assert any(m.startswith("publishing 'alice (dubbed)'") for m in lines), lines
    assert any(m.startswith("stopped: left room 1234") for m in lines), lines


class ChromiumPublisher:
    """Headless Chromium publishing a real clip into the room as ``display``, through ``janus_publisher.html``
    (Janus's HTTP API from the page, as a web client of a call does): Chromium's fake camera and microphone
    play the clip's frames and speech from files, looped. The page is served from 127.0.0.1 (a secure
    context, as getUserMedia needs); the DevTools protocol reads its ``window.state``."""

    def __init__(self, folder: Path, janus_url: str, display: str, clip: str):
        from live_helpers import write_y4m_and_wav
        from tools.soak import free_port

        self.folder = folder
        folder.mkdir()
        self.y4m, self.wav = folder / "camera.y4m", folder / "mic.wav"
        write_y4m_and_wav(data_file(clip), self.y4m, self.wav)
        shutil.copy(ROOT / "tests" / "janus_publisher.html", folder / "index.html")
        port = free_port()
        self.page = f"http://127.0.0.1:{port}/index.html?janus={janus_url}&room={ROOM}&display={display}"
        self.procs = [subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
                                        str(folder), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.profile = folder / "profile"

    def start(self) -> "ChromiumPublisher":
        self.procs.append(subprocess.Popen([
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={self.y4m}",
            f"--use-file-for-fake-audio-capture={self.wav}", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0", self.page],
            stdout=open(self.folder / "chromium.log", "wb"), stderr=subprocess.STDOUT))
        return self

    async def state(self) -> dict | None:
        """The page's ``window.state`` (None while Chromium or the page is still starting)."""
        import json

        from webrtc_browser import Cdp

        port_file = self.profile / "DevToolsActivePort"
        if not port_file.is_file() or not port_file.read_text().strip():
            return None
        cdp_port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{cdp_port}/json/list") as r:
                pages = [p for p in await r.json() if p["type"] == "page" and p["url"].startswith("http://127.0.0.1")]
            if not pages:
                return None
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"]) as ws:
                text = await Cdp(ws).js("window.state ? JSON.stringify(window.state) : null")
        return json.loads(text) if text else None

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self) -> str:
        return (self.folder / "chromium.log").read_bytes().decode(errors="replace")[-3000:]


def test_chromium_publisher_is_dubbed(janus, make_pipeline, tmp_path):
    """A browser publishes (headless Chromium, the clip as its fake camera and microphone); the worker dubs it and
    publishes "carol (dubbed)"; a viewer gets ≥ 5 s of video that matches the clip except around the mouth."""
    from realtime.janus import Worker

    if shutil.which("chromium") is None:
        pytest.skip(reason="chromium is not installed (apt install chromium); .ci/run installs it")
    source = clip_media(CLIP)[0]
    carol = ChromiumPublisher(tmp_path / "carol", janus.url, "carol", CLIP)
    worker = Worker(janus.url, ROOM, make_pipeline, latency_s=0.5)

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.ensure_future(worker.run(stop))
        viewer = None
        try:
            carol.start()
            published = {}

            async def page_published():
                published.update(await carol.state() or {})
                return published.get("phase") == "published" or "error" in published

            deadline = time.monotonic() + 60
            while not await page_published() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert published.get("phase") == "published", (published, carol.log())
            viewer = await Viewer(janus.url, "carol (dubbed)").start(wait_s=30)
            assert await until(lambda: len(viewer.frames) > 0, 20) < 20, "the viewer received no video"
            await asyncio.sleep(6.0)
            return list(viewer.frames), [d.session.stats() for d in worker.dubs.values()]
        finally:
            if viewer is not None:
                await viewer.stop()
            carol.stop()
            stop.set()
            await asyncio.wait_for(run, 20)

    frames, stats = asyncio.run(scenario())
    assert frames[-1][0] - frames[0][0] >= 5.0 and len(frames) >= 5 * 25 * 0.5, (len(frames), stats)
    assert frames[0][1].shape == source[0].shape, "Chromium scaled the picture"
    (s,) = stats
    assert s["generated"] > 0, s
    cmp = compare([f for _, f in frames[::2]], source)
    assert np.median(cmp["upper_mae"]) < 8, cmp["upper_mae"]  # the clip's upper half, after two VP8 passes
    assert np.percentile(cmp["outside"], 95) < 0.005, cmp["outside"]
    dubbed = cmp["changed"] > 0.002
    assert dubbed.sum() >= 5 and np.median(cmp["in_mouth"][dubbed]) > 0.9, (cmp["in_mouth"], s)


def test_audio_from_another_publisher(janus, make_pipeline, caplog):
    """--audio-from voice: alice (whose own microphone is silent here) is dubbed to the speech that the publisher
    "voice" sends: silence until voice joins, then voice's audio, which her dubbed publisher carries; voice itself,
    audio only, is not dubbed."""
    from engine.audio import load_audio
    from realtime.janus import Worker

    caplog.set_level("INFO", logger="realtime.janus")
    frames, _ = clip_media(CLIP)
    speech = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    worker = Worker(janus.url, ROOM, make_pipeline, latency_s=0.5, audio_from="voice")

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.ensure_future(worker.run(stop))
        alice = await Publisher(janus.url, "alice", (frames, np.zeros(16000, np.float32))).start()
        voice = viewer = None
        try:
            assert await until(lambda: dub_of(worker, "alice") is not None, 30) < 30
            silent = dub_of(worker, "alice").audio
            voice = await Publisher(janus.url, "voice", (None, speech)).start()
            assert await until(lambda: dub_of(worker, "alice") is not None and
                               dub_of(worker, "alice").audio is not None, 30) < 30, "voice never drove alice"
            viewer = await Viewer(janus.url, "alice (dubbed)").start()
            assert await until(lambda: len(viewer.audio) > 50 * 6 and len(viewer.frames) > 50, 30) < 30
            return silent, dub_of(worker, "alice").audio.display, np.concatenate(viewer.audio), set(worker.dubs)
        finally:
            for p in (viewer, voice, alice):
                if p is not None:
                    await p.stop()
            stop.set()
            await asyncio.wait_for(run, 20)

    silent, driver, pcm, dubbed = asyncio.run(scenario())
    assert silent is None and driver == "voice" and len(dubbed) == 1
    assert np.sqrt(np.mean(pcm[-5 * 48000:] ** 2)) > 0.01  # voice's speech, delayed, on alice's dubbed publisher
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.janus"]
    assert any("driven by silence ('voice' is not in the room)" in m for m in lines), lines
    assert any("dropped 'alice (dubbed)' (its streams changed)" in m for m in lines), lines
    assert any("driven by voice's audio" in m for m in lines), lines


async def census() -> dict:
    """This process's threads and file descriptors, counted so that a leaked session shows and nothing else moves:
    Python threads by name, less the event loop's executor (a pool that stays, bounded, once grown); OS threads
    (native ones too) less that pool, the fewest over 2 s (the running encoders and decoders start short-lived
    ones: ±4 from one moment to the next); file descriptors less TCP sockets (aiohttp's pool of keep-alive
    connections to Janus comes and goes with their idle timeout)."""
    gc.collect()
    os_threads = []
    for _ in range(20):
        os_threads.append(len(os.listdir("/proc/self/task")))
        await asyncio.sleep(0.1)
    names = sorted(t.name for t in threading.enumerate())
    pool = sum(n.startswith("asyncio_") for n in names)
    tcp = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            tcp.update(line.split()[9] for line in list(f)[1:])
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own)
            continue
        if not (target.startswith("socket:[") and target[8:-1] in tcp):
            fds.append(target if not target.startswith(("socket:", "pipe:", "anon_inode:")) else target.split(":")[0])
    return {"threads": [n for n in names if not n.startswith("asyncio_")],
            "os_threads": min(os_threads) - pool, "fds": sorted(fds)}


async def participants(url: str) -> dict:
    """The room's participants: display name → whether it publishes."""
    from realtime.janus import JanusSession

    async with aiohttp.ClientSession() as http:
        janus = JanusSession(http, url)
        await janus.create()
        try:
            listed, _ = await (await janus.attach()).request({"request": "listparticipants", "room": ROOM})
        finally:
            await janus.close()
    return {p.get("display"): p.get("publisher") for p in listed["participants"]}


def dub_of(worker, display: str):
    return next((d for d in worker.dubs.values() if d.feed.display == display), None)


def test_publishers_join_and_leave_without_leaks(janus, make_pipeline, caplog):
    """While alice is dubbed, bob joins (the worker publishes "bob (dubbed)") and leaves (the worker drops it),
    twice: after the second time the Python threads and the file descriptors are those of before it, and the OS
    threads (native ones too) did not keep what a session holds (the first time is a warm-up: native pools grow
    for a second concurrent session, then stay); alice's dub ran throughout."""
    from realtime.janus import Worker

    caplog.set_level("INFO", logger="realtime.janus")
    worker = Worker(janus.url, ROOM, make_pipeline, latency_s=0.5)

    def dubbing(name: str):
        return lambda: dub_of(worker, name) is not None and dub_of(worker, name).session.runner.stats.frames_out > 25

    async def bob_comes_and_goes() -> tuple[dict, dict, float]:
        """Bob publishes until he is dubbed, then leaves: (the room with bob dubbed, census then, seconds until
        his dub was dropped)."""
        bob = await Publisher(janus.url, "bob", clip_media(CLIP2)).start()
        try:
            assert await until(dubbing("bob"), 30) < 30, "bob was not dubbed"
            room, during = await participants(janus.url), await census()
        finally:
            await bob.stop()
        return room, during, await until(lambda: dub_of(worker, "bob") is None and not worker._closing, 10)

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.ensure_future(worker.run(stop))
        alice = await Publisher(janus.url, "alice", clip_media(CLIP)).start()
        try:
            assert await until(dubbing("alice"), 30) < 30, "alice was not dubbed"
            alice_dub = dub_of(worker, "alice")
            await bob_comes_and_goes()  # the warm-up
            before = await census()
            room, during, dropped = await bob_comes_and_goes()
            after = await census()
            alive = dub_of(worker, "alice") is alice_dub and not alice_dub.session.closed
            return before, during, after, room, dropped, alive, await participants(janus.url)
        finally:
            await alice.stop()
            stop.set()
            await asyncio.wait_for(run, 20)

    before, during, after, room, dropped, alive, room_after = asyncio.run(scenario())
    assert room["bob (dubbed)"] and room["alice (dubbed)"] and room["dubcam"] is False, room
    assert "bob (dubbed)" not in room_after and room_after["alice (dubbed)"], room_after
    assert dropped < 5 and alive
    assert len(during["threads"]) > len(before["threads"]) and len(during["fds"]) > len(before["fds"])  # bob's dub
    assert after["threads"] == before["threads"], (before["threads"], after["threads"])
    # OS threads: one session holds about two dozen (4 Python threads, 20 native); native pools (codecs, the
    # runtime) may still grow by a few after the warm-up, now and then, and stay: less than half a session
    held = during["os_threads"] - before["os_threads"]
    assert held >= 10 and after["os_threads"] - before["os_threads"] < held / 2, (before, during, after)
    assert after["fds"] == before["fds"], (before["fds"], after["fds"])
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.janus"]
    assert sum(m.startswith("publisher added: 'bob'") for m in lines) == 2, lines
    assert sum(m.startswith("publisher left: 'bob'") for m in lines) == 2, lines
    assert sum(m.startswith("dropped 'bob (dubbed)' (left the room)") for m in lines) == 2, lines


def test_worker_reconnects_when_janus_restarts(janus, make_pipeline, caplog):
    """Janus is killed mid-call and started again; alice publishes again (her Janus session went with it); the
    worker is back in the room within a few seconds of Janus and publishes "alice (dubbed)" again."""
    from realtime.janus import Worker

    caplog.set_level("INFO", logger="realtime.janus")
    worker = Worker(janus.url, ROOM, make_pipeline, latency_s=0.5)
    media = clip_media(CLIP)

    async def scenario():
        stop = asyncio.Event()
        run = asyncio.ensure_future(worker.run(stop))
        alice = await Publisher(janus.url, "alice", media).start()
        viewer = None
        try:
            viewer = await Viewer(janus.url, "alice (dubbed)").start()
            assert await until(lambda: len(viewer.frames) > 25, 30) < 30, "no dubbed video before the restart"
            janus.kill()
            await asyncio.gather(alice.stop(), viewer.stop())
            alice = viewer = None
            gone = await until(lambda: not worker.dubs, 10)
            await asyncio.get_running_loop().run_in_executor(None, janus.start)
            alice = await Publisher(janus.url, "alice", media).start()
            rejoined = await until(lambda: worker.connections == 2, 15)
            viewer = await Viewer(janus.url, "alice (dubbed)").start(wait_s=15)
            resumed = await until(lambda: len(viewer.frames) > 25, 20)
            return gone, rejoined, resumed
        finally:
            for p in (viewer, alice):
                if p is not None:
                    await p.stop()
            stop.set()
            await asyncio.wait_for(run, 20)

    gone, rejoined, resumed = asyncio.run(scenario())
    assert gone < 3, gone  # the dub of the lost room is closed at once
    assert rejoined < 6, rejoined  # back in the room (backoff 0.5 s doubling to 5 s)
    assert resumed < 10, resumed  # dubbed video flows to a viewer again
    lines = [r.getMessage() for r in caplog.records if r.name == "realtime.janus"]
    assert any(m.startswith("reconnecting to ") for m in lines), lines
    assert any(m.startswith("reconnected: joined room 1234") for m in lines), lines
    assert sum(m.startswith("publishing 'alice (dubbed)'") for m in lines) == 2, lines


def test_cli_errors_and_a_clean_stop_on_sigterm(janus, small_checkpoint):
    """``realtime serve --janus``: one-line errors for a bad URL, an unreachable Janus and a missing room; a
    running worker dubs a publisher, and SIGTERM makes it leave the room and exit 0."""
    from tools.soak import free_port

    serve = [sys.executable, "-m", "realtime.cli", "serve", "--checkpoint", str(small_checkpoint)]

    def fails(*args) -> str:
        done = subprocess.run([*serve, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("realtime: error: ") and "Traceback" not in done.stderr, done.stderr
        return line

    assert "WebSocket URLs are not supported" in fails("--janus", "ws://127.0.0.1:8188/", "--room", "1")
    assert "needs --room" in fails("--janus", janus.url)
    port = free_port()
    assert f"cannot reach Janus at http://127.0.0.1:{port}/janus" in fails("--janus", f"http://127.0.0.1:{port}/janus",
                                                                          "--room", "1")
    assert "has no room 999" in fails("--janus", janus.url, "--room", "999")

    proc = subprocess.Popen([*serve, "--janus", janus.url, "--room", str(ROOM), "--publisher", "carol",
                             "--latency", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    async def scenario():
        carol = dave = None
        try:
            assert await until(lambda: any("joined room" in line for line in lines), 90) < 90, lines
            carol = await Publisher(janus.url, "carol", clip_media(CLIP)).start()
            dave = await Publisher(janus.url, "dave", clip_media(CLIP2)).start()  # not given: not dubbed
            assert await until(lambda: any("publishing 'carol (dubbed)'" in line for line in lines), 30) < 30, lines
            await asyncio.sleep(2.0)
            room = await participants(janus.url)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            return room, code, await participants(janus.url)
        finally:
            for p in (carol, dave):
                if p is not None:
                    await p.stop()

    try:
        room, code, room_after = asyncio.run(scenario())
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=5)
    assert room["carol (dubbed)"] and "dave (dubbed)" not in room and room["dubcam"] is False, room
    assert code == 0, lines
    assert "dubcam" not in room_after and "carol (dubbed)" not in room_after, room_after
    text = "".join(lines)
    assert "dropped 'carol (dubbed)' (stopping)" in text and "stopped: left room 1234" in text, text
    assert "stopped; every session closed" in text, text
