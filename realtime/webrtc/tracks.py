"""The tracks of one WebRTC session, in the shape of aiortc's media contract (``async recv()``).

In: :func:`pump_video` and :func:`pump_audio` read the browser's camera and
driving-audio tracks into a :class:`~realtime.live.LiveRunner`, each item
at its own pts put on the session clock (the lower envelope of arrival −
pts, :meth:`~realtime.clock.DeviceClock.place`); audio resampled to 16 kHz
mono.

Out: :class:`VideoOutputTrack` pulls the lip-synced frames from the runner,
each ``latency_s`` after its capture; :class:`AudioOutputTrack` plays the
driving audio from the runner's delay line with the same delay, so that the
browser receives lips and voice together.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction
from typing import Callable

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from engine.audio import SAMPLE_RATE
from realtime.live import LiveRunner
from realtime.clock import DeviceClock

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
log = logging.getLogger("realtime.webrtc")


async def pump_video(track: MediaStreamTrack, runner: LiveRunner | None, touch: Callable[[], None]) -> None:
    """Every frame of ``track`` (any size) into ``runner`` as RGB, until the track ends.

    A frame keeps its own timing: its pts (the sender's capture clock, RTP
    time) is put on the session clock by :meth:`DeviceClock.place`, the
    lower envelope of arrival − pts, so that network jitter does not move
    the frames; a frame without pts is stamped on arrival. ``touch()`` is
    called for each frame; with ``runner`` None the frames are only read (so
    that aiortc's receive queue does not grow) and dropped.
    """
    timeline, last = DeviceClock(), float("-inf")
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        touch()
        if runner is None:
            continue
        now = runner.clock.now()
        pts = pts_seconds(frame)
        t = now if pts is None else timeline.place(pts, now)
        t = max(t, last + 1e-3)
        last = t
        runner.push_video(frame.to_ndarray(format="rgb24"), t)


async def pump_audio(track: MediaStreamTrack, runner: LiveRunner | None, touch: Callable[[], None]) -> None:
    """The driving audio of ``track`` into ``runner`` as 16 kHz mono float32 until the track ends.

    Timed by its own pts as :func:`pump_video`'s frames (by sample count
    where a frame has none); ``touch()`` and ``runner`` None as there.
    """
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    timeline = DeviceClock()
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        touch()
        if runner is None:
            continue
        for f in resampler.resample(frame):
            samples = f.to_ndarray().reshape(-1).astype(np.float32)
            seen = runner.clock.now() - len(samples) / SAMPLE_RATE
            pts = pts_seconds(f)
            t = timeline.stamp(len(samples), seen) if pts is None else timeline.place(pts, seen)
            runner.push_audio(samples, t)


def pts_seconds(frame) -> float | None:
    """A PyAV / aiortc frame's presentation time, s (``pts × time_base``), or None when it has none."""
    return None if frame.pts is None or frame.time_base is None else float(frame.pts * frame.time_base)


class VideoOutputTrack(MediaStreamTrack):
    """The lip-synced video of a session: each frame leaves ``runner.latency_s`` after its capture.

    Frames are RGB ``av.VideoFrame`` with pts on a 90 kHz clock (the capture
    time). A frame not generated in time is the captured frame (pass-through).
    """

    kind = "video"

    def __init__(self, runner: LiveRunner):
        super().__init__()
        self.runner = runner

    async def recv(self) -> av.VideoFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            out, wait = self.runner.poll_output()
            if out is not None:
                break
            await asyncio.sleep(min(wait if wait is not None else 0.01, 0.02))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(out.image), format="rgb24")
        frame.pts = int(round(out.t * VIDEO_CLOCK))
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        return frame


class AudioOutputTrack(MediaStreamTrack):
    """The driving audio of a session, delayed by ``runner.latency_s``: 20 ms s16 16 kHz mono frames in real time."""

    kind = "audio"

    def __init__(self, runner: LiveRunner, ptime: float = 0.02):
        super().__init__()
        self.runner, self.n = runner, int(ptime * SAMPLE_RATE)
        self._t: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        clock = self.runner.clock
        if self._t is None or clock.now() - self._t > 0.2:  # start, or the loop stalled: catch up
            self._t = clock.now()
        else:
            self._t += self.n / SAMPLE_RATE
            wait = self._t - clock.now()
            if wait > 0:
                await asyncio.sleep(wait)
        samples = self.runner.delay.read(self._t - self.runner.latency_s, self.n)
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = int(round(self._t * SAMPLE_RATE))
        frame.time_base = Fraction(1, SAMPLE_RATE)
        return frame
