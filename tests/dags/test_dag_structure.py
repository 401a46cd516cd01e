"""The DAG parses, wires the five stages in order, runs each as `python -m pipeline <stage>`, stays light."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "validate", "train", "evaluate", "promote"]


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("nightly_chat_retrain")


def test_stages_are_chained_in_lifecycle_order_after_the_wait_for_the_day(dag):
    assert sorted(dag.task_ids) == sorted(["wait_for_partition", *STAGES])
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert edges == {("wait_for_partition", "ingest"), ("ingest", "validate"), ("validate", "train"),
                     ("validate", "evaluate"), ("train", "evaluate"), ("evaluate", "promote")}


def test_schedule_and_params(dag):
    # A data-interval timetable (the run at 02:00 on D trains on D-1: tests/dags/test_schedule.py), 02:00 UTC.
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 2 * * *" and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.params["config"] == "configs/embedded.yaml"


def test_retries_timeouts_pool_and_failure_callback(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    assert tasks["validate"].retries == 0  # a data contract failure is not transient
    assert tasks["wait_for_partition"].retries == 0  # nor a day not published within the wait
    assert tasks["wait_for_partition"].timeout == 6 * 3600
    assert {tasks[t].retries for t in ("ingest", "train", "evaluate", "promote")} == {2}
    assert tasks["train"].retry_exponential_backoff and tasks["train"].max_retry_delay.total_seconds() == 1800
    assert tasks["train"].pool == "training"
    assert tasks["train"].execution_timeout.total_seconds() == 8 * 3600
    assert all(t.execution_timeout is not None and t.on_failure_callback for t in dag.tasks)


def test_every_task_runs_its_stage_command(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    (command,) = [line for line in tasks["evaluate"].bash_command.splitlines() if " -m pipeline " in line]
    # PIPELINE_XCOM_FILE="$xcom_file" <python> -m pipeline evaluate ...  (runtimes.with_xcom_file wraps it); what
    # Airflow renders is in the task's env, the script names it: "$PIPELINE_ARG_<n>" (runtimes.shell_words)
    assert command.split()[2:5] == ["-m", "pipeline", "evaluate"]
    assert "{{" not in tasks["evaluate"].bash_command
    words = command.split()
    rendered = {words[i - 1]: tasks["evaluate"].env[words[i].strip('"$')] for i in range(len(words))
                if words[i].startswith('"$PIPELINE_ARG_')}
    assert rendered == {"--config": "{{ params.config }}", "--run-date": "{{ ds }}", "--run-id": "{{ run_id }}",
                        "--dag-id": "{{ dag.dag_id }}", "--run-type": "{{ dag_run.run_type }}",
                        "--dataset": '{{ ti.xcom_pull(task_ids="validate") }}',
                        "--model": '{{ ti.xcom_pull(task_ids="train") }}'}


def test_dag_file_imports_no_heavy_modules():
    probe = ("import sys, runpy; sys.path.insert(0, 'dags'); runpy.run_path('dags/nightly_chat_retrain.py'); "
             "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'great_expectations', 'pipeline') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
