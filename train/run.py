"""Train the generator: ``python -m train.run --config CONFIG.yaml [key=value ...]``.

The recipe (Yaman et al. 2024 §3.5–3.6): sample k-frame windows with their
identity and pose references and mel windows (``train.data``), generate,
and minimise ``λ_gan·GAN + λ1·L1 + λ2·perceptual + λ3·sync``
(``train.losses``; defaults (λ1, λ2, λ3) = (10, 1, 0.5), sync loss
``avhubert``) with Adam (lr 1e-4, betas (0.5, 0.999)); the discriminator
(``train.discriminator``) learns with BCE at the same rate.

The config (``train.config``: defaults ← YAML ← ``key=value``) is checked
against a schema: an unknown key, a wrong type or a value out of range is
one error line naming the key and what is allowed, as is data without
``manifest.csv``, an unreadable checkpoint, or missing weights (exit status 2).

Scale: one process on the CPU or a GPU, or DDP under ``torchrun`` on several
GPUs and machines (NCCL; gloo on CPUs), e.g.
``torchrun --nproc_per_node 8 -m train.run --config configs/paper_lrs2.yaml``.
``batch_size`` is per process. On CUDA the forward passes run in float16
autocast with a gradient scaler (``amp: false`` turns it off).

Every ``ckpt_every`` steps the full training state (generator,
discriminator, both optimizers, gradient scaler, RNG states, monitor best;
the data sampler's state is the step, ``train.data.StepBatches``) is
written atomically to ``<out>/last.pt``; ``--resume`` continues it exactly
(with the same number of processes) and TensorBoard drops what an
interrupted run logged after it (``purge_step``). An out folder that
already holds a run is refused without ``--resume`` or ``--overwrite``.
Every ``monitor.every`` steps and at the end the validation monitor
(``train.monitor``) runs, before the checkpoint of the same step;
``<out>/best.pt`` keeps the generator with the best AVSu (the weights-free
``quality`` without AV-HuBERT), and a resumed run replaces it only with a
better one. At the end (``steps`` reached or ``time_limit_min`` spent) the
generator is written to ``<out>/generator.pt``, the format ``realtime
--checkpoint`` loads, with its validation scores in the metadata.

The generator's initialisation depends on ``seed`` only (the loss networks
are built before it, and the RNG is seeded again just before it): runs that
differ in the sync loss start from the same weights (Table 4's ablation).

Logs go to stdout and TensorBoard (``<out>/tb``): every loss term, the
sync cosine, throughput, validation scores, and grids of identity | pose |
generated | target faces (and real | generated mouth ROIs for the
AV-HuBERT sync losses).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from engine.checkpoints import CheckpointError, atomic_save, safe_load
from engine.face import LIP_SHAPE_POINTS
from engine.metrics import INNER_LIP_POINTS
from engine.models.avhubert import AVHubert
from engine.models.generator import Generator, GeneratorConfig, save_generator
from engine.models.syncnet import SyncNet, SyncNetColor
from train.data import StepBatches, WindowDataset, collate, load_clips
from train.discriminator import Discriminator
from train.augment import Augment
from train.config import DEFAULTS, ConfigError, load_config  # noqa: F401 (DEFAULTS, load_config: API)
from train.config import validate as validate_config
from train.losses import (AVHubertSyncLoss, LipExpertSyncLoss, OpeningLoss, build_perceptual_loss, build_sync_loss,
                          find_weights, gan_discriminator_loss, gan_generator_loss, gradient_loss, l1_loss, lower_half,
                          mouth_view)
from train.monitor import Monitor

log = logging.getLogger("train.run")
RUN_FILES = ("last.pt", "best.pt", "generator.pt", "config.yaml", "tb")
"""What a run writes into its out folder (``--overwrite`` removes these, nothing else)."""


def _split_counts(data: str | Path) -> dict[str, int]:
    """Clips per split in ``data/manifest.csv``.

    Raises FileNotFoundError (saying how to make the data) when the folder or its manifest is missing,
    ValueError when the manifest lists no training clip.
    """
    data = Path(data)
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        what = "does not exist" if not data.exists() else "has no manifest.csv"
        raise FileNotFoundError(f"training data {data} {what}: write it with python -m train.preprocess "
                                f"--input VIDEOS --output {data} [--val-speakers ...]")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    counts = {split: sum(r.get("split") == split for r in rows) for split in ("train", "val", "test")}
    if not counts["train"]:
        raise ValueError(f"{manifest} lists no training clips ({counts}): run python -m train.preprocess again "
                         "with recordings that are not all held out")
    return counts


def _prepare_out(out: Path, resume: bool, overwrite: bool, rank: int) -> None:
    """Refuse to start a run over another one (``last.pt`` there) unless resuming or overwriting."""
    last = out / "last.pt"
    if resume:
        if not last.is_file():
            log.warning("--resume: no %s, starting afresh at step 0", last)
        return
    if not last.is_file():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already holds a run ({last}): pass --resume to continue it, or --overwrite "
                              f"to start again from step 0 (removes its {', '.join(RUN_FILES)})")
    if rank == 0:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        log.warning("--overwrite: removed the previous run's %s from %s", ", ".join(RUN_FILES), out)


def _best_on_disk(out: Path) -> float:
    """The score ``<out>/best.pt`` was kept for (AVSu, else quality), or -inf: a resumed run never
    replaces a better best.pt, whatever its last.pt says."""
    path = out / "best.pt"
    if not path.is_file():
        return -float("inf")
    try:
        val = safe_load(path).get("meta", {}).get("val", {})
    except (CheckpointError, AttributeError) as e:
        log.warning("cannot read the score of %s (%s): it may be replaced by a worse model", path, e)
        return -float("inf")
    return float(val.get("AVSu", val.get("quality", -float("inf"))))


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


def _init_from(path: str, gen, disc) -> None:
    """``init``: load a generator.pt into ``gen``, or a train.run last.pt into ``gen`` and ``disc``.

    The audio encoder's frozen flags stay as this config set them. Raises CheckpointError (one line)
    for another kind of file or weights that do not fit this config's model."""
    from engine.checkpoints import describe

    state = safe_load(path)
    if isinstance(state, dict) and state.get("format") == "dubcam-train":
        parts = [(gen, state["generator"]), (disc, state["discriminator"])]
    elif describe(state) == "a dubcam generator":
        parts = [(gen, state["state_dict"])]
    else:
        raise CheckpointError(f"init={path}: expected a generator.pt or a train.run last.pt, found {describe(state)}")
    try:
        for model, sd in parts:
            sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
            if model is gen and gen.config.lip_sketch:
                sd = _grow_state(gen, sd, path)
            model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"init={path}: does not fit this config's model: "
                              f"{' '.join(str(e).split())[:300]}") from e


def _grow_state(gen: Generator, sd: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Weights for this ``lip_sketch`` generator from a generator's ``sd``, with or without a lip sketch: where
    ``sd`` has no sketch, the decoder layers that read the sketch maps (appended after the skip channels) get
    zero weights for them, so the grown model starts as the same function as the given one (but for the warp
    decoder's flow near the lips, which the sketch's points then set, ``engine.models.generator.lip_flow``, and
    its blend inside the drawn mouth's opening, the RGB branch's there: ``mouth_interior``);
    the parts of the lip predictor that ``sd`` lacks keep their fresh initialisation, and so does the whole
    predictor when ``sd``'s is of another kind (``GeneratorConfig.lip_predictor``).

    Raises RuntimeError (as load_state_dict does) for weights that differ otherwise."""
    own = gen.state_dict()
    head = [k for k in sd if k.startswith("lip_delta.")]
    if any(k not in own or own[k].shape != sd[k].shape for k in head):  # another lip predictor (lip_predictor)
        sd = {k: v for k, v in sd.items() if k not in head}
    grown, fresh = [], []
    out = {}
    for key, mine in own.items():
        if key not in sd:
            fresh.append(key)
            out[key] = mine
            continue
        theirs = sd[key]
        if theirs.shape == mine.shape:
            out[key] = theirs
            continue
        diff = [d for d in range(mine.ndim) if mine.shape[d] != theirs.shape[d]]
        if theirs.ndim != mine.ndim or len(diff) != 1 or theirs.shape[diff[0]] > mine.shape[diff[0]]:
            raise RuntimeError(f"{key}: {tuple(theirs.shape)} cannot grow into {tuple(mine.shape)}")
        out[key] = torch.zeros_like(mine)
        out[key].narrow(diff[0], 0, theirs.shape[diff[0]]).copy_(theirs)
        grown.append(key)
    unknown = sorted(set(sd) - set(own))
    if unknown:
        raise RuntimeError(f"unexpected keys {unknown[:5]}")
    if grown or fresh:
        log.info("init=%s: %d layers grown to read the lip sketch (zero weights), %d new tensors (%s)",
                 path, len(grown), len(fresh), ", ".join(sorted({k.split('.')[0] for k in fresh})))
    return out


LIP_JITTER_PX = 0.4
"""Standard deviation of the noise on the teacher-forced sketch's points in training, in pixels: the decoder
learns to draw to a shape that is a little off, as the predicted shapes are."""
CALIBRATION_WINDOWS = 256
"""Training windows that set a lip-sketch generator's ``lip_gain`` (:func:`calibrate_lip_gain`)."""
INNER_GAP = tuple(LIP_SHAPE_POINTS.index(p) for p in INNER_LIP_POINTS)
"""Indices in ``engine.face.LIP_SHAPE_POINTS`` of the middles of the upper and lower inner lip
(``engine.metrics.INNER_LIP_POINTS``)."""


@torch.no_grad()
def calibrate_lip_gain(gen: Generator, windows: WindowDataset, device: torch.device, batch: int = 16,
                       limits: tuple[float, float] = (1.0, 4.0)) -> float:
    """Set ``gen.lip_gain`` so that the predicted mouth moves as much as the real one, and return it.

    Over ``windows`` (k-frame training windows with ``lips``, no augmentation), the inner-lip gap (the
    vertical distance of :data:`INNER_GAP`) less that of the resting shape (``Generator.identity_lips``)
    moves within each window by some variance, for the real landmarks and for the predicted ones before
    the gain; the gain is the square root of the ratio of their sums (real over predicted), clipped to
    ``limits``. The gain scales the predicted displacement from the resting shape, and it measures how
    much an L1-trained predictor shrinks that motion (a regression to the mean does). ``gen`` is left in
    the mode it was in.
    """
    was_training = gen.training
    gen.eval()

    def motion(points: torch.Tensor, resting: torch.Tensor) -> float:  # the displacement's variance in windows
        d = points - resting
        gap = (d[:, INNER_GAP[1], 1] - d[:, INNER_GAP[0], 1]).view(-1, windows.k).double()
        return float(gap.var(dim=1, unbiased=False).sum())

    real_var = pred_var = 0.0
    for start in range(0, len(windows), batch):
        items = collate([windows[i] for i in range(start, min(len(windows), start + batch))])
        faces = items["faces"].to(device)
        _, pred = gen(faces, items["mels"].to(device), return_lips=True)
        resting = gen.identity_lips(faces)[0]
        real_var += motion(items["lips"].to(device), resting)
        pred_var += motion(pred, resting)
    gen.train(was_training)
    gain = float(np.clip(np.sqrt(real_var / max(pred_var, 1e-12)), *limits))
    gen.lip_gain.fill_(gain)
    return gain


def _restore(path: Path, gen, disc, opt_g, opt_d, scaler, device, world: int) -> tuple[int, float, float]:
    """Load a ``last.pt`` into the models, optimizers, scaler and RNGs; returns ``(step, seconds, best AVSu)``.
    Files written before the scaler, numpy/python RNG and monitor entries existed load too.

    Raises CheckpointError (one line) for a file that is not a training checkpoint or whose models or
    optimizers do not fit this config."""
    from engine.checkpoints import describe

    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != "dubcam-train":
        raise CheckpointError(f"{path}: not a training checkpoint of train.run (found {describe(state)}); "
                              "start afresh with --overwrite")
    try:
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: does not fit this config (was it written with another model, "
                              f"disc_width or audio_encoder?): {' '.join(str(e).split())[:500]}") from e
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


def _train_mode(gen: Generator, freeze_norm: bool) -> None:
    """``gen`` in train mode; with ``freeze_norm`` its BatchNorm layers stay in eval mode (running statistics
    used and kept: config ``freeze_norm``)."""
    gen.train()
    if freeze_norm:
        for m in gen.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(cfg: dict, resume: bool = False, overwrite: bool = False, on_step=None) -> Generator:
    """Run the recipe of ``cfg`` (see :data:`DEFAULTS`); returns the trained generator (eval mode).

    ``on_step(step, seconds, scores)``: called after every step with the
    training seconds spent so far and, at the steps the monitor scored, its
    scores (else None): a progress bar (``realtime enroll``).

    ``resume`` continues ``<out>/last.pt`` (a warning when there is none);
    without it, an out folder that holds a run (``last.pt``) is refused
    unless ``overwrite``, which removes that run's files first.

    Raises ConfigError (a ValueError) for a config outside the schema;
    FileExistsError for an out folder that holds a run; FileNotFoundError for
    data without ``manifest.csv`` and for missing loss weights (the message
    says what is needed and where it is published); CheckpointError for
    wrong weights or last.pt; ValueError for data that cannot serve the
    recipe.
    """
    cfg = validate_config(cfg)
    if not cfg["data"]:
        raise ConfigError("no training data: set data=<folder written by python -m train.preprocess>")
    out = Path(cfg["out"])
    rank = int(os.environ.get("RANK", "0"))
    _prepare_out(out, resume, overwrite, rank)
    splits = _split_counts(cfg["data"])
    if not splits["val"] and rank == 0:
        log.warning("no validation split in %s: the monitor scores nothing and best.pt is not written "
                    "(hold out speakers with python -m train.preprocess --val-speakers ...)", cfg["data"])
    rank, world, device = _distributed(cfg)
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
    opening = None
    if loss_w["opening"] > 0 or loss_w["opening_amplitude"] > 0:
        opening = OpeningLoss(find_weights("opening", cfg["weights"]["opening"], "the opening loss"), k)
    for m in (sync_loss, perceptual, opening):
        if m is not None:
            m.to(device)

    train_clips = load_clips(cfg["data"], "train", in_memory=cfg["data_in_memory"])
    context = 0
    if sync_kind.startswith("avhubert"):
        context = cfg["sync"]["context"]
        if context == "clip":  # paper §3.5: the whole clip, bounded by memory (sync.max_context)
            context = max(k, min(max(c.n_frames for c in train_clips), cfg["sync"]["max_context"]))
            log.info("sync context: whole clips, %d frames (the longest clip, at most sync.max_context=%d)",
                     context, cfg["sync"]["max_context"])
    mel_context = GeneratorConfig(**cfg["model"]).context_starts()[-1]  # the lip predictor's past audio
    dataset = WindowDataset(train_clips, k=k, samples_per_epoch=10**9, seed=cfg["seed"], context=context,
                            sync_mel=sync_kind == "syncnet", augment=Augment() if cfg["augment"] else Augment.off(),
                            identity=cfg["identity"], lips=cfg["model"]["lip_sketch"], mel_context=mel_context)
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
    # what the discriminator sees of [N, 3, S, S] faces whose targets have the lip points ``lips`` ([N, 33, 2] or None)
    disc_view = {"face": lambda faces, lips: faces, "lower": lambda faces, lips: lower_half(faces),
                 "mouth": mouth_view}[cfg["disc_region"]]
    betas = tuple(cfg["betas"])
    opt_g = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=cfg["lr"], betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg["lr"], betas=betas)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    step, spent, best = 0, 0.0, -float("inf")
    if resume and (out / "last.pt").is_file():
        step, spent, best = _restore(out / "last.pt", gen, disc, opt_g, opt_d, scaler, device, world)
        best = max(best, _best_on_disk(out))
    elif cfg["init"]:
        _init_from(cfg["init"], gen, disc)
        log.info("started from the weights of %s", cfg["init"])
    monitor = _monitor(cfg, sync_loss, device, expert) if rank == 0 else None
    calibration = None
    if cfg["model"]["lip_sketch"]:
        calibration = WindowDataset(train_clips, k=k, samples_per_epoch=CALIBRATION_WINDOWS, seed=cfg["seed"] + 1,
                                    identity=cfg["identity"], lips=True, mel_context=mel_context)

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
        if gen.config.lip_sketch:
            gain = calibrate_lip_gain(gen, calibration, device)
            tb.add_scalar("val/lip_gain", gain, step)
            log.info("step %d  lip_gain %.3f", step, gain)
        scores = monitor(gen)
        _train_mode(gen, cfg["freeze_norm"])  # the monitor put it back in train mode
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

        # A resumed run replays the steps after its last.pt: purge_step drops what the interrupted run logged
        # for them, so TensorBoard shows each step once.
        tb = SummaryWriter(out / "tb", purge_step=step + 1 if step else None)
    limit_s = cfg["time_limit_min"] * 60 if cfg["time_limit_min"] else float("inf")
    _train_mode(gen, cfg["freeze_norm"])
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
            if "lips" in batch:  # teacher forcing: the sketch of the target's own landmarks, jittered
                drawn = batch["lips"] + torch.randn_like(batch["lips"]) * (LIP_JITTER_PX / size)
                fake, lips = gen_step(batch["faces"], batch["mels"], lips=drawn, return_lips=True)
            else:
                fake = gen_step(batch["faces"], batch["mels"])
            losses = {"l1": l1_loss(fake.float(), batch["target"], loss_w["l1_lower_weight"])}
            total = loss_w["l1"] * losses["l1"]
            if "lips" in batch:
                losses["lips_px"] = (lips.float() - batch["lips"]).abs().mean() * size
                total = total + loss_w["lips"] * losses["lips_px"]
            if loss_w["grad"] > 0:
                losses["grad"] = gradient_loss(lower_half(fake.float()), lower_half(batch["target"]))
                total = total + loss_w["grad"] * losses["grad"]
            if loss_w["mouth"] > 0:  # the mouth alone, magnified, at the target's lip points
                mouth_fake, mouth_real = mouth_view(fake.float(), batch["lips"]), mouth_view(batch["target"], batch["lips"])
                losses["mouth"] = (mouth_fake - mouth_real).abs().mean() + gradient_loss(mouth_fake, mouth_real)
                total = total + loss_w["mouth"] * losses["mouth"]
            if opening is not None:
                losses["opening"], losses["opening_amp"] = opening(fake, batch["target"])
                total = total + loss_w["opening"] * losses["opening"] + loss_w["opening_amplitude"] * losses[
                    "opening_amp"]
            if perceptual is not None:
                losses["perceptual"] = perceptual(fake, batch["target"])
                total = total + loss_w["perceptual"] * losses["perceptual"]
            if use_sync:
                losses["sync"], stats = sync_loss(fake, batch)
                total = total + loss_w["sync"] * losses["sync"]
            if use_gan:
                disc.requires_grad_(False)  # the generator's step: no discriminator gradients
                losses["gan_g"] = gan_generator_loss(disc(disc_view(fake, batch.get("lips"))).float())
                disc.requires_grad_(True)
                total = total + loss_w["gan"] * losses["gan_g"]
        opt_g.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(opt_g)
        if use_gan:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                real_fake_lips = torch.cat([batch["lips"]] * 2) if "lips" in batch else None  # reals, then fakes
                logits = disc_step(disc_view(torch.cat([batch["target"], fake.detach()]), real_fake_lips)).float()
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
        # Validation before the checkpoint of the same step: last.pt then holds the best score that
        # best.pt was kept for (a resumed run compares with it) and the RNG state after validation.
        scored = None
        if monitor is not None and cfg["monitor"]["every"] and step % cfg["monitor"]["every"] == 0:
            scored = validate()
        if on_step is not None:
            on_step(step, spent, scored)
        if step % cfg["ckpt_every"] == 0:
            if world > 1:
                _broadcast_buffers(gen, disc)
            if rank == 0:
                _log_images(tb, batch, fake, stats, k, step)
                save_state()
    if world > 1:
        _broadcast_buffers(gen, disc)
    scores = {}
    if rank == 0:
        scores = validate()
        save_state()
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
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt (a warning if there is none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again from step 0 in an out folder that holds a run (removes its last.pt, best.pt, "
                        "generator.pt, config.yaml and tb/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. batch_size=4 loss.gan=0")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        train(load_config(args.config, args.overrides), resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, FileExistsError, FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"train.run: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
