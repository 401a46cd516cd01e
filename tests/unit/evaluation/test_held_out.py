"""The held-out set: the first replies of the split, checked before any model is loaded: at least one, and enough
per language for per-language scores and promote's bootstrap to mean something."""

import pandas as pd
import pytest

from pipeline.evaluation import EvaluationSetError, held_out


def turns(languages: list[str], split: str = "test") -> pd.DataFrame:
    rows = []
    for number, language in enumerate(languages):
        rows += [{"conversation_id": f"c{number}", "turn_index": 0, "role": "user", "text": f"question {number}",
                  "language": language, "split": split},
                 {"conversation_id": f"c{number}", "turn_index": 1, "role": "assistant", "text": f"answer {number}",
                  "language": language, "split": split}]
    return pd.DataFrame(rows)


def test_examples_are_capped_and_dialogues_follow_the_same_conversations():
    table = turns(["en"] * 5)
    examples = held_out.examples(table, "test", max_examples=3, min_per_language=None, where="dt=x")
    assert [e.reference for e in examples] == ["answer 0", "answer 1", "answer 2"]
    dialogues = held_out.dialogues(table, "test", max_examples=3)
    assert [d[-1]["content"] for d in dialogues] == ["answer 0", "answer 1", "answer 2"]


def test_an_empty_split_is_an_error_naming_the_set_and_the_rule():
    with pytest.raises(EvaluationSetError, match=r"held-out set 'test' of dt=x has 0 examples; rule: .* at least one"):
        held_out.examples(turns(["en"], split="train"), "test", 10, None, "dt=x")


def test_too_few_replies_in_one_language_is_an_error_naming_it():
    table = turns(["en"] * 10 + ["zh"] * 3)
    with pytest.raises(EvaluationSetError, match=r"zh: 3 examples; rule: at least 10 per language"):
        held_out.examples(table, "test", None, 10, "dt=x")
    assert len(held_out.examples(table, "test", None, 3, "dt=x")) == 13
