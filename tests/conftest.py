"""Shared fixtures: the real data of ../shared/data and small random models.

Tests that need ../shared/data skip with a reason when it is absent (a
clone without the shared folder); everything else runs everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUBCAM_TEST_DATA", ROOT.parent / "shared" / "data"))


def data_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test saying which is missing."""
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"test data missing: {path} (../shared/data is not beside this checkout)")
    return path


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
    from engine.checkpoints import save_generator

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
