"""Batch tokenization gives exactly what the per-turn implementation gives: chat_format.tokenize_conversation for
each conversation (today's build_dataset loop, kept as the reference) and batching.pack for the rows, on the
chatterbot corpus and on bench_ingest's synthetic conversations, with the tiny tokenizer and the real SmolLM2 one.

Both fast paths must be what produces those results: the layout path (no rendering; most conversations) and the
rendering path (one rendering per conversation, spans read from it). Where a test says so, the per-turn span
function refuses to run, so an equality that came from the fallback would fail, and the number of conversations
that went the rendering way is checked.
"""

import copy
import random

import numpy as np
import pytest
from per_turn_reference import assert_same, fast_path_only, per_turn, table
from tiny_model import CHATML

from pipeline.training.samples import batching, tokenization


@pytest.mark.parametrize("max_length, system_prompt", [(256, None), (32, "Be brief.")])
def test_chatterbot_matches_per_turn_labels_and_rows(tokenizer, chatterbot, monkeypatch, max_length, system_prompt):
    tokenizer(["leaves truncation set on the shared Rust tokenizer"], truncation=True, max_length=7)
    tokenized = fast_path_only(monkeypatch, chatterbot, "train", tokenizer, max_length, system_prompt)
    assert tokenizer.backend_tokenizer.truncation["max_length"] == 7  # the caller's tokenizer is left as it was
    assert 0 < tokenized.rendered < len(tokenized.conversation_ids) / 20  # contents with '<' are rendered
    samples, replyless = per_turn(chatterbot, "train", tokenizer, max_length, system_prompt)
    if max_length == 32:
        assert replyless  # truncation is exercised: the replyless accounting must agree too
    assert_same(tokenized, samples, replyless, max_length)


def test_synthetic_matches_per_turn_from_the_layout_alone(tokenizer, synthetic, monkeypatch):
    samples, replyless = per_turn(synthetic, "train", tokenizer, 128)
    tokenized = fast_path_only(monkeypatch, synthetic, "train", tokenizer, 128, batch_size=150)
    assert sum(len(s["input_ids"]) for s in samples) > 100_000  # multi-turn, long enough to be packed
    assert tokenized.rendered == 0
    assert_same(tokenized, samples, replyless, 128)




def test_unusual_turns_match_per_turn(tokenizer):
    """System first, replies in a row, whitespace around replies, a user quoting the markers, no reply."""
    dialogues = [
        [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!")],
        [("user", "Two answers?"), ("assistant", "One."), ("assistant", "Two.")],
        [("user", "Spaces"), ("assistant", "  padded reply \n"), ("user", "ok"), ("assistant", "\nnewline first")],
        [("user", "Say <|im_start|>assistant\nHi<|im_end|>\n please"), ("assistant", "Hi")],
        [("user", "Only a question, never answered")],
    ]
    turns = table(dialogues)
    for max_length in (256, 12):
        samples, replyless = per_turn(turns, "train", tokenizer, max_length)
        assert_same(tokenization.tokenize_split(turns, "train", tokenizer, max_length),
                    samples, replyless, max_length)


def test_an_opening_assistant_turn_is_learned_where_per_turn_rendering_failed(tokenizer):
    """The one difference: per-turn rendering renders the empty history before an opening reply, which
    transformers refuses, so one such conversation stopped the whole stage; the one rendering labels it."""
    turns = table([[("assistant", "Welcome."), ("user", "Thanks"), ("assistant", "You're welcome.")]])
    with pytest.raises(ValueError, match="empty conversation"):
        per_turn(turns, "train", tokenizer, 256)
    tokenized = tokenization.tokenize_split(turns, "train", tokenizer, 256)
    learned = [t for t, label in zip(tokenized.input_ids, tokenized.learned, strict=True) if label]
    assert tokenizer.decode(learned) == "Welcome.<|im_end|>You're welcome.<|im_end|>"


def test_template_that_rewrites_replies_falls_back_to_per_turn_rendering(tiny, chatterbot):
    trimming = copy.deepcopy(tiny)
    trimming.chat_template = CHATML.replace("message['content']", "message['content'] | trim")
    turns = chatterbot.copy()
    turns.loc[turns["role"] == "assistant", "text"] += "  "  # the template drops it: spans differ from the content
    samples, replyless = per_turn(turns, "train", trimming, 256, limit=50)
    assert_same(tokenization.tokenize_split(turns, "train", trimming, 256, limit=50),
                samples, replyless, 256)


def test_limit_and_unsorted_turns_keep_the_per_turn_selection_and_order(tiny, chatterbot):
    shuffled = chatterbot.sample(frac=1.0, random_state=0)
    samples, replyless = per_turn(chatterbot, "validation", tiny, 256, limit=40)
    assert_same(tokenization.tokenize_split(shuffled, "validation", tiny, 256, limit=40),
                samples, replyless, 256)


def test_rows_are_batching_pack_rows_whatever_the_labels():
    """Best-fit ties, and a conversation's first token never learned in a row, even where its label says so."""
    rng = random.Random(0)
    lengths = [rng.choice([1, 2, 3, 5, 8, 13, 21, 33, 40, 64]) for _ in range(3000)]  # many ties
    ids = [[rng.randrange(2000) for _ in range(n)] for n in lengths]
    learned = [[rng.random() < 0.5 for _ in range(n)] for n in lengths]
    samples = [{"input_ids": i, "labels": [t if keep else -100 for t, keep in zip(i, k, strict=True)],
                "conversation_ids": [f"c{n}"]} for n, (i, k) in enumerate(zip(ids, learned, strict=True))]
    tokenized = tokenization.TokenizedSplit(
        [f"c{n}" for n in range(len(lengths))], np.array(lengths), np.array(sum(ids, []), dtype=np.int32),
        np.array(sum(learned, [])), replyless=[])
    expected = batching.pack(samples, 64)
    assert batching.pack_rows(np.array(lengths), 64) == [[int(c[1:]) for c in r["conversation_ids"]] for r in expected]
    assert tokenization.to_dataset(tokenized, 64).to_list() == expected
    assert tokenization.to_dataset(tokenized, None).to_list() == samples
    with pytest.raises(ValueError, match="65 tokens > row 64"):
        batching.pack_rows([65], 64)
