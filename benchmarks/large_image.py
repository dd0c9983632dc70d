"""Large-image benchmark: `python -m emkt predict` on one image far larger than its memory budget.

Writes an uncompressed uint8 TIFF of --size x --size pixels (EM-like smooth texture, written
band by band through a memory map, so generating it needs little memory) and a checkpoint of
an untrained student with the demo's architecture (demo.yaml: ViT, 64-pixel windows), then
runs the command as a child process with --memory-mb and measures its wall time and peak
resident memory (ru_maxrss of the child, from resource.getrusage). A second child segments a
64 x 64 image: its peak is the fixed part (Python, torch, the model) that the budget does not
cover. Results go to --dir/large_image.json and are printed as one line.

Usage:  python benchmarks/large_image.py [--size 30000] [--memory-mb 1024] [--threads 2] [--dir benchmarks/out/large_image]
The image (size^2 bytes: 900 MB at 30,000) stays in --dir for reruns; the outputs (probability
float32: 4 x size^2 bytes) are deleted after each run unless --keep.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tifffile  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from scipy import ndimage  # noqa: E402

from emkt.checkpoints import save_model  # noqa: E402
from emkt.models import build_student  # noqa: E402


def write_image(path: Path, size: int, rows: int = 1024) -> None:
    """An uncompressed size x size uint8 TIFF of a tiled smooth texture, written in bands."""
    if path.is_file() and tifffile.TiffFile(path).series[0].shape == (size, size):
        return
    rng = np.random.default_rng(0)
    tile = ndimage.gaussian_filter(rng.normal(size=(rows, 1024)), 4)
    tile = np.rint((tile - tile.min()) / np.ptp(tile) * 255).astype(np.uint8)
    band = np.tile(tile, (1, size // 1024 + 1))[:, :size]
    image = tifffile.memmap(path.with_suffix(".tmp"), shape=(size, size), dtype=np.uint8)
    for start in range(0, size, rows):
        image[start:start + rows] = band[:min(rows, size - start)]
    image.flush()
    del image
    os.replace(path.with_suffix(".tmp"), path)


TINY = {"patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1, "num_heads": 2, "deconv_chns": 8,
        "dropout_rate": 0.0}


def write_checkpoint(path: Path, tiny: bool) -> None:
    """An untrained student with the demo's architecture and input size (or the tests' tiny one)."""
    demo = yaml.safe_load((REPO / "demo.yaml").read_text())
    settings, input_size = (TINY, 32) if tiny else ({"dropout_rate": 0.0, **demo["student"]}, demo["input_size"])
    torch.manual_seed(0)
    save_model(path, build_student(settings, input_size), "student", settings, input_size)


def run(checkpoint: Path, folder: Path, out: Path, memory_mb: float, threads: int) -> dict:
    """Wall time and peak RSS of one `python -m emkt predict` child process."""
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = [sys.executable, "-m", "emkt", "predict", "--checkpoint", str(checkpoint), "--input", str(folder),
               "--output", str(out), "--memory-mb", str(memory_mb), "--threads", str(threads), "--device", "cpu"]
    start = time.perf_counter()
    result = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"emkt predict failed:\n{result.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kb <= before:  # ru_maxrss of children is the largest child so far: run the small case first
        raise SystemExit("peak RSS not measurable: run the larger image after the smaller one")
    summary = [line for line in result.stderr.splitlines() if " Mpx) in " in line]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024), "summary": summary[-1] if summary else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=30000, help="image side in pixels (default: %(default)s)")
    parser.add_argument("--memory-mb", type=float, default=1024, help="--memory-mb of the run (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=REPO / "benchmarks" / "out" / "large_image")
    parser.add_argument("--keep", action="store_true", help="keep the predicted outputs")
    parser.add_argument("--tiny", action="store_true",
                        help="the tests' tiny student (input 32) instead of the demo's: memory checks in less time")
    args = parser.parse_args()

    small, large = args.dir / "small", args.dir / "large"
    for folder in (small, large):
        folder.mkdir(parents=True, exist_ok=True)
    checkpoint = args.dir / "student.pth"
    write_checkpoint(checkpoint, args.tiny)
    tifffile.imwrite(small / "small.tif", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    start = time.perf_counter()
    write_image(large / "large.tif", args.size)
    generated = time.perf_counter() - start

    base = run(checkpoint, small, args.dir / "out_small", args.memory_mb, args.threads)
    big = run(checkpoint, large, args.dir / "out_large", args.memory_mb, args.threads)
    if not args.keep:
        shutil.rmtree(args.dir / "out_large", ignore_errors=True)
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.node()}: {os.cpu_count()} cores",
              "size": args.size, "megapixels": args.size**2 / 1e6, "memory_mb": args.memory_mb,
              "threads": args.threads, "student": "tiny" if args.tiny else "demo", "image_written_s": round(generated, 1),
              "base_peak_rss_mb": base["peak_rss_mb"], "peak_rss_mb": big["peak_rss_mb"],
              "above_base_mb": big["peak_rss_mb"] - base["peak_rss_mb"], "seconds": big["seconds"],
              "summary": big["summary"]}
    (args.dir / "large_image.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
