"""Score generators side by side on the held-out speakers: the evaluation behind the model card.

    python tools/heldout_eval.py --checkpoint NAME=CKPT [NAME=CKPT ...] [--data data/all] [--out runs/eval]
                                 [--run-option NAME=OPTION ...]

Each checkpoint dubs the same clips of the validation speakers of a
``train.preprocess`` folder (whole speakers the generator never saw) with
``realtime run`` (the product's own path: face tracking, crop, generator,
paste; no watermark, no provenance), in two sets:

* ``dub``: 3 GRID clips and the 4 web speakers, each driven by speech that
  is not their own (GRID sentences of other speakers, LibriVox, LJ Speech,
  CMU ARCTIC from ``../shared/data``): the product's use;
* ``own``: 5 GRID clips with their own speech (reconstruction, so that the
  lip-landmark error and the lower-face SSIM against the real frames mean
  something).

For each set, ``tools/evaluate.py`` scores every checkpoint against the
source clips, one row each (printed, and written to
``OUT/<set>_table.txt``, ``.csv`` and ``.json``), and
``tools/contact_sheet.py`` a mouth sheet per clip and checkpoint
(``OUT/<set>/<name>/<clip>_mouth.png``, input above output): look at them.
``--run-option plain=--no-detail`` gives the row ``plain`` a ``realtime run``
option of its own, so that one checkpoint can be scored two ways (e.g.
``--checkpoint detail=G plain=G``). Dubbed videos are kept (``OUT/<set>/<name>/<clip>.mp4``) and reused when a
checkpoint's file is older than them; ``--redo`` makes them again.

Exit status 0; 2 with one line on stderr when the data folder has no such
clips or a checkpoint cannot be read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# (set, clip of the train.preprocess manifest, driving speech under ../shared/data; None = the clip's own)
CLIPS = [
    ("dub", "s29__bgiq6n", "video/grid_lrwp9a.mpg"),
    ("dub", "s29__brax4p", "video/grid_pwij3p.mpg"),
    ("dub", "s34__lbwh5n", "video/grid_sbwe5n.mpg"),
    ("dub", "jim_acosta__cnn2_25fps", "audio/ljspeech_LJ001-0001.wav"),
    ("dub", "dfdc_actor_lynaeydofd_woman_with_glasses_blue_polo__lynaeydofd", "audio/ljspeech_LJ001-0005.wav"),
    ("dub", "lrs2_demo_00004_man_with_glasses__00004", "audio/cmuarctic_a0007.wav"),
    ("dub", "lrs3_style_ted_speaker_laalm_sample4_woman_with_glasses__sample4", "audio/librivox_ss01_0890.wav"),
    ("own", "s29__bwby3s", None),
    ("own", "s29__pwiazn", None),
    ("own", "s29__sbwe9s", None),
    ("own", "s29__swir8p", None),
    ("own", "s34__lbwh5n", None),
]
MAX_SECONDS = 10.0  # long sources (a 71 s broadcast) are cut to this for the reference


def sources(data: Path) -> dict[str, Path]:
    """Clip name → source video, from ``data/manifest.csv`` (validation split only)."""
    import csv

    manifest = data / "manifest.csv"
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: run python -m train.preprocess first "
                                "(configs/default_cpu.yaml)")
    with manifest.open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
    return {r["clip"]: (REPO / r["source"]).resolve() for r in rows}


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr.strip()[-2000:]}")
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="heldout_eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="NAME=CKPT",
                   help="generators to compare, each a row name and a generator.pt / wav2lip.pth")
    p.add_argument("--data", type=Path, default=REPO / "data" / "all",
                   help="train.preprocess folder (default data/all)")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "eval", help="output folder (default runs/eval)")
    p.add_argument("--run-option", nargs="+", default=[], metavar="NAME=OPTION",
                   help="an option of realtime run for one row only, e.g. plain=--no-detail (repeatable)")
    p.add_argument("--redo", action="store_true", help="dub again even where a video is newer than its checkpoint")
    a = p.parse_args(argv)
    try:
        models = dict(item.split("=", 1) for item in a.checkpoint)
        options: dict[str, list[str]] = {}
        for item in a.run_option:
            name, option = item.split("=", 1)
            options.setdefault(name, []).append(option)
    except ValueError:
        p.error("--checkpoint takes NAME=CKPT, --run-option NAME=OPTION")
    unknown = sorted(set(options) - set(models))
    if unknown:
        p.error(f"--run-option for {', '.join(unknown)}, which no --checkpoint names")
    try:
        found = sources(a.data)
    except FileNotFoundError as e:
        print(f"heldout_eval: {e}", file=sys.stderr)
        return 2
    missing = [c for _, c, _ in CLIPS if c not in found]
    if missing:
        print(f"heldout_eval: {a.data} has no validation clip {', '.join(missing)} (see configs/default_cpu.yaml)",
              file=sys.stderr)
        return 2
    for name, ckpt in models.items():
        if not Path(ckpt).is_file():
            print(f"heldout_eval: checkpoint {name}={ckpt} not found", file=sys.stderr)
            return 2
    py = sys.executable
    try:
        from tqdm import tqdm

        jobs = [(s, c, sp, n) for s, c, sp in CLIPS for n in models]
        for set_, clip, speech, name in tqdm(jobs, desc="dubbing", unit="video"):
            ref = a.out / set_ / "ref" / f"{clip}.mp4"
            if not ref.exists():  # the reference: the source clip, at most MAX_SECONDS, with its own audio
                ref.parent.mkdir(parents=True, exist_ok=True)
                _run(["ffmpeg", "-v", "error", "-y", "-i", str(found[clip]), "-t", str(MAX_SECONDS), "-r", "25",
                      "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", "-c:a", "aac", str(ref)])
            out = a.out / set_ / name / f"{clip}.mp4"
            if out.exists() and not a.redo and out.stat().st_mtime > Path(models[name]).stat().st_mtime:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            audio = str(SHARED / speech) if speech else str(ref)
            _run([py, "-m", "realtime.cli", "run", "--video", str(ref), "--audio", audio, "--out", str(out),
                  "--checkpoint", models[name], "--no-watermark", "--no-provenance", "-q", *options.get(name, [])])
            _run([py, "tools/contact_sheet.py", str(ref), str(out), "--frames", "8"])
        for set_ in sorted({s for s, _, _ in CLIPS}):
            table = _run([py, "tools/evaluate.py", "--generated", *[str(a.out / set_ / n) for n in models],
                          "--reference", str(a.out / set_ / "ref"), "--out", str(a.out / f"{set_}_table")])
            (a.out / f"{set_}_table.txt").write_text(table)
            print(f"\n## {set_}\n{table}")
    except RuntimeError as e:
        print(f"heldout_eval: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
