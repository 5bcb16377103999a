"""ONNX Runtime backend, and the cache that lets it start without torch.

A generator's ONNX export (:mod:`engine.backends.onnx_export`: opset 17,
dynamic batch, inputs ``faces`` / ``mels``, output ``frames``) is cached
under ``$DUBCAM_HOME/cache/onnx`` as ``<weights hash>.onnx``, so a model is
exported once per machine; so is its INT8 version (``int8=True``, see
:mod:`engine.backends.quantize`), as ``<export's hash>.int8.onnx``.

Beside them, ``files/<checkpoint hash>.json`` remembers, for a checkpoint
file that was loaded once (the SHA-256 of its bytes), which export it made
and the generator's :class:`~engine.models.info.GeneratorInfo`. The next
start from the same file (:func:`cached_export`, used by
``engine.backends.load``) then opens the export directly: no torch import,
no checkpoint load, no weights hash (about 2 s of ``realtime run``'s start
on a 2-core CPU). A changed file has another hash and is loaded as usual;
an entry that does not parse, or whose export is gone, is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.backends import BackendError
from engine.models.info import GeneratorInfo

if TYPE_CHECKING:
    from torch import nn

INDEX_FORMAT = "dubcam-onnx-index"
"""``format`` of a checkpoint's cache entry (``files/<hash>.json``, module doc)."""


def dubcam_home() -> Path:
    """``$DUBCAM_HOME`` (default ``~/.cache/dubcam``): user models and caches."""
    return Path(os.environ.get("DUBCAM_HOME", Path.home() / ".cache" / "dubcam"))


def onnx_cache() -> Path:
    """``$DUBCAM_HOME/cache/onnx``: the exports, their INT8 versions and the checkpoint index (module doc)."""
    return dubcam_home() / "cache" / "onnx"


def _file_hash(path: Path) -> str:
    """16 hex digits of the SHA-256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def index_entry(checkpoint: str | Path) -> Path:
    """Where the cache entry of a checkpoint file lives: ``files/<SHA-256 of its bytes>.json`` (module doc).
    Reads the whole file; raises FileNotFoundError / OSError for one that cannot be read."""
    return onnx_cache() / "files" / f"{_file_hash(Path(checkpoint))}.json"


def cached_export(entry: Path) -> tuple[Path, GeneratorInfo] | None:
    """The cached float32 export and the generator's info that a checkpoint's :func:`index_entry` names,
    or ``None`` (module doc): the file was never loaded here (or has changed since), or its entry does not
    parse, names no export that still exists, or holds info of another shape."""
    try:
        meta = json.loads(entry.read_text())
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != 1:
            return None
        onnx_path = onnx_cache() / Path(meta["onnx"]).name
        info = GeneratorInfo(**meta["info"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return (onnx_path, info) if onnx_path.is_file() else None


def remember_export(entry: Path, checkpoint: str | Path, onnx_path: Path, info: GeneratorInfo) -> None:
    """Record in ``entry`` (the checkpoint's :func:`index_entry`) that its generator is the export
    ``onnx_path`` (in :func:`onnx_cache`) with ``info``, for :func:`cached_export`. Written to a temporary
    file and renamed (never half-written)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": INDEX_FORMAT, "version": 1, "onnx": Path(onnx_path).name,
                               "info": dataclasses.asdict(info), "checkpoint": str(checkpoint)}))
    os.replace(tmp, entry)


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

    Attributes: ``export`` the float32 export, ``path`` the file the session runs (the INT8 one
    with ``int8``), ``info``.

    Raises BackendError: the export failed, or no CUDA provider for ``device="cuda"``.
    """

    name = "onnxruntime"

    def __init__(self, model: nn.Module | None = None, device: str = "cpu", threads: int | None = None,
                 onnx_path: str | Path | None = None, info=None, int8: bool = False):
        import onnxruntime as ort

        if onnx_path is None:
            if model is None:
                raise ValueError("give a model or an onnx_path")
            from engine.backends.onnx_export import export_onnx, weights_hash

            onnx_path = onnx_cache() / f"{weights_hash(model)}.onnx"
            if not onnx_path.is_file():
                export_onnx(model, onnx_path)
        self.info = info or model.info
        self.export = onnx_path = Path(onnx_path)
        if int8:
            from engine.backends import quantize

            q = onnx_cache() / f"{_file_hash(onnx_path)}.int8.onnx"
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
