output "data_bucket" {
  description = "Bucket holding date-partitioned dialogue data (s3://<bucket>/conversations/dt=YYYY-MM-DD/)."
  value       = aws_s3_bucket.this["data"].bucket
}

output "artifact_bucket" {
  description = "Bucket for MLflow artifacts and run-scoped outputs."
  value       = aws_s3_bucket.this["artifacts"].bucket
}
