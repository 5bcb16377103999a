"""The WebRTC service: an aiohttp server that answers a browser's offer with a lip-synced call (aiortc).

``GET /`` serves a plain static page (no build step): it sends the
browser's camera and microphone, or a driving-audio file instead of the
microphone, and shows the lip-synced video with the driving audio that
comes back, with the session's measured figures (sent over a data
channel named ``stats`` once a second). ``POST /offer`` takes
``application/json`` ``{"sdp", "type", "token"}`` (no trickle ICE: the
offer carries its candidates) and answers with the server's SDP once its
ICE candidates are gathered. ``GET /sessions`` lists the sessions'
measured figures. Each session has its own
:class:`~realtime.pipeline.Pipeline` and :class:`~realtime.live.LiveRunner`
(the backend, stateless, is shared).

Sessions end, and free their slot at once, when the connection fails or
closes, when every track the peer sends has ended (RTCP BYE, as on a
graceful hang-up), when the peer has not connected ``connect_timeout_s``
after its offer, or when no media has arrived from it for
``media_timeout_s`` (a peer killed mid-call; ICE consent would notice only
after ~30 s). The answer honours the offer's directions (RFC 8829 5.3.1):
lip-synced video and the delayed audio go back only on a transceiver the
peer receives on; a send-only peer's media is read and dropped.

Bound to anything but loopback, the service requires a token (given, or
generated and printed); an offer without it is refused (403). Bound to
loopback, the server offers 127.0.0.1 as an ICE host candidate (aioice
leaves it out), so a host with only ``lo`` connects. At most
``max_sessions`` sessions run at once (503 beyond). The access log redacts
tokens.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import hmac
import itertools
import json
import logging
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from realtime.devices import is_loopback
from realtime.pipeline import Pipeline
from realtime.clock import MediaClock
from realtime.live import LiveRunner
from realtime.webrtc.tracks import AudioOutputTrack, VideoOutputTrack, pump_audio, pump_video

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("realtime.webrtc")
RECENT_FRAMES = 250  # measured latency over the last 10 s at 25 fps


def offer_loopback_candidates() -> None:
    """Make aioice gather 127.0.0.1 as an IPv4 host candidate too (it leaves loopback out; idempotent).

    For a service bound to loopback: its peers are on this machine, and on a
    host (or network namespace) whose only interface is ``lo`` there is no
    other address to connect on. Process-wide: aioice reads host addresses
    from the module function ``aioice.ice.get_host_addresses``.
    """
    import aioice.ice

    gather = aioice.ice.get_host_addresses
    if getattr(gather, "with_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = gather(use_ipv4, use_ipv6)
        return addresses + ["127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses

    with_loopback.with_loopback = True
    aioice.ice.get_host_addresses = with_loopback


MALLOC_ARENAS = 2
"""glibc heap arenas the service keeps (``mallopt(M_ARENA_MAX)``, :func:`limit_malloc_arenas`)."""


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> None:
    """Let glibc's malloc use at most ``n`` heap arenas from now on (``mallopt(M_ARENA_MAX, n)``, the
    ``MALLOC_ARENA_MAX`` setting; skipped where the C library is not glibc).

    Each session starts some thirty threads (decoders, encoders, its inference thread); glibc gives new
    threads arenas of their own, up to 8 per core, and free pages scattered over many arenas are not all
    given back by :func:`release_memory`, so the idle RSS of a long-running service creeps up with the
    sessions it has served. Two arenas hold the same work.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def release_memory() -> None:
    """Free a finished session's memory now: collect its reference cycles (aiortc's objects hold frames in
    them), then give the C heap's free pages back to the OS (glibc ``malloc_trim``; skipped elsewhere).

    A session frees hundreds of MB of frame buffers from many threads; glibc
    keeps them in per-thread arenas, so without this the service's RSS
    climbs with every session for a long while before it levels off.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def redact(text: str) -> str:
    """``text`` (a URL or query) with the value of every ``token=`` parameter replaced by ``[redacted]``."""
    return re.sub(r"(token=)[^&#\s]*", r"\1[redacted]", text)


class AccessLog(AbstractAccessLogger):
    """aiohttp's access log line, ``REMOTE "METHOD PATH?QUERY" STATUS BYTES SECONDS``, with tokens redacted."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s" %d %d %.3fs', request.remote, request.method, redact(request.path_qs),
                         response.status, response.body_length, time)


def check_offer(sdp: str) -> str | None:
    """Why an offer's SDP cannot make a call (one line), or None when it can.

    It must parse, send video (the face to lip-sync) and carry its ICE
    candidates (this service takes no trickled candidates).
    """
    try:
        description = SessionDescription.parse(sdp)
    except Exception:
        return "the offer's SDP does not parse"
    video = [m for m in description.media if m.kind == "video" and m.direction in ("sendrecv", "sendonly", None)]
    if not video:
        return "the offer sends no video (nothing to lip-sync)"
    if not any(m.ice_candidates for m in description.media):
        return "the offer has no ICE candidates (send it once ICE gathering is complete)"
    return None


@dataclass
class Session:
    """One dubbing call: its peer connection(s), pipeline, runner and the tasks that read its tracks.

    ``pc`` receives the face and the driving audio; the outputs go back on
    it (a browser's call) or on ``out`` (a second connection, as when the
    Janus worker publishes into a room what it subscribed to).
    ``last_media``: session-clock time (s) the peer's last frame arrived;
    ``connected_at``: when the connection was first ``connected`` (None before).
    """

    id: int
    pc: RTCPeerConnection
    pipeline: Pipeline
    runner: LiveRunner
    out: RTCPeerConnection | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    has_audio: bool = False
    sends_back: bool = False
    closed: bool = False
    inputs: int = 0
    connected_at: float | None = None
    last_media: float = 0.0
    on_inputs_ended: Callable[[], None] | None = None
    profile: str | None = None  # the personal model (--profiles) it runs, None: the service's default
    _rate: deque = field(default_factory=lambda: deque(maxlen=12))  # (clock, frames_out), one per 0.25 s

    @classmethod
    async def open(cls, id: int, make_pipeline: Callable[[], Pipeline], latency_s: float | None = None,
                   make_gauge: Callable[[], object] | None = None, clock: MediaClock | None = None,
                   profile: str | None = None) -> "Session":
        """A new session on a fresh peer connection (no ICE servers): its pipeline and gauge made in a worker
        thread, its runner started on ``clock`` (None: a new session clock) at ``latency_s`` (None: the
        default). Raises what ``make_pipeline`` and ``make_gauge`` raise."""
        loop = asyncio.get_running_loop()
        pipeline = await loop.run_in_executor(None, make_pipeline)
        gauge = await loop.run_in_executor(None, make_gauge) if make_gauge else None
        runner = LiveRunner(pipeline, clock or MediaClock(), latency_s, gauge=gauge).start()
        return cls(id, RTCPeerConnection(RTCConfiguration(iceServers=[])), pipeline, runner, profile=profile)

    def add_input(self, track, sends_back: bool) -> None:
        """A track the browser sends: read it into the runner, and answer it with the matching output track
        when the peer receives on its transceiver (``sends_back``); else its media is read and dropped."""
        if track.kind == "video":
            self.inputs += 1
            self.tasks.append(asyncio.ensure_future(self._read(pump_video, track, sends_back)))
            if sends_back:
                self.sends_back = True
                (self.out or self.pc).addTrack(VideoOutputTrack(self.runner))
        elif track.kind == "audio":
            drives = not self.has_audio  # the first audio track drives the mouth; others are dropped
            self.has_audio = True
            self.inputs += 1
            self.tasks.append(asyncio.ensure_future(self._read(pump_audio, track, drives)))
            if drives and sends_back:
                (self.out or self.pc).addTrack(AudioOutputTrack(self.runner))

    async def _read(self, pump, track, use: bool) -> None:
        try:
            await pump(track, self.runner if use else None, self._touch)
        finally:
            self.inputs -= 1
            if self.inputs == 0 and not self.closed and self.on_inputs_ended is not None:
                self.on_inputs_ended()

    def _touch(self) -> None:
        self.last_media = self.runner.clock.now()

    def sample(self) -> None:
        """Record the output count now (for the measured frame rate); called a few times a second."""
        self._rate.append((self.runner.clock.now(), self.runner.stats.frames_out))

    async def close(self) -> None:
        """Stop reading, close the connection(s), the runner and the pipeline, and free their memory (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        if self.out is not None:
            await self.out.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.runner.close)
        await loop.run_in_executor(None, self.pipeline.close)
        await loop.run_in_executor(None, release_memory)

    def stats(self) -> dict:
        """Measured figures: frames in / out, generated and passed through (by reason, and the share),
        output fps over the last ~3 s, added latency (output − capture) p50 / p95 over the last 250 frames
        next to the scheduled one (ms), and the sync gauge's latest reading (``sync``; None without one)."""
        st = self.runner.stats
        recent = st.recent_latencies(RECENT_FRAMES)
        p50, p95 = (1000 * np.percentile(recent, [50, 95])).round(1).tolist() if recent else (None, None)
        fps = None
        if len(self._rate) >= 2 and self._rate[-1][0] > self._rate[0][0]:
            (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
            fps = round((n1 - n0) / (t1 - t0), 1)
        passed = sum(st.passthrough.values())
        return {"id": self.id, "profile": self.profile, "state": self.pc.connectionState,
                "sends_back": self.sends_back,
                "frames_in": st.frames_in, "frames_out": st.frames_out, "generated": st.generated,
                "passthrough": dict(st.passthrough),
                "passthrough_share": round(passed / st.frames_out, 3) if st.frames_out else None,
                "fps": fps, "latency_ms": {"scheduled": round(1000 * self.runner.latency_s, 1), "p50": p50,
                                           "p95": p95}, "sync": st.sync}


class Server:
    """The service's state: sessions, the token, and a factory of per-session pipelines.

    Args:
        make_pipeline: returns a new :class:`Pipeline` (called once per session, in a worker thread).
        host: the bind address (decides whether a token is required, and whether 127.0.0.1 is offered as an
            ICE candidate).
        token: the token; None on a non-loopback host generates one (``self.token``).
        max_sessions: sessions allowed at once.
        latency_s: the runners' scheduled latency (None: :func:`realtime.live.default_latency`).
        connect_timeout_s: a session not connected this long after its offer is ended.
        media_timeout_s: a connected session that has received no media this long is ended.
        make_gauge: returns a new :class:`realtime.gauge.SyncGauge` per session (the live sync gauge and
            its fallback; its reading is in :meth:`Session.stats` and on the page), or None.
        profiles: personal models a session may ask for by name (the offer's ``"profile"`` field; see
            :class:`realtime.options.Profiles`), or None: every session runs ``make_pipeline``'s model.

    Raises:
        ValueError: ``max_sessions`` < 1 or a timeout ≤ 0.
    """

    def __init__(self, make_pipeline: Callable[[], Pipeline], host: str = "127.0.0.1", token: str | None = None,
                 max_sessions: int = 4, latency_s: float | None = None, connect_timeout_s: float = 10.0,
                 media_timeout_s: float = 2.0, make_gauge: Callable[[], object] | None = None, profiles=None):
        if max_sessions < 1:
            raise ValueError("--max-sessions must be ≥ 1")
        if connect_timeout_s <= 0 or media_timeout_s <= 0:
            raise ValueError("the connect and media timeouts must be > 0 s")
        self.make_pipeline, self.max_sessions, self.latency_s = make_pipeline, max_sessions, latency_s
        self.make_gauge, self.profiles = make_gauge, profiles
        self.host, self.connect_timeout_s, self.media_timeout_s = host, connect_timeout_s, media_timeout_s
        self.token = token if token is not None or is_loopback(host) else secrets.token_urlsafe(16)
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._starting = 0

    def app(self) -> web.Application:
        """The aiohttp application (routes, shutdown hook); on a loopback host, 127.0.0.1 becomes a candidate."""
        if is_loopback(self.host):
            offer_loopback_candidates()
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
                                  "max_sessions": self.max_sessions,
                                  "profiles": self.profiles.names if self.profiles else []})

    async def offer(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":  # a cross-site form cannot send JSON without CORS
            return web.json_response({"error": "an offer is application/json"}, status=415)
        try:
            params = await request.json()
            offer = RTCSessionDescription(sdp=params["sdp"], type=params["type"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return web.json_response({"error": "expected JSON {sdp, type, token}"}, status=400)
        if not self._authorised(request, params):
            log.warning("offer from %s refused: wrong or missing token", request.remote)
            return web.json_response({"error": "a valid token is required"}, status=403)
        if offer.type != "offer" or not isinstance(offer.sdp, str):
            return web.json_response({"error": "expected an SDP offer"}, status=400)
        why = check_offer(offer.sdp)
        if why is not None:
            return web.json_response({"error": f"bad offer: {why}"}, status=400)
        profile = params.get("profile")
        make = self.make_pipeline
        if profile is not None:
            names = self.profiles.names if self.profiles else []
            if profile not in names:
                return web.json_response({"error": f"no profile {str(profile)[:64]!r}; there are: "
                                                   f"{', '.join(names) or 'none (serve --profiles DIR)'}"}, status=400)
            make = functools.partial(self.profiles.pipeline, profile)
        if len(self.sessions) + self._starting >= self.max_sessions:
            return web.json_response({"error": f"busy: {self.max_sessions} sessions already (--max-sessions)"},
                                     status=503)
        self._starting += 1
        try:
            session = await Session.open(next(self._ids), make, self.latency_s, self.make_gauge, profile=profile)
            self.sessions[session.id] = session
        finally:
            self._starting -= 1
        pc = session.pc
        session.on_inputs_ended = lambda: asyncio.ensure_future(self.end(session, "the peer's tracks ended"))

        @pc.on("track")
        def on_track(track):
            transceiver = next(t for t in pc.getTransceivers() if t.receiver.track is track)
            # the offer's direction, seen from here: we may send where the peer receives
            session.add_input(track, transceiver._offerDirection in ("sendrecv", "sendonly"))

        @pc.on("datachannel")
        def on_datachannel(channel):
            if channel.label == "stats":
                session.tasks.append(asyncio.ensure_future(self._send_stats(session, channel)))

        @pc.on("connectionstatechange")
        async def on_state():
            log.info("session %d: %s", session.id, pc.connectionState)
            if pc.connectionState == "connected" and session.connected_at is None:
                session.connected_at = session.last_media = session.runner.clock.now()
            elif pc.connectionState in ("failed", "closed"):
                await self.end(session, f"connection {pc.connectionState}")

        @pc.on("iceconnectionstatechange")
        async def on_ice():
            if pc.iceConnectionState in ("failed", "closed"):
                await self.end(session, f"ICE {pc.iceConnectionState}")

        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            log.info("session %d: offer refused: %s", session.id, e)
            await self.end(session, "bad offer")
            return web.json_response({"error": "bad offer: its media could not be negotiated"}, status=400)
        session.tasks.append(asyncio.ensure_future(self._watch(session)))
        log.info("session %d started (%d running)", session.id, len(self.sessions))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session.id})

    async def _watch(self, session: Session) -> None:
        """Ends a session that does not connect in time or whose media stops; samples its output rate."""
        clock = session.runner.clock
        while not session.closed:
            await asyncio.sleep(0.25)
            session.sample()
            now = clock.now()
            if session.connected_at is None and now > self.connect_timeout_s:
                asyncio.ensure_future(self.end(session, f"not connected after {self.connect_timeout_s:g} s"))
                return
            if session.connected_at is not None and now - session.last_media > self.media_timeout_s:
                asyncio.ensure_future(self.end(session, f"no media for {self.media_timeout_s:g} s"))
                return

    @staticmethod
    async def _send_stats(session: Session, channel) -> None:
        """The session's :meth:`Session.stats` as JSON on ``channel`` once a second while it is open."""
        while not session.closed and channel.readyState != "closed":
            if channel.readyState == "open":
                channel.send(json.dumps(session.stats()))
            await asyncio.sleep(1.0)

    async def end(self, session: Session, why: str = "ended") -> None:
        """Close a session and free its pipeline; its slot is free at once (idempotent)."""
        if self.sessions.pop(session.id, None) is None:
            return
        stats = session.stats()
        log.info("session %d ending (%s; %d running): %s", session.id, why, len(self.sessions), stats)
        await session.close()

    async def shutdown(self, app=None) -> None:
        await asyncio.gather(*(self.end(s, "shutdown") for s in list(self.sessions.values())))


def serve(server: Server, host: str, port: int) -> None:
    """Run the service until Ctrl-C; prints the address to open (with the token when one is needed)."""
    app = server.app()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    if server.token:
        url += f"?token={server.token}"
    print(f"dubcam WebRTC service on {url} (Ctrl-C stops)", flush=True)
    if server.token and not is_loopback(host):
        print(f"token: {server.token}  (offers without it are refused)", flush=True)
    limit_malloc_arenas()
    try:
        web.run_app(app, host=host, port=port, print=None, handle_signals=True, access_log_class=AccessLog)
    except OSError as e:
        from realtime.devices import DeviceError

        raise DeviceError(f"cannot listen on {host}:{port}: {e}") from e
