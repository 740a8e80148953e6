# The two commands a new user needs (see README.md): `make demo` and `make test`.
# Each builds the virtual environment on first use (Python 3.10+, about a minute on a fresh machine).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo demo-quick test test-all lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,dicom]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medanalysis demo --out demo-output --overwrite

demo-quick: $(STAMP)
	$(BIN)/medanalysis demo --quick --out demo-output --overwrite

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check MedAnalysisLib MedAnalysis Testing bench

clean:
	rm -rf $(VENV) demo-output .pytest_cache
