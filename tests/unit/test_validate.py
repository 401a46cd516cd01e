"""The GX contract: a clean table passes; each broken rule fails with the expectation and examples named."""

from pathlib import Path

import pandas as pd
import pytest

from pipeline import ingest, validate

CORPUS = Path(__file__).parents[1] / "data" / "corpus"
LENIENT = validate.ValidateConfig(min_conversations={"train": 1})


@pytest.fixture(scope="module")
def turns():
    config = ingest.IngestConfig(corpus_dir=str(CORPUS))
    frame, _ = ingest.read_corpus(config)
    frame = ingest.assign_splits(frame, config)
    frame["partition_date"] = "2026-11-22"
    return frame


def failures(frame, config=LENIENT):
    report = validate.summarize(validate.check_turns(frame, config) + validate.check_conversations(frame, config))
    return {r["type"] for r in report["results"] if not r["success"]}, report


def test_clean_table_passes(turns):
    assert failures(turns)[0] == set()


@pytest.mark.parametrize("breakage, expectation", [
    (lambda f: f.assign(role=f["role"].replace({"assistant": "bot"})), "expect_column_values_to_be_in_set"),
    (lambda f: f.assign(text=f["text"].where(f.index != 0, None)), "expect_column_values_to_not_be_null"),
    (lambda f: f.assign(text=f["text"].where(f.index != 0, "")), "expect_column_value_lengths_to_be_between"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "expect_compound_columns_to_be_unique"),
    (lambda f: f.assign(turn_index=f["turn_index"] + 1), "expect_column_pair_values_to_be_in_set"),
    (lambda f: f.drop(columns=["language"]), "expect_table_columns_to_match_set"),
])
def test_each_broken_rule_is_caught(turns, breakage, expectation):
    failed, report = failures(breakage(turns.copy()))
    assert expectation in failed
    assert expectation in report["message"]


def test_conversation_in_two_splits_is_leakage(turns):
    leaked = turns.copy()
    first = leaked["conversation_id"].iloc[0]
    rows = leaked.index[leaked["conversation_id"] == first]
    leaked.loc[rows[0], "split"] = "train"
    leaked.loc[rows[1], "split"] = "test"
    failed, report = failures(leaked)
    assert "expect_column_values_to_be_between" in failed and "[conversations]" in report["message"]


def test_too_few_conversations_in_a_split(turns):
    failed, report = failures(turns, validate.ValidateConfig(min_conversations={"train": 1000}))
    assert failed == {"expect_table_row_count_to_be_between"}
    assert "[split_train]" in report["message"]
