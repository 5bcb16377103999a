"""Training losses of the generator (Yaman et al. 2024 §3.5–3.6).

Total: ``λ_gan·L_gan + λ1·L1 + λ2·L_perceptual + λ3·L_sync`` with the
paper's (λ1, λ2, λ3) = (10, 1, 0.5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1_loss(fake: torch.Tensor, real: torch.Tensor, lower_weight: float = 1.0) -> torch.Tensor:
    """Mean absolute pixel error of ``[N, 3, S, S]`` faces in [0, 1].

    ``lower_weight`` > 1 weighs the lower half (mouth and chin, the part
    the generator must invent) that much more than the upper half; 1 is the
    plain L1 of the paper.
    """
    err = (fake - real).abs()
    if lower_weight == 1.0:
        return err.mean()
    half = err.shape[-2] // 2
    w = torch.ones_like(err[:1, :1, :, :1])
    w[..., half:, :] = lower_weight
    return (err * w).mean() / w.mean()


def gan_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating adversarial loss of the generator: BCE(D(fake), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def gan_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """BCE(D(real), 1) + BCE(D(fake), 0), halved."""
    return 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                  + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
