"""Training samples -> batches: packing or dynamic padding, with real-token accounting and an empty-label guard.

Packing fills rows of `row_length` tokens with whole conversations (best-fit decreasing). Position ids restart at
0 for each conversation and no attention mask is passed: transformers then derives a block-diagonal causal mask
from the position ids (sdpa / eager attention) or variable-length kernels (flash-attention), so a conversation never
attends to its neighbours in the row. tests/unit/test_batching.py checks packed logits against unpacked ones.
"""

from __future__ import annotations

import bisect
import heapq

import numpy as np
import torch

from pipeline.model.chat_format import IGNORE_INDEX


class EmptyLabelsError(ValueError):
    """A batch without a single assistant token: the loss would be NaN or 0 and the step silently wasted."""


def pack(samples: list[dict], row_length: int) -> list[dict]:
    """Group samples into rows of at most `row_length` tokens; deterministic for a given input order.

    The reference: pack_rows gives the same rows as indices at scale (tokenization.to_dataset packs with it)."""
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["input_ids"]))  # stable: ties keep order
    free: list[tuple[int, int]] = []  # (tokens still free, row index), sorted: best fit = first that is big enough
    rows: list[list[int]] = []
    for index in order:
        size = len(samples[index]["input_ids"])
        if size > row_length:
            raise ValueError(f"sample {samples[index].get('conversation_ids')} has {size} tokens > row {row_length}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, row = free.pop(slot)
        else:
            room, row = row_length, len(rows)
            rows.append([])
        rows[row].append(index)
        if room - size > 0:
            bisect.insort(free, (room - size, row))
    return [_concatenate([samples[i] for i in row]) for row in rows]


def pack_rows(lengths: np.ndarray, row_length: int) -> list[list[int]]:
    """pack's rows (best-fit decreasing, same ties) as sample indices, in O(log) per sample: open rows are
    kept per free room, so the best fit is a bisect over at most `row_length` distinct rooms, not over every row."""
    rooms: list[int] = []  # sorted free rooms that some open row has
    rows_by_room: dict[int, list[int]] = {}  # room -> heap of row indices (lowest row first, as pack)
    rows: list[list[int]] = []
    for index in np.argsort(-np.asarray(lengths), kind="stable").tolist():
        size = int(lengths[index])
        if size > row_length:
            raise ValueError(f"sample {index} has {size} tokens > row {row_length}")
        slot = bisect.bisect_left(rooms, size)
        if slot < len(rooms):
            room = rooms[slot]
            row = heapq.heappop(rows_by_room[room])
            if not rows_by_room[room]:
                del rows_by_room[room], rooms[slot]
        else:
            room, row = row_length, len(rows)
            rows.append([])
        rows[row].append(index)
        if room - size > 0:
            if room - size not in rows_by_room:
                rows_by_room[room - size] = []
                bisect.insort(rooms, room - size)
            heapq.heappush(rows_by_room[room - size], row)
    return rows


def _concatenate(samples: list[dict]) -> dict:
    row = {"input_ids": [], "labels": [], "position_ids": [], "conversation_ids": []}
    for sample in samples:
        labels = list(sample["labels"])
        labels[0] = IGNORE_INDEX  # the first token of a conversation must not be predicted from the one before
        row["input_ids"] += sample["input_ids"]
        row["labels"] += labels
        row["position_ids"] += range(len(sample["input_ids"]))
        row["conversation_ids"] += sample["conversation_ids"]
    return row


class Collator:
    """Pad a list of samples (or packed rows) into tensors and count real vs padded positions.

    packed: rows carry position_ids and get no attention mask (see module docstring); pad positions form their own
    segment. Otherwise: right padding with an attention mask. `pad_to` pads every batch to a fixed width (the
    tutorial baseline in benchmarks/bench_training.py); None pads to the longest sample of the batch.
    """

    def __init__(self, pad_token_id: int, packed: bool = False, pad_to: int | None = None):
        self.pad_token_id, self.packed, self.pad_to = pad_token_id, packed, pad_to
        self.real_tokens = 0
        self.positions = 0

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {"input_ids": [], "labels": [], "position_ids" if self.packed else "attention_mask": []}
        for feature in features:
            size = len(feature["input_ids"])
            pad = width - size
            batch["input_ids"].append(list(feature["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(feature["labels"]) + [IGNORE_INDEX] * pad)
            if self.packed:
                batch["position_ids"].append(list(feature["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * size + [0] * pad)
            self.real_tokens += size
        self.positions += width * len(features)
        tensors = {key: torch.tensor(values) for key, values in batch.items()}
        if not (tensors["labels"] != IGNORE_INDEX).any():
            ids = [cid for f in features for cid in f.get("conversation_ids", [])]
            raise EmptyLabelsError(
                f"a training batch has no assistant tokens (conversations {ids[:8]}): every label is masked, so the "
                "loss would train nothing; check the chat template and the assistant spans"
            )
        return tensors

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real_tokens / self.positions if self.positions else 0.0
