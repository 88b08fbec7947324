# Optional Terraform equivalent of dsql-cluster.yaml (single-Region) and of the policies in
# pipeline-iam.yaml, as managed policies to attach to roles you already manage in Terraform.
# The CloudFormation templates remain the reference (they are what the tests lint).
#
#   cd infra/terraform
#   terraform init
#   terraform apply -var region=us-east-1 -var reports_bucket=my-reports-bucket

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100"
    }
  }
}

provider "aws" {
  region = var.region
}

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  gate_parameter_arn  = "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter${var.gate_parameter_name}"
  chain_parameter_arn = "arn:${data.aws_partition.current.partition}:ssm:${var.region}:${data.aws_caller_identity.current.account_id}:parameter${var.chain_parameter_name}"
}

resource "aws_dsql_cluster" "target" {
  deletion_protection_enabled = true
  kms_encryption_key          = var.kms_encryption_key

  tags = {
    Name        = var.cluster_name
    Environment = var.environment
    Application = "reconcile"
  }

  lifecycle {
    prevent_destroy = true
  }
}

# Pipeline workers: connect as the custom database role, gate read/write, reports, metrics.
data "aws_iam_policy_document" "pipeline" {
  statement {
    sid       = "DsqlConnectAsCustomRole"
    actions   = ["dsql:DbConnect"]
    resources = [aws_dsql_cluster.target.arn]
  }
  statement {
    sid       = "GateParameterReadWrite"
    actions   = ["ssm:GetParameter", "ssm:PutParameter"]
    resources = [local.gate_parameter_arn]
  }
  statement {
    sid       = "ChainHeadReadWrite"
    actions   = ["ssm:GetParameter", "ssm:PutParameter", "ssm:GetParameterHistory"]
    resources = [local.chain_parameter_arn]
  }
  statement {
    sid       = "ReportUploads"
    actions   = ["s3:PutObject"]
    resources = ["arn:${data.aws_partition.current.partition}:s3:::${var.reports_bucket}/${var.reports_prefix}*"]
  }
  # PutMetricData has no resource-level permissions: AWS requires "*"; the namespace condition
  # confines it to ours.
  statement {
    sid       = "MetricsInOurNamespaceOnly"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = [var.metrics_namespace]
    }
  }
}

# Schema bootstrap: connect as admin. Attach only to the operator role that runs target-roles.sql.
data "aws_iam_policy_document" "bootstrap" {
  statement {
    sid       = "DsqlConnectAsAdmin"
    actions   = ["dsql:DbConnectAdmin"]
    resources = [aws_dsql_cluster.target.arn]
  }
}

# Applications: read the published gate state.
data "aws_iam_policy_document" "gate_reader" {
  statement {
    sid       = "GateParameterRead"
    actions   = ["ssm:GetParameter"]
    resources = [local.gate_parameter_arn]
  }
}

resource "aws_iam_policy" "pipeline" {
  name_prefix = "reconcile-pipeline-"
  policy      = data.aws_iam_policy_document.pipeline.json
}

resource "aws_iam_policy" "bootstrap" {
  name_prefix = "reconcile-bootstrap-"
  policy      = data.aws_iam_policy_document.bootstrap.json
}

resource "aws_iam_policy" "gate_reader" {
  name_prefix = "reconcile-gate-reader-"
  policy      = data.aws_iam_policy_document.gate_reader.json
}
