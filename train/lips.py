"""Fit the lip predictor of a lip-sketch generator alone: ``python -m train.lips --checkpoint G --data DIR --out F``.

The audio → landmarks stage of a ``lip_sketch`` generator
(``engine.models.generator``; IP_LAP's split, Zhong et al. 2023) is a small
MLP that reads only what does not change while it learns: the frozen lip
expert's audio embedding of the frame's mel window (paper §3.2) and, with
``lip_predictor="resting"``, the resting shape (the identity reference's own
lip and jaw points moved into the frame's head pose). The image path never
sees the predicted points in training (teacher forcing, ``train.run``), so
this stage can be fitted on its own, on every frame of the data, in minutes
on a CPU, and swapped into any generator that shares the audio encoder:

1. every valid frame of the train and validation clips gives a sample: the
   audio embedding of its mel window, and of the ``lip_context`` windows
   before it (``Generator.hear``; with −``gain_db``, 0 and +``gain_db``
   of gain, ``train.augment``), the target's 33 tracked points
   (``train.data.window_lips``) and, for ``references`` random frames of the
   same clip as the identity reference, their resting shapes
   (``train.data.window_identity_lips``), each also mirrored (a flipped face
   says the same sound);
2. the predictor (a fresh ``"resting"`` one) learns the displacement from
   the resting shape by L1 in pixels, AdamW with a one-cycle schedule;
3. the validation split (held-out speakers) is scored every quarter of the
   steps, over all its references: the mean point error in pixels of the face crop (beside that of
   the resting shape, which predicts no motion), the Pearson r over frames
   of the predicted and the real inner-lip gap per clip, and the ratio of
   their spreads; the weights with the lowest error are kept;
4. ``lip_gain`` is set on training windows (``train.run.calibrate_lip_gain``)
   and the generator is written (``engine.models.generator.save_generator``)
   with these scores in its metadata (``meta["lips"]``).

Every weight but the predictor's is the given generator's, unchanged.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.audio import mel_window
from engine.bundled import GENERATOR
from engine.models import load as load_generator
from engine.models.generator import Generator, save_generator
from train.augment import gain
from train.data import WindowDataset, load_clips, window_identity_lips, window_lips
from train.run import CALIBRATION_WINDOWS, INNER_GAP, calibrate_lip_gain

log = logging.getLogger("train.lips")

GAIN_DB = 6.0
"""Loudness change (dB) of the two extra audio embeddings of every frame (as ``train.augment.Augment.gain_db``)."""


def lip_samples(gen: Generator, clips, references: int, rng: np.random.Generator, gain_db: float = GAIN_DB,
                progress: bool = True) -> dict[str, np.ndarray]:
    """The cached samples of ``clips`` (module doc, step 1).

    Returns float32 arrays: ``audio`` ``[G, N, D]`` (G = 3 gains, N valid frames, D the lip predictor's audio
    channels: ``Generator.hear``, the embedding of the frame's window and of its ``lip_context`` past ones),
    ``lips`` ``[2, N, 33, 2]`` (as is, mirrored), ``resting`` ``[2, N, R, 33, 2]`` (R =
    ``references``), and ``clip`` ``[N]`` int, the clip's index. Clips with fewer valid frames than
    ``references`` + 1 are skipped. Raises ValueError when no clip is left.
    """
    from tqdm import tqdm

    audio, lips, resting, index = [], [], [], []
    gen.eval()
    for c, clip in enumerate(tqdm(clips, desc="audio embeddings", unit="clip", disable=not progress, leave=False)):
        frames = np.flatnonzero(clip.valid)
        if len(frames) <= references or clip.landmarks is None:
            continue
        refs = rng.choice(frames, size=references, replace=False)
        mels = np.stack([mel_window(clip.mel, t / clip.fps, gen.info.mel_offset_s, gen.info.mel_context)
                         for t in frames])[:, None]
        with torch.no_grad():
            audio.append(np.stack([
                gen.hear(torch.from_numpy(gain(mels, g).astype(np.float32)))[1].flatten(1)
                .numpy() for g in (-gain_db, 0.0, gain_db)]))
        T = len(clip.valid)
        lips.append(np.stack([window_lips(clip, 0, T, flip)[frames] for flip in (False, True)]))
        resting.append(np.stack([np.stack([window_identity_lips(clip, 0, np.full(T, r), flip)[frames, 0]
                                           for r in refs], axis=1) for flip in (False, True)]))
        index.append(np.full(len(frames), c))
    if not index:
        raise ValueError(f"no clip has more than {references} frames with a face and landmarks")
    return {"audio": np.concatenate(audio, axis=1), "lips": np.concatenate(lips, axis=1),
            "resting": np.concatenate(resting, axis=1), "clip": np.concatenate(index)}


def _predict(gen: Generator, audio: np.ndarray, resting: np.ndarray) -> torch.Tensor:
    resting = torch.from_numpy(resting)
    return gen.predict_lips(torch.from_numpy(audio)[:, :, None, None], None, resting)


@torch.no_grad()
def lip_scores(gen: Generator, samples: dict[str, np.ndarray]) -> dict[str, float]:
    """Scores of ``gen``'s lip predictor (before ``lip_gain``) on ``samples`` (:func:`lip_samples`; the
    un-mirrored points, no gain), averaged over the R references of each frame (which reference is held moves
    the resting shape, and with it the error, a lot): ``error_px`` and ``resting_error_px``, the mean
    Euclidean point error in pixels of the face crop of the prediction and of the resting shape; ``gap_r``,
    the mean over clips and references of the Pearson r over frames of the predicted and real inner-lip gap
    (``train.run.INNER_GAP``; clips whose gap does not vary are left out); ``gap_ratio``, the mean of the
    ratio of their standard deviations."""
    was_training = gen.training
    gen.eval()
    size = gen.config.size
    real = samples["lips"][0]
    gap = lambda p: p[:, INNER_GAP[1], 1] - p[:, INNER_GAP[0], 1]  # noqa: E731
    gr = gap(real)
    err, rest, rs, ratios = [], [], [], []
    for r in range(samples["resting"].shape[2]):
        resting = np.ascontiguousarray(samples["resting"][0, :, r])
        pred = torch.cat([_predict(gen, samples["audio"][1, i: i + 4096], resting[i: i + 4096])
                          for i in range(0, len(real), 4096)]).numpy()
        err.append(np.linalg.norm(pred - real, axis=-1).mean() * size)
        rest.append(np.linalg.norm(resting - real, axis=-1).mean() * size)
        gp = gap(pred)
        for c in np.unique(samples["clip"]):
            k = samples["clip"] == c
            if gr[k].std() > 0 and gp[k].std() > 0:
                rs.append(np.corrcoef(gp[k], gr[k])[0, 1])
                ratios.append(gp[k].std() / gr[k].std())
    gen.train(was_training)
    return {"error_px": float(np.mean(err)), "resting_error_px": float(np.mean(rest)),
            "gap_r": float(np.mean(rs)) if rs else float("nan"),
            "gap_ratio": float(np.mean(ratios)) if ratios else float("nan")}


def fit_lips(gen: Generator, data: str | Path, steps: int = 4000, batch_size: int = 256, lr: float = 1e-3,
             references: int = 4, seed: int = 0, progress: bool = True,
             calibration_windows: int = CALIBRATION_WINDOWS,
             lip_context: int | None = None) -> tuple[Generator, dict]:
    """A copy of the lip-sketch generator ``gen`` with a fresh ``"resting"`` lip predictor (reading
    ``lip_context`` past mel windows, ``GeneratorConfig.lip_context``; default: ``gen``'s) fitted on ``data``
    (a folder written by ``train.preprocess``; module doc), ``lip_gain`` calibrated on ``calibration_windows``
    training windows; and a report
    ``{"steps", "seconds", "train_frames", "val_frames", "val": scores, "best_step", "gain"}`` (scores of
    :func:`lip_scores` on the validation split; ``val`` is ``{}`` without one).

    Raises ValueError for a generator without ``lip_sketch`` or data without usable clips;
    FileNotFoundError for a folder without ``manifest.csv``.
    """
    from tqdm import tqdm

    if not gen.config.lip_sketch:
        raise ValueError("the generator has no lip sketch (GeneratorConfig.lip_sketch): there is no lip "
                         "predictor to fit")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    context = gen.config.lip_context if lip_context is None else lip_context
    new = Generator(replace(gen.config, lip_predictor="resting", lip_context=context))
    own = {k: v for k, v in gen.state_dict().items() if not k.startswith("lip_delta.")}
    missing, unexpected = new.load_state_dict(own, strict=False)
    assert not unexpected and all(k.startswith("lip_delta.") for k in missing), (missing, unexpected)
    train_clips, val_clips = load_clips(data, "train"), load_clips(data, "val")
    t0 = time.perf_counter()
    train = lip_samples(new, train_clips, references, rng, progress=progress)
    val = lip_samples(new, val_clips, references, rng, progress=progress) if val_clips else None
    log.info("lip samples: %d training frames (x3 gains x%d references x2 mirrors), %d validation frames, %.0f s",
             len(train["clip"]), references, 0 if val is None else len(val["clip"]), time.perf_counter() - t0)

    params = list(new.lip_delta.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    new.train()
    n, size = len(train["clip"]), new.config.size
    best, best_state, best_step, scores = float("inf"), None, 0, {}
    bar = tqdm(range(1, steps + 1), desc="lip predictor", unit="step", disable=not progress, leave=False)
    for step in bar:
        i = rng.integers(n, size=batch_size)
        g, m, r = rng.integers(3, size=batch_size), rng.integers(2, size=batch_size), rng.integers(references,
                                                                                                   size=batch_size)
        pred = _predict(new, train["audio"][g, i], train["resting"][m, i, r])
        loss = (pred - torch.from_numpy(train["lips"][m, i])).abs().mean() * size
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if val is not None and (step % max(1, steps // 4) == 0 or step == steps):
            s = lip_scores(new, val)
            log.info("step %d: loss %.3f px; validation: error %.3f px (resting shape %.3f), gap r %.3f, "
                     "spread ratio %.2f", step, loss.item(), s["error_px"], s["resting_error_px"], s["gap_r"],
                     s["gap_ratio"])
            if s["error_px"] < best:
                best, best_step, scores = s["error_px"], step, s
                best_state = {k: v.clone() for k, v in new.lip_delta.state_dict().items()}
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if best_state is not None:
        new.lip_delta.load_state_dict(best_state)
    new.eval()
    windows = WindowDataset(train_clips, k=5, samples_per_epoch=calibration_windows, seed=seed + 1,
                            identity="held", lips=True, mel_context=new.info.mel_context)
    gain = calibrate_lip_gain(new, windows, torch.device("cpu"))
    report = {"steps": steps, "seconds": round(time.perf_counter() - t0, 1), "train_frames": int(n),
              "val_frames": 0 if val is None else int(len(val["clip"])), "val": scores,
              "best_step": best_step if best_state is not None else steps, "gain": gain}
    log.info("lip_gain %.2f; kept the weights of step %d", gain, report["best_step"])
    return new, report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.lips", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="a lip-sketch generator (default: the bundled engine/assets/generator.pt)")
    p.add_argument("--data", required=True, help="folder written by python -m train.preprocess (its val split "
                                                 "scores the predictor)")
    p.add_argument("--out", required=True, help="the generator file to write (the --checkpoint format)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--references", type=int, default=4, help="identity reference frames drawn per clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lip-context", type=int, default=None, metavar="N",
                   help="past mel windows (every 0.08 s) the new predictor also hears (GeneratorConfig.lip_context; "
                        "default: the checkpoint's); the mel input grows by that much past audio, not lookahead")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file, as the bundled one)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        source = args.checkpoint or str(GENERATOR)
        gen = load_generator(source)
        if not isinstance(gen, Generator):
            raise ValueError(f"{source}: a dubcam generator is needed, found another kind")
        new, report = fit_lips(gen, args.data, args.steps, args.batch_size, args.lr, args.references, args.seed,
                               lip_context=args.lip_context)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        print(f"train.lips: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    meta = dict(getattr(gen, "meta", {}) or {})
    meta["lips"] = {"source": source, "data": str(args.data), **report}
    save_generator(new, args.out, meta, half=args.half)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
