"""train.run on real GRID clips: a few steps with every sync loss, the online monitor, 2-process DDP
(gloo), exact resume after a killed run, and the configs (the bundled model's recipe unchanged)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from engine.checkpoints import safe_load
from engine.models import load
from engine.models.generator import Generator, GeneratorConfig
from train.discriminator import Discriminator
from train.losses import SYNC_KINDS
from train.run import load_config, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(data: Path, out: Path, **overrides) -> dict:
    """A config of the tiny recipe: 96 px generator of width 1/8, batch 1, one thread, its audio encoder
    trained (``audio_encoder=train``: no expert needed) unless overridden."""
    items = [f"data={data}", f"out={out}", "model.width=0.125", "disc_width=0.125", "batch_size=1", "steps=2",
             "audio_encoder=train",
             "log_every=1", "ckpt_every=2", "threads=1", "sync.context=10", "monitor.max_frames=10",
             "monitor.every=0", "loss.perceptual=0"]
    return load_config(None, items + [f"{k}={v}" for k, v in overrides.items()])


def _scalars(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_train_run_with_every_sync_loss(kind, grid_train_data, tmp_path, avhubert_checkpoint,
                                        lip_expert_checkpoint, vgg19_weights, syncnet_checkpoint):
    paper = kind == "avhubert"  # the paper's full recipe: + perceptual, monitor with LSE
    cfg = tiny(grid_train_data, tmp_path, **{
        "sync.kind": kind, "weights.avhubert": avhubert_checkpoint, "weights.syncnet": lip_expert_checkpoint,
        "weights.vgg": vgg19_weights, "weights.lse": syncnet_checkpoint if paper else "null",
        "loss.perceptual": 1.0 if paper else 0.0, "monitor.every": 2})
    gen = train(cfg)
    state = safe_load(tmp_path / "last.pt")
    assert state["step"] == 2 and {"scaler", "torch_rng", "numpy_rng", "python_rng", "monitor_best"} <= set(state)
    exported = load(tmp_path / "generator.pt")
    for key, value in exported.state_dict().items():
        assert torch.equal(value, gen.state_dict()[key])
    tags = _scalars(tmp_path)
    assert {"loss/l1", "loss/gan_g", "loss/gan_d", "loss/total", "val/l1", "val/psnr", "val/ssim"} <= tags
    if kind != "none":
        assert {"loss/sync", "loss/sync_cos"} <= tags
    if paper:
        assert {"loss/perceptual", "val/LSE-D", "val/LSE-C"} <= tags
    if kind.startswith("avhubert"):  # the monitor's AVS scores and the best checkpoint by AVSu
        assert {"val/AVSu", "val/AVSm", "val/AVSv"} <= tags
        best = safe_load(tmp_path / "best.pt")
        assert best["meta"]["val"]["AVSu"] == state["monitor_best"] and best["meta"]["steps"] == 2


def test_missing_loss_weights_are_a_clear_error(grid_train_data, tmp_path):
    cfg = tiny(grid_train_data, tmp_path, **{"loss.perceptual": 1.0, "sync.kind": "none"})
    with pytest.raises(FileNotFoundError, match=r"perceptual loss.*vgg19-dcbb9e9d\.pth"):
        train(cfg)
    cfg = tiny(grid_train_data, tmp_path, **{"sync.kind": "avhubert"})
    with pytest.raises(FileNotFoundError, match=r"avhubert sync loss needs the AV-HuBERT fine-tuned for lip reading, e.g. base_vox_433h\.pt"):
        train(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, cfg: dict, port: int, world: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    gen = train(cfg)
    torch.save(gen.state_dict(), Path(cfg["out"]) / f"rank{rank}.pt")


def test_ddp_two_processes_end_with_identical_weights(grid_train_data, tmp_path, avhubert_checkpoint):
    """2-process DDP on the CPU (gloo) with the AV-HuBERT sync loss: each rank trains on other samples,
    gradients are averaged, both ranks end with the same weights (BatchNorm statistics included)."""
    cfg = tiny(grid_train_data, tmp_path, **{"sync.kind": "avhubert", "weights.avhubert": avhubert_checkpoint,
                                             "steps": 2})
    mp.spawn(_ddp_rank, args=(cfg, _free_port(), 2), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    state = safe_load(tmp_path / "last.pt")  # written by rank 0
    assert state["world_size"] == 2 and state["step"] == 2
    assert all(torch.equal(state["generator"][key], ranks[1][key]) for key in ranks[1])


def test_killed_run_resumes_to_the_same_weights(grid_train_data, tmp_path):
    """Kill (SIGKILL) a train.run process after its first checkpoint; --resume reaches exactly the
    weights and optimizer state of an uninterrupted run."""
    settings = {"steps": 6, "ckpt_every": 2, "loss.gan": 1.0, "sync.kind": "none", "monitor.every": 0}
    train(tiny(grid_train_data, tmp_path / "whole", **settings))
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(tiny(grid_train_data, tmp_path / "killed", **settings)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "train.run", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = safe_load(last)["step"]
    assert killed_at < 6 and not (tmp_path / "killed" / "generator.pt").exists()
    subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    whole, resumed = safe_load(tmp_path / "whole" / "last.pt"), safe_load(last)
    assert resumed["step"] == whole["step"] == 6
    for part in ("generator", "discriminator"):
        for key, value in whole[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=1e-6, msg=f"{part} {key}")
    for group in ("opt_g", "opt_d"):
        for i, s in whole[group]["state"].items():
            torch.testing.assert_close(resumed[group]["state"][i]["exp_avg"], s["exp_avg"], rtol=0, atol=1e-6)


def test_default_cpu_config_is_the_bundled_recipe_and_resumes_old_checkpoints(grid_train_data, tmp_path,
                                                                            small_expert_checkpoint):
    """configs/default_cpu.yaml (the bundled model's first stage): the expert's frozen audio encoder and sync loss, the warp
    decoder, lower-half GAN, gradient loss, augmentation; --resume reads a last.pt written before the
    scaler/RNG/monitor keys existed."""
    cfg = load_config(str(ROOT / "configs" / "default_cpu.yaml"),
                      [f"data={grid_train_data}", f"out={tmp_path}", "model.width=0.125", "disc_width=0.125",
                       "batch_size=1", "threads=1", "monitor.max_frames=10",
                       f"weights.syncnet={small_expert_checkpoint}"])
    assert cfg["loss"] == {"l1": 10.0, "l1_lower_weight": 3.0, "grad": 5.0, "gan": 0.1, "gan_start": 600,
                           "perceptual": 0.0, "sync": 0.3, "sync_start": 300, "opening": 0.0,
                           "opening_amplitude": 0.0, "lips": 1.0, "mouth": 0.0}
    assert (cfg["lr"], cfg["k"], cfg["model"]["size"], cfg["model"]["decoder"]) == (3e-4, 5, 96, "warp")
    assert (cfg["audio_encoder"], cfg["sync"]["kind"], cfg["disc_region"], cfg["augment"]) == \
           ("expert", "syncnet", "lower", True)
    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", decoder="warp"))
    disc = Discriminator(0.125)
    gen.audio_encoder.requires_grad_(False)  # frozen: not in the optimizer
    opt_g = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad])
    opt_d = torch.optim.Adam(disc.parameters())
    torch.save({"format": "dubcam-train", "step": 250, "seconds": 12.0, "config": cfg,
                "generator": gen.state_dict(), "discriminator": disc.state_dict(), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "torch_rng": torch.get_rng_state()}, tmp_path / "last.pt")
    cfg["steps"] = 251
    train(cfg, resume=True)
    assert safe_load(tmp_path / "last.pt")["step"] == 251


def test_generator_takes_the_experts_audio_encoder_frozen(grid_train_data, tmp_path, small_expert_checkpoint):
    """Paper 3.2: the generator's audio encoder is the lip expert's, copied and frozen (weights and
    BatchNorm statistics unchanged by training), and the expert is the sync loss; the monitor reports the
    weights-free mouth metrics and the expert's confidence, and keeps best.pt by their quality score."""
    from engine.models.syncnet import SyncNetColor

    cfg = tiny(grid_train_data, tmp_path, **{
        "audio_encoder": "expert", "model.audio": "expert", "model.decoder": "warp", "sync.kind": "syncnet",
        "weights.syncnet": small_expert_checkpoint, "loss.grad": 1.0, "disc_region": "lower", "augment": "true",
        "steps": 3, "monitor.every": 3, "monitor.max_frames": 20, "loss.gan": 1.0})
    gen = train(cfg)
    expert = SyncNetColor.from_checkpoint(small_expert_checkpoint)
    for key, value in expert.audio_encoder.state_dict().items():
        assert torch.equal(gen.audio_encoder.state_dict()[key], value), key
    assert not any(p.requires_grad for p in gen.audio_encoder.parameters())
    changed = [k for k, v in gen.state_dict().items() if k.startswith("flow_head") or k.startswith("blend_head")]
    assert changed  # the warp decoder's heads exist and were trained along
    tags = _scalars(tmp_path)
    assert {"loss/grad", "loss/sync", "val/sharpness", "val/opening", "val/coupling", "val/lip_error",
            "val/expert_conf", "val/expert_conf_real", "val/quality"} <= tags
    best = safe_load(tmp_path / "best.pt")
    assert best["meta"]["val"]["quality"] == safe_load(tmp_path / "last.pt")["monitor_best"]
    assert best["config"]["decoder"] == "warp" and best["config"]["audio"] == "expert"


def test_an_expert_of_the_wrong_width_is_a_clear_error(grid_train_data, tmp_path, lip_expert_checkpoint):
    cfg = tiny(grid_train_data, tmp_path, **{"audio_encoder": "expert", "model.audio": "expert",
                                             "weights.syncnet": lip_expert_checkpoint, "sync.kind": "none"})
    with pytest.raises(ValueError, match="expert of width 0.125"):
        train(cfg)


def test_configs_are_the_paper_recipe_and_its_ablation():
    paper = load_config(str(ROOT / "configs" / "paper_lrs2.yaml"), [])
    assert paper["loss"]["l1"] == 10.0 and paper["loss"]["perceptual"] == 1.0 and paper["loss"]["sync"] == 0.5
    assert paper["lr"] == 1e-4 and paper["sync"]["kind"] == "avhubert"
    assert paper["model"] == {"size": 96, "width": 1.0, "audio": "expert", "decoder": "plain", "lip_sketch": False,
                              "lip_predictor": "bottleneck", "lip_context": 0}
    assert paper["audio_encoder"] == "expert"  # §3.2: SyncNet's audio encoder, frozen
    kinds = {}
    for path in sorted((ROOT / "configs").glob("paper_lrs2_*.yaml")):
        cfg = load_config(str(path), [])
        assert {k: v for k, v in cfg.items() if k not in ("sync", "out", "loss")} == \
               {k: v for k, v in paper.items() if k not in ("sync", "out", "loss")}
        kinds[cfg["sync"]["kind"] if cfg["loss"]["sync"] > 0 else "none"] = cfg["out"]
    assert set(kinds) == {"avhubert-visual", "avhubert-multimodal", "syncnet", "none"}
    assert len(set(kinds.values())) == 4 and paper["out"] not in kinds.values()
    assert yaml.safe_load((ROOT / "configs" / "paper_lrs2_syncnet.yaml").read_text())["include"] == "paper_lrs2.yaml"


@pytest.mark.gpu
def test_mixed_precision_steps_on_cuda(grid_train_data, tmp_path, avhubert_checkpoint, vgg19_weights):
    """The paper's recipe on one GPU in float16 autocast with a gradient scaler (not run where there is
    no CUDA device)."""
    cfg = tiny(grid_train_data, tmp_path, **{"sync.kind": "avhubert", "weights.avhubert": avhubert_checkpoint,
                                             "weights.vgg": vgg19_weights, "loss.perceptual": 1.0,
                                             "device": "cuda", "batch_size": 2})
    gen = train(cfg)
    state = safe_load(tmp_path / "last.pt")
    assert state["scaler"]["scale"] > 0 and "cuda_rng" in state
    assert all(torch.isfinite(p).all() for p in gen.parameters())


def test_freeze_norm_keeps_the_batchnorm_statistics_while_the_weights_train(grid_train_data, tmp_path):
    stats = {}
    for freeze in (False, True):
        out = tmp_path / str(freeze)
        cfg = tiny(grid_train_data, out, freeze_norm=str(freeze).lower(), steps=3,
                   **{"monitor.every": 2, "loss.sync": 0, "loss.gan": 0})
        torch.manual_seed(cfg["seed"])  # the initialisation train() starts from
        init = Generator(GeneratorConfig(**cfg["model"]))
        gen = train(cfg)
        bn = [(n, b) for n, b in gen.named_buffers() if n.endswith("running_mean")]
        start = dict(init.named_buffers())
        stats[freeze] = max(float((b - start[n]).abs().max()) for n, b in bn)
        conv = [n for n, p in gen.named_parameters() if p.requires_grad and n.endswith("weight") and p.dim() == 4]
        assert float((dict(gen.named_parameters())[conv[0]] - dict(init.named_parameters())[conv[0]]).abs().max()) > 0
    assert stats[True] == 0.0 and stats[False] > 1e-4


def test_lip_sketch_generator_grows_from_an_old_one_learns_its_lips_and_sets_its_gain(grid_train_data, tmp_path):
    """model.lip_sketch with init= a generator without it: training starts from its weights (grown), the lip
    predictor learns from the targets' landmarks (loss/lips_px), every validation sets lip_gain (val/lip_gain),
    and generator.pt loads as a lip-sketch generator with that gain."""
    from engine.models.generator import save_generator

    old = Generator(GeneratorConfig(size=96, width=0.125, audio="expert"))
    save_generator(old, tmp_path / "old.pt")
    cfg = tiny(grid_train_data, tmp_path / "run", init=str(tmp_path / "old.pt"), steps=3,
               **{"model.lip_sketch": "true", "monitor.every": 3, "loss.gan": 0, "sync.kind": "none"})
    train(cfg)
    assert {"loss/lips_px", "val/lip_gain"} <= _scalars(tmp_path / "run")
    gen = load(str(tmp_path / "run" / "generator.pt"))
    assert gen.config.lip_sketch and 1.0 <= float(gen.lip_gain) <= 4.0
    assert not torch.equal(gen.lip_delta[-1].bias, Generator(gen.config).lip_delta[-1].bias)  # it learned
    trained = dict(gen.named_parameters())
    for key, value in old.named_parameters():  # 3 steps of Adam at lr 1e-4 from old's weights
        if key.startswith("identity_encoder"):
            assert float((trained[key] - value).abs().max()) < 1e-3, key


def test_mouth_discriminator_trains_on_the_mouth_crops(grid_train_data, tmp_path, monkeypatch):
    """disc_region: mouth: the discriminator sees train.losses.mouth_view crops (64 px) of the targets and
    of the generated faces, cut at the targets' lip points, and both networks learn from it."""
    import train.run as run
    from train.losses import mouth_view

    seen = []
    monkeypatch.setattr(run, "mouth_view", lambda faces, lips: seen.append((faces.shape, lips.shape))
                        or mouth_view(faces, lips))
    cfg = tiny(grid_train_data, tmp_path / "run", steps=2,
               **{"model.lip_sketch": "true", "disc_region": "mouth", "loss.gan": 1, "loss.gan_start": 0,
                  "sync.kind": "none"})
    train(cfg)
    n = cfg["batch_size"] * cfg["k"]
    # per step: the generator's term (n fakes), the discriminator's (n reals + n fakes)
    assert seen == [((n, 3, 96, 96), (n, 33, 2)), ((2 * n, 3, 96, 96), (2 * n, 33, 2))] * 2
    assert {"loss/gan_g", "loss/gan_d"} <= _scalars(tmp_path / "run")


def test_mouth_loss_compares_the_mouth_crops(grid_train_data, tmp_path, monkeypatch):
    """loss.mouth: L1 + gradient L1 of train.losses.mouth_view crops of the generated faces and of their
    targets, both cut at the targets' lip points; logged, and > 0 for a random generator."""
    import train.run as run
    from train.losses import mouth_view

    seen = []
    monkeypatch.setattr(run, "mouth_view", lambda faces, lips: seen.append((faces.shape, lips.shape))
                        or mouth_view(faces, lips))
    cfg = tiny(grid_train_data, tmp_path / "run", steps=1,
               **{"model.lip_sketch": "true", "loss.mouth": 2, "loss.gan": 0, "sync.kind": "none"})
    train(cfg)
    n = cfg["batch_size"] * cfg["k"]
    assert seen == [((n, 3, 96, 96), (n, 33, 2))] * 2  # the fakes, then their targets
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert acc.Scalars("loss/mouth")[0].value > 0.01


def test_lip_gain_undoes_a_shrunk_displacement(grid_train_data):
    """calibrate_lip_gain matches the predicted mouth's motion to the real one's: a predictor whose
    displacement is halved gets twice the gain."""
    from train.data import WindowDataset, load_clips
    from train.run import calibrate_lip_gain

    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", lip_sketch=True))
    torch.nn.init.normal_(gen.lip_delta[-1].weight, std=0.01)
    windows = WindowDataset(load_clips(grid_train_data, "train"), k=5, samples_per_epoch=16, identity="held",
                            lips=True)
    unbounded = (0.0, 1e9)
    first = calibrate_lip_gain(gen, windows, torch.device("cpu"), limits=unbounded)
    assert float(gen.lip_gain) == pytest.approx(first)
    with torch.no_grad():
        gen.lip_delta[-1].weight.mul_(0.5)
        gen.lip_delta[-1].bias.mul_(0.5)
    assert calibrate_lip_gain(gen, windows, torch.device("cpu"), limits=unbounded) == pytest.approx(2 * first,
                                                                                                   rel=1e-3)
    assert calibrate_lip_gain(gen, windows, torch.device("cpu"), limits=(1.0, 1.5)) in (1.0, 1.5)


def test_init_from_another_lip_predictor_starts_that_predictor_fresh():
    """_grow_state: weights of a generator whose lip predictor is of another kind (model.lip_predictor) load
    into every other layer; the predictor starts as a fresh one (its last layer zero: the resting shape)."""
    from train.run import _grow_state

    torch.manual_seed(0)
    cfg = dict(size=96, width=0.125, audio="expert", decoder="warp", lip_sketch=True)
    old = Generator(GeneratorConfig(**cfg))
    for p in old.parameters():
        torch.nn.init.normal_(p, std=0.05)
    new = Generator(GeneratorConfig(**cfg, lip_predictor="resting"))
    new.load_state_dict(_grow_state(new, old.state_dict(), "old.pt"))
    assert float(new.lip_delta[-1].weight.abs().max()) == 0.0
    assert torch.equal(new.fusion.weight, old.fusion.weight) and torch.equal(new.blend_head.bias, old.blend_head.bias)
