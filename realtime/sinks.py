"""Where composited frames and the driving audio go (DESIGN.md "The streaming core").

* :class:`Mp4Sink`: an H.264 (libx264, yuv420p) + AAC mp4 file through PyAV.
* :class:`VirtualCameraSink`: a virtual webcam (pyvirtualcam).
* :class:`VirtualMicSink`: the driving audio, delayed by the pipeline's
  latency, to an audio output (the virtual microphone of the call).
* :class:`PreviewSink`: a local window.
* :func:`draw_label`: the visible disclosure badge (``--label``) that the
  live runner draws on every frame it hands to the virtual camera and WebRTC.

Every sink has ``write(rgb, t)`` (or plays by itself) and ``close()``. The
WebRTC output tracks, which pull from the runner, are in
:mod:`realtime.webrtc.tracks`.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from engine.audio import SAMPLE_RATE


LABEL_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def draw_label(frame: np.ndarray, text: str, corner: str = "top-left") -> np.ndarray:
    """``frame`` with a visible badge ``text`` in a corner: white on a dark box, sized to the frame.

    The disclosure badge of the live outputs (``--label "AI-dubbed"``). The
    text height is about 1/24 of the frame height (at least 9 px), the
    margin half of it. ``frame``: H×W×3 uint8 RGB (not changed); returns a
    new frame. Raises ValueError for an unknown ``corner``
    (:data:`LABEL_CORNERS`).
    """
    import cv2

    if corner not in LABEL_CORNERS:
        raise ValueError(f"label corner must be one of {', '.join(LABEL_CORNERS)}, not {corner!r}")
    h, w = frame.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(9, h // 24) / 22.0  # FONT_HERSHEY_SIMPLEX is about 22 px tall at scale 1
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    pad = max(3, th // 2)
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    x = pad if corner.endswith("left") else w - bw - pad
    y = pad if corner.startswith("top") else h - bh - pad
    out = frame.copy()
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
    out[y0:y1, x0:x1] = (out[y0:y1, x0:x1] * 0.35).astype(np.uint8)  # a see-through dark box
    cv2.putText(out, text, (x + pad, y + pad + th), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


class Mp4Sink:
    """Writes an H.264 + AAC mp4.

    Args:
        path: output file (its folder must exist).
        fps: frame rate; frame timestamps ``t`` are written as ``round(t·fps)`` ticks.
        width, height: frame size; odd sizes are padded by one edge pixel
            (yuv420p needs even sizes).
        crf, preset: libx264 quality and speed.
        finish: called with the complete file's path before it takes the
            name ``path`` (e.g. :func:`engine.provenance.sign_file`, which
            rewrites it in place); an exception there leaves nothing behind.

    ``write(frame, t)`` takes H×W×3 uint8 RGB; ``write_audio(samples)`` 16 kHz
    mono float32 in [-1, 1] (appended, starting at t=0); ``close()`` flushes.
    The file is written as a hidden ``.NAME.part`` beside ``path`` and renamed
    to ``path`` by ``close()``, so ``path`` only ever holds a whole (signed)
    file; ``abort()`` drops the part file.
    """

    def __init__(self, path: str | Path, fps: float, width: int, height: int, crf: int = 18,
                 preset: str = "veryfast", finish: Callable[[Path], None] | None = None):
        import av

        self.path = Path(path)
        self.part = self.path.with_name(f".{self.path.name}.part")
        self.finish = finish
        self.container = av.open(str(self.part), mode="w", format="mp4")
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
        try:
            for stream in (self.video, self.audio):
                for packet in stream.encode(None):
                    self.container.mux(packet)
            self.container.close()
            if self.finish is not None:
                self.finish(self.part)
            os.replace(self.part, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop writing and remove the part file (``path`` is not touched)."""
        try:
            self.container.close()
        except Exception:
            pass
        self.part.unlink(missing_ok=True)


class VirtualCameraSink:
    """Publishes frames as a virtual camera through pyvirtualcam (v4l2loopback on Linux, OBS on Windows/macOS).

    Args:
        width, height, fps: the camera's format; frames must be H×W×3
            uint8 RGB of that size (the format handed to
            ``pyvirtualcam.Camera.send`` with ``fmt=PixelFormat.RGB``).
        device: a v4l2loopback device path (default: the first free one).
        backend: a pyvirtualcam backend name (default: the platform's).

    Raises DeviceError when pyvirtualcam is missing or no virtual camera
    exists, with the command that creates one.
    """

    def __init__(self, width: int, height: int, fps: float, device: str | None = None, backend: str | None = None):
        from realtime.devices import LIVE_EXTRA, VCAM_HOWTO, DeviceError

        try:
            import pyvirtualcam
        except ImportError as e:
            raise DeviceError(f"the virtual camera needs pyvirtualcam: {LIVE_EXTRA}") from e
        self.width, self.height = width, height
        try:
            self.camera = pyvirtualcam.Camera(width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device,
                                              backend=backend, print_fps=False)
        except Exception as e:  # pyvirtualcam raises RuntimeError (no device) or ValueError (bad backend)
            platform = "linux" if sys.platform.startswith("linux") else sys.platform
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DeviceError(f"no virtual camera: {reason}; {VCAM_HOWTO.get(platform, VCAM_HOWTO['linux'])}") from e
        self.device = self.camera.device

    def write(self, frame: np.ndarray, t: float) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"virtual camera takes {self.height}×{self.width}×3 uint8 RGB, got "
                             f"{frame.shape} {frame.dtype}")
        self.camera.send(np.ascontiguousarray(frame))

    def close(self) -> None:
        self.camera.close()


class VirtualMicSink:
    """Plays the driving audio, delayed by ``latency_s``, to an output device (the virtual microphone).

    The device is what the call application takes as its microphone: a
    PulseAudio / PipeWire null sink (its ``.monitor``), VB-Cable,
    BlackHole. The sample that arrived at ``t`` (session clock) is to leave
    the device at ``t + latency_s``. Timing is the device's own: each
    callback's ``outputBufferDacTime`` (when its first sample leaves the
    DAC, PortAudio's stream time) is put on the session clock with the
    offset ``clock.now() − currentTime`` (the smallest of the last few
    seconds': a late callback only makes it larger). The read position in
    :class:`~realtime.clock.AudioDelay` advances by sample count, a jitter
    buffer that slews rather than jumps: the error between where it is and
    where the DAC time says it should be (median of the last ``SMOOTH``
    blocks) is taken out by resampling each block by at most ``MAX_SLEW``
    (1 %: a pitch change of under a fifth of a semitone), with a time
    constant of ``SLEW_TAU_S``; only an error over ``JUMP_S`` in the median
    of the last ``CONFIRM`` blocks (the start, the gap of an underflow, a
    stalled machine; not one odd DAC time) is corrected at once, and
    counted (``jumps``). ``error_s``: the last smoothed error (s, + = late);
    ``underflows``: blocks the device reported an underflow for.

    Args:
        delay: the runner's :class:`realtime.clock.AudioDelay`.
        clock: the session clock.
        latency_s: the scheduled delay (s).
        device: see :func:`realtime.devices.audio_device` (default: the
            default output).
        block_s: callback block (s).
        device_latency_s: output buffering to ask PortAudio for (s); the
            DAC time makes up for whatever it grants, as long as it is below
            ``latency_s`` less the time the driving audio takes to arrive.
    Raises DeviceError when the device cannot be opened.
    """

    SMOOTH = 25
    MAX_SLEW = 0.01
    SLEW_TAU_S = 1.0
    JUMP_S = 0.03
    CONFIRM = 5

    def __init__(self, delay, clock, latency_s: float, device: str | int | None = None, block_s: float = 0.02,
                 device_latency_s: float = 0.1):
        from collections import deque

        from realtime.devices import DeviceError, audio_device, environment, sounddevice

        sd = sounddevice()
        self.delay, self.clock, self.latency_s = delay, clock, latency_s
        self._offsets: deque[float] = deque(maxlen=250)
        self._errors: deque[float] = deque(maxlen=self.SMOOTH)
        self._pos: float | None = None  # sample index (session time × 16 kHz) of the next sample to play
        self.jumps = self.underflows = 0
        self.error_s = 0.0
        index, env = audio_device(device, "output")
        try:
            with environment(env):
                self.stream = sd.OutputStream(device=index, samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                              blocksize=int(block_s * SAMPLE_RATE), latency=device_latency_s,
                                              callback=self._callback)
            self.output_latency = float(self.stream.latency)
            self.stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"cannot open audio output {device if device is not None else '(default)'}: "
                              f"{e}") from e

    def _callback(self, outdata, frames, time_info, status) -> None:
        now = self.clock.now()
        offset = now - time_info.currentTime
        if self._offsets and abs(offset - min(self._offsets)) > 1.0:  # the stream's time base changed: start over
            self._offsets.clear()
        self._offsets.append(offset)
        dac = time_info.outputBufferDacTime  # = currentTime when the buffer ran dry (an underflow)
        if not dac or not 0 <= dac - time_info.currentTime < 1:  # the host API does not say: nominal latency
            dac = time_info.currentTime + self.output_latency
        target = (dac + min(self._offsets) - self.latency_s) * SAMPLE_RATE
        if status.output_underflow:
            self.underflows += 1
        if self._pos is None:
            self._pos = target
        self._errors.append(target - self._pos)
        if abs(np.median(list(self._errors)[-self.CONFIRM:])) > self.JUMP_S * SAMPLE_RATE:
            self.jumps += 1  # off by more than the slew can take back soon, several blocks in a row: re-anchor
            self._pos = target
            self._errors.clear()
            self._errors.append(0.0)
        error = float(np.median(self._errors))
        self.error_s = error / SAMPLE_RATE
        step = 1.0 + float(np.clip(error / (self.SLEW_TAU_S * SAMPLE_RATE), -self.MAX_SLEW, self.MAX_SLEW))
        start = int(np.floor(self._pos))
        x = self._pos - start + step * np.arange(frames)
        src = self.delay.read(start / SAMPLE_RATE, int(x[-1]) + 2)
        outdata[:, 0] = np.interp(x, np.arange(len(src)), src)
        self._pos += step * frames

    def close(self) -> None:
        try:
            self.stream.stop()
            self.stream.close()
        except Exception:
            pass


class PreviewSink:
    """A local window showing the output (OpenCV); closing it or pressing q sets ``stop``.

    Raises DeviceError when there is no display or no OpenCV GUI (see
    :meth:`check`).
    """

    def __init__(self, stop, title: str = "dubcam"):
        from realtime.devices import DeviceError

        self.check()
        try:
            import cv2

            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except Exception as e:
            raise DeviceError(f"--preview needs a display and OpenCV with a GUI: {str(e).splitlines()[0]}") from e
        self.cv2, self.title, self.stop = cv2, title, stop

    @staticmethod
    def check() -> None:
        """DeviceError unless a window can be shown: on Linux an X11 or Wayland display must be set.

        Checked before OpenCV's GUI is touched: its Qt back-end aborts the
        process (SIGABRT) when it finds no display, which no ``except`` catches.
        """
        from realtime.devices import DeviceError

        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                                                     or os.environ.get("QT_QPA_PLATFORM")):
            raise DeviceError("--preview needs a display and OpenCV with a GUI: no display (DISPLAY and "
                              "WAYLAND_DISPLAY are unset); run it in a desktop session, or leave --preview out")

    def write(self, frame: np.ndarray, t: float) -> None:
        self.cv2.imshow(self.title, frame[:, :, ::-1])
        if self.cv2.waitKey(1) & 0xFF == ord("q"):
            self.stop.set()

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)
