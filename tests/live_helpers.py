"""Helpers of the live-plugin tests: a slow backend, a user-space PulseAudio server, WebRTC test media."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest


class SlowBackend:
    """A backend made artificially slow: sleeps ``seconds`` per generator call, then runs ``inner``."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.info, self.name = inner.info, f"slow {inner.name}"

    def run(self, faces, mels):
        time.sleep(self.seconds)
        return self.inner.run(faces, mels)


class PulseServer:
    """A PulseAudio server in user space (no sound card needed), for the duration of a test.

    The graph: a stereo null sink ``rig``; whatever is played to ``feed``
    lands on its left channel and is what the microphone ``mic`` hears;
    whatever is played to ``vmic`` (the virtual microphone) lands on its
    right channel. Recording ``rig.monitor`` gives both on one clock.
    """

    MODULES = [
        "module-null-sink sink_name=rig channels=2 channel_map=front-left,front-right rate=16000",
        "module-remap-sink sink_name=feed master=rig channels=1 master_channel_map=front-left channel_map=mono "
        "remix=no",
        "module-remap-sink sink_name=vmic master=rig channels=1 master_channel_map=front-right channel_map=mono "
        "remix=no",
        "module-remap-source source_name=mic master=rig.monitor channels=1 master_channel_map=front-left "
        "channel_map=mono remix=no",
    ]

    def __init__(self):
        if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
            pytest.skip(reason="pulseaudio is not installed (apt install pulseaudio pulseaudio-utils libasound2-plugins); "
                        ".ci/run installs it")
        self.dir = tempfile.mkdtemp(prefix="pa", dir="/tmp")  # short: the socket path has a length limit
        self.env = {**os.environ, "XDG_RUNTIME_DIR": self.dir, "HOME": self.dir}
        subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
                        "--load=module-native-protocol-unix auth-anonymous=1"], env=self.env, check=True,
                       capture_output=True, timeout=30)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for module in self.MODULES:
            subprocess.run(["pactl", "load-module", *module.split()], env=self.env, check=True, capture_output=True)

    def stop(self):
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=30)
        for _ in range(100):  # it is gone (else it writes into its folder while that is removed)
            if subprocess.run(["pulseaudio", "--check"], env=self.env, capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)


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
