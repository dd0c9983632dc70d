"""The networks: the students (ViTAutoEnc, SwinUNETR or UNet), the loss-predicting teachers
(Critic, ViT regressor, error-map UNet), the convolutional segmenters of the distillation
conditions, their ensemble, and feature taps for feature distillation. All built from MONAI
networks.

This module imports only torch and MONAI: bioimage.io packages (emkt.export) ship it as the
source that rebuilds a network from its checkpoint's kind, arch and input size
(``ProbabilityNetwork``), where emkt is not installed."""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from monai.networks.nets import ViT, BasicUNet, Critic, SegResNet, SwinUNETR, UNet, ViTAutoEnc
from torch import nn

SEGMENTER_TYPES = ("unet", "basicunet", "segresnet")
# BasicUNet has a fixed depth: four 2x downsamplings.
BASICUNET_DEPTH = 5


def _no_cross_attention_grads(blocks: nn.ModuleList) -> None:
    """MONAI's transformer blocks hold a cross-attention LayerNorm even without cross attention;
    it never gets a gradient, and DistributedDataParallel would wait for one."""
    for block in blocks:
        if not getattr(block, "with_cross_attention", False) and hasattr(block, "norm_cross_attn"):
            block.norm_cross_attn.requires_grad_(False)


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
        _no_cross_attention_grads(self.net.blocks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)[0]


class SwinSegmenter(nn.Module):
    """MONAI SwinUNETR (2D, v2 blocks by default: the method authors' final student) as a
    1-channel segmenter returning logits. ``input_size`` must be a multiple of 32."""

    def __init__(self, input_size: int, feature_size: int, depths: list[int], num_heads: list[int],
                 use_v2: bool = True, drop_rate: float = 0.0, window_size: int = 7) -> None:
        super().__init__()
        del input_size  # any multiple of 32 (checked by the config)
        self.net = SwinUNETR(in_channels=1, out_channels=1, feature_size=feature_size, depths=tuple(depths),
                             num_heads=tuple(num_heads), use_v2=use_v2, drop_rate=drop_rate,
                             window_size=window_size, spatial_dims=2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


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


class ErrorMapPredictor(nn.Module):
    """MONAI UNet on (image, mask probability) predicting that mask's per-pixel BCE map: the
    "error distribution" taken per pixel. softplus keeps the map non-negative.

    Called like the scalar teacher it returns the map's per-image mean, shape ``(B,)``: a
    prediction of the same per-image BCE, so both kinds share the scalar evaluation (MAE,
    Spearman) and can sit in one committee. ``dense=True`` returns the map ``(B, 1, H, W)``.
    """

    def __init__(self, input_size: int, channels: list[int], strides: list[int],
                 num_res_units: int, dropout: float, norm: str = "BATCH") -> None:
        super().__init__()
        del input_size  # fully convolutional: any size divisible by the strides' product
        self.net = UNet(spatial_dims=2, in_channels=2, out_channels=1, channels=tuple(channels),
                        strides=tuple(strides), num_res_units=num_res_units, dropout=dropout, norm=norm)

    def forward(self, image: torch.Tensor, prob: torch.Tensor, dense: bool = False) -> torch.Tensor:
        error_map = F.softplus(self.net(torch.cat([image, prob], dim=1)).float())
        return error_map if dense else error_map.flatten(1).mean(dim=1)


class ViTLossPredictor(nn.Module):
    """MONAI ViT on (image, mask probability) with a 1-output regression head predicting that
    mask's per-image BCE (the method authors' final teacher); softplus keeps it non-negative."""

    def __init__(self, input_size: int, patch_size: int, hidden_size: int, mlp_dim: int, num_layers: int,
                 num_heads: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        # post_activation None: a plain linear head (MONAI's default Tanh would cap the loss at 1)
        self.net = ViT(in_channels=2, img_size=(input_size, input_size), patch_size=(patch_size, patch_size),
                       hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads,
                       classification=True, num_classes=1, post_activation=None, dropout_rate=dropout_rate,
                       spatial_dims=2)
        _no_cross_attention_grads(self.net.blocks)

    def forward(self, image: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
        """Predicted per-image BCE, shape ``(B,)``."""
        return F.softplus(self.net(torch.cat([image, prob], dim=1))[0].float()).flatten()


# Teacher checkpoints' arch 'type' (none: the Critic, as written before error-map teachers).
TEACHER_TYPES = {"critic": LossPredictor, "vit": ViTLossPredictor, "error_map": ErrorMapPredictor}


def teacher_class(arch: dict) -> type[nn.Module]:
    """The teacher network an arch describes (arch key 'type', default 'critic')."""
    kind = arch.get("type", "critic")
    if kind not in TEACHER_TYPES:
        raise ValueError(f"unknown teacher type {kind!r}; allowed: {sorted(TEACHER_TYPES)}")
    return TEACHER_TYPES[kind]


def teacher_arch(config: dict, kind: str) -> dict:
    """The arch of a teacher kind from the config: 'critic', the scalar teacher of section
    'teacher' (a Critic, or a ViT regressor with teacher.type 'vit'), or 'error_map' (section
    'error_map_teacher')."""
    if kind == "error_map":
        return {"type": kind, **config["error_map_teacher"]}
    section = config["teacher"]
    scalar = section.get("type", "critic")
    if scalar == "vit":
        return {"type": "vit", **section["vit"]}
    return {"type": "critic", **{key: section[key] for key in _constructor_names(LossPredictor) if key in section}}


def is_dense_teacher(teacher: nn.Module) -> bool:
    """Whether a teacher predicts per-pixel error maps (and accepts ``dense=True``)."""
    return isinstance(teacher, ErrorMapPredictor)


# Student types (config student.type, checkpoints' student arch 'type'; none: ViTAutoEnc).
STUDENT_TYPES = ("vitautoenc", "swinunetr", "unet")


def student_type(arch: dict) -> str:
    kind = arch.get("type", "vitautoenc")
    if kind not in STUDENT_TYPES:
        raise ValueError(f"unknown student type {kind!r}; allowed: {list(STUDENT_TYPES)}")
    return kind


def student_arch(student_cfg: dict) -> dict:
    """The flat arch of a student, as checkpoints keep it: ``{"type": ..., <its settings>}``.
    From the config section 'student' (the type's settings: the ViT keys at the top, the
    others under student.swinunetr / student.unet) or from an arch already flat."""
    kind = student_type(student_cfg)
    if kind == "vitautoenc":
        return {"type": kind, **{key: student_cfg[key] for key in _constructor_names(ViTSegmenter)
                                 if key in student_cfg}}
    nested = student_cfg.get(kind)
    settings = nested if isinstance(nested, dict) else {k: v for k, v in student_cfg.items() if k != "type"}
    return {"type": kind, **settings}


def student_arch_keys(arch: dict) -> tuple[set[str], set[str]]:
    """(required, optional) keys of a student type's flat arch, read off its constructor."""
    kind = student_type(arch)
    if kind == "unet":
        return {"type", "width"}, {"depth"}
    required, optional = constructor_keys(ViTSegmenter if kind == "vitautoenc" else SwinSegmenter)
    return required, optional | {"type"}


def constructor_keys(network: type[nn.Module]) -> tuple[set[str], set[str]]:
    """(required, optional) keyword arguments of a network's constructor, but input_size."""
    parameters = [p for name, p in inspect.signature(network.__init__).parameters.items()
                  if name not in ("self", "input_size")]
    return ({p.name for p in parameters if p.default is inspect.Parameter.empty},
            {p.name for p in parameters if p.default is not inspect.Parameter.empty})


def _constructor_names(network: type[nn.Module]) -> set[str]:
    required, optional = constructor_keys(network)
    return required | optional


def build_student(student_cfg: dict, input_size: int) -> nn.Module:
    """A student of any type, from the config section 'student' or a checkpoint's arch."""
    arch = student_arch(student_cfg)
    settings = {key: value for key, value in arch.items() if key != "type"}
    if arch["type"] == "vitautoenc":
        return ViTSegmenter(input_size=input_size, **settings)
    if arch["type"] == "swinunetr":
        return SwinSegmenter(input_size=input_size, **settings)
    return build_segmenter({"type": "unet", **settings}, input_size)


def build_teacher(arch: dict, input_size: int) -> nn.Module:
    """A teacher from its arch: the Critic (no 'type', or 'critic'), the ViT regressor or an error-map UNet."""
    settings = {key: value for key, value in arch.items() if key != "type"}
    return teacher_class(arch)(input_size=input_size, **settings)


def build_segmenter(arch: dict, input_size: int | None = None) -> nn.Module:
    """A MONAI convolutional segmenter (1 channel in, 1 logit channel out) from a config entry
    of ``segmenters``: ``type`` (unet, basicunet, segresnet), ``width`` (channels of the first
    level, doubling per level), ``depth`` (resolution levels; basicunet always has 5)."""
    kind, width = arch["type"], int(arch["width"])
    depth = arch.get("depth") or BASICUNET_DEPTH
    if kind == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=1,
                    channels=[width * 2**level for level in range(depth)], strides=[2] * (depth - 1),
                    num_res_units=2)
    if kind == "basicunet":
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=1,
                         features=(width, width, 2 * width, 4 * width, 8 * width, width))
    if kind == "segresnet":
        return SegResNet(spatial_dims=2, in_channels=1, out_channels=1, init_filters=width,
                         blocks_down=tuple([1, 2, 2, 4, 4, 4][:depth]), blocks_up=(1,) * (depth - 1))
    raise ValueError(f"unknown segmenter type {kind!r}; allowed: {SEGMENTER_TYPES}")


def probability_logit(prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The logit of a probability, clamped so that certain pixels stay finite."""
    prob = prob.clamp(eps, 1.0 - eps)
    return torch.log(prob) - torch.log1p(-prob)


class EnsembleSegmenter(nn.Module):
    """Several segmenters whose sigmoid outputs are averaged.

    ``forward`` returns the logit of the mean probability, so the ensemble is evaluated and
    applied exactly like a single network; ``mean_and_sd`` gives the soft labels (mean and
    standard deviation over members per pixel) at a temperature.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def member_probabilities(self, image: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(members, B, 1, H, W) sigmoid outputs, each at ``temperature``."""
        return torch.stack([torch.sigmoid(member(image) / temperature) for member in self.members])

    def mean_and_sd(self, image: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(B, 2, H, W): channel 0 the mean, channel 1 the standard deviation over members."""
        probs = self.member_probabilities(image, temperature)
        return torch.cat([probs.mean(0), probs.std(0, unbiased=False)], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return probability_logit(self.member_probabilities(image).mean(0))


# Kinds that map an image to foreground logits: what evaluation, prediction and export accept.
SEGMENTATION_KINDS = ("student", "segmenter", "ensemble")


def build_segmentation_network(kind: str, arch: dict, input_size: int) -> nn.Module:
    """A network mapping images to foreground logits, from a checkpoint's kind ('student',
    'segmenter' or 'ensemble', whose arch lists its members' kinds and archs), arch and input size."""
    if kind == "student":
        return build_student(arch, input_size)
    if kind == "segmenter":
        return build_segmenter(arch, input_size)
    if kind == "ensemble":
        return EnsembleSegmenter([build_segmentation_network(m["kind"], m["arch"], input_size)
                                  for m in arch["members"]])
    raise ValueError(f"{kind!r} is not a segmentation network kind; allowed: {list(SEGMENTATION_KINDS)}")


def size_multiple(kind: str, arch: dict) -> int | None:
    """What the side of an input must be a multiple of: the network's downsampling, or None
    when only its training input size fits (a ViTAutoEnc's position embeddings are fixed)."""
    if kind == "ensemble":
        multiples = [size_multiple(m["kind"], m["arch"]) for m in arch["members"]]
        return None if None in multiples else math.lcm(*multiples)
    if kind == "student":
        student = student_arch(arch)
        if student["type"] == "vitautoenc":
            return None
        if student["type"] == "swinunetr":
            return 32  # a patch embedding of 2, then 4 stages that halve the resolution
        arch = {"type": "unet", **{k: v for k, v in student.items() if k != "type"}}
    depth = BASICUNET_DEPTH if arch["type"] == "basicunet" else arch.get("depth") or BASICUNET_DEPTH
    return 2 ** (depth - 1)


class ProbabilityNetwork(nn.Module):
    """A segmentation network followed by the sigmoid: (B, 1, H, W) foreground probabilities in
    [0, 1] of z-scored images. What bioimage.io packages run (emkt.export): its keyword
    arguments are a checkpoint's kind, arch and input size, its weights under ``network.``."""

    def __init__(self, kind: str, arch: dict, input_size: int) -> None:
        super().__init__()
        self.network = build_segmentation_network(kind, arch, input_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(image).float())


def default_feature_layer(model: nn.Module) -> str:
    """The module whose output feature distillation matches when the config names none: the
    last transformer block of a ViT student, the bottleneck of a SwinUNETR or MONAI UNet.
    Other networks need the layer named."""
    if isinstance(model, ViTSegmenter):
        return f"net.blocks.{len(model.net.blocks) - 1}"
    if isinstance(model, SwinSegmenter):
        return "net.encoder10"
    if isinstance(model, UNet):  # the innermost of MONAI's nested skip connections
        return max((name for name, _ in model.named_modules() if name.endswith("submodule")), key=len)
    raise ValueError(f"{type(model).__name__} has no default feature layer; name one in the config "
                     "(feature_distillation.teacher_layer / student_layer), e.g. one of: "
                     + ", ".join(name for name, _ in list(model.named_modules())[1:8]) + ", ...")


def as_feature_map(output: torch.Tensor) -> torch.Tensor:
    """A layer's output as (B, C, H, W): ViT tokens (B, N, C) become a square map."""
    if output.ndim == 4:
        return output
    if output.ndim == 3:
        side = math.isqrt(output.shape[1])
        if side * side != output.shape[1]:
            raise ValueError(f"cannot make a square map of {output.shape[1]} tokens")
        return output.transpose(1, 2).reshape(output.shape[0], output.shape[2], side, side)
    raise ValueError(f"expected a (B,C,H,W) map or (B,N,C) tokens, got shape {tuple(output.shape)}")


class FeatureTap:
    """Keeps the latest output of one named module (a forward hook) as a (B, C, H, W) map."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.layer = layer or default_feature_layer(model)
        modules = dict(model.named_modules())
        if self.layer not in modules:
            raise ValueError(f"no module named {self.layer!r} in {type(model).__name__}; some names: "
                             + ", ".join(list(modules)[1:12]))
        self.output: torch.Tensor | None = None
        self._handle = modules[self.layer].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output) -> None:
        self.output = as_feature_map(output[0] if isinstance(output, (tuple, list)) else output)

    def remove(self) -> None:
        self._handle.remove()


def feature_channels(model: nn.Module, tap: FeatureTap, input_size: int) -> int:
    """Channels of the tapped map, found with one forward pass on a blank input."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size, device=device))
    model.train(was_training)
    return int(tap.output.shape[1])


class FeatureProjection(nn.Module):
    """A 1x1 convolution from the student's feature channels to the teacher's (identity when
    equal), then resizing to the teacher's map size when the two differ."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.conv = (nn.Identity() if student_channels == teacher_channels
                     else nn.Conv2d(student_channels, teacher_channels, kernel_size=1))

    def forward(self, student_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        projected = self.conv(student_map)
        if projected.shape[-2:] != tuple(size):
            projected = F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
        return projected


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no parameter gradients; gradients still flow through its inputs."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module
