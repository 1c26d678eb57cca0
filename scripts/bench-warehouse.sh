#!/usr/bin/env bash
# Warehouse drain benchmark: the warehouse consumer's drain rate against a bare consume+ack
# consumer (same channels and prefetch) on a pre-filled queue. Target: ratio >= 0.9 with the
# in-memory ledger, >= 0.5 with the ledger on PostgreSQL (-d).
#
# Builds the release example and runs services/warehouse/examples/drain_bench.rs, which fills a
# fresh `bench_wh_<uuid>` queue with N orders (publisher confirms), drains it raw, refills it,
# drains it with the warehouse library, prints both rates and the ratio, and deletes its queues
# (and, with -d, the fresh `bench_wh_*` schema each drain used).
#
# Usage: scripts/bench-warehouse.sh [-n MESSAGES] [-c CHANNELS] [-p PREFETCH] [-r ROUNDS]
#                                   [-d DATABASE_URL] [-w WRITERS] [-b BATCH_MAX]
# Defaults: 100000 messages, 10 channels, prefetch 10, 1 round, ledger in memory, the warehouse's
# default writers and batch cap. Broker: AMQP_URL (default local).
# Example: scripts/bench-warehouse.sh -r 2 -d postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail

MESSAGES=100000
CHANNELS=10
PREFETCH=10
ROUNDS=1
DATABASE=
EXTRA=()

while getopts "n:c:p:r:d:w:b:h" opt; do
  case "$opt" in
    n) MESSAGES=$OPTARG ;;
    c) CHANNELS=$OPTARG ;;
    p) PREFETCH=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    d) DATABASE=$OPTARG ;;
    w) EXTRA+=(--writers "$OPTARG") ;;
    b) EXTRA+=(--batch-max "$OPTARG") ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq
if [[ -n $DATABASE ]]; then
  # shellcheck source=scripts/lib/stores.sh
  source scripts/lib/stores.sh
  ensure_postgres "$DATABASE" || exit 1
  EXTRA+=(--database-url "$DATABASE")
fi

cargo build --release -p warehouse --example drain_bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
RUST_LOG=${RUST_LOG:-warn} "$TARGET_DIR/release/examples/drain_bench" \
  --messages "$MESSAGES" --channels "$CHANNELS" --prefetch "$PREFETCH" --rounds "$ROUNDS" \
  ${EXTRA[@]+"${EXTRA[@]}"}
