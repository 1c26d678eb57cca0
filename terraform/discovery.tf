# Private DNS inside the VPC (Cloud Map): rabbitmq.<ns>, credit-card-authorizer.<ns>, product.<ns>.
resource "aws_service_discovery_private_dns_namespace" "this" {
  name        = local.namespace
  description = "Internal names of the ${var.name} services"
  vpc         = aws_vpc.this.id
}

locals {
  discovery_services = toset(concat(
    ["credit-card-authorizer", "product"],
    var.rabbitmq_mode == "fargate" ? ["rabbitmq"] : [],
  ))
}

resource "aws_service_discovery_service" "this" {
  for_each = local.discovery_services

  name          = each.key
  force_destroy = true

  dns_config {
    namespace_id   = aws_service_discovery_private_dns_namespace.this.id
    routing_policy = "MULTIVALUE"

    dns_records {
      type = "A"
      ttl  = 10
    }
  }

  # ECS reports task health to Cloud Map: unhealthy tasks drop out of DNS.
  health_check_custom_config {
    failure_threshold = 1
  }
}
