"""Inference with a trained segmentation network: probability maps of whole images of any
size, in Gaussian-blended sliding windows of the training input size.

What evaluation (emkt.evaluate, emkt.calibration, the training stages' validation) and
prediction (emkt.predict, the command ``python -m emkt predict``) share, and the targets it
makes for the distillation stages: the pool's pseudo-labels (``write_pseudo_labels``) and an
ensemble's soft labels (``soft_labels``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm import tqdm

from .data import normalise_image
from .files import atomic_path
from .models import EnsembleSegmenter
from .store import MEAN_SCALE, StoreError, _npy_layout, quantise_probability


@torch.no_grad()
def sliding_window(predictor: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, input_size: int,
                   overlap: float, batch_size: int, device: torch.device) -> torch.Tensor:
    """``predictor`` over (N, H, W) normalised images (or (N, C, H, W) inputs of several
    channels, e.g. a teacher's image and probability) in Gaussian-blended windows of the
    training input size; returns (N, C, H, W) on the CPU."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = (x[:, None] if x.ndim == 3 else x).to(device)
    out = sliding_window_inference(x, roi_size=(input_size, input_size), sw_batch_size=batch_size,
                                   predictor=predictor, overlap=overlap, mode="gaussian")
    return out.cpu()


def predict_probability(model: nn.Module, image: np.ndarray, input_size: int, overlap: float,
                        batch_size: int, device: torch.device) -> np.ndarray:
    """Foreground probability of a whole 2D image of any size.

    Gaussian-weighted sliding windows of the training input size (``sliding_window``);
    images smaller than a window are padded (with 0, the mean of a z-scored image) and cropped back.
    """
    model.eval()
    return torch.sigmoid(sliding_window(model, image[None], input_size, overlap, batch_size, device))[0, 0].numpy()


def predict_tiles(model: nn.Module, tiles: np.ndarray, input_size: int, overlap: float, batch_size: int,
                  device: torch.device, normalise: Callable[[np.ndarray], np.ndarray] = normalise_image) -> np.ndarray:
    """Foreground probabilities (float32) of uint8 pool tiles (N, T, T), each z-scored on its
    own (``normalise``) as the pool crops are in training."""
    model.eval()
    images = np.stack([normalise(tile) for tile in tiles])
    return torch.sigmoid(sliding_window(model, images, input_size, overlap, batch_size, device))[:, 0].numpy()


# --- Targets of the distillation stages --------------------------------------------------------

def write_pseudo_labels(model: nn.Module, pool_shard: str | Path, out_path: str | Path, input_size: int,
                        overlap: float, batch_size: int, device: torch.device, chunk: int = 512) -> int:
    """Pseudo-label one pool shard: an .npy of the same shape holding uint8 p * 255 per pixel.

    Streams ``chunk`` tiles at a time (memory does not grow with the shard) and writes through
    a temporary name, so a killed job leaves nothing that looks finished. Returns the tile count.
    """
    offset, shape = _npy_layout(Path(pool_shard))
    count, tile = shape[0], shape[1]
    with atomic_path(out_path) as tmp, open(tmp, "wb") as out, open(pool_shard, "rb") as source:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for start in tqdm(range(0, count, chunk), desc=f"pseudo-label {Path(pool_shard).name}", mininterval=10):
            n = min(chunk, count - start)
            source.seek(offset + start * tile * tile)
            tiles = np.frombuffer(source.read(n * tile * tile), dtype=np.uint8)
            if tiles.size != n * tile * tile:
                raise StoreError(f"{pool_shard}: short read at tile {start} (truncated shard?)")
            probs = predict_tiles(model, tiles.reshape(n, tile, tile), input_size, overlap, batch_size, device)
            out.write(quantise_probability(probs, MEAN_SCALE).tobytes())
    return count


def soft_labels(ensemble: EnsembleSegmenter, images: Sequence[tuple[int, np.ndarray]], input_size: int,
                overlap: float, batch_size: int, device: torch.device,
                temperature: float = 1.0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(id, mean, sd) over the ensemble's members for each (id, normalised whole image)."""
    ensemble.eval()

    def predictor(window: torch.Tensor) -> torch.Tensor:
        return ensemble.mean_and_sd(window, temperature)

    for image_id, image in images:
        maps = sliding_window(predictor, image[None], input_size, overlap, batch_size, device)[0].numpy()
        yield image_id, maps[0], maps[1]
