"""Jobs that only read tables, index or pack files do not pay for importing torch and MONAI
(several seconds per job, and a demo DAG has dozens of jobs)."""

import json
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_only_exporting_imports_bioimageio():
    """bioimageio.core takes seconds to import (about 5 s on the 2-core machine): the modules of
    the other commands and jobs, and emkt.export itself until it exports, leave it out."""
    probe = ("import importlib, json, sys\n"
             "for name in sys.argv[1:]:\n"
             "    importlib.import_module(name)\n"
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'bioimageio'})))")
    modules = ["emkt.cli", "emkt.predict", "emkt.evaluate", "emkt.checkpoints", "emkt.export", *TORCH_FREE]
    out = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"imported by a module that is not exporting: {out.stdout.strip()}"
