# Authentication (issue #19): every service checks X-API-Key (API_KEYS: the SHA-256 of each key
# with its role) and, when jwt_jwks_url is set, bearer JWTs; AUTH_MODE is "on" everywhere.
#
# Terraform creates the two secrets but never writes a value, so no key and no hash is in the
# repository, the plan or the state: scripts/deploy-aws.sh puts the values with
# `aws secretsmanager put-secret-value` before the services start (generated locally, or taken
# from the operator's environment), and rotation is a put-secret-value and a new deployment, not
# an apply (docs/aws.md, "Authentication").

locals {
  auth_secrets = {
    api-keys        = "API_KEYS of every service: <sha256-hex>:admin|service|customer:<id>, comma-separated (hashes only)"
    service-api-key = "SERVICE_API_KEY of the cart: its key in clear (role service), for its calls to product and the authorizer"
  }

  # Every task; the JWT settings only when an issuer's JWKS is given (else API keys only).
  auth_environment = merge(
    { AUTH_MODE = "on" },
    var.jwt_jwks_url == "" ? {} : {
      JWT_JWKS     = var.jwt_jwks_url
      JWT_ISSUER   = var.jwt_issuer
      JWT_AUDIENCE = var.jwt_audience
    },
  )

  api_keys_secret    = { API_KEYS = aws_secretsmanager_secret.auth["api-keys"].arn }
  service_key_secret = { SERVICE_API_KEY = aws_secretsmanager_secret.auth["service-api-key"].arn }
}

resource "aws_secretsmanager_secret" "auth" {
  # checkov:skip=CKV_AWS_149: encrypted with the AWS managed key aws/secretsmanager; a customer managed KMS key adds cost and a key policy to a demo
  # checkov:skip=CKV2_AWS_57: keys are rotated by hand, with an overlap (add the new hash, deploy, retire the old: docs/aws.md); a Lambda rotation would cut the old key off at once
  for_each = local.auth_secrets

  name        = "${var.name}/${each.key}"
  description = each.value
  # Deleted at once on destroy, so that a new deployment of the same name can be created.
  recovery_window_in_days = 0
}
