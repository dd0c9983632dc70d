"""Per-image losses shared by the teacher targets and the student objectives.

Everything here returns one value per image (shape ``(B,)``), never a batch mean: the
teacher learns to predict each image's own loss, and the student is penalised per image.

The student's loss and the teacher's target are one definition, ``pixel_loss``: the BCE of
logits with ``pos_weight`` (config train.pos_weight). The student applies it to its logits
(``per_image_loss``); the teacher's target applies it to a probability map (a student's
output or a corrupted mask) turned back into logits with a clamp (``per_image_loss_of_prob``,
``pixel_loss_of_prob``), so the teacher predicts exactly the loss the student minimises.

Every loss takes an optional ``valid`` map ``(B, 1, H, W)`` in {0, 1} for partially labelled
data: the mean is then over valid pixels only, ignored pixels get exactly zero gradient, and
an image without any valid pixel costs 0. Without ``valid`` every pixel counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Probabilities are clamped to [eps, 1 - eps] before they become the teacher's logits, so that
# a confidently wrong pixel costs at most -log(1e-3) ~ 6.9 (times pos_weight for foreground):
# the teacher's regression target stays bounded.
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


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0) -> torch.Tensor:
    """The per-pixel loss, shape ``(B, 1, H, W)``: numerically stable binary cross-entropy of
    logits, ``-(pos_weight * t * log sigmoid(z) + (1 - t) * log(1 - sigmoid(z)))``.

    The one definition behind the student's loss and the teacher's target. ``pos_weight`` > 1
    up-weights foreground pixels, for data where mitochondria cover only a few percent of the
    image and a plain BCE first learns to predict all background; soft targets are allowed.
    """
    logits = logits.float()  # a loss in float32 also when the forward pass ran under autocast
    weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=weight, reduction="none")


def per_image_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """The student's loss: mean ``pixel_loss`` of its logits per image, shape ``(B,)``.

    Not clamped: a confidently wrong pixel keeps a growing loss and a gradient of about
    pos_weight (foreground) or 1 (background) however far its logit is past the teacher's
    clamp; a clamped logit would have zero gradient there and the pixel could never be
    corrected. ``valid``: see the module docstring.
    """
    return _per_image_mean(pixel_loss(logits, target, pos_weight), valid)


def clamped_logit(prob: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    """``log(p / (1 - p))`` of ``p`` clamped to [eps, 1 - eps], in float32 (the log of bf16 is
    coarse): a probability map as logits whose magnitude is at most logit(1 - eps) ~ 6.9."""
    return torch.logit(prob.float(), eps=eps)


def pixel_loss_of_prob(prob: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0,
                       eps: float = PROB_EPS) -> torch.Tensor:
    """``pixel_loss`` of a probability map, shape ``(B, 1, H, W)``: the error map that an
    error-map teacher predicts; its mean over the labelled pixels is ``per_image_loss_of_prob``.

    For ``prob = sigmoid(z)`` it equals the student's ``pixel_loss(z)`` wherever
    ``|z| <= logit(1 - eps)`` (eps <= p <= 1 - eps), up to float rounding; beyond, it is the
    loss at the clamp: at most ``-log(eps)``, times pos_weight on foreground.
    """
    return pixel_loss(clamped_logit(prob, eps), target, pos_weight)


def per_image_loss_of_prob(prob: torch.Tensor, target: torch.Tensor, pos_weight: float = 1.0,
                           valid: torch.Tensor | None = None, eps: float = PROB_EPS) -> torch.Tensor:
    """The teacher's target and the "true loss" of evaluation: the student's loss
    (``per_image_loss``, same pos_weight and ignored pixels) of a probability map, per image,
    shape ``(B,)``, with the bound of ``pixel_loss_of_prob``. ``prob`` and ``target`` have
    shape ``(B, 1, H, W)``; ``valid``: see the module docstring.
    """
    return _per_image_mean(pixel_loss_of_prob(prob, target, pos_weight, eps), valid)


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
