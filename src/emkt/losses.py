"""Per-image losses shared by the teacher targets and the student objectives.

Everything here returns one value per image (shape ``(B,)``), never a batch mean: the
teacher learns to predict each image's own loss, and the student is penalised per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped before the log so that a confidently wrong pixel costs at most
# -log(1e-3) ~ 6.9: the teacher's regression target stays bounded.
PROB_EPS = 1e-3


def per_image_bce(prob: torch.Tensor, target: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    """Mean binary cross-entropy of a probability map against a binary target, per image.

    ``prob`` and ``target`` have shape ``(B, 1, H, W)``; returns ``(B,)``. This is the
    quantity the teacher predicts, for corrupted masks and student outputs alike.
    """
    p = prob.clamp(eps, 1.0 - eps)
    pixel = -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p))
    return pixel.flatten(1).mean(dim=1)


def per_image_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0
) -> torch.Tensor:
    """Numerically stable per-image BCE of the student's logits, shape ``(B,)``.

    ``pos_weight`` > 1 up-weights foreground pixels, for data where mitochondria cover only
    a few percent of the image and a plain BCE first learns to predict all background.
    """
    weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    return pixel.flatten(1).mean(dim=1)
