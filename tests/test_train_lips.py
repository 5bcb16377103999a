"""python -m train.lips: the lip predictor of a lip-sketch generator fitted alone, on real GRID clips."""

import numpy as np
import pytest
import torch

from engine.models import load
from engine.models.generator import Generator, GeneratorConfig, save_generator
from train.lips import fit_lips, lip_samples, lip_scores, main


@pytest.fixture(scope="module")
def sketch_generator(tmp_path_factory, one_thread):
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True))
    path = tmp_path_factory.mktemp("lips") / "sketch.pt"
    save_generator(gen, path, {"note": "source"})
    return path


def test_fit_lips_learns_the_training_mouths_and_keeps_every_other_weight(grid_train_data, sketch_generator):
    """On two GRID clips: the fitted "resting" predictor, given other reference frames of its training clips, is
    closer to their tracked lips than the resting shape (which predicts no motion) and its inner-lip gap follows
    the real one (r > 0.5; a fresh predictor's is the resting shape's, constant); the report
    scores the held-out clip, lip_gain is calibrated, and every weight but the predictor's is the source's."""
    from train.data import load_clips

    source = load(str(sketch_generator))
    new, report = fit_lips(source, grid_train_data, steps=1000, batch_size=64, references=2, progress=False,
                           calibration_windows=32)
    assert new.config.lip_predictor == "resting" and not new.training
    samples = lip_samples(new, load_clips(grid_train_data, "train"), 2, np.random.default_rng(1), progress=False)
    scores = lip_scores(new, samples)
    assert scores["error_px"] < 0.9 * scores["resting_error_px"] and scores["gap_r"] > 0.5
    assert report["train_frames"] == 150 and report["val_frames"] == 75 and report["steps"] == 1000
    assert np.isfinite(report["val"]["error_px"]) and 1.0 <= report["gain"] <= 4.0
    assert float(new.lip_gain) == pytest.approx(report["gain"])
    old = source.state_dict()
    for key, value in new.state_dict().items():
        if not key.startswith("lip_delta.") and key != "lip_gain":
            assert torch.equal(value, old[key]), key


def test_cli_writes_a_generator_that_loads_and_refuses_a_generator_without_a_sketch(grid_train_data,
                                                                                     sketch_generator, tmp_path,
                                                                                     capsys):
    out = tmp_path / "fitted.pt"
    assert main(["--checkpoint", str(sketch_generator), "--data", str(grid_train_data), "--out", str(out),
                 "--steps", "20", "--batch-size", "32", "--references", "2"]) == 0
    gen = load(str(out))
    assert gen.config.lip_predictor == "resting" and gen.meta["note"] == "source"
    assert gen.meta["lips"]["steps"] == 20 and gen.meta["lips"]["source"] == str(sketch_generator)

    plain = tmp_path / "plain.pt"
    save_generator(Generator(GeneratorConfig(size=96, width=0.125, audio="expert")), plain)
    assert main(["--checkpoint", str(plain), "--data", str(grid_train_data), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train.lips: error: the generator has no lip sketch")
    assert not (tmp_path / "x.pt").exists()


def test_fit_lips_with_past_audio(grid_train_data, sketch_generator):
    """lip_context=3: the samples carry the embeddings of the frame's window and of the three before it, the
    new predictor reads them, beats the resting shape on its training clips, and the generator it is put into
    takes 35-frame mel inputs; every other weight is the source's."""
    from train.data import load_clips

    source = load(str(sketch_generator))
    new, report = fit_lips(source, grid_train_data, steps=1000, batch_size=64, references=2, progress=False,
                           calibration_windows=32, lip_context=3)
    assert new.config.lip_context == 3 and new.info.mel_frames == 35
    samples = lip_samples(new, load_clips(grid_train_data, "train"), 2, np.random.default_rng(1), progress=False)
    width = source.audio_encoder(torch.zeros(1, 1, 80, 16)).shape[1]
    assert samples["audio"].shape[-1] == 4 * width
    scores = lip_scores(new, samples)
    assert scores["error_px"] < 0.9 * scores["resting_error_px"]
    old = source.state_dict()
    for key, value in new.state_dict().items():
        if not key.startswith("lip_delta.") and key != "lip_gain":
            assert torch.equal(value, old[key]), key
