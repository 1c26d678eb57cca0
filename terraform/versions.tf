terraform {
  # mock_provider in `terraform test` needs 1.7; override_during (used by the tests) needs 1.11.
  required_version = ">= 1.7.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # load_balancing_anomaly_mitigation arrived in 5.32; checked against 5.100.
      version = ">= 5.32.0, < 6.0.0"
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
