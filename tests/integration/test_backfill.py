"""A real Airflow 3 backfill (`python -m pipeline.backfill`, what `make backfill` runs): `airflow backfill create`
plus a scheduler and an api-server started for it and stopped after. Two dates -> two partitions, two
backfill DAG runs in MLflow, and the champion alias never moves."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

DATES = ["2026-11-01", "2026-11-02"]  # two dates run at once (--max-active-runs 2); each trains in turn (pool)


@pytest.mark.timeout(900)
def test_backfill_two_dates(airflow_db, make_config, tmp_path):
    config = make_config()
    result = subprocess.run([sys.executable, "-m", "pipeline.backfill", "--start", DATES[0], "--end", DATES[-1],
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
