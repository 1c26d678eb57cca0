data "aws_partition" "current" {}

locals {
  ecs_assume_role = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  secret_parameter_arns = concat(
    [aws_ssm_parameter.amqp_url.arn],
    aws_ssm_parameter.rabbitmq_password[*].arn,
  )
}

# Execution role: used by the ECS agent to pull images, write logs and read the secrets.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-ecs-execution"
  assume_role_policy = local.ecs_assume_role
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

resource "aws_iam_role_policy" "execution_secrets" {
  name = "read-service-secrets"
  role = aws_iam_role.execution.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ReadServiceSecrets"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.secret_parameter_arns
      },
      {
        # The store URLs; encrypted with aws/secretsmanager, whose key policy lets Secrets Manager
        # decrypt for any principal of the account, so no kms:Decrypt grant is needed.
        Sid      = "ReadStoreUrls"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [for s in aws_secretsmanager_secret.store_url : s.arn]
      },
      {
        # API_KEYS and the cart's SERVICE_API_KEY (auth.tf), same key.
        Sid      = "ReadAuthKeys"
        Effect   = "Allow"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [for s in aws_secretsmanager_secret.auth : s.arn]
      },
    ]
  })
}

# Task role of the application services: they call no AWS API, so it grants nothing.
resource "aws_iam_role" "task" {
  name               = "${var.name}-ecs-task"
  assume_role_policy = local.ecs_assume_role
}

# Task role of the RabbitMQ task: mount and write its EFS access point, nothing else.
resource "aws_iam_role" "rabbitmq" {
  count = var.rabbitmq_mode == "fargate" ? 1 : 0

  name               = "${var.name}-rabbitmq-task"
  assume_role_policy = local.ecs_assume_role
}

resource "aws_iam_role_policy" "rabbitmq_efs" {
  count = var.rabbitmq_mode == "fargate" ? 1 : 0

  name = "rabbitmq-efs"
  role = aws_iam_role.rabbitmq[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "MountRabbitmqAccessPoint"
      Effect   = "Allow"
      Action   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      Resource = aws_efs_file_system.rabbitmq[0].arn
      Condition = {
        StringEquals = { "elasticfilesystem:AccessPointArn" = aws_efs_access_point.rabbitmq[0].arn }
      }
    }]
  })
}
