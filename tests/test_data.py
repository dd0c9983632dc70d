import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from emkt.data import (DataFileError, LabelledCrops, index_labelled, index_unlabelled, load_whole_images,
                       normalise_image, random_crop, read_image, read_mask, read_split, split_index)


def write_pair(root, source, name, shape=(40, 50), mask_shape=None):
    (root / source / "images").mkdir(parents=True, exist_ok=True)
    (root / source / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    tifffile.imwrite(root / source / "images" / name, rng.integers(0, 255, shape, dtype=np.uint8))
    mask = np.zeros(mask_shape or shape, dtype=np.uint16)
    mask[5:15, 5:20] = 1
    mask[20:30, 25:35] = 2
    tifffile.imwrite(root / source / "masks" / name, mask)


def test_index_and_split_on_the_real_fixture(shared_data):
    index = index_labelled(shared_data / "cem_mitolab")
    assert len(index) == 26 and set(index["source"]) == {"cem_examples", "drosophila_vnc", "empanada_panoptic"}
    assert {"path", "mask", "source", "height", "width"} <= set(index.columns)
    assert (138, 224) in set(zip(index["height"], index["width"]))
    split = split_index(index, 0.8, 0.15, 0.05, seed=0)
    counts = split["split"].value_counts().to_dict()
    assert counts == {"train": 21, "val": 4, "test": 1}
    again = split_index(index, 0.8, 0.15, 0.05, seed=0)
    assert split["split"].tolist() == again["split"].tolist()
    other = split_index(index, 0.8, 0.15, 0.05, seed=1)
    assert split["split"].tolist() != other["split"].tolist()
    pool = index_unlabelled(shared_data / "unlabelled")
    assert len(pool) == 30 and set(pool["source"]) == {"cem_examples", "drosophila_vnc_stack2"}


def test_split_fractions_and_every_split_nonempty():
    index = pd.DataFrame({"path": [f"{i}.tif" for i in range(100)]})
    counts = split_index(index, 0.8, 0.15, 0.05, 4)["split"].value_counts().to_dict()
    assert counts == {"train": 80, "val": 15, "test": 5}
    small = split_index(index.head(5), 0.8, 0.15, 0.05, 4)["split"].value_counts().to_dict()
    assert small == {"train": 3, "val": 1, "test": 1}


def test_index_names_missing_mask_and_shape_mismatch(tmp_path):
    write_pair(tmp_path, "a", "x.tiff")
    write_pair(tmp_path, "a", "y.tiff", mask_shape=(40, 49))
    (tmp_path / "a" / "images" / "z.tiff").write_bytes((tmp_path / "a" / "images" / "x.tiff").read_bytes())
    with pytest.raises(DataFileError) as error:
        index_labelled(tmp_path)
    text = str(error.value)
    assert "2 labelled file(s)" in text and "y.tiff" in text and "z.tiff: no mask" in text


def test_readers(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.full((8, 9, 3), 255, dtype=np.uint8))
    assert read_image(tmp_path / "rgb.tif").shape == (8, 9)
    tifffile.imwrite(tmp_path / "u16.tif", np.full((4, 4), 65535, dtype=np.uint16))
    assert read_image(tmp_path / "u16.tif").max() == pytest.approx(1.0)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), dtype=np.uint8), photometric="minisblack")
    with pytest.raises(DataFileError, match="expected a 2D image"):
        read_image(tmp_path / "stack.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataFileError, match="bad.tif: unreadable TIFF"):
        read_image(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "inst.tif", np.array([[0, 3], [7, 0]], dtype=np.uint16))
    assert read_mask(tmp_path / "inst.tif").tolist() == [[0, 1], [1, 0]]
    z = normalise_image(np.arange(16, dtype=np.float32).reshape(4, 4))
    assert z.mean() == pytest.approx(0, abs=1e-6) and z.std() == pytest.approx(1, abs=1e-5)


def test_random_crop_pads_small_images():
    rng = np.random.default_rng(0)
    image, mask = random_crop([np.ones((10, 40), np.float32), np.ones((10, 40), np.uint8)], 16, rng)
    assert image.shape == mask.shape == (16, 16)
    assert mask[:3].sum() == 0 and mask[3:13].all()  # zero padding above and below the 10 rows


def test_labelled_crops_are_deterministic_per_epoch(tmp_path):
    for i in range(3):
        write_pair(tmp_path, "s", f"{i}.tiff")
    table = index_labelled(tmp_path)
    crops = LabelledCrops(table, 16, seed=5, crops_per_image=2)
    assert len(crops) == 6
    first = crops[1]
    assert first["image"].shape == (1, 16, 16) and first["mask"].shape == (1, 16, 16)
    assert torch.equal(LabelledCrops(table, 16, seed=5, crops_per_image=2)[1]["image"], first["image"])
    crops.set_epoch(1)
    assert not torch.equal(crops[1]["image"], first["image"])


def test_read_split_and_whole_images(tmp_path):
    for i in range(4):
        write_pair(tmp_path, "s", f"{i}.tiff")
    split = split_index(index_labelled(tmp_path), 0.5, 0.25, 0.25, 0)
    split.to_csv(tmp_path / "split.csv", index=False)
    test = read_split(tmp_path / "split.csv", "test")
    items = load_whole_images(test)
    assert len(items) == 1 and items[0]["image"].shape == (40, 50) and set(np.unique(items[0]["mask"])) == {0, 1}
    pd.DataFrame({"path": ["a"], "mask": ["b"], "source": ["s"], "split": ["train"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataFileError, match="'test' split is empty"):
        read_split(tmp_path / "t.csv", "test")
