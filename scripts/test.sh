#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the integration tests that start the real
# services on ephemeral ports and talk to the real servers: RabbitMQ at AMQP_URL (default
# 127.0.0.1:5672), PostgreSQL at TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres,
# where each test creates a database of its own) and Redis at TEST_REDIS_URL (default
# redis://127.0.0.1:6379/0, each test under a key prefix of its own). A local server that is
# installed but stopped is started first. The amqps tests start a throwaway RabbitMQ node with a
# TLS listener (scripts/rabbitmq-tls.sh, port 5781); it is stopped when the tests end.
#
#   scripts/test.sh            # all crates
#   scripts/test.sh -p cart-service   # extra arguments go to the test runner
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
# shellcheck source=scripts/lib/stores.sh
source scripts/lib/stores.sh
ensure_rabbitmq
ensure_postgres "${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" ||
  { echo "error: the tests need PostgreSQL (TEST_DATABASE_URL)" >&2; exit 1; }
ensure_redis "${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}" ||
  { echo "error: the tests need Redis (TEST_REDIS_URL)" >&2; exit 1; }

trap 'scripts/rabbitmq-tls.sh down || true' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  # nextest runs each test in its own process (a SIGKILL test cannot take its neighbours down)
  # and releases the build lock while tests run.
  cargo nextest run --workspace --all-features --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)"
  cargo test --workspace --all-features --no-fail-fast "$@"
fi
