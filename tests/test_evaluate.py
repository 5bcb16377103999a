"""tools/evaluate.py on real GRID clips of ../shared/data/video: against themselves
and against the outputs of ``realtime run`` (a small random generator), with
random-weight AV-HuBERT, SyncNet and Inception files in their published
layouts; missing model files, failing videos, and the Fig. 5 analysis."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, data_file

from tools.evaluate import COLUMNS, main

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


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table: header and rows by their first cell."""
    lines = [line.split() for line in out.splitlines() if line and not line.startswith((" ", "wrote"))]
    return {line[0]: line for line in lines}


def test_every_column_against_itself_and_realtime_outputs(reference_dir, realtime_dir, avhubert_checkpoint,
                                                          syncnet_checkpoint, inception_checkpoint, tmp_path,
                                                          capsys):
    prefix = tmp_path / "out" / "table"
    status = main(["--generated", str(reference_dir), str(realtime_dir), "--reference", str(reference_dir),
                   "--avhubert", str(avhubert_checkpoint), "--syncnet", str(syncnet_checkpoint),
                   "--inception", str(inception_checkpoint), "--fid-step", "40", "--out", str(prefix)])
    out = capsys.readouterr().out
    print(out)
    assert status == 0
    rows = table_rows(out)
    assert rows["Method"] == ["Method", "Videos", "SSIM↑", "PSNR↑", "FID↓", "LMD↓", "LSE-C↑", "LSE-D↓", "AVSu↑",
                              "AVSm↑", "AVSv↑"]
    assert "n/a" not in out and "failed" not in out
    itself, realtime = rows["reference"], rows["realtime"]
    assert itself[1] == "2" and realtime[1] == "1"
    # a video against itself: perfect similarity, no landmark distance, AVSm = AVSv = 1
    assert itself[2] == "1.0000" and itself[3] == "inf" and itself[5] == "0.000"
    assert itself[9] == itself[10] == "1.0000" and abs(float(itself[4])) < 0.01
    # generated mouths differ from the ground truth
    assert float(realtime[2]) < 1 and math.isfinite(float(realtime[3])) and float(realtime[5]) > 0
    assert float(realtime[9]) < 1 and float(realtime[10]) < 1

    with open(prefix.with_name("table.csv")) as f:
        table = list(csv.DictReader(f))
    assert [r["Method"] for r in table] == ["reference", "realtime"]
    assert all(r[c] != "" for r in table for c in COLUMNS)
    report = json.loads(prefix.with_name("table.json").read_text())
    assert len(report["videos"]) == 3 and report["failures"] == [] and report["missing"]["realtime"] == {}
    assert [(v["Method"], v["Video"]) for v in report["videos"]] == [("reference", CLIPS[0]), ("reference", CLIPS[1]),
                                                                     ("realtime", CLIPS[0])]
    with open(prefix.with_name("table_videos.csv")) as f:
        assert len(list(csv.DictReader(f))) == 3


def test_missing_files_and_failing_videos_are_reported(reference_dir, tmp_path):
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
    row = table_rows(proc.stdout)["method"]
    assert row[1] == "1" and row[2] == "1.0000" and row[3] == "100.00"  # TalkLip's PSNR of identical frames
    assert row[4] == "n/a" and row[6:] == ["n/a"] * 5
    assert "FID: n/a, needs --inception" in proc.stdout and "LSE-C: n/a, needs --syncnet" in proc.stdout
    assert "AVSu: n/a, needs --avhubert" in proc.stdout
    assert "failed: method/grid_lbax4n" in proc.stdout and "not in the reference folder, skipped: method/unrelated.mp4" in proc.stdout
    report = json.loads(prefix.with_name("eval.json").read_text())
    assert report["methods"][0]["FID"] is None and report["methods"][0]["Failed"] == 1
    assert report["missing"]["method"]["AVSm"].startswith("needs --avhubert")
    assert [f["video"] for f in report["failures"]] == ["grid_lbax4n"]

    bad = subprocess.run([sys.executable, "-m", "tools.evaluate", "--generated", str(generated), "--reference",
                          str(reference_dir), "--syncnet", str(tmp_path / "missing.model")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert bad.returncode == 2 and "no such checkpoint" in bad.stderr


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
    assert float(base["SSIM"]) == 1.0 and float(base["LMD"]) == 0.0
    assert all(base[c] == rows[("rotate", 0.0)][c] for c in COLUMNS)  # one baseline for both series
    for moved in (shifted, rotated):
        assert float(moved["SSIM"]) < 1 and float(moved["LMD"]) > 1 and moved["AVSu"] == ""
    png = prefix.with_name("fig_fig5.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
