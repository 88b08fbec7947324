output "cluster_identifier" {
  value = aws_dsql_cluster.target.identifier
}

output "cluster_arn" {
  value = aws_dsql_cluster.target.arn
}

output "endpoint" {
  description = "reconcile.toml [target] endpoint."
  value       = "${aws_dsql_cluster.target.identifier}.dsql.${var.region}.on.aws"
}

output "pipeline_policy_arn" {
  value = aws_iam_policy.pipeline.arn
}

output "bootstrap_policy_arn" {
  value = aws_iam_policy.bootstrap.arn
}

output "gate_reader_policy_arn" {
  value = aws_iam_policy.gate_reader.arn
}
