"""Five chat model families (tests/model_families.py: Llama-3, Qwen2, Qwen3 with reasoning blocks, Gemma without a
system role, Mistral [INST]) through what the stages do with a base model: the template check, training samples
with assistant-only labels (exactly each reply and its end-of-turn token, nothing the template writes around it),
training, perplexity, evaluation's generation (stopping at the family's end of turn), and the served model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from model_families import FAMILIES, build_family_model, trained_bpe

from pipeline import train
from pipeline.evaluation import perplexity
from pipeline.model import chat_format, generation, loading, template_check
from pipeline.serving.chat_model import ChatModel
from pipeline.training import reporting

TWO_EXCHANGES = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                 {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Very well"}]
ONE_EXCHANGE = TWO_EXCHANGES[:2]
SYSTEM_PROMPT = "You are a helpful chatbot."


@pytest.fixture(scope="module")
def bpe():
    return trained_bpe()


def turns_of(conversations: dict[str, list[dict]]) -> pd.DataFrame:
    return pd.DataFrame([{"conversation_id": cid, "turn_index": index, "role": m["role"], "text": m["content"],
                          "language": "en", "source": "test", "split": "train", "partition_date": "2026-12-01"}
                         for cid, messages in conversations.items() for index, m in enumerate(messages)])


def learned_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([token for token, label in zip(ids, labels, strict=True)
                             if label != chat_format.IGNORE_INDEX])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_family_trains_evaluates_and_serves(name, bpe, tmp_path):
    family = FAMILIES[name]
    base = build_family_model(family, bpe, tmp_path / "base")
    tokenizer = loading.load_tokenizer(str(base))
    system_prompt = SYSTEM_PROMPT if family.system_role else None
    template_check.check(tokenizer, system_prompt)
    if not family.system_role:
        with pytest.raises(template_check.TemplateError, match="refuses a system message"):
            template_check.check(tokenizer, SYSTEM_PROMPT)
    end = family.end_of_turn
    assert loading.end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids(end)

    # Training samples: exactly the replies and their end-of-turn tokens are learned, in both tokenization paths
    config = train.TrainConfig(max_steps=40, batch_size=2, max_seq_length=128, warmup_steps=0, learning_rate=1e-2,
                               precision="fp32", packing=False, system_prompt=system_prompt, logging_steps=100)
    dataset, _ = train.build_dataset(turns_of({"one": ONE_EXCHANGE, "two": TWO_EXCHANGES}), "train", tokenizer, config)
    expected = {"one": f"Hello there{end}", "two": f"Hello there{end}Very well{end}"}
    assert sorted(learned_text(tokenizer, row["input_ids"], row["labels"]) for row in dataset) == sorted(expected.values())
    for cid, messages in {"one": ONE_EXCHANGE, "two": TWO_EXCHANGES}.items():  # perplexity's path
        sample = chat_format.tokenize_conversation(tokenizer, messages, 128, system_prompt)
        assert learned_text(tokenizer, sample["input_ids"], sample["labels"]) == expected[cid]

    # Training lowers perplexity on what it saw; generation then says the replies and stops at the end of turn
    model = loading.load_model(str(base))
    dialogues = [ONE_EXCHANGE, TWO_EXCHANGES]
    before = perplexity.of_dialogues(model, tokenizer, dialogues, 128, 4, system_prompt)
    trainer, _ = train.make_trainer(model, tokenizer, dataset, None, config, tmp_path / "checkpoints")
    trainer.remove_callback(reporting.StepMetrics)  # no MLflow run here: the stage's reporting is not the subject
    trainer.train()
    after = perplexity.of_dialogues(model, tokenizer, dialogues, 128, 4, system_prompt)
    assert after < 2.0 < before
    prompts = [ONE_EXCHANGE[:1], TWO_EXCHANGES[:3]]
    assert generation.generate_replies(model, tokenizer, prompts, system_prompt, max_new_tokens=24) == \
        ["Hello there", "Very well"]
    prompt = tokenizer(chat_format.render_prompt(tokenizer, prompts[0], system_prompt), add_special_tokens=False,
                       return_tensors="pt")
    produced = model.generate(**prompt, max_new_tokens=24, do_sample=False, eos_token_id=loading.end_of_turn_id(tokenizer),
                              pad_token_id=tokenizer.pad_token_id)[0, prompt["input_ids"].shape[1]:].tolist()
    assert tokenizer.decode(produced) == f"Hello there{end}"  # stopped on the family's end of turn, nothing after

    # Served as the registry's champion is: the trained weights with the system prompt training used
    served = tmp_path / "trained"
    model.save_pretrained(served)
    tokenizer.save_pretrained(served)
    (served / "train_config.json").write_text(json.dumps({"train.system_prompt": system_prompt}))
    chat = ChatModel()
    chat.load_context(SimpleNamespace(artifacts={"model": str(served)}))
    assert chat.predict(None, {"messages": TWO_EXCHANGES[:3]}) == ["Very well"]
