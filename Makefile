# Two entry points (see README): `make demo` runs the main job, `make test` the whole suite.
# Both create .venv in the repo and install aevlp into it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test clean

$(BIN)/aevlp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(BIN)/aevlp

setup: $(BIN)/aevlp

demo: setup
	$(BIN)/aevlp --help

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
