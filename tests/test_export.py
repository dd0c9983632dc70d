"""bioimage.io model packages (emkt.export, ``python -m emkt export``): a tiny UNet student and
a tiny ViTAutoEnc student, saved as the workflow saves them, are exported and must pass
bioimageio.core's own test (both weight formats reproduce the test output; the declared input
sizes run). Offline: bioimage.io's cache is a temporary folder and its link checks give up
quickly (they are warnings, never failures)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml

from emkt.checkpoints import SEGMENTATION_KINDS, load_model, save_model
from emkt.cli import main
from emkt.config import ConfigError, validate_config
from emkt.data import normalise_image
from emkt.export import (ARCHITECTURE_FILE, FILES, PackageInfo, export_model, sample_image, tables_markdown,
                         validate_package)
from emkt.models import ProbabilityNetwork, build_segmenter, build_student, build_teacher, size_multiple
from emkt.synthetic import render_em_image, source_style

TINY_UNET = {"type": "unet", "width": 4, "depth": 3}
TINY_VIT = {"type": "vitautoenc", "patch_size": 4, "hidden_size": 16, "mlp_dim": 32, "num_layers": 1,
            "num_heads": 2, "deconv_chns": 8, "dropout_rate": 0.0}
SIZE = 32


# tiny models: one torch thread (conftest.one_thread_in_module)
pytestmark = pytest.mark.usefixtures("one_thread_in_module")


@pytest.fixture
def offline_bioimageio(tmp_path, monkeypatch):
    """bioimage.io's settings for a test: cache in the test's folder, link checks that give up
    after 2 s (a machine without network fails them at once; they only warn)."""
    from bioimageio.spec._internal._settings import settings

    monkeypatch.setattr(settings, "cache_path", tmp_path / "bioimageio-cache")
    monkeypatch.setattr(settings, "http_timeout", 2.0)


def tiny_checkpoint(folder: Path, arch: dict) -> Path:
    torch.manual_seed(0)
    path = folder / f"student_{arch['type']}_0.pth"
    save_model(path, build_student(arch, SIZE), "student", arch, SIZE, extra={"kept_epoch": 3})
    return path


def assert_passed(summary) -> None:
    """The test's status, with the failed checks' messages when it did not pass."""
    failed = [f"{d.name}: {[e.msg for e in d.errors]}" for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", "\n".join(failed)


def emkt_probability(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """What emkt's own code gives for an input-size image: z-score, network, sigmoid."""
    model, _ = load_model(checkpoint, SEGMENTATION_KINDS)
    with torch.no_grad():
        return torch.sigmoid(model.eval()(torch.from_numpy(normalise_image(image))[None, None]))[0, 0].numpy()


@pytest.mark.slow
def test_a_unet_student_exports_to_a_package_bioimageio_core_passes(tmp_path, offline_bioimageio):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ParameterizedSize

    checkpoint = tiny_checkpoint(tmp_path, TINY_UNET)
    image, _ = render_em_image(np.random.default_rng(5), (40, 48), source_style(1))
    tifffile.imwrite(tmp_path / "sample.tiff", image)
    table = tmp_path / "student_unet_0.csv"
    pd.DataFrame({"dataset": ["test", "val"], "model": "student", "condition": "unet", "seed": 0, "metric": "iou",
                  "value": [0.61, 0.65]}).to_csv(table, index=False)
    result = export_model(checkpoint, tmp_path / "package", PackageInfo(authors=["A. Tester"]),
                          sample=tmp_path / "sample.tiff", tables=[table])
    assert result.test_status == "passed" and result.torchscript == "scripted"  # export refuses anything else
    package = tmp_path / "package"
    assert {p.name for p in package.iterdir()} == {*FILES.values(), ARCHITECTURE_FILE, "rdf.yaml"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".package")], "staging folders left behind"

    descr = load_description(package / "rdf.yaml")
    raw, = descr.inputs
    assert [str(a.id) for a in raw.axes] == ["batch", "channel", "y", "x"]
    assert raw.axes[2].size == ParameterizedSize(min=SIZE, step=size_multiple("student", TINY_UNET))
    assert [p.id for p in raw.preprocessing] == ["ensure_dtype", "zero_mean_unit_variance", "ensure_dtype"]
    assert [str(a) for a in raw.preprocessing[1].kwargs.axes] == ["channel", "y", "x"]  # per image
    assert descr.outputs[0].data.range == (0.0, 1.0) and descr.weights.torchscript is not None
    assert descr.weights.pytorch_state_dict.architecture.kwargs == {"kind": "student", "arch": TINY_UNET,
                                                                    "input_size": SIZE}
    assert {c.text.split(":")[0] for c in descr.cite} >= {"MONAI"} and [a.name for a in descr.authors] == ["A. Tester"]
    # the test input is one of the sample's evenly spaced crops (sample_image; its choice is
    # tested below) and the test output emkt's own prediction for it
    test_input = np.load(package / FILES["test_input"])[0, 0]
    crops = {(top, left): image[top:top + SIZE, left:left + SIZE] for top in range(image.shape[0] - SIZE + 1)
             for left in range(image.shape[1] - SIZE + 1)}
    (top, left), = [corner for corner, crop in crops.items() if np.array_equal(crop, test_input)]
    crop = crops[top, left]
    assert f"crop at row {top}, column {left} of `sample.tiff`" in (package / FILES["documentation"]).read_text()
    np.testing.assert_allclose(np.load(package / FILES["test_output"])[0, 0], emkt_probability(checkpoint, crop),
                               atol=1e-5)
    readme = (package / FILES["documentation"]).read_text()
    assert "## Validation" in readme and "| iou | 0.61 | 0.65 |" in readme and "epoch 3" in readme

    # the test fails a package that no longer reproduces its test output
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"] = {"source": FILES["test_input"],
                                        "sha256": hashlib.sha256((package / FILES["test_input"]).read_bytes()).hexdigest()}
    (package / "broken.yaml").write_text(yaml.safe_dump(rdf))
    broken = validate_package(package / "broken.yaml", weight_format="torchscript")
    assert broken.status == "valid-format"  # the format holds, the test does not: not "passed"
    assert [d.status for d in broken.details if d.name.startswith("Reproduce test outputs")] == ["failed"]


@pytest.mark.slow
def test_a_vitautoenc_student_exports_with_its_fixed_input_size(tmp_path, offline_bioimageio, capsys):
    checkpoint = tiny_checkpoint(tmp_path, TINY_VIT)
    assert main(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "vit"), "--zip", "--authors",
                 "A. Tester", "--license", "CC-BY-4.0", "--cite", "My method", "https://example.com/method",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "test passed" in out and "vit.bioimageio.zip" in out and (tmp_path / "vit" / "vit.bioimageio.zip").is_file()
    from bioimageio.spec import load_description

    descr = load_description(tmp_path / "vit" / "rdf.yaml")
    assert [a.size for a in descr.inputs[0].axes[2:]] == [SIZE, SIZE]  # position embeddings: one size only
    assert str(descr.license) == "CC-BY-4.0" and descr.cite[-1].text == "My method"
    assert "TorchScript (traced)" in (tmp_path / "vit" / FILES["documentation"]).read_text()


def test_teachers_and_other_folders_are_refused_in_one_line(tmp_path, capsys):
    arch = {"type": "error_map", "channels": [4, 8], "strides": [2], "num_res_units": 1, "dropout": 0.0}
    save_model(tmp_path / "teacher.pth", build_teacher(arch, SIZE), "teacher", arch, SIZE)
    assert main(["export", "--checkpoint", str(tmp_path / "teacher.pth"), "--output", str(tmp_path / "out"),
                 "--threads", "1"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"emkt export: error: {tmp_path / 'teacher.pth'}: ") and error.endswith("found a teacher")
    assert "\n" not in error and not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    assert main(["export", "--checkpoint", str(tmp_path / "teacher.pth"), "--output", str(tmp_path / "mine")]) == 2
    assert "is not a bioimage.io package" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_the_packaged_network_is_the_checkpoint_with_its_sigmoid(tmp_path):
    arch = {**TINY_UNET, "epochs": 1}
    torch.manual_seed(0)
    save_model(tmp_path / "seg.pth", build_segmenter(arch, SIZE), "segmenter", arch, SIZE)
    model, checkpoint = load_model(tmp_path / "seg.pth", SEGMENTATION_KINDS)
    packaged = ProbabilityNetwork(checkpoint["kind"], checkpoint["arch"], checkpoint["input_size"])
    packaged.load_state_dict({f"network.{k}": v for k, v in checkpoint["state_dict"].items()})
    image = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        # numpy's check: torch.testing imports torch.distributed.tensor (seconds)
        np.testing.assert_allclose(packaged.eval()(image).numpy(), torch.sigmoid(model.eval()(image)).numpy(), rtol=1e-6)


def test_input_sizes_follow_each_networks_downsampling():
    assert size_multiple("student", TINY_VIT) is None
    assert size_multiple("student", TINY_UNET) == 4
    assert size_multiple("student", {"type": "swinunetr", "feature_size": 12}) == 32
    assert size_multiple("segmenter", {"type": "unet", "width": 8}) == 16  # depth 5 by default
    assert size_multiple("segmenter", {"type": "basicunet", "width": 8}) == 16
    assert size_multiple("segmenter", {"type": "segresnet", "width": 8, "depth": 4}) == 8
    members = [{"kind": "segmenter", "arch": {"type": "unet", "width": 4, "depth": 3}},
               {"kind": "segmenter", "arch": {"type": "basicunet", "width": 4}}]
    assert size_multiple("ensemble", {"members": members}) == 16
    assert size_multiple("ensemble", {"members": [*members, {"kind": "student", "arch": TINY_VIT}]}) is None


def test_test_tables_become_one_table_of_metrics_by_dataset(tmp_path):
    long = pd.DataFrame({"dataset": ["test", "test", "mito"], "model": "student", "condition": "baseline", "seed": 1,
                         "metric": ["iou", "dice", "iou"], "value": [0.5, 0.66666, 0.25]})
    long.iloc[:2].to_csv(tmp_path / "test.csv", index=False)
    long.iloc[2:].to_csv(tmp_path / "mito.csv", index=False)
    (tmp_path / "notes.md").write_text("| a |\n|---|\n| 1 |\n")
    table, notes = tables_markdown([tmp_path / "test.csv", tmp_path / "mito.csv", tmp_path / "notes.md"])
    assert "| metric | test | mito |" in table and "| iou | 0.5 | 0.25 |" in table and "| dice | 0.6667 | – |" in table
    assert "seed 1" in table and notes.endswith("| 1 |")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv"):
        tables_markdown([tmp_path / "bad.csv"])


def test_export_config_names_trained_networks_and_seeds(paper_config):
    config = copy.deepcopy(paper_config)
    config["export"].update(networks=["expanded_anchored", "unet"], seeds=[0], authors=["A. Tester"],
                            cite=[{"text": "My paper", "doi": "10.1234/abcd"}])
    validate_config(config)
    config["export"].update(networks=["critic"], seeds=[7])
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert "'export.networks' names ['critic']" in str(error.value) and "'export.seeds' names [7]" in str(error.value)
    config["export"].update(networks=[], seeds=None, cite=[{"text": "no link"}])
    with pytest.raises(ConfigError, match=r"export\.cite\.0. needs exactly one of .doi. and .url."):
        validate_config(config)


def test_the_sample_crop_is_where_the_network_finds_foreground(tmp_path):
    # a flat image with one bright square near the bottom right: the identity "network" (its
    # z-scored input as the probability) finds foreground only in crops holding the square
    image = np.full((100, 130), 60, np.uint8)
    image[80:95, 110:125] = 200
    tifffile.imwrite(tmp_path / "sample.tif", image)
    crop, where = sample_image(tmp_path / "sample.tif", 32, torch.nn.Identity())
    assert crop.shape == (32, 32) and crop.max() == 200
    assert "row 68, column 98" in where
    central, where = sample_image(tmp_path / "sample.tif", 32)
    assert central.max() == 60 and "central" in where
