"""Every entry point that loads a checkpoint answers a bad one (random bytes, a truncated file, a
checkpoint of the wrong kind) with one error line and exit status 2, never a traceback (issue 13):
``realtime``, ``tools/evaluate.py``, ``tools/bench.py``, ``tools/export_trt.py``, ``tools/sync_score.py``
and ``python -m train.run``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.bundled import ASSETS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, small_checkpoint, lip_expert_checkpoint, avhubert_checkpoint) -> dict[str, Path]:
    """Files no loader should accept as what it wants: ``random``, ``truncated`` (half a generator),
    ``truncated-fairseq`` (half an AV-HuBERT), and real checkpoints of each kind for the wrong-kind cases."""
    folder = tmp_path_factory.mktemp("bad")
    files = {"random": folder / "random.pt", "truncated": folder / "truncated.pt",
             "truncated-fairseq": folder / "truncated_avhubert.pt"}
    files["random"].write_bytes(os.urandom(4096))
    data = small_checkpoint.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    data = avhubert_checkpoint.read_bytes()
    files["truncated-fairseq"].write_bytes(data[: len(data) // 2])
    files.update({"generator": small_checkpoint, "expert": lip_expert_checkpoint, "avhubert": avhubert_checkpoint})
    return files


def _fake_data(folder: Path) -> Path:
    """A data folder whose manifest lists one training clip (the loaders fail before any clip is read)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.csv").write_text("clip,speaker,split,frames,frames_with_face,source\n"
                                         "s1__x,s1,train,75,75,x.mpg\n")
    return folder


def _commands(name: str, path: Path, tmp: Path) -> list:
    """``(main, argv)`` of the entry point ``name`` given the bad file ``path``."""
    video, speech = str(ASSETS / "demo_face.png"), str(ASSETS / "demo_speech.wav")
    empty = tmp / "empty"
    empty.mkdir(exist_ok=True)
    if name == "realtime":
        from realtime.cli import main

        return main, ["run", "--video", video, "--audio", speech, "--out", str(tmp / "x.mp4"), "--checkpoint",
                      str(path), "--backend", "torch", "-q"]
    if name.startswith("evaluate"):
        from tools.evaluate import main

        return main, ["--reference", str(empty), "--shift", "2", "--" + name.split("-")[1], str(path)]
    if name == "bench":
        from tools.bench import main

        return main, ["--checkpoint", str(path), "--no-pipeline"]
    if name == "export_trt":
        from tools.export_trt import main

        return main, ["--checkpoint", str(path), "--out", str(tmp / "engine")]
    if name == "sync_score":
        from tools.sync_score import main

        return main, [video, "--audio", speech, "--expert", str(path), "-q"]
    if name.startswith("train.run"):
        from train.run import main

        kind = name.split("-")[1]
        return main, [f"data={_fake_data(tmp / 'data')}", f"out={tmp / 'run'}", "loss.perceptual=0",
                      "audio_encoder=train", f"sync.kind={'syncnet' if kind == 'syncnet' else 'avhubert'}",
                      f"weights.{kind}={path}"]
    raise AssertionError(name)


# entry point -> the checkpoint of the wrong kind for it
CASES = {"realtime": "expert", "evaluate-avhubert": "generator", "evaluate-syncnet": "generator",
         "evaluate-inception": "avhubert", "evaluate-expert": "generator", "bench": "expert",
         "export_trt": "avhubert", "sync_score": "generator", "train.run-avhubert": "generator",
         "train.run-syncnet": "avhubert"}


@pytest.mark.parametrize("bad", ["random", "truncated", "wrong-kind"])
@pytest.mark.parametrize("entry", list(CASES))
def test_a_bad_checkpoint_is_one_line_and_exit_2(entry, bad, bad_files, tmp_path, capsys):
    if bad == "wrong-kind":
        bad = CASES[entry]
    elif bad == "truncated" and "avhubert" in entry:
        bad = "truncated-fairseq"
    path = bad_files[bad]
    main, argv = _commands(entry, path, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(path) in errors[0], err
