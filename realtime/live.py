"""The live driver: a :class:`~realtime.pipeline.Pipeline` behind capture threads, one inference thread and
an output side that shows every frame a fixed latency after its capture (DESIGN.md drop policy).

:class:`LiveRunner` is the session; :func:`run_live` wires live sources
(a camera, a microphone, or files played at real-time speed with
:class:`realtime.clock.Paced`) and sinks (virtual camera, preview, the
virtual microphone reading :class:`realtime.clock.AudioDelay`) to it; the
WebRTC service drives a :class:`LiveRunner` from its own tracks. The file
driver is :mod:`realtime.runner`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.audio import SAMPLE_RATE
from realtime.clock import AudioDelay, MediaClock
from realtime.gauge import GaugeWorker
from realtime.pipeline import OutputFrame, Pipeline
from realtime.runner import RunReport
from realtime.sinks import draw_label

log = logging.getLogger("realtime.live")
WAKE_S = 0.02  # the inference thread wakes at least this often (s): silence is fed on time
UNPULLED_S = 1.0  # a captured frame not pulled this long past its due time is forgotten


def default_latency(pipeline: Pipeline, fps: float = 25.0, compute_s: float = 0.07) -> float:
    """Added latency a live session is scheduled at (s): mel lookahead + chunk filling + ``compute_s``.

    Chunk filling is (k − 1) frame intervals with ``batching="fixed"`` and
    none with ``"ready"`` (the default: a frame runs once its window is in).
    ``compute_s`` covers audio delivery (a 20 ms block plus device
    buffering), the generator call and compositing (70 ms: the bundled
    model's frame with ``ready`` batching takes 30–45 ms on 2 cores, issue
    11's goal is an added latency of at most 200 ms); ``realtime bench``
    measures them and prints the latency this machine needs. When the
    driving audio pauses, :class:`LiveRunner` feeds silence by each
    frame's last call, so silence needs nothing more than speech does.
    """
    filling = (pipeline.config.chunk - 1) / fps if pipeline.config.batching == "fixed" else 0.0
    return pipeline.info.lookahead_s + filling + compute_s


KEEP_FRAMES = 15000
"""Per-frame figures a live session keeps: the last 10 minutes at 25 fps."""


@dataclass
class LiveStats:
    """What a live session did, frame by frame.

    passthrough: frames shown unmodified, by reason: ``no_face``;
    ``dropped`` (never reached the generator: the input queue was full or
    the frame was already past its deadline); ``late`` (generated after its
    deadline); with a sync gauge, ``sync`` (it judged the sync poor) and
    ``small_face``. skipped: frames never shown because the output side was
    slower than the capture. latencies: per shown frame, wall time it left −
    its capture time (s). ready: per generated frame, wall time its
    composite was ready − capture time (s). Both keep the last
    :data:`KEEP_FRAMES` frames only (a session may run for days; the
    counters above cover all of it). max_queue: most frames ever
    waiting for the generator. silence_s: driving audio filled with silence
    because none arrived. sync: the sync gauge's latest reading
    (``realtime.gauge.GaugeReading.as_dict``), or None without a gauge.
    """

    frames_in: int = 0
    frames_out: int = 0
    generated: int = 0
    skipped: int = 0
    passthrough: dict[str, int] = field(default_factory=dict)
    latencies: deque = field(default_factory=lambda: deque(maxlen=KEEP_FRAMES))
    ready: deque = field(default_factory=lambda: deque(maxlen=KEEP_FRAMES))
    max_queue: int = 0
    silence_s: float = 0.0
    first_out: float | None = None
    last_out: float | None = None
    sync: dict | None = None

    def recent_latencies(self, n: int) -> list[float]:
        """The last ``n`` shown frames' latencies (s), oldest first (no copy of the whole window)."""
        return list(itertools.islice(reversed(self.latencies), n))[::-1]


class LiveRunner:
    """The live form of the pipeline: capture pushes, one inference thread computes, the output side pulls on time.

    Every captured frame is shown exactly ``latency_s`` after its capture
    time: the composite when it is ready by then, else the frame itself
    (DESIGN.md drop policy: real time wins over completeness). Frames wait
    for the generator in a queue of at most ``max_queue`` (default 2 chunks);
    when it is full the oldest is dropped (it will pass through), and a
    frame the worker reaches too late to finish in time (:meth:`_in_time`)
    is dropped unspent, so compute that falls behind never makes latency
    grow, and what it computes is mostly in time. When the driving audio
    pauses, the runner feeds silence up to now (the mouth closes, on time):
    as soon as none has arrived for ``audio_timeout_s``, or earlier, at the
    last call of the oldest frame in the pipeline whose audio is missing
    (its deadline less one chunk's compute and one wake-up), so that a pause
    adds no lag beyond the scheduled latency (:meth:`_fill_silence`).

    Producers call :meth:`push_video` / :meth:`push_audio` with timestamps
    on ``clock``; consumers call :meth:`next_output` (blocking) or
    :meth:`poll_output` (for asyncio). The driving audio is kept in
    :attr:`delay` for the audio outputs, which read it ``latency_s`` late.
    """

    def __init__(self, pipeline: Pipeline, clock: MediaClock, latency_s: float | None = None,
                 max_queue: int | None = None, audio_timeout_s: float = 0.1, gauge=None):
        self.pipeline = pipeline
        self.gauge = None if gauge is None else GaugeWorker(gauge)
        self._fallback = 1.0  # share of the generated mouth the output shows (the gauge's fade)
        self.clock = clock
        self.latency_s = default_latency(pipeline) if latency_s is None else latency_s
        self.max_queue = max_queue or 2 * pipeline.config.chunk
        self.audio_timeout_s = audio_timeout_s
        self.delay = AudioDelay()
        self.stats = LiveStats()
        self.chunk_s = 0.0  # running estimate of one generator call + compositing (s)
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._inbox: deque[tuple] = deque()
        self._queued = 0
        self._raw: deque[tuple[float, np.ndarray]] = deque()
        self._done: dict[float, OutputFrame] = {}
        self._dropped: set[float] = set()
        self._shown_t = float("-inf")
        self._audio_end: float | None = None  # pushed into the pipeline up to here (s)
        self._audio_received: float | None = None  # handed to the runner up to here (s)
        self._first_t: float | None = None
        self._pipelined: deque[float] = deque()  # times of the frames in the pipeline, not yet released
        self._ended = self._closed = False
        self._thread = threading.Thread(target=self._work, name="dubcam-inference", daemon=True)

    def start(self) -> "LiveRunner":
        self._thread.start()
        return self

    # -- producers ---------------------------------------------------------
    def push_video(self, frame: np.ndarray, t: float) -> None:
        """A captured frame (H×W×3 uint8 RGB) at ``t`` s; never blocks."""
        with self._cond:
            self.stats.frames_in += 1
            while self._raw and self._raw[0][0] + self.latency_s + UNPULLED_S < t:  # nobody pulls: bounded
                self._forget(self._raw.popleft()[0])
                self.stats.skipped += 1
            self._raw.append((t, frame))
            if self._queued >= self.max_queue:  # drop the oldest waiting frame: it will pass through
                i = next(i for i, item in enumerate(self._inbox) if item[0] == "v")
                self._dropped.add(self._inbox[i][2])
                del self._inbox[i]
                self._queued -= 1
            self._inbox.append(("v", frame, t))
            self._queued += 1
            self.stats.max_queue = max(self.stats.max_queue, self._queued)
            self._cond.notify_all()

    def push_audio(self, samples: np.ndarray, t: float) -> None:
        """Driving audio (float32 16 kHz mono) whose first sample is at ``t`` s; never blocks, never dropped."""
        self.delay.write(samples, t)
        if self.gauge is not None:
            self.gauge.push_audio(samples, t)
        with self._cond:
            end = t + len(samples) / SAMPLE_RATE
            self._audio_received = end if self._audio_received is None else max(self._audio_received, end)
            self._inbox.append(("a", samples, t))
            self._cond.notify_all()

    def end(self) -> None:
        """The sources have ended: the pipeline runs what it holds; the output drains."""
        with self._cond:
            self._inbox.append(("end",))
            self._cond.notify_all()

    # -- the inference thread ----------------------------------------------
    def _work(self) -> None:
        p = self.pipeline
        try:
            while True:
                with self._cond:
                    if not self._inbox and not self._closed:
                        self._cond.wait(WAKE_S)
                    if self._closed:
                        return
                    item = self._inbox.popleft() if self._inbox else None
                    if item is not None and item[0] == "v":
                        self._queued -= 1
                now = self.clock.now()
                if item is None:
                    if self._ended:
                        continue
                    self._fill_silence(now)
                elif item[0] == "v":
                    t = item[2]
                    if not self._in_time(t, now):  # pass it through, spend nothing on it
                        with self._cond:
                            self._dropped.add(t)
                        continue
                    if self._first_t is None:
                        self._first_t = t
                    p.push_video(item[1], t)
                    self._pipelined.append(t)
                    self._fill_silence(now)
                elif item[0] == "a":
                    samples, t = item[1], item[2]
                    if not self._ended:
                        p.push_audio(samples, t)
                        self._audio_end = max(self._audio_end or t, t + len(samples) / SAMPLE_RATE)
                else:
                    self._ended = True
                    p.end_audio()
                    p.end_video()
                chunks, busy = p.stats.chunks, p.stats.stage_s["generator"] + p.stats.stage_s["compositing"]
                released = p.pull()
                if chunks and p.stats.chunks > chunks:  # running estimate of one chunk's compute (not the first)
                    took = (p.stats.stage_s["generator"] + p.stats.stage_s["compositing"] - busy) / (
                        p.stats.chunks - chunks)
                    self.chunk_s = took if self.chunk_s == 0 else 0.7 * self.chunk_s + 0.3 * took
                now = self.clock.now()
                while self._pipelined and released and self._pipelined[0] <= released[-1].t:
                    self._pipelined.popleft()
                if self.gauge is not None:
                    for f in released:
                        self.gauge.push_frame(f.t, f.image, f.box)
                with self._cond:
                    for f in released:
                        if f.t > self._shown_t:
                            self._done[f.t] = f
                            if f.generated:
                                self.stats.ready.append(now - f.t)
        except BaseException as e:  # surfaced by next_output / the caller
            self.error = e
            log.exception("inference thread failed")

    def _in_time(self, t: float, now: float) -> bool:
        """Whether a frame captured at ``t``, dequeued at ``now``, could still be composited by its deadline.

        Even at best (its chunk runs as soon as its audio is there, mel
        lookahead past ``t``, or now if later) it takes one chunk's compute;
        a frame that cannot make it even so is passed through unspent. Each
        such refusal lowers the compute estimate by 5 %, so that an estimate
        that is too high (a slow first call, a passing load) is tried again.
        """
        if max(now, t + self.pipeline.info.lookahead_s) + self.chunk_s <= t + self.latency_s:
            return True
        self.chunk_s *= 0.95
        return False

    def _fill_silence(self, now: float) -> None:
        """The driving audio paused: feed silence up to ``now``, so that frames need not wait for it.

        It has paused when none has arrived for ``audio_timeout_s``, or when
        the oldest frame in the pipeline whose mel window still lacks audio
        is at its last call: ``t + latency_s`` less one chunk's compute
        (:attr:`chunk_s`) and one wake-up of this thread (``WAKE_S``); audio
        later than that could not have made the frame in time anyway. Audio
        that arrives for a time already filled is dropped for the mouth (the
        audio outputs still play it from :attr:`delay`).
        """
        with self._cond:
            received = self._audio_received
        if received is not None and received > (self._audio_end or 0):
            return  # some still waits in the inbox
        start = self._audio_end if self._audio_end is not None else self._first_t
        if start is None:
            return
        quiet = now - (received if received is not None else self._first_t) >= self.audio_timeout_s
        head = self._pipelined[0] if self._pipelined else None
        last_call = head is not None and start < head + self.pipeline.info.lookahead_s and \
            now >= head + self.latency_s - self.chunk_s - WAKE_S
        n = int((now - start) * SAMPLE_RATE)
        if (quiet or last_call) and n >= SAMPLE_RATE // 100:
            self.pipeline.push_audio(np.zeros(n, np.float32), start)
            self._audio_end = start + n / SAMPLE_RATE
            self.stats.silence_s += n / SAMPLE_RATE

    # -- consumers ---------------------------------------------------------
    def poll_output(self) -> tuple[OutputFrame | None, float | None]:
        """``(frame, 0)`` if the oldest captured frame is due; ``(None, seconds until due)``; ``(None, None)`` if none.

        A shown frame is the composite if ready, else the captured frame
        (``generated=False`` with reason ``late`` / ``dropped`` / ``no_face``).
        """
        if self.error is not None:
            raise RuntimeError(f"the inference thread failed: {self.error}") from self.error
        now, L, st = self.clock.now(), self.latency_s, self.stats
        with self._cond:
            if not self._raw:
                return None, None
            if now < self._raw[0][0] + L:
                return None, self._raw[0][0] + L - now
            while len(self._raw) > 1 and self._raw[1][0] + L <= now:  # the output side fell behind
                self._forget(self._raw.popleft()[0])
                st.skipped += 1
            t, frame = self._raw.popleft()
            reason = "dropped" if t in self._dropped else "late"
            out = self._forget(t)
            if out is None:
                out = OutputFrame(frame, t, now - t, now - t, False, reason)
            if self.gauge is not None:
                out = self._apply_gauge(out, frame)
            out.latency_s = now - t
            if self.pipeline.config.label:
                out.image = draw_label(out.image, self.pipeline.config.label, self.pipeline.config.label_corner)
            st.first_out = now if st.first_out is None else st.first_out
            st.last_out = now
            st.frames_out += 1
            st.latencies.append(now - t)
            if out.generated:
                st.generated += 1
            else:
                st.passthrough[out.reason or "passthrough"] = st.passthrough.get(out.reason or "passthrough", 0) + 1
            return out, 0.0

    def _apply_gauge(self, out: OutputFrame, raw: np.ndarray) -> OutputFrame:
        """The sync gauge's fallback (``realtime.gauge``): fade the generated mouth out over the pipeline's
        ``fade_frames`` while the gauge says the sync is poor or the face too small, and back in when it
        recovers; a frame shown without it passes through with the gauge's reason (``sync``, ``small_face``)."""
        r = self.gauge.reading
        self.stats.sync = r.as_dict()
        off = r.state == "passthrough" or (r.state == "no_face" and r.reason != "no face")
        step = 1.0 / max(1, self.pipeline.config.fade_frames)
        self._fallback = max(0.0, self._fallback - step) if off else min(1.0, self._fallback + step)
        if not out.generated or self._fallback >= 1.0:
            return out
        if self._fallback <= 0.0:
            return OutputFrame(raw, out.t, out.latency_s, out.wait_s, False, "sync" if r.state == "passthrough"
                               else "small_face", out.box)
        a = self._fallback
        out.image = (raw.astype(np.float32) * (1 - a) + out.image.astype(np.float32) * a + 0.5).astype(np.uint8)
        return out

    def _forget(self, t: float) -> OutputFrame | None:
        self._shown_t = t
        self._dropped.discard(t)
        return self._done.pop(t, None)

    def next_output(self, timeout: float = 0.1) -> OutputFrame | None:
        """Wait (at most ``timeout`` s) for the next due frame; ``None`` if none became due."""
        deadline = time.monotonic() + timeout
        while True:
            out, wait = self.poll_output()
            if out is not None:
                return out
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, wait if wait is not None else 0.01))

    @property
    def drained(self) -> bool:
        """Ended and every captured frame shown."""
        with self._cond:
            return self._ended and not self._raw and not self._inbox

    def close(self) -> None:
        """Stop the inference thread and the gauge's (the pipeline stays open: its owner closes it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        if self.gauge is not None:
            self.gauge.close()

    def report(self) -> RunReport:
        """The session's figures as a :class:`RunReport` (latency: output − capture, wall clock; fps: output rate)."""
        st, ps = self.stats, self.pipeline.stats
        seconds = 0.0
        if st.frames_out > 1:
            seconds = (st.last_out - st.first_out) * st.frames_out / (st.frames_out - 1)
        lat = np.percentile(st.latencies, [50, 95]) if st.latencies else (0.0, 0.0)
        events = {k: v for k, v in ps.events.items() if k not in ("no_face", "passthrough")}
        if st.skipped:
            events["skipped_output"] = st.skipped
        if st.silence_s:
            events["silence_filled_s"] = round(st.silence_s, 2)
        return RunReport(frames=st.frames_out, seconds=seconds, latency_p50=float(lat[0]),
                         latency_p95=float(lat[1]), generated=st.generated, passthrough=dict(st.passthrough),
                         events=events, stage_s=dict(ps.stage_s), duration=seconds)


def _pump(source, push, stop: threading.Event, done: threading.Event | None = None) -> None:
    """Capture thread: every item of ``source`` to ``push`` until it ends or ``stop`` is set."""
    try:
        for item, t in source:
            if stop.is_set():
                break
            push(item, t)
    except Exception:
        log.exception("source %s failed", type(source).__name__)
    finally:
        if done is not None:
            done.set()


def run_live(pipeline: Pipeline, video, audio=None, *, sinks=(), audio_sinks=(), clock: MediaClock | None = None,
             latency_s: float | None = None, seconds: float | None = None, stop: threading.Event | None = None,
             on_frame=None, gauge=None, on_status=None, status_every_s: float = 1.0) -> tuple[RunReport, LiveRunner]:
    """Run a live session until the video ends, ``seconds`` pass, ``stop`` is set, or Ctrl-C (or SIGTERM,
    which :func:`realtime.cli.main` raises as a ``KeyboardInterrupt``).

    Args:
        video: live video source: iterable of ``(rgb, t)`` on ``clock`` with
            ``close()`` (a camera, or :class:`Paced` around a file).
        audio: live driving-audio source (``(samples, t)``, ``close()``) or None.
        sinks: objects with ``write(rgb, t)`` and ``close()`` (virtual
            camera, preview, file), fed on time from this thread.
        audio_sinks: factories ``f(runner) -> sink`` with ``close()`` (the
            virtual microphone), started once the runner exists.
        on_frame: called with each shown :class:`OutputFrame` (tests, meters).
        gauge: a :class:`realtime.gauge.SyncGauge` (the live sync gauge and
            its fallback), or None.
        on_status: called with the runner every ``status_every_s`` seconds
            (``realtime cam``'s status line).

    Every source, sink and thread is closed on return. Returns the report
    and the runner (its stats).
    """
    clock = clock or MediaClock()
    stop = stop or threading.Event()
    runner = LiveRunner(pipeline, clock, latency_s, gauge=gauge).start()
    video_done = threading.Event()
    threads = [threading.Thread(target=_pump, args=(video, runner.push_video, stop, video_done),
                                name="dubcam-video", daemon=True)]
    if audio is not None:
        threads.append(threading.Thread(target=_pump, args=(audio, runner.push_audio, stop),
                                        name="dubcam-audio", daemon=True))
    opened = []
    t0 = next_status = clock.now()
    try:
        opened = [make(runner) for make in audio_sinks]
        for th in threads:
            th.start()
        ended = False
        while not stop.is_set():
            if not ended and (video_done.is_set() or (seconds is not None and clock.now() - t0 >= seconds)):
                ended = True
                runner.end()
            if ended and runner.drained:
                break
            if on_status is not None and clock.now() >= next_status:
                next_status = clock.now() + status_every_s
                on_status(runner)
            out = runner.next_output(0.05)
            if out is None:
                continue
            for sink in sinks:
                sink.write(out.image, out.t)
            if on_frame is not None:
                on_frame(out)
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        stop.set()
        for src in (video, audio):
            if src is not None:
                src.close()
        for th in threads:
            if th.is_alive():
                th.join(timeout=2)
        runner.close()
        for sink in [*opened, *sinks]:
            try:
                sink.close()
            except Exception:
                log.exception("closing %s failed", type(sink).__name__)
    return runner.report(), runner
