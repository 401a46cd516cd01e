"""A feed of dated chat logs, as production delivers them: the Chit Chat Challenge conversations (the
`chitchat-dataset` wheel: 7,168 human-human conversations started on 102 distinct days of 2018) by their own
start day, one OpenAI-format JSONL partition a day, each published by a `_SUCCESS` marker written last
(pipeline/data/markers.py).

    python -m ops.chat_feed --to s3://chat-logs/openai             # days ending yesterday; make feed
    python -m ops.chat_feed --to data/feed --end 2026-12-05        # a local directory works the same

The source days are mapped in order onto consecutive calendar days ending `--end` (default: yesterday, the newest
complete day); each marker records its source day and the mapping. Reruns are idempotent: a partition whose marker
would not change is left alone; a changed one loses its marker first, then gets its files and a new marker; days no
longer mapped (the feed moved on by a day) are removed. Junk stays in, as in production: a single-speaker
conversation (3,150 of them: no reply at all) is written as one user turn, and ingest quarantines it. Conversations
that `anchor.outside_feed` keeps for the anchor set are never written.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from importlib import resources
from pathlib import Path

from botocore.exceptions import ClientError

from pipeline.data import markers
from pipeline.evaluation import anchor
from pipeline.storage import s3

PACKAGE = "chitchat_dataset"
DATA_FILE = "conversations.jsonl"


def source_days(package: str = PACKAGE) -> dict[str, list[dict]]:
    """OpenAI-format records by source day (the conversation's start, UTC), sorted by start and id; the
    conversations kept outside the feed are left out."""
    raw = json.loads(resources.files(package).joinpath("dataset.json").read_text(encoding="utf-8"))
    days: dict[str, list[dict]] = defaultdict(list)
    for cid, conversation in raw.items():
        if not anchor.outside_feed(cid):
            days[conversation["start"][:10]].append(openai_record(cid, conversation))
    return {day: sorted(records, key=lambda r: (r["metadata"]["start"], r["id"])) for day, records in sorted(days.items())}


def openai_record(cid: str, conversation: dict) -> dict:
    """Roles by speaker: whoever wrote first is the user, the other person the assistant; consecutive messages of
    one role are one turn."""
    groups = [group for group in conversation["messages"] if group]
    first = groups[0][0]["sender"] if groups else None
    messages: list[dict] = []
    for group in groups:
        role = "user" if group[0]["sender"] == first else "assistant"
        text = " ".join(message["text"].strip() for message in group)
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += " " + text
        else:
            messages.append({"role": role, "content": text})
    return {"id": cid, "messages": messages,
            "metadata": {"start": conversation["start"], "ratings": conversation.get("ratings") or {}}}


def mapping(days: list[str], end: datetime.date) -> dict[str, str]:
    """Source day -> calendar day: in order, consecutive, the last one on `end`."""
    return {day: (end - datetime.timedelta(days=len(days) - 1 - index)).isoformat() for index, day in enumerate(days)}


def partition_files(records: list[dict], directory: Path, **fields) -> dict:
    """Write a day's JSONL into `directory`; return the marker that publishes it (not written here)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    (directory / DATA_FILE).write_text(text, encoding="utf-8")
    single = sum(1 for r in records if len({m["role"] for m in r["messages"]}) < 2)
    return markers.describe(directory, **fields, conversations=len(records), single_speaker=single)


def publish(target: str, end: datetime.date, package: str = PACKAGE) -> dict[str, int]:
    """Create or refresh the feed under `target` (a directory or s3://bucket/prefix); returns what was done."""
    by_day = source_days(package)
    dates = mapping(list(by_day), end)
    store = S3Store(target) if target.startswith("s3://") else LocalStore(Path(target))
    existing = store.partitions()
    done = {"written": 0, "unchanged": 0, "removed": 0, "conversations": 0, "single_speaker": 0}
    with tempfile.TemporaryDirectory(prefix="chat-feed-") as scratch:
        for day, records in by_day.items():
            stage = Path(scratch) / f"dt={dates[day]}"
            marker = partition_files(records, stage, producer="ops.chat_feed", source=package, source_day=day,
                                     date=dates[day], mapping=f"{len(dates)} source days {min(dates)}..{max(dates)} "
                                     f"onto {dates[min(dates)]}..{dates[max(dates)]}")
            done["conversations"] += marker["conversations"]
            done["single_speaker"] += marker["single_speaker"]
            if store.holds(stage.name, markers.encode(marker)):
                done["unchanged"] += 1
                continue
            store.replace(stage.name, stage, markers.encode(marker))
            done["written"] += 1
        for stale in sorted(set(existing) - {f"dt={d}" for d in dates.values()}):
            store.remove(stale)
            done["removed"] += 1
    return done


class LocalStore:
    def __init__(self, root: Path):
        self.root = root

    def partitions(self) -> list[str]:
        return [p.name for p in self.root.glob("dt=*") if p.is_dir()] if self.root.is_dir() else []

    def holds(self, name: str, marker: bytes) -> bool:
        """The day is published with this very marker (so with these files)."""
        path = self.root / name / markers.NAME
        return path.is_file() and path.read_bytes() == marker

    def replace(self, name: str, stage: Path, marker: bytes) -> None:
        final = self.root / name
        (final / markers.NAME).unlink(missing_ok=True)  # unpublished before any file changes
        final.mkdir(parents=True, exist_ok=True)
        for path in stage.iterdir():
            partial = final / f".{path.name}.partial"
            shutil.copyfile(path, partial)
            partial.replace(final / path.name)
        partial = final / f".{markers.NAME}.partial"
        partial.write_bytes(marker)
        partial.replace(final / markers.NAME)  # last: publishes the day

    def remove(self, name: str) -> None:
        shutil.rmtree(self.root / name)


class S3Store:
    """One listing up front: a marker already published is recognised by its ETag (the MD5 of a single-part
    upload), so a rerun that changes nothing costs one LIST, not a GET per day."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = s3.split(self.uri)
        self.etags = self._listing()

    def partitions(self) -> list[str]:
        names = {key[len(self.prefix):].lstrip("/").split("/", 1)[0] for key in self.etags}
        return sorted(name for name in names if name.startswith("dt="))

    def holds(self, name: str, marker: bytes) -> bool:
        return self.etags.get(self._key(name)) == hashlib.md5(marker, usedforsecurity=False).hexdigest()

    def replace(self, name: str, stage: Path, marker: bytes) -> None:
        if self._key(name) in self.etags:  # unpublished before any file changes
            s3.client().delete_object(Bucket=self.bucket, Key=self._key(name))
        (stage / markers.NAME).write_bytes(marker)
        s3.upload_dir(stage, f"{self.uri}/{name}", last=markers.NAME)

    def remove(self, name: str) -> None:
        s3.delete_prefix(f"{self.uri}/{name}")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}/{markers.NAME}" if self.prefix else f"{name}/{markers.NAME}"

    def _listing(self) -> dict[str, str]:
        client = s3.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:  # a fresh stack has no bucket yet: the feed is its first producer
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            client.create_bucket(Bucket=self.bucket)
            return {}
        prefix = f"{self.prefix}/" if self.prefix else ""
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item["ETag"].strip('"') for page in pages for item in page.get("Contents", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chat_feed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", required=True, help="s3://bucket/prefix or a local directory")
    parser.add_argument("--end", type=datetime.date.fromisoformat,
                        default=datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1),
                        help="calendar day of the last source day (default: yesterday, UTC)")
    args = parser.parse_args(argv)
    done = publish(args.to, args.end)
    print(f"chat feed {args.to} ending {args.end}: {done['written']} partitions written, {done['unchanged']} "
          f"unchanged, {done['removed']} removed; {done['conversations']} conversations "
          f"({done['single_speaker']} single-speaker, quarantined by ingest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
