# Set-up and checks. `make install` then `make test` on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on local disk; installing it first keeps pip from
# pulling a multi-GB CUDA build when it resolves textcl's torch requirement.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,models,plot,faiss,notebook,yaml

.PHONY: install test test-fast lint typecheck check bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check textcl tests benchmarks
	$(BIN)/ruff format --check textcl tests benchmarks

typecheck:
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
