"""Feature recipes of AV-HuBERT and syncnet_python on real speech (spec §1.7, §4)
and the metric arithmetic: AVSu/AVSm/AVSv, LSE-D/LSE-C, SSIM, PSNR (spec §4-5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import python_speech_features
import torch
import torch.nn.functional as F
from conftest import data_file
from scipy.io import wavfile
from skimage.metrics import structural_similarity

from engine.audio import avhubert_audio_features, syncnet_mfcc
from engine.metrics import avs_scores, lse_scores, mean_cosine, psnr, ssim


@pytest.fixture(scope="module")
def speech():
    rate, wav = wavfile.read(data_file("audio/cmuarctic_a0007.wav"))
    assert rate == 16000 and wav.dtype == np.int16 and wav.ndim == 1
    return wav


def reference_avhubert_audio(wav, n_video_frames):
    """av_hubert hubert_dataset.py: logfbank -> stacker(4) -> align -> F.layer_norm (spec §1.7)."""
    feats = python_speech_features.logfbank(wav, samplerate=16000).astype(np.float32)
    if len(feats) % 4:
        feats = np.concatenate([feats, np.zeros([4 - len(feats) % 4, 26], dtype=np.float32)])
    feats = feats.reshape((-1, 4, 26)).reshape(-1, 104)
    diff = len(feats) - n_video_frames
    if diff < 0:
        feats = np.concatenate([feats, np.zeros([-diff, 104], dtype=np.float32)])
    elif diff > 0:
        feats = feats[:-diff]
    feats = torch.from_numpy(feats)
    return F.layer_norm(feats, feats.shape[1:]).numpy()


@pytest.mark.parametrize("extra_frames", [0, -3, 5])
def test_avhubert_audio_features_follow_the_reference(speech, extra_frames):
    n_stacked = math.ceil(len(python_speech_features.logfbank(speech, samplerate=16000)) / 4)
    n_video = n_stacked + extra_frames
    ours = avhubert_audio_features(speech, n_video)
    assert ours.shape == (n_video, 104) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference_avhubert_audio(speech, n_video), atol=1e-5)
    # Float input in [-1, 1] is the same signal: same features.
    np.testing.assert_allclose(avhubert_audio_features(speech.astype(np.float32) / 32768, n_video), ours, atol=1e-6)


def test_avhubert_audio_features_without_alignment(speech):
    n_fbank = 1 + math.ceil((len(speech) - 400) / 160)
    assert avhubert_audio_features(speech).shape == (math.ceil(n_fbank / 4), 104)


def test_syncnet_mfcc_is_python_speech_features(speech):
    ours = syncnet_mfcc(speech)
    # SyncNetInstance.evaluate: zip(*mfcc(audio, sample_rate)) stacked to [13, T].
    expected = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(speech, 16000))])
    assert ours.shape == (13, 1 + math.ceil((len(speech) - 400) / 160)) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(syncnet_mfcc(speech.astype(np.float64) / 32768), ours, rtol=1e-6, atol=1e-5)


def test_features_reject_stereo_and_int32():
    with pytest.raises(ValueError, match="mono"):
        syncnet_mfcc(np.zeros((1600, 2), np.int16))
    with pytest.raises(ValueError, match="int32"):
        avhubert_audio_features(np.zeros(1600, np.int32))


# ---------------------------------------------------------------------------
# LSE against a literal transcription of syncnet_python's calc_pdist scoring.


def reference_lse(feat1, feat2, vshift):
    win_size = vshift * 2 + 1
    feat2p = torch.nn.functional.pad(feat2, (0, 0, vshift, vshift))
    dists = []
    for i in range(0, len(feat1)):
        dists.append(
            torch.nn.functional.pairwise_distance(feat1[[i], :].repeat(win_size, 1), feat2p[i:i + win_size, :])
        )
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    offset = vshift - minidx
    conf = torch.median(mdist) - minval
    return minval.item(), conf.item(), int(offset)


@pytest.mark.parametrize("vshift, lag, n_audio_extra", [(15, 3, 0), (15, -2, 0), (10, 0, 4)])
def test_lse_matches_calc_pdist(vshift, lag, n_audio_extra):
    gen = torch.Generator().manual_seed(lag + vshift)
    n = 40
    aud = torch.randn(n + n_audio_extra, 1024, generator=gen) * 5
    vid = torch.roll(aud[:n], lag, dims=0) + torch.randn(n, 1024, generator=gen)
    ours = lse_scores(vid, aud, vshift=vshift)
    lse_d, lse_c, offset = reference_lse(vid, aud, vshift)
    assert ours.lse_d == pytest.approx(lse_d, rel=1e-5)
    assert ours.lse_c == pytest.approx(lse_c, rel=1e-4, abs=1e-4)
    assert ours.offset == offset == lag  # video row i shows audio row i - lag
    assert lse_scores(vid.numpy(), aud.numpy(), vshift) == ours


def test_lse_rejects_short_audio():
    with pytest.raises(ValueError, match="fewer audio windows"):
        lse_scores(torch.zeros(10, 8), torch.zeros(9, 8))


# ---------------------------------------------------------------------------
# AVS: cosine per time step, mean over time, then mean over videos.


def test_avs_of_features_against_themselves_is_one():
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randn(t, 768, generator=gen) for t in (12, 30)]
    multimodal = [torch.randn(t, 768, generator=gen) for t in (12, 30)]
    audio = [torch.randn(t, 768, generator=gen) for t in (12, 30)]
    scores = avs_scores(audio, videos, multimodal, gt_video_only=videos, gt_multimodal=multimodal)
    assert scores["AVSm"] == pytest.approx(1.0, abs=1e-12)
    assert scores["AVSv"] == pytest.approx(1.0, abs=1e-12)


def test_avsu_averages_over_time_then_over_videos():
    rng = np.random.default_rng(0)
    audio = [rng.normal(size=(t, 16)) for t in (3, 50)]
    video = [a + rng.normal(size=a.shape) * s for a, s in zip(audio, (0.1, 3.0))]
    per_video = [np.mean([a @ v / np.linalg.norm(a) / np.linalg.norm(v) for a, v in zip(av, vv)])
                 for av, vv in zip(audio, video)]
    assert avs_scores(audio, video) == {"AVSu": pytest.approx(np.mean(per_video), abs=1e-12)}
    assert mean_cosine(audio[0], video[0]) == pytest.approx(per_video[0], abs=1e-12)


def test_avs_input_errors():
    x = [np.ones((4, 8))]
    with pytest.raises(ValueError, match="gt_multimodal"):
        avs_scores(x, x, multimodal=x)
    with pytest.raises(ValueError, match="same shape"):
        avs_scores(x, [np.ones((5, 8))])
    with pytest.raises(ValueError, match="1 videos"):
        avs_scores(x, x, gt_video_only=x * 2)


# ---------------------------------------------------------------------------
# SSIM and PSNR with TalkLip's settings (evaluation/visual_quality.py).


def test_ssim_uses_talklip_settings():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    synth = np.clip(gt + rng.normal(0, 20, gt.shape), 0, 255).astype(np.uint8)
    expected = structural_similarity(gt, synth, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert ssim(gt, synth) == pytest.approx(expected, abs=1e-12) and ssim(gt, synth) < 0.99
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(gt / 255.0, synth / 255.0, data_range=1.0) == pytest.approx(expected, abs=1e-9)


def test_psnr_float_and_talklip_uint8_wrap_around():
    gt = np.full((96, 96, 3), 100, np.uint8)
    synth = gt + np.uint8(20)
    assert psnr(gt, synth) == pytest.approx(20 * math.log10(255 / 20))
    # uint8: (100 - 120) wraps to 236, 236**2 wraps to 400 mod 256 = 144.
    assert psnr(gt, synth, talklip_uint8=True) == pytest.approx(20 * math.log10(255 / 12))
    assert psnr(gt, gt) == math.inf and psnr(gt, gt, talklip_uint8=True) == 100.0
    assert psnr(gt / 255.0, synth / 255.0, data_range=1.0) == pytest.approx(psnr(gt, synth))
    with pytest.raises(TypeError):
        psnr(gt.astype(np.float32), synth.astype(np.float32), talklip_uint8=True)
