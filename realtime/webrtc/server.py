"""The WebRTC service: an aiohttp server that answers a browser's offer with a lip-synced call (aiortc).

``GET /`` serves a plain static page (no build step): it sends the
browser's camera and microphone, or a driving-audio file instead of the
microphone, and shows the lip-synced video with the driving audio that
comes back. ``POST /offer`` takes ``{"sdp", "type", "token"}`` and answers
with the server's SDP once its ICE candidates are gathered. Each session
has its own :class:`~realtime.pipeline.Pipeline` and
:class:`~realtime.runner.LiveRunner` (the backend, stateless, is shared);
a session whose connection fails or closes frees everything.

Bound to anything but loopback, the service requires a token (given, or
generated and printed); an offer without it is refused (403). At most
``max_sessions`` sessions run at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from realtime.pipeline import Pipeline
from realtime.runner import LiveRunner, MediaClock
from realtime.webrtc.tracks import AudioOutputTrack, VideoOutputTrack, pump_audio, pump_video

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("realtime.webrtc")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Session:
    """One browser's call: its peer connection, pipeline, runner and the tasks that read its tracks."""

    id: int
    pc: RTCPeerConnection
    pipeline: Pipeline
    runner: LiveRunner
    tasks: list[asyncio.Task] = field(default_factory=list)
    has_audio: bool = False
    closed: bool = False

    def add_input(self, track) -> None:
        """A track the browser sends: read it into the runner and answer it with the matching output track."""
        if track.kind == "video":
            self.tasks.append(asyncio.ensure_future(pump_video(track, self.runner)))
            self.pc.addTrack(VideoOutputTrack(self.runner))
        elif track.kind == "audio" and not self.has_audio:  # the first audio track drives the mouth
            self.has_audio = True
            self.tasks.append(asyncio.ensure_future(pump_audio(track, self.runner)))
            self.pc.addTrack(AudioOutputTrack(self.runner))

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.runner.close)
        await loop.run_in_executor(None, self.pipeline.close)

    def stats(self) -> dict:
        st = self.runner.stats
        return {"id": self.id, "state": self.pc.connectionState, "frames_in": st.frames_in,
                "frames_out": st.frames_out, "generated": st.generated, "passthrough": dict(st.passthrough),
                "latency_s": self.runner.latency_s}


class Server:
    """The service's state: sessions, the token, and a factory of per-session pipelines.

    Args:
        make_pipeline: returns a new :class:`Pipeline` (called once per session, in a worker thread).
        host: the bind address (decides whether a token is required).
        token: the token; None on a non-loopback host generates one (``self.token``).
        max_sessions: sessions allowed at once.
        latency_s: the runners' scheduled latency (None: :func:`realtime.runner.default_latency`).
    """

    def __init__(self, make_pipeline: Callable[[], Pipeline], host: str = "127.0.0.1", token: str | None = None,
                 max_sessions: int = 4, latency_s: float | None = None):
        if max_sessions < 1:
            raise ValueError("--max-sessions must be ≥ 1")
        self.make_pipeline, self.max_sessions, self.latency_s = make_pipeline, max_sessions, latency_s
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(16)
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._starting = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/sessions", self.list_sessions)
        app.on_shutdown.append(self.shutdown)
        return app

    async def index(self, request: web.Request) -> web.Response:
        return web.FileResponse(STATIC / "index.html")

    def _authorised(self, request: web.Request, params: dict) -> bool:
        if self.token is None:
            return True
        given = params.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode())

    async def list_sessions(self, request: web.Request) -> web.Response:
        if not self._authorised(request, dict(request.query)):
            return web.json_response({"error": "a valid token is required"}, status=403)
        return web.json_response({"sessions": [s.stats() for s in self.sessions.values()],
                                  "max_sessions": self.max_sessions})

    async def offer(self, request: web.Request) -> web.Response:
        try:
            params = await request.json()
            offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response({"error": "expected JSON {sdp, type, token}"}, status=400)
        if not self._authorised(request, params):
            log.warning("offer from %s refused: wrong or missing token", request.remote)
            return web.json_response({"error": "a valid token is required"}, status=403)
        if len(self.sessions) + self._starting >= self.max_sessions:
            return web.json_response({"error": f"busy: {self.max_sessions} sessions already (--max-sessions)"},
                                     status=503)
        self._starting += 1
        try:
            loop = asyncio.get_running_loop()
            pipeline = await loop.run_in_executor(None, self.make_pipeline)
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            session = Session(next(self._ids), pc, pipeline,
                              LiveRunner(pipeline, MediaClock(), self.latency_s).start())
            self.sessions[session.id] = session
        finally:
            self._starting -= 1

        @pc.on("track")
        def on_track(track):
            session.add_input(track)

        @pc.on("connectionstatechange")
        async def on_state():
            log.info("session %d: %s", session.id, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.end(session)

        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await self.end(session)
            return web.json_response({"error": f"bad offer: {e}"}, status=400)
        log.info("session %d started (%d running)", session.id, len(self.sessions))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session.id})

    async def end(self, session: Session) -> None:
        """Close a session and free its pipeline."""
        self.sessions.pop(session.id, None)
        stats = session.stats()
        await session.close()
        log.info("session %d ended (%d running): %s", session.id, len(self.sessions), stats)

    async def shutdown(self, app=None) -> None:
        await asyncio.gather(*(self.end(s) for s in list(self.sessions.values())))


def serve(server: Server, host: str, port: int) -> None:
    """Run the service until Ctrl-C; prints the address to open (with the token when one is needed)."""
    app = server.app()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if server.token:
        url += f"?token={server.token}"
    print(f"dubcam WebRTC service on {url} (Ctrl-C stops)", flush=True)
    if server.token and not is_loopback(host):
        print(f"token: {server.token}  (offers without it are refused)", flush=True)
    try:
        web.run_app(app, host=host, port=port, print=None, handle_signals=True)
    except OSError as e:
        from realtime.devices import DeviceError

        raise DeviceError(f"cannot listen on {host}:{port}: {e}") from e
