"""Pool screening: copies of val/test images in the unlabelled pool are found and kept out of the store."""

import subprocess

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import TINY, merged, snakemake_command
from emkt.indexing import build_index
from emkt.screening import (EXCLUDED_COLUMNS, SIGNATURE_DTYPES, fingerprint, screen_pool, shifted,
                            shifted_fingerprints)
from emkt.store import TileStore

STACK = "cem_mitolab/drosophila_vnc/images"
SIZE = 224


@pytest.fixture
def planted(shared_data, tmp_path):
    """Labelled 224x224 crops of real sections (one source) and a pool with planted copies:
    windows (top, left) of section 03, and an unrelated section (11)."""
    section = tifffile.imread(shared_data / STACK / "03.tiff")
    other = tifffile.imread(shared_data / STACK / "11.tiff")

    def crop(image, top, left):
        return np.ascontiguousarray(image[top:top + SIZE, left:left + SIZE])

    labelled = {"test_a": (100, 100), "test_b": (100, 500), "test_c": (500, 100), "val_d": (500, 500),
                "train_e": (700, 700)}
    for name, (top, left) in labelled.items():
        for kind in ("images", "masks"):
            (tmp_path / "lab" / "vnc" / kind).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "lab" / "vnc" / "images" / f"{name}.tif", crop(section, top, left))
        tifffile.imwrite(tmp_path / "lab" / "vnc" / "masks" / f"{name}.tif", np.zeros((SIZE, SIZE), np.uint8))
    rng = np.random.default_rng(0)
    # re-encoded: noise (sd 3 grey levels), then quantised to steps of 4 as a lossy codec would
    reencoded = np.clip(crop(section, 100, 500) + rng.normal(0, 3, (SIZE, SIZE)), 0, 255) // 4 * 4
    pool = {"exact_a": crop(section, 100, 100), "reencoded_b": reencoded.astype(np.uint8),
            "shifted_c": crop(section, 502, 97),  # the window 2 rows down, 3 columns left
            "noisy_val_d": np.clip(crop(section, 500, 500) + rng.normal(0, 2, (SIZE, SIZE)), 0, 255).astype(np.uint8),
            "copy_of_train_e": crop(section, 700, 700), "unrelated": crop(other, 300, 300),
            "same_section_elsewhere": crop(section, 300, 700)}
    for name, image in pool.items():
        folder = tmp_path / "pool" / ("other" if name in ("unrelated", "same_section_elsewhere") else "vnc")
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"{name}.tif", image)
    index, excluded = build_index(tmp_path / "lab", tmp_path / "pool")
    assert excluded.empty
    names = index["path"].str.rsplit("/", n=1).str[1].str.removesuffix(".tif")
    labelled_rows = index[index["set"] == "labelled"]
    split = pd.DataFrame({"id": labelled_rows["id"],
                          "split": names[labelled_rows.index].str.split("_").str[0].to_numpy()})
    return index, split, names


def found(table, names):
    """{pool image: (reason, matched image)} of a screening table."""
    by_id = dict(zip(names.index, names))
    return {by_id[i]: (reason, by_id[m]) for i, reason, m in zip(table["id"], table["reason"], table["matched_id"])}


def test_copies_of_val_and_test_images_are_found_with_their_reason(planted):
    index, split, names = planted
    table = screen_pool(index, split, near_max_distance=3, max_shift=3)
    assert list(table.columns) == EXCLUDED_COLUMNS
    assert found(table, names) == {"exact_a": ("exact", "test_a"), "reencoded_b": ("near", "test_b"),
                                   "shifted_c": ("near", "test_c"), "noisy_val_d": ("near", "val_d")}
    by_name = table.set_index(table["id"].map(names))
    assert tuple(by_name.loc["shifted_c", ["shift_y", "shift_x"]]) == (2, -3)
    assert (table["distance"] <= 3).all() and set(table["matched_split"]) == {"test", "val"}
    # the copy of a training image, the unrelated image and another window of a test image's
    # section are kept; only exact copies without near matching; no shifted copies without shifts
    assert found(screen_pool(index, split, near_max_distance=None, max_shift=3), names) == {"exact_a": ("exact", "test_a")}
    assert "shifted_c" not in found(screen_pool(index, split, near_max_distance=3, max_shift=0), names)
    # with every labelled image held out, the copy of train_e goes too
    everything = split.assign(split="test")
    assert found(screen_pool(index, everything, 3, 3), names)["copy_of_train_e"] == ("exact", "train_e")


def test_screening_reads_the_index_as_written(planted, tmp_path):
    index, split, _ = planted
    index.to_csv(tmp_path / "index.csv", index=False)
    again = pd.read_csv(tmp_path / "index.csv", dtype=SIGNATURE_DTYPES)
    assert again["fingerprint"].str.len().eq(16).all() and again["pixel_hash"].str.len().eq(32).all()
    pd.testing.assert_frame_equal(screen_pool(again, split, 3, 3), screen_pool(index, split, 3, 3))
    with pytest.raises(ValueError, match="rerun index_data"):
        screen_pool(index.drop(columns="fingerprint"), split, 3, 0)
    with pytest.raises(ValueError, match="'data.pool_screening.near_max_distance' = 4"):
        screen_pool(index, split, 4, 0)


def test_shifted_fingerprints_equal_fingerprints_of_shifted_images(shared_data, tmp_path):
    image = tifffile.imread(shared_data / "cem_mitolab/cem_examples/images/mitochondria1.tiff")  # 138x224
    tifffile.imwrite(tmp_path / "a.tif", image)
    probes = shifted_fingerprints(str(tmp_path / "a.tif"), 2)
    assert len(probes) == 25 and len({value for *_, value in probes}) > 1
    assert all(value == fingerprint(shifted(image, dy, dx)) for dy, dx, value in probes)
    tiny = np.arange(12, dtype=np.uint8).reshape(3, 4)  # smaller than the 8x8 grid: still defined
    assert fingerprint(tiny) == fingerprint(tiny.copy()) and fingerprint(tiny) != fingerprint(tiny[::-1])


@pytest.mark.workflow
def test_pool_store_leaves_out_the_screened_images(shared_data, tmp_path):
    """Workflow rules index -> split -> screen -> pack: a pool holding an exact copy of every
    labelled image keeps the copies of training images and loses those of val/test images."""
    pool = tmp_path / "pool"
    for path in sorted((shared_data / "cem_mitolab").glob("cem_examples/images/*.tiff")):
        (pool / "copies").mkdir(parents=True, exist_ok=True)
        (pool / "copies" / path.name).write_bytes(path.read_bytes())
    (pool / "other").mkdir()
    for path in sorted((shared_data / "unlabelled" / "cem_examples").glob("*.tiff"))[:4]:
        (pool / "other" / path.name).write_bytes(path.read_bytes())
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    (labelled / "cem_examples").symlink_to(shared_data / "cem_mitolab" / "cem_examples", target_is_directory=True)
    config = merged(TINY, {"data": {"source": "folder", "labelled_dir": "labelled", "unlabelled_dir": "pool"},
                           "split": {"train": 0.6, "val": 0.2, "test": 0.2}})
    command = snakemake_command(tmp_path, config, "results/store/pool.json", cores=2)
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    index = pd.read_csv(tmp_path / "results/data/index.csv")
    split = pd.read_csv(tmp_path / "results/splits/datasplit.csv")
    excluded = pd.read_csv(tmp_path / "results/data/pool_excluded.csv")
    name = lambda path: path.rsplit("/", 1)[1]  # noqa: E731
    held = {name(p) for p, s in zip(split["path"], split["split"]) if s in ("val", "test")}
    assert held and {name(p) for p in excluded["path"]} == held and set(excluded["reason"]) == {"exact"}
    store = TileStore(tmp_path / "results/store/pool.json")
    origins = np.concatenate([np.load(tmp_path / f"results/store/pool/shard-{k:05d}.origin.npy") for k in range(2)])
    kept = set(index.loc[index["set"] == "unlabelled", "id"]) - set(excluded["id"])
    assert set(origins[:, 0]) == kept and len(store) == len(origins)
    assert "pool screening: 2 of 9 pool images excluded (2 exact" in (tmp_path / "results/logs/screen_pool.log").read_text()
