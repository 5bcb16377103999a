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


def test_bundled_mel_basis_is_librosas():
    """engine/assets/wav2lip_mel_basis.npy, which the pipeline reads instead of importing librosa, is
    librosa's filterbank with Wav2Lip's hparams."""
    from engine.audio import _mel_basis, librosa_mel_basis

    bundled = _mel_basis()
    assert bundled.dtype == np.float32 and bundled.shape == (80, 401)
    assert np.array_equal(bundled, librosa_mel_basis())


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
    # with past context (GeneratorInfo.mel_context): the frames before the window, the window last
    assert np.array_equal(mel_window(mel, 1.0, -0.1, 19), mel[:, 53:88])
    w0 = mel_window(mel, 0.0, -0.1, 19)
    assert w0.shape == (80, 35) and np.all(w0[:, :27] == MEL_SILENCE) and np.array_equal(w0[:, 27:], mel[:, :8])


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


def test_stereo_is_the_mean_of_its_channels(tmp_path):
    """(L + R) / 2, as Wav2Lip (librosa.load) and syncnet_python (ffmpeg -ac 1) mix stereo, not FFmpeg's
    0.7071·(L + R) "mono" downmix (3 dB louder); the mel then matches Wav2Lip's recipe on the same file."""
    import librosa
    import soundfile

    left = load_audio(data_file("audio/librivox_ss01_0870.wav"))
    right = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    n = min(len(left), len(right))
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left[:n], -0.5 * right[:n]], axis=1), SAMPLE_RATE, subtype="PCM_16")
    wav = load_audio(path)
    ref, _ = librosa.load(path, sr=None, mono=True)  # Wav2Lip's audio.load_wav: the mean of the channels
    assert len(wav) == len(ref) == n
    assert np.abs(wav - ref).max() < 1e-6
    assert np.abs(melspectrogram(wav) - librosa_recipe(ref)).max() < 1e-4


def test_stereo_grid_clip_level_matches_wav2lip(tmp_path):
    """A real GRID clip (MP2 stereo at 44.1 kHz): against Wav2Lip's pipeline (the audio track as a wav, then
    librosa.load(sr=16000)) the level is the same (FFmpeg's mono downmix: +3.01 dB, 40 clipped samples,
    mel +0.24)."""
    import av
    import librosa
    import soundfile

    path = data_file("video/grid_bbaf2n.mpg")
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        pcm = np.concatenate([f.to_ndarray() for f in c.decode(stream)], axis=1)
        rate = stream.rate
    assert pcm.shape[0] == 2
    extracted = tmp_path / "audio.wav"  # Wav2Lip's preprocess.py: ffmpeg -i video audio.wav (channels kept)
    soundfile.write(extracted, pcm.T, rate, subtype="PCM_16")
    ref, _ = librosa.load(extracted, sr=SAMPLE_RATE)
    wav = load_audio(path)
    n = min(len(wav), len(ref))
    assert abs(len(wav) - len(ref)) <= 2
    level_db = 10 * np.log10(np.mean(wav[:n].astype(np.float64) ** 2) / np.mean(ref[:n].astype(np.float64) ** 2))
    assert abs(level_db) < 0.05
    assert np.sum(np.abs(wav) >= 1.0) <= 2
    assert abs(np.mean(melspectrogram(wav[:n]) - librosa_recipe(ref[:n]))) < 0.02


def test_batch_and_stream_mel_agree_within_the_documented_bound():
    import engine.audio as audio

    wav = load_audio(data_file("audio/cmuarctic_a0007.wav"))
    batch = melspectrogram(wav)
    stream = MelStream()
    for i in range(0, len(wav), 777):
        stream.push(wav[i: i + 777])
    stream.close()
    assert np.abs(stream.frames(0, stream.n_frames) - batch).max() < 2e-6
    for doc in (audio.__doc__, MelStream.__doc__):
        assert "within 2e-6" in doc and "identical" not in doc and "exactly" not in doc
