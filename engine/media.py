"""Reading video files and still images through PyAV (DESIGN.md "Layout").

Both the streaming product (``realtime.sources``) and the training data
preparation (``train.preprocess``) read faces from files; this module is the
one place that does it. Frames come out as RGB uint8 H×W×3 with their
presentation time in seconds (from the stream's time base, exact until
here).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class MediaError(ValueError):
    """A media file that cannot be used: unreadable, truncated before any frame, no video stream."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself.

    fps: average frame rate (frames per second; 25.0 for a still image).
    duration: seconds, or ``None`` when the container does not say.
    width, height: frame size in pixels.
    still: ``True`` for an image file (one frame).
    """

    fps: float
    duration: float | None
    width: int
    height: int
    still: bool


def _open(path: Path):
    import av

    if not path.is_file():
        raise FileNotFoundError(f"no such video or image file: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise MediaError(f"{path}: not a readable media file ({e})") from e
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Frame rate, duration and size of a video or image file.

    Raises FileNotFoundError, or :class:`MediaError` for a file without video.
    """
    path = Path(path)
    with _open(path) as c:
        s = c.streams.video[0]
        still = path.suffix.lower() in IMAGE_SUFFIXES or (s.frames == 1)
        rate = s.average_rate or s.guessed_rate or Fraction(25)
        duration = None
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / 1_000_000
        return VideoInfo(fps=25.0 if still else float(rate), duration=None if still else duration,
                         width=s.codec_context.width, height=s.codec_context.height, still=still)


def read_frames(path: str | Path) -> Iterator[tuple[np.ndarray, float]]:
    """Decode every frame of the first video stream: yields ``(rgb uint8 H×W×3, t seconds)``.

    Timestamps start at 0 for the first frame. A truncated file yields the
    frames that decode and stops; one that yields none raises
    :class:`MediaError`.
    """
    import av

    path = Path(path)
    with _open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        first_pts = None
        n = 0
        rate = float(stream.average_rate or 25)
        try:
            for frame in c.decode(stream):
                if frame.pts is not None and frame.time_base is not None:
                    pts = float(frame.pts * frame.time_base)
                else:
                    pts = n / rate
                if first_pts is None:
                    first_pts = pts
                n += 1
                yield frame.to_ndarray(format="rgb24"), pts - first_pts
        except av.FFmpegError as e:
            if n == 0:
                raise MediaError(f"{path}: no video frame could be decoded ({e})") from e
        if n == 0:
            raise MediaError(f"{path}: the video stream holds no frames")


def read_frames_at(path: str | Path, fps: float = 25.0) -> Iterator[tuple[np.ndarray, float]]:
    """Frames resampled by timestamp to a constant ``fps``: frame n is the last decoded frame shown at n/fps.

    Yields ``(rgb, n / fps)``. Used where a fixed rate is needed (training
    data is 25 fps); the streaming pipeline itself takes any rate.
    """
    n = 0
    prev = None
    for frame, t in read_frames(path):
        while prev is not None and n / fps < t - 1e-6:
            yield prev, n / fps
            n += 1
        prev = frame
    if prev is not None:
        yield prev, n / fps
