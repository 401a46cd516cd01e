"""Ingest: cleaned, de-duplicated, split partitions; rejects quarantined with reasons; reruns byte-identical;
a failure leaves the previous partition untouched.

Splits never move (issue 13): over 5 simulated nights of real ingest runs, repeated, re-cased, re-punctuated,
whitespace-edited and Unicode-form-edited copies of earlier conversations arrive, and no conversation ever appears
in train on one night and in validation/test on another; the copy that survives keeps the first night's split.
"Edited" means what near-duplicate resolution treats as the same conversation: case, punctuation, whitespace,
invisible characters, Unicode form, a different masked e-mail. A changed word makes a different conversation
(here: another item number), which must be kept as one of its own, with a split of its own. Each conversation
carries a label (its item number, in the first turn) that every edit here keeps, so the test tracks conversations
without using the keys under test."""

import json
import re
import unicodedata
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pytest
from dialogue_files import openai_record, write_jsonl
from paths import CORPUS

from pipeline import ingest
from pipeline.config import ConfigError, ProjectConfig, RunContext, build
from pipeline.data import sources, table
from pipeline.storage import outputs

NIGHTS = [f"2026-11-0{day}" for day in range(1, 6)]
NEW_PER_NIGHT = 40
WORD_CHANGE = 50  # item n -> item n + 50: a changed word, so a new conversation (new items are n % 100 < 40)


FULL_WIDTH_PUNCTUATION = str.maketrans("，。！？", ",.!?")


def _full_width(text: str) -> str:
    """Letters and digits as full-width forms, except in e-mail addresses: PII masking (before the near key)
    does not see a full-width address as one, so such a copy keeps its address and gets a key of its own."""
    return re.sub(r"\S+@\S+|[A-Za-z0-9]", lambda m: m.group() if "@" in m.group() else chr(ord(m.group()) + 0xFEE0),
                  text)


EDITS = {  # each keeps the conversation's letters and digits, so near-duplicate resolution merges the copies
    "repeated": lambda t: t,
    "upper case": str.upper,
    "lower case": str.lower,
    # sentence punctuation only: dots inside an e-mail address are part of the address (a changed word)
    "re-punctuated": lambda t: re.sub(r"[,.!?:](?=\s|$)", " ;", t).translate(FULL_WIDTH_PUNCTUATION) + "!!",
    "whitespace": lambda t: "  " + t.replace(" ", " \u00a0 ").replace("about", "ab\u200bout") + " \t",
    "full width": _full_width,
    "other e-mail": lambda t: re.sub(r"ann\d+@example\.com", "Bob.Smith@mail.example.org", t),
}

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
    assert list(frame.columns) == table.COLUMNS and str(frame["turn_index"].dtype) == "int32"
    manifest = outputs.read_manifest(output)
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


def _conversation(item: int) -> dict:
    if item % 5 == 4:  # some Chinese, with full-width punctuation that NFC keeps and a re-punctuation folds
        turns = [f"请介绍一下第{item}号物品，好吗？", f"第{item}号物品很好用！还有别的问题吗？"]
    else:
        turns = [f"Tell me about item {item}, please.", f"Item {item} is a fine thing to ask about! Anything else?",
                 f"Yes: why do people like item {item}?", f"Because it works. Write to me at ann{item}@example.com."]
    return {"messages": [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]}


def _edited(item: int, edit: str) -> dict:
    record = _conversation(item)
    for message in record["messages"]:
        message["content"] = EDITS[edit](message["content"])
    return record


def _word_changed(item: int) -> dict:
    record = _conversation(item)
    first = record["messages"][0]
    first["content"] = first["content"].replace(str(item), str(item + WORD_CHANGE))
    return record


def _night_records(night: int) -> list[dict]:
    """Night k: 40 new items (k*100 + i), a re-cased copy of some of them, edited copies of earlier nights'
    items (round robin over EDITS), and one copy of yesterday's item with a changed word."""
    new = [night * 100 + i for i in range(NEW_PER_NIGHT)]
    records = [_conversation(item) for item in new]
    records += [_edited(item, "upper case") for item in new[::10]]  # a near copy within the same partition
    names = list(EDITS)
    for earlier in range(1, night):
        for i in range(night % 3, NEW_PER_NIGHT, 3):
            records.append(_edited(earlier * 100 + i, names[(i + night) % len(names)]))
    if night > 1:
        records.append(_word_changed((night - 1) * 100 + 1))
    return records


def _label(first_turn: str) -> int:
    return int(re.search(r"\d+", unicodedata.normalize("NFKC", first_turn)).group())


def _ingest_nights(tmp_path, **config) -> pd.DataFrame:
    """Run ingest on each night (window 2 days: yesterday's copies compete with today's) and read back what it
    wrote: one row per surviving conversation and night, with its label."""
    project = ProjectConfig(data_root=str(tmp_path / "data"), runs_root=str(tmp_path / "runs"),
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    source = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True}
    settings = ingest.IngestConfig(sources=[source], window_days=2, validation_fraction=0.2, test_fraction=0.3,
                                   **config)
    seen = []
    for night, date in enumerate(NIGHTS, start=1):
        write_jsonl(tmp_path / "in" / f"dt={date}" / "chats.jsonl", _night_records(night))
        output = ingest.run(settings, project, RunContext(date, f"night-{night}"))
        turns = pd.read_parquet(output / "turns.parquet")
        first = turns[turns["turn_index"] == 0]
        seen.append(first.assign(night=night, label=first["text"].map(_label))[
            ["night", "label", "conversation_id", "split", "text"]])
    return pd.concat(seen, ignore_index=True)


def _moved(seen: pd.DataFrame) -> dict[int, list]:
    """Labels whose copies were given more than one split, with (night, split) of each appearance."""
    splits = seen.groupby("label")["split"].nunique()
    return {label: sorted(zip(rows["night"], rows["split"], strict=True))
            for label, rows in seen[seen["label"].isin(splits[splits > 1].index)].groupby("label")}


@pytest.fixture(scope="module")
def five_nights(tmp_path_factory) -> pd.DataFrame:
    return _ingest_nights(tmp_path_factory.mktemp("nights"))


def test_no_conversation_moves_between_splits_over_five_nights(five_nights):
    seen = five_nights
    assert _moved(seen) == {}, "conversations changed split between nights"
    first_split = seen.sort_values("night").groupby("label")["split"].first()
    assert (seen["split"] == seen["label"].map(first_split)).all()
    # Near-duplicate resolution kept one copy per conversation and night...
    assert not seen.duplicated(["night", "label"]).any()
    # ...and that copy was often an edited one with another exact id: the case that used to move splits.
    first_id = seen.sort_values("night").groupby("label")["conversation_id"].first()
    replaced = seen[seen["conversation_id"] != seen["label"].map(first_id)]
    assert replaced["label"].nunique() >= 40
    for night in range(1, 6):  # every night holds all three splits, so "never moved" is not a trivial pass
        assert set(seen.loc[seen["night"] == night, "split"]) == {"train", "validation", "test"}


def test_a_changed_word_is_a_conversation_of_its_own(five_nights):
    seen = five_nights
    for night in range(2, 6):
        original, changed = (night - 1) * 100 + 1, (night - 1) * 100 + 1 + WORD_CHANGE
        labels = set(seen.loc[seen["night"] == night, "label"])
        assert {original, changed} <= labels, f"night {night}: the word-changed copy was merged or lost"


def test_near_copies_share_a_split_with_near_dedup_off(tmp_path):
    seen = _ingest_nights(tmp_path, near_dedup=False)
    copies = seen.groupby(["night", "label"]).size()
    assert copies.max() > 1  # the re-cased copies survive side by side...
    assert _moved(seen) == {}  # ...and are never in train and test at once, nor across nights


def test_split_shares_follow_the_configured_fractions(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [openai_record(n) for n in range(3000)])
    config = ingest.IngestConfig(sources=[{"format": "openai", "uri": str(tmp_path / "a.jsonl"), "language": "en"}],
                                 validation_fraction=0.15, test_fraction=0.1)
    turns, _, _ = ingest.collect(config, "2026-11-22")
    shares = turns.groupby("split")["conversation_id"].nunique() / 3000
    assert shares.to_dict() == pytest.approx({"train": 0.75, "validation": 0.15, "test": 0.1}, abs=0.02)


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_each_edit_is_resolved_as_the_same_conversation(tmp_path, edit):
    """One yesterday/today pair per edit: today's edited copy survives, alone, with yesterday's split."""
    items = range(104, 124)  # 20 items, English and Chinese, so some land outside train
    write_jsonl(tmp_path / "in" / "dt=2026-11-01" / "a.jsonl", [_conversation(i) for i in items])
    write_jsonl(tmp_path / "in" / "dt=2026-11-02" / "a.jsonl", [_edited(i, edit) for i in items])
    source = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True}
    config = dict(sources=[source], validation_fraction=0.2, test_fraction=0.3)
    alone, _, _ = ingest.collect(ingest.IngestConfig(**config), "2026-11-01")
    both, _, summary = ingest.collect(ingest.IngestConfig(window_days=2, **config), "2026-11-02")
    split_of = defaultdict(set)
    for frame in (alone, both):
        for text, split in zip(frame.loc[frame["turn_index"] == 0, "text"], frame.loc[frame["turn_index"] == 0, "split"],
                               strict=True):
            split_of[_label(text)].add(split)
    assert both["conversation_id"].nunique() == len(items), f"{edit}: copies not merged ({summary['counts']})"
    assert {label: s for label, s in split_of.items() if len(s) > 1} == {}
    assert set(both["partition_date"]) == {"2026-11-02"}  # the newest copy is the one kept
