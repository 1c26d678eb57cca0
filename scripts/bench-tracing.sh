#!/usr/bin/env bash
# What exporting traces costs the checkout: two identical sets of release binaries side by side,
# each a product service, a card authorizer and a cart on its own queue (the products in memory,
# the carts in memory, as in bench-ab.sh), one with tracing off (no endpoint: the default) and one
# exporting every span (OTEL_TRACES_SAMPLER=always_on) over OTLP to a local sink (the otlp_sink
# example: decodes and counts, keeps nothing). The loadtest's checkout scenario (20000 carts, -c 64)
# runs against each in turn, alternating which goes first; each round prints both throughputs and
# their ratio (on / off), and the spans the sink received.
#
# Whether tracing compiled in but off changes anything is bench-ab.sh's question (this tree against
# the commit before traces): scripts/bench-ab.sh <commit>.
#
# Usage: scripts/bench-tracing.sh [-r ROUNDS] [-p grpc|http/protobuf]   (default 4 rounds, grpc)
# Needs a RabbitMQ at AMQP_URL (default local). Loopback only; stops what it starts and deletes its
# queues.
set -euo pipefail
ROUNDS=4
PROTOCOL=grpc
while getopts "r:p:h" opt; do
  case "$opt" in
    r) ROUNDS=$OPTARG ;;
    p) PROTOCOL=$OPTARG ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$PWD/target}/release"
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh

echo "== building the release binaries and the OTLP sink" >&2
cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service -p loadtest
cargo build --release -q -p cart-service --example publish_ceiling
cargo build --release -q -p common --features test-support --example otlp_sink

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  stop_pids
  local q
  for q in bt_off_orders bt_on_orders; do delete_bench_queue "$q"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

SINK=$(free_port)
"$BIN/examples/otlp_sink" "$SINK" >"$WORK/sink.log" 2>&1 &
SINK_PID=$!
PIDS+=("$SINK_PID")
# CPU seconds a process has used (user + system), from /proc.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$1/stat"; }
spans() { tail -n 20 "$WORK/sink.log" | sed -n 's/^spans //p' | tail -n 1; }

declare -A CART
for side in off on; do
  otel=()
  if [[ $side == on ]]; then
    otel=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_EXPORTER_OTLP_PROTOCOL="$PROTOCOL"
      OTEL_TRACES_SAMPLER="${BENCH_SAMPLER:-always_on}")
  fi
  product=$(free_port) cca=$(free_port) cart=$(free_port)
  spawn_ready "product-$side" "$product" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0 \
    ${otel[@]+"${otel[@]}"}
  spawn_ready "cca-$side" "$cca" credit-card-authorizer DECLINE_RATE=0 ${otel[@]+"${otel[@]}"}
  spawn_ready "cart-$side" "$cart" cart-service ORDER_QUEUE="bt_${side}_orders" \
    PRODUCT_URL="http://127.0.0.1:$product" CCA_URL="http://127.0.0.1:$cca" ${otel[@]+"${otel[@]}"}
  CART[$side]=$cart
done

ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
checkouts() {
  # Nothing consumes the orders: empty the queue and give the broker a moment to finish writing
  # the previous run's persistent messages, so the side that runs second in a round does not pay
  # for the first side's backlog.
  "$BIN/examples/publish_ceiling" --purge "bt_$1_orders" >/dev/null 2>&1
  sleep 3
  "$BIN/loadtest" checkout --base-url "http://127.0.0.1:${CART[$1]}" --requests 20000 \
    --concurrency 64 --duration 30s --products 1000 --json --quiet 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["throughput_per_s"]))'
}

echo "== checkout with tracing off and on (every span exported by $PROTOCOL)" >&2
for r in $(seq 1 "$ROUNDS"); do
  before=$(spans)
  if ((r % 2)); then
    off=$(checkouts off)
    on=$(checkouts on)
  else
    on=$(checkouts on)
    off=$(checkouts off)
  fi
  sleep 2 # the last batch of spans
  after=$(spans)
  echo "round $r: off $off /s, on $on /s, ratio $(ratio "$on" "$off"), spans exported $((${after:-0} - ${before:-0}))"
done
# The sink decodes every span on the same two cores: its share of the machine is part of the
# "on" rounds' cost, though a real collector would run elsewhere.
echo "the sink used $(cpu_s "$SINK_PID") s of CPU in all"
