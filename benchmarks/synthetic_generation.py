"""Synthetic EM data generation speed: render and write labelled images (emkt.synthetic).

Times ``generate_labelled_set`` for 4 sources x 25 images of 96x96 pixels (image and mask
TIFFs) into a temporary folder, best of --repeats runs. It was a test's wall-time bound
(< 10 s; ~1 s measured); timings live here, not in the suite, so a busy machine fails nothing.

Usage:  python benchmarks/synthetic_generation.py [--images-per-source 25] [--size 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from emkt.synthetic import generate_labelled_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--images-per-source", type=int, default=25)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            generate_labelled_set(Path(folder), args.sources, args.images_per_source, (args.size, args.size),
                                  seed=repeat)
            times.append(time.perf_counter() - start)
    n = args.sources * args.images_per_source
    print(f"{n} labelled {args.size}x{args.size} images (render + write): best {min(times):.2f} s "
          f"of {args.repeats} runs ({n / min(times):.1f} images/s)")


if __name__ == "__main__":
    main()
