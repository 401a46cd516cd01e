"""Reference perplexity is exp of the mean NLL of the assistant tokens, i.e. what the model's own loss reports;
broken evaluation sets stop the stage before any model is scored."""

import json
import math

import pandas as pd
import pytest
import torch

from pipeline import chat_data, evaluate, models, storage
from pipeline.anchor import EvaluationSetError
from pipeline.config import ProjectConfig, RunContext


def test_perplexity_matches_the_models_own_loss(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    model = models.load_model(str(tiny_model_dir))
    turns = pd.DataFrame({"conversation_id": ["a", "a", "b", "b"], "turn_index": [0, 1, 0, 1],
                          "role": ["user", "assistant"] * 2, "text": ["Hello", "Hi there!", "你好吗?", "很好，谢谢."],
                          "language": ["en", "en", "zh", "zh"], "split": ["test"] * 4})
    config = evaluate.EvaluateConfig(batch_size=2)
    ours = evaluate.reference_perplexity(model, tokenizer, turns, config, system_prompt=None)

    nll, count = 0.0, 0
    for _, _, messages in chat_data.conversations(turns, "test"):  # one at a time: no padding involved
        encoded = chat_data.tokenize_conversation(tokenizer, messages, 256)
        labels = torch.tensor([encoded["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([encoded["input_ids"]]), labels=labels).loss.item()
        tokens = int((labels[:, 1:] != -100).sum())
        nll, count = nll + loss * tokens, count + tokens
    assert ours == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert 1 < ours < 2 * len(tokenizer)  # an untrained model is about as unsure as the vocabulary is large
    # A model whose head is more than a projection gets its full forward: the same number here (Llama ignores it)
    model.config.final_logit_softcapping = 30.0
    assert evaluate.reference_perplexity(model, tokenizer, turns, config, None) == pytest.approx(ours, rel=1e-5)


def _dataset(tmp_path, splits):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    pd.DataFrame({"conversation_id": ["a", "a"], "turn_index": [0, 1], "role": ["user", "assistant"],
                  "text": ["Hello", "Hi there!"], "language": ["en", "en"], "split": splits}).to_parquet(
        dataset / "turns.parquet")
    (dataset / "manifest.json").write_text(json.dumps(
        {"dataset": "conversations", "partition_date": "2026-11-22",
         "digest": storage.file_digest([dataset / "turns.parquet"])}))
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
