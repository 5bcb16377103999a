"""Networks of dubcam and the one factory that loads a generator from a file.

``engine.models.load(path)`` returns the right generator for any supported
checkpoint, with its :class:`GeneratorInfo` attached as ``model.info``. The
formats are a registry, :data:`GENERATOR_FORMATS`: each entry is kept next
to its model (``generator.CHECKPOINT``: ours; ``wav2lip.CHECKPOINT``: the
published ``wav2lip.pth`` / ``wav2lip_gan.pth``) and says how to recognise a
file and how to build the model from it. Everything is read with
``engine.checkpoints.safe_load`` (``weights_only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.models.info import GeneratorInfo

if TYPE_CHECKING:
    import torch

__all__ = ["GENERATOR_FORMATS", "GeneratorInfo", "load"]


def __getattr__(name: str):
    """``GENERATOR_FORMATS``, the generator checkpoint formats ``load`` reads, in the order they are tried.

    Built on first use, so that importing this package (and ``engine.models.info``) does not import
    torch: the start of a generator from its cached ONNX export (``engine.backends.onnx_backend``)
    needs only :class:`GeneratorInfo`.
    """
    if name == "GENERATOR_FORMATS":
        from engine.models import generator, wav2lip

        formats = globals()["GENERATOR_FORMATS"] = (generator.CHECKPOINT, wav2lip.CHECKPOINT)
        return formats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(path: str | Path) -> torch.nn.Module:
    """Build and load the generator stored in ``path``, in eval mode, on the CPU.

    Returns our :class:`~engine.models.generator.Generator` or a
    :class:`~engine.models.wav2lip.Wav2LipRGB`; either has ``.info``
    (:class:`GeneratorInfo`), takes RGB input, and carries the file's
    ``meta`` (ours) as ``.meta``.

    Raises FileNotFoundError; :class:`~engine.checkpoints.CheckpointError`
    for a file of any other kind (the message says what it is), one from a
    newer dubcam, or one whose weights do not fit.
    """
    from engine.checkpoints import CheckpointError, describe, safe_load
    from engine.models import GENERATOR_FORMATS

    obj = safe_load(path)
    for fmt in GENERATOR_FORMATS:
        if fmt.recognise(obj):
            return fmt.build(obj, path).eval()
    raise CheckpointError(f"{path}: expected a generator checkpoint (dubcam or Wav2Lip), found {describe(obj)}")
