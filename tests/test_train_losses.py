"""train.losses and train.roi: VGG-19 perceptual loss, the four sync losses on real clips with random
weights in the published file layouts, and the differentiable paste-back + mouth ROI against the
metrics' own (non-differentiable) path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import data_file

from engine.checkpoints import CheckpointError
from engine.compose import Compositor, lower_face_mask
from engine.face import Box, mouth_rois
from engine.media import read_frames_at
from engine.models.generator import Generator, GeneratorConfig
from engine.models.syncnet import SyncNetColor
from train.data import WindowDataset, collate, context_arrays, load_clip, load_clips
from train.losses import (PERCEPTUAL_LAYERS, SYNC_KINDS, SYNC_LOG_FLOOR, VGG19, AVHubertSyncLoss, build_perceptual_loss, log_cosine_loss,
                          MOUTH_VIEW_SCALE, build_sync_loss, l1_loss, mouth_view)
from train.preprocess import cut_region
from train.roi import avhubert_video, context_rois

# torchvision's vgg19().features: the convolutions' indices and channel counts.
TORCHVISION_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
                     14: (256, 256), 16: (256, 256), 19: (256, 512), 21: (512, 512), 23: (512, 512),
                     25: (512, 512), 28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512)}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vgg19_has_torchvision_layout_and_johnson_layers(vgg19_weights, tmp_path):
    shapes = {k: tuple(v.shape) for k, v in VGG19().state_dict().items()}
    expected = {}
    for i, (cin, cout) in TORCHVISION_CONVS.items():
        expected[f"features.{i}.weight"], expected[f"features.{i}.bias"] = (cout, cin, 3, 3), (cout,)
    assert shapes == expected
    # relu1_2, relu2_2, relu3_4, relu4_4, relu5_4: the last ReLU of each block.
    vgg = VGG19.from_file(vgg19_weights)  # the classifier.* keys of the file are ignored
    assert not vgg.training and list(PERCEPTUAL_LAYERS.values()) == [3, 8, 17, 26, 35]
    assert all(isinstance(vgg.features[i], torch.nn.ReLU) and isinstance(vgg.features[i + 1], torch.nn.MaxPool2d)
               for i in PERCEPTUAL_LAYERS.values())
    with torch.no_grad():
        outs = vgg(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    state = torch.load(vgg19_weights)
    del state["features.34.bias"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="features.34.bias"):
        VGG19.from_file(tmp_path / "broken.pth")


def test_perceptual_loss_needs_weights_and_is_frozen(vgg19_weights):
    with pytest.raises(FileNotFoundError, match=r"perceptual.*vgg19-dcbb9e9d\.pth.*weights\.vgg"):
        build_perceptual_loss({})
    loss = build_perceptual_loss({"vgg": vgg19_weights})
    loss.train()
    assert not loss.vgg.training and not any(p.requires_grad for p in loss.parameters())
    real = torch.rand(2, 3, 32, 32)
    fake = (real + 0.1 * torch.randn_like(real)).clamp(0, 1).requires_grad_(True)
    assert loss(real, real).item() == 0.0
    value = loss(fake, real)
    value.backward()
    assert value.item() > 0 and fake.grad.abs().sum() > 0


def test_paste_back_and_mouth_roi_match_the_metrics_path(grid_train_data):
    """Generated faces pasted by train.roi and ROIs taken by grid_sample equal Compositor.paste
    followed by engine.face.mouth_rois (what a metric sees in a finished video), on a real clip."""
    clip = load_clip(grid_train_data / "clips" / "s1__bbas1s.npz")
    frames = [f for f, _ in read_frames_at(data_file("train/grid/s1/bbas1s.mpg"))]
    T = len(frames)
    rng = np.random.default_rng(0)
    generated = np.clip(clip.faces[::-1] / 255.0 + rng.normal(0, 0.05, clip.faces.shape), 0, 1).astype(np.float32)
    compositor = Compositor(96, colour_match=False)
    pasted = [compositor.paste(f, Box(*b), g) for f, b, g in zip(frames, clip.boxes.astype(np.float64), generated)]
    affines = clip.roi["roi_affine"].astype(np.float64)
    reference = mouth_rois(pasted, affines) * 0.165  # grey levels in [0, 1] (the normalisation's std)
    batch = collate([context_arrays(clip, 0, T, T)])
    faces = torch.from_numpy(generated.transpose(0, 3, 1, 2))[None].requires_grad_(True)
    real, fake = context_rois(batch, faces, torch.from_numpy(lower_face_mask(96)))
    ours = avhubert_video(fake)[0, 0].detach().numpy() * 0.165
    diff = np.abs(ours - reference)
    # The reference rounds twice to uint8 (the pasted frame, its grey conversion): at most 1 grey level.
    assert diff.mean() < 1e-3 and diff.max() < 1 / 255
    fake.sum().backward()
    assert faces.grad.abs().sum() > 0
    # Without rounding (grey frames: cv2's grey conversion is exact), the ROI geometry agrees to 1e-4.
    grey = [np.repeat(f.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2) for f in frames]
    h, w = clip.roi["roi_frames"].shape[1:3]
    batch["ctx_frames"] = torch.from_numpy(np.stack(
        [cut_region(f, int(x), int(y), w, h) for f, (x, y) in zip(grey, clip.roi["roi_origin"])]))[None]
    real, _ = context_rois(batch, None, torch.from_numpy(lower_face_mask(96)))
    diff = np.abs(avhubert_video(real)[0, 0].numpy() - mouth_rois(grey, affines)) * 0.165
    assert diff.max() < 1e-4


def test_mouth_view_cuts_the_lips_of_a_real_clip_where_they_are(grid_train_data):
    """The mouth crops for disc_region: mouth, with a real clip's lip points: a bright dot drawn on a
    face at a lip point comes out where the crop's geometry puts it (centre of the outer lip box at
    the crop centre, the lip width 1/MOUTH_VIEW_SCALE of the side), gradients reach the faces, and a
    wrong number of lip shapes is refused."""
    from train.data import window_lips

    clip = load_clip(grid_train_data / "clips" / "s1__bbas1s.npz")
    lips = torch.from_numpy(window_lips(clip, 10, 4))  # [4, 33, 2] face sides
    S, size = 96, 64
    faces = torch.zeros(4, 3, S, S)
    for n in range(4):  # a 2×2-pixel dot at the subject's right mouth corner (point 0), another at point 3
        for i in (0, 3):
            x, y = (lips[n, i] * S).round().long().tolist()
            faces[n, :, y - 1: y + 1, x - 1: x + 1] = 1.0
    faces.requires_grad_(True)
    view = mouth_view(faces, lips[None], size)  # [1, 4, 33, 2] rows flatten to the 4 faces
    assert view.shape == (4, 3, size, size)
    outer = lips[:, :12]
    centre, width = (outer.amax(1) + outer.amin(1)) / 2, outer[..., 0].amax(1) - outer[..., 0].amin(1)
    for n in range(4):
        for i in (0, 3):
            dot = (lips[n, i] * S).round() / S  # the dot's centre in face sides (its pixels' shared corner)
            expect = 0.5 + (dot - centre[n]) / (width[n] * MOUTH_VIEW_SCALE)  # in crop sides
            ex, ey = (expect * size).tolist()
            patch = view[n, 0].detach()
            j0, i0 = int(ex) - 3, int(ey) - 3
            near = patch[i0: i0 + 7, j0: j0 + 7]
            assert near.max() > 0.5, f"no dot near ({ex:.1f}, {ey:.1f}) in face {n}"
            w = near.clamp(min=0)
            yy, xx = torch.meshgrid(torch.arange(7.0) + i0 + 0.5, torch.arange(7.0) + j0 + 0.5, indexing="ij")
            assert abs(float((w * xx).sum() / w.sum()) - ex) < 0.6 and abs(float((w * yy).sum() / w.sum()) - ey) < 0.6
    assert 0.2 < float(width.mean()) * MOUTH_VIEW_SCALE < 0.8  # a mouth crop, not the whole face
    view.sum().backward()
    assert faces.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="3 lip shapes for 4 faces"):
        mouth_view(faces, lips[:3])


def _weights(avhubert_checkpoint, lip_expert_checkpoint):
    return {"avhubert": avhubert_checkpoint, "syncnet": lip_expert_checkpoint}


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_sync_loss_trains_the_generator(kind, grid_train_data, avhubert_checkpoint, lip_expert_checkpoint):
    """Every variant on a fixed batch of real frames: the loss network is frozen and stays in eval mode,
    gradients reach every generator parameter through it, and a few Adam steps lower the loss."""
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(size=96, width=0.125))
    sync = build_sync_loss(kind, _weights(avhubert_checkpoint, lip_expert_checkpoint), k=5, size=96)
    data = WindowDataset(load_clips(grid_train_data, "train"), k=5, seed=1,
                         context=10 if kind.startswith("avhubert") else 0, sync_mel=kind == "syncnet")
    batch = collate([data[0]])
    if kind == "none":
        assert sync is None
        sync_term = lambda fake: torch.zeros(())  # noqa: E731
    else:
        sync.train()
        net = sync.avhubert if kind.startswith("avhubert") else sync.expert
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        sync_term = lambda fake: sync(fake, batch)[0]  # noqa: E731
        grads = torch.autograd.grad(sync_term(gen(batch["faces"], batch["mels"])), list(gen.parameters()),
                                    allow_unused=True)
        reached = [g is not None and bool(g.abs().sum() > 0) for g in grads]
        assert all(reached), f"{reached.count(False)} generator tensors get no gradient from the {kind} loss"
        assert all(p.grad is None for p in net.parameters())
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    totals = []
    for _ in range(4):
        fake = gen(batch["faces"], batch["mels"])
        total = 10 * l1_loss(fake, batch["target"]) + 0.5 * sync_term(fake)
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < totals[0], totals


def test_avhubert_sync_loss_is_eq1_at_the_generated_steps(grid_train_data, avhubert_checkpoint):
    """−log cos(audio-only, video-only) at the k generated steps of the context, nowhere else."""
    sync = build_sync_loss("avhubert", {"avhubert": avhubert_checkpoint}, k=5, size=96)
    assert isinstance(sync, AVHubertSyncLoss)
    clips = load_clips(grid_train_data, "train")
    batch = collate([WindowDataset(clips, k=5, seed=2, context=12)[i] for i in range(2)])
    fake = batch["target"]
    loss, stats = sync(fake, batch)
    real, pasted = context_rois(batch, fake.unflatten(0, (2, 5)), sync.mask)
    with torch.no_grad():
        a = sync.avhubert.extract_features(audio=batch["ctx_audio"].transpose(1, 2))
        v = sync.avhubert.extract_features(video=avhubert_video(pasted))
    cos = torch.stack([torch.nn.functional.cosine_similarity(a[b, s: s + 5], v[b, s: s + 5], dim=-1)
                       for b, s in enumerate(batch["ctx_start"].tolist())])
    floor = SYNC_LOG_FLOOR  # −log cos above it, its tangent below it
    expected = torch.where(cos >= floor, -torch.log(cos.clamp_min(floor)), -math.log(floor) + (floor - cos) / floor)
    torch.testing.assert_close(loss, expected.mean())
    assert stats["rois"].shape == (2, 12, 96, 96)


def test_sync_loss_keeps_a_gradient_below_the_floor():
    """A clamped −log max(cos, ε) has no gradient on negative cosines (issue 13); ours does, and it is
    −log cos where the cosine is positive enough."""
    cos = torch.tensor([-0.5, 0.0, 0.05, 0.5, 0.9], requires_grad=True)
    loss = log_cosine_loss(cos)
    (grad,) = torch.autograd.grad(loss.sum(), cos)
    assert (grad < 0).all()
    torch.testing.assert_close(loss[3:], -torch.log(cos[3:]))
    torch.testing.assert_close(loss[2], torch.tensor(-math.log(0.1) + 0.5))


def test_lip_expert_loss_is_wav2lip_bce(grid_train_data, lip_expert_checkpoint):
    sync = build_sync_loss("syncnet", {"syncnet": lip_expert_checkpoint}, k=5, size=96)
    expert = SyncNetColor.from_checkpoint(lip_expert_checkpoint)
    batch = collate([WindowDataset(load_clips(grid_train_data, "train"), k=5, sync_mel=True)[0]])
    loss, _ = sync(batch["target"], batch)
    with torch.no_grad():
        a, v = expert(batch["sync_mel"], batch["target"][:, :, 48:].reshape(1, 15, 48, 96))
    expected = torch.nn.functional.binary_cross_entropy((a * v).sum(1).clamp(1e-7, 1), torch.ones(1))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="5 frames"):
        build_sync_loss("syncnet", {"syncnet": lip_expert_checkpoint}, k=3, size=96)
    with pytest.raises(FileNotFoundError, match="lipsync_expert.pth"):
        build_sync_loss("syncnet", {}, k=5, size=96)
    with pytest.raises(ValueError, match="unknown sync loss"):
        build_sync_loss("lipread", {}, k=5, size=96)

