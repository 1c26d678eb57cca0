# Least-privilege security groups. Every allowed flow is listed here, by security group reference
# wherever the peer is inside the VPC:
#
#   internet --80--> alb --8081--> product
#                        --8082--> cart --8081--> product (Cloud Map name)
#                                       --8083--> credit-card-authorizer   (cart only)
#                                       --5672/5671--> rabbitmq / amazon mq
#   warehouse, product --5672/5671--> rabbitmq / amazon mq;   rabbitmq --2049--> efs
#   product, cart, warehouse --5432--> postgres (RDS);   cart --6379--> redis (ElastiCache)
#   every task --443--> internet via NAT (ECR, CloudWatch Logs, SSM, Secrets Manager, ECR Public)

locals {
  security_groups = {
    alb                    = "ALB: HTTP from the allowed CIDRs, to the product and cart tasks"
    product                = "product tasks: from the ALB and the cart"
    cart                   = "cart tasks: from the ALB"
    credit-card-authorizer = "credit card authorizer tasks: from the cart only"
    warehouse              = "warehouse tasks: no inbound traffic"
    rabbitmq               = "RabbitMQ (Fargate task or Amazon MQ broker): from cart, warehouse and product"
    efs                    = "EFS mount targets of the RabbitMQ volume: from RabbitMQ only"
    postgres               = "RDS PostgreSQL: from the product, cart and warehouse tasks only"
    redis                  = "ElastiCache Redis: from the cart tasks only"
  }

  # The port the services use to reach RabbitMQ: plain AMQP in the VPC, or AMQPS for Amazon MQ.
  amqp_port = var.rabbitmq_mode == "amazon_mq" ? 5671 : 5672

  sg_ingress = {
    product-from-alb   = { sg = "product", from = "alb", port = 8081, what = "HTTP from the ALB" }
    product-from-cart  = { sg = "product", from = "cart", port = 8081, what = "product lookups from the cart" }
    cart-from-alb      = { sg = "cart", from = "alb", port = 8082, what = "HTTP from the ALB" }
    cca-from-cart      = { sg = "credit-card-authorizer", from = "cart", port = 8083, what = "authorizations from the cart only" }
    rabbitmq-from-cart = { sg = "rabbitmq", from = "cart", port = local.amqp_port, what = "AMQP from the cart" }
    rabbitmq-from-wh   = { sg = "rabbitmq", from = "warehouse", port = local.amqp_port, what = "AMQP from the warehouse" }
    rabbitmq-from-prod = { sg = "rabbitmq", from = "product", port = local.amqp_port, what = "AMQP from the product tasks (stock events)" }
    efs-from-rabbitmq  = { sg = "efs", from = "rabbitmq", port = 2049, what = "NFS from RabbitMQ" }
    postgres-from-prod = { sg = "postgres", from = "product", port = 5432, what = "PostgreSQL from the product tasks (catalog)" }
    postgres-from-wh   = { sg = "postgres", from = "warehouse", port = 5432, what = "PostgreSQL from the warehouse (ledger)" }
    postgres-from-cart = { sg = "postgres", from = "cart", port = 5432, what = "PostgreSQL from the cart tasks (orders)" }
    redis-from-cart    = { sg = "redis", from = "cart", port = 6379, what = "Redis from the cart tasks" }
  }

  sg_egress = {
    alb-to-product      = { sg = "alb", to = "product", port = 8081, what = "to the product tasks" }
    alb-to-cart         = { sg = "alb", to = "cart", port = 8082, what = "to the cart tasks" }
    cart-to-product     = { sg = "cart", to = "product", port = 8081, what = "to the product tasks" }
    cart-to-cca         = { sg = "cart", to = "credit-card-authorizer", port = 8083, what = "to the authorizer" }
    cart-to-rabbitmq    = { sg = "cart", to = "rabbitmq", port = local.amqp_port, what = "to RabbitMQ" }
    warehouse-to-rabbit = { sg = "warehouse", to = "rabbitmq", port = local.amqp_port, what = "to RabbitMQ" }
    rabbitmq-to-efs     = { sg = "rabbitmq", to = "efs", port = 2049, what = "to the EFS mount targets" }
    product-to-postgres = { sg = "product", to = "postgres", port = 5432, what = "to PostgreSQL" }
    warehouse-to-pg     = { sg = "warehouse", to = "postgres", port = 5432, what = "to PostgreSQL" }
    product-to-rabbitmq = { sg = "product", to = "rabbitmq", port = local.amqp_port, what = "to RabbitMQ" }
    cart-to-postgres    = { sg = "cart", to = "postgres", port = 5432, what = "to PostgreSQL" }
    cart-to-redis       = { sg = "cart", to = "redis", port = 6379, what = "to Redis" }
  }

  # HTTPS out (through NAT) for image pulls, logs and SSM parameters.
  sg_https_egress = toset(["product", "cart", "credit-card-authorizer", "warehouse", "rabbitmq"])
}

resource "aws_security_group" "this" {
  # checkov:skip=CKV2_AWS_5: attached through for_each lookups (aws_ecs_service, aws_lb, aws_efs_mount_target, aws_mq_broker, aws_db_instance, aws_elasticache_replication_group) that checkov's graph does not resolve
  for_each = local.security_groups

  name        = "${var.name}-${each.key}"
  description = each.value
  vpc_id      = aws_vpc.this.id
  tags        = { Name = "${var.name}-${each.key}" }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  # checkov:skip=CKV_AWS_260: the ALB is the public entry point of the demo; narrow allowed_ingress_cidrs to restrict it
  for_each = toset(var.allowed_ingress_cidrs)

  security_group_id = aws_security_group.this["alb"].id
  description       = "HTTP from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "internal" {
  for_each = local.sg_ingress

  security_group_id            = aws_security_group.this[each.value.sg].id
  referenced_security_group_id = aws_security_group.this[each.value.from].id
  description                  = each.value.what
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "internal" {
  for_each = local.sg_egress

  security_group_id            = aws_security_group.this[each.value.sg].id
  referenced_security_group_id = aws_security_group.this[each.value.to].id
  description                  = each.value.what
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = local.sg_https_egress

  security_group_id = aws_security_group.this[each.key].id
  description       = "HTTPS to AWS APIs (ECR, CloudWatch Logs, SSM, Secrets Manager) through NAT"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
