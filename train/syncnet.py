"""Train Wav2Lip's lip-sync expert on preprocessed clips: ``python -m train.syncnet --data DIR --out DIR``.

The expert (:class:`engine.models.syncnet.SyncNetColor`, spec §3.3) is the
network behind the ``syncnet`` sync loss, the baseline of the paper's
Table 4. Wav2Lip's recipe (``color_syncnet_train.py``): a sample is the
lower halves of 5 consecutive face crops and a 0.2 s mel window; half the
samples are in sync (the window that starts at the first frame, label 1),
half are not (the frames of a random other window of the same clip with
the original audio, label 0); the loss is ``BCE(cos(a, v), y)``; Adam, lr
1e-4. Face crops other than 96×96 are resized to it.

``--objective multiway`` trains the same network with a softmax over
candidate audio windows instead (7 offsets of the sample's own speech and
those of the rest of the batch, :func:`expert_loss`); on a small data set
it learns timing far sooner.

The result is written like Wav2Lip's ``lipsync_expert.pth``
(``{"state_dict", "optimizer", "global_step", "global_epoch"}``, weights
that expect BGR frames), so ``SyncNetColor.from_checkpoint`` and the
``weights.syncnet`` option of ``train.run`` take either file. The best
checkpoint by validation loss is ``<out>/lipsync_expert.pth``, the latest
``<out>/last.pth`` (``--resume`` continues it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.audio import mel_window
from engine.checkpoints import atomic_save, safe_load
from engine.models.syncnet import SyncNetColor, lower_halves
from train.augment import Augment
from train.data import Clip, StepBatches, draw_window, load_clips

log = logging.getLogger("train.syncnet")
T = 5  # frames per sample (Wav2Lip's syncnet_T)
class SyncPairs(torch.utils.data.Dataset):
    """In-sync and off-sync samples for the expert, drawn from the index like ``train.data.WindowDataset``.

    Item: ``{"faces": [15, 48, 96] float RGB in [0, 1] (lower halves, frame-major),
    "mel": [1, 80, 16], "label": [] float (1 = in sync)}``. Off-sync samples
    take the frames of a random other window of the same clip (≥ 5 frames
    away) with the original audio, as Wav2Lip does. ``augment`` applies
    :class:`train.augment.Augment` (flip, colour, gain: nothing that moves
    audio against video).
    """

    def __init__(self, clips: list[Clip], samples_per_epoch: int = 10**9, seed: int = 0,
                 augment: Augment = Augment.off(), offsets: tuple[int, ...] = ()):
        self.clips = [c for c in clips if c.n_frames >= 3 * T]
        if not self.clips:
            raise ValueError(f"no clip has the {3 * T} frames the expert needs")
        self.n, self.seed, self.augment, self.offsets = samples_per_epoch, seed, augment, offsets

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        t = draw_window(rng, clip, T)
        in_sync = bool(rng.integers(2))
        f = t if in_sync else draw_window(rng, clip, T, avoid=t)
        aug = self.augment.draw(rng)
        if self.offsets:  # multi-way: the frames at t against the audio at t + each offset
            faces = aug.faces(clip.faces[t: t + T].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            mels = np.stack([aug.mel(mel_window(clip.mel, (t + o) / clip.fps, 0.0)) for o in self.offsets])
            return {"faces": lower_halves(faces), "mels": torch.from_numpy(mels[:, None]),
                    "target": torch.tensor(self.offsets.index(0))}
        faces = aug.faces(clip.faces[f: f + T].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        return {"faces": lower_halves(faces),
                "mel": torch.from_numpy(aug.mel(mel_window(clip.mel, t / clip.fps, 0.0))[None]),
                "label": torch.tensor(float(in_sync))}


OBJECTIVES = ("bce", "multiway")
MULTIWAY_OFFSETS = (-9, -6, -3, 0, 3, 6, 9)
"""Audio offsets (video frames) of each multi-way sample; 0 is the true one. The candidates of the
other samples of the batch are negatives too (:func:`expert_loss`)."""
MULTIWAY_TEMPERATURE = 0.1
"""Cosines are divided by this before the softmax over offsets."""


def expert_loss(model: SyncNetColor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The expert's training loss of a batch.

    * Wav2Lip's (``batch["mel"]``, ``batch["label"]``): ``BCE(cos(a, v), label)``, the cosine of the
      normalised, non-negative embeddings as the probability of "in sync";
    * multi-way (``batch["mels"]`` ``[B, C, 1, 80, 16]``, ``batch["target"]``): cross-entropy of a
      softmax, over all B·C audio windows of the batch, of their cosines with each sample's frames
      / :data:`MULTIWAY_TEMPERATURE`; the class is the sample's own window at offset 0 (Chung et
      al. 2019, "Perfect match": N-way matching over offsets). Each sample's frames meet wrong
      offsets of their own speech (timing) and the other samples' speech (content), which teaches
      far more per step than one pair at a time; the audio encoder is cheap, so the extra
      windows cost little.
    """
    if "mels" in batch:
        b, c = batch["mels"].shape[:2]
        audio = model.audio_embedding(batch["mels"].flatten(0, 1))  # [B·C, D]
        video = model.face_embedding(batch["faces"])  # [B, D]
        logits = video @ audio.T / MULTIWAY_TEMPERATURE
        return F.cross_entropy(logits, torch.arange(b, device=logits.device) * c + batch["target"])
    audio, video = model(batch["mel"], batch["faces"])
    cos = (audio * video).sum(1).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(cos, batch["label"])


def _batch(dataset, indices) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}


@torch.no_grad()
def evaluate(model: SyncNetColor, dataset: SyncPairs, n_batches: int, batch_size: int) -> dict[str, float]:
    """Scores on ``n_batches`` fixed batches of in-sync / off-sync pairs of ``dataset`` (about half
    each; off-sync = the frames of another window of the clip, ≥ 5 frames away):

    * ``loss``: the BCE of Wav2Lip's recipe;
    * ``accuracy``: the share classified right with Wav2Lip's rule (cosine > 0.5 ⇔ in sync);
    * ``auc``: the share of (in-sync, off-sync) pairs whose in-sync cosine is the higher (the
      area under the ROC curve): threshold-free, so it also scores a multi-way expert, whose
      cosines are not probabilities.
    """
    was_training = model.training
    model.eval()
    losses, cosines, labels = [], [], []
    for i in range(n_batches):
        batch = _batch(dataset, range(i * batch_size, (i + 1) * batch_size))
        audio, video = model(batch["mel"], batch["faces"])
        cos = (audio * video).sum(1).clamp(1e-7, 1 - 1e-7)
        losses.append(F.binary_cross_entropy(cos, batch["label"]).item())
        cosines.append(cos)
        labels.append(batch["label"])
    model.train(was_training)
    cos, label = torch.cat(cosines), torch.cat(labels).bool()
    pos, neg = cos[label], cos[~label]
    auc = float((pos[:, None] > neg[None, :]).float().mean()) if len(pos) and len(neg) else float("nan")
    return {"loss": float(np.mean(losses)), "accuracy": float(((cos > 0.5) == label).float().mean()), "auc": auc}


@torch.no_grad()
def offset_accuracy(model: SyncNetColor, clips: list[Clip], max_offset: int = 15, stride: int = 5,
                    max_windows: int = 20) -> dict[str, float]:
    """How often the expert finds the true audio offset of held-out clips (LSE-C-style, spec §4).

    For windows of 5 frames every ``stride`` frames of each clip (at most
    ``max_windows`` per clip, spread over it), the
    expert scores the window's frames against the mel windows shifted by
    −``max_offset`` … +``max_offset`` frames; the window is right when the
    best-scoring shift is 0. Returns ``{"offset_accuracy": share right
    (chance 1/(2·max_offset+1)), "offset_within_1": share within ±1 frame,
    "confidence": mean over windows of (median − best) cosine distance,
    like syncnet_python's LSE-C}``.
    """
    was_training = model.training
    model.eval()
    right = near = n = 0
    conf = []
    shifts = np.arange(-max_offset, max_offset + 1)
    for clip in clips:
        starts = np.arange(max_offset, clip.n_frames - T - max_offset, stride)
        if len(starts) > max_windows:
            starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
        for t in starts:
            t = int(t)
            if not clip.valid[t: t + T].all():
                continue
            faces = lower_halves(clip.faces[t: t + T].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            mels = torch.from_numpy(np.stack([mel_window(clip.mel, (t + s) / clip.fps, 0.0) for s in shifts]))[:, None]
            audio, video = model.audio_embedding(mels), model.face_embedding(faces[None])
            dist = 1.0 - (audio * video).sum(1).numpy()
            best = int(np.argmin(dist))
            right += int(shifts[best] == 0)
            near += int(abs(shifts[best]) <= 1)
            conf.append(float(np.median(dist) - dist[best]))
            n += 1
    model.train(was_training)
    return {"offset_accuracy": right / max(1, n), "offset_within_1": near / max(1, n),
            "confidence": float(np.mean(conf)) if conf else float("nan"), "windows": n}


def _save(path: Path, model, opt, step: int, best: float, extra: dict | None = None) -> None:
    atomic_save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "global_step": step,
                 "global_epoch": 0, "best_val_loss": best, "width": model.width, **(extra or {})}, path)


def train_expert(data: str | Path, out: str | Path, steps: int = 100_000, batch_size: int = 64, lr: float = 1e-4,
                 eval_every: int = 1000, eval_batches: int = 10, seed: int = 0, resume: bool = False,
                 in_memory: bool = True, width: float = 1.0, augment: Augment = Augment(),
                 time_limit_min: float | None = None, threads: int | None = None, objective: str = "bce",
                 face_width: float | None = None) -> Path:
    """Train the expert (module doc); returns the path of the best checkpoint.

    Every ``eval_every`` steps: BCE and pair accuracy on the validation
    split (held-out speakers), logged with the offset accuracy
    (:func:`offset_accuracy`) to stdout and TensorBoard (``<out>/tb``);
    ``<out>/lipsync_expert.pth`` keeps the lowest validation loss (objective
    ``"bce"``, Wav2Lip's) or the best validation offset accuracy (``"multiway"``,
    :func:`expert_loss`), or the lowest training loss without a validation split.
    ``time_limit_min`` stops (with a checkpoint) after that much training
    time, counted across resumes.

    Raises ValueError for data without usable clips.
    """
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    train_set = SyncPairs(load_clips(data, "train", in_memory=in_memory), seed=seed, augment=augment,
                          offsets=MULTIWAY_OFFSETS if objective == "multiway" else ())
    val_clips = load_clips(data, "val", in_memory=in_memory)
    val_set = SyncPairs(val_clips, seed=seed + 1) if val_clips else None
    if val_set is None:
        log.warning("no validation split in %s: the best checkpoint is chosen on training loss", data)
    model = SyncNetColor(bgr=True, width=width, face_width=face_width)  # BGR weights, like the published file: the input stays RGB
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, best, spent = 0, float("inf"), 0.0
    if resume and (out / "last.pth").is_file():
        state = safe_load(out / "last.pth")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step, best, spent = state["global_step"], state.get("best_val_loss", best), state.get("seconds", 0.0)
        log.info("resumed %s at step %d", out / "last.pth", step)
    elif resume:
        log.warning("--resume: no %s, starting afresh", out / "last.pth")
    log.info("expert width %.2f, face width %.2f (%d parameters); %d train clips, %d val clips", width,
             model.face_width,
             sum(p.numel() for p in model.parameters()), len(train_set.clips), len(val_clips))
    tb = SummaryWriter(out / "tb", purge_step=step + 1 if step else None)
    limit_s = time_limit_min * 60 if time_limit_min else float("inf")
    model.train()
    t0, step0, t_loop = time.perf_counter() - spent, step, time.perf_counter()
    for indices in StepBatches(step, batch_size, stop=steps, modulo=len(train_set)):
        loss = expert_loss(model, _batch(train_set, indices))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        spent = time.perf_counter() - t0
        done = step == steps or spent >= limit_s
        if step % 25 == 0 or done:
            tb.add_scalar("train/loss", loss.item(), step)
        if step % eval_every == 0 or done:
            scores = evaluate(model, val_set, eval_batches, batch_size) if val_set else {"loss": loss.item()}
            if val_clips:
                scores |= offset_accuracy(model, val_clips)
            for name, v in scores.items():
                tb.add_scalar(f"val/{name}", v, step)
            log.info("step %d  train %.4f  %s  %.1f samples/s", step, loss.item(),
                     "  ".join(f"val {n} {v:.4f}" for n, v in scores.items()),
                     (step - step0) * batch_size / max(1e-9, time.perf_counter() - t_loop))
            score = -scores["offset_accuracy"] if objective == "multiway" and val_clips else scores["loss"]
            if score < best:
                best = score
                _save(out / "lipsync_expert.pth", model, opt, step, best, {"val": scores, "seconds": spent})
            _save(out / "last.pth", model, opt, step, best, {"seconds": spent})
        if done:
            break
    tb.close()
    return out / "lipsync_expert.pth"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.syncnet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by python -m train.preprocess")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=64, help="Wav2Lip: 64")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier (1.0: Wav2Lip's layout; 0.5: the bundled expert, whose audio "
                        "encoder fits a width-0.5 generator)")
    p.add_argument("--face-width", type=float,
                   help="channel multiplier of the face encoder's inner layers (default: --width); the face "
                        "encoder is what a step costs, 0.25 trains about 3x faster than 0.5 on a CPU")
    p.add_argument("--no-augment", action="store_true", help="no flip / colour / gain augmentation")
    p.add_argument("--objective", choices=OBJECTIVES, default="bce",
                   help="bce: Wav2Lip's in-sync / off-sync pairs; multiway: a softmax over audio offsets "
                        "(Chung et al. 2019), which learns timing from far fewer samples")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-batches", type=int, default=10, help="validation batches per evaluation")
    p.add_argument("--time-limit-min", type=float, help="stop after this many minutes of training")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pth")
    p.add_argument("--on-demand", action="store_true", help="read clip files when needed (data larger than memory)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        path = train_expert(args.data, args.out, args.steps, args.batch_size, args.lr, args.eval_every,
                            args.eval_batches, args.seed, args.resume, not args.on_demand, args.width,
                            Augment.off() if args.no_augment else Augment(), args.time_limit_min, args.threads,
                            args.objective, args.face_width)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"train.syncnet: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    log.info("best expert: %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
