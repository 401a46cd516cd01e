# IAM roles for service accounts: the pipeline's pods read and write the buckets; the MLflow server writes
# artifacts; the EFS CSI driver manages access points. Each role trusts exactly one Kubernetes service account.
locals {
  oidc = replace(aws_iam_openid_connect_provider.this.url, "https://", "")
  service_accounts = {
    pipeline = "system:serviceaccount:${local.namespace}:chat-retrain"
    mlflow   = "system:serviceaccount:${local.namespace}:mlflow"
    efs_csi  = "system:serviceaccount:kube-system:efs-csi-controller-sa"
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

data "aws_iam_policy_document" "buckets" {
  statement {
    actions   = ["s3:ListBucket"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }
  statement {
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [for b in aws_s3_bucket.this : "${b.arn}/*"]
  }
  statement {
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_policy" "buckets" {
  name   = "${var.name}-buckets"
  policy = data.aws_iam_policy_document.buckets.json
}

resource "aws_iam_role" "pipeline" {
  name               = "${var.name}-pipeline"
  assume_role_policy = data.aws_iam_policy_document.trust["pipeline"].json
}

resource "aws_iam_role_policy_attachment" "pipeline" {
  role       = aws_iam_role.pipeline.name
  policy_arn = aws_iam_policy.buckets.arn
}

resource "aws_iam_role" "mlflow" {
  name               = "${var.name}-mlflow"
  assume_role_policy = data.aws_iam_policy_document.trust["mlflow"].json
}

resource "aws_iam_role_policy_attachment" "mlflow" {
  role       = aws_iam_role.mlflow.name
  policy_arn = aws_iam_policy.buckets.arn
}

resource "aws_iam_role" "efs_csi" {
  name               = "${var.name}-efs-csi"
  assume_role_policy = data.aws_iam_policy_document.trust["efs_csi"].json
}

resource "aws_iam_role_policy_attachment" "efs_csi" {
  role       = aws_iam_role.efs_csi.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonEFSCSIDriverPolicy"
}
