"""The `nightly_stack` fixture: `python -m ops.stack up` in a temporary home on free ports, then the
scheduler's own run of the nightly DAG on the tiny model, awaited through Airflow's REST API.

    .venv/bin/python -m pytest -m stack tests          # ~3-4 min on 2 cores (up ~50 s, the scheduled run ~2 min)

The DAG is unpaused by `stack up` and, with catchup=False, the scheduler at once creates the run of the latest
complete interval (run_type `scheduled`): nothing here triggers it. CHAT_RETRAIN_CONFIG points the scheduled run
at a copy of configs/tiny.yaml with its project paths in the temp home and the tiny model as base model; its
tracking_uri is a SQLite file that must stay unused (the stack's MLFLOW_TRACKING_URI wins over the YAML).
Teardown: `stack down`, then no process of the stack may be left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from stack_processes import PORT_KEYS, leftovers, port_flags, stack_command, wait_for_scheduled_run

from ops import stack
from pipeline.process.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "nightly_chat_retrain"
RUN_TIMEOUT_S = 300  # the scheduled run takes ~2 min here; a hung task must fail the test, not the session


@dataclass(frozen=True)
class NightlyStack:
    """What tests read about the running stack (stable: tests/stack/test_ui.py uses these names).

    home         temp dir holding .stack/ (state.json, logs/, s3/), .airflow/, .mlflow/, data/, runs/
    airflow_url  http://127.0.0.1:<port> of the api-server (UI + REST; no login: all admins)
    mlflow_url   http://127.0.0.1:<port> of the MLflow server (UI + REST; artifacts proxied to s3_url)
    s3_url       http://127.0.0.1:<port> of the S3 service; credentials in `env`
    config       the stage config of the scheduled run (CHAT_RETRAIN_CONFIG)
    dag_run_id   the scheduled run's id, e.g. scheduled__2026-11-23T02:00:00+00:00 (also `.run_id`)
    logical_date the run's logical date, ISO 8601 (the start of its data interval)
    dag_run      the run as Airflow's REST API returned it when it finished (state, run_type, data_interval_*)
    env          client_env(home): MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, AWS keys, region
    """

    home: Path
    airflow_url: str
    mlflow_url: str
    s3_url: str
    config: Path
    dag_run_id: str
    logical_date: str
    dag_run: dict
    env: dict

    @property
    def run_id(self) -> str:
        return self.dag_run_id


@pytest.fixture(scope="session")
def stack_config(tmp_path_factory, tiny_model_dir) -> Path:
    """configs/tiny.yaml with its project paths in a session temp dir (make_config, session-scoped)."""
    root = tmp_path_factory.mktemp("stack-project")
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["project"].update(data_root=str(root / "data"), runs_root=str(root / "runs"),
                          tracking_uri=f"sqlite:///{root / 'unused-mlflow.db'}",
                          artifact_root=str(root / "unused-artifacts"), base_model=str(tiny_model_dir))
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


@pytest.fixture(scope="session")
def nightly_stack(tmp_path_factory, stack_config) -> NightlyStack:
    home = tmp_path_factory.mktemp("stack-home")
    ports = free_ports(len(PORT_KEYS))
    env = {**os.environ, "CHAT_RETRAIN_CONFIG": str(stack_config), "CHAT_RETRAIN_SCHEDULE": "0 2 * * *"}
    try:
        started = stack_command("up", "--home", str(home), *port_flags(ports), env=env)
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        airflow_url = f"http://127.0.0.1:{ports[2]}"
        dag_run = wait_for_scheduled_run(airflow_url, RUN_TIMEOUT_S)
        yield NightlyStack(home=home, airflow_url=airflow_url, mlflow_url=f"http://127.0.0.1:{ports[1]}",
                           s3_url=f"http://127.0.0.1:{ports[0]}", config=stack_config,
                           dag_run_id=dag_run["dag_run_id"], logical_date=dag_run["logical_date"], dag_run=dag_run,
                           env=stack.client_env(home))
    finally:
        stopped = stack_command("down", "--home", str(home), env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers(home), f"processes of the stack left after `stack down`: {leftovers(home)}"
