"""What a network costs to apply: parameters, inference images per second and peak memory,
measured on the evaluation device at the evaluation batch size."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

from .checkpoints import SEGMENTATION_KINDS, load_model
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


def checkpoint_inference_costs(paths: list[str | Path], batch_size: int, device: torch.device,
                               nothing_ran_here: bool = False) -> list[dict[str, float]]:
    """``inference_cost`` of each saved segmentation network in ``paths`` (at its checkpoint's
    input size), each measured as if it ran alone: what one job evaluating several networks
    calls.

    On CPU, in one process the memory that earlier networks freed stays with the allocator
    and would hide a later network's peak; so each network is measured in a process forked
    for it. Forking a process whose OpenMP threads have run can hang the child; so the forks
    come from this process only where it says it has run no network yet
    (``nothing_ran_here``) and runs one torch thread (with one, torch starts no OpenMP
    threads), and otherwise from a fresh Python process (``python -m emkt.costs``, with this
    process's threads; ~7 s of imports). On CUDA, torch counts allocated memory itself: the
    networks are measured here, one after the other.
    """
    if device.type == "cuda" or "fork" not in multiprocessing.get_all_start_methods():
        return [_checkpoint_cost(path, batch_size, device) for path in paths]
    if nothing_ran_here and torch.get_num_threads() == 1:
        return forked_checkpoint_costs(paths, batch_size, device)
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "emkt.costs", "--batch-size", str(batch_size), "--device", str(device),
               "--threads", str(torch.get_num_threads()), *map(str, paths)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"measuring the inference costs failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def forked_checkpoint_costs(paths: list[str | Path], batch_size: int, device: torch.device
                            ) -> list[dict[str, float]]:
    """``inference_cost`` of each saved network, each in a process forked from this one: call
    it only in a process that has run no network (see checkpoint_inference_costs)."""
    context = multiprocessing.get_context("fork")
    costs = []
    for path in paths:
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_send_checkpoint_cost, args=(sender, path, batch_size, device))
        child.start()
        sender.close()
        try:
            outcome, value = receiver.recv()
        except EOFError:  # the child died without an answer (e.g. killed for memory)
            outcome, value = "error", "the measuring process ended without a result"
        child.join()
        if outcome == "error":
            raise RuntimeError(f"{path}: measuring its inference cost failed (exit code {child.exitcode}):\n{value}")
        costs.append(value)
    return costs


def _checkpoint_cost(path: str | Path, batch_size: int, device: torch.device) -> dict[str, float]:
    model, checkpoint = load_model(path, expected_kind=SEGMENTATION_KINDS)
    return inference_cost(model, batch_size, checkpoint["input_size"], device)


def _send_checkpoint_cost(sender, path: str | Path, batch_size: int, device: torch.device) -> None:
    try:
        sender.send(("cost", _checkpoint_cost(path, batch_size, device)))
    except BaseException:
        sender.send(("error", traceback.format_exc()))
    finally:
        sender.close()


def main(argv: list[str] | None = None) -> None:
    """Print, as one JSON line, the inference cost of each checkpoint given (see checkpoint_inference_costs)."""
    parser = argparse.ArgumentParser(description="Inference cost of saved segmentation networks, each measured alone.")
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        costs = forked_checkpoint_costs(args.checkpoints, args.batch_size, torch.device(args.device))
    except RuntimeError as error:
        raise SystemExit(str(error)) from None
    print(json.dumps(costs))


if __name__ == "__main__":
    main()
