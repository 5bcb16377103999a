"""Train the generator: ``python -m train.run --config CONFIG.yaml [key=value ...]``.

The recipe (Yaman et al. 2024 §3.5–3.6): sample k-frame windows with their
identity and pose references and mel windows (``train.data``), generate,
and minimise ``λ_gan·GAN + λ1·L1 + λ2·perceptual + λ3·sync``
(``train.losses``; defaults (λ1, λ2, λ3) = (10, 1, 0.5), sync loss
``avhubert``) with Adam (lr 1e-4, betas (0.5, 0.999)); the discriminator
(``train.discriminator``) learns with BCE at the same rate.

Scale: one process on the CPU or a GPU, or DDP under ``torchrun`` on several
GPUs and machines (NCCL; gloo on CPUs), e.g.
``torchrun --nproc_per_node 8 -m train.run --config configs/paper_lrs2.yaml``.
``batch_size`` is per process. On CUDA the forward passes run in float16
autocast with a gradient scaler (``amp: false`` turns it off).

Every ``ckpt_every`` steps the full training state (generator,
discriminator, both optimizers, gradient scaler, RNG states, monitor best;
the data sampler's state is the step, ``train.data.StepBatches``) is
written atomically to ``<out>/last.pt``; ``--resume`` continues it exactly
(with the same number of processes). Every ``monitor.every`` steps and at
the end the validation monitor (``train.monitor``) runs; ``<out>/best.pt``
keeps the generator with the best AVSu. At the end (``steps`` reached or
``time_limit_min`` spent) the generator is written to
``<out>/generator.pt``, the format ``realtime --checkpoint`` loads, with
its validation scores in the metadata.

Logs go to stdout and TensorBoard (``<out>/tb``): every loss term, the
sync cosine, throughput, validation scores, and grids of identity | pose |
generated | target faces (and real | generated mouth ROIs for the
AV-HuBERT sync losses).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from engine.checkpoints import atomic_save, safe_load, save_generator
from engine.models.avhubert import AVHubert
from engine.models.generator import Generator, GeneratorConfig
from engine.models.syncnet import SyncNet, SyncNetColor
from train.data import StepBatches, WindowDataset, collate, load_clips
from train.discriminator import Discriminator
from train.augment import Augment
from train.losses import (AVHubertSyncLoss, LipExpertSyncLoss, build_perceptual_loss, build_sync_loss, find_weights,
                          gan_discriminator_loss, gan_generator_loss, gradient_loss, l1_loss, lower_half)
from train.monitor import Monitor

log = logging.getLogger("train.run")

DEFAULTS = {
    "data": None,  # folder written by train.preprocess
    "data_in_memory": True,  # False: read clip files on demand (data sets larger than memory)
    "out": "runs/default",
    # audio: wav2lip | expert (the lip expert's layout); decoder: plain (the paper's) | warp
    # (engine.models.generator.GeneratorConfig).
    "model": {"size": 96, "width": 1.0, "audio": "expert", "decoder": "plain"},
    # expert: copy the audio encoder of the lip expert (weights.syncnet) into the generator and freeze it,
    # as paper §3.2 does with SyncNet's; train: a random audio encoder trained with the rest.
    "audio_encoder": "expert",
    "k": 5,
    "batch_size": 8,  # per process
    "steps": 100_000,
    "time_limit_min": None,
    "lr": 1e-4,
    "betas": [0.5, 0.999],
    # grad: L1 of the image gradients of the lower half (sharp edges; 0 in the paper's recipe).
    "loss": {"l1": 10.0, "l1_lower_weight": 1.0, "gan": 1.0, "gan_start": 0,
             "perceptual": 1.0, "sync": 0.5, "sync_start": 0, "grad": 0.0},
    # Consistent audio-video augmentation (train.augment): flip, colour jitter, gain.
    "augment": False,
    # kind: avhubert | avhubert-visual | avhubert-multimodal | syncnet | none (train.losses.SYNC_KINDS);
    # context: frames of real video around the k generated ones that AV-HuBERT sees.
    "sync": {"kind": "avhubert", "context": 50, "output_layer": None},
    # Weights files (None: $DUBCAM_HOME/models/<published name>, see train.losses.find_weights).
    "weights": {"avhubert": None, "syncnet": None, "vgg": None, "lse": None},
    # every: steps between validation runs (0: only at the end).
    "monitor": {"every": 1000, "clips": 8, "max_frames": 100},
    "disc_width": 1.0,
    # face: the discriminator sees whole faces (the paper); lower: the lower halves, where the
    # generator draws (Wav2Lip's visual-quality discriminator).
    "disc_region": "face",
    "log_every": 50,
    "ckpt_every": 500,
    "seed": 0,
    "threads": None,
    "device": "auto",  # auto | cpu | cuda
    "amp": True,  # float16 autocast + gradient scaler on CUDA
    "workers": 0,  # DataLoader worker processes per training process
}


def load_config(path: str | None, overrides: list[str]) -> dict:
    """Defaults ← YAML file ← ``key=value`` overrides (dotted keys reach nested values; values parsed
    as YAML). A file may start from another with ``include: other.yaml`` (relative to itself)."""
    cfg = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    if path:
        _merge(cfg, _read_yaml(Path(path)))
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    if not cfg["data"]:
        raise SystemExit("no training data: set data=<folder written by python -m train.preprocess>")
    return cfg


def _read_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text()) or {}
    base = data.pop("include", None)
    if not base:
        return data
    merged = _read_yaml(path.parent / base)
    _merge(merged, data)
    return merged


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _distributed(cfg: dict) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; joins the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    want = cfg["device"]
    cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def _mean_over_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    if not values:
        return {}
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world > 1:
        dist.all_reduce(stacked)
        stacked /= world
    return dict(zip(values, stacked.tolist()))


def _numpy_rng(saved: dict | None = None):
    """numpy's global RNG state as plain tensors and numbers (what ``weights_only`` loading allows),
    or back (``saved`` given) to the tuple ``np.random.set_state`` takes."""
    if saved is None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "cached": float(cached)}
    return (saved["name"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
            saved["cached"])


def _broadcast_buffers(*modules: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics, spectral-norm vectors) to every rank."""
    for m in modules:
        for b in m.buffers():
            dist.broadcast(b, 0)


def _restore(path: Path, gen, disc, opt_g, opt_d, scaler, device, world: int) -> tuple[int, float, float]:
    """Load a ``last.pt`` into the models, optimizers, scaler and RNGs; returns ``(step, seconds, best AVSu)``.
    Files written before the scaler, numpy/python RNG and monitor entries existed load too."""
    state = safe_load(path)
    gen.load_state_dict(state["generator"])
    disc.load_state_dict(state["discriminator"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    if "numpy_rng" in state:
        np.random.set_state(_numpy_rng(state["numpy_rng"]))
    if "python_rng" in state:
        random.setstate(state["python_rng"])
    log.info("resumed %s at step %d", path, state["step"])
    if state.get("world_size", world) != world:
        log.warning("the run was saved by %d processes and resumes with %d: the data order changes",
                    state["world_size"], world)
    return state["step"], state["seconds"], state.get("monitor_best", -float("inf"))


def _monitor(cfg: dict, sync_loss, device: torch.device, expert: SyncNetColor | None) -> Monitor:
    """The validation monitor of ``cfg``: AVS with the sync loss's AV-HuBERT or ``weights.avhubert``
    (when the val clips carry ROI data), LSE with ``weights.lse``, the expert's confidence with
    ``expert``, the weights-free mouth metrics always."""
    val_clips = load_clips(cfg["data"], "val", limit=cfg["monitor"]["clips"])
    avhubert = lse_net = None
    if isinstance(sync_loss, AVHubertSyncLoss):
        avhubert = sync_loss.avhubert
    elif cfg["weights"]["avhubert"]:
        avhubert = AVHubert.from_checkpoint(find_weights("avhubert", cfg["weights"]["avhubert"], "AVSu"))
    if avhubert is not None and not all(c.has_roi for c in val_clips):
        avhubert = None
    if cfg["weights"]["lse"]:
        lse_net = SyncNet.from_checkpoint(find_weights("lse", cfg["weights"]["lse"], "LSE"))
    monitor = Monitor(val_clips, cfg["k"], avhubert, lse_net, cfg["monitor"]["clips"], cfg["monitor"]["max_frames"],
                      device, expert)
    log.info("monitor: %d val clips; AVS %s; LSE %s", len(monitor.clips),
             "on" if avhubert is not None else "off (no AV-HuBERT weights or no ROI data)",
             "on" if lse_net is not None else "off (no weights.lse)")
    return monitor


def train(cfg: dict, resume: bool = False) -> Generator:
    """Run the recipe of ``cfg`` (see :data:`DEFAULTS`); returns the trained generator (eval mode).

    Raises FileNotFoundError / CheckpointError for loss weights that are
    missing or wrong (the message says what is needed and where it is
    published) and ValueError for data that cannot serve the recipe.
    """
    rank, world, device = _distributed(cfg)
    out = Path(cfg["out"])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    k, loss_w, size = cfg["k"], cfg["loss"], cfg["model"]["size"]
    amp = bool(cfg["amp"]) and device.type == "cuda"

    sync_kind = cfg["sync"]["kind"] if loss_w["sync"] > 0 else "none"
    sync_loss = build_sync_loss(sync_kind, cfg["weights"], k, size, cfg["sync"]["output_layer"])
    perceptual = build_perceptual_loss(cfg["weights"]) if loss_w["perceptual"] > 0 else None
    for m in (sync_loss, perceptual):
        if m is not None:
            m.to(device)

    train_clips = load_clips(cfg["data"], "train", in_memory=cfg["data_in_memory"])
    dataset = WindowDataset(train_clips, k=k, samples_per_epoch=10**9, seed=cfg["seed"],
                            context=cfg["sync"]["context"] if sync_kind.startswith("avhubert") else 0,
                            sync_mel=sync_kind == "syncnet", augment=Augment() if cfg["augment"] else Augment.off())
    log.info("data: %d train clips; sync loss %s; perceptual %s; %d process(es) on %s",
             len(train_clips), sync_kind, "on" if perceptual else "off", world, device)

    torch.manual_seed(cfg["seed"])  # the generator's initialisation does not depend on the loss networks built
    gen = Generator(GeneratorConfig(**cfg["model"]))
    expert = sync_loss.expert if isinstance(sync_loss, LipExpertSyncLoss) else None
    if cfg["audio_encoder"] == "expert":
        if expert is None:
            expert = SyncNetColor.from_checkpoint(find_weights("syncnet", cfg["weights"]["syncnet"],
                                                               "audio_encoder: expert (paper 3.2)")).to(device)
        gen.load_audio_encoder(expert, freeze=True)
        log.info("audio encoder: the lip expert's, frozen (paper 3.2)")
    gen = gen.to(device)
    disc = Discriminator(cfg["disc_width"]).to(device)
    disc_view = lower_half if cfg["disc_region"] == "lower" else (lambda faces: faces)
    betas = tuple(cfg["betas"])
    opt_g = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=cfg["lr"], betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=betas)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    step, spent, best = 0, 0.0, -float("inf")
    if resume and (out / "last.pt").is_file():
        step, spent, best = _restore(out / "last.pt", gen, disc, opt_g, opt_d, scaler, device, world)
    monitor = _monitor(cfg, sync_loss, device, expert) if rank == 0 else None

    gen_step, disc_step = gen, disc
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        gen_step = torch.nn.parallel.DistributedDataParallel(gen, device_ids=ids)
        disc_step = torch.nn.parallel.DistributedDataParallel(disc, device_ids=ids)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(step, cfg["batch_size"], rank, world, modulo=len(dataset)),
        collate_fn=collate, num_workers=cfg["workers"], pin_memory=device.type == "cuda")
    batches = iter(loader)

    def save_state():
        atomic_save({"format": "dubcam-train", "step": step, "seconds": spent, "config": cfg,
                     "generator": gen.state_dict(), "discriminator": disc.state_dict(),
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "scaler": scaler.state_dict(),
                     "torch_rng": torch.get_rng_state(), "numpy_rng": _numpy_rng(),
                     "python_rng": random.getstate(), "monitor_best": best, "world_size": world,
                     **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
                    out / "last.pt")

    last_validation: dict = {}  # {"step": int, "scores": dict}

    def validate() -> dict[str, float]:
        nonlocal best
        if last_validation.get("step") == step:
            return last_validation["scores"]
        scores = monitor(gen)
        last_validation.update(step=step, scores=scores)
        for name, v in scores.items():
            tb.add_scalar(f"val/{name}", v, step)
        log.info("step %d  val %s", step, "  ".join(f"{n} {v:.4f}" for n, v in scores.items()))
        key = "AVSu" if "AVSu" in scores else "quality"
        if scores.get(key, -float("inf")) > best:
            best = scores[key]
            save_generator(gen, out / "best.pt", {"steps": step, "val": scores, "config": cfg})
            log.info("new best %s %.4f: wrote %s", key, best, out / "best.pt")
        return scores

    tb = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(out / "tb")
    limit_s = cfg["time_limit_min"] * 60 if cfg["time_limit_min"] else float("inf")
    gen.train()
    disc.train()
    t_start = time.perf_counter() - spent
    t_log, step_log = time.perf_counter(), step
    while step < cfg["steps"]:
        stop = torch.tensor(float(spent >= limit_s), device=device)
        if world > 1 and cfg["time_limit_min"]:
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        if stop.item():
            break
        batch = {key: v.to(device, non_blocking=True) for key, v in next(batches).items()}
        use_gan = loss_w["gan"] > 0 and step >= loss_w["gan_start"]
        use_sync = sync_loss is not None and step >= loss_w["sync_start"]
        stats = {}
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            fake = gen_step(batch["faces"], batch["mels"])
            losses = {"l1": l1_loss(fake.float(), batch["target"], loss_w["l1_lower_weight"])}
            total = loss_w["l1"] * losses["l1"]
            if loss_w["grad"] > 0:
                losses["grad"] = gradient_loss(lower_half(fake.float()), lower_half(batch["target"]))
                total = total + loss_w["grad"] * losses["grad"]
            if perceptual is not None:
                losses["perceptual"] = perceptual(fake, batch["target"])
                total = total + loss_w["perceptual"] * losses["perceptual"]
            if use_sync:
                losses["sync"], stats = sync_loss(fake, batch)
                total = total + loss_w["sync"] * losses["sync"]
            if use_gan:
                disc.requires_grad_(False)  # the generator's step: no discriminator gradients
                losses["gan_g"] = gan_generator_loss(disc(disc_view(fake)).float())
                disc.requires_grad_(True)
                total = total + loss_w["gan"] * losses["gan_g"]
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt_g)
        if use_gan:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = disc_step(disc_view(torch.cat([batch["target"], fake.detach()]))).float()
                n = len(batch["target"])
                losses["gan_d"] = gan_discriminator_loss(logits[:n], logits[n:])
            opt_d.zero_grad(set_to_none=True)
            scaler.scale(losses["gan_d"]).backward()
            scaler.step(opt_d)
        scaler.update()
        step += 1
        spent = time.perf_counter() - t_start
        if step % cfg["log_every"] == 0 or step == 1:
            values = _mean_over_ranks({**losses, "total": total, **{f"sync_{n}": v for n, v in stats.items()
                                                                  if v.ndim == 0}}, world)
            rate = (step - step_log) * cfg["batch_size"] * world / max(1e-9, time.perf_counter() - t_log)
            t_log, step_log = time.perf_counter(), step
            if rank == 0:
                for name, v in values.items():
                    tb.add_scalar(f"loss/{name}", v, step)
                tb.add_scalar("speed/samples_per_s", rate, step)
                log.info("step %d  %s  %.3g samples/s", step, "  ".join(f"{n} {v:.4f}" for n, v in values.items()),
                         rate)
        if step % cfg["ckpt_every"] == 0:
            if world > 1:
                _broadcast_buffers(gen, disc)
            if rank == 0:
                _log_images(tb, batch, fake, stats, k, step)
                save_state()
        if monitor is not None and cfg["monitor"]["every"] and step % cfg["monitor"]["every"] == 0:
            validate()
    if world > 1:
        _broadcast_buffers(gen, disc)
    scores = {}
    if rank == 0:
        save_state()
        scores = validate()
        tb.close()
        meta = {"steps": step, "train_seconds": round(spent), "train_clips": len(train_clips),
                "val_clips": len(monitor.clips), "config": cfg, "val": scores}
        save_generator(gen.eval(), out / "generator.pt", meta)
        log.info("done: %d steps in %.0f s; val %s; wrote %s", step, spent, scores, out / "generator.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return gen.eval()


def _log_images(tb, batch, fake, stats, k, step) -> None:
    n = min(4, len(fake))
    grid = torch.cat([batch["faces"][:n, 3:], batch["faces"][:n, :3], fake[:n].detach().float(),
                      batch["target"][:n]], dim=3)
    tb.add_images("identity|pose|generated|target", grid.clamp(0, 1), step)
    if "rois" in stats:  # [2, C, 96, 96]: real and generated mouth ROIs of the first sample
        real, generated = stats["rois"]
        tb.add_images("mouth_roi real|generated", torch.cat([real, generated], dim=2)[:, None].clamp(0, 1), step)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt if it exists")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=4 loss.gan=0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(load_config(args.config, args.overrides), resume=args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
