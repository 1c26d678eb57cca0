locals {
  namespace = var.service_discovery_namespace

  # ECR repository (= binary name) per deployable service. The gateway is not deployed: the ALB replaces it.
  repositories = {
    product                = "product-service"
    cart                   = "cart-service"
    credit-card-authorizer = "credit-card-authorizer"
    warehouse              = "warehouse"
  }

  common_environment = merge(local.auth_environment, {
    RUST_LOG   = var.log_level
    LOG_FORMAT = "json"
    QUEUE_TYPE = var.queue_type
    # Behind the ALB: its X-Forwarded-For entry names the client for a rate limit (RATE_LIMIT_RPS,
    # off unless set through extra_environment).
    TRUSTED_PROXY_HOPS = "1"
    }, var.otel_exporter_otlp_endpoint == "" ? {} : {
    # Traces over OTLP/gRPC to a collector in the VPC (an ADOT collector forwarding to X-Ray, say),
    # a sampled share of new traces; a request that arrives sampled stays sampled.
    OTEL_EXPORTER_OTLP_ENDPOINT = var.otel_exporter_otlp_endpoint
    OTEL_EXPORTER_OTLP_PROTOCOL = "grpc"
    OTEL_TRACES_SAMPLER         = "parentbased_traceidratio"
    OTEL_TRACES_SAMPLER_ARG     = tostring(var.otel_traces_sampler_ratio)
  })

  # The AMQP URL (with credentials) only ever reaches a task through the SSM parameter, the store
  # URLs and the API keys only through Secrets Manager (datastores.tf, auth.tf): API_KEYS to
  # every task, SERVICE_API_KEY to the cart alone.
  amqp_secret     = { AMQP_URL = aws_ssm_parameter.amqp_url.arn }
  database_secret = { DATABASE_URL = aws_secretsmanager_secret.store_url["database-url"].arn }
  redis_secret    = { REDIS_URL = aws_secretsmanager_secret.store_url["redis-url"].arn }

  # Every product task (the bad one too) works on the one shared catalog.
  catalog_environment = {
    DATABASE_SCHEMA          = "catalog"
    DATABASE_MAX_CONNECTIONS = tostring(var.db_max_connections_per_task)
  }

  # One entry per ECS service. product and product-bad run the same image and register in the
  # same target group: ATW on that group should shift weight away from the bad task.
  workloads = {
    product = {
      repository     = local.repositories.product
      size           = var.task_sizes.product
      port           = 8081
      desired_count  = var.product_desired_count
      security_group = "product"
      target_group   = "product"
      discovery      = "product" # the cart calls product.<namespace>: only the healthy tasks
      environment = merge(local.catalog_environment, {
        INSTANCE_ID   = "product-good"
        SEED_PRODUCTS = tostring(var.seed_products)
        FAILURE_RATE  = "0"
      })
      secrets = merge(local.database_secret, local.amqp_secret, local.api_keys_secret)
    }
    product-bad = {
      repository     = local.repositories.product
      size           = var.task_sizes.product
      port           = 8081
      desired_count  = var.product_bad_desired_count
      security_group = "product"
      target_group   = "product"
      discovery      = null
      environment = merge(local.catalog_environment, {
        INSTANCE_ID   = "product-bad"
        SEED_PRODUCTS = tostring(var.seed_products)
        FAILURE_RATE  = var.product_bad_failure_rate
      })
      secrets = merge(local.database_secret, local.amqp_secret, local.api_keys_secret)
    }
    cart = {
      repository     = local.repositories.cart
      size           = var.task_sizes.cart
      port           = 8082
      desired_count  = var.cart_desired_count
      security_group = "cart"
      target_group   = "cart"
      discovery      = null
      environment = {
        INSTANCE_ID       = "cart"
        PRODUCT_URL       = "http://product.${local.namespace}:8081"
        CCA_URL           = "http://credit-card-authorizer.${local.namespace}:8083"
        CHANNEL_POOL_SIZE = tostring(var.cart_channel_pool_size)
        REDIS_KEY_PREFIX  = "${var.name}:"
        CART_TTL_SECONDS  = tostring(var.cart_ttl_seconds)
        DATABASE_SCHEMA   = "orders"
        # The cart keeps a pool per task, like the warehouse: the same per-task budget.
        DATABASE_MAX_CONNECTIONS = tostring(var.db_max_connections_per_task)
      }
      secrets = merge(local.amqp_secret, local.redis_secret, local.database_secret, local.api_keys_secret, local.service_key_secret)
    }
    credit-card-authorizer = {
      repository     = local.repositories["credit-card-authorizer"]
      size           = var.task_sizes["credit-card-authorizer"]
      port           = 8083
      desired_count  = 1
      security_group = "credit-card-authorizer"
      target_group   = null # internal only: no ALB route
      discovery      = "credit-card-authorizer"
      environment = {
        INSTANCE_ID  = "credit-card-authorizer"
        DECLINE_RATE = var.decline_rate
      }
      secrets = local.api_keys_secret
    }
    warehouse = {
      repository     = local.repositories.warehouse
      size           = var.task_sizes.warehouse
      port           = 8084
      desired_count  = 1
      security_group = "warehouse"
      target_group   = null
      discovery      = null
      environment = {
        INSTANCE_ID              = "warehouse"
        WAREHOUSE_CHANNELS       = tostring(var.warehouse_channels)
        WAREHOUSE_PREFETCH       = tostring(var.warehouse_prefetch)
        DATABASE_SCHEMA          = "warehouse"
        DATABASE_MAX_CONNECTIONS = tostring(var.db_max_connections_per_task)
      }
      secrets = merge(local.amqp_secret, local.database_secret, local.api_keys_secret)
    }
  }

  autoscaled = {
    product = { min = var.product_desired_count, max = var.product_max_count }
    cart    = { min = var.cart_desired_count, max = var.cart_max_count }
  }
}
