"""The ONNX export of a generator (needs torch; the runtime side is :mod:`engine.backends.onnx_backend`).

The export is opset 17 with a dynamic batch axis, inputs ``faces`` /
``mels``, output ``frames``. :class:`~engine.backends.onnx_backend.OnnxBackend`
caches it under ``$DUBCAM_HOME/cache/onnx`` by :func:`weights_hash`;
``tools/export_trt.py`` uses the same export for TensorRT, with ``fp16=True``
for an FP16 engine.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from engine.backends import BackendError, example_inputs


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
    faces, mels = example_inputs(2, size, mel_frames=model.info.mel_frames)
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
