# Two entry points (README Quickstart): `make study` and `make test`.
# Everything lives in a local virtual environment. torch is installed explicitly, and only when it is
# missing: a bare `torch>=2.6` range lets pip pick a multi-GB CUDA build on machines without a GPU.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PRESET ?= tiny
OUT    ?= runs/study-$(PRESET)
SEEDS  ?= 8
# A second environment with the lowest transformers that pyproject allows, for `make test-compat`.
OLDEST ?= .venv-oldest
OLDEST_TRANSFORMERS ?= $(shell sed -n 's/^ *"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)

.PHONY: setup test test-slow test-all test-bridges test-compat lint study study-seeds bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2 -m "not slow and not bridges"

test-slow: setup
	$(PY) -m pytest -q -n 2 -m "slow and not bridges"

# The bridges into transformers' Trainer, TRL, lm-eval and PEFT (rlready/hf). Their extras are installed with
# the venv's torch and transformers pinned (a torch range would pull a multi-GB CUDA build).
test-bridges: setup
	$(PY) -m pip freeze | grep -iE '^(torch|transformers)==' > $(VENV)/bridges-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/bridges-constraints.txt -e ".[dev,trl,lmeval,peft]"
	$(PY) -m pytest -q -n 2 -m bridges

# The model directories rlready writes load alike under the newest transformers (.venv) and the oldest
# pyproject allows ($(OLDEST), which the tests reach through RLREADY_OLDEST_PYTHON). torch first, as above.
$(OLDEST)/.installed: pyproject.toml
	test -n "$(OLDEST_TRANSFORMERS)" || { echo "no transformers>=X.Y.Z lower bound in pyproject.toml"; exit 1; }
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -c "import torch" 2>/dev/null || $(OLDEST)/bin/python -m pip install -q "$(TORCH)"
	$(OLDEST)/bin/python -m pip install -q -e . "transformers==$(OLDEST_TRANSFORMERS)"
	touch $@

test-compat: setup $(OLDEST)/.installed
	RLREADY_OLDEST_PYTHON="$(abspath $(OLDEST))/bin/python" $(PY) -m pytest -q tests/test_hf_compat.py

test-all: setup
	$(PY) -m pytest -q -n 2

lint: setup
	$(VENV)/bin/ruff check rlready tests benchmarks
	$(VENV)/bin/ruff format --check rlready tests benchmarks

study: setup
	$(VENV)/bin/rlready study --preset $(PRESET) --out $(OUT)

# The seed-paired study of the entropy knob (README): CE, beta=-0.25 and beta=0.5 through RL, SEEDS seeds each.
study-seeds: setup
	$(VENV)/bin/rlready study --preset $(PRESET) --configs beta --seeds $(SEEDS) --out runs/study-beta-$(PRESET)

bench: setup
	$(PY) -m pip install -q -e ".[bench,profile]"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(OLDEST) .pytest_cache build *.egg-info
