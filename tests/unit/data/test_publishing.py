"""A partition is published whole or not at all: its files in a scratch directory renamed into place, the manifest
(with the digest validate and partitions.read check) written last; a rerun with the same turns gives the same bytes;
a full disk is an error that names the partition, the free space and what was kept."""

import errno
import json

import pandas as pd
import pytest

from pipeline.config import ProjectConfig, RunContext
from pipeline.data import partitions, publishing, table
from pipeline.storage import outputs


def _turns() -> pd.DataFrame:
    rows = [("c1", 0, "user", "hi", "train"), ("c1", 1, "assistant", "hello", "train"),
            ("c2", 0, "user", "cold?", "test"), ("c2", 1, "assistant", "very", "test"),
            ("c3", 0, "user", "static", "replay"), ("c3", 1, "assistant", "set", "replay")]
    return pd.DataFrame([{"conversation_id": c, "turn_index": i, "role": r, "text": t, "language": "en",
                          "source": "a.jsonl", "split": s, "partition_date": "2026-11-22"} for c, i, r, t, s in rows])


def _publish(tmp_path):
    project = ProjectConfig(data_root=str(tmp_path / "data"))
    summary = {"window": ["2026-11-22"], "inputs": [], "input_digest": "x", "counts": {"read": 3}, "sources": []}
    return publishing.write_partition(_turns(), [{"origin": "a.jsonl:4", "reason": "r", "raw": "{}"}], summary,
                                      project, RunContext("2026-11-22", "run"))


def test_a_partition_is_written_with_its_manifest_and_reads_back_pinned_to_its_digest(tmp_path):
    path = _publish(tmp_path)
    manifest = outputs.read_manifest(path)
    assert manifest["rows_per_split"] == {"replay": 2, "test": 2, "train": 2} and manifest["quarantined"] == 1
    assert manifest["conversations_per_split"] == {"replay": 1, "test": 1, "train": 1}
    read = partitions.read(str(path))
    assert read.turns.equals(_turns()) and read.manifest["digest"] == manifest["digest"]
    first = {f.name: f.read_bytes() for f in path.iterdir()}
    assert _publish(tmp_path) == path and {f.name: f.read_bytes() for f in path.iterdir()} == first
    assert [json.loads(line)["origin"] for line in (path / table.QUARANTINE_FILE).read_text().splitlines()] == [
        "a.jsonl:4"]


def test_a_full_disk_names_the_partition_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = _publish(tmp_path)
    before = {f.name: f.read_bytes() for f in path.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(publishing.DiskFullError, match=r"dt=2026-11-22: disk full \(ENOSPC.*while writing turns.parquet"
                                                       r".*the previous partition .* is unchanged"):
        _publish(tmp_path)
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir()] == ["dt=2026-11-22"]  # no scratch directory left
