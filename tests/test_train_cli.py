"""The training CLI refuses nonsense (issue 13): the config schema (unknown keys, wrong types, ranges), the
out folder (reuse, --resume, --overwrite), the best checkpoint and TensorBoard across a resume, missing
inputs (no manifest, empty preprocess input, no validation split), the whole-clip sync context, and the
generator's initialisation independent of the sync loss (the ablation)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from engine.checkpoints import safe_load
from train.config import DEFAULTS, ConfigError, TrainConfig, load_config, validate

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# The schema.


@pytest.mark.parametrize("override,message", [
    ("los.l1=5", r"override 'los\.l1=5': unknown config key 'los' \(did you mean 'loss'\?\)"),
    ("loss.l1x=5", r"unknown config key 'loss\.l1x' \(did you mean 'loss\.l1'\?\); the keys of loss are: l1, "),
    ("steps=ten", r"override 'steps=ten': steps must be an integer >= 1, got 'ten'"),
    ("batch_size=0", r"batch_size must be an integer >= 1, got 0"),
    ("loss=5", r"loss must be a mapping with keys l1, .* \(set loss\.KEY=VALUE\), got 5"),
    ("sync.kind=avhub", r"sync\.kind must be one of avhubert, avhubert-visual, avhubert-multimodal, syncnet, none"),
    ("model.decoder=fancy", r"model\.decoder must be one of plain, warp, got 'fancy'"),
    ("augment=maybe", r"augment must be true or false"),
    ("lr=-1", r"lr must be a number > 0, got -1"),
    ("betas=[0.5]", r"betas must be a list of 2 numbers >= 0 and < 1"),
    ("sync.context=3", r"sync\.context \(3 frames\) must hold the k=5 generated frames"),
    ("sync.context=all", r"sync\.context must be an integer >= 1 or 'clip', got 'all'"),
    ("model.size=100", r"model: face size 100 must halve"),
    ("model.size.x=1", r"model\.size is a value, not a section"),
    ("device=gpu", r"device must be one of auto, cpu, cuda, cuda:N"),
    ("disc_region=mouth", r"disc_region: mouth places its crops by the targets' lip points, which only "
                          r"model\.lip_sketch: true loads"),
    ("loss.mouth=2", r"loss\.mouth places its crops by the targets' lip points, which only "
                     r"model\.lip_sketch: true loads"),
    ("disc_region=lips", r"disc_region must be one of face, lower, mouth, got 'lips'"),
    ("steps", r"override 'steps' is not key=value"),
])
def test_bad_overrides_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["data=somewhere", override])
    assert "\n" not in str(info.value)


def test_bad_yaml_keys_name_the_file(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("data: d\nlr: 1.0e-4\n")
    config = tmp_path / "run.yaml"
    config.write_text("include: base.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{config}: unknown config key 'learning_rate' \(did you mean 'lr'\?\)"):
        load_config(str(config), [])
    config.write_text("include: base.yaml\nloss: {l1: ten}\n")
    with pytest.raises(ConfigError, match=rf"{config}: loss\.l1 must be a number >= 0, got 'ten'"):
        load_config(str(config), [])
    config.write_text("include: base.yaml\nmonitor: {every: 10}\n")
    with pytest.raises(ConfigError, match=r"override 'monitor\.clips=0': monitor\.clips must be an integer >= 1"):
        load_config(str(config), ["monitor.clips=0"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.yaml"), [])
    with pytest.raises(ConfigError, match="no training data"):
        load_config(None, [])


def test_configs_and_defaults_fit_the_schema():
    """Every key of today's recipes is in the schema (the configs' keys, the DEFAULTS of train.run)."""
    import train.run

    assert train.run.DEFAULTS is DEFAULTS and validate(DEFAULTS) == DEFAULTS
    assert DEFAULTS["model"] == {"size": 96, "width": 1.0, "audio": "expert", "decoder": "plain",
                                 "lip_sketch": False, "lip_predictor": "bottleneck", "lip_context": 0}
    assert (DEFAULTS["audio_encoder"], DEFAULTS["augment"], DEFAULTS["disc_region"], DEFAULTS["loss"]["grad"]) == \
           ("expert", False, "face", 0.0)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(str(path), [])
        assert set(cfg) == set(DEFAULTS)
    cfg = load_config(None, ["data=d", "lr=1e-4", "steps=2.0", "sync.context=clip", "weights.avhubert=null"])
    assert (cfg["lr"], cfg["steps"], cfg["sync"]["context"]) == (1e-4, 2, "clip")  # YAML's "1e-4" is a string
    assert isinstance(TrainConfig(), TrainConfig)


def test_the_cli_says_one_line_and_exits_2(tmp_path, capsys):
    from train.run import main

    assert main(["data=x", "los.l1=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train.run: error: override 'los.l1=5': unknown config key 'los' (did you mean 'loss'?); "
                   "the top-level keys are: " + ", ".join(DEFAULTS)]
    assert main([f"data={tmp_path / 'nothing'}", f"out={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "does not exist: write it with python -m train.preprocess" in err


# ---------------------------------------------------------------------------
# Missing inputs.


def test_data_without_manifest_says_to_preprocess(tmp_path):
    from train.run import train

    (tmp_path / "data").mkdir()
    cfg = load_config(None, [f"data={tmp_path / 'data'}", f"out={tmp_path / 'run'}"])
    with pytest.raises(FileNotFoundError, match=r"has no manifest\.csv: write it with python -m train\.preprocess"):
        train(cfg)


def test_preprocess_of_an_empty_folder_leaves_no_output(tmp_path):
    from train.preprocess import main

    (tmp_path / "empty").mkdir()
    for source in ("empty", "missing"):
        with pytest.raises(SystemExit) as info:
            main(["--input", str(tmp_path / source), "--output", str(tmp_path / "out"), "--workers", "1"])
        assert info.value.code == 2
        assert not (tmp_path / "out").exists()


class _Stop(Exception):
    pass


def test_no_validation_split_is_a_warning(grid_train_data, tmp_path, monkeypatch, caplog):
    import train.run

    data = tmp_path / "data"
    data.mkdir()
    (data / "clips").symlink_to(grid_train_data / "clips")
    rows = (grid_train_data / "manifest.csv").read_text().splitlines()
    (data / "manifest.csv").write_text("\n".join(r for r in rows if ",val," not in r) + "\n")

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(train.run, "load_clips", stop)
    cfg = load_config(None, [f"data={data}", f"out={tmp_path / 'run'}", "sync.kind=none", "loss.perceptual=0"])
    with caplog.at_level(logging.WARNING, logger="train.run"), pytest.raises(_Stop):
        train.run.train(cfg)
    assert any("no validation split" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# What train() builds.


def _tiny(data: Path, out: Path, *items: str) -> dict:
    return load_config(None, [f"data={data}", f"out={out}", "model.width=0.125", "disc_width=0.125",
                              "batch_size=1", "threads=1", "audio_encoder=train", "loss.perceptual=0",
                              "sync.context=10", "monitor.max_frames=10", "monitor.clips=1", *items])


def test_sync_losses_start_from_the_same_generator(grid_train_data, tmp_path, monkeypatch, avhubert_checkpoint,
                                                   lip_expert_checkpoint):
    """Table 4's ablation: configs that differ only in the sync loss (whose networks are built, and draw
    random numbers, before the generator) start from identical generator weights."""
    import train.run

    made = []

    class Recorded(train.run.Generator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append({k: v.clone() for k, v in self.state_dict().items()})

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(train.run, "Generator", Recorded)
    monkeypatch.setattr(train.run, "Discriminator", stop)
    for kind in ("none", "avhubert", "syncnet"):
        cfg = _tiny(grid_train_data, tmp_path / kind, f"sync.kind={kind}", f"weights.avhubert={avhubert_checkpoint}",
                    f"weights.syncnet={lip_expert_checkpoint}")
        with pytest.raises(_Stop):
            train.run.train(cfg)
    assert len(made) == 3
    for other in made[1:]:
        assert other.keys() == made[0].keys()
        assert all(torch.equal(other[k], made[0][k]) for k in made[0])


def test_whole_clip_context_is_bounded_by_max_context(grid_train_data, tmp_path, monkeypatch, avhubert_checkpoint):
    """sync.context=clip (paper §3.5, "the entire video"): the context is the longest training clip (75
    frames here), at most sync.max_context."""
    import train.run

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs["context"])
        raise _Stop

    monkeypatch.setattr(train.run, "WindowDataset", record)
    for i, items in enumerate([("sync.context=clip",), ("sync.context=clip", "sync.max_context=40"), ()]):
        cfg = _tiny(grid_train_data, tmp_path / str(i), "sync.kind=avhubert", f"weights.avhubert={avhubert_checkpoint}",
                    *items)
        with pytest.raises(_Stop):
            train.run.train(cfg)
    assert seen == [75, 40, 10]


# ---------------------------------------------------------------------------
# The out folder, resume, best.pt and TensorBoard.


def _steps(out: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def _values(out: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_resume_keeps_the_best_checkpoint_and_logs_each_step_once(grid_train_data, tmp_path, monkeypatch):
    """A run validated at steps 2 (score 0.5) and 4 (0.7, best.pt) is killed while writing its step-4
    checkpoint and resumes from step 2. That last.pt holds 0.5, the score of step 2 (validation runs before
    the checkpoint of the same step), and the resumed run, whose validations score 0.6 and 0.65, keeps the
    better best.pt of step 4. TensorBoard shows the replayed steps 3 and 4 once."""
    import torch.utils.tensorboard

    import train.run

    out = tmp_path / "run"
    settings = ("sync.kind=none", "steps=4", "ckpt_every=2", "monitor.every=2", "log_every=1")
    real_save, writers, saves = train.run.atomic_save, [], []
    scores = iter([0.5, 0.7, 0.6, 0.65])

    class Writer(torch.utils.tensorboard.SummaryWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

    class Monitor(train.run.Monitor):  # the scores of this story, whatever the tiny generator draws
        def __call__(self, gen):
            return {"quality": next(scores)}

    def crash_on_second_checkpoint(obj, path):
        if Path(path).name == "last.pt":
            saves.append(obj["step"])
            if len(saves) == 2:  # the interrupted run's logs up to now are on disk, its step-4 state is not
                for w in writers:
                    w.close()
                raise _Stop
        real_save(obj, path)

    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", Writer)
    monkeypatch.setattr(train.run, "Monitor", Monitor)
    monkeypatch.setattr(train.run, "atomic_save", crash_on_second_checkpoint)
    with pytest.raises(_Stop):
        train.run.train(_tiny(grid_train_data, out, *settings))
    monkeypatch.setattr(train.run, "atomic_save", real_save)
    state = safe_load(out / "last.pt")
    assert (state["step"], state["monitor_best"]) == (2, 0.5)
    assert safe_load(out / "best.pt")["meta"]["val"]["quality"] == 0.7

    train.run.train(_tiny(grid_train_data, out, *settings, "steps=6"), resume=True)
    best = safe_load(out / "best.pt")["meta"]
    assert (best["steps"], best["val"]["quality"]) == (4, 0.7)
    assert safe_load(out / "last.pt")["step"] == 6
    assert _steps(out, "loss/l1") == [1, 2, 3, 4, 5, 6]
    assert _values(out, "val/quality") == pytest.approx({2: 0.5, 4: 0.6, 6: 0.65})


def test_an_out_folder_with_a_run_needs_resume_or_overwrite(grid_train_data, tmp_path, capsys, caplog):
    import train.run

    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="train.run"):
        train.run.train(_tiny(grid_train_data, out, "sync.kind=none", "steps=1", "monitor.every=0"), resume=True)
    assert any("--resume: no" in r.getMessage() and "starting afresh" in r.getMessage() for r in caplog.records)
    assert safe_load(out / "last.pt")["step"] == 1
    cfg = _tiny(grid_train_data, out, "sync.kind=none", "steps=2", "monitor.every=0", "log_every=1")
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume .*--overwrite"):
        train.run.train(cfg)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert train.run.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train.run: error:" in err and "--overwrite" in err
    assert safe_load(out / "last.pt")["step"] == 1  # untouched
    assert train.run.main(["--config", str(config), "--overwrite"]) == 0
    assert safe_load(out / "last.pt")["step"] == 2 and safe_load(out / "generator.pt")["meta"]["steps"] == 2
    assert _steps(out, "loss/l1") == [1, 2]  # the old run's logs went with it


def test_the_training_docs_name_the_finetuned_avhubert_and_the_context_choice():
    """Paper §3.4 uses the AV-HuBERT fine-tuned for lip reading; §3.5 the whole clip as context."""
    readme = (ROOT / "README.md").read_text()
    assert "weights.avhubert=base_vox_433h.pt" in readme and "weights.avhubert=base_vox_iter5.pt" not in readme
    paper = (ROOT / "configs" / "paper_lrs2.yaml").read_text()
    assert "weights.avhubert=base_vox_433h.pt" in paper and "sync.context: clip" in paper


def test_resume_from_a_bad_last_pt_is_one_line(grid_train_data, tmp_path, capsys, small_checkpoint):
    import os
    import shutil

    from train.run import main

    for i, bad in enumerate(["random", "generator", "other-width"]):
        out = tmp_path / str(i)
        out.mkdir()
        args = [f"data={grid_train_data}", f"out={out}", "model.width=0.125", "disc_width=0.125", "batch_size=1",
                "threads=1", "audio_encoder=train", "loss.perceptual=0", "sync.kind=none", "steps=1",
                "monitor.every=0"]
        if bad == "random":
            (out / "last.pt").write_bytes(os.urandom(2048))
        elif bad == "generator":
            shutil.copy(small_checkpoint, out / "last.pt")
        else:
            assert main(args + ["model.width=0.25"]) == 0
        assert main(["--resume", *args]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error:" in line]
        assert "Traceback" not in err and len(lines) == 1 and str(out / "last.pt") in lines[0], err
