"""Restricted unpickling of fairseq checkpoints (AV-HuBERT), without fairseq.

Spec: ``MODELS_SPEC.md`` §1.5. A fairseq checkpoint is a ``torch.save`` pickle
of ``{args, cfg, model, criterion, optimizer_history, task_state,
extra_state}``. Besides tensors it pickles objects of fairseq and its
dependencies (``fairseq.data.dictionary.Dictionary`` in ``task_state``,
``sentencepiece.SentencePieceProcessor``, and in files from older tooling
``omegaconf`` ``DictConfig`` trees or an ``argparse.Namespace``), so
``torch.load(weights_only=True)`` refuses it.

This module is a ``pickle_module`` for
``torch.load(path, weights_only=False, pickle_module=engine.fairseq_pickle)``.
Its :class:`Unpickler` resolves only

- torch's own tensor rebuild functions and storage classes;
- ``collections.OrderedDict`` and ``collections.defaultdict``, the builtin
  container and scalar types, and ``_codecs.encode`` (protocol-2 pickles
  write ``bytes`` through it);
- ``operator.getitem``, through which typing generics such as
  ``Dict[str, Any]`` (in omegaconf node metadata) are pickled;

and turns every global of ``fairseq.*``, ``omegaconf.*``,
``sentencepiece.*``, ``typing.*`` and ``argparse.Namespace`` into an inert
:class:`Stub` class that records constructor arguments and state and runs
nothing. Any other global raises :class:`pickle.UnpicklingError` naming it.
None of these can run code that the file chooses; still, read only files
whose origin you trust.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import functools
import operator
import os
import pickle
import sys
from typing import Any

import torch

__all__ = ["Stub", "Unpickler", "load", "load_fairseq_checkpoint", "to_plain"]

_STUBBED_MODULES = ("fairseq", "omegaconf", "sentencepiece", "typing")
_STUBBED_GLOBALS = {("argparse", "Namespace")}
_TORCH_REBUILD = {
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
}
_BUILTIN_TYPES = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "str", "bytes", "int", "float", "bool")
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): codecs.encode,
    ("_operator", "getitem"): operator.getitem,
    **{("builtins", name): getattr(builtins, name) for name in _BUILTIN_TYPES},
}


class Stub:
    """Inert stand-in for an object of a class that is not imported.

    Accepts whatever pickle hands it (``__new__``/``__init__`` arguments from
    REDUCE/NEWOBJ, the ``__setstate__`` state from BUILD) and keeps it in
    ``stub_args`` and ``stub_state``; ``stub_global`` is the
    ``"module.name"`` it replaces. Subscripting the class (a typing generic
    such as ``Dict[str, Any]``) gives the class back. It has no behaviour.
    """

    stub_global = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Stub":
        obj = super().__new__(cls)
        obj.stub_args = args
        obj.stub_state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.stub_state = state

    def __class_getitem__(cls, item: Any) -> type:
        return cls

    def __repr__(self) -> str:
        return f"Stub({self.stub_global})"


@functools.cache
def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"stub_global": f"{module}.{name}", "__module__": __name__})


def _is_storage_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(
        obj, (torch.storage.TypedStorage, torch.storage.UntypedStorage)
    )


class Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` follows the module docstring.

    Raises:
        pickle.UnpicklingError: for any global outside the allow list, with
            the global's ``module.name`` in the message.
    """

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name some globals as Python 2 did (``__builtin__.long``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch._utils" and name in _TORCH_REBUILD:
            return getattr(torch._utils, name)
        if module == "torch" and _is_storage_class(getattr(torch, name, None)):
            return getattr(torch, name)
        if module.split(".")[0] in _STUBBED_MODULES or key in _STUBBED_GLOBALS:
            return _stub_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}': a fairseq checkpoint may only "
            "reference torch tensors, plain containers and fairseq/omegaconf/sentencepiece "
            "objects (see engine.fairseq_pickle)"
        )


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler` (torch calls it for the
    header records of legacy, non-zip files)."""
    return Unpickler(file, **kwargs).load()


def to_plain(obj: Any) -> Any:
    """Turn a loaded config into plain ``dict``/``list``/scalars.

    Dicts, lists and tuples are converted recursively. Stubs unwrap as:
    an omegaconf ``DictConfig``/``ListConfig`` to its ``_content``, an
    omegaconf value node to its ``_val``, an ``argparse.Namespace`` to its
    attribute dict, an ``Enum`` member (pickled as ``Class(value)``) to its
    value. Unresolved interpolations stay strings such as ``"${model.x}"``.

    Raises:
        ValueError: for a stub that is none of these.
    """
    if isinstance(obj, dict):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(value) for value in obj]
    if not isinstance(obj, Stub):
        return obj
    state = obj.stub_state
    if isinstance(state, dict):
        for field in ("_content", "_val"):
            if field in state:
                return to_plain(state[field])
        if obj.stub_global == "argparse.Namespace":
            return to_plain(state)
    if state is None and len(obj.stub_args) == 1:
        return to_plain(obj.stub_args[0])
    raise ValueError(f"cannot convert a pickled {obj.stub_global} into a plain config value")


def load_fairseq_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a fairseq checkpoint (``.pt``) on the CPU without fairseq.

    Args:
        path: a file written by fairseq's ``Trainer.save_checkpoint`` (zip or
            legacy torch serialization), e.g. AV-HuBERT ``base_vox_433h.pt``.

    Returns:
        ``{"cfg": dict, "model": dict[str, Tensor]}``. ``cfg`` is the
        checkpoint's config as plain nested dicts, whether it was stored as
        dicts or as pickled ``DictConfig`` objects; files that only carry an
        ``argparse.Namespace`` in ``args`` give ``{"model": vars(args)}``.
        ``model`` is the state dict exactly as stored (keys and dtypes
        unchanged). Everything else in the file is dropped.

    Raises:
        FileNotFoundError: no such file.
        pickle.UnpicklingError: the file references a global outside the
            allow list (see the module docstring).
        KeyError: the file has no ``"model"`` entry.
        ValueError: the config holds objects :func:`to_plain` cannot read.
    """
    checkpoint = torch.load(
        path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__]
    )
    if checkpoint.get("cfg") is not None:
        cfg = to_plain(checkpoint["cfg"])
    elif checkpoint.get("args") is not None:
        cfg = {"model": to_plain(checkpoint["args"])}
    else:
        cfg = {}
    return {"cfg": cfg, "model": checkpoint["model"]}
