"""What the fault tests drive: a real MLflow tracking server that can be killed and restarted, and the five stages
as the commands Airflow runs (`python -m pipeline <stage> ...`), started, held at a named point and killed.

A night is one project (data/, runs/, experiment, registered model) on the shared server, so an undisturbed night
and a disturbed one never see each other's outputs or champion: their digests can be compared one to one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ops import services
from pipeline.process.ports import free_port

REPO = Path(__file__).resolve().parents[2]
DATE = "2026-11-22"
RUN_ID = "scheduled__2026-11-22T02:00:00+00:00"
# stage -> {argument: the upstream task whose XCom it gets}, as the DAG wires them
INPUTS = {"validate": {"dataset": "ingest"}, "train": {"dataset": "validate"},
          "evaluate": {"dataset": "validate", "model": "train"}, "promote": {"evaluation": "evaluate"}}
# The stages' MLflow client retries a dead server 7 times with backoff (minutes); a task retry is Airflow's job.
FAST_MLFLOW_CLIENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingServer:
    """`mlflow server` on 127.0.0.1 over a SQLite store, proxying artifacts to a local directory."""

    def __init__(self, home: Path):
        self.home, self.port, self.process = home, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                   str(self.port), "--workers", "1", "--backend-store-uri", f"sqlite:///{self.home / 'mlflow.db'}",
                   "--serve-artifacts", "--artifacts-destination", str(self.home / "artifacts")]
        with open(self.home / "server.log", "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not services.http_ok(f"{self.url}/health"):
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.2)

    def kill(self) -> None:
        """kill -9 of the server and its workers (a crashed pod), not a graceful stop."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class Night:
    """One project's run of the five stages; `outputs` holds each stage's XCom (its output URI)."""

    home: Path
    server: TrackingServer
    base_model: Path
    outputs: dict = field(default_factory=dict)

    @property
    def config(self) -> Path:
        path = self.home / "config.yaml"
        if not path.is_file():
            raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
            raw["project"].update(data_root=str(self.home / "data"), runs_root=str(self.home / "runs"),
                                  tracking_uri="sqlite:///unused-the-server-wins.db", experiment=self.home.name,
                                  registered_model=f"tiny-{self.home.name}", base_model=str(self.base_model),
                                  artifact_root=str(self.home / "unused-artifacts"))
            raw["train"].update(checkpoint_steps=10)  # a kill after step 10 has a checkpoint to resume from
            path.write_text(yaml.safe_dump(raw, allow_unicode=True))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **FAST_MLFLOW_CLIENT, "MLFLOW_TRACKING_URI": self.server.url, **extra}

    def command(self, stage: str) -> list[str]:
        inputs = [arg for name, task in INPUTS.get(stage, {}).items() for arg in (f"--{name}", self.outputs[task])]
        return [sys.executable, "-m", "pipeline", stage, "--config", str(self.config), "--run-date", DATE,
                "--run-id", RUN_ID, "--dag-id", "nightly_chat_retrain", "--run-type", "scheduled", *inputs]

    def run(self, stage: str, **env: str) -> subprocess.CompletedProcess:
        """The stage to its end, as its task runs it; on success its XCom is recorded for the next stage."""
        xcom = self.home / f"xcom-{stage}.json"  # the stage's output channel (PIPELINE_XCOM_FILE), not its log
        xcom.unlink(missing_ok=True)
        result = subprocess.run(self.command(stage), cwd=REPO, capture_output=True, text=True, timeout=900,
                                env=self.env(PIPELINE_XCOM_FILE=str(xcom), **env))
        if result.returncode == 0:
            self.outputs[stage] = json.loads(xcom.read_text())
        return result

    def start(self, stage: str, **env: str) -> subprocess.Popen:
        log = open(self.home / f"{stage}.log", "ab")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(self.command(stage), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=self.env(**env))

    def log(self, stage: str) -> str:
        return (self.home / f"{stage}.log").read_text(errors="replace")

    def held_at(self, stage: str, failpoint: str, timeout: float = 300) -> subprocess.Popen:
        """Start the stage and return once it waits at `failpoint` (pipeline/process/failpoints.py)."""
        hold = self.home / f"hold-{stage}"
        process = self.start(stage, PIPELINE_FAILPOINT=failpoint, PIPELINE_FAILPOINT_HOLD=str(hold))
        wait_for(lambda: hold.exists(), process, timeout, f"{stage} never reached failpoint {failpoint}")
        return process

    def run_dir(self, stage: str) -> Path:
        return self.home / "runs" / "nightly_chat_retrain" / "scheduled__2026-11-22T02_00_00_00_00" / stage

    def progress_events(self, path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for(condition, process: subprocess.Popen, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"{message}: the process exited with {process.returncode}"
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def kill9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hidden_leftovers(root: Path) -> list[str]:
    """Scratch or moved-aside directories of writers (pipeline/storage/outputs.py atomic_dir) still lying around."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str):
    """A small tmpfs at `mount_point` (a full disk on demand); skips the test, saying why, where mounting is
    refused (not root, no mount command, a container without CAP_SYS_ADMIN). Unmounted afterwards."""
    import pytest

    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and the mount command")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {mount_point}: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
