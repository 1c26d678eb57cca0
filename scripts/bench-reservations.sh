#!/usr/bin/env bash
# What reserving stock costs a checkout: the checkout with RESERVE_STOCK=true (reserve at the
# product service before the card, confirm after the broker's ack) against the same checkout
# with RESERVE_STOCK=false, two cart processes side by side in the same round (each with its own
# queue, the same product service, authorizer and broker, DECLINE_RATE=0, alternating which goes
# first); the median of R rounds. Target: >= 0.7.
#
# Usage: scripts/bench-reservations.sh [-n CHECKOUTS] [-c CONCURRENCY] [-r ROUNDS] [-s STORE] [-o FILE]
# Defaults: 20000 checkouts, concurrency 64, 3 rounds, stores memory. -s durable puts the catalog
# and stock in PostgreSQL (a database of its own, dropped after), the carts in Redis (a key
# prefix of its own) and the orders in PostgreSQL for both carts. With -o, the results replace
# the "Stock reservations (STORE stores)" section of FILE (BENCHMARKS.md). BENCH_NO_BUILD=1 skips the release
# build; BENCH_DB_CONNECTIONS=N sets DATABASE_MAX_CONNECTIONS of the durable services. Loopback
# only; stops everything on exit.
set -euo pipefail

CHECKOUTS=20000
CONCURRENCY=64
ROUNDS=3
STORE=memory
OUT=""
while getopts "n:c:r:s:o:h" opt; do
  case "$opt" in
    n) CHECKOUTS=$OPTARG ;;
    c) CONCURRENCY=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    s) STORE=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
  esac
done
[[ $STORE == memory || $STORE == durable ]] || { echo "-s must be memory or durable" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  echo "building release binaries..." >&2
  cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service -p loadtest
  cargo build --release -q -p cart-service --example publish_ceiling
fi

WORK=$(mktemp -d)
PIDS=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
REDIS_PREFIX="bench:reservations:$$:"
DB="bench_reservations_$$"
QUEUE_PLAIN="bench_orders_plain_$$"
QUEUE_RESERVE="bench_orders_reserve_$$"
cleanup() {
  stop_pids
  delete_bench_queue "$QUEUE_PLAIN"
  delete_bench_queue "$QUEUE_RESERVE"
  if [[ $STORE == durable ]]; then
    delete_redis_prefix "$REDIS_URL" "$REDIS_PREFIX"
    drop_bench_database "$DB"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

PRODUCT_STORE=()
CART_STORE=()
if [[ $STORE == durable ]]; then
  create_bench_database "$DB"
  DB_URL=$(bench_database_url "$DB")
  PRODUCT_STORE=(DATABASE_URL="$DB_URL")
  CART_STORE=(REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="$REDIS_PREFIX" DATABASE_URL="$DB_URL")
  if [[ -n ${BENCH_DB_CONNECTIONS:-} ]]; then
    PRODUCT_STORE+=(DATABASE_MAX_CONNECTIONS="$BENCH_DB_CONNECTIONS")
    CART_STORE+=(DATABASE_MAX_CONNECTIONS="$BENCH_DB_CONNECTIONS")
  fi
fi

P=$(free_port); CCA=$(free_port); CART_PLAIN=$(free_port); CART_RESERVE=$(free_port)
spawn_ready product "$P" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0 "${PRODUCT_STORE[@]}" || exit 1
spawn_ready cca "$CCA" credit-card-authorizer DECLINE_RATE=0 || exit 1
spawn_ready cart_plain "$CART_PLAIN" cart-service ORDER_QUEUE="$QUEUE_PLAIN" RESERVE_STOCK=false \
  PRODUCT_URL="http://127.0.0.1:$P" CCA_URL="http://127.0.0.1:$CCA" "${CART_STORE[@]}" || exit 1
spawn_ready cart_reserve "$CART_RESERVE" cart-service ORDER_QUEUE="$QUEUE_RESERVE" RESERVE_STOCK=true \
  PRODUCT_URL="http://127.0.0.1:$P" CCA_URL="http://127.0.0.1:$CCA" "${CART_STORE[@]}" || exit 1

echo "machine: $(nproc) cores, $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# checkout PORT QUEUE: CHECKOUTS fresh one-item carts checked out against the cart at PORT;
# prints "rate ok_count p99_ms".
checkout() {
  timeout 60 "$BIN/examples/publish_ceiling" --purge "$2" >/dev/null 2>"$WORK/purge.err" ||
    { cat "$WORK/purge.err" >&2; exit 1; }
  timeout 300 "$BIN/loadtest" checkout --base-url "http://127.0.0.1:$1" \
    --requests "$CHECKOUTS" --concurrency "$CONCURRENCY" --duration 60s \
    --products 1000 --json --quiet >"$WORK/checkout.json" 2>"$WORK/checkout.err" ||
    { cat "$WORK/checkout.err" >&2; exit 1; }
  jq -r '"\(.throughput_per_s) \(.iterations.statuses."2xx" // .iterations.statuses.ok_2xx // 0) \(.iterations.latency_ms.p99 // 0)"' "$WORK/checkout.json"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
median() { sort -g "$1" | sed -n "$(((ROUNDS + 1) / 2))p"; }
ratios() { awk '{ printf "%s%s", (NR > 1 ? "," : ""), $1 }' "$1"; }

: >"$WORK/rounds"
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then
    read -r PLAIN PLAIN_OK PLAIN_P99 < <(checkout "$CART_PLAIN" "$QUEUE_PLAIN")
    read -r RES RES_OK RES_P99 < <(checkout "$CART_RESERVE" "$QUEUE_RESERVE")
  else
    read -r RES RES_OK RES_P99 < <(checkout "$CART_RESERVE" "$QUEUE_RESERVE")
    read -r PLAIN PLAIN_OK PLAIN_P99 < <(checkout "$CART_PLAIN" "$QUEUE_PLAIN")
  fi
  R=$(ratio "$RES" "$PLAIN")
  printf 'round %s: checkout with reservation %.0f/s (%s 2xx, p99 %s ms) vs without %.0f/s (%s 2xx, p99 %s ms): %s\n' \
    "$round" "$RES" "$RES_OK" "$RES_P99" "$PLAIN" "$PLAIN_OK" "$PLAIN_P99" "$R"
  echo "$R $RES $PLAIN $RES_OK $PLAIN_OK $RES_P99 $PLAIN_P99" >>"$WORK/rounds"
done

read -r C_R C_RES C_PLAIN C_RES_OK C_PLAIN_OK C_RES_P99 C_PLAIN_P99 < <(median "$WORK/rounds")
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "meets" : "**misses**") }'; }
if [[ $STORE == durable ]]; then
  WHERE="catalog and stock in PostgreSQL, carts in Redis, orders in PostgreSQL"
else
  WHERE="every store in memory"
fi

TABLE=$(cat <<EOF
## Stock reservations ($STORE stores)

Generated by \`scripts/bench-reservations.sh -n $CHECKOUTS -c $CONCURRENCY -r $ROUNDS -s $STORE\` on $(date -u '+%Y-%m-%d %H:%M') UTC
(commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cores shared by the load generator, the services and RabbitMQ;
$WHERE). The checkout with a reservation (one more call to the product service before the card,
and a batched confirm after the broker's ack) against the same checkout without it, two cart
processes side by side; the ratio is the median of $ROUNDS rounds, each measuring both back to back.

| measurement | figure | the same checkout without reservation, same round | ratio | target | verdict |
| --- | ---: | ---: | ---: | --- | --- |
| checkout with stock reservation (loadtest checkout -c $CONCURRENCY, $C_RES_OK 2xx, p99 $C_RES_P99 ms; rounds $(ratios "$WORK/rounds")) | $(printf '%.0f' "$C_RES") checkouts/s | $(printf '%.0f' "$C_PLAIN") checkouts/s ($C_PLAIN_OK 2xx, p99 $C_PLAIN_P99 ms) | $C_R | ≥ 0.7 of without | $(verdict "$C_R" 0.7) |
EOF
)
echo
echo "$TABLE"
if [[ -n $OUT ]]; then
  awk -v table="$TABLE" -v store="$STORE" '
    index($0, "## Stock reservations (" store " stores)") == 1 { print table; print ""; skip = 1; done = 1; next }
    skip && /^## / { skip = 0 }
    !skip { print }
    END { if (!done) { print ""; print table } }' "$OUT" >"$WORK/out.md"
  cp "$WORK/out.md" "$OUT"
  echo "wrote the section to $OUT"
fi
