terraform {
  # Write-only attributes (the database password, datastores.tf) and override_during (used by the
  # tests) need 1.11.
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Write-only password_wo / secret_string_wo arrived in 5.88 (load_balancing_anomaly_mitigation
      # in 5.32); checked against 5.100.
      version = ">= 5.88.0, < 6.0.0"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge(
      {
        Project   = var.name
        ManagedBy = "terraform"
      },
      var.tags,
    )
  }
}
