"""What a network costs to apply: parameters, inference images per second and peak memory,
measured on the evaluation device at the evaluation batch size."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .models import count_parameters

PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_kb(field: str) -> float:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False where unsupported."""
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_cost(model: nn.Module, batch_size: int, input_size: int, device: torch.device,
                   warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """``parameters``, ``images_per_s`` and ``peak_memory_mb`` of batched inference on
    ``batch_size`` x 1 x ``input_size``^2 inputs.

    Peak memory is, on CUDA, the peak allocated by torch while the model runs (weights
    included); on CPU, the growth of the process's peak resident memory from before the first
    pass, plus the weights' size (NaN where /proc cannot report it), so call it before the
    process runs the model for anything else. Timings on a machine
    running other jobs are noisy: the workflow's numbers are for comparing models, the
    benchmarks/ scripts are for absolute figures.
    """
    model = model.to(device).eval()
    batch = torch.randn(batch_size, 1, input_size, input_size, device=device)
    weights_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # From before the first pass: the allocator keeps freed memory, so a later baseline would miss it.
    cpu_peak = device.type != "cuda" and PROC_STATUS.exists() and _reset_peak_rss()
    before_kb = _status_kb("VmRSS") if cpu_peak else 0.0
    for _ in range(warmup):
        model(batch)
    _synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        model(batch)
    _synchronise(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    elif cpu_peak:
        peak_mb = (_status_kb("VmHWM") - before_kb) / 1024 + weights_mb
    else:
        peak_mb = float("nan")
    return {"parameters": float(count_parameters(model)), "images_per_s": batch_size * repeats / seconds,
            "peak_memory_mb": peak_mb}
