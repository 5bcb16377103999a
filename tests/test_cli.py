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


def test_option_errors_come_before_the_model_loads(tmp_path):
    """Bad serve options: one ``error:`` line, exit 2, no traceback, and the (missing) model is never read."""
    import socket

    missing = tmp_path / "never_read.pt"
    taken = socket.create_server(("127.0.0.1", 0))
    busy = taken.getsockname()[1]
    cases = {
        "port": (["--port", "99999"], "port number 1–65535"),
        "sessions": (["--max-sessions", "0"], "--max-sessions: expected an integer ≥ 1"),
        "empty token": (["--host", "0.0.0.0", "--token="], "--token is empty"),
        "port in use": (["--port", busy], f"cannot listen on 127.0.0.1:{busy}"),
    }
    try:
        for name, (args, expected) in cases.items():
            proc = realtime("serve", "--webrtc", *args, "--checkpoint", missing, check=False)
            lines = [line for line in proc.stderr.splitlines() if "error:" in line]
            assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], (name, proc.stderr)
            assert "Traceback" not in proc.stderr and "service on" not in proc.stdout, name
    finally:
        taken.close()


def test_verbose_after_the_sub_command():
    proc = realtime("devices", "-v")
    assert proc.returncode == 0 and "inference" in proc.stdout


def test_preview_without_a_display_is_one_line_not_a_qt_abort(small_checkpoint):
    """OpenCV's Qt aborts the process (exit 134) without a display: the display is checked before Qt is touched."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = subprocess.run([*REALTIME, "cam", "--camera", str(data_file("video/grid_bbaf2n.mpg")), "--audio-source",
                           str(data_file("audio/cmuarctic_a0007.wav")), "--no-virtual-camera", "--preview",
                           "--checkpoint", str(small_checkpoint)], capture_output=True, text=True, timeout=600,
                          env=env)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("realtime:")]
    assert proc.returncode == 2 and len(lines) == 1 and "--preview needs a display" in lines[0], proc.stderr


def _start(args: list[str], ready: str) -> tuple[subprocess.Popen, list[str]]:
    """Start ``realtime ARGS`` and read its stdout until a line contains ``ready``; (process, lines read)."""
    proc = subprocess.Popen([*REALTIME, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if ready in line:
            return proc, lines
    proc.wait(timeout=60)
    raise AssertionError(f"realtime {' '.join(map(str, args))} never said {ready!r}:\n{proc.stderr.read()[-3000:]}")


def test_sigterm_stops_a_live_session_cleanly(small_checkpoint):
    """SIGTERM mid-session: the session ends as Ctrl-C ends it (devices released, report printed), exit 0."""
    import signal
    import time

    proc, _ = _start(["cam", "--camera", data_file("video/grid_bbaf2n.mpg"), "--audio-source",
                      data_file("audio/librivox_ss01_0890.wav"), "--no-virtual-camera", "--seconds", "60",
                      "--checkpoint", small_checkpoint], "Ctrl-C stops")
    time.sleep(2.0)  # frames flow
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped; every device released" in out and "added latency" in out and "Traceback" not in err


def test_serve_without_a_token_off_loopback_only_when_asked(small_checkpoint):
    """``--no-token`` off loopback starts the service with a warning; SIGTERM stops it cleanly (exit 0)."""
    import signal
    import socket
    import time

    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    proc, lines = _start(["serve", "--webrtc", "--host", "0.0.0.0", "--port", port, "--no-token", "--checkpoint",
                          small_checkpoint], "service on")
    assert "token=" not in "".join(lines)
    for _ in range(600):  # "service on" comes just before aiohttp binds and takes over SIGTERM: wait for that
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "warning: --no-token" in err and "Traceback" not in err
