"""Training samples at scale: a split's conversations -> token ids + assistant-only labels, in batches, in parallel.

    tokenized = tokenize_split(turns, "train", tokenizer, max_length=256)     # replyless ones listed, not dropped
    dataset = to_dataset(tokenized, row_length=256)                             # None: one row per conversation

Gives exactly what chat_data.tokenize_conversation gives one conversation at a time and batching.pack gives for
the rows (tests/unit/test_tokenization.py compares them on the chatterbot corpus and on synthetic conversations,
with the tiny and the real SmolLM2 tokenizer), but each chat template is rendered once instead of twice per
assistant turn, and the fast tokenizer sees batches of rendered texts:

- Where a reply starts and ends is read from the one rendering. A probe conversation tells what the template writes
  before a reply (its generation prompt) and after it (the end-of-turn marker); each reply is then found as that
  header + its content + that footer. A conversation whose rendering does not have exactly one header per reply,
  each followed by the reply verbatim, is labelled the old way (rendered per turn), so an unusual template or a
  message that quotes the markers costs time, never correctness. One difference: a conversation that opens with
  an assistant turn is labelled here, where per-turn rendering failed (transformers refuses the empty history).
- Labels come from the tokens' character offsets overlapping those spans (as in chat_data, never from token ids:
  pad == eos), with numpy for a whole batch.
- Batches go to `workers` forked processes with the tokenizer's Rust threads off (TOKENIZERS_PARALLELISM=false).
  Processes, because rendering and spans are Python: with Rust threads instead only the ~115 us of Rust work per
  conversation is shared out. 20,000 conversations, same batch work, on a machine busy with other jobs: pool
  4.3 CPU-s / 6.4 s, datasets.map(batched=True, num_proc=2) 4.9 / 7.2 s (rows to Arrow and back), one process with
  Rust threads 3.9 / 6.0 s (no fork). On idle cores the pool should lead, as it also splits the ~65 us of Python
  per conversation; not yet measured idle.

Per conversation (four turns, ~120 SmolLM2 tokens) the Rust tokenizer takes ~115 us of ~180 us of CPU; rendering
~25 us. Results stay in flat numpy arrays and become an Arrow-backed Dataset without a Python list per token:
1,000,000 conversations are ~120 M tokens (benchmarks/bench_tokenization.py).
"""

from __future__ import annotations

import bisect
import copy
import heapq
import multiprocessing
import os
import uuid
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from pipeline import chat_data
from pipeline.chat_data import IGNORE_INDEX

BATCH_CONVERSATIONS = 1000  # per tokenizer call and per task sent to a worker process
PROBE = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": "Probe reply."}]


@dataclass(frozen=True)
class TokenizedSplit:
    """Every conversation that kept a reply, in chat_data.conversations order, as flat arrays."""

    conversation_ids: list[str]
    lengths: np.ndarray  # int64, tokens per conversation
    input_ids: np.ndarray  # int32, all conversations one after the other
    learned: np.ndarray  # bool, per token: an assistant token (its label is its id)
    replyless: list[str]  # conversations whose every reply max_length cut off (not in the arrays above)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def sample(self, index: int) -> dict[str, list[int]]:
        """One conversation as chat_data.tokenize_conversation returns it."""
        start = int(self.lengths[:index].sum())
        ids = self.input_ids[start:start + int(self.lengths[index])]
        return {"input_ids": ids.tolist(), "labels": _labels(ids, self.learned[start:start + len(ids)]).tolist()}


@dataclass(frozen=True)
class _Conversations:
    """A split's turns as Arrow columns plus where each conversation's turns start: cheap to slice in a worker."""

    ids: list[str]
    turn_starts: np.ndarray  # int64, len(ids) + 1
    roles: pa.Array
    texts: pa.Array

    def messages(self, start: int, stop: int) -> list[list[dict]]:
        first, last = int(self.turn_starts[start]), int(self.turn_starts[stop])
        roles, texts = self.roles[first:last].to_pylist(), self.texts[first:last].to_pylist()
        bounds = (self.turn_starts[start:stop + 1] - first).tolist()
        return [[{"role": r, "content": t} for r, t in zip(roles[a:b], texts[a:b], strict=True)]
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def tokenize_split(turns: pd.DataFrame, split: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
                   system_prompt: str | None = None, limit: int | None = None, workers: int | None = None,
                   batch_size: int = BATCH_CONVERSATIONS) -> TokenizedSplit:
    """The split's first `limit` conversations (chat_data.conversations order) tokenized; `workers` processes
    (default: the CPUs this process may use), one when there is a single batch."""
    conversations = _split_conversations(turns, split, limit)
    batches = [(start, min(start + batch_size, len(conversations.ids)))
               for start in range(0, len(conversations.ids), batch_size)]
    job = _Job(tokenizer, _truncating_backend(tokenizer, max_length), conversations, max_length, system_prompt,
               _probe_markers(tokenizer, system_prompt))
    workers = min(workers or len(os.sched_getaffinity(0)), len(batches))
    if workers <= 1:
        results = [job.encode(start, stop) for start, stop in batches]
    else:
        # fork: the worker inherits the tokenizer and the Arrow columns instead of unpickling them.
        with multiprocessing.get_context("fork").Pool(workers, initializer=_install, initargs=(job,)) as pool:
            results = pool.starmap(_encode_installed, batches, chunksize=1)
    results = results or [_BatchResult(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool))]
    kept = np.concatenate([r.has_reply for r in results])
    ids = np.asarray(conversations.ids, dtype=object)
    return TokenizedSplit(
        conversation_ids=ids[kept].tolist(),
        lengths=np.concatenate([r.lengths[r.has_reply] for r in results]),
        input_ids=np.concatenate([r.input_ids for r in results]),
        learned=np.concatenate([r.learned for r in results]),
        replyless=ids[~kept].tolist(),
    )


def to_dataset(tokenized: TokenizedSplit, row_length: int | None) -> Dataset:
    """Packed rows of `row_length` tokens (batching.pack's rows, its order and masking), or with None one row per
    conversation: input_ids, labels, conversation_ids (+ position_ids when packed), Arrow-backed.

    Token-sized arrays are int32 and few: at 1,000,000 conversations each one is ~0.5 GB, and in a VM each fresh one
    costs ~1 s of page faults."""
    if tokenized.tokens >= 2**31:
        raise ValueError(f"{tokenized.tokens} tokens: more than int32 offsets hold; tokenize the split in parts")
    rows = pack_rows(tokenized.lengths, row_length) if row_length else [[i] for i in range(len(tokenized.lengths))]
    order = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(tokenized.lengths))
    labels = _labels(tokenized.input_ids, tokenized.learned)
    if row_length is None:
        columns = {"input_ids": tokenized.input_ids, "labels": labels}
    else:
        starts = _starts(tokenized.lengths)
        labels[starts] = IGNORE_INDEX  # a conversation's first token is not predicted from its row neighbour
        columns = {"input_ids": _reorder(tokenized.input_ids, starts, order)}
        columns["labels"] = _reorder(labels, starts, order)
        del labels  # one token-sized array less at the peak
        columns["position_ids"] = _positions(tokenized.lengths[order])
    conversations_per_row = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    row_offsets = np.concatenate([[0], np.cumsum(conversations_per_row)])
    token_offsets = np.append(_starts(tokenized.lengths[order]), tokenized.tokens)[row_offsets].astype(np.int32)
    table = {name: pa.ListArray.from_arrays(token_offsets, values) for name, values in columns.items()}
    ids = pa.array(np.asarray(tokenized.conversation_ids, dtype=object)[order], pa.string())
    table["conversation_ids"] = pa.ListArray.from_arrays(row_offsets.astype(np.int32), ids)
    # A fingerprint of our own: datasets would hash the table to make one, a copy of every column (GBs at scale).
    return Dataset(pa.table(table), fingerprint=uuid.uuid4().hex)


def pack_rows(lengths: np.ndarray, row_length: int) -> list[list[int]]:
    """batching.pack's rows (best-fit decreasing, same ties) as sample indices, in O(log) per sample: open rows are
    kept per free room, so the best fit is a bisect over at most `row_length` distinct rooms, not over every row."""
    rooms: list[int] = []  # sorted free rooms that some open row has
    rows_by_room: dict[int, list[int]] = {}  # room -> heap of row indices (lowest row first, as batching.pack)
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


@dataclass(frozen=True)
class _TurnMarkers:
    header: str  # what the template writes before a reply: its generation prompt
    footer: str  # what it writes after a reply's content, through the end-of-turn marker


@dataclass(frozen=True)
class _BatchResult:
    has_reply: np.ndarray  # bool per conversation
    lengths: np.ndarray  # int64 tokens per conversation (replyless ones too; their tokens are not kept)
    input_ids: np.ndarray  # int32, kept conversations only
    learned: np.ndarray  # bool, kept conversations only


@dataclass(frozen=True)
class _Job:
    tokenizer: PreTrainedTokenizerBase
    backend: Tokenizer  # the tokenizer's Rust tokenizer, set up as tokenizer(..., truncation=True) sets it up
    conversations: _Conversations
    max_length: int
    system_prompt: str | None
    markers: _TurnMarkers | None

    def encode(self, start: int, stop: int) -> _BatchResult:
        dialogues = [chat_data._with_system(m, self.system_prompt) for m in self.conversations.messages(start, stop)]
        texts = self.tokenizer.apply_chat_template(dialogues, tokenize=False)
        spans = [self._spans(messages, text) for messages, text in zip(dialogues, texts, strict=True)]
        encodings = self.backend.encode_batch(texts, add_special_tokens=False)
        id_lists = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(texts))
        total = int(lengths.sum())
        ids = np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=total)
        offsets = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
                              dtype=np.int64, count=2 * total).reshape(-1, 2)
        # Spans padded with (0, 0), which overlaps no token: start < token end holds, token begin < 0 never does.
        padded = np.zeros((len(texts), max(map(len, spans), default=0) or 1, 2), dtype=np.int64)
        for row, conversation_spans in enumerate(spans):
            if conversation_spans:  # a conversation without a reply has none
                padded[row, :len(conversation_spans)] = conversation_spans
        token_spans = padded[np.repeat(np.arange(len(texts)), lengths)]  # (tokens, spans, 2)
        learned = ((token_spans[:, :, 0] < offsets[:, None, 1]) & (offsets[:, None, 0] < token_spans[:, :, 1])).any(1)
        owner = np.repeat(np.arange(len(texts)), lengths)
        has_reply = np.bincount(owner, weights=learned, minlength=len(texts)) > 0
        keep = has_reply[owner]
        return _BatchResult(has_reply, lengths, ids[keep], learned[keep])

    def _spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        """chat_data._assistant_spans from the one rendering; that function itself where the markers don't fit."""
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        markers = self.markers
        if markers is None or text.count(markers.header) != len(replies):
            return chat_data._assistant_spans(self.tokenizer, messages, text)
        spans, cursor = [], 0
        for content in replies:
            start = text.find(markers.header, cursor) + len(markers.header)
            cursor = start + len(content) + len(markers.footer)
            if text[start:start + len(content)] != content or text[start + len(content):cursor] != markers.footer:
                return chat_data._assistant_spans(self.tokenizer, messages, text)
            # chat_data's end: the rendering through this turn, right-stripped (the newline after the marker)
            tail = (content + markers.footer).rstrip()
            spans.append((start, start + len(tail) if tail else len(text[:start].rstrip())))
        return spans


def _truncating_backend(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Tokenizer:
    """A copy of the fast tokenizer's Rust tokenizer with the settings tokenizer(texts, truncation=True,
    max_length=...) applies before it calls encode_batch. Its Encodings are read directly: BatchEncoding's Python
    lists of ids, attention masks, type ids and offset tuples cost ~20% of the whole tokenization."""
    if not tokenizer.is_fast:
        raise TypeError(f"{type(tokenizer).__name__}: batch tokenization needs a fast (Rust) tokenizer for offsets")
    backend = copy.deepcopy(tokenizer.backend_tokenizer)  # the caller's tokenizer keeps its own settings
    backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    backend.no_padding()
    backend.encode_special_tokens = tokenizer.split_special_tokens
    return backend


def _probe_markers(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> _TurnMarkers | None:
    """What the template writes around a reply, or None if it does not render as prefix + header + reply + footer."""
    history = chat_data._with_system(PROBE[:1], system_prompt)
    plain = tokenizer.apply_chat_template(history, tokenize=False)
    prompted = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*history, PROBE[1]], tokenize=False)
    reply = PROBE[1]["content"]
    if not (prompted.startswith(plain) and len(prompted) > len(plain) and full.startswith(prompted + reply)):
        return None
    return _TurnMarkers(header=prompted[len(plain):], footer=full[len(prompted) + len(reply):])


def _split_conversations(turns: pd.DataFrame, split: str, limit: int | None) -> _Conversations:
    """chat_data.conversations' selection and order (conversation_id, turn_index), without a Python object per turn."""
    table = pa.Table.from_pandas(turns[turns["split"] == split][["conversation_id", "turn_index", "role", "text"]],
                                 preserve_index=False)
    ids = table["conversation_id"].combine_chunks()
    if not _in_order(ids, table["turn_index"].combine_chunks()):  # ingest writes them in order: no copy then
        table = table.sort_by([("conversation_id", "ascending"), ("turn_index", "ascending")])
        ids = table["conversation_id"].combine_chunks()
    starts = np.flatnonzero(np.concatenate([[len(ids) > 0], pc.not_equal(ids[1:], ids[:-1]).to_numpy(False)]))
    count = len(starts) if limit is None else min(limit, len(starts))
    turn_starts = np.append(starts[:count], starts[count] if count < len(starts) else len(ids)).astype(np.int64)
    return _Conversations(ids=ids.take(pa.array(starts[:count])).to_pylist(), turn_starts=turn_starts,
                          roles=table["role"].combine_chunks(), texts=table["text"].combine_chunks())


def _in_order(ids: pa.Array, turn_index: pa.Array) -> bool:
    """Sorted by (conversation_id, turn_index): Arrow compares strings by UTF-8 bytes, i.e. as Python does."""
    if len(ids) < 2:
        return True
    later, earlier = ids[1:], ids[:-1]
    steps = pc.or_(pc.greater(later, earlier),
                   pc.and_(pc.equal(later, earlier), pc.greater(turn_index[1:], turn_index[:-1])))
    return pc.all(steps).as_py()


def _starts(lengths: np.ndarray) -> np.ndarray:
    return (np.cumsum(lengths) - lengths).astype(np.int64)


def _reorder(values: np.ndarray, starts: np.ndarray, order: np.ndarray) -> pa.Array:
    """The conversations' tokens in `order`: Arrow's take copies each conversation as one block."""
    conversations = pa.ListArray.from_arrays(np.append(starts, len(values)).astype(np.int32), values)
    return conversations.take(pa.array(order)).flatten()


def _positions(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ... within each conversation, as one cumulative sum: steps of 1 that drop back to 0 at each start."""
    steps = np.ones(int(lengths.sum()), dtype=np.int32)
    starts = _starts(lengths)
    steps[starts[1:]] = 1 - lengths[:-1]
    if len(steps):
        steps[0] = 0
    return np.cumsum(steps, out=steps)


def _labels(input_ids: np.ndarray, learned: np.ndarray) -> np.ndarray:
    return np.where(learned, input_ids, np.int32(IGNORE_INDEX))


_installed: _Job | None = None  # the job a forked worker inherited (see tokenize_split)


def _install(job: _Job) -> None:
    global _installed
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already; Rust threads would oversubscribe
    _installed = job


def _encode_installed(start: int, stop: int) -> _BatchResult:
    return _installed.encode(start, stop)
