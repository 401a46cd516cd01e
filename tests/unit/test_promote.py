"""The gate, the registry and rollback: a candidate becomes champion only if it beats tonight's incumbent without
regressing elsewhere, never from a backfill unless allowed. The registry is real MLflow on SQLite."""

import json
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ops import model_registry
from pipeline import promote
from pipeline.config import ProjectConfig

SCORES = {"candidate": {"bleu": 10.0, "rougeL": 20.0, "chrf1": 30.0, "perplexity": 12.0},
          "base": {"bleu": 4.0, "rougeL": 10.0, "chrf1": 25.0, "perplexity": 20.0}}
GATE = promote.PromoteConfig()


@pytest.mark.timeout(300)
def test_registry_lifecycle_worse_model_backfill_retry_rollback(tmp_path, promote_night, capsys):
    promote_night("night-1", bleu=8.0)
    promote_night("night-2", bleu=6.0)  # worse than champion v1 (recorded 8.0)
    promote_night("night-2", bleu=6.0)  # a retry must not register a third version
    project, output = promote_night("backfill-1", bleu=50.0, run_type="backfill")
    client = MlflowClient(tracking_uri=project.tracking_uri)
    assert len(client.search_model_versions("name = 'chat'")) == 3
    assert client.get_model_version_by_alias("chat", "champion").version == 1
    rejected = client.get_model_version(name="chat", version="2")
    assert (rejected.tags["data.digest"], rejected.tags["data.input_digest"]) == ("abc" * 8, "def" * 8)  # lineage
    inputs = client.get_run(rejected.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("conversations@2026-11-22", ("abc" * 8)[:16])]
    assert rejected.tags["promotion.decision"] == "rejected"
    assert rejected.tags["promotion.reason"] == "bleu 6.000 does not beat champion v1 (recorded scores) 8.000"
    # The registry pages of the UI lead with the descriptions: the decision, its reason and each check.
    assert rejected.description.startswith("**Decision: REJECTED") and rejected.tags["promotion.reason"] in (
        rejected.description)
    assert "- FAIL bleu: 6.000 vs champion v1 (recorded scores) 8.000" in rejected.description
    assert "champion" in client.get_registered_model("chat").description
    backfill = client.get_model_version_by_alias("chat", "challenger")
    assert backfill.version == 3 and "blocked: backfill run" in backfill.tags["promotion.reason"]
    assert backfill.tags["data.digest"] == "abc" * 8 and backfill.tags["airflow.run_type"] == "backfill"
    assert json.loads(backfill.tags["config.train"]) == {"train.system_prompt": None}

    report = (output / "evaluation_report.html").read_text()
    assert "NOT PROMOTED" in report and "data:image/png;base64," in report and "Language: en" in report

    assert model_registry.main(["rollback", "--config", _config(tmp_path, project), "--version", "3",
                          "--reason", "test"]) == 0
    assert capsys.readouterr().out.strip() == "champion: v1 -> v3"
    assert client.get_model_version_by_alias("chat", "champion").version == 3
    assert "by " in client.get_model_version("chat", "3").tags["rollback.note"]

    mlflow.set_tracking_uri(project.tracking_uri)
    replies = mlflow.pyfunc.load_model("models:/chat@champion").predict(
        pd.DataFrame({"messages": [[{"role": "user", "content": "Hello"}]]}), params={"max_new_tokens": 4})
    assert len(replies) == 1 and isinstance(replies[0], str)


def _config(tmp_path, project: ProjectConfig) -> str:
    import dataclasses

    import yaml

    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"project": dataclasses.asdict(project)}))
    return str(path)


def test_a_champion_that_moved_since_evaluate_is_named():
    scored_v3 = {"scores": {"candidate": {}, "champion": {}}, "champion_version": "3"}
    assert promote.champion_moved(SimpleNamespace(version="3"), scored_v3, None) is None  # unchanged
    assert promote.champion_moved(SimpleNamespace(version="4"), scored_v3, None) == (
        "champion is v4 but evaluate scored v3")
    # A retry of this run's own promote task may find its own version already champion: not a move.
    assert promote.champion_moved(SimpleNamespace(version="4"), scored_v3, SimpleNamespace(version="4")) is None
    nothing_then = {"scores": {"candidate": {}}, "champion_version": None, "champion_checked": True}
    assert promote.champion_moved(SimpleNamespace(version="4"), nothing_then, None) == (
        "champion is v4 but evaluate scored v-")
    not_scored = {"scores": {"candidate": {}}, "champion_version": None, "champion_checked": False}
    assert promote.champion_moved(SimpleNamespace(version="4"), not_scored, None) is None  # recorded scores decide
