"""Shared fixtures: the real data of ../shared/data and small random models.

Tests that need ../shared/data skip with a reason when it is absent (a
clone without the shared folder); everything else runs everywhere.

Also the writers of model files in their published layouts (a fairseq
AV-HuBERT checkpoint, syncnet_python's ``syncnet_v2.model``, pytorch-fid's
Inception weights) with small random weights, shared by the tests of the
models and of the metrics.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models.avhubert import AVHubert, AVHubertConfig
from engine.models.inception import FIDInceptionV3
from engine.models.syncnet import SyncNet

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUBCAM_TEST_DATA", ROOT.parent / "shared" / "data"))


def data_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test saying which is missing."""
    path = DATA / rel
    if not path.is_file():
        pytest.skip(reason=f"test data missing: {path} (../shared/data is not beside this checkout)")
    return path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need an NVIDIA GPU: skip them, with the reason, where CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process as soon as pytest is done, with pytest's exit status.

    The tests load native libraries that keep threads of their own (ONNX
    Runtime's pools, MediaPipe's graph, PortAudio against the test's
    PulseAudio server, which is gone by then). Their teardown at interpreter
    exit once aborted the process (rc 134) after every test had passed, and a
    CI run hung there past its time limit. The suite's verdict is final here,
    so the process leaves without that teardown; the threads still alive are
    named on stderr first, so that a leak shows.
    """
    alive = [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if alive:
        print(f"\nthreads still alive at the end of the tests: {', '.join(sorted(alive))}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(getattr(config, "_dubcam_exitstatus", 0)))


def pytest_sessionfinish(session, exitstatus):
    session.config._dubcam_exitstatus = exitstatus


def wav2lip_file(tmp_path: Path, prefix: str = "module.") -> tuple[torch.nn.Module, Path]:
    """A file in the published wav2lip.pth layout (random weights): ``(the BGR Wav2Lip net, its path)``."""
    from engine.models.wav2lip import Wav2Lip

    torch.manual_seed(0)
    net = Wav2Lip()
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    path = tmp_path / "wav2lip.pth"
    torch.save({"state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
                "global_step": 1000, "global_epoch": 3}, path)
    return net.eval(), path


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    """Caches (ONNX exports) go to a temporary DUBCAM_HOME, never the user's."""
    os.environ["DUBCAM_HOME"] = str(tmp_path_factory.mktemp("dubcam_home"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def small_generator():
    """A small random generator (our architecture, 96 px, width 1/8), in eval mode, with BN statistics set."""
    from engine.models.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=96, width=0.125))
    g.train()
    with torch.no_grad():  # non-trivial BN running statistics
        for _ in range(3):
            g(torch.rand(8, 6, 96, 96), torch.rand(8, 1, 80, 16) * 8 - 4)
    return g.eval()


@pytest.fixture(scope="session")
def small_checkpoint(small_generator, tmp_path_factory) -> Path:
    from engine.models.generator import save_generator

    path = tmp_path_factory.mktemp("ckpt") / "small_generator.pt"
    save_generator(small_generator, path, {"note": "random weights for tests"})
    return path


@pytest.fixture(scope="session")
def grid_frames():
    """The 75 RGB frames of grid_bbaf2n.mpg (25 fps) and its 16 kHz audio."""
    from engine.audio import load_audio
    from engine.media import read_frames

    path = data_file("video/grid_bbaf2n.mpg")
    frames = [f for f, _ in read_frames(path)]
    return np.stack(frames), load_audio(path)


# ---------------------------------------------------------------------------
# Random weights and model files in the published layouts.

AVHUBERT_SMALL = AVHubertConfig(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=96,
                                encoder_attention_heads=4)


def mean_identity_lips() -> np.ndarray:
    """``[2, 33, 2]`` float32: the identity lip points (``engine.inputs.identity_lip_points``) of the MediaPipe
    mean face in its own square crop, posed onto itself: a plausible identity reference's points for the tests
    (both halves the same)."""
    from engine.bundled import MEAN_FACE
    from engine.face import box_pixels, crop_box
    from engine.inputs import identity_lip_points

    face = np.load(MEAN_FACE).astype(np.float64)[:, :2]
    box = np.array(box_pixels(crop_box(face)), np.float64)
    return identity_lip_points(face, box, face[None], box[None])[0]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, including BN statistics, norms, PReLU slopes
    and a weight_g that is not ||weight_v||, so every term of the spec matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith(("running_var", "weight_g")) or (name.endswith("weight") and t.ndim == 1):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel()))
    return model.eval()


MODEL_CFG = {
    "_name": "av_hubert", "label_rate": 25, "encoder_layers": 2, "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 96, "encoder_attention_heads": 4, "layer_norm_first": True, "audio_feat_dim": 104,
    "modality_fuse": "concat", "final_dim": 16, "untie_final_proj": True, "feature_grad_mult": 0.1,
}
TASK_CFG = {"_name": "av_hubert_pretraining", "labels": ["km"], "normalize": True, "stack_order_audio": 4}


class FakeDictionary:
    """Stands for fairseq.data.dictionary.Dictionary; pickles like it (NEWOBJ + __dict__)."""

    __module__, __qualname__ = "fairseq.data.dictionary", "Dictionary"

    def __init__(self, symbols):
        self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
        self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + symbols
        self.count = [1] * len(self.symbols)
        self.indices = {s: i for i, s in enumerate(self.symbols)}
        self.bos_index, self.pad_index, self.eos_index, self.unk_index = 0, 1, 2, 3
        self.nspecial = 4


def register_fake_classes(monkeypatch, classes):
    """Make each class importable under its (fake) ``__module__``, parent packages included."""
    for cls in classes:
        parts = cls.__module__.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setattr(sys.modules[cls.__module__], cls.__qualname__, cls, raising=False)


@pytest.fixture
def fake_fairseq(monkeypatch):
    """Register FakeDictionary as fairseq.data.dictionary.Dictionary so that pickle writes that global."""
    register_fake_classes(monkeypatch, [FakeDictionary])
    return FakeDictionary


def fairseq_checkpoint(cfg, model_state, dictionary_cls):
    """Top-level layout of fairseq's Trainer.state_dict() (spec §1.5)."""
    return {
        "args": None,
        "cfg": cfg,
        "model": model_state,
        "criterion": collections.OrderedDict(),
        "optimizer_history": [{"criterion_name": "AVHubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": 3.5}, "num_updates": 1000}],
        "task_state": {"dictionaries": [dictionary_cls([str(i) for i in range(20)])],
                       "target_dictionary": dictionary_cls(["▁the", "s"])},
        "extra_state": {"epoch": 3, "train_iterator": {"epoch": 3, "iterations_in_epoch": 10, "shuffle": True},
                        "val_loss": 2.5},
    }


def pretrained_file(model, tmp_path, dictionary_cls, legacy=False):
    state = collections.OrderedDict(model.state_dict())
    state["mask_emb"] = torch.rand(104)
    state["label_embs_concat"] = torch.rand(24, 16)
    state["final_proj.weight"], state["final_proj.bias"] = torch.rand(16, 64), torch.rand(16)
    cfg = {"_name": None, "common": {"seed": 1337, "fp16": True}, "model": MODEL_CFG, "task": TASK_CFG}
    path = tmp_path / "pretrained.pt"
    torch.save(fairseq_checkpoint(cfg, state, dictionary_cls), path, _use_new_zipfile_serialization=not legacy)
    return path


def syncnet_file(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s weights as syncnet_python's ``syncnet_v2.model``: a raw state dict (no ``num_batches_tracked``)."""
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


def inception_file(model: torch.nn.Module, path: Path, seed: int = 0) -> Path:
    """``model``'s weights as pytorch-fid's ``pt_inception-2015-12-05-*.pth``: torchvision's Inception3 keys
    with its 1008-class ``fc`` (random here), no ``num_batches_tracked``."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048, generator=gen), torch.randn(1008, generator=gen)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def avhubert_checkpoint(tmp_path_factory) -> Path:
    """A random AV-HuBERT of :data:`AVHUBERT_SMALL` size as a fairseq pretraining checkpoint (official layout)."""
    model = randomize(AVHubert(AVHUBERT_SMALL), seed=0)
    with pytest.MonkeyPatch.context() as mp:
        register_fake_classes(mp, [FakeDictionary])
        return pretrained_file(model, tmp_path_factory.mktemp("avhubert"), FakeDictionary)


@pytest.fixture(scope="session")
def syncnet_checkpoint(tmp_path_factory) -> Path:
    """A random syncnet_python network as ``syncnet_v2.model``."""
    return syncnet_file(randomize(SyncNet(), seed=1), tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")


@pytest.fixture(scope="session")
def inception_checkpoint(tmp_path_factory) -> Path:
    """A random FID Inception as pytorch-fid's weights file."""
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    return inception_file(randomize(FIDInceptionV3(), seed=2), path)


def lip_expert_file(model: torch.nn.Module, path: Path, prefix: str = "module.") -> Path:
    """``model``'s weights (a ``SyncNetColor``) as Wav2Lip's ``lipsync_expert.pth``:
    ``{"state_dict" (keys with ``prefix``), "optimizer", "global_step", "global_epoch"}``."""
    torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "global_step": 1000, "global_epoch": 3}, path)
    return path


def vgg19_file(path: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Random VGG-19 weights in torchvision's ``vgg19-dcbb9e9d.pth`` layout: ``features.<i>.weight/bias``
    of the 16 convolutions (He-initialised, times ``scale``) and a ``classifier.6`` head; the real file's
    other classifier layers (123 M parameters) are left out to keep the file small."""
    from train.losses import VGG19

    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in VGG19().state_dict().items():
        fan_in = t[0].numel()
        state[name] = (torch.randn(t.shape, generator=gen) * math.sqrt(2.0 / fan_in) * scale if t.ndim > 1
                       else torch.zeros(t.shape))
    state["classifier.6.weight"], state["classifier.6.bias"] = torch.zeros(1000, 4096), torch.zeros(1000)
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def vgg19_weights(tmp_path_factory) -> Path:
    """Random VGG-19 weights in torchvision's file layout (:func:`vgg19_file`)."""
    return vgg19_file(tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth")


@pytest.fixture(scope="session")
def lip_expert_checkpoint(tmp_path_factory) -> Path:
    """A random Wav2Lip lip expert (``SyncNetColor``) as ``lipsync_expert.pth``."""
    from engine.models.syncnet import SyncNetColor

    return lip_expert_file(randomize(SyncNetColor(), seed=3), tmp_path_factory.mktemp("expert") / "lipsync_expert.pth")


@pytest.fixture(scope="session")
def small_expert_checkpoint(tmp_path_factory) -> Path:
    """A random lip expert of width 1/8, as ``python -m train.syncnet --width 0.125`` writes it: its audio
    encoder fits a generator of width 1/8 with ``model.audio=expert``."""
    from engine.models.syncnet import SyncNetColor

    return lip_expert_file(randomize(SyncNetColor(bgr=True, width=0.125), seed=4),
                           tmp_path_factory.mktemp("small_expert") / "lipsync_expert.pth", prefix="")


GRID_TRAIN_CLIPS = {"s1": ("bbas1s.mpg", "bbbf6n.mpg"), "s1val": ("bbbs4n.mpg",)}
"""Real GRID clips of ../shared/data/train/grid/s1 for the training tests, by the speaker folder they get
(``s1val`` is held out as the validation split)."""


@pytest.fixture(scope="session")
def grid_train_data(tmp_path_factory) -> Path:
    """:data:`GRID_TRAIN_CLIPS` preprocessed by ``python -m train.preprocess`` (in this process):
    2 train clips and 1 val clip of 75 frames, 96 px faces, with mouth-ROI data."""
    from train.preprocess import main

    raw = tmp_path_factory.mktemp("grid_raw")
    for speaker, names in GRID_TRAIN_CLIPS.items():
        (raw / speaker).mkdir()
        for name in names:
            (raw / speaker / name).symlink_to(data_file(f"train/grid/s1/{name}"))
    out = tmp_path_factory.mktemp("grid_data")
    assert main(["--input", str(raw), "--output", str(out), "--val-speakers", "s1val", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a test module: on a small machine shared with other jobs, two threads
    wait on each other at every operator (10-50x slower than one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
