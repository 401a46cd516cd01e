# Cluster add-ons the GPU training depends on: the NVIDIA device plugin (without it no node advertises
# nvidia.com/gpu and the training pod never schedules), the cluster autoscaler (without it the GPU node group,
# which scales from zero, stays at zero), and the External Secrets Operator (database credentials synced from
# Secrets Manager, never copied through Terraform state). Charts pinned by version.

resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  namespace  = "kube-system"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = "0.17.1"
  values = [yamlencode({
    nodeSelector = { role = "gpu" }
    tolerations  = [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }]
  })]
}

resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  namespace  = "kube-system"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = "9.46.6"
  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    autoDiscovery = { clusterName = aws_eks_cluster.this.name } # managed node groups carry the discovery tags
    rbac = { serviceAccount = {
      name        = "cluster-autoscaler"
      annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.addon["cluster_autoscaler"].arn }
    } }
    extraArgs    = { "balance-similar-node-groups" = true, "expander" = "least-waste" }
    nodeSelector = { role = "cpu" }
  })]
}

resource "helm_release" "external_secrets" {
  name             = "external-secrets"
  namespace        = "external-secrets"
  create_namespace = true
  repository       = "https://charts.external-secrets.io"
  chart            = "external-secrets"
  version          = "0.14.4"
  values = [yamlencode({
    serviceAccount = {
      name        = "external-secrets"
      annotations = { "eks.amazonaws.com/role-arn" = aws_iam_role.addon["eso"].arn }
    }
    nodeSelector = { role = "cpu" }
  })]
}

# Rolls a Deployment when a Secret it names in its secret.reloader.stakater.com/reload annotation changes: a
# password rotated in Secrets Manager, synced by the operator above, reaches the MLflow server without a person
# (mlflow.tf). It watches the pipeline's namespace only.
resource "helm_release" "reloader" {
  name       = "reloader"
  namespace  = local.namespace
  repository = "https://stakater.github.io/stakater-charts"
  chart      = "reloader"
  version    = "2.1.4"
  values = [yamlencode({
    reloader = { watchGlobally = false, deployment = { nodeSelector = { role = "cpu" } } }
  })]
  depends_on = [kubernetes_namespace_v1.this]
}

# Least privilege for the add-ons' roles: scaling only the cluster's own node groups; reading only the database
# secret.
data "aws_iam_policy_document" "addon" {
  for_each = toset(["cluster_autoscaler", "eso"])
  dynamic "statement" {
    for_each = each.key == "cluster_autoscaler" ? [1] : []
    content {
      actions = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLaunchConfigurations", "autoscaling:DescribeScalingActivities",
        "autoscaling:DescribeTags", "ec2:DescribeImages", "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions", "ec2:GetInstanceTypesFromInstanceRequirements", "eks:DescribeNodegroup"]
      resources = ["*"] # describe calls take no resource ARNs
    }
  }
  dynamic "statement" {
    for_each = each.key == "cluster_autoscaler" ? [1] : []
    content {
      actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
      resources = ["*"]
      condition {
        test     = "StringEquals"
        variable = "aws:ResourceTag/k8s.io/cluster-autoscaler/${aws_eks_cluster.this.name}"
        values   = ["owned"]
      }
    }
  }
  dynamic "statement" {
    for_each = each.key == "eso" ? [1] : []
    content {
      actions = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
      # Every secret an ExternalSecret reads (mlflow.tf, local.synced), and no other: a test derives the list
      # from the manifests. The RDS one alone left mlflow-db and chat-retrain-mlflow-auth unsynced.
      resources = [local.db_secret, aws_secretsmanager_secret.mlflow_users["admin"].arn,
        aws_secretsmanager_secret.mlflow_users["pipeline"].arn,
      aws_secretsmanager_secret.mlflow_users["database"].arn]
    }
  }
  dynamic "statement" {
    for_each = each.key == "eso" ? [1] : []
    content {
      actions   = ["kms:Decrypt"]
      resources = [aws_kms_key.this.arn]
    }
  }
}

resource "aws_iam_policy" "addon" {
  for_each = data.aws_iam_policy_document.addon
  name     = "${var.name}-${replace(each.key, "_", "-")}"
  policy   = each.value.json
}

resource "aws_iam_role" "addon" {
  for_each           = data.aws_iam_policy_document.addon
  name               = "${var.name}-${replace(each.key, "_", "-")}"
  assume_role_policy = data.aws_iam_policy_document.trust[each.key].json
}

resource "aws_iam_role_policy_attachment" "addon" {
  for_each   = data.aws_iam_policy_document.addon
  role       = aws_iam_role.addon[each.key].name
  policy_arn = aws_iam_policy.addon[each.key].arn
}
