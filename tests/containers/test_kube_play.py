"""The nightly DAG's pods, as the Kubernetes providers build them, run for real with `podman kube play`:
ingest -> validate -> train (tiny model) -> evaluate -> promote, each stage's pod built by
KubernetesPodOperator.build_pod_request_obj from the DAG parsed with CHAT_RETRAIN_RUNTIME=kubernetes, its
templates rendered with the XComs the previous pods left in their sidecars. The pods share the two claims (podman
volumes), get the MLflow server and S3 of `make up` from their secret (envFrom), and run as uid 10001.
See kube_pods.py for what stands in for the cluster.

    make images && .venv/bin/python -m pytest -m containers tests/containers/test_kube_play.py
"""

from __future__ import annotations

import json
import re
import runpy
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from kube_pods import (
    DAG_RUN_ID,
    collect,
    create_secret,
    host_records,
    job_pods,
    play,
    play_together,
    remove,
    run_context,
    start,
    submitted,
)
from mlflow import MlflowClient
from podman_engine import (
    CPU_IMAGE,
    INPUTS_CONFIG,
    copy_into_volume,
    list_volume,
    load_tiny_inputs,
    new_volume,
    podman,
    remove_volumes,
    require_image,
)
from stack_processes import stack_command

from ops import stack
from pipeline.process.ports import free_ports
from pipeline.storage import s3

pytestmark = pytest.mark.containers
REPO = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "validate", "train", "evaluate", "promote")
CONFIG = INPUTS_CONFIG


@pytest.fixture
def kube_dag(tmp_path, tiny_model_dir, monkeypatch):
    """The DAG parsed for Kubernetes against podman volumes / secret and the stack's S3 + MLflow server."""
    require_image()
    home, ports = tmp_path / "home", free_ports(2)
    data, runs = new_volume("chat-retrain-data"), new_volume("chat-retrain-runs")
    secret = f"chat-retrain-env-{uuid.uuid4().hex[:8]}"
    try:
        started = stack_command("up", "--home", str(home), "--services", "s3,mlflow", "--set",
                                f"stack.s3_port={ports[0]}", "--set", f"stack.mlflow_port={ports[1]}")
        assert started.returncode == 0, started.stdout + started.stderr
        create_secret(secret, stack.client_env(home))
        config = load_tiny_inputs(data, tmp_path, tiny_model_dir)
        settings = {
            "cpu_image": CPU_IMAGE, "train_image": CPU_IMAGE, "gpus_per_node": 0, "secrets": [secret],
            "data_volume_claim": data, "runs_volume_claim": runs, "stage_cpu": "1", "stage_memory": "4Gi",
            "train_cpu": "1", "train_memory": "6Gi", "train_shm": "1Gi"}
        monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", "kubernetes")
        monkeypatch.setenv("CHAT_RETRAIN_RUNTIME_CONFIG", str(tmp_path / "runtimes.yaml"))
        # The XCom sidecar's image is the kubernetes connection's setting (a registry mirror of alpine in an
        # offline cluster); here any local image with `sh`.
        monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps(
            {"conn_type": "kubernetes", "extra": {"xcom_sidecar_container_image": CPU_IMAGE}}))
        sys.path.insert(0, str(REPO / "dags"))

        def parse(**more):
            (tmp_path / "runtimes.yaml").write_text(yaml.safe_dump({"kubernetes": {**settings, **more}}))
            return runpy.run_path(str(REPO / "dags" / "nightly_chat_retrain.py"))["dag"]

        yield parse, home, data, runs, config
    finally:
        stopped = stack_command("down", "--home", str(home))
        podman("secret", "rm", secret, check=False)
        remove_volumes(data, runs)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.mark.timeout(1500)
def test_the_dag_s_pods_run_in_order_with_podman_kube_play(kube_dag, tmp_path):
    parse, home, data, runs, _ = kube_dag
    dag = parse()
    xcoms = {}
    pods = run_in_order(dag, STAGES, xcoms, CONFIG, tmp_path)

    # Each pod got the URI its predecessor wrote, through the rendered template, not a copy of the config.
    args = {stage: pod["spec"]["containers"][0]["args"] for stage, pod in pods.items()}
    assert args["validate"][args["validate"].index("--dataset") + 1] == xcoms["ingest"]
    assert args["train"][args["train"].index("--dataset") + 1] == xcoms["validate"]
    assert args["evaluate"][args["evaluate"].index("--model") + 1] == xcoms["train"]
    assert args["promote"][args["promote"].index("--evaluation") + 1] == xcoms["evaluate"]
    train = pods["train"]["spec"]
    assert {v["name"]: v.get("emptyDir") for v in train["volumes"]}["shm"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert train["terminationGracePeriodSeconds"] == 900 and train["securityContext"]["runAsUser"] == 10001

    # What the pods wrote is on the shared volumes, as uid 10001; the champion is on the MLflow server.
    data_files = list_volume(data, "/app/data")
    assert data_files["conversations/dt=2026-11-22/turns.parquet"] == "10001"
    assert set(list_volume(runs, "/app/runs").values()) == {"10001"}
    client = MlflowClient(stack.client_env(home)["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("tiny-chat", "champion")
    assert champion.tags["airflow.run_id"] == DAG_RUN_ID


@pytest.mark.timeout(1500)
def test_multi_node_training_two_pods_of_the_indexed_job_meet_at_pod_zero(kube_dag, tmp_path):
    """train_nodes: 2 on CPU: the Job's two pods (1 process each, gloo) rendezvous at <job>-0.chat-retrain-train,
    the name Kubernetes gives pod 0 under the headless service, and train one model together."""
    parse, home, data, runs, _ = kube_dag
    port = free_ports(1)[0]
    dag = parse(train_nodes=2, rendezvous_port=port)
    xcoms = {}
    run_in_order(dag, ("ingest", "validate"), xcoms, CONFIG, tmp_path)

    job = submitted(dag.get_task("train"), run_context(xcoms, CONFIG), tmp_path)
    assert job["kind"] == "Job" and job["metadata"]["name"] == "job-train-20261122t020000-1"
    pods = job_pods(job)
    command = pods[1]["spec"]["containers"][0]["command"]
    assert f"--rdzv_endpoint=job-train-20261122t020000-1-0.chat-retrain-train:{port}" in command
    addresses = {pod["metadata"]["name"]: f"127.0.0.{10 + index}" for index, pod in enumerate(pods)}
    pod_zero = pods[0]["metadata"]["name"]
    with host_records({**addresses, f"{pod_zero}.chat-retrain-train": addresses[pod_zero]}):
        results = play_together(pods, tmp_path)
    for index, (code, log, _) in enumerate(results):
        assert code == 0, f"node {index} exited {code}:\n{log[-4000:]}"
    uris = [json.loads(xcom) for _, _, xcom in results]
    assert uris[0] == uris[1]  # every node reports the run-scoped model; rank 0 wrote it
    xcoms["train"] = uris  # the Job's XCom: one URI per node; evaluate takes the first
    run_in_order(dag, ("evaluate", "promote"), xcoms, CONFIG, tmp_path)
    client = MlflowClient(stack.client_env(home)["MLFLOW_TRACKING_URI"])
    (train_run,) = client.search_runs(
        [client.get_experiment_by_name("nightly-chat-retrain-test").experiment_id],
        f"tags.`airflow.run_id` = '{DAG_RUN_ID}' and tags.`pipeline.stage` = 'train'")
    assert train_run.data.params["train.world_size"] == "2"  # both pods trained; only rank 0 logged


@pytest.mark.timeout(1500)
def test_a_lost_multi_node_job_is_retried_as_a_fresh_job_that_resumes_from_the_mirror(kube_dag, tmp_path,
                                                                                      monkeypatch):
    """Both pods of try 1 are killed (-9: the nodes are lost) once a checkpoint is sealed in the S3 mirror. Try 2
    is a Job of another name on a fresh runs volume (nothing local survives) and resumes from the mirror."""
    parse, home, data, runs, config = kube_dag
    for key, value in stack.client_env(home).items():
        monkeypatch.setenv(key, value)  # this process lists the mirror on the stack's S3
    config["train"].update(max_steps=400, checkpoint_steps=10, checkpoint_mirror="s3://mlflow/checkpoints")
    (tmp_path / "retry.yaml").write_text(yaml.safe_dump(config))
    copy_into_volume(data, "/app/data", {"inputs/retry.yaml": tmp_path / "retry.yaml"})
    retry_config, port = "/app/data/inputs/retry.yaml", free_ports(1)[0]
    dag = parse(train_nodes=2, rendezvous_port=port)
    xcoms = {}
    run_in_order(dag, ("ingest", "validate"), xcoms, retry_config, tmp_path)

    first = job_pods(submitted(dag.get_task("train"), run_context(xcoms, retry_config, try_number=1), tmp_path))
    run_dir = f"nightly_chat_retrain/{re.sub(r'[^A-Za-z0-9._=-]+', '_', DAG_RUN_ID)}"  # storage.run_dir's form
    mirror = f"s3://mlflow/checkpoints/{run_dir}/train/checkpoints"
    with host_records(_records(first)):
        try:
            start(first, tmp_path)
            deadline = time.monotonic() + 600
            while not [k for k in _keys(mirror) if re.search(r"checkpoint-\d+/manifest.json$", k)]:
                assert time.monotonic() < deadline, "no sealed checkpoint in the mirror"
                time.sleep(1)
            for pod in first:
                podman("kill", "--signal", "KILL", f"{pod['metadata']['name']}-base")
            assert [code for code, _, _ in collect(first)] == [137, 137]
        finally:
            remove(first)

    fresh_runs = new_volume("chat-retrain-runs")
    try:
        retry_dag = parse(train_nodes=2, rendezvous_port=port, runs_volume_claim=fresh_runs)
        job = submitted(retry_dag.get_task("train"), run_context(xcoms, retry_config, try_number=2), tmp_path)
        assert job["metadata"]["name"] == "job-train-20261122t020000-2"  # not try 1's: no 409 AlreadyExists
        second = job_pods(job)
        with host_records(_records(second)):
            results = play_together(second, tmp_path)
        for index, (code, log, _) in enumerate(results):
            assert code == 0, f"node {index} of the retry exited {code}:\n{log[-4000:]}"
        restored = re.search(r"restored checkpoint-(\d+) from s3://", results[0][1] + results[1][1])
        assert restored and int(restored.group(1)) >= 10, "the retry did not resume from the mirror"
        manifest = json.loads(podman("run", "--rm", "-v", f"{fresh_runs}:/app/runs", "--entrypoint", "cat",
                                     CPU_IMAGE, f"/app/runs/{run_dir}/train/model/manifest.json").stdout)
        assert manifest["global_step"] == 400
    finally:
        remove_volumes(fresh_runs)


def run_in_order(dag, stages, xcoms: dict, config: str, directory: Path) -> dict[str, dict]:
    """Each stage's pod, built with the XComs so far, played to its end; its XCom added. Returns the pods."""
    pods = {}
    for stage in stages:
        pods[stage] = submitted(dag.get_task(stage), run_context(xcoms, config), directory)
        code, log, xcom = play(pods[stage], directory)
        assert code == 0, f"{stage} pod exited {code}:\n{log[-4000:]}"
        assert xcom, f"{stage} left no /airflow/xcom/return.json:\n{log[-2000:]}"
        xcoms[stage] = json.loads(xcom)
    return pods


def _records(pods: list[dict]) -> dict[str, str]:
    addresses = {pod["metadata"]["name"]: f"127.0.0.{10 + index}" for index, pod in enumerate(pods)}
    pod_zero = pods[0]["metadata"]["name"]
    return {**addresses, f"{pod_zero}.chat-retrain-train": addresses[pod_zero]}


def _keys(uri: str) -> list[str]:
    try:
        return s3.keys(uri)
    except s3.ObjectStoreError:
        return []
