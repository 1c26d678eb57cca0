#!/usr/bin/env bash
# The whole system on this machine, natively (no Docker), behind the gateway on :8080.
#
#   scripts/stack.sh up               build release binaries, make sure RabbitMQ is reachable, start
#                                     product x2 + one bad product (FAILURE_RATE=0.5), the card
#                                     authorizer, the cart, the warehouse and the gateway with a
#                                     seeded catalog, wait until every /ready is green, print URLs
#   scripts/stack.sh down             SIGTERM everything, wait, show the warehouse's final report
#   scripts/stack.sh status           pid, port and /ready of every service, gateway targets
#   scripts/stack.sh logs [service] [-f]   the last lines of every log, or one service's log
#
# State (pids, logs) lives in .stack/ at the repository root (ignored by git).
# Environment (all optional):
#   AMQP_URL           default amqp://guest:guest@127.0.0.1:5672/%2f
#   SEED_PRODUCTS      products 1..N created by every product instance (default 1000)
#   GATEWAY_PORT PRODUCT1_PORT PRODUCT2_PORT PRODUCT_BAD_PORT CART_PORT CCA_PORT WAREHOUSE_PORT
#                      defaults 8080 8081 8085 8086 8082 8083 8084
#   BAD_FAILURE_RATE   FAILURE_RATE of product-bad (default 0.5)
#   EXPOSE_CCA         route /credit-card-authorizer* through the gateway (default false)
#   STACK_NO_BUILD=1   skip `cargo build --release` (use the binaries already in target/release)
#   STACK_INSTALL_RABBITMQ=1 (or CI=true)  apt-get install rabbitmq-server if no broker is reachable
#                      and none is installed (root or passwordless sudo)
#   READY_TIMEOUT      seconds to wait for every /ready (default 90)
#   RUST_LOG, LOG_FORMAT are passed through to every service.
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
CCA_PORT="${CCA_PORT:-8083}"
WAREHOUSE_PORT="${WAREHOUSE_PORT:-8084}"
BAD_FAILURE_RATE="${BAD_FAILURE_RATE:-0.5}"
EXPOSE_CCA="${EXPOSE_CCA:-false}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
STOP_TIMEOUT="${STOP_TIMEOUT:-20}"
export RUST_LOG="${RUST_LOG:-info}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
export NO_COLOR="${NO_COLOR:-1}" # the logs are files: no ANSI colour codes in them

# Start order: dependencies first, the gateway last (it health-checks its targets at start).
SERVICES=(product-1 product-2 product-bad credit-card-authorizer cart warehouse gateway)
PACKAGES=(product-service cart-service credit-card-authorizer warehouse gateway)

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
        cart) echo "$CART_PORT" ;;
        warehouse) echo "$WAREHOUSE_PORT" ;;
        gateway) echo "$GATEWAY_PORT" ;;
        *) return 1 ;;
    esac
}

binary_of() {
    case "$1" in
        product-*) echo "product-service" ;;
        cart) echo "cart-service" ;;
        *) echo "$1" ;;
    esac
}

# The environment of one service, one VAR=value per line.
env_of() {
    local name=$1 port
    port=$(port_of "$name")
    echo "PORT=$port"
    case "$name" in
        product-1 | product-2)
            echo "INSTANCE_ID=$name"
            echo "SEED_PRODUCTS=$SEED_PRODUCTS"
            echo "FAILURE_RATE=0"
            ;;
        product-bad)
            echo "INSTANCE_ID=$name"
            echo "SEED_PRODUCTS=$SEED_PRODUCTS"
            echo "FAILURE_RATE=$BAD_FAILURE_RATE"
            ;;
        credit-card-authorizer)
            echo "INSTANCE_ID=credit-card-authorizer-1"
            echo "DECLINE_RATE=${DECLINE_RATE:-0.1}"
            ;;
        cart)
            echo "INSTANCE_ID=cart-1"
            echo "AMQP_URL=$AMQP_URL"
            echo "PRODUCT_URL=http://127.0.0.1:$PRODUCT1_PORT"
            echo "CCA_URL=http://127.0.0.1:$CCA_PORT"
            ;;
        warehouse)
            echo "INSTANCE_ID=warehouse-1"
            echo "AMQP_URL=$AMQP_URL"
            ;;
        gateway)
            echo "INSTANCE_ID=gateway"
            echo "PRODUCT_TARGETS=http://127.0.0.1:$PRODUCT1_PORT,http://127.0.0.1:$PRODUCT2_PORT,http://127.0.0.1:$PRODUCT_BAD_PORT"
            echo "CART_TARGETS=http://127.0.0.1:$CART_PORT"
            echo "CCA_TARGETS=http://127.0.0.1:$CCA_PORT"
            echo "EXPOSE_CCA=$EXPOSE_CCA"
            ;;
    esac
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
    for name in "${SERVICES[@]}"; do
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
    nohup env "${envs[@]}" "$bin" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
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
    local running=() name
    for name in "${SERVICES[@]}"; do
        is_running "$name" && running+=("$name")
    done
    if ((${#running[@]} == ${#SERVICES[@]})); then
        info "the stack is already up"
        cmd_status
        return 0
    elif ((${#running[@]} > 0)); then
        die "the stack is partly up (${running[*]}); run '$0 down' first"
    fi
    rm -f "$PID_DIR"/*.pid

    # Refuse rather than fight over a port with something else.
    local busy=()
    for name in "${SERVICES[@]}"; do
        local port
        port=$(port_of "$name")
        port_open "$port" && busy+=("$port ($name)")
    done
    if ((${#busy[@]} > 0)); then
        warn "these ports are already in use by other processes: ${busy[*]}"
        if command -v ss >/dev/null 2>&1; then
            for name in "${SERVICES[@]}"; do
                ss -ltnpH "sport = :$(port_of "$name")" 2>/dev/null || true
            done >&2
        fi
        die "stop them or choose other ports (GATEWAY_PORT, PRODUCT1_PORT, … see the top of $0)"
    fi

    build
    ensure_rabbitmq

    info "starting services (logs in ${LOG_DIR#"$ROOT"/})"
    local deadline=$((SECONDS + READY_TIMEOUT))
    for name in "${SERVICES[@]}"; do
        # The gateway health-checks its targets when it starts: start it once they are ready.
        if [[ $name == gateway ]]; then
            for dep in "${SERVICES[@]}"; do
                [[ $dep == gateway ]] && continue
                printf '  %-24s :%-5s ' "$dep" "$(port_of "$dep")"
                wait_ready "$dep" "$deadline" || { STOP_QUIET=1 cmd_down; die "start-up failed: $dep"; }
            done
        fi
        start_one "$name"
    done
    printf '  %-24s :%-5s ' gateway "$GATEWAY_PORT"
    wait_ready gateway "$deadline" || { STOP_QUIET=1 cmd_down; die "start-up failed: gateway"; }

    cat <<EOF

${BOLD}The stack is up.${RESET}
  API (gateway, the ALB stand-in)  http://localhost:$GATEWAY_PORT
      e.g. curl http://localhost:$GATEWAY_PORT/products/1
  load-balancer view               http://localhost:$GATEWAY_PORT/gateway/targets
  product instances                http://localhost:$PRODUCT1_PORT  http://localhost:$PRODUCT2_PORT  http://localhost:$PRODUCT_BAD_PORT (bad: FAILURE_RATE=$BAD_FAILURE_RATE)
  cart                             http://localhost:$CART_PORT
  credit-card-authorizer           http://localhost:$CCA_PORT (internal)
  warehouse stats                  http://localhost:$WAREHOUSE_PORT/stats
  RabbitMQ                         $(redacted_amqp)

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
    printf '%-24s %-6s %-8s %-8s %s\n' SERVICE PORT PID STATE READY
    local name up=0
    for name in "${SERVICES[@]}"; do
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
    if is_running gateway; then
        say ""
        say "gateway targets (http://localhost:$GATEWAY_PORT/gateway/targets):"
        local json
        json=$(curl -s --max-time 2 "http://127.0.0.1:$GATEWAY_PORT/gateway/targets" || true)
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
    ((up == ${#SERVICES[@]})) && return 0
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
