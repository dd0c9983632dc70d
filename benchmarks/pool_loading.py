"""Pool loading benchmark: the packed store vs. one TIFF file per image.

Generates a pool of EM-like 224x224 uint8 TIFF patches (CEM1.5M's format), indexes and packs
it with the workflow's own functions, then measures in one run, with the same DataLoader
worker count for both:

- images/s of a random-order pass reading raw uint8 tiles from the store vs. the same images
  as individual TIFFs with tifffile, with the page cache warm and cold (files evicted with
  posix_fadvise before the pass);
- images/s of the expansion stage's real loader (emkt.datasets.PoolCrops: read, z-score, crop);
- peak memory (summed PSS of the main process and its workers) of a full pass over the
  store with the training loader, for the pool and for a pool 10x smaller.

Usage:  python benchmarks/pool_loading.py [--images 100000] [--workers 2] [--dir benchmarks/out/pool]
The generated files stay in --dir for reruns (about 2 x 5 GB at 100,000 images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import tifffile  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader, Dataset  # noqa: E402

from emkt.datasets import PoolCrops  # noqa: E402
from emkt.indexing import build_index  # noqa: E402
from emkt.store import TileStore, pack_store  # noqa: E402
from emkt.synthetic import render_em_image, source_style  # noqa: E402

TILE = 224
PER_FOLDER = 10_000
SHARD_IMAGES = 25_000


# ---------------------------------------------------------------- data

def generate_pool(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 224x224 EM-like TIFFs, 10,000 per source folder; existing files are kept."""
    rng = np.random.default_rng(seed)
    # Rendering every patch would dominate the run; crops of a few rendered fields with
    # random flips and offsets give realistic texture (and realistic TIFF sizes) cheaply.
    fields = [render_em_image(rng, (4 * TILE, 4 * TILE), source_style(i % 3))[0] for i in range(8)]
    paths = []
    for i in range(count):
        path = folder / f"src{i // PER_FOLDER:03d}" / f"{i:07d}.tif"
        paths.append(path)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        field = fields[i % len(fields)]
        top, left = rng.integers(0, field.shape[0] - TILE, size=2)
        patch = field[top:top + TILE, left:left + TILE]
        tifffile.imwrite(path, patch[::-1] if i % 2 else patch)
    return paths


def index_pool(tiff_dir: Path, workers: int):
    """The workflow's index of the pool (every file read and validated once), and its seconds."""
    start = time.perf_counter()
    index, excluded = build_index(None, tiff_dir, processes=workers)
    if len(excluded):
        raise RuntimeError(f"{len(excluded)} generated files were excluded:\n{excluded.head()}")
    return index, time.perf_counter() - start


def pack_pool(index, store_dir: Path, workers: int) -> tuple[Path, float]:
    """Pack the indexed images in shards of ~25,000 as the workflow's pack rules do; returns
    the manifest and the seconds taken (0 when the store already exists)."""
    manifest = store_dir / "pool.json"
    if manifest.exists():
        return manifest, 0.0
    start = time.perf_counter()
    pack_store(index, "pool", store_dir, max(1, round(len(index) / SHARD_IMAGES)), tile=TILE, processes=workers)
    return manifest, time.perf_counter() - start


# ---------------------------------------------------------------- reading

class TiffBatches(Dataset):
    """A batch of images, each read from its own TIFF file with tifffile."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = [str(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([tifffile.imread(self.paths[i]) for i in indices]))


class StoreBatches(Dataset):
    """The same batch read from the store (one pread per tile into one array)."""

    def __init__(self, manifest: Path) -> None:
        self.store = TileStore(manifest)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return torch.from_numpy(self.store.tiles(indices))


class Blank(Dataset):
    """Uninitialised batches of the same size: the DataLoader's transfer cost alone."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return torch.empty((len(indices), TILE, TILE), dtype=torch.uint8)


class ReadOnly(Dataset):
    """Reads a batch in the worker and returns only a checksum: the read cost without the
    DataLoader's transfer of the pixels to the main process (the same for both formats)."""

    def __init__(self, batches: Dataset) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        batch = self.batches[indices]
        return batch[:, 0].sum(dtype=torch.int64).reshape(1).expand(len(indices))


class CropImages(Dataset):
    """The expansion loader's samples, as plain tensors."""

    def __init__(self, manifest: Path) -> None:
        self.crops = PoolCrops(TileStore(manifest), TILE, seed=0)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.crops[index]["image"]


def evict(paths: list[Path]) -> None:
    """Drop files from the page cache (no root needed), so the next read comes from disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def images_per_second(dataset: Dataset, workers: int, batched: bool = True, batch: int = 64) -> float:
    """A full random-order pass in batches of ``batch``. ``batched`` datasets get a list of indices
    per call (BatchSampler as the sampler), so per-sample DataLoader overhead does not hide
    the cost of reading; the training loader is per sample, as it augments each crop."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist()
    if batched:
        loader = DataLoader(dataset, batch_size=None, sampler=BatchSampler(order, batch, False), num_workers=workers)
    else:
        loader = DataLoader(dataset, batch_size=batch, sampler=order, num_workers=workers)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch)
    return seen / (time.perf_counter() - start)


# ---------------------------------------------------------------- memory

def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(pid: int) -> int:
    """PSS of a process and its children (proportional: shared libraries counted once)."""
    total = pss_kb(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            total += tree_pss_kb(int(child))
    return total


def peak_memory_of_pass(manifest: Path, workers: int) -> dict:
    """Full pass with the training loader in a fresh process; peak summed PSS sampled every 50 ms."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import pool_loading as b; "
            f"print(b.images_per_second(b.CropImages(b.Path({str(manifest)!r})), {workers}, batched=False))")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        value = tree_pss_kb(process.pid)
        peak = max(peak, value)
        time.sleep(0.05)
    rate = float(process.stdout.read().strip().splitlines()[-1])
    return {"peak_pss_mb": peak / 1024, "images_per_s": rate}


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="pool size (at least 100,000 for the figures in docs/results/)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for every measurement")
    parser.add_argument("--batch", type=int, default=256,
                        help="images per DataLoader batch of the reading passes (the DataLoader's per-batch "
                             "cost, ~1 ms on 2 cores, is the same for both formats; larger batches show the read cost)")
    parser.add_argument("--dir", type=Path, default=REPO / "benchmarks" / "out" / "pool")
    args = parser.parse_args()
    small = args.images // 10
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    paths = generate_pool(args.dir / "tiffs", args.images)
    generated = time.perf_counter() - t0
    index, index_s = index_pool(args.dir / "tiffs", args.workers)
    index = index[index["path"].isin([str(p) for p in paths])].reset_index(drop=True)
    manifest, pack_s = pack_pool(index, args.dir / f"store_{args.images}", args.workers)
    small_manifest, _ = pack_pool(index.head(small), args.dir / f"store_{small}", args.workers)
    shards = sorted((manifest.parent / "pool").glob("shard-*[0-9].npy"))

    rows = {}
    tiffs, store = TiffBatches(paths), StoreBatches(manifest)
    # Warm: a first pass has put the files in the page cache (as on a node that re-reads
    # its local copy every epoch). Cold: evicted first (as on the first epoch, or on a
    # network file system where every open also costs a metadata round trip).
    bs = args.batch
    images_per_second(ReadOnly(tiffs), args.workers, batch=bs)
    images_per_second(ReadOnly(store), args.workers, batch=bs)
    rows["read in workers: tiff, warm"] = images_per_second(ReadOnly(tiffs), args.workers, batch=bs)
    rows["read in workers: store, warm"] = images_per_second(ReadOnly(store), args.workers, batch=bs)
    evict(paths)
    rows["read in workers: tiff, cold"] = images_per_second(ReadOnly(tiffs), args.workers, batch=bs)
    evict(shards)
    rows["read in workers: store, cold"] = images_per_second(ReadOnly(store), args.workers, batch=bs)
    rows["batches to the main process: tiff, warm"] = images_per_second(tiffs, args.workers, batch=bs)
    rows["batches to the main process: store, warm"] = images_per_second(store, args.workers, batch=bs)
    rows["batches to the main process: empty (transfer alone)"] = images_per_second(Blank(len(paths)), args.workers,
                                                                                     batch=bs)
    rows["training loader (store, warm)"] = images_per_second(CropImages(manifest), args.workers, batched=False)

    memory = {n: peak_memory_of_pass(m, args.workers) for n, m in ((small, small_manifest), (args.images, manifest))}

    store_bytes = sum(p.stat().st_size for p in shards)
    tiff_bytes = sum(p.stat().st_size for p in paths)
    print(f"\nPool loading, {args.images:,} images of {TILE}x{TILE} uint8, {args.workers} DataLoader workers, "
          f"batch {args.batch} (training loader: 64), random order; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}")
    print(f"TIFF files {tiff_bytes / 1e9:.2f} GB, store {store_bytes / 1e9:.2f} GB in {len(shards)} shards; "
          f"generated in {generated:.0f} s, indexed (every file read and validated) in {index_s:.0f} s"
          + (f", packed in {pack_s:.0f} s" if pack_s else ""))
    print("\n| pass | images/s | store vs. TIFF |\n|---|---:|---:|")
    for name, rate in rows.items():
        ratio = ""
        if ": store" in name:
            ratio = f"{rate / rows[name.replace(': store', ': tiff')]:.1f}x"
        print(f"| {name} | {rate:,.0f} | {ratio} |")
    print("\n| full pass with the training loader | pool images | peak memory (PSS, MB) | images/s |\n|---|---:|---:|---:|")
    for n, result in memory.items():
        print(f"| store | {n:,} | {result['peak_pss_mb']:,.0f} | {result['images_per_s']:,.0f} |")
    low, high = (memory[n]["peak_pss_mb"] for n in (small, args.images))
    print(f"\nPeak memory grows {100 * (high / low - 1):+.1f}% when the pool grows 10x.")
    (args.dir / "results.json").write_text(json.dumps({"rates": rows, "memory": memory, "index_s": index_s,
                                                       "pack_s": pack_s}, indent=1))


if __name__ == "__main__":
    main()
