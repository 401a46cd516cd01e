"""Assistant-only labels: every reply token and its end-of-turn marker is learned, nothing else, even though
pad == eos; a sample whose reply is truncated away is dropped instead of training on nothing."""

import pytest
import torch

from pipeline.model import chat_format, loading

DIALOGUE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
            {"role": "user", "content": "你好吗?"}, {"role": "assistant", "content": "很好，谢谢."}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return loading.load_tokenizer(str(tiny_model_dir))


def learned_text(tokenizer, encoded):
    return tokenizer.decode([t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100])


def test_labels_cover_replies_and_end_of_turn_only(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the pitfall this module guards against
    encoded = chat_format.tokenize_conversation(tokenizer, DIALOGUE, max_length=256)
    assert learned_text(tokenizer, encoded) == "Hi there!<|im_end|>很好，谢谢.<|im_end|>"
    eot = loading.end_of_turn_id(tokenizer)
    assert sum(label == eot for label in encoded["labels"]) == 2  # user turns' <|im_end|> are not learned


def test_system_prompt_is_prepended_and_not_learned(tokenizer):
    encoded = chat_format.tokenize_conversation(tokenizer, DIALOGUE[:2], 256, system_prompt="Be brief.")
    assert tokenizer.decode(encoded["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert learned_text(tokenizer, encoded) == "Hi there!<|im_end|>"


def test_truncation_that_removes_every_reply_drops_the_sample(tokenizer):
    assert chat_format.tokenize_conversation(tokenizer, DIALOGUE[:2], max_length=4) is None


def test_padding_masks_by_position_not_token_id(tokenizer):
    short = chat_format.tokenize_conversation(tokenizer, DIALOGUE[:2], 256)
    long = chat_format.tokenize_conversation(tokenizer, DIALOGUE, 256)
    batch = chat_format.pad_batch([short, long], tokenizer.pad_token_id)
    pad = len(long["input_ids"]) - len(short["input_ids"])
    assert batch["attention_mask"][0].tolist() == [1] * len(short["input_ids"]) + [0] * pad
    assert (batch["labels"][0, -pad:] == -100).all()
    # the real <|im_end|> of the reply keeps its label although it has the pad token's id
    assert (batch["labels"][0] == tokenizer.pad_token_id).sum() == 1
    left = chat_format.pad_batch([short, long], tokenizer.pad_token_id, padding_side="left")
    assert torch.equal(left["input_ids"][0, pad:], torch.tensor(short["input_ids"]))


def test_eval_examples_use_history_up_to_each_reply(tmp_path):
    import pandas as pd

    turns = pd.DataFrame({"conversation_id": ["c"] * 4, "turn_index": [0, 1, 2, 3], "language": ["en"] * 4,
                          "role": ["user", "assistant"] * 2, "text": ["a", "b", "c", "d"], "split": ["test"] * 4})
    examples = chat_format.eval_examples(turns, "test")
    assert [(len(e.history), e.reference) for e in examples] == [(1, "b"), (3, "d")]


# Qwen3's behaviour: the reply that ends a conversation gets a reasoning block (empty when it has none); earlier
# replies lose theirs.
REASONING = (
    "{% set ns = namespace(last=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}{% set ns.last = loop.index0 %}"
    "{% endif %}{% endfor %}{% for m in messages %}{% set content = m['content'].split('</think>')[-1].lstrip('\\n') %}"
    "{% if m['role'] == 'assistant' and loop.last and loop.index0 > ns.last %}"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n{{ content }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ content }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_a_template_that_rewrites_history_has_its_replies_found_and_never_learns_the_reasoning_block(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)  # the module's tokenizer stays ChatML
    tokenizer.chat_template = REASONING
    one = chat_format.tokenize_conversation(tokenizer, DIALOGUE[:2], max_length=256)
    assert learned_text(tokenizer, one) == "Hi there!<|im_end|>"  # not "<think>\n\n</think>\n\nHi there!"
    thought = [DIALOGUE[0], {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHi there!"}, *DIALOGUE[2:]]
    two = chat_format.tokenize_conversation(tokenizer, thought, max_length=256)
    assert learned_text(tokenizer, two) == "Hi there!<|im_end|>很好，谢谢.<|im_end|>"
    # prompted as training rendered the reply that ends a conversation: after the empty block
    assert chat_format.render_prompt(tokenizer, DIALOGUE[:1], None).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert chat_format.render_prompt(tokenizer, DIALOGUE[:1], None).count("<|im_start|>") == 2


def test_a_reply_the_template_does_not_render_is_named(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = REASONING.replace("{{ content }}<|im_end|>\n{% else %}", "(elided)<|im_end|>\n{% else %}")
    with pytest.raises(ValueError, match=r"message 2 \(assistant\) is not in the rendered conversation"):
        chat_format.tokenize_conversation(tokenizer, DIALOGUE[:2], max_length=256)
