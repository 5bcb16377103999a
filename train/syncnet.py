"""Train Wav2Lip's lip-sync expert on preprocessed clips: ``python -m train.syncnet --data DIR --out DIR``.

The expert (:class:`engine.models.syncnet.SyncNetColor`, spec §3.3) is the
network behind the ``syncnet`` sync loss, the baseline of the paper's
Table 4. Wav2Lip's recipe (``color_syncnet_train.py``): a sample is the
lower halves of 5 consecutive face crops and a 0.2 s mel window; half the
samples are in sync (the window that starts at the first frame, label 1),
half are not (the frames of a random other window of the same clip with
the original audio, label 0); the loss is ``BCE(cos(a, v), y)``; Adam, lr
1e-4. Face crops other than 96×96 are resized to it.

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
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.audio import mel_window
from engine.checkpoints import atomic_save, safe_load
from engine.models.syncnet import SyncNetColor
from train.data import Clip, StepBatches, draw_window, load_clips

log = logging.getLogger("train.syncnet")
T = 5  # frames per sample (Wav2Lip's syncnet_T)


class SyncPairs(torch.utils.data.Dataset):
    """In-sync and off-sync samples for the expert, drawn from the index like ``train.data.WindowDataset``.

    Item: ``{"faces": [15, 48, 96] float RGB in [0, 1] (lower halves, frame-major),
    "mel": [1, 80, 16], "label": [] float (1 = in sync)}``.
    """

    def __init__(self, clips: list[Clip], samples_per_epoch: int = 10**9, seed: int = 0):
        self.clips = [c for c in clips if c.n_frames >= 3 * T]
        if not self.clips:
            raise ValueError(f"no clip has the {3 * T} frames the expert needs")
        self.n, self.seed = samples_per_epoch, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        t = draw_window(rng, clip, T)
        in_sync = bool(rng.integers(2))
        f = t if in_sync else draw_window(rng, clip, T, avoid=t)
        faces = torch.from_numpy(clip.faces[f: f + T].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        if faces.shape[-1] != 96:
            faces = F.interpolate(faces, size=(96, 96), mode="bilinear", antialias=True, align_corners=False)
        return {"faces": faces[:, :, 48:].flatten(0, 1),
                "mel": torch.from_numpy(mel_window(clip.mel, t / clip.fps, 0.0)[None]),
                "label": torch.tensor(float(in_sync))}


def expert_loss(model: SyncNetColor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``BCE(cos(a, v), label)`` of a batch (the cosine of the normalised, non-negative embeddings)."""
    audio, video = model(batch["mel"], batch["faces"])
    cos = (audio * video).sum(1).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(cos, batch["label"])


def _batch(dataset, indices) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}


@torch.no_grad()
def evaluate(model: SyncNetColor, dataset: SyncPairs, n_batches: int, batch_size: int) -> float:
    model.eval()
    losses = [expert_loss(model, _batch(dataset, range(i * batch_size, (i + 1) * batch_size))).item()
              for i in range(n_batches)]
    model.train()
    return float(np.mean(losses))


def _save(path: Path, model, opt, step: int, best: float) -> None:
    atomic_save({"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "global_step": step,
                 "global_epoch": 0, "best_val_loss": best}, path)


def train_expert(data: str | Path, out: str | Path, steps: int = 100_000, batch_size: int = 64, lr: float = 1e-4,
                 eval_every: int = 1000, eval_batches: int = 10, seed: int = 0, resume: bool = False,
                 in_memory: bool = True) -> Path:
    """Train the expert (module doc); returns the path of the best checkpoint."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train_set = SyncPairs(load_clips(data, "train", in_memory=in_memory), seed=seed)
    val_clips = load_clips(data, "val", in_memory=in_memory)
    val_set = SyncPairs(val_clips, seed=seed + 1) if val_clips else None
    model = SyncNetColor(bgr=True)  # BGR weights, like the published file: the input stays RGB
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    step, best = 0, float("inf")
    if resume and (out / "last.pth").is_file():
        state = safe_load(out / "last.pth")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step = state["global_step"]
        best = state.get("best_val_loss", best)
    model.train()
    t0 = time.perf_counter()
    for indices in StepBatches(step, batch_size, stop=steps, modulo=len(train_set)):
        loss = expert_loss(model, _batch(train_set, indices))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % eval_every == 0 or step == steps:
            val = evaluate(model, val_set, eval_batches, batch_size) if val_set else loss.item()
            log.info("step %d  train %.4f  val %.4f  %.1f samples/s", step, loss.item(), val,
                     step * batch_size / (time.perf_counter() - t0))
            if val < best:
                best = val
                _save(out / "lipsync_expert.pth", model, opt, step, best)
            _save(out / "last.pth", model, opt, step, best)
    return out / "lipsync_expert.pth"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.syncnet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder written by python -m train.preprocess")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=64, help="Wav2Lip: 64")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-batches", type=int, default=10, help="validation batches per evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pth")
    p.add_argument("--on-demand", action="store_true", help="read clip files when needed (data larger than memory)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    path = train_expert(args.data, args.out, args.steps, args.batch_size, args.lr, args.eval_every,
                        args.eval_batches, args.seed, args.resume, not args.on_demand)
    log.info("best expert: %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
