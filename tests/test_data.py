import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from conftest import prepare_data
from emkt.augment import train_augmentation
from emkt.datasets import LabelledCrops
from emkt.data import (ConversionError, DataFileError, find_labelled_root, ground_truth_instances, load_folder_images,
                       load_whole_images, masks_from_labels,
                       normalise_image, random_crop, read_split, read_tiff, split_index, to_grey_uint8,
                       to_labels)
from emkt.evaluate import score_instances
from emkt.indexing import build_index
from emkt.store import LabelledStore


IGNORE = 65535


def write_pair(root, source, name, shape=(40, 50), mask_shape=None, ignored=False):
    """An image and its instance mask; ``ignored`` marks a band across both instances and
    the background as unlabelled (IGNORE)."""
    (root / source / "images").mkdir(parents=True, exist_ok=True)
    (root / source / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(name))
    tifffile.imwrite(root / source / "images" / name, rng.integers(0, 255, shape, dtype=np.uint8))
    mask = np.zeros(mask_shape or shape, dtype=np.uint16)
    mask[5:15, 5:20] = 1
    mask[20:30, 25:35] = 2
    if ignored:
        mask[10:25, 15:30] = IGNORE
    tifffile.imwrite(root / source / "masks" / name, mask)


def test_random_and_grouped_split_on_the_real_fixture(shared_data):
    index, excluded = build_index(shared_data / "cem_mitolab", None)
    assert excluded.empty
    assert len(index) == 26 and set(index["source"]) == {"cem_examples", "drosophila_vnc", "empanada_panoptic"}
    split = split_index(index, 0.8, 0.15, 0.05, seed=0)
    assert split["split"].value_counts().to_dict() == {"train": 21, "val": 4, "test": 1}
    assert split["split"].tolist() == split_index(index, 0.8, 0.15, 0.05, seed=0)["split"].tolist()
    assert split["split"].tolist() != split_index(index, 0.8, 0.15, 0.05, seed=1)["split"].tolist()
    grouped = split_index(index, 0.8, 0.15, 0.05, seed=0, group_by="source")
    sources = grouped.groupby("split")["source"].unique()
    # every source in exactly one split, and each split has one
    assert sorted(s for split_sources in sources for s in split_sources) == sorted(set(index["source"]))
    assert set(grouped["split"]) == {"train", "val", "test"}


def test_grouped_split_meets_fractions_with_whole_sources():
    index = pd.DataFrame({"source": [f"s{i // 10}" for i in range(200)]})  # 20 sources of 10 images
    for seed in range(5):
        grouped = split_index(index, 0.7, 0.2, 0.1, seed=seed, group_by="source")
        assert grouped.groupby("source")["split"].nunique().max() == 1
        assert grouped["split"].value_counts().to_dict() == {"train": 140, "val": 40, "test": 20}
    with pytest.raises(ValueError, match="at least 3 sources"):
        split_index(index.head(20), 0.7, 0.2, 0.1, 0, group_by="source")
    with pytest.raises(ValueError, match="split.group_by"):
        split_index(index, 0.7, 0.2, 0.1, 0, group_by="volume")


def volume_table(seed=0):
    """20 consecutive sections of one volume (unpadded names, rows shuffled) and three small sources."""
    names = [("vnc", f"data/vnc/images/{k}.tif") for k in range(20)]
    names += [(source, f"data/{source}/images/img{k}.tif") for source, n in (("a", 5), ("b", 4), ("c", 3))
              for k in range(n)]
    table = pd.DataFrame(names, columns=["source", "path"])
    return table.sample(frac=1, random_state=seed).reset_index(drop=True)


def section_number(path):
    return int(path.rsplit("/", 1)[1].removesuffix(".tif").removeprefix("img"))


def test_block_split_keeps_runs_of_consecutive_sections_together():
    table = volume_table()
    block = table["source"] + "#" + (table["path"].map(section_number) // 4).astype(str)
    assignments = set()
    for seed in range(6):
        split = split_index(table, 0.6, 0.2, 0.2, seed, group_by="block", block_size=4)
        assert split.groupby(block)["split"].nunique().max() == 1  # every block wholly in one split
        counts = split["split"].value_counts()
        for name, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[name] - fraction * len(table)) <= 4, (seed, counts.to_dict())
        assignments.add(tuple(split.sort_values("path")["split"]))
    assert len(assignments) > 2  # seeds change the assignment
    # the order is natural (9 before 10), whatever the row order: sections 8-11 form one block
    vnc = split[split["source"] == "vnc"].set_index(split.loc[split["source"] == "vnc", "path"].map(section_number))
    assert vnc.sort_index().loc[8:11, "split"].nunique() == 1
    with pytest.raises(ValueError, match=r"'split.group_by' = 'block' needs at least 3 blocks \(of split.block_size = 4"):
        split_index(table[table["source"] == "a"], 0.6, 0.2, 0.2, 0, group_by="block", block_size=4)


def test_block_gap_keeps_training_sections_away_from_held_out_ones():
    table = volume_table(seed=1)
    position = table["path"].map(section_number)
    for seed in range(4):
        plain = split_index(table, 0.6, 0.2, 0.2, seed, group_by="block", block_size=4)
        guarded = split_index(table, 0.6, 0.2, 0.2, seed, group_by="block", block_size=4, block_gap=1)
        changed = plain["split"] != guarded["split"]
        assert (plain.loc[changed, "split"] == "train").all() and (guarded.loc[changed, "split"] == "gap").all()
        for _, rows in guarded.assign(position=position).groupby("source"):
            rows = rows.set_index("position")["split"]
            held = rows.index[rows.isin(["val", "test"])]
            train = rows.index[rows == "train"]
            assert not set(held + 1) & set(train) and not set(held - 1) & set(train)
            # only neighbours of held-out sections are dropped
            gap = rows.index[rows == "gap"]
            assert set(gap) <= set(held + 1) | set(held - 1)
        # ... and a plain block split does leave neighbours across a train/held-out boundary
        assert changed.any()
    # a source without held-out sections keeps all its training sections
    for _, rows in guarded.groupby("source"):
        if not rows["split"].isin(["val", "test"]).any():
            assert (rows["split"] == "train").all()
    with pytest.raises(ValueError, match="'split.block_gap' = 30 leaves no training image"):
        split_index(table[table["source"] == "vnc"], 0.6, 0.2, 0.2, 0, group_by="block", block_size=4, block_gap=30)


def test_split_fractions_and_every_split_nonempty():
    index = pd.DataFrame({"path": [f"{i}.tif" for i in range(100)]})
    counts = split_index(index, 0.8, 0.15, 0.05, 4)["split"].value_counts().to_dict()
    assert counts == {"train": 80, "val": 15, "test": 5}
    small = split_index(index.head(5), 0.8, 0.15, 0.05, 4)["split"].value_counts().to_dict()
    assert small == {"train": 3, "val": 1, "test": 1}


def test_conversions_to_grey_uint8():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 30
    grey, note = to_grey_uint8(rgb)
    assert grey.shape == (4, 5) and grey.dtype == np.uint8 and (grey == 10).all() and note == "rgb->grey"
    wide = np.array([[1000, 2000], [3000, 1000]], np.uint16)
    grey, note = to_grey_uint8(wide)
    assert grey.tolist() == [[0, 128], [255, 0]] and note == "uint16->uint8 min-max"
    same = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert to_grey_uint8(same)[0] is same and to_grey_uint8(same)[1] == ""
    assert to_grey_uint8(same[None])[0].shape == (2, 3)  # a single page is squeezed
    with pytest.raises(ConversionError, match="expected a 2D image") as error:
        to_grey_uint8(np.zeros((3, 8, 8), np.uint8))
    assert error.value.reason == "not_2d"
    with pytest.raises(ConversionError) as error:
        to_grey_uint8(np.array([[0.0, np.nan], [1.0, 2.0]]))
    assert error.value.reason == "non_finite"
    assert to_labels(np.array([[0.0, 2.0], [1.0, 0.0]])).tolist() == [[0, 2], [1, 0]]
    with pytest.raises(ConversionError):
        to_labels(np.array([[0.5, 1.0], [0.0, 0.0]]))


def test_readers(tmp_path):
    """Files read and converted as the packed store reads them (emkt.store)."""
    tifffile.imwrite(tmp_path / "rgb.tif", np.full((8, 9, 3), 255, dtype=np.uint8))
    assert to_grey_uint8(read_tiff(tmp_path / "rgb.tif"))[0].shape == (8, 9)
    tifffile.imwrite(tmp_path / "u16.tif", np.array([[0, 65535]], dtype=np.uint16))
    assert to_grey_uint8(read_tiff(tmp_path / "u16.tif"))[0].max() == 255
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataFileError, match="bad.tif: unreadable TIFF"):
        read_tiff(tmp_path / "bad.tif")
    tifffile.imwrite(tmp_path / "inst.tif", np.array([[0, 3], [7, 0]], dtype=np.uint16))
    labels = to_labels(read_tiff(tmp_path / "inst.tif", palette=False))
    assert (labels > 0).astype(np.uint8).tolist() == [[0, 1], [1, 0]]
    z = normalise_image(np.arange(16, dtype=np.float32).reshape(4, 4))
    assert z.mean() == pytest.approx(0, abs=1e-6) and z.std() == pytest.approx(1, abs=1e-5)


def test_labelled_root_is_found_inside_an_archive_folder(tmp_path):
    write_pair(tmp_path / "cem_mitolab", "a", "x.tiff")
    assert find_labelled_root(tmp_path) == tmp_path / "cem_mitolab"
    assert find_labelled_root(tmp_path / "cem_mitolab") == tmp_path / "cem_mitolab"


def test_random_crop_pads_small_images():
    rng = np.random.default_rng(0)
    image, mask = random_crop([np.ones((10, 40), np.float32), np.ones((10, 40), np.uint8)], 16, rng)
    assert image.shape == mask.shape == (16, 16)
    assert mask[:3].sum() == 0 and mask[3:13].all()  # zero padding above and below the 10 rows


def test_masks_from_labels_excludes_the_ignore_value():
    labels = np.array([[0, 3, IGNORE], [IGNORE, 1, 0]], dtype=np.uint16)
    mask, valid = masks_from_labels(labels, IGNORE)
    assert mask.dtype == valid.dtype == np.uint8
    assert valid.tolist() == [[1, 1, 0], [0, 1, 1]] and mask.tolist() == [[0, 1, 0], [0, 1, 0]]
    mask, valid = masks_from_labels(labels, None)
    assert valid.all() and mask.tolist() == (labels > 0).astype(np.uint8).tolist()
    # a value the dtype cannot hold marks nothing
    assert masks_from_labels(np.array([[0, 2]], np.uint8), IGNORE)[1].all()


def test_random_crop_pads_valid_maps_with_zero():
    rng = np.random.default_rng(0)
    ones = np.ones((10, 40), np.uint8)
    image, mask, valid = random_crop([np.ones((10, 40), np.float32), ones, ones], 16, rng)
    assert (image == 1).all()  # reflected
    assert valid[:3].sum() == 0 and valid[13:].sum() == 0 and valid[3:13].all()  # padding is not labelled


def test_labelled_crops_carry_valid_maps_that_augmentation_moves_with_the_mask(tmp_path, tiny_config):
    # images narrower than the crop, so padding (valid 0) is part of the crops too
    for i in range(3):
        write_pair(tmp_path / "data", "s", f"{i}.tiff", shape=(40, 30), ignored=True)
    store = LabelledStore(prepare_data(tmp_path / "data", None, tmp_path / "store", tiny_config).labelled)
    plain = LabelledCrops(store, [0, 1, 2], 36, seed=2, crops_per_image=4, ignore_label=IGNORE)
    augmented = LabelledCrops(store, [0, 1, 2], 36, seed=2, crops_per_image=4, ignore_label=IGNORE,
                              transform=train_augmentation(0, keys=("image", "mask", "valid")))
    saw_ignored = False
    for index in range(len(plain)):
        before, after = plain[index], augmented[index]
        assert set(after) == {"image", "mask", "valid"}
        for sample in (before, after):
            assert all(v.shape == (1, 36, 36) and v.dtype == torch.float32 for v in sample.values())
            assert set(torch.unique(sample["valid"]).tolist()) <= {0.0, 1.0}
            assert (sample["mask"][sample["valid"] == 0] == 0).all()
        saw_ignored |= bool((before["valid"][:, :, 3:33] == 0).any())  # ignored inside the image, not padding
        # the crop is the same (drawn before the augmentation); mask and valid moved by one
        # and the same flip/rotation
        pair = torch.stack([before["mask"], before["valid"]])
        moved = [torch.rot90(pair, k, dims=(-2, -1)).flip(-1) if flip else torch.rot90(pair, k, dims=(-2, -1))
                 for k in range(4) for flip in (False, True)]
        assert any(torch.equal(m, torch.stack([after["mask"], after["valid"]])) for m in moved)
    assert saw_ignored
    with pytest.raises(ValueError, match='moves "mask" but not "valid"'):
        LabelledCrops(store, [0], 36, seed=2, ignore_label=IGNORE, transform=train_augmentation(0))


def test_labelled_crops_are_deterministic_per_epoch_and_normalised_like_whole_images(tmp_path, tiny_config):
    for i in range(3):
        write_pair(tmp_path / "data", "s", f"{i}.tiff")
    files = prepare_data(tmp_path / "data", None, tmp_path / "store", tiny_config)
    store = LabelledStore(files.labelled)
    crops = LabelledCrops(store, [0, 1, 2], 24, seed=5, crops_per_image=2)
    assert len(crops) == 6
    first = crops[1]
    assert first["image"].shape == (1, 24, 24) and first["mask"].shape == (1, 24, 24)
    assert torch.equal(LabelledCrops(store, [0, 1, 2], 24, seed=5, crops_per_image=2)[1]["image"], first["image"])
    crops.set_epoch(1)
    assert not torch.equal(crops[1]["image"], first["image"])
    # a crop is z-scored with its whole image's statistics: a full-height crop matches a window
    whole = normalise_image(store.image(1))
    row = LabelledCrops(store, [0, 1, 2], 40, seed=5)[1]["image"][0].numpy()
    matches = [np.allclose(row, whole[:, left:left + 40], atol=1e-5) for left in range(11)]
    assert any(matches)


def test_read_split_and_whole_images(tmp_path, tiny_config):
    for i in range(4):
        write_pair(tmp_path / "data", "s", f"{i}.tiff")
    files = prepare_data(tmp_path / "data", None, tmp_path / "store", tiny_config)
    items = files.split_items("test")
    assert len(items) == 1 and items[0]["image"].shape == (40, 50) and set(np.unique(items[0]["mask"])) == {0, 1}
    test = read_split(files.split, "test")
    assert items[0]["name"] == f"s/{test['path'][0].split('/')[-1]}"
    pd.DataFrame({"id": [0], "path": ["a"], "mask": ["b"], "source": ["s"], "split": ["train"]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(DataFileError, match="'test' split is empty"):
        read_split(tmp_path / "t.csv", "test")
    pd.DataFrame({"path": ["a"], "split": ["test"]}).to_csv(tmp_path / "old.csv", index=False)
    with pytest.raises(DataFileError, match="lacks columns"):
        read_split(tmp_path / "old.csv", "test")


def test_whole_images_mark_ignored_pixels_not_valid(tmp_path, tiny_config):
    for i in range(4):
        write_pair(tmp_path / "data", "s", f"{i}.tiff", ignored=True)
    files = prepare_data(tmp_path / "data", None, tmp_path / "store", tiny_config)
    store, table = LabelledStore(files.labelled), read_split(files.split, "test")
    (item,) = load_whole_images(table, store, ignore_label=IGNORE)
    labels = store.labels(table["id"][0])
    assert item["valid"].dtype == item["mask"].dtype == np.uint8
    assert np.array_equal(item["valid"], labels != IGNORE) and item["valid"][10:25, 15:30].sum() == 0
    assert np.array_equal(item["mask"], (labels > 0) & (labels != IGNORE))
    (unmasked,) = load_whole_images(table, store)
    assert unmasked["valid"].all() and np.array_equal(unmasked["mask"], labels > 0)
    # object metrics see the two instances without their unlabelled band
    assert np.array_equal(item["instances"], np.where(labels == IGNORE, 0, labels))
    assert set(np.unique(unmasked["instances"])) == {0, 1, 2, IGNORE}


def test_binary_masks_count_connected_components_as_instances():
    binary = np.zeros((9, 9), np.uint8)
    binary[1:3, 1:3] = binary[5:8, 5:8] = 1
    binary[4, 4] = 1  # touches the second square diagonally: 8-connected, one object
    instances = ground_truth_instances(binary, np.ones_like(binary))
    assert instances.max() == 2 and instances[4, 4] == instances[6, 6] != instances[1, 1]


def test_binary_and_instance_masks_give_the_same_objects(tmp_path):
    """The same objects saved as 0/255, 0/1 and instance-label TIFF masks (and 0/255 with an
    ignored band) give the same instance counts, instances and object metrics on the
    external-set path: index -> folder images -> score_instances."""
    rng = np.random.default_rng(0)
    objects = {"one.tif": [(4, 14, 4, 20), (30, 44, 30, 40)],
               "two.tif": [(2, 10, 40, 60), (20, 30, 5, 15), (40, 60, 40, 60), (50, 60, 2, 12)],
               "three.tif": [(10, 20, 10, 20)]}
    for name, boxes in objects.items():
        instances = np.zeros((64, 64), np.uint16)
        for k, (top, bottom, left, right) in enumerate(boxes):
            instances[top:bottom, left:right] = 7 * k + 3  # ids need not be consecutive
        image = rng.integers(0, 255, instances.shape, dtype=np.uint8)
        ignored = (instances > 0).astype(np.uint16) * 255
        ignored[62:] = IGNORE  # a band of unlabelled background
        for source, mask in {"binary255": (instances > 0).astype(np.uint8) * 255,
                             "binary01": (instances > 0).astype(np.uint8), "instances": instances,
                             "ignored255": ignored}.items():
            for kind, array in (("images", image), ("masks", mask)):
                (tmp_path / source / kind).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(tmp_path / source / kind / name, array)
    index, excluded = build_index(tmp_path, None, ignore_label=IGNORE)
    assert excluded.empty
    expected = {name: len(boxes) for name, boxes in objects.items()}
    for source, rows in index.groupby("source"):
        assert dict(zip(rows["path"].str.rsplit("/", n=1).str[1], rows["n_instances"])) == expected, source
    items = load_folder_images(index, ignore_label=IGNORE)
    by_source = {source: sorted((item for item in items if item["source"] == source), key=lambda i: i["name"])
                 for source in ("binary255", "binary01", "instances", "ignored255")}
    # a prediction that finds some objects, misses one and adds a false one
    probs = []
    for item in by_source["instances"]:
        prob = (item["instances"] > 0).astype(np.float32) * 0.9
        prob[item["instances"] == item["instances"].max()] = 0.1
        prob[0:3, 0:3] = 0.8
        probs.append(prob)
    scores = {}
    for source, group in by_source.items():
        reference = by_source["instances"]
        for item, twin in zip(group, reference):
            pairs = set(zip(item["instances"].ravel().tolist(), twin["instances"].ravel().tolist()))
            assert len(pairs) == len(np.unique(twin["instances"])), (source, item["name"])  # same partition
        meter = score_instances(group, probs, threshold=0.5, min_object_size=0)
        scores[source] = (meter.compute(), meter.per_image().drop(columns="name").to_dict("records"))
    assert scores["binary255"] == scores["binary01"] == scores["instances"] == scores["ignored255"]
    assert scores["instances"][0]["object_f1"] < 1  # the prediction's errors are counted


def test_external_folder_images_equal_the_store_images(tmp_path, shared_data, tiny_config):
    """An external set read from its files gives the items a packed store gives."""
    index, _ = build_index(shared_data / "cem_mitolab", None)
    index = index[index["source"] == "cem_examples"].reset_index(drop=True)
    direct = load_folder_images(index)
    files = prepare_data(shared_data / "cem_mitolab", None, tmp_path / "store", tiny_config)
    store, split = LabelledStore(files.labelled), pd.read_csv(files.split)
    packed = load_whole_images(split[split["source"] == "cem_examples"], store)
    by_name = {item["name"]: item for item in packed}
    assert len(direct) == 5 and {item["image"].shape for item in direct} >= {(138, 224), (224, 224)}
    for item in direct:
        twin = by_name[item["name"]]
        for key in ("image", "mask", "valid", "instances"):
            assert np.array_equal(item[key], twin[key]), (item["name"], key)
