"""Where frames and driving audio come from (DESIGN.md "The streaming core").

Every source yields timestamped items, like an aiortc track: video sources
yield ``(rgb uint8 H×W×3, t seconds)``, audio sources
``(float32 16 kHz mono samples, t seconds)``.

* :class:`VideoFileSource`: a video or still image, looped back and forth
  (ping-pong) to cover a given duration.
* :class:`AudioFileSource`: any audio file (or a video's audio track) cut
  into short pieces.
* :func:`speak`: text → speech with a TTS engine (espeak-ng).

Live sources stamp items with the session clock
(:class:`realtime.clock.MediaClock`) and end when ``close()`` is called
from any thread: :class:`CameraSource`, :class:`MicrophoneSource`,
:class:`TcpPcmSource`, ``text:`` and files played at real-time speed
(:func:`open_audio_source`, :func:`open_video_source`). The WebRTC
tracks a browser sends are read in :mod:`realtime.webrtc.tracks`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.audio import SAMPLE_RATE, AudioError, load_audio
from engine.media import probe_video, read_frames
from realtime.clock import DeviceClock, StreamClock


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


# -- live sources: timestamps on the session clock, close() from any thread ends them ---------------

class CameraSource:
    """Frames of a camera: yields ``(rgb uint8 H×W×3, t)`` with ``t`` the capture time on ``clock``.

    ``device``: an index (0 = first camera) or a device path / name. Opens
    it with PyAV's capture device (v4l2 / avfoundation / dshow) where this
    PyAV build has one, else with OpenCV. ``size`` (w, h) and ``fps`` are
    requested; the camera may choose others (see ``width``, ``height``).
    Raises DeviceError with what to do when no camera opens.
    """

    def __init__(self, clock, device: str | int = 0, size: tuple[int, int] | None = (640, 480),
                 fps: float = 25.0):
        import av

        from realtime.devices import DeviceError

        self.clock, self.device, self.fps = clock, device, fps
        self._closed = False
        self._av = self._cv = None
        fmt, url = self._av_device(device, av.formats_available)
        errors = []
        if fmt is not None:
            options = {"framerate": str(fps)} | ({"video_size": f"{size[0]}x{size[1]}"} if size else {})
            try:
                self._av = av.open(url, format=fmt, options=options)
                s = self._av.streams.video[0]
                self.width, self.height = s.codec_context.width, s.codec_context.height
                return
            except av.FFmpegError as e:
                errors.append(f"PyAV {fmt} {url}: {e}")
        try:
            import cv2
        except ImportError:
            cv2 = None
            errors.append("OpenCV is not installed")
        if cv2 is not None:
            cap = cv2.VideoCapture(int(device) if str(device).isdigit() else str(device))
            if cap.isOpened():
                if size:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
                cap.set(cv2.CAP_PROP_FPS, fps)
                self._cv = cap
                self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                return
            cap.release()
            errors.append(f"OpenCV could not open camera {device}")
        raise DeviceError(f"no camera {device}: {'; '.join(errors)}. `realtime devices` lists the cameras; "
                          "a video file can stand in: --camera FILE")

    @staticmethod
    def _av_device(device, formats) -> tuple[str | None, str]:
        index = str(device)
        if sys.platform.startswith("linux") and "v4l2" in formats:
            return "v4l2", f"/dev/video{index}" if index.isdigit() else index
        if sys.platform == "darwin" and "avfoundation" in formats:
            return "avfoundation", f"{index}:none"
        if sys.platform == "win32" and "dshow" in formats:
            return "dshow", f"video={index}"
        return None, index

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        if self._av is not None:
            for frame in self._av.decode(video=0):
                if self._closed:
                    return
                yield frame.to_ndarray(format="rgb24"), self.clock.now()
            return
        import cv2

        while not self._closed:
            ok, bgr = self._cv.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.clock.now()

    def close(self) -> None:
        """Ends the iteration (at the next frame); the device is released by the iterating thread or here."""
        self._closed = True
        if self._cv is not None:
            self._cv.release()
        if self._av is not None:
            try:
                self._av.close()
            except Exception:
                pass


class MicrophoneSource:
    """A microphone (or any PortAudio / PulseAudio input): yields ``(float32 16 kHz mono [n], t)``.

    ``t``: when the block's first sample reached the device (the callback's
    ADC time, smoothed by sample count with :class:`DeviceClock`), on
    ``clock``. ``device``: see :func:`realtime.devices.audio_device`.
    ``capture_lag_s``: how late the last block reached us (s; its
    callback's time less its ADC time; None before the first block): about
    a block in the steady state, more while the stream starts up.
    Raises DeviceError when it cannot be opened.
    """

    def __init__(self, clock, device: str | int | None = None, block_s: float = 0.02):
        import queue

        from realtime.devices import DeviceError, audio_device, environment, sounddevice

        sd = sounddevice()
        self.clock = clock
        self._stamp = DeviceClock()
        self._q: queue.Queue = queue.Queue(maxsize=1000)
        self._closed = False
        self.capture_lag_s: float | None = None
        index, env = audio_device(device, "input")
        try:
            with environment(env):
                self.stream = sd.InputStream(device=index, samplerate=SAMPLE_RATE, channels=1, dtype="float32",
                                             blocksize=int(block_s * SAMPLE_RATE), latency=0.1,
                                             callback=self._callback)
            self.stream.start()
        except sd.PortAudioError as e:
            raise DeviceError(f"cannot open audio input {device if device is not None else '(default)'}: {e}") from e

    def _callback(self, indata, frames, time_info, status) -> None:
        now = self.clock.now()
        lag = time_info.currentTime - time_info.inputBufferAdcTime
        if not 0 < lag < 1:  # the host API does not say: the block just ended
            lag = frames / SAMPLE_RATE
        self.capture_lag_s = lag
        t = self._stamp.stamp(frames, now - lag, lost=bool(status.input_overflow))
        try:
            self._q.put_nowait((indata[:, 0].copy(), t))
        except Exception:
            pass  # nobody reads: drop

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        import queue

        while not self._closed:
            try:
                yield self._q.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        self._closed = True
        try:
            self.stream.stop()
            self.stream.close()
        except Exception:
            pass


class TcpPcmSource:
    """Driving audio from the network: raw 16 kHz mono s16le PCM sent to a TCP port (a translation system).

    Listens on ``host:port`` (``port=0``: any free port, see ``address``);
    loopback by default. With a ``token`` (required off loopback) a sender
    first sends the token and a newline, then the PCM; a sender that does
    not within ``TOKEN_WAIT_S`` is dropped. One sender at a time, the next
    may connect when it leaves. Yields ``(float32 [n], t)`` with ``t`` on
    ``clock``: blocks follow each other by sample count; a pause re-anchors
    to the arrival time; a sender faster than real time is read at
    real-time speed (TCP holds it back). Raises ValueError off loopback
    without a token, DeviceError when the port cannot be bound.
    """

    TOKEN_WAIT_S = 2.0

    def __init__(self, clock, host: str = "127.0.0.1", port: int = 5005, block_s: float = 0.02,
                 token: str | None = None):
        import socket

        from realtime.devices import DeviceError, is_loopback

        if not token and not is_loopback(host):
            raise ValueError(f"tcp://{host}:{port} is reachable from other machines: it needs a token, "
                             f"tcp://{host}:{port}?token=SECRET (senders send SECRET and a newline first)")
        self.clock, self.token = clock, token
        self.block = 2 * int(block_s * SAMPLE_RATE)
        self._closed = False
        try:
            self._server = socket.create_server((host, port))
        except OSError as e:
            raise DeviceError(f"cannot listen on tcp://{host}:{port} for audio: {e}") from e
        self._server.settimeout(0.2)
        self.address = self._server.getsockname()[:2]

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        import socket
        import time

        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            stamp = StreamClock(forward_only=True)
            with conn:
                pending = self._authorise(conn)
                if pending is None:
                    continue
                conn.settimeout(0.2)
                while not self._closed:
                    try:
                        data = conn.recv(self.block - len(pending))
                    except socket.timeout:
                        continue
                    if not data:
                        break
                    pending += data
                    if len(pending) < self.block:
                        continue
                    samples = np.frombuffer(pending, "<i2").astype(np.float32) / 32768.0
                    pending = b""
                    now = self.clock.now()
                    t = stamp.stamp(len(samples), now - len(samples) / SAMPLE_RATE)
                    ahead = t - now
                    if ahead > 0.2:
                        time.sleep(ahead - 0.2)
                    yield samples, t

    def _authorise(self, conn) -> bytes | None:
        """b"" when the sender may send (its token line read, byte by byte: none of its PCM); None if refused."""
        import hmac
        import logging
        import socket
        import time

        if not self.token:
            return b""
        data, deadline = b"", time.monotonic() + self.TOKEN_WAIT_S
        while b"\n" not in data and len(data) <= 256 and time.monotonic() < deadline and not self._closed:
            conn.settimeout(max(0.01, min(0.2, deadline - time.monotonic())))
            try:
                got = conn.recv(1)
            except socket.timeout:
                continue
            except OSError:
                break
            if not got:
                break
            data += got
        line, newline, _ = data.partition(b"\n")
        if newline and hmac.compare_digest(line.strip(), self.token.encode()):
            return b""
        logging.getLogger("realtime.sources").warning("audio sender refused: wrong or missing token")
        return None

    def close(self) -> None:
        self._closed = True
        self._server.close()


class _TextSpeech:
    """``text:`` driving audio: espeak-ng speaks it once into a temporary wav, played at real-time speed."""

    def __init__(self, text: str, clock, voice: str = "en"):
        from realtime.clock import Paced

        self._tmp = tempfile.TemporaryDirectory()
        wav = speak(text, Path(self._tmp.name) / "speech.wav", voice=voice)
        self._paced = Paced(AudioFileSource(wav), clock)

    def __iter__(self):
        return iter(self._paced)

    def close(self) -> None:
        self._paced.close()
        self._tmp.cleanup()


def open_audio_source(spec: str, clock, voice: str = "en"):
    """A live driving-audio source from a command-line ``--audio-source``.

    ``mic`` or ``mic:DEVICE``: a microphone / PulseAudio source;
    ``tcp://HOST:PORT[?token=SECRET]``: raw 16 kHz s16le PCM sent to that
    port (HOST empty: loopback; off loopback a token is required);
    ``text:WORDS``: spoken by espeak-ng; anything else: an audio (or video)
    file, played once at real-time speed. Raises DeviceError,
    FileNotFoundError, AudioError.
    """
    from realtime.clock import Paced

    if spec == "mic" or spec.startswith("mic:"):
        return MicrophoneSource(clock, spec[4:] or None)
    if spec.startswith("tcp://"):
        from urllib.parse import parse_qs, urlsplit

        url = urlsplit(spec)
        try:
            port = url.port
        except ValueError:
            port = None
        query = parse_qs(url.query)
        if port is None or set(query) - {"token"}:
            raise ValueError(f"--audio-source {spec}: expected tcp://HOST:PORT or tcp://HOST:PORT?token=SECRET "
                             "(port 0–65535)")
        return TcpPcmSource(clock, url.hostname or "127.0.0.1", port, token=query.get("token", [None])[0])
    if spec.startswith("text:"):
        return _TextSpeech(spec[5:], clock, voice)
    return Paced(AudioFileSource(spec), clock)


def open_video_source(spec: str, clock, size: tuple[int, int] | None = (640, 480), fps: float = 25.0,
                      seconds: float | None = None):
    """A live video source from ``--camera`` and its frame size: ``(source, width, height)``.

    ``spec``: a camera index / device, or a video or image file that stands
    in for a camera (ping-pong looped for ``seconds``, or an hour), delivered
    at real-time speed. Raises DeviceError / MediaError.
    """
    from realtime.clock import Paced

    if Path(spec).is_file():
        source = VideoFileSource(spec, duration=seconds or 3600.0)
        return Paced(source, clock), source.width, source.height
    camera = CameraSource(clock, spec, size, fps)
    return camera, camera.width, camera.height
