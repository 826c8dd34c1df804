# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Test processes (pytest-xdist; a test file stays in one process, so module fixtures are built
# once). Most tests compile on one core; two processes keep both cores of CI busy.
TEST_WORKERS ?= 2

# `make test` (what CI runs) leaves out the tests marked `slow`: smoke runs of the experiment
# scripts, the benches, the README's commands as written and the shipped real-data configs, whose
# code paths the rest of the suite covers on smaller inputs; they kept the suite above its
# 10-minute budget on 2 cores. `make test-all` runs every test (run it before a release).
test: $(STAMP)
	$(BIN)/ruff check --no-cache causalrec_jax tests experiments bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-all: $(STAMP)
	$(BIN)/ruff check --no-cache causalrec_jax tests experiments bench
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: $(STAMP)
	$(BIN)/python experiments/quickstart.py
	$(BIN)/python experiments/demo.py

bench: $(STAMP)
	$(BIN)/python bench/foundation.py
	$(BIN)/python bench/readers.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/tune.py
	$(BIN)/python bench/debias.py
	$(BIN)/python bench/simulate.py --gpu-config
	$(BIN)/python bench/catalogue.py
	$(BIN)/python bench/seq_eval.py
	$(BIN)/python bench/seq_eval.py --users 35598 --items 18357 --out bench/results/seq_eval_sports.json
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/explain.py
	$(BIN)/python bench/privacy.py
	$(BIN)/python bench/stream.py

lint: $(STAMP)
	$(BIN)/ruff check --no-cache causalrec_jax tests experiments bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
