# dicom-node: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit test-fast lint typecheck bench ohif clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,real-us]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m dicom_node.demo

# What CI runs: lint, types and every test (PostgreSQL required when CI is set).
test: install
	$(VENV)/bin/ruff check dicom_node tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q

# Pure unit tests: no network peers, no database server, no training; under a minute.
test-unit: install
	$(VENV)/bin/pytest -q tests/unit -m "not slow and not postgres"

# Everything but the slow tests (trainings, full pipelines, end-to-end runs).
test-fast: install
	$(VENV)/bin/pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check dicom_node tests benchmarks
	$(VENV)/bin/ruff format --check dicom_node tests benchmarks

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) -m benchmarks.run

# The OHIF viewer build (npm @ohif/app, pinned in tests/peers/ohif.py) into .cache/ohif/ for the viewer tests.
ohif: install
	$(PY) -m tests.peers.ohif

clean:
	rm -rf $(VENV) build *.egg-info storage/*.db*
