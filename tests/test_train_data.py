"""train.preprocess and train.data on real GRID clips: the clip files (faces, mouth-ROI transforms and
regions), Wav2Lip's preprocessed layout, LRS2 split files, samples with the sync-loss context."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import scipy.io.wavfile
import torch
from conftest import data_file

from engine.audio import load_audio
from engine.face import MOUTH_POINTS, apply_affines
from engine.media import read_frames_at
from train.data import StepBatches, WindowDataset, collate, load_clips, pixel_boxes
from train.preprocess import main as preprocess_main
from train.preprocess import roi_footprints

pytestmark = pytest.mark.usefixtures("one_thread")


def test_preprocess_writes_faces_roi_transforms_and_splits(grid_train_data):
    rows = list(csv.DictReader(open(grid_train_data / "manifest.csv")))
    assert [(r["clip"], r["split"]) for r in rows] == [
        ("s1__bbas1s", "train"), ("s1__bbbf6n", "train"), ("s1val__bbbs4n", "val")]
    z = np.load(grid_train_data / "clips" / "s1__bbas1s.npz")
    T = len(z["valid"])
    assert T == 75 and z["valid"].all() and z["faces"].shape == (T, 96, 96, 3)
    # The stored transform is engine.face's: it puts each frame's mouth centre at the ROI's centre.
    mouth = apply_affines(z["roi_affine"].astype(np.float64), z["landmarks"][:, MOUTH_POINTS].astype(np.float64))
    np.testing.assert_allclose(mouth.mean(axis=1), 48.0, atol=0.6)  # corner = round(centre) - 48
    # The regions hold the source pixels under every ROI, cut from the real frames.
    frames = [f for f, _ in read_frames_at(data_file("train/grid/s1/bbas1s.mpg"))]
    h, w = z["roi_frames"].shape[1:3]
    for i in (0, 40, 74):
        x, y = z["roi_origin"][i]
        np.testing.assert_array_equal(z["roi_frames"][i], frames[i][y: y + h, x: x + w])
    foot = roi_footprints(z["roi_affine"])
    assert (foot[:, :2] >= z["roi_origin"]).all() and (foot[:, 2:] <= z["roi_origin"] + [w, h]).all()
    assert (z["frame_size"] == [360, 288]).all()


def test_wav2lip_layout_and_lrs2_split_files(tmp_path):
    """Wav2Lip's preprocessed LRS2 layout (<spk>/<id>/<n>.jpg face crops + audio.wav, a frame number
    missing where S3FD found no face) is read, and LRS2-style split files assign the split."""
    video = data_file("train/grid/s1/bbbf6n.mpg")
    clip = tmp_path / "w2l" / "5535415699068794046" / "00001"
    clip.mkdir(parents=True)
    for n, (frame, _) in enumerate(read_frames_at(video)):
        if n == 20:
            break
        if n != 7:  # no detection in frame 7
            cv2.imwrite(str(clip / f"{n}.jpg"), cv2.cvtColor(frame[60:280, 60:300], cv2.COLOR_RGB2BGR))
    audio = load_audio(video)[: 16000 * 20 // 25]
    scipy.io.wavfile.write(clip / "audio.wav", 16000, (audio * 32767).astype(np.int16))
    splits = tmp_path / "filelists"
    splits.mkdir()
    (splits / "val.txt").write_text("5535415699068794046/00001\n")
    (splits / "train.txt").write_text("6330311066473698535/00011\n")
    out = tmp_path / "data"
    assert preprocess_main(["--input", str(tmp_path / "w2l"), "--output", str(out), "--splits", str(splits),
                            "--workers", "1"]) == 0
    (row,) = csv.DictReader(open(out / "manifest.csv"))
    assert (row["clip"], row["speaker"], row["split"], row["frames"]) == (
        "5535415699068794046__00001", "5535415699068794046", "val", "20")
    z = np.load(out / "clips" / f"{row['clip']}.npz")
    assert not z["valid"][7] and z["valid"].sum() >= 18
    assert (z["frame_size"] == [240, 220]).all() and len(z["audio"]) == 12800


def test_samples_with_sync_context(grid_train_data):
    clips = load_clips(grid_train_data, "train")
    clip = clips[0]
    ds = WindowDataset([clip], k=5, seed=3, context=20, sync_mel=True)
    s = ds[11]
    assert s["faces"].shape == (5, 6, 96, 96) and s["mels"].shape == (5, 1, 80, 16)
    assert s["sync_mel"].shape == (1, 80, 16)
    assert s["ctx_frames"].dtype == torch.uint8 and s["ctx_frames"].shape[0] == 20
    assert s["ctx_audio"].shape == (20, 104) and s["ctx_valid"].all()
    # The k generated frames sit at ctx_start in the context: same pixels, boxes and audio features.
    first = (s["target"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    t = int(np.flatnonzero((clip.faces == first).all(axis=(1, 2, 3)))[0])
    c0 = t - int(s["ctx_start"])
    np.testing.assert_array_equal(s["ctx_frames"].numpy(), clip.roi["roi_frames"][c0: c0 + 20])
    np.testing.assert_array_equal(s["ctx_boxes"][int(s["ctx_start"])].numpy(), pixel_boxes(clip.boxes[t: t + 1])[0])
    np.testing.assert_array_equal(s["ctx_audio"].numpy(), clip.avhubert_audio[c0: c0 + 20])
    # Same index, same sample (resumed runs see the same data); a context longer than the clip is padded.
    assert torch.equal(ds[11]["ctx_frames"], s["ctx_frames"])
    long = WindowDataset(clips, k=5, context=80, sync_mel=True)[0]
    assert long["ctx_valid"].sum() == 75 and not long["ctx_valid"][75:].any()
    # Batches: per-frame keys flattened, regions of different sizes zero-padded.
    small = dict(s, ctx_frames=s["ctx_frames"][:, :80, :70])
    batch = collate([s, small])
    assert batch["faces"].shape == (10, 6, 96, 96) and batch["ctx_start"].shape == (2,)
    assert batch["ctx_frames"].shape == (2, 20, 85, 85, 3) and not batch["ctx_frames"][1, :, 80:].any()


def test_context_needs_roi_data(grid_train_data):
    clips = load_clips(grid_train_data, "train")
    clips[0].roi = {}
    with pytest.raises(ValueError, match="re-run python -m train.preprocess"):
        WindowDataset(clips, context=10)


def test_step_batches_split_ranks_and_resume():
    whole = list(zip(range(3), StepBatches(0, 2, rank=0, world_size=2)))
    other = list(zip(range(3), StepBatches(0, 2, rank=1, world_size=2)))
    assert [b for _, b in whole] == [[0, 1], [4, 5], [8, 9]] and [b for _, b in other] == [[2, 3], [6, 7], [10, 11]]
    assert next(iter(StepBatches(2, 2, rank=0, world_size=2))) == [8, 9]
    assert list(StepBatches(0, 3, stop=2)) == [[0, 1, 2], [3, 4, 5]]


def test_clip_files_read_on_demand_give_the_same_samples(grid_train_data):
    eager = WindowDataset(load_clips(grid_train_data, "train"), k=5, context=10, sync_mel=True)
    lazy = WindowDataset(load_clips(grid_train_data, "train", in_memory=False), k=5, context=10, sync_mel=True)
    for i in (0, 7):
        a, b = eager[i], lazy[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_augmentation_keeps_audio_and_video_consistent(grid_train_data):
    """One draw per sample: a flip mirrors target, pose and identity alike, colour jitter changes all three
    the same way, the gain shifts every mel window (0.08 per dB, clipped, floor kept); nothing moves in time,
    and a (seed, index) pair still gives one sample."""
    from train.augment import MEL_PER_DB, Augment

    clips = load_clips(grid_train_data, "train")
    plain = WindowDataset(clips, k=5, seed=4, sync_mel=True)
    flip_only = WindowDataset(clips, k=5, seed=4, sync_mel=True, augment=Augment(1.0, 0, 0, 0, 0))
    a, b = plain[7], flip_only[7]
    torch.testing.assert_close(b["target"], a["target"].flip(-1))
    torch.testing.assert_close(b["faces"], a["faces"].flip(-1))
    torch.testing.assert_close(b["mels"], a["mels"])
    gain = WindowDataset(clips, k=5, seed=4, sync_mel=True, augment=Augment(0, 0, 0, 0, 6.0))
    c = gain[7]
    unclipped = (a["mels"] > -4) & (a["mels"] < 4 - 6 * MEL_PER_DB) & (c["mels"] > -4)
    shift = (c["mels"] - a["mels"])[unclipped]
    assert shift.abs().max() <= 6 * MEL_PER_DB + 1e-6 and shift.std() < 1e-5  # one gain for every bin
    assert torch.equal(c["mels"][a["mels"] <= -4], a["mels"][a["mels"] <= -4])
    torch.testing.assert_close(c["target"], a["target"])
    full = WindowDataset(clips, k=5, seed=4, augment=Augment())
    torch.testing.assert_close(full[3]["faces"], full[3]["faces"])
    d = full[3]
    assert d["faces"].min() >= 0 and d["faces"].max() <= 1
    with pytest.raises(ValueError, match="sync context"):
        WindowDataset(clips, k=5, context=10, augment=Augment())


def test_held_identity_is_one_frame_for_the_whole_window(grid_train_data):
    """identity="held": one reference frame for the k targets, as the pipeline holds one; "window": k
    consecutive frames of another window (Wav2Lip's sampling)."""
    clips = load_clips(grid_train_data, "train")
    held = WindowDataset(clips, k=5, seed=3, identity="held")[0]["faces"][:, 3:]
    assert all(torch.equal(held[0], held[i]) for i in range(5))
    window = WindowDataset(clips, k=5, seed=3)[0]["faces"][:, 3:]
    assert not all(torch.equal(window[0], window[i]) for i in range(5))
    with pytest.raises(ValueError, match="identity"):
        WindowDataset(clips, k=5, identity="random")
