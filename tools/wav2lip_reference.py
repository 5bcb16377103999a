"""The procedure of Wav2Lip's own ``inference.py``, step for step, as the baseline of ``tools/bench.py --race``.

    python tools/wav2lip_reference.py --checkpoint_path wav2lip.pth --face FACE.mp4 --audio SPEECH.wav \\
        --box TOP BOTTOM LEFT RIGHT --outfile OUT.mp4

Issue "Live: ... 2.5× Wav2Lip's speed" compares the whole ``realtime run``
process with the whole process of Wav2Lip's ``inference.py``
(``Rudrabha/Wav2Lip``), same checkpoint, clip and speech, the face box
given to it for free. Its code is not ours to copy, and it needs its own
``face_detection`` package, so this file redoes what it does, in the same
order and with the same libraries, written from reading it:

1. read every frame of ``--face`` into memory (``cv2.VideoCapture``, BGR);
2. a non-wav ``--audio`` is converted with ``ffmpeg`` to a temporary wav;
   the wav is loaded at 16 kHz with ``librosa.load`` and turned into the
   Wav2Lip mel (pre-emphasis 0.97 with ``scipy.signal.lfilter``,
   ``librosa.stft`` n_fft 800 / hop 200 with librosa 0.7.0's reflect padding,
   the 80-band Slaney mel of 55–7600 Hz,
   20·log10 − 20 dB, the symmetric ±4 normalisation of −100 dB);
3. mel chunks of 16 frames every 80/fps mel frames, the last one ending at
   the mel's end; the frames cut to the number of chunks;
4. with ``--box``, every frame's face is that box (no detector); batches of
   ``--wav2lip_batch_size`` (128): faces resized to 96×96 (``cv2.resize``,
   bilinear), the lower half zeroed for the pose input, concatenated with
   the unmasked face, /255;
5. the model is loaded at the first batch (``torch.load``, ``module.``
   stripped) and run in float32 with ``torch.no_grad`` on the CPU (or CUDA);
   outputs ×255, cast to uint8, resized to the box and written over the
   frame, each frame written by ``cv2.VideoWriter`` (DIVX) to an AVI;
6. ``ffmpeg -i AUDIO -i AVI -strict -2 -q:v 1 OUT`` muxes the result.

The model is :class:`engine.models.wav2lip.Wav2Lip` (the published layer
layout, equal to ``models/wav2lip.py`` to 1e-6, ``tests/test_models.py``), so
the arithmetic is the same as the original's; only our imports differ (the
original also imports its ``face_detection`` package, which we do not load:
that favours this baseline). Prints what the original prints, in short.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

IMG_SIZE = 96
MEL_STEP = 16


def wav2lip_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's ``audio.melspectrogram`` with its ``hparams``, through librosa as the original computes it:
    ``[80, T]`` float32 in [-4, 4] of 16 kHz mono ``wav``."""
    import librosa
    from scipy import signal

    from engine.audio import HOP, N_FFT, PREEMPHASIS, librosa_mel_basis

    y = signal.lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    # reflect padding: the default of librosa 0.7.0, which Wav2Lip's requirements pin (newer ones pad with zeros)
    spec = np.abs(librosa.stft(y=y, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, pad_mode="reflect"))
    db = 20.0 * np.log10(np.maximum(1e-5, librosa_mel_basis() @ spec)) - 20.0
    return np.clip(8.0 * ((db + 100.0) / 100.0) - 4.0, -4.0, 4.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="wav2lip_reference", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint_path", required=True, help="wav2lip.pth / wav2lip_gan.pth")
    p.add_argument("--face", required=True, help="video with the face")
    p.add_argument("--audio", required=True, help="speech (wav, or anything ffmpeg reads)")
    p.add_argument("--outfile", required=True, help="output video")
    p.add_argument("--box", nargs=4, type=int, required=True, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="the face box of every frame, in pixels (the original's --box)")
    p.add_argument("--wav2lip_batch_size", type=int, default=128, help="frames per model call (default: 128)")
    a = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"Using {device} for inference.")

    stream = cv2.VideoCapture(a.face)
    fps = stream.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = stream.read()
        if not ok:
            break
        frames.append(frame)
    stream.release()
    if not frames:
        print(f"wav2lip_reference: no frames in {a.face}", file=sys.stderr)
        return 2
    print(f"Number of frames available for inference: {len(frames)}")

    with tempfile.TemporaryDirectory() as tmp:
        audio = a.audio
        if not audio.endswith(".wav"):
            audio = os.path.join(tmp, "temp.wav")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", a.audio, "-strict", "-2", audio], check=True)
        import librosa

        wav, _ = librosa.load(audio, sr=16000)
        mel = wav2lip_mel(wav)
        chunks, step, i = [], 80.0 / fps, 0
        while True:
            start = int(i * step)
            if start + MEL_STEP > mel.shape[1]:
                chunks.append(mel[:, mel.shape[1] - MEL_STEP:])
                break
            chunks.append(mel[:, start: start + MEL_STEP])
            i += 1
        print(f"Length of mel chunks: {len(chunks)}")
        frames = frames[:len(chunks)]
        y1, y2, x1, x2 = a.box
        h, w = frames[0].shape[:2]
        avi = os.path.join(tmp, "result.avi")
        out, model = None, None
        for b0 in range(0, len(chunks), a.wav2lip_batch_size):
            idx = [j % len(frames) for j in range(b0, min(len(chunks), b0 + a.wav2lip_batch_size))]
            batch_frames = [frames[j].copy() for j in idx]
            faces = np.asarray([cv2.resize(f[y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE)) for f in batch_frames])
            masked = faces.copy()
            masked[:, IMG_SIZE // 2:] = 0
            img = np.concatenate((masked, faces), axis=3) / 255.0
            mels = np.asarray(chunks[b0: b0 + len(idx)])[:, None]
            if model is None:
                from engine.models.wav2lip import Wav2Lip

                state = torch.load(a.checkpoint_path, map_location="cpu", weights_only=True)["state_dict"]
                model = Wav2Lip()
                model.load_state_dict({k.replace("module.", ""): v for k, v in state.items()})
                model = model.to(device).eval()
                print("Model loaded")
                out = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"DIVX"), fps, (w, h))
            with torch.no_grad():
                pred = model(torch.FloatTensor(np.transpose(img, (0, 3, 1, 2))).to(device),
                             torch.FloatTensor(mels).to(device))
            pred = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
            for face, frame in zip(pred, batch_frames):
                frame[y1:y2, x1:x2] = cv2.resize(face.astype(np.uint8), (x2 - x1, y2 - y1))
                out.write(frame)
        out.release()
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", audio, "-i", avi, "-strict", "-2", "-q:v", "1",
                        a.outfile], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
