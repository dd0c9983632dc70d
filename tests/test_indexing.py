"""Every file accounted for: plant each kind of bad file in a copy of the real-EM fixture."""

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from emkt.indexing import INDEX_COLUMNS, REASONS, TooManyExcluded, build_index, check_exclusions


@pytest.fixture
def planted(shared_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shared_data, root)
    lab = root / "cem_mitolab"
    good_image = lab / "cem_examples" / "images" / "mitochondria1.tiff"
    good_mask = lab / "cem_examples" / "masks" / "mitochondria1.tiff"
    bad = lab / "planted"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()

    def pair(name, image_bytes=None, image=None, mask=None):
        if image_bytes is not None:
            (bad / "images" / name).write_bytes(image_bytes)
        elif image is not None:
            tifffile.imwrite(bad / "images" / name, image)
        if mask is not None:
            tifffile.imwrite(bad / "masks" / name, mask)

    mask = tifffile.imread(good_mask)
    image = tifffile.imread(good_image)
    data = good_image.read_bytes()
    pair("junk.tiff", image_bytes=b"this is not a TIFF file" * 20, mask=mask)
    pair("truncated.tiff", image_bytes=data[: len(data) // 2], mask=mask)
    pair("empty.tiff", image_bytes=b"", mask=mask)
    pair("nomask.tiff", image=image)
    tifffile.imwrite(bad / "masks" / "orphan.tiff", mask)
    pair("shape.tiff", image=image, mask=mask[:-1])
    tifffile.imwrite(bad / "images" / "stack.tiff", np.stack([image, image, image]), photometric="minisblack")
    tifffile.imwrite(bad / "masks" / "stack.tiff", mask)
    pair("badmask.tiff", image=image, mask=np.stack([mask, mask]))
    pair("rgb.tiff", image=np.repeat(image[..., None], 3, axis=-1), mask=mask)
    pair("wide.tiff", image=image.astype(np.uint16) * 200, mask=mask)
    pool = root / "unlabelled" / "cem_examples"
    first_pool = sorted(pool.iterdir())[0]
    (pool / "cut.tiff").write_bytes(first_pool.read_bytes()[:500])
    (pool / "zero.tiff").write_bytes(b"")
    (pool / "notes.txt").write_text("not an image: ignored")
    return root


def test_each_bad_file_is_excluded_with_its_reason(planted):
    index, excluded = build_index(planted / "cem_mitolab", planted / "unlabelled", processes=2)
    reasons = {(p.split("/")[-2] if p.endswith("orphan.tiff") else "") + p.split("/")[-1]: r
               for p, r in zip(excluded["path"], excluded["reason"])}
    assert reasons == {
        "junk.tiff": "unreadable", "truncated.tiff": "unreadable", "empty.tiff": "empty_file",
        "nomask.tiff": "missing_mask", "masksorphan.tiff": "mask_without_image", "shape.tiff": "shape_mismatch",
        "stack.tiff": "not_2d", "badmask.tiff": "not_2d", "cut.tiff": "unreadable", "zero.tiff": "empty_file",
    }
    assert set(excluded["reason"]) <= set(REASONS)
    assert excluded.loc[excluded["path"].str.endswith("badmask.tiff"), "detail"].item().startswith("mask of")
    assert list(index.columns) == INDEX_COLUMNS and index["id"].tolist() == list(range(len(index)))
    labelled = index[index["set"] == "labelled"].set_index(index[index["set"] == "labelled"]["path"].str.split("/").str[-1])
    assert len(labelled) == 26 + 2 and len(index) - len(labelled) == 30
    assert labelled.loc["rgb.tiff", "conversion"] == "rgb->grey" and labelled.loc["rgb.tiff", "status"] == "converted"
    assert labelled.loc["wide.tiff", "conversion"] == "uint16->uint8 min-max"
    assert labelled.loc["wide.tiff", "dtype"] == "uint16"
    ok = labelled.loc["mitochondria1.tiff"]
    assert ok["status"] == "ok" and ok["dtype"] == "uint8" and (ok["height"], ok["width"]) == image_shape(planted)
    assert ok["n_instances"] == len(np.unique(mask_of(planted))) - 1
    assert ok["foreground_fraction"] == pytest.approx((mask_of(planted) > 0).mean())
    assert index.loc[index["set"] == "unlabelled", "foreground_fraction"].isna().all()


def image_shape(root):
    return tifffile.imread(root / "cem_mitolab/cem_examples/images/mitochondria1.tiff").shape


def mask_of(root):
    return tifffile.imread(root / "cem_mitolab/cem_examples/masks/mitochondria1.tiff")


def test_too_many_exclusions_fail_naming_the_first_files(planted, tmp_path):
    index, excluded = build_index(planted / "cem_mitolab", planted / "unlabelled")
    with pytest.raises(TooManyExcluded) as error:
        check_exclusions(index, excluded, 0.01, tmp_path / "excluded.csv")
    text = str(error.value)
    assert "data.max_excluded_fraction" in text and "labelled: 8 of 36 files (22.2%)" in text
    assert "unlabelled: 2 of 32 files (6.2%)" in text and "junk.tiff: unreadable" in text
    assert str(tmp_path / "excluded.csv") in text
    summary = check_exclusions(index, excluded, 0.25, tmp_path / "excluded.csv")
    assert summary.loc["labelled", "excluded"] == 8 and summary.loc["unlabelled", "usable"] == 30


def test_clean_fixture_has_no_exclusions(shared_data):
    index, excluded = build_index(shared_data / "cem_mitolab", shared_data / "unlabelled")
    assert excluded.empty and len(index) == 56
    summary = check_exclusions(index, excluded, 0.0, "unused.csv")
    assert summary["excluded"].sum() == 0
    assert isinstance(index, pd.DataFrame) and (index["status"] == "ok").all()


def test_ignored_pixels_are_neither_foreground_nor_an_instance(tmp_path):
    for name, labels in {"a.tiff": [[0, 1, 1, 65535], [2, 0, 65535, 65535]],
                         "b.tiff": [[65535, 65535], [65535, 65535]]}.items():
        labels = np.array(labels, dtype=np.uint16)
        for kind, array in (("images", np.zeros(labels.shape, np.uint8)), ("masks", labels)):
            (tmp_path / "s" / kind).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / "s" / kind / name, array)
    index, excluded = build_index(tmp_path, None, processes=2, ignore_label=65535)
    assert excluded.empty
    a, b = (index.set_index(index["path"].str.split("/").str[-1]).loc[name] for name in ("a.tiff", "b.tiff"))
    assert a["foreground_fraction"] == pytest.approx(3 / 5) and a["n_instances"] == 2
    assert np.isnan(b["foreground_fraction"]) and b["n_instances"] == 0  # nothing labelled
    plain = build_index(tmp_path, None)[0].set_index(index["path"].str.split("/").str[-1])
    assert plain.loc["a.tiff", "foreground_fraction"] == pytest.approx(6 / 8)
    assert plain.loc["a.tiff", "n_instances"] == 3
