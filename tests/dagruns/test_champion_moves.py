"""Promote when another run moved `champion` after this run's evaluate, through the real stage commands (the CLI,
in this process) on the tiny model: a run that may move champion re-scores (evaluate runs again inside promote and
the gate compares with the champion it would replace); a backfill, which cannot move it, records its decision
against what it scored and says so. Nothing is registered twice and no stage fails."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import cli
from pipeline.storage import outputs

DATE = "2026-11-22"


@pytest.fixture
def stage(make_config, tmp_path, monkeypatch):
    """`python -m pipeline <stage> ...` of one DAG run, in this process; returns the stage's output URI."""
    config = make_config()
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the stage's SIGTERM handler stays out of pytest

    def run(name: str, run_id: str, run_type: str = "manual", **inputs) -> str:
        xcom = tmp_path / f"xcom-{name}-{run_id}.json"
        monkeypatch.setenv("PIPELINE_XCOM_FILE", str(xcom))
        arguments = [name, "--config", str(config), "--run-date", DATE, "--run-id", run_id, "--run-type", run_type]
        arguments += [part for key, value in inputs.items() for part in (f"--{key}", value)]
        assert cli.main(arguments) == 0, f"{name} of {run_id} failed"
        return json.loads(xcom.read_text())

    run.client = lambda: MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return run


@pytest.mark.timeout(600)
def test_a_moved_champion_is_rescored_by_a_run_that_may_move_it_and_recorded_by_one_that_cannot(stage):
    dataset = stage("validate", "night", dataset=stage("ingest", "night"))
    model = stage("train", "night", dataset=dataset)
    # Three runs evaluate while there is no champion yet; then one of them (`other`) promotes.
    night = stage("evaluate", "night", dataset=dataset, model=model)
    backfill = stage("evaluate", "backfill", "backfill", dataset=dataset, model=model)
    other = stage("evaluate", "other", dataset=dataset, model=model)
    assert json.loads((Path(night) / outputs.EVALUATION).read_text())["champion_version"] is None
    stage("promote", "other", evaluation=other)
    client = stage.client()
    assert client.get_model_version_by_alias("tiny-chat", "champion").tags["airflow.run_id"] == "other"

    # The backfill cannot move champion: no re-scoring, its decision is against the base model it scored.
    stage("promote", "backfill", "backfill", evaluation=backfill)
    recorded = version_of(client, "backfill")
    assert recorded.tags["promotion.decision"] == "rejected"
    assert recorded.tags["promotion.incumbent"] == "base model"
    assert "judged against what evaluate scored (base model): champion moved to v1 since, and this run does not " \
           "move it" in recorded.tags["promotion.reason"]
    assert "FAIL run type: backfill runs do not move champion" in recorded.tags["promotion.checks"]
    assert json.loads((Path(backfill) / outputs.EVALUATION).read_text())["champion_version"] is None

    # The night may move champion: evaluate runs again inside promote and scores champion v1 on the same examples.
    stage("promote", "night", evaluation=night)
    evaluation = json.loads((Path(night) / outputs.EVALUATION).read_text())
    assert evaluation["champion_version"] == "1" and "champion" in evaluation["scores"]
    decided = version_of(client, "night")
    assert decided.tags["promotion.incumbent"] == "champion v1"  # the same weights: no gain, rejected
    assert decided.tags["promotion.decision"] == "rejected" and "NOTE" not in decided.tags["promotion.checks"]
    assert str(client.get_model_version_by_alias("tiny-chat", "champion").version) == "1"
    versions = client.search_model_versions("name = 'tiny-chat'")
    assert sorted(v.tags["airflow.run_id"] for v in versions) == ["backfill", "night", "other"]  # none twice
    night_runs = client.search_runs(
        [client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id],
        filter_string="tags.`airflow.run_id` = 'night' and tags.`pipeline.level` = 'stage'")
    assert sorted(r.data.tags["pipeline.stage"] for r in night_runs if r.info.status == "FINISHED") == [
        "evaluate", "evaluate", "ingest", "promote", "train", "validate"]


def version_of(client: MlflowClient, run_id: str):
    (found,) = [v for v in client.search_model_versions("name = 'tiny-chat'") if v.tags["airflow.run_id"] == run_id]
    return client.get_model_version("tiny-chat", found.version)
