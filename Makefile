# flsplit: `make run` sets up and runs the quickstart simulation (`flwr run` on a local SuperLink
# that `flsplit simulate` starts and stops); `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lowest Python the project declares: python3.10 on the PATH, else a pyenv build of it.
PY310 ?= $(shell for p in python3.10 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$$p"; break; }; done)
VENV310 ?= .venv310
STAMP310 := $(VENV310)/.installed

.PHONY: run test test-py310 venvs lint bench-dataplane bench-planner clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/flsplit simulate examples/quickstart

# The lowest Python first, so the full suite's summary is the last line. Two workers: the
# deployment tests run one after another on one of them, the other e2e tests on the other
# (tests/conftest.py), the unit tests on whichever is free; the deployment tests mostly
# wait on Flower's heartbeats and polling.
test: $(STAMP)
	$(MAKE) --no-print-directory test-py310
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 -n 2

# The torch-free parts (planner, run config) under Python 3.10: torch comes from the
# registry for 3.10 only as a multi-GB CUDA build, so it is not installed there.
$(STAMP310): pyproject.toml
	$(PY310) -m venv $(VENV310)
	$(VENV310)/bin/pip install --quiet numpy scipy ortools matplotlib hypothesis pytest tomli
	touch $(STAMP310)

ifeq ($(PY310),)
test-py310:
	@echo "test-py310: no Python 3.10 on this machine; the planner was tested under $$($(PYTHON) --version) only"
venvs: $(STAMP)
else
test-py310: $(STAMP310)
	$(VENV310)/bin/python -m pytest -q -p no:cacheprovider tests/unit/plan tests/unit/core/test_config.py
venvs: $(STAMP) $(STAMP310)
endif

lint: $(STAMP)
	$(BIN)/ruff check .

bench-dataplane: $(STAMP)
	$(BIN)/python -m benchmarks.dataplane

bench-planner: $(STAMP)
	$(BIN)/python -m benchmarks.planner

clean:
	rm -rf $(VENV) $(VENV310) .pytest_cache .ruff_cache
