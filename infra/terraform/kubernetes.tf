# In-cluster pieces the DAG's kubernetes runtime expects (configs/runtimes.yaml): the namespace, the pipeline's
# service account (IAM role for S3), the `chat-retrain-env` secret, the data and runs volumes, and the headless
# service for multi-node training rendezvous. The MLflow tracking server is in mlflow.tf.

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
