"""engine.audio: decoding, the Wav2Lip mel (batch and streaming), mel windows."""

import numpy as np
import pytest

from conftest import data_file
from engine.audio import (MEL_SILENCE, SAMPLE_RATE, AudioError, MelStream, load_audio, mel_window,
                          melspectrogram, window_start)


def librosa_recipe(wav):
    """Wav2Lip's audio.py written directly with librosa + scipy (spec §3.5)."""
    import librosa
    import scipy.signal

    y = scipy.signal.lfilter([1, -0.97], [1], wav)
    D = librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect")
    M = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ np.abs(D)
    S = 20 * np.log10(np.maximum(1e-5, M)) - 20
    return np.clip(8 * (S + 100) / 100 - 4, -4, 4)


def test_mel_matches_librosa_recipe_and_stream():
    wav = load_audio(data_file("audio/librivox_ss01_0870.wav"))
    batch = melspectrogram(wav)
    assert batch.shape == (80, 1 + len(wav) // 200)
    assert np.abs(batch - librosa_recipe(wav)).max() < 1e-4

    rng = np.random.default_rng(1)
    stream, i = MelStream(), 0
    while i < len(wav):
        n = int(rng.integers(1, 2500))
        stream.push(wav[i: i + n])
        i += n
        # frames are released as soon as their samples exist, never before
        assert stream.n_frames == (stream.n_samples - 400) // 200 + 1 if stream.n_samples > 400 else 0
    stream.close()
    assert stream.n_frames == batch.shape[1]
    assert np.abs(stream.frames(0, stream.n_frames) - batch).max() < 1e-4


def test_stream_discard_and_silence_padding():
    wav = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    s = MelStream()
    s.push(wav)
    s.close()
    full = s.frames(0, s.n_frames)
    s.discard_before(100)
    assert np.array_equal(s.frames(100, 116), full[:, 100:116])
    with pytest.raises(ValueError):
        s.frames(90, 106)
    tail = s.frames(s.n_frames - 4, s.n_frames + 12)
    assert np.all(tail[:, 4:] == MEL_SILENCE)


def test_mel_window_positions():
    mel = np.arange(80 * 200, dtype=np.float32).reshape(80, 200)
    # Wav2Lip: the window starts at the frame: int(80 * i / 25)
    assert window_start(7 / 25, 0.0) == int(80 * 7 / 25)
    assert np.array_equal(mel_window(mel, 1.0, 0.0), mel[:, 80:96])
    # ours: centred, 0.1 s earlier; before t=0 the window is padded with silence
    assert np.array_equal(mel_window(mel, 1.0, -0.1), mel[:, 72:88])
    w0 = mel_window(mel, 0.0, -0.1)
    assert np.all(w0[:, :8] == MEL_SILENCE) and np.array_equal(w0[:, 8:], mel[:, :8])


@pytest.mark.parametrize("rel,rate", [
    ("audio/ljspeech_LJ001-0001.wav", 22050),      # 22.05 kHz wav
    ("video/grid_bbaf2n.mpg", 44100),               # MP2 stereo in MPEG-PS
    ("video/latentsync_demo1.mp4", 44100),          # AAC stereo in mp4 (HEVC video)
])
def test_load_audio_any_rate_and_container(rel, rate):
    import av

    path = data_file(rel)
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        expected = float(s.duration * s.time_base) if s.duration else c.duration / 1e6
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) / SAMPLE_RATE - expected) < 0.1
    assert 0.01 < np.abs(wav).max() <= 1.0


def test_load_audio_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="no audio stream"):
        load_audio(data_file("images/skimage_astronaut.png"))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00junk" * 3)
    with pytest.raises(AudioError):
        load_audio(junk)


def test_truncated_audio_keeps_what_decodes(tmp_path):
    src = data_file("video/grid_bbaf2n.mpg").read_bytes()
    cut = tmp_path / "cut.mpg"
    cut.write_bytes(src[: len(src) // 2])
    wav = load_audio(cut)
    assert 0.5 < len(wav) / SAMPLE_RATE < 2.5
