"""Lip-sync and image-quality metrics: the arithmetic on features and frames.

Face tracking, mouth ROIs and the networks that produce the features live
elsewhere (``engine.face``, ``engine.models``); these functions take their
outputs.

* AVSu / AVSm / AVSv (Yaman et al. 2024, §4.1, eq. 4-6) from AV-HuBERT
  features (:func:`avs_scores`).
* LSE-D / LSE-C (Prajwal et al. 2020) from syncnet_python embeddings, as
  ``SyncNetInstance.evaluate`` computes them (:func:`lse_scores`, spec §4).
* SSIM and PSNR of one frame pair with the settings of TalkLip's
  ``evaluation/visual_quality.py`` (:func:`ssim`, :func:`psnr`, spec §5).
  The published numbers average them over all frames of all videos (a
  frame-level mean).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LSEScore", "avs_scores", "lse_scores", "mean_cosine", "psnr", "ssim"]

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
