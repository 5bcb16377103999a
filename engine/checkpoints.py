"""Safe reading and writing of checkpoints, and what a file is (DESIGN.md "Models and weights").

The generator formats themselves live next to their models and are read by
the one factory, ``engine.models.load`` (its registry
``engine.models.GENERATOR_FORMATS``): ours (``format: "dubcam-generator"``,
``engine.models.generator``) and Wav2Lip's ``wav2lip.pth`` /
``wav2lip_gan.pth`` (``engine.models.wav2lip``, spec §3.2). This module
knows their names only to say what a wrong file is.

Everything is read with ``torch.load(weights_only=True)``: a file that needs
arbitrary pickled objects is refused, never executed. Other known kinds (the
lip-sync expert, AV-HuBERT, syncnet_python) are recognised and refused with
a message that says what the file is and where it belongs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported where a file is read or written: importing this module (for
    import torch   # CheckpointError) must not import it (the torch-free start, engine.backends.onnx_backend)

FORMAT = "dubcam-generator"
VERSION = 1
"""Our generator format (``engine.models.generator.save_generator``) and its newest version."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the expected kind, or cannot be read safely."""


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    import torch

    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_load(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU with clear errors.

    Raises FileNotFoundError, or :class:`CheckpointError` when the file is
    not a torch file or would need arbitrary code to unpickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (not a zip), EOFError (truncated)
        msg = str(e).split("\n")[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path}: refused: it holds pickled objects other than weights "
                                  f"(not a generator checkpoint; {msg})") from e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from e


def strip_module(sd: dict) -> dict:
    """A state dict with the ``module.`` prefix of (Distributed)DataParallel removed from its keys."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_weights(model: torch.nn.Module, path: str | Path, ignore: tuple[str, ...] = (),
                 checkpoint: object | None = None) -> torch.nn.Module:
    """Load a raw state dict, or a ``{"state_dict": ...}`` one (``module.``
    stripped), read with ``weights_only=True``, into ``model``.

    Keys that start with a prefix in ``ignore`` are dropped first (heads the
    model does not use). Only absent or extra BatchNorm
    ``num_batches_tracked`` entries are forgiven (whether published files
    carry them varies, spec §6). ``checkpoint``: the object already read
    from ``path`` by :func:`safe_load` (not read again). Returns the model in
    eval mode.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file, not a state dict, or weights that
            do not fit (the misfitting keys are listed).
    """
    checkpoint = safe_load(path) if checkpoint is None else checkpoint
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: not a state dict")
    state_dict = {k: v for k, v in strip_module(state_dict).items() if not (ignore and k.startswith(ignore))}
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__}: {' '.join(str(e).split())}") from e
    misfits = [k for k in result.missing_keys + result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if misfits:
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__} (the file is {describe(checkpoint)}); "
                              f"missing or unexpected: {misfits}")
    return model.eval()


def describe(obj) -> str:
    """A short name of what a loaded checkpoint object is, for error messages."""
    if isinstance(obj, dict):
        if obj.get("format") == FORMAT:
            return "a dubcam generator"
        if obj.get("format") == "dubcam-train":
            return "a dubcam training checkpoint"
        sd = obj.get("state_dict", obj)
        keys = set(strip_module(sd)) if isinstance(sd, dict) else set()
        if "face_encoder_blocks.0.0.conv_block.0.weight" in keys and "face_decoder_blocks.0.0.conv_block.0.weight" in keys:
            return "a Wav2Lip generator"
        if "face_encoder.0.conv_block.0.weight" in keys and "audio_encoder.0.conv_block.0.weight" in keys:
            return "a Wav2Lip lip-sync expert (SyncNet_color): pass it as --syncnet"
        if any(k.startswith("netcnnaud.") for k in keys):
            return "a syncnet_python model (syncnet_v2.model): pass it as --syncnet"
        if "Mixed_7c.branch_pool.conv.weight" in keys:
            return "pytorch-fid's FID Inception weights: pass them as --inception"
        if "cfg" in obj and "model" in obj:
            return "a fairseq checkpoint (AV-HuBERT?): pass it as --avhubert"
    return "not a known checkpoint"


@dataclass(frozen=True)
class GeneratorFormat:
    """One generator checkpoint format of the registry ``engine.models.GENERATOR_FORMATS``.

    name: what :func:`describe` calls such a file. recognise(obj): whether a
    loaded object is one. build(obj, path): the model with its ``.info`` and
    weights (raises :class:`CheckpointError` when they do not fit).
    """

    name: str
    recognise: Callable[[object], bool]
    build: Callable[[object, "str | Path"], torch.nn.Module]


def load_state(model: torch.nn.Module, state_dict: dict, path: str | Path, kind: str) -> torch.nn.Module:
    """``model.load_state_dict(state_dict, strict=True)``, with a one-line :class:`CheckpointError`
    naming ``path`` and ``kind`` when the weights do not fit."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {kind}: {str(e).splitlines()[0]}") from e
    return model
