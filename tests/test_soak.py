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
