"""Where composited frames and the driving audio go (DESIGN.md "The streaming core").

* :class:`Mp4Sink`: an H.264 (libx264, yuv420p) + AAC mp4 file through PyAV.
* :class:`VirtualCameraSink`: a virtual webcam (pyvirtualcam).
* :class:`VirtualMicSink`: the driving audio, delayed by the pipeline's
  latency, to an audio output (the virtual microphone of the call).
* :class:`PreviewSink`: a local window.

Every sink has ``write(rgb, t)`` (or plays by itself) and ``close()``. The
WebRTC output tracks, which pull from the runner, are in
:mod:`realtime.webrtc.tracks`.
"""

from __future__ import annotations

import sys
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
    """Plays the driving audio, delayed by exactly ``latency_s``, to an output device (the virtual microphone).

    The device is what the call application takes as its microphone: a
    PulseAudio / PipeWire null sink (its ``.monitor``), VB-Cable,
    BlackHole. The sample that arrived at ``t`` (session clock) reaches the
    device at ``t + latency_s``: each callback reads :class:`AudioDelay` at
    (the time its block leaves the device − ``latency_s``), that time being
    now + the device's output latency, smoothed by sample count with
    :class:`realtime.sources.DeviceClock`.

    Args:
        delay: the runner's :class:`realtime.runner.AudioDelay`.
        clock: the session clock.
        device: see :func:`realtime.devices.audio_device` (default: the
            default output).
    Raises DeviceError when the device cannot be opened.
    """

    def __init__(self, delay, clock, latency_s: float, device: str | int | None = None, block_s: float = 0.02):
        from realtime.devices import DeviceError, audio_device, environment, sounddevice

        sd = sounddevice()
        from realtime.sources import DeviceClock

        self.delay, self.clock, self.latency_s = delay, clock, latency_s
        self._stamp = DeviceClock()
        index, env = audio_device(device, "output")
        try:
            with environment(env):
                self.stream = sd.OutputStream(device=index, samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                              blocksize=int(block_s * SAMPLE_RATE), latency=0.1,
                                              callback=self._callback)
            self.output_latency = float(self.stream.latency)
            self.stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"cannot open audio output {device if device is not None else '(default)'}: "
                              f"{e}") from e

    def _callback(self, outdata, frames, time_info, status) -> None:
        lead = time_info.outputBufferDacTime - time_info.currentTime
        if not 0 < lead < 1:  # the host API does not say: use the stream's nominal latency
            lead = self.output_latency
        t_out = self._stamp.stamp(frames, self.clock.now() + lead, lost=bool(status.output_underflow))
        outdata[:, 0] = self.delay.read(t_out - self.latency_s, frames)

    def close(self) -> None:
        try:
            self.stream.stop()
            self.stream.close()
        except Exception:
            pass


class PreviewSink:
    """A local window showing the output (OpenCV); closing it or pressing q sets ``stop``.

    Raises DeviceError when there is no display or no OpenCV GUI.
    """

    def __init__(self, stop, title: str = "dubcam"):
        from realtime.devices import DeviceError

        try:
            import cv2

            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except Exception as e:
            raise DeviceError(f"--preview needs a display and OpenCV with a GUI: {str(e).splitlines()[0]}") from e
        self.cv2, self.title, self.stop = cv2, title, stop

    def write(self, frame: np.ndarray, t: float) -> None:
        self.cv2.imshow(self.title, frame[:, :, ::-1])
        if self.cv2.waitKey(1) & 0xFF == ord("q"):
            self.stop.set()

    def close(self) -> None:
        self.cv2.destroyWindow(self.title)
