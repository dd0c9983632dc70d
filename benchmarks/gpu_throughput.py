"""Training throughput of the student and the teacher at 224x224, with and without mixed
precision and torch.compile: a table to paste into an issue.

For each network of config.yaml (the ViT-B/16 student, the Critic teacher) and each setting
(float32 or the mixed precision of train.amp 'auto', eager or compiled), a fresh model
trains on random batches in memory through the project's runtime (emkt.acceleration): the
student with the baseline's BCE step (emkt.training.supervised.segmenter_epoch), the teacher with the
pretraining regression step. Warm-up steps (compilation included) are not timed.

Without a GPU it says so and measures the CPU: bf16 autocast stands in for mixed precision,
and the defaults shrink to the demo networks, 3 timed steps and 1 warm-up step, so that it
ends in minutes on a laptop (give --model paper to time the paper's networks there too).

Usage:  python benchmarks/gpu_throughput.py [--batch 16] [--size 224] [--steps 20] [--warmup 5]
                                            [--no-compile] [--model paper|demo]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from emkt.acceleration import Runtime, amp_dtype  # noqa: E402
from emkt.config import load_config  # noqa: E402
from emkt.models import build_student, build_teacher  # noqa: E402
from emkt.runtime import seed_everything  # noqa: E402
from emkt.training.loop import MeanTracker, make_optimizer  # noqa: E402
from emkt.training.supervised import segmenter_epoch  # noqa: E402


def teacher_epoch(train_teacher, batches, update, runtime: Runtime) -> None:
    """The teacher's pretraining step: regress a per-image loss from (image, mask)."""
    tracker = MeanTracker()
    for batch in batches:
        batch = runtime.batch(batch)
        with runtime.autocast():
            predicted = train_teacher(batch["image"], batch["mask"])
        loss = F.mse_loss(predicted.float(), batch["target"])
        update(loss)
        tracker.add(mse=loss)
    tracker.means()


def throughput(network: str, config: dict, device: torch.device, amp: str, compiled: bool, batch: int,
               size: int, steps: int, warmup: int) -> float:
    seed_everything(0)
    train_cfg = {**config["train"], "amp": amp, "compile": compiled}
    runtime = Runtime.from_config({**config, "train": train_cfg}, device)
    model = build_student(config["student"], size) if network == "student" else build_teacher(config["teacher"], size)
    trained = runtime.trainable(model)
    model.train()
    update = runtime.update(make_optimizer(model.parameters(), config["train"]))
    pin = device.type == "cuda"
    image = torch.randn(batch, 1, size, size)
    mask = (torch.rand(batch, 1, size, size) > 0.8).float()
    sample = {"image": image, "mask": mask, "valid": torch.ones_like(mask), "target": torch.rand(batch)}
    sample = {k: v.pin_memory() if pin else v for k, v in sample.items()}

    def run(count: int) -> None:
        if network == "student":
            segmenter_epoch(trained, [sample] * count, update, runtime)
        else:
            teacher_epoch(trained, [sample] * count, update, runtime)

    run(warmup)
    if pin:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(steps)
    if pin:
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on a GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on a GPU, 1 on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--model", choices=["paper", "demo"], default=None,
                        help="networks of config.yaml (paper; the default on a GPU) or demo.yaml (on CPU)")
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.model = args.model or ("paper" if gpu else "demo")
    config = load_config(REPO / "config.yaml", *([REPO / "demo.yaml"] if args.model == "demo" else []))
    if gpu:
        device = torch.device("cuda")
        where = f"GPU: {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
        mixed = "auto"
    else:
        device = torch.device("cpu")
        where = f"no CUDA GPU found: measuring the CPU ({platform.processor() or platform.machine()}, " \
                f"{torch.get_num_threads()} threads)"
        mixed = "bf16"
        print("No CUDA GPU is visible; this measures the CPU instead. On a GPU machine run it there.")
    mixed_name = str(amp_dtype(mixed, device)).replace("torch.", "")
    settings = [("off", False), (mixed, False)]
    if not args.no_compile:
        settings += [("off", True), (mixed, True)]
    print(f"{where}; torch {torch.__version__}; {args.model} networks; batch {args.batch}, "
          f"{args.size}x{args.size}; {args.warmup} warm-up + {args.steps} timed steps")
    print("| network | precision | compile | images/s | vs float32 eager |\n|---|---|---|---|---|")
    for network in ("student", "teacher"):
        reference = None
        for amp, compiled in settings:
            try:
                value = throughput(network, config, device, amp, compiled, args.batch, args.size, args.steps,
                                   args.warmup)
            except Exception as error:  # e.g. no compiler for inductor on this machine: say so, go on
                print(f"| {network} | {amp} | {compiled} | failed: {type(error).__name__}: {error} | |")
                continue
            reference = reference or value
            precision = "float32" if amp == "off" else mixed_name
            print(f"| {network} | {precision} | {'yes' if compiled else 'no'} | {value:.1f} | "
                  f"{value / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
