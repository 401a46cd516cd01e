"""The whole nightly DAG in containers: the stack of `make up` (S3, MLflow server, Airflow scheduler + api-server)
with CHAT_RETRAIN_RUNTIME=docker, so the scheduler's own run starts every stage through DockerOperator and
podman's Docker API socket, in the CPU image `make images` built (the code is the image's, no checkout mounted).
data/ and runs/ are named volumes; the stages reach the MLflow server and S3 on the host's 127.0.0.1.

    make images && make test-containers          # ~N min on 2 cores
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from podman_engine import (
    CPU_IMAGE,
    INPUTS_CONFIG,
    DockerApiSocket,
    list_volume,
    load_tiny_inputs,
    new_volume,
    podman,
    remove_volumes,
    require_image,
)
from stack_processes import PORT_KEYS, leftovers, port_flags, stack_command, wait_for_scheduled_run

from ops import services, stack
from pipeline.process.ports import free_ports

pytestmark = pytest.mark.containers
REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "train", "evaluate", "promote")
STAGE_UID = "10001"


@pytest.fixture
def docker_stack(tmp_path, tiny_model_dir):
    """Start the stack with the docker runtime; yields (home, airflow_url, runtime settings); tears all down."""
    require_image()
    socket = DockerApiSocket(tmp_path)
    data, runs = new_volume("chat-retrain-data"), new_volume("chat-retrain-runs")
    home, ports = tmp_path / "home", free_ports(len(PORT_KEYS))
    home.mkdir()
    try:
        load_tiny_inputs(data, tmp_path, tiny_model_dir)
        settings = {"docker": {"docker_url": socket.url, "cpu_image": CPU_IMAGE, "train_image": CPU_IMAGE,
                               "data_volume": data, "runs_volume": runs, "network_mode": "host"}}
        (tmp_path / "runtimes.yaml").write_text(yaml.safe_dump(settings))
        env = {**os.environ, "CHAT_RETRAIN_RUNTIME": "docker",
               "CHAT_RETRAIN_RUNTIME_CONFIG": str(tmp_path / "runtimes.yaml"),
               "CHAT_RETRAIN_CONFIG": INPUTS_CONFIG}
        started = stack_command("up", "--home", str(home), *port_flags(ports), env=env)
        assert started.returncode == 0, f"stack up failed:\n{started.stdout}\n{started.stderr}"
        yield home, f"http://127.0.0.1:{ports[2]}", settings["docker"]
    finally:
        stopped = stack_command("down", "--home", str(home))
        socket.close()
        remove_volumes(data, runs)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not leftovers(home), f"processes of the stack left after `stack down`: {leftovers(home)}"


@pytest.mark.timeout(1500)
def test_the_scheduled_night_runs_every_stage_in_its_container(docker_stack):
    home, airflow_url, docker = docker_stack
    dag_run = wait_for_scheduled_run(airflow_url, timeout_s=1200, stop_on_retry=True)
    instances = services.get_json(f"{airflow_url}/api/v2/dags/nightly_chat_retrain/dagRuns/"
                                  f"{dag_run['dag_run_id']}/taskInstances")["task_instances"]
    states = {ti["task_id"]: ti["state"] for ti in instances}
    assert dag_run["state"] == "success", states
    assert states == dict.fromkeys(("wait_for_partition", *STAGES), "success")
    assert {ti["operator"] for ti in instances if ti["task_id"] in STAGES} == {"DockerOperator"}

    # Everything the stages wrote is on the named volumes, owned by the image's non-root user.
    day = dag_run["logical_date"][:10]
    data_files = list_volume(docker["data_volume"], "/app/data")
    partition = f"conversations/dt={day}"
    assert data_files[f"{partition}/turns.parquet"] == STAGE_UID
    assert {uid for path, uid in data_files.items() if not path.startswith("inputs")} == {STAGE_UID}
    run_files = list_volume(docker["runs_volume"], "/app/runs")
    assert run_files and set(run_files.values()) == {STAGE_UID}

    # The stages logged to the stack's MLflow server over HTTP, and the first night promoted its model.
    client = MlflowClient(stack.client_env(home)["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id],
                              f"tags.`airflow.run_id` = '{dag_run['dag_run_id']}'")
    assert {r.data.tags.get("pipeline.stage") for r in runs} >= set(STAGES)
    # Every stage ran on the image's tcmalloc (the entrypoint re-executes itself with it preloaded).
    assert {r.data.tags.get("pipeline.allocator") for r in runs if r.data.tags.get("pipeline.stage")} == {"tcmalloc"}
    champion = client.get_model_version_by_alias("tiny-chat", "champion")
    assert champion.tags["airflow.run_id"] == dag_run["dag_run_id"]

    # auto_remove="success": no container of the run is left behind.
    left = podman("ps", "--all", "--filter", f"ancestor={CPU_IMAGE}", "--format", "{{.Names}}").stdout.decode()
    assert not left.strip(), left
