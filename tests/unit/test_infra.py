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
    allows = [s for s in documents["pipeline"]["statement"] if s.get("effect", "Allow") == "Allow"]
    deletes = [s["resources"] for s in allows if "s3:DeleteObject" in s["actions"]]
    assert deletes == [['${aws_s3_bucket.this["data"].arn}/checkpoints/*']]  # the checkpoint mirror's rotation
    attached = _resources(terraform, "aws_iam_role_policy_attachment")["pipeline"]["policy_arn"]
    assert attached == "${aws_iam_policy.pipeline.arn}"


def test_stage_pods_cannot_write_where_the_mlflow_server_keeps_artifacts(terraform):
    """The stages log artifacts through the MLflow server (proxied); a Deny on the server's artifact prefix keeps a
    stage from overwriting a registered model's files, whatever its Allow statements grant."""
    documents = {name: body for item in terraform["data"] for kind, named in item.items()
                 if kind == "aws_iam_policy_document" for name, body in named.items()}
    (denied,) = [s for s in documents["pipeline"]["statement"] if s.get("effect") == "Deny"]
    assert set(denied["actions"]) == {"s3:PutObject", "s3:DeleteObject"}
    deployment = _resources(terraform, "kubernetes_deployment_v1")["mlflow"]
    (container,) = deployment["spec"][0]["template"][0]["spec"][0]["container"]
    destination = container["args"][container["args"].index("--artifacts-destination") + 1]
    bucket = '${aws_s3_bucket.this["artifacts"]'
    assert destination == f's3://{bucket}.bucket}}/${{local.mlflow_artifact_prefix}}'
    assert denied["resources"] == [f"{bucket}.arn}}/${{local.mlflow_artifact_prefix}}/*"]


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


def _resolve_locals(expression: str, terraform) -> str:
    """`${local.x}` replaced by that local's own expression (one level: what the policy and manifests name)."""
    match = re.fullmatch(r"\$\{local\.(\w+)\}", expression)
    return _local(terraform, match.group(1)) if match else expression


def test_the_secrets_operator_may_read_every_secret_an_external_secret_references(terraform):
    """The ExternalSecret manifests are built from local.synced (mlflow.tf): every remoteRef key there must be a
    resource of the operator's GetSecretValue statement, and nothing else may be (least privilege). With the RDS
    secret alone, mlflow-db and chat-retrain-mlflow-auth were never created: MLflow and every stage pod waited."""
    (manifests,) = [body for name, body in _resources(terraform, "kubernetes_manifest").items()
                    if name == "synced_secret"]
    assert manifests["manifest"]["kind"] == "ExternalSecret" and "remoteRef" in str(manifests["manifest"]["spec"])
    referenced = {_resolve_locals(source[0], terraform) for secret in _local(terraform, "synced").values()
                  for source in secret["data"].values()}
    assert len(referenced) == 4  # the RDS master secret; the MLflow admin, the pipeline's user, the server's login

    (document,) = [named["addon"] for item in terraform["data"] for kind, named in item.items()
                   if kind == "aws_iam_policy_document" and "addon" in named]
    statements = [block["statement"]["content"][0] for block in document["dynamic"]
                  if "eso" in block["statement"]["for_each"]]
    (reads,) = [s for s in statements if "secretsmanager:GetSecretValue" in s["actions"]]
    allowed = {_resolve_locals(resource, terraform) for resource in reads["resources"]}
    assert allowed == referenced
    # Each of those secrets is encrypted with the key the operator may decrypt with.
    (decrypt,) = [s for s in statements if s["actions"] == ["kms:Decrypt"]]
    assert decrypt["resources"] == ["${aws_kms_key.this.arn}"]
    users = _resources(terraform, "aws_secretsmanager_secret")["mlflow_users"]
    database = _resources(terraform, "aws_db_instance")["metadata"]
    assert users["kms_key_id"] == database["master_user_secret_kms_key_id"] == "${aws_kms_key.this.arn}"


def test_the_mlflow_server_logs_in_as_its_own_database_user(terraform):
    """The server's store URIs use MLflow's own role (created and made owner of its two databases by the init Job,
    containers/mlflow/create_databases.py); the master user's URI is the init Job's alone: the Deployment takes
    only the store URI and the Flask key from the secret, and mounts only basic_auth.ini."""
    template = _local(terraform, "synced")["mlflow-db"]["template"]
    own, master = "${local.mlflow_db_url}", "${local.db_url}"
    assert own in template["MLFLOW_BACKEND_STORE_URI"] and own in template["basic_auth.ini"]
    assert master not in template["MLFLOW_BACKEND_STORE_URI"] + template["basic_auth.ini"]
    assert master in template["ADMIN_DATABASE_URI"] and template["MLFLOW_DB_USER"] == "{{ .mlflow_db_user }}"
    deployment = _resources(terraform, "kubernetes_deployment_v1")["mlflow"]
    (container,) = deployment["spec"][0]["template"][0]["spec"][0]["container"]
    (secret_env,) = [e for e in container["dynamic"] if "env" in e]
    assert "MLFLOW_BACKEND_STORE_URI" in secret_env["env"]["for_each"] and "ADMIN" not in secret_env["env"]["for_each"]
    assert "env_from" not in container


def test_a_rotated_database_password_reaches_the_server_without_a_person(terraform):
    """Rotation end to end: the operator refreshes the synced secret, Reloader rolls the Deployment whose annotation
    names it, and each new pod's init container runs create_databases.py (the init Job's command) with the
    secret's login keys, so PostgreSQL has the new password before the server connects with it. Every secret the
    server reads is named in the annotation; only the init container sees the master URI."""
    (manifests,) = [body for name, body in _resources(terraform, "kubernetes_manifest").items()
                    if name == "synced_secret"]
    assert manifests["manifest"]["spec"]["refreshInterval"] == "1h"
    reloader = _resources(terraform, "helm_release")["reloader"]
    assert reloader["chart"] == "reloader" and re.fullmatch(r"\d+\.\d+\.\d+", reloader["version"])
    assert reloader["namespace"] == "${local.namespace}"

    deployment = _resources(terraform, "kubernetes_deployment_v1")["mlflow"]
    named = set(deployment["metadata"][0]["annotations"]["secret.reloader.stakater.com/reload"].split(","))
    pod = deployment["spec"][0]["template"][0]["spec"][0]
    (server,) = pod["container"]
    read = {e["env"]["content"][0]["value_from"][0]["secret_key_ref"][0]["name"] for e in server["dynamic"]}
    read |= {v["secret"][0]["secret_name"] for v in pod["volume"] if "secret" in v}
    assert read == named == {"mlflow-db"}

    (init,) = pod["init_container"]
    job = _resources(terraform, "kubernetes_job_v1")["mlflow_db_init"]
    (job_container,) = job["spec"][0]["template"][0]["spec"][0]["container"]
    assert init["command"] == job_container["command"] and init["image"] == job_container["image"]
    (login,) = [e["env"] for e in init["dynamic"] if "env" in e]
    keys = _local(terraform, "database_login_keys")
    assert login["for_each"] == "${toset(local.database_login_keys)}"
    assert set(keys) == {"ADMIN_DATABASE_URI", "MLFLOW_DB_USER", "MLFLOW_DB_PASSWORD"}
    assert set(keys) <= set(_local(terraform, "synced")["mlflow-db"]["template"])
    script = (REPO / "containers" / "mlflow" / "create_databases.py").read_text()
    assert all(f'os.environ.get("{key}")' in script for key in keys)  # what the script reads, by name
    (server_env,) = [e for e in server["dynamic"] if "env" in e]
    assert not set(keys) & set(re.findall(r"[A-Z_]+", server_env["env"]["for_each"]))
