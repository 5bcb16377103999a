"""The online validation monitor of ``train.run`` (Yaman et al. 2024 §4.1, eq. 4–6).

Every ``monitor.every`` steps and at the end of a run, the generator runs
on a fixed validation subset: the first ``monitor.clips`` validation clips,
each from its first frame for up to ``monitor.max_frames`` frames (a whole
multiple of k), as the streaming pipeline would see them: pose reference =
the frame with its lower half masked, identity reference = the frame in
the middle of the clip, held for every frame (the pipeline holds one
reference too), mel windows centred on the frames. It reports

* ``l1``, ``psnr`` (dB), ``ssim`` of the generated vs real face crops
  (:func:`engine.metrics.psnr` / :func:`engine.metrics.ssim` on [0, 1]
  images, averaged over frames), and ``ssim_low``, the SSIM of their lower
  halves (rows S/2…S: nose to chin, what the generator redraws; the
  SSIMlow column of ``tools/evaluate.py``);
* with AV-HuBERT weights and clips that carry mouth-ROI data: ``AVSu``,
  ``AVSm``, ``AVSv`` (:func:`engine.metrics.avs_scores`) of the clip with the
  generated faces pasted back (``train.roi``, the compositor's paste) against
  its own audio and its real frames;
* always, the weights-free mouth metrics of ``engine.metrics`` (issue 9
  item 1), in the coordinates of the face crops: ``sharpness`` (lip-box
  Laplacian variance, generated over real, at the generator's scale — the
  crop is that scale), ``opening`` (std of the generated inner-lip gap over
  the real one's), ``coupling`` (Pearson r of the generated gap with the
  speech's log-RMS envelope), ``lip_error`` (% of face height). Landmarks of
  the generated crops come from MediaPipe run on them (upscaled to
  :data:`LANDMARK_SIZE`), those of the real crops from the clip's stored
  landmarks; frames where MediaPipe finds no face are skipped;
* with a lip-sync expert (``expert``, the ``syncnet`` sync loss's or the one
  whose audio encoder the generator took): ``expert_conf``, the expert's
  mean cosine between each 5-frame window of generated lower halves and its
  audio, and ``expert_conf_real``, the same on the real frames;
* ``quality``, one number to keep the best checkpoint by when there is no
  AV-HuBERT: ``coupling + min(sharpness, 1) − |log(opening)| + expert_conf``
  (each term 0 for a frozen blurry mouth and about 1 for a real one; the log
  punishes too little and too much motion alike);
* with syncnet_python weights: ``LSE-D``, ``LSE-C`` (:func:`engine.metrics.lse_scores`,
  ±15 frames) on the generated face crops resized to 224×224. syncnet_python
  crops its own S3FD face track from the video instead; the numbers are
  for comparing checkpoints of one run, not for the paper's tables
  (``tools/evaluate.py`` computes those).

``train.run`` keeps ``<out>/best.pt``, the generator with the best AVSu
(without AV-HuBERT: the best ``quality``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import math

import cv2

from engine.audio import mel_window, syncnet_mfcc
from engine.compose import lower_face_mask
from engine.face import FaceTracker, box_pixels, Box
from engine.metrics import (audio_mouth_coupling, avs_scores, lip_landmark_error, lse_scores, mouth_opening,
                            mouth_sharpness, psnr, sharpness_ratio, ssim)
from engine.models.avhubert import AVHubert
from engine.models.syncnet import SyncNet, SyncNetColor, lower_halves
from engine.inputs import generator_input
from train.data import Clip, collate, context_arrays, window_identity_lips
from train.roi import avhubert_video, context_rois

LSE_SIZE = 224  # syncnet_python's face crop side
LSE_WINDOW = 5  # video frames per SyncNet window
LANDMARK_SIZE = 192  # generated crops are upscaled to this before MediaPipe looks for landmarks


class Monitor:
    """Scores a generator on fixed validation clips (module doc).

    Args:
        clips: validation clips; the first ``n_clips`` (with ≥ 3k frames) are used.
        k: frames per generator call.
        avhubert: frozen AV-HuBERT for AVSu/AVSm/AVSv, or None.
        lse_net: syncnet_python's network for LSE-D/LSE-C, or None.
        expert: a lip-sync expert (:class:`SyncNetColor`) for ``expert_conf``, or None.
        max_frames: frames per clip (rounded down to a multiple of k).
        device: where the networks run.
    """

    def __init__(self, clips: list[Clip], k: int = 5, avhubert: AVHubert | None = None,
                 lse_net: SyncNet | None = None, n_clips: int = 8, max_frames: int = 100,
                 device: str | torch.device = "cpu", expert: SyncNetColor | None = None):
        self.clips = [c for c in clips if c.n_frames >= 3 * k][:n_clips]
        self.k, self.max_frames, self.device = k, max_frames, torch.device(device)
        self.avhubert = avhubert.eval().to(self.device) if avhubert is not None else None
        self.lse_net = lse_net.eval().to(self.device) if lse_net is not None else None
        self.expert = expert
        if self.avhubert is not None and not all(c.has_roi for c in self.clips):
            raise ValueError("AVSu needs validation clips with mouth-ROI data: re-run python -m train.preprocess")

    def _inputs(self, clip: Clip, n: int, mel_offset_s: float,
                identity_lips: bool = False, mel_context: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        faces = clip.faces[:n].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        T = len(clip.valid)
        held = clip.faces[T // 2].transpose(2, 0, 1).astype(np.float32) / 255.0  # one reference, as the pipeline
        mels = np.stack([mel_window(clip.mel, i / clip.fps, mel_offset_s, mel_context) for i in range(n)])[:, None]
        lips = window_identity_lips(clip, 0, np.full(n, T // 2)) if identity_lips else None
        inputs = generator_input(faces, held, lips)
        return torch.from_numpy(inputs).to(self.device), torch.from_numpy(mels).to(self.device)

    @torch.no_grad()
    def __call__(self, gen: torch.nn.Module) -> dict[str, float]:
        """Scores of ``gen`` (module doc); ``{}`` without clips. The generator is left in the mode it had."""
        if not self.clips:
            return {}
        was_training = gen.training
        gen.eval()
        quality, avs_features, lse = {"l1": [], "psnr": [], "ssim": [], "ssim_low": []}, [], []
        mouth = {"var_real": [], "var_fake": [], "opening": [], "coupling": [], "lip_error": [],
                 "expert_conf": [], "expert_conf_real": []}
        for clip in self.clips:
            n = min(len(clip.valid), self.max_frames) // self.k * self.k
            faces, mels = self._inputs(clip, n, gen.info.mel_offset_s, gen.info.identity_lips, gen.info.mel_context)
            fake = torch.cat([gen(faces[i: i + self.k], mels[i: i + self.k]) for i in range(0, n, self.k)])
            fake = fake.float().clamp(0, 1)
            real = torch.from_numpy(clip.faces[:n].transpose(0, 3, 1, 2).astype(np.float32) / 255.0).to(fake)
            quality["l1"].append((fake - real).abs().mean().item())
            for f, r in zip(fake.permute(0, 2, 3, 1).cpu().numpy(), real.permute(0, 2, 3, 1).cpu().numpy()):
                quality["psnr"].append(psnr(r, f, data_range=1.0))
                quality["ssim"].append(ssim(r, f, data_range=1.0))
                quality["ssim_low"].append(ssim(r[len(r) // 2:], f[len(f) // 2:], data_range=1.0))
            if clip.landmarks is not None:
                for key, value in self._mouth(clip, fake, real).items():
                    mouth[key].append(value)
            if self.avhubert is not None:
                avs_features.append(self._avhubert_features(clip, fake, n))
            if self.lse_net is not None:
                lse.append(self._lse(clip, fake))
        scores = {name: float(np.mean(v)) for name, v in quality.items()}
        if mouth["var_real"]:
            scores["sharpness"] = sharpness_ratio(np.concatenate(mouth["var_real"]), np.concatenate(mouth["var_fake"]))
        del mouth["var_real"], mouth["var_fake"]
        for name, values in mouth.items():
            values = [v for v in values if np.isfinite(v)]
            if values:
                scores[name] = float(np.mean(values))
        if all(np.isfinite(scores.get(n, math.nan)) for n in ("coupling", "sharpness", "opening")) \
                and scores["opening"] > 0:
            scores["quality"] = (scores["coupling"] + min(scores["sharpness"], 1.0)
                                 - abs(math.log(scores["opening"])) + scores.get("expert_conf", 0.0))
        if avs_features:
            names = ("audio_only", "video_only", "multimodal", "gt_video_only", "gt_multimodal")
            scores |= avs_scores(**{name: [f[i] for f in avs_features] for i, name in enumerate(names)})
        if lse:
            scores["LSE-D"] = float(np.mean([s.lse_d for s in lse]))
            scores["LSE-C"] = float(np.mean([s.lse_c for s in lse]))
        gen.train(was_training)
        return scores

    def _mouth(self, clip: Clip, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float | np.ndarray]:
        """The weights-free mouth metrics and the expert's confidence of one clip (module doc)."""
        n, size = len(fake), fake.shape[-1]
        fake_u8 = (fake.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
        real_u8 = clip.faces[:n]
        real_lm = crop_landmarks(clip, n)
        fake_lm = np.full_like(real_lm, np.nan)
        with FaceTracker(hold=0) as tracker:
            for i, face in enumerate(fake_u8):
                found = tracker.track(cv2.resize(face, (LANDMARK_SIZE, LANDMARK_SIZE),
                                                 interpolation=cv2.INTER_LINEAR), i / clip.fps)
                if found is not None:
                    fake_lm[i] = found.landmarks * (size / LANDMARK_SIZE)
        out = {"var_real": mouth_sharpness(real_u8, real_lm), "var_fake": mouth_sharpness(fake_u8, real_lm),
               "opening": math.nan, "coupling": math.nan, "lip_error": math.nan}
        found = ~np.isnan(fake_lm).any(axis=(1, 2))
        if found.sum() >= 3:
            gap_fake, gap_real = mouth_opening(fake_lm)[found], mouth_opening(real_lm)[found]
            if np.nanstd(gap_real) > 0:
                out["opening"] = float(np.nanstd(gap_fake) / np.nanstd(gap_real))
            out["coupling"] = audio_mouth_coupling(fake_lm, clip.audio, clip.fps)
            out["lip_error"] = float(np.nanmean(lip_landmark_error(real_lm, fake_lm)))
        if self.expert is not None:
            out["expert_conf"] = self._expert_conf(clip, fake)
            out["expert_conf_real"] = self._expert_conf(clip, real)
        return out

    def _expert_conf(self, clip: Clip, faces: torch.Tensor) -> float:
        starts = range(0, len(faces) - LSE_WINDOW + 1, LSE_WINDOW)
        video = torch.stack([lower_halves(faces[t: t + LSE_WINDOW].cpu()) for t in starts])
        mels = torch.from_numpy(np.stack([mel_window(clip.mel, t / clip.fps, 0.0) for t in starts]))[:, None]
        was_training = self.expert.training
        self.expert.eval()
        audio_emb, video_emb = self.expert(mels, video)
        self.expert.train(was_training)
        return float((audio_emb * video_emb).sum(1).mean())

    def _avhubert_features(self, clip: Clip, fake: torch.Tensor, n: int) -> list[torch.Tensor]:
        batch = collate([context_arrays(clip, 0, n, n)])
        batch = {key: v.to(self.device) for key, v in batch.items()}
        mask = torch.from_numpy(lower_face_mask(fake.shape[-1])).to(self.device)
        real_rois, fake_rois = context_rois(batch, fake[None], mask)
        audio = batch["ctx_audio"].transpose(1, 2)
        real_video, fake_video = avhubert_video(real_rois), avhubert_video(fake_rois)
        run = self.avhubert.extract_features
        return [run(audio=audio)[0], run(video=fake_video)[0], run(audio=audio, video=fake_video)[0],
                run(video=real_video)[0], run(audio=audio, video=real_video)[0]]

    def _lse(self, clip: Clip, fake: torch.Tensor):
        n_windows = len(fake) - LSE_WINDOW + 1
        mfcc = torch.from_numpy(syncnet_mfcc(clip.audio)).float().to(self.device)
        need = 4 * (n_windows - 1) + 20
        if mfcc.shape[1] < need:
            mfcc = F.pad(mfcc, (0, need - mfcc.shape[1]))
        frames = F.interpolate(fake, size=(LSE_SIZE, LSE_SIZE), mode="bilinear", align_corners=False) * 255.0
        vid, aud = [], []
        for start in range(0, n_windows, 16):
            idx = range(start, min(start + 16, n_windows))
            vid.append(self.lse_net.forward_lip(torch.stack([frames[v: v + LSE_WINDOW].transpose(0, 1)
                                                             for v in idx])))
            aud.append(self.lse_net.forward_aud(torch.stack([mfcc[None, :, 4 * v: 4 * v + 20] for v in idx])))
        return lse_scores(torch.cat(vid), torch.cat(aud))


def crop_landmarks(clip: Clip, n: int) -> np.ndarray:
    """``[n, 478, 2]`` float64 landmarks of the first ``n`` frames in the coordinates of their face
    crops (``engine.face.crop``: the whole-pixel box resized to S×S, pixel centres at integers); NaN
    where the frame has no face. Needs the clip's stored ``landmarks`` (``train.preprocess``)."""
    size = clip.faces.shape[1]
    out = np.full((n, 478, 2), np.nan)
    for i in range(n):
        if clip.valid[i]:
            x0, y0, x1, y1 = box_pixels(Box(*clip.boxes[i].astype(np.float64)))
            scale = np.array([size / (x1 - x0), size / (y1 - y0)])
            out[i] = (clip.landmarks[i].astype(np.float64) - (x0, y0) + 0.5) * scale - 0.5
    return out
