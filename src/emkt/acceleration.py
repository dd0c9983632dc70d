"""How a training step runs on its device: mixed precision, memory format, compilation,
data-parallel wrapping, host-to-device copies.

``Runtime`` is built once per stage from the config (section 'train') and the process
group (emkt.distributed). Stage code keeps writing plain PyTorch; it asks the runtime for
the module to train with (``trainable``), runs the forward pass in ``autocast()``, and
steps optimisers through an ``Update``. On CPU all of it is off by default, so CPU runs stay
bitwise deterministic; on a current GPU the defaults are bf16 autocast, channels-last for
convolutional networks, pinned memory and non-blocking copies.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .distributed import ProcessGroup, current

log = logging.getLogger(__name__)

def amp_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for config key train.amp on ``device`` (None: full float32).

    'auto' is bf16 on GPUs that support it, fp16 (with a grad scaler) on older GPUs and off on
    the CPU, where autocast would trade determinism and accuracy for little speed.
    """
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None
    if choice == "fp16" and device.type != "cuda":
        raise ValueError("config key 'train.amp' is 'fp16', which needs a CUDA device; use 'bf16', 'auto' or 'off'")
    if choice == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if choice == "bf16" else torch.float16


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` is a CNN (channels-last helps its convolutions on GPUs); a network
    with transformer blocks (the ViT student) gains nothing from it."""
    has_attention = any("attention" in type(m).__name__.lower() or type(m).__name__ == "SABlock"
                        for m in model.modules())
    return not has_attention and any(isinstance(m, nn.Conv2d) for m in model.modules())


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class Runtime:
    """The device, the process group and the speed settings of one training stage."""

    device: torch.device
    group: ProcessGroup = field(default_factory=ProcessGroup)
    amp: torch.dtype | None = None
    channels_last: str = "auto"
    compile: bool = False

    @classmethod
    def from_config(cls, cfg: dict, device: torch.device | str) -> Runtime:
        device = torch.device(device)
        train = cfg["train"]
        return cls(device, current(), amp_dtype(train["amp"], device), train["channels_last"], train["compile"])

    # ---------------------------------------------------------------- models

    def uses_channels_last(self, model: nn.Module) -> bool:
        if self.channels_last == "auto":
            return self.device.type == "cuda" and is_convolutional(model)
        return bool(self.channels_last)

    def place(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, channels-last where that is the setting; returns it (in place)."""
        model = model.to(self.device)
        if self.uses_channels_last(model):
            model = model.to(memory_format=torch.channels_last)
        return model

    def trainable(self, model: nn.Module) -> nn.Module:
        """The module to call in training steps: ``model`` placed, wrapped in
        DistributedDataParallel with several processes, and compiled when configured.

        Keep using ``model`` itself for state dicts, validation and frozen use: it shares
        the parameters. BatchNorm statistics are synchronised across GPUs; gloo (CPU) has no
        synchronised BatchNorm, so there each process normalises over its own part of the batch.
        """
        model = self.place(model)
        wrapped: nn.Module = model
        if self.group.world > 1:
            if has_batch_norm(model):
                if self.device.type == "cuda":
                    nn.SyncBatchNorm.convert_sync_batchnorm(model)
                else:
                    log.warning("BatchNorm on CPU with %d processes: statistics are per process", self.group.world)
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        if self.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    # ---------------------------------------------------------------- steps

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes (a no-op at float32)."""
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A loader batch on the device, copied without blocking (from pinned memory the
        copy overlaps with the GPU's work)."""
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def update(self, optimizer: torch.optim.Optimizer) -> Update:
        """The optimiser step for one loss: with fp16 a gradient scaler, otherwise plain."""
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        return Update(optimizer, scaler)

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Update:
    """zero_grad, backward and step of one optimiser, through its gradient scaler (fp16)."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
