"""AV-HuBERT's mouth ROI from MediaPipe landmarks (engine.face, spec §1.6): the
recipe of av_hubert's ``align_mouth.py`` transcribed with skimage, the shared
affine under ``F.grid_sample``, and a picture of the ROIs of a real clip
(``tests/artifacts/mouth_roi_grid_bbaf2n.png``)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import transform as tf

from engine.face import (MOUTH_POINTS, MOUTH_ROI_CROP, MOUTH_ROI_SIZE, OUTER_EYE_CORNERS, STABLE_POINTS,
                         apply_affines, interpolate_landmarks, mean_face, mouth_roi_affines, mouth_rois,
                         similarity_transforms, track_landmarks)
from engine.models.avhubert import IMAGE_MEAN, IMAGE_STD
from tools.mean_face import EYE_DISTANCE, MOUTH_CENTRE, procrustes_mean

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def grid_landmarks(grid_frames):
    frames, _ = grid_frames
    return track_landmarks(frames)


def test_similarity_transforms_equal_skimage():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 300, (4, 5, 2))
    src[3, :, 0] *= -1  # a mirrored set: the fit must stay a rotation
    dst = rng.uniform(0, 256, (5, 2))
    ours = similarity_transforms(src, dst)
    for s, a in zip(src, ours):
        np.testing.assert_allclose(a, tf.estimate_transform("similarity", s, dst).params[:2], atol=1e-9)
    np.testing.assert_allclose(similarity_transforms(src[0], dst), ours[0])


def reference_crop_patch(frames_grey, landmarks, mean_face_landmarks, window=12):
    """av_hubert preparation/align_mouth.py ``crop_patch`` (warp_img, apply_transform, cut_patch),
    transcribed loop for loop with skimage, on grey frames and kept in float (no uint8 truncation)."""
    stable = list(STABLE_POINTS)

    def cut_patch(img, points, height, width):
        center_x, center_y = np.mean(points, axis=0)
        center_y = min(max(center_y, height), img.shape[0] - height)
        center_x = min(max(center_x, width), img.shape[1] - width)
        return img[int(round(center_y) - round(height)): int(round(center_y) + round(height)),
                   int(round(center_x) - round(width)): int(round(center_x) + round(width))]

    margin = min(len(frames_grey), window)
    q_frame, q_landmarks, sequence = deque(), deque(), []
    for frame_idx, frame in enumerate(frames_grey):
        q_landmarks.append(landmarks[frame_idx])
        q_frame.append(frame)
        if len(q_frame) == margin:
            smoothed = np.mean(q_landmarks, axis=0)
            cur_landmarks, cur_frame = q_landmarks.popleft(), q_frame.popleft()
            trans = tf.estimate_transform("similarity", smoothed[stable], mean_face_landmarks[stable])
            trans_frame = tf.warp(cur_frame, inverse_map=trans.inverse, output_shape=(256, 256)) * 255
            sequence.append(cut_patch(trans_frame, trans(cur_landmarks)[list(MOUTH_POINTS)], 48, 48))
        if frame_idx == len(landmarks) - 1:
            while q_frame:
                trans_frame = tf.warp(q_frame.popleft(), inverse_map=trans.inverse, output_shape=(256, 256)) * 255
                sequence.append(cut_patch(trans_frame, trans(q_landmarks.popleft())[list(MOUTH_POINTS)], 48, 48))
    return np.array(sequence)


def test_rois_follow_the_reference_recipe(grid_frames, grid_landmarks):
    frames, _ = grid_frames
    frames, landmarks = frames[:30], grid_landmarks[:30].astype(np.float64)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    expected = reference_crop_patch(grey, landmarks, mean_face())
    ours = mouth_rois(frames, mouth_roi_affines(landmarks)) * IMAGE_STD + IMAGE_MEAN
    off = (MOUTH_ROI_SIZE - MOUTH_ROI_CROP) // 2
    expected = expected[:, off: off + MOUTH_ROI_CROP, off: off + MOUTH_ROI_CROP] / 255.0
    assert ours.shape == expected.shape == (30, 88, 88) and ours.dtype == np.float32
    # the same pixels: same geometry, same bilinear interpolation (kept in float on both sides)
    assert np.abs(ours - expected).max() < 0.02 / 255


def test_the_affine_serves_grid_sample(grid_frames, grid_landmarks):
    """The differentiable path: ``F.grid_sample`` with the inverse of the same affine gives the same ROI."""
    frames, _ = grid_frames
    affines = mouth_roi_affines(grid_landmarks)[::25]
    frames = frames[::25]
    ours = mouth_rois(frames, affines) * IMAGE_STD + IMAGE_MEAN
    grey = torch.from_numpy(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])).float()[:, None] / 255
    h, w = grey.shape[-2:]
    full = torch.from_numpy(np.concatenate([affines, np.tile([[[0.0, 0.0, 1.0]]], (len(affines), 1, 1))], 1))
    inverse = torch.linalg.inv(full)[:, :2].float()  # ROI px -> frame px
    ys, xs = torch.meshgrid(torch.arange(float(MOUTH_ROI_SIZE)), torch.arange(float(MOUTH_ROI_SIZE)),
                            indexing="ij")
    roi_xy1 = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # [96, 96, 3]
    frame_xy = torch.einsum("nij,hwj->nhwi", inverse, roi_xy1)
    grid = torch.stack([(2 * frame_xy[..., 0] + 1) / w - 1, (2 * frame_xy[..., 1] + 1) / h - 1], -1)
    sampled = F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    off = (MOUTH_ROI_SIZE - MOUTH_ROI_CROP) // 2
    sampled = sampled[:, off: off + MOUTH_ROI_CROP, off: off + MOUTH_ROI_CROP].numpy()
    assert np.abs(sampled - ours).max() < 0.02 / 255


def test_rois_of_a_real_clip_are_centred_on_the_mouth(grid_frames, grid_landmarks):
    frames, _ = grid_frames
    affines = mouth_roi_affines(grid_landmarks)
    rois = mouth_rois(frames, affines)
    assert rois.shape == (75, 88, 88) and np.isfinite(rois).all()
    pixels = rois * IMAGE_STD + IMAGE_MEAN
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    # mouth centre at the ROI centre (within the rounding of the crop), corners level and inside
    mouth = apply_affines(affines, grid_landmarks[:, list(MOUTH_POINTS)].astype(np.float64))
    centre = mouth.mean(axis=1)
    assert np.abs(centre - MOUTH_ROI_SIZE / 2).max() <= 0.5 + 1e-9
    corners = mouth[:, [0, 6]]  # dlib 48 and 54
    assert np.abs(corners[:, 0, 1] - corners[:, 1, 1]).max() < 4
    assert (corners[:, :, 0] > 8).all() and (corners[:, :, 0] < 88).all()
    # the lips are darker than the skin around them: the mouth is in the picture
    assert pixels[:, 40:48, 30:58].mean() < pixels[:, 4:12, 4:20].mean()

    ARTIFACTS.mkdir(exist_ok=True)
    tiles = (np.clip(pixels[np.linspace(0, 74, 16).astype(int)], 0, 1) * 255).astype(np.uint8)
    sheet = np.concatenate([np.concatenate(list(tiles[r * 4:(r + 1) * 4]), axis=1) for r in range(4)], axis=0)
    cv2.imwrite(str(ARTIFACTS / "mouth_roi_grid_bbaf2n.png"),
                cv2.resize(sheet, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))


def test_smoothing_window_and_tail(grid_landmarks):
    landmarks = grid_landmarks[:20].astype(np.float64)
    one = mouth_roi_affines(landmarks, window=1)
    twelve = mouth_roi_affines(landmarks)
    # frame 0's alignment uses frames 0..11; the last 11 frames reuse frame 8's
    expected = similarity_transforms(landmarks[:12, list(STABLE_POINTS)].mean(0), mean_face()[list(STABLE_POINTS)])
    np.testing.assert_allclose(twelve[0, :, :2], expected[:, :2])
    np.testing.assert_allclose(twelve[9:, :, :2], np.repeat(twelve[8:9, :, :2], 11, axis=0))
    assert not np.allclose(one[9:, :, :2], one[8:9, :, :2])
    short = mouth_roi_affines(landmarks[:3])  # window shrinks to the clip
    np.testing.assert_allclose(short[0, :, :2], short[2, :, :2])


def test_frames_without_a_face_are_interpolated():
    base = np.random.default_rng(0).uniform(0, 100, (478, 2))
    landmarks = np.stack([base + i for i in range(6)]).astype(np.float32)
    holed = landmarks.copy()
    holed[[0, 2, 3, 5]] = np.nan
    filled = interpolate_landmarks(holed)
    np.testing.assert_allclose(filled[0], landmarks[1], atol=1e-4)  # leading gap: copy of the first face
    np.testing.assert_allclose(filled[2:4], landmarks[2:4], atol=1e-4)  # linear in between
    np.testing.assert_allclose(filled[5], landmarks[4], atol=1e-4)  # trailing gap: copy of the last face
    with pytest.raises(ValueError, match="no face"):
        mouth_roi_affines(np.full((4, 478, 2), np.nan))
    with pytest.raises(ValueError, match="478"):
        mouth_roi_affines(np.zeros((4, 68, 2)))
    with pytest.raises(ValueError, match="frames"):
        mouth_rois(np.zeros((1, 10, 10, 3), np.uint8), mouth_roi_affines(landmarks))


def test_mean_face_asset_and_its_derivation():
    face = mean_face()
    right, left = face[list(OUTER_EYE_CORNERS)]
    assert face.shape == (478, 2)
    assert abs(right[1] - left[1]) < 1e-3 and np.linalg.norm(left - right) == pytest.approx(EYE_DISTANCE, abs=1e-3)
    np.testing.assert_allclose(face[list(MOUTH_POINTS)].mean(0), MOUTH_CENTRE, atol=1e-3)
    assert (face > 0).all() and (face < 256).all()
    # procrustes_mean recovers a shape from randomly rotated, scaled and moved noisy copies of it
    rng = np.random.default_rng(0)
    angles, scales = rng.uniform(-0.3, 0.3, 200), rng.uniform(0.5, 2, 200)
    rot = np.stack([[np.cos(angles), -np.sin(angles)], [np.sin(angles), np.cos(angles)]]).transpose(2, 0, 1)
    copies = scales[:, None, None] * (face + rng.normal(0, 0.5, (200, 478, 2))) @ rot.transpose(0, 2, 1)
    copies += rng.uniform(-50, 50, (200, 1, 2))
    mean = procrustes_mean(copies)
    aligned = apply_affines(similarity_transforms(mean, face)[None], mean[None])[0]
    assert np.abs(aligned - face).max() < 0.3
