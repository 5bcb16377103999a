"""The ``realtime`` command end to end on real files, and its answers to bad input.

Runs the installed console script (``realtime``) as a user would, with a
small random generator so that it is fast; the bundled model has its own
test in ``test_bundled.py``.
"""

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import DATA, data_file

REALTIME = [sys.executable, "-m", "realtime.cli"]


def realtime(*args, check=True):
    proc = subprocess.run([*REALTIME, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"realtime {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def probe(path: Path) -> dict:
    """Codec names and durations of an mp4, and its frame count, read back with PyAV."""
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        return {"video": v.codec_context.name, "audio": a.codec_context.name,
                "video_s": float(v.duration * v.time_base), "audio_s": float(a.duration * a.time_base),
                "frames": frames}


def speech_seconds(path) -> float:
    from engine.audio import SAMPLE_RATE, load_audio

    return len(load_audio(path)) / SAMPLE_RATE


def test_run_loops_a_short_video_over_longer_speech(tmp_path, small_checkpoint):
    video, speech = data_file("video/grid_bbaf2n.mpg"), data_file("audio/librivox_ss01_0890.wav")
    out = tmp_path / "out.mp4"
    proc = realtime("run", "--video", video, "--audio", speech, "--out", out, "--checkpoint", small_checkpoint, "-q")
    info = probe(out)
    assert info["video"] == "h264" and info["audio"] == "aac"
    dur = speech_seconds(speech)
    assert abs(info["video_s"] - dur) <= 0.1 and abs(info["audio_s"] - dur) <= 0.1
    assert info["frames"] == int(np.ceil(dur * 25))
    assert "fps" in proc.stdout and "p95" in proc.stdout and "passed through 0" in proc.stdout


def test_run_still_image_and_text(tmp_path, small_checkpoint):
    if shutil.which("espeak-ng") is None:
        pytest.skip(reason="espeak-ng is not installed (apt install espeak-ng); .ci/run installs it")
    out = tmp_path / "text.mp4"
    realtime("run", "--video", data_file("images/skimage_astronaut.png"), "--text", "Hello, this is dubcam.",
             "--out", out, "--checkpoint", small_checkpoint, "-q")
    info = probe(out)
    assert info["video"] == "h264" and 1.0 < info["video_s"] < 4.0
    assert abs(info["video_s"] - info["audio_s"]) <= 0.1


VIDEOS = sorted(p.name for p in (DATA / "video").glob("*")) if (DATA / "video").is_dir() else []
AUDIOS = sorted(p.name for p in (DATA / "audio").glob("*")) if (DATA / "audio").is_dir() else []
# every video once and every speech file once (the full 7 x 9 matrix is run by hand, see the README)
PAIRS = sorted(set(zip(VIDEOS, itertools.cycle(AUDIOS))) | set(zip(itertools.cycle(VIDEOS), AUDIOS)))


@pytest.mark.parametrize("video,audio", PAIRS or [pytest.param("-", "-", marks=pytest.mark.skip(
    reason="../shared/data is not beside this checkout"))])
def test_run_every_video_and_every_speech(tmp_path, small_checkpoint, video, audio):
    out = tmp_path / "o.mp4"
    realtime("run", "--video", DATA / "video" / video, "--audio", DATA / "audio" / audio, "--out", out,
             "--checkpoint", small_checkpoint, "-q")
    info = probe(out)
    dur = speech_seconds(DATA / "audio" / audio)
    assert info["video"] == "h264" and abs(info["video_s"] - dur) <= 0.1 and abs(info["audio_s"] - dur) <= 0.1


def _faceless_video(path: Path):
    from realtime.sinks import Mp4Sink

    sink = Mp4Sink(path, 25, 160, 120)
    rng = np.random.default_rng(0)
    for i in range(25):
        sink.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), i / 25)
    sink.write_audio(np.zeros(16000, np.float32))
    sink.close()


def test_bad_input_gets_one_clear_line(tmp_path, small_checkpoint):
    speech = data_file("audio/cmuarctic_a0007.wav")
    video = data_file("video/grid_bbaf2n.mpg")
    faceless = tmp_path / "noise.mp4"
    _faceless_video(faceless)
    tiny = tmp_path / "tiny.mpg"
    tiny.write_bytes(video.read_bytes()[:2000])
    expert = tmp_path / "lipsync_expert.pth"
    import torch

    torch.save({"state_dict": {"face_encoder.0.conv_block.0.weight": torch.zeros(1),
                               "audio_encoder.0.conv_block.0.weight": torch.zeros(1)}}, expert)
    cases = {
        "missing video": (["--video", tmp_path / "nope.mp4", "--audio", speech], "no such"),
        "missing audio": (["--video", video, "--audio", tmp_path / "nope.wav"], "no such"),
        "no face": (["--video", faceless, "--audio", speech], "no face"),
        "no audio": (["--video", video, "--audio", data_file("images/skimage_astronaut.png")], "no audio"),
        "truncated": (["--video", tiny, "--audio", speech], "tiny.mpg"),
        "wrong checkpoint": (["--video", video, "--audio", speech, "--checkpoint", expert], "lip-sync expert"),
    }
    for name, (args, expected) in cases.items():
        out = tmp_path / f"{name}.mp4"
        ckpt = [] if "--checkpoint" in args else ["--checkpoint", small_checkpoint]
        proc = realtime("run", *args, "--out", out, *ckpt, "-q", check=False)
        assert proc.returncode == 2, (name, proc.stderr)
        lines = [l for l in proc.stderr.splitlines() if l.startswith("realtime:")]
        assert len(lines) == 1 and expected in lines[0].lower(), (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
        assert not out.exists(), name


def test_truncated_video_keeps_the_frames_that_decode(tmp_path, small_checkpoint):
    src = data_file("video/grid_bbaf2n.mpg")
    half = tmp_path / "half.mpg"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    out = tmp_path / "half.mp4"
    realtime("run", "--video", half, "--audio", data_file("audio/cmuarctic_a0007.wav"), "--out", out,
             "--checkpoint", small_checkpoint, "-q")
    assert probe(out)["frames"] == 100


def test_help_explains():
    proc = realtime("run", "--help")
    assert "ping-pong" in proc.stdout or "looped back and forth" in proc.stdout
    assert "--text" in proc.stdout and "--backend" in proc.stdout
