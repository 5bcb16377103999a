"""INT8 versions of an exported generator, calibrated on real face crops.

Static quantisation with ONNX Runtime (``quantize_static``, QDQ format,
per-channel INT8 weights, activation ranges from min/max over calibration
batches): convolutions run as ``QLinearConv`` on the CPU. Dynamic
quantisation (``quantize_dynamic``) was measured and rejected: it turns
convolutions into ``ConvInteger`` plus float re-scaling, which on this
project's 2-core AVX-512 VNNI CPU ran the 96 px width-0.5 generator at k=5
in 68 ms against 58 ms in float32, where static QDQ took 38 ms.

The same function writes the symmetric QDQ file (INT8 activations with zero
point 0, float biases) that TensorRT builds as an explicitly quantised,
strongly typed engine (``tools/export_trt.py --int8-calib``).

Calibration inputs are what the streaming pipeline feeds the generator:
face crops tracked in a real video or photo, the model's mel window of a
real speech track, the lower half of the pose reference masked
(:func:`calibration_batches`). :func:`quality` measures the cost: SSIM and
PSNR (TalkLip's settings, :mod:`engine.metrics`) of the INT8 faces against
the float32 faces.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from engine.bundled import ASSETS

CALIBRATION_VIDEO = ASSETS / "demo_face.png"
CALIBRATION_AUDIO = ASSETS / "demo_speech.wav"


def calibration_batches(info, video: str | Path, audio: str | Path | None = None, chunks: int = 8,
                        k: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Generator inputs made from a real video (or photo) and speech, as the pipeline makes them.

    Args:
        info: the generator's :class:`~engine.models.GeneratorInfo` (face
            size, crop style, mel window position, identity policy).
        video: a video or image file with a face.
        audio: speech file (default: the video's own audio track; required
            for an image). An image is used as a still video at 25 fps.
        chunks, k: at most ``chunks`` batches of ``k`` frames with a face.

    Returns ``[(faces [k,6,S,S] float32, mels [k,1,80,16] float32), ...]``.
    The identity reference (``info.identity == "held"``) is the first crop.

    Raises FileNotFoundError / MediaError / AudioError for unreadable
    files; ValueError when no frame has a face or an image has no audio.
    """
    from engine.audio import load_audio, mel_window, melspectrogram
    from engine.face import FaceTracker, box_pixels, crop
    from engine.media import probe_video, read_frames
    from engine.inputs import generator_faces, identity_lip_points

    still = probe_video(video).still
    if audio is None and still:
        raise ValueError(f"{video} is an image: give a speech file to calibrate with")
    mel = melspectrogram(load_audio(audio or video))
    if still:
        image = next(read_frames(video))[0]
        frames = ((image, i / 25.0) for i in range(chunks * k))
    else:
        frames = read_frames(video)
    crops, windows, landmarks, boxes = [], [], [], []
    with FaceTracker(crop=info.crop) as tracker, contextlib.closing(frames):
        for frame, t in frames:
            face = tracker.track(frame, t)
            if face is not None:
                landmarks.append(face.landmarks)
                boxes.append(box_pixels(face.box))
                crops.append(crop(frame, face.box, info.size))
                windows.append(mel_window(mel, t, info.mel_offset_s, info.mel_context))
            if len(crops) == chunks * k:
                break
    if not crops:
        raise ValueError(f"no face found in {video}: cannot calibrate on it")
    # the identity reference: the first face; its lip points for the generators that take them
    lips = identity_lip_points(landmarks[0], boxes[0], np.stack(landmarks), np.array(boxes, np.float64))
    batches = []
    for i in range(0, len(crops), k):
        faces = generator_faces(np.stack(crops[i:i + k]), crops[0], info, lips[i:i + k])
        batches.append((faces, np.stack(windows[i:i + k])[:, None]))
    return batches


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of (faces, mels)."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        b = next(self._it, None)
        return None if b is None else {"faces": b[0], "mels": b[1]}


def quantize_int8(onnx_path: str | Path, out_path: str | Path, batches: list[tuple[np.ndarray, np.ndarray]],
                  for_tensorrt: bool = False) -> Path:
    """Write the INT8 QDQ version of a float32 export, calibrated on ``batches``.

    Args:
        onnx_path: float32 export (:func:`engine.backends.onnx_export.export_onnx`).
        out_path: where to write the quantised model (atomically).
        batches: calibration inputs (:func:`calibration_batches`).
        for_tensorrt: symmetric INT8 activations and float biases, as
            TensorRT's explicit quantisation needs; otherwise unsigned
            activations with zero points, which ONNX Runtime's CPU kernels
            run fastest.

    The graph is pre-processed first (shape inference, BatchNorm folded
    into the convolutions) so that ranges are taken where they are used.
    Raises ValueError for an empty ``batches``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise ValueError("no calibration batches")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        pre, tmp_out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(onnx_path), str(pre))
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if for_tensorrt else {}
        quantize_static(str(pre), str(tmp_out), _Batches(batches), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options=extra)
        os.replace(tmp_out, out_path)
    return out_path


def quality(reference, candidate, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """How far ``candidate``'s faces are from ``reference``'s on the same inputs.

    Both are backends (``run(faces, mels)``); faces are compared as uint8
    RGB S×S images (rounded from [0, 1]). Returns the means over all faces
    of ``ssim`` and ``psnr`` (dB, float64 error, :mod:`engine.metrics`;
    identical faces count as 100 dB) and the largest absolute difference
    ``max_diff`` in [0, 1] units.
    """
    from engine.metrics import psnr, ssim

    ssims, psnrs, worst = [], [], 0.0
    for faces, mels in batches:
        a, b = reference.run(faces, mels), candidate.run(faces, mels)
        worst = max(worst, float(np.abs(a - b).max()))
        for x, y in zip(_uint8(a), _uint8(b)):
            ssims.append(ssim(x, y))
            psnrs.append(min(psnr(x, y), 100.0))
    return {"ssim": float(np.mean(ssims)), "psnr": float(np.mean(psnrs)), "max_diff": worst}


def _uint8(frames: np.ndarray) -> np.ndarray:
    """``[N,3,S,S]`` float in [0, 1] → ``[N,S,S,3]`` uint8."""
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)
