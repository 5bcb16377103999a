"""A dubbing worker inside a Janus VideoRoom (an SFU): ``realtime serve --janus URL --room ROOM``.

The worker is an ordinary participant of the room, over Janus's HTTP API
(the long-poll transport: POST a request to the session or handle path, GET
the session path for its events; Janus "RESTful, HTTP API" docs) and the
VideoRoom plugin's messages (Janus 1.x, multistream; ``janus_videoroom.c``).
It joins as a publisher that sends nothing, which brings it the room's
``publishers``, ``unpublished`` and ``leaving`` events, and runs one dubbing
:class:`~realtime.webrtc.server.Session` for each chosen publisher:

- a subscriber handle (``join`` with ``ptype: subscriber`` and ``streams``:
  the publisher's video, and the audio that drives the mouth: its own
  microphone, another publisher's audio, or none when the audio comes from a
  ``tcp://`` PCM source) whose offer the session's ``pc`` answers (``start``);
- a publisher handle that joins as "NAME (dubbed)" and ``publish``es the
  session's outputs from ``out``: the dubbed video and the driving audio,
  delayed by the pipeline's latency (the same tracks as ``serve --webrtc``).

It follows publishers joining, changing their streams and leaving; a
publisher named "… (dubbed)" (this worker's or another's) is never dubbed.
When Janus goes away (the long poll or a keepalive fails, or the session is
gone after a restart) every session is closed and the worker connects again
with a growing delay (0.5 s doubling up to 5 s), joins and publishes anew.
One log line (logger ``realtime.janus``) says each event: joined,
publisher added / left, publishing, dropped, reconnecting, reconnected.

Offers and answers carry their candidates (aiortc does not trickle:
``"trickle": false``). Janus gathers no ICE candidates on the loopback
interface (its ICE code skips ``IFF_LOOPBACK``), so Janus and the worker on
one host meet on one of the host's own addresses (the traffic still stays
inside the host).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from realtime.clock import MediaClock
from realtime.devices import DeviceError
from realtime.webrtc.server import Session
from realtime.webrtc.tracks import AudioOutputTrack

log = logging.getLogger("realtime.janus")
PLUGIN = "janus.plugin.videoroom"
DUBBED = " (dubbed)"
NO_SUCH_SESSION = 458  # Janus API error code: the session is gone (Janus restarted, or the session timed out)


class JanusError(DeviceError):
    """Janus refused a request (``code`` and ``reason`` as Janus sent them), or could not be reached (``code`` None)."""

    def __init__(self, reason: str, code: int | None = None):
        super().__init__(reason if code is None else f"{reason} (Janus error {code})")
        self.reason, self.code = reason, code


def parse_janus_url(url: str) -> str:
    """The base URL of Janus's HTTP API (``http[s]://HOST[:PORT]/PATH``, e.g. ``http://127.0.0.1:8088/janus``),
    without a trailing slash. Raises ValueError for anything else (``ws://``: this worker speaks HTTP)."""
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError:
        raise ValueError(f"--janus {url}: the port is not a number 0-65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"--janus {url}: expected the URL of Janus's HTTP API, http[s]://HOST[:PORT]/janus "
                         "(the HTTP transport; WebSocket URLs are not supported)")
    return url.rstrip("/")


def parse_room(text: str) -> int | str:
    """A VideoRoom room id: an integer, or a string for a Janus with ``string_ids``. Raises ValueError when empty."""
    if not text.strip():
        raise ValueError("--room is empty: give the VideoRoom's id, e.g. --room 1234")
    return int(text) if text.isdigit() else text


def _why(e: BaseException) -> str:
    """One line saying what failed, for a network error (aiohttp's, a timeout) or a JanusError."""
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


class JanusSession:
    """One session on Janus's HTTP transport: requests, plugin handles, keepalives, and the long poll.

    ``create()`` makes the session and starts the long poll (GET on the
    session, up to 10 events at a time) and a keepalive every
    ``keepalive_s``; each event goes to the future of the request whose
    transaction it answers, else to its handle's ``on_event``. ``lost``
    resolves, with the reason, once the long poll or a keepalive fails.
    Requests raise :class:`JanusError` (Janus refused it, or is unreachable).
    """

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None = None,
                 keepalive_s: float = 25.0, timeout_s: float = 10.0):
        self.http, self.url, self.token = http, url, token
        self.keepalive_s, self.timeout_s = keepalive_s, timeout_s
        self.id: int | None = None
        self.handles: dict[int, Handle] = {}
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting: dict[str, asyncio.Future] = {}
        self._tasks: list[asyncio.Task] = []

    async def post(self, path: str, body: dict, transaction: str | None = None) -> dict:
        """POST ``body`` (a Janus API request) to ``url + path``; Janus's reply (``success`` or ``ack``)."""
        body = {**body, "transaction": transaction or secrets.token_hex(8)}
        if self.token:
            body["token"] = self.token
        try:
            async with self.http.post(self.url + path, json=body,
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as res:
                if res.status != 200:
                    raise JanusError(f"{self.url} answered HTTP {res.status} (is it Janus's HTTP API, "
                                     "http://HOST:8088/janus?)")
                reply = await res.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise JanusError(f"cannot reach Janus at {self.url}: {_why(e)}") from e
        if reply.get("janus") == "error":
            raise JanusError(reply["error"].get("reason", "refused"), reply["error"].get("code"))
        return reply

    async def create(self) -> None:
        self.id = (await self.post("", {"janus": "create"}))["data"]["id"]
        self._tasks = [asyncio.ensure_future(self._poll()), asyncio.ensure_future(self._keepalive())]

    async def attach(self) -> "Handle":
        """A new handle on the VideoRoom plugin."""
        reply = await self.post(f"/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        handle = Handle(self, reply["data"]["id"])
        self.handles[handle.id] = handle
        return handle

    def _lose(self, why: str) -> None:
        if not self.lost.done():
            self.lost.set_result(why)

    async def _poll(self) -> None:
        params = {"maxev": "10"}
        if self.token:
            params["token"] = self.token
        try:
            while True:
                params["rid"] = str(time.monotonic_ns())
                async with self.http.get(f"{self.url}/{self.id}", params=params,
                                         timeout=aiohttp.ClientTimeout(total=60)) as res:
                    if res.status != 200:
                        raise JanusError(f"the long poll got HTTP {res.status}")
                    events = await res.json(content_type=None)
                for event in events if isinstance(events, list) else [events]:
                    self._dispatch(event)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._lose(_why(e))

    def _dispatch(self, event: dict) -> None:
        kind = event.get("janus")
        if kind == "error" and "transaction" not in event:
            raise JanusError(event["error"].get("reason", "error"), event["error"].get("code"))
        waiting = self._waiting.get(event.get("transaction"))
        if waiting is not None and kind in ("event", "error"):
            if not waiting.done():
                waiting.set_result(event)
            return
        handle = self.handles.get(event.get("sender"))
        if handle is not None and handle.on_event is not None:
            handle.on_event(event)

    async def _keepalive(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.keepalive_s)
                await self.post(f"/{self.id}", {"janus": "keepalive"})
        except JanusError as e:
            self._lose(str(e))

    async def close(self) -> None:
        """Stop polling; destroy the session on Janus (which hangs up its handles) if Janus is still there."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.id is not None and not self.lost.done():
            try:
                await self.post(f"/{self.id}", {"janus": "destroy"})
            except JanusError:
                pass
        self._lose("closed")


@dataclass(eq=False)
class Handle:
    """A handle on the VideoRoom plugin: :meth:`request` sends a plugin message; ``on_event(event)`` gets the
    events Janus sends it unasked (plugin events without a transaction, ``webrtcup``, ``hangup``, ...)."""

    session: JanusSession
    id: int
    on_event: Callable[[dict], None] | None = None

    async def request(self, body: dict, jsep: RTCSessionDescription | None = None) -> tuple[dict, dict | None]:
        """Send ``body`` (with ``jsep``, sent with ``trickle: false``) and wait for its answer: the plugin's data
        and Janus's jsep (or None). Raises JanusError when the plugin or Janus refuses it, Janus goes away, or
        no answer comes within the session's timeout."""
        session, transaction = self.session, secrets.token_hex(8)
        waiting = asyncio.get_running_loop().create_future()
        session._waiting[transaction] = waiting
        message = {"janus": "message", "body": body}
        if jsep is not None:
            message["jsep"] = {"type": jsep.type, "sdp": jsep.sdp, "trickle": False}
        try:
            reply = await session.post(f"/{session.id}/{self.id}", message, transaction)
            if reply.get("janus") == "ack":
                await asyncio.wait({waiting, session.lost}, timeout=session.timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():
                    raise JanusError(f"lost Janus: {session.lost.result()}" if session.lost.done() else
                                     f"no answer from Janus to {body.get('request')!r} in {session.timeout_s:g} s")
                reply = waiting.result()
        finally:
            session._waiting.pop(transaction, None)
        if reply.get("janus") == "error":
            raise JanusError(reply["error"].get("reason", "refused"), reply["error"].get("code"))
        data = reply.get("plugindata", {}).get("data", {})
        if "error_code" in data:
            raise JanusError(data.get("error", "refused"), data["error_code"])
        return data, reply.get("jsep")

    async def detach(self) -> None:
        """Detach from the plugin (Janus hangs up its connection: a publisher leaves the room). Never raises."""
        self.session.handles.pop(self.id, None)
        if self.session.lost.done():
            return
        try:
            await self.session.post(f"/{self.session.id}/{self.id}", {"janus": "detach"})
        except JanusError:
            pass


@dataclass
class Feed:
    """A publisher of the room: its id, display name and streams (``type``, ``mid``, ... as Janus lists them)."""

    id: int | str
    display: str
    streams: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, publisher: dict) -> "Feed":
        return cls(publisher["id"], publisher.get("display") or str(publisher["id"]), publisher.get("streams", []))

    def mid(self, kind: str) -> str | None:
        """The mid of its first active ``kind`` ("video", "audio") stream, or None."""
        return next((s["mid"] for s in self.streams if s.get("type") == kind and not s.get("disabled")), None)

    def is_named(self, name: str) -> bool:
        """Whether ``name`` (from --publisher / --audio-from) is its display name or its id."""
        return name == self.display or name == str(self.id)


@dataclass(eq=False)
class Dub:
    """One chosen publisher's dubbing: the session, its subscriber and publisher handles, and whose audio drives it."""

    feed: Feed
    audio: Feed | None
    session: Session
    sub: Handle | None = None
    pub: Handle | None = None
    closing: asyncio.Task | None = None


def dub_key(feed: Feed, audio: Feed | None) -> tuple:
    """What a dub is started for: the video (feed id and mid) and the driving audio (feed id and mid, or None)."""
    return feed.id, feed.mid("video"), audio and (audio.id, audio.mid("audio"))


class Worker:
    """The Janus VideoRoom worker (module doc): joins ``room`` at ``url`` and dubs the chosen publishers.

    Args:
        url: Janus's HTTP API (:func:`parse_janus_url`).
        room: the VideoRoom id (:func:`parse_room`).
        make_pipeline: returns a new Pipeline (one per dubbed publisher, called in a worker thread).
        token: Janus's API token (its ``token_auth``), sent with every request; None: none.
        publishers: display names or ids to dub; empty: every publisher that sends video, except those named
            "… (dubbed)" and the ``audio_from`` one.
        audio_from: the audio that drives every dubbed mouth: None, the publisher's own audio; a display name or
            id, that publisher's audio (silence while it is not in the room); or a live audio source (an
            iterable of ``(float32 samples, t)`` on ``clock``, with ``close()``: ``tcp://`` PCM), read in a
            thread and fed to every session.
        latency_s, make_gauge: as :class:`realtime.webrtc.server.Server`'s.
        name: the display name of the worker's own (silent) participant.
        clock: the session clock every dub runs on (a live ``audio_from`` source must stamp on it).
        retry_s: the first and the longest delay between attempts to reach Janus again.

    :meth:`run` raises :class:`JanusError` when the first connection fails (Janus unreachable, the token
    refused, no such room); later failures are retried.
    """

    def __init__(self, url: str, room: int | str, make_pipeline: Callable, *, token: str | None = None,
                 publishers: tuple[str, ...] = (), audio_from=None, latency_s: float | None = None,
                 make_gauge: Callable | None = None, name: str = "dubcam", clock: MediaClock | None = None,
                 retry_s: tuple[float, float] = (0.5, 5.0), keepalive_s: float = 25.0):
        self.url, self.room, self.token, self.name = url, room, token, name
        self.make_pipeline, self.latency_s, self.make_gauge = make_pipeline, latency_s, make_gauge
        self.publishers = tuple(publishers)
        self.audio_name = audio_from if isinstance(audio_from, str) else None
        self.audio_source = None if isinstance(audio_from, str) else audio_from
        self.clock = clock or MediaClock()
        self.retry_s, self.keepalive_s = retry_s, keepalive_s
        self.feeds: dict = {}
        self.dubs: dict = {}  # feed id -> Dub
        self.connections = 0  # times it joined the room
        self.janus: JanusSession | None = None
        self._own: set = set()  # ids of this worker's participants
        self._private_id = None
        self._runners: tuple = ()  # the dubs' runners, for the audio thread
        self._closing: set[asyncio.Task] = set()  # dubs being closed
        self._ids = itertools.count(1)
        self._dirty = asyncio.Event()

    # -- the connection ------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Join, dub, and follow the room until ``stop`` is set; reconnect whenever Janus goes away. On return
        every session is closed, the worker has left the room, and the audio thread has ended."""
        audio = None
        if self.audio_source is not None:
            audio = threading.Thread(target=self._feed_audio, name="dubcam-janus-audio", daemon=True)
            audio.start()
        try:
            async with aiohttp.ClientSession() as http:
                await self._serve(http, stop)
        finally:
            if audio is not None:
                self.audio_source.close()
                audio.join(timeout=2)

    async def _serve(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        delay = self.retry_s[0]
        while not stop.is_set():
            try:
                await self._connect(http)
            except JanusError as e:
                if self.janus is not None:
                    await self.janus.close()
                if not self.connections:
                    raise
                log.info("reconnecting to %s in %.1f s: %s", self.url, delay, e)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
                delay = min(2 * delay, self.retry_s[1])
                continue
            self.connections += 1
            delay = self.retry_s[0]
            log.info("%s room %s at %s as %r (%d publishers there)", "joined" if self.connections == 1 else
                     "reconnected: joined", self.room, self.url, self.name, len(self.feeds))
            follow = asyncio.ensure_future(self._follow())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopped, self.janus.lost}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            why = self.janus.lost.result() if self.janus.lost.done() else "stopping"
            if why != "stopping":
                log.info("reconnecting to %s: lost Janus (%s)", self.url, why)
            await asyncio.gather(*(self._drop(dub, why) for dub in list(self.dubs.values())), *self._closing)
            await self.janus.close()
            self.feeds = {}
        log.info("stopped: left room %s", self.room)

    async def _connect(self, http: aiohttp.ClientSession) -> None:
        """A new Janus session; check the room exists; join it as this worker's silent participant."""
        self.janus = JanusSession(http, self.url, self.token, self.keepalive_s)
        await self.janus.create()
        try:
            control = await self.janus.attach()
        except JanusError as e:
            raise JanusError(f"Janus at {self.url} has no VideoRoom plugin ({e.reason})", e.code) from e
        exists, _ = await control.request({"request": "exists", "room": self.room})
        if not exists.get("exists"):
            raise JanusError(f"Janus at {self.url} has no room {self.room!r} (create it in "
                             "janus.plugin.videoroom.jcfg, or with the plugin's \"create\" request)")
        control.on_event = self._on_room_event
        joined, _ = await control.request({"request": "join", "ptype": "publisher", "room": self.room,
                                           "display": self.name})
        self._own = {joined["id"]}
        self._private_id = joined.get("private_id")
        self.feeds = {}
        self._add_feeds(joined.get("publishers", []))

    # -- the room's events ---------------------------------------------------------------------------------
    def _on_room_event(self, event: dict) -> None:
        data = event.get("plugindata", {}).get("data", {})
        if data.get("videoroom") == "destroyed":
            self.janus._lose(f"room {self.room} was destroyed")
            return
        self._add_feeds(data.get("publishers", []))
        for key in ("unpublished", "leaving"):
            gone = self.feeds.pop(data.get(key), None)
            if gone is not None:
                log.info("publisher left: %r (id %s)", gone.display, gone.id)
                self._dirty.set()

    def _add_feeds(self, publishers: list[dict]) -> None:
        for publisher in publishers:
            feed = Feed.of(publisher)
            if feed.id in self._own:
                continue
            if self.feeds.get(feed.id) != feed:
                log.info("publisher %s: %r (id %s; %s)", "updated" if feed.id in self.feeds else "added",
                         feed.display, feed.id, ", ".join(s.get("type", "?") for s in feed.streams) or "no streams")
            self.feeds[feed.id] = feed
            self._dirty.set()

    def wanted(self) -> dict:
        """feed id → (video Feed, driving-audio Feed or None) for every publisher this worker should dub now."""
        feeds = [f for f in self.feeds.values() if not f.display.endswith(DUBBED)]
        voice = None
        if self.audio_name is not None:
            voice = next((f for f in feeds if f.is_named(self.audio_name) and f.mid("audio")), None)
        out = {}
        for f in feeds:
            chosen = any(f.is_named(p) for p in self.publishers) if self.publishers else \
                self.audio_name is None or not f.is_named(self.audio_name)
            if chosen and f.mid("video"):
                audio = voice if self.audio_name is not None else None
                if self.audio_name is None and self.audio_source is None and f.mid("audio"):
                    audio = f
                out[f.id] = (f, audio)
        return out

    async def _follow(self) -> None:
        """Start and stop dubs whenever the room changes (one change at a time, in order)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            wanted = self.wanted()
            for feed_id, dub in list(self.dubs.items()):
                want = wanted.get(feed_id)
                if want is None or dub_key(*want) != dub_key(dub.feed, dub.audio):
                    await self._drop(dub, "left the room" if feed_id not in self.feeds else "its streams changed")
            for feed_id, (feed, audio) in wanted.items():
                if feed_id not in self.dubs:
                    try:
                        await self._start(feed, audio)
                    except Exception as e:
                        if self.janus.lost.done():
                            return
                        log.warning("could not dub %r (id %s): %s; trying again in 2 s", feed.display, feed.id,
                                    _why(e), exc_info=not isinstance(e, JanusError))
                        asyncio.get_running_loop().call_later(2.0, self._dirty.set)

    # -- one publisher's dub -------------------------------------------------------------------------------
    async def _start(self, feed: Feed, audio: Feed | None) -> None:
        session = await Session.open(next(self._ids), self.make_pipeline, self.latency_s, self.make_gauge,
                                     clock=self.clock)
        session.out = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        dub = Dub(feed, audio, session)
        self.dubs[feed.id] = dub
        self._runners = tuple(d.session.runner for d in self.dubs.values())
        try:
            streams = [{"feed": feed.id, "mid": feed.mid("video")}]
            if audio is not None:
                streams.append({"feed": audio.id, "mid": audio.mid("audio")})
            dub.sub = await self.janus.attach()
            dub.sub.on_event = lambda event: self._on_dub_event(dub, event)
            body = {"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams}
            if self._private_id is not None:
                body["private_id"] = self._private_id
            _, offer = await dub.sub.request(body)
            pc = session.pc
            pc.on("track", lambda track: session.add_input(track, sends_back=True))
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())
            await dub.sub.request({"request": "start"}, pc.localDescription)
            out = session.out
            if not any(s.track is not None and s.track.kind == "audio" for s in out.getSenders()):
                out.addTrack(AudioOutputTrack(session.runner))  # tcp:// audio, or none yet: delayed all the same
            dub.pub = await self.janus.attach()
            dub.pub.on_event = lambda event: self._on_dub_event(dub, event)
            joined, _ = await dub.pub.request({"request": "join", "ptype": "publisher", "room": self.room,
                                               "display": feed.display + DUBBED})
            self._own.add(joined["id"])
            await out.setLocalDescription(await out.createOffer())
            _, answer = await dub.pub.request({"request": "publish"}, out.localDescription)
            await out.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        except BaseException:
            await self._drop(dub, "could not start")
            raise
        for pc in (session.pc, out):
            pc.on("connectionstatechange", lambda pc=pc: self._on_state(dub, pc))
        log.info("publishing %r (id %s): %s's video, driven by %s, latency %.0f ms", feed.display + DUBBED,
                 joined["id"], feed.display, self._audio_name(audio), 1000 * session.runner.latency_s)

    def _audio_name(self, audio: Feed | None) -> str:
        if audio is not None:
            return f"{audio.display}'s audio"
        return "the network audio" if self.audio_source is not None else (
            f"silence ({self.audio_name!r} is not in the room)" if self.audio_name else "silence (no audio)")

    def _on_state(self, dub: Dub, pc: RTCPeerConnection) -> None:
        if pc.connectionState == "failed" and self.dubs.get(dub.feed.id) is dub:
            asyncio.ensure_future(self._drop(dub, "its connection failed")).add_done_callback(
                lambda _: self._dirty.set())

    def _on_dub_event(self, dub: Dub, event: dict) -> None:
        if event.get("janus") == "hangup" and self.dubs.get(dub.feed.id) is dub:
            asyncio.ensure_future(self._drop(dub, f"Janus hung up ({event.get('reason')})")).add_done_callback(
                lambda _: self._dirty.set())

    async def _drop(self, dub: Dub, why: str) -> None:
        """Leave the room with the dub's handles and close its session. Idempotent; a caller cancelled meanwhile
        does not stop it (the closing is its own task, which :meth:`run` waits for before it returns)."""
        if dub.closing is None:
            if self.dubs.get(dub.feed.id) is dub:
                del self.dubs[dub.feed.id]
                self._runners = tuple(d.session.runner for d in self.dubs.values())
            dub.closing = asyncio.ensure_future(self._close(dub, why))
            self._closing.add(dub.closing)
            dub.closing.add_done_callback(self._closing.discard)
        await asyncio.shield(dub.closing)

    async def _close(self, dub: Dub, why: str) -> None:
        for handle in (dub.pub, dub.sub):
            if handle is not None:
                await handle.detach()
        stats = dub.session.stats()
        await dub.session.close()
        log.info("dropped %r (%s): %d frames out, %d dubbed, latency p95 %s ms", dub.feed.display + DUBBED, why,
                 stats["frames_out"], stats["generated"], stats["latency_ms"]["p95"])

    def _feed_audio(self) -> None:
        """The audio thread: every block of the live ``audio_from`` source to every dub's runner."""
        try:
            for samples, t in self.audio_source:
                for runner in self._runners:
                    runner.push_audio(samples, t)
        except Exception:
            log.exception("the driving audio source failed")
