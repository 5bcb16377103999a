"""Inference backends behind one interface (DESIGN.md "Backends").

``load(model_or_path, kind="auto", device="cpu")`` returns a
:class:`Backend`: ``run(faces, mels) -> frames`` on numpy arrays, with the
generator's :class:`~engine.models.GeneratorInfo` as ``.info``.

Kinds: ``torch`` (eager; fp16 on CUDA), ``onnxruntime`` (CPU, or the CUDA /
TensorRT execution providers when installed). ``auto`` takes ONNX Runtime
when it is installed, else torch. All kinds give the same frames within
1e-4 on the CPU (``tests/test_backends.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.models import GeneratorInfo

KINDS = ("auto", "torch", "onnxruntime")


class Backend(Protocol):
    """A generator ready to run.

    run(faces, mels):
        faces: ``[k, 6, S, S]`` float32 in [0, 1] RGB (pose reference,
            identity reference), mels ``[k, 1, 80, 16]`` float32;
        returns ``[k, 3, S, S]`` float32 in [0, 1] RGB.
    """

    info: GeneratorInfo
    name: str

    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray: ...


class BackendError(RuntimeError):
    """A backend that cannot run here (missing package, device, or a failed export)."""


def available() -> dict[str, str | None]:
    """Each backend kind → ``None`` if usable here, else why not."""
    out: dict[str, str | None] = {"torch": None}
    try:
        import onnxruntime  # noqa: F401
        out["onnxruntime"] = None
    except ImportError:
        out["onnxruntime"] = "onnxruntime is not installed (pip install onnxruntime)"
    return out


def load(model_or_path: torch.nn.Module | str | Path, kind: str = "auto", device: str = "cpu",
         **options) -> Backend:
    """A backend of ``kind`` for a generator module or checkpoint path.

    Raises:
        ValueError: unknown kind.
        BackendError: the kind cannot run here (the message says why).
        engine.checkpoints.CheckpointError / FileNotFoundError: bad checkpoint path.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(KINDS)}")
    model = model_or_path
    if not isinstance(model, torch.nn.Module):
        from engine.models import load as load_model

        model = load_model(model_or_path)
    why = available()
    if kind == "auto":
        kind = "onnxruntime" if why["onnxruntime"] is None else "torch"
    if why.get(kind):
        raise BackendError(why[kind])
    if kind == "torch":
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, **options)
    from engine.backends.onnx_backend import OnnxBackend

    return OnnxBackend(model, device=device, **options)
