"""Volume benchmark: `python -m emkt predict` on generated Zarr volumes larger than its memory budget.

Writes uint8 Zarr volumes of --side x --side sections (an EM-like smooth texture, shifted from
section to section), one per depth in --sections, section by section, and a checkpoint of an
untrained student (the tests' tiny ViT, or with --demo the demo's architecture), then runs
the command on each volume as a child process with --memory-mb and measures its wall time and
its own peak resident memory (ru_maxrss from os.wait4 of that child). The volumes differ only
in depth, so a bounded run has the same peak for both. A child that segments a 64 x 64 image
gives the fixed part (Python, torch, the model) that the budget does not cover. Results go to
--dir/volume_predict.json and are printed as one line.

Usage:  python benchmarks/volume_predict.py [--side 512] [--sections 8 32] [--memory-mb 16] [--threads 2]
                                            [--dir benchmarks/out/volume_predict]
The volumes stay in --dir for reruns; the outputs are deleted after each run unless --keep.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import tifffile  # noqa: E402
import zarr  # noqa: E402
from scipy import ndimage  # noqa: E402

from large_image import write_checkpoint  # noqa: E402


def write_volume(path: Path, depth: int, side: int) -> None:
    """A uint8 Zarr volume (depth, side, side), chunked per section, written section by section."""
    if path.is_dir() and zarr.open_array(str(path), mode="r").shape == (depth, side, side):
        return
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    tile = ndimage.gaussian_filter(rng.normal(size=(1024, 1024)), 4)
    tile = np.rint((tile - tile.min()) / np.ptp(tile) * 255).astype(np.uint8)
    plane = np.tile(tile, (side // 1024 + 1, side // 1024 + 1))[:side, :side]
    volume = zarr.create_array(str(path), shape=(depth, side, side), chunks=(1, side, side), dtype=np.uint8)
    for z in range(depth):
        volume[z] = np.roll(plane, (3 * z, 5 * z), axis=(0, 1))


def run(checkpoint: Path, folder: Path, out: Path, memory_mb: float, threads: int) -> dict:
    """Wall time, peak RSS and the printed summary of one `python -m emkt predict` child process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "emkt", "predict", "--checkpoint", str(checkpoint), "--input", str(folder),
               "--output", str(out), "--memory-mb", str(memory_mb), "--threads", str(threads), "--device", "cpu"]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as stderr:
        child = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                                 stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"emkt predict failed:\n{text[-3000:]}")
    summary = [line for line in text.splitlines() if " Mpx) in " in line]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "summary": summary[-1] if summary else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=512, help="section side in pixels (default: %(default)s)")
    parser.add_argument("--sections", type=int, nargs="+", default=[8, 32],
                        help="volume depths, one run each (default: %(default)s)")
    parser.add_argument("--memory-mb", type=float, default=16, help="--memory-mb of the runs (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=REPO / "benchmarks" / "out" / "volume_predict")
    parser.add_argument("--keep", action="store_true", help="keep the predicted outputs")
    parser.add_argument("--demo", action="store_true", help="the demo's student instead of the tests' tiny one")
    args = parser.parse_args()

    args.dir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.dir / "student.pth"
    write_checkpoint(checkpoint, tiny=not args.demo)
    (args.dir / "small").mkdir(exist_ok=True)
    tifffile.imwrite(args.dir / "small" / "small.tif", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    base = run(checkpoint, args.dir / "small", args.dir / "out_small", args.memory_mb, args.threads)
    runs = []
    for depth in args.sections:
        folder = args.dir / f"in_{depth}"
        folder.mkdir(exist_ok=True)
        start = time.perf_counter()
        write_volume(folder / "volume.zarr", depth, args.side)
        written = time.perf_counter() - start
        out = args.dir / f"out_{depth}"
        result = run(checkpoint, folder, out, args.memory_mb, args.threads)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        megapixels = depth * args.side**2 / 1e6
        # the command's own figures: prediction without the start-up (imports, model load)
        predicted = re.search(r"in ([0-9.]+) s: .* ([0-9.]+) Mpx/s", result["summary"])
        if predicted is None:
            raise SystemExit(f"no summary line in the output of depth {depth}")
        runs.append({"sections": depth, "megapixels": megapixels, "volume_written_s": round(written, 1),
                     "wall_s": result["seconds"], "predict_s": float(predicted.group(1)),
                     "peak_rss_mb": result["peak_rss_mb"], "above_base_mb": result["peak_rss_mb"] - base["peak_rss_mb"],
                     "megapixels_per_s": float(predicted.group(2)),
                     "sections_per_s": round(depth / float(predicted.group(1)), 3), "summary": result["summary"],
                     # what holding the volume whole in prediction would take (emkt.bands.IN_MEMORY_BYTES per pixel)
                     "whole_volume_working_set_mb": round(megapixels * 1e6 * 64 / 2**20)})
    report = {"date": datetime.date.today().isoformat(), "machine": f"{platform.node()}: {os.cpu_count()} cores",
              "side": args.side, "memory_mb": args.memory_mb, "threads": args.threads,
              "student": "demo" if args.demo else "tiny", "base_peak_rss_mb": base["peak_rss_mb"], "runs": runs}
    (args.dir / "volume_predict.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
