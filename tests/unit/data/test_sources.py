"""Sources: each format and container reads; each bad record is rejected naming file, line/row and rule; a
missing or empty partition stops the run."""

import json
from pathlib import Path

import pytest
from dialogue_files import openai_record, sharegpt_record, write_hf_dataset, write_jsonl, write_parquet
from paths import CORPUS

from pipeline.data import sources
from pipeline.data.sources import Conversation, Rejected, SourceConfig, SourceError


def _read(source, run_date="2026-11-22", window_days=1):
    partitions = []
    items = list(sources.read(source, run_date, window_days, partitions))
    return ([i for i in items if isinstance(i, Conversation)], [i for i in items if isinstance(i, Rejected)],
            partitions)


def test_openai_jsonl_bad_lines_are_rejected_by_line_and_rule(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [openai_record(1), openai_record(2, turns=4)], raw_lines=[
        b"",  # blank lines are skipped, not rejected
        b'{"messages": [{"role": "user", "content": "unterminated',
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # Latin-1, not UTF-8
        b'{"text": "no messages field"}',
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "{}"}]}).encode(),
        json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}).encode(),
        json.dumps({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "alone"}]}).encode(),
        b'["not", "an", "object"]',
        json.dumps({"messages": [{"role": "system", "content": "be nice"}, *openai_record(3)["messages"]],
                    "language": "en"}).encode(),
    ])
    conversations, rejected, partitions = _read(SourceConfig(format="openai", uri=str(path)))
    assert [c.origin for c in conversations] == [f"{path}:1", f"{path}:2", f"{path}:13"]
    assert conversations[2].messages[0] == ("user", "This is message 0 of the dialogue number 3.")  # leading system turn dropped
    assert conversations[2].language == "en" and conversations[0].language is None
    reasons = {r.origin.rsplit(":", 1)[1]: r.reason for r in rejected}
    assert reasons["4"].startswith("malformed JSON: Unterminated string")
    assert reasons["5"] == "not UTF-8: byte 0xe9 at column 47"
    assert reasons["6"] == "missing field 'messages' (a list of messages)"
    assert reasons["7"].startswith("message 2: unknown role 'tool'")
    assert reasons["8"] == "message 1: missing field 'content'"
    assert reasons["9"] == "message 1: 'content' must be a string, got int"
    assert reasons["10"].startswith("turn 1: expected role 'user', got 'assistant'")
    assert reasons["11"].startswith("fewer than 2 turns (1)")
    assert reasons["12"] == "expected a JSON object, got list"
    assert len(rejected) == 9
    assert partitions[0].files[0]["uri"] == str(path) and len(partitions[0].files[0]["sha256"]) == 64


def test_sharegpt_parquet_and_saved_hf_dataset_in_one_partition(tmp_path):
    root = tmp_path / "sharegpt" / "dt=2026-11-22"
    write_parquet(root / "part-0.parquet", [sharegpt_record(1), {"conversations": [{"from": "bot", "value": "?"}]}])
    write_hf_dataset(root / "saved", [sharegpt_record(2), sharegpt_record(3)])
    source = SourceConfig(format="sharegpt", uri=str(tmp_path / "sharegpt"), partitioned=True, language="en")
    conversations, rejected, partitions = _read(source)
    assert [c.origin.rsplit("/", 1)[1] for c in conversations] == ["part-0.parquet#row=1", "saved#row=1", "saved#row=2"]
    assert conversations[0].messages == [("user", "How do I do task 1?"), ("assistant", "Here is how to do task 1.")]
    assert {c.partition_date for c in conversations} == {"2026-11-22"} and conversations[0].language == "en"
    assert [(r.origin.rsplit("/", 1)[1], r.reason[:28]) for r in rejected] == [
        ("part-0.parquet#row=2", "message 1: unknown role 'bot")]
    assert [f["uri"].rsplit("/", 1)[1] for f in partitions[0].files] == ["part-0.parquet", "saved"]


def test_window_reads_the_logical_date_and_days_before(tmp_path):
    for day, number in [("2026-11-20", 1), ("2026-11-22", 2), ("2026-11-23", 3)]:  # 11-21 missing, 11-23 future
        write_jsonl(tmp_path / f"dt={day}" / "a.jsonl", [openai_record(number)])
    source = SourceConfig(format="openai", uri=str(tmp_path), partitioned=True)
    conversations, _, partitions = _read(source, window_days=3)
    assert [(c.partition_date, c.messages[0][1]) for c in conversations] == [
        ("2026-11-22", "This is message 0 of the dialogue number 2."), ("2026-11-20", "This is message 0 of the dialogue number 1.")]
    assert [p.partition_date for p in partitions] == ["2026-11-22", "2026-11-20"]
    assert sources.window("2026-03-01", 2) == ["2026-03-01", "2026-02-28"]


def test_missing_or_empty_partition_of_the_logical_date_stops_the_run(tmp_path):
    source = SourceConfig(format="openai", uri=str(tmp_path), partitioned=True)
    with pytest.raises(SourceError, match=r"dt=2026-11-22: no such file or directory"):
        _read(source)
    (tmp_path / "dt=2026-11-22").mkdir()
    (tmp_path / "dt=2026-11-22" / "_SUCCESS").write_text("")
    with pytest.raises(SourceError, match=r"dt=2026-11-22: empty partition"):
        _read(source)


def test_chatterbot_entries_rejected_with_file_and_line():
    conversations, rejected, _ = _read(SourceConfig(format="chatterbot", uri=str(CORPUS)))
    assert len(conversations) == 8 and {c.language for c in conversations} == {"en", "zh"}
    assert [(Path(r.origin).name, r.reason[:20]) for r in rejected] == [
        ("greetings.yml:12", "not a list of uttera"), ("greetings.yml:13", "fewer than 2 turns (")]
    assert ("assistant", "2") in conversations[3].messages  # a YAML number becomes text instead of being lost


@pytest.mark.parametrize("content, error", [
    (b"conversations:\n- - a\n  - [unclosed\n", r"bad.yml:4: cannot parse corpus file"),
    (b"conversations:\n- - caf\xe9\n  - b\n", r"bad.yml:2: not UTF-8: byte 0xe9"),
    (b"- just a list\n", r"bad.yml: expected a mapping with a 'conversations' list"),
])
def test_unreadable_corpus_file_is_named(tmp_path, content, error):
    (tmp_path / "english").mkdir()
    (tmp_path / "english" / "bad.yml").write_bytes(content)
    with pytest.raises(SourceError, match=error):
        _read(SourceConfig(format="chatterbot", uri=str(tmp_path), languages=["english"]))


def test_missing_language_directory_and_bad_config_are_named(tmp_path):
    with pytest.raises(SourceError, match="no \\*.yml files for language 'klingon'"):
        _read(SourceConfig(format="chatterbot", uri=str(CORPUS), languages=["klingon"]))
    with pytest.raises(ValueError, match="format 'csv' is not one of"):
        SourceConfig(format="csv", uri="x")
    with pytest.raises(ValueError, match="a openai source needs a uri"):
        SourceConfig(format="openai")


def test_with_a_marker_only_published_days_are_read(tmp_path):
    """The run date unpublished or changed after publishing: refused, named. An earlier day of the window
    unpublished: skipped with the rest read (a day still late is no reason to lose the night)."""
    from pipeline.data import markers

    for day, number in [("2026-11-21", 1), ("2026-11-22", 2)]:
        write_jsonl(tmp_path / f"dt={day}" / "a.jsonl", [openai_record(number)])
    source = SourceConfig(format="openai", uri=str(tmp_path), partitioned=True, marker=True)
    with pytest.raises(SourceError, match=r"dt=2026-11-22: no _SUCCESS marker"):
        _read(source, window_days=2)
    today = tmp_path / "dt=2026-11-22"
    (today / markers.NAME).write_bytes(markers.encode(markers.describe(today)))
    conversations, _, partitions = _read(source, window_days=2)
    assert [p.partition_date for p in partitions] == ["2026-11-22"] and len(conversations) == 1
    write_jsonl(today / "a.jsonl", [openai_record(3)])  # rewritten after the marker
    with pytest.raises(SourceError, match=r"dt=2026-11-22/a.jsonl: sha256 [0-9a-f]{64}, but _SUCCESS says [0-9a-f]{64}"):
        _read(source, window_days=2)
