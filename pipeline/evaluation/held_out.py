"""The held-out set: the examples and dialogues of a held-out split that every model is scored on tonight, and the
rules a set must meet before any (minutes-long) model is loaded.

    examples = held_out.examples(turns, "test", max_examples=200, min_per_language=10, where="data/.../dt=...")
    dialogues = held_out.dialogues(turns, "test", max_examples=200)      # the perplexity pass's references
    turns, about = held_out.window(turns, project, "2026-11-22", days=3, split="test")  # + 2 earlier days' test

The anchor set (anchor.py) is the other evaluation set; both raise EvaluationSetError naming the set and the rule.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import NamedTuple

import pandas as pd

from pipeline.config import ProjectConfig
from pipeline.data import languages, partitions
from pipeline.evaluation import EvaluationSetError
from pipeline.model import chat_format


def examples(turns: pd.DataFrame, split: str, max_examples: int | None, min_per_language: int | None,
             where: str) -> list[chat_format.EvalExample]:
    """Up to `max_examples` replies of `split` to score (spread over its conversations, see `spread`), checked: at
    least one, and `min_per_language` per language (fewer makes per-language scores and promote's bootstrap noise)."""
    found = spread(chat_format.eval_examples(turns, split), max_examples)
    if not found:
        raise EvaluationSetError(
            f"held-out set {split!r} of {where} has 0 examples; rule: an evaluation set holds at least one "
            f"assistant reply to score (check ingest's {split}_fraction and validate's min_conversations)")
    counts = Counter(languages.primary(e.language) for e in found)
    few = {lang: n for lang, n in sorted(counts.items()) if n < (min_per_language or 0)}
    if few:
        raise EvaluationSetError(
            f"held-out set {split!r} of {where}: {', '.join(f'{k}: {n}' for k, n in few.items())} examples; "
            f"rule: at least {min_per_language} per language (evaluate.min_examples_per_language), "
            "or per-language scores and promote's bootstrap are noise (raise max_examples or drop the language)")
    return found


def spread(found: list[chat_format.EvalExample], max_examples: int | None) -> list[chat_format.EvalExample]:
    """At most `max_examples` replies taken round-robin over the conversations (every conversation's first reply,
    then every second one, ...), kept in their order. Not the first N: one long conversation of the feed holds
    hundreds of replies, and a set of one conversation leaves promote's conversation bootstrap nothing to resample."""
    if max_examples is None or len(found) <= max_examples:
        return found
    position, seen = [], Counter()
    for example in found:
        position.append(seen[example.conversation_id])
        seen[example.conversation_id] += 1
    chosen = sorted(sorted(range(len(found)), key=lambda i: position[i])[:max_examples])
    return [found[i] for i in chosen]


def last_turns(examples: list[chat_format.EvalExample], turns: int | None) -> list[chat_format.EvalExample]:
    """Each prompt cut to its last `turns` turns (odd: the cut history still opens with a user turn); None: all. A
    long conversation's late replies are then prompted with recent context, as a chat client sends it. A kept
    system message stays first: it is the conversation's instruction, not context."""
    if turns is None:
        return examples
    out = []
    for example in examples:
        system = example.history[:1] if example.history and example.history[0]["role"] == "system" else []
        said = example.history[len(system):]
        out.append(dataclasses.replace(example, history=system + said[-turns:]) if len(said) > turns else example)
    return out


def dialogues(turns: pd.DataFrame, split: str, max_examples: int | None) -> list[list[dict]]:
    """The held-out conversations whose reference replies the perplexity pass scores."""
    return [messages for _, _, messages in chat_format.conversations(turns, split)[:max_examples]]


def window(tonight: pd.DataFrame, project: ProjectConfig, run_date: str, days: int,
           split: str) -> tuple[pd.DataFrame, dict]:
    """Tonight's partition plus the `split` conversations of the partitions of the `days - 1` days before it: the
    held-out set the gate judges on. One feed day holds 6-11 test conversations, too few for the gate to see a gain
    (docs/nights.md); a window of days is more, and it slides: only its newest day is new to the base model and
    the champion (generation_cache). No candidate trained on any of it: a conversation is in `split` in every
    partition that holds it (splits come from a hash of the conversation). A conversation tonight's partition
    holds is taken from it, and each other one from its newest partition; a day without a partition is counted."""
    earlier = past_split(project, run_date, range(1, days), split, set(tonight["conversation_id"]))
    return pd.concat([tonight, *earlier.turns], ignore_index=True), {
        "days": days, "earlier_partitions": earlier.read, "missing_days": earlier.missing,
        "unvalidated_days": earlier.unvalidated}


class EarlierSplits(NamedTuple):
    turns: list[pd.DataFrame]  # one frame per day read, newest first
    read: list[str]  # the days read
    missing: int  # days without a partition
    unvalidated: list[str]  # days whose partition validate did not approve (failed, never ran, or re-ingested)


def past_split(project: ProjectConfig, run_date: str, offsets: range, split: str, exclude: set[str]) -> EarlierSplits:
    """The `split` rows of the partitions `offsets` days before the run date (newest first), each conversation once
    and none of `exclude`, from partitions validate approved only: a day that failed validation is no more a
    reference for the gate than it was training data."""
    earlier, found, exclude = partitions.earlier(project, run_date, offsets), [], set(exclude)
    for _, partition in earlier.approved:
        turns = partition.turns[(partition.turns["split"] == split) & ~partition.turns["conversation_id"].isin(exclude)]
        exclude.update(turns["conversation_id"])  # each conversation once, from its newest partition
        found.append(turns)
    return EarlierSplits(found, [day for day, _ in earlier.approved], len(earlier.missing), earlier.unvalidated)
