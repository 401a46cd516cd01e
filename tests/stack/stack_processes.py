"""Helpers of the stack tests: run `python -m ops.stack`, pick free ports, find processes left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ops import services

REPO = Path(__file__).resolve().parents[2]
PORT_KEYS = ("s3_port", "mlflow_port", "airflow_port", "worker_log_port", "triggerer_log_port")


def stack_command(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops.stack", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def port_flags(ports: list[int]) -> list[str]:
    return [arg for key, port in zip(PORT_KEYS, ports, strict=True) for arg in ("--set", f"stack.{key}={port}")]


def leftovers(home: Path) -> list[str]:
    """Processes whose command line or environment names `home`: every service of the stack has AIRFLOW_HOME /
    RCLONE_CONFIG under it, so this also finds workers whose command line names neither (uvicorn, task runners)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command, environ = (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
        except OSError:
            continue
        if services.start_time(int(entry.name)) is not None and str(home).encode() in command + environ:
            found.append(entry.name + ": " + command.replace(b"\0", b" ").decode(errors="replace")[:150])
    return found


def wait_for_scheduled_run(airflow_url: str, timeout_s: int, dag_id: str = "nightly_chat_retrain",
                           stop_on_retry: bool = False) -> dict:
    """The first run the scheduler created by itself, once it has finished (success or failed). stop_on_retry: fail
    at a task's first failed attempt instead of sitting through the DAG's retry delays (minutes each)."""
    import pytest

    deadline, runs = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        runs = [run for run in services.get_json(f"{airflow_url}/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
                if run["run_type"] == "scheduled"]
        if runs and runs[0]["state"] in ("success", "failed"):
            return runs[0]
        if runs and stop_on_retry:
            instances = services.get_json(f"{airflow_url}/api/v2/dags/{dag_id}/dagRuns/{runs[0]['dag_run_id']}"
                                          "/taskInstances")["task_instances"]
            retrying = [ti["task_id"] for ti in instances if ti["state"] in ("up_for_retry", "failed")]
            if retrying:
                pytest.fail(f"task(s) {retrying} of {runs[0]['dag_run_id']} failed an attempt; see the task logs")
        time.sleep(3)
    pytest.fail(f"no finished scheduled run of {dag_id} after {timeout_s} s; runs: {runs}")
