import json

from pipeline.data import served, sources
from pipeline.data.records import Conversation, Dropped, Partition, Rejected

RATINGS = {"a": {"rating": "up"}, "b": {"rating": "down"}, "c": {"rating": 0.8, "correction": "Much better."},
           "d": {"rating": 0.2}, "e": None, "f": "{not json"}


def partition(tmp_path):
    day = tmp_path / "dt=2026-12-06"
    (day / "feedback").mkdir(parents=True)
    for name, feedback in RATINGS.items():
        record = {"id": name, "messages": [{"role": "user", "content": f"question {name}"},
                                           {"role": "assistant", "content": f"reply {name}"}]}
        (day / f"{name}.jsonl").write_text(json.dumps(record) + "\n")
        if feedback is not None:
            (day / "feedback" / f"{name}.json").write_text(feedback if isinstance(feedback, str) else json.dumps(feedback))
    return day


def read(tmp_path, accept):
    day = partition(tmp_path)
    found = Partition("s3://logs/served/dt=2026-12-06", "2026-12-06")
    items = list(served.read_partition(day, found.uri, found, accept, sources._digest_file))
    return {item.origin.split("/")[-1].split(".")[0]: item for item in items}, found


def test_rated_up_kept_corrections_replace_the_reply_the_rest_dropped_and_counted(tmp_path):
    items, found = read(tmp_path, "up")
    kept = {k: v for k, v in items.items() if isinstance(v, Conversation)}
    assert sorted(kept) == ["a", "c"]
    assert kept["a"].messages == [("user", "question a"), ("assistant", "reply a")]
    assert kept["a"].outcome == "served.accepted" and kept["a"].origin == "s3://logs/served/dt=2026-12-06/a.jsonl:1"
    assert kept["c"].messages[-1] == ("assistant", "Much better.") and kept["c"].outcome == "served.corrected"
    assert {k: v.reason for k, v in items.items() if isinstance(v, Dropped)} == {
        "b": "rated down", "d": "rated down", "e": "not rated"}
    assert isinstance(items["f"], Rejected) and "feedback s3://logs/served/dt=2026-12-06/feedback/f.json unreadable" \
        in items["f"].reason
    # feedback is input: given later, it changes the partition's digest
    assert len(found.files) == 6 + 5 and all(f["sha256"] for f in found.files)


def test_not_down_also_keeps_what_nobody_rated(tmp_path):
    items, _ = read(tmp_path, "not_down")
    assert sorted(k for k, v in items.items() if isinstance(v, Conversation)) == ["a", "c", "e"]
