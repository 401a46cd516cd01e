"""The reference the fast tokenization paths are checked against: each conversation tokenized on its own by
chat_format.tokenize_conversation (the train stage's original per-turn loop) and packed by batching.pack."""

import pandas as pd

from pipeline.model import chat_format
from pipeline.training.samples import batching, tokenization


def table(dialogues: list[list[tuple[str, str]]]) -> pd.DataFrame:
    return pd.DataFrame([{"conversation_id": f"c{number}", "turn_index": index, "role": role, "text": text,
                          "language": "en", "split": "train"}
                         for number, dialogue in enumerate(dialogues) for index, (role, text) in enumerate(dialogue)])


def per_turn(turns, split, tokenizer, max_length, system_prompt=None, limit=None):
    """Today's build_dataset loop: samples and replyless conversation ids."""
    samples, replyless = [], []
    for cid, _, messages in chat_format.conversations(turns, split)[:limit]:
        encoded = chat_format.tokenize_conversation(tokenizer, messages, max_length, system_prompt)
        if encoded is None:
            replyless.append(cid)
        else:
            samples.append({**encoded, "conversation_ids": [cid]})
    return samples, replyless


def fast_path_only(monkeypatch, *args, **kwargs) -> tokenization.TokenizedSplit:
    def refuse(*_args, **_kwargs):
        raise AssertionError("a conversation fell back to rendering the template per turn")

    with monkeypatch.context() as patch:  # inherited by the forked workers
        patch.setattr(chat_format, "_assistant_spans", refuse)
        return tokenization.tokenize_split(*args, **kwargs)


def assert_same(tokenized: tokenization.TokenizedSplit, samples: list[dict], replyless: list[str], row_length: int):
    assert tokenized.replyless == replyless
    assert tokenized.conversation_ids == [s["conversation_ids"][0] for s in samples]
    for index, sample in enumerate(samples):
        assert tokenized.sample(index) == {"input_ids": sample["input_ids"], "labels": sample["labels"]}, index
    assert tokenization.to_dataset(tokenized, None).to_list() == samples
    assert tokenization.to_dataset(tokenized, row_length).to_list() == batching.pack(samples, row_length)
