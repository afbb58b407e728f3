# flsplit: `make run` sets up and runs the quickstart simulation; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench-dataplane bench-planner clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flsplit simulate examples/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .

# Benchmarks are not installed with the package: they run from this checkout.
bench-dataplane: $(STAMP)
	$(BIN)/python -m benchmarks.dataplane

bench-planner: $(STAMP)
	$(BIN)/python -m benchmarks.planner

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
