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


def test_a_checkpoint_loaded_once_starts_from_its_cached_export_without_torch(small_checkpoint, tmp_path,
                                                                               monkeypatch):
    """engine.backends.onnx_backend's checkpoint index: the first load of a file exports it and records it;
    the next process starts from the export without importing torch and gives the same frames; a changed
    file, or an entry that does not parse, is loaded from the checkpoint again."""
    import os
    import shutil
    import subprocess
    import sys

    from engine.backends import onnx_backend

    home = tmp_path / "home"
    env = {**os.environ, "DUBCAM_HOME": str(home)}
    ckpt = tmp_path / "g.pt"
    shutil.copy(small_checkpoint, ckpt)
    faces, mels = _inputs(2)
    np.save(tmp_path / "faces.npy", faces)
    np.save(tmp_path / "mels.npy", mels)
    script = ("import sys, numpy as np; from engine import backends; "
              f"b = backends.load({str(ckpt)!r}); "
              f"np.save({str(tmp_path / 'out.npy')!r}, b.run(np.load({str(tmp_path / 'faces.npy')!r}), "
              f"np.load({str(tmp_path / 'mels.npy')!r}))); "
              "print('torch' in sys.modules, b.info.size, b.info.kind)")

    def start():
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return done.stdout.split(), np.load(tmp_path / "out.npy")

    ref = backends.load(small_checkpoint, "torch").run(faces, mels)
    first, out1 = start()
    assert first == ["True", "96", "dubcam"]  # loaded the checkpoint, exported, recorded
    entries = list((home / "cache" / "onnx" / "files").glob("*.json"))
    assert len(entries) == 1
    second, out2 = start()
    assert second == ["False", "96", "dubcam"]  # from the cache: torch never imported
    assert np.abs(out2 - ref).max() < 1e-4 and np.array_equal(out1, out2)

    entries[0].write_text("{not json")  # a damaged entry is ignored, and written anew
    assert start()[0][0] == "True" and start()[0][0] == "False"
    with open(ckpt, "ab") as f:  # another file (here: trailing bytes) has another hash
        f.write(b"\0")
    monkeypatch.setenv("DUBCAM_HOME", str(home))
    assert onnx_backend.cached_export(onnx_backend.index_entry(ckpt)) is None
