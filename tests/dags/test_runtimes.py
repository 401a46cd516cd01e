"""The runtime switch: the same DAG parses as local processes, Docker containers and Kubernetes pods, and every
task runs the same stage arguments in all three; GPU requests, node selectors, secrets and the multi-node
launcher are where they belong."""

import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dags"))

from chat_retrain import runtimes  # noqa: E402


def _dag(monkeypatch, runtime, tmp_path=None, **settings):
    monkeypatch.setenv("CHAT_RETRAIN_RUNTIME", runtime)
    if settings:
        path = tmp_path / f"runtimes-{runtime}.yaml"
        path.write_text(yaml.safe_dump({runtime: settings}))
        monkeypatch.setenv("CHAT_RETRAIN_RUNTIME_CONFIG", str(path))
    return runpy.run_path(str(REPO / "dags" / "nightly_chat_retrain.py"))["dag"]


def _argv(task) -> list[str]:
    """What runs, as argv: interpreter/launcher, -m, pipeline, stage arguments."""
    name = type(task).__name__
    if name == "BashOperator":
        return shlex.split(task.bash_command)
    if name == "DockerOperator":
        return [*task.entrypoint, *task.command]
    return [*task.cmds, *task.arguments]


def _stage_args(argv: list[str]) -> list[str]:
    return argv[argv.index("pipeline") + 1:]


def test_commands_are_identical_in_every_runtime(monkeypatch):
    commands = {}
    for runtime in runtimes.RUNTIMES:
        dag = _dag(monkeypatch, runtime)
        commands[runtime] = {t.task_id: _stage_args(_argv(t)) for t in dag.tasks}
        assert [type(t).__name__ for t in dag.tasks] == [
            {"local": "BashOperator", "docker": "DockerOperator", "kubernetes": "KubernetesPodOperator"}[runtime]] * 5
        assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == {
            ("ingest", "validate"), ("validate", "train"), ("validate", "evaluate"), ("train", "evaluate"),
            ("evaluate", "promote")}
    assert commands["local"] == commands["docker"] == commands["kubernetes"]
    assert commands["local"]["train"] == ["train", "--config", "{{ params.config }}", "--run-date", "{{ ds }}",
                                          "--run-id", "{{ run_id }}", "--dag-id", "{{ dag.dag_id }}", "--run-type",
                                          "{{ dag_run.run_type }}", "--dataset",
                                          '{{ ti.xcom_pull(task_ids="validate") }}']


def test_docker_runtime_mounts_the_project_and_uses_local_images(monkeypatch):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "docker").tasks}
    ingest, train = tasks["ingest"], tasks["train"]
    assert ingest.image == "localhost/chat-retrain-cpu:latest" and train.image == "localhost/chat-retrain-train:latest"
    assert ingest.force_pull is False and ingest.working_dir == "/app"
    assert [(m["Target"], m["Source"]) for m in ingest.mounts] == [("/app", str(REPO))]
    assert train.pool == "training" and train.device_requests is None  # gpus_per_node: 0 in configs/runtimes.yaml


def test_kubernetes_runtime_gpus_node_selectors_secrets_and_xcom(monkeypatch):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "kubernetes").tasks}
    train, ingest = tasks["train"], tasks["ingest"]
    assert train.container_resources.limits["nvidia.com/gpu"] == "8" and ingest.container_resources is None
    assert train.node_selector == {"role": "gpu"} and ingest.node_selector == {}
    assert train.cmds[:3] == ["torchrun", "--nproc_per_node=8", "--nnodes=1"] and ingest.cmds == ["python", "-m",
                                                                                                   "pipeline"]
    assert [e.secret_ref.name for e in ingest.env_from] == ["chat-retrain-env"]  # secrets from Kubernetes
    assert ingest.service_account_name == "chat-retrain" and ingest.do_xcom_push
    assert {e.name: e.value for e in ingest.env_vars}["PIPELINE_XCOM_FILE"] == "/airflow/xcom/return.json"
    assert sorted(m.mount_path for m in ingest.volume_mounts) == ["/app/data", "/app/runs"]
    assert not any("SECRET" in str(a) or "PASSWORD" in str(a) for t in tasks.values() for a in t.arguments)


def test_multi_node_training_is_an_indexed_job_with_torchrun(monkeypatch, tmp_path):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "kubernetes", tmp_path, train_nodes=4, gpus_per_node=8).tasks}
    train = tasks["train"]
    assert type(train).__name__ == "KubernetesJobOperator"
    assert (train.completion_mode, train.completions, train.parallelism) == ("Indexed", 4, 4)
    assert train.cmds == ["torchrun", "--nproc_per_node=8", "--nnodes=4", "--node_rank=$(JOB_COMPLETION_INDEX)",
                          "--rdzv_backend=c10d", "--rdzv_endpoint=$(TRAIN_JOB_NAME)-0.chat-retrain-train:29500",
                          "--rdzv_id=$(TRAIN_JOB_NAME)", "-m", "pipeline"]
    assert train.full_pod_spec.spec.subdomain == "chat-retrain-train"
    assert tasks["evaluate"].arguments[-1] == '{{ ti.xcom_pull(task_ids="train")[0] }}'  # one URI per node


def test_launcher_for_one_device_is_plain_python():
    assert runtimes.launcher_args(runtimes.RuntimeConfig(gpus_per_node=1)) == ["python"]
    assert runtimes.launcher_args(runtimes.RuntimeConfig(gpus_per_node=2))[:2] == ["torchrun", "--nproc_per_node=2"]


def test_bad_runtime_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="runtime 'swarm'"):
        runtimes.load({"CHAT_RETRAIN_RUNTIME": "swarm", "CHAT_RETRAIN_RUNTIME_CONFIG": str(tmp_path / "none")})
    (tmp_path / "r.yaml").write_text("docker: {gpu: 1}\n")
    with pytest.raises(ValueError, match=r"r.yaml:docker: unknown key\(s\) \['gpu'\]"):
        runtimes.load({"CHAT_RETRAIN_RUNTIME": "docker", "CHAT_RETRAIN_RUNTIME_CONFIG": str(tmp_path / "r.yaml")})


def test_stage_writes_its_xcom_file_for_kubernetes(tmp_path, monkeypatch):
    from pipeline import cli

    monkeypatch.setenv("PIPELINE_XCOM_FILE", str(tmp_path / "xcom" / "return.json"))
    monkeypatch.setenv("LOCAL_RANK", "1")  # one writer per node
    cli._write_xcom(Path("data/conversations/dt=2026-11-22"))
    assert not (tmp_path / "xcom").exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    cli._write_xcom(Path("data/conversations/dt=2026-11-22"))
    assert (tmp_path / "xcom" / "return.json").read_text() == '"data/conversations/dt=2026-11-22"'
