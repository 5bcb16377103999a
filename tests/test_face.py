"""engine.face: MediaPipe tracking on real faces, smoothing, zero and several faces, crops."""

import cv2
import numpy as np
import pytest

from conftest import data_file
from engine.face import SQUARE_CROP_DROP, SQUARE_CROP_SIDE, Box, FaceTracker, OneEuroFilter, crop, crop_box


def test_tracks_every_frame_of_a_real_clip_without_jitter(grid_frames):
    frames, _ = grid_frames
    with FaceTracker() as tracker:
        faces = [tracker.track(f, i / 25) for i, f in enumerate(frames)]
    assert all(f is not None for f in faces)
    assert faces[0].landmarks.shape == (478, 2)
    centres = np.array([f.box.center for f in faces])
    sizes = np.array([f.box.width for f in faces])
    # a seated speaker: the box follows the head but does not shake frame to frame
    assert np.abs(np.diff(centres, axis=0)).max() < 3.0
    assert np.abs(np.diff(sizes)).max() < 3.0
    # the box holds the face: mouth landmarks (MediaPipe 13 upper lip, 14 lower lip) in the lower half
    b = faces[40].box
    mouth_y = faces[40].landmarks[[13, 14], 1].mean()
    assert b.y0 + 0.5 * b.height < mouth_y < b.y1
    face96 = crop(frames[40], b, 96)
    assert face96.shape == (96, 96, 3) and face96.dtype == np.uint8


def test_no_face_returns_none():
    with FaceTracker() as tracker:
        assert tracker.track(np.full((240, 320, 3), 127, np.uint8), 0.0) is None
        noise = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
        assert tracker.track(noise, 0.04) is None


def _two_faces():
    left = cv2.cvtColor(cv2.imread(str(data_file("images/skimage_astronaut.png"))), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(data_file("images/facerec_obama.jpg"))), cv2.COLOR_BGR2RGB)
    right = cv2.resize(right, None, fx=0.45, fy=0.45)[:512, :288]
    canvas = np.full((512, 800, 3), 200, np.uint8)
    canvas[:, :512] = left
    canvas[:, 512:] = right
    return canvas


def test_several_faces_largest_first_then_nearest():
    canvas = _two_faces()
    with FaceTracker(max_faces=2) as tracker:
        faces = tracker.detect(canvas, 0.0)
        assert len(faces) == 2
        largest = max(faces, key=lambda f: np.ptp(f[:, 0]) * np.ptp(f[:, 1]))
        first = tracker.track(canvas, 0.04)
        assert (first.box.center[0] < 512) == (largest[:, 0].mean() < 512)
    # a track that starts on the smaller face stays on it when the larger one appears
    with FaceTracker(max_faces=2) as tracker:
        only_small = canvas.copy()
        small_left = largest[:, 0].mean() >= 512
        if small_left:
            only_small[:, 512:] = 200
        else:
            only_small[:, :512] = 200
        start = tracker.track(only_small, 0.0)
        assert start is not None
        kept = [tracker.track(canvas, 0.04 * i) for i in range(1, 4)]
        assert all(f is not None and (f.box.center[0] < 512) == small_left for f in kept)


def test_one_euro_smooths_jitter_and_follows_moves():
    f = OneEuroFilter()
    rng = np.random.default_rng(0)
    noisy = [f(np.array([100.0 + rng.normal(0, 1.0)]), i / 25)[0] for i in range(50)]
    assert np.std(noisy[10:]) < 0.6  # raw jitter std is 1.0
    # a fast move of 200 px: within 5 frames the filter is within 10 % of it
    out = [f(np.array([300.0]), (50 + i) / 25)[0] for i in range(5)]
    assert out[-1] > 280


def test_crop_box_styles_and_out_of_frame_crop():
    pts = np.zeros((478, 2), np.float32)
    pts[:, 0], pts[:, 1] = np.linspace(100, 200, 478), np.linspace(100, 220, 478)
    pts[33], pts[263] = (120, 140), (180, 140)  # outer eye corners, level, 60 px apart
    sq = crop_box(pts, "square")
    assert abs(sq.width - sq.height) < 1e-6 and sq.width == pytest.approx(SQUARE_CROP_SIDE * 60)
    assert sq.center == pytest.approx((150, 140 + SQUARE_CROP_DROP * 60))
    pts[:, 1] += 10 * (pts[:, 1] > 150)  # the jaw opens: only points below the eyes move
    assert crop_box(pts, "square") == sq
    pts[[33, 263]] = (130, 130), (170, 170)  # a rolled head: the centre moves along the perpendicular
    rolled = crop_box(pts, "square")
    assert rolled.center == pytest.approx((150 - SQUARE_CROP_DROP * 40, 150 + SQUARE_CROP_DROP * 40))
    w2l = crop_box(pts, "wav2lip")
    assert w2l.y1 > 220
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[:, :50] = 255
    out = crop(frame, Box(-50, -50, 50, 50), 20)  # extends past the frame: edge pixels repeat
    assert out.shape == (20, 20, 3) and out[0, 0, 0] == 255
    with pytest.raises(ValueError):
        crop_box(pts, "round")


def test_square_crop_does_not_follow_the_jaw():
    """The crop side must not tell the generator how open the original mouth is (issue 9 item 3):
    on a real GRID clip the whole-landmark box grows with the inner-lip gap, ours does not."""
    from engine.media import read_frames_at

    sides, whole, gaps = [], [], []
    with FaceTracker(hold=0) as tracker:
        for frame, t in read_frames_at(data_file("video/grid_lbax4n.mpg"), 25.0):
            face = tracker.track(frame, t)
            if face is None:
                continue
            sides.append(face.box.width)
            whole.append(1.1 * np.ptp(face.landmarks[:, 1]))
            gaps.append(np.linalg.norm(face.landmarks[13] - face.landmarks[14]))
    assert len(gaps) > 60 and np.std(gaps) > 1.0
    assert np.corrcoef(whole, gaps)[0, 1] > 0.5  # the old crop leaked
    assert abs(np.corrcoef(sides, gaps)[0, 1]) < 0.3


def test_posed_lip_shape_moves_the_references_mouth_with_the_head_and_reads_nothing_of_the_targets():
    """posed_lip_shape: a target that is the reference turned, scaled and shifted (a similarity of all its points)
    gets exactly the reference's lip points under that similarity; onto itself they are its own lip_shape; and
    the target's own mouth (its lip and jaw points moved) changes nothing."""
    from engine.bundled import MEAN_FACE
    from engine.face import LIP_SHAPE_POINTS, box_pixels, lip_shape, posed_lip_shape

    face = np.load(MEAN_FACE).astype(np.float64)[:, :2] * 2 + 50  # a 512-px face
    angle, scale, shift = np.deg2rad(8), 1.2, np.array([31.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    turned = face @ rot.T + shift
    box = np.array([box_pixels(crop_box(turned))], np.float64)
    expected = lip_shape(turned[None], box)
    assert np.abs(posed_lip_shape(face, turned[None], box) - expected).max() < 1e-5
    own_box = np.array([box_pixels(crop_box(face))], np.float64)
    assert np.abs(posed_lip_shape(face, face[None], own_box) - lip_shape(face[None], own_box)).max() < 1e-6
    talking = turned.copy()
    talking[list(LIP_SHAPE_POINTS[12:])] += [0.0, 25.0]  # the target's inner lip and jaw open by 25 px
    assert np.array_equal(posed_lip_shape(face, talking[None], box), posed_lip_shape(face, turned[None], box))
