"""The configuration of ``python -m train.run``: schema, defaults, loading.

A config is the defaults (:class:`TrainConfig`) ← a YAML file (which may
start from another with ``include: other.yaml``, relative to itself) ←
``key=value`` overrides (dotted keys reach nested values; values are parsed
as YAML). The result is a plain nested ``dict`` (what the training code
reads and what checkpoints store).

The schema is the dataclasses below: every key, its type, its range or
choices, and its default. A key that is not in it (``los.l1``,
``loss.l1x``, a YAML ``learning_rate:``), a value of the wrong type
(``steps=ten``, ``loss=5``) or out of range (``batch_size=0``) is a
:class:`ConfigError` whose message is one line: where the value was set
(file or override), the key, and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from engine.models.generator import AUDIO_LAYOUTS, DECODERS, LIP_PREDICTORS, GeneratorConfig
from train.losses import SYNC_KINDS

__all__ = ["ConfigError", "DEFAULTS", "TrainConfig", "load_config", "validate"]


class ConfigError(ValueError):
    """A config that does not fit the schema; the message is one line naming the key and what is allowed."""


def _f(default: Any = None, help: str = "", *, factory=None, **rules) -> Any:
    """A schema field: its default, a help line, and rules (``min``, ``gt``, ``max``, ``lt``, ``length``)."""
    meta = {"help": help, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    """The generator (``engine.models.generator.GeneratorConfig``)."""

    size: int = _f(96, "face crop side in pixels (96, 128, 192, 256)", min=8)
    width: float = _f(1.0, "channel multiplier (1.0: Wav2Lip's channel plan)", gt=0)
    audio: Literal[tuple(AUDIO_LAYOUTS)] = _f("expert", "audio encoder layout: wav2lip | expert (the lip expert's)")
    decoder: Literal[DECODERS] = _f("plain", "plain (the paper's) | warp")
    lip_sketch: bool = _f(False, "predict the lip and jaw landmarks from the audio and draw the mouth to that "
                                 "sketch (GeneratorConfig.lip_sketch; false: the paper's layout)")
    lip_predictor: Literal[LIP_PREDICTORS] = _f("bottleneck", "what the lip sketch's predictor reads besides the "
                                                "audio: bottleneck (the face features) | resting (the resting "
                                                "lip shape; python -m train.lips fits it)")
    lip_context: int = _f(0, "past mel windows (every 0.08 s) that a resting lip predictor also reads "
                             "(GeneratorConfig.lip_context; 0: the frame's window alone)", min=0)


@dataclass
class LossConfig:
    """Loss weights (λ) and the steps from which the GAN and sync terms start."""

    l1: float = _f(10.0, "λ1 of the L1 reconstruction loss", min=0)
    l1_lower_weight: float = _f(1.0, "weight of the lower half inside the L1 (1: the paper's plain L1)", min=0)
    gan: float = _f(1.0, "weight of the GAN loss", min=0)
    gan_start: int = _f(0, "first step with the GAN loss", min=0)
    perceptual: float = _f(1.0, "λ2 of the VGG-19 perceptual loss", min=0)
    sync: float = _f(0.5, "λ3 of the sync loss", min=0)
    sync_start: int = _f(0, "first step with the sync loss", min=0)
    grad: float = _f(0.0, "L1 of the image gradients of the lower half (sharp edges; 0 in the paper's recipe)",
                     min=0)
    opening: float = _f(0.0, "mouth opening of fake vs real frames per frame, read by weights.opening "
                             "(train.losses.OpeningLoss; 0: off, as in the paper)", min=0)
    opening_amplitude: float = _f(0.0, "how much the mouth moves over a window, fake vs real "
                                       "(train.losses.OpeningLoss; 0: off)", min=0)
    lips: float = _f(1.0, "L1 in pixels of the predicted lip and jaw landmarks (model.lip_sketch only)", min=0)
    mouth: float = _f(0.0, "L1 plus image-gradient L1 of the magnified mouth crops (train.losses.mouth_view, "
                           "cut at the target's lip points; model.lip_sketch only; 0: off)", min=0)


@dataclass
class SyncConfig:
    """The sync loss (``train.losses``)."""

    kind: Literal[SYNC_KINDS] = _f("avhubert", "sync loss (train.losses.SYNC_KINDS)")
    # 50 frames (2 s) by default: a fixed cost per step whatever the clip length, and memory that grows
    # with batch × context (AV-HuBERT's activations over every context frame are kept for the backward
    # pass). "clip" is the paper's §3.5 ("extracting features from the entire video"): the whole clip,
    # up to max_context frames (longer clips: a window of max_context frames around the generated ones).
    context: Union[int, Literal["clip"]] = _f(
        50, "frames of real video around the k generated ones that AV-HuBERT sees, or 'clip': the whole clip "
            "(up to max_context)", min=1)
    max_context: int = _f(250, "longest context for context: clip, in frames (bounds memory; 250 = 10 s)", min=1)
    output_layer: Union[int, None] = _f(None, "AV-HuBERT transformer layer whose features the loss compares "
                                              "(null: the last)", min=1)


@dataclass
class WeightsConfig:
    """Weights files (null: ``$DUBCAM_HOME/models/<published name>``, see ``train.losses.find_weights``)."""

    avhubert: Union[str, None] = _f(None, "AV-HuBERT checkpoint, the one fine-tuned for lip reading "
                                          "(base_vox_433h.pt, paper §3.4)")
    syncnet: Union[str, None] = _f(None, "lip expert (lipsync_expert.pth or python -m train.syncnet)")
    vgg: Union[str, None] = _f(None, "torchvision's vgg19-dcbb9e9d.pth")
    lse: Union[str, None] = _f(None, "syncnet_python's syncnet_v2.model (the monitor's LSE)")
    opening: Union[str, None] = _f(None, "mouth-opening regressor of the opening losses (python -m train.opening)")


@dataclass
class MonitorConfig:
    """Validation (``train.monitor``)."""

    every: int = _f(1000, "steps between validation runs (0: only at the end)", min=0)
    clips: int = _f(8, "validation clips scored", min=1)
    max_frames: int = _f(100, "frames scored per clip", min=1)


@dataclass
class TrainConfig:
    """The whole config of ``python -m train.run``."""

    data: Union[str, None] = _f(None, "folder written by python -m train.preprocess")
    data_in_memory: bool = _f(True, "false: read clip files on demand (data sets larger than memory)")
    out: str = _f("runs/default", "output folder")
    model: ModelConfig = _f(factory=ModelConfig)
    init: Union[str, None] = _f(None, "start from these weights: a generator.pt, or a train.run last.pt (generator "
                                      "and discriminator); not their optimizer or step (that is --resume)")
    audio_encoder: Literal["expert", "train"] = _f(
        "expert", "expert: the lip expert's audio encoder (weights.syncnet), frozen, as paper §3.2 does with "
                  "SyncNet's; train: a random one trained with the rest")
    k: int = _f(5, "frames per generated window", min=1)
    batch_size: int = _f(8, "windows per step, per process", min=1)
    steps: int = _f(100_000, "training steps", min=1)
    time_limit_min: Union[float, None] = _f(None, "stop after this many minutes (null: no limit)", gt=0)
    lr: float = _f(1e-4, "Adam learning rate of both networks", gt=0)
    betas: list[float] = _f(factory=lambda: [0.5, 0.999], help="Adam betas", length=2, min=0, lt=1)
    loss: LossConfig = _f(factory=LossConfig)
    augment: bool = _f(False, "consistent audio-video augmentation (train.augment): flip, colour jitter, gain")
    identity: Literal["window", "held"] = _f(
        "window", "window: k identity frames from another window, one per target (Wav2Lip's sampling); held: one "
                  "frame repeated k times, as the streaming pipeline holds one identity reference")
    sync: SyncConfig = _f(factory=SyncConfig)
    weights: WeightsConfig = _f(factory=WeightsConfig)
    monitor: MonitorConfig = _f(factory=MonitorConfig)
    disc_width: float = _f(1.0, "channel multiplier of the discriminator", gt=0)
    disc_region: Literal["face", "lower", "mouth"] = _f(
        "face", "face: the discriminator sees whole faces (the paper); lower: the lower halves; mouth: magnified "
                "crops of the mouth (train.losses.mouth_view, model.lip_sketch only)")
    freeze_norm: bool = _f(False, "BatchNorm layers of the generator keep their running statistics (eval mode) while "
                           "its weights train: fine-tuning on minutes of one person (realtime enroll), whose "
                           "batches' statistics would otherwise replace those of the training data")
    log_every: int = _f(50, "steps between log lines", min=1)
    ckpt_every: int = _f(500, "steps between checkpoints (last.pt)", min=1)
    seed: int = _f(0, "seed of the data order and of the initialisation", min=0, lt=2**32)
    threads: Union[int, None] = _f(None, "torch threads (null: torch's choice)", min=1)
    device: str = _f("auto", "where to train", pattern=r"auto|cpu|cuda(:\d+)?", words="auto, cpu, cuda, cuda:N")
    amp: bool = _f(True, "float16 autocast + gradient scaler on CUDA")
    workers: int = _f(0, "DataLoader worker processes per training process", min=0)


DEFAULTS: dict = dataclasses.asdict(TrainConfig())
"""The default config as a plain dict (:class:`TrainConfig`'s defaults)."""


# ---------------------------------------------------------------------------
# Checking values against the schema.

_HINTS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> dict[str, tuple[Any, dict]]:
    """``{name: (type, rules)}`` of a schema dataclass."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _range(rules: dict) -> str:
    parts = [f"{op} {rules[k] if isinstance(rules[k], int) else format(rules[k], 'g')}"
             for k, op in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<")) if k in rules]
    return " " + " and ".join(parts) if parts else ""


def _describe(tp: Any, rules: dict) -> str:
    """What a value of ``tp`` under ``rules`` may be, in words."""
    if _is_section(tp):
        return "a mapping with keys " + ", ".join(_fields(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        words = [_describe(a, rules) for a in args if a is not type(None)]
        return ("null or " if type(None) in args else "") + " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args)) if len(args) > 1 else repr(args[0])
    if origin is list:
        n = f"{rules['length']} " if "length" in rules else ""
        return f"a list of {n}numbers{_range(rules)}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer" + _range(rules)
    if tp is float:
        return "a number" + _range(rules)
    if tp is str:
        return f"one of {rules['words']}" if "words" in rules else "a non-empty string"
    return str(tp)


class _Bad(Exception):
    """A value that does not fit (internal: the caller words the message)."""


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise _Bad
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise _Bad from None
    raise _Bad


def _in_range(x: float, rules: dict) -> None:
    if not math.isfinite(x):
        raise _Bad
    if ("min" in rules and x < rules["min"]) or ("gt" in rules and x <= rules["gt"]) or \
            ("max" in rules and x > rules["max"]) or ("lt" in rules and x >= rules["lt"]):
        raise _Bad


def _coerce(value: Any, tp: Any, rules: dict) -> Any:
    """``value`` as ``tp`` (ints for int fields, floats for float fields, str for paths), or :class:`_Bad`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        for arm in args:
            if arm is not type(None):
                try:
                    return _coerce(value, arm, rules)
                except _Bad:
                    pass
        raise _Bad
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        raise _Bad
    if origin is list:
        if not isinstance(value, (list, tuple)) or ("length" in rules and len(value) != rules["length"]):
            raise _Bad
        return [_coerce(v, args[0], rules) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp is int:
        x = _number(value)
        if isinstance(x, float):
            if not x.is_integer():
                raise _Bad
            x = int(x)
        _in_range(x, rules)
        return x
    if tp is float:
        x = float(_number(value))
        _in_range(x, rules)
        return x
    if tp is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, int) and not isinstance(value, bool):  # YAML reads a folder named 2024 as a number
            value = str(value)
        if not isinstance(value, str) or not value or \
                ("pattern" in rules and not re.fullmatch(rules["pattern"], value)):
            raise _Bad
        return value
    raise _Bad


_ALIASES = {"learning_rate": "lr", "lr_rate": "lr", "max_steps": "steps", "iterations": "steps",
            "batch": "batch_size", "bs": "batch_size", "num_workers": "workers", "context_frames": "context"}
"""Names other trainers use for a key of ours: suggested when they appear."""


def _unknown(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    known = list(known)
    leaf = key.rsplit(".", 1)[-1]
    close = [_ALIASES[leaf]] if _ALIASES.get(leaf) in known else \
        difflib.get_close_matches(leaf, known, n=1, cutoff=0.5)
    hint = f" (did you mean '{key[: len(key) - len(leaf)]}{close[0]}'?)" if close else ""
    parent = key.rpartition(".")[0]
    scope = f"keys of {parent}" if parent else "top-level keys"
    return ConfigError(f"{where}: unknown config key '{key}'{hint}; the {scope} are: {', '.join(known)}")


def _where(origins: dict[str, str], key: str) -> str:
    """The source of ``key`` (or of the nearest section above it that was set)."""
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return "config"


def _check(cls: type, data: Any, origins: dict[str, str], prefix: str = "") -> dict:
    """``data`` (a mapping) checked against the schema section ``cls``; missing keys get their defaults."""
    out = {}
    known = _fields(cls)
    for key in data:
        if key not in known:
            raise _unknown(prefix + str(key), known, _where(origins, prefix + str(key)))
    defaults = dataclasses.asdict(cls())
    for name, (tp, rules) in known.items():
        dotted = prefix + name
        if name not in data:
            out[name] = copy.deepcopy(defaults[name])
            continue
        value = data[name]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{_where(origins, dotted)}: {dotted} must be {_describe(tp, rules)} "
                                  f"(set {dotted}.KEY=VALUE), got {value!r}")
            out[name] = _check(tp, value, origins, dotted + ".")
            continue
        try:
            out[name] = _coerce(value, tp, rules)
        except _Bad:
            raise ConfigError(f"{_where(origins, dotted)}: {dotted} must be {_describe(tp, rules)}, got {value!r}"
                              f"{'' if not rules.get('help') else ' (' + rules['help'] + ')'}") from None
    return out


def validate(cfg: dict, origins: dict[str, str] | None = None) -> dict:
    """``cfg`` checked against :class:`TrainConfig` (keys, types, ranges, and the rules that tie keys
    together); returns a new dict with every key, numbers as the schema's types.

    ``origins`` maps dotted keys to where they were set, for the messages.

    Raises:
        ConfigError: one line naming the key, where it was set and what is allowed.
    """
    origins = origins or {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(cfg).__name__}")
    out = _check(TrainConfig, cfg, origins)
    try:
        GeneratorConfig(**out["model"]).scales()
    except ValueError as e:
        raise ConfigError(f"{_where(origins, 'model.size')}: model: {e}") from None
    if out["disc_region"] == "mouth" and not out["model"]["lip_sketch"]:
        raise ConfigError(f"{_where(origins, 'disc_region')}: disc_region: mouth places its crops by the targets' "
                          "lip points, which only model.lip_sketch: true loads")
    if out["loss"]["mouth"] > 0 and not out["model"]["lip_sketch"]:
        raise ConfigError(f"{_where(origins, 'loss.mouth')}: loss.mouth places its crops by the targets' "
                          "lip points, which only model.lip_sketch: true loads")
    sync = out["sync"]
    if sync["kind"].startswith("avhubert") and out["loss"]["sync"] > 0 and sync["context"] != "clip" \
            and sync["context"] < out["k"]:
        raise ConfigError(f"{_where(origins, 'sync.context')}: sync.context ({sync['context']} frames) must hold "
                          f"the k={out['k']} generated frames")
    return out


# ---------------------------------------------------------------------------
# Reading files and overrides.


def _read_yaml(path: Path, origins: dict[str, str], seen: tuple[Path, ...] = ()) -> dict:
    """The mapping of a YAML config with its ``include`` chain merged in; records where each key was set."""
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: include loop ({' -> '.join(map(str, seen + (path,)))})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("include", None)
    merged: dict = {}
    if base:
        merged = _read_yaml(path.parent / str(base), origins, seen + (path.resolve(),))
    _merge(merged, data, origins, str(path))
    return merged


def _merge(base: dict, new: dict, origins: dict[str, str], source: str, prefix: str = "") -> None:
    for k, v in new.items():
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, origins, source, dotted + ".")
        else:
            base[k] = copy.deepcopy(v)
            origins[dotted] = source
            for key in [o for o in origins if o.startswith(dotted + ".")]:
                del origins[key]  # a whole section replaced: its keys now come from here


def _check_path(key: str, where: str) -> None:
    """A dotted override key must name a key of the schema (its leaf may be a section)."""
    cls, parts = TrainConfig, key.split(".")
    for i, part in enumerate(parts):
        known = _fields(cls)
        if part not in known:
            raise _unknown(".".join(parts[: i + 1]), known, where)
        tp = known[part][0]
        if i < len(parts) - 1:
            if not _is_section(tp):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is a value, not a section "
                                  f"(it has no key {parts[i + 1]!r})")
            cls = tp


def load_config(path: str | os.PathLike | None, overrides: list[str]) -> dict:
    """Defaults ← the YAML file ``path`` ← ``key=value`` overrides, checked against the schema.

    Raises:
        ConfigError: a file that cannot be read, an override that is not ``key=value``, an unknown
            key, a value of the wrong type or out of range, or no ``data`` (one line each).
    """
    origins: dict[str, str] = {}
    cfg: dict = {}
    if path:
        cfg = _read_yaml(Path(path), origins)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        where = f"override {item!r}"
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: not a config key")
        _check_path(key, where)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            _merge(node[leaf], value, origins, where, key + ".")
        else:
            node[leaf] = value
            origins[key] = where
            for k in [o for o in origins if o.startswith(key + ".")]:
                del origins[k]
    cfg = validate(cfg, origins)
    if not cfg["data"]:
        raise ConfigError("no training data: set data=<folder written by python -m train.preprocess>")
    return cfg
