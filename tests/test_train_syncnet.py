"""python -m train.syncnet: Wav2Lip's lip expert trained on the same preprocessed clips, written in
the published lipsync_expert.pth layout that the syncnet sync loss loads."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoints import safe_load
from engine.models.syncnet import SyncNetColor
from train.data import load_clips
from train.syncnet import SyncPairs, expert_loss, main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pairs_are_in_and_out_of_sync(grid_train_data):
    pairs = SyncPairs(load_clips(grid_train_data, "train"), seed=0)
    items = [pairs[i] for i in range(8)]
    assert {float(it["label"]) for it in items} == {0.0, 1.0}
    assert items[0]["faces"].shape == (15, 48, 96) and items[0]["mel"].shape == (1, 80, 16)


def test_expert_loss_decreases_on_a_fixed_batch(grid_train_data):
    torch.manual_seed(0)
    pairs = SyncPairs(load_clips(grid_train_data, "train"), seed=0)
    batch = {key: torch.stack([pairs[i][key] for i in range(4)]) for key in ("faces", "mel", "label")}
    model = SyncNetColor(bgr=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        loss = expert_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_cli_writes_a_wav2lip_lip_expert(grid_train_data, tmp_path):
    assert main(["--data", str(grid_train_data), "--out", str(tmp_path), "--steps", "2", "--batch-size", "2",
                 "--eval-every", "2", "--eval-batches", "1"]) == 0
    state = safe_load(tmp_path / "lipsync_expert.pth")
    assert {"state_dict", "optimizer", "global_step", "global_epoch"} <= set(state) and state["global_step"] == 2
    expert = SyncNetColor.from_checkpoint(tmp_path / "lipsync_expert.pth")
    assert expert.bgr  # trained behind the BGR flip, like the published file
    assert main(["--data", str(grid_train_data), "--out", str(tmp_path), "--steps", "3", "--batch-size", "2",
                 "--eval-every", "1", "--eval-batches", "1", "--resume"]) == 0
    assert safe_load(tmp_path / "last.pth")["global_step"] == 3
