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
Its :class:`Unpickler` (the pure-Python unpickler, so that every opcode can
be checked) resolves only

- torch's tensor rebuild functions (``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``, ``_rebuild_parameter``,
  ``_rebuild_parameter_with_state``), each handed out as a wrapper made
  for that one load, never the function itself, and torch's storage
  classes;
- ``collections.OrderedDict`` and ``collections.defaultdict``, the builtin
  container and scalar types, and ``_codecs.encode`` for the ``latin1``
  codec only (protocol-2 pickles write ``bytes`` through it);
- ``operator.getitem``, through which typing generics such as
  ``Dict[str, Any]`` (in omegaconf node metadata) are pickled;

and turns every global of ``fairseq.*``, ``omegaconf.*``,
``sentencepiece.*``, ``typing.*`` and ``argparse.Namespace`` into an inert
:class:`Stub` class (made anew for each load) that records constructor
arguments and state and runs nothing. Any other global raises
:class:`UnsafeCheckpointError` naming it. Pickle's BUILD (set an object's
state) is allowed only on the objects that a checkpoint legitimately
builds: instances of the stubs, ``OrderedDict`` instances (a plain
attribute dict, as ``state_dict()._metadata``) and tensors / parameters
(their own ``__setstate__``); BUILD on anything else (a function, a class,
a storage type) raises :class:`UnsafeCheckpointError`.

What this guarantees, for any file: loading runs no code of the file's
choosing (no import, no call outside the list above), and it changes no
object that existed before the load (no module, class or function of the
process, torch's included: the objects the file can reach are the ones
it creates, the wrappers and stub classes of its own load, and classes
whose state BUILD refuses), so nothing loaded later is affected (the
property that ``torch.load(weights_only=True)`` is meant to have).
What it does not guarantee: that the values are right (the weights are
whatever the file says), that loading is cheap (a file can ask for huge
allocations or deep nesting: memory, time, ``RecursionError``), or that
the file is what its name says (``load_fairseq_checkpoint`` checks only
its top-level layout; :meth:`engine.models.avhubert.AVHubert.from_checkpoint`
checks the weights against the config). Read only files whose origin you
trust.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import collections
import collections.abc
import operator
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from engine.checkpoints import CheckpointError, describe

__all__ = ["Stub", "Unpickler", "UnsafeCheckpointError", "load", "load_fairseq_checkpoint", "to_plain"]

_STUBBED_MODULES = ("fairseq", "omegaconf", "sentencepiece", "typing")
_STUBBED_GLOBALS = {("argparse", "Namespace")}
_TORCH_REBUILD = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
)
_BUILTIN_TYPES = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "str", "bytes", "int", "float", "bool")


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of ``bytes`` use it (``encode(text, "latin1")``), nothing else."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r} (only latin1)")
    return codecs.encode(obj, "latin1", errors)


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("_codecs", "encode"): _latin1_encode,
    ("_operator", "getitem"): operator.getitem,
    **{("builtins", name): getattr(builtins, name) for name in _BUILTIN_TYPES},
}


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A fairseq checkpoint that asks for a global, or a change of an object's state, outside the
    allow list (module docstring). Both a :class:`~engine.checkpoints.CheckpointError` and a
    :class:`pickle.UnpicklingError`."""


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


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"stub_global": f"{module}.{name}", "__module__": __name__})


def _rebuild_wrapper(name: str):
    """A new function that calls ``torch._utils.<name>``: what a load hands out instead of torch's own."""
    target = getattr(torch._utils, name)

    def rebuild(*args: Any) -> Any:
        return target(*args)

    rebuild.__name__ = rebuild.__qualname__ = name
    return rebuild


def _is_storage_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(
        obj, (torch.storage.TypedStorage, torch.storage.UntypedStorage)
    )


def _what(obj: Any) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the function {getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return f"an object of type {type(obj).__module__}.{type(obj).__qualname__}"


class Unpickler(pickle._Unpickler):
    """The pure-Python ``pickle`` unpickler with the ``find_class`` and BUILD of the module docstring.

    Each instance (one per load) makes its own rebuild wrappers and stub classes.

    Raises:
        UnsafeCheckpointError: for a global outside the allow list (its
            ``module.name`` in the message), or BUILD on an object that is
            not a stub instance, an ``OrderedDict`` or a tensor.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rebuild = {name: _rebuild_wrapper(name) for name in _TORCH_REBUILD}
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name some globals as Python 2 did (``__builtin__.long``).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch._utils" and name in self._rebuild:
            return self._rebuild[name]
        if module == "torch" and _is_storage_class(vars(torch).get(name)):  # vars: no lazy submodule import
            return vars(torch)[name]
        if module.split(".")[0] in _STUBBED_MODULES or key in _STUBBED_GLOBALS:
            if key not in self._stubs:
                self._stubs[key] = _stub_class(module, name)
            return self._stubs[key]
        raise UnsafeCheckpointError(
            f"refusing to load global '{module}.{name}': a fairseq checkpoint may only "
            "reference torch tensors, plain containers and fairseq/omegaconf/sentencepiece "
            "objects (see engine.fairseq_pickle)"
        )

    def _load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        # The classes' own methods, never one an instance may carry in its __dict__.
        if isinstance(inst, Stub):
            self.stack.pop()
            Stub.__setstate__(inst, state)  # kept, nothing run
            return
        if type(inst) in (torch.Tensor, torch.nn.Parameter):
            self.stack.pop()
            torch.Tensor.__setstate__(inst, state)  # legacy tensor pickles: storage, requires_grad, hooks
            return
        if type(inst) is collections.OrderedDict and isinstance(state, dict) and all(type(k) is str for k in state):
            self.stack.pop()
            inst.__dict__.update(state)  # attributes of this new dict (a state dict's _metadata)
            return
        raise UnsafeCheckpointError(
            f"refusing to set the state of {_what(inst)}: a fairseq checkpoint may only set the state of "
            "fairseq/omegaconf objects, OrderedDicts and tensors (see engine.fairseq_pickle)"
        )

    dispatch[pickle.BUILD[0]] = _load_build


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
        UnsafeCheckpointError: the file references a global, or sets the
            state of an object, outside the allow list (see the module
            docstring); also a :class:`pickle.UnpicklingError`.
        engine.checkpoints.CheckpointError: anything else that is not a
            readable fairseq checkpoint (not a torch file, truncated, no
            ``"model"`` state dict, a config :func:`to_plain` cannot read).
        Every message is one line that starts with the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=sys.modules[__name__]
        )
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(f"{path}: {e}") from None
    except Exception as e:  # not a torch file, truncated: UnpicklingError, RuntimeError, EOFError, ...
        msg = " ".join(str(e).split()) or type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), collections.abc.Mapping):
        raise CheckpointError(f"{path}: not a fairseq (AV-HuBERT) checkpoint: no 'model' state dict; "
                              f"found {describe(checkpoint)}")
    try:
        if checkpoint.get("cfg") is not None:
            cfg = to_plain(checkpoint["cfg"])
        elif checkpoint.get("args") is not None:
            cfg = {"model": to_plain(checkpoint["args"])}
        else:
            cfg = {}
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: its config is not a mapping but {type(cfg).__name__}")
    return {"cfg": cfg, "model": checkpoint["model"]}
