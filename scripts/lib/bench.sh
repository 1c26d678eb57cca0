# shellcheck shell=bash
# Helpers shared by the benchmark scripts (bench*.sh, cpu-per-request.sh). The caller sets BIN
# (the release binaries: spawn_ready, delete_bench_queue), WORK (a scratch directory for logs)
# and PIDS (the processes it started, which stop_pids stops).
#
# The services run as in the stack, with AUTH_MODE=on and the demo credentials (lib/auth.sh):
# wrk and loadtest send the administrator's key, so the measured cost includes checking it.
# BENCH_AUTH=off runs them without authentication instead (to measure what it costs).

# shellcheck source=scripts/lib/auth.sh
source "$(dirname "${BASH_SOURCE[0]}")/auth.sh"
if [[ ${BENCH_AUTH:-on} == off ]]; then
  export AUTH_MODE=off
  unset LOADTEST_API_KEY API_KEYS SERVICE_API_KEY JWT_JWKS
  ADMIN_KEY=""
else
  use_demo_auth "${SECRETS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.secrets}"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stops every process in PIDS (TERM, so services drain and exit cleanly), waits for them and
# empties PIDS.
stop_pids() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# write_ids_lua FILE: a wrk script sending GET /products/{id}, ids 1..1000 round-robin (the
# seeded catalog), so no benchmark hits one cached id; with the administrator's key.
write_ids_lua() {
  if [[ -n $ADMIN_KEY ]]; then printf 'wrk.headers["X-API-Key"] = "%s"\n' "$ADMIN_KEY"; fi >"$1"
  cat >>"$1" <<'LUA'
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/products/" .. ((counter % 1000) + 1))
end
LUA
}

# A free port from a range the stack does not use (808x), picked at random.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 20000))
    port_open "$port" || { echo "$port"; return 0; }
  done
  return 1
}

# port_from_log LOG: waits (at most 10 s) for a "listening on 127.0.0.1:PORT" line in LOG (what
# http-ceiling and the bare proxy print when started on port 0) and prints PORT (empty if none).
port_from_log() {
  local port=""
  for _ in $(seq 1 100); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$1")
    [[ -n $port ]] && break
    sleep 0.1
  done
  echo "$port"
}

# delete_bench_queue QUEUE: deletes a benchmark's queue (and its .dlq/.dlx) with
# $BIN/examples/publish_ceiling; warns, never fails, so a cleanup trap carries on.
delete_bench_queue() {
  timeout 30 "$BIN/examples/publish_ceiling" --delete "$1" >/dev/null 2>&1 ||
    echo "warning: could not delete $1 (rabbitmqctl delete_queue $1)" >&2
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }

# spawn_ready NAME PORT BIN ENV... : starts $BIN/BIN with PORT and ENV, logging to $WORK/NAME.log,
# adds it to PIDS and waits (at most 30 s) for GET /ready 200. Sets SPAWNED_PID and
# SPAWNED_READY_MS (spawn to first 200); on failure prints the log and returns 1.
spawn_ready() {
  local name=$1 port=$2 bin=$3
  shift 3
  local t0 code=""
  t0=$(now_ms)
  env PORT="$port" INSTANCE_ID="bench-$name" RUST_LOG=warn "$@" "$BIN/$bin" >"$WORK/$name.log" 2>&1 &
  SPAWNED_PID=$!
  PIDS+=("$SPAWNED_PID")
  for _ in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ready" || true)
    [[ $code == 200 ]] && break
    sleep 0.05
  done
  if [[ $code != 200 ]]; then
    echo "$name did not become ready on :$port:" >&2
    cat "$WORK/$name.log" >&2
    return 1
  fi
  # shellcheck disable=SC2034 # read by the caller
  SPAWNED_READY_MS=$(($(now_ms) - t0))
}

# The PostgreSQL server benchmarks create their databases on (BENCH_DATABASE_URL, a database to
# connect to for CREATE DATABASE; default the local one).
BENCH_ADMIN_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# bench_database_url NAME: the URL of database NAME on that server.
bench_database_url() { echo "${BENCH_ADMIN_URL%/*}/$1"; }
# create_bench_database NAME / drop_bench_database NAME: a benchmark's own, empty database.
create_bench_database() {
  psql -q -X "$BENCH_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" -c "CREATE DATABASE \"$1\"" >/dev/null
}
drop_bench_database() {
  psql -q -X "$BENCH_ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1 ||
    echo "warning: could not drop database $1" >&2
}

# delete_redis_prefix URL PREFIX: deletes a benchmark's Redis keys; warns, never fails.
delete_redis_prefix() {
  local host port
  host=$(sed -E 's#^rediss?://([^@]*@)?([^:/]+).*#\2#' <<<"$1")
  port=$(sed -nE 's#^rediss?://([^@]*@)?[^:/]+:([0-9]+).*#\2#p' <<<"$1")
  redis-cli -h "$host" -p "${port:-6379}" --scan --pattern "$2*" 2>/dev/null |
    xargs -r -n 500 redis-cli -h "$host" -p "${port:-6379}" DEL >/dev/null 2>&1 ||
    echo "warning: could not delete the Redis keys $2*" >&2
}
