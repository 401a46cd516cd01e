# IAM roles for service accounts: the pipeline's pods read and write the buckets; the MLflow server writes
# artifacts; the EFS CSI driver manages access points. Each role trusts exactly one Kubernetes service account.
locals {
  oidc = replace(aws_iam_openid_connect_provider.this.url, "https://", "")
  service_accounts = {
    pipeline           = "system:serviceaccount:${local.namespace}:chat-retrain"
    mlflow             = "system:serviceaccount:${local.namespace}:mlflow"
    efs_csi            = "system:serviceaccount:kube-system:efs-csi-controller-sa"
    cluster_autoscaler = "system:serviceaccount:kube-system:cluster-autoscaler"
    eso                = "system:serviceaccount:external-secrets:external-secrets"
  }
}

# Roles assumed by AWS services: the EKS control plane, the node instances, RDS enhanced monitoring.
data "aws_iam_policy_document" "service_trust" {
  for_each = { eks = "eks.amazonaws.com", ec2 = "ec2.amazonaws.com", rds_monitoring = "monitoring.rds.amazonaws.com" }
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = [each.value]
    }
  }
}

data "aws_iam_policy_document" "trust" {
  for_each = local.service_accounts
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.this.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc}:sub"
      values   = [each.value]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

# The pipeline's pods read everything and write data partitions and checkpoints, but may delete only under
# checkpoints/ of the data bucket (the checkpoint mirror's rotation, train.checkpoint_mirror): raw data is never
# theirs to delete. The MLflow server owns the artifacts bucket.
data "aws_iam_policy_document" "pipeline" {
  statement {
    actions   = ["s3:ListBucket"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }
  statement {
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = [for b in aws_s3_bucket.this : "${b.arn}/*"]
  }
  statement {
    actions   = ["s3:DeleteObject"]
    resources = ["${aws_s3_bucket.this["data"].arn}/checkpoints/*"]
  }
  # Runs' artifacts and registered models are written by the MLflow server alone (proxied artifacts, its own
  # role): a stage cannot overwrite a registered version's files behind the registry's back.
  statement {
    effect    = "Deny"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.this["artifacts"].arn}/${local.mlflow_artifact_prefix}/*"]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

data "aws_iam_policy_document" "mlflow" {
  statement {
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["artifacts"].arn]
  }
  statement {
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.this["artifacts"].arn}/*"]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_policy" "pipeline" {
  name   = "${var.name}-pipeline"
  policy = data.aws_iam_policy_document.pipeline.json
}

resource "aws_iam_policy" "mlflow" {
  name   = "${var.name}-mlflow"
  policy = data.aws_iam_policy_document.mlflow.json
}

resource "aws_iam_role" "pipeline" {
  name               = "${var.name}-pipeline"
  assume_role_policy = data.aws_iam_policy_document.trust["pipeline"].json
}

resource "aws_iam_role_policy_attachment" "pipeline" {
  role       = aws_iam_role.pipeline.name
  policy_arn = aws_iam_policy.pipeline.arn
}

resource "aws_iam_role" "mlflow" {
  name               = "${var.name}-mlflow"
  assume_role_policy = data.aws_iam_policy_document.trust["mlflow"].json
}

resource "aws_iam_role_policy_attachment" "mlflow" {
  role       = aws_iam_role.mlflow.name
  policy_arn = aws_iam_policy.mlflow.arn
}

resource "aws_iam_role" "efs_csi" {
  name               = "${var.name}-efs-csi"
  assume_role_policy = data.aws_iam_policy_document.trust["efs_csi"].json
}

resource "aws_iam_role_policy_attachment" "efs_csi" {
  role       = aws_iam_role.efs_csi.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"
}
