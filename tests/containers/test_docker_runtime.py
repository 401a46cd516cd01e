"""A real stage of the DAG in a real container: the DAG parsed with the docker runtime, its `ingest` task run by
Airflow (dag.test on that task) through DockerOperator against podman's Docker API socket, in the CPU image that
`make images` builds. The partition lands in the mounted project dir and the task's XCom is its URI."""

import datetime
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/chat-retrain-cpu:latest"


@pytest.fixture
def podman_socket(tmp_path):
    if not shutil.which("podman") or subprocess.run(["podman", "image", "exists", IMAGE]).returncode != 0:
        pytest.fail(f"podman with the image {IMAGE} is needed: run `make images` first")
    socket = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"])
    for _ in range(100):
        if socket.exists():
            break
        time.sleep(0.1)
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=30)


@pytest.mark.timeout(900)
def test_ingest_runs_in_a_container_through_docker_operator(airflow_db, podman_socket, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    project.chmod(0o777)  # the image runs as uid 10001
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    (project / "config.yaml").write_text(yaml.safe_dump(config))  # relative paths: data/, runs/, .mlflow/ in /app
    settings = tmp_path / "runtimes.yaml"
    settings.write_text(yaml.safe_dump({"docker": {"docker_url": podman_socket, "host_project_dir": str(project)}}))
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", "docker")
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME_CONFIG", str(settings))
    sys.path.insert(0, str(REPO / "dags"))
    dag = runpy.run_path(str(REPO / "dags" / "nightly_chat_retrain.py"))["dag"]
    only_ingest = dag.partial_subset(task_ids=["ingest"], include_downstream=False, include_upstream=False)

    run = only_ingest.test(logical_date=datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC),
                           run_conf={"config": "config.yaml"})
    (instance,) = run.get_task_instances()
    assert instance.state == "success"
    partition = project / "data" / "conversations" / "dt=2026-11-22"
    manifest = json.loads((partition / "manifest.json").read_text())
    assert manifest["counts"]["conversations"] > 1000 and (partition / "turns.parquet").is_file()
    assert instance.xcom_pull(task_ids="ingest") == "data/conversations/dt=2026-11-22"
    assert os.stat(partition).st_uid == 10001  # written by the container's non-root user
