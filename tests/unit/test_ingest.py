"""Ingest: malformed corpus entries are skipped and counted; splits are stable; reruns are byte-identical."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from pipeline import ingest
from pipeline.config import ProjectConfig, RunContext

CORPUS = Path(__file__).parents[1] / "data" / "corpus"


def _run(tmp_path, **config):
    project = ProjectConfig(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    ctx = RunContext(run_date="2026-11-22", run_id="test")
    return ingest.run(ingest.IngestConfig(corpus_dir=str(CORPUS), **config), project, ctx)


def test_reads_corpus_and_counts_skipped_entries():
    turns, counts = ingest.read_corpus(ingest.IngestConfig(corpus_dir=str(CORPUS)))
    assert counts == Counter(conversations=7, skipped_duplicate=1, skipped_not_a_list=1, skipped_too_short=1)
    assert set(turns["language"]) == {"en", "zh"}
    four_turns = turns[turns["text"] == "Good to hear."].iloc[0]
    assert (four_turns["turn_index"], four_turns["role"]) == (2, "user")
    assert "2" in set(turns["text"])  # a YAML number becomes text instead of being lost


def test_partition_is_complete_and_rerun_is_byte_identical(tmp_path):
    output = _run(tmp_path)
    assert output == tmp_path / "data" / "conversations" / "dt=2026-11-22"
    first = (output / "turns.parquet").read_bytes()
    manifest = (output / "manifest.json").read_text()
    _run(tmp_path)
    assert (output / "turns.parquet").read_bytes() == first
    assert (output / "manifest.json").read_text() == manifest
    frame = pd.read_parquet(output / "turns.parquet")
    assert list(frame.columns) == ingest.COLUMNS
    assert (frame["partition_date"] == "2026-11-22").all()


def test_split_depends_only_on_the_conversation():
    config = ingest.IngestConfig(corpus_dir=str(CORPUS), validation_fraction=0.3, test_fraction=0.3)
    turns, _ = ingest.read_corpus(config)
    full = ingest.assign_splits(turns.copy(), config)
    english_only = ingest.assign_splits(turns[turns["language"] == "en"].copy(), config)
    merged = english_only.merge(full, on=["conversation_id", "turn_index"], suffixes=("_alone", "_full"))
    assert (merged["split_alone"] == merged["split_full"]).all()  # adding other data moves nothing
    assert full.groupby("conversation_id")["split"].nunique().max() == 1


def test_unparseable_file_is_named(tmp_path):
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / "bad.yml").write_text("conversations:\n- - a\n  - [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yml: cannot parse corpus file"):
        ingest.read_corpus(ingest.IngestConfig(corpus_dir=str(tmp_path), languages=["english"]))


def test_missing_language_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no \\*.yml files for language 'klingon'"):
        ingest.read_corpus(ingest.IngestConfig(corpus_dir=str(CORPUS), languages=["klingon"]))
