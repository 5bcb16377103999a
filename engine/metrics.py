"""Lip-sync and image-quality metrics (spec §4-5; Yaman et al. 2024, §4.1).

Two layers. The arithmetic on features and frames:

* AVSu / AVSm / AVSv (Yaman et al. 2024, §4.1, eq. 4-6) from AV-HuBERT
  features (:func:`avs_scores`).
* LSE-D / LSE-C (Prajwal et al. 2020) from syncnet_python embeddings, as
  ``SyncNetInstance.evaluate`` computes them (:func:`lse_scores`, spec §4).
* SSIM and PSNR of one frame pair with the settings of TalkLip's
  ``evaluation/visual_quality.py`` (:func:`ssim`, :func:`psnr`, spec §5).
  The published numbers average them over all frames of all videos (a
  frame-level mean).
* LMD from face-mesh landmarks (:func:`lmd`), FID from Inception
  activations (:func:`fid`, :func:`frechet_distance`: pytorch-fid's).

And the same metrics of clips (frames at 25 fps, 16 kHz speech), running the
networks of ``engine.models`` on the inputs their recipes prescribe:
:func:`syncnet_embeddings` / :func:`lse_video` (syncnet_python's windows),
:func:`avhubert_clip_features` / :func:`avs_video` (mouth ROIs of
``engine.face``), :func:`face_crops` (the face box SSIM, PSNR and FID are
computed on), :func:`inception_activations`.

And metrics that need no weights, from MediaPipe landmarks and pixels
(issue 9; :func:`mouth_metrics` computes them all for a pair of clips):
mouth sharpness (:func:`mouth_sharpness`, :func:`sharpness_ratio`), mouth
opening (:func:`mouth_opening`, :func:`opening_ratio`), audio-mouth coupling
(:func:`speech_envelope`, :func:`audio_mouth_coupling`), the preservation of
the face above the nose (:func:`upper_face_psnr`) and the lip-landmark error
in % of the face height (:func:`lip_landmark_error`).

And the project's own lip-sync expert on a clip (:func:`expert_crops`,
:func:`expert_sync`): sync confidence, best audio offset and offset
confidence, syncnet_python's quantities with ``SyncNetColor`` (not
comparable with published LSE numbers).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.audio import mel_window, melspectrogram, syncnet_mfcc
from engine.face import (MOUTH_POINTS, OUTER_EYE_CORNERS, Box, box_pixels, crop, crop_box, interpolate_landmarks,
                         track_landmarks)
from engine.models.syncnet import lower_halves

__all__ = [
    "GENERATOR_SIZE",
    "LSEScore",
    "MOUTH_METRICS",
    "NATURAL_OPENING_STD",
    "activation_statistics",
    "audio_mouth_coupling",
    "avhubert_clip_features",
    "avs_scores",
    "avs_video",
    "expert_crops",
    "expert_sync",
    "face_crops",
    "face_height",
    "fid",
    "frechet_distance",
    "inception_activations",
    "lip_box",
    "lip_landmark_error",
    "lmd",
    "lse_scores",
    "lse_video",
    "mean_cosine",
    "mouth_metrics",
    "mouth_opening",
    "mouth_sharpness",
    "mouth_sharpness_ratio",
    "opening_ratio",
    "psnr",
    "sharpness_ratio",
    "speech_envelope",
    "ssim",
    "syncnet_embeddings",
    "upper_face_box",
    "upper_face_psnr",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_float64(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu().double()


def mean_cosine(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of matching rows of two ``[T, D]`` feature
    sequences, averaged over the T time steps (computed in float64).

    Raises:
        ValueError: the shapes differ or are not 2-D.
    """
    a, b = _as_float64(a), _as_float64(b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [T, D] arrays of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a, b, dim=-1).mean().item()


def avs_scores(
    audio_only: Sequence[ArrayLike],
    video_only: Sequence[ArrayLike],
    multimodal: Sequence[ArrayLike] | None = None,
    gt_video_only: Sequence[ArrayLike] | None = None,
    gt_multimodal: Sequence[ArrayLike] | None = None,
) -> dict[str, float]:
    """AV-HuBERT sync scores of a set of generated videos (Yaman et al. 2024, §4.1, eq. 4-6).

    Every argument is a list with one ``[T, D]`` array per video (numpy or
    torch; the last-layer AV-HuBERT features, ``AVHubert.extract_features``
    with ``output_layer=None``), in the same video order:

    * ``audio_only``: features of the driving audio alone (video zeroed);
    * ``video_only``: of the generated video's mouth ROIs alone;
    * ``multimodal``: of the generated video together with the audio;
    * ``gt_video_only`` / ``gt_multimodal``: the same for the ground-truth
      video, frame-aligned with the generated one.

    Each score is the cosine similarity per time step, averaged over time
    (:func:`mean_cosine`), then averaged over videos:

    * ``AVSu`` = cos(audio_only, video_only), needs no ground truth;
    * ``AVSm`` = cos(multimodal, gt_multimodal);
    * ``AVSv`` = cos(video_only, gt_video_only).

    Higher is better; 1.0 is the maximum.

    Returns:
        ``{"AVSu": float}`` plus ``"AVSm"`` / ``"AVSv"`` where their inputs
        are given.

    Raises:
        ValueError: lists of different lengths, an empty list, per-video
            shapes that differ, or ``multimodal`` without ``gt_multimodal``
            (or the reverse).
    """
    if (multimodal is None) != (gt_multimodal is None):
        raise ValueError("AVSm needs both multimodal and gt_multimodal")
    pairs = {"AVSu": (audio_only, video_only)}
    if multimodal is not None:
        pairs["AVSm"] = (multimodal, gt_multimodal)
    if gt_video_only is not None:
        pairs["AVSv"] = (video_only, gt_video_only)
    n_videos = len(audio_only)
    if n_videos == 0:
        raise ValueError("no videos")
    scores = {}
    for name, (first, second) in pairs.items():
        if len(first) != n_videos or len(second) != n_videos:
            raise ValueError(f"{name}: every feature list must hold {n_videos} videos")
        scores[name] = float(np.mean([mean_cosine(a, b) for a, b in zip(first, second)]))
    return scores


class LSEScore(NamedTuple):
    """syncnet_python's verdict on one video (spec §4).

    lse_d: the smallest mean embedding distance over the tried offsets
        (LSE-D; lower is better).
    lse_c: median minus smallest mean distance (LSE-C, "confidence";
        higher is better).
    offset: the audio-visual offset in video frames at the minimum
        (``vshift - argmin``).

    LSE-D and LSE-C of a set of videos are the arithmetic means of the
    per-video values.
    """

    lse_d: float
    lse_c: float
    offset: int


def lse_scores(vid_feat: ArrayLike, aud_feat: ArrayLike, vshift: int = 15) -> LSEScore:
    """LSE-D, LSE-C and offset of one video from its SyncNet embeddings.

    ``calc_pdist`` of syncnet_python: the audio embeddings are zero-padded by
    ``vshift`` rows at both ends; video window i is compared with padded
    audio rows ``i .. i + 2*vshift`` by ``F.pairwise_distance`` (L2 of the
    difference plus 1e-6), which tries offsets ``-vshift .. +vshift``. The
    distances are averaged over i per offset; see :class:`LSEScore`.

    Args:
        vid_feat: ``[N, D]`` ``SyncNet.forward_lip`` embeddings of the video
            windows v = 0 .. N-1 (frames v .. v+4).
        aud_feat: ``[M, D]`` ``SyncNet.forward_aud`` embeddings of the
            matching audio windows (MFCC columns 4v .. 4v+19), M >= N
            (the reference uses M == N).
        vshift: largest offset tried, in frames (15 for the LSE numbers,
            ``calculate_scores_LRS.py``).

    Raises:
        ValueError: not 2-D, different D, no windows, or M < N.
    """
    vid = torch.as_tensor(vid_feat).detach().cpu().float()
    aud = torch.as_tensor(aud_feat).detach().cpu().float()
    if vid.ndim != 2 or aud.ndim != 2 or vid.shape[1] != aud.shape[1] or len(vid) == 0:
        raise ValueError(f"expected [N, D] and [M, D] embeddings, got {tuple(vid.shape)} and {tuple(aud.shape)}")
    if len(aud) < len(vid):
        raise ValueError(f"fewer audio windows ({len(aud)}) than video windows ({len(vid)})")
    window = 2 * vshift + 1
    aud_padded = F.pad(aud, (0, 0, vshift, vshift))
    candidates = aud_padded.unfold(0, window, 1)[: len(vid)].transpose(1, 2)  # [N, window, D]
    dists = F.pairwise_distance(vid[:, None, :], candidates)  # [N, window]
    mean_dists = dists.mean(0)
    minval, minidx = mean_dists.min(0)
    return LSEScore(minval.item(), (mean_dists.median() - minval).item(), vshift - int(minidx))


def ssim(reference: np.ndarray, distorted: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of one frame pair, TalkLip's settings (spec §5):
    ``skimage.metrics.structural_similarity`` with Gaussian weights
    (sigma 1.5), population covariance, per channel and averaged.

    Args:
        reference, distorted: ``[H, W, C]`` (or ``[H, W]``) images of the
            same shape, uint8 or float; channel order does not matter.
            TalkLip uses 96x96 BGR uint8 crops of the S3FD box.
        data_range: value range of the images (255 for uint8 / 0-255
            floats, 1.0 for images in [0, 1]).

    Raises:
        ValueError: the shapes differ.
    """
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            reference,
            distorted,
            channel_axis=-1 if reference.ndim == 3 else None,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=data_range,
        )
    )


def psnr(
    reference: np.ndarray, distorted: np.ndarray, data_range: float = 255.0, talklip_uint8: bool = False
) -> float:
    """PSNR of one frame pair: ``20 log10(data_range / sqrt(mse))``.

    By default the squared error is computed in float64 and identical
    images give ``inf``. ``talklip_uint8=True`` reproduces TalkLip's
    ``visual_quality.py`` (spec §5): the difference and its square are taken
    on the uint8 arrays, so they wrap modulo 256 (an error of 20 counts as
    400 mod 256 = 144), the peak is 255 and identical images give 100.

    Args:
        reference, distorted: images of the same shape; uint8 when
            ``talklip_uint8``.
        data_range: peak value (ignored with ``talklip_uint8``).

    Raises:
        ValueError: the shapes differ.
        TypeError: ``talklip_uint8`` with an array that is not uint8.
    """
    if reference.shape != distorted.shape:
        raise ValueError(f"image shapes differ: {reference.shape} and {distorted.shape}")
    if talklip_uint8:
        if reference.dtype != np.uint8 or distorted.dtype != np.uint8:
            raise TypeError(f"talklip_uint8 needs uint8 images, got {reference.dtype} and {distorted.dtype}")
        mse = float(np.mean((reference - distorted) ** 2))
        if mse == 0:
            return 100.0
        data_range = 255.0
    else:
        mse = float(np.mean((reference.astype(np.float64) - distorted.astype(np.float64)) ** 2))
        if mse == 0:
            return math.inf
    return 20 * math.log10(data_range / math.sqrt(mse))


def lmd(reference: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Mouth landmark distance (LMD) of each frame pair, this project's variant (spec §5).

    Points: the 20 MediaPipe lip points at dlib's mouth points 48-67
    (:data:`engine.face.MOUTH_POINTS`, 12 outer + 8 inner; the "M-LMD" of
    Chen et al. 2018 on MediaPipe). Per frame: the mean Euclidean distance
    between matching points, in frame pixels, **not** mean-centred or
    aligned (a mouth in the wrong place counts), divided by the reference
    frame's inter-ocular distance (outer eye corners,
    :data:`engine.face.OUTER_EYE_CORNERS`) and multiplied by 100: units of 1 %
    of the eye distance, so that the value does not depend on resolution. The
    LMD of a set of videos is the mean over all frames with a face in both.

    Args:
        reference, generated: ``[T, 478, 2]`` landmarks in pixels of
            frames of the same size (:func:`engine.face.track_landmarks`;
            NaN rows where no face was found).

    Returns:
        ``[T]`` float64, lower is better, 0 for identical landmarks; NaN
        where either frame has no face.

    Raises:
        ValueError: shapes differ or are not ``[T, 478, 2]``.
    """
    reference, generated = np.asarray(reference, np.float64), np.asarray(generated, np.float64)
    if reference.shape != generated.shape or reference.ndim != 3 or reference.shape[1:] != (478, 2):
        raise ValueError(f"expected two [T, 478, 2] landmark arrays, got {reference.shape} and {generated.shape}")
    mouth = list(MOUTH_POINTS)
    distance = np.linalg.norm(generated[:, mouth] - reference[:, mouth], axis=-1).mean(axis=1)
    right, left = OUTER_EYE_CORNERS
    eyes = np.linalg.norm(reference[:, right] - reference[:, left], axis=-1)
    return 100.0 * distance / eyes


def activation_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (``np.cov``, rows are samples) of ``[N, D]`` activations."""
    activations = np.asarray(activations, np.float64)
    return activations.mean(axis=0), np.cov(activations, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians, the quantity of pytorch-fid's
    ``calculate_frechet_distance``: ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)``.

    ``tr((S1 S2)^½)`` is the sum of the square roots of the eigenvalues of
    the symmetric ``S1^½ S2 S1^½`` (the eigenvalues of ``S1 S2``; rounding
    noise below 0 clipped) instead of pytorch-fid's
    ``scipy.linalg.sqrtm(S1 S2)``, which is far slower at 2048 dimensions and
    needs an ``eps`` fallback for singular products; the values agree to
    rounding (``tests/test_metrics_video.py``).

    Raises:
        ValueError: the shapes do not match.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} and {mu2.shape}/{sigma2.shape}")
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    tr_covmean = _sum_sqrt_eigenvalues(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _sum_sqrt_eigenvalues(matrix: np.ndarray) -> float:
    """Σ √λ of a symmetric positive semi-definite matrix (negative rounding noise clipped)."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((matrix + matrix.T) / 2), 0, None)).sum())


def fid(activations1: np.ndarray, activations2: np.ndarray) -> float:
    """FID of two image sets from their ``[N, 2048]`` pool3 activations
    (:func:`inception_activations`; Heusel et al. 2017, pytorch-fid's value).

    The Fréchet distance of their Gaussians (:func:`activation_statistics`,
    :func:`frechet_distance`). With fewer images than dimensions the
    covariances have low rank and ``tr((S1 S2)^½)`` is taken from the
    ``N×N`` matrix ``C Cᵀ / ((N1-1)(N2-1))``, ``C = X1 X2ᵀ`` of the centred
    activations (same non-zero eigenvalues as ``S1 S2``), which is much
    faster and equal to rounding.

    Raises:
        ValueError: fewer than 2 images in a set, or different dimensions.
    """
    x1, x2 = np.asarray(activations1, np.float64), np.asarray(activations2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
        raise ValueError(f"FID needs two [N >= 2, D] activation sets, got {x1.shape} and {x2.shape}")
    (n1, dim), n2 = x1.shape, len(x2)
    if min(n1, n2) > dim:
        return frechet_distance(*activation_statistics(x1), *activation_statistics(x2))
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    x1, x2 = x1 - mu1, x2 - mu2
    cross = x1 @ x2.T
    gram = cross @ cross.T if n1 <= n2 else cross.T @ cross
    tr_covmean = _sum_sqrt_eigenvalues(gram) / math.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + (x1**2).sum() / (n1 - 1) + (x2**2).sum() / (n2 - 1) - 2 * tr_covmean)


# ---------------------------------------------------------------------------
# Metrics of clips: frames (RGB uint8, 25 fps) and 16 kHz speech.

SAMPLES_PER_FRAME = 640
"""16 kHz samples per 25 fps video frame."""


def syncnet_embeddings(syncnet, frames: np.ndarray, wav: np.ndarray,
                       batch_size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """syncnet_python's embeddings of a clip, windowed as ``SyncNetInstance.evaluate`` (spec §4).

    Every frame is resized to 224×224 (``cv2.resize``, bilinear; the LRS
    benchmark mode of the Wav2Lip/TalkLip copy: the whole frame, no face
    crop). ``min_length = min(T, floor(n_samples / 640))``; window v = 0 ..
    min_length - 6 holds frames v .. v+4 and MFCC columns 4v .. 4v+19
    (:func:`engine.audio.syncnet_mfcc`).

    Args:
        syncnet: :class:`engine.models.syncnet.SyncNet` in eval mode (any device).
        frames: ``[T, H, W, 3]`` uint8 RGB at 25 fps (the network flips to BGR).
        wav: ``[n]`` float32 16 kHz mono in [-1, 1] (or int16).
        batch_size: windows per forward pass (20 in the reference).

    Returns:
        ``(video [N, 1024], audio [N, 1024])`` float32 CPU tensors, N = min_length - 5.

    Raises:
        ValueError: fewer than 6 frames or 0.24 s of speech (no window).
    """
    frames = np.asarray(frames)
    min_length = min(len(frames), len(wav) // SAMPLES_PER_FRAME)
    n_windows = min_length - 5
    if n_windows < 1:
        raise ValueError(f"LSE needs at least 6 frames and 6 frames of speech, got {len(frames)} frames "
                         f"and {len(wav) / 16000:.2f} s")
    device = next(syncnet.parameters()).device
    resized = torch.from_numpy(np.stack([cv2.resize(f, (224, 224)) for f in frames[:min_length]]))
    mfcc = torch.from_numpy(syncnet_mfcc(wav)).unfold(1, 20, 4)  # [13, windows, 20]: window v at column 4v
    video, audio = [], []
    with torch.no_grad():
        for start in range(0, n_windows, batch_size):
            stop = min(n_windows, start + batch_size)
            clips = resized[start: stop + 4].unfold(0, 5, 1)  # [n, 224, 224, 3, 5]
            clips = clips.permute(0, 3, 4, 1, 2).float().to(device)  # [n, 3, 5, 224, 224]
            video.append(syncnet.forward_lip(clips).float().cpu())
            cc = mfcc[:, start:stop].permute(1, 0, 2)[:, None].to(device)  # [n, 1, 13, 20]
            audio.append(syncnet.forward_aud(cc).float().cpu())
    return torch.cat(video), torch.cat(audio)


def lse_video(syncnet, frames: np.ndarray, wav: np.ndarray, vshift: int = 15, batch_size: int = 20) -> LSEScore:
    """LSE-D, LSE-C and offset of one clip: :func:`syncnet_embeddings` then
    :func:`lse_scores` (``vshift`` 15 as ``calculate_scores_LRS.py``). Errors as those."""
    return lse_scores(*syncnet_embeddings(syncnet, frames, wav, batch_size), vshift=vshift)


def avhubert_clip_features(model, rois: np.ndarray | None = None, audio: np.ndarray | None = None) -> torch.Tensor:
    """Last-layer AV-HuBERT features of one clip (``extract_finetune``
    semantics: a missing stream is zeros after its frontend, spec §1.4).

    Args:
        model: :class:`engine.models.avhubert.AVHubert` in eval mode (any device).
        rois: ``[T, 88, 88]`` float32 normalised mouth ROIs
            (:func:`engine.face.mouth_rois`), or None for audio only.
        audio: ``[T, 104]`` float32 (:func:`engine.audio.avhubert_audio_features`
            aligned to the T video frames), or None for video only.

    Returns:
        ``[T, D]`` float32 CPU tensor.

    Raises:
        ValueError: as ``AVHubert.extract_features`` (both None, different T).
    """
    param = next(model.parameters())
    video = None if rois is None else torch.as_tensor(rois)[None, None].to(param)
    audio = None if audio is None else torch.as_tensor(audio).T[None].to(param)
    with torch.no_grad():
        return model.extract_features(audio=audio, video=video)[0].float().cpu()


def avs_video(model, rois: np.ndarray, audio: np.ndarray, reference_rois: np.ndarray | None = None) -> dict[str, float]:
    """AVSu, and with a reference AVSm and AVSv, of one clip (eq. 4-6, :func:`avs_scores`).

    ``audio`` is the driving speech; the multimodal features of the
    generated and of the reference video are both taken with it.

    Args:
        model: :class:`engine.models.avhubert.AVHubert` in eval mode.
        rois: ``[T, 88, 88]`` mouth ROIs of the generated clip.
        audio: ``[T, 104]`` AV-HuBERT audio features of the driving speech.
        reference_rois: ``[T, 88, 88]`` mouth ROIs of the ground truth, frame-aligned, or None.

    Returns:
        ``{"AVSu": ...}``, plus ``"AVSm"``, ``"AVSv"`` with a reference.

    Raises:
        ValueError: frame counts differ.
    """
    if len(rois) != len(audio) or (reference_rois is not None and len(reference_rois) != len(rois)):
        raise ValueError("mouth ROIs, audio features and reference ROIs must have the same frame count")
    audio_only = avhubert_clip_features(model, audio=audio)
    video_only = avhubert_clip_features(model, rois=rois)
    if reference_rois is None:
        return avs_scores([audio_only], [video_only])
    multimodal = avhubert_clip_features(model, rois=rois, audio=audio)
    if reference_rois is rois:  # a video against itself: the same features
        gt_video_only, gt_multimodal = video_only, multimodal
    else:
        gt_video_only = avhubert_clip_features(model, rois=reference_rois)
        gt_multimodal = avhubert_clip_features(model, rois=reference_rois, audio=audio)
    return avs_scores([audio_only], [video_only], multimodal=[multimodal], gt_video_only=[gt_video_only],
                      gt_multimodal=[gt_multimodal])


def face_crops(frames, landmarks: np.ndarray, size: int = 96) -> np.ndarray:
    """The face crops SSIM, PSNR and FID are computed on.

    TalkLip crops ground truth and generated frames with the ground truth's
    S3FD box and resizes to 96×96 (spec §5); here the box is
    :func:`engine.face.crop_box` ``"wav2lip"`` (an approximation of that
    S3FD box) of the reference's landmarks, per frame, frames without a face
    interpolated. Pass the same reference landmarks for both videos so that
    both are cut at the same pixels.

    Args:
        frames: iterable of ``[H, W, 3]`` uint8 frames.
        landmarks: ``[T, 478, 2]`` reference landmarks (NaN rows allowed).
        size: crop side (96).

    Returns:
        ``[min(T, frames), size, size, 3]`` uint8, channels as given.

    Raises:
        ValueError: no face in any reference frame.
    """
    landmarks = interpolate_landmarks(landmarks)
    crops = [crop(frame, crop_box(points, "wav2lip"), size) for frame, points in zip(frames, landmarks)]
    return np.stack(crops)


def inception_activations(model, images: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """pool3 activations of images as pytorch-fid computes them (``ToTensor``
    to [0, 1], then :class:`engine.models.inception.FIDInceptionV3`).

    Args:
        model: ``FIDInceptionV3`` in eval mode (any device).
        images: ``[N, H, W, 3]`` uint8 RGB.
        batch_size: images per forward pass (50 in pytorch-fid).

    Returns:
        ``[N, 2048]`` float64.
    """
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start: start + batch_size]))
            batch = batch.permute(0, 3, 1, 2).float().div(255).to(device)
            out.append(model(batch).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))


# ---------------------------------------------------------------------------
# Weights-free mouth metrics (issue 9): no AV-HuBERT, SyncNet or Inception.
#
# All take MediaPipe face-mesh landmarks ``[T, 478, 2]`` in frame pixels
# (:func:`engine.face.track_landmarks`; NaN rows where no face was found) and
# skip frames without a face. "Input" is the video (or still image) the mouth
# was re-rendered on, "output" the re-rendered video, frame-aligned with it.

LIP_BOX_PAD = 0.25
"""Padding of the lip box on each side, as a fraction of its width (left, right) and height (top, bottom)."""
GENERATOR_SIZE = 96
"""Default face side (pixels) of the generator, for the sharpness "at the generator's scale"."""
LAPLACIAN_KSIZE = 1
"""``cv2.Laplacian`` aperture: 1, the 4-neighbour kernel ``[[0,1,0],[1,-4,1],[0,1,0]]`` (OpenCV's
default; the finest detail, which a 96 px generator is the first to lose)."""
INNER_LIP_POINTS = (13, 14)
"""MediaPipe inner-lip midpoints, upper and lower: their distance is the mouth opening (the inner-lip gap)."""
NOSE_TIP = 1
"""MediaPipe nose-tip point: :func:`upper_face_psnr` compares the face box above it."""
NATURAL_OPENING_STD = 0.025
"""Standard deviation over frames of the inner-lip gap / face height (:func:`mouth_opening`) of real
people speaking: what :func:`opening_ratio` divides by when the source is a still image (whose gap
does not vary). Measured with :func:`mouth_opening` on 13 real clips of ``../shared/data`` (up to
10 s each, MediaPipe landmarks): the six GRID clips of ``video/`` 0.020-0.041 (mean 0.030; read
speech, carefully articulated), the LatentSync demo 0.036, six ``train/web`` clips (LRS2, LRS3/TED,
HDTF, VoxCeleb2, a news presenter, Obama) 0.019-0.031 (mean 0.024). Median of all 13: 0.0255, mean
0.028; the median, rounded, is the constant (conversational speech sits at the low end)."""
ENVELOPE_WINDOW_S = 0.04
"""Length of the speech window per video frame for :func:`speech_envelope` (one frame at 25 fps)."""
ENVELOPE_FLOOR = 1e-4
"""Smallest RMS (-80 dB of full scale) before the log in :func:`speech_envelope`: digital silence
gives ``log(1e-4)``, not ``-inf``."""


def _has_face(landmarks: np.ndarray) -> np.ndarray:
    """``[T]`` bool: the frame's landmark row holds no NaN."""
    return ~np.isnan(landmarks).any(axis=(1, 2))


def _check_landmarks(landmarks, name: str = "landmarks") -> np.ndarray:
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (478, 2):
        raise ValueError(f"{name}: expected [T, 478, 2] face-mesh landmarks, got {landmarks.shape}")
    return landmarks


def lip_box(landmarks: np.ndarray, pad: float = LIP_BOX_PAD) -> Box:
    """The bounding box of the 20 lip points (:data:`engine.face.MOUTH_POINTS`) of one frame's
    ``[478, 2]`` landmarks (pixels), grown by ``pad`` × its width on the left and on the right and
    ``pad`` × its height at the top and at the bottom. Float pixels; may extend past the frame."""
    points = np.asarray(landmarks, np.float64)[list(MOUTH_POINTS)]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    w, h = x1 - x0, y1 - y0
    return Box(float(x0 - pad * w), float(y0 - pad * h), float(x1 + pad * w), float(y1 + pad * h))


def _clip_box(box: Box, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """``box`` in whole pixels (:func:`engine.face.box_pixels`) cut to a frame of ``shape``; None if empty."""
    x0, y0, x1, y1 = box_pixels(box)
    h, w = shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _grey(frame: np.ndarray) -> np.ndarray:
    """BT.601 luma (``cv2.COLOR_RGB2GRAY``: 0.299 R + 0.587 G + 0.114 B) of an RGB frame, float32, not rounded."""
    return cv2.cvtColor(np.asarray(frame).astype(np.float32), cv2.COLOR_RGB2GRAY)


def _laplacian_variance(grey: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Variance of ``cv2.Laplacian`` (CV_64F, :data:`LAPLACIAN_KSIZE`) of ``grey`` inside ``box``; the
    Laplacian is taken on the box grown by one pixel (where the frame allows), so that the box's own
    border uses the real neighbouring pixels rather than a reflection."""
    x0, y0, x1, y1 = box
    h, w = grey.shape
    ex0, ey0, ex1, ey1 = max(0, x0 - 1), max(0, y0 - 1), min(w, x1 + 1), min(h, y1 + 1)
    lap = cv2.Laplacian(grey[ey0:ey1, ex0:ex1].astype(np.float64), cv2.CV_64F, ksize=LAPLACIAN_KSIZE)
    return float(lap[y0 - ey0: y1 - ey0, x0 - ex0: x1 - ex0].var())


def mouth_sharpness(frames, landmarks: np.ndarray, generator_size: int | None = None) -> np.ndarray:
    """Variance of the Laplacian of the lip box of each frame: how much fine detail the mouth holds.

    Per frame: the grey image (BT.601 luma in float, 0-255 scale), its
    ``cv2.Laplacian`` (CV_64F, ksize 1: the 4-neighbour kernel), and the
    variance of the Laplacian over the pixels of :func:`lip_box` (the lip
    points' bounding box padded by 25 % on each side, rounded with
    :func:`engine.face.box_pixels`, cut to the frame).

    ``generator_size`` None: at full resolution. An int (e.g. 96): "at the
    generator's scale": the frame is first resized by ``s = generator_size /
    side`` of :func:`engine.face.crop_box` ``"square"`` of the same landmarks
    (``cv2.resize`` with ``fx = fy = s``, ``INTER_AREA``; the face then has
    about the size the generator sees), and the lip box is scaled by ``s``.
    Detail finer than the generator can draw counts at full resolution
    only.

    Pass the *input's* landmarks for both the input and the output frames
    (:func:`mouth_sharpness_ratio`) so that the same pixels are compared.

    Args:
        frames: iterable of ``[H, W, 3]`` uint8 RGB frames.
        landmarks: ``[T, 478, 2]`` landmarks (pixels), one row per frame; NaN rows allowed.
        generator_size: face side of the generator in pixels, or None.

    Returns:
        ``[T]`` float64, variances in grey levels² (>= 0; on the scale of the
        resized frame with ``generator_size``); NaN where the landmarks are
        NaN or the box lies outside the frame. T is ``len(landmarks)``; frames
        beyond it are ignored.

    Raises:
        ValueError: landmarks not ``[T, 478, 2]``, fewer frames than landmark rows.
    """
    landmarks = _check_landmarks(landmarks)
    out = np.full(len(landmarks), np.nan)
    valid = _has_face(landmarks)
    n = 0
    for i, frame in zip(range(len(landmarks)), frames):
        n += 1
        if not valid[i]:
            continue
        box = lip_box(landmarks[i])
        if generator_size is None:
            pixels = _clip_box(box, frame.shape)
            if pixels is not None:
                x0, y0, x1, y1 = pixels
                out[i] = _laplacian_variance(_grey(frame[y0:y1, x0:x1]), (0, 0, x1 - x0, y1 - y0))
            continue
        s = generator_size / crop_box(landmarks[i], "square").width
        grey = cv2.resize(_grey(frame), None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        pixels = _clip_box(Box(box.x0 * s, box.y0 * s, box.x1 * s, box.y1 * s), grey.shape)
        if pixels is not None:
            out[i] = _laplacian_variance(grey, pixels)
    if n < len(landmarks):
        raise ValueError(f"{n} frames for {len(landmarks)} landmark rows")
    return out


def sharpness_ratio(input_variances: np.ndarray, output_variances: np.ndarray) -> float:
    """Mouth sharpness of a clip, output over input, as a ratio of means: the sum of the output's
    per-frame Laplacian variances (:func:`mouth_sharpness`) over the sum of the input's, over the
    frames where both are defined (a ratio of means, not a mean of ratios: frames with little
    detail in the input do not dominate).

    Returns:
        float >= 0; 1 when the mouth is as sharp as the input, < 1 blurrier, > 1 more high-frequency
        content (sharper, or noise and artefacts). NaN with no common frame or no input detail.

    Raises:
        ValueError: the arrays differ in shape.
    """
    a, b = np.asarray(input_variances, np.float64), np.asarray(output_variances, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"variance arrays differ in shape: {a.shape} and {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    total = a[valid].sum()
    return float(b[valid].sum() / total) if valid.any() and total > 0 else math.nan


def mouth_sharpness_ratio(inputs, outputs, landmarks: np.ndarray, generator_size: int | None = None) -> float:
    """:func:`sharpness_ratio` of :func:`mouth_sharpness` of ``outputs`` over that of ``inputs``, both
    with the input's ``landmarks`` ``[T, 478, 2]`` (the same lip box; frames ``[H, W, 3]`` uint8 RGB).
    ``generator_size`` None: full resolution; 96: at the generator's scale. Errors as those."""
    return sharpness_ratio(mouth_sharpness(inputs, landmarks, generator_size),
                           mouth_sharpness(outputs, landmarks, generator_size))


def face_height(landmarks: np.ndarray) -> float:
    """Face height of a clip in pixels: the median over the frames with a face of the height
    (max y - min y) of the box of all 478 landmarks. One number per clip, so that a ratio of the
    per-frame mouth gap to it varies only with the gap.

    Raises:
        ValueError: not ``[T, 478, 2]``, or no frame with a face.
    """
    landmarks = _check_landmarks(landmarks)
    valid = _has_face(landmarks)
    if not valid.any():
        raise ValueError("no face found in any frame")
    y = landmarks[valid, :, 1]
    return float(np.median(y.max(axis=1) - y.min(axis=1)))


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """The inner-lip gap of each frame over the clip's face height.

    Per frame: the Euclidean distance between MediaPipe points 13 and 14
    (:data:`INNER_LIP_POINTS`, the middles of the upper and lower inner lip)
    in pixels, divided by :func:`face_height` of the clip. Dimensionless:
    about 0 for a closed mouth, 0.05-0.15 for an open one.

    Returns:
        ``[T]`` float64, NaN where no face.

    Raises:
        ValueError: not ``[T, 478, 2]``, or no frame with a face.
    """
    landmarks = _check_landmarks(landmarks)
    upper, lower = INNER_LIP_POINTS
    return np.linalg.norm(landmarks[:, upper] - landmarks[:, lower], axis=-1) / face_height(landmarks)


def opening_ratio(output_landmarks: np.ndarray, source_landmarks: np.ndarray | None = None) -> float:
    """How much the output's mouth moves, relative to the source's.

    The standard deviation over frames (population, frames without a face
    skipped) of :func:`mouth_opening` of the output, over the same of the
    source. A source that is a still image has no variation of its own:
    pass ``source_landmarks=None`` to divide by :data:`NATURAL_OPENING_STD`
    (real speech) instead.

    Returns:
        float >= 0: about 1 for a mouth that moves as much as the source's
        (or as real speech), near 0 for a frozen mouth, > 1 for exaggerated
        motion. NaN with fewer than 2 frames with a face in the output (or the
        source), or a source whose gap does not vary.

    Raises:
        ValueError: landmarks not ``[T, 478, 2]``, or no face at all in one of them.
    """
    def gap_std(landmarks):
        gap = mouth_opening(landmarks)
        gap = gap[np.isfinite(gap)]
        return float(gap.std()) if len(gap) >= 2 else math.nan

    out = gap_std(output_landmarks)
    src = NATURAL_OPENING_STD if source_landmarks is None else gap_std(source_landmarks)
    return out / src if src > 0 else math.nan


def speech_envelope(wav: np.ndarray, n_frames: int, fps: float = 25.0, window_s: float = ENVELOPE_WINDOW_S,
                    floor: float = ENVELOPE_FLOOR, sample_rate: int = 16000) -> np.ndarray:
    """The log-RMS envelope of speech, one value per video frame.

    Frame i (at ``t = i / fps`` s, the frame's timestamp) gets the samples
    ``[c - L // 2, c - L // 2 + L)`` with ``c = round(t · sample_rate)``,
    ``L = round(window_s · sample_rate)`` (640 samples, 40 ms, by default:
    centred on the frame, as the project's own mel window is); samples
    before 0 or past the end count as silence (zeros). Value:
    ``ln(max(RMS, floor))``, RMS = sqrt(mean of the squared samples).

    Args:
        wav: ``[n]`` 16 kHz mono float32 in [-1, 1] (:func:`engine.audio.load_audio`).
        n_frames: video frames to cover.
        fps, window_s, floor, sample_rate: see above.

    Returns:
        ``[n_frames]`` float64, natural log of the RMS (0 is full scale; ``ln(1e-4) = -9.2`` is the floor).

    Raises:
        ValueError: ``wav`` not 1-D, ``n_frames`` < 0, a window shorter than one sample.
    """
    if n_frames < 0:
        raise ValueError(f"expected n_frames >= 0, got {n_frames}")
    centres = np.round(np.arange(n_frames) / fps * sample_rate).astype(np.int64)
    return log_rms_at(wav, centres, window_s, floor, sample_rate)


def log_rms_at(wav: np.ndarray, centres: np.ndarray, window_s: float = ENVELOPE_WINDOW_S,
               floor: float = ENVELOPE_FLOOR, sample_rate: int = 16000) -> np.ndarray:
    """:func:`speech_envelope`'s value at given sample positions: ``ln(max(RMS, floor))`` of the
    ``L = round(window_s · sample_rate)`` samples ``[c - L // 2, c - L // 2 + L)`` around each centre
    ``c`` (samples outside ``wav`` count as silence). ``[k]`` float64.

    Raises ValueError: ``wav`` not 1-D, a window shorter than one sample.
    """
    wav = np.asarray(wav, np.float64)
    length = int(round(window_s * sample_rate))
    if wav.ndim != 1 or length < 1:
        raise ValueError(f"expected 1-D audio and a window of >= 1 sample, got {wav.shape}, {length}")
    energy = np.concatenate([[0.0], np.cumsum(wav * wav)])
    starts = np.asarray(centres, np.int64) - length // 2
    a, b = np.clip(starts, 0, len(wav)), np.clip(starts + length, 0, len(wav))
    rms = np.sqrt(np.maximum(energy[b] - energy[a], 0.0) / length)
    return np.log(np.maximum(rms, floor))


def _detrend(x: np.ndarray, frames: int) -> np.ndarray:
    """``x`` minus its centred moving average over ``frames`` frames (NaN entries skipped, and windows
    shortened at the ends: the average of the finite values inside each window)."""
    valid = np.isfinite(x)
    kernel = np.ones(frames)
    total = np.convolve(np.where(valid, x, 0.0), kernel, mode="same")
    count = np.convolve(valid.astype(np.float64), kernel, mode="same")
    return x - total / np.maximum(count, 1)


def audio_mouth_coupling(landmarks: np.ndarray, wav: np.ndarray, fps: float = 25.0,
                         window_s: float = ENVELOPE_WINDOW_S, detrend_frames: int | None = None) -> float:
    """How well the mouth opens with the speech: the Pearson correlation, at lag 0, between the
    per-frame mouth opening (:func:`mouth_opening`: inner-lip gap / face height) and the speech's
    log-RMS envelope (:func:`speech_envelope`, 40 ms windows centred on each frame), over the
    frames with a face. Frames past the end of the speech see silence (the floor).

    On short clips with silence before and after the sentence (GRID), the
    plain r mostly says "the mouth moves while there is speech": the six
    GRID clips of ``../shared/data/video`` give 0.30-0.64 (mean 0.49) with
    their own speech, but also 0.06-0.57 (mean 0.36) with another GRID
    clip's speech, and -0.33 to -0.57 with their own speech rotated by half
    the clip. ``detrend_frames`` (e.g. 9, 0.36 s) subtracts from both series
    their centred moving average over that many frames first, which leaves
    the syllable-rate part: own speech 0.30-0.71 (mean 0.45), another GRID
    clip's speech -0.42 to 0.51 (mean 0.00). On continuous speech (seven
    LatentSync and ``train/web`` clips) both versions are weak and can be
    negative (-0.44 to 0.48 with own speech), so read this metric as a
    comparison of methods on the same clips and audio, not as an absolute
    verdict.

    Args:
        landmarks: ``[T, 478, 2]`` of the video; frame i at ``i / fps`` s.
        wav: its speech, ``[n]`` 16 kHz mono float32; sample 0 at frame 0.
        fps: video frame rate.
        window_s: speech window per frame (:func:`speech_envelope`).
        detrend_frames: None (the plain r, the default) or a moving-average length in frames (>= 2).

    Returns:
        r in [-1, 1]; NaN with fewer than 3 frames with a face, or a gap or an envelope that is constant.

    Raises:
        ValueError: landmarks not ``[T, 478, 2]``, no face at all, ``detrend_frames`` < 2.
    """
    gap = mouth_opening(landmarks)
    envelope = speech_envelope(wav, len(gap), fps, window_s)
    if detrend_frames is not None:
        if detrend_frames < 2:
            raise ValueError(f"detrend_frames must be >= 2 (or None), got {detrend_frames}")
        gap, envelope = _detrend(gap, detrend_frames), _detrend(envelope, detrend_frames)
    valid = np.isfinite(gap)
    if valid.sum() < 3:
        return math.nan
    x, y = gap[valid] - gap[valid].mean(), envelope[valid] - envelope[valid].mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def upper_face_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The face above the nose tip in one frame: the columns and rows of :func:`engine.face.crop_box`
    ``"square"`` of ``[478, 2]`` landmarks, rounded with :func:`engine.face.box_pixels`, from its top
    row down to (not including) the row ``round(y)`` of the nose tip (:data:`NOSE_TIP`), cut to a
    frame of ``shape`` (H, W, ...). Returns ``(x0, y0, x1, y1)`` (x1, y1 exclusive), or None if empty."""
    x0, y0, x1, y1 = box_pixels(crop_box(landmarks, "square"))
    y1 = min(y1, round(float(landmarks[NOSE_TIP, 1])))
    return _clip_box(Box(x0, y0, x1, y1), shape)


def upper_face_psnr(inputs, outputs, landmarks: np.ndarray) -> float:
    """Outside-mouth preservation: the PSNR of the face above the nose tip, output against input.

    Per frame, the pixels of :func:`upper_face_box` of the *input's*
    landmarks (all three channels, float64); over the clip the PSNR of the
    pooled squared error (``10 log10(255² / MSE)``, MSE the mean over all
    those pixels of all frames with a face), not the mean of per-frame PSNRs,
    which one untouched frame (PSNR inf) would make infinite.

    Args:
        inputs, outputs: iterables of ``[H, W, 3]`` uint8 frames of the same size, frame-aligned.
        landmarks: ``[T, 478, 2]`` of the input; NaN rows are skipped.

    Returns:
        dB; ``inf`` when the pixels are identical (the generator left the upper face alone, as a
        paste-back should); NaN with no frame with a face.

    Raises:
        ValueError: landmarks not ``[T, 478, 2]``; frame shapes differ.
    """
    landmarks = _check_landmarks(landmarks)
    valid = _has_face(landmarks)
    squared, count = 0.0, 0
    for i, (a, b) in zip(range(len(landmarks)), zip(inputs, outputs)):
        if a.shape != b.shape:
            raise ValueError(f"frame shapes differ: {a.shape} and {b.shape}")
        box = upper_face_box(landmarks[i], a.shape) if valid[i] else None
        if box is None:
            continue
        x0, y0, x1, y1 = box
        diff = a[y0:y1, x0:x1].astype(np.float64) - b[y0:y1, x0:x1].astype(np.float64)
        squared += float((diff * diff).sum())
        count += diff.size
    if count == 0:
        return math.nan
    mse = squared / count
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def lip_landmark_error(reference: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Lip-landmark error of each frame in % of the face height.

    Per frame: the mean over the 20 lip points (:data:`engine.face.MOUTH_POINTS`)
    of the Euclidean distance between matching points of ``generated`` and
    ``reference`` (pixels, not aligned: a mouth in the wrong place counts),
    divided by :func:`face_height` of the reference clip, times 100. Unlike
    :func:`lmd` (per-frame eye distance), the normaliser is one number per
    clip; the clip's value is the mean over frames with a face in both.

    Args:
        reference, generated: ``[T, 478, 2]`` landmarks (pixels) of frames of the same size.

    Returns:
        ``[T]`` float64 >= 0, 0 for identical landmarks; NaN where either has no face.

    Raises:
        ValueError: shapes differ or are not ``[T, 478, 2]``; no face in the reference.
    """
    reference, generated = _check_landmarks(reference, "reference"), _check_landmarks(generated, "generated")
    if reference.shape != generated.shape:
        raise ValueError(f"landmark shapes differ: {reference.shape} and {generated.shape}")
    mouth = list(MOUTH_POINTS)
    distance = np.linalg.norm(generated[:, mouth] - reference[:, mouth], axis=-1).mean(axis=1)
    return 100.0 * distance / face_height(reference)


MOUTH_METRICS = ("sharpness_full", "sharpness_gen", "opening_ratio", "coupling", "coupling_source",
                 "psnr_upper", "lip_error_pct")
"""Keys of :func:`mouth_metrics`."""


def _frame_list(frames, name: str) -> list[np.ndarray]:
    """Frames as a list of ``[H, W, 3]`` uint8 arrays; one ``[H, W, 3]`` array is a one-frame list."""
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    frames = [np.asarray(f) for f in frames]
    if not frames:
        raise ValueError(f"{name}: no frames")
    for f in frames:
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"{name}: expected [H, W, 3] uint8 RGB frames, got {f.dtype} {f.shape}")
    return frames


def mouth_metrics(inputs, outputs, wav: np.ndarray | None, input_landmarks: np.ndarray | None = None,
                  output_landmarks: np.ndarray | None = None, fps: float = 25.0,
                  generator_size: int = GENERATOR_SIZE, source_wav: np.ndarray | None = None,
                  detrend_frames: int | None = None) -> dict[str, float]:
    """Every weights-free mouth metric of an output clip against its input.

    Args:
        inputs: the input video, ``[T, H, W, 3]`` uint8 RGB or an iterable of
            frames, or a still image (``[H, W, 3]``, a one-frame clip, or
            frames that are all equal to the first): then every output frame
            is compared with that image.
        outputs: the output video, frame-aligned with the input (frame i with
            frame i; the shorter sets the length, with a still input the
            output's). An output up to 1 px wider or taller than the input
            (H.264 writers pad odd sizes) is cut back to the input size.
        wav: the driving speech of the output (16 kHz mono float32, sample 0
            at frame 0), or None (no coupling).
        input_landmarks, output_landmarks: ``[T, 478, 2]`` (NaN: no face), or
            None to run :func:`engine.face.track_landmarks` on the frames.
            For a still input one row (or the row of its first frame) is used.
        fps: frame rate of the clips.
        generator_size: face side for ``sharpness_gen``.
        source_wav: the audio for ``coupling_source`` (default: ``wav``).
        detrend_frames: passed to :func:`audio_mouth_coupling` (None: the plain r).

    Returns:
        A dict of floats, NaN where undefined:

        * ``sharpness_full`` / ``sharpness_gen``: :func:`mouth_sharpness_ratio`
          at full resolution / at the generator's scale (1 = as sharp as the input);
        * ``opening_ratio``: :func:`opening_ratio` (the natural level for a still input);
        * ``coupling``: :func:`audio_mouth_coupling` of the output with ``wav``;
        * ``coupling_source``: the same of the input with ``source_wav`` (NaN for a still input);
        * ``psnr_upper``: :func:`upper_face_psnr` (dB);
        * ``lip_error_pct``: mean over frames of :func:`lip_landmark_error`,
          the input as the reference (%, 0 = same lips).

        Frames without a face in the input are skipped by the metrics that
        use its landmarks (sharpness, PSNR, lip error); frames without a face
        in the output by those that use the output's (opening, coupling, lip
        error).

    Raises:
        ValueError: no frames, frames that are not uint8 RGB, frame sizes that
            differ by more than 1 px, landmarks of the wrong shape or length,
            or no face in any input frame.
    """
    inputs, outputs = _frame_list(inputs, "inputs"), _frame_list(outputs, "outputs")
    (ih, iw), (oh, ow) = inputs[0].shape[:2], outputs[0].shape[:2]
    if (ih, iw) != (oh, ow):
        if not (0 <= oh - ih <= 1 and 0 <= ow - iw <= 1):
            raise ValueError(f"frame sizes differ: {iw}x{ih} input, {ow}x{oh} output")
        outputs = [f[:ih, :iw] for f in outputs]
    still = len(inputs) == 1 or all(np.array_equal(f, inputs[0]) for f in inputs[1:])
    if still:
        inputs = inputs[:1]
    n = len(outputs) if still else min(len(inputs), len(outputs))
    outputs = outputs[:n]

    if input_landmarks is None:
        input_landmarks = track_landmarks(inputs, fps)
    input_landmarks = _check_landmarks(input_landmarks, "input_landmarks")
    if still:
        input_landmarks = input_landmarks[:1]
    elif len(input_landmarks) < n:
        raise ValueError(f"input_landmarks: {len(input_landmarks)} rows for {n} frames")
    if not _has_face(input_landmarks).any():
        raise ValueError("no face found in any input frame")
    if output_landmarks is None:
        output_landmarks = track_landmarks(outputs, fps)
    output_landmarks = _check_landmarks(output_landmarks, "output_landmarks")
    if len(output_landmarks) < n:
        raise ValueError(f"output_landmarks: {len(output_landmarks)} rows for {n} frames")
    output_landmarks = output_landmarks[:n]
    reference = np.repeat(input_landmarks, n, axis=0) if still else input_landmarks[:n]
    input_frames = inputs * n if still else inputs[:n]

    result = {}
    for key, size in (("sharpness_full", None), ("sharpness_gen", generator_size)):
        if still:
            variances = np.repeat(mouth_sharpness(inputs, input_landmarks, size), n)
        else:
            variances = mouth_sharpness(input_frames, reference, size)
        result[key] = sharpness_ratio(variances, mouth_sharpness(outputs, reference, size))
    has_output_face = _has_face(output_landmarks).any()
    result["opening_ratio"] = (opening_ratio(output_landmarks, None if still else reference)
                               if has_output_face else math.nan)
    result["coupling"] = (audio_mouth_coupling(output_landmarks, wav, fps, detrend_frames=detrend_frames)
                          if has_output_face and wav is not None else math.nan)
    source_wav = wav if source_wav is None else source_wav
    result["coupling_source"] = (audio_mouth_coupling(reference, source_wav, fps, detrend_frames=detrend_frames)
                                 if not still and source_wav is not None else math.nan)
    result["psnr_upper"] = upper_face_psnr(input_frames, outputs, reference)
    errors = lip_landmark_error(reference, output_landmarks)
    errors = errors[np.isfinite(errors)]
    result["lip_error_pct"] = float(errors.mean()) if len(errors) else math.nan
    return {k: result[k] for k in MOUTH_METRICS}


# ---------------------------------------------------------------------------
# Lip-sync expert (SyncNet_color) scores of a clip: the project's own expert,
# not syncnet_python's, so not comparable with published LSE-C / LSE-D.

EXPERT_WINDOW = 5
"""Frames per window of the lip expert (Wav2Lip's ``syncnet_T``)."""


def expert_crops(frames, landmarks: np.ndarray, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """The face crops the lip expert judges: our generator's crop of each frame.

    Frame i is cut with :func:`engine.face.crop` at :func:`engine.face.crop_box`
    ``"square"`` of its own landmarks (the crop the bundled expert was trained
    on), resized to ``size``. Frames without a face are **not** interpolated:
    their crop is black and ``valid`` is False, and :func:`expert_sync` drops
    every window that holds one of them.

    Args:
        frames: iterable of ``[H, W, 3]`` uint8 RGB frames.
        landmarks: ``[T, 478, 2]`` of those frames (NaN rows: no face).
        size: crop side (96, the expert's).

    Returns:
        ``(crops [n, size, size, 3] uint8 RGB, valid [n] bool)``, n = min(T, frames).

    Raises:
        ValueError: landmarks not ``[T, 478, 2]``.
    """
    landmarks = _check_landmarks(landmarks)
    has_face = _has_face(landmarks)
    crops, valid = [], []
    for frame, points, face in zip(frames, landmarks, has_face):
        if face:
            try:
                crops.append(crop(frame, crop_box(points, "square"), size))
                valid.append(True)
                continue
            except ValueError:  # a box entirely outside the frame
                pass
        crops.append(np.zeros((size, size, 3), np.uint8))
        valid.append(False)
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, bool)
    return np.stack(crops), np.array(valid)


def _embed_pairs(expert, mels: torch.Tensor, faces: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio embeddings of every mel window and face embeddings of every face window, through
    ``expert(mels, faces)`` on pairs (the shorter list padded by repeating its last item)."""
    n = max(len(mels), len(faces))
    mel_index = torch.arange(n).clamp(max=len(mels) - 1)
    face_index = torch.arange(n).clamp(max=len(faces) - 1)
    try:
        device = next(expert.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    audio, video = [], []
    for start in range(0, n, batch_size):
        a, v = expert(mels[mel_index[start: start + batch_size]].to(device),
                      faces[face_index[start: start + batch_size]].to(device))
        audio.append(a.float().cpu())
        video.append(v.float().cpu())
    return torch.cat(audio)[: len(mels)], torch.cat(video)[: len(faces)]


def expert_sync(expert, crops: np.ndarray, wav: np.ndarray, fps: float = 25.0, max_offset: int = 15,
                valid: np.ndarray | None = None, stride: int = 1, batch_size: int = 64) -> dict:
    """The lip expert's verdict on a clip: sync confidence, best audio offset, and how sure it is.

    Windows: the 5 frames ``t .. t+4`` for ``t = 0, stride, 2·stride, …,
    T-5``, keeping only those whose 5 frames all have a face (``valid``).
    The window's face input is the lower halves of its crops
    (:func:`engine.models.syncnet.lower_halves`). Its audio at shift ``s``
    (frames) is the Wav2Lip mel window ``engine.audio.mel_window(mel,
    (t + s) / fps, 0.0)`` of ``mel = melspectrogram(wav)``: the 0.2 s that
    starts at frame ``t + s`` (at ``s = 0`` the 0.2 s the window's frames
    span, the expert's training pairs). Speech before 0 s or past its end is
    silence (mel -4), as syncnet_python zero-pads. Every window is scored
    against shifts ``s = -max_offset … +max_offset``: ``cos[t, s]``, the dot
    product of the expert's two L2-normalised embeddings.

    Sign convention: **a positive offset means the audio is late** (it lags
    the video): the sound of frame t is found at t + offset, and advancing
    the audio by ``offset / fps`` s (dropping that much from its start)
    aligns it. Audio delayed by N frames gives ``offset = +N``. This is the
    opposite sign of syncnet_python's "AV offset" (``LSEScore.offset``).

    Args:
        expert: :class:`engine.models.syncnet.SyncNetColor` in eval mode
            (any device), or anything with its ``forward(mels [N,1,80,16],
            faces [N,15,48,96]) -> (audio [N,D], video [N,D])``, L2-normalised.
        crops: ``[T, 96, 96, 3]`` uint8 RGB square face crops of consecutive
            frames (:func:`expert_crops`); other sides are resized to 96.
        wav: the clip's speech, ``[n]`` 16 kHz mono float32, sample 0 at frame 0.
        fps: frame rate of the crops; the expert was trained at 25 fps (a
            5-frame window is 0.2 s there), so read clips at 25 fps.
        max_offset: largest shift tried, in frames (15: ±0.6 s at 25 fps, as LSE).
        valid: ``[T]`` bool, False for frames without a face (default: all True).
        stride: frames between window starts (1: every window).
        batch_size: pairs per forward pass.

    Returns:
        ``{"confidence": float``, mean over windows of ``cos[t, 0]`` (the
        *sync confidence*, higher is better, at most 1);
        ``"offset": int``, the shift (frames, sign above) with the highest
        mean cosine; ``"offset_confidence": float``, median − minimum over
        shifts of the mean cosine *distance* ``1 − curve`` (= maximum −
        median of ``curve``; the LSE-C analogue: how clearly one shift stands
        out, ≥ 0); ``"curve": list[float]``, ``2·max_offset + 1`` mean
        cosines, entry i for shift ``i − max_offset``; ``"windows": int``,
        the windows scored``}``.

    Raises:
        ValueError: crops not ``[T, S, S, 3]``, ``valid`` of another length,
            ``max_offset`` < 0, ``stride`` < 1, or no window of 5 frames
            that all have a face.
        engine.audio.AudioError: speech shorter than 401 samples.
    """
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[3] != 3 or crops.shape[1] != crops.shape[2]:
        raise ValueError(f"expected [T, S, S, 3] face crops, got {crops.shape}")
    valid = np.ones(len(crops), bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != (len(crops),):
        raise ValueError(f"valid: expected [{len(crops)}] flags, got {valid.shape}")
    if max_offset < 0 or stride < 1:
        raise ValueError(f"need max_offset >= 0 and stride >= 1, got {max_offset} and {stride}")
    starts = [t for t in range(0, len(crops) - EXPERT_WINDOW + 1, stride) if valid[t: t + EXPERT_WINDOW].all()]
    if not starts:
        raise ValueError(f"no window of {EXPERT_WINDOW} consecutive frames with a face in each "
                         f"({len(crops)} frames, {int(valid.sum())} with a face)")
    mel = melspectrogram(np.asarray(wav, np.float32))
    shifts = np.arange(-max_offset, max_offset + 1)
    needed = sorted({t + s for t in starts for s in shifts})
    index = {u: i for i, u in enumerate(needed)}
    mels = torch.from_numpy(np.stack([mel_window(mel, u / fps, 0.0) for u in needed]))[:, None]
    faces = torch.from_numpy(np.stack([crops[t: t + EXPERT_WINDOW] for t in starts]))  # [W, 5, S, S, 3]
    faces = lower_halves(faces.permute(0, 1, 4, 2, 3).float().div(255.0))
    was_training = getattr(expert, "training", False)
    if was_training:
        expert.eval()
    try:
        with torch.no_grad():
            audio, video = _embed_pairs(expert, mels, faces, batch_size)
    finally:
        if was_training:
            expert.train()
    rows = torch.tensor([[index[t + s] for s in shifts] for t in starts])  # [W, shifts]
    cos = (video[:, None, :] * audio[rows]).sum(-1).double()  # [W, shifts]
    curve = cos.mean(0).numpy()
    distance = 1.0 - curve
    return {"confidence": float(curve[max_offset]), "offset": int(shifts[int(np.argmax(curve))]),
            "offset_confidence": float(np.median(distance) - distance.min()), "curve": [float(c) for c in curve],
            "windows": len(starts)}
