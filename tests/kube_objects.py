"""The objects the Kubernetes operators would submit, built by the providers' own builders with a kubeconfig for a
cluster that is never contacted (the builders make an API client to label the pod, but send nothing)."""

from __future__ import annotations

import copy
from pathlib import Path

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def built(task, context: dict, directory: Path):
    """The V1Pod (KubernetesPodOperator) or V1Job (KubernetesJobOperator) for this context, templates rendered."""
    task = copy.deepcopy(task)
    (directory / "kubeconfig").write_text(KUBECONFIG)
    task.config_file = str(directory / "kubeconfig")
    task.render_template_fields(context)
    if hasattr(task, "build_job_request_obj"):
        return task.build_job_request_obj(context)
    return task.build_pod_request_obj(context)
