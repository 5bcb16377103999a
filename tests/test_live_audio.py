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
from live_helpers import PulseServer, wait_for_steady_microphone


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
    from realtime.clock import MediaClock, Paced
    from realtime.live import run_live
    from realtime.sinks import VirtualMicSink
    from realtime.sources import MicrophoneSource, VideoFileSource

    speech = data_file("audio/cmuarctic_a0007.wav")
    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5))
    clock = MediaClock()
    rec = subprocess.Popen(["parec", "-d", "rig.monitor", "--raw", "--format=s16le", "--rate=16000", "--channels=2",
                            "--latency-msec=10"], stdout=(tmp_path / "rig.raw").open("wb"), env=pulse.env)
    def play():
        wait_for_steady_microphone(mic)
        started.append(clock.now())
        subprocess.run(["paplay", "-d", "feed", str(speech)], env=pulse.env)

    player, started = threading.Thread(target=play), []
    try:
        video = Paced(VideoFileSource(data_file("video/grid_bbaf2n.mpg"), duration=12.0), clock)
        mic = MicrophoneSource(clock, "mic")
        sinks = []

        def virtual_mic(runner):
            sinks.append(VirtualMicSink(runner.delay, runner.clock, runner.latency_s, "vmic"))
            started.append(clock.now())
            player.start()
            return sinks[-1]

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
          f"{np.round(matches, 2).tolist()}, video p95 {1000 * report.latency_p95:.1f} ms, generated {report.generated} of "
          f"{report.frames} (passed through {report.passthrough}); clock re-anchored: "
          f"microphone {mic._stamp.resets}, virtual mic {sinks[0].jumps} (underflows {sinks[0].underflows}, "
          f"last error {1000 * sinks[0].error_s:.1f} ms); the speech started {started[1] - started[0]:.1f} s after the "
          f"virtual mic opened")
    assert len(matches) >= 10 and np.median(matches) > 0.8
    assert abs(lag - L) <= frame
    # and the video left with that latency (its output thread may be a little late on a loaded machine)
    assert abs(report.latency_p50 - L) <= frame and report.latency_p95 <= L + 0.1
    assert report.generated > 0


def delay_track(heard: np.ndarray, played: np.ndarray, around: float, window_s: float = 0.4,
                search_s: float = 0.15) -> list[tuple[float, float]]:
    """The delay of ``played`` behind ``heard`` (16 kHz, one clock), window by window: ``[(time s, delay s)]``.

    Each ``window_s`` of ``heard`` that holds speech is found in ``played``
    within ``around ± search_s`` (cross-correlation, to the sample); windows
    whose best match is weak (normalised correlation < 0.8) are left out.
    """
    w, lo, hi = int(window_s * 16000), int((around - search_s) * 16000), int((around + search_s) * 16000)
    out = []
    for s in range(0, len(heard) - w - hi, w):
        a, b = heard[s: s + w], played[s + lo: s + hi + w]
        if a.std() < 0.02:
            continue
        c = correlate(b, a, mode="valid", method="fft")
        energy = np.convolve(b ** 2, np.ones(w), mode="valid")
        k = int(np.argmax(c))
        if c[k] / max(1e-9, np.sqrt((a ** 2).sum() * energy[k])) >= 0.8:
            out.append((s / 16000, (lo + k) / 16000))
    return out


def spread_figures(track: list[tuple[float, float]], scheduled: float) -> dict:
    """p5 / p10 / p50 / p90 / p95 of the delay and the jumps of more than 10 ms between neighbouring windows (≤ 1 s apart)."""
    t, d = np.array(track).T
    near = np.diff(t) <= 1.0
    steps = np.abs(np.diff(d))[near]
    return {"windows": len(d), "p5_ms": 1000 * np.percentile(d, 5), "p10_ms": 1000 * np.percentile(d, 10),
            "p50_ms": 1000 * np.median(d), "p90_ms": 1000 * np.percentile(d, 90),
            "p95_ms": 1000 * np.percentile(d, 95), "min_ms": 1000 * d.min(), "max_ms": 1000 * d.max(),
            "jumps_over_10ms": int((steps > 0.010).sum()), "scheduled_ms": 1000 * scheduled}


def run_rig(pulse, backend, tmp_path, seconds: float, speech_files, latency_s: float | None = None):
    """``seconds`` of the live runner on the rig: speech played to ``feed`` in a loop is what the microphone
    hears; the runner plays it to the virtual microphone ``latency_s`` late (None: the default latency).
    Returns (rig recording [n, 2], runner, report, virtual mic sink, microphone source)."""
    import itertools

    from realtime.pipeline import Pipeline
    from realtime.clock import MediaClock, Paced
    from realtime.live import run_live
    from realtime.sinks import VirtualMicSink
    from realtime.sources import MicrophoneSource, VideoFileSource

    pipeline = Pipeline(backend)
    clock = MediaClock()
    raw = tmp_path / "rig.raw"
    rec = subprocess.Popen(["parec", "-d", "rig.monitor", "--raw", "--format=s16le", "--rate=16000", "--channels=2",
                            "--latency-msec=10"], stdout=raw.open("wb"), env=pulse.env)
    done = threading.Event()

    def play():
        wait_for_steady_microphone(mic)
        for f in itertools.cycle(speech_files):
            if done.is_set():
                return
            subprocess.run(["paplay", "-d", "feed", str(f)], env=pulse.env)

    player = threading.Thread(target=play)
    sinks = []
    try:
        video = Paced(VideoFileSource(data_file("video/grid_bbaf2n.mpg"), duration=seconds), clock)
        mic = MicrophoneSource(clock, "mic")

        def virtual_mic(runner):
            sinks.append(VirtualMicSink(runner.delay, runner.clock, runner.latency_s, "vmic"))
            player.start()
            return sinks[-1]

        report, runner = run_live(pipeline, video, mic, clock=clock, audio_sinks=[virtual_mic], latency_s=latency_s)
    finally:
        done.set()
        player.join()
        pipeline.close()
        rec.terminate()
        rec.wait()
    x = np.frombuffer(raw.read_bytes(), "<i2").reshape(-1, 2).astype(np.float32) / 32768
    return x, runner, report, sinks[0], mic


def test_virtual_mic_delay_spread_on_the_rig(pulse, small_generator, tmp_path):
    """30 s of continuous speech through the rig on this (shared, loaded) machine: the virtual microphone's delay
    behind the microphone, window by window, centred on the scheduled latency, with few jumps; prints p5..p95.

    The figures depend on the load (the audio callbacks of a 2-core machine running several jobs stall for up
    to half a second), so the ±20 ms target is measured and reported, not asserted here; what cannot fail on
    a loaded machine is asserted: the median is the scheduled latency within 15 ms (the rig's microphone, a
    remap of the sink's monitor, adds some 5–10 ms that PulseAudio does not report), and jumps stay rare.
    The timing rules themselves are tested without a device in ``test_live.py`` (DeviceClock, AudioDelay).
    """
    from engine import backends

    speech = [data_file(f"audio/{n}") for n in ("ljspeech_LJ001-0001.wav", "librivox_ss01_0870.wav",
                                                "ljspeech_LJ001-0005.wav", "latentsync_demo1_audio.wav")]
    # scheduled at 0.4 s, as in the measurement: room for the microphone's blocks that a stalled machine
    # delivers late (at the default latency, those come after the virtual microphone has played their time)
    x, runner, report, sink, mic = run_rig(pulse, backends.load(small_generator, "onnxruntime"), tmp_path, 30.0,
                                           speech, latency_s=0.4)
    L = runner.latency_s
    figures = spread_figures(delay_track(x[:, 0], x[:, 1], L), L)
    print(", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()),
          f"| virtual mic: jumps {sink.jumps}, underflows {sink.underflows}; microphone re-anchored "
          f"{mic._stamp.resets}; silence fed {runner.stats.silence_s:.2f} s; video p95 "
          f"{1000 * report.latency_p95:.0f} ms")
    assert figures["windows"] >= 15  # windows over an underflow (a stalled machine) match poorly: left out
    assert abs(figures["p50_ms"] - 1000 * L) <= 15, figures
    assert figures["jumps_over_10ms"] <= 3, figures
