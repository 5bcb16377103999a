"""``realtime enroll``: a personal generator from a minute or three of one person speaking (issue 10).

The bundled generator (or ``--checkpoint``) is fine-tuned on one recording
of the user talking in their own voice, on the CPU, within a time budget:

1. the recording is preprocessed as training data is
   (:func:`train.preprocess.preprocess_recording`: MediaPipe landmarks, the
   eye-anchored face crop, the mel) and checked (:func:`check_recording`);
2. its last :data:`HELD_OUT` (20 %) is held out: never trained on, it is
   what the scores before and after are measured on;
3. the first 80 % trains the generator with ``train.run``'s own step (not a
   copy): L1 (lower half weighted), the image-gradient loss and the lip
   expert's sync loss, the audio encoder frozen (the
   expert's, paper §3.2), so that timing stays the base model's and
   appearance (teeth, lips, skin) becomes the person's;
4. one file is written (atomically): the weights in dubcam's generator
   format, whose ``meta["enrollment"]`` is the card: which video (name,
   SHA-256, seconds), which frames were trained on and held out, the
   budget, steps and seconds spent, peak memory, and the held-out scores
   before and after (``train.monitor``: sharpness, opening, coupling,
   lip-landmark error, SSIM of the lower face, the expert's confidence).

``realtime run | cam | serve --checkpoint me.dubcam`` then use it (it is an
ordinary generator checkpoint). ``record_enrollment`` records the user from
a camera and microphone first, prompting Harvard sentences to read aloud.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import shutil
import tempfile
import time
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

log = logging.getLogger("realtime.enroll")

HELD_OUT = 0.2
"""Fraction of the recording, at its end, that is never trained on: the scores are measured there."""
MIN_SPEECH_S = 20.0
"""Least speech (seconds of voiced 20 ms frames, :func:`speech_seconds`) an enrollment needs."""
MIN_FACE_FRACTION = 0.8
"""Least fraction of frames with a face."""
MAX_SHOT_CHANGES = 0
"""Most cuts (:func:`shot_changes`: another person, an edit) an enrollment may hold: one continuous shot."""
SCORE_FRAMES = 250
"""Held-out frames scored while training (10 s); the scores before and after use all of them."""

# The Harvard sentences (IEEE Recommended Practice for Speech Quality Measurements, 1969; lists 1 and 2),
# phonetically balanced, public domain: what the user reads aloud while ``record_enrollment`` films them.
HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
]

GOOD_VIDEO = """\
What makes a good enrollment video: one person, alone in the shot, face to
the camera and well lit, the face at least the generator's size (96 px; a
webcam at arm's length is plenty), speaking in their own voice for one to
three minutes (at least 20 s of speech; read the Harvard sentences that
--camera shows, or talk freely), one continuous shot (no cuts), little
background noise. Its last 20 % is held out to score the result."""


class EnrollError(ValueError):
    """A recording that cannot serve an enrollment; the message is one line that says why."""


def speech_seconds(audio: np.ndarray, sample_rate: int = 16000) -> float:
    """Seconds of speech in ``audio``: 20 ms frames whose RMS is within 30 dB of the loud frames.

    ``audio``: ``[n]`` float32 mono in [-1, 1]. A frame counts when its RMS
    is above ``max(1e-3, p95 · 10^(−30/20))`` (p95: the 95th percentile of
    the RMS of the frames above 1e-3, so that added silence changes
    nothing), so silence, hum and room tone do not count. Returns 0.0 for
    silence.
    """
    hop = sample_rate // 50
    n = len(audio) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt((np.asarray(audio[: n * hop], np.float64).reshape(n, hop) ** 2).mean(axis=1))
    audible = rms[rms > 1e-3]
    if not len(audible):
        return 0.0
    threshold = max(1e-3, float(np.percentile(audible, 95)) * 10 ** (-30 / 20))
    return float((rms > threshold).sum()) / 50


def shot_changes(faces: np.ndarray, boxes: np.ndarray, valid: np.ndarray) -> int:
    """Cuts between consecutive frames with a face: another person taking a turn, or an edit.

    A change is a frame whose face box centre moved more than half the box
    side, whose side changed by more than half, or whose face crop differs
    from the previous one by a mean absolute difference over
    ``max(0.12, 8 × the median difference)`` (pixel values in [0, 1]; a
    talking head moves its crop by 0.01–0.04 a frame, a cut to another
    person by about 0.18, GRID speakers at the same place included).

    ``faces``: ``[T, S, S, 3]`` uint8 crops; ``boxes``: ``[T, 4]`` (x0, y0,
    x1, y1) source pixels; ``valid``: ``[T]`` bool.
    """
    b, f = boxes[valid].astype(np.float64), faces[valid]
    if len(b) < 2:
        return 0
    side = np.maximum(b[:, 2] - b[:, 0], 1e-6)
    centre = np.stack([b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1) / 2
    moved = np.linalg.norm(np.diff(centre, axis=0), axis=1) > 0.5 * side[:-1]
    resized = np.abs(np.log(side[1:] / side[:-1])) > math.log(1.5)
    mad = np.array([np.abs(f[i + 1].astype(np.int16) - f[i]).mean() / 255 for i in range(len(f) - 1)])
    cut = mad > max(0.12, 8 * float(np.median(mad)))
    return int((moved | resized | cut).sum())


def check_recording(arrays: dict[str, np.ndarray], face_px: int, min_speech_s: float = MIN_SPEECH_S) -> None:
    """Raise :class:`EnrollError` (one line) unless the preprocessed recording can serve an enrollment.

    ``arrays``: :func:`train.preprocess.preprocess_recording`'s output;
    ``face_px``: the generator's face size S. Checked: a face in at least
    :data:`MIN_FACE_FRACTION` of the frames; no more than
    :data:`MAX_SHOT_CHANGES` cuts (:func:`shot_changes`); a median face crop
    of at least S source pixels; at least ``min_speech_s`` of speech.
    """
    valid = arrays["valid"]
    if valid.mean() < MIN_FACE_FRACTION:
        raise EnrollError(f"a face is found in only {100 * valid.mean():.0f} % of the frames (needs "
                          f"{100 * MIN_FACE_FRACTION:.0f} %): keep the face in view, facing the camera")
    cuts = shot_changes(arrays["faces"], arrays["boxes"], valid)
    if cuts > MAX_SHOT_CHANGES:
        raise EnrollError(f"the face changes abruptly {cuts} times (several people taking turns, or cuts): "
                          "enroll one person in one continuous shot")
    side = float(np.median(arrays["boxes"][valid, 2] - arrays["boxes"][valid, 0]))
    if side < face_px:
        raise EnrollError(f"the face is too small: its crop is {side:.0f} px, the generator draws {face_px} px; "
                          "come closer to the camera or record at a higher resolution")
    speech = speech_seconds(arrays["audio"])
    if speech < min_speech_s:
        raise EnrollError(f"only {speech:.1f} s of speech (needs {min_speech_s:.0f} s): talk for a minute or more")


PER_FRAME = ("faces", "boxes", "landmarks", "valid", "avhubert_audio", "roi_affine", "roi_frames", "roi_origin",
             "frame_size")


def split_recording(arrays: dict[str, np.ndarray], held_out: float = HELD_OUT) -> tuple[dict, dict]:
    """``(train, held-out)`` clip arrays: the frames before and from ``(1 − held_out)·T``, with their audio.

    Each part has every array of a clip file; ``mel`` is computed again
    from the part's own audio (frame ``i`` of a part starts at ``i / 25`` s
    of it).
    """
    from engine.audio import melspectrogram

    T = len(arrays["valid"])
    cut = int(round(T * (1 - held_out)))
    per_sample = 16000 / float(arrays["fps"])
    parts = []
    for lo, hi in ((0, cut), (cut, T)):
        part = {key: arrays[key][lo:hi] for key in PER_FRAME}
        part["audio"] = arrays["audio"][int(round(lo * per_sample)): int(round(hi * per_sample))]
        part["mel"] = melspectrogram(part["audio"])
        part["fps"] = arrays["fps"]
        parts.append(part)
    return parts[0], parts[1]


def enrollment_config(base_config: dict, data: Path, out: Path, minutes: float, threads: int | None,
                      held_out_frames: int) -> dict:
    """The ``train.run`` config of an enrollment: the bundled generator's recipe (``configs/default_cpu.yaml``:
    L1 with the lower half weighted, the image-gradient loss, the lip expert's sync loss) at a lower learning
    rate, one clip, no augmentation (the colour jitter would teach skin tones that are not the person's), no
    GAN (a fresh discriminator does not learn in minutes). No opening losses: fine-tuned with them on one
    person for 10 minutes, the mouth became a dark line over a blurred chin that the regressor and the
    landmarks read as an open mouth (held-out opening 0.29 → 1.02, lower-face SSIM 0.66 → 0.62; issue 10).
    Tried on jim_acosta (10 minutes, 2 shared cores, about 120 steps): with BatchNorm frozen (``freeze_norm``)
    sharpness held better (0.36 → 0.27) but lower-face SSIM fell (0.66 → 0.63); without the sync loss the
    mouth stopped moving (coupling 0.58 → 0.03). Neither is the default."""
    from engine.bundled import LIP_EXPERT
    from train.config import ModelConfig

    return {
        "data": str(data), "out": str(out), "init": str(data / "base.pt"),
        "model": {f.name: base_config[f.name] for f in fields(ModelConfig) if f.name in base_config},
        "audio_encoder": "expert" if base_config.get("audio") == "expert" else "train",
        "k": 5, "batch_size": 8, "lr": 1e-4, "steps": 10**7, "time_limit_min": minutes,
        "loss": {"l1": 10.0, "l1_lower_weight": 3.0, "grad": 5.0, "gan": 0.0, "perceptual": 0.0,
                 "sync": 0.3, "sync_start": 0, "opening": 0.0, "opening_amplitude": 0.0},
        "sync": {"kind": "syncnet"}, "weights": {"syncnet": str(LIP_EXPERT)},
        "augment": False, "identity": "held", "disc_width": 0.25, "disc_region": "lower",
        "monitor": {"every": 100, "clips": 1, "max_frames": min(SCORE_FRAMES, held_out_frames)},
        "threads": threads, "log_every": 25, "ckpt_every": 10**6, "device": "auto",
    }


def _score(gen, clip, expert, frames: int) -> dict[str, float]:
    from train.monitor import Monitor

    return Monitor([clip], k=5, n_clips=1, max_frames=frames, expert=expert)(gen)


def enroll(video: str | Path, out: str | Path, checkpoint: str | Path | None = None, minutes: float = 10.0,
           threads: int | None = None, progress: bool = True, min_speech_s: float = MIN_SPEECH_S) -> dict:
    """Fine-tune a generator on one person's recording (module doc); returns the card written into ``out``.

    Args:
        video: the recording: one person speaking in their own voice, any
            container and frame rate (resampled to 25 fps by timestamp).
        out: the file to write (``me.dubcam``); written only when the
            enrollment succeeded.
        checkpoint: the base generator (default: the bundled one).
        minutes: wall-clock budget for the whole enrollment, preprocessing
            and scoring included (training gets what is left, at least a
            quarter of it).
        threads: torch threads (None: torch's choice).
        progress: a tqdm bar over the training time, with the running
            held-out scores.
        min_speech_s: the least speech accepted (:data:`MIN_SPEECH_S`).

    Raises:
        EnrollError: a recording without a face, with several people or
            cuts, a face too small, too little speech (one line each).
        engine.audio.AudioError / engine.media.MediaError: a file without
            audio, or one that cannot be read.
        engine.checkpoints.CheckpointError: a base checkpoint that is not
            a dubcam generator.
    """
    from engine import models
    from engine.bundled import GENERATOR, LIP_EXPERT
    from engine.models.generator import Generator, save_generator
    from engine.models.syncnet import SyncNetColor
    from engine.provenance import sha256_file
    from train.data import load_clip
    from train.preprocess import Recording, preprocess_recording, write_manifest
    from train.run import train

    t0 = time.monotonic()
    video, out = Path(video), Path(out)
    base_path = Path(checkpoint) if checkpoint else GENERATOR
    if not video.is_file():
        raise FileNotFoundError(f"{video}: no such file")
    base = models.load(base_path)
    if not isinstance(base, Generator):
        raise EnrollError(f"{base_path}: enrollment fine-tunes a dubcam generator, not {type(base).__name__}")
    size = base.info.size
    log.info("preprocessing %s", video)
    try:
        arrays = preprocess_recording(Recording(video, "enrollee", f"enrollee__{video.stem}"), size)
    except ValueError as e:
        if "no face" in str(e):
            raise EnrollError(f"{video}: no face found in any frame") from e
        raise
    check_recording(arrays, size, min_speech_s)
    train_part, held_part = split_recording(arrays)
    T, n_train = len(arrays["valid"]), len(train_part["valid"])
    speech = speech_seconds(arrays["audio"])
    with tempfile.TemporaryDirectory(prefix="dubcam-enroll-") as tmp:
        work = Path(tmp)
        (work / "clips").mkdir()
        np.savez(work / "clips" / "enrollee__train.npz", **train_part)
        np.savez(work / "clips" / "enrollee__heldout.npz", **held_part)
        write_manifest(work, [{"clip": f"enrollee__{name}", "speaker": "enrollee", "split": split,
                               "frames": len(part["valid"]), "frames_with_face": int(part["valid"].sum()),
                               "source": str(video)}
                              for name, split, part in (("train", "train", train_part), ("heldout", "val", held_part))])
        shutil.copyfile(base_path, work / "base.pt")
        held = load_clip(work / "clips" / "enrollee__heldout.npz")
        expert = SyncNetColor.from_checkpoint(LIP_EXPERT).eval()
        t_score = time.monotonic()
        before = _score(base, held, expert, T - n_train)
        score_s = time.monotonic() - t_score
        log.info("held-out scores before: %s", _brief(before))
        left_min = minutes - (time.monotonic() - t0 + score_s) / 60 - 0.2
        if left_min < 1.0:
            log.warning("the budget of %.1f min is nearly spent on preprocessing and scoring: training %.1f min",
                        minutes, max(left_min, minutes / 4))
        train_min = max(left_min, minutes / 4)
        cfg = enrollment_config(base.config_dict(), work, work / "run", train_min, threads, T - n_train)
        bar = _ProgressBar(train_min * 60, enabled=progress)
        quiet = None if log.isEnabledFor(logging.INFO) else logging.WARNING
        with _log_level("train", quiet), bar:
            gen = train(cfg, on_step=bar.update)
        after = _score(gen, held, expert, T - n_train)
        log.info("held-out scores after: %s", _brief(after))
        steps, train_seconds = bar.step, round(bar.seconds)
    card = {
        "video": video.name, "video_sha256": sha256_file(video), "seconds": round(T / float(arrays["fps"]), 2),
        "speech_seconds": round(speech, 1), "frames": T, "train_frames": [0, n_train], "held_out_frames": [n_train, T],
        "base": str(base_path.name), "base_sha256": sha256_file(base_path), "budget_minutes": minutes,
        "steps": steps, "train_seconds": train_seconds, "wall_seconds": round(time.monotonic() - t0),
        "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "scores_before": before, "scores_after": after, "created": datetime.now(timezone.utc).isoformat(),
    }
    meta = dict(getattr(base, "meta", {}) or {})
    meta["enrollment"] = card
    save_generator(gen, out, meta, half=True)
    return card


def _brief(scores: dict[str, float]) -> str:
    keys = ("sharpness", "opening", "coupling", "lip_error", "ssim_low", "expert_conf")
    return "  ".join(f"{k} {scores[k]:.3f}" for k in keys if k in scores)


@contextlib.contextmanager
def _log_level(name: str, level: int | None):
    logger = logging.getLogger(name)
    old = logger.level
    if level is not None:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


class _ProgressBar:
    """tqdm over the training seconds, with the step and the last held-out scores (``train``'s ``on_step``)."""

    def __init__(self, total_s: float, enabled: bool):
        self.total_s, self.enabled, self.step, self.seconds, self.bar = total_s, enabled, 0, 0.0, None

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=round(self.total_s), unit="s", desc="enrolling",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} s {postfix}")
        return self

    def update(self, step: int, seconds: float, scores: dict | None) -> None:
        self.step, self.seconds = step, seconds
        if self.bar is None:
            return
        self.bar.n = min(round(seconds), self.bar.total)
        if scores:
            self.bar.set_postfix_str(f"step {step}, held out: {_brief(scores)}", refresh=False)
        self.bar.refresh()

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def record_enrollment(out: str | Path, seconds: float = 120.0, camera: str | int = 0, microphone: str | None = None,
                      size: tuple[int, int] | None = (1280, 720), say=print, check_every_s: float = 1.0) -> Path:
    """Film the user for an enrollment: camera + microphone → ``out`` (H.264 + AAC mp4, 25 fps by timestamp).

    While it records, ``say`` shows a Harvard sentence (:data:`HARVARD`) to
    read aloud every 6 s, and every ``check_every_s`` whether a face is in
    view (MediaPipe on the latest frame) and whether speech was heard in the
    last 3 s (a warning line when not). The audio is placed by its
    timestamps on the camera's clock (``realtime.clock.MediaClock``), so
    the two stay in sync whatever rate the camera runs at.

    Raises:
        realtime.devices.DeviceError: no camera or microphone opens.
        EnrollError: no frame came from the camera.
    """
    import threading

    from engine.face import FaceTracker
    from realtime.clock import MediaClock
    from realtime.sinks import Mp4Sink
    from realtime.sources import CameraSource, MicrophoneSource

    out = Path(out)
    clock = MediaClock()
    cam = CameraSource(clock, camera, size, 25.0)
    mic = MicrophoneSource(clock, microphone)
    blocks: list[tuple[np.ndarray, float]] = []
    stop = threading.Event()

    def pump():
        for block in mic:
            blocks.append(block)
            if stop.is_set():
                return

    pump_thread = threading.Thread(target=pump, name="dubcam-enroll-mic", daemon=True)
    pump_thread.start()
    sink, t0, next_line, next_check, line = None, None, 0.0, 0.0, 0
    say(f"recording {seconds:.0f} s: read each sentence aloud as it appears, in your own voice, facing the camera")
    try:
        with FaceTracker(hold=0) as tracker:
            for frame, t in cam:
                if t0 is None:
                    t0 = t
                    sink = Mp4Sink(out, 25.0, frame.shape[1], frame.shape[0])
                elapsed = t - t0
                if elapsed >= seconds:
                    break
                sink.write(frame, elapsed)
                if elapsed >= next_line:
                    say(f"[{elapsed:5.0f} s] {HARVARD[line % len(HARVARD)]}")
                    line, next_line = line + 1, next_line + 6.0
                if elapsed >= next_check:
                    next_check += check_every_s
                    if tracker.track(frame, elapsed) is None:
                        say(f"[{elapsed:5.0f} s] warning: no face in view: face the camera")
                    recent = [b for b, bt in list(blocks) if bt >= t - 3.0]
                    if elapsed > 3.0 and (not recent or speech_seconds(np.concatenate(recent)) < 0.3):
                        say(f"[{elapsed:5.0f} s] warning: no speech heard in the last 3 s: read the sentence aloud")
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        stop.set()
        cam.close()
        mic.close()
        pump_thread.join(timeout=2)
    if sink is None:
        raise EnrollError(f"no frame came from camera {camera}")
    n = int(round(min(seconds, elapsed) * 16000))
    audio = np.zeros(n, np.float32)
    for block, bt in blocks:
        start = int(round((bt - t0) * 16000))
        lo, hi = max(0, start), min(n, start + len(block))
        if hi > lo:
            audio[lo:hi] = block[lo - start: hi - start]
    sink.write_audio(audio)
    sink.close()
    return out
