"""The lip expert's clip scores (``engine.metrics.expert_crops`` / ``expert_sync``) and the user command
``tools/sync_score.py``: the offset sign convention with a fake expert whose embeddings peak where audio and
video line up, the batching against a direct per-window loop with a random ``SyncNetColor``, and the tool on
the real GRID clip grid_bbaf2n.mpg of ../shared/data/video (random expert) and on bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import data_file

from engine.audio import mel_window, melspectrogram
from engine.checkpoints import atomic_save
from engine.face import crop, crop_box, track_landmarks
from engine.metrics import expert_crops, expert_sync
from engine.models.syncnet import SyncNetColor, lower_halves

SAMPLES = 640  # 16 kHz samples per 25 fps frame


def write_random_expert(path):
    """A random width-0.25 expert saved as ``python -m train.syncnet`` does."""
    torch.manual_seed(0)
    model = SyncNetColor(bgr=True, width=0.25)
    atomic_save({"state_dict": model.state_dict(), "global_step": 0, "global_epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def random_expert(tmp_path_factory):
    return write_random_expert(tmp_path_factory.mktemp("expert") / "lipsync_expert.pth")


class EnergyExpert(torch.nn.Module):
    """Stands for the expert: the audio embedding is the mean mel level of the 5 video frames a window
    spans (3.2 mel columns each), the face embedding the mean intensity of the 5 frames, both centred and
    L2-normalised: their cosine is the correlation of the two 5-frame patterns, highest where they line up."""

    def forward(self, mels, faces):
        level = mels[:, 0].mean(1)  # [N, 16]
        audio = torch.stack([level[:, round(3.2 * k): round(3.2 * (k + 1))].mean(1) for k in range(5)], 1)
        video = faces.unflatten(1, (5, 3)).mean((2, 3, 4))
        audio, video = audio - audio.mean(1, keepdim=True), video - video.mean(1, keepdim=True)
        return F.normalize(audio, dim=1), F.normalize(video, dim=1)


@pytest.fixture(scope="module")
def pattern_clip():
    """60 frames whose brightness follows a random on/off pattern, and noise loud on the same frames."""
    rng = np.random.default_rng(0)
    on = rng.integers(0, 2, 60).astype(bool)
    crops = np.broadcast_to(np.where(on, 200, 50).astype(np.uint8)[:, None, None, None], (60, 96, 96, 3)).copy()
    wav = (rng.standard_normal(60 * SAMPLES) * np.repeat(np.where(on, 0.3, 0.001), SAMPLES)).astype(np.float32)
    return crops, wav


def shift_audio(wav: np.ndarray, frames: int) -> np.ndarray:
    """``wav`` delayed by ``frames`` frames (silence in front; negative: advanced), same length."""
    n = abs(frames) * SAMPLES
    pad = np.zeros(n, np.float32)
    return np.concatenate([pad, wav])[: len(wav)] if frames >= 0 else np.concatenate([wav[n:], pad])


@pytest.mark.parametrize("delay", [0, 3, -4, 7])
def test_offset_sign_convention(pattern_clip, delay):
    """Audio delayed by N frames (late) gives offset +N; advanced (early) gives -N."""
    crops, wav = pattern_clip
    result = expert_sync(EnergyExpert(), crops, shift_audio(wav, delay), max_offset=8)
    assert result["offset"] == delay
    curve = np.array(result["curve"])
    assert curve.shape == (17,) and result["windows"] == 56
    assert result["confidence"] == pytest.approx(curve[8])
    assert result["offset_confidence"] == pytest.approx(curve.max() - np.median(curve))
    assert curve[8 + delay] > 0.5 and result["offset_confidence"] > 0.4
    if delay:
        assert result["confidence"] < 0.3


def test_windows_with_a_missing_face_are_dropped(pattern_clip):
    crops, wav = pattern_clip
    valid = np.ones(60, bool)
    valid[10] = False  # windows starting at 6..10 hold frame 10
    assert expert_sync(EnergyExpert(), crops, wav, max_offset=3, valid=valid)["windows"] == 56 - 5
    strided = expert_sync(EnergyExpert(), crops, wav, max_offset=3, valid=valid, stride=4)
    assert strided["windows"] == 14 - 1  # starts 0, 4, ..., 52: only the one at 8 holds frame 10
    valid[::4] = False
    with pytest.raises(ValueError, match="no window of 5 consecutive frames with a face"):
        expert_sync(EnergyExpert(), crops, wav, valid=valid)
    with pytest.raises(ValueError, match="valid"):
        expert_sync(EnergyExpert(), crops, wav, valid=valid[:10])


def test_expert_sync_matches_a_direct_loop(random_expert, one_thread):
    """The batched, de-duplicated embeddings give the cosines of scoring every (window, shift) pair alone."""
    expert = SyncNetColor.from_checkpoint(random_expert)
    assert expert.width == 0.25
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (9, 96, 96, 3), dtype=np.uint8)
    wav = (rng.standard_normal(9 * SAMPLES) * 0.1).astype(np.float32)
    result = expert_sync(expert, crops, wav, max_offset=2, batch_size=3)
    mel = melspectrogram(wav)
    cos = np.zeros((5, 5))
    with torch.no_grad():
        for t in range(5):
            faces = lower_halves(torch.from_numpy(crops[t: t + 5]).permute(0, 3, 1, 2).float() / 255)
            for j, s in enumerate(range(-2, 3)):
                a, v = expert(torch.from_numpy(mel_window(mel, (t + s) / 25, 0.0))[None, None], faces[None])
                cos[t, j] = float((a * v).sum())
    assert result["windows"] == 5
    np.testing.assert_allclose(result["curve"], cos.mean(0), atol=1e-5)


def test_lower_halves():
    faces = torch.rand(2, 5, 3, 96, 96)
    out = lower_halves(faces)
    assert out.shape == (2, 15, 48, 96)
    assert torch.equal(out[1, 3:6], faces[1, 1, :, 48:]) and torch.equal(lower_halves(faces[0]), out[0])
    assert lower_halves(np.random.rand(5, 3, 128, 128).astype(np.float32)).shape == (15, 48, 96)


def test_expert_crops_on_a_real_clip(grid_frames):
    frames, _ = grid_frames
    landmarks = track_landmarks(frames[:12])
    landmarks[4] = np.nan
    crops, valid = expert_crops(frames[:12], landmarks)
    assert crops.shape == (12, 96, 96, 3) and crops.dtype == np.uint8
    assert valid.tolist() == [True] * 4 + [False] + [True] * 7 and not crops[4].any()
    assert np.array_equal(crops[7], crop(frames[7], crop_box(landmarks[7], "square"), 96))


# ---------------------------------------------------------------------------
# tools/sync_score.py


def run_tool(capsys, *argv):
    from tools.sync_score import main

    status = main([*map(str, argv), "-q"])
    out, err = capsys.readouterr()
    return status, out, err


def test_tool_scores_a_real_clip(random_expert, capsys, one_thread):
    video = data_file("video/grid_bbaf2n.mpg")
    status, out, err = run_tool(capsys, video, "--expert", random_expert)
    assert status == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["sync", "best", "offset"]
    confidence = float(lines[0].split()[2])
    assert -1 <= confidence <= 1 and "71 windows" in lines[0] and "75/75 frames with a face" in lines[0]
    frames = int(lines[1].split()[2])
    assert abs(frames) <= 15 and f"({frames * 40:+d} ms" in lines[1]
    assert float(lines[2].split()[2]) >= 0
    # the same speech given separately: the same numbers
    status, again, _ = run_tool(capsys, video, "--audio", video, "--expert", random_expert, "--max-offset", "15")
    assert status == 0 and again == out


def silent_video(path, frames: int = 10):
    """A short mp4 with a video stream of grey frames and no audio stream (PyAV)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_tool_bad_inputs(random_expert, small_checkpoint, tmp_path, capsys, monkeypatch):
    import tools.sync_score as sync_score

    video = data_file("video/grid_bbaf2n.mpg")
    silent = silent_video(tmp_path / "silent.mp4")
    junk = tmp_path / "junk.pth"
    junk.write_text("this is not a checkpoint\n" * 40)
    cases = [
        ((tmp_path / "missing.mp4", "--expert", random_expert), "no such file"),
        ((video, "--audio", tmp_path / "missing.wav", "--expert", random_expert), "no such file"),
        ((silent, "--expert", random_expert), "has no audio stream (give the speech with --audio WAV)"),
        ((silent, "--audio", video, "--expert", random_expert), "no face found in any of its 10 frames"),
        ((data_file("audio/cmuarctic_a0007.wav"), "--expert", random_expert), "has no video stream"),
        ((video, "--expert", small_checkpoint), "expected a lip-sync expert (SyncNet_color, python -m train.syncnet), "
                                                "found a dubcam generator"),
        ((video, "--expert", junk), "not a readable PyTorch checkpoint"),
        ((video, "--expert", tmp_path / "none.pth"), "no such checkpoint"),
    ]
    monkeypatch.setattr(sync_score, "BUNDLED_EXPERT", tmp_path / "assets" / "lip_expert.pth")
    cases.append(((video,), "no bundled lip expert at"))
    for argv, message in cases:
        status, out, err = run_tool(capsys, *argv)
        assert status == 2 and out == "", (argv, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("sync_score: error: ") and message in err, (argv, err)


def test_tool_help_says_what_the_numbers_are(capsys):
    from tools.sync_score import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("sync confidence", "best offset", "offset confidence", "audio is LATE", "GRID and web clips",
                   "NOT comparable with the LSE-C / LSE-D of papers"):
        assert phrase in text
