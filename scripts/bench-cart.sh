#!/usr/bin/env bash
# Checkout vs the broker ceiling: how close does POST /shopping-carts/{id}/checkout come to the
# rate at which RabbitMQ takes confirmed, persistent order messages on this machine?
#
# Builds the release binaries and services/cart/examples/publish_ceiling.rs; starts
# product-service (SEED_PRODUCTS=1000), credit-card-authorizer (DECLINE_RATE=0) and cart-service
# (ORDER_QUEUE=bench_orders_<pid>) on free loopback ports (never the stack's defaults); runs
# R rounds, each: publish_ceiling (N real orders, 20 channels, pipelined confirms, fresh queue),
# then `loadtest checkout` with N fresh carts against the cart directly (its queue emptied first,
# as the ceiling's is fresh). Alternating the two within a round and taking the median of the
# rounds' ratios keeps a noisy shared host from deciding the result. Each round also measures the
# broker with only about as many publishes in flight as the checkout's concurrency, for reference.
# Samples the cart's VmRSS idle and under load. Prints every round, the median ratio (target >= 0.5) and the RSS, and at
# the end machine-readable `BENCH key=value` lines. Stops everything and deletes its queues on exit.
#
# Usage: scripts/bench-cart.sh [-n REQUESTS] [-c CONCURRENCY] [-d MAX_SECONDS] [-r ROUNDS]
# Defaults: 20000 checkouts, concurrency 64, at most 30 s timed, 3 rounds. AMQP_URL for the broker.
# BENCH_NO_BUILD=1 skips the build.
set -euo pipefail

REQUESTS=20000
CONCURRENCY=64
MAX_SECONDS=30
ROUNDS=3

while getopts "n:c:d:r:h" opt; do
  case "$opt" in
    n) REQUESTS=$OPTARG ;;
    c) CONCURRENCY=$OPTARG ;;
    d) MAX_SECONDS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
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
  cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service -p loadtest
  cargo build --release -q -p cart-service --example publish_ceiling
fi

QUEUE="bench_orders_$$"
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"
WORK=$(mktemp -d)
PIDS=()
SAMPLER=""
QUEUE_CREATED=0
cleanup() {
  if [[ -n $SAMPLER ]]; then kill "$SAMPLER" 2>/dev/null || true; fi
  stop_pids
  if [[ $QUEUE_CREATED == 1 ]]; then
    delete_bench_queue "$QUEUE"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM


# start NAME PORT BIN ENV... : spawn_ready, then PID_<name> and READY_<name> (ms to /ready).
start() {
  spawn_ready "$@" || exit 1
  eval "PID_${1//-/_}=$SPAWNED_PID"
  eval "READY_${1//-/_}=$SPAWNED_READY_MS"
}

PRODUCT_PORT=$(free_port)
CCA_PORT=$(free_port)
CART_PORT=$(free_port)
start product "$PRODUCT_PORT" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0
start cca "$CCA_PORT" credit-card-authorizer DECLINE_RATE=0
QUEUE_CREATED=1
start cart "$CART_PORT" cart-service ORDER_QUEUE="$QUEUE" \
  PRODUCT_URL="http://127.0.0.1:$PRODUCT_PORT" CCA_URL="http://127.0.0.1:$CCA_PORT"
# shellcheck disable=SC2154 # set by start via eval
{ CART_PID=$PID_cart; PRODUCT_PID=$PID_product; CCA_PID=$PID_cca; }
sleep 1
IDLE_CART=$(rss_kb "$CART_PID")
IDLE_PRODUCT=$(rss_kb "$PRODUCT_PID")
IDLE_CCA=$(rss_kb "$CCA_PID")

echo "machine: $(nproc) cores, $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cart :$CART_PORT (queue $QUEUE) -> product :$PRODUCT_PORT, cca :$CCA_PORT; everything shares the cores"

# Checkout through the cart, RSS sampled meanwhile (max over every round, setup included).
(
  max_cart=0 max_product=0 max_cca=0
  while :; do
    r=$(rss_kb "$CART_PID"); ((r > max_cart)) && max_cart=$r
    r=$(rss_kb "$PRODUCT_PID"); ((r > max_product)) && max_product=$r
    r=$(rss_kb "$CCA_PID"); ((r > max_cca)) && max_cca=$r
    echo "$max_cart $max_product $max_cca" >"$WORK/rss.max"
    sleep 0.2
  done
) &
SAMPLER=$!

# publish_rate ARGS... : runs publish_ceiling with N messages over 20 channels (its own fresh queue,
# deleted after) and prints its msg/s; exits the script if it fails.
publish_rate() {
  timeout 300 "$BIN/examples/publish_ceiling" --messages "$REQUESTS" --channels 20 "$@" \
    >"$WORK/publish.out" 2>"$WORK/publish.err" || { cat "$WORK/publish.err" >&2; exit 1; }
  sed -n 's/^publish_ceiling: .* = \([0-9.]*\) msg\/s$/\1/p' "$WORK/publish.out"
}
# The median line of a file of "ratio ..." lines (the lower middle one for an even count).
median_line() { sort -g "$1" | sed -n "$(((ROUNDS + 1) / 2))p"; }
# All the ratios (first fields) of such a file, comma-separated, in round order.
ratios_of() { awk '{ printf "%s%s", (NR > 1 ? "," : ""), $1 }' "$1"; }

# For reference, the broker at about the checkout's depth: 20 channels x 3 = 60 publishes in
# flight, where a closed-model checkout at concurrency 64 can never have more than 64.
SHALLOW_WINDOW=$((CONCURRENCY / 20))
((SHALLOW_WINDOW >= 1)) || SHALLOW_WINDOW=1

: >"$WORK/rounds"
: >"$WORK/shallow.rounds"
for round in $(seq 1 "$ROUNDS"); do
  # 1. The broker: its ceiling (window 64 per channel), then at the checkout's depth.
  CEILING=$(publish_rate) || exit 1
  SHALLOW=$(publish_rate --window "$SHALLOW_WINDOW") || exit 1
  # 2. The same number of checkouts into the cart's emptied queue.
  timeout 60 "$BIN/examples/publish_ceiling" --purge "$QUEUE" >/dev/null 2>"$WORK/purge.err" ||
    { cat "$WORK/purge.err" >&2; exit 1; }
  timeout $((MAX_SECONDS + 240)) "$BIN/loadtest" checkout --base-url "http://127.0.0.1:$CART_PORT" \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" --duration "${MAX_SECONDS}s" \
    --products 1000 --json --quiet >"$WORK/checkout.json" 2>"$WORK/checkout.err" ||
    { cat "$WORK/checkout.err" >&2; exit 1; }
  CHECKOUT=$(jq -r '.throughput_per_s' "$WORK/checkout.json")
  OK=$(jq -r '.iterations.statuses."2xx" // .iterations.statuses.ok_2xx // "?"' "$WORK/checkout.json")
  COUNT=$(jq -r '.iterations.count // "?"' "$WORK/checkout.json")
  P99=$(jq -r '.iterations.latency_ms.p99 // "?"' "$WORK/checkout.json")
  RATIO=$(awk -v a="$CHECKOUT" -v b="$CEILING" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }')
  SHALLOW_RATIO=$(awk -v a="$CHECKOUT" -v b="$SHALLOW" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }')
  printf 'round %s: checkout %.0f /s (%s of %s 2xx, p99 %s ms), ceiling %.0f msg/s, ratio %s; broker at %s in flight %.0f msg/s, ratio %s\n' \
    "$round" "$CHECKOUT" "$OK" "$COUNT" "$P99" "$CEILING" "$RATIO" "$((SHALLOW_WINDOW * 20))" "$SHALLOW" "$SHALLOW_RATIO"
  echo "$RATIO $CHECKOUT $CEILING $OK $COUNT $P99" >>"$WORK/rounds"
  echo "$SHALLOW_RATIO $CHECKOUT $SHALLOW" >>"$WORK/shallow.rounds"
done
sleep 0.3
kill "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
SAMPLER=""
read -r LOAD_CART LOAD_PRODUCT LOAD_CCA <"$WORK/rss.max"

# The median round by ratio, and the same for the reference.
read -r RATIO CHECKOUT CEILING OK COUNT P99 < <(median_line "$WORK/rounds")
ALL_RATIOS=$(ratios_of "$WORK/rounds")
read -r SHALLOW_RATIO SHALLOW_CHECKOUT SHALLOW < <(median_line "$WORK/shallow.rounds")
SHALLOW_RATIOS=$(ratios_of "$WORK/shallow.rounds")
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "median round of $ROUNDS (ratios $ALL_RATIOS):"
printf 'checkout : %.0f /s (%s of %s 2xx, p99 %s ms, concurrency %s)\n' "$CHECKOUT" "$OK" "$COUNT" "$P99" "$CONCURRENCY"
printf 'ceiling  : %.0f msg/s (publish+confirm, 20 channels)\n' "$CEILING"
echo "ratio checkout/ceiling: $RATIO (target >= 0.5)"
echo "for reference, against the broker at $((SHALLOW_WINDOW * 20)) publishes in flight: median ratio $SHALLOW_RATIO (rounds $SHALLOW_RATIOS)"
echo "cart RSS: idle $(mb "$IDLE_CART") MB, under load $(mb "$LOAD_CART") MB"
echo "BENCH cart_checkout_per_s=$CHECKOUT"
echo "BENCH cart_ceiling_msg_per_s=$CEILING"
echo "BENCH cart_ratio=$RATIO"
echo "BENCH cart_ratios=$ALL_RATIOS"
echo "BENCH cart_shallow in_flight=$((SHALLOW_WINDOW * 20)) checkout=$SHALLOW_CHECKOUT ceiling=$SHALLOW ratio=$SHALLOW_RATIO ratios=$SHALLOW_RATIOS"
echo "BENCH cart_checkout_ok=$OK cart_checkout_count=$COUNT cart_checkout_p99_ms=$P99 concurrency=$CONCURRENCY"
# shellcheck disable=SC2154 # set by start via eval
{
  echo "BENCH rss_kb service=cart-service idle=$IDLE_CART load=$LOAD_CART"
  echo "BENCH rss_kb service=product-service idle=$IDLE_PRODUCT load=$LOAD_PRODUCT"
  echo "BENCH rss_kb service=credit-card-authorizer idle=$IDLE_CCA load=$LOAD_CCA"
  echo "BENCH ready_ms service=product-service ms=$READY_product"
  echo "BENCH ready_ms service=credit-card-authorizer ms=$READY_cca"
  echo "BENCH ready_ms service=cart-service ms=$READY_cart"
}
