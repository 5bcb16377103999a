"""The synchronous streaming core (DESIGN.md "The streaming core").

``Pipeline`` takes video frames and driving audio with their timestamps and
gives back composited frames, in order, as soon as they can be made:

* each frame is tracked on arrival (``FaceTracker``) and its face cropped;
* audio goes into a ``MelStream``; a frame's 0.2 s mel window is ready once
  the audio it covers has arrived (``GeneratorInfo.lookahead_s`` past the
  frame);
* a frame with a face goes to the generator as soon as its mel window is
  ready (``batching="ready"``, the default): the frames ready at that moment
  run in one call, at most k (default 5), so k caps a batch and is never a
  wait (DESIGN.md "The streaming core"). ``batching="fixed"`` keeps full
  chunks of k for GPU throughput: a chunk runs once all its windows are
  ready, or earlier, shorter, when the oldest frame has waited
  ``max_chunk_wait_s`` or the stream ends;
* the backend generates the k faces at once; the compositor pastes them
  back with a feathered mask over lips and jaw, built from the frame's own
  landmarks (``engine.compose.landmark_mask``), and marks the pasted region
  with the invisible watermark (``engine.provenance``, README "Disclosure").

Frames without a face pass through unchanged; the generated region fades
out over ``fade_frames`` when the face is lost (at its last box, with the
mask of its last landmarks) and fades in when it returns. When audio is
missing for more than ``max_audio_wait_s`` past what a frame needs, the
frame runs with silence (the mouth closes) rather than holding video back.
Every such event is counted in :class:`PipelineStats`.

The pipeline holds no thread and reads no clock except to *measure* its own
compute time, so tests drive it frame by frame and get the same result
every time. Added latency of a frame = (media clock when it is released −
its timestamp) + the compute time of its chunk, where the media clock is
the newest timestamp pushed (video or audio): for a source that delivers in
real time, this is the delay the pipeline adds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.audio import MEL_WINDOW, SAMPLE_RATE, MelStream, window_start
from engine.compose import Compositor
from engine.face import Box, Face, FaceTracker, box_pixels, crop
from engine.inputs import generator_faces, identity_lip_points
from engine.provenance import EMBED_MASK_LEVEL, embed_watermark, mask_blocks
from engine.backends import Backend

STAGES = ("tracking", "mel", "generator", "compositing")
BATCHING = ("ready", "fixed")
TRACK = object()  # push_video's default: the pipeline tracks the frame itself


@dataclass
class PipelineConfig:
    """Streaming parameters.

    chunk: k, the most frames per generator call.
    batching: ``"ready"`` (a frame runs as soon as its mel window is ready,
        with the others ready then, up to k) or ``"fixed"`` (full chunks of
        k, for GPU throughput; adds up to (k-1) frame intervals of latency).
    max_chunk_wait_s: ``fixed`` only: longest a frame waits for its chunk to
        fill (media time).
    max_audio_wait_s: how long past its lookahead a frame waits for audio
        before it runs with silence.
    fade_frames: frames over which the generated region fades in / out.
    identity_refresh_s: a held identity reference is renewed this often.
    silence_level: a mel window whose loudest bin is below this (normalised
        units, -4 = silence) counts as silent.
    watermark: mark each generated frame inside its paste mask
        (:func:`engine.provenance.embed_watermark`; its time counts as compositing).
    detail: keep the input's own detail where the generated face agrees with it
        (:func:`engine.compose.transfer_detail`); ``False`` pastes the generator's pixels as they are.
    label: text of a visible corner badge drawn on the live outputs
        (virtual camera, WebRTC: :func:`realtime.sinks.draw_label`); ``None``: no badge.
    label_corner: ``top-left``, ``top-right``, ``bottom-left`` or ``bottom-right``.
    """

    chunk: int = 5
    batching: str = "ready"
    max_chunk_wait_s: float = 0.2
    max_audio_wait_s: float = 0.3
    fade_frames: int = 4
    identity_refresh_s: float = 10.0
    silence_level: float = -2.5
    watermark: bool = True
    detail: bool = True
    label: str | None = None
    label_corner: str = "top-left"


@dataclass
class OutputFrame:
    """One frame out of the pipeline.

    image: H×W×3 uint8 RGB. t: its timestamp (s), as pushed.
    latency_s: added latency (see module doc) = ``wait_s`` (media time the
    frame waited for its chunk and audio; deterministic) + the measured
    compute time of its chunk. generated: the mouth was
    re-rendered (False: passed through). reason: why it passed through
    (``"no_face"``), or ``None``. box: the face box the mouth was pasted at
    (frame pixels), or ``None`` (no face): what the live sync gauge crops.
    """

    image: np.ndarray
    t: float
    latency_s: float
    wait_s: float
    generated: bool
    reason: str | None = None
    box: Box | None = None


@dataclass
class PipelineStats:
    """Counters, per-frame added latencies and per-stage compute seconds."""

    frames_in: int = 0
    frames_out: int = 0
    generated: int = 0
    passthrough: int = 0
    events: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    stage_s: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    chunks: int = 0

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] = self.events.get(event, 0) + n

    def latency_percentiles(self) -> tuple[float, float]:
        """(p50, p95) of added latency in seconds (0, 0 before any frame)."""
        if not self.latencies:
            return 0.0, 0.0
        p50, p95 = np.percentile(self.latencies, [50, 95])
        return float(p50), float(p95)


@dataclass
class _Frame:
    image: np.ndarray
    t: float
    box: Box | None = None
    landmarks: np.ndarray | None = None  # [478, 2] frame px of the face pasted at ``box``
    crop: np.ndarray | None = None
    alpha: float = 0.0
    mel_start: int = 0
    reason: str | None = None


class Pipeline:
    """Push video and audio with timestamps, pull composited frames (module doc).

    Args:
        backend: an :class:`engine.backends.Backend` (its ``info`` sets
            face size, mel window position, identity policy, crop style).
        config: :class:`PipelineConfig`.
        tracker: a :class:`FaceTracker` (default: one for the backend's crop style).
    """

    def __init__(self, backend: Backend, config: PipelineConfig | None = None, tracker: FaceTracker | None = None):
        self.backend = backend
        self.info = backend.info
        self.config = config or PipelineConfig()
        if self.config.chunk < 1:
            raise ValueError("chunk must be ≥ 1")
        if self.config.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, not {self.config.batching!r}")
        self.tracker = tracker or FaceTracker(crop=self.info.crop)
        self.compositor = Compositor(self.info.size, detail=self.config.detail)
        self.mel = MelStream()
        self.stats = PipelineStats()
        self._pending: deque[_Frame] = deque()
        self._out: list[OutputFrame] = []
        self._audio_origin: float | None = None
        self._clock = float("-inf")
        self._last_t = float("-inf")
        self._video_done = False
        self._alpha = 0.0
        self._last_box: Box | None = None
        self._last_landmarks: np.ndarray | None = None
        self._missed = 0
        self._identity: np.ndarray | None = None
        self._identity_landmarks: np.ndarray | None = None  # [478, 2] its landmarks (info.identity_lips)
        self._identity_box: np.ndarray | None = None  # [4] its whole-pixel crop box
        self._identity_t = float("-inf")

    # -- input -------------------------------------------------------------
    def push_video(self, frame: np.ndarray, t: float, face: Face | None | object = TRACK) -> None:
        """Add a video frame (H×W×3 uint8 RGB) shown at ``t`` seconds; timestamps must increase.

        ``face``: by default the pipeline tracks the frame itself. A driver
        that tracks ahead in another thread (``run_file``) passes what
        ``self.tracker.track(frame, t)`` returned for this frame, called in
        frame order, and counts that time itself.
        """
        if t <= self._last_t:
            raise ValueError(f"video timestamps must increase: {t} after {self._last_t}")
        self._last_t = t
        self._clock = max(self._clock, t)
        self.stats.frames_in += 1
        t0 = time.perf_counter()
        if face is TRACK:
            face = self.tracker.track(frame, t)
        f = _Frame(frame, t)
        S, fade = self.info.size, 1.0 / max(1, self.config.fade_frames)
        if face is not None:
            self._last_box, self._last_landmarks, self._missed = face.box, face.landmarks, 0
            self._alpha = min(1.0, self._alpha + fade)
        else:
            self._missed += 1
            self._alpha = max(0.0, self._alpha - fade)
            if self._missed == 1:
                self.stats.count("face_lost")
        box = face.box if face is not None else (self._last_box if self._alpha > 0 else None)
        if box is not None:
            # fading out after a loss: the last face's box and, with it, its landmarks' mask
            landmarks = face.landmarks if face is not None else self._last_landmarks
            f.box, f.landmarks, f.alpha, f.crop = box, landmarks, self._alpha, crop(frame, box, S)
            if face is not None and (self._identity is None or t - self._identity_t >= self.config.identity_refresh_s):
                self._identity, self._identity_t = f.crop, t
                self._identity_landmarks, self._identity_box = landmarks, np.array(box_pixels(box), np.float64)
            f.mel_start = window_start(t - (self._audio_origin or 0.0), self.info.mel_offset_s)
        else:
            f.reason = "no_face"
        self.stats.stage_s["tracking"] += time.perf_counter() - t0
        self._pending.append(f)

    def push_audio(self, samples: np.ndarray, t: float | None = None) -> None:
        """Add driving audio: ``[n]`` float32 16 kHz mono in [-1, 1] starting at ``t`` seconds.

        ``t=None`` continues where the last piece ended. The first piece
        sets the audio origin (``t`` or 0). A gap is filled with silence;
        samples that overlap audio already pushed are dropped.
        """
        t0 = time.perf_counter()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._audio_origin is None:
            self._audio_origin = 0.0 if t is None else t
            for f in self._pending:  # frames pushed before any audio: re-anchor their windows
                f.mel_start = window_start(f.t - self._audio_origin, self.info.mel_offset_s)
        if t is not None:
            expected = self.mel.n_samples
            start = int(round((t - self._audio_origin) * SAMPLE_RATE))
            if start > expected:
                self.mel.push(np.zeros(start - expected, np.float32))
                self.stats.count("audio_gap_samples", start - expected)
            elif start < expected:
                samples = samples[expected - start:]
        self.mel.push(samples)
        self._clock = max(self._clock, self._audio_origin + self.mel.n_samples / SAMPLE_RATE)
        self.stats.stage_s["mel"] += time.perf_counter() - t0

    def end_audio(self) -> None:
        """The driving audio has ended: windows past its end are silence."""
        t0 = time.perf_counter()
        self.mel.close()
        self.stats.stage_s["mel"] += time.perf_counter() - t0

    def end_video(self) -> None:
        """No more frames: pending frames run in a last (possibly short) chunk at the next pull."""
        self._video_done = True

    # -- output ------------------------------------------------------------
    def pull(self) -> list[OutputFrame]:
        """Every frame that can be released now, in timestamp order."""
        while self._pending and self._step():
            pass
        out, self._out = self._out, []
        return out

    def _audio_ready(self, f: _Frame) -> bool:
        if self.mel.closed or self.mel.n_frames >= f.mel_start + MEL_WINDOW:
            return True
        if self._clock - f.t > self.info.lookahead_s + self.config.max_audio_wait_s:
            return True  # runs with silence where audio is missing
        return False

    def _step(self) -> bool:
        """Release the next run of frames if it is ready; False if nothing could be released."""
        pending, k = self._pending, self.config.chunk
        if pending[0].box is None:
            self._emit(pending.popleft(), None, 0.0)
            return True
        faces = []
        if self.config.batching == "ready":  # the frames whose windows are ready now, in order, up to k
            for i, f in enumerate(pending):
                if f.box is None:
                    continue
                if not self._audio_ready(f):
                    break
                faces.append(i)
                if len(faces) == k:
                    break
            if not faces:
                return False
        else:
            for i, f in enumerate(pending):
                if f.box is not None:
                    faces.append(i)
                    if len(faces) == k:
                        break
            full = len(faces) == k
            waited = self._clock - pending[0].t >= self.config.max_chunk_wait_s
            if not (full or waited or self._video_done):
                return False
            if not all(self._audio_ready(pending[i]) for i in faces):
                return False
        frames = [pending.popleft() for _ in range(faces[-1] + 1)]
        self._run_chunk([f for f in frames if f.box is not None], frames)
        return True

    def _run_chunk(self, chunk: list[_Frame], frames: list[_Frame]) -> None:
        t0 = time.perf_counter()
        lips = None
        if self.info.identity_lips:  # the reference's lip points where each frame's head holds them
            lips = identity_lip_points(self._identity_landmarks, self._identity_box,
                                       np.stack([c.landmarks for c in chunk]),
                                       np.array([box_pixels(c.box) for c in chunk], np.float64))
        faces = generator_faces(np.stack([c.crop for c in chunk]), self._identity, self.info, lips)
        past = self.info.mel_context  # the generator's mel input: the window and the past before it
        mels = np.stack([self.mel.frames(c.mel_start - past, c.mel_start + MEL_WINDOW) for c in chunk])[:, None]
        missing = sum(not self.mel.closed and self.mel.n_frames < c.mel_start + MEL_WINDOW for c in chunk)
        if missing:
            self.stats.count("audio_late", missing)
        silent = int((mels.reshape(len(chunk), -1).max(axis=1) < self.config.silence_level).sum())
        if silent:
            self.stats.count("silent", silent)
        generated = self.backend.run(faces, mels)
        t1 = time.perf_counter()
        self.stats.stage_s["generator"] += t1 - t0
        self.stats.chunks += 1
        results = {}
        for c, g in zip(chunk, generated):
            results[id(c)] = self.compositor.paste(c.image, c.box, g.transpose(1, 2, 0), c.alpha, c.crop,
                                                   landmarks=c.landmarks)
            if self.config.watermark and c.landmarks is not None and c.alpha > 0:
                blocks = mask_blocks(c.landmarks, c.box, c.image.shape, EMBED_MASK_LEVEL / c.alpha)
                embed_watermark(results[id(c)], blocks, inplace=True)
        t2 = time.perf_counter()
        self.stats.stage_s["compositing"] += t2 - t1
        for f in frames:
            self._emit(f, results.get(id(f)), t2 - t0)
        if self._pending:
            oldest = min((f.mel_start for f in self._pending if f.box is not None), default=None)
            if oldest is not None:
                self.mel.discard_before(max(0, oldest - self.info.mel_context))

    def _emit(self, f: _Frame, image: np.ndarray | None, compute_s: float) -> None:
        wait = max(0.0, self._clock - f.t)
        generated = image is not None
        out = OutputFrame(image if generated else f.image, f.t, wait + compute_s, wait, generated, f.reason, f.box)
        self._out.append(out)
        st = self.stats
        st.frames_out += 1
        st.latencies.append(out.latency_s)
        if generated:
            st.generated += 1
        else:
            st.passthrough += 1
            st.count(f.reason or "passthrough")

    def close(self) -> None:
        """Release the face tracker."""
        self.tracker.close()
