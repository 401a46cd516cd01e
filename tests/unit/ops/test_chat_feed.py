"""The dated chat-log feed from the chitchat-dataset wheel: one published partition per source day, in order onto
consecutive days ending the given day; reruns idempotent; junk kept for ingest to quarantine; the anchor's
conversations never in it. Written to a directory and to an S3 server over HTTP (moto)."""

import datetime
import json
from pathlib import Path

import boto3
import pytest

from ops import chat_feed
from pipeline.data import markers, sources
from pipeline.evaluation import anchor

END = datetime.date(2026, 12, 5)


@pytest.fixture(scope="module")
def feed(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("feed")
    return root, chat_feed.publish(str(root), END)


def test_each_source_day_is_a_published_partition_ending_on_the_given_day(feed):
    root, done = feed
    days = sorted(p.name for p in root.glob("dt=*"))
    assert len(days) == done["written"] == 102 and days[-1] == "dt=2026-12-05"
    expected = [f"dt={END - datetime.timedelta(days=offset)}" for offset in range(101, -1, -1)]
    assert days == expected  # consecutive: no gap, even where the source skipped days
    first, last = (markers.verify(root / day, str(root / day)) for day in (days[0], days[-1]))
    assert (first["source_day"], last["source_day"]) == ("2018-04-10", "2018-11-17")
    assert first["mapping"] == "102 source days 2018-04-10..2018-11-17 onto 2026-08-26..2026-12-05"
    written = sum(markers.verify(root / d, d)["conversations"] for d in days)
    assert written == done["conversations"] == 7168 - sum(anchor.outside_feed(c) for c in all_ids())


def all_ids() -> list[str]:
    from importlib import resources

    return list(json.loads(resources.files("chitchat_dataset").joinpath("dataset.json").read_text("utf-8")))


def test_the_anchor_pool_never_enters_the_feed(feed):
    root, _ = feed
    fed = {json.loads(line)["id"] for path in root.glob("dt=*/*.jsonl") for line in path.read_text("utf-8").splitlines()}
    outside = {c for c in all_ids() if anchor.outside_feed(c)}
    assert 600 < len(outside) < 850 and not fed & outside  # about 1 in 10


def test_a_rerun_changes_nothing_and_a_new_end_moves_the_feed(tmp_path):
    done = chat_feed.publish(str(tmp_path), END)
    stamp = (tmp_path / "dt=2026-12-05" / markers.NAME).stat().st_mtime_ns
    again = chat_feed.publish(str(tmp_path), END)
    assert (again["written"], again["unchanged"], again["removed"]) == (0, 102, 0)
    assert (tmp_path / "dt=2026-12-05" / markers.NAME).stat().st_mtime_ns == stamp
    moved = chat_feed.publish(str(tmp_path), END + datetime.timedelta(days=1))
    assert (moved["written"], moved["removed"]) == (102, 1) and done["conversations"] == moved["conversations"]
    assert not (tmp_path / f"dt={END - datetime.timedelta(days=101)}").exists()


def test_ingest_reads_a_day_and_quarantines_its_single_speaker_conversations(feed):
    root, _ = feed
    day = "2026-11-22"
    marker = markers.verify(root / f"dt={day}", day)
    source = sources.SourceConfig(format="openai", uri=str(root), partitioned=True, marker=True)
    items = list(sources.read(source, day, 1, []))
    kept = [i for i in items if isinstance(i, sources.Conversation)]
    rejected = [i for i in items if isinstance(i, sources.Rejected)]
    assert len(items) == marker["conversations"] and len(rejected) == marker["single_speaker"] > 0
    assert all("fewer than 2 turns (1)" in r.reason for r in rejected)
    assert all(c.messages[0][0] == "user" and {r for r, _ in c.messages} == {"user", "assistant"} for c in kept)


def test_roles_follow_the_speaker_and_a_speakers_messages_are_one_turn():
    messages = [[{"sender": "a", "text": "hi "}, {"sender": "a", "text": "there"}], [{"sender": "b", "text": "yo"}],
                [{"sender": "a", "text": "ok"}], [{"sender": "a", "text": "bye"}]]
    record = chat_feed.openai_record("c1", {"messages": messages, "start": "2018-05-03T01:38:01Z"})
    assert record["messages"] == [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "yo"},
                                  {"role": "user", "content": "ok bye"}]
    alone = chat_feed.openai_record("c2", {"messages": messages[:1], "start": "2018-05-03T01:38:01Z"})
    assert alone["messages"] == [{"role": "user", "content": "hi there"}]


def test_the_feed_goes_to_s3_marker_last_and_reruns_idempotently(s3_server, tmp_path):
    bucket = s3_server()
    uri = f"s3://{bucket}/openai"
    done = chat_feed.publish(uri, END)
    assert done["written"] == 102
    client = boto3.client("s3")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    assert len(keys) == 204 and f"openai/dt={END}/{markers.NAME}" in keys
    assert chat_feed.publish(uri, END)["unchanged"] == 102
    source = sources.SourceConfig(format="openai", uri=uri, partitioned=True, marker=True)
    assert list(sources.read(source, "2026-11-22", 1, []))  # read back through ingest's S3 path, verified
    fresh = f"s3://new-bucket-{tmp_path.name.lower()[-8:].strip('_')}/openai"
    assert chat_feed.publish(fresh, END)["written"] == 102  # a stack's first run: the bucket is created
