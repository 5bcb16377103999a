"""ONNX Runtime backend and the ONNX export of a generator.

The export (opset 17, dynamic batch, inputs ``faces`` / ``mels``, output
``frames``) is cached under ``$DUBCAM_HOME/cache/onnx`` keyed by a hash of
the weights, so a model is exported once per machine.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from engine.backends import BackendError


def dubcam_home() -> Path:
    """``$DUBCAM_HOME`` (default ``~/.cache/dubcam``): user models and caches."""
    return Path(os.environ.get("DUBCAM_HOME", Path.home() / ".cache" / "dubcam"))


def export_onnx(model: torch.nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export a generator to ONNX with a dynamic batch axis.

    Inputs ``faces [N,6,S,S]`` and ``mels [N,1,80,16]`` (float32), output
    ``frames [N,3,S,S]``. Raises :class:`BackendError` if the export fails.
    """
    size = model.info.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.rand(2, 6, size, size), torch.rand(2, 1, 80, 16) * 8 - 4)
    tmp = path.with_suffix(".tmp.onnx")
    try:
        torch.onnx.export(model.eval(), example, str(tmp), input_names=["faces", "mels"],
                          output_names=["frames"], opset_version=opset, dynamo=False,
                          dynamic_axes={"faces": {0: "batch"}, "mels": {0: "batch"}, "frames": {0: "batch"}})
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise BackendError(f"ONNX export failed: {e}") from e
    os.replace(tmp, path)
    return path


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256(repr(model.info).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def session_options(threads: int | None = None):
    """ONNX Runtime settings for the real-time case: full graph optimisation, sequential execution,
    ``threads`` intra-op threads (default: all cores), no thread spinning between calls."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OnnxBackend:
    """Runs a generator in ONNX Runtime (see :class:`engine.backends.Backend`).

    Args:
        model: a generator module with ``.info`` (exported, then cached), or
        onnx_path: an exported file to use as is (``info`` must then be given).
        device: ``"cpu"``, or ``"cuda"`` for the CUDA execution provider.
        threads: intra-op threads (default all cores).
    """

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module | None = None, device: str = "cpu", threads: int | None = None,
                 onnx_path: str | Path | None = None, info=None):
        import onnxruntime as ort

        if onnx_path is None:
            if model is None:
                raise ValueError("give a model or an onnx_path")
            onnx_path = dubcam_home() / "cache" / "onnx" / f"{_weights_hash(model)}.onnx"
            if not onnx_path.is_file():
                export_onnx(model, onnx_path)
        self.info = info or model.info
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendError("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), sess_options=session_options(threads),
                                            providers=providers)

    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        return self.session.run(["frames"], {"faces": np.ascontiguousarray(faces, dtype=np.float32),
                                             "mels": np.ascontiguousarray(mels, dtype=np.float32)})[0]
