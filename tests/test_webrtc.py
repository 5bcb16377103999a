"""The WebRTC service with aiortc clients: the token check off loopback, the session limit, and teardown.

Server and clients run in this process over loopback. aioice does not
offer 127.0.0.1 as a host candidate, so it is patched to (the only
address a test may use); everything else is the real stack (ICE, DTLS,
SRTP, VP8, Opus).
"""

import asyncio
import fractions
import time

import numpy as np
import pytest

from conftest import data_file

aiortc = pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'dubcam[live]')")
aiohttp = pytest.importorskip("aiohttp")


@pytest.fixture
def loopback_ice(monkeypatch):
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class ClipTrack(aiortc.VideoStreamTrack):
    """The frames of a real clip, looped, at 25 fps in real time."""

    def __init__(self, frames):
        super().__init__()
        self.frames, self.n, self.start = frames, 0, None

    async def recv(self):
        import av

        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.n / 25 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = av.VideoFrame.from_ndarray(self.frames[self.n % len(self.frames)], format="rgb24")
        frame.pts, frame.time_base = self.n * 3600, fractions.Fraction(1, 90000)
        self.n += 1
        return frame


class SpeechTrack(aiortc.mediastreams.AudioStreamTrack):
    """A real speech recording, looped, in 20 ms frames in real time."""

    def __init__(self, samples):
        super().__init__()
        self.pcm, self.n, self.start = (samples * 32767).astype(np.int16), 0, None

    async def recv(self):
        import av

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


async def call(url, token, frames, speech, seconds):
    """One client: send the clip and the speech, return (HTTP status, video frames received in ``seconds``)."""
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    received = []

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                try:
                    received.append((await track.recv()).to_ndarray(format="rgb24"))
                except aiortc.mediastreams.MediaStreamError:
                    return
        if track.kind == "video":
            asyncio.ensure_future(read())

    pc.addTrack(ClipTrack(frames))
    pc.addTrack(SpeechTrack(speech))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}
        if token is not None:
            body["token"] = token
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "offer", json=body) as res:
                answer = await res.json()
                if res.status != 200:
                    return res.status, answer.get("error", "")
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(**{k: answer[k] for k in ("sdp", "type")}))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return 200, received
    finally:
        await pc.close()


def test_token_off_loopback_and_three_concurrent_sessions(loopback_ice, small_generator, grid_frames, monkeypatch):
    from engine import backends
    from engine.audio import load_audio
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.webrtc.server import Server, Session

    final = []
    close = Session.close

    async def close_and_keep_stats(self):
        final.append(self.stats())
        await close(self)

    monkeypatch.setattr(Session, "close", close_and_keep_stats)

    frames, _ = grid_frames
    speech = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    backend = backends.load(small_generator, "onnxruntime")
    made, closed = [], []

    def make_pipeline():
        pipeline = Pipeline(backend, PipelineConfig(chunk=5))
        close = pipeline.close
        pipeline.close = lambda: (closed.append(pipeline), close())
        made.append(pipeline)
        return pipeline

    server = Server(make_pipeline, host="0.0.0.0", max_sessions=3, latency_s=0.5)
    assert server.token  # not loopback: a token was generated

    async def scenario():
        runner = aiohttp.web.AppRunner(server.app())
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "0.0.0.0", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as res:
                    assert res.status == 200 and "RTCPeerConnection" in await res.text()
            refused = [await call(url, token, frames, speech, 0) for token in (None, "wrong")]
            assert not server.sessions
            results = await asyncio.gather(*(call(url, server.token, frames, speech, 8) for _ in range(3)),
                                           call_later(2.0, call(url, server.token, frames, speech, 0)))
            for _ in range(150):  # every session is torn down once its client leaves
                if not server.sessions and len(closed) == 3:
                    break
                await asyncio.sleep(0.1)
            return refused, results, len(server.sessions)
        finally:
            await runner.cleanup()

    async def call_later(delay, coro):
        await asyncio.sleep(delay)
        return await coro

    refused, results, left = asyncio.run(scenario())
    assert [status for status, _ in refused] == [403, 403]
    *sessions, fourth = results
    assert fourth[0] == 503 and "max-sessions" in fourth[1]
    print(final)
    for status, received in sessions:
        assert status == 200 and len(received) >= 10, len(received)  # each client received video
        assert received[-1].shape == frames[0].shape
    assert len(final) == 3 and all(s["generated"] > 0 for s in final)  # lip-synced by its own pipeline
    assert left == 0 and len(made) == 3 and len(closed) == 3  # every session freed its pipeline
