"""Completion markers of dated partitions: a producer writes a day's files, then one marker file naming each file
with its sha256; a reader takes a partition only when the marker is there and every file still has that digest.

    s3://chat-logs/openai/dt=2026-12-05/conversations.jsonl
    s3://chat-logs/openai/dt=2026-12-05/_SUCCESS      {"files": {"conversations.jsonl": {"sha256": ..., "bytes": ...}},
                                                       ...producer's own fields (the feed: its source day)}

Without the marker the day is still being written (or was never finished): the nightly run waits for it (the DAG's
sensor) and ingest refuses it. With the marker but other bytes (a file rewritten after the marker, a partial
re-upload) the partition is refused naming both digests: what was published is not what is there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

NAME = "_SUCCESS"  # Hadoop's and Spark's name for it; the file has no data suffix, so readers skip it as data


class IncompletePartition(RuntimeError):
    """No marker, a file the marker does not name, or a file whose bytes changed after it; the message says which."""


def describe(directory: Path, **fields) -> dict:
    """The marker of `directory`'s files (every file below it but the marker), with the producer's `fields`."""
    files = {}
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.name != NAME):
        data = path.read_bytes()
        files[path.relative_to(directory).as_posix()] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return {**fields, "files": files}


def encode(marker: dict) -> bytes:
    return (json.dumps(marker, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def verify(directory: Path, uri: str) -> dict:
    """The marker of a downloaded partition, once every file in it is checked; raises IncompletePartition."""
    marker_path = Path(directory) / NAME
    if not marker_path.is_file():
        raise IncompletePartition(f"{uri}: no {NAME} marker; rule: a partition is read only once its producer has "
                                  f"written the marker, last (the day is still being written, or was never finished)")
    try:
        marker = json.loads(marker_path.read_text("utf-8"))
        published = marker["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IncompletePartition(f"{uri}/{NAME}: not a marker (JSON with a 'files' object): {exc}") from exc
    found = describe(directory)["files"]
    for name in sorted(set(published) | set(found)):
        if name not in found:
            raise IncompletePartition(f"{uri}/{name}: named in {NAME} but missing")
        if name not in published:
            raise IncompletePartition(f"{uri}/{name}: not named in {NAME} (written after the partition was "
                                      "published?); rule: a partition's files are exactly the ones its marker names")
        if found[name]["sha256"] != published[name].get("sha256"):
            raise IncompletePartition(f"{uri}/{name}: sha256 {found[name]['sha256']}, but {NAME} says "
                                      f"{published[name].get('sha256')}; the file changed after the partition was "
                                      "published. Rule: the producer rewrites the marker after its files.")
    return marker


def expected(sources: list[dict], date: str) -> list[str]:
    """The markers a night of `date` waits for: one per partitioned source with `marker: true` (ingest config)."""
    return [f"{source['uri'].rstrip('/')}/dt={date}/{NAME}" for source in sources
            if source.get("partitioned") and source.get("marker")]


def published(marker_uri: str) -> bool:
    """Whether the marker object or file exists (a quick look; ingest verifies the files against it)."""
    if marker_uri.startswith("s3://"):
        from pipeline.storage import s3  # boto3 only where an S3 marker is looked for

        return s3.exists(marker_uri)
    return Path(marker_uri).is_file()
