"""The student segmenter and the loss-predicting teacher, built from MONAI networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets import Critic, ViTAutoEnc
from torch import nn


class ViTSegmenter(nn.Module):
    """MONAI ViTAutoEnc as a 1-channel segmenter returning logits only.

    ViTAutoEnc returns ``(reconstruction, hidden_states)``; element 0 is used as logits.
    """

    def __init__(self, input_size: int, patch_size: int, hidden_size: int, mlp_dim: int,
                 num_layers: int, num_heads: int, deconv_chns: int, dropout_rate: float) -> None:
        super().__init__()
        self.net = ViTAutoEnc(
            in_channels=1,
            out_channels=1,
            img_size=(input_size, input_size),
            patch_size=(patch_size, patch_size),
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            deconv_chns=deconv_chns,
            dropout_rate=dropout_rate,
            spatial_dims=2,
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)[0]


class LossPredictor(nn.Module):
    """MONAI Critic on (image, mask probability) predicting that mask's per-image BCE.

    The Critic's output is unbounded; softplus maps it to a non-negative loss.
    """

    def __init__(self, input_size: int, channels: list[int], strides: list[int],
                 num_res_units: int, dropout: float, norm: str = "INSTANCE") -> None:
        super().__init__()
        self.net = Critic(
            in_shape=(2, input_size, input_size),
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            dropout=dropout if dropout > 0 else None,
            norm=norm,
        )

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """Predicted per-image BCE, shape ``(B,)``."""
        return F.softplus(self.net(torch.cat([image, prob], dim=1))).flatten()


def build_student(student_cfg: dict, input_size: int) -> ViTSegmenter:
    return ViTSegmenter(input_size=input_size, **student_cfg)


def build_teacher(teacher_cfg: dict, input_size: int) -> LossPredictor:
    return LossPredictor(input_size=input_size, **teacher_cfg)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients; gradients still flow through its inputs."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
