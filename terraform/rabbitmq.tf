# RabbitMQ, selected by var.rabbitmq_mode:
#   fargate   - one RabbitMQ task, data on EFS (survives task replacement), name rabbitmq.<namespace>
#   amazon_mq - Amazon MQ for RabbitMQ, single instance, private, TLS only (amqps://...:5671)
# The services declare order_queue, its DLX and order_queue.dlq themselves in both cases.

locals {
  rabbitmq_fargate = var.rabbitmq_mode == "fargate" ? 1 : 0
  rabbitmq_mq      = var.rabbitmq_mode == "amazon_mq" ? 1 : 0
}

############################################################################
# Fargate task + EFS
############################################################################

resource "aws_efs_file_system" "rabbitmq" {
  # checkov:skip=CKV_AWS_184: encrypted at rest with the AWS managed key; a customer managed KMS key adds cost to a demo
  # checkov:skip=CKV2_AWS_18: the broker data of a demo is not backed up
  count = local.rabbitmq_fargate

  creation_token   = "${var.name}-rabbitmq"
  encrypted        = true
  performance_mode = "generalPurpose"
  throughput_mode  = "bursting"

  tags = { Name = "${var.name}-rabbitmq" }
}

resource "aws_efs_mount_target" "rabbitmq" {
  count = local.rabbitmq_fargate * 2

  file_system_id  = aws_efs_file_system.rabbitmq[0].id
  subnet_id       = aws_subnet.private[count.index].id
  security_groups = [aws_security_group.this["efs"].id]
}

# uid/gid 999 is the rabbitmq user of the official image.
resource "aws_efs_access_point" "rabbitmq" {
  count = local.rabbitmq_fargate

  file_system_id = aws_efs_file_system.rabbitmq[0].id

  posix_user {
    uid = 999
    gid = 999
  }

  root_directory {
    path = "/rabbitmq"
    creation_info {
      owner_uid   = 999
      owner_gid   = 999
      permissions = "0750"
    }
  }
}

resource "aws_ecs_task_definition" "rabbitmq" {
  count = local.rabbitmq_fargate

  family                   = "${var.name}-rabbitmq"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_sizes.rabbitmq.cpu)
  memory                   = tostring(var.task_sizes.rabbitmq.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.rabbitmq[0].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  volume {
    name = "rabbitmq-data"

    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.rabbitmq[0].id
      transit_encryption = "ENABLED"

      authorization_config {
        access_point_id = aws_efs_access_point.rabbitmq[0].id
        iam             = "ENABLED"
      }
    }
  }

  # checkov:skip=CKV_AWS_336: the RabbitMQ image writes its config and runtime files outside the data volume
  container_definitions = jsonencode([{
    name      = "rabbitmq"
    image     = var.rabbitmq_image
    essential = true

    portMappings = [
      { name = "amqp", containerPort = 5672, hostPort = 5672, protocol = "tcp" },
    ]

    environment = [
      # A fixed node name: the data directory on EFS is named after it, and task hostnames change.
      { name = "RABBITMQ_NODENAME", value = "rabbit@localhost" },
      { name = "RABBITMQ_DEFAULT_USER", value = var.rabbitmq_username },
    ]
    secrets = [
      { name = "RABBITMQ_DEFAULT_PASS", valueFrom = aws_ssm_parameter.rabbitmq_password[0].arn },
    ]

    mountPoints = [
      { sourceVolume = "rabbitmq-data", containerPath = "/var/lib/rabbitmq", readOnly = false },
    ]

    healthCheck = {
      command     = ["CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"]
      interval    = 15
      timeout     = 10
      retries     = 5
      startPeriod = 60
    }
    readonlyRootFilesystem = false
    stopTimeout            = 60

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service["rabbitmq"].name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "rabbitmq"
      }
    }
  }])
}

resource "aws_ecs_service" "rabbitmq" {
  count = local.rabbitmq_fargate

  name             = "rabbitmq"
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.rabbitmq[0].arn
  desired_count    = 1
  launch_type      = "FARGATE"
  platform_version = "LATEST"
  propagate_tags   = "SERVICE"

  enable_ecs_managed_tags = true
  enable_execute_command  = false

  # Never two brokers on the same data directory: stop the old task before starting the new one.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = aws_subnet.private[*].id
    security_groups  = [aws_security_group.this["rabbitmq"].id]
    assign_public_ip = false
  }

  service_registries {
    registry_arn = aws_service_discovery_service.this["rabbitmq"].arn
  }

  depends_on = [aws_efs_mount_target.rabbitmq, aws_iam_role_policy.execution_secrets]
}

############################################################################
# Amazon MQ for RabbitMQ
############################################################################

resource "aws_mq_broker" "this" {
  # checkov:skip=CKV_AWS_197: audit logs are an ActiveMQ feature; Amazon MQ for RabbitMQ only has general logs (enabled)
  # checkov:skip=CKV_AWS_209: encrypted at rest with an AWS owned key; a customer managed KMS key adds cost to a demo
  count = local.rabbitmq_mq

  broker_name                = "${var.name}-rabbitmq"
  engine_type                = "RabbitMQ"
  engine_version             = var.amazon_mq_engine_version
  host_instance_type         = var.amazon_mq_instance_type
  deployment_mode            = "SINGLE_INSTANCE"
  publicly_accessible        = false
  auto_minor_version_upgrade = true
  apply_immediately          = true
  subnet_ids                 = [aws_subnet.private[0].id]
  security_groups            = [aws_security_group.this["rabbitmq"].id]

  logs {
    general = true
  }

  user {
    username = var.rabbitmq_username
    password = var.rabbitmq_password
  }
}
