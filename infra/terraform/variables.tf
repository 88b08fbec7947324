variable "region" {
  description = "AWS Region of the DSQL cluster."
  type        = string
}

variable "cluster_name" {
  description = "Value of the Name tag."
  type        = string
  default     = "reconcile-target"
}

variable "environment" {
  description = "Value of the Environment tag."
  type        = string
  default     = "dev"
}

variable "kms_encryption_key" {
  description = "Customer-managed KMS key ARN; null uses an AWS-owned key."
  type        = string
  default     = null
}

variable "gate_parameter_name" {
  description = "SSM parameter holding the cutover gate state (String type, starts with /)."
  type        = string
  default     = "/reconcile/cutover/state"

  validation {
    condition     = can(regex("^/[a-zA-Z0-9_.-]+(/[a-zA-Z0-9_.-]+)*$", var.gate_parameter_name))
    error_message = "Use a fully qualified name starting with /, e.g. /reconcile/cutover/state."
  }
}

variable "chain_parameter_name" {
  description = "SSM parameter the audit trail's chain head is published to ([gates] chain_parameter)."
  type        = string
  default     = "/reconcile/cutover/chain-head"

  validation {
    condition     = can(regex("^/[a-zA-Z0-9_.-]+(/[a-zA-Z0-9_.-]+)*$", var.chain_parameter_name))
    error_message = "Use a fully qualified name starting with /, e.g. /reconcile/cutover/chain-head."
  }
}

variable "reports_bucket" {
  description = "S3 bucket receiving the reconciliation reports (not created here)."
  type        = string
}

variable "reports_prefix" {
  description = "Key prefix for the reports, ending in / (no wildcards)."
  type        = string
  default     = "reconcile/reports/"

  validation {
    condition     = can(regex("^[a-zA-Z0-9!_.'()-]+(/[a-zA-Z0-9!_.'()-]+)*/$", var.reports_prefix))
    error_message = "Use a non-empty prefix ending in / without wildcards, e.g. reconcile/reports/."
  }
}

variable "metrics_namespace" {
  description = "The only CloudWatch namespace the pipeline may publish into."
  type        = string
  default     = "Reconcile"

  validation {
    condition     = !startswith(var.metrics_namespace, "AWS/")
    error_message = "Namespaces beginning with AWS/ are reserved for AWS services."
  }
}
