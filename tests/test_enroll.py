"""``realtime enroll`` (realtime/enroll.py): personal fine-tuning on real recordings, with a small random generator.

The recordings are real clips of ../shared/data, re-encoded with PyAV where a
case needs it (another frame rate, two speakers taking turns, a face too small,
no face). The camera and microphone of ``--camera`` cannot exist here: that
test replaces CameraSource and MicrophoneSource (the device boundary) with a
real clip's frames and speech.
"""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import data_file

DFDC = "train/web/dfdc_actor_lynaeydofd_woman_with_glasses_blue_polo/lynaeydofd.mp4"  # 10 s, one speaker


def reencode(out, parts, fps=25.0, scale=1.0, crop=None):
    """Frames and speech of the real clips ``parts`` (one after the other) → an mp4 at ``fps``, resized / cropped."""
    import cv2

    from engine.audio import load_audio
    from engine.media import read_frames_at
    from realtime.sinks import Mp4Sink

    sink, t0 = None, 0.0
    audio = []
    for part in parts:
        n = 0
        for frame, t in read_frames_at(part, fps):
            if crop is not None:
                x0, y0, x1, y1 = crop
                frame = np.ascontiguousarray(frame[y0:y1, x0:x1])
            if scale != 1.0:
                frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            if sink is None:
                sink = Mp4Sink(out, fps, frame.shape[1], frame.shape[0])
            sink.write(frame, t0 + t)
            n += 1
        a = load_audio(part)
        audio.append(np.pad(a, (0, max(0, int(round(n / fps * 16000)) - len(a))))[: int(round(n / fps * 16000))])
        t0 += n / fps
    sink.write_audio(np.concatenate(audio))
    sink.close()
    return out


def test_speech_seconds_and_shot_changes_on_real_recordings():
    from engine.audio import load_audio
    from realtime.enroll import shot_changes, speech_seconds
    from train.preprocess import Recording, preprocess_recording

    speech = load_audio(data_file("audio/cmuarctic_a0007.wav"))  # 4.0 s file, about 3 s spoken
    assert 2.0 < speech_seconds(speech) < 3.9
    assert speech_seconds(np.zeros(32000, np.float32)) == 0.0
    assert speech_seconds(np.concatenate([speech, np.zeros(16000 * 5, np.float32)])) == speech_seconds(speech)
    one = preprocess_recording(Recording(data_file("video/grid_bbaf2n.mpg"), "s", "s__a"))
    assert shot_changes(one["faces"], one["boxes"], one["valid"]) == 0


@pytest.fixture(scope="module")
def turns(tmp_path_factory):
    """Two GRID speakers taking turns, A B A B: three cuts."""
    a, b = data_file("train/grid/s1/bbas1s.mpg"), data_file("train/grid/s2/swwp2s.mpg")
    return reencode(tmp_path_factory.mktemp("turns") / "turns.mp4", [a, b, a, b])


def test_enroll_refuses_recordings_that_cannot_serve_and_writes_nothing(small_checkpoint, tmp_path, turns):
    from engine.audio import AudioError
    from realtime.enroll import EnrollError, enroll

    out = tmp_path / "me.dubcam"
    cases = [
        (data_file("video/grid_bbaf2n.mpg"), EnrollError, "s of speech"),  # 3 s of GRID: too little speech
        (turns, EnrollError, "several people taking turns"),
        (reencode(tmp_path / "small.mp4", [data_file("video/grid_bbaf2n.mpg")], scale=0.4), EnrollError,
         "too small"),
        (reencode(tmp_path / "noface.mp4", [data_file("video/grid_bbaf2n.mpg")], crop=(0, 0, 96, 96)), EnrollError,
         "no face"),
        (data_file("images/facerec_obama.jpg"), AudioError, "audio"),  # a photo: no audio track
    ]
    for video, error, words in cases:
        with pytest.raises(error, match=words):
            enroll(video, out, small_checkpoint, minutes=0.5, progress=False)
        assert not out.exists() and not list(tmp_path.glob(".me.dubcam*")), video


def test_enroll_fine_tunes_on_the_first_80_percent_and_scores_the_held_out_rest(small_checkpoint, tmp_path):
    from engine import models
    from realtime.enroll import enroll

    video = reencode(tmp_path / "dfdc_30fps.mp4", [data_file(DFDC)], fps=30.0)  # another frame rate
    out = tmp_path / "me.dubcam"
    card = enroll(video, out, small_checkpoint, minutes=0.4, progress=False, min_speech_s=5.0)
    gen = models.load(out)  # an ordinary generator checkpoint: realtime run | cam | serve --checkpoint take it
    assert gen.meta["enrollment"] == card
    T = card["frames"]
    assert abs(T - 25 * card["seconds"]) <= 1 and 245 <= T <= 255  # resampled to 25 fps by timestamp
    n = card["train_frames"][1]
    assert card["train_frames"] == [0, n] and card["held_out_frames"] == [n, T] and n == round(0.8 * T)
    import hashlib

    assert card["video_sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
    assert card["steps"] > 0 and card["peak_memory_mb"] < 4096
    for scores in (card["scores_before"], card["scores_after"]):  # (a random generator draws no face MediaPipe
        assert {"sharpness", "ssim", "ssim_low", "expert_conf"} <= set(scores)  # finds: no opening or lip error)
    base = models.load(small_checkpoint)
    changed = [k for k, v in gen.state_dict().items() if v.is_floating_point()
               and not torch.allclose(v.float(), base.state_dict()[k].float(), atol=1e-3)]
    assert changed, "fine-tuning changed no weight"
    assert card["scores_after"] != card["scores_before"]


def test_enroll_command_line(small_checkpoint, tmp_path):
    run = [sys.executable, "-m", "realtime.cli", "enroll"]
    help_text = subprocess.run(run + ["--help"], capture_output=True, text=True).stdout
    assert "good enrollment video" in help_text and "--camera" in help_text and "--minutes" in help_text
    out = tmp_path / "me.dubcam"
    r = subprocess.run(run + ["--video", str(data_file("video/grid_bbaf2n.mpg")), "--out", str(out),
                              "--checkpoint", str(small_checkpoint), "-q"], capture_output=True, text=True)
    ours = [line for line in r.stderr.splitlines() if line.startswith("realtime")]  # (MediaPipe logs on stderr too)
    assert r.returncode == 2 and len(ours) == 1 and "s of speech" in ours[0]
    assert not out.exists()
    out.write_bytes(b"mine")
    r = subprocess.run(run + ["--video", str(data_file(DFDC)), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr and out.read_bytes() == b"mine"


def test_record_enrollment_writes_the_camera_and_microphone_in_sync(monkeypatch, tmp_path):
    """The camera and microphone are replaced at the device boundary by a real clip's frames and speech, paced on the
    session clock as a device would deliver them; the recording must hold both, aligned, and the prompts shown."""
    import realtime.sources as sources
    from engine.audio import load_audio
    from engine.media import read_frames, probe_video
    from realtime.enroll import HARVARD, record_enrollment

    clip = data_file("video/grid_bbaf2n.mpg")
    frames = [f for f, _ in read_frames(clip)]
    speech = load_audio(clip)

    first_read = []  # the camera frames read, by number: the recording starts at the first
    origin = []  # the moment both devices see: the clip's frame i and sample j happen at origin + i/25, origin + j/16k

    class Camera:
        def __init__(self, clock, device=0, size=None, fps=25.0):
            self.clock = clock
            origin.append(clock.now())

        def __iter__(self):  # the clip over and over, as a camera never ends
            for i in itertools.count():
                frame, t = frames[i % len(frames)], origin[0] + i / 25
                if self.clock.now() > t + 0.02:
                    continue  # a real camera's frames pass whether or not they are read
                while self.clock.now() < t:
                    pass
                first_read.append(i)
                yield frame, t

        def close(self):
            pass

    class Microphone:
        def __init__(self, clock, device=None):
            self.clock, self.closed = clock, False

        def __iter__(self):
            looped = np.concatenate([speech, speech, speech, speech])
            for i in range(0, len(looped), 320):
                while self.clock.now() < origin[0] + i / 16000 and not self.closed:
                    pass
                yield looped[i: i + 320], origin[0] + i / 16000

        def close(self):
            self.closed = True

    monkeypatch.setattr(sources, "CameraSource", Camera)
    monkeypatch.setattr(sources, "MicrophoneSource", Microphone)
    said = []
    out = record_enrollment(tmp_path / "me.mp4", seconds=1.5, say=said.append)
    info = probe_video(out)
    assert abs(info.duration - 1.5) < 0.1
    # the recording starts at the first frame read (after the face tracker's start-up)
    start = first_read[0] / 25
    got = load_audio(out)
    looped = np.concatenate([speech, speech, speech, speech])
    # the loudest half second of the speech the recording should hold (GRID clips open with silence), found in it
    o = max(np.arange(0.1, 0.95, 0.05), key=lambda o: (looped[int((start + o) * 16000):][:8000] ** 2).sum())
    a = looped[int((start + o) * 16000):][:8000]
    c = np.correlate(got, a, mode="valid")
    k = int(np.argmax(c))
    lag = k / 16000 - o
    r = c[k] / np.sqrt((a ** 2).sum() * (got[k: k + len(a)] ** 2).sum())
    print(f"recorded from {start:.2f} s of the clip; the speech {1000 * lag:+.0f} ms off the frames, r = {r:.2f}")
    assert r > 0.9 and abs(lag) <= 0.04, f"the recorded speech is not the microphone's, in sync (r {r:.2f})"
    assert any(HARVARD[0] in line for line in said)
