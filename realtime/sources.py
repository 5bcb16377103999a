"""Where frames and driving audio come from (DESIGN.md "The streaming core").

Every source yields timestamped items, like an aiortc track: video sources
yield ``(rgb uint8 H×W×3, t seconds)``, audio sources
``(float32 16 kHz mono samples, t seconds)``.

* :class:`VideoFileSource`: a video or still image, looped back and forth
  (ping-pong) to cover a given duration.
* :class:`AudioFileSource`: any audio file (or a video's audio track) cut
  into short pieces.
* :func:`speak`: text → speech with a TTS engine (espeak-ng).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.audio import SAMPLE_RATE, AudioError, load_audio
from engine.media import probe_video, read_frames


class _FrameStore:
    """Frames kept on disk (a temporary raw file) so that long or large videos can be replayed in reverse."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self.shape: tuple[int, ...] | None = None
        self.count = 0

    def append(self, frame: np.ndarray) -> None:
        self.shape = self.shape or frame.shape
        self._file.write(np.ascontiguousarray(frame).tobytes())
        self.count += 1

    def __getitem__(self, i: int) -> np.ndarray:
        n = int(np.prod(self.shape))
        self._file.seek(i * n)
        return np.frombuffer(self._file.read(n), np.uint8).reshape(self.shape)

    def close(self):
        self._file.close()


def pingpong_index(n: int, length: int) -> int:
    """Source frame for output frame ``n`` when a clip of ``length`` frames plays forward, backward, forward…

    0, 1, …, L-1, L-2, …, 1, 0, 1, … (the turning frames are not repeated).
    """
    if length == 1:
        return 0
    period = 2 * (length - 1)
    m = n % period
    return m if m < length else period - m


class VideoFileSource:
    """Frames of a video (or still image) file at its own rate, ping-pong looped to cover ``duration`` seconds.

    Output frame n has timestamp ``n / fps``; the last one is the last with
    ``t < duration``. A still image is shown at 25 fps. ``duration=None``
    plays the file once.

    Raises FileNotFoundError / ``engine.media.MediaError`` on open.
    """

    def __init__(self, path: str | Path, duration: float | None = None):
        self.path = Path(path)
        self.info = probe_video(self.path)
        self.fps = self.info.fps
        self.duration = duration
        self.width, self.height = self.info.width, self.info.height

    def frame_count(self) -> int | None:
        """Frames this source will yield, when known in advance."""
        if self.duration is not None:
            return max(1, math.ceil(self.duration * self.fps - 1e-9))
        return None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        total = self.frame_count()
        store = _FrameStore()
        try:
            n = 0
            for frame, _ in read_frames(self.path):
                if total is not None and n >= total:
                    return
                store.append(frame)
                yield frame, n / self.fps
                n += 1
                if self.info.still:
                    break
            if total is None:
                return
            while n < total:
                yield store[pingpong_index(n, store.count)], n / self.fps
                n += 1
        finally:
            store.close()


class AudioFileSource:
    """Driving speech from a file: yields ``(samples, t)`` pieces of ``piece_s`` seconds.

    ``samples`` (16 kHz mono float32) holds the whole decoded speech;
    ``duration`` its length in seconds. Raises FileNotFoundError /
    ``engine.audio.AudioError``.
    """

    def __init__(self, path: str | Path, piece_s: float = 0.02):
        self.path = Path(path)
        self.samples = load_audio(self.path)
        self.piece = max(1, int(piece_s * SAMPLE_RATE))

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        for i in range(0, len(self.samples), self.piece):
            yield self.samples[i: i + self.piece], i / SAMPLE_RATE


def speak(text: str, out_wav: str | Path, voice: str = "en", words_per_minute: int = 160) -> Path:
    """Synthesise ``text`` with espeak-ng into a wav file (the TTS driving source).

    Raises AudioError when espeak-ng is not installed (with the install
    command) or fails, or when ``text`` is empty.
    """
    if not text.strip():
        raise AudioError("--text is empty")
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise AudioError("text-to-speech needs espeak-ng: apt install espeak-ng (or brew install espeak-ng)")
    out_wav = Path(out_wav)
    proc = subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "-w", str(out_wav), text],
                          capture_output=True, text=True)
    if proc.returncode != 0 or not out_wav.is_file():
        raise AudioError(f"espeak-ng failed: {proc.stderr.strip() or proc.returncode}")
    return out_wav
