"""realtime.gauge: the live sync gauge on real GRID video, fed in-sync and 400 ms late speech."""

from __future__ import annotations

import numpy as np
import pytest

from realtime.gauge import GaugeConfig, load_gauge

CLIPS = ["grid_bbaf2n.mpg", "grid_brbk7n.mpg", "grid_lbax4n.mpg", "grid_pwij3p.mpg", "grid_sbwe5n.mpg"]
FPS = 25.0


@pytest.fixture(scope="module")
def grid_talk():
    """Five real GRID clips of one speaker back to back (15 s): square 96 px face crops, as the pipeline
    cuts them, their crop sides in pixels, and the speech."""
    from conftest import data_file
    from engine.audio import load_audio
    from engine.face import crop, crop_box, track_landmarks
    from engine.media import read_frames

    crops, sides, audio = [], [], []
    for name in CLIPS:
        path = data_file(f"video/{name}")
        frames = np.stack([f for f, _ in read_frames(path)])[:75]
        wav = load_audio(path)[: 75 * 640]
        for frame, points in zip(frames, track_landmarks(frames)):
            box = crop_box(points, "square")
            crops.append(crop(frame, box, 96))
            sides.append(box.x1 - box.x0)
        audio.append(np.pad(wav, (0, 75 * 640 - len(wav))))
    return np.stack(crops), np.array(sides), np.concatenate(audio)


def drive(gauge, crops, audio, sides=None, late_s=0.0, every=5):
    """Push 20 ms audio pieces and frames in time order (audio ``late_s`` late); a reading every few frames."""
    audio = np.concatenate([np.zeros(int(late_s * 16000), np.float32), audio])[: len(audio)]
    readings, a = [], 0
    for i, c in enumerate(crops):
        t = i / FPS
        while a < len(audio) and a / 16000 <= t + 0.5:  # the audio runs half a second ahead, as live
            gauge.push_audio(audio[a: a + 320], a / 16000)
            a += 320
        gauge.push_frame(t, c, None if sides is None else float(sides[i]))
        if i % every == every - 1:
            readings.append((t, gauge.reading()))
    return readings


def test_in_sync_speech_keeps_dubbing(grid_talk):
    crops, sides, audio = grid_talk
    readings = drive(load_gauge(), crops, audio, sides)
    judged = [r for _, r in readings if r.lag is not None]
    assert judged and all(r.state == "dubbing" for _, r in readings)
    assert np.mean([abs(r.lag) <= 3 for r in judged]) >= 0.9  # a stray reading may be off; the state holds
    assert np.nanmean([r.margin for r in judged]) > 0.01
    last = readings[-1][1]
    assert last.windows >= 35 and np.isfinite(last.coupling)  # about 4 s of windows at stride 2 and "dubbing" in last.line()
    assert last.as_dict()["state"] == "dubbing"


def test_speech_400_ms_late_falls_back_and_recovers_when_sync_returns(grid_talk):
    crops, sides, audio = grid_talk
    gauge = load_gauge(GaugeConfig(poor_for_s=2.0, good_for_s=2.0))
    half = len(crops) // 2  # 7.5 s with the speech 400 ms late, then 7.5 s in sync
    late = drive(gauge, crops[:half], audio[: half * 640], late_s=0.4)
    states = [r.state for _, r in late]
    assert "passthrough" in states
    first = states.index("passthrough")
    assert late[first][0] >= 2.0  # only after the lag has been off for poor_for_s
    assert "out of sync" in late[-1][1].reason and late[-1][1].lag >= 4
    # the rest in sync (the gauge keeps scoring the generated composites while passing through)
    t0 = half / FPS
    rest = []
    for i, c in enumerate(crops[half:]):
        t = t0 + i / FPS
        if i == 0:
            gauge.push_audio(audio[half * 640:], t0)
        gauge.push_frame(t, c)
        if i % 5 == 4:
            rest.append(gauge.reading())
    assert rest[-1].state == "dubbing" and abs(rest[-1].lag) <= 3


def test_no_face_and_a_face_too_small(grid_talk):
    crops, _, audio = grid_talk
    gauge = load_gauge()
    drive(gauge, crops[:50], audio[: 50 * 640])
    gauge.push_frame(50 / FPS, None)
    r = gauge.reading()
    assert r.state == "no_face" and not r.dub and r.reason == "no face"
    gauge.push_frame(51 / FPS, crops[51], face_px=30.0)
    assert gauge.reading().reason == "face too small (30 px)"
    with pytest.raises(ValueError, match="increase"):
        gauge.push_frame(0.0, crops[0])


def test_live_runner_fades_to_pass_through_on_poor_sync_and_back(small_generator, grid_talk):
    """LiveRunner's fallback: while the gauge's reading says "passthrough" (or a face too small), the
    generated mouth fades out over the pipeline's fade_frames and frames pass through with the reason;
    when it says "dubbing" again, the mouth fades back in. The readings are set as the gauge's thread sets
    them; the stats carry the latest one."""
    from engine import backends
    from engine.face import Box
    from realtime.gauge import GaugeReading
    from realtime.pipeline import OutputFrame, Pipeline
    from realtime.clock import MediaClock
    from realtime.live import LiveRunner

    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"))
    runner = LiveRunner(pipeline, MediaClock(), gauge=load_gauge())
    try:
        raw = np.zeros((64, 64, 3), np.uint8)
        dubbed = np.full((64, 64, 3), 200, np.uint8)
        box = Box(0, 0, 64, 64)

        def show(i):
            out = runner._apply_gauge(OutputFrame(dubbed.copy(), i / 25, 0.2, 0.1, True, None, box), raw)
            return out.generated, out.reason, int(out.image[0, 0, 0])

        poor = GaugeReading("passthrough", "out of sync: best lag +10 frames", 10, 0.0, 0.4, 0.1, 40)
        runner.gauge.reading = poor
        shown = [show(i) for i in range(6)]
        assert [s[2] for s in shown[:3]] == [150, 100, 50] and shown[3:] == [(False, "sync", 0)] * 3
        assert runner.stats.sync["state"] == "passthrough" and runner.stats.sync["lag"] == 10
        runner.gauge.reading = GaugeReading("dubbing", None, 0, 0.05, 0.5, 0.4, 40)
        back = [show(i) for i in range(6, 11)]
        assert [b[2] for b in back] == [50, 100, 150, 200, 200] and all(b[0] for b in back)
        runner.gauge.reading = GaugeReading("no_face", "face too small (30 px)", 0, 0.05, 0.5, 0.4, 40)
        assert [show(i)[1] for i in range(11, 16)][-1] == "small_face"
        runner.gauge.reading = GaugeReading("no_face", "no face", None, 0.0, 0.0, 0.0, 0)
        assert show(16)[0]  # no face: the pipeline passes through by itself; the gauge does not hold the mouth
    finally:
        runner.close()
        pipeline.close()
