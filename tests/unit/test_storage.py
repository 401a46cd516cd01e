"""Atomic outputs: a failed write leaves nothing behind, a rerun replaces the old output whole."""

import pytest

from pipeline import storage
from pipeline.config import ProjectConfig, RunContext


def test_atomic_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(final) as scratch:
            (scratch / "part.parquet").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []  # no scratch left either


def test_atomic_dir_rerun_replaces_previous_output(tmp_path):
    final = tmp_path / "out"
    for content in ("first", "second"):
        with storage.atomic_dir(final) as scratch:
            (scratch / "data.txt").write_text(content)
    assert (final / "data.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_missing_manifest_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        storage.read_manifest(tmp_path)


def test_run_dir_is_scoped_and_path_safe(tmp_path):
    project = ProjectConfig(runs_root=str(tmp_path))
    ctx = RunContext(run_date="2026-11-22", run_id="scheduled__2026-11-22T02:00:00+00:00", dag_id="d")
    path = storage.run_dir(project, ctx, "train")
    assert path == tmp_path / "d" / "scheduled__2026-11-22T02_00_00_00_00" / "train"
    assert storage.partition_dir(project, "conversations", "2026-11-22").name == "dt=2026-11-22"
