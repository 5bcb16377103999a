"""Devices of the live plugin: finding them, opening them by name, and saying why one cannot be used.

* :class:`DeviceError`: a device that cannot be opened, with one line
  saying what to do (the CLI prints it as is).
* :func:`audio_device`: a sounddevice (PortAudio) device for a name or
  index; a PulseAudio / PipeWire sink or source name (a null sink made
  for a virtual microphone) is reached through PortAudio's ALSA ``pulse``
  device with ``PULSE_SINK`` / ``PULSE_SOURCE`` set while it opens.
* :func:`list_devices`: cameras, audio inputs and outputs, virtual camera
  backends and inference backends, each usable or not and why
  (``realtime devices``).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

VCAM_HOWTO = {
    "linux": "create one with: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=dubcam "
             "(package v4l2loopback-dkms)",
    "darwin": "install OBS Studio (28 or later) and start its Virtual Camera once",
    "win32": "install OBS Studio (28 or later) and start its Virtual Camera once, or Unity Capture",
}
LIVE_EXTRA = "pip install 'dubcam[live]'"


class DeviceError(RuntimeError):
    """A camera, audio device, virtual camera or port that cannot be used; the message says what to do."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address: an IP address or ``localhost``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sounddevice():
    """The ``sounddevice`` module, or DeviceError saying how to get it (it needs the PortAudio library)."""
    try:
        import sounddevice as sd
    except ImportError as e:
        raise DeviceError(f"audio devices need sounddevice: {LIVE_EXTRA}") from e
    except OSError as e:  # the PortAudio shared library is missing
        raise DeviceError(f"audio devices need the PortAudio library ({e}): apt install libportaudio2 "
                          "(brew install portaudio)") from e
    return sd


def pulse_names(kind: str) -> list[str]:
    """Names of the PulseAudio / PipeWire sinks (``kind="output"``) or sources (``"input"``); [] without pactl."""
    if shutil.which("pactl") is None:
        return []
    what = "sinks" if kind == "output" else "sources"
    try:
        proc = subprocess.run(["pactl", "list", "short", what], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split("\t")[1] for line in proc.stdout.splitlines() if line.count("\t") >= 1]


def audio_device(name: str | int | None, kind: str) -> tuple[int | None, dict[str, str]]:
    """A PortAudio device index for ``name`` and the environment to open it with.

    ``kind``: ``"input"`` or ``"output"``. ``name``: None (the default
    device), an index, a (part of a) PortAudio device name, or a
    PulseAudio / PipeWire sink or source name (opened through the ``pulse``
    device with ``PULSE_SINK`` / ``PULSE_SOURCE``). Raises DeviceError when
    nothing matches (listing what exists).
    """
    sd = sounddevice()
    channels = "max_input_channels" if kind == "input" else "max_output_channels"
    devices = [(i, d["name"]) for i, d in enumerate(sd.query_devices()) if d[channels] > 0]
    if name is None:
        if not devices:
            raise DeviceError(f"no audio {kind} device (no sound card, and no PulseAudio/PipeWire server running)")
        return None, {}
    if isinstance(name, int) or str(name).isdigit():
        index = int(name)
        if index not in [i for i, _ in devices]:
            raise DeviceError(f"no audio {kind} device #{index}; `realtime devices` lists them")
        return index, {}
    for match in (lambda n: n == name, lambda n: name.lower() in n.lower()):
        found = [i for i, n in devices if match(n)]
        if found:
            return found[0], {}
    pulse = [i for i, n in devices if n == "pulse"]
    if pulse and name in pulse_names(kind):
        return pulse[0], {"PULSE_SOURCE" if kind == "input" else "PULSE_SINK": name}
    known = [n for _, n in devices] + pulse_names(kind)
    raise DeviceError(f"no audio {kind} device {name!r}; there are: {', '.join(known) or 'none'}")


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """Set environment variables for the duration of a device open (PulseAudio reads them then)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class DeviceLine:
    """One row of ``realtime devices``: category, name, and None if usable, else why not."""

    category: str
    name: str
    why_not: str | None = None

    def __str__(self) -> str:
        state = "ok" if self.why_not is None else f"not usable: {self.why_not}"
        return f"{self.category:<16} {self.name:<34} {state}"


def _cameras() -> list[DeviceLine]:
    if sys.platform.startswith("linux"):
        nodes = sorted(glob.glob("/dev/video*"))
        if not nodes:
            return [DeviceLine("camera", "-", "no /dev/video* device: no camera (or no v4l2 in this kernel)")]
        return [DeviceLine("camera", n, None if os.access(n, os.R_OK) else "no read permission "
                           "(add yourself to the 'video' group)") for n in nodes]
    try:
        import cv2
    except ImportError:
        return [DeviceLine("camera", "-", "OpenCV is not installed (pip install opencv-python)")]
    out = []
    for i in range(4):
        cap = cv2.VideoCapture(i)
        if cap.isOpened():
            out.append(DeviceLine("camera", str(i)))
        cap.release()
    return out or [DeviceLine("camera", "-", "no camera opens (check the OS camera permission)")]


def _audio() -> list[DeviceLine]:
    try:
        sd = sounddevice()
        devices = sd.query_devices()
    except DeviceError as e:
        return [DeviceLine("audio", "-", str(e))]
    out = []
    for i, d in enumerate(devices):
        if d["max_input_channels"] > 0:
            out.append(DeviceLine("audio input", f"{i}: {d['name']}"))
        if d["max_output_channels"] > 0:
            out.append(DeviceLine("audio output", f"{i}: {d['name']}"))
    if not out:
        out.append(DeviceLine("audio", "-", "no audio device: no sound card and no PulseAudio/PipeWire server"))
    out += [DeviceLine("pulse source", n) for n in pulse_names("input")]
    out += [DeviceLine("pulse sink", n) for n in pulse_names("output")]
    return out


def _virtual_cameras() -> list[DeviceLine]:
    try:
        import pyvirtualcam
    except ImportError:
        return [DeviceLine("virtual camera", "pyvirtualcam", f"not installed: {LIVE_EXTRA}")]
    backends = {"linux": ["v4l2loopback"], "darwin": ["obs"], "win32": ["obs", "unitycapture"]}
    out = []
    for backend in backends.get(sys.platform, backends["linux" if sys.platform.startswith("linux") else "win32"]):
        try:
            pyvirtualcam.Camera(64, 48, 5, backend=backend).close()
            out.append(DeviceLine("virtual camera", backend))
        except Exception as e:
            howto = VCAM_HOWTO.get("linux" if sys.platform.startswith("linux") else sys.platform, "")
            out.append(DeviceLine("virtual camera", backend, f"{str(e).splitlines()[0]}; {howto}"))
    return out


def _inference() -> list[DeviceLine]:
    import torch

    from engine.backends import available

    out = [DeviceLine("inference", kind, why) for kind, why in available().items()]
    out.append(DeviceLine("inference", "cuda", None if torch.cuda.is_available() else
                          "no NVIDIA GPU visible to torch"))
    return out


def list_devices() -> list[DeviceLine]:
    """Every camera, audio device, virtual camera backend and inference backend, with why it is not usable."""
    return _cameras() + _audio() + _virtual_cameras() + _inference()
