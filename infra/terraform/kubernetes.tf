# In-cluster pieces the DAG's kubernetes runtime expects (configs/runtimes.yaml): the namespace, the pipeline's
# service account (IAM role for S3), the `chat-retrain-env` secret, the shared work volume, the headless service
# for multi-node training rendezvous, and the MLflow tracking server (Postgres backend, S3 artifacts).

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name = local.namespace
  }
}

resource "kubernetes_service_account_v1" "pipeline" {
  metadata {
    name        = "chat-retrain"
    namespace   = local.namespace
    annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.pipeline.arn }
  }
}

resource "kubernetes_service_account_v1" "mlflow" {
  metadata {
    name        = "mlflow"
    namespace   = local.namespace
    annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.mlflow.arn }
  }
}

# What the stage pods read from their environment: where MLflow and the data are. Not a credential, but kept as
# a secret so deployments can add credentials (e.g. a Hugging Face token) without touching the DAG.
resource "kubernetes_secret_v1" "pipeline_env" {
  metadata {
    name      = "chat-retrain-env"
    namespace = local.namespace
  }
  data = {
    MLFLOW_TRACKING_URI = "http://mlflow.${local.namespace}.svc.cluster.local:5000"
    DATA_BUCKET         = aws_s3_bucket.this["data"].bucket
    AWS_REGION          = var.region
  }
}

# The RDS-managed master password, copied into the cluster for the MLflow server. It is in Terraform state:
# keep the state in an encrypted, access-controlled backend.
data "aws_secretsmanager_secret_version" "db" {
  secret_id = aws_db_instance.metadata.master_user_secret[0].secret_arn
}

resource "kubernetes_secret_v1" "mlflow_db" {
  metadata {
    name      = "mlflow-db"
    namespace = local.namespace
  }
  data = {
    MLFLOW_BACKEND_STORE_URI = format("postgresql://%s:%s@%s/mlflow?sslmode=require",
      aws_db_instance.metadata.username,
      urlencode(jsondecode(data.aws_secretsmanager_secret_version.db.secret_string)["password"]),
    aws_db_instance.metadata.endpoint)
  }
}

# Shared work volume: EFS, encrypted, one mount target per private subnet, ReadWriteMany for the stage pods.
resource "aws_efs_file_system" "work" {
  encrypted  = true
  kms_key_id = aws_kms_key.this.arn
  tags       = { Name = "${var.name}-work" }
}

resource "aws_security_group" "efs" {
  name        = "${var.name}-efs"
  description = "NFS to the work volume from inside the VPC"
  vpc_id      = var.vpc_id
  ingress {
    description = "NFS from the VPC (EKS nodes)"
    from_port   = 2049
    to_port     = 2049
    protocol    = "tcp"
    cidr_blocks = [data.aws_vpc.this.cidr_block]
  }
  # checkov:skip=CKV2_AWS_5: attached to the EFS mount targets below (checkov does not follow for_each references)
}

resource "aws_efs_mount_target" "work" {
  for_each        = toset(var.private_subnet_ids)
  file_system_id  = aws_efs_file_system.work.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

resource "kubernetes_storage_class_v1" "efs" {
  metadata {
    name = "efs"
  }
  storage_provisioner = "efs.csi.aws.com"
  parameters = {
    provisioningMode = "efs-ap"
    fileSystemId     = aws_efs_file_system.work.id
    directoryPerms   = "700"
  }
}

# /app/data of every stage pod (configs/runtimes.yaml data_volume_claim); its own EFS access point.
resource "kubernetes_persistent_volume_claim_v1" "data" {
  metadata {
    name      = "chat-retrain-data"
    namespace = local.namespace
  }
  spec {
    access_modes       = ["ReadWriteMany"]
    storage_class_name = kubernetes_storage_class_v1.efs.metadata[0].name
    resources {
      requests = { storage = "500Gi" }
    }
  }
}

# /app/runs of every stage pod (configs/runtimes.yaml runs_volume_claim); its own EFS access point.
resource "kubernetes_persistent_volume_claim_v1" "runs" {
  metadata {
    name      = "chat-retrain-runs"
    namespace = local.namespace
  }
  spec {
    access_modes       = ["ReadWriteMany"]
    storage_class_name = kubernetes_storage_class_v1.efs.metadata[0].name
    resources {
      requests = { storage = "500Gi" }
    }
  }
}

# Multi-node training: pod i of the indexed Job is <job>-<i>.chat-retrain-train; pod 0 hosts the rendezvous.
resource "kubernetes_service_v1" "train" {
  metadata {
    name      = "chat-retrain-train"
    namespace = local.namespace
  }
  spec {
    cluster_ip = "None"
    selector   = { app = "chat-retrain-train" }
    port {
      name = "rendezvous"
      port = 29500
    }
  }
}

resource "kubernetes_deployment_v1" "mlflow" {
  metadata {
    name      = "mlflow"
    namespace = local.namespace
    labels    = { app = "mlflow" }
  }
  spec {
    replicas = 2
    selector {
      match_labels = { app = "mlflow" }
    }
    template {
      metadata {
        labels = { app = "mlflow" }
      }
      spec {
        service_account_name            = kubernetes_service_account_v1.mlflow.metadata[0].name
        automount_service_account_token = true # the IRSA token: S3 artifact access
        node_selector                   = { role = "cpu" }
        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name              = "mlflow"
          image             = var.mlflow_image
          image_pull_policy = "Always"
          args = ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
            "--backend-store-uri", "$(MLFLOW_BACKEND_STORE_URI)",
            "--artifacts-destination", "s3://${aws_s3_bucket.this["artifacts"].bucket}/mlflow",
          "--allowed-hosts", "mlflow,mlflow.${local.namespace}.svc.cluster.local,localhost"]
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.mlflow_db.metadata[0].name
            }
          }
          port {
            container_port = 5000
          }
          resources {
            requests = { cpu = "500m", memory = "1Gi" }
            limits   = { cpu = "2", memory = "2Gi" }
          }
          liveness_probe {
            http_get {
              path = "/health"
              port = 5000
            }
            initial_delay_seconds = 30
          }
          readiness_probe {
            http_get {
              path = "/health"
              port = 5000
            }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }
        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
  # checkov:skip=CKV_K8S_43: the image is pinned by version tag (var.mlflow_image); digests are set per release
  # checkov:skip=CKV_K8S_35: mlflow server takes the backend URI as an argument; Kubernetes expands $(VAR) from env only
}

resource "kubernetes_service_v1" "mlflow" {
  metadata {
    name      = "mlflow"
    namespace = local.namespace
  }
  spec {
    selector = { app = "mlflow" }
    port {
      port        = 5000
      target_port = 5000
    }
  }
}
