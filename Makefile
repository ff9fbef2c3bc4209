# Set-up is part of every target: a fresh machine needs only Python 3.10+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Opt-in: take torch's CPU-only build from PyTorch's own index instead of PyPI's default
# (on Linux, PyPI's torch is the CUDA build, about 5.6 GB with its nvidia packages):
#   make example TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Empty by default, so nothing depends on an index a machine may not reach.
TORCH_INDEX ?=
PIP_INDEX := $(if $(strip $(TORCH_INDEX)),--extra-index-url $(strip $(TORCH_INDEX)),)

.PHONY: setup example test test-unit docs bench dist clean

setup: $(STAMP)

# pip shows what it fetches and installs (the first install takes minutes: torch is large)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(PIP_INDEX) -c constraints.txt -e ".[dev,docs]"
	touch $(STAMP)

# The main job: train the example project's model (seconds), then run its robustness gates.
example: setup
	cd example_project && ../$(BIN)/python -m digits_demo.train
	cd example_project && ../$(BIN)/python -m pytest -p no:cacheprovider

# The project's own tests: all of them (unit and end-to-end).
test: setup
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 tests

# The fast loop: unit tests only, without those marked e2e (they drive pytest through
# pytester or start a subprocess; tests/conftest.py marks and guards them).
test-unit: setup
	$(BIN)/python -m pytest -p no:cacheprovider -n 2 -m "not e2e" tests

# The documentation site, from docs/ (Markdown pages; the option, config-key and hook
# tables are generated from the code). Warnings are errors, broken references included;
# nothing is fetched (no intersphinx). Open docs/_build/html/index.html.
docs: setup
	$(BIN)/python -m sphinx -W --keep-going -n -q -b html docs docs/_build/html

bench: setup
	$(BIN)/python benchmarks/bench_sweep.py

# sdist + wheel in dist/, checked with twine (build and twine go into the venv on demand).
dist: setup
	$(BIN)/python -m pip install --quiet build twine
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python -m twine check --strict dist/*

clean:
	rm -rf $(VENV) dist build docs/_build example_project/models example_project/.advrobust .advrobust
