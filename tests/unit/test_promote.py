"""The gate: a candidate becomes champion only if it beats the incumbent; the registry is real MLflow (SQLite)."""

import json
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import promote
from pipeline.config import ProjectConfig, RunContext

SCORES = {"candidate": {"bleu": 10.0, "perplexity": 12.0}, "base": {"bleu": 4.0, "perplexity": 20.0}}


def test_first_candidate_is_judged_against_the_base_model():
    decision = promote.decide(promote.PromoteConfig(), SCORES, champion=None)
    assert decision.promote and decision.incumbent_name == "base model"
    assert "bleu 10.000 beats base model 4.000" in decision.reason


def test_champion_is_the_incumbent_when_there_is_one():
    champion = SimpleNamespace(version="3", tags={"metric.bleu": "11.0"})
    decision = promote.decide(promote.PromoteConfig(), SCORES, champion)
    assert not decision.promote and decision.incumbent_name == "champion v3"


def test_margin_and_lower_is_better_metrics():
    assert not promote.decide(promote.PromoteConfig(min_improvement=6.5), SCORES, None).promote
    assert promote.decide(promote.PromoteConfig(gate_metric="perplexity"), SCORES, None).promote
    equal = {"candidate": {"bleu": 4.0}, "base": {"bleu": 4.0}}
    assert not promote.decide(promote.PromoteConfig(), equal, None).promote  # a tie is not an improvement


def _promote(tmp_path, tiny_model_dir, run_id, bleu):
    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"), registered_model="chat")
    evaluation = tmp_path / run_id
    evaluation.mkdir(exist_ok=True)
    (evaluation / "evaluation.json").write_text(json.dumps({
        "scores": {"candidate": {"bleu": bleu}, "base": {"bleu": 4.0}}, "model": str(tiny_model_dir),
        "data_digest": "abc"}))
    return promote.run(promote.PromoteConfig(), project, RunContext("2026-11-22", run_id, "dag"), str(evaluation))


@pytest.mark.timeout(300)
def test_worse_model_is_registered_but_never_champion(tmp_path, tiny_model_dir):
    (tiny_model_dir / "train_config.json").write_text("{}")
    _promote(tmp_path, tiny_model_dir, "night-1", bleu=8.0)
    _promote(tmp_path, tiny_model_dir, "night-2", bleu=6.0)  # worse than champion v1, better than base
    _promote(tmp_path, tiny_model_dir, "night-2", bleu=6.0)  # a retry must not register a third version
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.search_model_versions("name = 'chat'")) == 2
    assert client.get_model_version_by_alias("chat", "champion").version == 1
    challenger = client.get_model_version_by_alias("chat", "challenger")
    assert challenger.version == 2 and challenger.tags["promotion.decision"] == "rejected"
    assert "does not beat champion v1" in challenger.tags["promotion.reason"]
    assert challenger.tags["data.digest"] == "abc" and challenger.tags["airflow.run_id"] == "night-2"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    replies = mlflow.pyfunc.load_model("models:/chat@champion").predict(
        __import__("pandas").DataFrame({"prompt": ["Hello"]}), params={"max_new_tokens": 4})
    assert len(replies) == 1 and isinstance(replies[0], str)
