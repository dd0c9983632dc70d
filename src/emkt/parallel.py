"""Ordered parallel map over files, for indexing and packing with the cores a job was given."""

from __future__ import annotations

import multiprocessing
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(function: Callable[[T], R], items: Iterable[T], processes: int, total: int | None = None,
                desc: str = "") -> Iterator[R]:
    """``map(function, items)`` in ``processes`` worker processes, results in input order,
    with a progress bar in the job's log. One process runs in place (no pickling)."""
    bar = dict(total=total, desc=desc, mininterval=10, unit="file")
    if processes <= 1:
        yield from tqdm(map(function, items), **bar)
        return
    # fork, as torch's DataLoader does on Linux: spawn and forkserver would re-run the
    # Snakemake-generated script as __main__ in every worker.
    context = multiprocessing.get_context("fork")
    with context.Pool(processes) as pool:
        yield from tqdm(pool.imap(function, items, chunksize=64), **bar)
