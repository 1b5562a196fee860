# Two entry points for a fresh machine: `make demo` (main job on the bundled sample) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_INPUT := Resources/SampleData/SkullFix_050_defective.nrrd
DEMO_OUTPUT := output/demo

.PHONY: demo test venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sparseimplant generate $(DEMO_INPUT) -o $(DEMO_OUTPUT) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q
