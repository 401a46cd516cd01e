import datetime
import json

import pytest

from pipeline.serving import exchange_log
from pipeline.serving.exchange_log import ExchangeLog, UnknownExchange

ASKED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Call me on +44 20 7946 0958"}]


def test_an_exchange_is_one_file_in_its_day_with_pii_masked_and_the_version_that_answered(tmp_path):
    log = ExchangeLog(str(tmp_path), retention_days=30)
    exchange_id = exchange_log.new_id()
    day = exchange_log.day_of(exchange_id)
    assert day == datetime.datetime.now(datetime.UTC).date().isoformat()
    assert log.record(exchange_id, ASKED, "Mail me: bo@example.org", "chat", "7", 812.34, "stop")
    [path] = tmp_path.glob("dt=*/*.jsonl")
    assert path == tmp_path / f"dt={day}" / f"{exchange_id}.jsonl"
    record = json.loads(path.read_text())
    assert record["messages"] == [ASKED[0], {"role": "user", "content": "Call me on <PHONE>"},
                                  {"role": "assistant", "content": "Mail me: <EMAIL>"}]
    assert (record["model"], record["model_version"], record["latency_ms"]) == ("chat", "7", 812.3)
    assert not list(tmp_path.rglob(".*"))  # no scratch file left beside it
    assert log.counts == {"recorded": 1, "unrecorded": 0, "feedback": 0}


def test_a_log_that_cannot_be_written_never_fails_the_chat_it_counts_it(tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")  # writing under it fails as a full or read-only disk does: OSError
    log = ExchangeLog(str(blocked / "served"), retention_days=30)
    exchange_id = exchange_log.new_id()
    assert log.record(exchange_id, ASKED, "hi", "chat", "1", 5.0, "stop") is False
    assert log.counts["unrecorded"] == 1 and log.counts["recorded"] == 0
    assert f"exchange {exchange_id} not recorded" in caplog.text


def test_feedback_goes_beside_its_exchange_and_an_unknown_id_is_refused(tmp_path):
    log = ExchangeLog(str(tmp_path), retention_days=30)
    exchange_id = exchange_log.new_id()
    log.record(exchange_id, ASKED, "hi", "chat", "1", 5.0, "stop")
    log.feedback(exchange_id, "down", None)
    entry = log.feedback(exchange_id, 0.9, "Sure, at ann@example.com")  # a later rating replaces the earlier one
    stored = json.loads((tmp_path / f"dt={exchange_log.day_of(exchange_id)}" / "feedback"
                         / f"{exchange_id}.json").read_text())
    assert stored == entry and (stored["rating"], stored["correction"]) == (0.9, "Sure, at <EMAIL>")
    for unknown in ("chatcmpl-20260101-abc", "not-ours", "chatcmpl-20261340-x"):
        with pytest.raises(UnknownExchange):
            log.feedback(unknown, "up", None)


def test_days_past_retention_are_deleted_once_a_day(tmp_path):
    today = datetime.datetime.now(datetime.UTC).date()
    for age in (0, 3, 4, 40):
        (tmp_path / f"dt={today - datetime.timedelta(days=age)}").mkdir()
    (tmp_path / "notes").mkdir()  # not a partition: left alone
    log = ExchangeLog(str(tmp_path), retention_days=3)
    assert log.prune() == [(today - datetime.timedelta(days=d)).isoformat() for d in (40, 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes", *(f"dt={today - datetime.timedelta(days=d)}" for d in (0, 3))])
    (tmp_path / "dt=2001-01-01").mkdir()
    assert log.prune() == []  # once a day


def test_the_log_in_s3(s3_server):
    uri = f"s3://{s3_server()}/served"
    log = ExchangeLog(uri, retention_days=1)
    exchange_id = exchange_log.new_id()
    assert log.record(exchange_id, ASKED, "hi", "chat", "1", 5.0, "stop")
    log.feedback(exchange_id, "up", None)
    from pipeline.storage import s3

    day = exchange_log.day_of(exchange_id)
    assert sorted(k.split("/", 1)[1] for k in s3.keys(uri)) == [f"dt={day}/{exchange_id}.jsonl",
                                                                f"dt={day}/feedback/{exchange_id}.json"]
    old = f"{uri}/dt=2001-01-01/x.jsonl"
    bucket, key = s3.split(old)
    s3.client().put_object(Bucket=bucket, Key=key, Body=b"{}")
    log._pruned_on = None
    assert log.prune() == ["2001-01-01"] and not s3.exists(old)
