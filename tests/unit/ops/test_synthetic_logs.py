"""Synthetic chat logs: seeded (the same call writes the same bytes), with the duplicates, PII and malformed lines
it announces, and a turns table shaped like ingest's."""

import hashlib
import json

import pandas as pd

from ops import synthetic_logs


def digest(directory) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(directory.glob("*.jsonl")))).hexdigest()


def test_generation_is_seeded_and_counts_what_it_planted(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    counts = synthetic_logs.generate(first, utterances=8000, files=3)
    assert synthetic_logs.generate(second, utterances=8000, files=3) == counts and digest(first) == digest(second)
    lines = [line for path in sorted(first.glob("*.jsonl")) for line in path.read_text().splitlines()]
    malformed = 0
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            malformed += 1
    assert counts["conversations"] == 2000 and len(lines) == 2000 + counts["malformed"]
    assert malformed == counts["malformed"] and counts["exact_dup"] > 0 and counts["pii"] > 0


def test_the_turns_table_has_ingests_columns_and_both_languages(tmp_path):
    turns = pd.read_parquet(synthetic_logs.turns_table(100, tmp_path))
    assert list(turns.columns) == ["conversation_id", "turn_index", "role", "text", "language", "split"]
    assert set(turns["language"]) == {"en", "zh"} and set(turns["split"]) == {"train"}
    assert (turns.groupby("conversation_id")["turn_index"].max() == 3).all()
