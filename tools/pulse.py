"""A PulseAudio server in user space (no sound card needed): the audio rig of the live tests and the soak.

The graph: a stereo null sink ``rig``; whatever is played to ``feed``
lands on its left channel and is what the microphone ``mic`` hears;
whatever is played to ``vmic`` (the virtual microphone) lands on its
right channel. Recording ``rig.monitor`` gives both on one clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

MISSING = ("pulseaudio is not installed (apt install pulseaudio pulseaudio-utils libasound2-plugins); "
           ".ci/run installs it")


def available() -> bool:
    """Whether the ``pulseaudio`` and ``pactl`` programs are on PATH."""
    return shutil.which("pulseaudio") is not None and shutil.which("pactl") is not None


class PulseServer:
    """Starts a private PulseAudio daemon with the rig above; ``env`` points clients at it; ``stop()`` ends it.

    Raises:
        FileNotFoundError: pulseaudio / pactl are not installed (message: :data:`MISSING`).
        subprocess.CalledProcessError: the daemon or a module did not start.
    """

    MODULES = [
        "module-null-sink sink_name=rig channels=2 channel_map=front-left,front-right rate=16000",
        "module-remap-sink sink_name=feed master=rig channels=1 master_channel_map=front-left channel_map=mono "
        "remix=no",
        "module-remap-sink sink_name=vmic master=rig channels=1 master_channel_map=front-right channel_map=mono "
        "remix=no",
        "module-remap-source source_name=mic master=rig.monitor channels=1 master_channel_map=front-left "
        "channel_map=mono remix=no",
    ]

    def __init__(self):
        if not available():
            raise FileNotFoundError(MISSING)
        self.dir = tempfile.mkdtemp(prefix="pa", dir="/tmp")  # short: the socket path has a length limit
        self.env = {**os.environ, "XDG_RUNTIME_DIR": self.dir, "HOME": self.dir}
        subprocess.run(["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
                        "--load=module-native-protocol-unix auth-anonymous=1"], env=self.env, check=True,
                       capture_output=True, timeout=30)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for module in self.MODULES:
            subprocess.run(["pactl", "load-module", *module.split()], env=self.env, check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(["pulseaudio", "--kill"], env=self.env, capture_output=True, timeout=30)
        for _ in range(100):  # it is gone (else it writes into its folder while that is removed)
            if subprocess.run(["pulseaudio", "--check"], env=self.env, capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
