############################################################################
# General
############################################################################

variable "aws_region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "eu-west-1"
}

variable "name" {
  description = "Name prefix for every resource (also the Project tag). Lower case, short: it ends up in ALB and target group names (32 characters max)."
  type        = string
  default     = "shop"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.name))
    error_message = "name must be 2-16 characters of lower case letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "image_tag" {
  description = "Image tag to deploy for every service, normally the git commit (scripts/deploy-aws.sh sets it). ECR tags are immutable, so 'latest' is refused."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid Docker tag other than 'latest' (use the git commit)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the images and the Fargate tasks: X86_64 or ARM64 (build the images for the same one)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

############################################################################
# Network
############################################################################

variable "vpc_cidr" {
  description = "CIDR of the VPC; split into two public and two private /20 subnets."
  type        = string
  default     = "10.42.0.0/16"
}

variable "availability_zones" {
  description = "Exactly two availability zones to use. Empty: the first two available in the region."
  type        = list(string)
  default     = []

  validation {
    condition     = length(var.availability_zones) == 0 || length(var.availability_zones) == 2
    error_message = "availability_zones must be empty or list exactly two zones."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for both private subnets (cheaper, one AZ is a single point of failure for egress) instead of one per AZ."
  type        = bool
  default     = true
}

variable "allowed_ingress_cidrs" {
  description = "CIDR blocks allowed to reach the ALB on port 80. Narrow it to your own address for a private demo."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

############################################################################
# ECS services
############################################################################

variable "task_sizes" {
  description = "Fargate cpu (units) and memory (MiB) per task. Keys: product (also used by product-bad), cart, credit-card-authorizer, warehouse, rabbitmq."
  type = map(object({
    cpu    = number
    memory = number
  }))
  default = {
    product                = { cpu = 256, memory = 512 }
    cart                   = { cpu = 256, memory = 512 }
    credit-card-authorizer = { cpu = 256, memory = 512 }
    warehouse              = { cpu = 256, memory = 512 }
    rabbitmq               = { cpu = 512, memory = 1024 }
  }

  validation {
    condition = alltrue([
      for k in ["product", "cart", "credit-card-authorizer", "warehouse", "rabbitmq"] : contains(keys(var.task_sizes), k)
    ])
    error_message = "task_sizes needs entries for product, cart, credit-card-authorizer, warehouse and rabbitmq."
  }
}

variable "product_desired_count" {
  description = "Healthy product tasks (FAILURE_RATE=0), sharing the catalog in PostgreSQL. Also the autoscaling minimum."
  type        = number
  default     = 2

  validation {
    condition     = var.product_desired_count >= 1 && floor(var.product_desired_count) == var.product_desired_count
    error_message = "product_desired_count must be a whole number of at least 1."
  }
}

variable "product_max_count" {
  description = "Autoscaling maximum for the healthy product service."
  type        = number
  default     = 6
}

variable "product_bad_desired_count" {
  description = "Deliberately bad product tasks registered in the same target group (green /health, FAILURE_RATE share of 503s). 0 removes them."
  type        = number
  default     = 1
}

variable "product_bad_failure_rate" {
  description = "FAILURE_RATE of the bad product tasks."
  type        = string
  default     = "0.5"

  validation {
    condition     = can(tonumber(var.product_bad_failure_rate)) && tonumber(var.product_bad_failure_rate) >= 0 && tonumber(var.product_bad_failure_rate) <= 1
    error_message = "product_bad_failure_rate must be a number between 0 and 1."
  }
}

variable "seed_products" {
  description = "SEED_PRODUCTS for every product task: ids 1..N are created in the shared catalog if missing (idempotent, so every task may seed)."
  type        = number
  default     = 1000
}

variable "cart_desired_count" {
  description = "Cart tasks, sharing the carts in Redis (any task serves any cart). Also the autoscaling minimum."
  type        = number
  default     = 2

  validation {
    condition     = var.cart_desired_count >= 1 && floor(var.cart_desired_count) == var.cart_desired_count
    error_message = "cart_desired_count must be a whole number of at least 1."
  }
}

variable "cart_max_count" {
  description = "Autoscaling maximum for the cart service."
  type        = number
  default     = 4
}

variable "autoscaling_cpu_target" {
  description = "Target average CPU utilisation (%) of the target-tracking policies for product and cart."
  type        = number
  default     = 60
}

variable "decline_rate" {
  description = "DECLINE_RATE of the credit card authorizer."
  type        = string
  default     = "0.10"
}

variable "cart_channel_pool_size" {
  description = "CHANNEL_POOL_SIZE of the cart (AMQP channels)."
  type        = number
  default     = 20
}

variable "warehouse_channels" {
  description = "WAREHOUSE_CHANNELS (consumer channels)."
  type        = number
  default     = 10
}

variable "warehouse_prefetch" {
  description = "WAREHOUSE_PREFETCH per channel."
  type        = number
  default     = 10
}

variable "queue_type" {
  description = "QUEUE_TYPE for order_queue: classic or quorum."
  type        = string
  default     = "classic"

  validation {
    condition     = contains(["classic", "quorum"], var.queue_type)
    error_message = "queue_type must be classic or quorum."
  }
}

variable "log_level" {
  description = "RUST_LOG for every service."
  type        = string
  default     = "info"
}

variable "otel_exporter_otlp_endpoint" {
  description = "OTLP/gRPC collector for the services' traces, e.g. an ADOT collector in the VPC (http://otel-collector.shop.local:4317). Empty: no traces."
  type        = string
  default     = ""

  validation {
    condition     = var.otel_exporter_otlp_endpoint == "" || can(regex("^http://[^/]+$", var.otel_exporter_otlp_endpoint))
    error_message = "otel_exporter_otlp_endpoint must be empty or http://host:port (the services export in plain gRPC to a collector in the VPC)."
  }
}

variable "otel_traces_sampler_ratio" {
  description = "The share of new traces kept when otel_exporter_otlp_endpoint is set (0 to 1)."
  type        = number
  default     = 0.1

  validation {
    condition     = var.otel_traces_sampler_ratio >= 0 && var.otel_traces_sampler_ratio <= 1
    error_message = "otel_traces_sampler_ratio must be between 0 and 1."
  }
}

variable "extra_environment" {
  description = "Extra environment variables per workload (keys: product, product-bad, cart, credit-card-authorizer, warehouse). Not for secrets, nor for the authentication settings."
  type        = map(map(string))
  default     = {}

  validation {
    condition = alltrue([
      for env in values(var.extra_environment) :
      length(setintersection(keys(env), ["AUTH_MODE", "API_KEYS", "SERVICE_API_KEY", "JWT_JWKS", "JWT_ISSUER", "JWT_AUDIENCE"])) == 0
    ])
    error_message = "extra_environment may not set AUTH_MODE (always on), API_KEYS or SERVICE_API_KEY (Secrets Manager) or JWT_JWKS/JWT_ISSUER/JWT_AUDIENCE (the jwt_* variables)."
  }
}

variable "jwt_jwks_url" {
  description = "HTTPS URL of the JWKS that signs the bearer tokens the services accept (e.g. a Cognito user pool's https://cognito-idp.<region>.amazonaws.com/<pool id>/.well-known/jwks.json). Empty: no JWTs, API keys only."
  type        = string
  default     = ""

  validation {
    condition     = var.jwt_jwks_url == "" || startswith(var.jwt_jwks_url, "https://")
    error_message = "jwt_jwks_url must be empty or an https:// URL."
  }
  validation {
    condition     = var.jwt_jwks_url == "" || (var.jwt_issuer != "" && var.jwt_audience != "")
    error_message = "jwt_jwks_url needs jwt_issuer and jwt_audience too (the services check both claims)."
  }
}

variable "jwt_issuer" {
  description = "The iss claim the tokens must carry (Cognito: https://cognito-idp.<region>.amazonaws.com/<pool id>). Used only with jwt_jwks_url."
  type        = string
  default     = ""
}

variable "jwt_audience" {
  description = "The aud claim the tokens must carry (Cognito ID tokens: the app client id). Used only with jwt_jwks_url."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the task logs."
  type        = number
  default     = 14
}

variable "health_check_grace_period_seconds" {
  description = "Grace period before ALB health checks count for a new task of a load-balanced service."
  type        = number
  default     = 30
}

############################################################################
# Load balancer
############################################################################

variable "deregistration_delay_seconds" {
  description = "Target group deregistration delay (connection draining)."
  type        = number
  default     = 10
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the ALB. Off by default so that `terraform destroy` removes everything."
  type        = bool
  default     = false
}

variable "product_lb_algorithm" {
  description = "load_balancing_algorithm_type of the product target group. weighted_random enables automatic target weights (ATW)."
  type        = string
  default     = "weighted_random"

  validation {
    condition     = contains(["round_robin", "least_outstanding_requests", "weighted_random"], var.product_lb_algorithm)
    error_message = "product_lb_algorithm must be round_robin, least_outstanding_requests or weighted_random."
  }
}

variable "product_anomaly_mitigation" {
  description = "load_balancing_anomaly_mitigation of the product target group: on or off (on needs weighted_random)."
  type        = string
  default     = "on"

  validation {
    condition     = contains(["on", "off"], var.product_anomaly_mitigation)
    error_message = "product_anomaly_mitigation must be on or off."
  }
}

variable "product_slow_start_seconds" {
  description = "slow_start of the product target group (0 = off). AWS accepts slow start with round_robin only (not weighted_random, not least_outstanding_requests)."
  type        = number
  default     = 0
}

variable "product_stickiness_enabled" {
  description = "lb_cookie stickiness on the product target group. AWS refuses stickiness with weighted_random."
  type        = bool
  default     = false
}

variable "cart_stickiness_enabled" {
  description = "lb_cookie stickiness on the cart target group. Not needed since the carts are shared in Redis; off, so that load spreads evenly."
  type        = bool
  default     = false
}

############################################################################
# RabbitMQ
############################################################################

variable "rabbitmq_mode" {
  description = "fargate: RabbitMQ as a Fargate task with its data on EFS, reached as rabbitmq.<namespace>:5672. amazon_mq: Amazon MQ for RabbitMQ (single instance), reached over TLS (amqps://, port 5671)."
  type        = string
  default     = "fargate"

  validation {
    condition     = contains(["fargate", "amazon_mq"], var.rabbitmq_mode)
    error_message = "rabbitmq_mode must be fargate or amazon_mq."
  }
}

variable "rabbitmq_username" {
  description = "RabbitMQ user the services connect with."
  type        = string
  default     = "shop"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{2,100}$", var.rabbitmq_username)) && var.rabbitmq_username != "guest"
    error_message = "rabbitmq_username must be 2-100 letters, digits, '_' or '-', and not 'guest' (Amazon MQ refuses it)."
  }
}

variable "rabbitmq_password" {
  description = "RabbitMQ password (supply it, e.g. TF_VAR_rabbitmq_password=$(openssl rand -hex 16)). Stored in an SSM SecureString parameter; it is also in the Terraform state, so keep the state private."
  type        = string
  sensitive   = true

  validation {
    # URL-safe so that it can be embedded in AMQP_URL without escaping; Amazon MQ wants 12+ characters.
    condition     = can(regex("^[A-Za-z0-9._~-]{12,128}$", var.rabbitmq_password))
    error_message = "rabbitmq_password must be 12-128 characters from A-Z a-z 0-9 . _ ~ -."
  }
}

variable "rabbitmq_image" {
  description = "RabbitMQ image for rabbitmq_mode = fargate (ECR Public mirror of the Docker official image: no Docker Hub rate limits)."
  type        = string
  default     = "public.ecr.aws/docker/library/rabbitmq:3.13-management"
}

variable "amazon_mq_instance_type" {
  description = "Broker instance type for rabbitmq_mode = amazon_mq."
  type        = string
  default     = "mq.t3.micro"
}

variable "amazon_mq_engine_version" {
  description = "RabbitMQ engine version for rabbitmq_mode = amazon_mq."
  type        = string
  default     = "3.13"
}

variable "service_discovery_namespace" {
  description = "Private DNS namespace (Cloud Map) for the internal names: rabbitmq, credit-card-authorizer, product."
  type        = string
  default     = "shop.local"
}

############################################################################
# PostgreSQL (RDS) and Redis (ElastiCache)
############################################################################

variable "db_instance_class" {
  description = "RDS instance class of the PostgreSQL database (the catalog and the warehouse's ledger)."
  type        = string
  default     = "db.t4g.micro"
}

variable "db_engine_version" {
  description = "PostgreSQL major version (RDS picks the latest minor; minor upgrades are automatic)."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Initial storage of the database in GiB (gp3, encrypted); it grows automatically up to db_max_allocated_storage."
  type        = number
  default     = 20
}

variable "db_max_allocated_storage" {
  description = "Upper limit of storage autoscaling in GiB."
  type        = number
  default     = 100
}

variable "db_multi_az" {
  description = "A standby in the second AZ with automatic failover (doubles the database cost)."
  type        = bool
  default     = false
}

variable "db_backup_retention_days" {
  description = "Days of automated backups (point-in-time recovery) of the database."
  type        = number
  default     = 7

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35."
  }
}

variable "db_deletion_protection" {
  description = "Deletion protection of the database. Off by default so that `terraform destroy` removes everything."
  type        = bool
  default     = false
}

variable "db_skip_final_snapshot" {
  description = "Skip the final snapshot when the database is destroyed (true for a throw-away demo; false keeps a snapshot named <name>-postgres-final, which you delete yourself)."
  type        = bool
  default     = true
}

variable "db_password_version" {
  description = "Bump to generate a new database password: it is written to the instance and to the DATABASE_URL secret in the same apply; then redeploy product, product-bad and warehouse (tasks read secrets at start)."
  type        = number
  default     = 1
}

variable "db_max_connections_per_task" {
  description = "DATABASE_MAX_CONNECTIONS of every product and warehouse task. All tasks together (up to product_max_count + product_bad_desired_count + 1 warehouse) times this must stay below the instance's max_connections (DBInstanceClassMemory/9531392: about 100 on db.t4g.micro)."
  type        = number
  default     = 5
}

variable "redis_node_type" {
  description = "ElastiCache node type of the Redis that holds the carts."
  type        = string
  default     = "cache.t4g.micro"
}

variable "redis_engine_version" {
  description = "Redis engine version of the ElastiCache replication group."
  type        = string
  default     = "7.1"
}

variable "redis_nodes" {
  description = "Redis nodes: 2 (default) is a primary and a replica in the other AZ with automatic failover, so a node failure loses no carts; 1 is cheaper and loses them with the node."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_nodes >= 1 && var.redis_nodes <= 6
    error_message = "redis_nodes must be between 1 and 6."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days of daily Redis snapshots kept (0 turns them off)."
  type        = number
  default     = 1
}

variable "cart_ttl_seconds" {
  description = "CART_TTL_SECONDS: an untouched cart expires from Redis after this long."
  type        = number
  default     = 604800
}
