"""The weights-free mouth metrics of ``engine.metrics`` (sharpness, opening, audio-mouth coupling,
PSNR above the nose, lip-landmark error) on the real GRID clip grid_bbaf2n.mpg of ../shared/data/video
against itself and against copies with a blurred or a frozen mouth; ``tools/contact_sheet.py`` and the
mouth columns of ``tools/evaluate.py``."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import pytest
from conftest import data_file

from engine.audio import load_audio
from engine.face import box_pixels, crop_box, track_landmarks
from engine.metrics import (NATURAL_OPENING_STD, audio_mouth_coupling, face_height, lip_box, lip_landmark_error,
                            mouth_metrics, mouth_opening, mouth_sharpness, mouth_sharpness_ratio, opening_ratio,
                            sharpness_ratio, speech_envelope, upper_face_psnr)


@pytest.fixture(scope="module")
def clip(grid_frames):
    """grid_bbaf2n.mpg: 75 frames, its 16 kHz speech and its MediaPipe landmarks."""
    frames, wav = grid_frames
    return frames, wav, track_landmarks(frames)


def mouth_region(landmarks: np.ndarray, shape) -> tuple[int, int, int, int]:
    """A generous box around the lips (the lip box padded by 60 %), cut to the frame."""
    x0, y0, x1, y1 = box_pixels(lip_box(landmarks, pad=0.6))
    return max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)


@pytest.fixture(scope="module")
def blurred(clip):
    """The clip with the mouth region blurred (Gaussian, sigma 2 px) in every frame."""
    frames, _, landmarks = clip
    out = frames.copy()
    for f, (frame, points) in enumerate(zip(frames, landmarks)):
        x0, y0, x1, y1 = mouth_region(points, frame.shape)
        out[f, y0:y1, x0:x1] = cv2.GaussianBlur(frame, (0, 0), 2.0)[y0:y1, x0:x1]
    return out


@pytest.fixture(scope="module")
def frozen(clip):
    """The clip with frame 0's lower face (the rows from its nose tip down) pasted into every frame."""
    frames, _, landmarks = clip
    out = frames.copy()
    nose = int(round(landmarks[0, 1, 1]))
    out[:, nose:] = frames[0, nose:]
    return out


def test_a_clip_against_itself(clip):
    frames, wav, landmarks = clip
    m = mouth_metrics(frames, frames, wav, landmarks, landmarks)
    assert m["sharpness_full"] == m["sharpness_gen"] == 1.0
    assert m["opening_ratio"] == 1.0 and m["lip_error_pct"] == 0.0 and m["psnr_upper"] == math.inf
    assert m["coupling"] == m["coupling_source"] > 0.2
    # the same from an iterable of frames, the output's landmarks found by the function itself
    again = mouth_metrics(iter(list(frames)), frames, wav, input_landmarks=landmarks)
    assert again["sharpness_gen"] == 1.0 and again["psnr_upper"] == math.inf
    assert again["lip_error_pct"] < 0.05 and abs(again["opening_ratio"] - 1) < 0.01


def test_blurred_mouth_is_less_sharp_at_both_scales(clip, blurred):
    frames, wav, landmarks = clip
    m = mouth_metrics(frames, blurred, wav, landmarks)
    print(m)
    assert m["sharpness_full"] < 0.5 and m["sharpness_gen"] < 0.5
    assert m["sharpness_full"] < m["sharpness_gen"]  # the finest detail, lost first, counts at full size only
    assert m["psnr_upper"] > 45  # only the mouth was changed
    assert m["lip_error_pct"] < 2 and 0.8 < m["opening_ratio"] < 1.25  # the lips are where they were
    # per-frame variances, and the ratio of their sums
    full_in, full_out = mouth_sharpness(frames, landmarks), mouth_sharpness(blurred, landmarks)
    assert full_in.shape == (75,) and np.all(full_out < full_in)
    assert sharpness_ratio(full_in, full_out) == pytest.approx(full_out.sum() / full_in.sum())
    assert mouth_sharpness_ratio(frames, blurred, landmarks) == m["sharpness_full"]
    assert mouth_sharpness_ratio(frames, blurred, landmarks, 96) == m["sharpness_gen"]
    # the definition, written out for frame 0 at the generator's scale
    scale = 96 / crop_box(landmarks[0], "square").width
    grey = cv2.resize(cv2.cvtColor(frames[0].astype(np.float32), cv2.COLOR_RGB2GRAY), None, fx=scale, fy=scale,
                      interpolation=cv2.INTER_AREA).astype(np.float64)
    box = lip_box(landmarks[0])
    x0, y0, x1, y1 = (round(box.x0 * scale), round(box.y0 * scale), round(box.x1 * scale), round(box.y1 * scale))
    laplacian = cv2.Laplacian(grey[y0 - 1: y1 + 1, x0 - 1: x1 + 1], cv2.CV_64F, ksize=1)[1:-1, 1:-1]
    assert mouth_sharpness(frames[:1], landmarks[:1], 96)[0] == pytest.approx(laplacian.var(), rel=1e-9)


def test_frozen_mouth_barely_opens(clip, frozen):
    frames, wav, landmarks = clip
    m = mouth_metrics(frames, frozen, wav, landmarks)
    print(m)
    assert m["opening_ratio"] < 0.3
    assert m["lip_error_pct"] > 1  # the lips stay where frame 0 had them
    # only the face below frame 0's nose tip changed: a few rows above the later nose tips differ
    assert math.isfinite(m["psnr_upper"]) and m["psnr_upper"] > 40
    whole_face = [box_pixels(crop_box(p, "square")) for p in landmarks]
    se = sum(((frames[i, y0:y1, x0:x1].astype(float) - frozen[i, y0:y1, x0:x1]) ** 2).sum()
             for i, (x0, y0, x1, y1) in enumerate(whole_face))
    n = sum(frames[i, y0:y1, x0:x1].size for i, (x0, y0, x1, y1) in enumerate(whole_face))
    assert m["psnr_upper"] > 10 * math.log10(255**2 * n / se) + 10  # the whole face box is far worse


def test_coupling_of_real_speech(clip):
    """Own speech couples; the same speech rotated by half the clip anti-couples. Another GRID clip's
    speech (or the reversed speech) shares the silence-speech-silence shape of every GRID sentence and
    couples about as well with the plain r (0.37-0.49 here, 0.40 own); with the slow trend removed
    (``detrend_frames=9``) only the own speech stays high."""
    frames, wav, landmarks = clip
    n = len(frames) * 640
    own = audio_mouth_coupling(landmarks, wav)
    rotated = audio_mouth_coupling(landmarks, np.roll(wav[:n], n // 2))
    print(f"own {own:.3f} rotated {rotated:.3f}")
    assert own > 0.2 and rotated < 0
    others = [load_audio(data_file(f"video/{name}.mpg")) for name in ("grid_lbax4n", "grid_brbk7n")]
    detrended = audio_mouth_coupling(landmarks, wav, detrend_frames=9)
    controls = [audio_mouth_coupling(landmarks, w, detrend_frames=9) for w in [wav[:n][::-1].copy(), *others]]
    print(f"detrended: own {detrended:.3f}, reversed and other clips {np.round(controls, 3)}")
    assert detrended > 0.2 and detrended > max(controls) + 0.2
    # undefined without enough frames with a face
    assert math.isnan(audio_mouth_coupling(np.concatenate([landmarks[:2], np.full((73, 478, 2), np.nan)]), wav))


def test_still_source_uses_the_natural_opening(clip):
    frames, wav, landmarks = clip
    m = mouth_metrics(frames[0], frames, wav, landmarks[:1], landmarks)
    assert math.isnan(m["coupling_source"]) and m["coupling"] > 0.2
    gap = mouth_opening(landmarks)
    assert m["opening_ratio"] == pytest.approx(gap.std() / NATURAL_OPENING_STD)
    assert opening_ratio(landmarks) == pytest.approx(m["opening_ratio"])
    # a clip of one repeated frame is a still too
    assert math.isnan(mouth_metrics(np.repeat(frames[:1], 75, 0), frames, wav, landmarks[:1], landmarks)
                      ["coupling_source"])


def test_definitions_on_synthetic_inputs(clip):
    _, _, landmarks = clip
    height = face_height(landmarks)
    assert 100 < height < 200  # GRID: a face of about 135 px in a 360x288 frame
    shifted = landmarks + np.array([3.0, 4.0], np.float32)  # 5 px
    assert lip_landmark_error(landmarks, shifted) == pytest.approx(np.full(75, 500 / height))
    with_gap = landmarks.copy()
    with_gap[10] = np.nan
    err = lip_landmark_error(landmarks, with_gap)
    assert np.isnan(err[10]) and np.all(err[np.arange(75) != 10] == 0)
    with pytest.raises(ValueError):
        lip_landmark_error(landmarks, landmarks[:10])
    with pytest.raises(ValueError):
        face_height(np.full((3, 478, 2), np.nan))

    # envelope: 40 ms windows centred on each frame, zeros outside the speech
    t = np.arange(16000) / 16000
    wav = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    env = speech_envelope(wav, 30)
    assert env[1:24] == pytest.approx(np.log(0.5 / math.sqrt(2)), abs=1e-3)
    assert env[0] == pytest.approx(np.log(0.5 / math.sqrt(2) / math.sqrt(2)), abs=1e-2)  # half the window
    assert np.all(env[26:] == np.log(1e-4))  # past the end: the floor

    # PSNR above the nose: pooled squared error
    frame = np.full((288, 360, 3), 100, np.uint8)
    other = frame.copy()
    other[:] = 110
    assert upper_face_psnr([frame, frame], [frame, other], landmarks[[0, 0]]) == pytest.approx(
        10 * math.log10(255**2 / 50), abs=1e-9)


def test_contact_sheet(tmp_path, capsys):
    from tools.contact_sheet import main, sheet_size

    video = data_file("video/grid_bbaf2n.mpg")
    out = tmp_path / "sheet.png"
    assert main([str(video), str(video), "--out", str(out), "--metrics"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(out)
    scores = dict(line.split() for line in printed[1:])
    assert scores["sharpness_gen"] == "1.0000" and scores["psnr_upper"] == "inf" and scores["lip_error_pct"] == "0.0000"
    sheet = cv2.imread(str(out))
    assert sheet_size(8, 160) == (1364, 354) and sheet.shape == (354, 1364, 3)
    # the input's and the output's crops are the same pixels here
    assert np.array_equal(sheet[26:186, 52:212], sheet[190:350, 52:212])

    image = data_file("images/skimage_astronaut.png")  # a still input: one column per output frame
    out = tmp_path / "still.png"
    assert main([str(image), str(image), "--out", str(out), "--size", "96"]) == 0
    assert cv2.imread(str(out)).shape[:2] == sheet_size(1, 96)[::-1]
    assert main([str(tmp_path / "missing.mp4"), str(video)]) == 2


def test_evaluate_has_the_mouth_columns(tmp_path, capsys):
    from tools.evaluate import MOUTH_COLUMNS, main

    folder = tmp_path / "ref"
    folder.mkdir()
    (folder / "grid_bbaf2n.mpg").symlink_to(data_file("video/grid_bbaf2n.mpg"))
    prefix = tmp_path / "eval"
    assert main(["--generated", str(folder), "--reference", str(folder), "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("Method")).split()
    # columns of the one table, last
    assert header[-6:] == ["Sharp↑", "SharpFull↑", "Open", "Coupl↑", "PSNRup↑", "LipErr%↓"]
    with open(prefix.with_name("eval.csv")) as f:
        row = next(csv.DictReader(f))
    assert [c for c in MOUTH_COLUMNS if c not in row] == []
    assert float(row["Sharp"]) == float(row["SharpFull"]) == float(row["Open"]) == 1.0
    assert row["PSNRup"] == "inf" and float(row["LipErr%"]) == 0.0 and float(row["Coupl"]) > 0.2
    with open(prefix.with_name("eval_videos.csv")) as f:
        video = next(csv.DictReader(f))
    assert video["Coupl"] == video["Coupl source"]
