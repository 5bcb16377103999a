"""The live sync gauge and the fallback decision (DESIGN.md "The streaming core").

Per session, over a sliding window of the last ``window_s`` seconds (4 by
default) of the frames a session sends, two signals:

* **the lip expert's verdict** (the bundled ``engine/assets/lip_expert.pth``,
  paper §3.2's SyncNet baseline): each 5-frame window of face crops (their
  lower halves, ``engine.models.syncnet.lower_halves``) is scored against the
  driving audio at every lag of ±``max_lag`` frames (the Wav2Lip mel window
  that starts at the window's first frame, shifted; a positive lag means the
  audio is late, as in ``engine.metrics.expert_sync``). Over the sliding
  window: ``confidence``, the mean cosine at lag 0; ``lag``, the lag with the
  highest mean cosine; ``margin``, the mean cosine at lag 0 minus its median
  over the lags (how clearly lag 0 stands out; about 0 when lag 0 is an
  arbitrary shift). Measured with the bundled expert on GRID and held-out
  clips (real video and our generator's dubs): in sync the best lag is 0–2
  frames and the margin 0.005–0.15; with audio 400 ms late, the margin is
  ≤ 0 and the best lag at the edge.
* **audio–mouth coupling**: the Pearson r, at lag 0, between the mouth
  opening of each frame and the speech's log-RMS envelope
  (``engine.metrics.speech_envelope`` / ``log_rms_at``, 40 ms centred windows), as
  ``engine.metrics.audio_mouth_coupling`` defines it, except that the
  opening is read from the face crop by the bundled mouth-opening regressor
  (``engine.models.opening``, R² 0.88 against the landmark gap on held-out
  speakers, under 1 ms a frame) instead of a second MediaPipe pass (about
  10 ms a frame). Shown, not acted on: on continuous speech it is weak even
  for real video (``audio_mouth_coupling``'s docstring).

The decision (:class:`SyncGauge.reading`): ``no_face`` while the last frame
had no face or one smaller than ``min_face_px``; else ``passthrough`` once the
expert's best lag has stayed more than ``sync_lag_max`` frames from 0 (3:
120 ms, outside the perceptual window of about −125 / +45 ms) for
``poor_for_s`` seconds, and back to ``dubbing`` once it has stayed within it
for ``good_for_s`` seconds. The gauge should be fed the *generated*
composites even while the session passes through (they are computed in any
case), so that it can see the sync come back and recover by itself.

Nothing here reads a clock: timestamps are the media times pushed, so tests
drive it frame by frame.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from engine.audio import MEL_SILENCE, MEL_WINDOW, SAMPLE_RATE, melspectrogram, window_start
from engine.metrics import log_rms_at
from engine.models.syncnet import EXPERT_FACE_SIZE, lower_halves

EXPERT_FRAMES = 5
STATES = ("dubbing", "passthrough", "no_face")


@dataclass
class GaugeConfig:
    """Parameters of :class:`SyncGauge` (module doc); times in seconds of media time, lags in frames."""

    fps: float = 25.0
    window_s: float = 4.0
    max_lag: int = 8
    sync_lag_max: int = 3
    poor_for_s: float = 3.0
    good_for_s: float = 2.0
    min_windows: int = 10
    stride: int = 2
    min_face_px: float = 48.0


@dataclass
class GaugeReading:
    """The gauge now.

    state: ``"dubbing"``, ``"passthrough"`` or ``"no_face"`` (:data:`STATES`);
    reason: why it is not dubbing, one short phrase, or None. lag: the best
    lag of the sliding window (frames, positive: audio late), None before
    ``min_windows`` windows. margin, confidence: see the module doc (NaN
    before any window). coupling: r in [-1, 1] (NaN before 3 frames or for a
    constant series). windows: 5-frame windows in the sliding window.
    """

    state: str
    reason: str | None
    lag: int | None
    margin: float
    confidence: float
    coupling: float
    windows: int

    @property
    def dub(self) -> bool:
        """Whether the session should send the generated mouth."""
        return self.state == "dubbing"

    def line(self) -> str:
        """One short status line, e.g. ``sync: dubbing, lag +0 fr, margin 0.031, coupling 0.42``."""
        lag = "-" if self.lag is None else f"{self.lag:+d} fr"
        text = f"sync: {self.state}, lag {lag}, margin {self.margin:.3f}, coupling {self.coupling:.2f}"
        return text + (f" ({self.reason})" if self.reason else "")

    def as_dict(self) -> dict:
        """JSON-ready (NaN → None)."""
        def num(x):
            return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
        return {"state": self.state, "reason": self.reason, "lag": self.lag, "margin": num(self.margin),
                "confidence": num(self.confidence), "coupling": num(self.coupling), "windows": self.windows}


@dataclass
class _Frame:
    t: float
    crop: np.ndarray | None  # [S, S, 3] uint8, or None: no usable face
    opening: float = math.nan


@dataclass
class _Window:
    t: float
    cos: np.ndarray  # [2·max_lag + 1], lag -max_lag … +max_lag


class SyncGauge:
    """The sliding-window sync gauge of one session (module doc).

    Args:
        expert: :class:`engine.models.syncnet.SyncNetColor` in eval mode (CPU).
        opening_net: :class:`engine.models.opening.MouthOpeningNet` in eval mode, or None (no coupling).
        config: :class:`GaugeConfig`.

    Feed it :meth:`push_audio` (the driving audio) and :meth:`push_frame`
    (one call per frame, in timestamp order); :meth:`reading` scores what has
    become scorable (a window needs audio up to ``max_lag`` frames + 0.2 s +
    half an STFT window past its first frame) and returns the decision.
    """

    def __init__(self, expert, opening_net=None, config: GaugeConfig | None = None):
        self.expert = expert
        self.opening_net = opening_net
        self.config = config or GaugeConfig()
        self._frames: deque[_Frame] = deque()
        self._windows: deque[_Window] = deque()
        self._pairs: deque[tuple[float, float, float]] = deque()  # (t, opening, envelope)
        self._audio = np.zeros(0, np.float32)
        self._audio_t0: float | None = None
        self._dropped = 0  # samples dropped from the front of _audio (the origin stays)
        self._audio_emb: dict[int, torch.Tensor] = {}  # mel-window start → the expert's audio embedding
        self._next = 0  # index in _frames of the next window start to score
        self._count = 0  # window starts passed (every ``stride``-th is scored)
        self._state, self._reason = "dubbing", None
        self._since: float | None = None  # when the current condition (poor or good) began
        self._last_t = -math.inf
        self._no_face: str | None = None  # why the last frame counts as having no face

    # -- input -------------------------------------------------------------
    def push_audio(self, samples: np.ndarray, t: float) -> None:
        """Driving audio, ``[n]`` float32 16 kHz mono, first sample at ``t`` s; gaps are silence."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if self._audio_t0 is None:
            self._audio_t0 = t
        start = int(round((t - self._audio_t0) * SAMPLE_RATE))  # samples from the audio origin
        end = self._dropped + len(self._audio)
        if start > end:
            self._audio = np.concatenate([self._audio, np.zeros(start - end, np.float32), samples])
        elif start + len(samples) > end:
            self._audio = np.concatenate([self._audio, samples[end - start:]])

    def push_frame(self, t: float, crop: np.ndarray | None, face_px: float | None = None) -> None:
        """A frame at ``t`` s: its square face crop (``[S, S, 3]`` uint8 RGB, S ≥ 48; resized to 96 for the
        expert) of what is sent, or None when it has no face. ``face_px``: the crop's side in the source
        frame (pixels), for the too-small check."""
        if t <= self._last_t:
            raise ValueError(f"frame timestamps must increase: {t} after {self._last_t}")
        if math.isfinite(self._last_t):  # frames that never came (dropped upstream) count as faceless, so that
            for i in range(1, int(round((t - self._last_t) * self.config.fps))):  # no window spans the gap
                self._frames.append(_Frame(self._last_t + i / self.config.fps, None))
        self._last_t = t
        small = face_px is not None and face_px < self.config.min_face_px
        self._no_face = "no face" if crop is None else (f"face too small ({face_px:.0f} px)" if small else None)
        self._frames.append(_Frame(t, None if self._no_face else crop))

    # -- scoring -----------------------------------------------------------
    def _audio_until(self) -> float:
        if self._audio_t0 is None:
            return -math.inf
        return self._audio_t0 + (self._dropped + len(self._audio)) / SAMPLE_RATE

    def _score(self) -> None:
        cfg, L = self.config, self.config.max_lag
        need = (L + EXPERT_FRAMES) / cfg.fps + 0.2 + 0.05  # audio past a window's first frame
        frames = self._frames
        starts = []
        while self._next + EXPERT_FRAMES <= len(frames) and frames[self._next].t + need <= self._audio_until():
            run = [frames[self._next + i] for i in range(EXPERT_FRAMES)]
            if self._count % cfg.stride == 0 and all(f.crop is not None for f in run):
                starts.append(self._next)
            self._next += 1
            self._count += 1
        if not starts:
            return
        t0s = [frames[i].t for i in starts]
        crops = np.stack([np.stack([frames[i + j].crop for j in range(EXPERT_FRAMES)]) for i in starts])
        faces = torch.from_numpy(crops).permute(0, 1, 4, 2, 3).float().div(255.0)  # [W, 5, 3, S, S]
        keys = [[window_start(t0 - self._audio_t0 + lag / cfg.fps, 0.0) for lag in range(-L, L + 1)]
                for t0 in t0s]  # mel-window starts (80 Hz frames from the audio origin)
        self._embed_audio(sorted({k for row in keys for k in row} - set(self._audio_emb)))
        with torch.no_grad():
            video = self.expert.face_embedding(lower_halves(faces))  # [W, D]
        audio = torch.stack([torch.stack([self._audio_emb[k] for k in row]) for row in keys])  # [W, 2L+1, D]
        cos = (video[:, None] * audio).sum(-1).double().numpy()
        for t, c in zip(t0s, cos):
            self._windows.append(_Window(t, c))
        self._couple([frames[i + j] for i in starts for j in range(EXPERT_FRAMES)])

    def _embed_audio(self, starts: list[int]) -> None:
        """The expert's audio embedding of each Wav2Lip mel window starting at mel frame ``starts[i]``
        (cached: consecutive windows share them, lag s of frame j is lag 0 of frame j + s)."""
        if not starts:
            return
        s0 = max(self._dropped // 200, min(starts) - 8) * 200  # on the mel hop, a margin for the STFT's padding
        mel = melspectrogram(self._audio[s0 - self._dropped: (max(starts) + MEL_WINDOW + 8) * 200 - self._dropped])
        windows = np.full((len(starts), 80, MEL_WINDOW), MEL_SILENCE, np.float32)
        for i, start in enumerate(starts):
            start -= s0 // 200
            a, b = max(0, start), min(mel.shape[1], start + MEL_WINDOW)
            if b > a:
                windows[i, :, a - start: b - start] = mel[:, a:b]
        with torch.no_grad():
            emb = self.expert.audio_embedding(torch.from_numpy(windows)[:, None])
        self._audio_emb.update(zip(starts, emb))

    def _couple(self, frames: list[_Frame]) -> None:
        if self.opening_net is None:
            return
        todo = {id(f): f for f in frames if math.isnan(f.opening)}
        if not todo:
            return
        todo = list(todo.values())
        faces = torch.from_numpy(np.stack([f.crop for f in todo])).permute(0, 3, 1, 2).float().div(255.0)
        if faces.shape[-1] != EXPERT_FACE_SIZE:
            faces = torch.nn.functional.interpolate(faces, size=(EXPERT_FACE_SIZE,) * 2, mode="bilinear",
                                                    antialias=True, align_corners=False)
        with torch.no_grad():
            openings = self.opening_net(faces).numpy()
        centres = [int(round((f.t - self._audio_t0) * SAMPLE_RATE)) - self._dropped for f in todo]
        for f, o, e in zip(todo, openings, log_rms_at(self._audio, centres)):
            f.opening = float(o)
            self._pairs.append((f.t, f.opening, float(e)))

    def _prune(self, now: float) -> None:
        cfg, keep = self.config, self.config.window_s
        if not math.isfinite(now):  # no frame yet
            return
        while self._windows and self._windows[0].t < now - keep:
            self._windows.popleft()
        while self._pairs and self._pairs[0][0] < now - keep:
            self._pairs.popleft()
        # frames: keep the ones a window may still start at
        while self._next > 0 and self._frames and self._frames[0].t < now - keep:
            self._frames.popleft()
            self._next -= 1
        if self._audio_t0 is not None:  # audio and embeddings: what the oldest kept frame's lags can need
            oldest = self._frames[0].t if self._frames else now
            keep_from = int((oldest - cfg.max_lag / cfg.fps - 0.5 - self._audio_t0) * 80)  # mel frames
            drop = keep_from * 200 - self._dropped
            if drop > 0:
                self._audio = self._audio[drop:]
                self._dropped += drop
            for k in [k for k in self._audio_emb if k < keep_from]:
                del self._audio_emb[k]

    def reading(self) -> GaugeReading:
        """Score what is scorable, update the decision, and return it (:class:`GaugeReading`)."""
        cfg = self.config
        self._score()
        now = self._last_t
        self._prune(now)
        n = len(self._windows)
        lag, margin, confidence = None, math.nan, math.nan
        if n:
            curve = np.mean([w.cos for w in self._windows], axis=0)
            confidence = float(curve[cfg.max_lag])
            margin = float(curve[cfg.max_lag] - np.median(curve))
            if n >= cfg.min_windows:
                lag = int(np.argmax(curve)) - cfg.max_lag
        coupling = _pearson([p[1] for p in self._pairs], [p[2] for p in self._pairs])
        if self._no_face:
            self._since = None
            self._state, self._reason = "dubbing", None  # the sync verdict starts afresh when the face is back
            return GaugeReading("no_face", self._no_face, lag, margin, confidence, coupling, n)
        if lag is not None:
            poor = abs(lag) > cfg.sync_lag_max
            flip = poor if self._state == "dubbing" else not poor
            if flip:
                self._since = now if self._since is None else self._since
                if now - self._since >= (cfg.poor_for_s if poor else cfg.good_for_s):
                    self._state = "passthrough" if poor else "dubbing"
                    self._reason = None
                    self._since = None
            else:
                self._since = None
            if self._state == "passthrough" and poor:
                self._reason = f"out of sync: best lag {lag:+d} frames"
        return GaugeReading(self._state, self._reason, lag, margin, confidence, coupling, n)


class GaugeWorker:
    """A :class:`SyncGauge` in a thread of its own, so that its few milliseconds a frame never delay a frame.

    :meth:`push_frame` takes the frame as it would be sent (``[H, W, 3]``
    uint8 RGB) and its face box (``engine.face.Box`` or None) and crops it
    (96 px, as the pipeline does); :meth:`push_audio` the driving audio.
    Neither blocks: when the thread falls behind, frames are dropped (the
    gauge sees them as faceless; audio is never dropped). :attr:`reading` is
    the latest :class:`GaugeReading` (``dubbing`` before the first one).
    """

    MAX_QUEUE = 64

    def __init__(self, gauge: SyncGauge, every: int = 5):
        self.gauge, self.every = gauge, every
        self.reading = GaugeReading("dubbing", None, None, math.nan, math.nan, math.nan, 0)
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue()
        self._frames = 0
        self._thread = threading.Thread(target=self._run, name="dubcam-gauge", daemon=True)
        self._thread.start()

    def push_frame(self, t: float, image: np.ndarray, box) -> None:
        """A frame at ``t`` s as sent, with the face box it was dubbed at (None: no face)."""
        if self._queue.qsize() >= self.MAX_QUEUE:
            self.dropped += 1
            return
        self._queue.put(("v", t, image, box))

    def push_audio(self, samples: np.ndarray, t: float) -> None:
        """Driving audio (float32 16 kHz mono) whose first sample is at ``t`` s."""
        self._queue.put(("a", samples, t))

    def _run(self) -> None:
        from engine.face import crop

        while True:
            item = self._queue.get()
            if item is None:
                return
            if item[0] == "a":
                self.gauge.push_audio(item[1], item[2])
                continue
            _, t, image, box = item
            face = None
            if box is not None:
                try:
                    face = crop(image, box, EXPERT_FACE_SIZE)
                except ValueError:  # a box wholly outside the frame
                    face = None
            try:
                self.gauge.push_frame(t, face, None if box is None else float(box.x1 - box.x0))
            except ValueError:  # out of order after a reset: skip
                continue
            self._frames += 1
            if self._frames % self.every == 0:
                self.reading = self.gauge.reading()

    def close(self) -> None:
        """Stop the thread once it has taken what is queued."""
        self._queue.put(None)
        self._thread.join(timeout=5)


def _pearson(x: list[float], y: list[float]) -> float:
    if len(x) < 3:
        return math.nan
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else math.nan


def load_gauge(config: GaugeConfig | None = None) -> SyncGauge:
    """A :class:`SyncGauge` with the bundled lip expert and mouth-opening regressor.

    Raises FileNotFoundError / ``engine.checkpoints.CheckpointError`` when a bundled file is missing or bad.
    """
    from engine.bundled import LIP_EXPERT, MOUTH_OPENING
    from engine.models.opening import load_opening_net
    from engine.models.syncnet import SyncNetColor

    return SyncGauge(SyncNetColor.from_checkpoint(LIP_EXPERT).eval(), load_opening_net(MOUTH_OPENING), config)
