"""Input pipeline vs. training step: can the loader feed the GPU at the paper's settings?

In one run, at config.yaml's settings (224x224 crops, batch 16, augmentation on,
loader.num_workers workers, pinned memory on a GPU):

1. loader: images/s of the training loader alone (emkt.training.loaders.labelled_data:
   packed store, z-scoring, random crops, MONAI augmentation, collation), no training;
2. step: images/s of the baseline student's training step alone (ViT-B/16 by default) on
   batches already in memory;
3. both: images/s of the real loop (the loader feeding the step).

The ratio loader / step must be at least 1, or the GPU waits for data. The labelled images
are generated (EM-like, --image-size pixels) and packed with the workflow's own functions
into --dir.

Usage:  python benchmarks/input_pipeline.py [--workers N] [--images 64] [--image-size 512]
                                            [--model paper|demo] [--steps 4] [--device auto]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from emkt.acceleration import Runtime  # noqa: E402
from emkt.config import load_config  # noqa: E402
from emkt.data import split_index  # noqa: E402
from emkt.indexing import build_index  # noqa: E402
from emkt.models import build_student  # noqa: E402
from emkt.runtime import select_device, seed_everything  # noqa: E402
from emkt.store import DataFiles, pack_store  # noqa: E402
from emkt.synthetic import generate_labelled_set  # noqa: E402
from emkt.training.loaders import labelled_data  # noqa: E402
from emkt.training.loop import make_optimizer  # noqa: E402
from emkt.training.supervised import segmenter_epoch  # noqa: E402


def prepare(folder: Path, images: int, side: int) -> DataFiles:
    """Generated labelled images, indexed, packed and split 90/5/5 (reused when present)."""
    split = folder / "split.csv"
    if not split.exists():
        generate_labelled_set(folder / "labelled", 4, images // 4, (side, side), seed=0)
        index, _ = build_index(folder / "labelled", None)
        labelled = index[index["set"] == "labelled"].drop(columns="set").reset_index(drop=True)
        pack_store(labelled, "labelled", folder, 4)
        split_index(labelled, 0.9, 0.05, 0.05, 0, "none").to_csv(split, index=False)
    return DataFiles(split, folder / "labelled.json")


def images_per_s(batches, count: int, device: torch.device, step=None) -> float:
    """Images/s over ``count`` batches after the first (start-up excluded); each batch goes
    through ``step`` when given, else is only loaded."""
    iterator = iter(batches)
    first = next(iterator)
    if step:
        step([first])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, images = time.perf_counter(), 0
    for batch in itertools.islice(iterator, count):
        if step:
            step([batch])
        images += len(batch["image"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: config loader.num_workers)")
    parser.add_argument("--images", type=int, default=64, help="labelled images to generate")
    parser.add_argument("--image-size", type=int, default=512, help="side of the generated images")
    parser.add_argument("--model", choices=["paper", "demo"], default="paper")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dir", type=Path, default=REPO / "benchmarks" / "out" / "input_pipeline")
    args = parser.parse_args()

    config = load_config(REPO / "config.yaml")
    if args.workers is not None:
        config["loader"]["num_workers"] = args.workers
    student_cfg = load_config(REPO / "config.yaml", REPO / "demo.yaml")["student"] if args.model == "demo" \
        else config["student"]
    device = select_device(args.device)
    seed_everything(0)
    files = prepare(args.dir, args.images, args.image_size)
    runtime = Runtime.from_config(config, device)
    loader = labelled_data(config, 0, files, runtime).train
    epochs = itertools.count()

    def batches():
        for epoch in epochs:
            yield from loader.epoch(epoch)

    loader_rate = images_per_s(batches(), args.loader_batches, device)

    model = build_student(student_cfg, config["input_size"])
    train_model = runtime.trainable(model)
    model.train()
    update = runtime.update(make_optimizer(model.parameters(), config["train"]))
    in_memory = next(batches())
    in_memory = {k: v.pin_memory() if runtime.pin_memory else v for k, v in in_memory.items()}

    def step(batch_list):
        segmenter_epoch(train_model, batch_list, update, runtime)

    step_rate = images_per_s(itertools.repeat(in_memory), args.steps, device, step)
    both_rate = images_per_s(batches(), args.steps, device, step)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    settings = config["loader"]
    print(f"device: {name}; torch {torch.__version__}; amp: {runtime.amp}")
    print(f"settings: {config['input_size']}x{config['input_size']} crops, batch {config['train']['batch_size']}, "
          f"augment {config['train']['augment']}, {settings['num_workers']} workers, prefetch "
          f"{settings['prefetch_factor']}, pin_memory {runtime.pin_memory}; {args.model} student")
    print("| measured | images/s |\n|---|---|")
    print(f"| loader alone | {loader_rate:.1f} |")
    print(f"| training step alone | {step_rate:.1f} |")
    print(f"| loader feeding the step | {both_rate:.1f} |")
    print(f"ratio loader / step: {loader_rate / step_rate:.2f} (must be >= 1)")


if __name__ == "__main__":
    main()
