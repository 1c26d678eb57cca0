#!/usr/bin/env bash
# Where the CPU goes: CPU microseconds per request (per message) of every process on a path,
# read from /proc/PID/stat (utime+stime) and /proc/stat (softirq, idle) around each run.
# On 2 shared cores a throughput ratio is roughly a ratio of total CPU per operation, so this
# shows what a target such as "gateway >= 0.5 of direct" demands of each process.
#
#   http   : wrk GET /products/{id} direct to product-service, through the gateway, through
#            the bare hyper proxy (services/gateway/examples/bare_proxy.rs) and through a
#            layer-4 byte relay (services/gateway/examples/tcp_relay.rs); R rounds.
#   broker : publish_ceiling (20 channels) with 64, 3 and 1 unconfirmed publishes per channel:
#            the broker's CPU per confirmed message against how many are in flight.
#   checkout: `loadtest checkout -c 64` against cart-service (with product-service and the
#            authorizer, DECLINE_RATE=0, its own queue): CPU per confirmed checkout of RabbitMQ,
#            the cart, the authorizer and the load tester, over SECONDS of steady checkouts
#            (counted by the cart's checkouts_confirmed_total; the untimed setup is left out).
#   checkout-redis: the same with the carts in Redis (REDIS_URL, default the local one, a key
#            prefix of its own, deleted after), adding redis-server's CPU per checkout: what the
#            durable cart store costs each order.
#   drain, drain-postgres: the warehouse binary draining MESSAGES queued orders with its ledger
#            in memory, or in PostgreSQL (a database of its own, dropped after): CPU per order of
#            the warehouse, RabbitMQ and every PostgreSQL process: what the durable ledger costs.
#
# Usage: scripts/cpu-per-request.sh [-d SECONDS] [-r ROUNDS] [-n MESSAGES] [PART]...
# Defaults: -d 5 -r 3 -n 40000, the parts http, broker and checkout. Builds nothing: run scripts/bench.sh (or the
# release build) first. Loopback only; everything started is stopped on exit.
set -euo pipefail

SECS=5
ROUNDS=3
MESSAGES=40000
while getopts "d:r:n:h" opt; do
  case "$opt" in
    d) SECS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    n) MESSAGES=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
PARTS=(http broker checkout)
if (($#)); then PARTS=("$@"); fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
WORK=$(mktemp -d)
PIDS=()
# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
CHECKOUT_QUEUE=""
REDIS_PREFIX=""
BENCH_DB=""
cleanup() {
  stop_pids
  if [[ -n $CHECKOUT_QUEUE ]]; then
    delete_bench_queue "$CHECKOUT_QUEUE"
  fi
  if [[ -n $REDIS_PREFIX ]]; then delete_redis_prefix "$REDIS_URL" "$REDIS_PREFIX"; fi
  if [[ -n $BENCH_DB ]]; then drop_bench_database "$BENCH_DB"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# softirq and idle ticks of the whole machine
sys_ticks() { awk '/^cpu / { print $8, $5 }' /proc/stat; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
echo "machine: $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"

http_part() {
  command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
  local product_port gateway_port bare_port relay_port product gateway bare relay
  product_port=$(free_port)
  gateway_port=$(free_port)
  spawn_ready product "$product_port" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0
  product=$SPAWNED_PID
  spawn_ready gateway "$gateway_port" gateway PRODUCT_TARGETS="http://127.0.0.1:$product_port" \
    CART_TARGETS="http://127.0.0.1:$product_port"
  gateway=$SPAWNED_PID
  "$BIN/examples/bare_proxy" "127.0.0.1:$product_port" >"$WORK/bare.log" 2>&1 &
  bare=$!
  PIDS+=("$bare")
  bare_port=$(port_from_log "$WORK/bare.log")
  "$BIN/examples/tcp_relay" "127.0.0.1:$product_port" >"$WORK/relay.log" 2>&1 &
  relay=$!
  PIDS+=("$relay")
  relay_port=$(port_from_log "$WORK/relay.log")
  write_ids_lua "$WORK/ids.lua"
  sleep 2 # the gateway's first health checks
  # one NAME PORT PROXY_PID: a 2 s warm-up, then a measured wrk run.
  one() {
    local url="http://127.0.0.1:$2" p0 p1 x0=0 x1=0 s0 s1 rps
    wrk -t2 -c64 -d2s -s "$WORK/ids.lua" "$url" >/dev/null 2>&1 || true
    p0=$(ticks "$product"); [[ -n ${3:-} ]] && x0=$(ticks "$3"); s0=$(sys_ticks)
    /usr/bin/time -f "%U %S" -o "$WORK/wrk.time" \
      wrk -t2 -c64 -d"${SECS}s" -s "$WORK/ids.lua" "$url" >"$WORK/wrk.out" 2>&1
    p1=$(ticks "$product"); [[ -n ${3:-} ]] && x1=$(ticks "$3"); s1=$(sys_ticks)
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.out")
    awk -v name="$1" -v rps="$rps" -v secs="$SECS" -v tick="$TICK_US" -v p=$((p1 - p0)) \
      -v x=$((x1 - x0)) -v s0="$s0" -v s1="$s1" -v wrk="$(cat "$WORK/wrk.time")" 'BEGIN {
        n = rps * secs; split(wrk, w, " "); split(s0, a, " "); split(s1, b, " ")
        wk = (w[1] + w[2]) * 1e6 / n; pr = p * tick / n; px = x * tick / n
        sq = (b[1] - a[1]) * tick / n; id = (b[2] - a[2]) * tick / n
        printf "  %-13s %7.0f req/s | CPU us/request: wrk %5.1f, product %5.1f, proxy %5.1f, softirq %4.1f (idle %4.1f) = %5.1f\n",
          name, rps, wk, pr, px, sq, id, wk + pr + px + sq }'
  }
  echo "== http: wrk -t2 -c64 -d${SECS}s, GET /products/{1..1000}, $ROUNDS rounds"
  for _ in $(seq 1 "$ROUNDS"); do
    one direct "$product_port"
    one gateway "$gateway_port" "$gateway"
    one "bare proxy" "$bare_port" "$bare"
    one "tcp relay" "$relay_port" "$relay"
  done
}

# Starts the local RabbitMQ if it is down and prints its process id (beam.smp), whose CPU the
# broker and checkout parts measure; exits if there is no local broker process.
local_broker_pid() {
  # shellcheck source=scripts/lib/rabbitmq.sh
  source scripts/lib/rabbitmq.sh
  ensure_rabbitmq >&2
  local beam
  beam=$(pgrep -f beam.smp | head -1)
  [[ -n $beam ]] || { echo "no local RabbitMQ process (beam.smp) to measure" >&2; exit 1; }
  echo "$beam"
}

broker_part() {
  local beam b0 b1 s0 s1 window
  beam=$(local_broker_pid)
  echo "== broker: publish_ceiling, $MESSAGES persistent order messages over 20 confirm channels"
  for window in 64 3 1; do
    b0=$(ticks "$beam"); s0=$(sys_ticks)
    /usr/bin/time -f "%U %S" -o "$WORK/pc.time" "$BIN/examples/publish_ceiling" \
      --messages "$MESSAGES" --channels 20 --window "$window" >"$WORK/pc.out" 2>&1
    b1=$(ticks "$beam"); s1=$(sys_ticks)
    awk -v w="$window" -v n="$MESSAGES" -v tick="$TICK_US" -v b=$((b1 - b0)) -v s0="$s0" -v s1="$s1" \
      -v rate="$(sed -n 's/^publish_ceiling: .* = \([0-9.]*\) msg\/s$/\1/p' "$WORK/pc.out")" \
      -v pub="$(cat "$WORK/pc.time")" 'BEGIN {
        split(pub, p, " "); split(s0, a, " "); split(s1, c, " ")
        printf "  %4d in flight %6.0f msg/s | CPU us/message: RabbitMQ %5.1f, publisher %5.1f, softirq %4.1f (idle %5.1f)\n",
          w * 20, rate, b * tick / n, (p[1] + p[2]) * 1e6 / n, (c[1] - a[1]) * tick / n, (c[2] - a[2]) * tick / n }'
  done
}

# The cart's count of confirmed checkouts (0 before the first).
confirmed_checkouts() {
  admin_curl -s "http://127.0.0.1:$1/metrics" | awk '$1 == "checkouts_confirmed_total" { print $2; f = 1 } END { if (!f) print 0 }'
}

# checkout_part [redis]: the checkout path; with "redis", the carts live in Redis and the Redis
# server's CPU is counted too.
checkout_part() {
  local store=${1:-memory} beam product_port cca_port cart_port cart cca load n0 n1 b0 b1 c0 c1 a0 a1
  local l0 l1 s0 s1 t0 t1 redis_pid=0 r0=0 r1=0 cart_env=()
  beam=$(local_broker_pid)
  if [[ $store == redis ]]; then
    REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
    REDIS_PREFIX="bench:cpu:$$:"
    redis_pid=$(pgrep -x redis-server | head -1)
    [[ -n $redis_pid ]] || { echo "no local redis-server process to measure" >&2; exit 1; }
    cart_env=(REDIS_URL="$REDIS_URL" REDIS_KEY_PREFIX="$REDIS_PREFIX")
  fi
  product_port=$(free_port)
  cca_port=$(free_port)
  cart_port=$(free_port)
  spawn_ready product "$product_port" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0
  spawn_ready cca "$cca_port" credit-card-authorizer DECLINE_RATE=0
  cca=$SPAWNED_PID
  CHECKOUT_QUEUE="bench_cpu_$$"
  spawn_ready cart "$cart_port" cart-service ORDER_QUEUE="$CHECKOUT_QUEUE" \
    PRODUCT_URL="http://127.0.0.1:$product_port" CCA_URL="http://127.0.0.1:$cca_port" "${cart_env[@]}"
  cart=$SPAWNED_PID
  echo "== checkout (carts: $store): loadtest checkout -c 64 against the cart, ${SECS}s of steady checkouts, $ROUNDS rounds"
  for _ in $(seq 1 "$ROUNDS"); do
    timeout 60 "$BIN/examples/publish_ceiling" --purge "$CHECKOUT_QUEUE" >/dev/null
    # Enough carts for a second of warm-up and SECS measured at up to 10k checkouts/s.
    "$BIN/loadtest" checkout --base-url "http://127.0.0.1:$cart_port" --requests $(((SECS + 3) * 10000)) \
      --concurrency 64 --duration "$((SECS + 60))s" --products 1000 --quiet >"$WORK/loadtest.out" 2>&1 &
    load=$!
    PIDS+=("$load")
    # The setup (untimed carts) is over once checkouts are confirmed; then a second of warm-up.
    n0=$(confirmed_checkouts "$cart_port")
    for _ in $(seq 1 1200); do
      [[ $(confirmed_checkouts "$cart_port") != "$n0" ]] && break
      sleep 0.05
    done
    sleep 1
    n0=$(confirmed_checkouts "$cart_port"); t0=$(now_ms)
    b0=$(ticks "$beam"); c0=$(ticks "$cart"); a0=$(ticks "$cca"); l0=$(ticks "$load"); s0=$(sys_ticks)
    if ((redis_pid)); then r0=$(ticks "$redis_pid"); fi
    sleep "$SECS"
    n1=$(confirmed_checkouts "$cart_port"); t1=$(now_ms)
    b1=$(ticks "$beam"); c1=$(ticks "$cart"); a1=$(ticks "$cca"); l1=$(ticks "$load"); s1=$(sys_ticks)
    if ((redis_pid)); then r1=$(ticks "$redis_pid"); fi
    kill "$load" 2>/dev/null || true
    wait "$load" 2>/dev/null || true
    awk -v n=$((n1 - n0)) -v ms=$((t1 - t0)) -v tick="$TICK_US" -v b=$((b1 - b0)) -v c=$((c1 - c0)) \
      -v a=$((a1 - a0)) -v l=$((l1 - l0)) -v r=$((r1 - r0)) -v s0="$s0" -v s1="$s1" 'BEGIN {
        if (n <= 0) { print "  no checkouts confirmed in the window"; exit 1 }
        split(s0, x, " "); split(s1, y, " ")
        sq = (y[1] - x[1]) * tick / n; id = (y[2] - x[2]) * tick / n
        printf "  %6.0f checkouts/s | CPU us/checkout: RabbitMQ %5.1f, cart %5.1f, Redis %5.1f, authorizer %4.1f, loadtest %4.1f, softirq %4.1f (idle %5.1f) = %5.1f\n",
          n * 1000 / ms, b * tick / n, c * tick / n, r * tick / n, a * tick / n, l * tick / n, sq, id, (b + c + r + a + l) * tick / n + sq }'
  done
  stop_pids
}

# The summed CPU ticks of every PostgreSQL server process (the postmaster and its backends).
postgres_ticks() {
  local total=0 pid
  for pid in $(pgrep -x postgres; pgrep -f '^postgres: ' ); do
    total=$((total + $(ticks "$pid" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# drain_part [postgres]: MESSAGES orders are published to a queue first (untimed), then the
# warehouse binary starts and drains them; CPU per order of the warehouse, RabbitMQ and (with
# "postgres", the ledger in a database of its own) every PostgreSQL process, from the
# warehouse's start until /stats counts them all.
drain_part() {
  local store=${1:-memory} beam port wh p0 p1 b0 b1 w1 s0 s1 t0 t1 done_n queue wh_env=()
  beam=$(local_broker_pid)
  if [[ $store == postgres ]]; then
    pgrep -x postgres >/dev/null || { echo "no local PostgreSQL process to measure" >&2; exit 1; }
    BENCH_DB="bench_drain_$$"
    wh_env=(DATABASE_URL="$(bench_database_url "$BENCH_DB")")
  fi
  echo "== drain (ledger: $store): the warehouse drains $MESSAGES queued orders (10 channels, prefetch 10), $ROUNDS rounds"
  for round in $(seq 1 "$ROUNDS"); do
    queue="bench_cpu_drain_$$_$round"
    CHECKOUT_QUEUE=$queue
    timeout 300 "$BIN/examples/publish_ceiling" --queue "$queue" --keep --messages "$MESSAGES" >"$WORK/fill.out" 2>&1 ||
      { cat "$WORK/fill.out" >&2; exit 1; }
    # A fresh ledger each round (a new process starts in memory anyway).
    if [[ -n $BENCH_DB ]]; then create_bench_database "$BENCH_DB"; fi
    port=$(free_port)
    b0=$(ticks "$beam"); p0=$(postgres_ticks); s0=$(sys_ticks); t0=$(now_ms)
    spawn_ready warehouse "$port" warehouse ORDER_QUEUE="$queue" "${wh_env[@]}" || exit 1
    wh=$SPAWNED_PID
    done_n=0
    for _ in $(seq 1 6000); do
      done_n=$(admin_curl -s "http://127.0.0.1:$port/stats" | jq -r '.orders_processed // 0' 2>/dev/null || echo 0)
      ((done_n >= MESSAGES)) && break
      sleep 0.05
    done
    b1=$(ticks "$beam"); p1=$(postgres_ticks); w1=$(ticks "$wh"); s1=$(sys_ticks); t1=$(now_ms)
    stop_pids
    delete_bench_queue "$queue"
    CHECKOUT_QUEUE=""
    awk -v n="$MESSAGES" -v ms=$((t1 - t0)) -v tick="$TICK_US" -v b=$((b1 - b0)) -v p=$((p1 - p0)) -v w="$w1" \
      -v s0="$s0" -v s1="$s1" 'BEGIN {
        split(s0, x, " "); split(s1, y, " ")
        printf "  %6.0f orders/s (start to last applied) | CPU us/order: warehouse %5.1f, RabbitMQ %5.1f, PostgreSQL %5.1f, softirq %4.1f\n",
          n * 1000 / ms, w * tick / n, b * tick / n, p * tick / n, (y[1] - x[1]) * tick / n }'
  done
}

for part in "${PARTS[@]}"; do
  case "$part" in
    http) http_part ;;
    broker) broker_part ;;
    checkout) checkout_part ;;
    checkout-redis) checkout_part redis ;;
    drain) drain_part ;;
    drain-postgres) drain_part postgres ;;
    *) echo "unknown part: $part (http, broker, checkout, checkout-redis, drain or drain-postgres)" >&2; exit 2 ;;
  esac
done
