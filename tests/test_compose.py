"""engine.compose: paste-back touches only the face box, with no visible seam."""

import numpy as np

from engine.compose import Compositor, lower_face_mask
from engine.face import Box


def test_pixels_outside_the_box_are_bit_identical():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (288, 360, 3), dtype=np.uint8)
    box = Box(80.3, 60.7, 230.1, 210.5)
    face = rng.random((96, 96, 3), dtype=np.float32)
    out = Compositor(96).paste(frame, box, face)
    changed = np.any(out != frame, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    assert ys.min() >= 60 and ys.max() < 211 and xs.min() >= 80 and xs.max() < 231
    # the upper half of the face is never touched
    assert ys.min() > 60 + 0.35 * 150


def test_mask_is_zero_on_the_border_and_smooth():
    m = lower_face_mask(96)
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    assert m.max() == 1.0 and m[int(0.7 * 96), 48] == 1.0
    assert np.abs(np.diff(m, axis=0)).max() < 0.2 and np.abs(np.diff(m, axis=1)).max() < 0.2


def test_pasting_the_original_face_changes_nothing_visible(grid_frames):
    from engine.face import FaceTracker, crop

    frames, _ = grid_frames
    with FaceTracker() as tr:
        face = tr.track(frames[10], 0.0)
    c = crop(frames[10], face.box, 96)
    out = Compositor(96).paste(frames[10], face.box, c.astype(np.float32) / 255)
    # resampling the face twice costs a little sharpness, never a seam
    assert np.abs(out.astype(int) - frames[10]).max() < 60
    assert np.abs(out.astype(int) - frames[10]).mean() < 0.5


def test_alpha_zero_is_identity():
    frame = np.zeros((50, 50, 3), np.uint8)
    out = Compositor(96).paste(frame, Box(0, 0, 50, 50), np.ones((96, 96, 3), np.float32), alpha=0.0)
    assert np.array_equal(out, frame)
