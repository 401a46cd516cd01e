"""Reference perplexity is exp of the mean NLL of the assistant tokens, i.e. what the model's own loss reports;
broken evaluation sets stop the stage before any model is scored."""

import json

import pandas as pd
import pytest

from pipeline import evaluate
from pipeline.config import ProjectConfig, RunContext
from pipeline.evaluation import EvaluationSetError
from pipeline.storage import outputs


def _dataset(tmp_path, splits):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    pd.DataFrame({"conversation_id": ["a", "a"], "turn_index": [0, 1], "role": ["user", "assistant"],
                  "text": ["Hello", "Hi there!"], "language": ["en", "en"], "split": splits}).to_parquet(
        dataset / "turns.parquet")
    (dataset / "manifest.json").write_text(json.dumps(
        {"dataset": "conversations", "partition_date": "2026-11-22",
         "digest": outputs.file_digest([dataset / "turns.parquet"])}))
    return dataset


@pytest.mark.parametrize(("splits", "anchor", "per_language", "message"), [
    (["train"] * 2, None, None, r"held-out set 'test' of .* has 0 examples; rule: an evaluation set holds at least one"),
    (["test"] * 2, None, 10, r"held-out set 'test' of .*: en: 1 examples; rule: at least 10 per language"),
    (["test"] * 2, {"package": "chitchat_dataset", "size": 8, "name": "chitchat-8", "digest": "f" * 64}, None,
     r"anchor set 'chitchat-8' .* changed: expected digest f{64}, actual [0-9a-f]{64}"),
])
def test_a_broken_evaluation_set_stops_the_stage_before_any_model_is_scored(tmp_path, monkeypatch, splits, anchor,
                                                                            per_language, message):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded or scored before the evaluation sets were checked")

    monkeypatch.setattr(evaluate, "incumbents", no_model)
    monkeypatch.setattr(evaluate, "evaluate_model", no_model)
    project = ProjectConfig(runs_root=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                            artifact_root=str(tmp_path / "artifacts"))
    config = evaluate.EvaluateConfig(anchor=anchor, min_examples_per_language=per_language)
    with pytest.raises(EvaluationSetError, match=message):
        evaluate.run(config, project, RunContext("2026-11-22", "night-1"), str(_dataset(tmp_path, splits)), "model")
