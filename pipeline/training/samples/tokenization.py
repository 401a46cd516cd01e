"""Training samples at scale: a split's conversations -> token ids + assistant-only labels, in batches.

    tokenized = tokenize_split(turns, "train", tokenizer, max_length=256)     # replyless ones listed, not dropped
    dataset = to_dataset(tokenized, row_length=256)                             # None: one row per conversation

Gives exactly what chat_format.tokenize_conversation gives one conversation at a time and batching.pack gives for
the rows (tests/unit/test_tokenization.py compares them on the chatterbot corpus and on synthetic conversations,
with the tiny and the real SmolLM2 tokenizer), without rendering the template twice per assistant turn:

- Where the template is literal text around each message (template_layout.py; SmolLM2's ChatML is), conversations are
  never rendered: each message's segment is tokenized without offsets, equal segments once, and labels come from
  where the template's fixed text ends (layout_tokens.py). One conversation per batch is also rendered and must
  come out the same, or the batch is rendered instead.
- Otherwise, and for contents that could meet a template branch or an added token ('<'), each conversation is
  rendered once and labelled from offsets (rendered_tokens.py).
- One process: the Rust tokenizer spreads each batch over the cores (TOKENIZERS_PARALLELISM is on for the call).
  Forked worker processes were faster for the rendering path but hung a train task in a fresh-clone CI run (a
  worker died and the pool waited); the segment path leaves little Python to share out.

Results stay in flat numpy arrays and become an Arrow-backed Dataset without a Python list per token: 1,000,000
conversations are ~120 M tokens (benchmarks/bench_tokenization.py).
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from pipeline.model.chat_format import IGNORE_INDEX
from pipeline.process import memory
from pipeline.training.samples import batching
from pipeline.training.samples.layout_tokens import Blocks, LayoutEncoder, Segmented
from pipeline.training.samples.rendered_tokens import RenderedEncoder, truncating_backend
from pipeline.training.samples.template_layout import ChatLayout

log = logging.getLogger(__name__)
BATCH_CONVERSATIONS = 10_000  # per tokenizer call: enough segments for the Rust threads to share


@dataclass
class TokenizedSplit:
    """Every conversation that kept a reply, in chat_format.conversations order, as flat arrays."""

    conversation_ids: list[str]
    lengths: np.ndarray  # int64, tokens per conversation
    input_ids: np.ndarray  # int32, all conversations one after the other
    learned: np.ndarray  # bool, per token: an assistant token (its label is its id)
    replyless: list[str]  # conversations whose every reply max_length cut off (not in the arrays above)
    rendered: int = 0  # conversations tokenized by rendering the template (the rest: from its layout)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def sample(self, index: int) -> dict[str, list[int]]:
        """One conversation as chat_format.tokenize_conversation returns it."""
        start = int(self.lengths[:index].sum())
        ids = self.input_ids[start:start + int(self.lengths[index])]
        return {"input_ids": ids.tolist(), "labels": _labels(ids, self.learned[start:start + len(ids)]).tolist()}


@dataclass(frozen=True)
class _Conversations:
    """A split's turns as Arrow columns plus where each conversation's turns start."""

    ids: list[str]
    turn_starts: np.ndarray  # int64, len(ids) + 1
    roles: pa.Array
    texts: pa.Array

    def dialogues(self, start: int, stop: int, system_prompt: str | None) -> list[tuple[list[str], list[str]]]:
        """(roles, contents) per conversation, the system prompt first where it has no system turn (chat_format)."""
        first, last = int(self.turn_starts[start]), int(self.turn_starts[stop])
        roles, texts = self.roles[first:last].to_pylist(), self.texts[first:last].to_pylist()
        bounds = (self.turn_starts[start:stop + 1] - first).tolist()
        out = [(roles[a:b], texts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if system_prompt is not None:
            out = [(r, t) if r and r[0] == "system" else (["system", *r], [system_prompt, *t]) for r, t in out]
        return out


def tokenize_split(turns: pd.DataFrame, split: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
                   system_prompt: str | None = None, limit: int | None = None,
                   batch_size: int = BATCH_CONVERSATIONS) -> TokenizedSplit:
    """The split's first `limit` conversations (chat_format.conversations order) tokenized."""
    conversations = _split_conversations(turns, split, limit)
    layout = ChatLayout.probe(tokenizer)
    job = _Job(conversations, max_length, system_prompt, RenderedEncoder.for_tokenizer(tokenizer, max_length, system_prompt),
               LayoutEncoder(truncating_backend(tokenizer, None), layout) if layout else None,
               tokenizer.truncation_side == "left")
    results, pending = [], None
    # The Rust tokenizer works on batch i (its threads, no GIL) while this thread assembles batch i - 1.
    with _rust_threads(), ThreadPoolExecutor(1, thread_name_prefix="tokenize") as rust:
        for start in range(0, len(conversations.ids), batch_size):
            prepared = job.prepare(start, min(start + batch_size, len(conversations.ids)))
            tokenized = rust.submit(job.tokenize, prepared)
            if pending is not None:
                results.append(job.finish(*pending))
            pending = (prepared, tokenized)
        if pending is not None:
            results.append(job.finish(*pending))
    results = results or [_BatchResult(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int32),
                                       np.zeros(0, bool), 0)]
    kept = np.concatenate([r.has_reply for r in results])
    ids = np.asarray(conversations.ids, dtype=object)
    lengths, rendered = np.concatenate([r.lengths[r.has_reply] for r in results]), sum(r.rendered for r in results)
    id_parts, learned_parts = [r.input_ids for r in results], [r.learned for r in results]
    del results
    input_ids = _concatenate_releasing(id_parts)  # one token-sized array at a time
    learned = _concatenate_releasing(learned_parts)
    memory.release_freed()
    return TokenizedSplit(conversation_ids=ids[kept].tolist(), lengths=lengths, input_ids=input_ids, learned=learned,
                          replyless=ids[~kept].tolist(), rendered=rendered)


def _concatenate_releasing(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate that lets each part go as it is copied: the peak is one copy, not two."""
    out = np.empty(sum(len(p) for p in parts), dtype=parts[0].dtype)
    at = 0
    for index in range(len(parts)):
        part, parts[index] = parts[index], None
        out[at:at + len(part)] = part
        at += len(part)
    return out


def to_dataset(tokenized: TokenizedSplit, row_length: int | None, consume: bool = False) -> Dataset:
    """Packed rows of `row_length` tokens (batching.pack's rows, its order and masking), or with None one row per
    conversation: input_ids, labels, conversation_ids (+ position_ids when packed), Arrow-backed.

    Token-sized arrays are int32 and few: at 1,000,000 conversations each one is ~0.5 GB, and in a VM each fresh one
    costs ~1 s of page faults. `consume`: packing lets go of the split's token arrays once they are reordered
    (tokenized.input_ids / .learned become None; lengths, ids and counts stay), 0.6 GB less at that peak."""
    if tokenized.tokens >= 2**31:
        raise ValueError(f"{tokenized.tokens} tokens: more than int32 offsets hold; tokenize the split in parts")
    rows = batching.pack_rows(tokenized.lengths, row_length) if row_length else [[i] for i in range(len(tokenized.lengths))]
    order = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=len(tokenized.lengths))
    if row_length is None:
        columns = {"input_ids": tokenized.input_ids, "labels": _labels(tokenized.input_ids, tokenized.learned)}
    else:  # reordered first, labels made after: a bool array moves instead of an int32 one
        starts, lengths = _starts(tokenized.lengths), tokenized.lengths[order]
        input_ids = _reorder(tokenized.input_ids, starts, order)
        learned = _reorder(tokenized.learned.view(np.uint8), starts, order).view(bool)
        if consume:
            tokenized.input_ids = tokenized.learned = None
        labels = _labels(input_ids, learned)
        del learned
        labels[_starts(lengths)] = IGNORE_INDEX  # a conversation's first token is not predicted from its row neighbour
        columns = {"input_ids": input_ids, "labels": labels, "position_ids": _positions(lengths)}
    conversations_per_row = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    row_offsets = np.concatenate([[0], np.cumsum(conversations_per_row)])
    token_offsets = np.append(_starts(tokenized.lengths[order]), tokenized.tokens)[row_offsets].astype(np.int32)
    table = {name: pa.ListArray.from_arrays(token_offsets, values) for name, values in columns.items()}
    ids = pa.array(np.asarray(tokenized.conversation_ids, dtype=object)[order], pa.string())
    table["conversation_ids"] = pa.ListArray.from_arrays(row_offsets.astype(np.int32), ids)
    # A fingerprint of our own: datasets would hash the table to make one, a copy of every column (GBs at scale).
    return Dataset(pa.table(table), fingerprint=uuid.uuid4().hex)




@dataclass(frozen=True)
class _BatchResult:
    has_reply: np.ndarray  # bool per conversation
    lengths: np.ndarray  # int64 tokens per conversation (replyless ones too; their tokens are not kept)
    input_ids: np.ndarray  # int32, kept conversations only
    learned: np.ndarray  # bool, kept conversations only
    rendered: int


_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool))


@dataclass(frozen=True)
class _Prepared:
    dialogues: list[tuple[list[str], list[str]]]
    fast: list[int]  # the conversations tokenized from the layout
    segmented: Segmented | None


@dataclass(frozen=True)
class _Job:
    conversations: _Conversations
    max_length: int
    system_prompt: str | None
    rendered: RenderedEncoder
    by_layout: LayoutEncoder | None
    truncate_left: bool

    def prepare(self, start: int, stop: int) -> _Prepared:
        dialogues = self.conversations.dialogues(start, stop, self.system_prompt)
        fast = self._layout_eligible(dialogues)
        segmented = self.by_layout.segments([dialogues[i] for i in fast]) if fast else None
        return _Prepared(dialogues, fast, segmented)

    def tokenize(self, prepared: _Prepared) -> list:
        return self.by_layout.tokenize(prepared.segmented) if prepared.segmented else []

    def finish(self, prepared: _Prepared, tokenized: Future) -> _BatchResult:
        dialogues, fast = prepared.dialogues, prepared.fast
        lengths, ids, learned = _EMPTY
        if fast:
            blocks = self.by_layout.assemble(prepared.segmented, tokenized.result())
            lengths, ids, learned = _gather(blocks, self.max_length, self.truncate_left)
        if fast and not self._same_as_rendered(dialogues[fast[0]], ids[:lengths[0]], learned[:lengths[0]]):
            fast, lengths, ids, learned = [], lengths[:0], ids[:0], learned[:0]
        slow = sorted(set(range(len(dialogues))) - set(fast))
        rendered = self.rendered.encode([_messages(*dialogues[i]) for i in slow])
        lengths, ids, learned = _interleave(fast, (lengths, ids, learned), slow, rendered)
        owner = np.repeat(np.arange(len(dialogues)), lengths)
        has_reply = np.bincount(owner, weights=learned, minlength=len(dialogues)) > 0
        keep = has_reply[owner]
        return _BatchResult(has_reply, lengths, ids[keep], learned[keep], len(slow))

    def _layout_eligible(self, dialogues: list[tuple[list[str], list[str]]]) -> list[int]:
        if self.by_layout is None:
            return []
        splits = self.by_layout.layout.splits_content
        return [i for i, (roles, contents) in enumerate(dialogues) if roles and not any(map(splits, contents))]

    def _same_as_rendered(self, dialogue: tuple[list[str], list[str]], ids: np.ndarray, learned: np.ndarray) -> bool:
        """One conversation per batch both ways: what probes could not show about the template shows here."""
        _, rendered_ids, rendered_learned = self.rendered.encode([_messages(*dialogue)])
        if np.array_equal(ids, rendered_ids) and np.array_equal(learned, rendered_learned):
            return True
        log.warning("chat template: a conversation tokenized from the template's layout differs from its rendering; "
                    "rendering this batch instead (roles %s)", dialogue[0])
        return False


def _messages(roles: list[str], contents: list[str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]


def _gather(blocks: Blocks, max_length: int | None, truncate_left: bool = False):
    """Each conversation's blocks one after the other, cut to max_length tokens: (lengths, ids, learned)."""
    sizes = blocks.lengths[blocks.sequence]
    index = np.repeat(_starts(blocks.lengths)[blocks.sequence] - _starts(sizes), sizes) + np.arange(int(sizes.sum()))
    lengths = np.add.reduceat(sizes, _starts(blocks.pieces)) if len(blocks.pieces) else np.zeros(0, np.int64)
    if max_length is not None and (lengths > max_length).any():
        position = np.arange(len(index)) - np.repeat(_starts(lengths), lengths)
        keep = position >= np.repeat(lengths - max_length, lengths) if truncate_left else position < max_length
        index, lengths = index[keep], np.minimum(lengths, max_length)
    return lengths, blocks.ids[index], blocks.learned[index]


def _interleave(first: list[int], first_arrays, second: list[int], second_arrays):
    """Two groups of conversations back in batch order (first/second: each group's positions in the batch)."""
    if not second:
        return first_arrays
    if not first:
        return second_arrays
    order = np.argsort(np.asarray(first + second), kind="stable")
    blocks = Blocks(ids=np.concatenate([first_arrays[1], second_arrays[1]]),
                    learned=np.concatenate([first_arrays[2], second_arrays[2]]),
                    lengths=np.concatenate([first_arrays[0], second_arrays[0]]),
                    sequence=order, pieces=np.ones(len(order), np.int64))
    return _gather(blocks, None)


@contextmanager
def _rust_threads():
    """The tokenizer's Rust threads on for this call (the stage turns them off for the processes it forks)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _split_conversations(turns: pd.DataFrame, split: str, limit: int | None) -> _Conversations:
    """chat_format.conversations' selection and order (conversation_id, turn_index), without a Python object per turn."""
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


def _reorder(values: np.ndarray, starts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The conversations' tokens in `order`: Arrow's take copies each conversation as one block."""
    conversations = pa.ListArray.from_arrays(np.append(starts, len(values)).astype(np.int32), values)
    return conversations.take(pa.array(order)).flatten().to_numpy(zero_copy_only=True)


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
