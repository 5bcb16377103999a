"""Train the generator: ``python -m train.run --config CONFIG.yaml [key=value ...]``.

The recipe (Yaman et al. 2024 §3.5–3.6): sample k-frame windows with their
identity and pose references and mel windows (``train.data``), generate,
and minimise ``λ_gan·GAN + λ1·L1`` (+ perceptual and sync terms, see
``train.losses``) with Adam. Every ``ckpt_every`` steps the full training
state is written atomically to ``<out>/last.pt``; ``--resume`` continues it.
At the end (``steps`` reached or ``time_limit_min`` spent) the generator is
written to ``<out>/generator.pt`` in the format ``realtime --checkpoint``
loads, with its validation L1 / PSNR / SSIM in the metadata.

Logs go to stdout and TensorBoard (``<out>/tb``): every loss, and a grid of
identity | pose | generated | target faces.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from engine.checkpoints import atomic_save, safe_load, save_generator
from engine.models.generator import Generator, GeneratorConfig
from train.data import WindowDataset, load_clips
from train.discriminator import Discriminator
from train.losses import gan_discriminator_loss, gan_generator_loss, l1_loss

log = logging.getLogger("train.run")

DEFAULTS = {
    "data": None,  # folder written by train.preprocess
    "out": "runs/default",
    "model": {"size": 96, "width": 1.0},
    "k": 5,
    "batch_size": 8,
    "steps": 100_000,
    "time_limit_min": None,
    "lr": 1e-4,
    "loss": {"l1": 10.0, "l1_lower_weight": 1.0, "gan": 1.0, "gan_start": 0},
    "disc_width": 1.0,
    "log_every": 50,
    "ckpt_every": 500,
    "seed": 0,
    "threads": None,
}


def load_config(path: str | None, overrides: list[str]) -> dict:
    """Defaults ← YAML file ← ``key=value`` overrides (dotted keys reach nested values; values parsed as YAML)."""
    cfg = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    if path:
        _merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
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


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _batches(dataset: WindowDataset, batch_size: int, step: int) -> dict[str, torch.Tensor]:
    """Batch ``step``: samples ``step·B … step·B+B-1`` (deterministic, so a resumed run sees the same data)."""
    items = [dataset[(step * batch_size + i) % len(dataset)] for i in range(batch_size)]
    return {key: torch.stack([it[key] for it in items]).flatten(0, 1) for key in items[0]}


@torch.no_grad()
def evaluate(gen: Generator, clips, k: int, max_windows: int = 64) -> dict[str, float]:
    """L1, PSNR (dB, float) and SSIM of generated vs real faces on fixed validation windows."""
    from skimage.metrics import structural_similarity

    gen.eval()
    ds = WindowDataset(clips, k=k, samples_per_epoch=max_windows, seed=12345)
    l1s, psnrs, ssims = [], [], []
    for i in range(len(ds)):
        s = ds[i]
        fake = gen(s["faces"], s["mels"]).clamp(0, 1)
        real = s["target"]
        l1s.append((fake - real).abs().mean().item())
        mse = ((fake - real) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        psnrs += (10 * torch.log10(1 / mse)).tolist()
        for f, r in zip(fake.permute(0, 2, 3, 1).numpy(), real.permute(0, 2, 3, 1).numpy()):
            ssims.append(structural_similarity(f, r, channel_axis=2, data_range=1.0, gaussian_weights=True,
                                               sigma=1.5, use_sample_covariance=False))
    gen.train()
    return {"l1": float(np.mean(l1s)), "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


def train(cfg: dict, resume: bool = False) -> Path:
    """Run the recipe of ``cfg`` (see :data:`DEFAULTS`); returns the path of the exported generator."""
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    k, loss_w = cfg["k"], cfg["loss"]

    train_clips = load_clips(cfg["data"], "train")
    val_clips = load_clips(cfg["data"], "val")
    dataset = WindowDataset(train_clips, k=k, samples_per_epoch=10**9, seed=cfg["seed"])
    log.info("data: %d train clips, %d val clips", len(train_clips), len(val_clips))

    gen = Generator(GeneratorConfig(**cfg["model"]))
    disc = Discriminator(cfg["disc_width"])
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=(0.5, 0.999))
    step, spent = 0, 0.0
    if resume and (out / "last.pt").is_file():
        state = safe_load(out / "last.pt")
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        torch.set_rng_state(state["torch_rng"])
        step, spent = state["step"], state["seconds"]
        log.info("resumed %s at step %d", out / "last.pt", step)

    def save_state():
        atomic_save({"format": "dubcam-train", "step": step, "seconds": spent, "config": cfg,
                     "generator": gen.state_dict(), "discriminator": disc.state_dict(),
                     "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "torch_rng": torch.get_rng_state()}, out / "last.pt")

    from torch.utils.tensorboard import SummaryWriter

    tb = SummaryWriter(out / "tb")
    limit_s = cfg["time_limit_min"] * 60 if cfg["time_limit_min"] else float("inf")
    gen.train()
    disc.train()
    t_start = time.perf_counter() - spent
    while step < cfg["steps"] and spent < limit_s:
        batch = _batches(dataset, cfg["batch_size"], step)
        fake = gen(batch["faces"], batch["mels"])
        use_gan = loss_w["gan"] > 0 and step >= loss_w["gan_start"]
        losses = {"l1": l1_loss(fake, batch["target"], loss_w["l1_lower_weight"])}
        total = loss_w["l1"] * losses["l1"]
        if use_gan:
            losses["gan_g"] = gan_generator_loss(disc(fake))
            total = total + loss_w["gan"] * losses["gan_g"]
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()
        if use_gan:
            losses["gan_d"] = gan_discriminator_loss(disc(batch["target"]), disc(fake.detach()))
            opt_d.zero_grad(set_to_none=True)
            losses["gan_d"].backward()
            opt_d.step()
        step += 1
        spent = time.perf_counter() - t_start
        if step % cfg["log_every"] == 0 or step == 1:
            for name, v in losses.items():
                tb.add_scalar(f"loss/{name}", v.item(), step)
            tb.add_scalar("loss/total", total.item(), step)
            log.info("step %d  %s  %.2f s/step", step,
                     "  ".join(f"{n} {v.item():.4f}" for n, v in losses.items()), spent / step)
        if step % cfg["ckpt_every"] == 0:
            n = min(4, len(fake))
            grid = torch.cat([batch["faces"][:n, 3:], batch["faces"][:n, :3], fake[:n].detach(),
                              batch["target"][:n]], dim=3)
            tb.add_images("identity|pose|generated|target", grid, step)
            save_state()
    save_state()
    scores = evaluate(gen, val_clips, k) if val_clips else {}
    for name, v in scores.items():
        tb.add_scalar(f"val/{name}", v, step)
    tb.close()
    meta = {"steps": step, "train_seconds": round(spent), "train_clips": len(train_clips),
            "val_clips": len(val_clips), "config": cfg, "val": scores}
    save_generator(gen.eval(), out / "generator.pt", meta)
    log.info("done: %d steps in %.0f s; val %s; wrote %s", step, spent, scores, out / "generator.pt")
    return out / "generator.pt"


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
