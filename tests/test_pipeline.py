"""realtime.pipeline driven frame by frame with a real clip and a small random generator."""

import numpy as np
import pytest

from engine import backends
from engine.audio import SAMPLE_RATE
from realtime.pipeline import Pipeline, PipelineConfig


@pytest.fixture
def pipeline(small_generator):
    p = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5))
    yield p
    p.close()


class Recording:
    """A backend that keeps the inputs of every call (``faces``, ``mels``: lists of arrays) and runs ``backend``."""

    def __init__(self, backend):
        self.backend, self.info = backend, backend.info
        self.faces, self.mels = [], []

    def run(self, faces, mels):
        self.faces.append(faces.copy())
        self.mels.append(mels.copy())
        return self.backend.run(faces, mels)


def nose_tip_y(frames, fps=25.0):
    """The y (frame pixels) of the nose tip (point 1) in the last of ``frames``, tracked as the pipeline does."""
    from engine.face import FaceTracker

    with FaceTracker() as tracker:
        faces = [tracker.track(f, i / fps) for i, f in enumerate(frames)]
    return float(faces[-1].landmarks[1, 1])


def feed(p, frames, audio, fps=25.0, audio_piece=320):
    """Push frames and 20 ms audio pieces in timestamp order; return what was pulled, with the audio time at pull."""
    out, a = [], 0
    for i, frame in enumerate(frames):
        t = i / fps
        while a < len(audio) and a / SAMPLE_RATE <= t:
            p.push_audio(audio[a: a + audio_piece], a / SAMPLE_RATE)
            a += audio_piece
        p.push_video(frame, t)
        out += [(f, a / SAMPLE_RATE) for f in p.pull()]
    if a < len(audio):
        p.push_audio(audio[a:], a / SAMPLE_RATE)
    p.end_audio()
    p.end_video()
    out += [(f, len(audio) / SAMPLE_RATE) for f in p.pull()]
    return out


@pytest.mark.parametrize("batching", ["ready", "fixed"])
def test_every_frame_comes_out_in_order_once_its_audio_has_arrived(small_generator, grid_frames, batching):
    frames, audio = grid_frames
    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5, batching=batching))
    out = feed(pipeline, frames, audio)
    pipeline.close()
    assert [f.t for f, _ in out] == [i / 25 for i in range(len(frames))]
    assert all(f.generated for f, _ in out)
    lookahead = pipeline.info.lookahead_s
    for f, audio_t in out[:-10]:  # before the end of the stream, windows wait for their audio
        assert audio_t >= f.t + lookahead - 1 / 25
    assert pipeline.stats.passthrough == 0
    waits = [f.wait_s for f, _ in out[:-5]]  # the last frames leave at the end of the stream
    if batching == "fixed":  # media-time wait: the lookahead, plus up to 4 frames of chunk filling
        assert pipeline.stats.chunks == 15
        assert min(waits) >= lookahead - 1 / 25 and max(waits) <= lookahead + 4 / 25 + 1 / 25
    else:  # k is a cap, not a wait: each frame leaves once its window's audio is in (20 ms audio pieces)
        assert pipeline.stats.chunks > 15 * 3
        assert min(waits) >= lookahead - 1 / 25 and max(waits) <= lookahead + 0.02 + 1e-6
    assert all(f.latency_s >= f.wait_s for f, _ in out)
    # only the mouth region changed: nothing above the nose tip (the frame's own landmark mask)
    diff = np.abs(out[30][0].image.astype(int) - frames[30]).sum(axis=2) > 0
    ys, xs = np.nonzero(diff)
    assert diff.any() and ys.min() > nose_tip_y(frames[:31]) - 1 and ys.max() < 270


def test_frames_without_face_pass_through_with_a_fade(pipeline, grid_frames):
    frames, audio = grid_frames
    frames = frames[:40].copy()
    frames[15:25] = 128  # ten frames without a face
    out = feed(pipeline, frames, audio)
    assert [f.t for f, _ in out] == [i / 25 for i in range(40)]
    gen = [f.generated for f, _ in out]
    # the region fades out over the first 3 lost frames (alpha 0.75, 0.5, 0.25), then passes through
    assert gen[:18] == [True] * 18 and gen[18:25] == [False] * 7 and all(gen[25:])
    for f, _ in out[18:25]:
        assert f.reason == "no_face"
    assert np.array_equal(out[20][0].image, frames[20])
    # a fading frame is pasted at the last face's box with the last face's landmark mask
    faded = np.nonzero(np.abs(out[16][0].image.astype(int) - frames[16]).sum(axis=2))[0]
    assert faded.size and faded.min() > nose_tip_y(frames[:15]) - 1
    assert pipeline.stats.events["face_lost"] == 1 and pipeline.stats.passthrough == 7
    # fading in: the first frame back changes less than a later one
    d_back = np.abs(out[25][0].image.astype(int) - frames[25]).sum()
    d_later = np.abs(out[35][0].image.astype(int) - frames[35]).sum()
    assert d_back < d_later


def test_missing_audio_does_not_hold_video_back(pipeline, grid_frames):
    frames, _ = grid_frames
    released = []
    for i, frame in enumerate(frames[:40]):
        pipeline.push_video(frame, i / 25)
        released += pipeline.pull()
    # no audio at all: frames still leave, with bounded latency, mouth closed on silence
    assert len(released) >= 40 - 20
    bound = pipeline.info.lookahead_s + pipeline.config.max_audio_wait_s + 1 / 25
    assert max(f.wait_s for f in released) <= bound
    assert pipeline.stats.events["audio_late"] >= len(released)


def test_ready_frames_are_batched_up_to_k(pipeline, grid_frames):
    frames, audio = grid_frames
    pipeline.push_audio(audio[: 15 * 640], 0.0)  # audio ahead of video (a file): every window is ready
    for i in range(12):
        pipeline.push_video(frames[i], i / 25)
    out = pipeline.pull()
    assert len(out) == 12 and pipeline.stats.chunks == 3  # 5 + 5 + 2: batches of at most k
    with pytest.raises(ValueError, match="batching"):
        Pipeline(pipeline.backend, PipelineConfig(batching="greedy"))


def test_short_last_chunk_and_timestamp_errors(small_generator, grid_frames):
    frames, audio = grid_frames
    pipeline = Pipeline(backends.load(small_generator, "onnxruntime"), PipelineConfig(chunk=5, batching="fixed"))
    out = feed(pipeline, frames[:7], audio[: 7 * 640])
    assert len(out) == 7 and pipeline.stats.chunks == 2
    with pytest.raises(ValueError, match="increase"):
        pipeline.push_video(frames[0], 0.1)


def test_wav2lip_style_model_uses_the_current_frame_as_identity(tmp_path, grid_frames):
    from conftest import wav2lip_file

    frames, audio = grid_frames
    _, path = wav2lip_file(tmp_path)
    p = Pipeline(backends.load(path, "torch"), PipelineConfig(chunk=5))
    try:
        out = feed(p, frames[:10], audio[: 10 * 640])
    finally:
        p.close()
    assert len(out) == 10 and all(f.generated for f, _ in out)
    assert p.info.mel_offset_s == 0.0


def test_lip_sketch_generator_gets_the_identity_references_lip_points_in_each_frames_pose(grid_frames):
    """For a generator with info.identity_lips the pipeline hands over, with the held identity reference, that
    frame's tracked lip and jaw points moved into each frame's head pose (engine.face.posed_lip_shape), in face
    sides (engine.inputs), and every frame is generated."""
    from engine.face import FaceTracker, box_pixels, lip_shape
    from engine.inputs import identity_lip_points
    from engine.models.generator import Generator, GeneratorConfig

    frames, audio = grid_frames
    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", lip_sketch=True)).eval()
    recording = Recording(backends.load(gen, "torch"))
    p = Pipeline(recording, PipelineConfig(chunk=5))
    try:
        out = feed(p, frames[:10], audio[: 10 * 640])
    finally:
        p.close()
    assert len(out) == 10 and all(f.generated for f, _ in out)
    sent = np.concatenate(recording.faces)[:, 0:2, -1, :66].transpose(0, 2, 1).reshape(-1, 2, 33, 2)
    with FaceTracker() as tracker:  # the same tracking as the pipeline's; the identity: the first face
        faces = [tracker.track(frame, i / 25.0) for i, frame in enumerate(frames[:len(sent)])]
    boxes = np.array([box_pixels(f.box) for f in faces], np.float64)
    expected = identity_lip_points(faces[0].landmarks, boxes[0], np.stack([f.landmarks for f in faces]), boxes)
    own = lip_shape(faces[0].landmarks[None], boxes[:1])[0]
    assert np.abs(sent[:, 1] - own).max() < 1e-5 and np.abs(sent[0, 0] - own).max() < 1e-5  # frame 0: its own pose
    assert np.abs(sent - expected).max() < 1e-5


def test_file_driver_tracks_ahead_in_order_and_raises_source_errors(grid_frames):
    from engine.face import FaceTracker
    from realtime.runner import _TrackAhead

    frames, _ = grid_frames
    items = [(f, i / 25) for i, f in enumerate(frames[:12])]
    with FaceTracker() as inline:
        expected = [inline.track(f, t).box for f, t in items]
    with FaceTracker() as tracker:
        ahead = _TrackAhead(items, tracker, ahead=2)
        got = list(ahead)
        ahead.close()
    assert [t for _, t, _ in got] == [t for _, t in items]
    assert [face.box for _, _, face in got] == expected  # the same smoothing, frame by frame
    assert ahead.tracking_s > 0

    def broken():
        yield frames[0], 0.0
        raise OSError("truncated")

    with FaceTracker() as tracker:
        ahead = _TrackAhead(broken(), tracker)
        with pytest.raises(OSError, match="truncated"):
            list(ahead)
        ahead.close()


def test_generator_with_past_audio_gets_the_window_and_the_past_before_it(grid_frames):
    """A generator with lip_context (GeneratorInfo.mel_context = 19) gets mel inputs of 35 frames: the 0.2 s
    window the pipeline gives any generator, last, and the 19 mel frames of audio before it (silence before
    the stream's start); the lookahead, and so the wait for audio, does not change."""
    from engine.audio import melspectrogram, mel_window
    from engine.models.generator import Generator, GeneratorConfig

    frames, audio = grid_frames
    gen = Generator(GeneratorConfig(size=96, width=0.125, audio="expert", lip_sketch=True, lip_predictor="resting",
                                    lip_context=3)).eval()
    recording = Recording(backends.load(gen, "onnxruntime"))
    p = Pipeline(recording, PipelineConfig(chunk=5))
    try:
        out = feed(p, frames[:30], audio[: 30 * 640])
    finally:
        p.close()
    assert len(out) == 30 and all(f.generated for f, _ in out)
    assert p.info.lookahead_s == pytest.approx(0.125)
    mels = np.concatenate(recording.mels)[:, 0]
    assert mels.shape == (30, 80, 35)
    batch = melspectrogram(audio[: 30 * 640])
    for i in (0, 3, 20):  # the batch mel's windows (the stream's mel equals it within 2e-6 before its end)
        assert np.abs(mels[i] - mel_window(batch, i / 25, -0.1, 19)).max() < 1e-4
    assert np.all(mels[0][:, :27] == -4.0)  # before the first sample: silence
