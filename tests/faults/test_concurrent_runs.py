"""The nightly run and a two-date backfill at once, on the long-running stack (`make up`: S3, MLflow server,
Airflow's api-server, scheduler, dag-processor, triggerer): no partition is clobbered, and only the nightly run may
move `champion`.

    make test-faults        # this file: ~6 min on 2 cores (three DAG runs of the tiny model, training one at a time)

The scheduler starts the scheduled run of the latest complete day by itself (catchup=False); the backfill is created
through Airflow's REST API while that run is in flight, as a data engineer would.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from harness import REPO, digest
from mlflow.tracking import MlflowClient

from pipeline import stack

sys.path.insert(0, str(REPO / "tests" / "stack"))
from stack_processes import PORT_KEYS, free_ports, leftovers, port_flags, stack_command  # noqa: E402

pytestmark = pytest.mark.timeout(1800)
DAG_ID = "nightly_chat_retrain"
TIMEOUT_S = 1200


def api(url: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def dag_runs(airflow_url: str) -> list[dict]:
    return api(f"{airflow_url}/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]


def wait_until(condition, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(3)
    pytest.fail(message)


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("concurrent")
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["project"].update(data_root=str(root / "data"), runs_root=str(root / "runs"), base_model=str(tiny_model_dir),
                          tracking_uri=f"sqlite:///{root / 'unused.db'}", artifact_root=str(root / "unused"))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    home, ports = root / "home", free_ports(len(PORT_KEYS))
    env = {**os.environ, "CHAT_RETRAIN_CONFIG": str(config), "CHAT_RETRAIN_SCHEDULE": "0 2 * * *"}
    airflow_url = f"http://127.0.0.1:{ports[2]}"
    try:
        started = stack_command("up", "--home", str(home), *port_flags(ports), env=env)
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        nightly = wait_until(lambda: next((r for r in dag_runs(airflow_url) if r["run_type"] == "scheduled"
                                           and r["state"] == "running"), None), 300, "no scheduled run started")
        dates = [str(datetime.date.fromisoformat(nightly["logical_date"][:10]) - datetime.timedelta(days=d))
                 for d in (2, 1)]
        api(f"{airflow_url}/api/v2/backfills", {
            "dag_id": DAG_ID, "from_date": f"{dates[0]}T00:00:00Z", "to_date": f"{dates[1]}T23:59:59Z",
            "max_active_runs": 2, "reprocess_behavior": "none",
            "dag_run_conf": {"config": str(config), "allow_backfill_promotion": False}})
        runs = wait_until(lambda: (lambda rs: rs if len(rs) == 3 and all(r["state"] in ("success", "failed")
                                                                           for r in rs) else None)(dag_runs(airflow_url)),
                          TIMEOUT_S, f"the nightly and backfill runs did not finish in {TIMEOUT_S} s")
        yield {"runs": runs, "config": config, "data": root / "data", "env": stack.client_env(home), "root": root}
    finally:
        stopped = stack_command("down", "--home", str(home), env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers(home), f"processes of the stack left after `stack down`: {leftovers(home)}"


def test_all_three_runs_succeed_and_overlap_in_time(three_runs):
    runs = three_runs["runs"]
    assert sorted((r["run_type"], r["state"]) for r in runs) == [("backfill", "success"), ("backfill", "success"),
                                                                 ("scheduled", "success")]
    nightly = next(r for r in runs if r["run_type"] == "scheduled")
    assert any(r["start_date"] < nightly["end_date"] for r in runs if r["run_type"] == "backfill"), runs


def test_no_partition_is_clobbered(three_runs, tmp_path):
    """Each date's partition is what an ingest of that date alone writes, byte for byte."""
    for run in three_runs["runs"]:
        date = run["logical_date"][:10]
        alone = yaml.safe_load(three_runs["config"].read_text())
        alone["project"].update(data_root=str(tmp_path / "alone"), runs_root=str(tmp_path / "runs"),
                                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        config = tmp_path / "alone.yaml"
        config.write_text(yaml.safe_dump(alone, allow_unicode=True))
        ingest = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(config), "--run-date", date],
                                cwd=REPO, capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
        assert ingest.returncode == 0, ingest.stderr[-2000:]
        turns = Path("conversations") / f"dt={date}" / "turns.parquet"
        assert digest(three_runs["data"] / turns) == digest(tmp_path / "alone" / turns), date


def test_only_the_nightly_run_moves_champion(three_runs):
    client = MlflowClient(three_runs["env"]["MLFLOW_TRACKING_URI"])
    name = yaml.safe_load(three_runs["config"].read_text())["project"]["registered_model"]
    versions = [client.get_model_version(name, v.version) for v in client.search_model_versions(f"name = '{name}'")]
    by_type = {v.tags["airflow.run_type"]: [] for v in versions}
    for version in versions:
        by_type[version.tags["airflow.run_type"]].append(version)
    assert sorted((t, len(vs)) for t, vs in by_type.items()) == [("backfill", 2), ("scheduled", 1)]
    (nightly,) = by_type["scheduled"]
    assert "champion" in nightly.aliases
    for backfill in by_type["backfill"]:
        assert "champion" not in backfill.aliases and backfill.tags.get("promotion.decision") != "promoted", backfill.tags
