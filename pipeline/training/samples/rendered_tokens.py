"""Token ids and assistant labels of conversations by rendering the chat template: what any template allows.

    encoder = RenderedEncoder.for_tokenizer(tokenizer, max_length=256, system_prompt=None)
    lengths, ids, learned = encoder.encode(dialogues)      # dialogues: lists of {"role", "content"}, system prompt in

Each conversation is rendered once and the texts are tokenized in one batch (truncated as tokenizer(...,
truncation=True, max_length) truncates). Where each reply starts and ends is read from that one rendering: a probe
conversation tells what the template writes before a reply (its generation prompt) and after it (the end-of-turn
marker), and each reply is found as that header + its content + that footer. A conversation whose rendering does not
have exactly one header per reply, each followed by the reply verbatim, gets chat_format's spans (rendered per turn),
so an unusual template or a message that quotes the markers costs time, never correctness. One difference: a
conversation that opens with an assistant turn is labelled here, where per-turn rendering failed (transformers
refuses the empty history). Labels come from the tokens' character offsets overlapping those spans (as in
chat_format, never from token ids: pad == eos). layout_tokens.py does the same work faster where the template allows.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import chain

import numpy as np
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from pipeline.model import chat_format

PROBE = [{"role": "user", "content": "Probe question?"}, {"role": "assistant", "content": "Probe reply."}]


@dataclass(frozen=True)
class _TurnMarkers:
    header: str  # what the template writes before a reply: its generation prompt
    footer: str  # what it writes after a reply's content, through the end-of-turn marker


@dataclass(frozen=True)
class RenderedEncoder:
    tokenizer: PreTrainedTokenizerBase
    backend: Tokenizer  # the tokenizer's Rust tokenizer, set up as tokenizer(..., truncation=True) sets it up
    markers: _TurnMarkers | None

    @classmethod
    def for_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, max_length: int,
                      system_prompt: str | None) -> RenderedEncoder:
        return cls(tokenizer, truncating_backend(tokenizer, max_length), _probe_markers(tokenizer, system_prompt))

    def encode(self, dialogues: list[list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens per conversation (int64), ids (int32) and learned (bool), conversations one after the other."""
        if not dialogues:
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)
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
        return lengths, ids, learned

    def _spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        """chat_format._assistant_spans from the one rendering; that function itself where the markers don't fit."""
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        markers = self.markers
        if markers is None or text.count(markers.header) != len(replies):
            return chat_format._assistant_spans(self.tokenizer, messages, text)
        spans, cursor = [], 0
        for content in replies:
            start = text.find(markers.header, cursor) + len(markers.header)
            cursor = start + len(content) + len(markers.footer)
            if text[start:start + len(content)] != content or text[start + len(content):cursor] != markers.footer:
                return chat_format._assistant_spans(self.tokenizer, messages, text)
            # chat_format's end: the rendering through this turn, right-stripped (the newline after the marker)
            tail = (content + markers.footer).rstrip()
            spans.append((start, start + len(tail) if tail else len(text[:start].rstrip())))
        return spans


def truncating_backend(tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> Tokenizer:
    """A copy of the fast tokenizer's Rust tokenizer with the settings tokenizer(texts, truncation=True,
    max_length=...) applies before it calls encode_batch (None: no truncation). Its Encodings are read directly:
    BatchEncoding's Python lists of ids, attention masks, type ids and offset tuples cost ~20% of the whole."""
    if not tokenizer.is_fast:
        raise TypeError(f"{type(tokenizer).__name__}: batch tokenization needs a fast (Rust) tokenizer for offsets")
    backend = copy.deepcopy(tokenizer.backend_tokenizer)  # the caller's tokenizer keeps its own settings
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    backend.no_padding()
    backend.encode_special_tokens = tokenizer.split_special_tokens
    return backend


def _probe_markers(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> _TurnMarkers | None:
    """What the template writes around a reply, or None if it does not render as prefix + header + reply + footer."""
    history = chat_format._with_system(PROBE[:1], system_prompt)
    plain = tokenizer.apply_chat_template(history, tokenize=False)
    prompted = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*history, PROBE[1]], tokenize=False)
    reply = PROBE[1]["content"]
    if not (prompted.startswith(plain) and len(prompted) > len(plain) and full.startswith(prompted + reply)):
        return None
    return _TurnMarkers(header=prompted[len(plain):], footer=full[len(prompted) + len(reply):])
