"""The held-out set: the examples and dialogues of a held-out split that every model is scored on tonight, and the
rules a set must meet before any (minutes-long) model is loaded.

    examples = held_out.examples(turns, "test", max_examples=200, min_per_language=10, where="data/.../dt=...")
    dialogues = held_out.dialogues(turns, "test", max_examples=200)      # the perplexity pass's references

The anchor set (anchor.py) is the other evaluation set; both raise EvaluationSetError naming the set and the rule.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from pipeline.data import languages
from pipeline.evaluation import EvaluationSetError
from pipeline.model import chat_format


def examples(turns: pd.DataFrame, split: str, max_examples: int | None, min_per_language: int | None,
             where: str) -> list[chat_format.EvalExample]:
    """The first `max_examples` replies of `split` to score, checked: at least one, and `min_per_language` per
    language (fewer makes per-language scores and promote's bootstrap noise)."""
    found = chat_format.eval_examples(turns, split)[:max_examples]
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


def dialogues(turns: pd.DataFrame, split: str, max_examples: int | None) -> list[list[dict]]:
    """The held-out conversations whose reference replies the perplexity pass scores."""
    return [messages for _, _, messages in chat_format.conversations(turns, split)[:max_examples]]
