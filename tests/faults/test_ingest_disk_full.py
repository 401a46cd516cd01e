"""The disk fills up while ingest writes a partition (issue 13): data_root is a small tmpfs, a first ingest fits, a
second one (a re-ingest of the same date with more data, or the next date) runs out of space half-way through
writing. The stage fails with an error that names the partition and says the disk is full (ENOSPC), the previous
partition is byte-identical to before, nothing half-written is left in data_root (no partition, no hidden scratch
directory), and the same command succeeds once there is room.

    make test-faults        # needs root: it mounts a tmpfs (skipped, with the reason, where mount is refused)
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from dialogue_files import write_jsonl
from harness import tmpfs

from pipeline.storage import outputs

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
DATE, NEXT_DATE = "2026-11-22", "2026-11-23"
DISK_BYTES = 512 * 1024  # holds the first partition (~40 KiB), not the second (~1.3 MiB)
FIRST, SECOND = 200, 6000  # conversations


def conversations(count: int, start: int) -> list[dict]:
    """Two turns of hex digests each: they neither deduplicate nor compress, so partition sizes are predictable."""
    def turn(role: str, number: int, kind: str) -> dict:
        return {"role": role, "content": f"{kind} {number}: {hashlib.sha256(f'{kind}{number}'.encode()).hexdigest()}"}

    return [{"messages": [turn("user", n, "question"), turn("assistant", n, "answer")]}
            for n in range(start, start + count)]


@pytest.fixture
def small_disk(tmp_path):
    """A DISK_BYTES tmpfs mounted where make_config puts data_root; unmounted afterwards."""
    with tmpfs(tmp_path / "data", str(DISK_BYTES)) as mount:
        yield mount


def ingest(config: Path, run_date: str) -> subprocess.CompletedProcess:
    """The command the Airflow task runs."""
    return subprocess.run([sys.executable, "-m", "pipeline", "ingest", "--config", str(config), "--run-date", run_date],
                          cwd=REPO, capture_output=True, text=True, timeout=240)


def tree(root: Path) -> dict[str, str]:
    """Every entry under root, hidden ones included, with the sha256 of each file's bytes."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(root.rglob("*"))}


@pytest.mark.parametrize("second_date", [DATE, NEXT_DATE], ids=["re-ingest of the same date", "next date"])
def test_disk_full_mid_write_fails_clearly_and_keeps_the_previous_partition(tmp_path, small_disk, make_config,
                                                                             second_date):
    inputs = tmp_path / "in"
    write_jsonl(inputs / f"dt={DATE}" / "first.jsonl", conversations(FIRST, start=0))
    config = make_config(ingest={"sources": [{"format": "openai", "uri": str(inputs), "partitioned": True,
                                              "language": "en"}]})
    first = ingest(config, DATE)
    assert first.returncode == 0, first.stderr[-3000:]
    before = tree(small_disk)
    assert sorted(before) == ["conversations", f"conversations/dt={DATE}"] + [
        f"conversations/dt={DATE}/{name}" for name in ("manifest.json", "quarantine.jsonl", "turns.parquet")]

    write_jsonl(inputs / f"dt={second_date}" / "second.jsonl", conversations(SECOND, start=FIRST))
    failed = ingest(config, second_date)

    partition = small_disk / "conversations" / f"dt={second_date}"
    reported = [line for line in failed.stderr.splitlines() if line.startswith("ingest failed:")]
    assert failed.returncode == 1 and reported, failed.stderr[-3000:]
    assert reported[0].startswith(f"ingest failed: [Errno 28] {partition}: disk full (ENOSPC: No space left on "
                                  "device) while writing turns.parquet"), reported[0]
    assert "Free space or move project.data_root" in reported[0]
    assert tree(small_disk) == before  # the last good partition byte for byte, and no scratch or new partition

    # Room again (the operator grew the volume): the task's retry, the same command, completes the partition.
    subprocess.run(["mount", "-o", f"remount,size={8 * DISK_BYTES}", str(small_disk)], check=True)
    retried = ingest(config, second_date)
    assert retried.returncode == 0, retried.stderr[-3000:]
    expected = FIRST + SECOND if second_date == DATE else SECOND
    assert outputs.read_manifest(partition)["counts"]["conversations"] == expected
    assert not [p for p in small_disk.rglob(".*")], "scratch directories left after the successful retry"
