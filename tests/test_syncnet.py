"""syncnet_python's S (spec §4) and Wav2Lip's SyncNet_color (spec §3.3): layer
parity with the spec written out, published key layouts, checkpoint loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import lip_expert_file, randomize, syncnet_file

from engine.checkpoints import CheckpointError
from engine.models.syncnet import SyncNet, SyncNetColor


def bn(sd, p, x):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = sd[p + ".weight"].view(shape) / torch.sqrt(sd[p + ".running_var"].view(shape) + 1e-5)
    return (x - sd[p + ".running_mean"].view(shape)) * scale + sd[p + ".bias"].view(shape)


# ---------------------------------------------------------------------------
# syncnet_python S, spec §4: conv + BN + ReLU units at these Sequential indices.


def reference_syncnet(sd, mfcc, frames_bgr):
    def unit(x, seq, i, conv, **kw):
        return F.relu(bn(sd, f"{seq}.{i + 1}", conv(x, sd[f"{seq}.{i}.weight"], sd[f"{seq}.{i}.bias"], **kw)))

    def head(x, seq):
        x = F.linear(x.flatten(1), sd[f"{seq}.0.weight"], sd[f"{seq}.0.bias"])
        x = F.relu(bn(sd, f"{seq}.1", x))
        return F.linear(x, sd[f"{seq}.3.weight"], sd[f"{seq}.3.bias"])

    a = unit(mfcc, "netcnnaud", 0, F.conv2d, padding=1)
    a = unit(a, "netcnnaud", 4, F.conv2d, padding=1)
    a = F.max_pool2d(a, 3, (1, 2))
    for i in (8, 11, 14):
        a = unit(a, "netcnnaud", i, F.conv2d, padding=1)
    a = unit(F.max_pool2d(a, 3, 2), "netcnnaud", 18, F.conv2d)

    v = unit(frames_bgr, "netcnnlip", 0, F.conv3d, stride=(1, 2, 2))
    v = F.max_pool3d(v, (1, 3, 3), (1, 2, 2))
    v = unit(v, "netcnnlip", 4, F.conv3d, stride=(1, 2, 2), padding=(0, 1, 1))
    v = F.max_pool3d(v, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    for i in (8, 11, 14):
        v = unit(v, "netcnnlip", i, F.conv3d, padding=(0, 1, 1))
    v = unit(F.max_pool3d(v, (1, 3, 3), (1, 2, 2)), "netcnnlip", 18, F.conv3d)
    return head(a, "netfcaud"), head(v, "netfclip")


def test_syncnet_matches_spec_layers():
    model = randomize(SyncNet())
    gen = torch.Generator().manual_seed(0)
    mfcc = torch.randn(2, 1, 13, 20, generator=gen) * 10
    frames_rgb = torch.rand(1, 3, 5, 224, 224, generator=gen) * 255
    with torch.no_grad():
        aud, lip = model.forward_aud(mfcc), model.forward_lip(frames_rgb)
        ref_aud, ref_lip = reference_syncnet(model.state_dict(), mfcc, frames_rgb[:, [2, 1, 0]])
    assert aud.shape == (2, 1024) and lip.shape == (1, 1024)
    torch.testing.assert_close(aud, ref_aud, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lip, ref_lip, atol=1e-4, rtol=1e-4)


def test_syncnet_key_layout():
    with torch.device("meta"):
        sd = SyncNet().state_dict()
    convs = {0: (64, 1, 3, 3), 4: (192, 64, 3, 3), 8: (384, 192, 3, 3), 11: (256, 384, 3, 3),
             14: (256, 256, 3, 3), 18: (512, 256, 5, 4)}
    lips = {0: (96, 3, 5, 7, 7), 4: (256, 96, 1, 5, 5), 8: (256, 256, 1, 3, 3), 11: (256, 256, 1, 3, 3),
            14: (256, 256, 1, 3, 3), 18: (512, 256, 1, 6, 6)}
    for seq, table in (("netcnnaud", convs), ("netcnnlip", lips)):
        for i, shape in table.items():
            assert sd[f"{seq}.{i}.weight"].shape == shape
            assert sd[f"{seq}.{i + 1}.running_var"].shape == (shape[0],)
        assert {int(k.split(".")[1]) for k in sd if k.startswith(seq)} == {i + d for i in table for d in (0, 1)}
    for head in ("netfcaud", "netfclip"):
        assert sd[f"{head}.0.weight"].shape == (512, 512) and sd[f"{head}.3.weight"].shape == (1024, 512)


def test_syncnet_loads_raw_state_dict_without_num_batches_tracked(tmp_path):
    model = randomize(SyncNet(), seed=2)
    loaded = SyncNet.from_checkpoint(syncnet_file(model, tmp_path / "syncnet_v2.model"))
    assert not loaded.training
    mfcc = torch.randn(3, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(mfcc), model.forward_aud(mfcc))

    state = torch.load(tmp_path / "syncnet_v2.model")
    state["netcnnaud.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "other.model")
    with pytest.raises(CheckpointError, match="netcnnaud.99.weight"):
        SyncNet.from_checkpoint(tmp_path / "other.model")


# ---------------------------------------------------------------------------
# SyncNet_color, spec §3.3 tables: (cin, cout, kernel, stride, padding, residual) per block.


def res(c, n):
    return [(c, c, 3, 1, 1, True)] * n


FACE_ENCODER = [(15, 32, 7, 1, 3, False), (32, 64, 5, (1, 2), 1, False), *res(64, 2),
                (64, 128, 3, 2, 1, False), *res(128, 3), (128, 256, 3, 2, 1, False), *res(256, 2),
                (256, 512, 3, 2, 1, False), *res(512, 2), (512, 512, 3, 2, 1, False),
                (512, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)]
AUDIO_ENCODER = [(1, 32, 3, 1, 1, False), *res(32, 2), (32, 64, 3, (3, 1), 1, False), *res(64, 2),
                 (64, 128, 3, 3, 1, False), *res(128, 2), (128, 256, 3, (3, 2), 1, False), *res(256, 2),
                 (256, 512, 3, 1, 0, False), (512, 512, 1, 1, 0, False)]
FACE_SIZES = {0: (48, 96), 1: (46, 47), 4: (23, 24), 8: (12, 12), 11: (6, 6), 14: (3, 3), 15: (1, 1)}


def reference_encoder(sd, seq, table, x):
    for i, (cin, cout, k, stride, padding, residual) in enumerate(table):
        p = f"{seq}.{i}.conv_block."
        assert sd[p + "0.weight"].shape == (cout, cin, k, k)
        y = bn(sd, p + "1", F.conv2d(x, sd[p + "0.weight"], sd[p + "0.bias"], stride, padding))
        x = F.relu(y + x if residual else y)
    return F.normalize(x.flatten(1), dim=1)


def test_lip_expert_matches_spec_tables():
    model = randomize(SyncNetColor())
    sizes = {}
    for i in FACE_SIZES:
        model.face_encoder[i].register_forward_hook(lambda m, a, out, i=i: sizes.__setitem__(i, out.shape[-2:]))
    gen = torch.Generator().manual_seed(0)
    mels, faces = torch.randn(2, 1, 80, 16, generator=gen), torch.rand(2, 15, 48, 96, generator=gen)
    with torch.no_grad():
        audio, face = model(mels, faces)
    sd = model.state_dict()
    assert len(model.face_encoder) == 17 and len(model.audio_encoder) == 14
    assert audio.shape == face.shape == (2, 512)
    torch.testing.assert_close(audio, reference_encoder(sd, "audio_encoder", AUDIO_ENCODER, mels), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(face, reference_encoder(sd, "face_encoder", FACE_ENCODER, faces), atol=1e-5, rtol=1e-4)
    assert {i: tuple(s) for i, s in sizes.items()} == FACE_SIZES


def test_lip_expert_loads_wav2lip_checkpoint_and_flips_to_bgr(tmp_path):
    source = randomize(SyncNetColor(), seed=4)
    expert = SyncNetColor.from_checkpoint(lip_expert_file(source, tmp_path / "lipsync_expert.pth"))
    assert expert.bgr and not expert.training
    mels, faces_rgb = torch.randn(1, 1, 80, 16), torch.rand(1, 15, 48, 96)
    faces_bgr = faces_rgb.view(1, 5, 3, 48, 96)[:, :, [2, 1, 0]].reshape(1, 15, 48, 96)
    with torch.no_grad():
        for ours, theirs in zip(expert(mels, faces_rgb), source(mels, faces_bgr)):
            assert torch.equal(ours, theirs)


def test_a_narrow_expert_loads_at_its_width(tmp_path):
    """train.syncnet --width 0.5 writes the published layout with fewer channels; from_checkpoint reads the
    width from the first convolution, and an unrelated state dict is refused with a message."""
    source = randomize(SyncNetColor(bgr=True, width=0.5), seed=5)
    expert = SyncNetColor.from_checkpoint(lip_expert_file(source, tmp_path / "narrow.pth", prefix=""))
    assert expert.width == 0.5
    mels, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96)
    with torch.no_grad():
        audio, face = expert(mels, faces)
        assert audio.shape == face.shape == (2, 256)
        for ours, theirs in zip((audio, face), source.eval()(mels, faces)):
            assert torch.equal(ours, theirs)
    thin = randomize(SyncNetColor(bgr=True, width=0.5, face_width=0.25), seed=6)
    loaded = SyncNetColor.from_checkpoint(lip_expert_file(thin, tmp_path / "thin.pth", prefix=""))
    assert (loaded.width, loaded.face_width) == (0.5, 0.25)
    with torch.no_grad():
        assert torch.equal(loaded(mels, faces)[1], thin.eval()(mels, faces)[1])
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a lip-sync expert"):
        SyncNetColor.from_checkpoint(tmp_path / "other.pth")


def test_train_expert_on_real_clips_reports_held_out_accuracy(grid_train_data, tmp_path):
    """python -m train.syncnet: a few steps on real GRID clips (augmented), validation on the held-out
    speaker with the pair accuracy and the offset search, TensorBoard curves, a loadable expert, and
    --resume continuing at the saved step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from train.syncnet import main

    args = ["--data", str(grid_train_data), "--out", str(tmp_path), "--width", "0.125", "--batch-size", "4",
            "--steps", "3", "--eval-every", "3", "--eval-batches", "2", "--threads", "1", "--objective", "multiway"]
    assert main(args) == 0
    best = torch.load(tmp_path / "lipsync_expert.pth", weights_only=True)
    assert best["global_step"] == 3 and 0 <= best["val"]["accuracy"] <= 1 and 0 <= best["val"]["auc"] <= 1
    assert 0 <= best["val"]["offset_accuracy"] <= 1 and best["val"]["windows"] > 0
    assert SyncNetColor.from_checkpoint(tmp_path / "lipsync_expert.pth").width == 0.125
    again = ["--data", str(grid_train_data), "--out", str(tmp_path), "--width", "0.125", "--batch-size", "4",
             "--steps", "4", "--eval-every", "4", "--eval-batches", "1", "--threads", "1", "--resume"]
    assert main(again) == 0
    assert torch.load(tmp_path / "last.pth", weights_only=True)["global_step"] == 4
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "val/loss", "val/accuracy", "val/offset_accuracy"} <= set(acc.Tags()["scalars"])


def test_multiway_loss_is_a_softmax_over_every_window_of_the_batch():
    """expert_loss's multi-way form: the class of sample b is its own offset-0 window among all B·C
    audio windows of the batch (cosines / temperature)."""
    from train.syncnet import MULTIWAY_TEMPERATURE, expert_loss

    model = randomize(SyncNetColor(width=0.125), seed=7).eval()
    b, c, target = 3, 4, 2
    batch = {"faces": torch.rand(b, 15, 48, 96), "mels": torch.randn(b, c, 1, 80, 16),
             "target": torch.full((b,), target)}
    with torch.no_grad():
        loss = expert_loss(model, batch)
        audio = model.audio_embedding(batch["mels"].flatten(0, 1))
        video = model.face_embedding(batch["faces"])
        logits = video @ audio.T / MULTIWAY_TEMPERATURE
        expected = -torch.stack([torch.log_softmax(logits[i], 0)[i * c + target] for i in range(b)]).mean()
    torch.testing.assert_close(loss, expected)
