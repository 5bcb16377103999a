"""The one builder of generator inputs (DESIGN.md "Layout"; paper §3.1).

A generator (ours or Wav2Lip's) takes ``faces [N, 6, S, S]``: channels 0–2
the *pose reference* (the frame's own face crop with its lower half, rows
S/2:, masked to 0: the part the generator draws), channels 3–5 the
*identity reference* (a crop of the same person whose mouth shows the
texture), float32 in [0, 1], RGB. Its mel windows come from
``engine.audio.mel_window`` / ``MelStream``.

A generator with ``info.identity_lips`` (``GeneratorConfig.lip_sketch``) also
takes the identity reference's 33 lip and jaw points twice
(:func:`identity_lip_points`; x, y in face sides): moved into each frame's
head pose (``engine.face.posed_lip_shape``: the resting shape of the mouth
that the generator draws) and where they lie in the reference's own crop
(``engine.face.lip_shape``: where the warp decoder finds the lips to move).
It finds them in the pose reference's masked half, which holds nothing else:
row S−1 (:data:`IDENTITY_LIPS_ROW`), x in channel 0 and y in channel 1,
columns 0–32 the posed points and 33–65 the reference's own. The generator
reads them there and clears the half before its pose encoder, so every
backend, batching and export keeps its two inputs.

The streaming pipeline and the INT8 calibration (:func:`generator_faces`,
uint8 crops), the training data and the training monitor
(:func:`generator_input`, float faces) all build ``faces`` here, so that
training and inference cannot drift apart.
"""

from __future__ import annotations

import numpy as np

from engine.face import LIP_SHAPE_POINTS, lip_shape, posed_lip_shape

IDENTITY_LIPS_ROW = -1
"""Row of the pose reference (its last: inside the masked half) that carries the identity reference's lip points
(columns 0–32 posed, 33–65 its own; module doc)."""
IDENTITY_LIPS_COLUMNS = 2 * len(LIP_SHAPE_POINTS)
"""Columns of :data:`IDENTITY_LIPS_ROW` that the points fill: a lip-sketch generator needs faces at least this wide."""


def identity_lip_points(identity_landmarks: np.ndarray, identity_box: np.ndarray, landmarks: np.ndarray,
                        boxes: np.ndarray) -> np.ndarray:
    """The identity reference's lip and jaw points that a lip-sketch generator takes (module doc).

    Args:
        identity_landmarks: ``[478, 2]`` (one reference held for all T) or ``[T, 478, 2]`` face-mesh points
            of the identity reference, frame pixels.
        identity_box: ``[4]`` or ``[T, 4]`` its whole-pixel crop box (``engine.face.box_pixels``).
        landmarks: ``[T, 478, 2]`` the target frames' points, frame pixels.
        boxes: ``[T, 4]`` the targets' whole-pixel crop boxes.

    Returns ``[T, 2, 33, 2]`` float32 in face sides: ``[:, 0]`` posed into each target
    (``engine.face.posed_lip_shape``), ``[:, 1]`` in the reference's own crop (``engine.face.lip_shape``).
    """
    landmarks = np.asarray(landmarks, np.float64)
    ident, ident_box = np.asarray(identity_landmarks, np.float64), np.asarray(identity_box, np.float64)
    own = lip_shape(ident.reshape(-1, *ident.shape[-2:]), ident_box.reshape(-1, 4))  # once for a held reference
    posed = posed_lip_shape(ident, landmarks, boxes)
    return np.stack([posed, np.broadcast_to(own, posed.shape)], axis=1)


def pose_reference(faces: np.ndarray) -> np.ndarray:
    """A copy of ``[..., C, S, S]`` faces (any float dtype) with the lower half, rows S/2:, set to 0."""
    pose = np.array(faces, copy=True)
    pose[..., faces.shape[-2] // 2:, :] = 0
    return pose


def generator_input(faces: np.ndarray, identity: np.ndarray, identity_lips: np.ndarray | None = None) -> np.ndarray:
    """The ``faces`` input from float faces: pose reference of ``faces`` beside ``identity``.

    Args:
        faces: ``[N, 3, S, S]`` float32 in [0, 1], the frames to generate (unmasked).
        identity: ``[N, 3, S, S]``, or ``[3, S, S]`` for one reference held
            for all N, float32 in [0, 1].
        identity_lips: ``[N, 2, 33, 2]`` or ``[2, 33, 2]``, the identity reference's lip and jaw points
            (:func:`identity_lip_points`), written into the pose reference's masked half; None: not written.

    Returns ``[N, 6, S, S]`` float32.

    Raises ValueError: shapes that do not fit.
    """
    faces = np.asarray(faces, dtype=np.float32)
    if faces.ndim != 4 or faces.shape[1] != 3:
        raise ValueError(f"expected faces [N, 3, S, S], got {faces.shape}")
    identity = np.broadcast_to(np.asarray(identity, dtype=np.float32), faces.shape)
    pose = pose_reference(faces)
    if identity_lips is not None:
        n = IDENTITY_LIPS_COLUMNS
        if faces.shape[-1] < n:
            raise ValueError(f"the lip points need faces of at least {n} px, got {faces.shape[-1]}")
        lips = np.broadcast_to(np.asarray(identity_lips, np.float32), (len(faces), 2, n // 2, 2))
        pose[:, 0:2, IDENTITY_LIPS_ROW, :n] = lips.reshape(len(faces), n, 2).transpose(0, 2, 1)
    return np.concatenate([pose, identity], axis=1)


def generator_faces(crops: np.ndarray, identity: np.ndarray | None, info,
                    identity_lips: np.ndarray | None = None) -> np.ndarray:
    """The ``faces`` input for k uint8 face crops, as the streaming pipeline holds them.

    Args:
        crops: ``[k, S, S, 3]`` uint8 RGB face crops of the frames to generate.
        identity: ``[S, S, 3]`` uint8 RGB identity reference, used when
            ``info.identity == "held"`` (ignored for ``"current"``, where
            each unmasked crop is its own reference, as in Wav2Lip).
        info: the generator's :class:`engine.models.GeneratorInfo`.
        identity_lips: ``[k, 2, 33, 2]`` the held identity reference's lip and jaw points
            (:func:`identity_lip_points`), needed when ``info.identity_lips``.

    Returns ``[k, 6, S, S]`` float32 in [0, 1].

    Raises ValueError: crops not ``[k, S, S, 3]``, or a held identity (or its lip points) missing.
    """
    S = info.size
    if crops.ndim != 4 or crops.shape[1:] != (S, S, 3):
        raise ValueError(f"expected crops [k, {S}, {S}, 3], got {crops.shape}")
    faces = crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    if info.identity == "current":
        return generator_input(faces, faces)
    if identity is None:
        raise ValueError("this generator needs a held identity reference")
    if info.identity_lips and identity_lips is None:
        raise ValueError("this generator needs the identity reference's lip points")
    return generator_input(faces, identity.astype(np.float32).transpose(2, 0, 1) / 255.0,
                           identity_lips if info.identity_lips else None)
