#!/usr/bin/env bash
# Deploy the system to AWS (see docs/aws.md), or tear it down.
#
#   export TF_VAR_rabbitmq_password="$(openssl rand -hex 16)"   # keep it: every later apply needs it
#   scripts/deploy-aws.sh            # build + push images, terraform apply, wait, run the curl suite
#   scripts/deploy-aws.sh test       # only run scripts/test-api.sh against the deployed ALB
#   scripts/deploy-aws.sh keys       # only put the API keys into Secrets Manager if they have none
#   scripts/deploy-aws.sh rollout    # replace every service's tasks (they read their secrets at start)
#   scripts/deploy-aws.sh destroy    # terraform destroy + the log groups AWS created on its own
#
# API keys (docs/aws.md, "Authentication"): Terraform creates the secrets <name>/api-keys and
# <name>/service-api-key but never writes them. Before the services start, this script puts a
# value into each one that has none (an existing value is never replaced):
#   service-api-key  SERVICE_API_KEY from the environment, else a new random key
#   api-keys         the SHA-256 of a new admin key (saved, mode 600, in .secrets/aws-<name>/
#                    admin.key, git-ignored) and of the service key, plus EXTRA_API_KEYS
# The keys in clear go to AWS only, through a private temporary file, never on a command line.
#
# Environment:
#   AWS_REGION (or AWS_DEFAULT_REGION)  region, default eu-west-1 (passed on as TF_VAR_aws_region)
#   TF_VAR_name                          resource name prefix, default shop
#   IMAGE_TAG                            image tag, default the git commit (+ -dirty-<time> if the tree has changes)
#   AUTO_APPROVE=1                       no confirmation prompt for the full apply / destroy
#   DOCKER_PLATFORM                      default linux/amd64 (match var.cpu_architecture)
#   EXTRA_TF_ARGS                        extra arguments for terraform apply/destroy, e.g. "-var rabbitmq_mode=amazon_mq"
#   SERVICE_API_KEY                      the cart's key for a first deployment (default: generated)
#   EXTRA_API_KEYS                       more API_KEYS entries for a first deployment, hashes only:
#                                        <sha256-hex>:admin|service|customer:<id>, comma-separated
#
# Needs: aws (v2), docker (with buildx/BuildKit), terraform >= 1.11 (write-only attributes for the database password), git, python3, openssl.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TF_DIR="$ROOT/terraform"
ACTION="${1:-apply}"

export AWS_REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-eu-west-1}}"
export TF_VAR_aws_region="$AWS_REGION"
NAME="${TF_VAR_name:-shop}"
PLATFORM="${DOCKER_PLATFORM:-linux/amd64}"
read -r -a EXTRA <<<"${EXTRA_TF_ARGS:-}"
APPROVE=()
[[ "${AUTO_APPROVE:-0}" == 1 ]] && APPROVE=(-auto-approve)

# binary:port of every image that runs on AWS (the gateway does not: the ALB replaces it).
IMAGES=(product-service:8081 cart-service:8082 credit-card-authorizer:8083 warehouse:8084)

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'deploy-aws: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required ($2)"; }
tf() { terraform -chdir="$TF_DIR" "$@"; }
tf_out() { tf output -raw "$1"; }
tf_out_list() { tf output -json "$1" | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)))'; }
sha256() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
new_key() { printf 'shop_%s_%s' "$1" "$(openssl rand -hex 24)"; }

# has_value SECRET: whether the secret has a current value (without reading it).
has_value() {
  local n
  n="$(aws secretsmanager list-secret-version-ids --secret-id "$1" \
    --query "length(Versions[?contains(VersionStages, 'AWSCURRENT')])" --output text)"
  [[ "$n" != 0 ]]
}

# put_value SECRET VALUE: through a private file, so the value is in no process's arguments.
put_value() {
  local tmp rc=0
  tmp="$(mktemp -d)" # mode 700
  printf '%s' "$2" >"$tmp/value"
  aws secretsmanager put-secret-value --secret-id "$1" --secret-string "file://$tmp/value" >/dev/null || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

# The API keys' values, once: see the header. Needs the two secrets to exist.
ensure_keys() {
  need aws "AWS CLI v2"
  need openssl "to generate the keys and their SHA-256"
  local api="$NAME/api-keys" svc="$NAME/service-api-key" dir="$ROOT/.secrets/aws-$NAME"
  local service_key="" admin_key entries
  if has_value "$svc"; then
    say "$svc has a value: kept"
  else
    service_key="${SERVICE_API_KEY:-$(new_key service)}"
    put_value "$svc" "$service_key"
    say "$svc: put the cart's service key"
  fi
  if has_value "$api"; then
    say "$api has a value: kept (rotation: docs/aws.md, Authentication)"
    return
  fi
  if [[ -z "$service_key" ]]; then
    service_key="$(aws secretsmanager get-secret-value --secret-id "$svc" --query SecretString --output text)"
  fi
  mkdir -p "$dir"
  chmod 700 "$dir"
  if [[ ! -s "$dir/admin.key" ]]; then
    (umask 077 && new_key admin >"$dir/admin.key")
  fi
  admin_key="$(cat "$dir/admin.key")"
  entries="$(sha256 "$admin_key"):admin,$(sha256 "$service_key"):service${EXTRA_API_KEYS:+,$EXTRA_API_KEYS}"
  put_value "$api" "$entries"
  say "$api: put the hashes of the admin key ($dir/admin.key) and the service key${EXTRA_API_KEYS:+ and EXTRA_API_KEYS}"
}

# Replace every application service's tasks: ECS reads the secrets only when it starts a task.
rollout() {
  local cluster s
  cluster="$(tf_out ecs_cluster_name)"
  for s in $(tf_out_list ecs_service_names); do
    [[ "$s" == rabbitmq ]] && continue
    say "new deployment of $s"
    aws ecs update-service --cluster "$cluster" --service "$s" --force-new-deployment >/dev/null
  done
  wait_stable
}

image_tag() {
  if [[ -n "${IMAGE_TAG:-}" ]]; then
    printf '%s\n' "$IMAGE_TAG"
    return
  fi
  local tag
  tag="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
  # Tags are immutable: an image built from uncommitted changes gets its own tag.
  if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]]; then
    tag="$tag-dirty-$(date +%Y%m%d%H%M%S)"
    printf 'deploy-aws: uncommitted changes, image tag %s\n' "$tag" >&2
  fi
  printf '%s\n' "$tag"
}

require_password() {
  # shellcheck disable=SC2016 # the $(...) is an example for the user, not to be expanded
  [[ -n "${TF_VAR_rabbitmq_password:-}" ]] ||
    die 'set TF_VAR_rabbitmq_password (12+ characters of A-Z a-z 0-9 . _ ~ -), e.g. export TF_VAR_rabbitmq_password="$(openssl rand -hex 16)", and keep it for later applies'
}

run_tests() {
  local url
  url="$(tf_out alb_url)"
  say "curl suite against $url"
  # As the administrator, with the key ensure_keys made (ADMIN_KEY from the environment wins).
  SECRETS_DIR="$ROOT/.secrets/aws-$NAME" bash "$ROOT/scripts/test-api.sh" "$url"
}

wait_stable() {
  local cluster services tg
  cluster="$(tf_out ecs_cluster_name)"
  services="$(tf_out_list ecs_service_names)"
  say "waiting for ECS services to be stable: $services"
  local attempt
  for attempt in 1 2 3; do
    # shellcheck disable=SC2086 # one argument per service name
    if aws ecs wait services-stable --cluster "$cluster" --services $services; then
      break
    fi
    [[ $attempt -eq 3 ]] && die "services did not become stable; see the ECS console (events tab) and the /ecs/$NAME/* log groups"
    echo "still not stable, waiting again ($attempt/3)"
  done
  tg="$(tf_out product_target_group_arn)"
  say "waiting for the product targets to be healthy in the ALB"
  aws elbv2 wait target-in-service --target-group-arn "$tg" || die "product targets are not healthy"
}

deploy() {
  need aws "AWS CLI v2"
  need docker "to build the images"
  need terraform "https://developer.hashicorp.com/terraform/install"
  need git "for the image tag"
  need python3 "to read terraform outputs"
  need openssl "to generate the API keys"
  require_password

  local tag account registry
  tag="$(image_tag)"
  export TF_VAR_image_tag="$tag"
  account="$(aws sts get-caller-identity --query Account --output text)"
  registry="$account.dkr.ecr.$AWS_REGION.amazonaws.com"
  say "account $account, region $AWS_REGION, image tag $tag"

  say "terraform init"
  tf init -input=false

  say "creating the ECR repositories and the API key secrets first (images and keys must exist before the services)"
  tf apply -input=false -auto-approve -target=aws_ecr_repository.this -target=aws_ecr_lifecycle_policy.this \
    -target=aws_secretsmanager_secret.auth ${EXTRA[@]+"${EXTRA[@]}"}
  ensure_keys

  say "docker login $registry"
  aws ecr get-login-password --region "$AWS_REGION" | docker login --username AWS --password-stdin "$registry"

  local entry bin port repo uri
  for entry in "${IMAGES[@]}"; do
    bin="${entry%%:*}"
    port="${entry##*:}"
    repo="$NAME/$bin"
    uri="$registry/$repo:$tag"
    if aws ecr describe-images --repository-name "$repo" --image-ids imageTag="$tag" >/dev/null 2>&1; then
      say "$uri already pushed"
      continue
    fi
    say "building $uri"
    DOCKER_BUILDKIT=1 docker build --platform "$PLATFORM" \
      --build-arg SERVICE="$bin" --build-arg PORT="$port" \
      -t "$uri" "$ROOT"
    docker push "$uri"
  done

  say "terraform apply"
  tf apply -input=false ${APPROVE[@]+"${APPROVE[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}

  wait_stable
  run_tests

  say "deployed"
  tf output
}

destroy() {
  need aws "AWS CLI v2"
  need terraform "https://developer.hashicorp.com/terraform/install"
  require_password
  # image_tag has no default; any valid tag will do for destroy.
  export TF_VAR_image_tag="${IMAGE_TAG:-destroy}"

  local cluster="" broker=""
  cluster="$(tf_out ecs_cluster_name 2>/dev/null || true)"
  broker="$(tf_out amazon_mq_broker_id 2>/dev/null || true)"

  say "terraform destroy"
  tf destroy -input=false ${APPROVE[@]+"${APPROVE[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}

  # Log groups that AWS services create by themselves, outside Terraform's state.
  local prefix group
  for prefix in ${cluster:+"/aws/ecs/containerinsights/$cluster/"} ${broker:+"/aws/amazonmq/broker/$broker/"}; do
    for group in $(aws logs describe-log-groups --log-group-name-prefix "$prefix" --query 'logGroups[].logGroupName' --output text); do
      [[ "$group" == "None" ]] && continue
      say "deleting log group $group"
      aws logs delete-log-group --log-group-name "$group"
    done
  done

  local left
  left="$(tf state list 2>/dev/null || true)"
  [[ -z "$left" ]] || die "resources left in the state: $left"
  say "destroyed; nothing left in the Terraform state"
}

case "$ACTION" in
  apply | deploy) deploy ;;
  test) run_tests ;;
  keys) ensure_keys ;;
  rollout) rollout ;;
  wait) wait_stable ;;
  destroy) destroy ;;
  *) die "usage: $0 [apply|test|keys|rollout|wait|destroy]" ;;
esac
