# Two entry points (see README): `make demo` runs the main job, `make test` the whole suite.
# Both create .venv in the repo, install aevlp into it, and fetch the demo's offline data.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo lint test test-fast docs gpu-wheels clean

$(BIN)/aevlp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(BIN)/aevlp

setup: $(BIN)/aevlp

# Fashion-MNIST (MIT, Zalando) from Debian's package; needs root. Elsewhere: aevlp demo --raw DIR.
# Chromium (Debian's) for the review site's browser tests; without it they are skipped.
data:
	@test -d $(FASHION) || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	  || echo "note: could not install dataset-fashion-mnist (not root?); the demo will try --raw or a download"
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: could not install chromium (not root?); the review site's browser tests will be skipped"

demo: setup data
	$(BIN)/aevlp demo

# Style first (ruff, configured in pyproject.toml), then the whole suite; CI runs exactly this.
lint: setup
	$(BIN)/ruff check aevlp tests benchmarks

test: setup data lint
	$(BIN)/python -m pytest -q

# Everything but the slow tests (the demo, torchrun, full-size CLIP models): a few minutes, for iterating.
test-fast: setup lint
	$(BIN)/python -m pytest -q -m "not slow"

# Regenerate what is written from the code's tables (a test fails when any is stale): the key tables of
# pipelines/README.md (aevlp/settings.py), the comparison methods' values in the benchmark pipelines and
# docs/training.md (aevlp/losses/recipes.py).
docs: setup
	$(BIN)/python -c "from aevlp.settings_docs import write_key_tables; write_key_tables('pipelines/README.md')"
	$(BIN)/python -c "import aevlp.losses.recipes as r; r.write_pipeline_blocks('pipelines'); r.write_recipe_tables('docs/training.md')"

# The packages a lent GPU box lacks (it has torch, h5py, pandas, click, tqdm; nothing can be fetched there), as
# wheels in .whl/ for benchmarks/gpu.py: docs/performance.md gives the whole command.
GPU_WHEELS := open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 tomli_w==1.2.0
gpu-wheels: setup
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

clean:
	rm -rf $(VENV) build *.egg-info
