"""Airflow's metadata and the MLflow server's store on PostgreSQL: `stack up` with both pointed at a throwaway
cluster (Debian's postgresql, started here), then the scheduler's own nightly run of the DAG on the tiny model, as
tests/stack does on SQLite. The same run on SQLite beside it gives the comparison.

    make test-postgres          # ~8 min on 2 cores: two stacks, one scheduled run each

What must hold on PostgreSQL: the run succeeds; its DAG run and task instances are rows in the `airflow` database;
the stages' MLflow runs and the registered model version are rows in the `mlflow` database; nothing of Airflow's
or MLflow's is left in SQLite files of the stack's home.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from datetime import datetime

import pytest
from postgres_cluster import psql, throwaway_cluster
from stack_processes import PORT_KEYS, leftovers, port_flags, stack_command, wait_for_scheduled_run

from pipeline.process.ports import free_ports

pytestmark = pytest.mark.postgres
DAG_ID = "nightly_chat_retrain"
# every task of one night, each succeeding once: the sensor that waits for the day, then the five stages
TASK_IDS = ["wait_for_partition", "ingest", "validate", "train", "evaluate", "promote"]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_nightly_run_with_airflow_and_mlflow_on(database, stack_config, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"stack-{database}")
    ports = free_ports(len(PORT_KEYS))
    env = {**os.environ, "CHAT_RETRAIN_CONFIG": str(stack_config), "CHAT_RETRAIN_SCHEDULE": "0 2 * * *"}
    with throwaway_cluster(["airflow", "mlflow"]) if database == "postgres" else nullcontext() as address:
        databases = [] if address is None else [
            "--set", f"stack.airflow_db=postgresql+psycopg2://postgres@{address}/airflow",
            "--set", f"stack.mlflow_db=postgresql+psycopg2://postgres@{address}/mlflow"]
        try:
            began = time.monotonic()
            started = stack_command("up", "--home", str(home), *port_flags(ports), *databases, env=env, timeout=600)
            assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr[-3000:]}"
            up_s = time.monotonic() - began
            run = wait_for_scheduled_run(f"http://127.0.0.1:{ports[2]}", 420)
            assert run["state"] == "success", run
            run_s = (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()
            print(f"\n[{database}] stack up {up_s:.0f} s; scheduled DAG run {run_s:.0f} s (start to end, Airflow's clock)")
            if address is not None:
                assert psql(address, f"SELECT state FROM dag_run WHERE dag_id = '{DAG_ID}' AND run_type = 'scheduled'",
                            "airflow") == "success"
                succeeded = psql(address, f"SELECT task_id FROM task_instance WHERE dag_id = '{DAG_ID}' AND state = "
                                 "'success' ORDER BY task_id", "airflow")
                assert sorted(succeeded.split()) == sorted(TASK_IDS), succeeded
                stages = psql(address, "SELECT value FROM tags WHERE key = 'pipeline.stage' ORDER BY value", "mlflow")
                assert set(stages.split()) >= {"ingest", "validate", "train", "evaluate", "promote"}
                assert int(psql(address, "SELECT count(*) FROM model_versions", "mlflow")) == 1
                assert not list(home.glob(".airflow/*.db")) and not list(home.glob(".mlflow/*.db"))
        finally:
            stopped = stack_command("down", "--home", str(home), env=env)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert not leftovers(home), f"processes of the stack left after `stack down`: {leftovers(home)}"
