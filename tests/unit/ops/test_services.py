"""Process records of `ops.stack`: a pid is ours only with its start time; strays are found by a marker."""

import os
import subprocess

from ops import services


def test_a_process_is_stopped_only_if_pid_and_start_time_match(tmp_path):
    record = services.start(["sleep", "60"], dict(os.environ), tmp_path / "sleep.log", tmp_path)
    assert services.alive(record)
    reused = {**record, "start_time": record["start_time"] - 1}  # same pid, another process: not ours
    assert not services.alive(reused) and not services.stop(reused)
    assert services.alive(record)
    assert services.stop(record, timeout=5) and not services.alive(record)
    assert not services.stop(record)  # stopping again: nothing to do


def test_processes_that_left_the_group_are_found_by_their_marker(tmp_path):
    marker = f"PIPELINE_STACK_HOME={tmp_path}"
    stray = subprocess.Popen(["sleep", "60"], env={**os.environ, "PIPELINE_STACK_HOME": str(tmp_path)},
                             start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], env={**os.environ, "PIPELINE_STACK_HOME": str(tmp_path / "x")})
    try:
        assert services.stop_marked(marker, spare_groups=set(), timeout=5) == [stray.pid]
        assert stray.wait(timeout=5) != 0 and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_taken_port_is_reported_with_its_holder():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not services.port_free(port)
        assert services.port_holder(port).startswith(f"pid {os.getpid()} ")
    assert services.port_free(port)
