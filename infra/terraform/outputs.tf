output "data_bucket" {
  description = "Bucket holding date-partitioned dialogue data (s3://<bucket>/conversations/dt=YYYY-MM-DD/)."
  value       = aws_s3_bucket.this["data"].bucket
}

output "artifact_bucket" {
  description = "Bucket for MLflow artifacts and run-scoped outputs."
  value       = aws_s3_bucket.this["artifacts"].bucket
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name <this>)."
  value       = aws_eks_cluster.this.name
}

output "pipeline_role_arn" {
  description = "IAM role of the chat-retrain service account (S3 read/write through IRSA)."
  value       = aws_iam_role.pipeline.arn
}

output "metadata_db_endpoint" {
  description = "Postgres endpoint for the Airflow (db airflow) and MLflow (db mlflow) metadata."
  value       = aws_db_instance.metadata.endpoint
}

output "metadata_db_secret_arn" {
  description = "Secrets Manager secret holding the database master credentials (managed by RDS)."
  value       = aws_db_instance.metadata.master_user_secret[0].secret_arn
}

output "mlflow_tracking_uri" {
  description = "In-cluster MLflow tracking URI (also in the chat-retrain-env secret)."
  value       = "http://mlflow.${local.namespace}.svc.cluster.local:5000"
}

output "work_file_system_id" {
  description = "EFS file system behind the chat-retrain-data and chat-retrain-runs volume claims."
  value       = aws_efs_file_system.work.id
}
