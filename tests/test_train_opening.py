"""train.opening (the mouth-opening regressor) and the opening losses of train.run, on real GRID clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.checkpoints import safe_load
from engine.models.opening import load_opening_net
from train.opening import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def opening_checkpoint(grid_train_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("opening") / "opening.pth"
    assert main(["--data", str(grid_train_data), "--out", str(out), "--minutes", "0.05", "--width", "0.25",
                 "--threads", "1"]) == 0
    return out


def test_the_regressor_trains_on_landmark_labels_and_loads_back(opening_checkpoint):
    net = load_opening_net(opening_checkpoint)
    meta = safe_load(opening_checkpoint)["meta"]
    assert meta["width"] == 0.25 and meta["steps"] > 0 and np.isfinite(meta["val"]["r2"])
    faces = torch.rand(4, 3, 96, 96)
    out = net(faces)
    assert out.shape == (4,) and not net.training
    faces2 = faces.clone()
    faces2[:, :, :48] = 0  # the upper half is not looked at
    assert torch.equal(net(faces2), out)


def test_a_file_of_another_kind_is_a_clear_error(tmp_path, grid_train_data):
    torch.save({"format": "dubcam", "state_dict": {}}, tmp_path / "g.pt")
    with pytest.raises(ValueError, match="not a mouth-opening regressor"):
        load_opening_net(tmp_path / "g.pt")
    assert main(["--data", str(tmp_path), "--out", str(tmp_path / "x.pth"), "--minutes", "0.01"]) == 2


def test_opening_loss_is_zero_on_real_frames_and_pulls_a_still_mouth(opening_checkpoint, grid_train_data):
    from train.data import load_clips
    from train.losses import OpeningLoss

    loss = OpeningLoss(opening_checkpoint, k=5)
    clip = load_clips(grid_train_data, "train")[0]
    real = torch.from_numpy(clip.faces[20:30]).permute(0, 3, 1, 2).float() / 255
    shape, amp = loss(real, real)
    assert shape.item() == 0 and amp.item() == 0
    still = real[[0] * 10].clone().requires_grad_(True)  # one frame held: the mouth does not move
    shape, amp = loss(still, real)
    assert amp.item() > 0  # the real mouth moves over the 5 frames, the held one does not
    (shape + amp).backward()
    assert still.grad is not None and still.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())


def test_train_run_with_opening_losses_starting_from_another_run(grid_train_data, tmp_path, opening_checkpoint):
    from test_train_run import _scalars, tiny
    from train.run import train

    first = tiny(grid_train_data, tmp_path / "a", **{"sync.kind": "none"})
    train(first)
    cfg = tiny(grid_train_data, tmp_path / "b", **{
        "init": tmp_path / "a" / "last.pt", "loss.opening": 1.0, "loss.opening_amplitude": 1.0,
        "weights.opening": opening_checkpoint, "lr": 1e-12, "steps": 1, "sync.kind": "none"})
    gen = train(cfg)
    start = safe_load(tmp_path / "a" / "last.pt")["generator"]
    for key, value in gen.named_parameters():  # started from run a (a step at lr 1e-12 moves no weight)
        assert torch.allclose(value.float(), start[key].float(), atol=1e-6), key
    assert {"loss/opening", "loss/opening_amp"} <= _scalars(tmp_path / "b")
    bad = tiny(grid_train_data, tmp_path / "c", **{"init": opening_checkpoint, "sync.kind": "none"})
    with pytest.raises(ValueError, match="expected a generator.pt or a train.run last.pt"):
        train(bad)


def test_missing_regressor_is_a_clear_error(grid_train_data, tmp_path):
    from test_train_run import tiny
    from train.run import train

    cfg = tiny(grid_train_data, tmp_path, **{"loss.opening": 1.0, "weights.opening": tmp_path / "none.pth",
                                             "sync.kind": "none"})
    with pytest.raises(FileNotFoundError, match="python -m train.opening"):
        train(cfg)
