"""The nightly run and a two-date backfill at once, on the long-running stack (`make up`: S3, MLflow server,
Airflow's api-server, scheduler, dag-processor, triggerer), in both orders that matter, made deterministic with
failpoints (pipeline/process/failpoints.py), not timing luck:

- the backfill evaluates BEFORE the night promotes: it scored "no champion" (the base model), then the night moves
  champion to v1 under it. The backfill, which cannot move champion, registers its challenger and records its
  decision against what it scored, saying champion moved;
- the backfill evaluates AFTER the night promotes: it scores champion v1 and is judged against it.

Either way no partition is clobbered, nothing is registered twice, every run succeeds, and only the nightly run
moves `champion`, onto a version the gate compared with the champion it replaced.

    make test-faults        # this file: ~12 min on 2 cores (two stacks, three DAG runs each, training one at a time)

The scheduler starts the scheduled run of the latest complete day by itself (catchup=False); the backfill is created
through Airflow's REST API while that run is in flight, as a data engineer would.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from harness import REPO, digest
from mlflow.tracking import MlflowClient

from ops import services, stack

sys.path.insert(0, str(REPO / "tests" / "stack"))
from stack_processes import PORT_KEYS, leftovers, port_flags, stack_command  # noqa: E402

from pipeline.process.ports import free_ports  # noqa: E402

pytestmark = pytest.mark.timeout(1800)
DAG_ID = "nightly_chat_retrain"
TIMEOUT_S = 1200
# Held stages sleep in a task slot: the night's promote and both backfill promotes at once, plus one that works.
PARALLELISM = 4


def post(url: str, body: dict) -> dict:
    """As a data engineer's client would: a 503 of SQLite's lock (the scheduler is busy) is retried."""
    try:
        return services.post_json(url, body)
    except RuntimeError as error:  # the api-server's own words, not only the status
        pytest.fail(str(error))


def dag_runs(airflow_url: str) -> list[dict]:
    return services.get_json(f"{airflow_url}/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]


def task_state(airflow_url: str, run: dict, task_id: str) -> str | None:
    run_id = urllib.parse.quote(run["dag_run_id"], safe="")
    return services.get_json(f"{airflow_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")["state"]


def wait_until(condition, message: str, timeout: float = TIMEOUT_S, every=None):
    """Poll `condition` until it returns something true; `every` runs on each poll (keeps a stage released)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if found := condition():
            return found
        time.sleep(3)
    pytest.fail(message)


def release(hold: Path):
    """Let every stage held at this point go, also one that arrives later (it would create the file again)."""
    return lambda: hold.unlink(missing_ok=True)


def nightly_and_backfill(root: Path, tiny_model_dir: Path, points: str, drive) -> dict:
    """The stack with PIPELINE_FAILPOINT=points; the scheduled night, then a backfill of the two days before it;
    `drive(airflow_url, holds, runs)` releases the held stages in the order under test. Returns what ran."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["project"].update(data_root=str(root / "data"), runs_root=str(root / "runs"), base_model=str(tiny_model_dir),
                          tracking_uri=f"sqlite:///{root / 'unused.db'}", artifact_root=str(root / "unused"))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True))
    home, ports, holds = root / "home", free_ports(len(PORT_KEYS)), root / "holds"
    holds.mkdir()
    env = {**os.environ, "CHAT_RETRAIN_CONFIG": str(config), "CHAT_RETRAIN_SCHEDULE": "0 2 * * *",
           "PIPELINE_FAILPOINT": points, "PIPELINE_FAILPOINT_HOLD": str(holds / "{point}")}
    airflow_url = f"http://127.0.0.1:{ports[2]}"
    try:
        started = stack_command("up", "--home", str(home), *port_flags(ports), "--set",
                                f"stack.parallelism={PARALLELISM}", env=env)
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        nightly = wait_until(lambda: next((r for r in dag_runs(airflow_url) if r["run_type"] == "scheduled"
                                           and r["state"] == "running"), None), "no scheduled run started", 300)
        dates = [str(datetime.date.fromisoformat(nightly["logical_date"][:10]) - datetime.timedelta(days=d))
                 for d in (2, 1)]
        post(f"{airflow_url}/api/v2/backfills", {
            "dag_id": DAG_ID, "from_date": f"{dates[0]}T00:00:00Z", "to_date": f"{dates[1]}T23:59:59Z",
            "max_active_runs": 2, "reprocess_behavior": "none",
            "dag_run_conf": {"config": str(config), "allow_backfill_promotion": False}})
        backfills = wait_until(lambda: (lambda rs: rs if len(rs) == 2 else None)(
            [r for r in dag_runs(airflow_url) if r["run_type"] == "backfill"]), "the backfill created no runs", 120)
        drive(airflow_url, holds, {"nightly": nightly, "backfills": backfills})
        runs = wait_until(lambda: (lambda rs: rs if len(rs) == 3 and all(r["state"] in ("success", "failed")
                                                                           for r in rs) else None)(dag_runs(airflow_url)),
                          f"the nightly and backfill runs did not finish in {TIMEOUT_S} s",
                          every=lambda: [hold.unlink(missing_ok=True) for hold in holds.iterdir()])
        # Read while the stack's MLflow server is up: the tests below look at what the runs registered.
        return {"runs": runs, "config": config, "data": root / "data",
                "versions": versions_by_run_type(stack.client_env(home)["MLFLOW_TRACKING_URI"], raw)}
    finally:
        stopped = stack_command("down", "--home", str(home), env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers(home), f"processes of the stack left after `stack down`: {leftovers(home)}"


def backfill_scores_first(airflow_url: str, holds: Path, runs: dict) -> None:
    """Hold the night's promote until both backfill runs have evaluated; then let the night promote; only then
    let the backfills' promotes go, with champion moved under them."""
    night_hold, backfill_hold = holds / "promote.start@scheduled", holds / "promote.start@backfill"
    wait_until(lambda: night_hold.exists() and all(task_state(airflow_url, run, "evaluate") == "success"
                                                   for run in runs["backfills"]),
               "the backfill runs did not evaluate while the night was held before promote")
    wait_until(lambda: next((r for r in dag_runs(airflow_url) if r["dag_run_id"] == runs["nightly"]["dag_run_id"]
                             and r["state"] in ("success", "failed")), None),
               "the nightly run did not finish after its promote was released", every=release(night_hold))
    assert backfill_hold.exists(), "a backfill promote ran before the night promoted"


def night_promotes_first(airflow_url: str, holds: Path, runs: dict) -> None:
    """Hold the backfills' evaluates until the night has promoted."""
    wait_until(lambda: next((r for r in dag_runs(airflow_url) if r["dag_run_id"] == runs["nightly"]["dag_run_id"]
                             and r["state"] in ("success", "failed")), None),
               "the nightly run did not finish while the backfills were held before evaluate")
    assert all(task_state(airflow_url, run, "evaluate") != "success" for run in runs["backfills"])


@pytest.fixture(scope="module")
def backfill_before(tmp_path_factory, tiny_model_dir):
    return nightly_and_backfill(tmp_path_factory.mktemp("backfill-first"), tiny_model_dir,
                                "promote.start@scheduled,promote.start@backfill", backfill_scores_first)


@pytest.fixture(scope="module")
def backfill_after(tmp_path_factory, tiny_model_dir):
    return nightly_and_backfill(tmp_path_factory.mktemp("night-first"), tiny_model_dir, "evaluate.start@backfill",
                                night_promotes_first)


def versions_by_run_type(tracking_uri: str, config: dict) -> dict[str, list]:
    client, name = MlflowClient(tracking_uri), config["project"]["registered_model"]
    found: dict[str, list] = {}
    for version in client.search_model_versions(f"name = '{name}'"):
        version = client.get_model_version(name, version.version)
        found.setdefault(version.tags["airflow.run_type"], []).append(version)
    return found


@pytest.mark.parametrize("order", ["backfill_before", "backfill_after"])
def test_all_three_runs_succeed_and_overlap_in_time(order, request):
    runs = request.getfixturevalue(order)["runs"]
    assert sorted((r["run_type"], r["state"]) for r in runs) == [("backfill", "success"), ("backfill", "success"),
                                                                 ("scheduled", "success")]
    nightly = next(r for r in runs if r["run_type"] == "scheduled")
    assert all(r["start_date"] < nightly["end_date"] for r in runs if r["run_type"] == "backfill"), runs


@pytest.mark.parametrize("order", ["backfill_before", "backfill_after"])
def test_only_the_night_moves_champion_and_nothing_is_registered_twice(order, request):
    by_type = request.getfixturevalue(order)["versions"]
    assert sorted((t, len(vs)) for t, vs in by_type.items()) == [("backfill", 2), ("scheduled", 1)]
    (nightly,) = by_type["scheduled"]
    assert "champion" in nightly.aliases and nightly.tags["promotion.incumbent"] == "base model"
    for backfill in by_type["backfill"]:
        assert "champion" not in backfill.aliases and backfill.tags["promotion.decision"] == "rejected"
        assert "blocked: backfill run" in backfill.tags["promotion.reason"] or "does not beat" in (
            backfill.tags["promotion.reason"])


def test_a_backfill_that_scored_before_the_night_promoted_says_what_it_was_judged_against(backfill_before):
    for backfill in backfill_before["versions"]["backfill"]:
        assert backfill.tags["promotion.incumbent"] == "base model", backfill.tags
        assert "champion moved to v1 since, and this run does not move it" in backfill.tags["promotion.reason"]


def test_a_backfill_that_scored_after_the_night_promoted_is_judged_against_the_new_champion(backfill_after):
    for backfill in backfill_after["versions"]["backfill"]:
        assert backfill.tags["promotion.incumbent"] == "champion v1", backfill.tags
        assert "NOTE" not in backfill.tags["promotion.checks"]


def test_no_partition_is_clobbered(backfill_before, tmp_path):
    """Each date's partition is what an ingest of that date alone writes, byte for byte."""
    for run in backfill_before["runs"]:
        date = run["logical_date"][:10]
        alone = yaml.safe_load(backfill_before["config"].read_text())
        alone["project"].update(data_root=str(tmp_path / "alone"), runs_root=str(tmp_path / "runs"),
                                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        config = tmp_path / "alone.yaml"
        config.write_text(yaml.safe_dump(alone, allow_unicode=True))
        ingest = subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(config), "--run-date", date],
                                cwd=REPO, capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in os.environ.items() if k not in (
                                    "MLFLOW_TRACKING_URI", "PIPELINE_FAILPOINT")})
        assert ingest.returncode == 0, ingest.stderr[-2000:]
        turns = Path("conversations") / f"dt={date}" / "turns.parquet"
        assert digest(backfill_before["data"] / turns) == digest(tmp_path / "alone" / turns), date
