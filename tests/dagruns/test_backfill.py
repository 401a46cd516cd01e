"""A real Airflow 3 backfill (`python -m ops.backfill`, what `make backfill` runs): `airflow backfill create`
plus a scheduler and an api-server started for it and stopped after. Two dates -> two partitions, two
backfill DAG runs in MLflow, and the champion alias never moves. Its progress comes from the api-server's REST
API: backfill runs of the asked range only, every page, and a timeout that names the unfinished dates."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ops import backfill, services

DATES = ["2026-11-01", "2026-11-02"]  # two dates run at once (--max-active-runs 2); each trains in turn (pool)


@pytest.mark.timeout(900)
def test_backfill_two_dates(airflow_db, make_config, tmp_path):
    config = make_config()
    result = subprocess.run([sys.executable, "-m", "ops.backfill", "--start", DATES[0], "--end", DATES[-1],
                             "--config", str(config), "--timeout", "780"], capture_output=True, text=True, timeout=840)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.split() == [item for date in DATES for item in (date, "success")]
    assert sorted(p.name for p in (tmp_path / "data" / "conversations").iterdir()) == [f"dt={d}" for d in DATES]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nightly-chat-retrain-test")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`pipeline.level` = 'dag_run'")
    assert sorted((r.data.tags["airflow.logical_date"], r.data.tags["airflow.run_type"], r.info.status)
                  for r in runs) == [(d, "backfill", "FINISHED") for d in DATES]
    versions = client.search_model_versions("name = 'tiny-chat'")
    assert len(versions) == len(DATES)
    assert all("blocked: backfill run" in v.tags["promotion.reason"] and v.tags["promotion.decision"] == "rejected"
               for v in versions)
    assert "champion" not in client.get_registered_model("tiny-chat").aliases


@pytest.mark.timeout(300)
def test_progress_is_read_from_the_rest_api_page_by_page(tmp_path, monkeypatch, capsys):
    # An Airflow home of its own: runs queued here are never run, and must not meet test_backfill_two_dates' scheduler.
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    env = backfill._environment()
    airflow = [str(Path(sys.executable).parent / "airflow")]
    subprocess.run(airflow + ["db", "migrate"], env=env, check=True, capture_output=True)
    backfill._check(airflow + ["dags", "reserialize"], env)
    backfill._check(airflow + ["backfill", "create", "--dag-id", backfill.DAG_ID, "--from-date", "2026-10-01",
                               "--to-date", "2026-10-04T23:59:59"], env)  # queued: no scheduler runs them
    server = services.start(airflow + ["api-server", "--port", env["AIRFLOW__API__PORT"]], env,
                            tmp_path / "api-server.log", tmp_path)
    try:
        backfill._wait_for_api(env, server)
        monkeypatch.setattr(backfill, "PAGE", 2)  # three runs in range: two pages
        api = backfill._api_url(env)
        assert backfill.backfill_states(api, "2026-10-02", "2026-10-04") == dict.fromkeys(
            ["2026-10-02", "2026-10-03", "2026-10-04"], "queued")
        states = backfill._wait(api, server, "2026-10-01", "2026-10-02", timeout=1)
    finally:
        services.stop(server, timeout=60)
    assert states == {"2026-10-01": "timed out", "2026-10-02": "timed out"}
    assert backfill.report(states, "2026-10-01", "2026-10-02", env["AIRFLOW_HOME"]) == 1
    assert "not successful: 2026-10-01 (timed out), 2026-10-02 (timed out)" in capsys.readouterr().err
