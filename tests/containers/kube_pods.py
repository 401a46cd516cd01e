"""The pods KubernetesPodOperator / KubernetesJobOperator would submit, built by the providers' own code, run on
this machine with `podman kube play` instead of a cluster.

What stands in for the cluster, and nothing else changes in the objects:
- hostNetwork: true: no cluster network or Service DNS here; the MLflow server and S3 listen on 127.0.0.1.
- the claims are podman named volumes of the same name (podman maps persistentVolumeClaim that way), the secret a
  podman secret of the same name (a JSON map of base64 values, the form podman 4.3 reads for envFrom).
- the XCom is read the way the operator reads it: an exec into the `airflow-xcom-sidecar` container.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import yaml
from podman_engine import podman

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
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

    task = copy.deepcopy(task)
    (directory / "kubeconfig").write_text(KUBECONFIG)
    task.config_file = str(directory / "kubeconfig")  # a cluster that is never contacted: the builders only label
    task.render_template_fields(context)
    built = task.build_job_request_obj(context) if hasattr(task, "build_job_request_obj") else \
        task.build_pod_request_obj(context)
    return ApiClient().sanitize_for_serialization(built)


def create_secret(name: str, values: dict[str, str]) -> None:
    payload = json.dumps({key: base64.b64encode(value.encode()).decode() for key, value in values.items()})
    podman("secret", "create", name, "-", stdin=payload.encode())


def play(pod: dict, directory: Path, timeout_s: int = 900) -> tuple[int, str, str | None]:
    """Run one pod to the end of its `base` container: (exit code, its log, the XCom the sidecar holds)."""
    pod = copy.deepcopy(pod)
    pod["spec"]["hostNetwork"] = True
    name = pod["metadata"]["name"]
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pod))
    try:
        podman("kube", "play", str(path))
        code = int(podman("wait", f"{name}-base", timeout=timeout_s).stdout.decode().strip())
        log = podman("logs", f"{name}-base").stdout.decode() + podman("logs", f"{name}-base").stderr.decode()
        xcom = podman("exec", f"{name}-airflow-xcom-sidecar", "cat", "/airflow/xcom/return.json",
                      check=False).stdout.decode() or None
        return code, log, xcom
    finally:
        podman("pod", "rm", "--force", name, check=False)
