#!/usr/bin/env bash
# A/B against an earlier commit: did a change move the gateway's or the checkout's throughput?
# Builds BASE's gateway and cart-service in a git worktree (own target directory, kept between
# runs) and this tree's release binaries, then alternates the two in rounds on the same machine:
#
#   gateway:  one product-service behind BASE's gateway and behind this tree's; wrk -t2 -c64 -d8s
#             (2 s warm-up) against each in turn, ids 1..1000 round-robin;
#   checkout: one product-service and card authorizer behind BASE's cart and this tree's (each
#             on its own queue, purged before a round); loadtest checkout, 20000 carts, -c 64.
#
# Prints each round's two figures and their ratio (this tree / BASE); 1.00 is no change. The
# order alternates between rounds.
#
# Usage: scripts/bench-ab.sh [-r ROUNDS] BASE_COMMIT        (default 4 rounds)
# The worktree and its target directory: $AB_TREE and $AB_TARGET (default under
# ${TMPDIR:-/tmp}/shop-bench-ab), kept so a second run against the same BASE builds nothing.
# Needs wrk and a RabbitMQ at AMQP_URL (default local). Loopback only; stops what it starts and
# deletes its queues.
set -euo pipefail
ROUNDS=4
while getopts "r:h" opt; do
  case "$opt" in
    r) ROUNDS=$OPTARG ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
BASE=${1:?usage: scripts/bench-ab.sh [-r ROUNDS] BASE_COMMIT}
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

NEW="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BIN=$NEW # for scripts/lib/bench.sh
AB_DIR=${AB_DIR:-${TMPDIR:-/tmp}/shop-bench-ab}
OLD_TREE=${AB_TREE:-$AB_DIR/tree}
OLD_TARGET=${AB_TARGET:-$AB_DIR/target}
OLD="$OLD_TARGET/release"
rev=$(git rev-parse --verify "$BASE^{commit}")
echo "== building this tree and $BASE (${rev:0:8}) in $OLD_TREE" >&2
cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service \
  -p warehouse -p gateway -p loadtest
cargo build --release -q -p cart-service --example publish_ceiling
mkdir -p "$AB_DIR"
if [[ -d $OLD_TREE ]]; then
  git -C "$OLD_TREE" checkout -q --detach "$rev"
else
  git worktree add -q --detach "$OLD_TREE" "$rev"
fi
for package in gateway cart-service; do
  (cd "$OLD_TREE" && CARGO_TARGET_DIR="$OLD_TARGET" cargo build --release -q --bins -p "$package")
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  # The order queues and the rest of their topology (dead letters, cancels, events).
  local q
  for q in ab_base_orders ab_this_orders; do delete_bench_queue "$q"; done
  if command -v rabbitmqctl >/dev/null; then
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -E '^ab_(base|this)_orders' || true); do
      rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
write_ids_lua "$WORK/ids.lua"

# serve NAME PORT BINARY ENV...: starts a binary and waits for its /ready.
serve() {
  local name=$1 port=$2 bin=$3
  shift 3
  env PORT="$port" INSTANCE_ID="$name" RUST_LOG=warn "$@" "$bin" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 150); do
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  cat "$WORK/$name.log" >&2
  return 1
}
ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }

PRODUCT=$(free_port)
CCA=$(free_port)
GW_BASE=$(free_port)
GW_THIS=$(free_port)
CART_BASE=$(free_port)
CART_THIS=$(free_port)
serve product "$PRODUCT" "$NEW/product-service" SEED_PRODUCTS=1000 FAILURE_RATE=0
serve cca "$CCA" "$NEW/credit-card-authorizer" DECLINE_RATE=0
for side in base this; do
  if [[ $side == base ]]; then bin=$OLD gw=$GW_BASE cart=$CART_BASE; else bin=$NEW gw=$GW_THIS cart=$CART_THIS; fi
  serve "gateway-$side" "$gw" "$bin/gateway" PRODUCT_TARGETS="http://127.0.0.1:$PRODUCT" \
    CART_TARGETS="http://127.0.0.1:$PRODUCT"
  serve "cart-$side" "$cart" "$bin/cart-service" ORDER_QUEUE="ab_${side}_orders" \
    PRODUCT_URL="http://127.0.0.1:$PRODUCT" CCA_URL="http://127.0.0.1:$CCA"
done

wrk_rps() {
  wrk -t2 -c64 -d2s -s "$WORK/ids.lua" "$1" >/dev/null 2>&1 || true
  wrk -t2 -c64 -d8s -s "$WORK/ids.lua" "$1" 2>&1 | awk '/^Requests\/sec:/ { print $2 }'
}
checkouts() {
  "$NEW/examples/publish_ceiling" --purge "$2" >/dev/null 2>&1
  "$NEW/loadtest" checkout --base-url "http://127.0.0.1:$1" --requests 20000 --concurrency 64 \
    --duration 30s --products 1000 --json --quiet 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(r["throughput_per_s"]))'
}

echo "== gateway: product GET through $BASE's gateway and this tree's" >&2
# Odd rounds run BASE first, even rounds this tree first, so neither side always goes second.
for r in $(seq 1 "$ROUNDS"); do
  if ((r % 2)); then
    a=$(wrk_rps "http://127.0.0.1:$GW_BASE")
    b=$(wrk_rps "http://127.0.0.1:$GW_THIS")
  else
    b=$(wrk_rps "http://127.0.0.1:$GW_THIS")
    a=$(wrk_rps "http://127.0.0.1:$GW_BASE")
  fi
  echo "gateway round $r: base $a req/s, this $b req/s, ratio $(ratio "$b" "$a")"
done
echo "== checkout: $BASE's cart and this tree's" >&2
for r in $(seq 1 "$ROUNDS"); do
  if ((r % 2)); then
    a=$(checkouts "$CART_BASE" ab_base_orders)
    b=$(checkouts "$CART_THIS" ab_this_orders)
  else
    b=$(checkouts "$CART_THIS" ab_this_orders)
    a=$(checkouts "$CART_BASE" ab_base_orders)
  fi
  echo "checkout round $r: base $a /s, this $b /s, ratio $(ratio "$b" "$a")"
done
