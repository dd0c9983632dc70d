"""Keep copies of validation and test images out of the unlabelled pool.

CEM1.5M (the pool) and CEM-MitoLab (the labelled set) were cut from overlapping volumes, so
the pool may hold the very images a model is tested on; learning from them (expansion,
pseudo-labels) would inflate the test scores. Indexing stores two signatures per image:

- ``pixel_hash``: blake2b of the shape and the converted uint8 pixels; equal means identical.
- ``fingerprint``: 64 bits, one per cell of an 8x8 grid of block means, set where the cell is
  brighter than the grid's mean (the sign of the z-scored cell). Re-encoding or noise flips
  0-3 bits (measured on the fixture, JPEG quality 50 and Gaussian noise sd 4); a shift by a
  few pixels flips up to ~12, so shifts are handled on the query side (``max_shift``).

``screen_pool`` finds, without comparing all pairs, every pool image whose pixel hash equals
that of a val or test image (``exact``) or whose fingerprint is within ``near_max_distance``
bits of one (``near``). Near matches use multi-index hashing: the fingerprint is 4 chunks of
16 bits, and two fingerprints at most 3 bits apart agree exactly on at least one chunk, so an
exact join per chunk finds every candidate, whose distance is then checked. With
``max_shift`` > 0 every val/test image is read again and fingerprinted at each shift up to
``max_shift`` pixels (reflect-padded), so a pool copy cut a few pixels off is found too.
Train images are not screened against: training on them is allowed anyway.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial

import numpy as np
import pandas as pd

from .data import read_tiff, to_grey_uint8
from .parallel import ordered_map

GRID = 8
CHUNKS = 4
CHUNK_BITS = GRID * GRID // CHUNKS
# Pigeonhole: fingerprints at most CHUNKS - 1 bits apart share a chunk exactly.
MAX_NEAR_DISTANCE = CHUNKS - 1
HELD_OUT = ("val", "test")
EXCLUDED_COLUMNS = ["id", "path", "source", "reason", "distance", "matched_id", "matched_path", "matched_split",
                    "shift_y", "shift_x"]
SIGNATURE_DTYPES = {"pixel_hash": str, "fingerprint": str}  # read as text: a hash of digits is not a number

log = logging.getLogger(__name__)


def pixel_hash(image: np.ndarray) -> str:
    """Hex blake2b (128 bits) of an image's shape and pixels."""
    digest = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _integral(image: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row and column: any block sum in four lookups."""
    table = np.zeros((image.shape[0] + 1, image.shape[1] + 1))
    np.cumsum(np.cumsum(image, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
    return table


def _bits(sums: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> int:
    """64 bits from the 8x8 cell sums: cells brighter than the mean cell (z-score > 0)."""
    means = sums / np.outer(np.diff(rows), np.diff(cols))
    return int.from_bytes(np.packbits(means > means.mean()).tobytes(), "big")


def _edges(length: int) -> np.ndarray:
    return np.linspace(0, length, GRID + 1).astype(int)


def _fingerprint_at(integral: np.ndarray, top: int, left: int, shape: tuple[int, int]) -> int:
    """The fingerprint of the ``shape`` window at (top, left) of the image behind ``integral``."""
    rows, cols = top + _edges(shape[0]), left + _edges(shape[1])
    corners = integral[np.ix_(rows, cols)]
    return _bits(corners[1:, 1:] - corners[:-1, 1:] - corners[1:, :-1] + corners[:-1, :-1], rows, cols)


def _at_least_grid(image: np.ndarray) -> np.ndarray:
    """A tiny image with its pixels repeated so that every grid cell holds some."""
    if min(image.shape) >= GRID:
        return image
    return np.repeat(np.repeat(image, -(-GRID // image.shape[0]), 0), -(-GRID // image.shape[1]), 1)


def fingerprint(image: np.ndarray) -> int:
    """The 64-bit near-duplicate fingerprint of a 2D image (row-major cells, first cell = top
    bit). Block sums by reduceat: ~4x faster than a summed-area table for one window, which
    matters at 1.6 M pool images; sums of whole numbers are exact either way."""
    image = _at_least_grid(np.asarray(image))
    rows, cols = _edges(image.shape[0]), _edges(image.shape[1])
    sums = np.add.reduceat(np.add.reduceat(image, rows[:-1], axis=0, dtype=np.float64), cols[:-1], axis=1)
    return _bits(sums, rows, cols)


def format_fingerprint(value: int) -> str:
    return f"{value:016x}"


def parse_fingerprints(values: pd.Series) -> np.ndarray:
    return np.array([int(value, 16) for value in values], dtype=np.uint64)


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image's content moved by (dy, dx) pixels at the same size, borders reflected: what
    a crop window ``dy`` rows down and ``dx`` columns right of it would show."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return image
    padded = np.pad(image, pad, mode="reflect")
    return padded[pad + dy:pad + dy + image.shape[0], pad + dx:pad + dx + image.shape[1]]


def shifted_fingerprints(path: str, max_shift: int) -> list[tuple[int, int, int]]:
    """(dy, dx, fingerprint) of an image file at every shift up to ``max_shift`` pixels, each
    equal to ``fingerprint(shifted(image, dy, dx))``; one summed-area table serves them all."""
    image, _ = to_grey_uint8(read_tiff(path), path)
    image = _at_least_grid(image)
    pad = min(max_shift, min(image.shape) - 1)  # reflection needs a wider image than the pad
    integral = _integral(np.pad(image, pad, mode="reflect"))
    steps = range(-pad, pad + 1)
    return [(dy, dx, _fingerprint_at(integral, pad + dy, pad + dx, image.shape)) for dy in steps for dx in steps]


def _probes(held: pd.DataFrame, max_shift: int, processes: int) -> pd.DataFrame:
    """Query fingerprints of the held-out images: the index's own, and with ``max_shift``
    those of every shift, one row per distinct (image, fingerprint), smallest shift first."""
    rows = pd.DataFrame({"matched_id": held["id"].to_numpy(), "shift_y": 0, "shift_x": 0,
                         "fingerprint": parse_fingerprints(held["fingerprint"])})
    if max_shift > 0:
        read = partial(shifted_fingerprints, max_shift=max_shift)
        found = ordered_map(read, held["path"].astype(str), processes, len(held), "fingerprint val/test shifts")
        shifts = pd.DataFrame([(image_id, dy, dx, value) for image_id, probes in zip(held["id"], found)
                               for dy, dx, value in probes],
                              columns=["matched_id", "shift_y", "shift_x", "fingerprint"])
        shifts["fingerprint"] = shifts["fingerprint"].astype(np.uint64)
        rows = pd.concat([rows, shifts], ignore_index=True)
    rows = rows.assign(size=rows["shift_y"].abs() + rows["shift_x"].abs())
    rows = rows.sort_values(["matched_id", "size"], kind="stable")
    return rows.drop_duplicates(["matched_id", "fingerprint"]).drop(columns="size").reset_index(drop=True)


def _near_pairs(pool: np.ndarray, probes: np.ndarray, max_distance: int) -> pd.DataFrame:
    """(pool row, probe row, distance) of every pair at most ``max_distance`` bits apart:
    an exact join per 16-bit chunk finds the candidates (multi-index hashing)."""
    found = []
    mask = np.uint64((1 << CHUNK_BITS) - 1)
    for chunk in range(CHUNKS):
        shift = np.uint64(CHUNK_BITS * (CHUNKS - 1 - chunk))
        left = pd.DataFrame({"key": (pool >> shift) & mask, "pool": np.arange(len(pool))})
        right = pd.DataFrame({"key": (probes >> shift) & mask, "probe": np.arange(len(probes))})
        pairs = left.merge(right, on="key")
        distance = np.bitwise_count(pool[pairs["pool"].to_numpy()] ^ probes[pairs["probe"].to_numpy()])
        log.info("chunk %d: %d candidate pairs", chunk, len(pairs))
        close = distance <= max_distance
        found.append(pairs.loc[close, ["pool", "probe"]].assign(distance=distance[close]))
    return pd.concat(found, ignore_index=True).drop_duplicates(["pool", "probe"])


def screen_pool(index: pd.DataFrame, split: pd.DataFrame, near_max_distance: int | None, max_shift: int = 0,
                processes: int = 1) -> pd.DataFrame:
    """The pool images (index rows of set 'unlabelled') that copy a val or test image of
    ``split``, one row each (``EXCLUDED_COLUMNS``) with its closest match: ``exact`` before
    ``near``, then the smallest distance and shift. ``near_max_distance`` None: exact only."""
    missing = {"pixel_hash", "fingerprint"} - set(index.columns)
    if missing:
        raise ValueError(f"the index lacks the columns {sorted(missing)}; rerun index_data (snakemake -R index_data)")
    if near_max_distance is not None and not 0 <= near_max_distance <= MAX_NEAR_DISTANCE:
        raise ValueError(f"config key 'data.pool_screening.near_max_distance' = {near_max_distance}: "
                         f"allowed 0..{MAX_NEAR_DISTANCE} or null")
    columns = ["id", "path", "source", "pixel_hash", "fingerprint"]
    pool = index.loc[index["set"] == "unlabelled", columns].reset_index(drop=True)
    held = split.loc[split["split"].isin(HELD_OUT), ["id", "split"]].merge(index[columns], on="id")
    matched = held.rename(columns={"id": "matched_id", "path": "matched_path", "split": "matched_split"})
    exact = pool.merge(matched[["matched_id", "matched_path", "matched_split", "pixel_hash"]], on="pixel_hash")
    exact = exact.assign(reason="exact", distance=0, shift_y=0, shift_x=0)
    found = [exact]
    if near_max_distance is not None and len(pool) and len(held):
        probes = _probes(held, max_shift, processes)
        pairs = _near_pairs(parse_fingerprints(pool["fingerprint"]), probes["fingerprint"].to_numpy(np.uint64),
                            near_max_distance)
        probe = probes.iloc[pairs["probe"].to_numpy()][["matched_id", "shift_y", "shift_x"]]
        near = pd.concat([pool.iloc[pairs["pool"].to_numpy()].reset_index(drop=True), probe.reset_index(drop=True),
                          pairs["distance"].reset_index(drop=True)], axis=1)
        near = near.merge(matched[["matched_id", "matched_path", "matched_split"]], on="matched_id")
        found.append(near.assign(reason="near"))
    table = pd.concat(found, ignore_index=True)
    table = table.assign(rank=(table["reason"] != "exact").astype(int),
                         moved=table["shift_y"].abs() + table["shift_x"].abs())
    table = table.sort_values(["id", "rank", "distance", "moved", "matched_id"], kind="stable").drop_duplicates("id")
    return table[EXCLUDED_COLUMNS].reset_index(drop=True)
