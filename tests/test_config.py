import copy

import pytest

from emkt.config import ConfigError, load_config, validate_config

from conftest import REPO, merged


def test_paper_and_demo_configs_are_valid():
    paper = load_config(REPO / "config.yaml")
    assert paper["seeds"] == [0, 1, 2, 3, 4]
    assert paper["student"]["hidden_size"] == 768 and paper["student"]["num_layers"] == 12
    assert paper["teacher"]["channels"] == [16, 32, 64, 128]
    assert (paper["train"]["batch_size"], paper["train"]["lr_step_epochs"], paper["train"]["lr_gamma"]) == (16, 50, 0.1)
    assert paper["input_size"] == 224 and paper["student_baseline"]["epochs"] == 300
    assert paper["data"]["source"] == "empiar" and paper["data"]["max_excluded_fraction"] == 0.01
    assert paper["data"]["ignore_label"] is None
    assert validate_config(merged(paper, {"data": {"ignore_label": 65535}}))["data"]["ignore_label"] == 65535
    assert paper["data"]["empiar"]["labelled"]["file"] == "data/cem_mitolab.zip"
    demo = load_config(REPO / "config.yaml", REPO / "demo.yaml")
    assert demo["data"]["source"] == "synthetic" and len(demo["seeds"]) == 2


@pytest.mark.parametrize("layers", [
    ["studies/demo-scale.yaml", "studies/expansion.yaml"],
    ["studies/demo-scale.yaml", "studies/expansion.yaml", "studies/em-mito-mini.yaml"],
    ["studies/authors-final.yaml"],
    ["studies/real-em.yaml", "studies/real-em-unet.yaml"],
    ["studies/real-em.yaml", "studies/real-em-vit.yaml"],
    ["studies/real-em.yaml", "studies/real-em-unet.yaml", "studies/real-em-long.yaml"],
    ["studies/real-em.yaml", "studies/real-em-unet.yaml", "studies/real-em-trained.yaml"],
    ["studies/real-em.yaml", "studies/real-em-unet.yaml", "studies/real-em-trained.yaml",
     "studies/real-em-trained-pool.yaml"],
])
def test_study_configs_are_valid_as_the_makefile_layers_them(layers):
    config = load_config(REPO / "config.yaml", *(REPO / layer for layer in layers))
    if "studies/real-em.yaml" in layers:  # the real-EM study: every pool condition beside the baseline
        assert config["conditions"] in (["baseline", "expansion", "pseudo_label", "mean_teacher"], ["baseline"],
                                        ["baseline", "pseudo_label", "mean_teacher"])
        assert config["split"]["group_by"] == "block" and config["split"]["block_gap"] == 1


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["split"].update(train=0.9), "must sum to 1"),
        (lambda c: c["data"].update(source="ftp"), "'data.source' = 'ftp' is not allowed; allowed values: ['empiar', 'folder', 'synthetic']"),
        (lambda c: c["train"].update(optimizer="lbfgs"), "'train.optimizer'"),
        (lambda c: c["train"].update(lr_schedule=3), "unknown config key(s) ['lr_schedule'] under 'train'"),
        (lambda c: c.update(sedes=[1]), "unknown config key(s) ['sedes'] under the top level"),
        (lambda c: c["train"].update(lr=-1.0), "'train.lr' = -1.0"),
        (lambda c: c["student"].update(patch_size=8), "perfect square"),
        (lambda c: c["student"].update(patch_size=9), "must divide 'input_size'"),
        (lambda c: c["teacher"].update(strides=[2, 2]), "same length"),
        (lambda c: c.update(seeds=[1, 1]), "duplicates"),
        (lambda c: c["data"].update(source="folder", labelled_dir=None), "'data.labelled_dir' must be set"),
        (lambda c: c["teacher_pretrain"]["corruption"].update(p_bogus=0.5), "p_bogus"),
        (lambda c: c["data"].update(source="folder", labelled_dir="x"), "'data.unlabelled_dir' must be set"),
        (lambda c: c["split"].update(group_by="volume"), "'split.group_by' = 'volume' is not allowed; allowed values: "
         "['none', 'source', 'block']"),
        (lambda c: c["split"].update(block_size=0), "'split.block_size' = 0"),
        (lambda c: c["split"].update(block_gap=-1), "'split.block_gap' = -1"),
        (lambda c: c["store"].update(pool_tile=128), "'store.pool_tile' = 128 must be at least 'input_size' = 224"),
        (lambda c: c["data"]["empiar"]["labelled"].update(checksum="crc:00"), "'data.empiar.labelled.checksum'"),
        (lambda c: c["data"]["empiar"].update(url_base="ftp.ebi.ac.uk"), "'data.empiar.url_base'"),
        (lambda c: c["data"].update(max_excluded_fraction=1.5), "'data.max_excluded_fraction' = 1.5"),
        (lambda c: c["data"].update(ignore_label=0), "'data.ignore_label' = 0"),
        (lambda c: c["data"].update(ignore_label="x"), "'data.ignore_label' = 'x'"),
        (lambda c: c["data"].update(ignore_label=65536), "'data.ignore_label' = 65536"),
        (lambda c: c["evaluate"].update(min_object_size=-1), "'evaluate.min_object_size' = -1"),
        (lambda c: c.update(external_test=[{"name": "a b", "dir": "x"}]), "'external_test.0.name' = 'a b'"),
        (lambda c: c.update(external_test=[{"name": "test", "dir": "x"}]), "names a set 'test'"),
        (lambda c: c.update(external_test=[{"name": "val", "dir": "x"}]), "names a set 'val'"),
        (lambda c: c.update(external_test=[{"name": "a", "dir": "x"}, {"name": "a", "dir": "y"}]),
         "'external_test' uses the name(s) ['a'] more than once"),
        (lambda c: c.update(external_test=[{"name": "v", "image": "v.tif"}]),
         "'external_test.0' (v) has ['image'] of dir, image, labels; give either dir"),
        (lambda c: c.update(external_test=[{"name": "v", "dir": "x", "image": "v.tif", "labels": "l.tif"}]),
         "'external_test.0' (v) has ['dir', 'image', 'labels'] of dir, image, labels"),
        (lambda c: c.update(external_test=[{"name": "v"}]), "'external_test.0' (v) has none of dir, image, labels"),
        (lambda c: c.update(predict=[{"name": "a", "dir": "x", "networks": ["unet"], "link_3d": "yes"}]),
         "'predict.0.link_3d' = 'yes'"),
        (lambda c: c.update(predict=[{"name": "a", "dir": "x", "networks": ["expansion"]}]),
         "'predict.0.networks' names ['expansion'], which the listed conditions do not train; allowed: ['baseline', "
         "'joint', 'expanded_anchored', 'ensemble_distilled'"),
        (lambda c: c["expand"].update(variants=["greedy"]), "'expand.variants.0' = 'greedy' is not allowed; allowed "
         "values: ['faithful', 'anchored', 'error_map', 'alternating', 'committee']"),
        (lambda c: c["expand"].update(consistency="l2"), "'expand.consistency' = 'l2' is not allowed"),
        (lambda c: c["expand"].update(lr_scale=0), "'expand.lr_scale' = 0"),
        (lambda c: c["expand"]["committee"].update(reduce="median"), "'expand.committee.reduce' = 'median'"),
        (lambda c: c["error_map_teacher"].update(strides=[2, 2, 2, 2]), "'error_map_teacher.strides' needs "
         "len(channels) - 1 = 3 entries"),
        (lambda c: c["expand"].update(variants=["committee"], committee={"teachers": ["critic"], "seeds": 6,
                                                                          "reduce": "max"}),
         "'expand.committee.seeds' = 6 is more than the 5 trained seeds"),
        (lambda c: c.update(predict=[{"name": "a", "dir": "x", "networks": ["unet"], "seeds": [7]}]),
         "'predict.0.seeds' names [7]"),
        (lambda c: c.update(predict=[{"name": "a", "dir": "x", "networks": ["unet"], "probability": "float16"}]),
         "'predict.0.probability' = 'float16' is not allowed; allowed values: ['float32', 'uint8']"),
        (lambda c: c.update(predict=[{"name": "a", "dir": "x", "networks": ["unet"], "teacher": "joint_error_map"}]),
         "'predict.0.teacher' is 'joint_error_map', not a teacher the listed conditions train; allowed: "
         "['pretrained', 'joint']"),
        (lambda c: c["student"].update(type="resnet"), "'student.type' = 'resnet' is not allowed; allowed values: "
         "['vitautoenc', 'swinunetr', 'unet']"),
        (lambda c: (c["student"].update(type="swinunetr"), c.update(input_size=208)),
         "'input_size' = 208 must be a multiple of 32, at least 64, for 'student.type' swinunetr"),
        (lambda c: (c["student"].update(type="swinunetr"), c["student"]["swinunetr"].update(feature_size=16)),
         "'student.swinunetr.feature_size' = 16 must be a multiple of 12"),
        (lambda c: (c["student"].update(type="unet"), c["student"]["unet"].update(depth=6), c.update(input_size=48)),
         "'input_size' = 48 must be divisible by 32, the downsampling of 'student.unet'"),
        (lambda c: (c["teacher"].update(type="vit"), c["teacher"]["vit"].update(patch_size=15)),
         "'teacher.vit.patch_size' = 15 must divide 'input_size' = 224"),
        (lambda c: c["teacher"].update(type="unet"), "'teacher.type' = 'unet' is not allowed; allowed values: "
         "['critic', 'vit']"),
        (lambda c: c["mean_teacher"].update(ema_decay=1.0), "'mean_teacher.ema_decay' = 1.0"),
        (lambda c: c["mean_teacher"].update(target="probability"), "'mean_teacher.target' = 'probability' is not "
         "allowed; allowed values: ['hard', 'soft']"),
    ],
)
def test_bad_values_name_the_key(paper_config, mutate, expected):
    config = copy.deepcopy(paper_config)
    mutate(config)
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    assert expected in str(error.value)


def test_schema_ships_inside_the_package():
    """A non-editable install validates configs too: the schema is package data, not a file in workflow/."""
    import importlib.resources
    import tomllib

    shipped = importlib.resources.files("emkt") / "schemas" / "config.schema.yaml"
    assert shipped.is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "schemas/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["emkt"]
