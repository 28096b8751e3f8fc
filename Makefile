# Two entry points (README Quickstart): `make study` and `make test`.
# Everything lives in a local virtual environment. torch is installed explicitly, and only when it is
# missing: a bare `torch>=2.6` range lets pip pick a multi-GB CUDA build on machines without a GPU.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
PRESET ?= tiny
OUT    ?= runs/study-$(PRESET)

.PHONY: setup test test-slow test-all lint study bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q -n 2 -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -n 2 -m slow

test-all: setup
	$(PY) -m pytest -q -n 2

lint: setup
	$(VENV)/bin/ruff check rlready tests benchmarks
	$(VENV)/bin/ruff format --check rlready tests benchmarks

study: setup
	$(VENV)/bin/rlready study --preset $(PRESET) --out $(OUT)

bench: setup
	$(PY) -m pip install -q -e ".[bench,profile]"
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
