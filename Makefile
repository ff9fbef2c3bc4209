# Set-up is part of every target: a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup example test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# The main job: train the example project's model (seconds), then run its robustness gates.
example: setup
	cd example_project && ../$(BIN)/python -m digits_demo.train
	cd example_project && ../$(BIN)/python -m pytest -p no:cacheprovider

# The project's own tests.
test: setup
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 tests

bench: setup
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) example_project/models example_project/.advrobust .advrobust
