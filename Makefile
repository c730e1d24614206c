# Two commands for a fresh machine: `make demo` (the main job on the bundled sample) and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes; torchrec goes in with --no-deps (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps torchrec==1.8.0
	touch $(STAMP)

demo: install
	$(BIN)/recsys pipeline --config configs/quickstart.yaml

lint: install
	$(BIN)/ruff check recsys features serving tests benchmarks
	$(BIN)/lint-imports

# CI runs this: the tests a plain `pytest` runs (pyproject addopts) plus the distributed ones.
test: lint
	$(BIN)/python -m pytest -q -m 'not slow and not gpu'

bench: install
	$(BIN)/python benchmarks/retrieval.py --dataset ml-100k --config configs/ml100k_sasrec.yaml

clean:
	rm -rf $(VENV) runs mlruns mlartifacts mlruns.db data/prepared
