"""Packing: every conversation lands in exactly one row, rows stay within their length, and a packed conversation
gets the same logits and loss as when it runs alone (no attention across conversations)."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.model.chat_format import IGNORE_INDEX
from pipeline.training.samples import batching


def sample(cid: str, size: int, seed: int = 0) -> dict:
    rng = random.Random(f"{cid}-{seed}")
    ids = [rng.randrange(5, 1500) for _ in range(size)]
    labels = [IGNORE_INDEX] * (size // 2) + ids[size // 2:]  # second half "assistant"
    return {"input_ids": ids, "labels": labels, "conversation_ids": [cid]}


def test_pack_places_every_sample_once_within_the_row_length():
    rng = random.Random(7)
    samples = [sample(str(i), rng.randint(20, 120)) for i in range(300)]
    rows = batching.pack(samples, 256)
    placed = [cid for row in rows for cid in row["conversation_ids"]]
    assert sorted(placed) == sorted(s["conversation_ids"][0] for s in samples)
    assert all(len(row["input_ids"]) <= 256 for row in rows)
    used = sum(len(row["input_ids"]) for row in rows)
    assert used / (256 * len(rows)) > 0.97  # best-fit decreasing leaves little room unused
    assert batching.pack(samples, 256) == rows  # deterministic


def test_packed_row_restarts_positions_and_never_learns_across_a_boundary():
    row = batching.pack([sample("a", 5), sample("b", 3)], 16)[0]
    assert row["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]
    starts = [0, 5]
    assert all(row["labels"][i] == IGNORE_INDEX for i in starts)


def test_a_sample_longer_than_the_row_is_an_error():
    with pytest.raises(ValueError, match="has 20 tokens > row 16"):
        batching.pack([sample("long", 20)], 16)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_packed_conversations_do_not_attend_to_each_other(model):
    samples = [sample(str(i), n, seed=1) for i, n in enumerate([30, 50, 20, 40, 35])]
    rows = batching.pack(samples, 128)
    assert max(len(r["conversation_ids"]) for r in rows) >= 3
    batch = batching.Collator(pad_token_id=0, packed=True)(rows)  # shorter rows get a padding segment
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for r, row in enumerate(rows):
            offset = 0
            for cid in row["conversation_ids"]:
                ids = samples[int(cid)]["input_ids"]
                alone = model(input_ids=torch.tensor([ids])).logits[0]
                torch.testing.assert_close(packed[r, offset:offset + len(ids)], alone, atol=1e-4, rtol=1e-4)
                offset += len(ids)


def test_packed_loss_equals_the_loss_of_the_conversations_alone(model):
    samples = [sample(str(i), n, seed=2) for i, n in enumerate([30, 50, 20])]
    batch = batching.Collator(0, packed=True)(batching.pack(samples, 128))
    plain = batching.Collator(0, packed=False)(samples)
    with torch.no_grad():
        packed_loss = model(**batch, use_cache=False).loss
        padded_loss = model(**plain).loss
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-4, rtol=1e-4)


def test_collator_counts_real_tokens_and_padding():
    collator = batching.Collator(0, packed=False)
    collator([sample("a", 10), sample("b", 6)])
    assert (collator.real_tokens, collator.positions) == (16, 20)
    assert collator.padding_waste == pytest.approx(0.2)
    fixed = batching.Collator(0, pad_to=32)
    assert fixed([sample("a", 10)])["input_ids"].shape == (1, 32)


def test_a_batch_without_assistant_tokens_fails_naming_its_conversations():
    silent = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3, "conversation_ids": ["conv-42"]}
    with pytest.raises(batching.EmptyLabelsError, match="conv-42"):
        batching.Collator(0, packed=False)([silent])
