"""Metrics of real clips (engine.metrics, spec §4-5): syncnet_python's windowing,
AVS of videos, LMD, FID and its Inception, with random-weight networks loaded
from files in the published layouts.

Tolerances for a re-encoded copy (libx264 crf 18 + AAC through
``realtime.sinks.Mp4Sink``, decoded again) with these random networks:
LSE-D within 2 %, LSE-C within 5 %, the same offset; AVSu within 0.02; AVSm
and AVSv at least 0.99; LMD below 1 (% of the eye distance).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import python_speech_features
import torch
import torch.nn.functional as F
from conftest import randomize
from scipy import linalg

from engine.audio import avhubert_audio_features, load_audio
from engine.checkpoints import CheckpointError
from engine.face import mouth_roi_affines, mouth_rois, track_landmarks
from engine.media import read_frames_at
from engine.metrics import (activation_statistics, avs_video, face_crops, fid, frechet_distance,
                            inception_activations, lmd, lse_scores, lse_video, syncnet_embeddings)
from engine.models.avhubert import AVHubert
from engine.models.inception import FIDInceptionV3
from engine.models.syncnet import SyncNet
from realtime.sinks import Mp4Sink
from tools.evaluate import move_frames


@pytest.fixture(scope="module")
def clip(grid_frames):
    frames, wav = grid_frames
    return frames, wav, track_landmarks(frames)


@pytest.fixture(scope="module")
def reencoded(grid_frames, tmp_path_factory):
    """grid_bbaf2n re-encoded to H.264 + AAC mp4 and read back: frames, speech, landmarks."""
    frames, wav = grid_frames
    path = tmp_path_factory.mktemp("reencoded") / "grid_bbaf2n.mp4"
    sink = Mp4Sink(path, 25, frames.shape[2], frames.shape[1])
    for i, frame in enumerate(frames):
        sink.write(frame, i / 25)
    sink.write_audio(wav)
    sink.close()
    again = np.stack([f for f, _ in read_frames_at(path)])
    return again, load_audio(path), track_landmarks(again)


@pytest.fixture(scope="module")
def syncnet(syncnet_checkpoint):
    return SyncNet.from_checkpoint(syncnet_checkpoint)


@pytest.fixture(scope="module")
def avhubert(avhubert_checkpoint):
    return AVHubert.from_checkpoint(avhubert_checkpoint)


# ---------------------------------------------------------------------------
# LSE: syncnet_python's SyncNetInstance.evaluate, transcribed (Wav2Lip's copy: frames resized to 224).


def reference_evaluate(model, frames_rgb, audio_int16, batch_size=20, vshift=15):
    images = [cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), (224, 224)) for f in frames_rgb]  # cv2.imread: BGR
    im = np.transpose(np.expand_dims(np.stack(images, axis=3), axis=0), (0, 3, 4, 1, 2))
    imtv = torch.from_numpy(im.astype(float)).float()
    mfcc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(audio_int16, 16000))])
    cct = torch.from_numpy(np.expand_dims(np.expand_dims(mfcc, axis=0), axis=0).astype(float)).float()
    min_length = min(len(images), math.floor(len(audio_int16) / 640))
    lastframe = min_length - 5
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, batch_size):
            im_in = torch.cat([imtv[:, :, v:v + 5, :, :] for v in range(i, min(lastframe, i + batch_size))], 0)
            mid = model.netcnnlip(im_in)  # S.forward_lip on BGR, without our RGB adapter
            im_feat.append(model.netfclip(mid.view((mid.size()[0], -1))))
            cc_in = torch.cat([cct[:, :, :, v * 4:v * 4 + 20] for v in range(i, min(lastframe, i + batch_size))], 0)
            mid = model.netcnnaud(cc_in)
            cc_feat.append(model.netfcaud(mid.view((mid.size()[0], -1))))
    im_feat, cc_feat = torch.cat(im_feat, 0), torch.cat(cc_feat, 0)
    feat2p = F.pad(cc_feat, (0, 0, vshift, vshift))
    dists = [F.pairwise_distance(im_feat[[i], :].repeat(2 * vshift + 1, 1), feat2p[i:i + 2 * vshift + 1, :])
             for i in range(len(im_feat))]
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return im_feat, cc_feat, (minval.item(), (torch.median(mdist) - minval).item(), vshift - int(minidx))


def test_lse_windows_follow_syncnet_python(clip, syncnet):
    frames, wav, _ = clip
    frames, audio = frames[:9], (wav[: 11 * 640] * 32767).astype(np.int16)
    ref_video, ref_audio, (lse_d, lse_c, offset) = reference_evaluate(syncnet, frames, audio)
    video, aud = syncnet_embeddings(syncnet, frames, audio, batch_size=3)
    assert video.shape == aud.shape == (4, 1024)  # min_length 9: windows v = 0 .. 3
    torch.testing.assert_close(video, ref_video, rtol=1e-4, atol=1e-2)
    torch.testing.assert_close(aud, ref_audio, rtol=1e-4, atol=1e-2)
    score = lse_scores(video, aud)
    assert score.lse_d == pytest.approx(lse_d, rel=1e-4) and score.lse_c == pytest.approx(lse_c, rel=1e-3, abs=1e-3)
    assert score.offset == offset
    # min_length follows the speech when it is the shorter one
    assert syncnet_embeddings(syncnet, frames, audio[: 7 * 640])[0].shape == (2, 1024)
    with pytest.raises(ValueError, match="at least 6 frames"):
        syncnet_embeddings(syncnet, frames[:5], audio)


# ---------------------------------------------------------------------------
# Properties on real clips.


def avs_inputs(frames, wav, landmarks):
    return mouth_rois(frames, mouth_roi_affines(landmarks)), avhubert_audio_features(wav, len(frames))


def test_avs_of_a_video_against_itself_is_one(clip, avhubert):
    frames, wav, landmarks = clip
    rois, audio = avs_inputs(frames[:25], wav[: 25 * 640], landmarks[:25])
    scores = avs_video(avhubert, rois, audio, reference_rois=rois.copy())
    assert scores["AVSm"] == pytest.approx(1.0, abs=1e-9) and scores["AVSv"] == pytest.approx(1.0, abs=1e-9)
    assert -1 <= scores["AVSu"] <= 1
    assert set(avs_video(avhubert, rois, audio)) == {"AVSu"}
    with pytest.raises(ValueError, match="frame count"):
        avs_video(avhubert, rois[:-1], audio)


def test_a_reencoded_copy_keeps_lse_avs_and_lmd(clip, reencoded, syncnet, avhubert):
    assert reencoded[0].shape == clip[0].shape
    n = 40  # the first 1.6 s: fast enough, 35 LSE windows
    frames, wav, landmarks = clip[0][:n], clip[1][: n * 640], clip[2][:n]
    frames2, wav2, landmarks2 = reencoded[0][:n], reencoded[1][: n * 640], reencoded[2][:n]
    original, copy = lse_video(syncnet, frames, wav), lse_video(syncnet, frames2, wav2)
    assert copy.lse_d == pytest.approx(original.lse_d, rel=0.02)
    assert copy.lse_c == pytest.approx(original.lse_c, rel=0.05)
    assert copy.offset == original.offset
    rois, audio = avs_inputs(frames, wav, landmarks)
    rois2, audio2 = avs_inputs(frames2, wav2, landmarks2)
    base = avs_video(avhubert, rois, audio)
    scores = avs_video(avhubert, rois2, audio2, reference_rois=rois)
    assert scores["AVSu"] == pytest.approx(base["AVSu"], abs=0.02)
    assert scores["AVSm"] >= 0.99 and scores["AVSv"] >= 0.99
    assert 0 < np.nanmean(lmd(landmarks, landmarks2)) < 1


def test_lmd_is_zero_against_itself_and_grows_with_a_shift(clip):
    frames, _, landmarks = clip
    frames, landmarks = frames[:25], landmarks[:25]
    assert np.array_equal(lmd(landmarks, track_landmarks(frames)), np.zeros(25))  # MediaPipe is deterministic
    eyes = np.linalg.norm(landmarks[:, 33] - landmarks[:, 263], axis=-1).mean()
    small = np.nanmean(lmd(landmarks, track_landmarks(move_frames(frames, "shift", 2))))
    large = np.nanmean(lmd(landmarks, track_landmarks(move_frames(frames, "shift", 6))))
    assert 0 < small < large
    assert large == pytest.approx(100 * 6 / eyes, rel=0.3)  # the mouth moved with the frame


def test_lmd_variant():
    rng = np.random.default_rng(0)
    reference = rng.uniform(0, 200, (3, 478, 2))
    reference[:, 33], reference[:, 263] = (50, 80), (100, 80)  # eye distance 50 px
    generated = reference + (3, 4)  # every point 5 px away
    generated[2, 0] = np.nan  # no face in frame 2
    np.testing.assert_allclose(lmd(reference, generated)[:2], [10.0, 10.0])  # 5 px = 10 % of the eye distance
    assert np.isnan(lmd(reference, generated)[2])
    moved = reference.copy()
    moved[:, 100] += 50  # a point that is not a mouth point does not count
    np.testing.assert_allclose(lmd(reference, moved), 0.0)
    with pytest.raises(ValueError):
        lmd(reference, reference[:2])


def test_face_crops_cut_both_videos_at_the_reference_box(clip):
    frames, _, landmarks = clip
    crops = face_crops(frames[:10], landmarks[:10])
    assert crops.shape == (10, 96, 96, 3) and crops.dtype == np.uint8
    shifted = face_crops(move_frames(frames[:10], "shift", 8), landmarks[:10])
    assert np.array_equal(face_crops(frames[:10], landmarks[:10]), crops) and not np.array_equal(shifted, crops)


# ---------------------------------------------------------------------------
# FID: pytorch-fid's Fréchet distance and Inception.


def reference_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance, transcribed."""
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


@pytest.mark.filterwarnings("ignore:The `disp` argument")
@pytest.mark.parametrize("n1, n2", [(20, 30), (100, 90)], ids=["fewer-images-than-dims", "more"])
def test_fid_equals_pytorch_fid(n1, n2):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n1, 64)) @ rng.normal(size=(64, 64))
    b = rng.normal(size=(n2, 64)) * 2 + 0.5
    expected = reference_frechet_distance(*activation_statistics(a), *activation_statistics(b))
    assert fid(a, b) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(*activation_statistics(a), *activation_statistics(b)) == pytest.approx(expected, rel=1e-7)
    assert abs(fid(a, a)) < 1e-6 * expected


def test_frechet_distance_of_known_gaussians():
    # diagonal covariances: |mu1 - mu2|² + Σ (s1 + s2 - 2 √(s1 s2))
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = 3 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(np.ones(3), np.diag(s1), np.zeros(3), np.diag(s2)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        fid(np.zeros((1, 3)), np.zeros((5, 3)))


def test_inception_has_pytorch_fid_layout_and_loads_its_file(inception_checkpoint, tmp_path):
    with torch.device("meta"):
        layout = FIDInceptionV3()
    shapes = {k: tuple(v.shape) for k, v in layout.state_dict().items()}
    # torchvision's inception_v3 has 27,161,264 parameters: without AuxLogits (3,326,696) and fc (2,049,000)
    assert sum(p.numel() for p in layout.parameters()) == 21_785_568
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3) and shapes["Conv2d_4a_3x3.conv.weight"] == (192, 80, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert layout.Mixed_5b.branch1x1.bn.eps == 0.001

    model = FIDInceptionV3.from_checkpoint(inception_checkpoint)
    source = randomize(FIDInceptionV3(), seed=2)  # the fixture's weights
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    ours = inception_activations(model, images, batch_size=1)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        expected = source(x).double().numpy()
    assert ours.shape == (2, 2048) and not model.training
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)

    state = torch.load(inception_checkpoint)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="Mixed_7c.branch_pool.conv.weight"):
        FIDInceptionV3.from_checkpoint(tmp_path / "broken.pth")
