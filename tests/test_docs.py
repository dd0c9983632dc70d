"""The documentation on its own, without a workflow run (seconds): the generated configuration
reference is current, links resolve, commands name real Makefile targets, config examples
pass the config check, and the text that the workflow tests read against a demo run
(results/ paths, the touch example) is where they look for it."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import merged
from docs_text import (CONFIG_REFERENCE, DOCS, NOT_DEMO_PATHS, README, REPO, RESULTS_DOCS, TOUCH_EXAMPLE_DOC,
                       all_docs, anchors, demo_docs, demo_result_paths, make_targets, makefile_targets,
                       relative_links, result_paths, slug, touch_example, without_code)
from emkt.config import load_schema, validate_config
from emkt.config_reference import REGENERATE, main, render_config_reference


def test_configuration_reference_is_generated_from_the_schema():
    expected = render_config_reference(load_schema(), yaml.safe_load((REPO / "config.yaml").read_text()))
    assert CONFIG_REFERENCE.read_text() == expected, \
        f"docs/configuration.md is out of date; regenerate it in the repository root: {REGENERATE}"


def test_configuration_reference_command_prints_it(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["--defaults", "config.yaml"]) == 0
    assert capsys.readouterr().out == CONFIG_REFERENCE.read_text()


def schema_key_names(schema: dict) -> list[str]:
    """Every key of the schema as the reference names it (a.b, a.<name>.c, a[].b); written
    apart from emkt.config_reference so that a key it skipped would show here."""
    def resolve(node: dict) -> dict:
        while "$ref" in node:
            target = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def walk(prefix: str, node: dict) -> list[str]:
        node = resolve(node)
        names = []
        for key, child in node.get("properties", {}).items():
            name = f"{prefix}.{key}" if prefix else key
            names += [name, *walk(name, child)]
        if isinstance(node.get("additionalProperties"), dict):
            names += [f"{prefix}.<name>", *walk(f"{prefix}.<name>", node["additionalProperties"])]
        if isinstance(node.get("items"), dict):
            names += walk(f"{prefix}[]", node["items"])
        return names

    return walk("", schema)


def test_configuration_reference_has_a_row_for_every_schema_key():
    schema = load_schema()
    rows = {line.split("|")[1].strip().strip("`") for line in CONFIG_REFERENCE.read_text().splitlines()
            if line.startswith("| `")}
    names = schema_key_names(schema)
    assert {"seeds", "data.empiar.labelled.checksum", "segmenters.<name>.depth", "predict[].memory_mb",
            "teacher_pretrain.corruption.p_blur", "resources.light.threads"} <= set(names)
    assert sorted(set(names) - rows) == [], "keys missing from docs/configuration.md"
    text = CONFIG_REFERENCE.read_text()
    for key in schema["properties"]:
        assert f"## `{key}`" in text


def test_configuration_reference_renders_types_ranges_and_values():
    schema = {
        "type": "object", "required": ["a", "s"],
        "$defs": {"count": {"type": "integer", "minimum": 1}},
        "properties": {
            "a": {"$ref": "#/$defs/count", "description": "A count of <things> | more."},
            "s": {"type": "object", "required": ["k"], "description": "A section.",
                  "properties": {"k": {"enum": ["auto", "off"], "description": "Mode."},
                                 "p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1}}},
        },
    }
    text = render_config_reference(schema, {"a": 3, "s": {"k": "auto"}})
    assert "| `a` | integer ≥ 1 | `3` | A count of &lt;things&gt; \\| more. |" in text
    assert "| `s` | mapping | – | A section. |" in text
    assert '| `s.k` | one of `auto`, `"off"` | `auto` | Mode. |' in text
    assert "| `s.p` | number in (0, 1] or null (optional) | – | – |" in text


@pytest.mark.parametrize("heading, anchor", [
    ("The comparison protocol: choose on validation, report on test",
     "the-comparison-protocol-choose-on-validation-report-on-test"),
    ("Speed benchmarks (measured)", "speed-benchmarks-measured"),
    ("`error_map_teacher`", "error_map_teacher"),
    ("Training speed, several GPUs", "training-speed-several-gpus"),
])
def test_slug_is_githubs_anchor(heading, anchor):
    assert slug(heading) == anchor


def test_every_relative_link_in_the_docs_points_at_a_file_and_heading():
    broken = []
    for page in all_docs():
        text = page.read_text()
        for target in relative_links(text):
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_link_check_sees_links_and_not_code():
    text = "[a](x.md) ![b](y.png) [c](https://e.org) `[d](z.md)`\n```\n[e](w.md)\n# not a heading\n```\n# Real\n"
    assert relative_links(text) == ["x.md", "y.png"]
    assert anchors(text) == {"real"}
    assert "[e](w.md)" not in without_code(text)


def test_readme_is_a_front_page_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 120
    assert {"demo", "test"} <= make_targets(text)  # .ci/run runs `make test`, the README's test command
    for page in ["pipeline.md", "data.md", "using-networks.md", "configuration.md", "scale.md", "development.md"]:
        assert f"(docs/{page})" in text
    for study in sorted(RESULTS_DOCS.glob("*.md")):
        assert f"(docs/results/{study.name})" in text, f"README does not link {study.name}"


def test_every_make_target_the_docs_show_is_in_the_makefile():
    targets = makefile_targets()
    assert {"demo", "test", "lint", "study", "benchmark", "benchmark-speed"} <= targets
    unknown = {f"{page.relative_to(REPO)}: make {target}" for page in all_docs()
               for target in make_targets(page.read_text()) - targets}
    assert not unknown


def test_results_docs_are_dated():
    studies = sorted(RESULTS_DOCS.glob("*.md"))
    assert studies
    for study in studies:
        date = study.name[:10]
        assert study.name[10] == "-" and date[4] == date[7] == "-" and date.replace("-", "").isdigit()


def test_the_docs_the_demo_is_checked_against():
    # what tests/test_workflow.py reads against a demo run, read here on the real text
    pages = {page.relative_to(REPO).as_posix() for page in demo_docs()}
    assert {"README.md", "docs/pipeline.md", "docs/data.md", "docs/scale.md", "docs/using-networks.md",
            "docs/development.md"} <= pages
    assert not any(page.startswith("docs/results/") for page in pages) and "docs/configuration.md" not in pages
    shown = demo_result_paths()
    assert {"results/models/student_expanded_anchored_0.pth", "results/tables/headline.md",
            "results/tables/selection.md", "results/figures/metrics.png", "results/figures/datasets.png",
            "results/data/pool_excluded.csv", "results/store/pool.json"} <= set(shown)
    # every exception is still shown somewhere; no path is a link to docs/results/
    assert set(NOT_DEMO_PATHS) <= set(shown)
    assert not any(path.startswith("results/20") for path in shown)
    # the README's first screen shows the checkpoint `emkt predict` uses, which the demo writes
    first_screen = "\n".join(README.read_text().splitlines()[:80])
    assert "results/models/student_expanded_anchored_0.pth" in result_paths(first_screen)


def test_result_paths_expand_alternatives_and_skip_patterns_and_links():
    text = ("`results/tables/summary.{csv,md}` `results/eval/{seed}.csv` `results/store/pool/shard-NNNNN.npy` "
            "[the study](results/2026-12-01-expansion-study.md) docs/results/x.md `results/models/`.")
    assert result_paths(text) == {"results/tables/summary.csv", "results/tables/summary.md", "results/models/"}


def test_touch_example_is_in_the_pipeline_doc():
    touched, rules = touch_example()
    assert TOUCH_EXAMPLE_DOC == DOCS / "pipeline.md"
    assert touched == "results/models/student_expanded_anchored_0.pth"
    assert rules == ["evaluate_networks", "evaluate_teachers"]
    assert "## Regenerating results" in TOUCH_EXAMPLE_DOC.read_text()
    with pytest.raises(ValueError, match="no touch example"):
        touch_example("nothing here")



def test_every_yaml_example_of_the_docs_is_a_valid_config_override():
    """The config snippets (```yaml blocks) of README.md and docs/, each on top of config.yaml
    as a --configfile would put it, pass the config check."""

    paper = yaml.safe_load((REPO / "config.yaml").read_text())
    examples = [(page, block) for page in all_docs()
                for block in re.findall(r"^```yaml\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL)]
    assert any("source: folder" in block for page, block in examples if page == README)
    for page, block in examples:
        validate_config(merged(paper, yaml.safe_load(block)))
