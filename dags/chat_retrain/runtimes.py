"""Where a stage runs: the same stage arguments as a local process, a Docker container or a Kubernetes pod/job.

The runtime is chosen when the DAG is parsed, because it decides the operator class:

    CHAT_RETRAIN_RUNTIME=local|docker|kubernetes        (default local)
    CHAT_RETRAIN_RUNTIME_CONFIG=configs/runtimes.yaml   (images, mounts, namespace, GPUs, node selectors, secrets)

Every runtime runs `python -m pipeline <stage> <args>` with identical <args> (the image's entrypoint is
`python -m pipeline`). A stage's output URI, which becomes the task's XCom, travels in a file of its own, never in
its log: the stage writes it as JSON to $PIPELINE_XCOM_FILE (pipeline/cli.py), and each runtime reads that file:
    local       a bash wrapper gives the stage a fresh temp file and prints the file's JSON line after the stage
                has exited, as the task's last output line; BashOperator decodes it (output_processor=json.loads)
    docker      DockerOperator copies the file out of the stopped container (retrieve_output) and decodes it as JSON
    kubernetes  the XCom sidecar reads /airflow/xcom/return.json
So a warning printed at interpreter exit can never become the next task's --dataset; a stage that exits 0 without
writing the file fails its task (local, docker) instead of pushing an empty XCom. Credentials never appear here:
Docker gets the host's environment file, Kubernetes pods get Kubernetes secrets and a service account (IAM role
for S3).
Stdlib + Airflow only: the scheduler parses this often and may not have the pipeline package installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import yaml

RUNTIMES = ("local", "docker", "kubernetes")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_ROOT = "/app"  # the images' WORKDIR; relative paths in configs resolve there
XCOM_FILE = "/airflow/xcom/return.json"  # where KubernetesPodOperator's sidecar reads a pod's XCom
DOCKER_XCOM_FILE = "/tmp/pipeline-xcom.json"  # inside the container: its own /tmp, fresh per container
SKIPPED_EXIT_CODE = 99  # a stage that skips (pipeline/process/outcomes.py): the task and those after it are skipped
# DockerOperator decodes retrieve_output_path with `pickling_library.load` (pickle by default, no fallback):
# the stage writes JSON, the format the Kubernetes sidecar needs too.
JSON_FILE = SimpleNamespace(load=json.load)
TRAIN_SERVICE = "chat-retrain-train"  # headless service over multi-node training pods (infra/terraform)
MLFLOW_CLIENT_LABEL = "mlflow-client"  # infra/terraform/mlflow.tf: the NetworkPolicy in front of the MLflow server
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"  # set by Kubernetes (1.27+) on every pod of a Job
# What a stage needs to reach the tracking server and S3; the stack of `make up` sets these for its scheduler.
SERVICE_ENV = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_DEFAULT_REGION")
# Images are tagged with the package's version (make images), never :latest: a run names the code it ran.
VERSION = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


@dataclass(frozen=True)
class RuntimeConfig:
    runtime: str = "local"
    cpu_image: str = f"localhost/chat-retrain-cpu:{VERSION}"  # ingest / validate / evaluate / promote
    train_image: str = f"localhost/chat-retrain-train:{VERSION}"  # CUDA + DeepSpeed
    # docker: the code is the image's; data/ and runs/ are named volumes at /app/data and /app/runs
    docker_url: str = "unix:///var/run/docker.sock"  # or podman's: podman system service unix:///run/podman.sock
    docker_api_version: str = "auto"
    data_volume: str = "chat-retrain-data"
    runs_volume: str = "chat-retrain-runs"
    network_mode: str | None = None  # "host": containers reach services on the host's 127.0.0.1 (make up)
    env_file: str | None = None  # dotenv file on the worker (absolute path), read when the task runs
    pass_env: list[str] = field(default_factory=lambda: list(SERVICE_ENV))  # copied from the worker's environment
    # kubernetes
    namespace: str = "chat-retrain"
    service_account: str = "chat-retrain"  # bound to an IAM role (IRSA): S3 access without keys
    secrets: list[str] = field(default_factory=lambda: ["chat-retrain-env"])  # mounted as environment
    data_volume_claim: str = "chat-retrain-data"  # ReadWriteMany claims at /app/data and /app/runs, shared by
    runs_volume_claim: str = "chat-retrain-runs"  # the stage pods (the docker runtime's two named volumes)
    cpu_node_selector: dict = field(default_factory=dict)
    train_node_selector: dict = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    # The GPU node group's taint (infra/terraform eks.tf): without the toleration no training pod is ever placed.
    train_tolerations: list[dict] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    train_nodes: int = 1  # > 1: an indexed Kubernetes Job, one pod per node, torchrun rendezvous on pod 0
    gpus_per_node: int = 1
    train_cpu: str = "8"
    train_memory: str = "64Gi"
    train_shm: str = "16Gi"  # /dev/shm (memory-backed) for NCCL and DataLoader workers; the default 64 MB is not
    stage_cpu: str = "2"  # requests (= limits) of the CPU stages, so the scheduler places them
    stage_memory: str = "8Gi"
    startup_timeout_s: int = 600  # a pod's wait to start (image pull, node scale-up): the operator's 120 s is short
    train_startup_timeout_s: int = 1800  # a GPU node from zero plus a CUDA image pull
    train_grace_s: int = 900  # SIGTERM -> SIGKILL: time for train to save and mirror its checkpoint
    run_as_user: int = 10001  # the images' non-root user
    rendezvous_port: int = 29500

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime {self.runtime!r}: expected one of {RUNTIMES}")
        if self.train_nodes < 1 or self.gpus_per_node < 0:
            raise ValueError("train_nodes must be >= 1 and gpus_per_node >= 0")


def load(environ=os.environ) -> RuntimeConfig:
    runtime = environ.get("CHAT_RETRAIN_RUNTIME", "local")
    path = Path(environ.get("CHAT_RETRAIN_RUNTIME_CONFIG", PROJECT_ROOT / "configs" / "runtimes.yaml"))
    settings = (yaml.safe_load(path.read_text()) or {}).get(runtime, {}) if path.is_file() else {}
    unknown = set(settings) - {f.name for f in fields(RuntimeConfig)}
    if unknown:
        raise ValueError(f"{path}:{runtime}: unknown key(s) {sorted(unknown)}")
    return RuntimeConfig(runtime=runtime, **settings)


def stage_args(stage: str, *extra: str, **inputs: str) -> list[str]:
    """The arguments after `python -m pipeline`: identical in every runtime. Jinja-templated by Airflow."""
    args = [stage, "--config", "{{ params.config }}", "--run-date", "{{ ds }}", "--run-id", "{{ run_id }}",
            "--dag-id", "{{ dag.dag_id }}", "--run-type", "{{ dag_run.run_type }}"]
    for name, uri in inputs.items():
        args += [f"--{name}", uri]
    return [*args, *extra]


def xcom(task_id: str, first: bool = False) -> str:
    """The upstream task's output URI, rendered at run time; first=True for a multi-node Job's list of URIs."""
    pull = 'ti.xcom_pull(task_ids="%s")' % task_id  # noqa: UP031 (braces would be Jinja's)
    return "{{ %s[0] }}" % pull if first else "{{ %s }}" % pull  # noqa: UP031


def launcher_args(config: RuntimeConfig) -> list[str]:
    """The training launcher: plain python on one device, torchrun over gpus_per_node x train_nodes otherwise.
    Multi-node: pods of an indexed Job; node rank = completion index, rendezvous at pod 0 via the headless service."""
    if config.train_nodes == 1 and config.gpus_per_node <= 1:
        return ["python"]
    args = ["torchrun", f"--nproc_per_node={max(config.gpus_per_node, 1)}", f"--nnodes={config.train_nodes}"]
    if config.train_nodes > 1:
        args += ["--node_rank=$(JOB_COMPLETION_INDEX)", "--rdzv_backend=c10d",
                 f"--rdzv_endpoint=$(TRAIN_JOB_NAME)-0.{TRAIN_SERVICE}:{config.rendezvous_port}",
                 "--rdzv_id=$(TRAIN_JOB_NAME)"]
    return args


def operator(task_id: str, args: list[str], config: RuntimeConfig, training: bool = False, **task_kwargs):
    """One stage as an Airflow operator of the configured runtime."""
    if config.runtime == "local":
        return _local(task_id, args, config, training, **task_kwargs)
    if config.runtime == "docker":
        return _docker(task_id, args, config, training, **task_kwargs)
    return _kubernetes(task_id, args, config, training, **task_kwargs)


def _local(task_id, args, config, training, **task_kwargs):
    from airflow.providers.standard.operators.bash import BashOperator

    launcher = launcher_args(config)
    launcher = [sys.executable] if launcher == ["python"] else launcher  # the worker's own interpreter
    command, env = shell_words([*launcher, "-m", "pipeline", *args])
    return BashOperator(task_id=task_id, bash_command=with_xcom_file(command), env=env, append_env=True,
                        cwd=str(PROJECT_ROOT), output_processor=json.loads, post_execute=require_output_uri,
                        skip_on_exit_code=SKIPPED_EXIT_CODE, **task_kwargs)


def shell_words(argv: list[str]) -> tuple[str, dict[str, str]]:
    """(bash words, environment) for argv, where no rendered value is ever parsed by bash. Airflow renders Jinja
    into the script text; a param, a run id or an upstream XCom holding a quote, `$()`, a backtick, `;` or a
    newline would then be shell code run with the worker's credentials. So each templated argument becomes a
    double-quoted reference "$PIPELINE_ARG_<n>" and its template goes to the task's `env`, which Airflow renders
    too: bash expands a variable into one word and never evaluates its content. Plain arguments are quoted."""
    words, env = [], {}
    for position, arg in enumerate(argv):
        if "{{" in arg or "{%" in arg:
            name = f"PIPELINE_ARG_{position}"
            env[name] = arg
            words.append(f'"${name}"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words), env


def with_xcom_file(command: str) -> str:
    """The local runtime's XCom channel: `command` gets a fresh temp file in PIPELINE_XCOM_FILE, and the file's one
    JSON line is printed only after the command (and so its interpreter's exit hooks) has ended: BashOperator pushes
    the last output line, so nothing the stage prints can take its place. The stage's exit code is kept; exit 0
    without a written file is a failure, named."""
    return "\n".join([
        'xcom_file="$(mktemp "${TMPDIR:-/tmp}/pipeline-xcom.XXXXXX")" || exit 1',
        'trap \'rm -f "$xcom_file"\' EXIT',
        f'PIPELINE_XCOM_FILE="$xcom_file" {command}',
        'status=$?',
        'if [ "$status" -ne 0 ]; then exit "$status"; fi',
        'if [ ! -s "$xcom_file" ]; then',
        '  echo "the stage exited 0 but wrote no output URI to PIPELINE_XCOM_FILE ($xcom_file)" >&2; exit 1',
        'fi',
        'cat "$xcom_file"',
    ])


def require_output_uri(context, result) -> None:
    """post_execute of local and docker tasks: a task succeeds only with an output URI to hand on. DockerOperator
    returns None when the container left no file; downstream would otherwise run with `--dataset None`."""
    if not isinstance(result, str) or not result.strip():
        raise ValueError(f"task {context['ti'].task_id}: the stage exited 0 but its PIPELINE_XCOM_FILE held no "
                         f"output URI (got {result!r}); it must write one JSON string")


def _docker(task_id, args, config, training, **task_kwargs):
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    devices = [DeviceRequest(count=config.gpus_per_node, capabilities=[["gpu"]])] if training and \
        config.gpus_per_node else None
    launcher = launcher_args(config) if training else ["python"]
    # Named volumes, not the checkout: the code is the image's, and an empty volume takes the owner of the image's
    # /app/data and /app/runs (uid 10001) when first mounted, so the non-root stages can write without chmod.
    mounts = [Mount(target=f"{CONTAINER_ROOT}/data", source=config.data_volume, type="volume"),
              Mount(target=f"{CONTAINER_ROOT}/runs", source=config.runs_volume, type="volume")]
    task = DockerOperator(
        task_id=task_id, image=config.train_image if training else config.cpu_image,
        entrypoint=[*launcher, "-m", "pipeline"], command=args, docker_url=config.docker_url,
        api_version=config.docker_api_version, mounts=mounts, working_dir=CONTAINER_ROOT,
        network_mode=config.network_mode, force_pull=False, mount_tmp_dir=False,
        auto_remove="success", device_requests=devices, shm_size=2 << 30 if training else None,
        # The XCom is the file the stage wrote, copied out of the exited container before it is removed.
        environment={"PIPELINE_XCOM_FILE": DOCKER_XCOM_FILE}, private_environment=container_env(config),
        retrieve_output=True, retrieve_output_path=DOCKER_XCOM_FILE, post_execute=require_output_uri,
        skip_on_exit_code=SKIPPED_EXIT_CODE, **task_kwargs)
    task.pickling_library = JSON_FILE  # no constructor argument for it
    return task


def container_env(config: RuntimeConfig, environ=os.environ) -> dict[str, str]:
    """The containers' credentials and service URLs: `pass_env` names copied from the worker's environment, then
    the dotenv `env_file`. Read in the worker, where Airflow parses the DAG file again to run a task, and handed to
    DockerOperator's private_environment: neither rendered in the UI nor stored with the serialized DAG. (Its
    `env_file` argument expects the file's *text*: a path given there is parsed as dotenv text and yields nothing.)"""
    env = {name: environ[name] for name in config.pass_env if name in environ}
    if config.env_file:
        from dotenv import dotenv_values  # the docker provider's own dependency

        path = Path(config.env_file)
        if not path.is_absolute() or not path.is_file():
            raise FileNotFoundError(f"runtimes docker.env_file: {path} is not an absolute path to an existing "
                                    "dotenv file (KEY=value lines)")
        env.update({key: value for key, value in dotenv_values(path).items() if value is not None})
    return env


def kubernetes_literal(arg: str) -> str:
    """A templated argument whose rendered value Kubernetes keeps as it is: the kubelet expands `$(NAME)` in a
    container's args from its environment (which holds the secrets), and `$$` stands for one `$`. No shell runs
    (exec form), so `$` is the only character to escape."""
    if "{{" not in arg:
        return arg
    return re.sub(r"\s*}}", " | replace('$', '$$') }}", arg)


def _kubernetes(task_id, args, config, training, **task_kwargs):
    from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    limits = {"cpu": config.train_cpu, "memory": config.train_memory} if training else \
        {"cpu": config.stage_cpu, "memory": config.stage_memory}
    if training and config.gpus_per_node:
        limits["nvidia.com/gpu"] = str(config.gpus_per_node)
    # data/ and runs/ on shared volumes, at the paths the configs use relative to /app
    claims = {"data": config.data_volume_claim, "runs": config.runs_volume_claim}
    volumes = [k8s.V1Volume(name=name, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
        claim_name=claim)) for name, claim in claims.items()]
    mounts = [k8s.V1VolumeMount(name=name, mount_path=f"{CONTAINER_ROOT}/{name}") for name in claims]
    if training:
        volumes.append(k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory",
                                                                                     size_limit=config.train_shm)))
        mounts.append(k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"))
    common = dict(
        task_id=task_id, namespace=config.namespace, skip_on_exit_code=SKIPPED_EXIT_CODE, image=config.train_image if training else config.cpu_image,
        cmds=[*(launcher_args(config) if training else ["python"]), "-m", "pipeline"],
        arguments=[kubernetes_literal(arg) for arg in args],
        service_account_name=config.service_account,
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name)) for name in config.secrets],
        env_vars=[k8s.V1EnvVar(name="PIPELINE_XCOM_FILE", value=XCOM_FILE)],
        volumes=volumes, volume_mounts=mounts,
        node_selector=config.train_node_selector if training else config.cpu_node_selector,
        tolerations=[k8s.V1Toleration(**t) for t in config.train_tolerations] if training else None,
        container_resources=k8s.V1ResourceRequirements(requests=limits, limits=limits),
        startup_timeout_seconds=config.train_startup_timeout_s if training else config.startup_timeout_s,
        termination_grace_period=config.train_grace_s if training else None,
        security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=config.run_as_user,
                                                  run_as_group=config.run_as_user, fs_group=config.run_as_user),
        container_security_context=k8s.V1SecurityContext(allow_privilege_escalation=False,
                                                         capabilities=k8s.V1Capabilities(drop=["ALL"])),
        labels={MLFLOW_CLIENT_LABEL: "true"},  # the MLflow server's NetworkPolicy admits only these pods
        get_logs=True, on_finish_action="delete_succeeded_pod", **task_kwargs)
    if training and config.train_nodes > 1:
        # Pod i of an indexed Job is <job>-<i>.<TRAIN_SERVICE> (headless service from Terraform): pod 0 hosts the
        # rendezvous. The Job's name is what Kubernetes put on the pod's job-name label (the operator prefixes
        # "job-" to `name`), read through the downward API, so the endpoint is pod 0's whatever the operator does.
        # One Job per attempt: a retry is a fresh Job (no 409 on the old name) and resumes from the checkpoint
        # mirror; finished Jobs go after a day. Every node reports the same run-scoped model URI; the XCom is
        # their list.
        common["env_vars"] += [k8s.V1EnvVar(name="TRAIN_JOB_NAME", value_from=k8s.V1EnvVarSource(
            field_ref=k8s.V1ObjectFieldSelector(field_path=f"metadata.labels['{JOB_NAME_LABEL}']")))]
        return KubernetesJobOperator(
            name="train-{{ ts_nodash | lower }}-{{ ti.try_number }}", random_name_suffix=False,
            completion_mode="Indexed", completions=config.train_nodes, parallelism=config.train_nodes,
            backoff_limit=0, ttl_seconds_after_finished=24 * 3600, wait_until_job_complete=True, do_xcom_push=True,
            full_pod_spec=k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base")],
                                                       subdomain=TRAIN_SERVICE)),
            **{**common, "labels": {**common["labels"], "app": TRAIN_SERVICE}})
    return KubernetesPodOperator(name=task_id, do_xcom_push=True, **common)
