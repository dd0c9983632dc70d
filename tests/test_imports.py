"""Jobs that only read tables, index or pack files do not pay for importing torch and MONAI
(several seconds per job, and a demo DAG has dozens of jobs)."""

import ast
import json
import subprocess
import sys

import pytest

from conftest import REPO

# modules whose jobs (aggregate, plots of tables, index/split/pack/screen, config checks) need no network
TORCH_FREE = ["emkt.config", "emkt.scores", "emkt.config_reference", "emkt.tables", "emkt.headline", "emkt.plots", "emkt.indexing",
              "emkt.store", "emkt.screening", "emkt.data", "emkt.synthetic", "emkt.cluster", "emkt.selection"]

# one interpreter imports them in turn and notes the first that brought torch or MONAI in
PROBE = """
import importlib, json, sys
culprits = []
for name in sys.argv[1:]:
    importlib.import_module(name)
    if {"torch", "monai"} & set(sys.modules):
        culprits.append(name)
        break
print(json.dumps(culprits))
"""


@pytest.mark.slow
def test_table_and_data_modules_import_without_torch():
    out = subprocess.run([sys.executable, "-c", PROBE, *TORCH_FREE], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"imports torch or MONAI: {out.stdout.strip()}"


def test_only_exporting_imports_bioimageio():
    """bioimageio.core takes seconds to import (about 5 s on the 2-core machine): no module of
    the package imports it at its top, so only the export functions that use it pay for it
    (read from the source, as importing the modules here would cost the seconds it checks)."""
    at_top = []
    for path in sorted((REPO / "src" / "emkt").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only, not inside functions
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            at_top += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "bioimageio"]
    assert not at_top, f"imported at module level: {at_top}"
    inside = [node for node in ast.walk(ast.parse((REPO / "src" / "emkt" / "export.py").read_text()))
              if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bioimageio")]
    assert inside, "emkt.export no longer imports bioimageio: this check has nothing to check"
