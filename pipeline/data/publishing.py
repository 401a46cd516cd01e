"""Writing a date partition of the conversations dataset (ingest's output): turns.parquet, quarantine.jsonl and
manifest.json, written into a scratch directory and renamed into place, the manifest last (its presence marks the
partition complete; partitions.read checks the digest it records). A full disk is said as what an operator needs:
which partition, how much room there is, and what was kept.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline.config import ProjectConfig, RunContext
from pipeline.data import table
from pipeline.storage import outputs

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # "no space left", "disk quota exceeded": both mean "free space, rerun"
PUBLISHING = "the rename into place"  # after the block: atomic_dir does not clean up what a failed rename leaves


class DiskFullError(OSError):
    """The partition's filesystem filled up while writing; the message names the partition and the free space."""


def write_partition(turns: pd.DataFrame, quarantine: list[dict], summary: dict, project: ProjectConfig,
                    ctx: RunContext) -> Path:
    final = outputs.partition_dir(project, table.DATASET, ctx.run_date)
    writing = "its scratch directory"  # named in the disk-full error
    try:
        with outputs.atomic_dir(final) as scratch:
            writing = table.TURNS_FILE
            turns.to_parquet(scratch / table.TURNS_FILE, index=False)
            writing = table.QUARANTINE_FILE
            with open(scratch / table.QUARANTINE_FILE, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in quarantine)
            writing = outputs.MANIFEST
            outputs.write_json(scratch / outputs.MANIFEST, _manifest(scratch, turns, quarantine, summary, ctx))
            writing = PUBLISHING
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise _disk_full(error, final, writing, turns) from error
    return final


def _manifest(scratch: Path, turns: pd.DataFrame, quarantine: list[dict], summary: dict, ctx: RunContext) -> dict:
    """Written last inside the partition: its presence marks the partition complete."""
    return {
        "dataset": table.DATASET,
        "partition_date": ctx.run_date,
        "files": [table.TURNS_FILE, table.QUARANTINE_FILE],
        "digest": outputs.file_digest([scratch / table.TURNS_FILE]),
        "rows": len(turns),
        "rows_per_split": turns["split"].value_counts().sort_index().to_dict(),
        "conversations_per_split": turns.groupby("split")["conversation_id"].nunique().to_dict(),
        "conversations_per_language": turns.groupby("language")["conversation_id"].nunique().to_dict(),
        "quarantined": len(quarantine),
        **summary,
    }


def _disk_full(error: OSError, final: Path, writing: str, turns: pd.DataFrame) -> DiskFullError:
    """What an operator needs instead of pyarrow's "Error writing bytes to file": which partition, how much room
    there is, and what was kept (atomic_dir has removed the unfinished copy, unless publishing it failed)."""
    usage = shutil.disk_usage(final.parent)
    if writing == PUBLISHING:
        kept = f"publishing failed half-way: look for .{final.name}.tmp-* / .old-* directories in {final.parent}"
    elif final.is_dir():
        previous = sum(f.stat().st_size for f in final.iterdir() if f.is_file())
        kept = (f"no partial output is left, and the previous partition ({_size(previous)}) is unchanged; it is "
                "replaced only once the new one is complete, so a re-ingest needs room for both")
    else:
        kept = "no partial output is left"
    return DiskFullError(error.errno, (
        f"{final}: disk full ({errno.errorcode.get(error.errno, error.errno)}: {os.strerror(error.errno)}) while "
        f"writing {writing} ({len(turns)} turns, {_size(turns.memory_usage(deep=True).sum())} in memory); "
        f"{_size(usage.free)} free of {_size(usage.total)} on that filesystem; {kept}. "
        "Free space or move project.data_root, then rerun the task."))


def _size(size: float) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
