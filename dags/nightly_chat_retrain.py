"""Nightly chat-model retraining: ingest -> validate -> train -> evaluate -> promote.

Wiring only. Each task runs one stage as `python -m pipeline <stage> ...` (the same command is the container
entrypoint), scoped by the logical date and run id; each stage prints its output URI, which Airflow passes to the
next task through XCom. No heavy imports here: the scheduler parses this file often.

    airflow dags test nightly_chat_retrain 2026-11-22 -c '{"config": "configs/embedded.yaml"}'
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # stage commands run here, so relative config paths work
PYTHON = sys.executable  # the interpreter of the environment Airflow runs in, which has `pipeline` installed


def stage_command(stage: str, *extra: str, **inputs: str) -> str:
    """The shell command of one stage; templated fields are rendered by Airflow at run time."""
    parts = [
        shlex.quote(PYTHON), "-m", "pipeline", stage,
        "--config", "'{{ params.config }}'",
        "--run-date", "{{ ds }}",
        "--run-id", "'{{ run_id }}'",
        "--dag-id", "{{ dag.dag_id }}",
        "--run-type", "{{ dag_run.run_type }}",
    ]
    for name, uri in inputs.items():
        parts += [f"--{name}", shlex.quote(str(uri))]
    return " ".join([*parts, *extra])


@dag(
    dag_id="nightly_chat_retrain",
    description="Fine-tune the chat model on the newest dialogues; promote it only if it beats the champion.",
    schedule="0 2 * * *",  # nightly, after the day's data has landed
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,  # past dates are re-run deliberately, as backfills
    max_active_runs=1,
    params={
        "config": Param("configs/embedded.yaml", type="string", description="Stage config YAML (project-relative)."),
        "allow_backfill_promotion": Param(
            False, type="boolean", description="Let a backfill run move the champion alias (off: only challenger)."
        ),
    },
    tags=["training", "chat"],
)
def nightly_chat_retrain():
    @task.bash(cwd=str(PROJECT_ROOT))
    def ingest() -> str:
        return stage_command("ingest")

    @task.bash(cwd=str(PROJECT_ROOT))
    def validate(dataset: str) -> str:
        return stage_command("validate", dataset=dataset)

    @task.bash(cwd=str(PROJECT_ROOT))
    def train(dataset: str) -> str:
        return stage_command("train", dataset=dataset)

    @task.bash(cwd=str(PROJECT_ROOT))
    def evaluate(dataset: str, model: str) -> str:
        return stage_command("evaluate", dataset=dataset, model=model)

    @task.bash(cwd=str(PROJECT_ROOT))
    def promote(evaluation: str) -> str:
        return stage_command(
            "promote", "--set", "promote.allow_backfill_promotion={{ params.allow_backfill_promotion | lower }}",
            evaluation=evaluation,
        )

    dataset = validate(ingest())  # validate re-emits the dataset URI only if it passed: train waits on the contract
    promote(evaluate(dataset, train(dataset)))


nightly_chat_retrain()
