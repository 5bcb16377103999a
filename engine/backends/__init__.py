"""Inference backends behind one interface (DESIGN.md "Backends").

``load(model_or_path, kind="auto", device="cpu")`` returns a
:class:`Backend`: ``run(faces, mels) -> frames`` on numpy arrays, with the
generator's :class:`~engine.models.GeneratorInfo` as ``.info``.

Kinds: ``torch`` (eager; fp16 on CUDA), ``onnxruntime`` (CPU, or the CUDA /
TensorRT execution providers when installed; ``int8=True`` for the INT8
version), ``tensorrt`` (an engine built by ``tools/export_trt.py``, see
:mod:`engine.backends.tensorrt_backend`). ``auto`` takes TensorRT when an
engine was built for the model and a GPU is usable, else ONNX Runtime when
it is installed, else torch. All kinds give the same frames within 1e-4 on
the CPU in float32 (``tests/test_backends.py``); FP16 and INT8 trade a
measured amount of that (``tests/test_export.py``, ``tools/bench.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from engine.audio import MEL_WINDOW
from engine.inputs import generator_input
from engine.models.info import GeneratorInfo

if TYPE_CHECKING:
    import torch

KINDS = ("auto", "torch", "onnxruntime", "tensorrt")


def example_inputs(n: int, size: int, seed: int = 0, mel_frames: int = MEL_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Random generator inputs: faces ``[n,6,S,S]`` in [0, 1] (pose lower half zeroed), mels
    ``[n,1,80,mel_frames]`` (``GeneratorInfo.mel_frames``) in [-4, 4].

    float32; the same for the same ``seed``. For export checks and benchmarks.
    """
    rng = np.random.default_rng(seed)
    faces = generator_input(rng.random((n, 3, size, size), dtype=np.float32),
                            rng.random((n, 3, size, size), dtype=np.float32))
    return faces, rng.random((n, 1, 80, mel_frames), dtype=np.float32) * 8 - 4


def max_diff(backend, model: torch.nn.Module, batches: tuple[int, ...] = (1, 5)) -> float:
    """Largest |backend − PyTorch float32| over :func:`example_inputs` of each batch size.

    The check of an export or engine against the module it came from (run
    on the device the module is on). Our generators agree to ~1e-6 in
    ONNX Runtime float32; FP16 engines to ~1e-3–1e-2.
    """
    import torch

    device = next(model.parameters()).device
    worst = 0.0
    for n in batches:
        faces, mels = example_inputs(n, model.info.size, seed=n, mel_frames=model.info.mel_frames)
        with torch.no_grad():
            ref = model.eval()(torch.from_numpy(faces).to(device), torch.from_numpy(mels).to(device))
        worst = max(worst, float(np.abs(backend.run(faces, mels) - ref.float().cpu().numpy()).max()))
    return worst


class Backend(Protocol):
    """A generator ready to run.

    run(faces, mels):
        faces: ``[k, 6, S, S]`` float32 in [0, 1] RGB (pose reference,
            identity reference), mels ``[k, 1, 80, info.mel_frames]`` float32 (the
            0.2 s window, after ``info.mel_context`` past frames);
        returns ``[k, 3, S, S]`` float32 in [0, 1] RGB.
    """

    info: GeneratorInfo
    name: str

    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray: ...


class BackendError(RuntimeError):
    """A backend that cannot run here (missing package, device, or a failed export)."""


def available() -> dict[str, str | None]:
    """Each backend kind → ``None`` if usable here, else why not."""
    from engine.backends.tensorrt_backend import unavailable_reason

    out: dict[str, str | None] = {"torch": None}
    try:
        import onnxruntime  # noqa: F401
        out["onnxruntime"] = None
    except ImportError:
        out["onnxruntime"] = "onnxruntime is not installed (pip install onnxruntime)"
    out["tensorrt"] = unavailable_reason()
    return out


def load(model_or_path: torch.nn.Module | str | Path, kind: str = "auto", device: str = "cpu",
         int8: bool = False, **options) -> Backend:
    """A backend of ``kind`` for a generator module, a checkpoint path, or a built engine.

    Args:
        model_or_path: a generator module, a checkpoint (ours or Wav2Lip's),
            or a TensorRT build of ``tools/export_trt.py`` (its folder, its
            ``generator.json`` or its engine file; kinds ``tensorrt`` / ``auto``).
        kind: one of :data:`KINDS`.
        device: ``cpu`` or ``cuda[:n]``; the ``tensorrt`` kind always runs on
            a GPU (``cuda`` when ``cpu`` is given).
        int8: the INT8 model (ONNX Runtime only; ``auto`` then means ONNX Runtime).
        options: passed to the backend class (e.g. ``fp16`` for torch, ``threads``).

    A checkpoint file that ONNX Runtime ran here before starts from its cached export, without
    importing torch or reading the checkpoint's weights (:func:`engine.backends.onnx_backend.cached_export`);
    any other path loads the checkpoint (``engine.models.load``) and, for ONNX Runtime, records it.

    Raises:
        ValueError: unknown kind, or ``int8`` with a kind other than onnxruntime.
        BackendError: the kind cannot run here, or no engine was built for
            the model (the message says why and what to run).
        engine.checkpoints.CheckpointError / FileNotFoundError: bad checkpoint path.
    """
    from engine.backends import tensorrt_backend as trt_backend

    if kind not in KINDS:
        raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(KINDS)}")
    if int8 and kind not in ("auto", "onnxruntime"):
        raise ValueError(f"INT8 is an ONNX Runtime option; it does not apply to the {kind} backend "
                         "(use --backend onnxruntime, or build a TensorRT engine with --int8-calib)")
    why = available()
    path = Path(model_or_path) if isinstance(model_or_path, (str, Path)) else None
    built = None if path is None else trt_backend.build_file(path)
    if built is not None and kind in ("auto", "tensorrt"):
        if why["tensorrt"]:
            raise BackendError(f"{model_or_path} is a TensorRT build, but {why['tensorrt']}")
        return trt_backend.TensorRTBackend(built, device=device, **options)
    # ONNX Runtime for sure (auto takes TensorRT only without int8, when it is here and has an engine)
    onnx = why["onnxruntime"] is None and (kind == "onnxruntime" or (kind == "auto" and (int8 or why["tensorrt"])))
    entry = None  # the checkpoint's cache entry, hashed once for the lookup and the record
    if path is not None and onnx and path.is_file():
        from engine.backends import onnx_backend

        entry = onnx_backend.index_entry(path)
        cached = onnx_backend.cached_export(entry)  # a file loaded here before: no torch, no checkpoint load
        if cached is not None:
            return onnx_backend.OnnxBackend(onnx_path=cached[0], info=cached[1], device=device, int8=int8,
                                            **options)
    model = model_or_path
    if path is not None:
        from engine.models import load as load_model

        model = load_model(path)
    if kind == "auto":
        if not int8 and why["tensorrt"] is None and trt_backend.find_engine(model) is not None:
            kind = "tensorrt"
        else:
            kind = "onnxruntime" if why["onnxruntime"] is None else "torch"
    if why.get(kind):
        raise BackendError(why[kind])
    if kind == "torch":
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(model, device=device, **options)
    if kind == "tensorrt":
        found = trt_backend.find_engine(model)
        if found is None:
            raise BackendError(f"no TensorRT engine was built for this generator (looked in "
                               f"{trt_backend.engine_dir(model)}); build one with: "
                               "python tools/export_trt.py --checkpoint CHECKPOINT --fp16")
        return trt_backend.TensorRTBackend(found, device=device, **options)
    from engine.backends import onnx_backend

    backend = onnx_backend.OnnxBackend(model, device=device, int8=int8, **options)
    if path is not None:
        onnx_backend.remember_export(entry or onnx_backend.index_entry(path), path, backend.export, model.info)
    return backend
