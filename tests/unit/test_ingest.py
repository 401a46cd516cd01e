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


def test_read_and_quarantined_are_counted_per_source_with_its_allowance(tmp_path):
    """Two sources: the test corpus (2 of 10 records rejected when read) and a chat log of single-speaker junk and
    one overlong reply (dropped in cleaning, which counts against its source too): each counts its own, for
    validate's per-source junk rate."""
    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", [
        {"messages": [{"role": "user", "content": "anyone there?"}]},  # one speaker: no reply
        {"messages": [{"role": "user", "content": "hello?"}]},
        {"messages": [{"role": "user", "content": "Long?"}, {"role": "assistant", "content": "x" * 51}]},  # cleaning
        {"messages": [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Hi. Help?"}]},
    ])
    logs = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True, "language": "en",
            "max_quarantine_ratio": 0.3, "expected_junk": ["fewer_than_2_turns"]}
    _, quarantine, summary = ingest.collect(ingest.IngestConfig(sources=[CHATTERBOT, logs], max_chars=50), "2026-11-22")
    assert summary["sources"] == [  # the two unanswered sessions are the log's expected junk, the overlong one not
        {"source": "1: chatterbot " + str(CORPUS), "read": 10, "quarantined": 2, "expected_junk": 0,
         "max_quarantine_ratio": None},
        {"source": f"2: openai {tmp_path / 'in'}", "read": 4, "quarantined": 3, "expected_junk": 2,
         "max_quarantine_ratio": 0.3}]
    assert len(quarantine) == 5


@pytest.mark.parametrize("choice", ["fail", "skip"])
def test_an_empty_day_fails_or_skips_as_configured_and_writes_nothing(tmp_path, choice):
    """The day's partition holds only single-speaker junk: nothing new to learn from, even with the static corpus
    beside it. fail: IngestError naming the partitioned source; skip: the stage run ends saying why, the stage
    raises Skipped (the CLI exits with the skip code), and no partition is written either way."""
    from mlflow.tracking import MlflowClient

    from pipeline.process import outcomes

    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", [
        {"messages": [{"role": "user", "content": "anyone?"}]}, {"messages": [{"role": "user", "content": "hi"}]}])
    logs = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True, "language": "en"}
    expected = outcomes.Skipped if choice == "skip" else ingest.IngestError
    with pytest.raises(expected, match=rf"empty day 2026-11-22: 0 usable conversations in the partitioned sources "
                                       rf"\['{tmp_path / 'in'}'\] \(2 quarantined\); ingest.empty_day={choice}"):
        _run(tmp_path, sources=[CHATTERBOT, logs], empty_day=choice)
    assert not (tmp_path / "data" / "conversations" / "dt=2026-11-22").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (stage,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`pipeline.stage` = 'ingest'")
    assert stage.info.status == ("FINISHED" if choice == "skip" else "FAILED")
    assert ("skipped" in stage.data.tags) == (choice == "skip")
    with pytest.raises(ValueError, match="empty_day must be fail or skip, got 'maybe'"):
        ingest.IngestConfig(empty_day="maybe")


def test_a_day_whose_conversations_cleaning_quarantines_is_the_clean_error_or_an_empty_day(tmp_path):
    """Cleaning (not reading) quarantines the only conversation of a file (a 5 MB turn): the clean "no conversation
    could be read" error naming the reason; beside a static source it is an empty day of the feed."""
    huge = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 5_000_000}]}
    write_jsonl(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl", [huge])
    alone = {"format": "openai", "uri": str(tmp_path / "in" / "dt=2026-11-22" / "a.jsonl"), "language": "en"}
    with pytest.raises(ingest.IngestError, match=r"no conversation could be read .*\(1 rejected, e\.g\. \[.*a\.jsonl"
                                                 r":1: turn 2: 5000000 characters, over max_chars=2000"):
        ingest.collect(ingest.IngestConfig(sources=[alone]), "2026-11-22")
    feed = {"format": "openai", "uri": str(tmp_path / "in"), "partitioned": True, "language": "en"}
    with pytest.raises(ingest.IngestError, match=r"empty day 2026-11-22: 0 usable conversations .*\(1 quarantined\)"):
        ingest.collect(ingest.IngestConfig(sources=[CHATTERBOT, feed]), "2026-11-22")


def test_a_leading_system_message_is_dropped_and_counted(tmp_path):
    persona = {"messages": [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "who are you"},
                            {"role": "assistant", "content": "Ada, at your service."}]}
    plain = {"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]}
    write_jsonl(tmp_path / "a.jsonl", [persona, plain])
    turns, _, summary = ingest.collect(ingest.IngestConfig(
        sources=[{"format": "openai", "uri": str(tmp_path / "a.jsonl"), "language": "en"}]), "2026-11-22")
    assert summary["counts"]["system_messages_dropped"] == 1 and summary["counts"]["conversations"] == 2
    assert summary["counts"]["system_messages_kept"] == 0
    assert "You are Ada." not in set(turns["text"])


def test_a_leading_system_message_is_kept_as_turn_minus_one_where_the_source_says_so(tmp_path):
    persona = {"messages": [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "who are you"},
                            {"role": "assistant", "content": "Ada, at your service."}]}
    blank = {"messages": [{"role": "system", "content": "  "}, {"role": "user", "content": "hello there"},
                          {"role": "assistant", "content": "hi"}]}
    long = {"messages": [{"role": "system", "content": "x" * 3000}, {"role": "user", "content": "and you"},
                         {"role": "assistant", "content": "me too"}]}
    write_jsonl(tmp_path / "a.jsonl", [persona, blank, long])
    source = {"format": "openai", "uri": str(tmp_path / "a.jsonl"), "language": "en", "system_messages": "keep"}
    turns, rejected, summary = ingest.collect(ingest.IngestConfig(sources=[source]), "2026-11-22")
    counts = summary["counts"]
    assert (counts["system_messages_kept"], counts["system_messages_dropped"], counts["conversations"]) == (2, 1, 2)
    ada = turns[turns["conversation_id"] == turns.loc[turns["text"] == "You are Ada.", "conversation_id"].iloc[0]]
    assert ada.sort_values("turn_index")[["turn_index", "role"]].values.tolist() == \
        [[-1, "system"], [0, "user"], [1, "assistant"]]
    assert [r["reason"] for r in rejected] == ["system message: 3000 characters, over max_chars=2000"]
    with pytest.raises(ValueError, match=r"system_messages 'always' is not one of \('drop', 'keep'\)"):
        ingest.IngestConfig(sources=[{**source, "system_messages": "always"}])


def test_a_replay_source_and_its_near_copies_are_split_replay_never_test(tmp_path):
    """ingest.sources[].role: replay (a static set beside a feed): all its conversations are split 'replay', and
    so is a re-cased copy of one that arrives in tonight's data (with near_dedup off both survive), so tonight's
    held-out split is the nightly sources' alone and never holds what replay may train on."""
    static = write_jsonl(tmp_path / "static.jsonl", [_conversation(item) for item in range(200)])
    fresh = write_jsonl(tmp_path / "fresh.jsonl", [_conversation(item) for item in range(1000, 1400)]
                        + [_edited(item, "upper case") for item in range(200)])
    turns, _, summary = ingest.collect(ingest.IngestConfig(near_dedup=False, sources=[
        {"format": "openai", "uri": str(fresh)}, {"format": "openai", "uri": str(static), "role": "replay"}]),
        "2026-11-22")
    first = turns[turns["turn_index"] == 0].assign(label=lambda t: t["text"].map(_label))
    assert set(first.loc[first["source"].str.endswith("static.jsonl"), "split"]) == {"replay"}
    copies = first[first["source"].str.endswith("fresh.jsonl") & (first["label"] < 200)]
    assert len(copies) == 200 and set(copies["split"]) == {"replay"}
    assert set(first.loc[first["label"] >= 1000, "split"]) == {"train", "validation", "test"}
    with pytest.raises(ValueError, match="role 'static' is not one of"):
        sources.SourceConfig(format="openai", uri="x", role="static")


def test_conversations_outside_the_configured_languages_are_quarantined_and_counted_per_language(tmp_path):
    """The report of a new user: 80 English / Chinese conversations with 3 Korean, 3 German and a two-word exchange
    failed the night ("languages: 14 unexpected"). With ingest.languages they are quarantined, counted per language,
    and the junk-rate rule judges them; the partition holds the configured languages only. A day of nothing else is
    the clean error."""
    records = [openai_record(n, turns=4) for n in range(40)] + [openai_record(n, 4, "zh") for n in range(40)]
    korean = [{"messages": [{"role": "user", "content": f"안녕하세요, 오늘 날씨가 정말 좋네요 {n}번"},
                            {"role": "assistant", "content": "네, 산책하기 좋은 날씨입니다. 어디로 가실 건가요?"}]}
              for n in range(3)]
    german = [{"messages": [{"role": "user", "content": f"Guten Morgen, wie geht es dir heute, mein Freund {n}?"},
                            {"role": "assistant", "content": "Danke, mir geht es sehr gut. Und wie geht es dir?"}]}
              for n in range(3)]
    tiny = [{"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "👍"}]}]
    path = write_jsonl(tmp_path / "logs.jsonl", records + korean + german + tiny)
    config = ingest.IngestConfig(languages=["en", "zh"], sources=[{"format": "openai", "uri": str(path)}])
    turns, quarantine, summary = ingest.collect(config, "2026-11-22")
    assert set(turns["language"]) == {"en", "zh"} and turns["conversation_id"].nunique() == 80
    counts = summary["counts"]
    assert counts["rejected.language.ko"] == 3 and counts["rejected.language.de"] == 3
    assert sum(v for k, v in counts.items() if k.startswith("rejected.language.")) == 7 == counts["rejected.language"]
    assert summary["sources"][0]["quarantined"] == 7  # what validate's per-source junk-rate rule judges
    assert {row["reason"].split(" is")[0] for row in quarantine} >= {"language: ko", "language: de"}
    only_german = write_jsonl(tmp_path / "de.jsonl", german)
    with pytest.raises(ingest.IngestError, match=r"no conversation could be read .*3 rejected.*language: de is not"):
        ingest.collect(ingest.IngestConfig(languages=["en"], sources=[{"format": "openai", "uri": str(only_german)}]),
                       "2026-11-22")
