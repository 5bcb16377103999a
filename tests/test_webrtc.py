"""The WebRTC service with aiortc clients: tokens, the session limit, directions, reaping, teardown, the log.

Server and clients run over loopback, most in this process; the clients
(``tools.soak.call``) send a real clip and real speech in real time, and
everything is the real stack (ICE, DTLS, SRTP, VP8, Opus). A service bound
to loopback offers 127.0.0.1 itself; the one bound to 0.0.0.0 here has
aioice patched to offer only 127.0.0.1 (the only address a test may use).
"""

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, data_file

aiortc = pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'dubcam[live]')")
aiohttp = pytest.importorskip("aiohttp")

from tools.soak import call, free_port, load_media  # noqa: E402  (needs aiortc)
from live_helpers import until  # noqa: E402


@pytest.fixture
def loopback_ice(monkeypatch):
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.fixture
def restore_ice(monkeypatch):
    """Undo a loopback server's process-wide aioice change after the test."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)


@pytest.fixture(scope="module")
def media():
    data_file("video/grid_bbaf2n.mpg")  # skips with the reason when ../shared/data is absent
    return load_media(0)


@pytest.fixture
def make_pipeline(small_generator):
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig

    backend = backends.load(small_generator, "onnxruntime")
    made, closed = [], []

    def make():
        pipeline = Pipeline(backend, PipelineConfig(chunk=5))
        close = pipeline.close
        pipeline.close = lambda: (closed.append(pipeline), close())
        made.append(pipeline)
        return pipeline

    make.made, make.closed = made, closed
    return make


async def started(server, host="127.0.0.1"):
    """The server's app on a free port: (aiohttp AppRunner, base URL)."""
    runner = aiohttp.web.AppRunner(server.app())
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, host, 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"


def test_token_off_loopback_and_three_concurrent_sessions(loopback_ice, make_pipeline, media, monkeypatch):
    from realtime.webrtc.server import Server, Session

    final = []
    close = Session.close

    async def close_and_keep_stats(self):
        final.append(self.stats())
        await close(self)

    monkeypatch.setattr(Session, "close", close_and_keep_stats)
    frames, speech = media
    server = Server(make_pipeline, host="0.0.0.0", max_sessions=3, latency_s=0.5)
    assert server.token  # not loopback: a token was generated

    async def scenario():
        runner, url = await started(server, "0.0.0.0")
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as res:
                    assert res.status == 200 and "RTCPeerConnection" in await res.text()
            refused = [await call(url, frames, speech, 0, token) for token in (None, "wrong")]
            assert not server.sessions
            results = await asyncio.gather(*(call(url, frames, speech, 8, server.token) for _ in range(3)),
                                           call_later(2.0, call(url, frames, speech, 0, server.token)))
            await until(lambda: not server.sessions and len(make_pipeline.closed) == 3, 15)
            return refused, results, len(server.sessions)
        finally:
            await runner.cleanup()

    async def call_later(delay, coro):
        await asyncio.sleep(delay)
        return await coro

    refused, results, left = asyncio.run(scenario())
    assert [c.status for c in refused] == [403, 403]
    *sessions, fourth = results
    assert fourth.status == 503 and "max-sessions" in fourth.error
    for c in sessions:
        assert c.status == 200 and not c.error and c.frames >= 10, c  # each client received video
        assert c.shape == frames[0].shape
    assert len(final) == 3 and all(s["generated"] > 0 for s in final)  # lip-synced by its own pipeline
    # /sessions reports measured figures
    assert all(s["latency_ms"]["p95"] > 0 and s["fps"] > 0 and 0 <= s["passthrough_share"] <= 1 for s in final)
    assert left == 0 and len(make_pipeline.made) == 3 and len(make_pipeline.closed) == 3  # all freed


def test_send_only_peer_gets_no_output_and_loopback_is_a_candidate(restore_ice, make_pipeline, media):
    """A peer that only sends gets no output track (nothing would pull it: the server grew 16 MB/s), and the
    loopback-bound server offers 127.0.0.1 (a host with only ``lo`` connects)."""
    from realtime.webrtc.server import Server

    frames, speech = media
    server = Server(make_pipeline, latency_s=0.5)
    seen = {}

    async def scenario():
        runner, url = await started(server)
        try:
            task = asyncio.ensure_future(call(url, frames, speech, 4, send_only=True))
            await until(lambda: server.sessions and next(iter(server.sessions.values())).connected_at, 10)
            await asyncio.sleep(2.0)
            (session,) = server.sessions.values()
            seen["senders"] = [s.track for s in session.pc.getSenders() if s.track is not None]
            seen["answer"] = session.pc.localDescription.sdp
            seen["stats"] = session.stats()
            return await task
        finally:
            await runner.cleanup()

    result = asyncio.run(scenario())
    assert result.status == 200 and result.frames == 0
    assert seen["senders"] == []  # no output track
    assert seen["stats"]["sends_back"] is False and seen["stats"]["frames_in"] == 0  # media read, dropped
    assert seen["answer"].count("a=recvonly") == 2
    assert re.search(r"a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 ", seen["answer"])


def test_unpulled_output_is_bounded(small_generator, grid_frames):
    """A runner whose output nobody pulls keeps at most latency + 1 s of captured frames."""
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.clock import MediaClock
    from realtime.live import UNPULLED_S, LiveRunner

    frames, _ = grid_frames
    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5))
    runner = LiveRunner(pipeline, MediaClock(), latency_s=0.3)  # not started: only the buffers are under test
    for i in range(250):  # 10 s of video
        runner.push_video(frames[i % len(frames)], i / 25)
    pipeline.close()
    assert len(runner._raw) <= (0.3 + UNPULLED_S) * 25 + 2
    assert runner.stats.skipped >= 250 - (0.3 + UNPULLED_S) * 25 - 2


def test_offers_that_never_connect_are_reaped(make_pipeline, media, restore_ice):
    """Form posts, bare SDP and offers without candidates are refused; offers whose peer vanishes are ended
    after the connect timeout, and the slots they held serve real users again."""
    from realtime.webrtc.server import Server

    frames, speech = media
    server = Server(make_pipeline, max_sessions=2, latency_s=0.5, connect_timeout_s=1.5)

    async def vanish(url):
        """Post a real offer, take the answer, and disappear."""
        pc = aiortc.RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                status = r.status
        await pc.close()
        return status, pc.localDescription.sdp

    async def scenario():
        runner, url = await started(server)
        out = {}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(url + "offer", data={"sdp": "v=0", "type": "offer"}) as r:  # a form
                    out["form"] = r.status, (await r.json())["error"]
                async with http.post(url + "offer", json={"sdp": "v=0\r\n", "type": "offer"}) as r:
                    out["bare"] = r.status, (await r.json())["error"]
            (s1, sdp), (s2, _) = await asyncio.gather(vanish(url), vanish(url))
            out["vanished"] = s1, s2, len(server.sessions)
            out["busy"] = (await call(url, frames, speech, 0)).status
            out["reaped_after_s"] = await until(lambda: not server.sessions, 10)
            no_candidates = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith("a=candidate"))
            async with aiohttp.ClientSession() as http:
                async with http.post(url + "offer", json={"sdp": no_candidates, "type": "offer"}) as r:
                    out["no_candidates"] = r.status, (await r.json())["error"]
            out["real"] = await call(url, frames, speech, 3)
            await until(lambda: len(make_pipeline.closed) == len(make_pipeline.made), 10)
            return out
        finally:
            await runner.cleanup()

    out = asyncio.run(scenario())
    assert out["form"][0] == 415 and "application/json" in out["form"][1]
    assert out["bare"] == (400, "bad offer: the offer sends no video (nothing to lip-sync)")
    assert out["vanished"] == (200, 200, 2) and out["busy"] == 503  # both slots were held...
    assert out["reaped_after_s"] < 6  # ...until the connect timeout (1.5 s) ended them
    assert out["no_candidates"][0] == 400 and "ICE candidates" in out["no_candidates"][1]
    assert out["real"].held, out["real"]
    assert len(make_pipeline.closed) == len(make_pipeline.made) == 3


def test_sessions_end_soon_after_the_peer_hangs_up_or_dies(make_pipeline, media, restore_ice):
    """A graceful hang-up (RTCP BYE: the tracks end) and a client killed mid-call (its media stops) each free
    the session within about a second (of the hang-up; of the media timeout), not ICE's ~30 s."""
    from realtime.webrtc.server import Server

    frames, speech = media
    server = Server(make_pipeline, latency_s=0.5, media_timeout_s=1.0)

    async def scenario():
        runner, url = await started(server)
        try:
            result = await call(url, frames, speech, 3)
            graceful = await until(lambda: not server.sessions, 10)
            client = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tools.soak", "client", url, "--seconds", "60", cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                line = await asyncio.wait_for(client.stdout.readline(), 60)
                assert line.strip() == b"connected", line
                await until(lambda: server.sessions and next(iter(server.sessions.values())).last_media > 1, 10)
                assert server.sessions
                client.send_signal(signal.SIGKILL)
                killed = await until(lambda: not server.sessions, 20)
            finally:
                if client.returncode is None:
                    client.kill()
                await client.wait()
            return result, graceful, killed
        finally:
            await runner.cleanup()

    result, graceful, killed = asyncio.run(scenario())
    assert result.held
    assert graceful < 2.0, graceful  # was up to 5.6 s
    assert killed < 1.0 + 2.0, killed  # media timeout + a second or two; was 32-35 s


def test_access_log_redacts_the_token_and_errors_hide_internals(small_checkpoint, media):
    """``realtime -v serve --webrtc``: the access log shows ``token=[redacted]``; a 400 says what, not how."""
    frames, speech = media
    port, secret = free_port(), "s3cr3t-t0ken-value"
    proc = subprocess.Popen([sys.executable, "-m", "realtime.cli", "-v", "serve", "--webrtc", "--port", str(port),
                             "--token", secret, "--checkpoint", str(small_checkpoint)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)

    async def offer_sdp():
        pc = aiortc.RTCPeerConnection()
        pc.addTransceiver("video", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    async def scenario():
        url = f"http://127.0.0.1:{port}/"
        # video whose only codec is one aiortc does not have: it parses, and cannot be negotiated
        sdp = re.sub(r"a=rtpmap:(\d+) \w+/90000", r"a=rtpmap:\1 X-NONE/90000", await offer_sdp())
        async with aiohttp.ClientSession() as http:
            async with http.get(url + f"?token={secret}") as r:
                assert r.status == 200
            async with http.get(url + f"sessions?token={secret}&x=1") as r:
                assert r.status == 200 and (await r.json())["sessions"] == []
            async with http.post(url + "offer", json={"sdp": sdp, "type": "offer", "token": secret}) as r:
                return r.status, await r.json()

    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        status, body = asyncio.run(scenario())
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert status == 400 and body == {"error": "bad offer: its media could not be negotiated"}, body
    log = "\n".join(line for line in out.splitlines() if "aiohttp.access" in line)
    assert "GET /?token=[redacted]" in log and "GET /sessions?token=[redacted]&x=1" in log, out
    printed = out.replace(f"?token={secret} (Ctrl-C stops)", "")  # the address to open is printed once
    assert secret not in printed, out


def test_serve_profiles_one_personal_model_per_session(make_pipeline, media, restore_ice, small_generator, tmp_path):
    """serve --profiles: a session asks for an enrolled model by name and runs on it; an unknown name is refused
    with the names there are; sessions that ask for none run the default model."""
    import argparse
    import gc

    from engine.models.generator import save_generator
    from realtime.options import Profiles
    from realtime.webrtc.server import Server

    for name in ("ana", "ben"):  # two personal models (realtime enroll writes generator files named *.dubcam)
        save_generator(small_generator, tmp_path / f"{name}.dubcam", {"enrollment": {"video": f"{name}.mp4"}})
    args = argparse.Namespace(checkpoint=None, backend="onnxruntime", device="cpu", int8=False, size=None, chunk=5,
                              batching="ready", no_watermark=False, label=None, label_corner="top-left")
    loaded = []

    class Counted(Profiles):
        def pipeline(self, name):
            loaded.append(name)
            return super().pipeline(name)

    profiles = Counted(tmp_path, args)
    assert profiles.names == ["ana", "ben"]
    frames, speech = media
    server = Server(make_pipeline, latency_s=0.5, profiles=profiles)
    seen = []

    async def scenario():
        runner, url = await started(server)
        try:
            unknown = await call(url, frames, speech, 0, profile="carl")
            ben = await call(url, frames, speech, 3, profile="ben",
                             on_connected=lambda: seen.extend(s.stats()["profile"] for s in server.sessions.values()))
            default = await call(url, frames, speech, 2)
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "sessions") as res:
                    listed = await res.json()
            return unknown, ben, default, listed
        finally:
            await runner.cleanup()

    unknown, ben, default, listed = asyncio.run(scenario())
    assert unknown.status == 400 and "carl" in unknown.error and "ana, ben" in unknown.error
    assert ben.status == 200 and ben.frames > 0 and seen == ["ben"] and loaded == ["ben"]
    assert default.status == 200 and default.frames > 0 and len(make_pipeline.made) == 1  # the default model
    assert listed["profiles"] == ["ana", "ben"]
    server = profiles = None  # the profiles' backends go now, not at interpreter exit
    gc.collect()
    with pytest.raises(ValueError, match="no .dubcam"):
        Profiles(ROOT / "configs", args)
    with pytest.raises(ValueError, match="not a folder"):
        Profiles(tmp_path / "ana.dubcam", args)
