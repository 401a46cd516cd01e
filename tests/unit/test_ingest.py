"""Ingest: cleaned, de-duplicated, split partitions; rejects quarantined with reasons; reruns byte-identical;
a failure leaves the previous partition untouched."""

import json
from pathlib import Path

import pandas as pd
import pytest
from dialogue_files import openai_record, write_jsonl

from pipeline import ingest, sources, storage
from pipeline.config import ConfigError, ProjectConfig, RunContext, build

CORPUS = Path(__file__).parents[1] / "data" / "corpus"
CHATTERBOT = {"format": "chatterbot", "uri": str(CORPUS)}


def _project(tmp_path):
    return ProjectConfig(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                         tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))


def _run(tmp_path, run_date="2026-11-22", **config):
    config.setdefault("sources", [CHATTERBOT])
    return ingest.run(ingest.IngestConfig(**config), _project(tmp_path), RunContext(run_date, "test"))


def test_corpus_partition_counts_quarantine_and_schema(tmp_path):
    output = _run(tmp_path)
    assert output == tmp_path / "data" / "conversations" / "dt=2026-11-22"
    frame = pd.read_parquet(output / "turns.parquet")
    assert list(frame.columns) == ingest.COLUMNS and str(frame["turn_index"].dtype) == "int32"
    manifest = storage.read_manifest(output)
    counts = manifest["counts"]
    assert (counts["read"], counts["rejected"], counts["duplicates.exact"], counts["conversations"]) == (10, 2, 1, 7)
    assert counts["rejected.not_a_list_of_utterances"] == 1 and counts["rejected.fewer_than_2_turns"] == 1
    quarantine = [json.loads(line) for line in (output / "quarantine.jsonl").read_text().splitlines()]
    assert [(Path(q["origin"]).name, q["reason"][:18]) for q in quarantine] == [
        ("greetings.yml:12", "not a list of utte"), ("greetings.yml:13", "fewer than 2 turns")]
    assert manifest["quarantined"] == 2 and manifest["conversations_per_language"] == {"en": 4, "zh": 3}
    assert [f["uri"].rsplit("/", 2)[-2:] for f in manifest["inputs"][0]["files"]] == [
        ["english", "greetings.yml"], ["chinese", "greetings.yml"]]
    assert set(frame["partition_date"]) == {"2026-11-22"} and set(frame["language"]) == {"en", "zh"}


def test_rerun_is_byte_identical(tmp_path):
    output = _run(tmp_path)
    first = {name: (output / name).read_bytes() for name in ("turns.parquet", "quarantine.jsonl", "manifest.json")}
    _run(tmp_path)
    assert {name: (output / name).read_bytes() for name in first} == first


def test_split_depends_only_on_the_conversation(tmp_path):
    records = [openai_record(n) for n in range(300)]
    write_jsonl(tmp_path / "in" / "dt=2026-11-21" / "a.jsonl", records[:150])
    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", records[150:])
    source = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True}
    config = ingest.IngestConfig(sources=[source], validation_fraction=0.3, test_fraction=0.3)
    one_day, _, _ = ingest.collect(config, "2026-11-21")
    two_days, _, _ = ingest.collect(ingest.IngestConfig(sources=[source], window_days=2, validation_fraction=0.3,
                                                        test_fraction=0.3), "2026-11-22")
    merged = one_day.merge(two_days, on=["conversation_id", "turn_index"], suffixes=("_alone", "_grown"))
    assert len(merged) == len(one_day) == 300 and (merged["split_alone"] == merged["split_grown"]).all()
    assert set(two_days["split"]) == {"train", "validation", "test"}
    assert two_days.groupby("conversation_id")["split"].nunique().max() == 1


def test_cleaning_pii_near_duplicates_and_length_limit(tmp_path):
    def record(user, reply):
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}

    write_jsonl(tmp_path / "in" / "dt=2026-11-21" / "a.jsonl", [record("Hello there!", "Hi. How can I help?")])
    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", [
        record("hello  there", "hi, how can i help"),  # same as yesterday's up to case, punctuation, spacing
        record("My mail is ann@example.com", "Noted:\u200b  call  +1 (555) 123-4567."),
        record("Long?", "x" * 51),
        record("Empty reply?", " \u200b "),
    ])
    source = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True, "language": "en"}
    turns, quarantine, summary = ingest.collect(ingest.IngestConfig(sources=[source], window_days=2, max_chars=50),
                                                "2026-11-22")
    texts = set(turns["text"])
    assert {"My mail is <EMAIL>", "Noted: call <PHONE>."} <= texts
    assert "hello there" in texts and "Hello there!" not in texts  # the newest partition's copy is kept
    counts = summary["counts"]
    assert (counts["pii.email"], counts["pii.phone"], counts["pii.turns"], counts["duplicates.near"]) == (1, 1, 2, 1)
    assert [q["reason"] for q in quarantine] == ["turn 2: 51 characters, over max_chars=50",
                                                 "turn 2: empty after cleaning"]
    assert quarantine[0]["origin"].endswith("dt=2026-11-22/a.jsonl:3")


def test_failed_ingest_leaves_previous_partition_untouched(tmp_path):
    output = _run(tmp_path)
    before = (output / "turns.parquet").read_bytes()
    missing = {"format": "openai", "uri": str(tmp_path / "nowhere"), "partitioned": True}
    with pytest.raises(sources.SourceError, match="nowhere/dt=2026-11-22: no such file or directory"):
        _run(tmp_path, sources=[CHATTERBOT, missing])
    assert (output / "turns.parquet").read_bytes() == before
    assert [p.name for p in output.parent.iterdir()] == ["dt=2026-11-22"]  # no scratch dirs left


def test_nothing_readable_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [], raw_lines=[b"{broken", b"[]"])
    with pytest.raises(ingest.IngestError, match=r"no conversation could be read .*a.jsonl:1: malformed JSON"):
        ingest.collect(ingest.IngestConfig(sources=[{"format": "openai", "uri": str(tmp_path / "a.jsonl")}]),
                       "2026-11-22")


def test_config_rejects_bad_sources_by_position():
    with pytest.raises(ConfigError, match=r"ingest.sources\[2\]: unknown key\(s\) \['path'\]"):
        build(ingest.IngestConfig, {"sources": [CHATTERBOT, {"format": "openai", "path": "x"}]}, "ingest")
    with pytest.raises(ConfigError, match="unicode_form 'NFD'"):
        build(ingest.IngestConfig, {"unicode_form": "NFD"}, "ingest")
