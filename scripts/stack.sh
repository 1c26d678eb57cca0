#!/usr/bin/env bash
# The whole system on this machine, natively (no Docker), behind the gateway on :8080.
#
#   scripts/stack.sh up               build release binaries, make sure RabbitMQ is reachable, pick
#                                     the stores (below), start product x2 + one bad product
#                                     (FAILURE_RATE=0.5), the card authorizer, two carts, the
#                                     warehouse and the gateway with a seeded catalog, wait until
#                                     every /ready is green, print URLs
#   scripts/stack.sh down             SIGTERM everything, wait, show the warehouse's final report
#   scripts/stack.sh status           pid, port and /ready of every service, stores, gateway targets
#   scripts/stack.sh logs [service] [-f]   the last lines of every log, or one service's log
#
# Stores. The catalog and its stock (the three product instances share them), the warehouse's
# ledger and the orders live in PostgreSQL, each in its own schema (catalog, warehouse, orders)
# of one database; carts live in Redis
# under REDIS_KEY_PREFIX. Which servers:
#   1. DATABASE_URL / REDIS_URL when set;
#   2. else the local ones, when installed: postgres://postgres@127.0.0.1:5432/shop and
#      redis://127.0.0.1:6379/0.
#   3. else in memory: not durable, and a single cart instance, since carts are then not shared.
# In 1 and 2 a local server that is installed but stopped is started (pg_ctlcluster,
# redis-server), and a missing database is created when the login may.
# `up` prints which. State from an earlier run stays (products are seeded idempotently, old carts
# are harmless); STACK_FRESH=1 starts from empty.
#
# State (pids, logs, the stores in use) lives in .stack/ at the repository root (ignored by git).
# Environment (all optional):
#   AMQP_URL           default amqp://guest:guest@127.0.0.1:5672/%2f
#   DATABASE_URL       PostgreSQL for the catalog and the ledger (postgres://USER:PASSWORD@HOST/DB)
#   REDIS_URL          Redis for the carts (redis://[:PASSWORD@]HOST:PORT/DB)
#   REDIS_KEY_PREFIX   prefix of the stack's Redis keys (default shop:)
#   STACK_STORES       auto (default; durable when CI=true): the order above;
#                      durable: fail unless both PostgreSQL and Redis are used;
#                      memory: every store in memory, whatever is installed
#   STACK_FRESH=1      start from empty: drop the schemas catalog, warehouse and orders, delete the keys
#                      under REDIS_KEY_PREFIX
#   SEED_PRODUCTS      products 1..N created by every product instance (default 1000)
#   GATEWAY_PORT PRODUCT1_PORT PRODUCT2_PORT PRODUCT_BAD_PORT CART_PORT CART2_PORT CCA_PORT WAREHOUSE_PORT
#                      defaults 8080 8081 8085 8086 8082 8087 8083 8084
#   BAD_FAILURE_RATE   FAILURE_RATE of product-bad (default 0.5)
#   EXPOSE_CCA         route /credit-card-authorizer* through the gateway (default false)
#   STACK_NO_BUILD=1   skip `cargo build --release` (use the binaries already in target/release)
#   STACK_INSTALL_RABBITMQ=1 (or CI=true)  apt-get install rabbitmq-server if no broker is reachable
#                      and none is installed (root or passwordless sudo)
#   READY_TIMEOUT      seconds to wait for every /ready (default 90)
#   FULFILMENT_DELAY_MS  how long the warehouse holds each order before fulfilling it (default 0;
#                      e.g. 5000 leaves time to cancel an order by hand)
#   SEED_STOCK, RESERVATION_TTL_MS  passed to the product instances when set (their defaults:
#                      1000000 units per product, 600000 ms)
#   PENDING_ORDER_TIMEOUT_MS  passed to the carts when set (default 30000)
#   RUST_LOG, LOG_FORMAT, STORE_TIMEOUT_MS, DATABASE_MAX_CONNECTIONS, CART_TTL_SECONDS,
#   RATE_LIMIT_RPS, RATE_LIMIT_BURST are passed through to every service.
#   OTEL_EXPORTER_OTLP_ENDPOINT (and OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_TRACES_SAMPLER[_ARG], …)
#                      export every service's traces to that collector (default: no traces)
#   AUTH_MODE          on (default): every service asks for a credential; the demo ones come from
#                      scripts/demo-keys.sh (made in SECRETS_DIR, default .secrets/, on the first
#                      `up`) and are printed. off: no authentication (the services warn loudly)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$ROOT/.stack}"
PID_DIR="$STACK_DIR/pids"
LOG_DIR="$STACK_DIR/logs"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"

AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
SEED_PRODUCTS="${SEED_PRODUCTS:-1000}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
PRODUCT1_PORT="${PRODUCT1_PORT:-8081}"
PRODUCT2_PORT="${PRODUCT2_PORT:-8085}"
PRODUCT_BAD_PORT="${PRODUCT_BAD_PORT:-8086}"
CART_PORT="${CART_PORT:-8082}"
CART2_PORT="${CART2_PORT:-8087}"
CCA_PORT="${CCA_PORT:-8083}"
WAREHOUSE_PORT="${WAREHOUSE_PORT:-8084}"
BAD_FAILURE_RATE="${BAD_FAILURE_RATE:-0.5}"
EXPOSE_CCA="${EXPOSE_CCA:-false}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
FULFILMENT_DELAY_MS="${FULFILMENT_DELAY_MS:-0}"
STOP_TIMEOUT="${STOP_TIMEOUT:-20}"
REDIS_KEY_PREFIX="${REDIS_KEY_PREFIX:-shop:}"
AUTH_MODE="${AUTH_MODE:-on}"
SECRETS_DIR="${SECRETS_DIR:-$ROOT/.secrets}"
[[ $AUTH_MODE == on || $AUTH_MODE == off ]] || { echo "stack.sh: AUTH_MODE must be on or off, not $AUTH_MODE" >&2; exit 1; }
if [[ ${CI:-} == true ]]; then STACK_STORES="${STACK_STORES:-durable}"; else STACK_STORES="${STACK_STORES:-auto}"; fi
# Where the stack looks when DATABASE_URL / REDIS_URL are unset (the services' defaults are in memory).
LOCAL_DATABASE_URL="postgres://postgres@127.0.0.1:5432/shop"
LOCAL_REDIS_URL="redis://127.0.0.1:6379/0"
STORES_FILE="$STACK_DIR/stores"
export RUST_LOG="${RUST_LOG:-info}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
export NO_COLOR="${NO_COLOR:-1}" # the logs are files: no ANSI colour codes in them

# shellcheck source=scripts/lib/stores.sh
source "$ROOT/scripts/lib/stores.sh"

# Start order: dependencies first, the gateway last (it health-checks its targets at start).
# ACTIVE is the part of SERVICES this run uses (cart-2 only with shared carts, see set_active).
SERVICES=(product-1 product-2 product-bad credit-card-authorizer cart-1 cart-2 warehouse gateway)
ACTIVE=("${SERVICES[@]}")
# The stores of this run; empty: in memory. Set by choose_stores (up) or load_stores (status).
STORE_DATABASE_URL=""
STORE_REDIS_URL=""
# The load tester too: it is handy against the stack, and building the same packages as
# scripts/chaos.sh and scripts/bench.sh means one set of unified dependency features, so their
# builds after this one find everything compiled.
PACKAGES=(product-service cart-service credit-card-authorizer warehouse gateway loadtest)

if [[ -t 1 ]]; then
    BOLD=$'\e[1m' GREEN=$'\e[32m' RED=$'\e[31m' YELLOW=$'\e[33m' RESET=$'\e[0m'
else
    BOLD="" GREEN="" RED="" YELLOW="" RESET=""
fi
say() { printf '%s\n' "$*"; }
info() { printf '%s==>%s %s\n' "$BOLD" "$RESET" "$*"; }
warn() { printf '%swarning:%s %s\n' "$YELLOW" "$RESET" "$*" >&2; }
die() { printf '%serror:%s %s\n' "$RED" "$RESET" "$*" >&2; exit 1; }

port_of() {
    case "$1" in
        product-1) echo "$PRODUCT1_PORT" ;;
        product-2) echo "$PRODUCT2_PORT" ;;
        product-bad) echo "$PRODUCT_BAD_PORT" ;;
        credit-card-authorizer) echo "$CCA_PORT" ;;
        cart-1) echo "$CART_PORT" ;;
        cart-2) echo "$CART2_PORT" ;;
        warehouse) echo "$WAREHOUSE_PORT" ;;
        gateway) echo "$GATEWAY_PORT" ;;
        *) return 1 ;;
    esac
}

binary_of() {
    case "$1" in
        product-*) echo "product-service" ;;
        cart-*) echo "cart-service" ;;
        *) echo "$1" ;;
    esac
}

# The environment of one service, one VAR=value per line.
env_of() {
    local name=$1 port
    port=$(port_of "$name")
    echo "PORT=$port"
    auth_env "$name"
    case "$name" in
        product-1 | product-2 | product-bad)
            echo "INSTANCE_ID=$name"
            echo "SEED_PRODUCTS=$SEED_PRODUCTS"
            # The bad one shares the catalog too: only its answers are bad, not its data.
            if [[ $name == product-bad ]]; then echo "FAILURE_RATE=$BAD_FAILURE_RATE"; else echo "FAILURE_RATE=0"; fi
            # The stock follows the warehouse's outcome events (sales, cancelled orders).
            echo "AMQP_URL=$AMQP_URL"
            database_env catalog
            passed_env SEED_STOCK RESERVATION_TTL_MS
            ;;
        credit-card-authorizer)
            echo "INSTANCE_ID=credit-card-authorizer-1"
            echo "DECLINE_RATE=${DECLINE_RATE:-0.1}"
            ;;
        cart-1 | cart-2)
            echo "INSTANCE_ID=$name"
            # Each cart asks a different healthy product instance (the catalog is shared).
            if [[ $name == cart-1 ]]; then
                echo "PRODUCT_URL=http://127.0.0.1:$PRODUCT1_PORT"
            else
                echo "PRODUCT_URL=http://127.0.0.1:$PRODUCT2_PORT"
            fi
            echo "AMQP_URL=$AMQP_URL"
            echo "CCA_URL=http://127.0.0.1:$CCA_PORT"
            if [[ -n $STORE_REDIS_URL ]]; then
                echo "REDIS_URL=$STORE_REDIS_URL"
                echo "REDIS_KEY_PREFIX=$REDIS_KEY_PREFIX"
                # Orders in PostgreSQL need the shared order ids of Redis carts.
                database_env orders
            fi
            passed_env PENDING_ORDER_TIMEOUT_MS
            ;;
        warehouse)
            echo "INSTANCE_ID=warehouse-1"
            echo "AMQP_URL=$AMQP_URL"
            echo "FULFILMENT_DELAY_MS=$FULFILMENT_DELAY_MS"
            database_env warehouse
            ;;
        gateway)
            echo "INSTANCE_ID=gateway"
            echo "PRODUCT_TARGETS=http://127.0.0.1:$PRODUCT1_PORT,http://127.0.0.1:$PRODUCT2_PORT,http://127.0.0.1:$PRODUCT_BAD_PORT"
            local carts="http://127.0.0.1:$CART_PORT"
            is_active cart-2 && carts+=",http://127.0.0.1:$CART2_PORT"
            echo "CART_TARGETS=$carts"
            echo "CCA_TARGETS=http://127.0.0.1:$CCA_PORT"
            echo "EXPOSE_CCA=$EXPOSE_CCA"
            ;;
    esac
}

# Who may do what: the demo keys' hashes and the demo token issuer for every service, the
# service key for the carts, and the gateway's X-Forwarded-For trusted by the services behind it.
auth_env() {
    passed_env RATE_LIMIT_RPS RATE_LIMIT_BURST
    # Traces (README: Traces and metrics): every service exports to the same collector.
    passed_env OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
        OTEL_EXPORTER_OTLP_PROTOCOL OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG OTEL_SDK_DISABLED
    [[ $1 == gateway ]] || echo "TRUSTED_PROXY_HOPS=1"
    if [[ $AUTH_MODE == off ]]; then
        echo "AUTH_MODE=off"
        return 0
    fi
    echo "AUTH_MODE=on"
    grep -E '^(API_KEYS|JWT_ISSUER|JWT_AUDIENCE)=' "$SECRETS_DIR/auth.env"
    echo "JWT_JWKS=$SECRETS_DIR/jwks.json"
    case "$1" in
        cart-*) grep -E '^SERVICE_API_KEY=' "$SECRETS_DIR/service.env" ;;
    esac
}

# DATABASE_URL and the service's own schema, when the stack has a database.
database_env() {
    [[ -n $STORE_DATABASE_URL ]] || return 0
    echo "DATABASE_URL=$STORE_DATABASE_URL"
    echo "DATABASE_SCHEMA=$1"
}

# VAR=value for each of the named variables that is set in the caller's environment.
passed_env() {
    local var
    for var in "$@"; do
        [[ -n ${!var:-} ]] && echo "$var=${!var}"
    done
    return 0
}

is_active() {
    local s
    for s in "${ACTIVE[@]}"; do [[ $s == "$1" ]] && return 0; done
    return 1
}

pid_of() {
    local f="$PID_DIR/$1.pid"
    [[ -f $f ]] && cat "$f"
    return 0
}

is_running() {
    local pid
    pid=$(pid_of "$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# Is something listening on 127.0.0.1:$1 (or $2:$1)?
port_open() {
    local port=$1 host=${2:-127.0.0.1}
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-2}" "$1" 2>/dev/null || true
}

# The demo credentials, for the banner: the commands to paste, not the keys themselves.
# shellcheck disable=SC2016
auth_banner() {
    if [[ $AUTH_MODE == off ]]; then
        printf '  %sAUTH_MODE=off: no authentication, anyone may do anything.%s' "$YELLOW" "$RESET"
        return 0
    fi
    local rel=${SECRETS_DIR#"$ROOT"/}
    printf '  Credentials (AUTH_MODE=on; demo keys in %s/, made by scripts/demo-keys.sh):\n' "$rel"
    printf '    admin       -H "X-API-Key: $(cat %s/admin.key)"\n' "$rel"
    printf '    customer 7  -H "X-API-Key: $(cat %s/customer-7.key)"   (customer 8: customer-8.key)\n' "$rel"
    printf '    a JWT       -H "Authorization: Bearer $(scripts/demo-jwt.sh 7)"   (or: demo-jwt.sh admin)'
}

# curl as the stack's administrator (the gateway's and warehouse's internals need it).
admin_curl() {
    if [[ $AUTH_MODE != off && -s $SECRETS_DIR/admin.key ]]; then
        curl -H "X-API-Key: $(cat "$SECRETS_DIR/admin.key")" "$@"
    else
        curl "$@"
    fi
}

last_log_lines() {
    local log="$LOG_DIR/$1.log"
    if [[ -f $log ]]; then
        say "---- last lines of $log ----"
        tail -n "${2:-25}" "$log"
        say "----"
    fi
}

need_tools() {
    command -v curl >/dev/null || die "curl is required: sudo apt-get install -y curl"
}

# ------------------------------------------------------------------ RabbitMQ

# AMQP_URL with the password masked.
redacted_amqp() {
    local scheme=${AMQP_URL%%://*} rest=${AMQP_URL#*://}
    if [[ $rest == *@* ]]; then
        local userinfo=${rest%%@*}
        echo "$scheme://${userinfo%%:*}:***@${rest#*@}"
    else
        echo "$AMQP_URL"
    fi
}

amqp_host_port() {
    local rest=${AMQP_URL#*://} default_port=5672
    [[ $AMQP_URL == amqps://* ]] && default_port=5671
    rest=${rest##*@}      # drop user:password@
    rest=${rest%%/*}      # drop /vhost
    rest=${rest%%\?*}
    local host=${rest%%:*} port=$default_port
    [[ $rest == *:* ]] && port=${rest##*:}
    [[ -z $host ]] && host=127.0.0.1
    [[ $host == localhost ]] && host=127.0.0.1
    echo "$host $port"
}

rabbit_help() {
    local host=$1 port=$2
    cat >&2 <<EOF
RabbitMQ is not reachable at $host:$port (AMQP_URL=$(redacted_amqp)).
Get one in either of these ways, then run '$0 up' again:
  - Debian/Ubuntu package:
        sudo apt-get update && sudo apt-get install -y rabbitmq-server
        sudo rabbitmq-server -detached      (or: sudo systemctl start rabbitmq-server)
    (the default guest/guest user works from localhost)
  - Docker:
        docker run -d --name rabbitmq -p 5672:5672 -p 15672:15672 rabbitmq:3.13-management
  - an existing broker elsewhere:
        AMQP_URL='amqp://USER:PASSWORD@HOST:5672/%2f' $0 up
EOF
}

ensure_rabbitmq() {
    local host port
    read -r host port < <(amqp_host_port)
    if port_open "$port" "$host"; then
        info "RabbitMQ reachable at $host:$port"
        return 0
    fi
    local is_local=false
    # An installed broker listens on 5672; for another port we cannot know what to start.
    [[ ($host == 127.0.0.1 || $host == ::1) && $port == 5672 ]] && is_local=true
    if $is_local && ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ${STACK_INSTALL_RABBITMQ:-} == 1 || ${CI:-} == true ]]; then
        local sudo=""
        [[ $(id -u) == 0 ]] || sudo="sudo -n"
        if command -v apt-get >/dev/null 2>&1; then
            info "installing rabbitmq-server with apt-get (STACK_INSTALL_RABBITMQ=1 or CI=true)"
            if ! { $sudo apt-get update -qq >"$LOG_DIR/rabbitmq-install.log" 2>&1 &&
                DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq rabbitmq-server >>"$LOG_DIR/rabbitmq-install.log" 2>&1; }; then
                warn "apt-get install rabbitmq-server failed:"
                tail -n 20 "$LOG_DIR/rabbitmq-install.log" >&2
            fi
            # The package may have started it already (systemd); give it a moment.
            for _ in $(seq 1 20); do port_open "$port" "$host" && break; sleep 1; done
            if port_open "$port" "$host"; then
                info "RabbitMQ reachable at $host:$port"
                return 0
            fi
        fi
    fi
    if $is_local && command -v rabbitmq-server >/dev/null 2>&1; then
        info "RabbitMQ not running; starting the installed one (rabbitmq-server -detached)"
        if ! rabbitmq-server -detached >"$LOG_DIR/rabbitmq-start.log" 2>&1; then
            warn "rabbitmq-server -detached failed (you may need sudo):"
            cat "$LOG_DIR/rabbitmq-start.log" >&2 || true
            rabbit_help "$host" "$port"
            exit 1
        fi
        local waited=0
        until port_open "$port" "$host"; do
            if ((waited >= 60)); then
                warn "RabbitMQ did not open $host:$port within 60 s"
                rabbit_help "$host" "$port"
                exit 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
        # The port opens a moment before the broker accepts logins.
        if command -v rabbitmqctl >/dev/null 2>&1; then
            timeout 30 rabbitmqctl await_startup >/dev/null 2>&1 || sleep 3
        else
            sleep 3
        fi
        info "RabbitMQ started at $host:$port"
        return 0
    fi
    rabbit_help "$host" "$port"
    exit 1
}

# ------------------------------------------------------------------ PostgreSQL, Redis

# Starts the server if it is local and stopped, creates the database if missing (when psql can
# reach the server's `postgres` database), then logs in.
prepare_database() {
    local url=$1
    ensure_postgres "$url" || return 1
    if ! command -v psql >/dev/null 2>&1; then
        warn "psql not found: cannot create the database or check the login; the services will report a problem"
        return 0
    fi
    postgres_create_database "$url" || true
    postgres_login "$url"
}

database_help() {
    cat >&2 <<EOF
To use this PostgreSQL, give the stack a role that logs in over TCP, e.g.
    sudo -u postgres psql -c "CREATE ROLE shop LOGIN CREATEDB PASSWORD 'shop-dev-only'"
    DATABASE_URL=postgres://shop:shop-dev-only@127.0.0.1:5432/shop $0 up
EOF
}

choose_database() {
    if [[ -n ${DATABASE_URL:-} ]]; then
        prepare_database "$DATABASE_URL" || die "DATABASE_URL=$(store_redact "$DATABASE_URL") is not usable (see above)"
        STORE_DATABASE_URL=$DATABASE_URL
        return 0
    fi
    local host port
    read -r host port < <(store_host_port "$LOCAL_DATABASE_URL" 5432)
    if ! store_port_open "$host" "$port" && ! postgres_cluster_on_port "$port" >/dev/null; then
        info "no PostgreSQL on $host:$port and none installed"
        return 0
    fi
    if prepare_database "$LOCAL_DATABASE_URL"; then
        STORE_DATABASE_URL=$LOCAL_DATABASE_URL
    else
        warn "the local PostgreSQL is not usable as $(store_redact "$LOCAL_DATABASE_URL")"
        database_help
    fi
}

choose_redis() {
    if [[ -n ${REDIS_URL:-} ]]; then
        if ! { ensure_redis "$REDIS_URL" && redis_ping "$REDIS_URL"; }; then
            die "REDIS_URL=$(store_redact "$REDIS_URL") does not answer PING (see above)"
        fi
        STORE_REDIS_URL=$REDIS_URL
        return 0
    fi
    local host port
    read -r host port < <(store_host_port "$LOCAL_REDIS_URL" 6379)
    if ! store_port_open "$host" "$port" && ! command -v redis-server >/dev/null 2>&1; then
        info "no Redis on $host:$port and none installed"
        return 0
    fi
    if ensure_redis "$LOCAL_REDIS_URL" && redis_ping "$LOCAL_REDIS_URL"; then
        STORE_REDIS_URL=$LOCAL_REDIS_URL
    else
        warn "the local Redis does not answer PING at $LOCAL_REDIS_URL (a password? then set REDIS_URL=redis://:PASSWORD@127.0.0.1:6379/0)"
    fi
}

# Sets STORE_DATABASE_URL and STORE_REDIS_URL (empty: in memory) and ACTIVE.
choose_stores() {
    # Not what load_stores read from the last run (redacted, and maybe another choice).
    STORE_DATABASE_URL="" STORE_REDIS_URL=""
    case "$STACK_STORES" in
        memory) info "STACK_STORES=memory: every store in memory" ;;
        auto | durable)
            choose_database
            choose_redis
            if [[ $STACK_STORES == durable && (-z $STORE_DATABASE_URL || -z $STORE_REDIS_URL) ]]; then
                die "STACK_STORES=durable${CI:+ (the default with CI=true)} needs both PostgreSQL and Redis; see above"
            fi
            ;;
        *) die "STACK_STORES must be auto, durable or memory (got '$STACK_STORES')" ;;
    esac
    set_active
    # Only what status needs, and no password: the URLs are redacted.
    {
        echo "database=$(store_redact "$STORE_DATABASE_URL")"
        echo "redis=$(store_redact "$STORE_REDIS_URL")"
        echo "prefix=$REDIS_KEY_PREFIX"
    } >"$STORES_FILE"
}

# The stores of the running stack, as `up` recorded them (redacted).
load_stores() {
    STORE_DATABASE_URL="" STORE_REDIS_URL=""
    if [[ -f $STORES_FILE ]]; then
        STORE_DATABASE_URL=$(sed -n 's/^database=//p' "$STORES_FILE")
        STORE_REDIS_URL=$(sed -n 's/^redis=//p' "$STORES_FILE")
        REDIS_KEY_PREFIX=$(sed -n 's/^prefix=//p' "$STORES_FILE")
    fi
    set_active
}

# Two cart instances only when they share their carts in Redis: with carts in memory, a cart
# created on one would be unknown to the other.
set_active() {
    ACTIVE=()
    local name
    for name in "${SERVICES[@]}"; do
        [[ $name == cart-2 && -z $STORE_REDIS_URL ]] && continue
        ACTIVE+=("$name")
    done
}

describe_stores() {
    local db="in memory (not durable, each product instance has its own catalog)" carts="in memory (not durable; one cart instance)"
    [[ -n $STORE_DATABASE_URL ]] && db=$(store_redact "$STORE_DATABASE_URL")
    [[ -n $STORE_REDIS_URL ]] && carts="$(store_redact "$STORE_REDIS_URL") (prefix $REDIS_KEY_PREFIX)"
    echo "stores: catalog+stock+ledger+orders → $db, carts → $carts"
}

# STACK_FRESH=1: the services find empty schemas (they migrate them at start) and no carts.
fresh_stores() {
    [[ ${STACK_FRESH:-0} == 1 ]] || return 0
    if [[ -n $STORE_DATABASE_URL ]]; then
        info "STACK_FRESH=1: dropping the schemas catalog, warehouse and orders of $(store_redact "$STORE_DATABASE_URL")"
        postgres_drop_schemas "$STORE_DATABASE_URL" catalog warehouse orders || die "could not drop the schemas"
    fi
    if [[ -n $STORE_REDIS_URL ]]; then
        info "STACK_FRESH=1: deleting the keys under $REDIS_KEY_PREFIX in $(store_redact "$STORE_REDIS_URL")"
        redis_delete_prefix "$STORE_REDIS_URL" "$REDIS_KEY_PREFIX" || die "could not delete the keys"
    fi
}

# ------------------------------------------------------------------ up

build() {
    if [[ ${STACK_NO_BUILD:-0} == 1 ]]; then
        info "STACK_NO_BUILD=1: using the binaries in $BIN_DIR"
    else
        command -v cargo >/dev/null || die "cargo is required (https://rustup.rs), or set STACK_NO_BUILD=1 with prebuilt binaries in $BIN_DIR"
        local args=()
        for p in "${PACKAGES[@]}"; do args+=(-p "$p"); done
        info "building release binaries: cargo build --release --bins ${args[*]}"
        (cd "$ROOT" && cargo build --release --bins "${args[@]}")
    fi
    for name in "${ACTIVE[@]}"; do
        local bin
        bin="$BIN_DIR/$(binary_of "$name")"
        [[ -x $bin ]] || die "missing binary $bin (did the build fail?)"
    done
}

start_one() {
    local name=$1 bin port
    bin="$BIN_DIR/$(binary_of "$name")"
    port=$(port_of "$name")
    local envs=()
    while IFS= read -r line; do envs+=("$line"); done < <(env_of "$name")
    {
        printf '\n==== %s starting %s on port %s ====\n' "$(date '+%F %T')" "$name" "$port"
    } >>"$LOG_DIR/$name.log"
    # Exported in a subshell rather than passed to env(1): a password in DATABASE_URL stays out of
    # the process list. The caller's store variables are dropped: each service gets its own.
    (
        unset DATABASE_URL DATABASE_SCHEMA REDIS_URL REDIS_KEY_PREFIX
        # Only the services that use them get the order lifecycle's knobs (from env_of).
        unset FULFILMENT_DELAY_MS SEED_STOCK RESERVATION_TTL_MS PENDING_ORDER_TIMEOUT_MS
        export "${envs[@]}"
        exec nohup "$bin"
    ) >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$PID_DIR/$name.pid"
}

wait_ready() {
    local name=$1 deadline=$2 port
    port=$(port_of "$name")
    local url="http://127.0.0.1:$port/ready"
    while true; do
        if ! is_running "$name"; then
            printf '%sFAILED%s\n' "$RED" "$RESET"
            warn "$name exited during start-up"
            last_log_lines "$name"
            return 1
        fi
        if [[ $(http_code "$url") == 200 ]]; then
            printf '%sready%s\n' "$GREEN" "$RESET"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            printf '%sNOT READY%s\n' "$RED" "$RESET"
            warn "$name is not ready after ${READY_TIMEOUT}s; GET $url says:"
            curl -s --max-time 2 "$url" >&2 || true
            echo >&2
            last_log_lines "$name"
            return 1
        fi
        sleep 0.3
    done
}

cmd_up() {
    need_tools
    mkdir -p "$PID_DIR" "$LOG_DIR"
    load_stores # what a running stack was started with
    local running=() name
    for name in "${SERVICES[@]}"; do
        is_running "$name" && running+=("$name")
    done
    if ((${#running[@]} > 0)); then
        local all=true
        for name in "${ACTIVE[@]}"; do is_running "$name" || all=false; done
        if $all; then
            info "the stack is already up"
            cmd_status
            return 0
        fi
        die "the stack is partly up (${running[*]}); run '$0 down' first"
    fi
    rm -f "$PID_DIR"/*.pid

    choose_stores
    info "$(describe_stores)"

    # Refuse rather than fight over a port with something else.
    local busy=()
    for name in "${ACTIVE[@]}"; do
        local port
        port=$(port_of "$name")
        port_open "$port" && busy+=("$port ($name)")
    done
    if ((${#busy[@]} > 0)); then
        warn "these ports are already in use by other processes: ${busy[*]}"
        if command -v ss >/dev/null 2>&1; then
            for name in "${ACTIVE[@]}"; do
                ss -ltnpH "sport = :$(port_of "$name")" 2>/dev/null || true
            done >&2
        fi
        die "stop them or choose other ports (GATEWAY_PORT, PRODUCT1_PORT, … see the top of $0)"
    fi

    build
    ensure_rabbitmq
    fresh_stores
    [[ $AUTH_MODE == off ]] || "$ROOT/scripts/demo-keys.sh" "$SECRETS_DIR"

    info "starting services (logs in ${LOG_DIR#"$ROOT"/})"
    local deadline=$((SECONDS + READY_TIMEOUT))
    for name in "${ACTIVE[@]}"; do
        # The gateway health-checks its targets when it starts: start it once they are ready.
        if [[ $name == gateway ]]; then
            for dep in "${ACTIVE[@]}"; do
                [[ $dep == gateway ]] && continue
                printf '  %-24s :%-5s ' "$dep" "$(port_of "$dep")"
                wait_ready "$dep" "$deadline" || { STOP_QUIET=1 cmd_down; die "start-up failed: $dep"; }
            done
        fi
        start_one "$name"
    done
    printf '  %-24s :%-5s ' gateway "$GATEWAY_PORT"
    wait_ready gateway "$deadline" || { STOP_QUIET=1 cmd_down; die "start-up failed: gateway"; }

    local carts="http://localhost:$CART_PORT"
    is_active cart-2 && carts+="  http://localhost:$CART2_PORT (sharing their carts)"
    local metrics="" name
    for name in "${ACTIVE[@]}"; do
        [[ $name == gateway ]] || metrics+=" :$(port_of "$name")"
    done
    local traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT to a collector, e.g. Jaeger's http://localhost:4318)"
    [[ -z ${OTEL_EXPORTER_OTLP_ENDPOINT:-${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-}} ]] ||
        traces="every service → ${OTEL_EXPORTER_OTLP_TRACES_ENDPOINT:-$OTEL_EXPORTER_OTLP_ENDPOINT} (${OTEL_EXPORTER_OTLP_PROTOCOL:-http/protobuf})"
    local held=""
    [[ $FULFILMENT_DELAY_MS == 0 ]] || held=" (each order held ${FULFILMENT_DELAY_MS} ms before fulfilment: FULFILMENT_DELAY_MS)"
    cat <<EOF

${BOLD}The stack is up.${RESET}
  API (gateway, the ALB stand-in)  http://localhost:$GATEWAY_PORT
      e.g. curl -H "X-API-Key: \$(cat ${SECRETS_DIR#"$ROOT"/}/customer-7.key)" http://localhost:$GATEWAY_PORT/products/1
  load-balancer view (admin)       http://localhost:$GATEWAY_PORT/gateway/targets
  product instances                http://localhost:$PRODUCT1_PORT  http://localhost:$PRODUCT2_PORT  http://localhost:$PRODUCT_BAD_PORT (bad: FAILURE_RATE=$BAD_FAILURE_RATE)
  cart                             $carts
  credit-card-authorizer           http://localhost:$CCA_PORT (internal)
  warehouse stats (admin)          http://localhost:$WAREHOUSE_PORT/stats$held
  metrics (admin, Prometheus text) http://localhost:$GATEWAY_PORT/metrics (the gateway's), and /metrics on$metrics
                                   dashboards and alerts for them: observability/README.md
  traces (OpenTelemetry)           $traces
  RabbitMQ                         $(redacted_amqp)
  $(describe_stores)

$(auth_banner)

  scripts/test-api.sh               the curl suite against the gateway
  scripts/demo-atw.sh               the gateway shifting traffic away from the bad product instance
  $0 status | logs [service] | down
EOF
}

# ------------------------------------------------------------------ down

cmd_down() {
    mkdir -p "$PID_DIR" "$LOG_DIR"
    local stopped=0 name pids=()
    # Reverse order: the gateway first, the warehouse after the cart so it drains the queue.
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        name=${SERVICES[$i]}
        if is_running "$name"; then
            kill -TERM "$(pid_of "$name")" 2>/dev/null || true
            pids+=("$name")
            stopped=$((stopped + 1))
        fi
    done
    if ((stopped == 0)); then
        [[ -n ${STOP_QUIET:-} ]] || info "the stack is not running"
        rm -f "$PID_DIR"/*.pid
        return 0
    fi
    info "stopping ${pids[*]} (SIGTERM, up to ${STOP_TIMEOUT}s)"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for name in "${pids[@]}"; do
        while is_running "$name" && ((SECONDS < deadline)); do sleep 0.2; done
        if is_running "$name"; then
            warn "$name did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
            kill -KILL "$(pid_of "$name")" 2>/dev/null || true
        fi
    done
    rm -f "$PID_DIR"/*.pid
    info "stopped"
    local wlog="$LOG_DIR/warehouse.log"
    if [[ -f $wlog ]] && grep -q "final report" "$wlog"; then
        local line
        line=$(grep -n "final report" "$wlog" | tail -n 1 | cut -d: -f1)
        say ""
        say "${BOLD}Warehouse final report${RESET} (from ${wlog#"$ROOT"/}):"
        tail -n "+$line" "$wlog" | grep -v "^==== " || true
    elif [[ -f $wlog ]]; then
        warn "no final report in $wlog; its last lines:"
        tail -n 15 "$wlog"
    fi
}

# ------------------------------------------------------------------ status, logs

cmd_status() {
    mkdir -p "$PID_DIR"
    load_stores
    printf '%-24s %-6s %-8s %-8s %s\n' SERVICE PORT PID STATE READY
    local name up=0
    for name in "${ACTIVE[@]}"; do
        local port pid state ready
        port=$(port_of "$name")
        pid=$(pid_of "$name")
        if is_running "$name"; then
            state=running
            up=$((up + 1))
            ready=$(http_code "http://127.0.0.1:$port/ready")
            [[ $ready == 200 ]] && ready="200 ready" || ready="${ready:-none} not ready"
        else
            state=stopped
            ready=-
        fi
        printf '%-24s %-6s %-8s %-8s %s\n' "$name" "$port" "${pid:--}" "$state" "$ready"
    done
    ((up > 0)) && say "" && describe_stores
    if is_running gateway; then
        say ""
        say "gateway targets (http://localhost:$GATEWAY_PORT/gateway/targets):"
        local json
        json=$(admin_curl -s --max-time 2 "http://127.0.0.1:$GATEWAY_PORT/gateway/targets" || true)
        if command -v python3 >/dev/null 2>&1 && [[ -n $json ]]; then
            python3 -c '
import json, sys
v = json.loads(sys.argv[1])
for g in v["groups"]:
    for t in g["targets"]:
        print("  %-14s %-24s %-9s weight %-6s requests %-8s errors %-8s %s" % (
            g["name"], t["url"], t["state"], t["weight"], t["requests"], t["errors"], t["atw_verdict"]))
' "$json" || say "$json"
        else
            say "$json"
        fi
    fi
    ((up == ${#ACTIVE[@]})) && return 0
    ((up == 0)) && say "" && say "the stack is down"
    return 0
}

cmd_logs() {
    local service="" follow=false arg
    for arg in "$@"; do
        case "$arg" in
            -f | --follow) follow=true ;;
            *) service=$arg ;;
        esac
    done
    [[ -d $LOG_DIR ]] || die "no logs yet ($LOG_DIR)"
    if [[ -n $service ]]; then
        port_of "$service" >/dev/null || die "unknown service '$service' (one of: ${SERVICES[*]})"
        local log="$LOG_DIR/$service.log"
        [[ -f $log ]] || die "no log for $service yet"
        if $follow; then tail -n 50 -f "$log"; else tail -n 200 "$log"; fi
    else
        if $follow; then
            local files=()
            for name in "${SERVICES[@]}"; do [[ -f $LOG_DIR/$name.log ]] && files+=("$LOG_DIR/$name.log"); done
            tail -n 10 -f "${files[@]}"
        else
            for name in "${SERVICES[@]}"; do
                [[ -f $LOG_DIR/$name.log ]] || continue
                say "${BOLD}==> $name${RESET}"
                tail -n 20 "$LOG_DIR/$name.log"
                say ""
            done
        fi
    fi
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) shift; cmd_logs "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
