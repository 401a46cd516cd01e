"""Every served exchange recorded, and its feedback: date-partitioned OpenAI-format JSON Lines that ingest's
`served` source reads the next night (pipeline/data/served.py).

    <log_uri>/dt=YYYY-MM-DD/<id>.jsonl             one exchange: the request's messages and the reply, PII masked
    <log_uri>/dt=YYYY-MM-DD/feedback/<id>.json     its feedback: rating (up | down | a score in [0, 1]), correction

One object per exchange and per feedback, each written whole (a local file by rename, an S3 object by one PUT): a
reader never sees half of one, and servers side by side never write the same object. The id names its day
(`chatcmpl-YYYYMMDD-<hex>`), so feedback finds the exchange's partition without an index. A log that cannot be
written never fails a chat: the exchange is counted as unrecorded (`GET /health` shows the counts) and the reason is
logged. Partitions older than `retention_days` are deleted when the server starts and after each day turns.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pipeline.data import cleaning
from pipeline.storage import s3

log = logging.getLogger(__name__)

RATINGS = ("up", "down")


class UnknownExchange(LookupError):
    """Feedback names an id no recorded exchange has."""


def new_id() -> str:
    return f"chatcmpl-{_now():%Y%m%d}-{uuid.uuid4().hex}"


def day_of(exchange_id: str) -> str | None:
    """The partition date an id names, or None when it is not one of ours."""
    parts = exchange_id.split("-")
    if len(parts) != 3 or parts[0] != "chatcmpl" or len(parts[1]) != 8 or not parts[1].isdigit():
        return None
    try:
        return datetime.date(int(parts[1][:4]), int(parts[1][4:6]), int(parts[1][6:])).isoformat()
    except ValueError:
        return None


def mask(texts: list[str]) -> list[str]:
    """PII masked as ingest masks every source (cleaning.mask_pii): nothing unmasked reaches the log."""
    masked, _, _ = cleaning.mask_pii(pa.array(texts, pa.large_string()))
    return masked.to_pylist()


class ExchangeLog:
    """Writes exchanges and feedback under `uri` (a local directory or s3://bucket/prefix)."""

    def __init__(self, uri: str, retention_days: int):
        self.uri = uri.rstrip("/")
        self.retention_days = retention_days
        self.counts = Counter(recorded=0, unrecorded=0, feedback=0)
        self._lock = threading.Lock()
        self._pruned_on: str | None = None

    def record(self, exchange_id: str, messages: list[dict], reply: str, model: str, version: str,
               latency_ms: float, finish_reason: str | None) -> bool:
        """Write one exchange; False (counted as unrecorded, the reason logged) when it cannot be written."""
        day = day_of(exchange_id)
        texts = mask([m["content"] for m in messages] + [reply])
        record = {"id": exchange_id, "created": _now().isoformat(timespec="seconds"), "model": model,
                  "model_version": version, "latency_ms": round(latency_ms, 1),
                  "messages": [{"role": m["role"], "content": text} for m, text in zip(messages, texts, strict=False)]
                  + [{"role": "assistant", "content": texts[-1]}],
                  "metadata": {"finish_reason": finish_reason}}
        try:
            self._write(f"dt={day}/{exchange_id}.jsonl", json.dumps(record, ensure_ascii=False) + "\n")
        except Exception as exc:  # a full disk, S3 down: the user still gets the reply
            self._count("unrecorded")
            log.error("exchange %s not recorded in %s: %s: %s", exchange_id, self.uri, type(exc).__name__, exc)
            return False
        self._count("recorded")
        self.prune()
        return True

    def feedback(self, exchange_id: str, rating: str | float, correction: str | None) -> dict:
        """Store feedback beside its exchange (a later one replaces an earlier); UnknownExchange for an id with no
        recorded exchange. Errors writing it reach the caller: feedback that is not stored must not look stored."""
        day = day_of(exchange_id)
        if day is None or not self._exists(f"dt={day}/{exchange_id}.jsonl"):
            raise UnknownExchange(exchange_id)
        entry = {"id": exchange_id, "rating": rating, "created": _now().isoformat(timespec="seconds"),
                 "correction": mask([correction])[0] if correction is not None else None}
        self._write(f"dt={day}/feedback/{exchange_id}.json", json.dumps(entry, ensure_ascii=False))
        self._count("feedback")
        return entry

    def prune(self) -> list[str]:
        """Delete the partitions older than retention_days, once a day; the days deleted."""
        today = _now().date()
        if self._pruned_on == today.isoformat():
            return []
        self._pruned_on = today.isoformat()
        oldest = today - datetime.timedelta(days=self.retention_days)
        expired = [name for name in self._partitions() if name[3:] < oldest.isoformat()]
        for name in expired:
            try:
                self._delete(name)
            except Exception as exc:  # retried tomorrow; never a reason to fail a chat
                log.error("cannot delete expired partition %s/%s: %s", self.uri, name, exc)
        return [name[3:] for name in expired]

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # where the bytes go: a local directory or S3

    def _write(self, relative: str, text: str) -> None:
        if self.uri.startswith("s3://"):
            bucket, prefix = s3.split(f"{self.uri}/{relative}")
            s3.client().put_object(Bucket=bucket, Key=prefix, Body=text.encode("utf-8"))
            return
        path = Path(self.uri) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(scratch, path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise

    def _exists(self, relative: str) -> bool:
        if self.uri.startswith("s3://"):
            return s3.exists(f"{self.uri}/{relative}")
        return (Path(self.uri) / relative).is_file()

    def _partitions(self) -> list[str]:
        if self.uri.startswith("s3://"):
            _, prefix = s3.split(self.uri)
            names = {key[len(prefix):].lstrip("/").split("/")[0] for key in s3.keys(self.uri)}
        else:
            root = Path(self.uri)
            names = {p.name for p in root.iterdir()} if root.is_dir() else set()
        return sorted(n for n in names if n.startswith("dt=") and len(n) == 13)

    def _delete(self, name: str) -> None:
        if self.uri.startswith("s3://"):
            s3.delete_prefix(f"{self.uri}/{name}")
        else:
            shutil.rmtree(Path(self.uri) / name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
