# The two set-up commands: `make train` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test train bench lint format install clean notebook

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,test]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -q

train: $(STAMP)
	$(PY) -m train.cifar10 $(ARGS)

notebook: $(STAMP)
	$(PY) -m pip install --quiet -e '.[train,notebook]'
	$(PY) -m jupyter notebook notebooks/spatial_operations.ipynb

bench: $(STAMP)
	$(PY) -m bench.ops
	$(PY) -m bench.train_step

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
