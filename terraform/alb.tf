# The ALB replaces the local gateway. Only two path rules exist:
#   /product*                                  -> product target group (healthy + bad tasks, ATW)
#   /shopping-cart*, /orders*, /customers*     -> cart target group
# Everything else, including /credit-card-authorizer/* and the product service's /internal/*
# (reservations: the cart calls them through Cloud Map), gets the default 404.

resource "aws_lb" "this" {
  # checkov:skip=CKV_AWS_91: no access-log bucket in the demo (it would have to be emptied before destroy); enable for production
  # checkov:skip=CKV2_AWS_28: no WAF in front of a short-lived demo ALB
  # checkov:skip=CKV2_AWS_76: no WAF in front of a short-lived demo ALB (Log4j rule set)
  # checkov:skip=CKV2_AWS_20: no HTTPS listener to redirect to: the demo has no domain or ACM certificate
  # checkov:skip=CKV_AWS_150: deletion protection is a variable (alb_deletion_protection), off so that destroy leaves nothing
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = aws_subnet.public[*].id
  security_groups            = [aws_security_group.this["alb"].id]
  drop_invalid_header_fields = true
  enable_deletion_protection = var.alb_deletion_protection
  idle_timeout               = 60
}

locals {
  target_groups = {
    product = { port = 8081 }
    cart    = { port = 8082 }
  }

  product_weighted_random = var.product_lb_algorithm == "weighted_random"
}

resource "aws_lb_target_group" "this" {
  # checkov:skip=CKV_AWS_378: plain HTTP from the ALB to the tasks inside the private subnets; TLS would end at the ALB anyway
  for_each = local.target_groups

  name                 = "${var.name}-${each.key}"
  target_type          = "ip"
  protocol             = "HTTP"
  port                 = each.value.port
  vpc_id               = aws_vpc.this.id
  deregistration_delay = var.deregistration_delay_seconds

  load_balancing_algorithm_type     = each.key == "product" ? var.product_lb_algorithm : "round_robin"
  load_balancing_anomaly_mitigation = each.key == "product" ? var.product_anomaly_mitigation : "off"
  slow_start                        = each.key == "product" ? var.product_slow_start_seconds : 0

  # Only sent when enabled: weighted_random refuses stickiness altogether.
  dynamic "stickiness" {
    for_each = (each.key == "product" ? var.product_stickiness_enabled : var.cart_stickiness_enabled) ? [1] : []
    content {
      type            = "lb_cookie"
      enabled         = true
      cookie_duration = 3600
    }
  }

  health_check {
    enabled             = true
    path                = "/health"
    matcher             = "200"
    protocol            = "HTTP"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  # Combinations the API accepts in a plan but refuses at apply time.
  lifecycle {
    precondition {
      condition     = !(each.key == "product" && local.product_weighted_random && var.product_stickiness_enabled)
      error_message = "Stickiness cannot be enabled on the product target group with load_balancing_algorithm_type = weighted_random."
    }
    precondition {
      condition     = !(each.key == "product" && var.product_lb_algorithm != "round_robin" && var.product_slow_start_seconds > 0)
      error_message = "Slow start needs load_balancing_algorithm_type = round_robin (AWS refuses it with weighted_random and least_outstanding_requests)."
    }
    precondition {
      condition     = !(each.key == "product" && !local.product_weighted_random && var.product_anomaly_mitigation == "on")
      error_message = "load_balancing_anomaly_mitigation = on needs load_balancing_algorithm_type = weighted_random."
    }
    precondition {
      condition     = var.product_slow_start_seconds == 0 || (var.product_slow_start_seconds >= 30 && var.product_slow_start_seconds <= 900)
      error_message = "product_slow_start_seconds must be 0 or between 30 and 900."
    }
  }
}

resource "aws_lb_listener" "http" {
  # checkov:skip=CKV_AWS_2: the demo has no domain or ACM certificate, so the ALB listens on HTTP only
  # checkov:skip=CKV_AWS_103: no TLS listener (see CKV_AWS_2)
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "fixed-response"

    fixed_response {
      content_type = "application/json"
      # The services' error body, so clients (and scripts/test-api.sh) read one shape everywhere.
      message_body = jsonencode({ error = "NOT_FOUND", message = "no route for this path" })
      status_code  = "404"
    }
  }
}

resource "aws_lb_listener_rule" "product" {
  listener_arn = aws_lb_listener.http.arn
  priority     = 10

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this["product"].arn
  }

  condition {
    path_pattern {
      values = ["/product*"] # /product, /products/{id}, /product/{id}
    }
  }
}

resource "aws_lb_listener_rule" "cart" {
  listener_arn = aws_lb_listener.http.arn
  priority     = 20

  action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this["cart"].arn
  }

  condition {
    path_pattern {
      # /shopping-cart, /shopping-carts/{id}/..., /orders/{id}[/cancel], /customers/{id}/orders
      values = ["/shopping-cart*", "/orders*", "/customers*"]
    }
  }
}
