"""The held-out set: replies of the split spread over its conversations, checked before any model is loaded: at least one, and enough
per language for per-language scores and promote's bootstrap to mean something."""

import pandas as pd
import pytest

from pipeline.evaluation import EvaluationSetError, held_out
from pipeline.model import chat_format


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


def test_a_capped_set_spreads_over_conversations_instead_of_taking_one_long_conversation():
    """A feed conversation of 100 replies first in order must not be the whole capped set: the set takes every
    conversation's first reply, then the second ones, ... (a set of one conversation gives promote's conversation
    bootstrap nothing to resample)."""
    rows = [{"conversation_id": "a-long", "turn_index": i, "role": "user" if i % 2 == 0 else "assistant",
             "text": f"turn {i}", "language": "en", "split": "test"} for i in range(200)]
    frame = pd.concat([pd.DataFrame(rows), turns(["en"] * 6)], ignore_index=True)
    found = held_out.examples(frame, "test", max_examples=10, min_per_language=None, where="p")
    assert len(found) == 10 and len({e.conversation_id for e in found}) == 7
    assert [e.reference for e in found if e.conversation_id == "a-long"] == ["turn 1", "turn 3", "turn 5", "turn 7"]
    assert held_out.spread(found, None) == found


def test_a_prompt_cut_to_its_last_turns_keeps_a_kept_system_message_first():
    said = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(7)]
    system = {"role": "system", "content": "You are Ada."}
    example = chat_format.EvalExample("c", "en", [system, *said], "reply")
    cut, = held_out.last_turns([example], 3)
    assert cut.history == [system, *said[-3:]]
    short = chat_format.EvalExample("c", "en", [system, *said[:3]], "reply")
    assert held_out.last_turns([short], 3) == [short]
