"""A stage container stops on SIGTERM, with Python as its PID 1 (the image has no init): the train stage in the CPU
image, held once training is over and its checkpoints are sealed (failpoint `train.trained`), then `podman kill
--signal TERM`, as the kubelet sends at an eviction or Airflow at a timeout. The container must exit within seconds
with the stage's failure code, not wait out the grace period for SIGKILL (the kernel ignores a signal whose
action is the default for PID 1), and the sealed checkpoint must be there for the retry.

    make images && .venv/bin/python -m pytest -m containers tests/containers/test_container_sigterm.py
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from podman_engine import (
    CPU_IMAGE,
    INPUTS_CONFIG,
    list_volume,
    load_tiny_inputs,
    new_volume,
    podman,
    remove_volumes,
    require_image,
)

from pipeline.training.checkpoint_seal import SEAL

pytestmark = pytest.mark.containers
RUN_ID = "sigterm-test"
# One MLflow store for the three stages, on the runs volume (the image's /app holds no writable store of its own).
STORE = ["--set", "project.tracking_uri=sqlite:////app/runs/mlflow.db", "--set", "project.artifact_root=/app/runs/mlflow"]


def stage_args(stage: str, *extra: str) -> list[str]:
    return [stage, "--config", INPUTS_CONFIG, "--run-date", "2026-11-22", "--run-id", RUN_ID, "--dag-id",
            "nightly_chat_retrain", "--run-type", "manual", *STORE, *extra]


def run_stage(volumes: list[str], stage: str, *extra: str) -> str:
    """The stage in its container, to the end; the URI it prints last."""
    printed = podman("run", "--rm", *volumes, CPU_IMAGE, *stage_args(stage, *extra), timeout=600).stdout.decode()
    return printed.strip().splitlines()[-1]


@pytest.mark.timeout(900)
def test_sigterm_after_training_stops_the_container_at_once_with_the_checkpoint_sealed(tmp_path, tiny_model_dir):
    require_image()
    data, runs = new_volume("chat-retrain-data"), new_volume("chat-retrain-runs")
    volumes = ["-v", f"{data}:/app/data", "-v", f"{runs}:/app/runs"]
    name = f"train-sigterm-{uuid.uuid4().hex[:8]}"
    try:
        load_tiny_inputs(data, tmp_path, tiny_model_dir)
        dataset = run_stage(volumes, "validate", "--dataset", run_stage(volumes, "ingest"))
        podman("run", "-d", "--name", name, *volumes, "-e", "PIPELINE_FAILPOINT=train.trained", CPU_IMAGE,
               *stage_args("train", "--dataset", dataset, "--set", "train.checkpoint_steps=20"))
        deadline = time.monotonic() + 600
        while b"failpoint train.trained reached" not in podman("logs", name).stderr:
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.decode().strip()
            assert running == "true" and time.monotonic() < deadline, podman("logs", name).stderr.decode()[-3000:]
            time.sleep(2)
        assert podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip() != b"0"
        top = podman("top", name, "pid", "args").stdout.decode()
        assert any(line.split()[:1] == ["1"] and "pipeline" in line for line in top.splitlines()), top

        sent = time.monotonic()
        podman("kill", "--signal", "TERM", name)
        code = int(podman("wait", name, timeout=60).stdout.decode().strip())
        took = time.monotonic() - sent
        logs = podman("logs", name).stderr.decode()
        assert took < 20, f"the container took {took:.0f} s to stop after SIGTERM"
        assert code == 1 and "terminated by SIGTERM" in logs, (code, logs[-3000:])
        sealed = re.compile(rf"nightly_chat_retrain/{RUN_ID}/train/checkpoints/checkpoint-(\d+)/{SEAL}")
        steps = sorted(int(m.group(1)) for path in list_volume(runs, "/app/runs") if (m := sealed.fullmatch(path)))
        assert steps == [20, 40], steps  # every checkpoint sealed, the last at the final step
    finally:
        podman("rm", "--force", name, check=False)
        remove_volumes(data, runs)
