"""Token ids and assistant labels of many conversations from a ChatLayout: no rendering, no offsets.

    encoder = LayoutEncoder(tokenizer, layout)
    blocks = encoder.encode(conversations)      # conversations: (roles, contents) pairs, system prompt already in

Each message becomes one segment (fixed text since the previous added token + content + fixed text up to the next
one); equal segments in a batch are tokenized once (a system prompt: ~13% of the embedded data's tokens), joined a
thousand at a time at an added token (which the tokenizer splits at first) into one `encode_batch_fast` call, which
skips offsets and runs on the tokenizer's Rust threads. The fixed text between segments is tokenized once per
encoder.

Labels follow chat_format's rule (a token is learned when it overlaps an assistant reply through its end-of-turn
marker) without offsets: an assistant segment starts with the template's fixed text (`assistant\\n`); when its ids
start with that text's own ids, those tokens cover exactly that text (byte-level BPE never merges across the point
where the pre-tokenizer split), so every later token overlaps the reply and is learned. A segment where the reply's
first characters merged into the fixed text's last token (a reply that opens with two spaces) is labelled from its
offsets instead, one call per such segment. The fixed text after a reply is labelled once, from its offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

from pipeline.training.samples.template_layout import ChatLayout, Literal

_NOT_LEARNED = -1
JOINED_SEGMENTS = 1000  # segments per tokenizer input: a few dozen inputs per batch for the Rust threads to share


@dataclass
class Blocks:
    """Token blocks and, per conversation, which blocks it is made of, in order."""

    ids: np.ndarray  # int32, the blocks one after the other
    learned: np.ndarray  # bool per token
    lengths: np.ndarray  # int64 per block
    sequence: np.ndarray  # int64 block indices, conversations one after the other
    pieces: np.ndarray  # int64 blocks per conversation


@dataclass
class Segmented:
    """A batch cut into segments: the distinct segment texts and, per conversation, its blocks."""

    texts: list[str]  # segment block i's text
    learn_from: dict[int, int]  # assistant segment block -> where its label starts (len of its opening fixed text)
    sequence: list[int]  # blocks, conversations one after the other (constants as -1 - their position)
    pieces: list[int]  # blocks per conversation


@dataclass
class Tokenized:
    """The segments' ids one after the other, and each segment's length."""

    ids: np.ndarray  # int32
    lengths: np.ndarray  # int64


@dataclass
class _Plan:
    """What a conversation with these roles is made of, apart from its contents."""

    opens: list[str]  # per message: fixed text joined to the start of its content
    closes: list[str]  # per message: fixed text joined to its end
    between: list[int]  # len(roles) + 1 constant blocks: before the first segment, between each two, after the last
    learn_from: list[int]  # per message: where its label starts in its segment (len(opens)), or _NOT_LEARNED


@dataclass
class LayoutEncoder:
    backend: Tokenizer  # the fast tokenizer's Rust tokenizer without truncation or padding
    layout: ChatLayout
    _constants: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (ids, learned) per block
    _constant_index: dict[tuple[str, int], int] = field(default_factory=dict)
    _plans: dict[tuple[str, ...], _Plan] = field(default_factory=dict)
    _prefix_ids: dict[str, list[int]] = field(default_factory=dict)

    def encode(self, conversations: list[tuple[list[str], list[str]]]) -> Blocks:
        """Blocks for (roles, contents) pairs: segments(), then tokenize() (Rust, no GIL), then assemble()."""
        segmented = self.segments(conversations)
        return self.assemble(segmented, self.tokenize(segmented))

    def tokenize(self, segmented: Segmented) -> Tokenized:
        """The segments' ids; the one step that runs without the GIL, on the tokenizer's Rust threads.

        Segments are joined JOINED_SEGMENTS at a time with an added token between them. The tokenizer splits its
        input there before anything else (as in a rendered conversation), so each segment is tokenized on its own,
        and a few long Encodings are read from Python ~10x faster than one per segment (15 vs 146 ns a token)."""
        texts, separator = segmented.texts, self.layout.added_tokens[0]
        separator_id = self.backend.token_to_id(separator)
        ids, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int64)]
        groups = [texts[i:i + JOINED_SEGMENTS] for i in range(0, len(texts), JOINED_SEGMENTS)]
        joined = self.backend.encode_batch_fast([separator.join(g) for g in groups], add_special_tokens=False)
        for group, encoding in zip(groups, joined, strict=True):
            stream = np.array(encoding.ids, dtype=np.int32)
            cuts = np.flatnonzero(stream == separator_id)
            if len(cuts) != len(group) - 1:  # a segment made the separator's id itself: one Encoding per segment
                one_by_one = [e.ids for e in self.backend.encode_batch_fast(group, add_special_tokens=False)]
                ids.append(np.fromiter(chain.from_iterable(one_by_one), np.int32, sum(map(len, one_by_one))))
                lengths.append(np.fromiter(map(len, one_by_one), np.int64, len(one_by_one)))
                continue
            lengths.append(np.diff(np.concatenate([[-1], cuts, [len(stream)]])) - 1)
            ids.append(np.delete(stream, cuts))
        return Tokenized(np.concatenate(ids), np.concatenate(lengths))

    def segments(self, conversations: list[tuple[list[str], list[str]]]) -> Segmented:
        """Each distinct segment once; blocks are segments numbered from 0 and constants from -1 down."""
        segments: list[dict[str, int]] = [{}, {}]  # not learned / learned: segment text -> block index
        learn_from: dict[int, int] = {}  # block -> len(opens), learned segments only
        sequence, pieces = [], []
        for roles, contents in conversations:
            plan = self._plans.get(tuple(roles)) or self._plan(roles)
            blocks = [plan.between[0]]
            for opens, content, closes, start, after in zip(plan.opens, contents, plan.closes, plan.learn_from,
                                                            plan.between[1:], strict=True):
                text = opens + content + closes
                seen = segments[start != _NOT_LEARNED]
                block = seen.get(text)
                if block is None:
                    block = seen[text] = len(segments[0]) + len(segments[1])
                    if start != _NOT_LEARNED:
                        learn_from[block] = start
                blocks += (block, after)
            sequence += blocks
            pieces.append(len(blocks))
        texts = [""] * (len(segments[0]) + len(segments[1]))
        for seen in segments:
            for text, block in seen.items():
                texts[block] = text
        return Segmented(texts, learn_from, sequence, pieces)

    def assemble(self, segmented: Segmented, tokenized: Tokenized) -> Blocks:
        constant_ids = [ids for ids, _ in self._constants]
        lengths = np.concatenate([tokenized.lengths, np.fromiter(map(len, constant_ids), np.int64, len(constant_ids))])
        blocks = np.asarray(segmented.sequence, dtype=np.int64)
        constant = blocks < 0
        blocks[constant] = len(segmented.texts) - 1 - blocks[constant]  # constant c (stored as -1 - c) last
        return Blocks(ids=np.concatenate([tokenized.ids, *constant_ids]),
                      learned=np.concatenate([self._segments_learned(segmented, tokenized),
                                              *(m for _, m in self._constants)]),
                      lengths=lengths, sequence=blocks, pieces=np.asarray(segmented.pieces, dtype=np.int64))

    def _segments_learned(self, segmented: Segmented, tokenized: Tokenized) -> np.ndarray:
        """Per token of the segments: every token after the fixed text that opens an assistant segment, found by
        its ids (the segment's ids start with that text's ids; checked per distinct opening text, all its segments
        at once) or, where the reply merged into that text's last token, by offsets (chat_format's overlap rule)."""
        texts, ids, lengths = segmented.texts, tokenized.ids, tokenized.lengths
        starts = np.cumsum(lengths) - lengths
        by_opening: dict[str, list[int]] = {}
        for block, start in segmented.learn_from.items():
            by_opening.setdefault(texts[block][:start], []).append(block)
        range_starts, range_ends, merged = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], []
        for opening, group in by_opening.items():
            prefix, blocks = self._prefix_ids_of(opening), np.asarray(group, dtype=np.int64)
            matches = lengths[blocks] >= len(prefix)
            for position, token in enumerate(prefix):  # lengths >= len(prefix): every index read is in range
                matches[matches] = ids[starts[blocks[matches]] + position] == token
            range_starts.append(starts[blocks[matches]] + len(prefix))
            range_ends.append(starts[blocks[matches]] + lengths[blocks[matches]])
            merged += blocks[~matches].tolist()
        size = len(ids) + 1  # +1 where a learned range starts, -1 where it ends
        edges = (np.bincount(np.concatenate(range_starts), minlength=size)
                 - np.bincount(np.concatenate(range_ends), minlength=size))
        learned = np.cumsum(edges[:-1]) > 0
        for block in merged:
            offsets = self.backend.encode(texts[block], add_special_tokens=False).offsets
            learned[starts[block]:starts[block] + len(offsets)] = [
                end > segmented.learn_from[block] for _, end in offsets]
        return learned

    def _prefix_ids_of(self, prefix: str) -> list[int]:
        ids = self._prefix_ids.get(prefix)
        if ids is None:
            ids = self._prefix_ids[prefix] = self.backend.encode(prefix, add_special_tokens=False).ids
        return ids

    def _plan(self, roles: list[str]) -> _Plan:
        literals = [self.layout.split(text) for text in self.layout.literals(roles)]
        first, last = literals[0], literals[-1]
        if not first.middle:  # no added token before the first content: all of that text opens it
            first = Literal("", "", first.closes)
        labelled = [self.layout.labelled_chars - len(lit.closes) if role == "assistant" else 0
                    for role, lit in zip(roles, literals[1:], strict=True)]
        between = [self._constant(first.closes + first.middle, 0),  # nothing precedes the first added token
                   *(self._constant(lit.middle, chars) for lit, chars in zip(literals[1:-1], labelled, strict=False)),
                   self._constant(last.middle + last.opens, labelled[-1])]  # nor follows the last one
        opens = [first.opens, *(lit.opens for lit in literals[1:-1])]
        plan = _Plan(opens=opens, closes=[lit.closes for lit in literals[1:]], between=between,
                     learn_from=[len(text) if role == "assistant" else _NOT_LEARNED
                                 for text, role in zip(opens, roles, strict=True)])
        self._plans[tuple(roles)] = plan
        return plan

    def _constant(self, text: str, labelled_chars: int) -> int:
        """A block of fixed text, its tokens learned where they start in its first `labelled_chars` characters;
        returned as -1 - its position among the constants."""
        key = (text, max(0, labelled_chars))
        if key not in self._constant_index:
            encoding = self.backend.encode(text, add_special_tokens=False)
            learned = np.fromiter((begin < key[1] for begin, _ in encoding.offsets), bool, count=len(encoding.ids))
            self._constants.append((np.asarray(encoding.ids, np.int32), learned))
            self._constant_index[key] = len(self._constants) - 1
        return -1 - self._constant_index[key]
