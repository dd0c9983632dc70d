"""The conda envs pin the versions the project declares, and every rule runs in one of them."""

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO

# conda-forge names of packages whose PyPI name differs
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
NOT_PINNED = {"python", "pip"}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier  # every requirement is pinned exactly
            assert spec.operator == "==", line
            pins[normal(requirement.name)] = spec.version
    return pins


def env_pins(path) -> dict[str, str]:
    pins = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            name, _, version = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(=+)?\s*([^\s]*)", spec).groups()
            if name not in NOT_PINNED:
                assert version, f"{path.name}: {name} is not pinned"
                pins[normal(CONDA_TO_PYPI.get(name, name))] = version
    return pins


ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


@pytest.mark.parametrize("env", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_are_the_project_versions(env):
    declared = requirement_pins()
    ranges = {normal(Requirement(r).name): Requirement(r).specifier
              for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name, version in env_pins(env).items():
        assert declared.get(name) == version, f"{env.name}: {name} {version}, requirements.txt has {declared.get(name)}"
        if name in ranges:
            assert version in ranges[name], f"{env.name}: {name} {version} is outside pyproject's {ranges[name]}"


def test_every_project_dependency_is_pinned_in_requirements():
    declared = requirement_pins()
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = normal(Requirement(requirement).name)
        assert name in declared and declared[name] in Requirement(requirement).specifier, requirement


def test_every_rule_runs_in_an_existing_env():
    rules_dir = REPO / "workflow" / "rules"
    families = {p.stem for p in ENV_FILES}
    for smk in rules_dir.glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, flags=re.M)
        envs = re.findall(r'^    conda:\n        ENVS\["(\w+)"\]', text, flags=re.M)
        assert len(envs) == len(rules), f"{smk.name}: {len(rules)} rules but {len(envs)} conda directives"
        assert set(envs) <= families, f"{smk.name}: unknown env family {set(envs) - families}"
