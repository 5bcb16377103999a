"""TensorRT backend: runs an engine built by ``tools/export_trt.py`` (DESIGN.md "Backends").

A build is a folder (default ``$DUBCAM_HOME/engines/<weights hash>``, see
:func:`engine_dir`) holding

* ``generator.onnx``: the float32 ONNX export (opset 17, dynamic batch);
* ``generator.engine``: a serialized TensorRT engine (``--via tensorrt``), or
  ``generator.ep``: a torch-tensorrt ExportedProgram (``--via torch-tensorrt``);
* ``generator.json``: what was built and where (:data:`BUILD_FORMAT`):
  the generator's :class:`~engine.models.GeneratorInfo`, the weights hash,
  precision, batch profile (1..max, optimum k=5), TensorRT version, GPU
  name and compute capability, and the largest difference to PyTorch
  measured at build time.

A TensorRT engine only runs with the TensorRT version that built it and on
GPUs of the same compute capability, so :class:`TensorRTBackend` checks the
JSON against the running GPU and TensorRT first and says how to rebuild on
a mismatch (:func:`check_build`). Inference uses page-locked (pinned) host
buffers and device buffers allocated once for the largest batch, copies and
``execute_async_v3`` on one CUDA stream, and the TensorRT 10 name-based
tensor API (``set_input_shape`` / ``set_tensor_address``). Larger chunks
than the profile allows are run in pieces.

Needs ``tensorrt`` ≥ 10 (``pip install tensorrt``; NVIDIA's wheels) and
PyTorch with CUDA; ``torch_tensorrt`` for ``.ep`` builds. torch is imported
where it is used, so that ``engine.backends.load`` can ask whether TensorRT
is here (and find a build folder) without importing it: a CPU machine's
start of an ONNX-cached generator never imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.backends import BackendError
from engine.models.info import GeneratorInfo

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

BUILD_FORMAT = "dubcam-engine"
BUILD_JSON = "generator.json"


def unavailable_reason() -> str | None:
    """Why the TensorRT backend cannot run here, or ``None`` when it can (cheap: imports nothing)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is False)"
    return None


def engine_dir(model: torch.nn.Module) -> Path:
    """Where ``tools/export_trt.py`` puts the build of ``model`` by default and ``auto`` looks for it."""
    from engine.backends.onnx_backend import dubcam_home
    from engine.backends.onnx_export import weights_hash

    return dubcam_home() / "engines" / weights_hash(model)


def find_engine(model: torch.nn.Module) -> Path | None:
    """The ``generator.json`` of a finished engine build for ``model`` in :func:`engine_dir`, or ``None``."""
    path = engine_dir(model) / BUILD_JSON
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except ValueError:
        return None
    return path if meta.get("engine") and (path.parent / meta["engine"]).is_file() else None


def build_file(path: str | Path) -> Path | None:
    """The build JSON for a path that names a build (its folder, JSON, or engine file), else ``None``."""
    path = Path(path)
    if path.is_dir():
        path = path / BUILD_JSON
    elif path.suffix in (".engine", ".plan", ".ep"):
        path = path.with_suffix(".json")
    if path.suffix != ".json" or not path.is_file():
        return None
    return path


def read_build(path: str | Path) -> dict:
    """The build description (see module doc). Raises BackendError for a file that is not one."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise BackendError(f"{path}: not a readable engine description ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != BUILD_FORMAT:
        raise BackendError(f"{path}: not an engine description written by tools/export_trt.py")
    if not meta.get("engine"):
        raise BackendError(f"{path}: holds only the ONNX export; no engine was built "
                           f"({meta.get('engine_error', 'TensorRT was not run')})")
    return meta


def running_gpu(device: str | torch.device = "cuda") -> dict[str, str]:
    """``{"gpu": name, "compute_capability": "8.9"}`` of a CUDA device."""
    import torch

    device = torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    return {"gpu": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}


def check_build(meta: dict, gpu: dict[str, str], tensorrt_version: str) -> tuple[list[str], list[str]]:
    """Compare a build description with the machine: ``(errors, warnings)``.

    Errors: another TensorRT version (a serialized engine does not load
    across versions) or another compute capability (kernels are compiled
    for one architecture). Warning: another GPU model of the same
    capability (it runs, but was tuned for the other one). Each message
    ends with the command that rebuilds the engine here.
    """
    hint = ("; rebuild it here: python tools/export_trt.py --checkpoint "
            f"{meta.get('checkpoint') or 'CHECKPOINT'} --out DIR" + (" --fp16" if meta.get("precision") == "fp16" else ""))
    errors, warnings = [], []
    if meta.get("tensorrt") != tensorrt_version:
        errors.append(f"engine built with TensorRT {meta.get('tensorrt')}, this is TensorRT {tensorrt_version}" + hint)
    if meta.get("compute_capability") != gpu["compute_capability"]:
        errors.append(f"engine built for {meta.get('gpu')} (compute capability {meta.get('compute_capability')}), "
                      f"this GPU is {gpu['gpu']} ({gpu['compute_capability']})" + hint)
    elif meta.get("gpu") != gpu["gpu"]:
        warnings.append(f"engine built on {meta.get('gpu')}, running on {gpu['gpu']}: it may be slower than "
                        "an engine built here" + hint)
    return errors, warnings


class TensorRTBackend:
    """Runs a TensorRT (or torch-tensorrt) build of a generator (see :class:`engine.backends.Backend`).

    Args:
        path: the build's ``generator.json`` (or its folder, or its engine file).
        device: ``cuda[:n]``; ``cpu`` means ``cuda`` (TensorRT runs on GPUs only).

    Raises BackendError: not a build, TensorRT or the GPU missing, a build
    for another TensorRT version or GPU architecture (with the rebuild
    command), or an engine that does not deserialize.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda"):
        json_path = build_file(path)
        if json_path is None:
            raise BackendError(f"{path}: no engine build there (expected {BUILD_JSON} written by tools/export_trt.py)")
        why = unavailable_reason()
        if why:
            raise BackendError(why)
        import torch

        meta = read_build(json_path)
        self.meta = meta
        self.info = GeneratorInfo(**meta["info"])
        self.device = torch.device("cuda" if str(device) == "cpu" else device)
        self.max_batch = int(meta["max_batch"])
        engine_path = json_path.parent / meta["engine"]
        if meta["via"] == "torch-tensorrt":
            self._init_torch_tensorrt(engine_path)
        else:
            self._init_engine(engine_path)

    # -- a serialized TensorRT engine ------------------------------------------------
    def _init_engine(self, path: Path) -> None:
        import tensorrt as trt
        import torch

        errors, warnings = check_build(self.meta, running_gpu(self.device), trt.__version__)
        for w in warnings:
            log.warning("%s: %s", path, w)
        if errors:
            raise BackendError(f"{path}: " + "; ".join(errors))
        torch.cuda.set_device(self.device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{path}: TensorRT could not load this engine; rebuild it with tools/export_trt.py")
        self._context = self._engine.create_execution_context()
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if names != {"faces", "mels", "frames"}:
            raise BackendError(f"{path}: engine tensors {sorted(names)}, expected faces, mels, frames")
        self.max_batch = min(self.max_batch, self._engine.get_tensor_profile_shape("faces", 0)[2][0])
        S, B = self.info.size, self.max_batch
        shapes = {"faces": (B, 6, S, S), "mels": (B, 1, 80, self.info.mel_frames), "frames": (B, 3, S, S)}
        self._host, self._dev = {}, {}
        for name, shape in shapes.items():
            dtype = _torch_dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            self._host[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
            self._dev[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self._context.set_tensor_address(name, self._dev[name].data_ptr())
        self._stream = torch.cuda.Stream(self.device)
        self._run = self._run_engine

    def _run_engine(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        import torch

        n, S = len(faces), self.info.size
        h, d = self._host, self._dev
        h["faces"][:n].copy_(torch.from_numpy(faces))
        h["mels"][:n].copy_(torch.from_numpy(mels))
        with torch.cuda.stream(self._stream):
            d["faces"][:n].copy_(h["faces"][:n], non_blocking=True)
            d["mels"][:n].copy_(h["mels"][:n], non_blocking=True)
            self._context.set_input_shape("faces", (n, 6, S, S))
            self._context.set_input_shape("mels", (n, 1, 80, self.info.mel_frames))
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendError("TensorRT failed to run the engine (see its log above)")
            h["frames"][:n].copy_(d["frames"][:n], non_blocking=True)
        self._stream.synchronize()
        return h["frames"][:n].numpy().astype(np.float32, copy=True)

    # -- a torch-tensorrt ExportedProgram ---------------------------------------------
    def _init_torch_tensorrt(self, path: Path) -> None:
        import tensorrt as trt
        import torch
        import torch_tensorrt  # registers the TensorRT runtime ops the saved program calls

        errors, warnings = check_build(self.meta, running_gpu(self.device), trt.__version__)
        for w in warnings:
            log.warning("%s: %s", path, w)
        if errors:
            raise BackendError(f"{path}: " + "; ".join(errors))
        self._module = torch_tensorrt.load(str(path)).module()
        self._stream = torch.cuda.Stream(self.device)
        self._run = self._run_module

    def _run_module(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), torch.cuda.stream(self._stream):
            f = torch.from_numpy(faces).pin_memory().to(self.device, non_blocking=True)
            m = torch.from_numpy(mels).pin_memory().to(self.device, non_blocking=True)
            out = self._module(f, m).float().cpu()
        return out.numpy()

    # -- the Backend interface ----------------------------------------------------------
    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        faces = np.ascontiguousarray(faces, dtype=np.float32)
        mels = np.ascontiguousarray(mels, dtype=np.float32)
        S, M = self.info.size, self.info.mel_frames
        if faces.shape[1:] != (6, S, S) or mels.shape[1:] != (1, 80, M):
            raise ValueError(f"expected faces [k,6,{S},{S}] and mels [k,1,80,{M}], got {faces.shape} and {mels.shape}")
        parts = [self._run(faces[i:i + self.max_batch], mels[i:i + self.max_batch])
                 for i in range(0, len(faces), self.max_batch)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _torch_dtype(np_dtype) -> torch.dtype:
    import torch

    return torch.from_numpy(np.zeros(1, dtype=np_dtype)).dtype
