"""A run trains and evaluates on exactly the partition validate approved: the URI carries the digest of its bytes.

    data/conversations/dt=2026-11-22                      what ingest wrote (the shared, dated partition)
    data/conversations/dt=2026-11-22#sha256=<64 hex>     what ingest and validate hand on (their XCom)

The partition is shared by every run of its date: a backfill, a manual rerun or late data can re-ingest it between
this run's validate and its train. So each stage reads turns.parquet once into memory, hashes those very bytes and
parses them; a pinned digest that differs stops the stage with both digests named, before anything is trained or
scored. An unpinned URI (a stage run by hand) is read as it is, still checked against its own manifest.

Later nights read earlier partitions too (replay, the held-out window, the memory set), and only those validate
passed: validate writes `validated.json` (the digest it approved) into the partition, and `read_approved` takes a
partition only while its bytes are those. A day that failed validation, was never validated, or was re-ingested
since (a re-ingest replaces the whole directory) is skipped by its readers, who count it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.config import ProjectConfig
from pipeline.data import sources, table
from pipeline.storage import outputs

log = logging.getLogger(__name__)

PIN = "#sha256="
APPROVAL = "validated.json"  # in the partition, written by validate when it passed: the digest of the bytes approved


class PartitionChanged(RuntimeError):
    """The partition's bytes are not the ones the upstream stage checked; the message names both digests."""


@dataclass(frozen=True)
class Partition:
    path: Path
    turns: pd.DataFrame
    manifest: dict
    digest: str  # sha256 of turns.parquet as read

    @property
    def uri(self) -> str:
        return pin(self.path, self.digest)


def pin(path: str | Path, digest: str) -> str:
    return f"{path}{PIN}{digest}"


def unpin(uri: str) -> tuple[Path, str | None]:
    """(partition directory, pinned digest or None)."""
    path, _, digest = str(uri).partition(PIN)
    return Path(path), digest or None


def read(uri: str) -> Partition:
    """The partition's turns, from bytes whose digest matches the pin (if any) and the partition's own manifest."""
    path, pinned = unpin(uri)
    manifest = outputs.read_manifest(path)
    data = (path / table.TURNS_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if pinned is not None and digest != pinned:
        raise PartitionChanged(
            f"{path / table.TURNS_FILE}: sha256 {digest}, but the upstream stage checked sha256 {pinned}; the partition was "
            "re-ingested since (a backfill, a manual rerun or late data). Rule: a run trains and evaluates only on "
            "the bytes its validate approved; rerun this DAG run from ingest.")
    if digest != manifest.get("digest"):
        raise PartitionChanged(
            f"{path / table.TURNS_FILE}: sha256 {digest}, but {path / outputs.MANIFEST} says {manifest.get('digest')}; the "
            "partition changed while it was being read (a concurrent ingest): retry the task.")
    return Partition(path, pd.read_parquet(io.BytesIO(data)), manifest, digest)


def approve(partition: Partition, run_id: str) -> None:
    """Record that validate passed these bytes (atomically; the digest says which bytes)."""
    outputs.write_json(partition.path / APPROVAL, {"digest": partition.digest, "validated_by_run": run_id})


def read_approved(path: str | Path) -> Partition | None:
    """An earlier partition as validate approved it; None when it was never approved (validation failed or never
    ran), or its bytes are no longer the approved ones (re-ingested, or being re-ingested)."""
    approval = Path(path) / APPROVAL
    if not approval.is_file():
        return None
    try:
        return read(pin(path, json.loads(approval.read_text(encoding="utf-8"))["digest"]))
    except (PartitionChanged, FileNotFoundError, KeyError, ValueError):
        return None


@dataclass(frozen=True)
class Earlier:
    """The partitions of some days before a run date, as later nights may read them."""

    approved: list[tuple[str, Partition]] = field(default_factory=list)  # (day, partition), newest first
    missing: list[str] = field(default_factory=list)  # days without a partition
    unvalidated: list[str] = field(default_factory=list)  # days validate did not approve


def earlier(project: ProjectConfig, run_date: str, offsets: range) -> Earlier:
    """The partitions of the days `offsets` before the run date (newest first; range(1, 8): the 7 days before), each
    read only as validate approved it (replay, the held-out window and the memory set read them through here)."""
    found = Earlier()
    for day in sources.window(run_date, offsets.stop)[offsets.start:]:
        path = outputs.partition_dir(project, table.DATASET, day)
        if not (path / table.TURNS_FILE).is_file():
            found.missing.append(day)
        elif (partition := read_approved(path)) is None:
            log.warning("%s not approved by validate (failed, never validated, or re-ingested since): skipped", path)
            found.unvalidated.append(day)
        else:
            found.approved.append((day, partition))
    return found

