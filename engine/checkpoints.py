"""Checkpoint formats: detection, safe loading, key remapping (DESIGN.md "Models and weights").

Generators load from two formats:

* **ours** (``format: "dubcam-generator"``): ``{"format", "version",
  "config", "state_dict", "meta"}`` written by :func:`save_generator`;
* **Wav2Lip's** ``wav2lip.pth`` / ``wav2lip_gan.pth``: ``{"state_dict",
  "optimizer", "global_step", "global_epoch"}`` with keys such as
  ``face_encoder_blocks.0.0.conv_block.0.weight`` (``module.`` stripped if
  present), spec §3.2.

Everything is read with ``torch.load(weights_only=True)``: a file that needs
arbitrary pickled objects is refused, never executed. Other known kinds (the
lip-sync expert, AV-HuBERT, syncnet_python) are recognised and refused with
a message that says what the file is and where it belongs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "dubcam-generator"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a checkpoint of the expected kind, or cannot be read safely."""


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (not a zip), EOFError (truncated)
        msg = str(e).split("\n")[0]
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path}: refused: it holds pickled objects other than weights "
                                  f"(not a generator checkpoint; {msg})") from e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from e


def _strip_module(sd: dict) -> dict:
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
    state_dict = {k: v for k, v in _strip_module(state_dict).items() if not (ignore and k.startswith(ignore))}
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
        keys = set(_strip_module(sd)) if isinstance(sd, dict) else set()
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


def save_generator(model: torch.nn.Module, path: str | Path, meta: dict | None = None, half: bool = False) -> None:
    """Write our generator format (atomic). ``meta``: free-form provenance (data, steps, scores).

    ``half`` stores floating-point tensors as float16 (half the file; they
    load back into float32 parameters, a relative change of about 1e-3).
    """
    sd = model.state_dict()
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    atomic_save({"format": FORMAT, "version": VERSION, "config": model.config_dict(),
                 "state_dict": sd, "meta": dict(meta or {})}, path)


def load_generator(path: str | Path) -> torch.nn.Module:
    """Build and load the generator stored in ``path``, in eval mode, on the CPU.

    Returns our :class:`~engine.models.generator.Generator` or a
    :class:`~engine.models.wav2lip.Wav2LipRGB`; either has ``.info``
    (:class:`~engine.models.GeneratorInfo`) and takes RGB input.

    Raises FileNotFoundError; :class:`CheckpointError` for a file of any
    other kind (the message says what it is) or whose weights do not fit.
    """
    from engine.models.generator import Generator, GeneratorConfig
    from engine.models.wav2lip import Wav2Lip, Wav2LipRGB

    obj = safe_load(path)
    kind = describe(obj)
    if kind == "a dubcam generator":
        if obj.get("version", 0) > VERSION:
            raise CheckpointError(f"{path}: written by a newer dubcam (format version {obj['version']})")
        model = Generator(GeneratorConfig(**obj["config"]))
        sd = obj["state_dict"]
    elif kind == "a Wav2Lip generator":
        net = Wav2Lip()
        model = Wav2LipRGB(net)
        model.info = _wav2lip_info()
        sd = {"net." + k: v for k, v in _strip_module(obj.get("state_dict", obj)).items()}
    else:
        raise CheckpointError(f"{path}: expected a generator checkpoint (dubcam or Wav2Lip), found {kind}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {kind}: {str(e).splitlines()[0]}") from e
    if isinstance(obj, dict) and obj.get("meta"):
        model.meta = obj["meta"]
    return model.eval()


def _wav2lip_info():
    from engine.models import GeneratorInfo

    return GeneratorInfo(kind="wav2lip", size=96, mel_offset_s=0.0, identity="current", crop="wav2lip")
