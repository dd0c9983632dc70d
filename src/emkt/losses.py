"""Per-image losses shared by the teacher targets and the student objectives.

Everything here returns one value per image (shape ``(B,)``), never a batch mean: the
teacher learns to predict each image's own loss, and the student is penalised per image.

Every loss takes an optional ``valid`` map ``(B, 1, H, W)`` in {0, 1} for partially labelled
data: the mean is then over valid pixels only, ignored pixels get exactly zero gradient, and
an image without any valid pixel costs 0. Without ``valid`` every pixel counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped before the log so that a confidently wrong pixel costs at most
# -log(1e-3) ~ 6.9: the teacher's regression target stays bounded.
PROB_EPS = 1e-3


def _per_image_mean(pixel: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of a (B, 1, H, W) pixel loss per image, over the valid pixels when given."""
    if valid is None:
        return pixel.flatten(1).mean(dim=1)
    keep = valid.flatten(1) > 0
    # where (not a product) so that whatever an ignored pixel holds, even inf or NaN, neither
    # its value nor its gradient reaches the sum; clamp: an image without valid pixels gives 0
    total = torch.where(keep, pixel.flatten(1), torch.zeros((), dtype=pixel.dtype, device=pixel.device)).sum(dim=1)
    return total / keep.sum(dim=1).clamp(min=1).to(pixel.dtype)


def per_image_bce(prob: torch.Tensor, target: torch.Tensor, eps: float = PROB_EPS,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy of a probability map against a binary target, per image.

    ``prob`` and ``target`` have shape ``(B, 1, H, W)``; returns ``(B,)``. This is the
    quantity the teacher predicts, for corrupted masks and student outputs alike. ``valid``:
    see the module docstring.
    """
    return _per_image_mean(pixel_bce(prob, target, eps), valid)


def pixel_bce(prob: torch.Tensor, target: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    """Binary cross-entropy of every pixel, shape ``(B, 1, H, W)``: the error map that an
    error-map teacher predicts; its mean over the labelled pixels is ``per_image_bce``."""
    p = prob.float().clamp(eps, 1.0 - eps)  # float32 also under autocast: log of bf16 is coarse
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p))


def per_image_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Numerically stable per-image BCE of the student's logits, shape ``(B,)``.

    ``pos_weight`` > 1 up-weights foreground pixels, for data where mitochondria cover only
    a few percent of the image and a plain BCE first learns to predict all background.
    ``valid``: see the module docstring.
    """
    logits = logits.float()  # a loss in float32 also when the forward pass ran under autocast
    weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    pixel = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    return _per_image_mean(pixel, valid)


def per_image_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per image, shape ``(B,)``, e.g. of student probabilities against
    soft labels (distillation). ``valid``: see the module docstring."""
    return _per_image_mean(F.mse_loss(pred.float(), target.float(), reduction="none"), valid)


def per_image_kl_with_logits(logits: torch.Tensor, target: torch.Tensor, eps: float = PROB_EPS,
                             valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel KL divergence KL(target || sigmoid(logits)) of Bernoulli distributions,
    per image, shape ``(B,)``: the BCE against the soft target minus the target's own
    entropy, so it is 0 where the two agree. ``valid``: see the module docstring."""
    q = target.float().clamp(eps, 1.0 - eps)
    entropy = -(q * torch.log(q) + (1.0 - q) * torch.log1p(-q))
    pixel = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none") - entropy
    return _per_image_mean(pixel, valid)
