"""The bundled default generator: it loads, the demo runs, and its mouth follows the speech.

These tests are about the committed file ``engine/assets/generator.pt``
(see its model card ``engine/assets/generator.md``). The mouth test drives
the real pipeline with a GRID speaker the model never saw (s20,
``grid_brbk7n.mpg``) and measures mouth opening on the *output* frames with
MediaPipe's landmarks, so it checks what a viewer sees.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import data_file
from engine.bundled import ASSETS
from engine.face import FaceTracker
from engine.bundled import GENERATOR as DEFAULT_CHECKPOINT

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="no bundled generator.pt in engine/assets")


def mouth_opening(frames) -> np.ndarray:
    """Inner-lip gap (MediaPipe points 13, 14) over face height (10 → 152), per frame."""
    out = []
    with FaceTracker() as tracker:
        for i, frame in enumerate(frames):
            face = tracker.track(frame, i / 25)
            lm = face.landmarks
            out.append(abs(lm[14, 1] - lm[13, 1]) / abs(lm[152, 1] - lm[10, 1]))
    return np.array(out)


def run_pipeline(frames, audio):
    from engine import backends
    from realtime.pipeline import Pipeline

    p = Pipeline(backends.load(DEFAULT_CHECKPOINT, "onnxruntime"))
    out = []
    try:
        p.push_audio(audio, 0.0)
        p.end_audio()
        for i, f in enumerate(frames):
            p.push_video(f, i / 25)
            out += p.pull()
        p.end_video()
        out += p.pull()
    finally:
        p.close()
    assert all(o.generated for o in out)
    return [o.image for o in out]


def test_bundled_model_card_and_kind():
    from engine.models import load as load_generator

    g = load_generator(DEFAULT_CHECKPOINT)
    assert g.info.kind == "dubcam" and g.info.size == 96
    assert "val" in g.meta and g.meta["steps"] > 0
    assert (ASSETS / "generator.md").is_file()
    # its lip predictor (python -m train.lips) was closer to the held-out speakers' lips than their resting shape
    lips = g.meta["lips"]["val"]
    assert g.config.lip_predictor == "resting" and lips["error_px"] < lips["resting_error_px"] and lips["gap_r"] > 0.3


def test_mouth_follows_the_speech_on_an_unseen_speaker():
    """Mouth opening on the output follows the real mouth when driven by the clip's own speech,
    and much less when driven by another speech file (so it is the audio that moves it)."""
    from engine.audio import load_audio
    from engine.media import read_frames

    path = data_file("video/grid_brbk7n.mpg")
    frames = [f for f, _ in read_frames(path)]
    speech = load_audio(path)
    other = load_audio(data_file("audio/cmuarctic_a0007.wav"))[: len(speech)]
    truth = mouth_opening(frames)
    r_own = np.corrcoef(mouth_opening(run_pipeline(frames, speech)), truth)[0, 1]
    r_other = np.corrcoef(mouth_opening(run_pipeline(frames, other)), truth)[0, 1]
    print(f"mouth opening vs the real mouth: r = {r_own:.2f} with the clip's speech, {r_other:.2f} with another")
    assert r_own > 0.2
    assert r_own > r_other + 0.1


def test_demo_command(tmp_path):
    from test_cli import probe, speech_seconds
    from engine.bundled import DEMO_SPEECH

    out = tmp_path / "demo.mp4"
    proc = subprocess.run([sys.executable, "-m", "realtime.cli", "demo", "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout and "fps" in proc.stdout
    info = probe(out)
    dur = speech_seconds(DEMO_SPEECH)
    assert info["video"] == "h264" and info["audio"] == "aac"
    assert abs(info["video_s"] - dur) <= 0.1 and abs(info["audio_s"] - dur) <= 0.1


def test_bundled_lip_expert_is_the_generators_frozen_audio_encoder():
    """Paper 3.2: the bundled generator's audio encoder is the bundled lip expert's, unchanged by training;
    the expert's confidence is higher on a real clip with its own speech than with the speech 0.4 s late."""
    from engine.audio import load_audio
    from engine.models import load as load_generator
    from engine.face import track_landmarks
    from engine.media import read_frames
    from engine.metrics import expert_crops, expert_sync
    from engine.models.syncnet import SyncNetColor

    expert = SyncNetColor.from_checkpoint(ASSETS / "lip_expert.pth")
    g = load_generator(DEFAULT_CHECKPOINT)
    assert g.config.audio == "expert" and expert.width == g.config.width
    for key, value in expert.audio_encoder.state_dict().items():
        assert torch.equal(g.audio_encoder.state_dict()[key].float(), value.float()), key
    path = data_file("video/grid_sbwe5n.mpg")  # s32: a speaker neither network saw
    frames = [f for f, _ in read_frames(path)]
    crops, valid = expert_crops(frames, track_landmarks(frames))
    speech = load_audio(path)
    own = expert_sync(expert, crops, speech, valid=valid, max_offset=0)["confidence"]
    late = expert_sync(expert, crops, np.concatenate([np.zeros(6400, np.float32), speech]), valid=valid,
                       max_offset=0)["confidence"]
    print(f"expert confidence: {own:.3f} in sync, {late:.3f} with the speech 0.4 s late")
    assert own > late
