"""engine.compose: paste-back touches only the face box, with no visible seam; with landmarks only
the lips and jaw of the current frame (``landmark_mask``), on a real clip (grid_bbaf2n)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.compose import (LIP_OUTER_POINTS, PASTE_INTERPOLATION, PASTE_MASK_POINTS, Compositor, landmark_mask,
                            lower_face_mask, match_colour)
from engine.face import Box, FaceTracker, box_pixels, crop


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


# ---------------------------------------------------------------------------
# The landmark mask (issue 9 item 4): only lips and jaw of the current frame are pasted.

ARTIFACTS = Path(__file__).parent / "artifacts"
LIP_OUTER = list(LIP_OUTER_POINTS)


@pytest.fixture(scope="module")
def grid_faces(grid_frames):
    """The tracked face of every frame of grid_bbaf2n, and the frames of widest / least open mouth
    (inner-lip gap, points 13 / 14)."""
    frames, _ = grid_frames
    with FaceTracker() as tracker:
        faces = [tracker.track(f, i / 25) for i, f in enumerate(frames)]
    assert all(f is not None for f in faces)
    gap = np.array([f.landmarks[14, 1] - f.landmarks[13, 1] for f in faces])
    return faces, int(gap.argmax()), int(gap.argmin())


def frame_mask(face, box=None):
    """``landmark_mask`` on a grid of one cell per frame pixel of ``box`` (default the face's box):
    ``(mask, (x0, y0))``, the mask's value at frame pixel (x, y) being ``mask[y - y0, x - x0]``."""
    box = box or face.box
    x0, y0, x1, y1 = box_pixels(box)
    return landmark_mask(face.landmarks, box, (y1 - y0, x1 - x0)), (x0, y0)


def at(mask_origin, point):
    mask, (x0, y0) = mask_origin
    return float(mask[int(point[1]) - y0, int(point[0]) - x0])


def test_landmark_mask_covers_lips_and_jaw_and_spares_nose_and_eyes(grid_faces):
    faces, open_i, closed_i = grid_faces
    assert faces[open_i].landmarks[14, 1] - faces[open_i].landmarks[13, 1] > 5  # the clip does open its mouth
    for i in (open_i, closed_i):
        face, lm = faces[i], faces[i].landmarks
        crop_mask = landmark_mask(lm, face.box, (96, 96))
        assert crop_mask.dtype == np.float32 and crop_mask.shape == (96, 96)
        for m in (crop_mask, frame_mask(face)[0]):
            assert m.min() >= 0 and m.max() == 1
            assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
        fm = frame_mask(face)
        assert at(fm, (lm[13] + lm[14]) / 2) == 1.0  # the lips' centre
        for p in LIP_OUTER:  # the whole outer lip contour, corners included
            assert at(fm, lm[p]) == 1.0, p
        for t in np.linspace(0, 0.7, 8):  # below the lower lip (17) down towards the chin (152)
            assert at(fm, lm[17] + t * (lm[152] - lm[17])) == 1.0, t
        # the chin: GRID's crop ends 2-7 px below it, inside the border taper, so only partly pasted
        assert at(fm, lm[152]) > 0
        for p in (33, 133, 362, 263, 468, 473, 6, 168, 197):  # eye corners, irises, nose bridge
            assert at(fm, lm[p]) == 0.0, p
        assert at(fm, lm[1]) < 0.5  # the nose tip is never opaque: at most the feather's edge
        assert frame_mask(face)[0][: int(lm[1, 1]) - fm[1][1]].max() == 0  # nothing above the nose tip


def test_landmark_mask_is_smooth_and_errors_are_clear(grid_faces):
    faces, open_i, _ = grid_faces
    m = frame_mask(faces[open_i])[0]
    # feather 0.18 IOD (~12 px here) and the border taper (~6 px): no step anywhere
    assert np.abs(np.diff(m, axis=0)).max() < 0.3 and np.abs(np.diff(m, axis=1)).max() < 0.3
    lm, box = faces[open_i].landmarks, faces[open_i].box
    with pytest.raises(ValueError, match="478"):
        landmark_mask(lm[:100], box, (96, 96))
    with pytest.raises(ValueError, match="finite"):
        landmark_mask(np.full_like(lm, np.nan), box, (96, 96))
    with pytest.raises(ValueError, match="eye corners"):
        landmark_mask(np.zeros_like(lm), box, (96, 96))


def test_pasting_with_landmarks_changes_only_mouth_and_jaw(grid_frames, grid_faces):
    frames, _ = grid_frames
    faces, open_i, closed_i = grid_faces
    rng = np.random.default_rng(0)
    for i in (open_i, closed_i):
        frame, face, lm = frames[i], faces[i], faces[i].landmarks
        c = crop(frame, face.box, 96)
        generated = np.mod(c.astype(np.float32) / 255 + 0.5, 1.0)  # half the range away from the input
        generated = np.clip(generated + rng.normal(0, 0.02, generated.shape), 0, 1).astype(np.float32)
        out = Compositor(96, colour_match=False).paste(frame, face.box, generated, 1.0, c, landmarks=lm)
        # above the nose tip (eyes, nose, cheeks at nose height) and outside the box: the input, bit for bit
        assert np.array_equal(out[: int(lm[1, 1])], frame[: int(lm[1, 1])])
        x0, y0, x1, y1 = box_pixels(face.box)
        outside = np.ones(frame.shape[:2], bool)
        outside[max(0, y0): y1, max(0, x0): x1] = False
        assert np.array_equal(out[outside], frame[outside])
        # the mouth changed
        mouth = np.abs(out.astype(int) - frame).sum(axis=2)
        cx, cy = ((lm[13] + lm[14]) / 2).astype(int)
        assert mouth[cy - 3: cy + 4, cx - 8: cx + 9].min() > 60


def test_mask_follows_the_mouth(grid_faces):
    faces, open_i, closed_i = grid_faces

    def rows(i):
        face = faces[i]
        b = face.box  # a box grown below and to the sides, so that no crop border clips the mask
        m, (x0, y0) = frame_mask(face, Box(b.x0 - 40, b.y0, b.x1 + 40, b.y1 + 60))
        ys = np.arange(m.shape[0]) + y0 - face.landmarks[168, 1]  # relative to the nose bridge
        centroid = float((m.sum(axis=1) * ys).sum() / m.sum())
        opaque = ys[m.max(axis=1) == 1]
        return centroid, opaque.min(), opaque.max()

    lips = {i: faces[i].landmarks[LIP_OUTER, 1].mean() - faces[i].landmarks[168, 1] for i in (open_i, closed_i)}
    chin = {i: faces[i].landmarks[152, 1] - faces[i].landmarks[168, 1] for i in (open_i, closed_i)}
    upper = {i: faces[i].landmarks[0, 1] - faces[i].landmarks[168, 1] for i in (open_i, closed_i)}
    (c_open, top_open, low_open), (c_closed, top_closed, low_closed) = rows(open_i), rows(closed_i)
    assert lips[open_i] - lips[closed_i] > 1 and chin[open_i] - chin[closed_i] > 3
    # the mask's centroid moves down with the lips and jaw, its bottom with the chin, its top with the upper lip
    assert 0.5 * (lips[open_i] - lips[closed_i]) < c_open - c_closed < 2 * (chin[open_i] - chin[closed_i])
    assert abs((low_open - low_closed) - (chin[open_i] - chin[closed_i])) < 2
    assert abs((top_open - top_closed) - (upper[open_i] - upper[closed_i])) < 2


def test_colour_match_uses_the_landmark_mask(grid_frames, grid_faces, monkeypatch):
    import engine.compose as compose

    frames, _ = grid_frames
    faces, _, closed_i = grid_faces
    frame, face, lm = frames[closed_i], faces[closed_i], faces[closed_i].landmarks
    c = crop(frame, face.box, 96)
    mask = landmark_mask(lm, face.box, (96, 96))
    # the generated face is the input crop, 20 grey levels darker under the landmark mask and much
    # bluer away from it (values may leave [0, 1] a little: no clipping, so the shift is exact)
    generated = c.astype(np.float32) / 255 - 20 / 255
    far = cv2.dilate((mask > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0  # not read by the paste
    generated[far] += np.array([0, 0, 0.4], np.float32)
    seen = []
    monkeypatch.setattr(compose, "match_colour", lambda g, o, m: seen.append(m) or match_colour(g, o, m))
    plain = Compositor(96, detail=False)  # the colour match alone (the detail transfer: tests below)
    out = plain.paste(frame, face.box, generated, 1.0, c, landmarks=lm)
    assert len(seen) == 1 and np.array_equal(seen[0], mask)
    # matched under the landmark mask, the shift is exactly +20 grey levels: the same as pasting the
    # input crop itself
    same = Compositor(96, colour_match=False).paste(frame, face.box, c.astype(np.float32) / 255, landmarks=lm)
    diff = np.abs(out.astype(int) - same)
    assert diff.max() <= 1 and diff.mean() < 0.01
    mouth = np.abs(Compositor(96, colour_match=False).paste(frame, face.box, generated, landmarks=lm).astype(int)
                   - same).max(axis=2)
    assert mouth.max() >= 19  # without the match: 20 grey levels off (where the mask is 1)
    # under the fixed ellipse the blue part would take part in the shift
    ellipse = plain.paste(frame, face.box, generated, 1.0, c)
    assert np.abs(ellipse.astype(int) - plain.paste(frame, face.box, c / 255, 1.0, c)).max() > 10


def test_fallback_without_landmarks_is_the_old_full_box_blend(grid_frames, grid_faces):
    frames, _ = grid_frames
    faces, open_i, _ = grid_faces
    frame, box = frames[open_i], faces[open_i].box
    rng = np.random.default_rng(1)
    face = rng.random((96, 96, 3), dtype=np.float32)
    x0, y0, x1, y1 = box_pixels(box)
    for alpha in (1.0, 0.5):
        a = cv2.resize(lower_face_mask(96), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)[..., None] * alpha
        gen = cv2.resize(face * 255, (x1 - x0, y1 - y0), interpolation=PASTE_INTERPOLATION)
        region = frame[y0:y1, x0:x1].astype(np.float32)
        expected = frame.copy()
        expected[y0:y1, x0:x1] = np.clip(np.rint(region + a * (gen - region)), 0, 255).astype(np.uint8)
        out = Compositor(96, colour_match=False).paste(frame, box, face, alpha)
        assert np.array_equal(out, expected)


def test_picture_of_the_mask(grid_frames, grid_faces):
    """tests/artifacts/paste_mask_grid.png: the open and the closed mouth frame, the mask as a red
    tint, the crop box in green, the mask's landmarks as white dots, the nose tip in blue."""
    frames, _ = grid_frames
    faces, open_i, closed_i = grid_faces
    panels = []
    for i in (open_i, closed_i):
        frame, face = frames[i], faces[i]
        m, (x0, y0) = frame_mask(face)
        full = np.zeros(frame.shape[:2], np.float32)
        h, w = m.shape
        ys, xs = slice(max(0, y0), min(frame.shape[0], y0 + h)), slice(max(0, x0), min(frame.shape[1], x0 + w))
        full[ys, xs] = m[ys.start - y0: ys.stop - y0, xs.start - x0: xs.stop - x0]
        tinted = frame.astype(np.float32)
        tinted = tinted * (1 - 0.5 * full[..., None]) + np.array([255, 0, 0]) * 0.5 * full[..., None]
        big = cv2.resize(tinted.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        bx0, by0, bx1, by1 = box_pixels(face.box)
        cv2.rectangle(big, (2 * bx0, 2 * by0), (2 * bx1 - 1, 2 * by1 - 1), (0, 255, 0), 1)
        for p in PASTE_MASK_POINTS:
            cv2.circle(big, tuple(int(v) for v in 2 * face.landmarks[p]), 2, (255, 255, 255), -1)
        cv2.circle(big, tuple(int(v) for v in 2 * face.landmarks[1]), 3, (0, 0, 255), -1)
        cv2.putText(big, f"frame {i} ({'open' if i == open_i else 'closed'})", (8, 24),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2)
        panels.append(big)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "paste_mask_grid.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(panels, axis=1), cv2.COLOR_RGB2BGR))


# ---------------------------------------------------------------------------
# The detail transfer: the input's own skin detail where the generator drew what the input shows.

def _lip_box_sharpness(image, face):
    """The metrics' mouth sharpness (engine.metrics.mouth_sharpness: Laplacian variance of the lip box)."""
    from engine.metrics import mouth_sharpness

    return float(mouth_sharpness([image], face.landmarks[None])[0])


def test_a_perfect_generator_keeps_most_of_the_mouths_detail_at_the_generators_scale(grid_frames, grid_faces,
                                                                                       monkeypatch):
    """The paste's own loss of sharpness (PASTE_INTERPOLATION): a generator that returns the input's
    crop, pasted without the detail transfer into grid_bbaf2n, keeps at least 0.55 of the lip box's
    Laplacian variance at the generator's scale (the metric of the model card; measured: with
    bicubic 0.65), and clearly more than a bilinear paste (0.47)."""
    from engine import compose
    from engine.metrics import mouth_sharpness_ratio

    frames, _ = grid_frames
    faces, _, _ = grid_faces
    landmarks = np.stack([f.landmarks for f in faces])

    def paste_all():
        compositor = Compositor(96, colour_match=False, detail=False)
        return [compositor.paste(frame, f.box, crop(frame, f.box, 96).astype(np.float32) / 255, 1.0,
                                 landmarks=f.landmarks) for frame, f in zip(frames, faces)]

    ratio = mouth_sharpness_ratio(frames, paste_all(), landmarks, generator_size=96)
    monkeypatch.setattr(compose, "PASTE_INTERPOLATION", cv2.INTER_LINEAR)
    bilinear = mouth_sharpness_ratio(frames, paste_all(), landmarks, generator_size=96)
    assert ratio >= 0.55
    assert ratio > 1.25 * bilinear


def test_detail_transfer_gives_a_soft_but_right_face_the_inputs_detail(grid_frames, grid_faces):
    """A generated face that shows the input's picture, only softer (the crop blurred) and with a
    colour shift: with the transfer, the pasted mouth region keeps the input's sharpness and its
    pixels; without it, it is visibly softer."""
    from engine.compose import detail_keep

    frames, _ = grid_frames
    faces, open_i, _ = grid_faces
    frame, face = frames[open_i], faces[open_i]
    c = crop(frame, face.box, 96)
    soft = cv2.GaussianBlur(c.astype(np.float32), (0, 0), 1.5) + np.array([10, -8, 0], np.float32)
    keep = detail_keep(soft, c)
    mask = landmark_mask(face.landmarks, face.box, (96, 96))
    assert float((keep * mask).sum() / mask.sum()) > 0.9  # the same picture: softness and colour don't count
    args = (frame, face.box, soft / 255, 1.0, c)
    kept = Compositor(96, colour_match=False).paste(*args, landmarks=face.landmarks)
    plain = Compositor(96, colour_match=False, detail=False).paste(*args, landmarks=face.landmarks)
    sharp = _lip_box_sharpness(frame, face)
    assert _lip_box_sharpness(kept, face) > 0.85 * sharp
    assert _lip_box_sharpness(plain, face) < 0.6 * sharp
    x0, y0, x1, y1 = box_pixels(face.box)
    inside = frame_mask(face)[0] > 0.99
    grey = lambda im: cv2.cvtColor(im[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY).astype(int)  # noqa: E731
    # where the mask is 1, the transfer brings the paste much closer to the input's own pixels
    # (what is left: the colour shift's luminance, 1.7 levels, and the band the blur took below σ)
    assert np.abs(grey(kept) - grey(frame))[inside].mean() < 0.6 * np.abs(grey(plain) - grey(frame))[inside].mean()


def test_detail_transfer_does_not_bring_back_the_inputs_old_mouth(grid_frames, grid_faces, monkeypatch):
    """The generator closes a mouth that is open in the input (the closed frame's crop, softened):
    inside the input's opening the detail weight is near 0 and the paste is nearly the plain one,
    where a transfer without the agreement test would draw the old opening's edges back in; the
    rest of the lower face still takes the input's detail."""
    import engine.compose as compose
    from engine.compose import detail_keep

    frames, _ = grid_frames
    faces, open_i, closed_i = grid_faces
    frame, face = frames[open_i], faces[open_i]
    c = crop(frame, face.box, 96)
    closed = cv2.GaussianBlur(crop(frames[closed_i], face.box, 96).astype(np.float32), (0, 0), 1.5)
    keep = detail_keep(closed, c)
    x0, y0, x1, y1 = box_pixels(face.box)
    s = 96 / (x1 - x0)
    top, bottom = face.landmarks[13], face.landmarks[14]  # the input's inner lips, upper and lower
    cx, cy = ((top + bottom) / 2 - (x0, y0)) * s
    assert keep[int(cy) - 1: int(cy) + 2, int(cx) - 3: int(cx) + 4].max() < 0.1
    mask = landmark_mask(face.landmarks, face.box, (96, 96))
    assert float((keep * mask).sum() / mask.sum()) > 0.4  # not everything changed
    args = (frame, face.box, closed / 255, 1.0, c)
    kept = Compositor(96, colour_match=False).paste(*args, landmarks=face.landmarks)
    plain = Compositor(96, colour_match=False, detail=False).paste(*args, landmarks=face.landmarks)
    gy, gx = int((top[1] + bottom[1]) / 2), int((top[0] + bottom[0]) / 2)
    window = np.s_[gy - 1: gy + 2, gx - 4: gx + 5]
    monkeypatch.setattr(compose, "detail_keep", lambda g, o, tolerance=None: np.ones(g.shape[:2], np.float32))
    ghost = Compositor(96, colour_match=False).paste(*args, landmarks=face.landmarks)
    ghost_diff = np.abs(ghost[window].astype(int) - plain[window]).max()
    assert ghost_diff >= 10 and np.abs(kept[window].astype(int) - plain[window]).max() <= 0.25 * ghost_diff
