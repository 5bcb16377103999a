"""``python -m train.opening``: train the mouth-opening regressor (``engine.models.opening``) on our own data.

The generator trained with L1 alone draws the *conditional mean* mouth: where
the speech leaves the mouth shape uncertain it draws a half-open average,
so its mouth opens far less than a real one (the opening ratio of
``engine.metrics``; a single 0.2 s mel window predicts only about 15 % of
the variance of the inner-lip gap on held-out speakers, and the std of a
mean-regressor is about the square root of that). The opening loss of
``train.losses.OpeningLoss`` needs a differentiable read-out of how far a
drawn mouth is open; this is it: a small CNN trained with landmark labels,
needing no outside weights.

:class:`~engine.models.opening.MouthOpeningNet`: the lower half of a
``[N, 3, S, S]`` RGB face crop in [0, 1] (the square crop of ``engine.face``,
S = 96) → ``[N]`` the inner-lip gap over the face height.

Training: every frame with a face and landmarks of the ``train`` split of a
``train.preprocess`` folder, label ``mouth_opening`` of its clip, Huber loss,
horizontal flips and colour jitter (the label does not change under them);
the ``val`` split (whole held-out speakers) gives R² and the mean absolute
error. The checkpoint is ``{"format": "dubcam-opening", "state_dict", "meta"}``
(``engine.models.opening.load_opening_net`` reads it).
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

from engine.models.opening import FORMAT, SCALE, MouthOpeningNet

log = logging.getLogger("train.opening")

def frames_and_labels(clips) -> tuple[np.ndarray, np.ndarray]:
    """All frames with a face and a finite label: ``[M, S, S, 3]`` uint8 faces, ``[M]`` float32 gap ratios."""
    from engine.metrics import mouth_opening

    faces, labels = [], []
    for clip in clips:
        if clip.landmarks is None:
            continue
        gap = mouth_opening(clip.landmarks.astype(np.float32))
        keep = clip.valid & np.isfinite(gap)
        faces.append(clip.faces[keep])
        labels.append(gap[keep].astype(np.float32))
    if not faces:
        raise ValueError("no clip has landmarks: re-run python -m train.preprocess")
    return np.concatenate(faces), np.concatenate(labels)


def _batch(faces: np.ndarray, idx: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    x = torch.from_numpy(faces[idx]).permute(0, 3, 1, 2).float() / 255.0
    if rng is not None:  # flips and colour jitter: the gap does not change
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        x[flip] = x[flip].flip(-1)
        gain = torch.from_numpy(rng.uniform(0.8, 1.2, (len(idx), 3, 1, 1)).astype(np.float32))
        bias = torch.from_numpy(rng.uniform(-0.08, 0.08, (len(idx), 1, 1, 1)).astype(np.float32))
        x = (x * gain + bias).clamp(0, 1)
    return x


@torch.no_grad()
def evaluate(net: MouthOpeningNet, faces: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict[str, float]:
    """R² and mean absolute error (gap-ratio units) of ``net`` on ``faces`` / ``labels``."""
    net.eval()
    pred = np.concatenate([net(_batch(faces, np.arange(i, min(i + batch, len(faces))), None)).numpy()
                           for i in range(0, len(faces), batch)])
    r2 = 1 - float(((pred - labels) ** 2).mean() / labels.var())
    return {"r2": r2, "mae": float(np.abs(pred - labels).mean())}


def train(data: str | Path, out: str | Path, minutes: float = 8.0, batch_size: int = 64, lr: float = 2e-3,
          width: float = 1.0, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Train a :class:`MouthOpeningNet` for ``minutes`` on ``data``'s train split; write ``out``; return val scores."""
    from tqdm import tqdm

    from train.data import load_clips

    faces, labels = frames_and_labels(load_clips(data, "train"))
    vfaces, vlabels = frames_and_labels(load_clips(data, "val"))
    log.info("%d train frames, %d val frames (held-out speakers)", len(faces), len(vfaces))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = MouthOpeningNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    limit, t0, step = minutes * 60, time.perf_counter(), 0
    bar = tqdm(total=int(limit), unit="s", desc="mouth-opening regressor", disable=not progress, leave=False)
    while time.perf_counter() - t0 < limit:
        net.train()
        idx = rng.integers(0, len(faces), batch_size)
        pred = net(_batch(faces, idx, rng))
        loss = F.huber_loss(pred * SCALE, torch.from_numpy(labels[idx]) * SCALE, delta=0.5)
        for g in opt.param_groups:  # cosine decay over the time budget
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, (time.perf_counter() - t0) / limit)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.n = int(time.perf_counter() - t0)
        bar.set_postfix(step=step, loss=f"{loss.item():.3f}")
    bar.close()
    scores = evaluate(net, vfaces, vlabels)
    scores["steps"] = step
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"format": FORMAT, "state_dict": net.state_dict(),
                "meta": {"width": width, "data": str(data), "steps": step, "val": scores}}, tmp)
    tmp.replace(out)
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.opening", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder written by python -m train.preprocess (train + val)")
    ap.add_argument("--out", required=True, help="checkpoint to write (e.g. runs/opening/opening.pth)")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time (default: 8)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier (default: 1.0)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        scores = train(args.data, args.out, args.minutes, args.batch_size, args.lr, args.width)
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m train.opening: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {scores['steps']} steps; held-out speakers R² {scores['r2']:.3f}, "
          f"mean abs error {scores['mae']:.4f} (gap / face height)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
