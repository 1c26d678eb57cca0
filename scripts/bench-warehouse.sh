#!/usr/bin/env bash
# Warehouse drain benchmark: the warehouse consumer's drain rate against a bare consume+ack
# consumer (same channels and prefetch) on a pre-filled queue. Target: ratio >= 0.9.
#
# Builds the release example and runs services/warehouse/examples/drain_bench.rs, which fills a
# fresh `bench_wh_<uuid>` queue with N orders (publisher confirms), drains it raw, refills it,
# drains it with the warehouse library, prints both rates and the ratio, and deletes its queues.
#
# Usage: scripts/bench-warehouse.sh [-n MESSAGES] [-c CHANNELS] [-p PREFETCH] [-r ROUNDS]
# Defaults: 100000 messages, 10 channels, prefetch 10, 1 round. Broker: AMQP_URL (default local).
set -euo pipefail

MESSAGES=100000
CHANNELS=10
PREFETCH=10
ROUNDS=1

while getopts "n:c:p:r:h" opt; do
  case "$opt" in
    n) MESSAGES=$OPTARG ;;
    c) CHANNELS=$OPTARG ;;
    p) PREFETCH=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq

cargo build --release -p warehouse --example drain_bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RUST_LOG=${RUST_LOG:-warn} "$TARGET_DIR/release/examples/drain_bench" \
  --messages "$MESSAGES" --channels "$CHANNELS" --prefetch "$PREFETCH" --rounds "$ROUNDS"
