"""Long conversations as training examples: a conversation whose rendering is longer than max_seq_length is cut
into windows at turn boundaries, each fitting max_seq_length, so its later replies are trained on too instead of
being cut off at the right. Each reply is in exactly one window, so it is trained on once.

    windowed, counts = windows.split_long(turns, "train", tokenizer, max_length=256, system_prompt="...")

A window opens at a user turn and closes after an assistant turn; it is a conversation of its own in the turn table
(`<id>#w<k>`, turn_index from 0, same split, language and source), rendered with the system prompt like any
other; a kept system message (turn -1) opens each of its windows instead. Its first reply's history is therefore the window's own opening turn: history is truncated from the left at
a turn boundary. Lengths are estimated per turn with the tokenizer (content) plus the template's overhead per turn
and for the system prompt, measured once on a probe rendering; each window of more than one exchange is then
rendered once and gives back exchanges until it fits exactly. A single exchange longer than max_seq_length is its
own window (and is cut at the right, as before). Conversations that fit are not touched: a
conversation can only be longer in tokens than in characters by the template's overhead, so only those whose
characters exceed the budget are tokenized here at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

MARGIN = 8  # tokens kept free: the per-turn overhead is measured on a probe, tokens can merge across a boundary
PROBE = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def rendered_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    return len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a BatchEncoding in newer transformers


def overheads(tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> tuple[int, int]:
    """(tokens the template adds per turn, tokens of the rendering's fixed start: system prompt and the like)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    two, four = rendered_length(tokenizer, system + PROBE), rendered_length(tokenizer, system + PROBE + PROBE)
    per_turn = (four - two) // 2  # each probe turn's content is one token
    return max(per_turn - 1, 0), max(two - 2 * per_turn, 0)


def split_long(turns: pd.DataFrame, split: str, tokenizer: PreTrainedTokenizerBase, max_length: int,
               system_prompt: str | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The turn table with `split`'s long conversations replaced by their windows; counts for MLflow."""
    per_turn, fixed = overheads(tokenizer, system_prompt)
    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    budget = max_length - fixed - MARGIN
    rows = turns[turns["split"] == split]
    chars = rows["text"].str.len() + per_turn
    candidates = chars.groupby(rows["conversation_id"]).sum()
    long_ids = candidates.index[candidates > budget]
    counts = {f"data/{split}_windowed_conversations": 0, f"data/{split}_windows": 0}
    if len(long_ids) == 0:
        return turns, counts
    long_rows = rows[rows["conversation_id"].isin(set(long_ids))].sort_values(["conversation_id", "turn_index"])
    encoded = tokenizer(long_rows["text"].tolist(), add_special_tokens=False)["input_ids"]
    long_rows = long_rows.assign(tokens=[len(ids) + per_turn for ids in encoded])
    pieces = []
    for cid, group in long_rows.groupby("conversation_id", sort=True):
        # A kept system message (turn -1) opens every window in place of the system prompt: it is the conversation's.
        own, said = group[group["turn_index"] < 0], group[group["turn_index"] >= 0]
        head = [{"role": "system", "content": own["text"].iloc[0]}] if len(own) else system
        messages = [{"role": r, "content": t} for r, t in zip(said["role"], said["text"], strict=True)]
        bounds = cut(said["role"].tolist(), said["tokens"].tolist(), budget - int(own["tokens"].sum()),
                     fits=lambda a, b, m=messages, h=head: rendered_length(tokenizer, h + m[a:b]) <= max_length)
        if len(bounds) == 1:  # long in characters, short in tokens
            continue
        counts[f"data/{split}_windowed_conversations"] += 1
        counts[f"data/{split}_windows"] += len(bounds)
        for number, (start, stop) in enumerate(bounds):
            window = said.iloc[start:stop].drop(columns="tokens")
            window["turn_index"] = np.arange(stop - start, dtype=group["turn_index"].dtype)
            window = pd.concat([own.drop(columns="tokens"), window])
            window["conversation_id"] = f"{cid}#w{number}"
            pieces.append(window)
    if not pieces:
        return turns, counts
    windowed = set(c.split("#w")[0] for c in pd.concat(pieces)["conversation_id"])
    kept = turns[~((turns["split"] == split) & turns["conversation_id"].isin(windowed))]
    out = pd.concat([kept, *pieces], ignore_index=True)
    return out.sort_values(["split", "conversation_id", "turn_index"], ignore_index=True), counts


def cut(roles: list[str], lengths: list[int], budget: int, fits=None) -> list[tuple[int, int]]:
    """[start, stop) turn ranges: each opens at a user turn, closes after an assistant turn, and holds at most
    `budget` tokens by `lengths` unless a single exchange is longer; `fits(start, stop)`, where given, has the last
    word (the exact rendering): a window it refuses gives back exchanges until it fits or is one exchange. Together
    the windows cover every reply once, in order."""
    exchanges, first = [], 0  # (first turn, last turn + 1) of each stretch of user turns and the replies after them
    for index, role in enumerate(roles):
        if role == "assistant" and (index + 1 == len(roles) or roles[index + 1] == "user"):
            exchanges.append((first, index + 1))
            first = index + 1
    bounds, at = [], 0
    while at < len(exchanges):
        last, used = at, sum(lengths[slice(*exchanges[at])])
        while last + 1 < len(exchanges) and used + sum(lengths[slice(*exchanges[last + 1])]) <= budget:
            last += 1
            used += sum(lengths[slice(*exchanges[last])])
        while fits is not None and last > at and not fits(exchanges[at][0], exchanges[last][1]):
            last -= 1
        bounds.append((exchanges[at][0], exchanges[last][1]))
        at = last + 1
    return bounds or [(0, len(roles))]
