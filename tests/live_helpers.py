"""Helpers of the live-plugin tests: a slow backend, a user-space PulseAudio server, WebRTC test media."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from tools import pulse


class SlowBackend:
    """A backend made artificially slow: sleeps ``seconds`` per generator call, then runs ``inner``."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.info, self.name = inner.info, f"slow {inner.name}"

    def run(self, faces, mels):
        time.sleep(self.seconds)
        return self.inner.run(faces, mels)


class PulseServer(pulse.PulseServer):
    """:class:`tools.pulse.PulseServer`, skipping the test (with the reason) where PulseAudio is not installed."""

    def __init__(self):
        if not pulse.available():
            pytest.skip(reason=pulse.MISSING)
        super().__init__()


async def until(condition, seconds: float) -> float:
    """Wait until ``condition()`` holds (at most ``seconds``); the seconds it took (inf if it never did)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if condition():
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return float("inf")


def wait_for_steady_microphone(mic, hold_s: float = 1.0, timeout_s: float = 15.0) -> None:
    """Returns once ``mic`` (a MicrophoneSource) has delivered its blocks within 0.1 s of capture for ``hold_s``.

    The rig's delay is measured in the steady state, not over the start-up: on a loaded machine PortAudio's
    ALSA -> PulseAudio capture starts with a backlog of some 0.6 s (audio that arrives too late to be played on
    time), which it drops a second or so later without reporting an overflow; DeviceClock then re-anchors
    (realtime/clock.py). Gives up after ``timeout_s`` (the test's own assertions then say what went wrong).
    """
    since, deadline = None, time.monotonic() + timeout_s
    while time.monotonic() < deadline and (since is None or time.monotonic() - since < hold_s):
        steady = mic.capture_lag_s is not None and mic.capture_lag_s < 0.1
        since = (since or time.monotonic()) if steady else None
        time.sleep(0.02)


def write_y4m_and_wav(video: Path, y4m: Path, wav: Path, seconds: float | None = None):
    """A real clip as Chromium's fake camera (y4m, yuv420p) and fake microphone (16-bit 48 kHz mono wav), with PyAV."""
    import av

    from engine.audio import load_audio
    from engine.media import probe_video, read_frames

    info = probe_video(video)
    with av.open(str(y4m), "w", format="yuv4mpegpipe") as out:
        s = out.add_stream("rawvideo", rate=round(info.fps))
        s.width, s.height, s.pix_fmt = info.width, info.height, "yuv420p"
        for frame, _ in read_frames(video):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    audio = load_audio(video)
    if seconds:
        audio = audio[: int(seconds * 16000)]
    with av.open(str(wav), "w", format="wav") as out:
        s = out.add_stream("pcm_s16le", rate=48000, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        af = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        af.sample_rate = 16000
        for f in resampler.resample(af) + resampler.resample(None):
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return np.stack([f for f, _ in read_frames(video)])
