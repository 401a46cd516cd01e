# The cloud side of the pipeline (see README "Infrastructure"): S3 for data and artifacts (s3.tf), an EKS cluster
# with CPU and GPU node groups (eks.tf), Postgres for Airflow and MLflow metadata (rds.tf), IAM roles for service
# accounts (iam.tf), and in-cluster pieces: namespace, service accounts, shared work volume, the MLflow tracking
# server (kubernetes.tf). The VPC and its private subnets are inputs: networks are usually owned by another team.
terraform {
  required_version = ">= 1.10" # S3 state locking without DynamoDB (use_lockfile)
  required_providers {
    aws        = { source = "hashicorp/aws", version = "~> 5.0" }
    kubernetes = { source = "hashicorp/kubernetes", version = "~> 2.30" }
    helm       = { source = "hashicorp/helm", version = "~> 2.15" }
    tls        = { source = "hashicorp/tls", version = "~> 4.0" }
  }
  # Remote state, encrypted and locked: the state holds resource IDs and ARNs for every operator of this stack.
  # The bucket is per organisation, so it is given at init:
  #   terraform init -backend-config="bucket=<state bucket>" -backend-config="region=<region>"
  backend "s3" {
    key          = "chat-retrain/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = var.tags
  }
}

# In-cluster resources are created through the cluster's API with a short-lived token (no kubeconfig file).
provider "kubernetes" {
  host                   = aws_eks_cluster.this.endpoint
  cluster_ca_certificate = base64decode(aws_eks_cluster.this.certificate_authority[0].data)
  token                  = data.aws_eks_cluster_auth.this.token
}

provider "helm" {
  kubernetes {
    host                   = aws_eks_cluster.this.endpoint
    cluster_ca_certificate = base64decode(aws_eks_cluster.this.certificate_authority[0].data)
    token                  = data.aws_eks_cluster_auth.this.token
  }
}

data "aws_eks_cluster_auth" "this" {
  name = aws_eks_cluster.this.name
}

data "aws_caller_identity" "current" {}

data "aws_vpc" "this" {
  id = var.vpc_id
}

locals {
  namespace = "chat-retrain"
}

# One customer-managed key for everything at rest: buckets, EKS secrets, RDS, EFS, logs.
resource "aws_kms_key" "this" {
  description         = "${var.name}: data, artifacts, metadata and cluster secrets at rest"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AccountAdministers"
        Effect    = "Allow"
        Principal = { AWS = "arn:aws:iam::${data.aws_caller_identity.current.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        Sid       = "CloudWatchLogsEncrypt"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
      },
    ]
  })
}
