locals {
  alb_url = "http://${aws_lb.this.dns_name}"
}

output "alb_url" {
  description = "Public URL of the system (the ALB)."
  value       = local.alb_url
}

output "test_api_command" {
  description = "Run the curl suite against the ALB (from the repository root)."
  value       = "scripts/test-api.sh ${local.alb_url}"
}

output "loadtest_commands" {
  description = "Run the load tester against the ALB (from the repository root, after cargo build --release)."
  value = {
    product  = "./target/release/loadtest product --base-url ${local.alb_url}"
    flow     = "./target/release/loadtest flow --base-url ${local.alb_url}"
    checkout = "./target/release/loadtest checkout --base-url ${local.alb_url}"
  }
}

output "ecr_repository_urls" {
  description = "ECR repository URL per binary: push <url>:<git commit>."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "ecs_cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "ecs_service_names" {
  description = "ECS services to wait for (aws ecs wait services-stable)."
  value       = concat([for s in aws_ecs_service.service : s.name], aws_ecs_service.rabbitmq[*].name)
}

output "product_target_group_arn" {
  description = "Product target group (ATW): watch its targets and the anomaly state in the console."
  value       = aws_lb_target_group.this["product"].arn
}

output "rabbitmq_endpoint" {
  description = "Where the services reach RabbitMQ (no credentials)."
  value       = "${local.amqp_scheme}://${local.amqp_host}"
}

output "amqp_url_parameter" {
  description = "SSM SecureString parameter holding AMQP_URL."
  value       = aws_ssm_parameter.amqp_url.name
}

output "amazon_mq_broker_id" {
  description = "Amazon MQ broker id (rabbitmq_mode = amazon_mq), empty otherwise; its log groups are created by AWS outside Terraform."
  value       = try(aws_mq_broker.this[0].id, "")
}

output "database_endpoint" {
  description = "Where the product and warehouse tasks reach PostgreSQL (host:port, no credentials); the database is shop, one schema per service."
  value       = "${aws_db_instance.this.address}:${aws_db_instance.this.port}"
}

output "redis_endpoint" {
  description = "Where the cart tasks reach Redis (primary endpoint, host:port)."
  value       = "${aws_elasticache_replication_group.this.primary_endpoint_address}:${aws_elasticache_replication_group.this.port}"
}

output "auth_secrets" {
  description = "Secrets Manager secrets holding API_KEYS (hashes, every service) and SERVICE_API_KEY (the cart's key); values put by scripts/deploy-aws.sh, not Terraform."
  value       = { for k, s in aws_secretsmanager_secret.auth : k => s.name }
}

output "store_url_secrets" {
  description = "Secrets Manager secrets holding DATABASE_URL (with the password) and REDIS_URL."
  value       = { for k, s in aws_secretsmanager_secret.store_url : k => s.name }
}
