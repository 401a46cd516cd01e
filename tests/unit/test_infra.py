"""Infrastructure as code, checked without a cloud: every Terraform file parses (python-hcl2), holds the pieces
the kubernetes runtime relies on, documents its variables and outputs and justifies each checkov skip; the
Dockerfiles pass hadolint. (checkov itself runs in `make lint-infra`, from its own venv.)"""

import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml
from paths import REPO

TERRAFORM = REPO / "infra" / "terraform"


def _plain(value):
    """python-hcl2 8 keeps HCL's quotes on names and strings ('"this"'); tests compare plain values."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k not in ("__comments__", "__is_block__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@pytest.fixture(scope="module")
def terraform() -> dict:
    merged: dict = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with open(path) as handle:
            for block, items in _plain(hcl2.load(handle)).items():
                merged.setdefault(block, []).extend(items)
    return merged


def _local(terraform, name: str):
    (value,) = [item[name] for item in terraform["locals"] if name in item]
    return value


def _resources(terraform, kind: str) -> dict:
    return {name: body for item in terraform.get("resource", []) for k, named in item.items() if k == kind
            for name, body in named.items()}


def test_buckets_encrypted_versioned_private(terraform):
    for kind in ("aws_s3_bucket_versioning", "aws_s3_bucket_server_side_encryption_configuration",
                 "aws_s3_bucket_public_access_block", "aws_s3_bucket_lifecycle_configuration"):
        assert set(_resources(terraform, kind)) == {"this", "logs"}, kind
    blocks = _resources(terraform, "aws_s3_bucket_public_access_block")["this"]
    assert all(blocks[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                           "restrict_public_buckets"))


def test_cluster_gpu_nodes_database_and_service_account_roles(terraform):
    cluster = _resources(terraform, "aws_eks_cluster")["this"]
    assert cluster["vpc_config"][0]["endpoint_public_access"] is False
    gpu = _resources(terraform, "aws_eks_node_group")["gpu"]
    assert "NVIDIA" in gpu["ami_type"] and gpu["labels"] == {"role": "gpu"}
    assert gpu["taint"][0]["key"] == "nvidia.com/gpu"
    database = _resources(terraform, "aws_db_instance")["metadata"]
    assert database["engine"] == "postgres" and database["storage_encrypted"] is True
    assert database["publicly_accessible"] is False and database["manage_master_user_password"] is True
    roles = _resources(terraform, "aws_iam_role")
    assert {"pipeline", "mlflow", "efs_csi"} <= set(roles)
    assert "password" not in database  # RDS keeps it in Secrets Manager


def test_what_the_kubernetes_runtime_expects_exists(terraform):
    runtime = yaml.safe_load((REPO / "configs" / "runtimes.yaml").read_text())["kubernetes"]
    accounts = {b["metadata"][0]["name"] for b in _resources(terraform, "kubernetes_service_account_v1").values()}
    secrets = {b["metadata"][0]["name"] for b in _resources(terraform, "kubernetes_secret_v1").values()}
    secrets |= set(_local(terraform, "synced"))  # ExternalSecrets: synced from Secrets Manager (mlflow.tf)
    claims = {b["metadata"][0]["name"] for b in _resources(terraform, "kubernetes_persistent_volume_claim_v1").values()}
    services = {b["metadata"][0]["name"] for b in _resources(terraform, "kubernetes_service_v1").values()}
    assert runtime["service_account"] in accounts and set(runtime["secrets"]) <= secrets
    assert {runtime["data_volume_claim"], runtime["runs_volume_claim"]} <= claims
    assert "chat-retrain-train" in services  # rendezvous service
    gpu_nodes = _resources(terraform, "aws_eks_node_group")["gpu"]
    assert runtime["train_node_selector"] == gpu_nodes["labels"]
    (taint,) = gpu_nodes["taint"]  # training pods must tolerate it, or they are never placed
    assert {(t["key"], t["effect"]) for t in runtime["train_tolerations"]} == {
        (taint["key"], taint["effect"].title().replace("_", ""))}
    assert _resources(terraform, "kubernetes_deployment_v1")["mlflow"]


def test_variables_and_outputs_documented_and_used(terraform):
    variables = {name: body for item in terraform["variable"] for name, body in item.items()}
    outputs = {name: body for item in terraform["output"] for name, body in item.items()}
    assert all(body.get("description") for body in [*variables.values(), *outputs.values()])
    text = "".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    assert set(re.findall(r"\bvar\.(\w+)", text)) == set(variables)


def test_every_checkov_skip_is_justified():
    skips = [line for p in TERRAFORM.glob("*.tf") for line in p.read_text().splitlines() if "checkov:skip" in line]
    assert skips and all(re.search(r"checkov:skip=CKV\w*_\d+: \S.{15,}", line) for line in skips), skips


@pytest.mark.parametrize("dockerfile", sorted(p.parent.name for p in (REPO / "containers").glob("*/Dockerfile")))
def test_dockerfiles_pass_hadolint(dockerfile):
    binary = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([binary, "--no-color", str(REPO / "containers" / dockerfile / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_nodes_can_start_and_be_used(terraform):
    """Scale-from-zero needs the cluster autoscaler; nvidia.com/gpu exists only with the device plugin, which must
    itself tolerate the GPU taint; both charts pinned."""
    releases = _resources(terraform, "helm_release")
    assert {"nvidia_device_plugin", "cluster_autoscaler", "external_secrets"} <= set(releases)
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", r["version"]) for r in releases.values())
    plugin = releases["nvidia_device_plugin"]["values"][0]
    assert 'key = "nvidia.com/gpu"' in plugin and 'effect = "NoSchedule"' in plugin  # placed on the tainted nodes
    gpu = _resources(terraform, "aws_eks_node_group")["gpu"]
    assert gpu["scaling_config"][0]["min_size"] == 0


def test_nodes_require_imdsv2_with_hop_limit_one(terraform):
    template = _resources(terraform, "aws_launch_template")["nodes"]
    (options,) = template["metadata_options"]
    assert (options["http_tokens"], options["http_put_response_hop_limit"]) == ("required", 1)
    for group in _resources(terraform, "aws_eks_node_group").values():
        (launch,) = group["launch_template"]
        assert "aws_launch_template.nodes" in launch["id"]


def test_pipeline_pods_cannot_delete_raw_data(terraform):
    documents = {name: body for item in terraform["data"] for kind, named in item.items()
                 if kind == "aws_iam_policy_document" for name, body in named.items()}
    deletes = [s["resources"] for s in documents["pipeline"]["statement"] if "s3:DeleteObject" in s["actions"]]
    assert deletes == [['${aws_s3_bucket.this["data"].arn}/checkpoints/*']]  # the checkpoint mirror's rotation
    attached = _resources(terraform, "aws_iam_role_policy_attachment")["pipeline"]["policy_arn"]
    assert attached == "${aws_iam_policy.pipeline.arn}"


def test_registry_behind_auth_network_policy_and_synced_credentials(terraform):
    deployment = _resources(terraform, "kubernetes_deployment_v1")["mlflow"]
    (container,) = deployment["spec"][0]["template"][0]["spec"][0]["container"]
    assert container["args"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    policy = _resources(terraform, "kubernetes_network_policy_v1")["mlflow"]["spec"][0]
    assert policy["pod_selector"][0]["match_labels"] == {"app": "mlflow"}
    clients = [f["pod_selector"][0]["match_labels"] for f in policy["ingress"][0]["from"] if "pod_selector" in f]
    assert clients == [{"mlflow-client": "true"}]
    # no password read through Terraform (it would sit in the state and go stale on rotation)
    assert not [d for d in terraform["data"] if "aws_secretsmanager_secret_version" in d]
    assert set(_local(terraform, "synced")) == {"mlflow-db", "chat-retrain-mlflow-auth"}
    assert _resources(terraform, "kubernetes_job_v1")["mlflow_db_init"]["wait_for_completion"] is True
    cni = _resources(terraform, "aws_eks_addon")["vpc_cni"]
    assert "enableNetworkPolicy" in cni["configuration_values"]  # otherwise NetworkPolicy is ignored


def test_state_is_remote_encrypted_and_locked(terraform):
    (backend,) = [t["backend"] for t in terraform["terraform"] if "backend" in t]
    (s3,) = [b["s3"] for b in backend]
    assert s3["encrypt"] is True and s3["use_lockfile"] is True
