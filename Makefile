# Everything a fresh machine needs: `make demo` and `make test` create .venv and install into it.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: install demo test bench bench-reference robustness clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# pip's notes about absent local mirrors are noise; its exit status still counts (pipefail).
	$(BIN)/python -m pip install $(PIP_QUIET) -e ".[dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import rifml, lightgbm, mlflow, shap, pandera"
	# Spark's class archive, recorded here by scoring a few simulated panels (~1 min, once per install) so that
	# no scoring run pays for recording it (src/rifml/spark_archive.py). Optional: without Java, Spark runs without it.
	@echo "recording Spark's class archive (about a minute, once per install) ..."
	timeout 600 $(BIN)/python -m rifml.spark_archive 2>/dev/null || echo "Spark class archive not recorded: Spark runs start without it"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rifml demo --workdir rifml-demo

# One worker per core (pytest-xdist); each test file runs whole on one worker, so module fixtures run once;
# the longest files are handed out first (tests/scheduling.py), so no long file starts last.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile tests --nbmake notebooks

# Cost curves: score 1k/100k/1M (+ N, e.g. N=10000000), explanation step vs shap, training 2k/20k/100k,
# Spark at 1M; one table, kept in benchmarks/RESULTS.md. BENCH_ARGS=--quick skips the slow rows.
N ?=
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_curves.py $(if $(N),--n $(N)) $(BENCH_ARGS)

# rifml against a naive LightGBM + shap scorer on the same file, and the lab dialects side by side.
REFERENCE_N ?= 100000
REPEATS ?= 3
bench-reference: $(STAMP)
	$(BIN)/python benchmarks/bench_score.py --n $(REFERENCE_N) --repeats $(REPEATS)

# rifml trained and called on every scenario in configs/scenarios (plus the default world) and
# ten worlds drawn at random: one table row per world, saved with the commit to benchmarks/robustness.csv.
ROBUSTNESS_ARGS ?= --random 10 --jobs 2
robustness: $(STAMP)
	$(BIN)/python benchmarks/robustness.py $(ROBUSTNESS_ARGS)

clean:
	rm -rf $(VENV) rifml-demo .pytest_cache
