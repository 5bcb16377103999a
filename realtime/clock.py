"""The one home of time in the live product (DESIGN.md "Layout").

* :class:`MediaClock`: the session clock, seconds since the session began;
  every live timestamp (capture, audio blocks, deadlines) is on it.
* :class:`Paced`: a file source delivered at real-time speed on that clock.
* :class:`StreamClock` and :class:`DeviceClock`: timestamps for audio blocks
  of a network stream and of a device stream (PortAudio callbacks).
* :class:`AudioDelay`: the driving audio stored by timestamp and read back
  ``latency`` later by the audio outputs (virtual microphone, WebRTC).

Sources that carry their own media timestamps (PyAV frames, aiortc frames)
keep them; the classes here stamp what has none.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from engine.audio import SAMPLE_RATE

STRETCH = 4  # AudioDelay joins blocks that start this many samples or fewer from the last one's end


class MediaClock:
    """The session clock: seconds since it was made (``time.monotonic``); every live timestamp is on it."""

    def __init__(self):
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0


class AudioDelay:
    """The driving audio stored by timestamp and read back later: the delay line of the audio outputs.

    ``write(samples, t)``: ``[n]`` float32 16 kHz mono whose first sample
    is at ``t`` seconds (session clock). ``read(t, n)``: ``[n]`` float32
    from ``t`` on; silence where nothing was written. A block that starts
    within ``STRETCH`` samples of where the last one ended (the stamps of a
    slewing device clock, :class:`DeviceClock`) is
    resampled to join it. Bounded whether or not anything reads it: keeps
    the ``keep_s`` seconds before the newest sample written (``held_s``: how
    much it holds now). Thread-safe.
    """

    def __init__(self, keep_s: float = 5.0):
        self._chunks: deque[tuple[int, np.ndarray]] = deque()
        self._keep = int(keep_s * SAMPLE_RATE)
        self._newest = 0  # sample index just past the newest sample written
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray, t: float) -> None:
        samples = np.asarray(samples, np.float32).reshape(-1).copy()
        start = int(round(t * SAMPLE_RATE))
        with self._lock:
            step = start - self._chunks[-1][0] - len(self._chunks[-1][1]) if self._chunks else 0
            if step and abs(step) <= STRETCH and len(samples) > 2 * STRETCH:
                # a slewing device clock: resample this block to join the last one, no click, no gap
                start -= step
                samples = np.interp(np.linspace(0, len(samples) - 1, len(samples) + step),
                                    np.arange(len(samples)), samples).astype(np.float32)
            self._chunks.append((start, samples))
            self._newest = max(self._newest, start + len(samples))
            while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) < self._newest - self._keep:
                self._chunks.popleft()

    @property
    def held_s(self) -> float:
        """Seconds of audio the delay line holds now."""
        with self._lock:
            return sum(len(a) for _, a in self._chunks) / SAMPLE_RATE

    def read(self, t: float, n: int) -> np.ndarray:
        start = int(round(t * SAMPLE_RATE))
        out = np.zeros(n, np.float32)
        with self._lock:
            for s, a in self._chunks:
                lo, hi = max(s, start), min(s + len(a), start + n)
                if hi > lo:
                    out[lo - start: hi - start] = a[lo - s: hi - s]
        return out


class Paced:
    """A timestamped source delivered at real-time speed: item ``(x, t)`` leaves at ``clock.now() ≥ start + t``.

    Yields ``(x, start + t)`` (session time). ``start`` defaults to the
    clock's time at the first item. ``close()`` (from any thread) ends it.
    """

    def __init__(self, source, clock: MediaClock, start: float | None = None):
        self.source, self.clock, self.start = source, clock, start
        self._stop = threading.Event()

    def __iter__(self):
        for x, t in self.source:
            if self.start is None:
                self.start = self.clock.now()
            while (wait := self.start + t - self.clock.now()) > 0:  # in steps: the clock need not run at 1 s/s
                if self._stop.wait(min(wait, 0.05)):
                    return
            if self._stop.is_set():
                return
            yield x, self.start + t

    def close(self) -> None:
        self._stop.set()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


class StreamClock:
    """Timestamps for a stream of audio blocks that arrive in real time.

    ``stamp(n, t_first)`` → the time of the block's first sample. It
    continues by sample count while the stream keeps pace (no jitter), and
    re-anchors to the measured ``t_first`` when the two differ by more than
    ``tolerance_s`` (a gap; or drift, unless ``forward_only``: a network
    sender that runs ahead keeps its sample-count times and is throttled by
    its reader instead, so no audio overlaps).
    """

    def __init__(self, tolerance_s: float = 0.05, forward_only: bool = False):
        self.tolerance_s, self.forward_only = tolerance_s, forward_only
        self.next: float | None = None

    def stamp(self, n: int, t_first: float) -> float:
        if self.next is None or t_first - self.next > self.tolerance_s or (
                not self.forward_only and self.next - t_first > self.tolerance_s):
            self.next = t_first
        t = self.next
        self.next += n / SAMPLE_RATE
        return t


class DeviceClock:
    """Times of the blocks of an audio device stream (a microphone's or an output's), from its callbacks.

    ``stamp(n, t_seen, lost=False)`` → the time of the block's first sample.
    ``t_seen`` is that time as measured in the callback (input: when it
    reached the device; output: when it will leave it, if the callback is on
    time). A callback that runs late (a loaded machine, callbacks in a
    burst) measures a later time, never an earlier one, so the stamp is the
    sample count from an anchor that is the lower envelope of
    ``t_seen − count / 16 kHz``: it moves earlier at once when a block
    measures earlier, and later only when every block of the last
    ``window`` measured later, by at most ``leak`` seconds per second of
    audio (a device clock that runs slow is followed without a jump). It
    re-anchors (``resets``) when the device reports an overflow /
    underflow (``lost``), when the last ``recent`` blocks all measure over
    ``shift_s`` later (samples were lost unreported, or the first blocks of
    the stream measured early: PortAudio's ALSA → PulseAudio capture reports
    a start-up latency some 90 ms too large on a loaded machine, which the
    lower envelope would otherwise keep for many seconds), or on a jump over
    ``reset_s``. Stamps of consecutive blocks so differ from the count by
    at most ``leak`` (or a move earlier): :class:`AudioDelay`
    spreads such small steps over the block. :meth:`place` does the same
    for items that carry their own timestamps (a WebRTC peer's frames).
    """

    def __init__(self, window: int = 100, leak: float = 0.005, recent: int = 25, shift_s: float = 0.03,
                 reset_s: float = 0.5):
        self.window, self.leak, self.recent, self.shift_s, self.reset_s = window, leak, recent, shift_s, reset_s
        self._offsets: deque[float] = deque(maxlen=window)
        self._anchor: float | None = None
        self._count = 0
        self._last: float | None = None  # the last position placed (s)
        self.resets = 0

    def stamp(self, n: int, t_seen: float, lost: bool = False) -> float:
        t = self.place(self._count / SAMPLE_RATE, t_seen, lost)
        self._count += n
        return t

    def place(self, position_s: float, t_seen: float, lost: bool = False) -> float:
        """The session time of the media at ``position_s`` on the stream's own timeline, seen at ``t_seen``.

        What :meth:`stamp` does by sample count, for a stream whose items
        carry their own timestamps (aiortc's and PyAV's frames: ``pts ×
        time_base``): the anchor is the lower envelope of ``t_seen −
        position_s``, so network or scheduling jitter is taken out and the
        stream keeps its own spacing. A position that goes back, or jumps by
        more than ``reset_s`` (a new stream), re-anchors.
        """
        offset = t_seen - position_s
        recent = list(self._offsets)[-self.recent:] + [offset]
        backwards = self._last is not None and position_s < self._last
        if self._anchor is None or lost or backwards or abs(offset - self._anchor) > self.reset_s or (
                len(recent) > self.recent and min(recent) - self._anchor > self.shift_s):
            self.resets += self._anchor is not None
            self._anchor, self._last = offset, None
            self._offsets.clear()
        self._offsets.append(offset)
        floor = min(self._offsets)
        step = 0.0 if self._last is None else position_s - self._last
        self._anchor = floor if floor < self._anchor else min(floor, self._anchor + self.leak * step)
        self._last = position_s
        return self._anchor + position_s
