"""Reference perplexity is exp of the mean NLL of the assistant tokens, i.e. what the model's own loss reports."""

import math

import pandas as pd
import pytest
import torch

from pipeline.evaluation import held_out, perplexity
from pipeline.model import chat_format, loading


def test_perplexity_matches_the_models_own_loss(tiny_model_dir):
    tokenizer = loading.load_tokenizer(str(tiny_model_dir))
    model = loading.load_model(str(tiny_model_dir))
    turns = pd.DataFrame({"conversation_id": ["a", "a", "b", "b"], "turn_index": [0, 1, 0, 1],
                          "role": ["user", "assistant"] * 2, "text": ["Hello", "Hi there!", "你好吗?", "很好，谢谢."],
                          "language": ["en", "en", "zh", "zh"], "split": ["test"] * 4})
    dialogues = held_out.dialogues(turns, "test", max_examples=None)
    ours = perplexity.of_dialogues(model, tokenizer, dialogues, max_seq_length=256, batch_size=2, system_prompt=None)

    nll, count = 0.0, 0
    for _, _, messages in chat_format.conversations(turns, "test"):  # one at a time: no padding involved
        encoded = chat_format.tokenize_conversation(tokenizer, messages, 256)
        labels = torch.tensor([encoded["labels"]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([encoded["input_ids"]]), labels=labels).loss.item()
        tokens = int((labels[:, 1:] != -100).sum())
        nll, count = nll + loss * tokens, count + tokens
    assert ours == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert 1 < ours < 2 * len(tokenizer)  # an untrained model is about as unsure as the vocabulary is large
    # A model whose head is more than a projection gets its full forward: the same number here (Llama ignores it)
    model.config.final_logit_softcapping = 30.0
    assert perplexity.of_dialogues(model, tokenizer, dialogues, 256, 2, None) == pytest.approx(ours, rel=1e-5)
