"""The `served` source: the day's served exchanges (recorded by `make serve`, pipeline/serving/exchange_log.py)
that their feedback accepts, as the next night's conversations.

    - {format: served, uri: s3://chat-logs/served, partitioned: true, accept: up}

A partition `dt=YYYY-MM-DD/` holds one `<id>.jsonl` per exchange (the request's messages and the reply, OpenAI
format) and `feedback/<id>.json` for each one rated. `accept` says which exchanges are kept:

    up          rated up, or scored >= 0.5 (the default: only what a person approved)
    not_down    every exchange not rated down (nor scored < 0.5), rated or not

A correction replaces the reply: the conversation teaches the reply the user said it should have been. The rest are
dropped, not quarantined (they are not malformed); each outcome is counted on the ingest run: `served.accepted`,
`served.corrected`, `dropped.rated_down`, `dropped.not_rated`. Feedback that cannot be read quarantines its exchange,
naming the file. Ingest masks PII like every source's (the server masked it already).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.data import json_files
from pipeline.data.records import Dropped, Partition, Rejected, excerpt, to_conversations

ACCEPT = ("up", "not_down")
PASSING_SCORE = 0.5


def read_partition(local: Path, uri: str, partition: Partition, accept: str, digest: Callable) -> Iterator:
    """Conversation, Rejected and Dropped items of one served partition, its files (exchanges and feedback) listed
    on `partition` with their digests: feedback given later changes the input, and so the partition."""
    feedback_dir = local / "feedback"
    notes = sorted(feedback_dir.glob("*.json")) if feedback_dir.is_dir() else []
    for path in notes:
        partition.files.append({"uri": f"{uri}/feedback/{path.name}", **digest(path)})
    for path in sorted(local.glob("*.jsonl")):
        name = f"{uri}/{path.name}"
        partition.files.append({"uri": name, **digest(path)})
        feedback_path = feedback_dir / f"{path.stem}.json"
        for origin, record in json_files.rows(path, name, Rejected):
            if isinstance(record, Rejected):
                yield record
                continue
            verdict, detail = judge(feedback_path, f"{uri}/feedback/{feedback_path.name}", accept)
            if verdict == "drop":
                yield Dropped(origin, detail)
                continue
            if verdict == "reject":
                yield Rejected(origin, detail, excerpt(record))
                continue
            record, outcome = corrected(record, detail)
            yield from to_conversations([(origin, record)], name, partition.partition_date, sharegpt=False,
                                        language=None, keep_system=False, outcome=outcome)


def judge(path: Path, shown: str, accept: str) -> tuple[str, object]:
    """("keep", the feedback or None), or ("drop" | "reject", why)."""
    if not path.is_file():
        return ("drop", "not rated") if accept == "up" else ("keep", None)
    try:
        feedback = json.loads(path.read_text(encoding="utf-8"))
        rating = feedback["rating"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return "reject", f"feedback {shown} unreadable: {type(exc).__name__}: {exc}"
    score = isinstance(rating, (int, float)) and not isinstance(rating, bool)
    if rating == "down" or (score and rating < PASSING_SCORE):
        return "drop", "rated down"
    if rating == "up" or score:
        return "keep", feedback
    return "reject", f"feedback {shown}: rating {rating!r} is not up, down or a score"


def corrected(record: dict, feedback: dict | None) -> tuple[dict, str]:
    """The record with its reply replaced by the correction, if there is one; and the outcome to count."""
    correction = (feedback or {}).get("correction")
    messages = record.get("messages")
    if not isinstance(correction, str) or not correction.strip() or not isinstance(messages, list) or not messages:
        return record, "served.accepted"
    return {**record, "messages": [*messages[:-1], {"role": "assistant", "content": correction}]}, "served.corrected"
