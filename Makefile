# Two commands for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: setup demo study study-real-em study-real-em-trained test test-fast lint benchmark benchmark-speed benchmark-demo clean-results

setup: $(VENV)/.installed

# constraints.txt pins torch so that no other package can pull a different (CUDA) build.
$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

demo: setup
	$(BIN)/snakemake --cores $(CORES) --configfile demo.yaml
	@echo
	@cat results/tables/headline.md

# The expansion-variant study: 3 seeds on the demo data and on ../shared em-mito-mini. It prints the
# selection tables (validation split), where the default variant is chosen; the test tables
# (expansion.md) report what was chosen.
study: setup
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml studies/demo-scale.yaml studies/expansion.yaml --directory study/demo
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml studies/demo-scale.yaml studies/expansion.yaml studies/em-mito-mini.yaml \
		--directory study/em-mito-mini
	@cat study/demo/results/tables/expansion_selection.md study/em-mito-mini/results/tables/expansion_selection.md

# The real-EM study (issue 19): em-mito-mini's drosophila_vnc sections in contiguous blocks, its second
# stack as the pool; baseline, expansion, pseudo-labelling and mean teacher, 3 seeds, UNet and ViT
# students; and the UNet baseline's longer learning curve. The three runs are independent.
REAL_EM_LABELS := $(abspath ../shared/data/em-mito-mini/cem_mitolab/drosophila_vnc)
REAL_EM_RUNS := unet:studies/real-em-unet.yaml vit:studies/real-em-vit.yaml \
	long:studies/real-em-unet.yaml,studies/real-em-long.yaml
study-real-em: setup
	for run in $(REAL_EM_RUNS); do \
		name=$${run%%:*}; files=$$(echo $${run#*:} | tr , ' '); \
		mkdir -p study/real-em-$$name/data/labelled && \
		ln -sfn $(REAL_EM_LABELS) study/real-em-$$name/data/labelled/drosophila_vnc && \
		$(BIN)/snakemake --cores $(CORES) --configfile config.yaml studies/real-em.yaml $$files \
			--directory study/real-em-$$name || exit 1; \
	done
	@cat study/real-em-unet/results/tables/headline.md study/real-em-unet/results/tables/rivals.md \
		study/real-em-vit/results/tables/headline.md study/real-em-vit/results/tables/rivals.md

# The UNet run trained as long as the learning curve says (48 epochs): the baseline and the pool
# methods that start from it, seeds 0 and 1 (~1 CPU-hour on 2 cores). Without
# studies/real-em-trained-pool.yaml it also runs joint training and expansion for 3 seeds; joint
# training collapsed there (docs/results/2026-12-02-real-em-trained.md).
study-real-em-trained: setup
	mkdir -p study/real-em-trained/data/labelled
	ln -sfn $(REAL_EM_LABELS) study/real-em-trained/data/labelled/drosophila_vnc
	$(BIN)/snakemake --cores $(CORES) --configfile config.yaml studies/real-em.yaml studies/real-em-unet.yaml \
		studies/real-em-trained.yaml studies/real-em-trained-pool.yaml --directory study/real-em-trained
	@cat study/real-em-trained/results/tables/headline.md study/real-em-trained/results/tables/rivals.md

# In TEST_WORKERS processes; the readers of the shared background runs (demo, SLURM slice,
# real-EM fixture run) go to one of them together (tests/conftest.py: SharedRunsScheduling).
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The fast tier: unit tests only, no Snakemake runs, no SLURM and not the dozen unit tests that take
# 3 s or more (marked slow); in TEST_WORKERS processes (pytest-xdist). Target: under a minute on 2 cores.
TEST_WORKERS ?= 2
test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not workflow and not slurm and not slow"

# Store vs. per-file TIFF reading on a generated pool of 100,000 images (~10 GB in benchmarks/out/).
benchmark: setup
	$(BIN)/python benchmarks/pool_loading.py

# Training speed (issue 6): step overhead, loader vs. step, `snakemake -n` wall time, and
# student/teacher images/s with and without mixed precision and compile (on CPU without a GPU).
benchmark-speed: setup
	$(BIN)/python benchmarks/training_step.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/workflow_overhead.py
	$(BIN)/python benchmarks/gpu_throughput.py

# Where the demo's time goes (issue 17): the demo DAG's wall time and its jobs' start-up (imports).
benchmark-demo: setup
	$(BIN)/python benchmarks/demo_time.py

lint: setup
	$(BIN)/snakemake --lint
	$(BIN)/snakemake --lint --configfile demo.yaml

clean-results:
	rm -rf results .snakemake
