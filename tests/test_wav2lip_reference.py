"""tools/wav2lip_reference.py, the baseline of ``tools/bench.py --race``: the procedure of Wav2Lip's
inference.py on a real clip, with random weights in the published wav2lip.pth layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from conftest import data_file, wav2lip_file

from engine.audio import load_audio, melspectrogram
from engine.media import read_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import wav2lip_reference  # noqa: E402


def test_its_mel_is_the_wav2lip_mel_of_the_pipeline():
    wav = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    assert np.abs(wav2lip_reference.wav2lip_mel(wav) - melspectrogram(wav)).max() < 1e-4


def test_it_dubs_a_clip_as_inference_py_does(tmp_path):
    torch.set_num_threads(1)
    _, ckpt = wav2lip_file(tmp_path)
    video, out = data_file("video/grid_bbaf2n.mpg"), tmp_path / "out.mp4"
    # speech of 1.5 s: the output has 1.5 s of frames (the mel chunks), not the video's 3 s
    wav = tmp_path / "speech.flac"  # not a wav: converted with ffmpeg first, as the original does
    import subprocess

    subprocess.run(["ffmpeg", "-v", "error", "-i", str(data_file("audio/cmuarctic_a0007.wav")), "-t", "1.5",
                    str(wav)], check=True)
    assert wav2lip_reference.main(["--checkpoint_path", str(ckpt), "--face", str(video), "--audio", str(wav),
                                   "--box", "60", "220", "100", "260", "--outfile", str(out),
                                   "--wav2lip_batch_size", "16"]) == 0
    import av

    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1
    # 121 mel frames: chunks start at int(i·3.2) for i = 0 … 33 (the last one ending at 121), and one
    # more that ends at the mel's end
    assert sum(1 for _ in read_frames(out)) == 35
