"""The packed store: exact round trips, fixed pool tiles, random access from worker processes."""

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader

from emkt.data import read_tiff, to_grey_uint8
from emkt.datasets import PoolCrops
from emkt.indexing import build_index
from emkt.store import LabelledStore, StoreError, TileStore, cut_tiles, pack_store, shard_rows, tile_count


def test_shard_rows_cover_every_row_once():
    for n, shards in [(0, 3), (5, 3), (10, 4), (7, 7), (3, 8)]:
        rows = [i for k in range(shards) for i in shard_rows(n, shards, k)]
        assert rows == list(range(n))
    with pytest.raises(ValueError):
        shard_rows(5, 2, 2)


def test_tiles_cover_large_images_and_pad_small_ones():
    image = np.arange(300 * 500, dtype=np.int64).reshape(300, 500) % 251
    tiles = list(cut_tiles(image.astype(np.uint8), 224))
    assert len(tiles) == tile_count(300, 500, 224) == 2 * 3
    assert [(t, l) for t, l, _ in tiles] == [(0, 0), (0, 224), (0, 276), (76, 0), (76, 224), (76, 276)]
    assert np.array_equal(tiles[-1][2], image[76:, 276:])
    small = list(cut_tiles(np.ones((100, 224), np.uint8), 224))
    assert len(small) == tile_count(100, 224, 224) == 1 and small[0][2].shape == (224, 224)


def pack(index, out, shards=2, tile=224, processes=1):
    labelled = index[index["set"] == "labelled"].reset_index(drop=True)
    pool = index[index["set"] == "unlabelled"].reset_index(drop=True)
    pack_store(labelled, "labelled", out, shards, processes=processes)
    pack_store(pool, "pool", out, shards, tile=tile, processes=processes)
    return labelled, pool


@pytest.mark.slow
def test_real_fixture_round_trip(shared_data, tmp_path):
    index, _ = build_index(shared_data / "cem_mitolab", shared_data / "unlabelled")
    labelled, pool = pack(index, tmp_path, shards=3, processes=2)
    store = LabelledStore(tmp_path / "labelled.json")
    assert len(store) == len(labelled) == 26
    for row in labelled.itertuples():
        image = store.image(row.id)
        assert np.array_equal(image, to_grey_uint8(read_tiff(row.path))[0])
        assert np.array_equal(store.labels(row.id), tifffile.imread(row.mask))  # instance ids kept
        assert store.stats(row.id) == pytest.approx((image.mean(), image.std()))
    with pytest.raises(StoreError, match="not in the labelled store"):
        store.image(10_000)

    tiles = TileStore(tmp_path / "pool.json")
    expected = sum(tile_count(h, w, 224) for h, w in zip(pool["height"], pool["width"]))
    assert len(tiles) == expected == 10 * 1 + 20 * 25  # 224x224 and 138x224 patches; 1024x1024 slices
    origins = np.concatenate([np.load(tmp_path / f"pool/shard-{k:05d}.origin.npy") for k in range(3)])
    for i in [0, 7, 11, len(tiles) - 1]:
        row_id, top, left = origins[i]
        source = to_grey_uint8(read_tiff(index.loc[index["id"] == row_id, "path"].item()))[0]
        expected_tile = dict(((t, l), x) for t, l, x in cut_tiles(source, 224))[(top, left)]
        assert np.array_equal(tiles.tile_at(i), expected_tile)
    with pytest.raises(IndexError):
        tiles.tile_at(len(tiles))
    picked = [len(tiles) - 1, 3, 250, 3, 0]  # across shards, repeated, out of order
    assert np.array_equal(tiles.tiles(picked), np.stack([tiles.tile_at(i) for i in picked]))
    with pytest.raises(IndexError):
        tiles.tiles([0, len(tiles)])


@pytest.fixture
def small_pool(tmp_path):
    root = tmp_path / "pool" / "src"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        tifffile.imwrite(root / f"{i:03d}.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    lab = tmp_path / "lab" / "a"
    (lab / "images").mkdir(parents=True)
    (lab / "masks").mkdir()
    tifffile.imwrite(lab / "images" / "x.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(lab / "masks" / "x.tif", np.zeros((32, 32), np.uint8))
    index, _ = build_index(tmp_path / "lab", tmp_path / "pool")
    pack(index, tmp_path / "store", shards=3, tile=32)
    return tmp_path / "store", index


def test_pool_crops_from_worker_processes_match_the_main_process(small_pool):
    store_dir, _ = small_pool
    crops = PoolCrops(TileStore(store_dir / "pool.json"), 24, seed=1)
    main = torch.stack([crops[i]["image"] for i in range(len(crops))])
    loader = DataLoader(crops, batch_size=8, num_workers=2)
    workers = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(main, workers) and main.shape == (40, 1, 24, 24)
    with pytest.raises(ValueError, match="store.pool_tile"):
        PoolCrops(TileStore(store_dir / "pool.json"), 48, seed=1)


def test_damaged_store_files_give_clear_errors(small_pool):
    store_dir, _ = small_pool
    shard = store_dir / "pool" / "shard-00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(StoreError, match="truncated shard"):
        TileStore(store_dir / "pool.json")
    with pytest.raises(StoreError, match="expected 'pool'"):
        TileStore(store_dir / "labelled.json")
    table = store_dir / "labelled" / "shard-00000.csv"
    pd.read_csv(table).drop(columns="mean").to_csv(table, index=False)
    with pytest.raises(StoreError, match="does not match the manifest"):
        LabelledStore(store_dir / "labelled.json")
