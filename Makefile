# Two commands set up and run everything on a fresh machine:
#   make run    -> create .venv, install regtune with the study stack, run the main job
#   make test   -> create .venv, install, run the test suite (what .ci/run calls)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test venv clean train bench bench-quick

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk (a looser spec pulls CUDA)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[study,test]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: a study on the embedded synthetic phantoms whose space has good, diverging,
# over-regularised and too-slow regions (search_spaces/phantoms.yaml), then its diagnosis;
# it ends by printing where the report, best_config.yaml and the model are. Local Ray, local
# MLflow SQLite store, everything under regtune-runs/. A few minutes on a 2-core CPU.
run: $(STAMP)
	@name=phantoms-$$(date +%Y%m%d-%H%M%S); start=$$(date +%s); \
	$(BIN)/regtune search --space search_spaces/phantoms.yaml --name $$name && \
	$(BIN)/regtune diagnose --study $$name && \
	echo "" && echo "== the answer (study $$name, $$(( $$(date +%s) - start )) s) ==" && \
	echo "diagnosis report: regtune-runs/studies/$$name/diagnosis/report.html (and report.md)" && \
	echo "best config:      regtune-runs/studies/$$name/best_config.yaml   (regtune train --config it, or regtune train --from-study $$name)" && \
	echo "model:            regtune-runs/studies/$$name/best.pt   (held-out scores: regtune-runs/studies/$$name/test_scores.json)" && \
	echo "browse:           regtune ui   (MLflow)      regtune ui --optuna --study $$name   (Optuna Dashboard)"

# A single training run on embedded defaults.
train: $(STAMP)
	$(BIN)/regtune train --max-minutes 5

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# Benchmarks against the voxelmorph package and MONAI (benchmarks/README.md): installs the
# peers into this venv only (the `bench` extra, torch pinned on the same line), then runs
# every section on CUDA when present, else the CPU. BENCH_ARGS passes options, e.g.
#   make bench BENCH_ARGS="--only train,eval"      make bench BENCH_ARGS="--device cuda"
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[study,test,bench]' torch==2.13.0
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

clean:
	rm -rf regtune-runs .pytest_cache
