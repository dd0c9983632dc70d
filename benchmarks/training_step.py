"""Training-step overhead: the project's training loop vs. a bare PyTorch loop.

Same model, same optimiser, same batches already in (host) memory, in one run. The project
loop is emkt.training.supervised.segmenter_epoch, the step of the baseline student and the
segmenters, under the stages' progress bar: batch copy through the Runtime, autocast context,
the per-image BCE over labelled pixels, the optimiser step through an Update (grad scaler),
the epoch-mean tracker. The bare loop
is `model(x)`, `F.binary_cross_entropy_with_logits`, `zero_grad/backward/step`. Rounds
alternate (bare, project, bare, ...) after a warm-up, and the medians are compared.

Target: overhead under 5 %.

Usage:  python benchmarks/training_step.py [--model demo|paper] [--batch 16] [--size N]
                                           [--steps 10] [--rounds 5] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from emkt.acceleration import Runtime  # noqa: E402
from emkt.config import load_config  # noqa: E402
from emkt.models import build_student  # noqa: E402
from emkt.runtime import select_device, seed_everything  # noqa: E402
from emkt.training.loop import make_optimizer, progress  # noqa: E402
from emkt.training.supervised import segmenter_epoch  # noqa: E402


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_epoch(model: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
               device: torch.device) -> None:
    for batch in batches:
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        loss = F.binary_cross_entropy_with_logits(model(image), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(run, images: int, device: torch.device) -> float:
    """Images per second of one call of ``run``."""
    synchronise(device)
    start = time.perf_counter()
    run()
    synchronise(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "paper"], default="demo",
                        help="student of demo.yaml (small ViT) or config.yaml (ViT-B/16)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="input size (default: the config's input_size)")
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each loop")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    configs = [REPO / "config.yaml"] + ([REPO / "demo.yaml"] if args.model == "demo" else [])
    config = load_config(*configs)
    device = select_device(args.device)
    args.size = args.size or config["input_size"]
    seed_everything(0)
    model = build_student(config["student"], args.size).to(device)
    model.train()
    optimizer = make_optimizer(model.parameters(), config["train"])
    runtime = Runtime.from_config(config, device)
    update = runtime.update(optimizer)
    pin = device.type == "cuda"
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        value = torch.randn(*shape, generator=generator)
        return value.pin_memory() if pin else value

    batches = []
    for _ in range(args.steps):
        mask = (tensor(args.batch, 1, args.size, args.size) > 0.8).float()
        batches.append({"image": tensor(args.batch, 1, args.size, args.size),
                        "mask": mask.pin_memory() if pin else mask,
                        "valid": torch.ones_like(mask).pin_memory() if pin else torch.ones_like(mask)})
    images = args.steps * args.batch

    def project() -> None:
        segmenter_epoch(model, progress(batches, "benchmark", 0), update, runtime)

    def bare() -> None:
        bare_epoch(model, batches, optimizer, device)

    timed(bare, images, device)  # warm-up: allocator, kernels, first-touch memory
    timed(project, images, device)
    bare_rates, project_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(timed(bare, images, device))
        project_rates.append(timed(project, images, device))
    bare_rate, project_rate = statistics.median(bare_rates), statistics.median(project_rates)
    overhead = (bare_rate / project_rate - 1.0) * 100.0

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; amp: {runtime.amp}")
    print(f"model: {args.model} student, batch {args.batch}, {args.size}x{args.size}, "
          f"{args.rounds} rounds x {args.steps} steps, medians")
    print("| loop | images/s | rounds (images/s) |\n|---|---|---|")
    print(f"| bare PyTorch | {bare_rate:.1f} | {', '.join(f'{r:.1f}' for r in bare_rates)} |")
    print(f"| emkt segmenter_epoch | {project_rate:.1f} | {', '.join(f'{r:.1f}' for r in project_rates)} |")
    print(f"overhead: {overhead:+.1f} % (target < 5 %)")


if __name__ == "__main__":
    main()
