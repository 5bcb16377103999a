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
