"""ONNX Runtime backend and the ONNX export of a generator.

The export (opset 17, dynamic batch, inputs ``faces`` / ``mels``, output
``frames``) is cached under ``$DUBCAM_HOME/cache/onnx`` keyed by a hash of
the weights, so a model is exported once per machine; so is its INT8
version (``int8=True``, see :mod:`engine.backends.quantize`).
``tools/export_trt.py`` uses the same export for TensorRT, with
``fp16=True`` for an FP16 engine.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.backends import BackendError, example_inputs


def dubcam_home() -> Path:
    """``$DUBCAM_HOME`` (default ``~/.cache/dubcam``): user models and caches."""
    return Path(os.environ.get("DUBCAM_HOME", Path.home() / ".cache" / "dubcam"))


class Traced(nn.Module):
    """``forward(faces, mels)`` of a generator and nothing else: the legacy ONNX exporter passes every default
    argument of the traced ``forward`` as an input, and a generator's training-only keywords (``lips``,
    ``return_lips``) must not become part of the graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        return self.model(faces, mels)


class HalfPrecision(nn.Module):
    """A generator computing in float16 behind float32 inputs and outputs (for strongly typed TensorRT)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        return self.model(faces.half(), mels.half()).float()


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17, fp16: bool = False) -> Path:
    """Export a generator to ONNX with a dynamic batch axis.

    Inputs ``faces [N,6,S,S]`` and ``mels [N,1,80,16]`` (float32), output
    ``frames [N,3,S,S]`` (float32). ``fp16=True`` stores the weights and
    computes in float16 (casts at the inputs and the output): what a
    strongly typed TensorRT network (TensorRT ≥ 10; the only kind in 11)
    builds as an FP16 engine. The model is traced on the device its
    parameters are on. Raises :class:`BackendError` if the export fails.
    """
    if opset < 17:
        raise ValueError(f"opset {opset}: dubcam exports need opset 17 or newer")
    size = model.info.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    faces, mels = example_inputs(2, size)
    example = (torch.from_numpy(faces).to(device), torch.from_numpy(mels).to(device))
    module = HalfPrecision(model.eval()).eval() if fp16 else Traced(model.eval()).eval()
    tmp = path.with_suffix(".tmp.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(module, example, str(tmp), input_names=["faces", "mels"],
                              output_names=["frames"], opset_version=opset, dynamo=False,
                              dynamic_axes={"faces": {0: "batch"}, "mels": {0: "batch"}, "frames": {0: "batch"}})
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise BackendError(f"ONNX export failed: {e}") from e
    os.replace(tmp, path)
    return path


def weights_hash(model: nn.Module) -> str:
    """16 hex digits identifying a generator's kind, size and weights (names ONNX caches and engines)."""
    h = hashlib.sha256(repr(model.info).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, so containers and ``taskset`` count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None):
    """ONNX Runtime settings for the real-time case.

    Full graph optimisation (constant folding, Conv+BN+ReLU fusion, the
    NCHWc layouts of the CPU provider, QDQ → QLinearConv for INT8 models),
    sequential execution (the generator is one chain of convolutions), and
    ``threads`` intra-op threads (default: the cores this process may use),
    which do not spin between calls: a pipeline calls the generator once per
    chunk, and spinning threads would steal the cores that face tracking and
    encoding need in between. Each :class:`OnnxBackend`, hence each
    pipeline, has its own session.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or cpu_cores()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class OnnxBackend:
    """Runs a generator in ONNX Runtime (see :class:`engine.backends.Backend`).

    Args:
        model: a generator module with ``.info`` (exported, then cached), or
        onnx_path: an exported file to use as is (``info`` must then be given).
        device: ``"cpu"``, or ``"cuda"`` for the CUDA execution provider.
        threads: intra-op threads (default: all cores this process may use).
        int8: run the INT8 (static QDQ) version of the export, made once
            and cached beside the export, calibrated on real face crops
            (the bundled demo face and speech). About 1.5× faster than float32 on an AVX-512 VNNI CPU;
            the quality cost is measured by ``tools/bench.py``
            (:mod:`engine.backends.quantize`).

    Raises BackendError: the export failed, or no CUDA provider for ``device="cuda"``.
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module | None = None, device: str = "cpu", threads: int | None = None,
                 onnx_path: str | Path | None = None, info=None, int8: bool = False):
        import onnxruntime as ort

        if onnx_path is None:
            if model is None:
                raise ValueError("give a model or an onnx_path")
            onnx_path = dubcam_home() / "cache" / "onnx" / f"{weights_hash(model)}.onnx"
            if not onnx_path.is_file():
                export_onnx(model, onnx_path)
        self.info = info or model.info
        onnx_path = Path(onnx_path)
        if int8:
            from engine.backends import quantize

            q = dubcam_home() / "cache" / "onnx" / f"{_file_hash(onnx_path)}.int8.onnx"
            if not q.is_file():
                batches = quantize.calibration_batches(self.info, quantize.CALIBRATION_VIDEO,
                                                       quantize.CALIBRATION_AUDIO)
                quantize.quantize_int8(onnx_path, q, batches)
            onnx_path = q
            self.name = "onnxruntime-int8"
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        self.path = onnx_path
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads),
                                            providers=providers)

    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        return self.session.run(["frames"], {"faces": np.ascontiguousarray(faces, dtype=np.float32),
                                             "mels": np.ascontiguousarray(mels, dtype=np.float32)})[0]
