"""The gate, the registry and rollback: a candidate becomes champion only if it beats tonight's incumbent without
regressing elsewhere, never from a backfill unless allowed. The registry is real MLflow on SQLite."""

import json
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import promote, registry
from pipeline.config import ProjectConfig, RunContext

SCORES = {"candidate": {"bleu": 10.0, "rougeL": 20.0, "chrf1": 30.0, "perplexity": 12.0},
          "base": {"bleu": 4.0, "rougeL": 10.0, "chrf1": 25.0, "perplexity": 20.0}}
GATE = promote.PromoteConfig()


def test_first_candidate_is_judged_against_the_base_model():
    decision = promote.decide(GATE, SCORES, champion=None)
    assert decision.promote and decision.incumbent_name == "base model"
    assert decision.reason == "bleu 10.000 beats base model 4.000"
    # No per-example statistics given: the point estimate decides, and the check says so.
    assert decision.checks[0].startswith("PASS bleu: 10.000 vs base model 4.000 (gain +6.000, point estimate")


def test_champion_scored_tonight_is_the_incumbent():
    tonight = {**SCORES, "champion": {"bleu": 11.0, "rougeL": 19.0, "chrf1": 30.0}}
    champion = SimpleNamespace(version=3, tags={"metric.bleu": "1.0"})  # recorded score is stale: not used
    decision = promote.decide(GATE, tonight, champion)
    assert not decision.promote and decision.incumbent_name == "champion v3"
    assert decision.incumbent == 11.0


def test_recorded_champion_scores_are_the_fallback():
    champion = SimpleNamespace(version=3, tags={"metric.bleu": "9.5", "metric.rougeL": "20.0"})
    decision = promote.decide(GATE, SCORES, champion)
    assert decision.promote and decision.incumbent_name == "champion v3 (recorded scores)"


def test_regression_on_another_metric_blocks_promotion():
    tonight = {**SCORES, "champion": {"bleu": 9.0, "rougeL": 23.0, "chrf1": 30.5}}
    decision = promote.decide(GATE, tonight, SimpleNamespace(version=1, tags={}))
    assert not decision.promote
    assert decision.reason == "bleu 10.000 beats champion v1 9.000; blocked: rougeL dropped by more than its allowance 2.0"
    assert any(c.startswith("PASS chrf1: 30.000 vs champion v1 30.500 (gain -0.500") for c in decision.checks)


def test_per_language_regression_is_caught():
    config = promote.PromoteConfig(max_regression={"rougeL_zh": 1.0})
    tonight = {"candidate": {"bleu": 10.0, "rougeL_zh": 5.0}, "base": {"bleu": 4.0, "rougeL_zh": 8.0}}
    decision = promote.decide(config, tonight, None)
    assert not decision.promote and decision.reason.endswith("blocked: rougeL_zh dropped by more than its allowance 1.0")


def test_margin_lower_is_better_and_ties():
    assert not promote.decide(promote.PromoteConfig(min_improvement=6.5), SCORES, None).promote
    assert promote.decide(promote.PromoteConfig(gate_metric="perplexity", max_regression={}), SCORES, None).promote
    tie = {"candidate": {"bleu": 4.0}, "base": {"bleu": 4.0}}
    assert not promote.decide(GATE, tie, None).promote  # a tie is not an improvement


def test_backfill_never_moves_champion_unless_allowed():
    blocked = promote.decide(GATE, SCORES, None, run_type="backfill")
    assert not blocked.promote and "blocked: backfill run" in blocked.reason
    allowed = promote.decide(promote.PromoteConfig(allow_backfill_promotion=True), SCORES, None, "backfill")
    assert allowed.promote


def _promote(tmp_path, model_dir, run_id, bleu, run_type="scheduled"):
    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"), registered_model="chat")
    evaluation, dataset = tmp_path / run_id, tmp_path / "dataset"
    evaluation.mkdir(exist_ok=True)
    dataset.mkdir(exist_ok=True)
    (dataset / "manifest.json").write_text(json.dumps(
        {"dataset": "conversations", "partition_date": "2026-11-22", "digest": "abc" * 8, "input_digest": "def" * 8}))
    (evaluation / "evaluation.json").write_text(json.dumps({
        "scores": {"candidate": {"bleu": bleu, "bleu_en": bleu}, "base": {"bleu": 4.0, "bleu_en": 4.0}},
        "model": str(model_dir), "data_digest": "abc" * 8, "data_input_digest": "def" * 8, "examples": 1,
        "dataset": str(dataset)}))
    pd.DataFrame({"language": ["en"], "prompt": ["hi"], "reference": ["hello"], "candidate": ["hey"]}).to_parquet(
        evaluation / "samples.parquet")
    ctx = RunContext("2026-11-22", run_id, "dag", run_type)
    # Guards need metrics this hand-made evaluation lacks (an unknown guard key is a config error): gate only.
    return project, promote.run(promote.PromoteConfig(max_regression={}), project, ctx, str(evaluation))


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path):
    (tiny_model_dir / "train_config.json").write_text(json.dumps({"train.system_prompt": None}))
    return tiny_model_dir


@pytest.mark.timeout(300)
def test_registry_lifecycle_worse_model_backfill_retry_rollback(tmp_path, model_dir, capsys):
    _promote(tmp_path, model_dir, "night-1", bleu=8.0)
    _promote(tmp_path, model_dir, "night-2", bleu=6.0)  # worse than champion v1 (recorded 8.0)
    _promote(tmp_path, model_dir, "night-2", bleu=6.0)  # a retry must not register a third version
    project, output = _promote(tmp_path, model_dir, "backfill-1", bleu=50.0, run_type="backfill")
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

    assert registry.main(["rollback", "--config", _config(tmp_path, project), "--version", "3",
                          "--reason", "test"]) == 0
    assert capsys.readouterr().out.strip() == "champion: v1 -> v3"
    assert client.get_model_version_by_alias("chat", "champion").version == 3
    assert "by " in client.get_model_version("chat", "3").tags["rollback.note"]

    mlflow.set_tracking_uri(project.tracking_uri)
    replies = mlflow.pyfunc.load_model("models:/chat@champion").predict(
        pd.DataFrame({"messages": [[{"role": "user", "content": "Hello"}]]}), params={"max_new_tokens": 4})
    assert len(replies) == 1 and isinstance(replies[0], str)


def test_rollback_to_a_missing_version_fails_cleanly(tmp_path, capsys):
    project = ProjectConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "a"))
    assert registry.main(["rollback", "--config", _config(tmp_path, project), "--version", "7", "--reason", "x"]) == 1
    assert "registry error" in capsys.readouterr().err


def _config(tmp_path, project: ProjectConfig) -> str:
    import dataclasses

    import yaml

    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"project": dataclasses.asdict(project)}))
    return str(path)
