"""The short soak: ``tools/soak.py`` for about 2.5 minutes (≥ 20 WebRTC sessions, then ``realtime cam``).

Two aiortc clients (real clips and speech, paced in real time) call
``realtime serve --webrtc`` over loopback, stay ~5 s, hang up and call
again; then ``realtime cam`` runs with a clip as the camera and a
user-space PulseAudio server as the sound card and virtual microphone. The
soak exits 0 only if every session held, nothing leaked (threads, file
descriptors, sessions) and memory did not grow more than 5 % after the
warm-up; the test also checks the figures it prints.
"""

import re
import subprocess
import sys

import pytest

from conftest import ROOT, data_file
from tools import pulse

pytest.importorskip("aiortc", reason="aiortc is not installed (pip install 'dubcam[live]')")


def test_short_soak(small_checkpoint, tmp_path):
    data_file("video/grid_bbaf2n.mpg")  # skips with the reason when ../shared/data is absent
    if not pulse.available():
        pytest.skip(reason=pulse.MISSING)
    proc = subprocess.run([sys.executable, "-m", "tools.soak", "--serve-seconds", "110", "--cam-seconds", "30",
                           "--warmup", "40", "--stay", "5", "--clients", "2", "--min-sessions", "20",
                           "--checkpoint", str(small_checkpoint), "--latency", "0.5", "--logs", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = proc.stdout + proc.stderr
    print(out)
    assert proc.returncode == 0, out
    calls, held = map(int, re.search(r"sessions: (\d+) calls, (\d+) held", out).groups())
    assert calls >= 20 and held == calls
    assert re.search(r"idle \d+ MB after warm-up → idle \d+ MB at the end", out)
    delays = re.search(r"virtual-mic delay per sample \(ms\): p5 (\d+), median (\d+), p95 (\d+)", out)
    assert delays and 0.3 <= int(delays[2]) / 1000 <= 0.8, out  # about the scheduled 0.5 s
    assert out.count(" RSS ") >= 10  # sampled every 10 s


def test_frame_numbers_survive_vp8_and_a_wrong_stamp_does_not_read():
    """FrameStamps (the glass-to-glass probe): numbers stamped into a real clip's frames read back after
    aiortc's VP8 encoder and decoder at its starting 500 kbit/s; an unstamped frame reads as nothing."""
    import av
    from aiortc.codecs.vpx import Vp8Decoder, Vp8Encoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame
    from fractions import Fraction

    from engine.media import read_frames
    from tools.soak import FrameStamps

    frames = [f for f, _ in read_frames(data_file("video/grid_bbaf2n.mpg"))]
    stamps = FrameStamps()
    assert stamps.read(frames[0]) is None
    enc, dec, back = Vp8Encoder(), Vp8Decoder(), []
    for n, frame in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(stamps.send(frame, 4000 + n), format="rgb24")  # wraps at 4096
        vf.pts, vf.time_base = n * 3600, Fraction(1, 90000)
        payloads, ts = enc.encode(vf)
        for out in dec.decode(JitterFrame(data=b"".join(vp8_depayload(p) for p in payloads), timestamp=ts)):
            back.append(stamps.read(out.to_ndarray(format="rgb24")))
    assert back == [(4000 + n) % 4096 for n in range(len(frames))]


def test_glass_times_frames_through_the_service(small_checkpoint, tmp_path):
    """``python -m tools.soak glass``: numbered frames come back from serve --webrtc, and their round trip is
    at least the service's scheduled latency (0.3 s here) and well under a second on loopback."""
    data_file("video/grid_bbaf2n.mpg")
    proc = subprocess.run([sys.executable, "-m", "tools.soak", "glass", "--seconds", "8", "--latency", "0.3",
                           "--checkpoint", str(small_checkpoint), "--logs", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    n = int(re.search(r"glass: (\d+) numbered frames back", out)[1])
    p50, p95 = map(int, re.search(r"round trip, client track → decoded back: p50 (\d+) ms, p95 (\d+) ms",
                                  out).groups())
    scheduled = int(re.search(r"scheduled latency, (\d+) ms", out)[1])
    assert n >= 100 and scheduled == 300
    assert scheduled <= p50 <= p95 < 1000, out
