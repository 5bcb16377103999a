"""Score talking-face videos with the paper's metrics (Yaman et al. 2024, Tables 1, 2, 4; Fig. 5).

    python tools/evaluate.py --generated DIR [DIR ...] --reference DIR
                             [--avhubert CKPT] [--syncnet CKPT] [--inception CKPT] [--expert CKPT]
                             [--out PREFIX]
    python tools/evaluate.py --reference DIR --shift 2 4 8 --rotate 5 10 [--avhubert ...] [--syncnet ...]

Generated videos are paired with the reference (ground-truth) videos by file
stem (``DIR/x.mp4`` with ``REF/x.mpg``); every generated folder is one method,
one row of the table. Videos are read at 25 fps, frames are paired from the
start (the shorter video sets the length), and the speech is the generated
file's own audio track (the reference's when it has none).

Columns (one table, in this order), and what each needs:

==========  ====  ====================================================================
SSIM, PSNR  ↑     the videos; on 96×96 crops of the reference's face box, averaged over
                  all frames of all videos (TalkLip's protocol, spec §5)
SSIMlow     ↑     SSIM as the SSIM column (same crops, same settings) of the lower half
                  of the crops only (rows 48:96 of the 96×96 crop: roughly nose to chin,
                  the part the generator redraws); frame-level mean over all videos
LMD         ↓     the videos; MediaPipe mouth landmarks (``engine.metrics.lmd``:
                  20 lip points, in % of the eye distance), mean over frames
FID         ↓     ``--inception``: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
                  (github.com/mseitzer/pytorch-fid releases); the same face crops,
                  all frames of a method against all reference frames
LSE-C/LSE-D ↑/↓   ``--syncnet``: syncnet_python's ``syncnet_v2.model``
                  (github.com/joonson/syncnet_python, ``download_model.sh``); whole
                  frames at 224×224, mean over videos (spec §4)
AVSu/m/v    ↑     ``--avhubert``: a fairseq AV-HuBERT checkpoint, BASE or LARGE,
                  pretrained or fine-tuned (facebookresearch/av_hubert); mouth ROIs
                  (``engine.face``), mean over videos (the paper's eq. 4-6)
Expert      ↑     ``--expert``, or the bundled ``engine/assets/lip_expert.pth`` when it
                  exists: the sync confidence of OUR lip expert (``SyncNetColor`` trained
                  by ``python -m train.syncnet`` on GRID and web clips, not Wav2Lip's
                  published one): mean cosine of its audio and lip embeddings at offset 0
                  over the 5-frame windows of the generated video (square crops of its
                  own landmarks, windows with a frame without a face dropped) with the
                  speech it is scored with (``engine.metrics.expert_sync``; per-video
                  CSV: also the best offset, positive = audio late, and the offset
                  confidence); mean over videos. A number of this project, not
                  comparable with published LSE-C (``tools/sync_score.py`` explains)
==========  ====  ====================================================================

The weights-free mouth metrics (``engine.metrics.mouth_metrics``, the
reference as the input, the generated video as the output; always computed;
per video, then the mean over videos, PSNRup from the mean MSE) follow in the
same table:

==========  ====  ====================================================================
Sharp       ↑     mouth sharpness at the generator's scale (96 px face): variance of the
                  Laplacian of the padded lip box, generated over reference (ratio of
                  sums over frames; 1 = as sharp, < 1 blurrier)
SharpFull   ↑     the same at full resolution
Open        ~1    std over frames of the inner-lip gap / face height, generated over
                  reference (1 = moves as much; near 0 a frozen mouth)
Coupl       ↑     Pearson r of the generated gap with the log-RMS envelope of the speech
                  (lag 0; the reference's own value is in the per-video CSV)
PSNRup      ↑     PSNR of the face above the nose tip (inf: untouched, as a paste-back
                  should leave it)
LipErr%     ↓     mean distance of the 20 lip landmarks, in % of the face height
==========  ====  ====================================================================

A column whose file is not given is printed as ``n/a`` with the reason below
the table and written as null (CSV: empty) with the reason under
``"missing"`` in the JSON. A video that fails is reported with its reason and
the others go on.

``--shift PX ...`` / ``--rotate DEG ...`` reproduce the analysis of the
paper's Fig. 5: the metrics of the reference (ground-truth) clips against
themselves after shifting the whole frame horizontally by PX pixels (positive
to the right) or rotating it by DEG degrees (counter-clockwise, about the
frame centre), edge pixels repeated; 0 is always included as the baseline.
Landmarks and mouth ROIs are found again on the moved frames, as they would
be on a generated video. Written as ``PREFIX_fig5.csv`` and ``PREFIX_fig5.png``.

Outputs: ``PREFIX.csv`` (the table), ``PREFIX_videos.csv`` (one row per
video), ``PREFIX.json`` (both, with failures and missing columns).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from engine.audio import AudioError, avhubert_audio_features, load_audio
from engine.checkpoints import CheckpointError
from engine.face import mouth_roi_affines, mouth_rois, track_landmarks
from engine.media import read_frames_at
from engine.metrics import (avs_video, expert_crops, expert_sync, face_crops, fid, inception_activations, lmd,
                            lse_video, mouth_metrics, psnr, ssim)
from engine.models.avhubert import AVHubert
from engine.models.inception import FIDInceptionV3
from engine.models.syncnet import SyncNet
from tools import sync_score
from train.preprocess import VIDEO_SUFFIXES

FPS = 25.0
MOUTH_COLUMNS = {"Sharp": "sharpness_gen", "SharpFull": "sharpness_full", "Open": "opening_ratio",
                 "Coupl": "coupling", "PSNRup": "psnr_upper", "LipErr%": "lip_error_pct"}
"""The weights-free columns and their keys of ``engine.metrics.mouth_metrics``."""
COLUMNS = ["SSIM", "SSIMlow", "PSNR", "FID", "LMD", "LSE-C", "LSE-D", "AVSu", "AVSm", "AVSv", "Expert",
           *MOUTH_COLUMNS]
"""Every column of the table, in its order (CSV and JSON too)."""
HIGHER_IS_BETTER = {"SSIM": True, "SSIMlow": True, "PSNR": True, "FID": False, "LMD": False, "LSE-C": True,
                    "LSE-D": False, "AVSu": True, "AVSm": True, "AVSv": True, "Expert": True}
DIGITS = {"SSIM": 4, "SSIMlow": 4, "PSNR": 2, "FID": 2, "LMD": 3, "LSE-C": 3, "LSE-D": 3, "AVSu": 4, "AVSm": 4,
          "AVSv": 4, "Expert": 4}
HIGHER_IS_BETTER.update({"Sharp": True, "SharpFull": True, "Open": None, "Coupl": True, "PSNRup": True,
                         "LipErr%": False})  # None: best at 1, no arrow
DIGITS.update({"Sharp": 3, "SharpFull": 3, "Open": 3, "Coupl": 3, "PSNRup": 2, "LipErr%": 3})
NEEDS = {
    "FID": "needs --inception (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)",
    "LSE-C": "needs --syncnet (syncnet_python's syncnet_v2.model)",
    "AVSu": "needs --avhubert (a fairseq AV-HuBERT checkpoint, e.g. base_vox_433h.pt)",
    "Expert": "needs --expert (a lip expert written by python -m train.syncnet); none bundled at "
              "engine/assets/lip_expert.pth yet",
}
NEEDS["LSE-D"] = NEEDS["LSE-C"]
NEEDS["AVSm"] = NEEDS["AVSv"] = NEEDS["AVSu"]


@dataclass
class Clip:
    """One video at 25 fps: frames ``[T, H, W, 3]`` uint8 RGB, 16 kHz speech, landmarks ``[T, 478, 2]`` (NaN: no face)."""

    path: Path
    frames: np.ndarray
    wav: np.ndarray
    landmarks: np.ndarray
    audio_from: str


@dataclass
class Models:
    """The networks that were given (None: its columns are missing)."""

    avhubert: object = None
    syncnet: object = None
    inception: object = None
    expert: object = None


@dataclass
class Options:
    talklip_psnr: bool = False
    fid_step: int = 1


@dataclass
class VideoResult:
    """The metrics of one generated video against its reference."""

    method: str
    video: str
    frames: int
    audio_from: str
    ssim: np.ndarray
    ssim_low: np.ndarray  # SSIM of the lower half of the crops
    psnr: np.ndarray
    lmd: np.ndarray
    scores: dict = field(default_factory=dict)  # LSE-C, LSE-D, LSE offset, AVSu, AVSm, AVSv, Expert, EXPERT_EXTRA
    mouth: dict = field(default_factory=dict)  # engine.metrics.mouth_metrics (NaN: undefined)
    activations: tuple | None = None  # (generated, reference) pool3 activations for FID

    def row(self) -> dict:
        lmd_valid = self.lmd[~np.isnan(self.lmd)]
        return {"Method": self.method, "Video": self.video, "Frames": self.frames,
                "SSIM": float(self.ssim.mean()), "SSIMlow": float(self.ssim_low.mean()),
                "PSNR": float(self.psnr.mean()),
                "LMD": float(lmd_valid.mean()) if len(lmd_valid) else None,
                **{k: self.scores.get(k) for k in ("LSE-C", "LSE-D", "LSE offset", "AVSu", "AVSm", "AVSv", "Expert",
                                                   *EXPERT_EXTRA)},
                **{c: _finite_or_none(self.mouth.get(k)) for c, k in MOUTH_COLUMNS.items()},
                "Coupl source": _finite_or_none(self.mouth.get("coupling_source")),
                "Audio": self.audio_from}


EXPERT_EXTRA = ("Expert offset", "Expert offset conf")
"""Per-video columns of the expert besides its confidence: the best offset (frames, positive = audio late)
and the offset confidence (median − min of the cosine distance over the offsets), ``engine.metrics.expert_sync``."""
VIDEO_COLUMNS = ["Method", "Video", "Frames", "SSIM", "SSIMlow", "PSNR", "LMD", "LSE-C", "LSE-D", "LSE offset", "AVSu",
                 "AVSm", "AVSv", "Expert", *EXPERT_EXTRA, *MOUTH_COLUMNS, "Coupl source", "Audio"]
"""The columns of ``PREFIX_videos.csv``."""


def _finite_or_none(value):
    """``value`` as a float, None for NaN or a missing value (infinities kept)."""
    return None if value is None or math.isnan(value) else float(value)



def find_videos(folder: Path) -> dict[str, Path]:
    """Video files of ``folder`` by stem. Raises SystemExit on a missing folder or two files with one stem."""
    if not folder.is_dir():
        raise SystemExit(f"evaluate: error: no such folder: {folder}")
    videos: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            if path.stem in videos:
                raise SystemExit(f"evaluate: error: two videos named {path.stem} in {folder}")
            videos[path.stem] = path
    return videos


def load_clip(path: Path, audio_fallback: Path | None = None, frames: np.ndarray | None = None) -> Clip:
    """Read a video (or take ``frames`` already read from it), its speech and its landmarks."""
    if frames is None:
        frames = np.stack([f for f, _ in read_frames_at(path, FPS)])
    try:
        wav, audio_from = load_audio(path), "own"
    except AudioError:
        if audio_fallback is None:
            raise
        wav, audio_from = load_audio(audio_fallback), "reference"
    return Clip(path, frames, wav, track_landmarks(frames, FPS), audio_from)


def evaluate_pair(method: str, generated: Clip, reference: Clip, models: Models, options: Options) -> VideoResult:
    """Every metric that ``models`` allow of one generated clip against its reference clip.

    A generated frame one pixel wider or taller than the reference (H.264
    writers pad odd sizes, ``realtime.sinks.Mp4Sink`` included) is cut back
    to the reference size.

    Raises ValueError for clips that cannot be compared (frame sizes differ,
    no face in the reference, too short for LSE).
    """
    (gh, gw), (rh, rw) = generated.frames.shape[1:3], reference.frames.shape[1:3]
    if (gh, gw) != (rh, rw):
        if not (0 <= gh - rh <= 1 and 0 <= gw - rw <= 1):
            raise ValueError(f"frame sizes differ: {gw}x{gh} generated, {rw}x{rh} reference")
        generated = Clip(generated.path, generated.frames[:, :rh, :rw], generated.wav, generated.landmarks,
                         generated.audio_from)
    same = generated is reference  # a video against itself: compute once what both sides need
    n = min(len(generated.frames), len(reference.frames))
    gen_frames, ref_frames = generated.frames[:n], reference.frames[:n]
    ref_landmarks = reference.landmarks[:n]
    ref_crops = face_crops(ref_frames, ref_landmarks)
    gen_crops = ref_crops if same else face_crops(gen_frames, ref_landmarks)
    half = ref_crops.shape[1] // 2
    result = VideoResult(
        method, generated.path.stem, n, generated.audio_from,
        ssim=np.array([ssim(r, g) for r, g in zip(ref_crops, gen_crops)]),
        ssim_low=np.array([ssim(r[half:], g[half:]) for r, g in zip(ref_crops, gen_crops)]),
        psnr=np.array([psnr(r, g, talklip_uint8=options.talklip_psnr) for r, g in zip(ref_crops, gen_crops)]),
        lmd=lmd(ref_landmarks, generated.landmarks[:n]),
    )
    if models.syncnet is not None:
        lse = lse_video(models.syncnet, generated.frames, generated.wav)
        result.scores.update({"LSE-C": lse.lse_c, "LSE-D": lse.lse_d, "LSE offset": lse.offset})
    if models.expert is not None:
        crops, valid = expert_crops(generated.frames, generated.landmarks)
        try:
            sync = expert_sync(models.expert, crops, generated.wav, FPS, valid=valid)
            result.scores.update({"Expert": sync["confidence"], "Expert offset": sync["offset"],
                                  "Expert offset conf": sync["offset_confidence"]})
        except ValueError:  # no 5-frame window with a face in the generated video: undefined, not a failure
            result.scores.update({"Expert": None, "Expert offset": None, "Expert offset conf": None})
    if models.avhubert is not None:
        audio = avhubert_audio_features(generated.wav, n)
        ref_rois = mouth_rois(ref_frames, mouth_roi_affines(ref_landmarks))
        gen_rois = ref_rois if same else mouth_rois(gen_frames, mouth_roi_affines(generated.landmarks[:n]))
        result.scores.update(avs_video(models.avhubert, gen_rois, audio, reference_rois=ref_rois))
    if models.inception is not None:
        step = options.fid_step
        ref_activations = inception_activations(models.inception, ref_crops[::step])
        gen_activations = ref_activations if same else inception_activations(models.inception, gen_crops[::step])
        result.activations = (gen_activations, ref_activations)
    result.mouth = mouth_metrics(ref_frames, gen_frames, generated.wav, input_landmarks=ref_landmarks,
                                 output_landmarks=generated.landmarks[:n], fps=FPS)
    return result


def summarise(results: list[VideoResult], models: Models) -> tuple[dict, dict]:
    """The table row of one method, and why columns are missing.

    SSIM, SSIMlow, PSNR and LMD are frame-level means over all videos; LSE,
    AVS and Expert means over videos (Expert: those with a window of 5 frames
    with a face); FID over all frames of all videos; the mouth metrics means
    over the videos where they are defined, PSNRup the PSNR of the mean of
    the videos' MSEs.
    """
    row: dict = {c: None for c in COLUMNS}
    missing = {}
    if not results:
        return row, {c: "no video could be evaluated" for c in COLUMNS}
    for column, key in MOUTH_COLUMNS.items():
        values = np.array([r.mouth.get(key, math.nan) for r in results], np.float64)
        values = values[~np.isnan(values)]
        if not len(values):
            missing[column] = "undefined for every video (no face, too few frames, or no speech)"
        elif column == "PSNRup":
            mse = np.mean(255.0**2 / 10 ** (values / 10))
            row[column] = math.inf if mse == 0 else float(10 * math.log10(255.0**2 / mse))
        else:
            row[column] = float(values.mean())
    row["SSIM"] = float(np.concatenate([r.ssim for r in results]).mean())
    row["SSIMlow"] = float(np.concatenate([r.ssim_low for r in results]).mean())
    row["PSNR"] = float(np.concatenate([r.psnr for r in results]).mean())
    lmds = np.concatenate([r.lmd for r in results])
    lmds = lmds[~np.isnan(lmds)]
    if len(lmds):
        row["LMD"] = float(lmds.mean())
    else:
        missing["LMD"] = "no frame with a face in both videos"
    for column, model in (("LSE-C", models.syncnet), ("LSE-D", models.syncnet), ("AVSu", models.avhubert),
                          ("AVSm", models.avhubert), ("AVSv", models.avhubert)):
        if model is None:
            missing[column] = NEEDS[column]
        else:
            row[column] = float(np.mean([r.scores[column] for r in results]))
    if models.expert is None:
        missing["Expert"] = NEEDS["Expert"]
    else:
        values = [r.scores["Expert"] for r in results if r.scores.get("Expert") is not None]
        if values:
            row["Expert"] = float(np.mean(values))
        else:
            missing["Expert"] = "no window of 5 consecutive frames with a face in any generated video"
    if models.inception is None:
        missing["FID"] = NEEDS["FID"]
    else:
        generated = np.concatenate([r.activations[0] for r in results])
        reference = np.concatenate([r.activations[1] for r in results])
        if min(len(generated), len(reference)) < 2:
            missing["FID"] = "needs at least 2 frames"
        else:
            row["FID"] = fid(generated, reference)
    return row, missing


def format_value(value, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def column_header(column: str) -> str:
    """The column's name with ↑ (higher is better), ↓ (lower) or nothing (best at 1: Open)."""
    better = HIGHER_IS_BETTER[column]
    return column + ("" if better is None else "↑" if better else "↓")


def format_table(rows: list[dict], first: str, first_header: str, notes: dict[str, str]) -> str:
    """One plain-text table: a header of the column names with ↑/↓ (:data:`COLUMNS`, the weights-free
    mouth metrics last), one line per row; then, indented, why columns are n/a."""
    headers = [first_header, "Videos"] + [column_header(c) for c in COLUMNS]
    body = [[str(r[first]), str(r["Videos"])] + [format_value(r.get(c), DIGITS[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in body]
    lines += [f"  {column}: n/a, {reason}" for column, reason in notes.items()]
    return "\n".join(lines)


def json_safe(value):
    """``value`` with infinite floats (the PSNR of identical frames) as the strings ``"inf"`` / ``"-inf"``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def load_models(args) -> Models:
    """Load the networks named on the command line (on ``args.device``); the lip expert also when
    it is bundled (``tools.sync_score.BUNDLED_EXPERT``) and not given."""
    models = Models()
    if args.avhubert:
        models.avhubert = AVHubert.from_checkpoint(args.avhubert).to(args.device)
    if args.syncnet:
        models.syncnet = SyncNet.from_checkpoint(args.syncnet).to(args.device)
    if args.inception:
        models.inception = FIDInceptionV3.from_checkpoint(args.inception).to(args.device)
    if args.expert or sync_score.BUNDLED_EXPERT.is_file():
        args.expert = args.expert or sync_score.BUNDLED_EXPERT
        models.expert = sync_score.load_expert(args.expert, args.device)
    return models


def method_names(folders: list[Path]) -> list[str]:
    """Folder names, or their paths where two folders share a name."""
    names = [f.name or str(f) for f in folders]
    return [str(f) if names.count(n) > 1 else n for f, n in zip(folders, names)]


def run_table(args, models: Models, options: Options) -> int:
    """The table of ``--generated`` against ``--reference``: print, write CSV and JSON. Returns the exit status."""
    references = find_videos(args.reference)
    if not references:
        raise SystemExit(f"evaluate: error: no videos in {args.reference}")
    methods = list(zip(method_names(args.generated), (find_videos(d) for d in args.generated)))
    results: dict[str, list[VideoResult]] = {name: [] for name, _ in methods}
    failures, unmatched = [], []
    for name, videos in methods:
        unmatched += [f"{name}/{videos[s].name}" for s in sorted(set(videos) - set(references))]
    total = sum(stem in videos for stem in references for _, videos in methods)
    with tqdm(total=total, unit="video", desc="evaluate", file=sys.stderr) as bar:
        for stem in references:
            jobs = [(name, videos[stem]) for name, videos in methods if stem in videos]
            if not jobs:
                continue
            try:
                reference = load_clip(references[stem])
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
                for name, path in jobs:
                    failures.append({"method": name, "video": stem, "error": f"reference: {e}"})
                    tqdm.write(f"evaluate: {name}/{path.name}: failed: reference {references[stem].name}: {e}",
                               file=sys.stderr)
                bar.update(len(jobs))
                continue
            for name, path in jobs:
                try:
                    same = path.resolve() == references[stem].resolve()
                    generated = reference if same else load_clip(path, audio_fallback=references[stem])
                    results[name].append(evaluate_pair(name, generated, reference, models, options))
                except Exception as e:  # noqa: BLE001
                    failures.append({"method": name, "video": stem, "error": str(e)})
                    tqdm.write(f"evaluate: {name}/{path.name}: failed: {e}", file=sys.stderr)
                bar.update(1)

    rows, notes, missing_by_method = [], {}, {}
    for name, _ in methods:
        row, missing = summarise(results[name], models)
        rows.append({"Method": name, "Videos": len(results[name]), "Failed": sum(f["method"] == name for f in failures),
                     **row})
        missing_by_method[name] = missing
        notes.update(missing)
    print(format_table(rows, "Method", "Method", notes))
    for item in unmatched:
        print(f"  not in the reference folder, skipped: {item}")
    for f in failures:
        print(f"  failed: {f['method']}/{f['video']}: {f['error']}")

    prefix = args.out
    prefix.parent.mkdir(parents=True, exist_ok=True)
    video_rows = [r.row() for name, _ in methods for r in results[name]]
    write_csv(prefix.with_name(prefix.name + ".csv"), rows, ["Method", "Videos", "Failed", *COLUMNS])
    write_csv(prefix.with_name(prefix.name + "_videos.csv"), video_rows, VIDEO_COLUMNS)
    report = {"reference": str(args.reference), "methods": rows, "videos": video_rows, "failures": failures,
              "unmatched": unmatched, "missing": missing_by_method,
              "settings": {"talklip_psnr": options.talklip_psnr, "fid_step": options.fid_step,
                           "avhubert": str(args.avhubert) if args.avhubert else None,
                           "syncnet": str(args.syncnet) if args.syncnet else None,
                           "inception": str(args.inception) if args.inception else None,
                           "expert": str(args.expert) if args.expert else None}}
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(json_safe(report), indent=2))
    print(f"wrote {prefix}.csv, {prefix}_videos.csv, {prefix}.json")
    return 0 if any(results.values()) else 1


# ---------------------------------------------------------------------------
# Fig. 5: the metrics of ground truth under small moves of the frame.


def move_frames(frames: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """``frames`` shifted right by ``amount`` px (``"shift"``) or rotated by
    ``amount`` degrees counter-clockwise about the centre (``"rotate"``), edges repeated."""
    h, w = frames.shape[1:3]
    if kind == "shift":
        matrix = np.array([[1.0, 0.0, amount], [0.0, 1.0, 0.0]])
    else:
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), amount, 1.0)
    return np.stack([cv2.warpAffine(f, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for f in frames])


def run_fig5(args, models: Models, options: Options) -> int:
    """The Fig. 5 analysis of ``--reference`` under ``--shift`` / ``--rotate``. Returns the exit status."""
    references = find_videos(args.reference)
    if not references:
        raise SystemExit(f"evaluate: error: no videos in {args.reference}")
    series = [("shift", a) for a in sorted({0.0, *args.shift})] if args.shift else []
    series += [("rotate", a) for a in sorted({0.0, *args.rotate})] if args.rotate else []
    results = {key: [] for key in series}
    failures = []
    with tqdm(total=len(references) * len(series), unit="clip", desc="fig5", file=sys.stderr) as bar:
        for stem, path in references.items():
            try:
                reference = load_clip(path)
            except Exception as e:  # noqa: BLE001
                failures.append({"video": stem, "error": str(e)})
                tqdm.write(f"evaluate: {path.name}: failed: {e}", file=sys.stderr)
                bar.update(len(series))
                continue
            baseline = None  # amount 0 of every series: the clip against itself, computed once
            for kind, amount in series:
                try:
                    if amount == 0:
                        baseline = baseline or evaluate_pair("baseline", reference, reference, models, options)
                        result = baseline
                    else:
                        moved = load_clip(path, frames=move_frames(reference.frames, kind, amount))
                        result = evaluate_pair(f"{kind} {amount:g}", moved, reference, models, options)
                    results[(kind, amount)].append(result)
                except Exception as e:  # noqa: BLE001
                    failures.append({"video": stem, "transform": f"{kind} {amount:g}", "error": str(e)})
                    tqdm.write(f"evaluate: {path.name} ({kind} {amount:g}): failed: {e}", file=sys.stderr)
                bar.update(1)

    rows, notes = [], {}
    for (kind, amount), res in results.items():
        row, missing = summarise(res, models)
        notes.update(missing)
        rows.append({"Transform": kind, "Amount": amount, "Unit": "px" if kind == "shift" else "deg",
                     "Videos": len(res), **row})
    for row in rows:
        row["Label"] = f"{row['Transform']} {row['Amount']:g} {row['Unit']}"
    print(format_table(rows, "Label", "Fig. 5", notes))
    for f in failures:
        print(f"  failed: {f['video']} {f.get('transform', '')}: {f['error']}")
    prefix = args.out
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_csv(prefix.with_name(prefix.name + "_fig5.csv"), rows,
              ["Transform", "Amount", "Unit", "Videos", *COLUMNS])
    plot_fig5(rows, prefix.with_name(prefix.name + "_fig5.png"))
    print(f"wrote {prefix}_fig5.csv, {prefix}_fig5.png")
    return 0 if any(results.values()) else 1


def plot_fig5(rows: list[dict], path: Path) -> None:
    """One panel per computed metric and transform: the metric against the shift (px) or rotation (degrees)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("shift", "rotate") if any(r["Transform"] == k for r in rows)]
    metrics = [c for c in COLUMNS if any(r[c] is not None and math.isfinite(r[c]) for r in rows)]
    fig, axes = plt.subplots(len(kinds), len(metrics), figsize=(2.6 * len(metrics), 2.4 * len(kinds)),
                             squeeze=False, constrained_layout=True)
    for i, kind in enumerate(kinds):
        series = [r for r in rows if r["Transform"] == kind]
        for j, metric in enumerate(metrics):
            points = [(r["Amount"], r[metric]) for r in series if r[metric] is not None and math.isfinite(r[metric])]
            ax = axes[i][j]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            ax.set_title(column_header(metric), fontsize=9)
            ax.set_xlabel("horizontal shift (px)" if kind == "shift" else "rotation (degrees)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle("Metrics of ground-truth clips under moves of the frame (Fig. 5 analysis)", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generated", type=Path, nargs="+", default=[], metavar="DIR",
                   help="folders of generated videos, one method each")
    p.add_argument("--reference", type=Path, required=True, metavar="DIR", help="folder of ground-truth videos")
    p.add_argument("--avhubert", type=Path, metavar="CKPT", help="AV-HuBERT checkpoint (fairseq .pt): AVSu/AVSm/AVSv")
    p.add_argument("--syncnet", type=Path, metavar="CKPT", help="syncnet_python's syncnet_v2.model: LSE-C/LSE-D")
    p.add_argument("--inception", type=Path, metavar="CKPT",
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: FID")
    p.add_argument("--expert", type=Path, metavar="CKPT",
                   help="our lip expert (python -m train.syncnet): Expert (default: the bundled "
                        "engine/assets/lip_expert.pth when it exists)")
    p.add_argument("--out", type=Path, default=Path("evaluation"), metavar="PREFIX",
                   help="output prefix: PREFIX.csv, PREFIX_videos.csv, PREFIX.json (default: evaluation)")
    p.add_argument("--shift", type=float, nargs="+", metavar="PX",
                   help="Fig. 5: horizontal shifts of the reference frames, in pixels")
    p.add_argument("--rotate", type=float, nargs="+", metavar="DEG",
                   help="Fig. 5: rotations of the reference frames, in degrees")
    p.add_argument("--talklip-psnr", action="store_true",
                   help="PSNR as TalkLip's visual_quality.py computes it (uint8 arithmetic that wraps; 100 for "
                        "identical frames) to compare with published numbers; default: float PSNR")
    p.add_argument("--fid-step", type=int, default=1, metavar="N",
                   help="use every N-th frame for FID (faster; default 1: all frames)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:n] for the networks (default: cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.generated and not (args.shift or args.rotate):
        print("evaluate: error: give --generated DIR ... and/or --shift/--rotate", file=sys.stderr)
        return 2
    if args.fid_step < 1:
        print("evaluate: error: --fid-step must be >= 1", file=sys.stderr)
        return 2
    try:
        models = load_models(args)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    options = Options(talklip_psnr=args.talklip_psnr, fid_step=args.fid_step)
    status = 0
    if args.generated:
        status |= run_table(args, models, options)
    if args.shift or args.rotate:
        status |= run_fig5(args, models, options)
    return status


if __name__ == "__main__":
    sys.exit(main())
