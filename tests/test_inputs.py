"""engine.inputs: the one builder of generator inputs, as pipeline, training data and monitor use it."""

import numpy as np
import pytest
import torch

from engine.inputs import generator_faces, generator_input
from engine.models import GeneratorInfo

HELD = GeneratorInfo(kind="dubcam", size=96, mel_offset_s=-0.1, identity="held", crop="square")
CURRENT = GeneratorInfo(kind="wav2lip", size=96, mel_offset_s=0.0, identity="current", crop="wav2lip")


@pytest.fixture
def crops(grid_frames):
    frames, _ = grid_frames
    return np.ascontiguousarray(frames[:5, 100:196, 140:236])  # 96 × 96 around the mouth of a real frame


def test_pose_reference_masks_the_lower_half_and_identity_is_held(crops):
    faces = generator_faces(crops, crops[0], HELD)
    assert faces.shape == (5, 6, 96, 96) and faces.dtype == np.float32
    assert not faces[:, :3, 48:].any()  # the lower half of the pose reference is masked
    assert np.allclose(faces[:, :3, :48], crops[:, :48].transpose(0, 3, 1, 2) / 255.0)
    assert np.allclose(faces[:, 3:], crops[0].transpose(2, 0, 1)[None] / 255.0)  # one identity for all k
    assert generator_faces(crops, None, CURRENT)[:, 3:, 48:].any()  # Wav2Lip: the unmasked crop itself


def test_training_data_and_pipeline_build_the_same_input(crops, grid_train_data):
    from train.data import WindowDataset, load_clips

    as_floats = crops.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert np.array_equal(generator_input(as_floats, as_floats[0]), generator_faces(crops, crops[0], HELD))
    sample = WindowDataset(load_clips(grid_train_data, "train"), k=5, identity="held")[0]
    target = sample["target"].numpy()
    assert torch.equal(sample["faces"][:, :3], torch.from_numpy(generator_input(target, target)[:, :3]))


def test_bad_shapes_are_clear_errors(crops):
    with pytest.raises(ValueError, match=r"expected crops \[k, 96, 96, 3\]"):
        generator_faces(crops[:, :90], crops[0], HELD)
    with pytest.raises(ValueError, match="held identity"):
        generator_faces(crops, None, HELD)
    with pytest.raises(ValueError, match=r"expected faces \[N, 3, S, S\]"):
        generator_input(np.zeros((5, 96, 96, 3), np.float32), np.zeros((3, 96, 96), np.float32))


def test_identity_lips_ride_in_the_masked_half_for_the_generators_that_take_them(crops, grid_train_data):
    """A lip-sketch generator's identity points sit in row S−1 of the pose reference, columns 0–32 posed and
    33–65 the reference's own (x in channel 0, y in 1), nowhere else; the training data (with its flip) put
    there the identity frame's own tracked points and the same points posed into the target; a generator that
    takes them refuses an input without them."""
    from dataclasses import replace

    from conftest import mean_identity_lips
    from train.data import WindowDataset, load_clips, window_lips

    lips = mean_identity_lips()
    lips[0] += np.float32(0.01)  # posed: somewhere else than its own
    with_lips = replace(HELD, identity_lips=True)
    faces = generator_faces(crops, crops[0], with_lips, lips)
    for c in (0, 1):
        assert np.array_equal(faces[:, c, -1, :33], np.broadcast_to(lips[0, :, c], (5, 33)))
        assert np.array_equal(faces[:, c, -1, 33:66], np.broadcast_to(lips[1, :, c], (5, 33)))
    plain = generator_faces(crops, crops[0], HELD, lips)  # a generator without them gets the plain input
    rest = faces.copy()
    rest[:, 0:2, -1, :66] = 0
    assert np.array_equal(rest, plain) and not plain[:, :3, 48:].any()
    with pytest.raises(ValueError, match="lip points"):
        generator_faces(crops, crops[0], with_lips)
    clips = load_clips(grid_train_data, "train")
    unflipped = [window_lips(c, t, 1)[0] for c in clips for t in range(c.n_frames)]
    mirrored = [window_lips(c, t, 1, flip=True)[0] for c in clips for t in range(c.n_frames)]
    for index in range(6):
        sample = WindowDataset(clips, k=5, identity="held", lips=True)[index]
        row = sample["faces"][:, 0:2, -1, :66].numpy().transpose(0, 2, 1).reshape(5, 2, 33, 2)
        assert sample["lips"].shape == (5, 33, 2)
        posed, own = row[:, 0], row[:, 1]
        assert 0.1 < posed[..., 0].min() and posed[..., 0].max() < 0.9 and 0.5 < posed[..., 1].min() < 1.0
        assert np.array_equal(own, np.broadcast_to(own[0], own.shape))  # one reference held for the window
        assert min(min(np.abs(u - own[0]).max() for u in unflipped),
                   min(np.abs(m - own[0]).max() for m in mirrored)) < 1e-6
        # posed into the target: within a few pixels of the reference's own points (GRID heads hold still)
        assert np.abs(posed - own).max() < 6 / 96
