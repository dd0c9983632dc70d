"""The teachers as proofreaders on the external sets: the review curves (every seed) and the
images the example teacher ranks worst (first seed)."""

from jobsetup import start_job

config = start_job(snakemake)

from pathlib import Path

import numpy as np
import pandas as pd

from emkt.plots import plot_review_curves, plot_review_examples
from emkt.review import examples_from_arrays

plot_review_curves(pd.concat([pd.read_csv(p) for p in snakemake.input.curves], ignore_index=True),
                   snakemake.output.curves)
examples = []
for path in snakemake.input.examples:
    dataset = Path(path).parent.name
    with np.load(path) as arrays:
        examples += [{**example, "name": f"{dataset}: {example['name']}"}
                     for example in examples_from_arrays(dict(arrays))]
plot_review_examples(examples, snakemake.output.examples)
