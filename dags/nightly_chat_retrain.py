"""Nightly chat-model retraining: ingest -> validate -> train -> evaluate -> promote.

Wiring only. Each task runs one stage as `python -m pipeline <stage> ...` (the same command is the container
entrypoint), scoped by the logical date and run id; each stage prints its output URI, which Airflow passes to the
next task through XCom. Where tasks run (local processes, Docker containers, Kubernetes pods) is the runtime
switch in chat_retrain/runtimes.py; the stage arguments are the same in all three. No heavy imports here: the
scheduler parses this file often.

    airflow dags test nightly_chat_retrain 2026-11-22 -c '{"config": "configs/embedded.yaml"}'
    CHAT_RETRAIN_RUNTIME=kubernetes airflow dags reserialize     # the same DAG as pods

Which day a run trains on (`--run-date`, the data partition dt=<date>) is its logical date `{{ ds }}`. The
schedule is a cron *data-interval* timetable: the run that fires at 02:00 UTC on day D covers the interval
[D-1 02:00, D 02:00) and its logical date is the interval's start, so it trains on dt=D-1, the last complete day.
Manual runs (`airflow dags trigger -l`, `airflow dags test DAG DATE`, `make run DATE=...`) and backfills keep the
date they are given. catchup=False: when the DAG is unpaused (make up), the latest complete interval runs at once,
older missed nights are left to `make backfill`.

Parse-time settings (read when the scheduler parses this file; documented in docs/configuration.md):
    CHAT_RETRAIN_SCHEDULE   cron of the nightly run (default "0 2 * * *", UTC)
    CHAT_RETRAIN_CONFIG     the `config` param's default, i.e. what scheduled runs use (default configs/embedded.yaml)
    CHAT_RETRAIN_DATA_WAIT_HOURS   how long a night waits for its day's partition to be published (default 6)

Before ingest, `wait_for_partition` (chat_retrain/partition_sensor.py) defers until the run date's partitions of the
config's marker sources are published; past the wait, the night fails naming them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, CronDataIntervalTimetable, Param
from chat_retrain import runtimes
from chat_retrain.partition_sensor import PublishedPartitionSensor

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # stage commands run here, so relative config paths work
PYTHON = sys.executable  # the interpreter of the environment Airflow runs in, which has `pipeline` installed
RUNTIME = runtimes.load()
SCHEDULE = os.environ.get("CHAT_RETRAIN_SCHEDULE", "0 2 * * *")  # nightly, after the day's data has landed
DEFAULT_CONFIG = os.environ.get("CHAT_RETRAIN_CONFIG", "configs/embedded.yaml")
CONFIG_PATTERN = r"^[A-Za-z0-9_./-]+\.ya?ml$"
DATA_WAIT = timedelta(hours=float(os.environ.get("CHAT_RETRAIN_DATA_WAIT_HOURS", "6")))


def record_failure(context) -> None:
    """Failure callback: mark the DAG run's MLflow run FAILED and name the task, also for timeouts and kills that
    the stage cannot record itself. Runs as a command (like the stages) so this file stays free of heavy imports."""
    dag_run, ti = context["dag_run"], context["ti"]
    command = [
        PYTHON, "-m", "pipeline", "record-failure", "--config", context["params"]["config"],
        "--run-date", context["ds"], "--run-id", dag_run.run_id, "--dag-id", dag_run.dag_id,
        "--run-type", str(dag_run.run_type), "--task", ti.task_id, "--error", str(context.get("exception") or ""),
    ]
    subprocess.run(command, cwd=PROJECT_ROOT, timeout=300, check=False)


# A retry waits 5, 10, 20 min (capped at 30): long enough for a flaky disk, S3 or node to come back.
DEFAULT_ARGS = {
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=1),
    "on_failure_callback": record_failure,
}
TRAINING_POOL = "training"  # one slot: nightly and backfill runs never train at the same time (`make airflow-db`)


with DAG(
    dag_id="nightly_chat_retrain",
    description="Fine-tune the chat model on the newest dialogues; promote it only if it beats the champion.",
    # Interval timetable, not a bare cron string (a trigger timetable in Airflow 3, whose 02:00 run would have
    # logical date D, the day that has just begun): logical date = interval start = the day that just ended.
    schedule=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,  # past dates are re-run deliberately, as backfills
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        # A path, never code: letters, digits, `_ . / -` and a .yaml/.yml ending. Checked by Airflow when a run is
        # triggered (UI, REST, CLI); the stage commands also pass it as data (runtimes.shell_words).
        "config": Param(DEFAULT_CONFIG, type="string", pattern=CONFIG_PATTERN,
                        description="Stage config YAML (a path, project-relative or absolute, ending .yaml/.yml)."),
        "allow_backfill_promotion": Param(
            False, type="boolean", description="Let a backfill run move the champion alias (off: only challenger)."
        ),
        "allow_older_data": Param(
            False, type="boolean",
            description="Let a model trained on data older than the champion's move the champion alias.",
        ),
    },
    tags=["training", "chat", RUNTIME.runtime],
) as dag:
    stage, args, xcom = runtimes.operator, runtimes.stage_args, runtimes.xcom
    # Deferred in the triggerer while the day is still being written; a missing day is not fixed by a retry.
    wait = PublishedPartitionSensor(task_id="wait_for_partition", config="{{ params.config }}", date="{{ ds }}",
                                    project_root=PROJECT_ROOT, config_on_worker=RUNTIME.runtime == "local",
                                    timeout=DATA_WAIT.total_seconds(), retries=0)
    ingest = stage("ingest", args("ingest"), RUNTIME)
    # A broken data contract is not transient: fail at once. validate re-emits the dataset URI only if it passed.
    validate = stage("validate", args("validate", dataset=xcom("ingest")), RUNTIME, retries=0)
    train = stage("train", args("train", dataset=xcom("validate")), RUNTIME, training=True, pool=TRAINING_POOL,
                  execution_timeout=timedelta(hours=8))
    evaluate = stage("evaluate", args("evaluate", dataset=xcom("validate"),
                                      model=xcom("train", first=RUNTIME.train_nodes > 1)),
                     RUNTIME, execution_timeout=timedelta(hours=3))
    promote = stage("promote", args("promote", "--set",
                                    "promote.allow_backfill_promotion={{ params.allow_backfill_promotion | lower }}",
                                    "--set", "promote.allow_older_data={{ params.allow_older_data | lower }}",
                                    evaluation=xcom("evaluate")), RUNTIME)
    wait >> ingest >> validate >> train >> evaluate >> promote
    validate >> evaluate
