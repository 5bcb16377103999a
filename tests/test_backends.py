"""engine.backends: every installed kind gives the same frames (1e-4) on random models."""

import numpy as np
import pytest

from engine import backends


def _inputs(n=5, size=96, seed=0):
    rng = np.random.default_rng(seed)
    faces = rng.random((n, 6, size, size), dtype=np.float32)
    faces[:, :3, size // 2:] = 0
    return faces, (rng.random((n, 1, 80, 16), dtype=np.float32) * 8 - 4)


def test_torch_and_onnxruntime_agree_on_our_generator(small_generator):
    faces, mels = _inputs()
    ref = backends.load(small_generator, "torch").run(faces, mels)
    ort = backends.load(small_generator, "onnxruntime")
    assert ort.name == "onnxruntime"
    out = ort.run(faces, mels)
    assert out.shape == (5, 3, 96, 96)
    assert np.abs(out - ref).max() < 1e-4
    # dynamic batch: one frame and eight frames
    for n in (1, 8):
        f, m = _inputs(n, seed=n)
        assert np.abs(ort.run(f, m) - backends.load(small_generator, "torch").run(f, m)).max() < 1e-4


@pytest.mark.parametrize("predictor", ["bottleneck", "resting"])
def test_torch_and_onnxruntime_agree_on_a_lip_sketch_generator(predictor):
    """The lip predictor (either kind; the resting one's dropout off), the drawn sketch and lip_gain are in the
    exported graph (the training-only keywords of forward are not): ONNX Runtime gives PyTorch's frames."""
    import torch

    from engine.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True,
                                  lip_predictor=predictor))
    for p in g.parameters():  # random weights everywhere, the sketch's readers and the lip predictor too
        torch.nn.init.normal_(p, std=0.05)
    g.lip_gain.fill_(2.5)
    faces, mels = _inputs(3)
    ref = backends.load(g, "torch").run(faces, mels)
    out = backends.load(g, "onnxruntime").run(faces, mels)
    assert np.abs(out - ref).max() < 1e-4 and np.abs(ref - ref.mean(0)).max() > 1e-3


def test_torch_and_onnxruntime_agree_on_wav2lip(tmp_path):
    from conftest import wav2lip_file

    _, path = wav2lip_file(tmp_path)
    faces, mels = _inputs(2)
    a = backends.load(path, "torch").run(faces, mels)
    b = backends.load(path, "onnxruntime").run(faces, mels)
    assert np.abs(a - b).max() < 1e-4


def test_auto_and_errors(small_generator):
    assert backends.load(small_generator).name == "onnxruntime"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.load(small_generator, "tpu")
    with pytest.raises(ValueError, match="CUDA"):
        backends.load(small_generator, "torch", fp16=True)
