"""Paths of the files bundled in ``engine/assets`` (their sources and licences: ``engine/assets/NOTICE``)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
FACE_LANDMARKER = ASSETS / "face_landmarker.task"  # MediaPipe Face Landmarker (engine.face)
MEAN_FACE = ASSETS / "mediapipe_mean_face.npy"  # mean face in MediaPipe's 478-point layout (engine.face)
GENERATOR = ASSETS / "generator.pt"  # the default generator; card: generator.md
LIP_EXPERT = ASSETS / "lip_expert.pth"  # the lip-sync expert (SyncNetColor); card: lip_expert.md
MOUTH_OPENING = ASSETS / "mouth_opening.pth"  # the mouth-opening regressor (engine.models.opening)
MEL_BASIS = ASSETS / "wav2lip_mel_basis.npy"  # Wav2Lip's mel filterbank, made by librosa (engine.audio)
DEMO_FACE = ASSETS / "demo_face.png"
DEMO_SPEECH = ASSETS / "demo_speech.wav"
