"""The pods KubernetesPodOperator / KubernetesJobOperator would submit, built by the providers' own code, run on
this machine with `podman kube play` instead of a cluster.

What stands in for the cluster, and nothing else changes in the objects:
- hostNetwork: true: no cluster network or Service DNS here; the MLflow server and S3 listen on 127.0.0.1.
- the claims are podman named volumes of the same name (podman maps persistentVolumeClaim that way), the secret a
  podman secret of the same name (a JSON map of base64 values, the form podman 4.3 reads for envFrom).
- the XCom is read the way the operator reads it: an exec into the `airflow-xcom-sidecar` container.
- an indexed Job becomes its pods as the Job controller makes them (job_pods), and `$(VAR)` in a container's
  command and args is expanded as the kubelet does (podman 4.3 does not); the headless Service's DNS record of
  pod 0 is a line in /etc/hosts, which podman copies into the pods.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import yaml
from kube_objects import built
from podman_engine import podman

DAG_RUN_ID = "scheduled__2026-11-22T02:00:00+00:00"


def run_context(xcoms: dict, config: str, try_number: int = 1) -> dict:
    """The template context of one task instance of the scheduled run of 2026-11-22 (its XComs so far)."""
    ti = SimpleNamespace(try_number=try_number, dag_id="nightly_chat_retrain", task_id="?", map_index=-1,
                         run_id=DAG_RUN_ID, xcom_pull=lambda task_ids: xcoms[task_ids])
    return {"ts_nodash": "20261122T020000", "ds": "2026-11-22", "run_id": DAG_RUN_ID, "ti": ti,
            "task_instance": ti, "dag": SimpleNamespace(dag_id=ti.dag_id),
            "dag_run": SimpleNamespace(run_type="scheduled"),
            "params": {"config": config, "allow_backfill_promotion": False, "allow_older_data": False}}


def submitted(task, context: dict, directory: Path) -> dict:
    """The pod (or Job) the operator would submit for this context, as the YAML the API server would get."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(built(task, context, directory))


def create_secret(name: str, values: dict[str, str]) -> None:
    payload = json.dumps({key: base64.b64encode(value.encode()).decode() for key, value in values.items()})
    podman("secret", "create", name, "-", stdin=payload.encode())


def play(pod: dict, directory: Path, timeout_s: int = 900) -> tuple[int, str, str | None]:
    """Run one pod to the end of its `base` container: (exit code, its log, the XCom the sidecar holds)."""
    return play_together([pod], directory, timeout_s)[0]


def play_together(pods: list[dict], directory: Path, timeout_s: int = 900) -> list[tuple[int, str, str | None]]:
    """Start all pods, then wait for each: (exit code, log, XCom) per pod, in order."""
    try:
        start(pods, directory)
        return collect(pods, timeout_s)
    finally:
        remove(pods)


def start(pods: list[dict], directory: Path) -> None:
    for pod in pods:
        pod = copy.deepcopy(pod)
        pod["spec"]["hostNetwork"] = True
        path = directory / f"{pod['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(pod))
        podman("kube", "play", str(path))


def collect(pods: list[dict], timeout_s: int = 900) -> list[tuple[int, str, str | None]]:
    results = []
    for name in (pod["metadata"]["name"] for pod in pods):
        code = int(podman("wait", f"{name}-base", timeout=timeout_s).stdout.decode().strip())
        logs = podman("logs", f"{name}-base")
        xcom = podman("exec", f"{name}-airflow-xcom-sidecar", "cat", "/airflow/xcom/return.json",
                      check=False).stdout.decode() or None
        results.append((code, logs.stdout.decode() + logs.stderr.decode(), xcom))
    return results


def remove(pods: list[dict]) -> None:
    for pod in pods:
        podman("pod", "rm", "--force", pod["metadata"]["name"], check=False)


INDEX = "batch.kubernetes.io/job-completion-index"


def job_pods(job: dict) -> list[dict]:
    """The pods the Job controller creates for an indexed Job: pod i is <job>-<i>, labelled with the Job's name and
    annotated with its completion index, which JOB_COMPLETION_INDEX reads through the downward API."""
    name, template = job["metadata"]["name"], job["spec"]["template"]
    pods = []
    for index in range(job["spec"]["completions"]):
        metadata = copy.deepcopy(template.get("metadata") or {})
        metadata.update(name=f"{name}-{index}")
        metadata.setdefault("labels", {}).update({"batch.kubernetes.io/job-name": name, "job-name": name,
                                                  INDEX: str(index)})
        metadata.setdefault("annotations", {})[INDEX] = str(index)
        spec = copy.deepcopy(template["spec"])
        for container in spec["containers"]:
            container.setdefault("env", []).append(
                {"name": "JOB_COMPLETION_INDEX",
                 "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}}})
        pods.append(kubelet_expanded({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}))
    return pods


def kubelet_expanded(pod: dict) -> dict:
    """$(NAME) in command/args replaced by the container's env value (plain or a label/annotation fieldRef)."""
    pod = copy.deepcopy(pod)
    for container in pod["spec"]["containers"]:
        env = {}
        for var in container.get("env") or []:
            path = ((var.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
            found = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if "value" in var:
                env[var["name"]] = var["value"]
            elif found:
                env[var["name"]] = pod["metadata"][found.group(1)][found.group(2)]
        for key in ("command", "args"):
            container[key] = [re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m.group(1), m.group(0)), part)
                              for part in container.get(key) or []]
    return pod


@contextmanager
def host_records(records: dict[str, str]):
    """name -> address records while the block runs, as the cluster's DNS has them (each pod's own hostname, the
    headless Service's name of pod 0); podman copies /etc/hosts into host-network pods. Each pod needs an address
    of its own: torchrun tells nodes apart by FQDN and pid, and every container's torchrun is pid 1."""
    hosts = Path("/etc/hosts")
    original = hosts.read_text()
    hosts.write_text(original.rstrip("\n") + "".join(f"\n{ip} {name}" for name, ip in records.items()) + "\n")
    try:
        yield
    finally:
        hosts.write_text(original)
