"""tools/evaluate.py on real GRID clips of ../shared/data/video: against themselves
and against the outputs of ``realtime run`` (a small random generator), with
random-weight AV-HuBERT, SyncNet and Inception files in their published
layouts and a random lip expert as ``train.syncnet`` writes it; missing model
files, failing videos, and the Fig. 5 analysis."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, data_file

from engine.checkpoints import atomic_save
from engine.models.syncnet import SyncNetColor
from tools.evaluate import COLUMNS, MOUTH_COLUMNS, main
from tools.sync_score import BUNDLED_EXPERT

CLIPS = ("grid_bbaf2n", "grid_lbax4n")


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A folder with two GRID clips of ../shared/data/video (links)."""
    folder = tmp_path_factory.mktemp("data") / "reference"
    folder.mkdir()
    for clip in CLIPS:
        (folder / f"{clip}.mpg").symlink_to(data_file(f"video/{clip}.mpg"))
    return folder


@pytest.fixture(scope="module")
def realtime_dir(reference_dir, small_checkpoint):
    """``realtime run`` of the first clip driven by its own speech, with a small random generator (one
    clip to keep the test short: the method then covers one of the two reference videos)."""
    folder = reference_dir.parent / "realtime"
    folder.mkdir()
    video = reference_dir / f"{CLIPS[0]}.mpg"
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "run", "--video", str(video), "--audio", str(video),
                           "--out", str(folder / f"{CLIPS[0]}.mp4"), "--checkpoint", str(small_checkpoint), "-q"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def lip_expert(tmp_path_factory):
    """A random width-0.25 lip expert saved as ``python -m train.syncnet`` does."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("expert") / "lipsync_expert.pth"
    atomic_save({"state_dict": SyncNetColor(bgr=True, width=0.25).state_dict(), "global_step": 0,
                 "global_epoch": 0}, path)
    return path


HEADER = ["Method", "Videos", "SSIM↑", "SSIMlow↑", "PSNR↑", "FID↓", "LMD↓", "LSE-C↑", "LSE-D↓", "AVSu↑", "AVSm↑",
          "AVSv↑", "Expert↑", "Sharp↑", "SharpFull↑", "Open", "Coupl↑", "PSNRup↑", "LipErr%↓"]
"""The one table's header: every column, the weights-free mouth metrics last."""


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table: header and rows by their first cell."""
    lines = [line.split() for line in out.splitlines() if line and not line.startswith((" ", "wrote"))]
    return {line[0]: line for line in lines}


def table(out: str) -> dict[str, dict[str, str]]:
    """The printed table's rows by their first cell, each as ``{column name without arrow: cell}``."""
    rows = table_rows(out)
    header = [h.rstrip("↑↓") for h in rows.pop("Method")]
    return {name: dict(zip(header, cells)) for name, cells in rows.items()}


def test_every_column_against_itself_and_realtime_outputs(reference_dir, realtime_dir, avhubert_checkpoint,
                                                          syncnet_checkpoint, inception_checkpoint, lip_expert,
                                                          tmp_path, capsys):
    prefix = tmp_path / "out" / "table"
    status = main(["--generated", str(reference_dir), str(realtime_dir), "--reference", str(reference_dir),
                   "--avhubert", str(avhubert_checkpoint), "--syncnet", str(syncnet_checkpoint),
                   "--inception", str(inception_checkpoint), "--expert", str(lip_expert), "--fid-step", "40",
                   "--out", str(prefix)])
    out = capsys.readouterr().out
    print(out)
    assert status == 0
    assert table_rows(out)["Method"] == HEADER  # one table: the mouth metrics are columns of it, no second table
    assert "n/a" not in out and "failed" not in out and "weights-free" not in out
    rows = table(out)
    itself, realtime = rows["reference"], rows["realtime"]
    assert itself["Videos"] == "2" and realtime["Videos"] == "1"
    # a video against itself: perfect similarity, no landmark distance, AVSm = AVSv = 1
    assert itself["SSIM"] == itself["SSIMlow"] == "1.0000" and itself["PSNR"] == "inf" and itself["LMD"] == "0.000"
    assert itself["AVSm"] == itself["AVSv"] == "1.0000" and abs(float(itself["FID"])) < 0.01
    assert itself["Sharp"] == itself["Open"] == "1.000" and itself["PSNRup"] == "inf"
    # generated mouths differ from the ground truth, the lower face most
    assert float(realtime["SSIM"]) < 1 and math.isfinite(float(realtime["PSNR"])) and float(realtime["LMD"]) > 0
    assert float(realtime["SSIMlow"]) < float(realtime["SSIM"])
    assert float(realtime["AVSm"]) < 1 and float(realtime["AVSv"]) < 1
    assert -1 <= float(itself["Expert"]) <= 1 and -1 <= float(realtime["Expert"]) <= 1

    with open(prefix.with_name("table.csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["Method"] for r in csv_rows] == ["reference", "realtime"]
    assert list(csv_rows[0]) == ["Method", "Videos", "Failed", *COLUMNS]
    assert COLUMNS[-len(MOUTH_COLUMNS):] == list(MOUTH_COLUMNS)
    assert all(r[c] != "" for r in csv_rows for c in COLUMNS)
    for r in csv_rows:  # the CSV holds what the table prints
        assert f"{float(r['Expert']):.4f}" == rows[r["Method"]]["Expert"]
        assert f"{float(r['SSIMlow']):.4f}" == rows[r["Method"]]["SSIMlow"]
    report = json.loads(prefix.with_name("table.json").read_text())
    assert len(report["videos"]) == 3 and report["failures"] == [] and report["missing"]["realtime"] == {}
    assert [(v["Method"], v["Video"]) for v in report["videos"]] == [("reference", CLIPS[0]), ("reference", CLIPS[1]),
                                                                     ("realtime", CLIPS[0])]
    assert [m["Expert"] for m in report["methods"]] == [float(r["Expert"]) for r in csv_rows]
    assert report["settings"]["expert"] == str(lip_expert)
    with open(prefix.with_name("table_videos.csv")) as f:
        videos = list(csv.DictReader(f))
    assert len(videos) == 3
    for v in videos:
        assert -1 <= float(v["Expert"]) <= 1 and abs(int(v["Expert offset"])) <= 15
        assert float(v["Expert offset conf"]) >= 0 and 0 < float(v["SSIMlow"]) <= 1


def test_missing_files_and_failing_videos_are_reported(reference_dir, small_checkpoint, tmp_path, capsys):
    generated = tmp_path / "method"
    generated.mkdir()
    (generated / "grid_bbaf2n.mpg").symlink_to(reference_dir / "grid_bbaf2n.mpg")
    (generated / "grid_lbax4n.mp4").write_text("not a video")
    (generated / "unrelated.mp4").write_text("no reference")
    prefix = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "tools.evaluate", "--generated", str(generated), "--reference",
                           str(reference_dir), "--talklip-psnr", "--out", str(prefix)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = table(proc.stdout)["method"]
    assert row["Videos"] == "1" and row["SSIM"] == row["SSIMlow"] == "1.0000"
    assert row["PSNR"] == "100.00"  # TalkLip's PSNR of identical frames
    assert [row[c] for c in ("FID", "LSE-C", "LSE-D", "AVSu", "AVSm", "AVSv")] == ["n/a"] * 6
    assert "FID: n/a, needs --inception" in proc.stdout and "LSE-C: n/a, needs --syncnet" in proc.stdout
    assert "AVSu: n/a, needs --avhubert" in proc.stdout
    if BUNDLED_EXPERT.is_file():  # the bundled expert scores without --expert
        assert row["Expert"] != "n/a"
    else:
        assert row["Expert"] == "n/a" and "Expert: n/a, needs --expert" in proc.stdout
    assert "failed: method/grid_lbax4n" in proc.stdout and "not in the reference folder, skipped: method/unrelated.mp4" in proc.stdout
    report = json.loads(prefix.with_name("eval.json").read_text())
    assert report["methods"][0]["FID"] is None and report["methods"][0]["Failed"] == 1
    assert report["missing"]["method"]["AVSm"].startswith("needs --avhubert")
    assert [f["video"] for f in report["failures"]] == ["grid_lbax4n"]

    bad = subprocess.run([sys.executable, "-m", "tools.evaluate", "--generated", str(generated), "--reference",
                          str(reference_dir), "--syncnet", str(tmp_path / "missing.model")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "no such checkpoint" in bad.stderr
    assert main(["--generated", str(generated), "--reference", str(reference_dir), "--expert",
                 str(small_checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evaluate: error: {small_checkpoint}: expected a lip-sync expert") and err.endswith(
        "found a dubcam generator\n")


def test_fig5_shift_and_rotate(reference_dir, tmp_path, capsys):
    """The plumbing of the Fig. 5 analysis on one clip, with the metrics that need no network (the networks'
    columns take the same path as in the table above)."""
    single = tmp_path / "one"
    single.mkdir()
    (single / "grid_bbaf2n.mpg").symlink_to(reference_dir / "grid_bbaf2n.mpg")
    prefix = tmp_path / "fig"
    assert main(["--reference", str(single), "--shift", "6", "--rotate", "5", "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "AVSu: n/a, needs --avhubert" in out and "LSE-C: n/a, needs --syncnet" in out
    with open(prefix.with_name("fig_fig5.csv")) as f:
        rows = {(r["Transform"], float(r["Amount"])): r for r in csv.DictReader(f)}
    assert set(rows) == {("shift", 0.0), ("shift", 6.0), ("rotate", 0.0), ("rotate", 5.0)}
    base, shifted, rotated = rows[("shift", 0.0)], rows[("shift", 6.0)], rows[("rotate", 5.0)]
    assert float(base["SSIM"]) == float(base["SSIMlow"]) == 1.0 and float(base["LMD"]) == 0.0
    assert all(base[c] == rows[("rotate", 0.0)][c] for c in COLUMNS)  # one baseline for both series
    for moved in (shifted, rotated):
        assert float(moved["SSIM"]) < 1 and float(moved["SSIMlow"]) < 1 and float(moved["LMD"]) > 1
        assert moved["AVSu"] == ""
    png = prefix.with_name("fig_fig5.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
