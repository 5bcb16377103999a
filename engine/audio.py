"""Audio I/O and the audio features of every model (DESIGN.md "Conventions").

* :func:`load_audio` decodes any file PyAV can read (wav, flac, mp3, the
  audio track of a video) to 16 kHz mono float32 in [-1, 1].
* :func:`melspectrogram` is the Wav2Lip mel recipe (spec §3.5) in batch
  form, :class:`MelStream` the same frames from audio pushed in arbitrary
  pieces; their values agree within 2e-6 (float32 rounding of the same
  sums in another order; the mel is in [-4, 4]).
* :func:`mel_window` cuts the 80×16 window (0.2 s) that belongs to a video
  frame at a timestamp.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
"""Every model of the project works on 16 kHz mono audio."""

# Wav2Lip hparams.py (spec §3.5)
N_FFT = 800
HOP = 200
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
MEL_WINDOW = 16  # mel frames per video frame window (0.2 s)
MEL_SILENCE = -4.0  # normalised value of a silent mel bin


class AudioError(ValueError):
    """An audio input that cannot be used (no audio stream, unreadable, empty)."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32.

    Any container and codec FFmpeg reads works (wav, flac, mp3, ogg, the
    audio track of mp4/mpg/webm), at any rate and channel count. The rate
    is converted by FFmpeg's resampler, channel by channel; the channels
    are then averaged, ``(L + R) / 2`` for stereo, as Wav2Lip
    (``librosa.load``) and syncnet_python (``ffmpeg -ac 1``) mix them
    (FFmpeg's own stereo-to-mono downmix, ``0.7071·(L + R)``, is 3 dB louder
    and clips).

    Returns ``[n]`` float32 in [-1, 1] at ``sample_rate`` Hz.

    Raises:
        FileNotFoundError: no such file.
        AudioError: the file has no audio stream, cannot be decoded, or
            decodes to no samples.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise AudioError(f"{path}: not a readable media file ({e})") from e
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        # Planar float at the target rate, the source's channels kept: averaged below.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        pieces = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(_mix_down(out.to_ndarray()))
        except av.FFmpegError as e:
            if not pieces:
                raise AudioError(f"{path}: audio cannot be decoded ({e})") from e
            # A truncated file: keep what decoded.
        for out in resampler.resample(None):
            pieces.append(_mix_down(out.to_ndarray()))
    if not pieces or sum(len(p) for p in pieces) == 0:
        raise AudioError(f"{path}: the audio stream holds no samples")
    return np.clip(np.concatenate(pieces).astype(np.float32), -1.0, 1.0)


def _mix_down(planar: np.ndarray) -> np.ndarray:
    """``[channels, n]`` planar samples -> ``[n]``: the mean of the channels (librosa's ``to_mono``)."""
    planar = planar.reshape(-1, planar.shape[-1])
    return planar[0] if len(planar) == 1 else planar.mean(axis=0, dtype=np.float64).astype(np.float32)


def librosa_mel_basis() -> np.ndarray:
    """Wav2Lip's mel filterbank, ``[80, 401]`` float32, as librosa builds it (spec §3.5).

    ``librosa.filters.mel`` with Wav2Lip's hparams and librosa 0.7.0's defaults that Wav2Lip used
    (Slaney scale, Slaney area normalisation). The pipeline reads the same matrix from
    ``engine/assets/wav2lip_mel_basis.npy`` (:data:`engine.bundled.MEL_BASIS`, written with
    ``np.save(MEL_BASIS, librosa_mel_basis())``; ``tests/test_audio.py`` checks that they agree), so
    that a start-up does not import librosa (about 1 s on a 2-core machine).
    """
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX,
                               htk=False, norm="slaney").astype(np.float32)


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    from engine.bundled import MEL_BASIS

    return np.load(MEL_BASIS, allow_pickle=False)


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float64)  # periodic Hann


def _frames_to_mel(frames: np.ndarray) -> np.ndarray:
    """``[F, 800]`` pre-emphasised, padded samples → ``[80, F]`` normalised mel."""
    spec = np.abs(np.fft.rfft(frames * _window(), axis=1)).astype(np.float32)  # [F, 401]
    mel = _mel_basis() @ spec.T
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - 20.0
    return np.clip(8.0 * (db + 100.0) / 100.0 - 4.0, -4.0, 4.0).astype(np.float32)


def _frame(y: np.ndarray, n_frames: int) -> np.ndarray:
    """``[n_frames, 800]`` read-only view of ``y`` at hop 200 (``len(y) ≥ 200·(n_frames-1) + 800``)."""
    step = y.strides[0]
    return np.lib.stride_tricks.as_strided(y, shape=(n_frames, N_FFT), strides=(HOP * step, step),
                                           writeable=False)


def _preemphasis(x: np.ndarray, prev: float) -> np.ndarray:
    y = x.astype(np.float64)
    y[1:] -= PREEMPHASIS * x[:-1]
    y[0] -= PREEMPHASIS * prev
    return y


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """The Wav2Lip mel spectrogram (spec §3.5, ``Wav2Lip:audio.py``).

    Pre-emphasis 0.97; STFT with n_fft 800, hop 200, periodic Hann window,
    ``center=True`` with **reflect** padding (librosa 0.7.0); magnitude;
    Slaney mel filterbank 80 bands, 55–7600 Hz; ``20·log10(max(1e-5, M)) − 20``;
    normalised to ``clip(8·(S+100)/100 − 4, −4, 4)``.

    Args:
        wav: ``[n]`` float32 16 kHz mono in [-1, 1]; n ≥ 401.
    Returns:
        ``[80, 1 + n // 200]`` float32 in [-4, 4], 80 frames per second;
        frame j is centred on sample ``200·j``.
    Raises:
        AudioError: fewer than 401 samples (reflect padding needs them).
    """
    wav = np.asarray(wav, dtype=np.float32)
    if len(wav) <= N_FFT // 2:
        raise AudioError(f"audio too short for a mel spectrogram: {len(wav)} samples")
    y = np.pad(_preemphasis(wav, 0.0), N_FFT // 2, mode="reflect")
    n_frames = 1 + len(wav) // HOP
    return _frames_to_mel(_frame(y, n_frames))


class MelStream:
    """Streaming form of :func:`melspectrogram`: the same frames, computed as audio arrives.

    Push 16 kHz mono float32 samples in pieces of any size; mel frame ``j``
    is computed as soon as sample ``200·j + 399`` has arrived (it is centred
    on sample ``200·j``), and the frames that need the reflect-padded end are
    computed by :meth:`close`. After ``close`` the frames equal
    ``melspectrogram(all samples)`` within 2e-6 (float32 rounding;
    ``tests/test_audio.py``).

    Memory grows with the stream (80 floats per 12.5 ms); a live session
    calls :meth:`discard_before` to drop frames no window needs any more.
    """

    def __init__(self):
        _mel_basis()  # load the filterbank now, not on the first audio piece
        self._pre = np.zeros(0, dtype=np.float64)  # pre-emphasised samples still needed
        self._pre_offset = 0  # sample index of self._pre[0]
        self._head: np.ndarray | None = None  # first 401 pre-emphasised samples (reflect head)
        self._last = 0.0  # last raw sample, carries the pre-emphasis across pushes
        self.n_samples = 0
        self._frames: list[np.ndarray] = []  # [80, m] pieces
        self._first_frame = 0  # index of the first kept frame
        self.n_frames = 0  # frames computed so far
        self.closed = False

    def push(self, samples: np.ndarray) -> None:
        """Append ``[n]`` float32 samples (16 kHz mono); computes every frame they complete."""
        if self.closed:
            raise RuntimeError("MelStream is closed")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not len(samples):
            return
        self._pre = np.concatenate([self._pre, _preemphasis(samples, self._last)])
        self._last = float(samples[-1])
        self.n_samples += len(samples)
        if self._head is None and self.n_samples > N_FFT // 2:
            self._head = self._pre[: N_FFT // 2 + 1].copy()
        if self._head is not None:
            # frame j is centred on sample 200 j and needs samples up to 200 j + 399
            self._compute((self.n_samples - N_FFT // 2) // HOP + 1)

    def close(self) -> None:
        """End of stream: compute the last frames (reflect padding at the end).

        A stream of 400 samples or fewer yields no frames.
        """
        if not self.closed and self._head is not None:
            self._compute(1 + self.n_samples // HOP)
        self.closed = True

    def _compute(self, total: int) -> None:
        if total <= self.n_frames:
            return
        half = N_FFT // 2
        start, end = self.n_frames, total
        lo = start * HOP - half  # first sample needed (negative: reflect head)
        hi = (end - 1) * HOP + half  # end of samples needed (past n_samples: reflect tail)
        seg = self._pre[max(lo, 0) - self._pre_offset: min(hi, self.n_samples) - self._pre_offset]
        if lo < 0:
            seg = np.concatenate([self._head[1: 1 - lo][::-1], seg])
        if hi > self.n_samples:
            seg = np.concatenate([seg, self._pre[len(self._pre) - (hi - self.n_samples) - 1: -1][::-1]])
        self._frames.append(_frames_to_mel(_frame(np.ascontiguousarray(seg), end - start)))
        self.n_frames = end
        # Keep what the next frame needs, and the last 401 samples for the reflect tail.
        keep_from = max(0, min(end * HOP - half, self.n_samples - half - 1))
        if keep_from > self._pre_offset:
            self._pre = self._pre[keep_from - self._pre_offset:]
            self._pre_offset = keep_from

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Computed mel frames ``[80, stop-start]``; indices outside ``[0, n_frames)`` are silence (-4).

        Raises ValueError for frames that were discarded.
        """
        if self._first_frame > 0 and start < self._first_frame and stop > max(start, 0):
            raise ValueError(f"mel frames before {self._first_frame} were discarded")
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames, axis=1)]
        out = np.full((N_MELS, stop - start), MEL_SILENCE, dtype=np.float32)
        have = self._frames[0] if self._frames else np.zeros((N_MELS, 0), np.float32)
        a, b = max(start, self._first_frame), min(stop, self.n_frames)
        if b > a:
            out[:, a - start: b - start] = have[:, a - self._first_frame: b - self._first_frame]
        return out

    def discard_before(self, frame: int) -> None:
        """Forget mel frames with index < ``frame`` (bounded memory for live streams)."""
        frame = min(frame, self.n_frames)
        if frame <= self._first_frame:
            return
        if len(self._frames) > 1:
            self._frames = [np.concatenate(self._frames, axis=1)]
        if self._frames:
            self._frames = [self._frames[0][:, frame - self._first_frame:]]
        self._first_frame = frame


def window_start(t: float, mel_offset_s: float) -> int:
    """Index of the first mel frame of the 0.2 s window of a video frame at ``t`` seconds.

    ``mel_offset_s`` is the model's window position (``GeneratorInfo``):
    ``floor(80·(t + mel_offset_s))``; for Wav2Lip (offset 0) this is
    Wav2Lip's ``int(80·t)`` (spec §3.5) for t ≥ 0.
    """
    return math.floor(MEL_FPS * (t + mel_offset_s) + 1e-9)


def mel_window(mel: np.ndarray, t: float, mel_offset_s: float, context: int = 0) -> np.ndarray:
    """The ``[80, 16]`` window of a batch mel ``[80, F]`` for a frame at ``t`` s; with ``context``
    (``GeneratorInfo.mel_context``) the ``context`` frames before it too: ``[80, context + 16]``.

    Frames before 0 or past the end are silence (-4): the speech is padded
    with silence, never wrapped.
    """
    s = window_start(t, mel_offset_s) - context
    width = MEL_WINDOW + context
    out = np.full((N_MELS, width), MEL_SILENCE, dtype=np.float32)
    a, b = max(s, 0), min(s + width, mel.shape[1])
    if b > a:
        out[:, a - s: b - s] = mel[:, a:b]
    return out


# AV-HuBERT (spec §1.7) and syncnet_python (spec §4) both run
# python_speech_features on the raw int16 samples of a 16 kHz wav.
AVHUBERT_STACK = 4  # 100 Hz filterbank frames per 25 Hz AV-HuBERT frame


def _pcm16_scale(wav: np.ndarray) -> np.ndarray:
    """Mono samples as float64 on the int16 scale: int16 as is, float in [-1, 1] times 32768.

    Raises AudioError for a non-1-D array or a dtype other than int16 / float.
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise AudioError(f"expected mono samples [n], got shape {wav.shape}")
    if wav.dtype == np.int16:
        return wav.astype(np.float64)
    if np.issubdtype(wav.dtype, np.floating):
        return wav.astype(np.float64) * 32768.0
    raise AudioError(f"expected int16 or float samples, got {wav.dtype}")


def avhubert_audio_features(wav: np.ndarray, n_video_frames: int | None = None) -> np.ndarray:
    """AV-HuBERT's audio input: stacked log filterbanks, normalised per frame (spec §1.7).

    ``python_speech_features.logfbank`` (26 bands, 25 ms / 10 ms, 100 Hz) on
    the int16-scale samples, zero-padded to a multiple of 4 frames and
    stacked 4 at a time (frame 0 in dims 0-25) to 25 Hz; then cut or
    zero-padded at the end to ``n_video_frames``; then each row normalised
    to zero mean and unit variance over its 104 values (``F.layer_norm``
    without affine, eps 1e-5; zero rows stay zero).

    Args:
        wav: ``[n]`` mono 16 kHz samples, int16 (the reference reads the wav
            with scipy and uses the raw values) or float in [-1, 1] (scaled
            by 32768, which gives the same features).
        n_video_frames: the number of 25 fps video frames to align to; None
            keeps ``ceil(n_fbank / 4)`` rows.

    Returns:
        ``[T, 104]`` float32; transpose to ``[104, T]`` for
        ``AVHubert.extract_features(audio=...)``.

    Raises:
        AudioError: not mono, or a dtype other than int16 / float.
    """
    from python_speech_features import logfbank

    fbank = logfbank(_pcm16_scale(wav), samplerate=SAMPLE_RATE).astype(np.float32)
    fbank = np.pad(fbank, ((0, -len(fbank) % AVHUBERT_STACK), (0, 0)))
    feats = fbank.reshape(-1, AVHUBERT_STACK * fbank.shape[1])
    if n_video_frames is not None:
        feats = feats[:n_video_frames]
        feats = np.pad(feats, ((0, n_video_frames - len(feats)), (0, 0)))
    mean = feats.mean(axis=1, keepdims=True)
    var = feats.var(axis=1, keepdims=True)
    return ((feats - mean) / np.sqrt(var + 1e-5)).astype(np.float32)


def syncnet_mfcc(wav: np.ndarray) -> np.ndarray:
    """syncnet_python's audio input: ``python_speech_features.mfcc`` with its
    defaults (13 coefficients, c0 replaced by log energy, 25 ms / 10 ms,
    100 Hz) on the int16-scale samples (spec §4).

    Args:
        wav: ``[n]`` mono 16 kHz samples, int16 or float in [-1, 1] (scaled
            by 32768: c0 depends on the scale).

    Returns:
        ``[13, T]`` float32 with ``T = 1 + ceil((n - 400) / 160)``; columns
        ``4v .. 4v+19`` are the window of video frame v at 25 fps.

    Raises:
        AudioError: not mono, or a dtype other than int16 / float.
    """
    from python_speech_features import mfcc

    return mfcc(_pcm16_scale(wav), SAMPLE_RATE).T.astype(np.float32)
