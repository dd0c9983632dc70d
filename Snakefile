# Knowledge expansion via error distribution prediction, and its baselines, for
# mitochondria segmentation in electron microscopy. See README.md.
from snakemake.utils import min_version

min_version("8.20")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/tables/summary.csv",
        "results/tables/summary.md",
        "results/tables/headline.md",
        list(EXPANSION_TABLES.values()),
        list(RIVAL_TABLES.values()),
        list(PROOFREADING_TABLES.values()),
        FIGURES,
        prediction_outputs(),
        export_outputs(),
    default_target: True
