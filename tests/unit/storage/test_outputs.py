"""Atomic outputs: a failed write leaves nothing behind, a rerun replaces the old output whole."""

import os

import pytest

from pipeline.config import ProjectConfig, RunContext
from pipeline.storage import outputs


def test_atomic_dir_publishes_only_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outputs.atomic_dir(final) as scratch:
            (scratch / "part.parquet").write_text("half")
            raise RuntimeError("killed mid-write")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []  # no scratch left either


def test_atomic_dir_rerun_replaces_previous_output(tmp_path):
    final = tmp_path / "out"
    for content in ("first", "second"):
        with outputs.atomic_dir(final) as scratch:
            (scratch / "data.txt").write_text(content)
    assert (final / "data.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_missing_manifest_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        outputs.read_manifest(tmp_path)


def test_run_dir_is_scoped_and_path_safe(tmp_path):
    project = ProjectConfig(runs_root=str(tmp_path))
    ctx = RunContext(run_date="2026-11-22", run_id="scheduled__2026-11-22T02:00:00+00:00", dag_id="d")
    path = outputs.run_dir(project, ctx, "train")
    assert path == tmp_path / "d" / "scheduled__2026-11-22T02_00_00_00_00" / "train"
    assert outputs.partition_dir(project, "conversations", "2026-11-22").name == "dt=2026-11-22"


WRITER = """
import sys
from pathlib import Path
from pipeline.storage import outputs
with outputs.atomic_dir(Path(sys.argv[1])) as scratch:
    (scratch / "turns.parquet").write_text("new")
"""


def test_a_writer_killed_before_publishing_leaves_the_old_output_and_its_scratch_is_swept(tmp_path):
    """kill -9 at the last moment (everything written, nothing renamed): the old output is still there, and the
    retry's atomic_dir deletes the dead writer's scratch before writing its own."""
    import signal
    import subprocess
    import sys
    import time

    final = tmp_path / "dt=2026-11-22"
    with outputs.atomic_dir(final) as scratch:
        (scratch / "turns.parquet").write_text("old")
    hold = tmp_path / "hold"
    env = {**os.environ, "PIPELINE_FAILPOINT": f"publish:{final.name}", "PIPELINE_FAILPOINT_HOLD": str(hold)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], env=env)
    deadline = time.monotonic() + 60
    while not hold.exists():
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    (leftover,) = [p.name for p in tmp_path.iterdir() if p.name.startswith(".dt=")]
    assert leftover.startswith(f".{final.name}.tmp-") and (final / "turns.parquet").read_text() == "old"
    with outputs.atomic_dir(final) as scratch:
        (scratch / "turns.parquet").write_text("retry")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt=2026-11-22", "hold"]
    assert (final / "turns.parquet").read_text() == "retry"


def test_an_old_output_moved_aside_by_a_dead_writer_is_put_back(tmp_path):
    final = tmp_path / "model"
    dead = subprocess_pid_that_has_exited()
    aside = tmp_path / f".model.old-{outputs._host()}.{dead}-0123abcd"
    aside.mkdir()
    (aside / "weights").write_text("previous")
    live = tmp_path / f".model.tmp-{outputs._host()}.{os.getpid()}-0123abcd"  # a concurrent writer: left alone
    live.mkdir()
    outputs.sweep_dead_writers(final)
    assert (final / "weights").read_text() == "previous" and live.is_dir() and not aside.exists()


def subprocess_pid_that_has_exited() -> int:
    import subprocess
    import sys

    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)
