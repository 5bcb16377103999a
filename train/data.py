"""Training samples from preprocessed clips (``train.preprocess``).

One sample (Yaman et al. 2024 §3.1, §3.5; Wav2Lip's sampling, spec §3.5):

* ``target``: k consecutive face crops starting at frame t, ``[k, 3, S, S]``;
* ``faces``: the generator input ``[k, 6, S, S]``: channels 0–2 the pose
  reference (the targets with rows S/2: zeroed), 3–5 the identity
  reference (k frames from a random other window of the same clip, at
  least k frames away, or one such frame k times: ``identity="held"``);
* ``mels``: the k mel windows ``[k, 1, 80, 16]`` centred on each target
  frame (``GeneratorInfo.mel_offset_s = -0.1``);
* with ``lips``: ``lips`` ``[k, 33, 2]``, the targets' lip and jaw landmarks
  in face sides (``engine.face.lip_shape``; flipped with the faces), what a
  ``lip_sketch`` generator is drawn to and its lip predictor learns from; the
  identity reference's points (``engine.inputs.identity_lip_points``: posed
  into each target's head pose, and in its own crop) then ride in ``faces``;
* with ``sync_mel``: ``sync_mel`` ``[1, 80, 16]``, the 0.2 s mel window that
  starts at frame t (the lip expert's window, spec §3.5 "Training");
* with ``context`` C > 0, what the AV-HuBERT sync loss needs (``train.roi``):
  a context of C frames around the window (the window at a random place in
  it; clips shorter than C are padded): ``ctx_frames`` ``[C, H, W, 3]``
  uint8 source pixels under each frame's mouth ROI, ``ctx_origin``
  ``[C, 2]``, ``ctx_affine`` ``[C, 2, 3]``, ``ctx_frame_size`` ``[C, 2]``,
  ``ctx_boxes`` ``[C, 4]`` (face boxes in whole pixels), the AV-HuBERT
  audio features of the context ``ctx_audio`` ``[C, 104]``, ``ctx_valid``
  ``[C]`` (False = padding) and ``ctx_start`` (index of frame t in the
  context).

Images float32 in [0, 1] RGB unless said otherwise. :func:`collate` makes
batches: the per-frame keys are flattened to ``[B·k, ...]``, the others
stacked to ``[B, ...]`` (regions zero-padded to the largest in the batch).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch

from engine.audio import avhubert_audio_features, melspectrogram, mel_window
from engine.face import LIP_SHAPE_MIRROR, Box, box_pixels, lip_shape
from engine.inputs import generator_input, identity_lip_points
from train.augment import Augment

ROI_KEYS = ("roi_affine", "roi_frames", "roi_origin", "frame_size")
PER_FRAME_KEYS = ("faces", "mels", "target", "lips")
IDENTITY_AFFINE = np.array([[1, 0, 0], [0, 1, 0]], np.float32)  # for padding frames (never looked at)


@dataclass
class Clip:
    """One preprocessed clip (the arrays of its ``.npz``, see ``train.preprocess``).

    ``roi`` holds the mouth-ROI arrays (``roi_affine``, ``roi_frames``,
    ``roi_origin``, ``frame_size``), or is empty for data written before
    they existed (then only the syncnet / none sync losses can use it).
    """

    name: str
    faces: np.ndarray  # [T, S, S, 3] uint8
    valid: np.ndarray  # [T] bool
    boxes: np.ndarray  # [T, 4] float32
    audio: np.ndarray  # [n] float32 16 kHz
    fps: float
    roi: dict[str, np.ndarray] = field(default_factory=dict)
    landmarks: np.ndarray | None = None  # [T, 478, 2] float16 source pixels (None in data without them)

    @cached_property
    def mel(self) -> np.ndarray:
        """``[80, F]`` Wav2Lip mel of the audio (80 frames/s)."""
        return melspectrogram(self.audio)

    @cached_property
    def avhubert_audio(self) -> np.ndarray:
        """``[T, 104]`` AV-HuBERT audio features aligned to the T video frames."""
        return avhubert_audio_features(self.audio, len(self.valid))

    @property
    def has_roi(self) -> bool:
        return bool(self.roi)

    @property
    def n_frames(self) -> int:
        return len(self.valid)


def load_clip(path: str | Path, name: str | None = None) -> Clip:
    """Read one clip file written by ``train.preprocess`` (its stored ``mel`` and
    ``avhubert_audio`` are used when present, else computed on first use)."""
    path = Path(path)
    with np.load(path) as z:
        roi = {k: z[k] for k in ROI_KEYS if k in z}
        clip = Clip(name or path.stem, z["faces"], z["valid"], z["boxes"], z["audio"], float(z["fps"]),
                    roi if len(roi) == len(ROI_KEYS) else {}, z["landmarks"] if "landmarks" in z else None)
        for key in ("mel", "avhubert_audio"):
            if key in z:
                clip.__dict__[key] = z[key]  # fills the cached_property
    return clip


CACHED_CLIPS = 32
"""Clip files a process keeps in memory when the data are not loaded whole (:class:`ClipFile`)."""


@lru_cache(maxsize=CACHED_CLIPS)
def _read(path: str, name: str) -> Clip:
    return load_clip(path, name)


class ClipFile:
    """A clip whose file is read when its arrays are first used, then kept in a per-process cache of
    :data:`CACHED_CLIPS` files: for data sets larger than memory (LRS2 preprocessed is ~100 GB).
    Has the attributes of :class:`Clip`; ``name``, ``n_frames`` and ``has_roi`` need no read."""

    def __init__(self, path: str | Path, name: str, n_frames: int, has_roi: bool):
        self.path, self.name, self.n_frames, self.has_roi = str(path), name, n_frames, has_roi

    def __getattr__(self, attr: str):
        return getattr(_read(self.path, self.name), attr)


def load_clips(data_dir: str | Path, split: str, limit: int | None = None,
               in_memory: bool = True) -> list[Clip] | list[ClipFile]:
    """The clips of ``split`` (train/val/test) listed in ``data_dir/manifest.csv`` (the first ``limit``
    in manifest order when given): read now (``in_memory``) or as :class:`ClipFile` on demand."""
    data_dir = Path(data_dir)
    if not (data_dir / "manifest.csv").is_file():
        raise FileNotFoundError(f"{data_dir} has no manifest.csv: run python -m train.preprocess --input VIDEOS "
                                f"--output {data_dir} first")
    clips = []
    with open(data_dir / "manifest.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] != split or (limit is not None and len(clips) >= limit):
                continue
            path = data_dir / "clips" / f"{row['clip']}.npz"
            if in_memory:
                clips.append(load_clip(path, row["clip"]))
            else:
                with np.load(path) as z:  # reads the file's directory only
                    has_roi = all(k in z.files for k in ROI_KEYS)
                clips.append(ClipFile(path, row["clip"], int(row["frames"]), has_roi))
    return clips


def pixel_boxes(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float crop boxes → the whole-pixel boxes that ``engine.face.crop`` cut (float32)."""
    return np.array([box_pixels(Box(*b)) for b in boxes.astype(np.float64)], np.float32).reshape(-1, 4)


def draw_window(rng: np.random.Generator, clip: Clip, k: int, avoid: int | None = None) -> int:
    """Start of a random window of ``k`` frames of ``clip`` that all have a face (50 tries, then any window),
    at least ``k`` frames away from the window starting at ``avoid`` when given."""
    for _ in range(50):
        t = int(rng.integers(0, len(clip.valid) - k + 1))
        if (avoid is None or abs(t - avoid) >= k) and clip.valid[t: t + k].all():
            return t
    return t


class WindowDataset(torch.utils.data.Dataset):
    """Random k-frame windows; ``len`` is a nominal epoch of ``samples_per_epoch`` draws.

    Windows whose k frames (and identity frames) all have a face are
    drawn; a clip shorter than 3k frames is skipped. The draw is made from
    the index, so a given (seed, index) always gives the same sample:
    resumed runs see the same data.

    Args:
        context: C > 0 adds the sync-loss context (module doc); every clip
            must then carry mouth-ROI data.
        sync_mel: add the lip expert's mel window.
        identity: ``"window"``: the identity reference of target frame i is
            frame r + i of another window (Wav2Lip's sampling); ``"held"``: frame
            r for all k, as the streaming pipeline holds one reference — a
            model that warps the reference (``decoder="warp"``) then cannot
            learn to replay the reference's mouth motion instead of the audio's.
        augment: :class:`train.augment.Augment`, one draw per sample for its
            targets, identity reference and mel windows alike (the context
            of the AV-HuBERT loss is not augmented: with ``context``, use
            ``Augment.off()`` or only the gain).
        lips: add the targets' lip and jaw landmarks (module doc).
        mel_context: mel frames before each 0.2 s window that the generator also takes
            (``GeneratorInfo.mel_context``): ``mels`` is then ``[k, 1, 80, 16 + mel_context]``.

    Raises ValueError: no usable clip, context asked of clips without ROI data, or lips of clips
    without landmarks.
    """

    def __init__(self, clips: list[Clip] | list[ClipFile], k: int = 5, samples_per_epoch: int = 10_000, seed: int = 0,
                 mel_offset_s: float = -0.1, context: int = 0, sync_mel: bool = False,
                 augment: Augment = Augment.off(), identity: str = "window", lips: bool = False,
                 mel_context: int = 0):
        self.clips = [c for c in clips if c.n_frames >= 3 * k]
        if not self.clips:
            raise ValueError(f"no clip has the {3 * k} frames a window of k={k} needs")
        if context:
            if context < k:
                raise ValueError(f"the sync context ({context} frames) must hold the k={k} generated frames")
            missing = [c.name for c in self.clips if not c.has_roi]
            if missing:
                raise ValueError(f"{len(missing)} clips have no mouth-ROI data (e.g. {missing[0]}): "
                                 "re-run python -m train.preprocess to write it")
        self.k, self.n, self.seed, self.mel_offset_s = k, samples_per_epoch, seed, mel_offset_s
        self.mel_context = mel_context
        if context and (augment.flip or augment.brightness or augment.contrast or augment.saturation):
            raise ValueError("the AV-HuBERT sync context is real video: flip and colour augmentation "
                             "would not match it (use only gain_db, or no augmentation)")
        if identity not in ("window", "held"):
            raise ValueError(f"identity must be window or held, got {identity!r}")
        self.context, self.sync_mel, self.augment, self.identity = context, sync_mel, augment, identity
        self.lips = lips
        if lips:
            missing = [c.name for c in self.clips if c.landmarks is None]
            if missing:
                raise ValueError(f"{len(missing)} clips have no landmarks (e.g. {missing[0]}): re-run "
                                 "python -m train.preprocess to write them")

    def __len__(self) -> int:
        return self.n

    def _window(self, rng, clip: Clip, avoid: int | None = None) -> int:
        return draw_window(rng, clip, self.k, avoid)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        clip = self.clips[int(rng.integers(len(self.clips)))]
        t = self._window(rng, clip)
        r = self._window(rng, clip, avoid=t)
        aug = self.augment.draw(rng)
        target = aug.faces(clip.faces[t: t + self.k].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        ids = clip.faces[r: r + self.k] if self.identity == "window" else clip.faces[[r] * self.k]
        identity = aug.faces(ids.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        mels = aug.mel(np.stack([mel_window(clip.mel, (t + i) / clip.fps, self.mel_offset_s, self.mel_context)
                                 for i in range(self.k)])[:, None])
        id_lips = None
        if self.lips:
            id_frames = np.arange(r, r + self.k) if self.identity == "window" else np.full(self.k, r)
            id_lips = window_identity_lips(clip, t, id_frames, aug.flip)
        sample = {
            "faces": torch.from_numpy(generator_input(target, identity, id_lips)),
            "mels": torch.from_numpy(mels),
            "target": torch.from_numpy(target),
        }
        if self.lips:
            sample["lips"] = torch.from_numpy(window_lips(clip, t, self.k, aug.flip))
        if self.sync_mel:
            sample["sync_mel"] = torch.from_numpy(aug.mel(mel_window(clip.mel, t / clip.fps, 0.0))[None])
        if self.context:
            sample |= context_arrays(clip, t, self.context, self.k, rng)
        return sample


def window_lips(clip: Clip, t: int, k: int, flip: bool = False) -> np.ndarray:
    """``[k, 33, 2]`` float32: the lip and jaw landmarks of frames t … t+k−1 in face sides
    (``engine.face.lip_shape``), mirrored with ``flip`` (:func:`_mirror_lips`)."""
    return _mirror_lips(lip_shape(clip.landmarks[t: t + k], pixel_boxes(clip.boxes[t: t + k])), flip)


def window_identity_lips(clip: Clip, t: int, identity: np.ndarray, flip: bool = False) -> np.ndarray:
    """``[k, 2, 33, 2]`` float32: the identity references' lip points for frames t … t+k−1
    (``engine.inputs.identity_lip_points``), ``identity`` the ``[k]`` frame indices of the references;
    mirrored with ``flip``."""
    k = len(identity)
    pts = identity_lip_points(clip.landmarks[identity], pixel_boxes(clip.boxes[identity]),
                              clip.landmarks[t: t + k], pixel_boxes(clip.boxes[t: t + k]))
    return _mirror_lips(pts, flip)


def _mirror_lips(pts: np.ndarray, flip: bool) -> np.ndarray:
    """Lip points ``[..., 33, 2]`` mirrored as a horizontal flip of the face does (x → 1 − x, left and
    right points swapped, ``engine.face.LIP_SHAPE_MIRROR``), or unchanged; float32, contiguous."""
    if flip:
        pts = pts[..., list(LIP_SHAPE_MIRROR), :]
        pts[..., 0] = 1.0 - pts[..., 0]
    return np.ascontiguousarray(pts, np.float32)


def context_arrays(clip: Clip, t: int, length: int, k: int, rng=None) -> dict[str, torch.Tensor]:
    """The sync-loss context of the window at frame ``t`` (module doc): ``length`` frames from
    ``c0``, the window at a random place (``rng``) or centred (``rng=None``), clamped to the clip;
    frames past the clip's end are padding."""
    T = len(clip.valid)
    offset = int(rng.integers(0, length - k + 1)) if rng is not None else (length - k) // 2
    c0 = min(max(0, t - offset), max(0, T - length))
    n = min(length, T - c0)

    def padded(a: np.ndarray, fill: np.ndarray | float = 0) -> np.ndarray:
        out = np.empty((length,) + a.shape[1:], a.dtype)
        out[:n] = a[c0: c0 + n]
        out[n:] = fill
        return out

    valid = np.zeros(length, bool)
    valid[:n] = True
    return {
        "ctx_frames": torch.from_numpy(padded(clip.roi["roi_frames"])),
        "ctx_origin": torch.from_numpy(padded(clip.roi["roi_origin"]).astype(np.float32)),
        "ctx_affine": torch.from_numpy(padded(clip.roi["roi_affine"], IDENTITY_AFFINE).astype(np.float32)),
        "ctx_frame_size": torch.from_numpy(padded(clip.roi["frame_size"]).astype(np.float32)),
        "ctx_boxes": torch.from_numpy(pixel_boxes(padded(clip.boxes))),
        "ctx_audio": torch.from_numpy(padded(clip.avhubert_audio)),
        "ctx_valid": torch.from_numpy(valid),
        "ctx_start": torch.tensor(t - c0),
    }


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Samples → a batch: :data:`PER_FRAME_KEYS` flattened to ``[B·k, ...]``, the rest stacked;
    ``ctx_frames`` zero-padded (bottom, right) to the largest region of the batch."""
    batch = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if key in PER_FRAME_KEYS:
            batch[key] = torch.cat(values)
        elif key == "ctx_frames":
            h = max(v.shape[1] for v in values)
            w = max(v.shape[2] for v in values)
            batch[key] = torch.stack([torch.nn.functional.pad(v, (0, 0, 0, w - v.shape[2], 0, h - v.shape[1]))
                                      for v in values])
        else:
            batch[key] = torch.stack(values)
    return batch


class StepBatches(torch.utils.data.Sampler):
    """Sample indices of the batches of steps ``start``, ``start + 1``, … for one DDP rank.

    Batch s of rank r holds samples ``(s·W + r)·B + i`` for i < B (W ranks,
    B samples per rank): every rank sees different data, and the data of a
    step depends on nothing but the step, so the sampler's whole state is
    the step a run resumes at.
    """

    def __init__(self, start: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 stop: int | None = None, modulo: int = 10**9):
        self.start, self.stop, self.b, self.rank, self.world, self.modulo = (
            start, stop, batch_size, rank, world_size, modulo)

    def __iter__(self):
        step = self.start
        while self.stop is None or step < self.stop:
            first = (step * self.world + self.rank) * self.b
            yield [(first + i) % self.modulo for i in range(self.b)]
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an unbounded StepBatches has no length")
        return max(0, self.stop - self.start)
