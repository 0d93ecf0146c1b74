# The two set-up commands: `make train` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN_STAMP := $(VENV)/.installed-train
DOCS_STAMP := $(VENV)/.docs-installed
DIST ?= dist

.PHONY: test test-samples train bench bench-accel bench-device bench-device-check bench-device-venv bench-gpu lint format install clean notebook wheel docs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,test]'
	@touch $(STAMP) $(TRAIN_STAMP)

# Training needs the library and the train extra only (no torch, no test tools).
$(TRAIN_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train]'
	@touch $(TRAIN_STAMP)

install: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -q

# Every one of PyTorch's OpInfo samples of the ops, in every dtype torch lists (make test
# runs a covering subset); long: the counts are in tests/test_torch_samples.py.
test-samples: $(STAMP)
	JSPATIAL_ALL_SAMPLES=1 $(PY) -m pytest -q -s tests/test_torch_samples.py -k "op_samples or error_inputs or summary"

train: $(TRAIN_STAMP)
	$(PY) -m train.cifar10 $(ARGS)

notebook: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,notebook]'
	$(PY) -m jupyter notebook notebooks/spatial_operations.ipynb

# A pure-Python wheel, e.g. to upload next to the notebook on Colab. A stale build/ could
# carry files that the package list no longer includes, so it is removed first.
wheel: $(STAMP)
	rm -rf build $(DIST)/jspatial-*.whl
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(DIST) .
	@ls $(DIST)/jspatial-*.whl

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[docs]'
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

# On a machine with a GPU whose Python already holds JAX with CUDA, Flax, optax, orbax and
# PyTorch with CUDA, even one without network: nothing is installed, the checkout runs as it
# is on $(PYTHON) (python3 unless given). About 5 minutes, compiles included (--budget-s 300
# skips what would start later): the airbench94 train step (jspatial / Flax built-ins /
# PyTorch) and forward+backward of the core and airbench94-layer op suites (jspatial / XLA,
# i.e. cuDNN / PyTorch), tables in bench/out/device.md and device.json, rewritten after
# every case. ARGS="--recipe --data-dir data" instead trains the CIFAR-10 recipe to 94%
# with jspatial and with PyTorch: first copy the cifar-10-batches-bin/ folder (176 MiB)
# into data/ (ignored by git), as there is nothing to download from. ARGS="--smoke" checks
# the script in a minute or two on any backend, a CPU too. `make bench-device-venv` runs
# the same in .venv-gpu, built from PyPI, on a GPU machine with network.
bench-device:
	PYTHONPATH=. $(PYTHON) -m bench.device $(ARGS)

# On the same machine, before timing: what the GPU computes, op by op, against XLA's
# primitives on the CPU (~2 minutes); exits 1 if a case is off.
bench-device-check:
	PYTHONPATH=. $(PYTHON) -m bench.device_check $(ARGS)

GPU_VENV := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

$(GPU_STAMP): pyproject.toml
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -e '.[train]' "jax[cuda12]==0.10.2" "torch==2.13.0"
	@touch $(GPU_STAMP)

bench-device-venv: $(GPU_STAMP)
	PYTHONPATH=. $(GPU_VENV)/bin/python -m bench.device $(ARGS)

# FLOPs, HBM bytes and kernel launches of an H100, A100 and T4 compile (no GPU needed):
# JAX's CUDA build, in the same .venv-gpu but without torch (only bench-device needs it),
# never part of `make test`. JAX_PLATFORMS=cpu: the GPU is a compile target, not a device.
# ARGS passes options, e.g. ARGS="--compile-all" or ARGS="--gpu h100_sxm --suite step".
GPU_AOT_STAMP := $(GPU_VENV)/.installed-aot

$(GPU_AOT_STAMP): pyproject.toml constraints.txt
	@test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(GPU_VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[train]' "jax[cuda12]==0.10.2"
	@touch $(GPU_AOT_STAMP)

bench-gpu: $(GPU_AOT_STAMP)
	JAX_PLATFORMS=cpu $(GPU_VENV)/bin/python -m bench.gpu $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .cache build dist site
