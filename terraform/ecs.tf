data "aws_region" "current" {}

resource "aws_ecs_cluster" "this" {
  # checkov:skip=CKV_AWS_224: ECS Exec is not enabled on any service, so there is no exec session log to encrypt
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "service" {
  # checkov:skip=CKV_AWS_158: encrypted by CloudWatch Logs' own key; a customer managed KMS key adds cost and a key policy to a demo
  # checkov:skip=CKV_AWS_338: demo logs are kept log_retention_days (14 by default), not a year
  for_each = setunion(keys(local.workloads), var.rabbitmq_mode == "fargate" ? ["rabbitmq"] : [])

  name              = "/ecs/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
}

locals {
  # The images carry the same check as their Docker HEALTHCHECK: the binary's own `healthcheck`
  # subcommand GETs http://127.0.0.1:$PORT/health, so no curl is needed in the image.
  container_health_check = {
    command     = ["CMD", "/usr/local/bin/service", "healthcheck"]
    interval    = 10
    timeout     = 5
    retries     = 3
    startPeriod = 15
  }

  container_definitions = {
    for key, w in local.workloads : key => [{
      name      = key
      image     = "${aws_ecr_repository.this[w.repository].repository_url}:${var.image_tag}"
      essential = true
      user      = "65532:65532"

      portMappings = [{
        name          = "http"
        containerPort = w.port
        hostPort      = w.port
        protocol      = "tcp"
      }]

      environment = [
        for k, v in merge(
          local.common_environment,
          w.environment,
          { PORT = tostring(w.port) },
          lookup(var.extra_environment, key, {}),
        ) : { name = k, value = v }
      ]
      secrets = [for k, arn in w.secrets : { name = k, valueFrom = arn }]

      healthCheck            = local.container_health_check
      readonlyRootFilesystem = true
      stopTimeout            = 20

      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service[key].name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = key
        }
      }
    }]
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each = local.workloads

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(each.value.size.cpu)
  memory                   = tostring(each.value.size.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode(local.container_definitions[each.key])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }
}

resource "aws_ecs_service" "service" {
  for_each = local.workloads

  name             = each.key
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.service[each.key].arn
  desired_count    = each.value.desired_count
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  enable_ecs_managed_tags = true
  enable_execute_command  = false

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # Only valid (and only meaningful) for services behind a load balancer.
  health_check_grace_period_seconds = each.value.target_group == null ? null : var.health_check_grace_period_seconds

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.this[each.value.security_group].id]
    assign_public_ip = false
  }

  dynamic "load_balancer" {
    for_each = each.value.target_group == null ? [] : [each.value.target_group]
    content {
      target_group_arn = aws_lb_target_group.this[load_balancer.value].arn
      container_name   = each.key
      container_port   = each.value.port
    }
  }

  dynamic "service_registries" {
    for_each = each.value.discovery == null ? [] : [each.value.discovery]
    content {
      registry_arn = aws_service_discovery_service.this[service_registries.value].arn
    }
  }

  # The target groups must be attached to the ALB before a service can register in them; the
  # broker, and the secrets' values, must exist before the tasks start.
  depends_on = [
    aws_lb_listener_rule.product,
    aws_lb_listener_rule.cart,
    aws_ecs_service.rabbitmq,
    aws_mq_broker.this,
    aws_iam_role_policy.execution_secrets,
    aws_secretsmanager_secret_version.database_url,
    aws_secretsmanager_secret_version.redis_url,
  ]
}

# Target tracking on CPU for the healthy product service and the cart.
resource "aws_appautoscaling_target" "service" {
  for_each = local.autoscaled

  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.service[each.key].name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = each.value.min
  max_capacity       = each.value.max

  lifecycle {
    precondition {
      condition     = each.value.max >= each.value.min
      error_message = "The autoscaling maximum of ${each.key} must be at least its desired count."
    }
  }
}

resource "aws_appautoscaling_policy" "cpu" {
  for_each = aws_appautoscaling_target.service

  name               = "${var.name}-${each.key}-cpu"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = each.value.service_namespace
  resource_id        = each.value.resource_id
  scalable_dimension = each.value.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.autoscaling_cpu_target
    scale_in_cooldown  = 120
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}
