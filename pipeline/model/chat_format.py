"""Dialogues as model inputs: conversation tables -> chat-templated token ids with assistant-only labels.

Labels are derived from character spans of the assistant turns in the rendered template, never from token ids:
SmolLM2's pad token is also its end-of-turn token, so masking "pad" labels would also hide every <|im_end|> and
the model would never learn to stop.

A reply is located by rendering the conversation up to it. Templates that render an earlier reply differently once
later turns follow (Qwen3-style: the reply that ends the conversation gets an empty reasoning block, earlier ones
have theirs dropped) are located by searching the messages in order instead, and prompted as the reply that ends a
conversation was rendered in training (render_prompt), so generation starts where training taught a reply to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from pipeline.model import loading

IGNORE_INDEX = -100  # label value that the loss skips
REPLY_SLOT = "\u2063REPLY\u2063"  # a reply no conversation holds: where the template starts an answer
THINK_START, THINK_END = "<think>", "</think>"  # a reasoning block; templates drop it from earlier replies


@dataclass(frozen=True)
class EvalExample:
    conversation_id: str
    language: str
    history: list[dict]  # messages up to and including the user turn being answered
    reference: str  # the assistant reply in the data


def conversations(turns: pd.DataFrame, split: str) -> list[tuple[str, str, list[dict]]]:
    """(conversation_id, language, messages) for every conversation of a split, in a stable order."""
    rows = turns[turns["split"] == split].sort_values(["conversation_id", "turn_index"])
    return [
        (cid, group["language"].iloc[0], [{"role": r, "content": t} for r, t in zip(group["role"], group["text"], strict=True)])
        for cid, group in rows.groupby("conversation_id", sort=True)
    ]


def eval_examples(turns: pd.DataFrame, split: str) -> list[EvalExample]:
    """One example per assistant turn: the conversation so far is the prompt, the turn is the reference."""
    examples = []
    for cid, language, messages in conversations(turns, split):
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                examples.append(EvalExample(cid, language, messages[:index], message["content"]))
    return examples


def render_prompt(tokenizer: PreTrainedTokenizerBase, history: list[dict], system_prompt: str | None) -> str:
    """The generation prompt; where the template writes more before a final reply than its generation prompt does
    (Qwen3-style: an empty reasoning block), the text before that reply, as training saw it."""
    messages = _with_system(history, system_prompt)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    try:
        slotted = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": REPLY_SLOT}],
                                                tokenize=False)
    except Exception:  # a template that will not render a reply after this history: its generation prompt it is
        return prompt
    start = slotted.find(REPLY_SLOT)
    if start > len(prompt) and slotted.startswith(prompt):
        return slotted[:start]
    return prompt


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int, system_prompt: str | None = None
) -> dict[str, list[int]] | None:
    """input_ids + labels (assistant content and its end-of-turn token only). None if truncation left no reply."""
    messages = _with_system(messages, system_prompt)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = _assistant_spans(tokenizer, messages, text)
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length
    )
    labels = [
        token if any(start < end_tok and begin_tok < end for start, end in spans) else IGNORE_INDEX
        for token, (begin_tok, end_tok) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": encoded["input_ids"], "labels": labels}


def pad_batch(features: list[dict], pad_token_id: int, padding_side: str = "right",
              device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """Dynamic padding to the longest sample of the batch; padded positions get attention 0 and no label. The
    tensors are made on `device` (the model's: a GPU where there is one)."""
    width = max(len(f["input_ids"]) for f in features)
    ids, mask, labels = [], [], []
    for feature in features:
        pad = width - len(feature["input_ids"])
        def place(values, filler, pad=pad):
            return values + [filler] * pad if padding_side == "right" else [filler] * pad + values
        ids.append(place(list(feature["input_ids"]), pad_token_id))
        mask.append(place([1] * len(feature["input_ids"]), 0))
        labels.append(place(list(feature.get("labels", feature["input_ids"])), IGNORE_INDEX))
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device),
            "labels": torch.tensor(labels, device=device)}


def _with_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    if system_prompt is None or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def _assistant_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of each assistant reply in `text`, through its end-of-turn marker, excluding the newline."""
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        content = message["content"]
        if not (text.startswith(before) and text.startswith(through)
                and (text.startswith(content, len(before)) or text.startswith(content.strip(), len(before)))):
            # a turn rendered differently once others follow, or text the template puts before a reply (an empty
            # reasoning block): not part of the reply to learn
            return _spans_by_search(tokenizer, messages, text)
        spans.append((len(before), len(through.rstrip())))
    return spans


def _spans_by_search(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Each reply found in `text` in message order, from its content through the end-of-turn marker after it: for
    templates whose rendering of a turn depends on the turns after it. A reply's reasoning block may be dropped."""
    marker = tokenizer.convert_ids_to_tokens(loading.end_of_turn_id(tokenizer))
    spans, cursor = [], 0
    for number, message in enumerate(messages, start=1):
        content = message["content"]
        variants = [content, content.strip(), content.split(THINK_END)[-1].strip()]
        found = next(((at, len(v)) for v in variants if v and (at := text.find(v, cursor)) >= 0), None)
        if found is None:
            if message["role"] != "assistant":
                continue  # a template may merge or rewrite a system or user message: not what is learned
            raise ValueError(f"chat template: message {number} (assistant) is not in the rendered conversation, as "
                             "said or without its reasoning block; cannot locate it to learn it")
        cursor = found[0] + found[1]
        if message["role"] == "assistant":
            end = text.find(marker, cursor)
            if end < 0:
                raise ValueError(f"chat template: message {number} (assistant) is not followed by {marker!r}")
            cursor = end + len(marker)
            spans.append((found[0], cursor))
    return spans
