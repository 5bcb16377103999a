"""Where composited frames and the driving audio go (DESIGN.md "The streaming core").

* :class:`Mp4Sink`: an H.264 (libx264, yuv420p) + AAC mp4 file through PyAV.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from engine.audio import SAMPLE_RATE


class Mp4Sink:
    """Writes an H.264 + AAC mp4.

    Args:
        path: output file (its folder must exist).
        fps: frame rate; frame timestamps ``t`` are written as ``round(t·fps)`` ticks.
        width, height: frame size; odd sizes are padded by one edge pixel
            (yuv420p needs even sizes).
        crf, preset: libx264 quality and speed.

    ``write(frame, t)`` takes H×W×3 uint8 RGB; ``write_audio(samples)`` 16 kHz
    mono float32 in [-1, 1] (appended, starting at t=0); ``close()`` flushes.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 18,
                 preset: str = "veryfast"):
        import av

        self.path = Path(path)
        self.container = av.open(str(self.path), mode="w", format="mp4")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.video = self.container.add_stream("libx264", rate=self.rate)
        self.width, self.height = width + width % 2, height + height % 2
        self.video.width, self.video.height = self.width, self.height
        self.video.pix_fmt = "yuv420p"
        self.video.codec_context.time_base = 1 / self.rate
        self.video.options = {"crf": str(crf), "preset": preset}
        self.audio = self.container.add_stream("aac", rate=SAMPLE_RATE)
        self.audio.layout = "mono"
        self._audio_pts = 0
        self._last_pts = -1
        self.frames = 0

    def write(self, frame: np.ndarray, t: float) -> None:
        import av

        h, w = frame.shape[:2]
        if (w, h) != (self.width, self.height):
            frame = np.pad(frame, ((0, self.height - h), (0, self.width - w), (0, 0)), mode="edge")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        pts = max(round(t * self.rate), self._last_pts + 1)
        vf.pts, self._last_pts = pts, pts
        vf.time_base = 1 / self.rate
        for packet in self.video.encode(vf):
            self.container.mux(packet)
        self.frames += 1

    def write_audio(self, samples: np.ndarray) -> None:
        import av

        samples = np.asarray(samples, dtype=np.float32).reshape(1, -1)
        if not samples.size:
            return
        af = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        af.sample_rate = SAMPLE_RATE
        af.pts = self._audio_pts
        af.time_base = Fraction(1, SAMPLE_RATE)
        self._audio_pts += samples.shape[1]
        for packet in self.audio.encode(af):
            self.container.mux(packet)

    def close(self) -> None:
        for stream in (self.video, self.audio):
            for packet in stream.encode(None):
                self.container.mux(packet)
        self.container.close()
