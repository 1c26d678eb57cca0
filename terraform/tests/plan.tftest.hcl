# Plan-only checks with a mocked AWS provider: no account, no credentials, no network.
#   terraform test        (from terraform/, after terraform init -backend=false)

mock_provider "aws" {
  # Generate the computed values (ids, ARNs, URLs) already at plan time so that assertions can
  # compare security group references and decode the container definitions.
  override_during = plan

  mock_data "aws_availability_zones" {
    defaults = {
      names = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
    }
  }

  mock_data "aws_region" {
    defaults = {
      name = "eu-west-1"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  # Empty mock_resource blocks: with override_during = plan, their computed attributes (id, arn,
  # repository_url) get fake values during the plan instead of staying unknown.
  mock_resource "aws_lb_target_group" {}
  mock_resource "aws_security_group" {}
  mock_resource "aws_ecr_repository" {}
  mock_resource "aws_ssm_parameter" {}
  mock_resource "aws_subnet" {}
  mock_resource "aws_cloudwatch_log_group" {}
  mock_resource "aws_secretsmanager_secret" {}

  mock_resource "aws_db_instance" {
    defaults = {
      address = "shop-postgres.abcdefghijkl.eu-west-1.rds.amazonaws.com"
      port    = 5432
    }
  }

  mock_resource "aws_elasticache_replication_group" {
    defaults = {
      primary_endpoint_address = "master.shop-redis.abcdef.euw1.cache.amazonaws.com"
      port                     = 6379
    }
  }

  mock_data "aws_secretsmanager_random_password" {
    defaults = {
      random_password = "example-example-example"
    }
  }

  mock_resource "aws_mq_broker" {
    defaults = {
      instances = [{
        console_url = "https://b-1234.mq.eu-west-1.amazonaws.com"
        endpoints   = ["amqps://b-1234.mq.eu-west-1.amazonaws.com:5671"]
        ip_address  = "10.42.128.10"
      }]
    }
  }
}

# Distinct, valid ARNs: the listener rules validate them, and the tests tell the groups apart.
override_resource {
  target          = aws_lb_target_group.this["product"]
  override_during = plan
  values = {
    arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-product/1111111111111111"
  }
}

override_resource {
  target          = aws_lb_target_group.this["cart"]
  override_during = plan
  values = {
    arn = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/shop-cart/2222222222222222"
  }
}

variables {
  image_tag         = "0123456789ab"
  rabbitmq_password = "example-example-example"
}

run "product_target_group_uses_atw" {
  command = plan

  assert {
    condition     = aws_lb_target_group.this["product"].load_balancing_algorithm_type == "weighted_random"
    error_message = "The product target group must use weighted_random."
  }
  assert {
    condition     = aws_lb_target_group.this["product"].load_balancing_anomaly_mitigation == "on"
    error_message = "The product target group must have anomaly mitigation on."
  }
  assert {
    condition     = aws_lb_target_group.this["product"].slow_start == 0 && length(aws_lb_target_group.this["product"].stickiness) == 0
    error_message = "weighted_random allows neither slow start nor stickiness."
  }
  assert {
    condition     = alltrue([for tg in aws_lb_target_group.this : tg.health_check[0].path == "/health" && tg.target_type == "ip"])
    error_message = "Every target group checks /health on ip targets."
  }
  assert {
    condition     = alltrue([for tg in aws_lb_target_group.this : tg.deregistration_delay <= 30])
    error_message = "Deregistration delay must be short."
  }
}

run "listener_rules_route_only_product_and_cart" {
  command = plan

  assert {
    condition     = one(one(aws_lb_listener_rule.product.condition).path_pattern).values == toset(["/product*"])
    error_message = "/product* must be routed."
  }
  assert {
    condition     = one(aws_lb_listener_rule.product.action).target_group_arn == aws_lb_target_group.this["product"].arn
    error_message = "/product* must go to the product target group."
  }
  assert {
    condition     = one(one(aws_lb_listener_rule.cart.condition).path_pattern).values == toset(["/shopping-cart*", "/orders*", "/customers*"])
    error_message = "/shopping-cart*, /orders* and /customers* must be routed (and nothing else to the cart)."
  }
  assert {
    condition     = one(aws_lb_listener_rule.cart.action).target_group_arn == aws_lb_target_group.this["cart"].arn
    error_message = "/shopping-cart* must go to the cart target group."
  }
  assert {
    condition     = aws_lb_listener.http.default_action[0].type == "fixed-response" && aws_lb_listener.http.default_action[0].fixed_response[0].status_code == "404"
    error_message = "Unrouted paths must get a fixed 404."
  }
  assert {
    condition     = keys(aws_lb_target_group.this) == ["cart", "product"]
    error_message = "Only the product and cart target groups may exist (nothing for the authorizer)."
  }
  assert {
    condition = alltrue([
      for p in concat(tolist(one(one(aws_lb_listener_rule.product.condition).path_pattern).values), tolist(one(one(aws_lb_listener_rule.cart.condition).path_pattern).values)) :
      !strcontains(p, "credit-card") && !startswith("/credit-card-authorizer/authorize", trimsuffix(p, "*"))
    ])
    error_message = "No listener rule may match /credit-card-authorizer/authorize."
  }
  assert {
    condition     = length(aws_ecs_service.service["credit-card-authorizer"].load_balancer) == 0 && length(aws_ecs_service.service["warehouse"].load_balancer) == 0
    error_message = "The authorizer and the warehouse must not be behind the ALB."
  }
}

run "three_product_tasks_split_good_and_bad" {
  command = plan

  assert {
    condition     = aws_ecs_service.service["product"].desired_count == 2 && aws_ecs_service.service["product-bad"].desired_count == 1
    error_message = "Expected two healthy product tasks and one bad one."
  }
  assert {
    condition = alltrue([
      for s in ["product", "product-bad"] :
      one(aws_ecs_service.service[s].load_balancer).target_group_arn == aws_lb_target_group.this["product"].arn
    ])
    error_message = "Good and bad product tasks must share the product target group."
  }
  assert {
    condition     = { for e in jsondecode(aws_ecs_task_definition.service["product-bad"].container_definitions)[0].environment : e.name => e.value }["FAILURE_RATE"] == "0.5"
    error_message = "The bad product task must run with FAILURE_RATE=0.5."
  }
  assert {
    condition     = { for e in jsondecode(aws_ecs_task_definition.service["product"].container_definitions)[0].environment : e.name => e.value }["FAILURE_RATE"] == "0"
    error_message = "The healthy product tasks must run with FAILURE_RATE=0."
  }
  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      jsondecode(td.container_definitions)[0].healthCheck.command == ["CMD", "/usr/local/bin/service", "healthcheck"]
    ])
    error_message = "Container health checks must use the binary's healthcheck subcommand (no curl)."
  }
  assert {
    condition = alltrue([
      for s in ["product", "product-bad"] :
      { for e in jsondecode(aws_ecs_task_definition.service[s].container_definitions)[0].environment : e.name => e.value }["SEED_PRODUCTS"] == "1000"
    ])
    error_message = "Every product task must be seeded."
  }
}

run "authorizer_only_reachable_from_cart" {
  command = plan

  assert {
    condition = alltrue([
      for r in aws_vpc_security_group_ingress_rule.internal :
      r.referenced_security_group_id == aws_security_group.this["cart"].id
      if r.security_group_id == aws_security_group.this["credit-card-authorizer"].id
    ])
    error_message = "Only the cart security group may reach the authorizer."
  }
  assert {
    condition = length([
      for r in aws_vpc_security_group_ingress_rule.internal : r
      if r.security_group_id == aws_security_group.this["credit-card-authorizer"].id
    ]) == 1
    error_message = "The authorizer must have exactly one ingress rule."
  }
  assert {
    condition = alltrue([
      for r in aws_vpc_security_group_ingress_rule.alb_http :
      r.security_group_id == aws_security_group.this["alb"].id
    ])
    error_message = "Only the ALB accepts traffic from CIDR blocks."
  }
  assert {
    condition     = one(aws_ecs_service.service["credit-card-authorizer"].network_configuration).security_groups == toset([aws_security_group.this["credit-card-authorizer"].id])
    error_message = "The authorizer tasks must run in their own security group."
  }
  assert {
    condition     = { for e in jsondecode(aws_ecs_task_definition.service["cart"].container_definitions)[0].environment : e.name => e.value }["CCA_URL"] == "http://credit-card-authorizer.shop.local:8083"
    error_message = "The cart must reach the authorizer by its Cloud Map name."
  }
  assert {
    condition = toset([
      for r in aws_vpc_security_group_egress_rule.internal : r.referenced_security_group_id
      if r.security_group_id == aws_security_group.this["alb"].id
    ]) == toset([aws_security_group.this["product"].id, aws_security_group.this["cart"].id])
    error_message = "The ALB may open connections to the product and cart tasks only (never the authorizer)."
  }
  assert {
    condition     = length(aws_ecs_service.service["credit-card-authorizer"].load_balancer) == 0 && one(aws_ecs_service.service["credit-card-authorizer"].network_configuration).assign_public_ip == false
    error_message = "The authorizer is behind no load balancer and has no public IP."
  }
}

run "tasks_have_no_public_ips" {
  command = plan

  assert {
    condition     = alltrue([for s in aws_ecs_service.service : one(s.network_configuration).assign_public_ip == false])
    error_message = "No task may get a public IP."
  }
  assert {
    condition     = alltrue([for s in aws_ecs_service.rabbitmq : one(s.network_configuration).assign_public_ip == false])
    error_message = "The RabbitMQ task may not get a public IP."
  }
  assert {
    condition = alltrue([
      for s in aws_ecs_service.service :
      one(s.network_configuration).subnets == toset(aws_subnet.private[*].id)
    ])
    error_message = "Tasks run in the private subnets."
  }
  assert {
    condition     = alltrue([for s in aws_subnet.public : s.map_public_ip_on_launch == false])
    error_message = "Public subnets must not hand out public IPs automatically."
  }
}

run "secrets_come_from_ssm_not_the_environment" {
  command = plan

  assert {
    condition = alltrue([
      for k in ["cart", "warehouse", "product", "product-bad"] :
      contains([for s in jsondecode(aws_ecs_task_definition.service[k].container_definitions)[0].secrets : s.name], "AMQP_URL")
    ])
    error_message = "cart, warehouse and the product tasks (stock events) get AMQP_URL as an ECS secret."
  }
  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      !contains([for e in jsondecode(td.container_definitions)[0].environment : e.name], "AMQP_URL")
    ])
    error_message = "AMQP_URL must never be a plain environment variable."
  }
  assert {
    condition     = aws_ssm_parameter.amqp_url.type == "SecureString"
    error_message = "AMQP_URL is stored as a SecureString."
  }
}

run "services_deploy_safely" {
  command = plan

  assert {
    condition = alltrue([
      for s in concat(values(aws_ecs_service.service), aws_ecs_service.rabbitmq) :
      one(s.deployment_circuit_breaker).enable && one(s.deployment_circuit_breaker).rollback
    ])
    error_message = "Every service needs the deployment circuit breaker with rollback."
  }
  assert {
    condition     = aws_ecs_service.service["product"].health_check_grace_period_seconds > 0 && aws_ecs_service.service["cart"].health_check_grace_period_seconds > 0
    error_message = "Load-balanced services need a health check grace period."
  }
  assert {
    condition     = one([for s in aws_ecs_cluster.this.setting : s.value if s.name == "containerInsights"]) == "enabled"
    error_message = "Container Insights must be on."
  }
  assert {
    condition     = keys(aws_appautoscaling_policy.cpu) == ["cart", "product"]
    error_message = "Target-tracking autoscaling for cart and product."
  }
  assert {
    condition     = alltrue([for r in aws_ecr_repository.this : r.image_tag_mutability == "IMMUTABLE" && r.image_scanning_configuration[0].scan_on_push])
    error_message = "ECR repositories: immutable tags and scan on push."
  }
  assert {
    condition     = length(aws_efs_file_system.rabbitmq) == 1 && length(aws_mq_broker.this) == 0
    error_message = "Default RabbitMQ mode is a Fargate task on EFS."
  }
}

run "amazon_mq_uses_tls" {
  command = plan

  variables {
    rabbitmq_mode = "amazon_mq"
  }

  assert {
    condition     = length(aws_mq_broker.this) == 1 && length(aws_ecs_service.rabbitmq) == 0 && length(aws_efs_file_system.rabbitmq) == 0
    error_message = "amazon_mq mode replaces the Fargate broker."
  }
  assert {
    condition     = aws_mq_broker.this[0].publicly_accessible == false && aws_mq_broker.this[0].engine_type == "RabbitMQ"
    error_message = "The Amazon MQ broker must be private RabbitMQ."
  }
  assert {
    condition     = startswith(nonsensitive(aws_ssm_parameter.amqp_url.value), "amqps://shop:") && endswith(nonsensitive(aws_ssm_parameter.amqp_url.value), "@b-1234.mq.eu-west-1.amazonaws.com:5671/%2f")
    error_message = "With Amazon MQ the services must connect over TLS (amqps://...:5671)."
  }
  assert {
    condition = alltrue([
      for r in aws_vpc_security_group_ingress_rule.internal : r.from_port == 5671
      if r.security_group_id == aws_security_group.this["rabbitmq"].id
    ])
    error_message = "The broker accepts AMQPS (5671) only."
  }
}

# Combinations AWS refuses at apply time are rejected at plan time.
run "rejects_stickiness_with_weighted_random" {
  command = plan

  variables {
    product_stickiness_enabled = true
  }

  expect_failures = [aws_lb_target_group.this["product"]]
}

run "rejects_slow_start_with_weighted_random" {
  command = plan

  variables {
    product_slow_start_seconds = 60
  }

  expect_failures = [aws_lb_target_group.this["product"]]
}

run "rejects_slow_start_with_least_outstanding_requests" {
  command = plan

  variables {
    product_lb_algorithm       = "least_outstanding_requests"
    product_anomaly_mitigation = "off"
    product_slow_start_seconds = 60
  }

  expect_failures = [aws_lb_target_group.this["product"]]
}

run "rejects_anomaly_mitigation_without_weighted_random" {
  command = plan

  variables {
    product_lb_algorithm = "least_outstanding_requests"
  }

  expect_failures = [aws_lb_target_group.this["product"]]
}

run "allows_round_robin_without_anomaly_mitigation" {
  command = plan

  variables {
    product_lb_algorithm       = "round_robin"
    product_anomaly_mitigation = "off"
    product_stickiness_enabled = true
    product_slow_start_seconds = 60
  }

  assert {
    condition     = aws_lb_target_group.this["product"].load_balancing_algorithm_type == "round_robin"
    error_message = "round_robin with stickiness and slow start is a valid combination."
  }
}

run "rejects_latest_image_tag" {
  command = plan

  variables {
    image_tag = "latest"
  }

  expect_failures = [var.image_tag]
}

############################################################################
# Authentication (issue #19)
############################################################################

run "auth_keys_come_from_secrets_manager" {
  command = plan

  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      { for s in jsondecode(td.container_definitions)[0].secrets : s.name => s.valueFrom }["API_KEYS"] == aws_secretsmanager_secret.auth["api-keys"].arn
    ])
    error_message = "Every service's task definition gets API_KEYS from the api-keys secret."
  }
  assert {
    condition = [
      for k, td in aws_ecs_task_definition.service : k
      if contains([for s in jsondecode(td.container_definitions)[0].secrets : s.name], "SERVICE_API_KEY")
    ] == ["cart"]
    error_message = "Only the cart gets SERVICE_API_KEY."
  }
  assert {
    condition     = { for s in jsondecode(aws_ecs_task_definition.service["cart"].container_definitions)[0].secrets : s.name => s.valueFrom }["SERVICE_API_KEY"] == aws_secretsmanager_secret.auth["service-api-key"].arn
    error_message = "The cart gets SERVICE_API_KEY from the service-api-key secret."
  }
  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      lookup({ for e in jsondecode(td.container_definitions)[0].environment : e.name => e.value }, "AUTH_MODE", "") == "on"
    ])
    error_message = "AUTH_MODE is on in every task definition."
  }
  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      length(setintersection(toset([for e in jsondecode(td.container_definitions)[0].environment : e.name]), toset(["API_KEYS", "SERVICE_API_KEY", "JWT_JWKS", "JWT_ISSUER", "JWT_AUDIENCE"]))) == 0
    ])
    error_message = "No key in plain environment; no JWT settings unless jwt_jwks_url is set."
  }
  assert {
    condition = toset(one([
      for st in jsondecode(aws_iam_role_policy.execution_secrets.policy).Statement : st.Resource
      if st.Sid == "ReadAuthKeys"
    ])) == toset([aws_secretsmanager_secret.auth["api-keys"].arn, aws_secretsmanager_secret.auth["service-api-key"].arn])
    error_message = "The execution role may read exactly the two auth secrets (ReadAuthKeys)."
  }
  assert {
    condition = alltrue([
      for st in jsondecode(aws_iam_role_policy.execution_secrets.policy).Statement :
      flatten([st.Action]) == ["secretsmanager:GetSecretValue"] && st.Effect == "Allow"
      if st.Sid == "ReadAuthKeys"
    ])
    error_message = "ReadAuthKeys allows secretsmanager:GetSecretValue only."
  }
  assert {
    condition     = keys(aws_secretsmanager_secret.auth) == ["api-keys", "service-api-key"] && aws_secretsmanager_secret.auth["api-keys"].name == "shop/api-keys"
    error_message = "The auth secrets are <name>/api-keys and <name>/service-api-key (scripts/deploy-aws.sh puts their values)."
  }
}

run "jwt_settings_reach_every_task" {
  command = plan

  variables {
    jwt_jwks_url = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example/.well-known/jwks.json"
    jwt_issuer   = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example"
    jwt_audience = "example-client-id"
  }

  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service : (
        { for e in jsondecode(td.container_definitions)[0].environment : e.name => e.value }["JWT_JWKS"] == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example/.well-known/jwks.json" &&
        { for e in jsondecode(td.container_definitions)[0].environment : e.name => e.value }["JWT_ISSUER"] == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example" &&
        { for e in jsondecode(td.container_definitions)[0].environment : e.name => e.value }["JWT_AUDIENCE"] == "example-client-id" &&
        { for e in jsondecode(td.container_definitions)[0].environment : e.name => e.value }["AUTH_MODE"] == "on"
      )
    ])
    error_message = "With jwt_jwks_url, every task gets JWT_JWKS, JWT_ISSUER and JWT_AUDIENCE, and AUTH_MODE stays on."
  }
}

run "rejects_jwks_without_issuer_and_audience" {
  command = plan

  variables {
    jwt_jwks_url = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example/.well-known/jwks.json"
  }

  expect_failures = [var.jwt_jwks_url]
}

run "rejects_plain_http_jwks" {
  command = plan

  variables {
    jwt_jwks_url = "http://issuer.example/jwks.json"
    jwt_issuer   = "http://issuer.example"
    jwt_audience = "shop"
  }

  expect_failures = [var.jwt_jwks_url]
}

run "rejects_auth_mode_off_through_extra_environment" {
  command = plan

  variables {
    extra_environment = { cart = { AUTH_MODE = "off" } }
  }

  expect_failures = [var.extra_environment]
}

############################################################################
# PostgreSQL and Redis
############################################################################

run "datastores_are_private_and_encrypted" {
  command = plan

  assert {
    condition     = aws_db_instance.this.publicly_accessible == false && aws_db_instance.this.storage_encrypted == true
    error_message = "The database must be private and encrypted at rest."
  }
  assert {
    condition     = aws_db_subnet_group.this.subnet_ids == toset(aws_subnet.private[*].id)
    error_message = "The database lives in the private subnets."
  }
  assert {
    condition     = aws_db_instance.this.vpc_security_group_ids == toset([aws_security_group.this["postgres"].id])
    error_message = "The database has its own security group, and only that one."
  }
  assert {
    condition     = one([for p in aws_db_parameter_group.this.parameter : p.value if p.name == "rds.force_ssl"]) == "1"
    error_message = "The database refuses connections without TLS."
  }
  assert {
    condition     = aws_db_instance.this.engine == "postgres" && aws_db_instance.this.backup_retention_period >= 1
    error_message = "PostgreSQL with automated backups."
  }
  assert {
    condition     = tostring(aws_elasticache_replication_group.this.at_rest_encryption_enabled) == "true"
    error_message = "Redis is encrypted at rest."
  }
  assert {
    condition     = aws_elasticache_subnet_group.this.subnet_ids == toset(aws_subnet.private[*].id)
    error_message = "Redis lives in the private subnets."
  }
  assert {
    condition     = aws_elasticache_replication_group.this.security_group_ids == toset([aws_security_group.this["redis"].id])
    error_message = "Redis has its own security group, and only that one."
  }
  assert {
    condition = (
      aws_elasticache_replication_group.this.num_cache_clusters == 2 &&
      aws_elasticache_replication_group.this.automatic_failover_enabled &&
      aws_elasticache_replication_group.this.multi_az_enabled
    )
    error_message = "By default Redis has a replica in the other AZ and fails over to it."
  }
}

run "datastores_only_reachable_from_their_services" {
  command = plan

  assert {
    condition = toset([
      for r in aws_vpc_security_group_ingress_rule.internal : r.referenced_security_group_id
      if r.security_group_id == aws_security_group.this["postgres"].id
    ]) == toset([aws_security_group.this["product"].id, aws_security_group.this["warehouse"].id, aws_security_group.this["cart"].id])
    error_message = "PostgreSQL accepts the product, cart and warehouse security groups, and no other."
  }
  assert {
    condition = alltrue([
      for r in aws_vpc_security_group_ingress_rule.internal : r.from_port == 5432 && r.to_port == 5432
      if r.security_group_id == aws_security_group.this["postgres"].id
    ])
    error_message = "PostgreSQL accepts port 5432 only."
  }
  assert {
    condition = [
      for r in aws_vpc_security_group_ingress_rule.internal : r.referenced_security_group_id
      if r.security_group_id == aws_security_group.this["redis"].id
    ] == [aws_security_group.this["cart"].id]
    error_message = "Redis accepts the cart's security group, and no other."
  }
  assert {
    condition = alltrue([
      for r in aws_vpc_security_group_ingress_rule.internal : r.from_port == 6379 && r.to_port == 6379
      if r.security_group_id == aws_security_group.this["redis"].id
    ])
    error_message = "Redis accepts port 6379 only."
  }
  assert {
    condition = length([
      for r in concat(values(aws_vpc_security_group_egress_rule.internal), values(aws_vpc_security_group_egress_rule.https)) : r
      if contains([aws_security_group.this["postgres"].id, aws_security_group.this["redis"].id], r.security_group_id)
    ]) == 0
    error_message = "The data stores open no connections of their own."
  }
  assert {
    condition = toset([
      for r in aws_vpc_security_group_egress_rule.internal : r.security_group_id
      if r.referenced_security_group_id == aws_security_group.this["redis"].id
    ]) == toset([aws_security_group.this["cart"].id])
    error_message = "Only the cart may open connections to Redis."
  }
}

run "store_urls_are_secrets" {
  command = plan

  assert {
    condition = alltrue([
      for k in ["product", "product-bad", "warehouse", "cart"] :
      { for s in jsondecode(aws_ecs_task_definition.service[k].container_definitions)[0].secrets : s.name => s.valueFrom }["DATABASE_URL"] == aws_secretsmanager_secret.store_url["database-url"].arn
    ])
    error_message = "product, product-bad, warehouse and cart (orders) get DATABASE_URL from Secrets Manager."
  }
  assert {
    condition     = { for s in jsondecode(aws_ecs_task_definition.service["cart"].container_definitions)[0].secrets : s.name => s.valueFrom }["REDIS_URL"] == aws_secretsmanager_secret.store_url["redis-url"].arn
    error_message = "The cart gets REDIS_URL from Secrets Manager."
  }
  assert {
    condition = alltrue([
      for k, td in aws_ecs_task_definition.service :
      length(setintersection(toset([for e in jsondecode(td.container_definitions)[0].environment : e.name]), toset(["DATABASE_URL", "REDIS_URL", "PGPASSWORD"]))) == 0
    ])
    error_message = "No store URL or password may be a plain environment variable."
  }
  assert {
    condition = alltrue([
      for k in ["credit-card-authorizer"] :
      !contains([for s in jsondecode(aws_ecs_task_definition.service[k].container_definitions)[0].secrets : s.name], "DATABASE_URL")
    ])
    error_message = "Only the services that use the database get its URL."
  }
  assert {
    condition = alltrue([
      for k, schema in { product = "catalog", product-bad = "catalog", warehouse = "warehouse", cart = "orders" } :
      { for e in jsondecode(aws_ecs_task_definition.service[k].container_definitions)[0].environment : e.name => e.value }["DATABASE_SCHEMA"] == schema
    ])
    error_message = "Each service works in its own schema; every product task in the one catalog."
  }
  assert {
    condition = toset(flatten([
      for st in jsondecode(aws_iam_role_policy.execution_secrets.policy).Statement : st.Resource
      if contains(flatten([st.Action]), "secretsmanager:GetSecretValue")
    ])) == toset(concat([for s in aws_secretsmanager_secret.store_url : s.arn], [for s in aws_secretsmanager_secret.auth : s.arn]))
    error_message = "The execution role reads exactly the two store secrets and the two auth secrets from Secrets Manager."
  }
  assert {
    condition     = aws_db_instance.this.password == null && aws_db_instance.this.password_wo_version == 1
    error_message = "The database password is write-only (never in the state), versioned for rotation."
  }
  assert {
    condition     = aws_secretsmanager_secret_version.database_url.secret_string == null && aws_secretsmanager_secret_version.database_url.secret_string_wo_version == 1
    error_message = "DATABASE_URL (with the password) is written write-only, never kept in the state."
  }
  assert {
    condition     = nonsensitive(aws_secretsmanager_secret_version.redis_url.secret_string) == "redis://master.shop-redis.abcdef.euw1.cache.amazonaws.com:6379/0"
    error_message = "REDIS_URL points at the replication group's primary endpoint."
  }
}

run "cart_and_product_run_several_tasks" {
  command = plan

  assert {
    condition     = aws_ecs_service.service["cart"].desired_count == 2 && aws_ecs_service.service["product"].desired_count == 2
    error_message = "The cart and the product service run two tasks by default (the state is shared)."
  }
  assert {
    condition     = aws_appautoscaling_target.service["cart"].min_capacity == 2 && aws_appautoscaling_target.service["cart"].max_capacity >= 2
    error_message = "Autoscaling keeps at least two cart tasks."
  }
  assert {
    condition     = length(aws_lb_target_group.this["cart"].stickiness) == 0
    error_message = "Shared carts need no sticky sessions."
  }
}

run "password_rotation_rewrites_instance_and_secret_together" {
  command = plan

  variables {
    db_password_version = 2
  }

  assert {
    condition     = aws_db_instance.this.password_wo_version == 2 && aws_secretsmanager_secret_version.database_url.secret_string_wo_version == 2
    error_message = "A new password version reaches both the instance and the DATABASE_URL secret."
  }
}

run "single_redis_node_has_no_failover" {
  command = plan

  variables {
    redis_nodes = 1
  }

  assert {
    condition     = !aws_elasticache_replication_group.this.automatic_failover_enabled && !aws_elasticache_replication_group.this.multi_az_enabled
    error_message = "One Redis node cannot fail over (AWS refuses the combination)."
  }
}

run "rejects_no_cart_tasks" {
  command = plan

  variables {
    cart_desired_count = 0
  }

  expect_failures = [var.cart_desired_count]
}
