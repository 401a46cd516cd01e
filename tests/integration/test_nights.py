"""Two nights of the dated chat feed through the real stage commands (the CLI, in this process) on the tiny model:
the first starts from the base model and is promoted; the second starts from that champion's weights (fetched
through the registry's weight cache), replays the first night's train conversations beside its own, and is scored
on the memory set (the first night's test replies), which the gate guards."""

from __future__ import annotations

import datetime
import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from ops import chat_feed
from pipeline import cli
from pipeline.storage import outputs

NIGHTS = ["2026-11-01", "2026-11-02"]


@pytest.fixture
def night(make_config, tmp_path, monkeypatch):
    """`python -m pipeline <stage> ...` for one night of the feed, in this process; returns the stage's output URI."""
    chat_feed.publish(str(tmp_path / "feed"), datetime.date(2026, 12, 5))
    config = make_config(
        ingest={"sources": [{"format": "openai", "uri": str(tmp_path / "feed"), "partitioned": True, "marker": True,
                             "language": "en"}]},  # English chit-chat: detection would call a few "it"
        # a feed day holds ~30 two-speaker conversations; 44% of its conversations have one speaker (quarantined)
        validate={"languages": ["en"], "min_conversations": {"train": 5, "validation": 1, "test": 1},
                  "max_quarantine_ratio": 0.9, "max_duplicate_ratio": 0.5},
        train={"init": "champion", "replay": 1.0, "drop_replyless": True},
        evaluate={"anchor": None, "max_examples": 24, "history_turns": 5, "memory": {"size": 8, "days": 5}},
        promote={"max_regression": {"memory_rougeL": 50.0}, "min_examples": 4})
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the stage's SIGTERM handler stays out of pytest

    def run(stage: str, date: str, *extra: str, **inputs) -> str:
        xcom = tmp_path / f"xcom-{stage}-{date}.json"
        monkeypatch.setenv("PIPELINE_XCOM_FILE", str(xcom))
        arguments = [stage, "--config", str(config), "--run-date", date, "--run-id", f"night-{date}", *extra]
        arguments += [part for key, value in inputs.items() for part in (f"--{key}", value)]
        assert cli.main(arguments) == 0, f"{stage} of {date} failed"
        return json.loads(xcom.read_text())

    run.client = lambda: MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run.project = yaml.safe_load(config.read_text())["project"]
    return run


def tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.mark.timeout(900)
def test_the_second_night_starts_from_the_champion_and_replays_the_first(night):
    first = night("validate", NIGHTS[0], dataset=night("ingest", NIGHTS[0]))
    first_model = night("train", NIGHTS[0], dataset=first)
    assert json.loads((Path(first_model) / outputs.MANIFEST).read_text())["init_from"] == night.project["base_model"]
    night("promote", NIGHTS[0], evaluation=night("evaluate", NIGHTS[0], dataset=first, model=first_model))
    client = night.client()
    champion = client.get_model_version_by_alias("tiny-chat", "champion")

    second = night("validate", NIGHTS[1], dataset=night("ingest", NIGHTS[1]))
    # learning rate 0: the saved weights are exactly the ones the night started from
    model = night("train", NIGHTS[1], "--set", "train.learning_rate=0.0", dataset=second)
    manifest = json.loads((Path(model) / outputs.MANIFEST).read_text())
    assert manifest["init_from"] == f"models:/tiny-chat/{champion.version}"
    started, champion_weights = tensors(model), tensors(first_model)
    assert started.keys() == champion_weights.keys()
    assert all(torch.equal(started[name], champion_weights[name]) for name in started)
    cached = Path(night.project["runs_root"]) / ".weights" / "tiny-chat" / f"v{champion.version}" / "model"
    assert cached.is_dir()

    run = next(r for r in client.search_runs([client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id])
               if r.data.tags.get("pipeline.stage") == "train" and r.data.params.get("train.init_from")
               == manifest["init_from"])
    replayed = run.data.metrics["replay/conversations"]
    assert replayed > 0 and run.data.metrics[f"replay/date/{NIGHTS[0]}"] == replayed
    assert run.data.metrics["data/train_conversations"] >= replayed

    # Evaluate scores all three models on the memory set (the first night's test replies); the gate guards it.
    evaluation = night("evaluate", NIGHTS[1], dataset=second, model=model)
    result = json.loads((Path(evaluation) / outputs.EVALUATION).read_text())
    assert result["memory"]["examples"] == 8 and result["memory"]["partitions"] == [NIGHTS[0]]
    assert {"memory_rougeL", "memory_similarity"} <= set(result["scores"]["champion"]) & set(result["scores"]["base"])
    assert result["scores"]["champion"]["memory_rougeL"] == result["scores"]["candidate"]["memory_rougeL"]  # same weights
    night("promote", NIGHTS[1], evaluation=evaluation)
    version = next(v for v in client.search_model_versions("name = 'tiny-chat'") if v.version != champion.version)
    checks = client.get_model_version("tiny-chat", version.version).tags["promotion.checks"]
    assert "PASS memory_rougeL" in checks and "conversations resampled" in checks
