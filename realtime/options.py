"""The model options every ``realtime`` command shares, and the pipeline they build.

``model_options(parser)`` adds ``--checkpoint --backend --int8 --device
--chunk --batching --no-detail --size``; ``pipeline_factory(args)`` loads the backend
once and returns a function that makes a new :class:`~realtime.pipeline.Pipeline`
on it (one per live session). Both ``realtime.cli`` (files) and
``realtime.cli_live`` (live commands) use them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.bundled import GENERATOR as DEFAULT_CHECKPOINT

log = logging.getLogger("realtime")


def model_options(p: argparse.ArgumentParser) -> None:
    """Add the model options (module doc) to ``p``."""
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="generator weights: a dubcam generator.pt or Wav2Lip's wav2lip.pth / wav2lip_gan.pth "
                        f"(default: the bundled model, {DEFAULT_CHECKPOINT.name})")
    g.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "tensorrt"), default="auto",
                   help="inference backend; auto = TensorRT when an engine was built for the checkpoint "
                        "(tools/export_trt.py) and a GPU is here, else ONNX Runtime if installed, else torch; "
                        "--checkpoint may also name an engine folder (default: auto)")
    g.add_argument("--int8", action="store_true",
                   help="run the INT8 version of the generator in ONNX Runtime (CPU; ~1.5x faster, "
                        "calibrated on the bundled demo face; made once and cached)")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:n] (default: cpu)")
    g.add_argument("--chunk", type=int, default=5, metavar="K",
                   help="the most frames per generator call (default: 5); with --batching ready a cap, not a wait")
    g.add_argument("--batching", choices=("ready", "fixed"), default="ready",
                   help="ready: a frame goes to the generator as soon as its mel window is in, with the frames "
                        "ready then (lowest latency; default); fixed: full chunks of --chunk frames (GPU "
                        "throughput, adds up to chunk-1 frames of latency)")
    g.add_argument("--no-detail", action="store_true",
                   help="paste the generated face as it is, without the input's own skin detail where the "
                        "generator drew what the input shows (engine.compose.transfer_detail; default: kept)")
    g.add_argument("--size", type=int, default=None,
                   help="face size S the checkpoint must have (default: whatever the checkpoint was trained at)")


def pipeline_factory(args):
    """Load the backend once; return a function that makes a new Pipeline on it (one per live session).

    With ``args.shared_batch`` > 0 (``serve``) the sessions share the backend's calls
    (:class:`engine.backends.shared.SharedBatches`, at most that many frames per call).

    Raises FileNotFoundError (the bundled generator missing), ValueError (``--size`` that does not fit),
    and what ``engine.backends.load`` raises for a bad checkpoint.
    """
    from engine import backends
    from realtime.pipeline import Pipeline, PipelineConfig

    ckpt = args.checkpoint or DEFAULT_CHECKPOINT
    if args.checkpoint is None and not ckpt.is_file():
        raise FileNotFoundError(f"the bundled generator is missing ({ckpt}); pass --checkpoint PATH")
    backend = backends.load(ckpt, kind=args.backend, device=args.device, int8=args.int8)
    if args.size is not None and args.size != backend.info.size:
        raise ValueError(f"{ckpt} works on {backend.info.size}px faces, not --size {args.size}")
    if getattr(args, "shared_batch", 0):
        from engine.backends.shared import SharedBatches

        backend = SharedBatches(backend, args.shared_batch)
    log.info("generator: %s (%s, %dpx) on %s", ckpt, backend.info.kind, backend.info.size, backend.name)
    config = PipelineConfig(chunk=args.chunk, batching=args.batching,
                            watermark=not getattr(args, "no_watermark", False),
                            detail=not getattr(args, "no_detail", False),
                            label=getattr(args, "label", None), label_corner=getattr(args, "label_corner", "top-left"))
    if not config.watermark:
        print("realtime: warning: --no-watermark: the generated frames carry no invisible watermark",
              file=sys.stderr)
    return lambda: Pipeline(backend, config)


class Profiles:
    """Personal models (``realtime enroll``) that ``serve`` offers, one per session: each ``*.dubcam`` of a folder.

    ``names``: the profiles (file stems), sorted. ``pipeline(name)``: a new
    Pipeline on that profile's generator, loaded the first time a session
    asks for it (thread-safe; later sessions share the backend), with the
    model options of ``args`` (backend, device, chunk, disclosure).

    Raises ValueError when ``folder`` is not a folder or holds no ``.dubcam``
    file; ``pipeline`` raises KeyError for a name not in ``names``, and what
    :func:`pipeline_factory` raises for a file that does not load.
    """

    def __init__(self, folder: Path, args):
        import threading

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"--profiles {folder}: not a folder")
        self.paths = {p.stem: p for p in sorted(folder.glob("*.dubcam"))}
        if not self.paths:
            raise ValueError(f"--profiles {folder}: no .dubcam file there (realtime enroll writes them)")
        self.names = list(self.paths)  # sorted: the paths were
        self._args, self._made, self._lock = args, {}, threading.Lock()

    def pipeline(self, name: str):
        with self._lock:
            if name not in self._made:
                self._made[name] = pipeline_factory(argparse.Namespace(**{**vars(self._args),
                                                                          "checkpoint": self.paths[name]}))
            make = self._made[name]
        return make()


def positive(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n
