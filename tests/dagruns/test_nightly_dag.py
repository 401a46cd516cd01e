"""The whole DAG, for real: Airflow's dag.test() runs the five stage commands on the tiny model and the real
chatterbot corpus; the outcome is checked in the data partition, the run outputs and the MLflow registry."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import ProjectConfig, RunContext
from pipeline.storage import outputs

REPO = Path(__file__).resolve().parents[2]
LOGICAL_DATE = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)


def run_dag(config: Path, logical_date: datetime.datetime = LOGICAL_DATE):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags")).get_dag("nightly_chat_retrain")
    dag_run = dag.test(logical_date=logical_date, run_conf={"config": str(config)})
    return dag_run, {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


@pytest.mark.timeout(600)
def test_nightly_run_registers_a_model_with_metrics(airflow_db, make_config, tmp_path):
    config = make_config()
    dag_run, states = run_dag(config)
    assert states == dict.fromkeys(["wait_for_partition", "ingest", "validate", "train", "evaluate", "promote"],
                                   "success")

    partition = tmp_path / "data" / "conversations" / "dt=2026-11-22"
    turns = pd.read_parquet(partition / "turns.parquet")
    assert set(turns["language"]) == {"en", "zh"} and (partition / "manifest.json").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (version,) = client.search_model_versions("name = 'tiny-chat'")
    assert client.get_model_version_by_alias("tiny-chat", "challenger").version == version.version
    assert client.get_model_version_by_alias("tiny-chat", "champion").version == version.version
    assert version.tags["airflow.run_id"] == dag_run.run_id and version.tags["airflow.run_type"] == "manual"
    assert version.tags["promotion.decision"] == "promoted"
    assert version.tags["promotion.reason"].startswith("perplexity") and "beats base model" in version.tags[
        "promotion.reason"]
    assert {"metric.bleu", "metric.rougeL", "metric.perplexity", "data.digest", "config.train"} <= set(version.tags)

    (parent,) = client.search_runs(
        [client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id],
        filter_string="tags.`pipeline.level` = 'dag_run'",
    )
    assert parent.data.tags["airflow.dag_id"] == "nightly_chat_retrain"
    assert parent.data.tags["airflow.logical_date"] == "2026-11-22"
    for metric in ("candidate/bleu", "base/bleu", "candidate/rougeL", "candidate/rougeL_zh", "candidate/perplexity",
                   "train/loss", "val/loss"):
        assert metric in parent.data.metrics
    stages = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["pipeline.stage"] for r in stages) == sorted(
        ["ingest", "validate", "train", "evaluate", "promote"])
    loss_curve = client.get_metric_history(
        next(r for r in stages if r.data.tags["pipeline.stage"] == "train").info.run_id, "train/loss_step")
    assert len(loss_curve) >= 3  # logged every 10 of 40 steps
    report = client.download_artifacts(parent.info.run_id, "evaluation_report.html", str(tmp_path))
    assert "PROMOTED" in Path(report).read_text()

    # The next night: the champion is scored on the same examples; the same data and seed give the same model,
    # which does not beat the champion (a tie), so the champion stays.
    second_run, states = run_dag(config, LOGICAL_DATE + datetime.timedelta(days=1))
    assert set(states.values()) == {"success"}
    evaluate_dir = outputs.run_dir(ProjectConfig(runs_root=str(tmp_path / "runs")),
                                   RunContext("2026-11-23", second_run.run_id, "nightly_chat_retrain"), "evaluate")
    evaluation = json.loads((evaluate_dir / "evaluation.json").read_text())
    assert set(evaluation["scores"]) == {"candidate", "champion", "base"} and evaluation["champion_version"] == "1"
    assert evaluation["scores"]["champion"]["perplexity"] == pytest.approx(
        evaluation["scores"]["candidate"]["perplexity"])
    second = client.get_model_version_by_alias("tiny-chat", "challenger")
    assert second.version == 2 and second.tags["promotion.decision"] == "rejected"
    assert "does not beat champion v1" in second.tags["promotion.reason"]
    assert client.get_model_version_by_alias("tiny-chat", "champion").version == 1


@pytest.mark.timeout(600)
def test_failed_validation_stops_the_run_before_training(airflow_db, make_config, tmp_path):
    config = make_config(validate={"min_conversations": {"train": 10**6}})
    _, states = run_dag(config)
    assert states["ingest"] == "success" and states["validate"] == "failed"
    assert {states[t] for t in ("train", "evaluate", "promote")} == {"upstream_failed"}
    assert not list((tmp_path / "runs").glob("*/*/train"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    # The failure and its reason are on the DAG run in MLflow: from the stage itself and from Airflow's callback.
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id],
        filter_string="tags.`pipeline.level` = 'dag_run'",
    )
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failure.stage"] == "validate" and parent.data.tags["failure.task"] == "validate"
    assert "DataValidationError" in parent.data.tags["failure.error"]
    assert "min_conversations [splits]" in parent.data.tags["failure.error"]  # the broken rule, by name


@pytest.mark.timeout(600)
def test_an_empty_day_skips_the_night_when_the_config_says_so(airflow_db, make_config, tmp_path):
    """The day is published but holds only single-speaker sessions: with ingest.empty_day=skip the sensor passes
    (the marker is there), ingest exits with the skip code, and the real Airflow run skips it and everything after:
    nothing is trained, nothing registered."""
    import json

    feed = tmp_path / "feed" / "dt=2026-11-22"
    feed.mkdir(parents=True)
    (feed / "a.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "anyone?"}]}) + "\n")
    from pipeline.data import markers

    (feed / markers.NAME).write_bytes(markers.encode(markers.describe(feed)))
    config = make_config(ingest={"sources": [{"format": "openai", "uri": str(tmp_path / "feed"), "partitioned": True,
                                              "marker": True}], "empty_day": "skip"})
    dag_run, states = run_dag(config)
    assert states == {"wait_for_partition": "success", **dict.fromkeys(
        ["ingest", "validate", "train", "evaluate", "promote"], "skipped")}
    assert not (tmp_path / "data" / "conversations" / "dt=2026-11-22").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_model_versions("name = 'tiny-chat'") == []
