"""The live runner, sources and sinks on real clips and speech, with small random generators.

What cannot exist here is faked at its boundary only, and said so: the
virtual camera (no v4l2 in this kernel) is a fake ``pyvirtualcam.Camera``
that checks the frames it is handed. Audio devices are real (PulseAudio in
user space): see ``test_live_audio.py``.
"""

import socket
import sys
import threading

import numpy as np
import pytest

from conftest import data_file
from live_helpers import SlowBackend


@pytest.fixture
def backend(small_generator):
    from engine import backends

    return backends.load(small_generator, "onnxruntime")


def paced_clip(clock, seconds=None):
    from realtime.runner import Paced
    from realtime.sources import AudioFileSource, VideoFileSource

    clip = data_file("video/grid_bbaf2n.mpg")
    return Paced(VideoFileSource(clip, duration=seconds), clock), Paced(AudioFileSource(clip), clock)


def test_slow_generator_passes_frames_through_instead_of_growing_latency(backend):
    """A generator 1.5x slower than real time: frames pass through, added latency stays at its bound."""
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.runner import MediaClock, run_live

    slow = SlowBackend(backend, 0.3)  # 0.3 s per chunk of 5 frames = 0.2 s of video
    pipeline = Pipeline(slow, PipelineConfig(chunk=5))
    clock = MediaClock()
    video, audio = paced_clip(clock, seconds=4.0)
    shown = []
    try:
        report, runner = run_live(pipeline, video, audio, clock=clock, latency_s=0.6, on_frame=shown.append)
    finally:
        pipeline.close()
    st = runner.stats
    bound = runner.latency_s + 1 / 25
    print("\n".join(report.lines()), f"max queue {st.max_queue}")
    assert [f.t for f in shown] == sorted(f.t for f in shown) and len(shown) == 100  # every frame, in order
    assert report.latency_p95 <= bound and max(st.latencies) <= bound + 1 / 25
    # no growth over the clip: the last second leaves as fast as the first
    assert np.mean(st.latencies[-25:]) <= np.mean(st.latencies[:25]) + 1 / 25
    assert st.max_queue <= runner.max_queue  # the queue in front of the generator is bounded
    passed = st.passthrough.get("dropped", 0) + st.passthrough.get("late", 0)
    assert passed >= 20 and passed + report.generated == 100, st.passthrough
    assert max(st.ready, default=0) <= bound  # what was generated was ready within a frame of its deadline


def test_frames_keep_flowing_when_network_audio_stops(backend):
    """Driving audio over TCP for 1 s, then the sender leaves: video flows on, silence closes the mouth."""
    from engine.audio import load_audio
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.runner import MediaClock, run_live
    from realtime.sources import TcpPcmSource

    speech = load_audio(data_file("audio/cmuarctic_a0007.wav"))[:16000]
    pipeline = Pipeline(backend, PipelineConfig(chunk=5))
    clock = MediaClock()
    video, _ = paced_clip(clock, seconds=3.0)
    tcp = TcpPcmSource(clock, "127.0.0.1", 0)
    received = []

    def send():
        with socket.create_connection(tcp.address) as s:
            s.sendall((speech * 32767).astype("<i2").tobytes())  # faster than real time: read at real-time speed

    sender = threading.Thread(target=send)
    sender.start()
    try:
        report, runner = run_live(pipeline, video, tcp, clock=clock, latency_s=0.5)
    finally:
        pipeline.close()
        sender.join()
    st = runner.stats
    assert st.frames_out == 75 and report.latency_p95 <= 0.5 + 1 / 25
    assert st.silence_s > 1.0  # after the sender left, silence was fed
    assert pipeline.stats.events.get("silent", 0) > 0
    # what arrived is the speech, sample for sample and in order. Its first block may have come after the
    # runner had already fed silence for that time (the sender connects on its own thread): such late
    # samples are dropped by design, so the received speech may start a little into the sent one.
    sent = np.round(speech * 32767) / 32768
    got = runner.delay.read(0.0, 3 * 16000)
    start = int(np.argmax(np.abs(got) > 0))
    skipped = next(k for k in range(0, 1600) if np.allclose(got[start: start + 64], sent[k: k + 64], atol=1e-4))
    assert np.allclose(got[start: start + 16000 - skipped], sent[skipped:], atol=1e-4)


def test_stream_and_device_clocks():
    from realtime.sources import DeviceClock, StreamClock

    c = StreamClock(tolerance_s=0.05, forward_only=True)
    assert c.stamp(320, 1.0) == 1.0 and c.stamp(320, 0.5) == pytest.approx(1.02)  # a burst keeps its count
    assert c.stamp(320, 2.0) == 2.0  # a gap re-anchors
    d = DeviceClock()
    times = [d.stamp(320, 1.0 + i * 0.02 + (0.015 if i % 3 else 0.0)) for i in range(20)]  # late callbacks
    assert np.allclose(np.diff(times), 0.02) and times[0] == pytest.approx(1.0)
    lost = [d.stamp(320, 1.6 + i * 0.02) for i in range(5)]  # 0.2 s of samples lost, then steady
    assert lost[-1] == pytest.approx(1.68)  # re-anchored


def test_audio_sources_from_the_command_line(tmp_path):
    from engine.audio import AudioError
    from realtime.devices import DeviceError
    from realtime.runner import MediaClock, Paced
    from realtime.sources import TcpPcmSource, open_audio_source

    clock = MediaClock()
    src = open_audio_source(str(data_file("audio/cmuarctic_a0007.wav")), clock)
    assert isinstance(src, Paced)
    src.close()
    tcp = open_audio_source("tcp://127.0.0.1:0", clock)
    assert isinstance(tcp, TcpPcmSource)
    tcp.close()
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        open_audio_source("tcp://nowhere", clock)
    with pytest.raises(FileNotFoundError):
        open_audio_source(str(tmp_path / "missing.wav"), clock)
    with pytest.raises(DeviceError, match="no audio input device 'nonexistent'|PortAudio|no audio input"):
        open_audio_source("mic:nonexistent", clock)
    try:
        text = open_audio_source("text:Hello there", clock)
    except AudioError as e:
        pytest.skip(reason=f"espeak-ng: {e}")
    pieces = list(zip(range(3), text))
    assert len(pieces) == 3 and pieces[0][1][0].dtype == np.float32
    text.close()


class FakeCamera:
    """Stands in for ``pyvirtualcam.Camera`` (no v4l2 here): records how it was opened and what it was sent."""

    opened: list = []

    def __init__(self, width, height, fps, *, fmt, device=None, backend=None, print_fps=False):
        self.args = dict(width=width, height=height, fps=fps, fmt=fmt, device=device, backend=backend)
        self.device, self.frames, self.closed = device or "/dev/video10", [], False
        FakeCamera.opened.append(self)

    def send(self, frame):
        self.frames.append(frame)

    def close(self):
        self.closed = True


def test_virtual_camera_without_a_device_says_how_to_make_one(small_checkpoint, capsys):
    """The real pyvirtualcam, on a kernel without v4l2: one clear line with the command that makes a device."""
    from realtime.cli import main

    rc = main(["cam", "--camera", str(data_file("video/grid_bbaf2n.mpg")), "--audio-source",
               str(data_file("audio/cmuarctic_a0007.wav")), "--checkpoint", str(small_checkpoint)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("realtime:")]
    assert rc == 2 and len(lines) == 1 and "no virtual camera" in lines[0], err
    if sys.platform.startswith("linux"):
        assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=dubcam" in lines[0]


def test_cam_hands_rgb_frames_to_the_virtual_camera(monkeypatch, small_checkpoint, capsys):
    """``realtime cam`` end to end, a clip standing in for the camera; the virtual camera is faked at its boundary."""
    import pyvirtualcam

    from realtime.cli import main

    FakeCamera.opened = []
    monkeypatch.setattr(pyvirtualcam, "Camera", FakeCamera)
    clip = data_file("video/grid_bbaf2n.mpg")
    rc = main(["cam", "--camera", str(clip), "--audio-source", str(data_file("audio/cmuarctic_a0007.wav")),
               "--checkpoint", str(small_checkpoint), "--seconds", "2", "--latency", "0.5"])
    out = capsys.readouterr().out
    assert rc == 0 and "virtual camera: /dev/video10" in out and "added latency" in out
    (cam,) = FakeCamera.opened
    assert cam.args["fmt"] == pyvirtualcam.PixelFormat.RGB and (cam.args["width"], cam.args["height"]) == (360, 288)
    assert cam.closed and len(cam.frames) >= 40
    for frame in cam.frames:  # what pyvirtualcam's send() expects for PixelFormat.RGB
        assert frame.shape == (288, 360, 3) and frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]


def test_devices_and_bench(small_checkpoint, capsys):
    from realtime.cli import main

    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for category in ("camera", "virtual camera", "inference"):
        assert any(line.startswith(category) for line in out.splitlines()), out
    assert main(["bench", "--seconds", "2", "--checkpoint", str(small_checkpoint)]) == 0
    out = capsys.readouterr().out
    for what in ("fps", "p95", "passed through", "time per frame", "mel lookahead", "chunk wait", "inference",
                 "compositing", "encoding"):
        assert what in out, (what, out)
