"""Eager PyTorch backend: CPU float32, or CUDA with optional fp16."""

from __future__ import annotations

import numpy as np
import torch


class TorchBackend:
    """Runs a generator module eagerly (see :class:`engine.backends.Backend`).

    Args:
        model: a generator with ``.info``.
        device: ``"cpu"`` or ``"cuda[:n]"``.
        fp16: half precision (CUDA only; default on with CUDA).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", fp16: bool | None = None):
        self.info = model.info
        self.device = torch.device(device)
        self.fp16 = self.device.type == "cuda" if fp16 is None else fp16
        if self.fp16 and self.device.type != "cuda":
            raise ValueError("fp16 needs a CUDA device")
        self.model = model.eval().to(self.device)
        if self.fp16:
            self.model = self.model.half()

    @torch.inference_mode()
    def run(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        dtype = torch.float16 if self.fp16 else torch.float32
        f = torch.from_numpy(np.ascontiguousarray(faces)).to(self.device, dtype)
        m = torch.from_numpy(np.ascontiguousarray(mels)).to(self.device, dtype)
        return self.model(f, m).float().cpu().numpy()
