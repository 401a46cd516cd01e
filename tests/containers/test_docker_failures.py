"""A stage whose container cannot start fails its task at once, naming what is missing: the image, the engine's
socket. Run by Airflow (dag.test on the one task) through the docker runtime, against podman's Docker API."""

from __future__ import annotations

import datetime
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from podman_engine import CPU_IMAGE, DockerApiSocket, new_volume, podman, remove_volumes, require_image

pytestmark = pytest.mark.containers
REPO = Path(__file__).resolve().parents[2]


def run_ingest(tmp_path, monkeypatch, docker: dict):
    (tmp_path / "runtimes.yaml").write_text(yaml.safe_dump({"docker": docker}))
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", "docker")
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME_CONFIG", str(tmp_path / "runtimes.yaml"))
    sys.path.insert(0, str(REPO / "dags"))
    dag = runpy.run_path(str(REPO / "dags" / "nightly_chat_retrain.py"))["dag"]
    only_ingest = dag.partial_subset(task_ids=["ingest"], include_downstream=False, include_upstream=False)
    only_ingest.get_task("ingest").retries = 0  # the failure itself is the point, not the retry delay
    run = only_ingest.test(logical_date=datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC),
                           run_conf={"config": "configs/tiny.yaml"})
    (instance,) = run.get_task_instances()
    return instance


def test_a_missing_image_fails_the_task_naming_the_image(airflow_db, tmp_path, monkeypatch, capfd):
    require_image()
    socket = DockerApiSocket(tmp_path)
    try:
        instance = run_ingest(tmp_path, monkeypatch, {"docker_url": socket.url,
                                                      "cpu_image": "localhost/chat-retrain-cpu:0.0.0-missing"})
    finally:
        socket.close()
    assert instance.state == "failed"
    assert "localhost/chat-retrain-cpu:0.0.0-missing" in "".join(capfd.readouterr())


def test_a_socket_that_is_down_fails_the_task_naming_the_socket(airflow_db, tmp_path, monkeypatch, capfd):
    socket = f"unix://{tmp_path}/no-engine.sock"
    instance = run_ingest(tmp_path, monkeypatch, {"docker_url": socket, "cpu_image": CPU_IMAGE})
    assert instance.state == "failed"
    assert str(tmp_path / "no-engine.sock") in "".join(capfd.readouterr())


def test_an_unwritable_data_volume_fails_the_task_naming_the_path(tmp_path, monkeypatch):
    """The operator itself (execute), so its exception's container log can be read: the stage names the path."""
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    require_image()
    volume = new_volume("chat-retrain-data")
    socket = DockerApiSocket(tmp_path)
    try:
        # root-owned and not empty: no copy-up of the image's owner, the stage user (10001) cannot write there
        podman("run", "--rm", "--user", "0", "-v", f"{volume}:/app/data", "--entrypoint", "sh", CPU_IMAGE, "-c",
               "touch /app/data/.keep && chown -R root:root /app/data && chmod 755 /app/data")
        (tmp_path / "runtimes.yaml").write_text(yaml.safe_dump({"docker": {
            "docker_url": socket.url, "cpu_image": CPU_IMAGE, "data_volume": volume}}))
        monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", "docker")
        monkeypatch.setenv("CHAT_RETRAIN_RUNTIME_CONFIG", str(tmp_path / "runtimes.yaml"))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")  # pass_env: the container's own /tmp
        sys.path.insert(0, str(REPO / "dags"))
        ingest = runpy.run_path(str(REPO / "dags" / "nightly_chat_retrain.py"))["dag"].get_task("ingest")
        ingest.command = ["ingest", "--config", "configs/tiny.yaml", "--run-date", "2026-11-22", "--run-id", "r1",
                          "--dag-id", "nightly_chat_retrain", "--run-type", "manual"]  # rendered by hand
        with pytest.raises(DockerContainerFailedException) as failed:
            ingest.execute({})
    finally:
        socket.close()
        remove_volumes(volume)
    output = "\n".join(failed.value.logs or [])
    assert "Permission denied: 'data/conversations" in output, output[-3000:]
