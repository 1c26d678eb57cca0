#!/usr/bin/env bash
# Gateway overhead: throughput of GET /products/{id} directly against one product-service and
# through the gateway in front of it, same run, same wrk settings; prints both and the ratio.
#
#   scripts/bench-gateway.sh
#
# Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_THREADS (2),
# BENCH_PRODUCT_PORT (18081), BENCH_GATEWAY_PORT (18080), BENCH_NO_BUILD=1 to skip the build.
# Installs wrk with apt-get if it is missing (root or sudo needed). Loopback only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/release"
SECS="${BENCH_SECONDS:-10}"
CONNS="${BENCH_CONNECTIONS:-64}"
THREADS="${BENCH_THREADS:-2}"
PRODUCT_PORT="${BENCH_PRODUCT_PORT:-18081}"
GATEWAY_PORT="${BENCH_GATEWAY_PORT:-18080}"
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk is missing; installing it with apt-get"
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
fi

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    (cd "$ROOT" && cargo build --release --bins -p product-service -p gateway)
fi

for port in "$PRODUCT_PORT" "$GATEWAY_PORT"; do
    port_open "$port" && { echo "port $port is in use; set BENCH_PRODUCT_PORT / BENCH_GATEWAY_PORT" >&2; exit 1; }
done

PORT=$PRODUCT_PORT INSTANCE_ID=bench-product SEED_PRODUCTS=1000 FAILURE_RATE=0 RUST_LOG=warn \
    "$BIN_DIR/product-service" >"$WORK/product.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do port_open "$PRODUCT_PORT" && break; sleep 0.1; done

# The cart group points at a closed port: it is unused here (and unhealthy, which is fine).
PORT=$GATEWAY_PORT INSTANCE_ID=bench-gateway RUST_LOG=warn \
    PRODUCT_TARGETS="http://127.0.0.1:$PRODUCT_PORT" CART_TARGETS="http://127.0.0.1:9" \
    "$BIN_DIR/gateway" >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    [[ $(admin_curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT/products/1") == 200 ]] && break
    sleep 0.1
done
[[ $(admin_curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT/products/1") == 200 ]] ||
    { echo "the gateway does not serve /products/1:" >&2; cat "$WORK/gateway.log" "$WORK/product.log" >&2; exit 1; }

# Requests spread over the seeded ids.
write_ids_lua "$WORK/ids.lua"

run() {
    local name=$1 url=$2
    wrk -t"$THREADS" -c"$CONNS" -d2s -s "$WORK/ids.lua" "$url" >/dev/null 2>&1 || true # warm-up
    wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --latency -s "$WORK/ids.lua" "$url" >"$WORK/$name.txt" 2>&1
    echo "---- $name: $url"
    cat "$WORK/$name.txt"
}

echo "wrk -t$THREADS -c$CONNS -d${SECS}s, GET /products/{1..1000}, $(nproc) cores"
run direct "http://127.0.0.1:$PRODUCT_PORT"
run gateway "http://127.0.0.1:$GATEWAY_PORT"

rps() { awk '/Requests\/sec/ { print $2 }' "$WORK/$1.txt"; }
p99() { awk '$1 == "99%" { print $2 }' "$WORK/$1.txt"; }
errors() { awk '/Non-2xx|Socket errors/ { print }' "$WORK/$1.txt"; }
direct=$(rps direct)
through=$(rps gateway)
echo
printf '%-10s %12s req/s   p99 %s\n' direct "$direct" "$(p99 direct)"
printf '%-10s %12s req/s   p99 %s\n' gateway "$through" "$(p99 gateway)"
[[ -n $(errors direct)$(errors gateway) ]] && { echo "errors:"; errors direct; errors gateway; }
awk -v d="$direct" -v g="$through" 'BEGIN {
    r = (d > 0 ? g / d : 0)
    printf "ratio gateway/direct: %.2f (target >= 0.50): %s\n", r, (r >= 0.5 ? "PASS" : "FAIL")
    exit !(r >= 0.5)
}'
