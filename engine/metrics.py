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
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.audio import syncnet_mfcc
from engine.face import MOUTH_POINTS, OUTER_EYE_CORNERS, crop, crop_box, interpolate_landmarks

__all__ = [
    "LSEScore",
    "activation_statistics",
    "avhubert_clip_features",
    "avs_scores",
    "avs_video",
    "face_crops",
    "fid",
    "frechet_distance",
    "inception_activations",
    "lmd",
    "lse_scores",
    "lse_video",
    "mean_cosine",
    "psnr",
    "ssim",
    "syncnet_embeddings",
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
