# Credentials never sit in the repository: the password comes in as a sensitive variable, is
# stored in SSM SecureString parameters, and ECS injects it into the tasks as secrets.
locals {
  amqp_host = (
    var.rabbitmq_mode == "amazon_mq"
    # endpoints[0] is "amqps://b-<id>.mq.<region>.amazonaws.com:5671"
    ? replace(aws_mq_broker.this[0].instances[0].endpoints[0], "amqps://", "")
    : "rabbitmq.${local.namespace}:5672"
  )
  amqp_scheme = var.rabbitmq_mode == "amazon_mq" ? "amqps" : "amqp"
}

resource "aws_ssm_parameter" "amqp_url" {
  # checkov:skip=CKV_AWS_337: encrypted with the AWS managed key aws/ssm; a customer managed KMS key adds cost and a key policy to a demo
  name        = "/${var.name}/amqp-url"
  description = "AMQP_URL (with credentials) for the cart and the warehouse"
  type        = "SecureString"
  value       = "${local.amqp_scheme}://${var.rabbitmq_username}:${var.rabbitmq_password}@${local.amqp_host}/%2f"
}

resource "aws_ssm_parameter" "rabbitmq_password" {
  # checkov:skip=CKV_AWS_337: encrypted with the AWS managed key aws/ssm; a customer managed KMS key adds cost and a key policy to a demo
  count = var.rabbitmq_mode == "fargate" ? 1 : 0

  name        = "/${var.name}/rabbitmq-password"
  description = "RABBITMQ_DEFAULT_PASS of the RabbitMQ Fargate task"
  type        = "SecureString"
  value       = var.rabbitmq_password
}
