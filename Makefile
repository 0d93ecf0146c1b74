# The two set-up commands: `make train` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN_STAMP := $(VENV)/.installed-train
DOCS_STAMP := $(VENV)/.docs-installed
DIST ?= dist

.PHONY: test train bench bench-accel bench-device lint format install clean notebook wheel docs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test]'
	@touch $(STAMP) $(TRAIN_STAMP)

# Training needs the library and the train extra only (no torch, no test tools).
$(TRAIN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train]'
	@touch $(TRAIN_STAMP)

install: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -q

train: $(TRAIN_STAMP)
	$(PY) -m train.cifar10 $(ARGS)

notebook: $(STAMP)
	$(PY) -m pip install --quiet -e '.[train,notebook]'
	$(PY) -m jupyter notebook notebooks/spatial_operations.ipynb

# A pure-Python wheel, e.g. to upload next to the notebook on Colab. A stale build/ could
# carry files that the package list no longer includes, so it is removed first.
wheel: $(STAMP)
	rm -rf build $(DIST)/jspatial-*.whl
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(DIST) .
	@ls $(DIST)/jspatial-*.whl

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	@touch $(DOCS_STAMP)

# The API reference (from the docstrings) and the notebook, executed in quick mode (cached in
# .cache/docs-notebook/), as a static site in site/; any warning fails the build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

bench: $(STAMP)
	$(PY) -m bench.ops
	$(PY) -m bench.train_step

# FLOPs and HBM bytes of a TPU v5e compile (no TPU needed): a separate environment with
# jax[tpu] (libtpu, ~700 MB), kept out of .venv and of `make test`.
TPU_VENV := .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed

$(TPU_STAMP): pyproject.toml
	@test -x $(TPU_VENV)/bin/python || $(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TPU_VENV)/bin/python -m pip install --quiet -e . "jax[tpu]==0.10.2"
	@touch $(TPU_STAMP)

bench-accel: $(TPU_STAMP)
	$(TPU_VENV)/bin/python -m bench.accel

# On a machine with a GPU: the op suite and the train step against XLA (cuDNN) and PyTorch
# CUDA, in an environment of its own with JAX's CUDA build and PyPI's (CUDA) torch wheel.
GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

$(GPU_STAMP): pyproject.toml
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[train]' "jax[cuda12]==0.10.2" "torch==2.13.0"
	@touch $(GPU_STAMP)

bench-device: $(GPU_STAMP)
	$(GPU_VENV)/bin/python -m bench.device

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache build dist site
