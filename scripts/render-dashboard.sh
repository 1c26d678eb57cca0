#!/usr/bin/env bash
# The dashboard's key panels as a PNG, from a run of the native stack (for the README, and for
# anyone without Grafana): puts a mixed load on the stack through the gateway (the loadtest's
# lifecycle scenario at RATE iterations a second, cancelling a share of the orders, plus a product
# flood that the gateway spreads over the three product instances, one of them bad) while
# target/release/dashboard-png scrapes every instance's /metrics every 2 s, then draws requests
# per second, 5xx share and p99 per instance, checkouts confirmed vs declined, the queue depth the
# warehouse sees, the warehouse's order lag, the publish-confirm latency and the ATW weights.
#
# Usage: scripts/stack.sh up; scripts/render-dashboard.sh [OUT]   (default docs/img/dashboard.png)
# Environment: DURATION (seconds of load, default 60), RATE (lifecycle iterations/s, default 40),
# and the stack's ports (GATEWAY_PORT, ... as for stack.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-docs/img/dashboard.png}
DURATION=${DURATION:-60}
RATE=${RATE:-40}
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
# shellcheck source=scripts/lib/auth.sh
source scripts/lib/auth.sh
use_demo_auth "${SECRETS_DIR:-$ROOT/.secrets}"

port() { local var=$1 default=$2; echo "${!var:-$default}"; }
GATEWAY=$(port GATEWAY_PORT 8080)
curl -fsS "http://127.0.0.1:$GATEWAY/health" >/dev/null 2>&1 ||
  { echo "render-dashboard.sh: the stack is not up on :$GATEWAY (scripts/stack.sh up)" >&2; exit 1; }
[[ -x $BIN/dashboard-png && -x $BIN/loadtest ]] ||
  cargo build --release -q -p loadtest --bin dashboard-png --bin loadtest

targets=(--target "gateway=http://127.0.0.1:$GATEWAY")
for entry in product-1:PRODUCT1_PORT:8081 product-2:PRODUCT2_PORT:8085 product-bad:PRODUCT_BAD_PORT:8086 \
  cart-1:CART_PORT:8082 cart-2:CART2_PORT:8087 credit-card-authorizer:CCA_PORT:8083 warehouse:WAREHOUSE_PORT:8084; do
  IFS=: read -r name var default <<<"$entry"
  p=$(port "$var" "$default")
  # Only the instances that are running (the in-memory stack has one cart).
  curl -fsS "http://127.0.0.1:$p/health" >/dev/null 2>&1 && targets+=(--target "$name=http://127.0.0.1:$p")
done

key=()
[[ -z ${ADMIN_KEY:-} ]] || key=(--api-key "$ADMIN_KEY")

mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
# Scrape 10 s longer than the load: the tail shows the queue draining and the rates falling.
"$BIN/dashboard-png" --duration "$((DURATION + 10))s" --interval 2s --out "$OUT" "${targets[@]}" \
  ${key[@]+"${key[@]}"} >"$WORK/dashboard.log" 2>&1 &
scraper=$!
sleep 4 # a first scrape before the load
"$BIN/loadtest" lifecycle --base-url "http://127.0.0.1:$GATEWAY" --rate "$RATE" -c 64 \
  --duration "${DURATION}s" ${key[@]+"${key[@]}"} --quiet --products 1000 >"$WORK/lifecycle.log" 2>&1 &
"$BIN/loadtest" product --base-url "http://127.0.0.1:$GATEWAY" --rate 200 -c 16 \
  --duration "${DURATION}s" ${key[@]+"${key[@]}"} --quiet --products 1000 >"$WORK/product.log" 2>&1 &
wait "$scraper" || { cat "$WORK/dashboard.log" >&2; exit 1; }
cat "$WORK/dashboard.log"
echo "the dashboard's panels: $OUT"
