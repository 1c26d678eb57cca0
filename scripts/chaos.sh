#!/usr/bin/env bash
# The fault campaign: the whole system on a three-node RabbitMQ cluster with quorum queues, driven
# by `loadtest --audit` while a schedule of faults fires, then reconciled order by order against
# the durable stores by `chaos-reconcile`. Exits non-zero when any order is lost or double-applied.
#
#   scripts/chaos.sh --short           the CI campaign: 150 s of load, every fault once (≤ 5 min)
#   scripts/chaos.sh -d 30m -r 600     a long one (see docs/chaos.md for the last result)
#   scripts/chaos.sh --short --broken  the same against a warehouse that acks before it commits
#                                      (UNSAFE_ACK_ON_RECEIPT): the reconciliation must fail
#
# Options:
#   -d, --duration D     load duration (loadtest syntax: 150s, 30m; default 150s)
#   -r, --rate R         checkouts (flow iterations) per second, open model (default 120)
#   -c, --concurrency C  loadtest connections (default 64)
#   -f, --faults LIST    comma-separated, fired in this order, evenly spread (default: all):
#                        kill-leader partition close-connections kill-warehouse cca-down
#                        restart-cart restart-postgres restart-redis
#   --broken             run the warehouses with UNSAFE_ACK_ON_RECEIPT=true
#   --expect-loss        exit 0 only if the reconciliation FAILS (with --broken, for CI)
#   -o, --out DIR        where the audit, the dumps, the logs and result.json go
#                        (default .chaos/<timestamp>)
#   --no-build           use the release binaries already built
#   --keep               leave the stack, the cluster and the stores running at the end
#
# What it starts (all private to the run, nothing shared with scripts/stack.sh or the system's
# servers): the cluster (scripts/cluster.sh, in network namespaces when it can make them), a
# PostgreSQL on :25432 and a Redis on :26379 of its own (so they may be restarted; Redis with an
# append-only file fsynced on every write, since it hands out the order ids), and product,
# card authorizer, two carts, two warehouses and the gateway on ports 9180-9188.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION=150s
RATE=120
CONCURRENCY=64
ALL_FAULTS="kill-leader,partition,close-connections,kill-warehouse,cca-down,restart-cart,restart-postgres,restart-redis"
FAULTS=$ALL_FAULTS
BROKEN=false
EXPECT_LOSS=false
BUILD=true
KEEP=false
OUT=""
PG_PORT="${CHAOS_PG_PORT:-25432}"
REDIS_PORT="${CHAOS_REDIS_PORT:-26379}"
GATEWAY_PORT=9180

say() { printf '%s\n' "$*"; }
info() { printf '==> %s\n' "$*"; }
die() { printf 'chaos: %s\n' "$*" >&2; exit 2; }

while (($#)); do
    case "$1" in
        --short) DURATION=150s; RATE=120 ;;
        -d | --duration) DURATION=$2; shift ;;
        -r | --rate) RATE=$2; shift ;;
        -c | --concurrency) CONCURRENCY=$2; shift ;;
        -f | --faults) FAULTS=$2; shift ;;
        --broken) BROKEN=true ;;
        --expect-loss) EXPECT_LOSS=true ;;
        -o | --out) OUT=$2; shift ;;
        --no-build) BUILD=false ;;
        --keep) KEEP=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ ${CHAOS_NO_BUILD:-} == 1 ]] && BUILD=false

seconds_of() {
    case "$1" in
        *ms) echo $((${1%ms} / 1000)) ;;
        *s) echo "${1%s}" ;;
        *m) echo $((${1%m} * 60)) ;;
        *h) echo $((${1%h} * 3600)) ;;
        *) echo "$1" ;;
    esac
}
LOAD_SECONDS=$(seconds_of "$DURATION")
[[ $LOAD_SECONDS =~ ^[0-9]+$ && $LOAD_SECONDS -ge 30 ]] || die "--duration must be at least 30s"
IFS=, read -r -a FAULT_LIST <<<"$FAULTS"
for f in "${FAULT_LIST[@]}"; do
    [[ ,$ALL_FAULTS, == *",$f,"* ]] || die "unknown fault $f (known: $ALL_FAULTS)"
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT="${OUT:-$ROOT/.chaos/$STAMP}"
mkdir -p "$OUT/logs" "$OUT/env" "$OUT/pids"
OUT="$(cd "$OUT" && pwd)"
# The services ask for credentials as in the stack; loadtest sends the administrator's key.
# shellcheck source=scripts/lib/auth.sh
source "$ROOT/scripts/lib/auth.sh"
use_demo_auth "$OUT/secrets"
FAULT_LOG="$OUT/faults.jsonl"
: >"$FAULT_LOG"
QUEUE="chaos_orders_${STAMP,,}"
export CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/.cluster}"

now_ms() { date +%s%3N; }
elapsed() { echo $(($(date +%s) - RUN_STARTED)); }
RUN_STARTED=$(date +%s)

# ------------------------------------------------------------------ the private stores

PG_BIN=""
for d in /usr/lib/postgresql/*/bin; do [[ -x $d/initdb ]] && PG_BIN=$d; done
PG_DIR="$OUT/pg"
PG_AS=()
if [[ $(id -u) == 0 ]]; then
    # PostgreSQL will not run as root: as the postgres user, in a directory it can reach
    # whatever the checkout's permissions (a CI clone may sit in a private temporary directory).
    PG_AS=(runuser -u postgres --)
    PG_DIR="/tmp/shop-chaos-pg-$STAMP-$$"
fi
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/shop"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
REDIS_DIR="$OUT/redis"

# From /, which every user may enter (the postgres user may not enter the working directory).
pg_ctl_() { (cd / && "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR" "$@"); }

start_postgres() {
    [[ -n $PG_BIN ]] || die "PostgreSQL's initdb was not found (apt-get install postgresql)"
    if [[ ! -f $PG_DIR/PG_VERSION ]]; then
        mkdir -p "$PG_DIR"
        if [[ $(id -u) == 0 ]]; then chown postgres "$PG_DIR" && chmod 700 "$PG_DIR"; fi
        (cd / && "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR" -U postgres --auth=trust -E UTF8) >"$OUT/logs/initdb.log" 2>&1 ||
            { cat "$OUT/logs/initdb.log" >&2; die "initdb failed"; }
    fi
    # /tmp for the socket: the run directory may be on a path the postgres user cannot write.
    pg_ctl_ -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on" start >/dev/null ||
        { tail -20 "$PG_DIR/postgres.log" >&2; die "the campaign's PostgreSQL did not start"; }
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atqc "SELECT 1 FROM pg_database WHERE datname = 'shop'" postgres | grep -q 1 ||
        psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE shop" postgres
}

# shellcheck disable=SC2329 # called by cleanup
stop_postgres() {
    [[ -f $PG_DIR/postmaster.pid ]] && pg_ctl_ -m fast -w stop >/dev/null 2>&1
    cp "$PG_DIR/postgres.log" "$OUT/logs/postgres.log" 2>/dev/null
    # Outside the run's directory (root's case): removed, the dumps in the run's directory remain.
    [[ $PG_DIR == /tmp/shop-chaos-pg-* ]] && rm -rf "$PG_DIR"
    return 0
}

start_redis() {
    mkdir -p "$REDIS_DIR"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" --save "" \
        --appendonly yes --appendfsync always --daemonize yes \
        --pidfile "$REDIS_DIR/redis.pid" --logfile "$OUT/logs/redis.log" >/dev/null
    for _ in $(seq 1 50); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.2
    done
    die "the campaign's Redis did not start"
}

stop_redis() { redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true; sleep 0.5; }

sql() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d shop -Atqc "$1"; }

# ------------------------------------------------------------------ the services

SERVICES=(product-1 credit-card-authorizer cart-1 cart-2 warehouse-1 warehouse-2 gateway)
port_of() {
    case "$1" in
        gateway) echo $GATEWAY_PORT ;; product-1) echo 9181 ;; cart-1) echo 9182 ;;
        credit-card-authorizer) echo 9183 ;; warehouse-1) echo 9184 ;; cart-2) echo 9187 ;;
        warehouse-2) echo 9188 ;;
    esac
}
binary_of() {
    case "$1" in
        product-*) echo product-service ;; cart-*) echo cart-service ;; warehouse-*) echo warehouse ;;
        *) echo "$1" ;;
    esac
}

write_env() {
    local name=$1
    {
        echo "PORT=$(port_of "$name")"
        echo "INSTANCE_ID=$name"
        echo "RUST_LOG=${RUST_LOG:-info}"
        echo "NO_COLOR=1"
        case "$name" in
            product-1)
                echo "SEED_PRODUCTS=100"
                echo "AMQP_URL=$AMQP_URLS"
                echo "QUEUE_TYPE=quorum"
                echo "ORDER_QUEUE=$QUEUE"
                echo "DATABASE_URL=$DATABASE_URL"
                echo "DATABASE_SCHEMA=catalog"
                ;;
            credit-card-authorizer) echo "DECLINE_RATE=0.1" ;;
            cart-*)
                echo "PRODUCT_URL=http://127.0.0.1:$(port_of product-1)"
                echo "CCA_URL=http://127.0.0.1:$(port_of credit-card-authorizer)"
                echo "AMQP_URL=$AMQP_URLS"
                echo "QUEUE_TYPE=quorum"
                echo "ORDER_QUEUE=$QUEUE"
                echo "REDIS_URL=$REDIS_URL"
                echo "REDIS_KEY_PREFIX=chaos:"
                echo "DATABASE_URL=$DATABASE_URL"
                echo "DATABASE_SCHEMA=orders"
                # Orders whose publish had no answer are settled (withdrawn) after 10 s, so the
                # run drains soon after the load stops.
                echo "PENDING_ORDER_TIMEOUT_MS=10000"
                ;;
            warehouse-*)
                echo "AMQP_URL=$AMQP_URLS"
                echo "QUEUE_TYPE=quorum"
                echo "ORDER_QUEUE=$QUEUE"
                echo "DATABASE_URL=$DATABASE_URL"
                echo "DATABASE_SCHEMA=warehouse"
                # Orders stay unacked for half a second: a crash always finds some in flight.
                echo "FULFILMENT_DELAY_MS=500"
                echo "UNSAFE_ACK_ON_RECEIPT=$BROKEN"
                ;;
            gateway)
                echo "PRODUCT_TARGETS=http://127.0.0.1:$(port_of product-1)"
                echo "CART_TARGETS=http://127.0.0.1:$(port_of cart-1),http://127.0.0.1:$(port_of cart-2)"
                echo "CCA_TARGETS=http://127.0.0.1:$(port_of credit-card-authorizer)"
                echo "HEALTH_INTERVAL_MS=500"
                ;;
        esac
    } >"$OUT/env/$name.env"
}

start_service() {
    local name=$1 vars
    mapfile -t vars <"$OUT/env/$name.env"
    env "${vars[@]}" "$BIN_DIR/$(binary_of "$name")" >>"$OUT/logs/$name.log" 2>&1 &
    echo $! >"$OUT/pids/$name.pid"
    # Not a job of this shell: a SIGKILL fault is not reported as "Killed" in the output.
    disown $!
}

pid_of() { cat "$OUT/pids/$1.pid" 2>/dev/null || true; }

wait_ready() {
    local name=$1 limit=${2:-60} port
    port=$(port_of "$name")
    for _ in $(seq 1 $((limit * 5))); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$port/ready") == 200 ]] && return 0
        kill -0 "$(pid_of "$name")" 2>/dev/null || { tail -20 "$OUT/logs/$name.log" >&2; die "$name exited"; }
        sleep 0.2
    done
    tail -20 "$OUT/logs/$name.log" >&2
    die "$name not ready within ${limit}s"
}

stop_service() {
    local name=$1 signal=${2:-TERM} pid
    pid=$(pid_of "$name")
    [[ -n $pid ]] || return 0
    kill -"$signal" "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2329 # called by cleanup
stop_all() {
    local s
    for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
        s=${SERVICES[i]}
        stop_service "$s" TERM
    done
}

# shellcheck disable=SC2329 # called by the EXIT trap
cleanup() {
    local code=$?
    [[ -n ${LOADTEST_PID:-} ]] && kill "$LOADTEST_PID" 2>/dev/null
    if $KEEP; then
        say "left running (--keep): services (pids in $OUT/pids), cluster, PostgreSQL :$PG_PORT, Redis :$REDIS_PORT"
        return "$code"
    fi
    stop_all
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
    stop_redis
    stop_postgres
    return "$code"
}
trap cleanup EXIT

# ------------------------------------------------------------------ the faults

record_fault() { # name start_ms end_ms detail
    printf '{"name":"%s","start_ms":%s,"end_ms":%s,"detail":"%s"}\n' "$1" "$2" "$3" "$4" >>"$FAULT_LOG"
    say "[$(elapsed)s] fault $1: $4 ($(($3 - $2)) ms)"
}

leader_node() { "$ROOT/scripts/cluster.sh" leader "$QUEUE" 2>/dev/null | tail -1; }

fire() {
    local fault=$1 start node detail rc
    start=$(now_ms)
    case "$fault" in
        kill-leader)
            node=$(leader_node)
            [[ $node =~ ^[1-3]$ ]] || node=1
            "$ROOT/scripts/cluster.sh" kill "$node" >>"$OUT/logs/cluster.log" 2>&1
            sleep 5
            "$ROOT/scripts/cluster.sh" start "$node" >>"$OUT/logs/cluster.log" 2>&1
            detail="SIGKILL of node $node (the leader of $QUEUE), restarted after 5 s"
            ;;
        partition)
            node=$(leader_node)
            [[ $node =~ ^[1-3]$ ]] || node=2
            rc=0
            "$ROOT/scripts/cluster.sh" partition "$node" >>"$OUT/logs/cluster.log" 2>&1 || rc=$?
            if ((rc == 3)); then
                say "[$(elapsed)s] fault partition: skipped (no network namespaces here)"
                return 0
            fi
            ((rc == 0)) || die "cluster.sh partition $node failed (see $OUT/logs/cluster.log)"
            sleep 20
            "$ROOT/scripts/cluster.sh" heal "$node" >>"$OUT/logs/cluster.log" 2>&1
            detail="node $node (the leader) cut off from the other nodes and the clients for 20 s"
            ;;
        close-connections)
            "$ROOT/scripts/cluster.sh" close-connections >>"$OUT/logs/cluster.log" 2>&1
            detail="every AMQP connection closed by the brokers"
            ;;
        kill-warehouse)
            stop_service warehouse-1 KILL
            sleep 2
            start_service warehouse-1
            wait_ready warehouse-1
            detail="SIGKILL of warehouse-1, restarted after 2 s"
            ;;
        cca-down)
            stop_service credit-card-authorizer KILL
            sleep 10
            start_service credit-card-authorizer
            wait_ready credit-card-authorizer
            detail="card authorizer down for 10 s"
            ;;
        restart-cart)
            stop_service cart-1 TERM
            start_service cart-1
            wait_ready cart-1
            detail="cart-1 stopped (SIGTERM, drained) and started again"
            ;;
        restart-postgres)
            pg_ctl_ -m fast -w restart -l "$PG_DIR/postgres.log" \
                -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200" >/dev/null
            detail="PostgreSQL restarted (fast shutdown)"
            ;;
        restart-redis)
            stop_redis
            start_redis
            detail="Redis restarted"
            ;;
    esac
    record_fault "$fault" "$start" "$(now_ms)" "$detail"
}

# ------------------------------------------------------------------ the run

if $BUILD; then
    info "building release binaries"
    (cd "$ROOT" && cargo build --release -q -p product-service -p cart-service -p credit-card-authorizer \
        -p warehouse -p gateway -p loadtest) || die "cargo build failed"
fi
for b in product-service cart-service credit-card-authorizer warehouse gateway loadtest chaos-reconcile; do
    [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b is missing (run without --no-build)"
done
command -v psql >/dev/null || die "psql is required (apt-get install postgresql-client)"
command -v redis-server >/dev/null || die "redis-server is required (apt-get install redis-server)"

info "output in $OUT"
info "the cluster"
"$ROOT/scripts/cluster.sh" up >"$OUT/logs/cluster-up.log" 2>&1 ||
    { tail -20 "$OUT/logs/cluster-up.log" >&2; die "scripts/cluster.sh up failed"; }
AMQP_URLS=$(cat "$CLUSTER_DIR/amqp_urls")
say "three nodes: $AMQP_URLS"
# Heartbeats every 5 s: a connection to a node cut off by a partition is noticed in seconds.
AMQP_URLS=${AMQP_URLS//\/%2f//%2f?heartbeat=5}
info "PostgreSQL :$PG_PORT and Redis :$REDIS_PORT (the campaign's own)"
start_postgres
start_redis
for s in "${SERVICES[@]}"; do write_env "$s"; done
$BROKEN && say "BROKEN BUILD: the warehouses ack each order before committing it (UNSAFE_ACK_ON_RECEIPT)"
info "the services"
for s in "${SERVICES[@]}"; do
    start_service "$s"
    wait_ready "$s" 90
done

info "load: flow at $RATE/s for ${LOAD_SECONDS}s; faults: ${FAULT_LIST[*]}"
"$BIN_DIR/loadtest" flow --base-url "http://127.0.0.1:$GATEWAY_PORT" --rate "$RATE" -c "$CONCURRENCY" \
    -d "${LOAD_SECONDS}s" --timeout 15s --products 100 --quiet --audit "$OUT/audit.jsonl" \
    --out "$OUT/loadtest" >"$OUT/loadtest.txt" 2>&1 &
LOADTEST_PID=$!
LOAD_STARTED=$(date +%s)

# Faults from 10 % to 85 % of the load, evenly spread; one at a time, each waits its turn.
n=${#FAULT_LIST[@]}
for ((i = 0; i < n; i++)); do
    at=$((LOAD_SECONDS / 10 + i * (LOAD_SECONDS * 3 / 4) / (n > 1 ? n - 1 : 1)))
    while (($(date +%s) - LOAD_STARTED < at)); do sleep 0.5; done
    fire "${FAULT_LIST[i]}"
done

LOADTEST_RC=0
wait "$LOADTEST_PID" || LOADTEST_RC=$?
LOADTEST_PID=""
((LOADTEST_RC <= 1)) || { cat "$OUT/loadtest.txt" >&2; die "loadtest failed ($LOADTEST_RC)"; }

# Drain: every order final in the cart's table, and the product's stock caught up with the
# warehouse's fulfilments (its events consumer). Stops waiting once nothing has moved for 30 s
# (orders a broken warehouse lost stay `placed` for ever) or after 180 s.
info "draining"
drained=false
last="" still=0
for _ in $(seq 1 180); do
    open_orders=$(sql "SELECT count(*) FROM orders.orders WHERE status IN ('pending', 'placed', 'cancelling')" 2>/dev/null || echo x)
    sold=$(sql "SELECT COALESCE(sum(sold + oversold), 0) FROM catalog.stock" 2>/dev/null || echo x)
    fulfilled=$(sql "SELECT COALESCE(sum(quantity), 0) FROM warehouse.product_totals" 2>/dev/null || echo y)
    if [[ $open_orders == 0 && $sold == "$fulfilled" ]]; then drained=true; break; fi
    if [[ "$open_orders $sold $fulfilled" == "$last" ]]; then still=$((still + 1)); else still=0; fi
    ((still < 30)) || break
    last="$open_orders $sold $fulfilled"
    sleep 1
done
$drained || say "not drained: $open_orders orders not final, stock sold $sold vs fulfilled $fulfilled"

info "reconciling"
sql_csv() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d shop -qc "\\copy ($1) TO '$2' WITH CSV HEADER"; }
sql_csv "SELECT order_id, order_uid, shopping_cart_id, status FROM orders.orders" "$OUT/orders.csv"
sql_csv "SELECT order_uid, order_id, outcome, order_body FROM warehouse.applied_orders" "$OUT/applied.csv"
sql_csv "SELECT product_id, sum(quantity) AS quantity FROM warehouse.product_totals GROUP BY product_id" "$OUT/totals.csv"
sql_csv "SELECT product_id, on_hand, reserved, sold, oversold, received FROM catalog.stock" "$OUT/stock.csv"
say "loadtest report: $OUT/loadtest.txt; result: $OUT/result.json; took $(elapsed) s"
RECONCILE_RC=0
# chaos-reconcile's last line, the run's summary, is this script's last line too.
"$BIN_DIR/chaos-reconcile" --audit "$OUT/audit.jsonl" --orders "$OUT/orders.csv" \
    --applied "$OUT/applied.csv" --totals "$OUT/totals.csv" --stock "$OUT/stock.csv" \
    --faults "$FAULT_LOG" --json "$OUT/result.json" | tee "$OUT/reconcile.txt" || RECONCILE_RC=${PIPESTATUS[0]}
((RECONCILE_RC <= 1)) || die "chaos-reconcile could not read the run (exit $RECONCILE_RC)"
if $EXPECT_LOSS; then
    if ((RECONCILE_RC == 1)); then
        say "as expected, the reconciliation caught the broken warehouse" >&2
        exit 0
    fi
    say "the reconciliation did NOT catch the broken warehouse" >&2
    exit 1
fi
exit "$RECONCILE_RC"
