variable "name" {
  description = "Prefix of every resource name, e.g. chat-retrain-prod."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Tags applied to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC the cluster, database and work volume live in."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two, in different AZs) for EKS nodes, RDS and EFS mount targets."
  type        = list(string)
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.31"
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Airflow, MLflow, ingest/validate/evaluate/promote pods)."
  type        = list(string)
  default     = ["m6i.2xlarge"]
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (training pods; configs/runtimes.yaml gpus_per_node must match)."
  type        = list(string)
  default     = ["p4d.24xlarge"]
}

variable "gpu_max_nodes" {
  description = "Most GPU nodes at once: the largest multi-node training job (train_nodes) the cluster can run."
  type        = number
  default     = 2
}

variable "db_instance_class" {
  description = "RDS instance class for the Airflow + MLflow metadata database."
  type        = string
  default     = "db.t4g.medium"
}

variable "mlflow_image" {
  description = "MLflow server image (containers/mlflow/Dockerfile: MLflow pinned to requirements.lock, psycopg2, boto3), pushed to your registry."
  type        = string
  default     = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/chat-retrain-mlflow:3.17.2"
}

variable "mlflow_ui_namespace" {
  description = "Namespace of the ingress controller that serves the MLflow UI to ML leads (the only other client the NetworkPolicy admits)."
  type        = string
  default     = "ingress-nginx"
}
