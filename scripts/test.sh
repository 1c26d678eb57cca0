#!/usr/bin/env bash
# Runs every test of the workspace: unit tests and the integration tests that start the real
# services on ephemeral ports and talk to the real RabbitMQ at AMQP_URL (default 127.0.0.1:5672).
#
#   scripts/test.sh            # all crates
#   scripts/test.sh -p cart-service   # extra arguments go to the test runner
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq

if cargo nextest --version >/dev/null 2>&1; then
  # nextest runs each test in its own process (a SIGKILL test cannot take its neighbours down)
  # and releases the build lock while tests run.
  exec cargo nextest run --workspace --all-features --no-fail-fast "$@"
else
  echo "cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)"
  exec cargo test --workspace --all-features --no-fail-fast "$@"
fi
