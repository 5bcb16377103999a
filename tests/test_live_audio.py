"""Live audio on real (user-space) devices: a PulseAudio server stands in for the sound card.

A real speech file is played into a PulseAudio sink whose monitor is the
microphone; ``realtime``'s live runner reads it with MicrophoneSource, and
VirtualMicSink plays the driving audio to the virtual microphone. Both are
recorded on one clock (the left and right channels of one null sink), and
the recorded virtual microphone must be the driving speech, delayed by the
runner's reported latency within one video frame (cross-correlation).
"""

import subprocess
import threading

import numpy as np
import pytest
from scipy.signal import correlate

from conftest import data_file
from live_helpers import PulseServer


@pytest.fixture
def pulse():
    import os

    from realtime.devices import sounddevice

    sd = sounddevice()
    server = PulseServer()
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = server.dir
    sd._terminate()  # PortAudio lists ALSA's pulse device only once a server runs: list again
    sd._initialize()
    yield server
    sd._terminate()
    server.stop()
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old
    sd._initialize()


def test_virtual_mic_plays_the_microphone_speech_delayed_by_the_pipeline_latency(pulse, small_generator, tmp_path):
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig
    from realtime.runner import MediaClock, Paced, run_live
    from realtime.sinks import VirtualMicSink
    from realtime.sources import MicrophoneSource, VideoFileSource

    speech = data_file("audio/cmuarctic_a0007.wav")
    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5))
    clock = MediaClock()
    rec = subprocess.Popen(["parec", "-d", "rig.monitor", "--raw", "--format=s16le", "--rate=16000", "--channels=2",
                            "--latency-msec=10"], stdout=(tmp_path / "rig.raw").open("wb"), env=pulse.env)
    player = threading.Timer(2.0,  # after start-up (model and device warm-up)
                             lambda: subprocess.run(["paplay", "-d", "feed", str(speech)], env=pulse.env))
    try:
        video = Paced(VideoFileSource(data_file("video/grid_bbaf2n.mpg"), duration=7.0), clock)
        mic = MicrophoneSource(clock, "mic")
        sinks = []

        def virtual_mic(runner):
            sinks.append(VirtualMicSink(runner.delay, runner.clock, runner.latency_s, "vmic"))
            return sinks[-1]

        player.start()
        report, runner = run_live(pipeline, video, mic, clock=clock, audio_sinks=[virtual_mic])
        player.join()
    finally:
        pipeline.close()
        rec.terminate()
        rec.wait()
    x = np.frombuffer((tmp_path / "rig.raw").read_bytes(), "<i2").reshape(-1, 2).astype(np.float32) / 32768
    heard, played = x[:, 0], x[:, 1]
    assert heard.std() > 0.01 and played.std() > 0.01, "no speech came through"
    c = correlate(played, heard, mode="full", method="fft")
    lag = (np.argmax(c) - (len(heard) - 1)) / 16000
    # the same speech: each 0.2 s of speech heard is found in what was played, one frame around the latency
    L, frame = runner.latency_s, 1 / 25
    w, lo, hi = 3200, int((L - frame) * 16000), int((L + frame) * 16000)
    matches = []
    for s in range(0, len(heard) - w - hi, w):
        a, b = heard[s: s + w], played[s + lo: s + hi + w]
        if a.std() > 0.02:
            cw = correlate(b, a, mode="valid")
            k = int(np.argmax(cw))
            matches.append(cw[k] / max(1e-9, np.sqrt((a ** 2).sum() * (b[k: k + w] ** 2).sum())))
    print(f"virtual mic delay {1000 * lag:.1f} ms, reported latency {1000 * L:.1f} ms, speech windows matched "
          f"{np.round(matches, 2).tolist()}, video p95 {1000 * report.latency_p95:.1f} ms; clock re-anchored: "
          f"microphone {mic._stamp.resets}, virtual mic {sinks[0]._stamp.resets}")
    assert len(matches) >= 10 and np.median(matches) > 0.8
    assert abs(lag - L) <= frame
    # and the video left with that latency (its output thread may be a little late on a loaded machine)
    assert abs(report.latency_p50 - L) <= frame and report.latency_p95 <= L + 0.1
    assert report.generated > 0
