"""The runtime switch: the same DAG parses as local processes, Docker containers and Kubernetes pods, and every
task runs the same stage arguments in all three; GPU requests, node selectors, secrets and the multi-node
launcher are where they belong. The XCom is the stage's PIPELINE_XCOM_FILE in every runtime, never its log: a
real local task whose interpreter prints garbage at exit still hands on exactly its URI."""

import copy
import datetime
import io
import json
import runpy
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "dags"))

from chat_retrain import runtimes  # noqa: E402
from kube_objects import built  # noqa: E402


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
    if name == "BashOperator":  # the stage's line inside the XCom-file wrapper; templates travel in task.env
        (line,) = [line for line in task.bash_command.splitlines() if " -m pipeline " in line]
        return [task.env[word[1:]] if word.startswith("$PIPELINE_ARG_") else word for word in shlex.split(line)[1:]]
    if name == "DockerOperator":
        return [*task.entrypoint, *task.command]
    # Kubernetes keeps rendered values literal ($$ for $: runtimes.kubernetes_literal); the templates are the same
    return [*task.cmds, *(arg.replace(" | replace('$', '$$') }}", " }}") for arg in task.arguments)]


def _stage_args(argv: list[str]) -> list[str]:
    return argv[argv.index("pipeline") + 1:]


def test_commands_are_identical_in_every_runtime(monkeypatch):
    commands = {}
    for runtime in runtimes.RUNTIMES:
        dag = _dag(monkeypatch, runtime)
        stages = [t for t in dag.tasks if t.task_id != "wait_for_partition"]  # the sensor runs where Airflow runs
        commands[runtime] = {t.task_id: _stage_args(_argv(t)) for t in stages}
        assert [type(t).__name__ for t in stages] == [
            {"local": "BashOperator", "docker": "DockerOperator", "kubernetes": "KubernetesPodOperator"}[runtime]] * 5
        assert {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids} == {
            ("wait_for_partition", "ingest"), ("ingest", "validate"), ("validate", "train"), ("validate", "evaluate"), ("train", "evaluate"),
            ("evaluate", "promote")}
    assert commands["local"] == commands["docker"] == commands["kubernetes"]
    assert commands["local"]["train"] == ["train", "--config", "{{ params.config }}", "--run-date", "{{ ds }}",
                                          "--run-id", "{{ run_id }}", "--dag-id", "{{ dag.dag_id }}", "--run-type",
                                          "{{ dag_run.run_type }}", "--dataset",
                                          '{{ ti.xcom_pull(task_ids="validate") }}']


def test_docker_runtime_uses_named_volumes_and_versioned_local_images(monkeypatch):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "docker").tasks}
    ingest, train = tasks["ingest"], tasks["train"]
    version = runtimes.VERSION
    assert ingest.image == f"localhost/chat-retrain-cpu:{version}" and train.image.endswith(f"-train:{version}")
    assert ingest.force_pull is False and ingest.working_dir == "/app"
    # the code is the image's: no bind mount of the checkout, only the data and runs volumes
    assert [(m["Target"], m["Source"], m["Type"]) for m in ingest.mounts] == [
        ("/app/data", "chat-retrain-data", "volume"), ("/app/runs", "chat-retrain-runs", "volume")]
    assert train.pool == "training" and train.device_requests is None  # gpus_per_node: 0 in configs/runtimes.yaml


def test_every_configured_image_is_tagged_with_the_package_version():
    settings = yaml.safe_load((REPO / "configs" / "runtimes.yaml").read_text())
    images = [settings[r][key] for r in ("docker", "kubernetes") for key in ("cpu_image", "train_image")]
    assert all(image.endswith(f":{runtimes.VERSION}") for image in images), images
    assert "latest" not in (REPO / "Makefile").read_text().split("images:")[1].split("\n\n")[0]


def test_container_env_reads_the_env_file_path_and_passes_named_variables(tmp_path):
    env_file = tmp_path / "stage.env"
    env_file.write_text("MLFLOW_TRACKING_URI=http://mlflow:5000\nAWS_SECRET_ACCESS_KEY=s3cr3t\n")
    config = runtimes.RuntimeConfig(runtime="docker", env_file=str(env_file), pass_env=["AWS_ENDPOINT_URL", "NOPE"])
    assert runtimes.container_env(config, {"AWS_ENDPOINT_URL": "http://s3:9000", "OTHER": "x"}) == {
        "AWS_ENDPOINT_URL": "http://s3:9000", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    missing = runtimes.RuntimeConfig(runtime="docker", env_file=str(tmp_path / "gone.env"))
    with pytest.raises(FileNotFoundError, match="gone.env is not an absolute path to an existing dotenv file"):
        runtimes.container_env(missing, {})


def test_container_credentials_stay_out_of_the_serialized_dag(monkeypatch, tmp_path):
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-store-me")
    dag = _dag(monkeypatch, "docker")
    assert dag.get_task("ingest")._private_environment["AWS_SECRET_ACCESS_KEY"] == "do-not-store-me"
    assert "do-not-store-me" not in json.dumps(DagSerialization.to_dict(dag))


def test_kubernetes_runtime_gpus_node_selectors_secrets_and_xcom(monkeypatch):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "kubernetes").tasks if t.task_id != "wait_for_partition"}
    train, ingest = tasks["train"], tasks["ingest"]
    assert train.container_resources.limits["nvidia.com/gpu"] == "8"
    assert ingest.container_resources.requests == {"cpu": "2", "memory": "8Gi"}  # schedulable, not best-effort
    assert train.node_selector == {"role": "gpu"} and ingest.node_selector == {}
    assert train.cmds[:3] == ["torchrun", "--nproc_per_node=8", "--nnodes=1"] and ingest.cmds == ["python", "-m",
                                                                                                   "pipeline"]
    assert [e.secret_ref.name for e in ingest.env_from] == ["chat-retrain-env", "chat-retrain-mlflow-auth"]
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
    assert tasks["evaluate"].arguments[-1] == "{{ ti.xcom_pull(task_ids=\"train\")[0] | replace('$', '$$') }}"  # one URI per node


def _context(try_number: int = 1) -> dict:
    ti = SimpleNamespace(try_number=try_number, dag_id="nightly_chat_retrain", task_id="train", map_index=-1,
                         run_id="scheduled__2026-11-22T02:00:00+00:00", xcom_pull=lambda task_ids: "data/x#sha256=0")
    return {"ts_nodash": "20261122T020000", "ds": "2026-11-22", "run_id": ti.run_id, "ti": ti,
            "params": {"config": "configs/embedded.yaml"}, "dag": SimpleNamespace(dag_id=ti.dag_id),
            "dag_run": SimpleNamespace(run_type="scheduled"), "task_instance": ti, "logical_date": LOGICAL_DATE}


def _rendered_pod(task, directory: Path):
    """The V1Pod KubernetesPodOperator would submit: its templates rendered, then its own builder."""
    return built(task, _context(), directory)


def test_kubernetes_pods_as_submitted_resources_shm_grace_and_non_root(monkeypatch, tmp_path):
    tasks = {t.task_id: t for t in _dag(monkeypatch, "kubernetes").tasks}
    train, ingest = _rendered_pod(tasks["train"], tmp_path), _rendered_pod(tasks["ingest"], tmp_path)
    train_box, ingest_box = ({c.name: c for c in pod.spec.containers}["base"] for pod in (train, ingest))
    assert train_box.resources.limits == train_box.resources.requests == {"cpu": "32", "memory": "240Gi",
                                                                          "nvidia.com/gpu": "8"}
    assert ingest_box.resources.requests == {"cpu": "2", "memory": "8Gi"}
    shm = {v.name: v for v in train.spec.volumes}["shm"].empty_dir
    assert (shm.medium, shm.size_limit) == ("Memory", "64Gi")  # configs/runtimes.yaml
    assert {m.mount_path: m.name for m in train_box.volume_mounts}["/dev/shm"] == "shm"
    assert "shm" not in {v.name for v in ingest.spec.volumes}
    assert [(t.key, t.operator, t.effect) for t in train.spec.tolerations] == [("nvidia.com/gpu", "Exists",
                                                                                "NoSchedule")]
    assert not ingest.spec.tolerations  # the CPU stages stay off the GPU nodes
    assert train.metadata.labels["mlflow-client"] == ingest.metadata.labels["mlflow-client"] == "true"
    assert train.spec.termination_grace_period_seconds == 900  # SIGTERM: time to save and mirror a checkpoint
    assert (tasks["train"].startup_timeout_seconds, tasks["ingest"].startup_timeout_seconds) == (1800, 600)
    for pod, box in ((train, train_box), (ingest, ingest_box)):
        context = pod.spec.security_context
        assert (context.run_as_non_root, context.run_as_user, context.fs_group) == (True, 10001, 10001)
        assert box.security_context.allow_privilege_escalation is False
        assert box.security_context.capabilities.drop == ["ALL"]
    assert train.spec.node_selector == {"role": "gpu"} and train_box.image.endswith(f"chat-retrain-train:{runtimes.VERSION}")
    assert train_box.args[train_box.args.index("--dataset") + 1] == "data/x#sha256=0"


def _rendered_job(train, try_number: int, directory: Path):
    """The V1Job the operator would submit for this attempt: its templates rendered, then its own builder."""
    return built(train, _context(try_number), directory)


def test_multi_node_job_names_line_up_and_a_retry_gets_a_fresh_job(monkeypatch, tmp_path):
    train = {t.task_id: t for t in _dag(monkeypatch, "kubernetes", tmp_path, train_nodes=2, gpus_per_node=8).tasks}[
        "train"]
    first, retry = _rendered_job(train, 1, tmp_path), _rendered_job(train, 2, tmp_path)
    assert first.metadata.name == "job-train-20261122t020000-1"  # the operator prefixes "job-" to the name we give
    assert retry.metadata.name == "job-train-20261122t020000-2"  # no 409 AlreadyExists on the retry
    spec = first.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism, spec.backoff_limit) == ("Indexed", 2, 2, 0)
    assert spec.ttl_seconds_after_finished == 86400
    pod = spec.template.spec
    (container,) = [c for c in pod.containers if c.name == "base"]
    env = {e.name: e for e in container.env}
    # Kubernetes names pod i of an indexed Job <job>-<i> and labels it with the Job's name; the pod reads the label
    assert env["TRAIN_JOB_NAME"].value_from.field_ref.field_path == "metadata.labels['batch.kubernetes.io/job-name']"
    labels_on_pod = {"batch.kubernetes.io/job-name": first.metadata.name}  # what the Job controller sets
    job_name = labels_on_pod[env["TRAIN_JOB_NAME"].value_from.field_ref.field_path.split("'")[1]]
    (endpoint,) = [c.replace("$(TRAIN_JOB_NAME)", job_name).split("=", 1)[1] for c in container.command
                   if c.startswith("--rdzv_endpoint=")]
    pod_zero = f"{first.metadata.name}-0.{pod.subdomain}"  # hostname.subdomain of completion index 0
    assert endpoint == f"{pod_zero}:29500" and pod.subdomain == "chat-retrain-train"
    assert spec.template.metadata.labels["app"] == "chat-retrain-train"  # the headless service selects them
    assert spec.template.metadata.labels["mlflow-client"] == "true"  # and the MLflow NetworkPolicy admits them
    assert container.resources.limits["nvidia.com/gpu"] == "8"
    assert container.args[container.args.index("--run-date") + 1] == "2026-11-22"


def test_launcher_for_one_device_is_plain_python():
    assert runtimes.launcher_args(runtimes.RuntimeConfig(gpus_per_node=1)) == ["python"]
    assert runtimes.launcher_args(runtimes.RuntimeConfig(gpus_per_node=2))[:2] == ["torchrun", "--nproc_per_node=2"]


def test_bad_runtime_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="runtime 'swarm'"):
        runtimes.load({"CHAT_RETRAIN_RUNTIME": "swarm", "CHAT_RETRAIN_RUNTIME_CONFIG": str(tmp_path / "none")})
    (tmp_path / "r.yaml").write_text("docker: {gpu: 1}\n")
    with pytest.raises(ValueError, match=r"r.yaml:docker: unknown key\(s\) \['gpu'\]"):
        runtimes.load({"CHAT_RETRAIN_RUNTIME": "docker", "CHAT_RETRAIN_RUNTIME_CONFIG": str(tmp_path / "r.yaml")})


LOGICAL_DATE = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)
EXIT_GARBAGE = """import atexit, sys
atexit.register(lambda: (print("garbage printed at exit"), print("ResourceWarning: at exit", file=sys.stderr)))
"""


def _run_local_ingest(monkeypatch, config: Path):
    """The DAG's real `ingest` task (BashOperator, local runtime) run by Airflow: dag.test on that task alone."""
    only_ingest = _dag(monkeypatch, "local").partial_subset(task_ids=["ingest"], include_downstream=False,
                                                            include_upstream=False)
    task = only_ingest.task_dict["ingest"]
    task.retries, task.on_failure_callback = 0, None  # a failure is final at once; no MLflow failure record here
    run = only_ingest.test(logical_date=LOGICAL_DATE, run_conf={"config": str(config)})
    (instance,) = run.get_task_instances()
    return instance


@pytest.mark.timeout(300)
def test_local_task_pushes_its_xcom_file_not_what_the_interpreter_prints_at_exit(airflow_db, make_config, tmp_path,
                                                                                monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(EXIT_GARBAGE)  # every python the task starts prints after the stage
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the wrapper's temp file lives: it must be gone after
    instance = _run_local_ingest(monkeypatch, make_config())
    assert instance.state == "success"
    assert instance.xcom_pull(task_ids="ingest") == str(tmp_path / "data" / "conversations" / "dt=2026-11-22")
    assert not list(tmp_path.glob("pipeline-xcom.*"))


@pytest.mark.timeout(300)
def test_local_task_of_a_failing_stage_fails_and_pushes_no_xcom(airflow_db, make_config, monkeypatch):
    instance = _run_local_ingest(monkeypatch, make_config(ingest={"no_such_setting": 1}))  # exit 2: config error
    assert instance.state == "failed"
    assert instance.xcom_pull(task_ids="ingest") is None


def test_local_wrapper_keeps_the_exit_code_and_fails_without_a_written_file(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    failed = subprocess.run(["bash", "-c", runtimes.with_xcom_file("sh -c 'echo data/x; exit 3'")], env=env,
                            capture_output=True, text=True)
    assert failed.returncode == 3 and failed.stdout == "data/x\n"  # no URI line after a failed stage
    silent = subprocess.run(["bash", "-c", runtimes.with_xcom_file("echo data/looks-like-a-uri")], env=env,
                            capture_output=True, text=True)
    assert silent.returncode == 1 and "wrote no output URI to PIPELINE_XCOM_FILE" in silent.stderr
    assert not list(tmp_path.glob("pipeline-xcom.*"))


def test_docker_task_decodes_the_file_the_stage_wrote(monkeypatch, tmp_path):
    from pipeline import cli

    task = copy.deepcopy(_dag(monkeypatch, "docker").task_dict["evaluate"])  # as partial_subset / dag.test copy it
    assert task.retrieve_output and task.environment["PIPELINE_XCOM_FILE"] == task.retrieve_output_path
    written = tmp_path / Path(task.retrieve_output_path).name
    monkeypatch.setenv("PIPELINE_XCOM_FILE", str(written))
    cli._write_xcom("runs/manual__2026-11-22/evaluate")

    def get_archive(container, path):
        """The Docker API's reply to `docker cp` out of a container: a tar stream of the one file, and its stat.
        (No Docker engine on this tier; tests/containers runs DockerOperator against podman's real API.)"""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(written, arcname=Path(path).name)
        return [archive.getvalue()], {"name": Path(path).name, "size": written.stat().st_size}

    task.__dict__["hook"] = SimpleNamespace(api_client=SimpleNamespace(get_archive=get_archive))  # a cached property
    value = task._copy_from_docker("container-id", task.retrieve_output_path)  # DockerOperator's own decoding
    assert value == "runs/manual__2026-11-22/evaluate"
    task._post_execute_hook({"ti": task}, value)
    with pytest.raises(ValueError, match="task evaluate: the stage exited 0 but its PIPELINE_XCOM_FILE held no"):
        task._post_execute_hook({"ti": task}, None)  # what DockerOperator returns when the file is missing


def test_a_stage_that_skips_skips_its_task_in_every_runtime(monkeypatch):
    from pipeline.process import outcomes

    for runtime in runtimes.RUNTIMES:
        stages = [t for t in _dag(monkeypatch, runtime).tasks if t.task_id != "wait_for_partition"]
        codes = [t.skip_on_exit_code for t in stages]  # an int or a list of them, as each operator stores it
        assert all(c == outcomes.SKIPPED_EXIT_CODE or list(c) == [outcomes.SKIPPED_EXIT_CODE] for c in codes), runtime
