#!/usr/bin/env bash
# What the durable stores cost: each figure against its in-memory (or raw) twin measured in the
# same round, the median of R rounds.
#
#   1. checkout with the carts in Redis vs the same checkout with the carts in memory (two cart
#      processes side by side, each with its own queue, the same product service and authorizer,
#      DECLINE_RATE=0; `loadtest checkout`, alternating which goes first). Target >= 0.7.
#   2. product GET /products/{id} with the catalog in PostgreSQL vs in memory (loadtest; ids 1..1000,
#      so the hot read path's cache is what is measured, as in production).
#   3. warehouse drain into PostgreSQL vs raw consume+ack (services/warehouse/examples/drain_bench.rs,
#      10 channels x prefetch 10). Target >= 0.5.
#   4. VmRSS under load of every store-backed process (max sampled every 0.2 s). Target <= 50 MB.
#
# Usage: scripts/bench-stores.sh [-n CHECKOUTS] [-c CONCURRENCY] [-m DRAIN_MESSAGES] [-r ROUNDS] [-o FILE]
# Defaults: 20000 checkouts, concurrency 64, 50000 drained orders, 3 rounds. With -o, the
# results replace the "Durable stores" section of FILE (BENCHMARKS.md). Uses the local RabbitMQ,
# PostgreSQL (a database of its own, dropped after) and Redis (a key prefix of its own, deleted
# after); BENCH_NO_BUILD=1 skips the release build. Loopback only; stops everything on exit.
set -euo pipefail

CHECKOUTS=20000
CONCURRENCY=64
DRAIN=50000
ROUNDS=3
OUT=""
while getopts "n:c:m:r:o:h" opt; do
  case "$opt" in
    n) CHECKOUTS=$OPTARG ;;
    c) CONCURRENCY=$OPTARG ;;
    m) DRAIN=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  echo "building release binaries..." >&2
  cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service -p warehouse -p loadtest
  cargo build --release -q -p cart-service --example publish_ceiling
  cargo build --release -q -p warehouse --example drain_bench
fi

WORK=$(mktemp -d)
PIDS=()
SAMPLER=""
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
REDIS_PREFIX="bench:stores:$$:"
DB="bench_stores_$$"
QUEUE_MEM="bench_orders_mem_$$"
QUEUE_REDIS="bench_orders_redis_$$"
cleanup() {
  if [[ -n $SAMPLER ]]; then kill "$SAMPLER" 2>/dev/null || true; fi
  stop_pids
  delete_bench_queue "$QUEUE_MEM"
  delete_bench_queue "$QUEUE_REDIS"
  delete_redis_prefix "$REDIS_URL" "$REDIS_PREFIX"
  drop_bench_database "$DB"
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

create_bench_database "$DB"
DB_URL=$(bench_database_url "$DB")

start() {
  spawn_ready "$@" || exit 1
  eval "PID_${1//-/_}=$SPAWNED_PID"
}
P_MEM=$(free_port); P_PG=$(free_port); CCA=$(free_port); CART_MEM=$(free_port); CART_REDIS=$(free_port)
start product_mem "$P_MEM" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0
start product_pg "$P_PG" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0 DATABASE_URL="$DB_URL"
start cca "$CCA" credit-card-authorizer DECLINE_RATE=0
start cart_mem "$CART_MEM" cart-service ORDER_QUEUE="$QUEUE_MEM" \
  PRODUCT_URL="http://127.0.0.1:$P_MEM" CCA_URL="http://127.0.0.1:$CCA"
start cart_redis "$CART_REDIS" cart-service ORDER_QUEUE="$QUEUE_REDIS" \
  PRODUCT_URL="http://127.0.0.1:$P_MEM" CCA_URL="http://127.0.0.1:$CCA" \
  REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="$REDIS_PREFIX"
# shellcheck disable=SC2154 # set by start via eval
{ PID_CART_REDIS=$PID_cart_redis; PID_PRODUCT_PG=$PID_product_pg; }

echo "machine: $(nproc) cores, $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# RSS of the store-backed processes, max over the whole run.
(
  max_cart=0 max_product=0
  while :; do
    r=$(rss_kb "$PID_CART_REDIS"); ((r > max_cart)) && max_cart=$r
    r=$(rss_kb "$PID_PRODUCT_PG"); ((r > max_product)) && max_product=$r
    echo "$max_cart $max_product" >"$WORK/rss.max"
    sleep 0.2
  done
) &
SAMPLER=$!

# checkout PORT QUEUE: N fresh one-item carts checked out against the cart at PORT; prints
# "rate ok_count p99_ms".
checkout() {
  timeout 60 "$BIN/examples/publish_ceiling" --purge "$2" >/dev/null 2>"$WORK/purge.err" ||
    { cat "$WORK/purge.err" >&2; exit 1; }
  timeout 300 "$BIN/loadtest" checkout --base-url "http://127.0.0.1:$1" \
    --requests "$CHECKOUTS" --concurrency "$CONCURRENCY" --duration 60s \
    --products 1000 --json --quiet >"$WORK/checkout.json" 2>"$WORK/checkout.err" ||
    { cat "$WORK/checkout.err" >&2; exit 1; }
  jq -r '"\(.throughput_per_s) \(.iterations.statuses."2xx" // .iterations.statuses.ok_2xx // 0) \(.iterations.latency_ms.p99 // 0)"' "$WORK/checkout.json"
}
# product_rate PORT: `loadtest product` GET /products/{id} for 6 s after a 2 s warm-up (ids from
# the seeded 1..1000); prints req/s.
product_rate() {
  timeout 60 "$BIN/loadtest" product --base-url "http://127.0.0.1:$1" --products 1000 \
    --concurrency 64 --threads 2 --duration 2s --quiet >/dev/null 2>&1 || true
  timeout 60 "$BIN/loadtest" product --base-url "http://127.0.0.1:$1" --products 1000 \
    --concurrency 64 --threads 2 --duration 6s --json --quiet 2>/dev/null | jq -r '.throughput_per_s'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
median() { sort -g "$1" | sed -n "$(((ROUNDS + 1) / 2))p"; }
ratios() { awk '{ printf "%s%s", (NR > 1 ? "," : ""), $1 }' "$1"; }

: >"$WORK/checkout.rounds"; : >"$WORK/product.rounds"; : >"$WORK/drain.rounds"
for round in $(seq 1 "$ROUNDS"); do
  # 1. Checkout, alternating which store goes first.
  if ((round % 2)); then
    read -r MEM MEM_OK MEM_P99 < <(checkout "$CART_MEM" "$QUEUE_MEM")
    read -r RED RED_OK RED_P99 < <(checkout "$CART_REDIS" "$QUEUE_REDIS")
  else
    read -r RED RED_OK RED_P99 < <(checkout "$CART_REDIS" "$QUEUE_REDIS")
    read -r MEM MEM_OK MEM_P99 < <(checkout "$CART_MEM" "$QUEUE_MEM")
  fi
  R=$(ratio "$RED" "$MEM")
  printf 'round %s: checkout redis %.0f/s (%s 2xx, p99 %s ms) vs memory %.0f/s (%s 2xx, p99 %s ms): %s\n' \
    "$round" "$RED" "$RED_OK" "$RED_P99" "$MEM" "$MEM_OK" "$MEM_P99" "$R"
  echo "$R $RED $MEM $RED_OK $MEM_OK $RED_P99 $MEM_P99" >>"$WORK/checkout.rounds"

  # 2. Product GET.
  PM=$(product_rate "$P_MEM"); PP=$(product_rate "$P_PG")
  R=$(ratio "$PP" "$PM")
  printf 'round %s: product GET postgres %.0f req/s vs memory %.0f req/s: %s\n' "$round" "$PP" "$PM" "$R"
  echo "$R $PP $PM" >>"$WORK/product.rounds"

  # 3. Warehouse drain: raw consume+ack, then the warehouse into PostgreSQL, on the same fill.
  RUST_LOG=warn timeout 600 "$BIN/examples/drain_bench" --messages "$DRAIN" --database-url "$DB_URL" \
    >"$WORK/drain.out" 2>"$WORK/drain.err" || { cat "$WORK/drain.err" "$WORK/drain.out" >&2; exit 1; }
  RAW=$(sed -n 's/^round 1: .*raw consume+ack *\([0-9.]*\) msg\/s.*/\1/p' "$WORK/drain.out")
  WH=$(sed -n 's/^round 1: .*warehouse drain *\([0-9.]*\) msg\/s.*/\1/p' "$WORK/drain.out")
  R=$(ratio "$WH" "$RAW")
  printf 'round %s: warehouse drain into postgres %.0f/s vs raw consume+ack %.0f/s: %s\n' "$round" "$WH" "$RAW" "$R"
  echo "$R $WH $RAW" >>"$WORK/drain.rounds"
done

# 4. The warehouse binary with its ledger in PostgreSQL: RSS while DRAIN orders are published to
# it and drained.
QUEUE_WH="bench_whsvc_stores_$$"
WH_PORT=$(free_port)
start warehouse "$WH_PORT" warehouse ORDER_QUEUE="$QUEUE_WH" DATABASE_URL="$DB_URL"
# shellcheck disable=SC2154 # set by start via eval
PID_WH=$PID_warehouse
(
  max=0
  while :; do r=$(rss_kb "$PID_WH"); ((r > max)) && max=$r; echo "$max" >"$WORK/rss_wh.max"; sleep 0.2; done
) &
WH_SAMPLER=$!
before=$(admin_curl -s "http://127.0.0.1:$WH_PORT/stats" | jq -r '.orders_processed // 0')
timeout 300 "$BIN/examples/publish_ceiling" --queue "$QUEUE_WH" --keep --messages "$DRAIN" \
  >"$WORK/whfill.out" 2>&1 || cat "$WORK/whfill.out" >&2
done_n=0
for _ in $(seq 1 600); do
  done_n=$(admin_curl -s "http://127.0.0.1:$WH_PORT/stats" | jq -r '.orders_processed // 0' 2>/dev/null || echo 0)
  ((done_n - before >= DRAIN)) && break
  sleep 0.1
done
kill "$WH_SAMPLER" 2>/dev/null || true
wait "$WH_SAMPLER" 2>/dev/null || true
echo "warehouse binary (PostgreSQL ledger) applied $((done_n - before)) of $DRAIN orders published to it"
delete_bench_queue "$QUEUE_WH"
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
read -r RSS_CART RSS_PRODUCT <"$WORK/rss.max"
RSS_WH=$(cat "$WORK/rss_wh.max")

read -r C_R C_RED C_MEM C_RED_OK C_MEM_OK C_RED_P99 C_MEM_P99 < <(median "$WORK/checkout.rounds")
read -r P_R P_PG_RATE P_MEM_RATE < <(median "$WORK/product.rounds")
read -r D_R D_WH D_RAW _ < <(median "$WORK/drain.rounds")
verdict() { awk -v r="$1" -v t="$2" -v dir="$3" 'BEGIN { ok = (dir == "ge") ? (r >= t) : (r <= t); print (ok ? "meets" : "**misses**") }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

TABLE=$(cat <<EOF
## Durable stores

Generated by \`scripts/bench-stores.sh -n $CHECKOUTS -c $CONCURRENCY -m $DRAIN -r $ROUNDS\` on $(date -u '+%Y-%m-%d %H:%M') UTC
(commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cores shared by the load generator, the services, RabbitMQ,
PostgreSQL $(psql -XtAc 'SHOW server_version' "$BENCH_ADMIN_URL" 2>/dev/null | cut -d' ' -f1) and Redis $(redis-cli INFO server 2>/dev/null | sed -n 's/^redis_version:\([0-9.]*\).*/\1/p')). Each ratio is the median of $ROUNDS rounds; a round measures
a figure and its twin back to back.

| measurement | figure | ceiling, same round | ratio | target | verdict |
| --- | ---: | ---: | ---: | --- | --- |
| checkout with carts in Redis (loadtest checkout -c $CONCURRENCY, $C_RED_OK 2xx, p99 $C_RED_P99 ms; rounds $(ratios "$WORK/checkout.rounds")) | $(printf '%.0f' "$C_RED") checkouts/s | $(printf '%.0f' "$C_MEM") checkouts/s with carts in memory ($C_MEM_OK 2xx, p99 $C_MEM_P99 ms) | $C_R | ≥ 0.7 of in-memory | $(verdict "$C_R" 0.7 ge) |
| warehouse drain into PostgreSQL, $DRAIN orders (rounds $(ratios "$WORK/drain.rounds")) | $(printf '%.0f' "$D_WH") orders/s | $(printf '%.0f' "$D_RAW") msg/s raw consume+ack (10 channels × prefetch 10) | $D_R | ≥ 0.5 of raw | $(verdict "$D_R" 0.5 ge) |
| for reference: product GET with the catalog in PostgreSQL (loadtest product -c64, ids 1..1000; rounds $(ratios "$WORK/product.rounds")) | $(printf '%.0f' "$P_PG_RATE") req/s | $(printf '%.0f' "$P_MEM_RATE") req/s with the catalog in memory | $P_R | none (reads are cached) | — |

| process under load | RSS max (MB) | ≤ 50 MB |
| --- | ---: | --- |
| cart-service, carts in Redis (during the checkouts) | $(mb "$RSS_CART") | $(verdict "$(mb "$RSS_CART")" 50 le) |
| product-service, catalog in PostgreSQL (during the checkouts and the reads) | $(mb "$RSS_PRODUCT") | $(verdict "$(mb "$RSS_PRODUCT")" 50 le) |
| warehouse, ledger in PostgreSQL (while $DRAIN orders are published to it and drained) | $(mb "$RSS_WH") | $(verdict "$(mb "$RSS_WH")" 50 le) |

What the stores cost each order in CPU: \`scripts/cpu-per-request.sh checkout checkout-redis drain-postgres\`
(see docs/performance.md).
EOF
)
echo
echo "$TABLE"
if [[ -n $OUT ]]; then
  # Replace the section (from its heading to the next "## " heading) or append it.
  awk -v table="$TABLE" '
    /^## Durable stores/ { print table; skip = 1; done = 1; next }
    skip && /^## / { skip = 0 }
    !skip { print }
    END { if (!done) { print ""; print table } }' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
  echo "wrote the section to $OUT"
fi
