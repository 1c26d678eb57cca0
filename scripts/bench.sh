#!/usr/bin/env bash
# The benchmark suite in one go; writes BENCHMARKS.md at the repo root.
#
#   1. HTTP: http-ceiling (bare axum) vs product-service GET /products/{id} directly vs through
#      the gateway — wrk, same threads/concurrency/duration for all three, in R alternating
#      rounds (ceiling, direct, gateway; ceiling, direct, gateway; ...) with the median of the
#      rounds' ratios reported, so one noisy moment on a shared host cannot decide a verdict;
#      and `loadtest product` against http-ceiling at the same settings (loadtest vs wrk).
#   2. Broker: checkout through the cart vs raw confirmed publishes, R alternating rounds
#      (scripts/bench-cart.sh).
#   3. Warehouse: drain vs raw consume+ack, 100k messages (scripts/bench-warehouse.sh).
#   4. The warehouse service itself: time to /ready, RSS idle and while draining 50k orders.
#   RSS (VmRSS) of every service idle and under load, and time from process start to /ready 200.
#
# Usage: scripts/bench.sh [-c CONCURRENCY] [-d SECONDS] [-r ROUNDS] [-n CHECKOUTS] [-m WAREHOUSE_MESSAGES] [-o FILE]
# Defaults: -c 64 -d 8 -r 3 -n 20000 -m 100000 -o BENCHMARKS.md. Loopback only; everything
# started is stopped on exit and every queue created is deleted. Takes ~6 minutes after the build.
set -euo pipefail

CONCURRENCY=64
SECS=8
ROUNDS=3
CHECKOUTS=20000
WH_MESSAGES=100000
OUT=BENCHMARKS.md
THREADS=2
COMMAND="scripts/bench.sh${*:+ $*}"

while getopts "c:d:r:n:m:o:h" opt; do
  case "$opt" in
    c) CONCURRENCY=$OPTARG ;;
    d) SECS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    n) CHECKOUTS=$OPTARG ;;
    m) WH_MESSAGES=$OPTARG ;;
    o) OUT=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/lib/rabbitmq.sh
source scripts/lib/rabbitmq.sh
ensure_rabbitmq
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
STARTED_AT=$(date -u '+%Y-%m-%d %H:%M UTC')
T_START=$(date +%s)

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk is missing; installing it with apt-get" >&2
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  if $SUDO apt-get update -qq >/dev/null; then $SUDO apt-get install -y -qq wrk >/dev/null || true; fi
fi

echo "== building release binaries and examples" >&2
cargo build --release -q --bins -p product-service -p credit-card-authorizer -p cart-service \
  -p warehouse -p gateway -p loadtest
cargo build --release -q -p cart-service --example publish_ceiling
cargo build --release -q -p warehouse --example drain_bench
cargo build --release -q -p gateway --example bare_proxy --example tcp_relay

# shellcheck source=scripts/lib/bench.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench.sh"
WORK=$(mktemp -d)
PIDS=()
SAMPLER=""
WH_QUEUE=""
cleanup() {
  if [[ -n $SAMPLER ]]; then kill "$SAMPLER" 2>/dev/null || true; fi
  stop_pids
  if [[ -n $WH_QUEUE ]]; then
    delete_bench_queue "$WH_QUEUE"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Results: one "key value" per line in $WORK/results.
RES="$WORK/results"
: >"$RES"
put() { echo "$1 $2" >>"$RES"; }
get() { awk -v k="$1" '$1 == k { v = $2 } END { print (v == "" ? "" : v) }' "$RES"; }
# The largest value recorded for a key (a service sampled under load in two parts of the suite).
get_max() { awk -v k="$1" '$1 == k && $2 + 0 > m + 0 { m = $2 } END { print m }' "$RES"; }

# start NAME PORT BIN ENV... : starts a service, waits for /ready 200 (max 30 s); records its pid
# and the time from spawn to the first /ready 200.
start() {
  spawn_ready "$@" || return 1
  put "ready_ms.$1" "$SPAWNED_READY_MS"
  put "pid.$1" "$SPAWNED_PID"
}

# RSS sampler over the given service names: writes "name maxkb" lines to $WORK/rss.<tag>.
sample_start() {
  local tag=$1
  shift
  local names=("$@")
  (
    declare -A max
    while :; do
      for n in "${names[@]}"; do
        r=$(rss_kb "$(get "pid.$n")")
        ((r > ${max[$n]:-0})) && max[$n]=$r
      done
      : >"$WORK/rss.$tag.tmp"
      for n in "${names[@]}"; do echo "$n ${max[$n]:-0}" >>"$WORK/rss.$tag.tmp"; done
      mv "$WORK/rss.$tag.tmp" "$WORK/rss.$tag"
      sleep 0.2
    done
  ) &
  SAMPLER=$!
}
sample_stop() {
  local tag=$1
  sleep 0.3
  kill "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
  while read -r n kb; do put "rss_load.$n" "$kb"; done <"$WORK/rss.$tag"
}

write_ids_lua "$WORK/ids.lua"

# wrk_rps NAME URL: 2 s warm-up, then the measured run; prints requests/s (empty on failure).
wrk_rps() {
  local name=$1 url=$2
  timeout 30 wrk -t"$THREADS" -c"$CONCURRENCY" -d2s -s "$WORK/ids.lua" "$url" >/dev/null 2>&1 || true
  timeout $((SECS + 30)) wrk -t"$THREADS" -c"$CONCURRENCY" -d"${SECS}s" --latency -s "$WORK/ids.lua" "$url" \
    >"$WORK/wrk.$name.txt" 2>&1 || true
  awk '/^Requests\/sec:/ { print $2 }' "$WORK/wrk.$name.txt"
  if grep -qE 'Non-2xx|Socket errors' "$WORK/wrk.$name.txt"; then
    grep -E 'Non-2xx|Socket errors' "$WORK/wrk.$name.txt" | sed "s/^/  $name: /" >&2
    put "errors.$name" 1
  fi
}

# ---------------------------------------------------------------------------------------------
echo "== 1/4 HTTP: http-ceiling vs product direct vs through the gateway (wrk -t$THREADS -c$CONCURRENCY -d${SECS}s, $ROUNDS rounds)" >&2
"$BIN/http-ceiling" --port 0 >"$WORK/ceiling.log" 2>&1 &
PIDS+=($!)
CEIL_PORT=$(port_from_log "$WORK/ceiling.log")
PRODUCT_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
start product-service "$PRODUCT_PORT" product-service SEED_PRODUCTS=1000 FAILURE_RATE=0
# The cart group points at http-ceiling (200 to every GET, health checks included) so the
# gateway can report ready; it gets no traffic here.
start gateway "$GATEWAY_PORT" gateway PRODUCT_TARGETS="http://127.0.0.1:$PRODUCT_PORT" \
  CART_TARGETS="http://127.0.0.1:$CEIL_PORT" || true
# The floor under any proxy built on hyper's server and pooled client: forwarding and nothing else.
"$BIN/examples/bare_proxy" "127.0.0.1:$PRODUCT_PORT" >"$WORK/bare_proxy.log" 2>&1 &
PIDS+=($!)
BARE_PORT=$(port_from_log "$WORK/bare_proxy.log")
# The floor under any proxy at all: a layer-4 relay copying bytes, no HTTP parsing.
"$BIN/examples/tcp_relay" "127.0.0.1:$PRODUCT_PORT" >"$WORK/tcp_relay.log" 2>&1 &
PIDS+=($!)
RELAY_PORT=$(port_from_log "$WORK/tcp_relay.log")
for _ in $(seq 1 100); do
  [[ $(admin_curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEWAY_PORT/products/1") == 200 ]] && break
  sleep 0.1
done
sleep 1
put rss_idle.product-service "$(rss_kb "$(get pid.product-service)")"
put rss_idle.gateway "$(rss_kb "$(get pid.gateway)")"

if command -v wrk >/dev/null 2>&1 && [[ -n $CEIL_PORT ]]; then
  sample_start http product-service gateway
  : >"$WORK/http.rounds"
  for round in $(seq 1 "$ROUNDS"); do
    c=$(wrk_rps ceiling "http://127.0.0.1:$CEIL_PORT")
    d=$(wrk_rps direct "http://127.0.0.1:$PRODUCT_PORT")
    # The gateway right after direct: the pair with a target is measured closest together.
    g=$(wrk_rps gateway "http://127.0.0.1:$GATEWAY_PORT")
    r=$(wrk_rps tcp_relay "http://127.0.0.1:$RELAY_PORT")
    b=$(wrk_rps bare_proxy "http://127.0.0.1:$BARE_PORT")
    echo "   round $round: ceiling $c, direct $d, gateway $g, tcp relay $r, bare proxy $b req/s" >&2
    echo "${c:-0} ${d:-0} ${g:-0} ${b:-0} ${r:-0}" >>"$WORK/http.rounds"
  done
  sample_stop http
  # Fields of http.rounds: 1 ceiling, 2 direct, 3 gateway, 4 bare proxy, 5 tcp relay. Each ratio A/B is judged
  # by its median round, whose two figures are reported.
  median_round() { # FIELD_A FIELD_B: prints "ratio a b" of the median round by a/b
    awk -v i="$1" -v j="$2" '{ printf "%.4f %s %s\n", ($j > 0 ? $i / $j : 0), $i, $j }' "$WORK/http.rounds" |
      sort -g | sed -n "$(((ROUNDS + 1) / 2))p"
  }
  round_ratios() { # FIELD_A FIELD_B: every round's a/b, comma-separated, in round order
    awk -v i="$1" -v j="$2" '{ printf "%s%.2f", (NR > 1 ? "," : ""), ($j > 0 ? $i / $j : 0) }' "$WORK/http.rounds"
  }
  read -r _ DIRECT CEILING < <(median_round 2 1)
  read -r _ GATEWAY GW_DIRECT < <(median_round 3 2)
  read -r _ BARE BARE_DIRECT < <(median_round 4 2)
  read -r _ GW_RELAY_G GW_RELAY_R < <(median_round 3 5)
  read -r _ RELAY RELAY_DIRECT < <(median_round 5 2)
  put http_ceiling "$CEILING"
  put http_direct "$DIRECT"
  put http_gateway "$GATEWAY"
  put http_gw_direct "$GW_DIRECT"
  put http_bare "$BARE"
  put http_bare_direct "$BARE_DIRECT"
  put http_gw_vs_relay_g "$GW_RELAY_G"
  put http_gw_vs_relay_r "$GW_RELAY_R"
  put http_relay "$RELAY"
  put http_relay_direct "$RELAY_DIRECT"
  put http_rounds_direct "$(round_ratios 2 1)"
  put http_rounds_gateway "$(round_ratios 3 2)"
  put http_rounds_bare "$(round_ratios 4 2)"
  put http_rounds_gw_relay "$(round_ratios 3 5)"
  put http_rounds_relay "$(round_ratios 5 2)"
  # loadtest vs wrk, same server (http-ceiling) and settings.
  timeout $((SECS + 30)) "$BIN/loadtest" product --base-url "http://127.0.0.1:$CEIL_PORT" \
    --concurrency "$CONCURRENCY" --duration "${SECS}s" --threads "$THREADS" --products 1000 \
    --json --quiet >"$WORK/lt.json" 2>"$WORK/lt.err" || cat "$WORK/lt.err" >&2
  put loadtest_ceiling "$(jq -r '.throughput_per_s // empty' "$WORK/lt.json" 2>/dev/null || true)"
else
  echo "wrk or http-ceiling unavailable: HTTP figures will be n/a" >&2
fi
stop_pids
echo "   ceiling $(get http_ceiling), direct $(get http_direct), gateway $(get http_gateway), loadtest $(get loadtest_ceiling) req/s" >&2

# ---------------------------------------------------------------------------------------------
echo "== 2/4 cart: checkout vs the broker's publish+confirm ceiling (scripts/bench-cart.sh -n $CHECKOUTS -c $CONCURRENCY -r $ROUNDS)" >&2
if BENCH_NO_BUILD=1 timeout 900 scripts/bench-cart.sh -n "$CHECKOUTS" -c "$CONCURRENCY" -r "$ROUNDS" >"$WORK/cart.out" 2>&1; then
  put cart_checkout "$(sed -n 's/^BENCH cart_checkout_per_s=//p' "$WORK/cart.out")"
  put cart_ceiling "$(sed -n 's/^BENCH cart_ceiling_msg_per_s=//p' "$WORK/cart.out")"
  put cart_ratio "$(sed -n 's/^BENCH cart_ratio=//p' "$WORK/cart.out")"
  put cart_rounds "$(sed -n 's/^BENCH cart_ratios=//p' "$WORK/cart.out")"
  read -r _ _ SH_DEPTH SH_CHECKOUT SH_CEILING _ SH_RATIOS < <(grep '^BENCH cart_shallow ' "$WORK/cart.out" || true)
  put cart_shallow_depth "${SH_DEPTH#in_flight=}"
  put cart_shallow_checkout "${SH_CHECKOUT#checkout=}"
  put cart_shallow_ceiling "${SH_CEILING#ceiling=}"
  put cart_shallow_rounds "${SH_RATIOS#ratios=}"
  put cart_detail "$(sed -n 's/^BENCH cart_checkout_ok=\([0-9]*\) cart_checkout_count=\([0-9]*\) cart_checkout_p99_ms=\([0-9.]*\).*/\1\/\2_2xx,_p99_\3_ms/p' "$WORK/cart.out")"
  while read -r _ _ svc idle load; do
    put "rss_idle.${svc#service=}" "${idle#idle=}"
    put "rss_load.${svc#service=}" "${load#load=}"
  done < <(grep '^BENCH rss_kb ' "$WORK/cart.out")
  while read -r _ _ svc ms; do
    put "ready_ms.${svc#service=}" "${ms#ms=}"
  done < <(grep '^BENCH ready_ms ' "$WORK/cart.out")
else
  echo "bench-cart.sh failed:" >&2
  tail -20 "$WORK/cart.out" >&2
fi
grep -v '^BENCH' "$WORK/cart.out" | sed 's/^/   /' >&2 || true

# ---------------------------------------------------------------------------------------------
echo "== 3/4 warehouse: drain vs raw consume+ack (scripts/bench-warehouse.sh -n $WH_MESSAGES)" >&2
if timeout 900 scripts/bench-warehouse.sh -n "$WH_MESSAGES" >"$WORK/wh.out" 2>"$WORK/wh.err"; then
  put wh_raw "$(sed -n 's/^round 1: .*raw consume+ack *\([0-9.]*\) msg\/s.*/\1/p' "$WORK/wh.out")"
  put wh_drain "$(sed -n 's/^round 1: .*warehouse drain *\([0-9.]*\) msg\/s.*/\1/p' "$WORK/wh.out")"
else
  echo "bench-warehouse.sh failed:" >&2
  tail -20 "$WORK/wh.err" >&2
fi
sed 's/^/   /' "$WORK/wh.out" >&2 || true

# ---------------------------------------------------------------------------------------------
echo "== 4/4 warehouse service: /ready, RSS idle and while draining" >&2
WH_QUEUE="bench_whsvc_$$"
WH_PORT=$(free_port)
WH_LOAD=50000
if start warehouse "$WH_PORT" warehouse ORDER_QUEUE="$WH_QUEUE"; then
  sleep 1
  put rss_idle.warehouse "$(rss_kb "$(get pid.warehouse)")"
  sample_start wh warehouse
  timeout 120 "$BIN/examples/publish_ceiling" --queue "$WH_QUEUE" --keep --messages "$WH_LOAD" \
    >"$WORK/whfill.out" 2>&1 || cat "$WORK/whfill.out" >&2
  for _ in $(seq 1 300); do
    done_n=$(admin_curl -s "http://127.0.0.1:$WH_PORT/stats" | jq -r '.orders_processed // 0' 2>/dev/null || echo 0)
    ((done_n >= WH_LOAD)) && break
    sleep 0.1
  done
  sample_stop wh
  echo "   warehouse processed $done_n of $WH_LOAD orders published to it" >&2
fi
stop_pids

# ---------------------------------------------------------------------------------------------
T_TOTAL=$(($(date +%s) - T_START))

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "" }'; }
num() { [[ -n $1 ]] && awk -v x="$1" 'BEGIN { printf "%.0f", x }' || echo "n/a (${2:-not measured})"; }
verdict() { # ratio target
  [[ -z $1 ]] && { echo "n/a"; return; }
  awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "meets" : "**misses**") }'
}
mb() { [[ -n $1 && $1 != 0 ]] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }' || echo "n/a"; }

R_DIRECT=$(ratio "$(get http_direct)" "$(get http_ceiling)")
R_GW=$(ratio "$(get http_gateway)" "$(get http_gw_direct)")
R_BARE=$(ratio "$(get http_bare)" "$(get http_bare_direct)")
R_RELAY=$(ratio "$(get http_relay)" "$(get http_relay_direct)")
R_GW_RELAY=$(ratio "$(get http_gw_vs_relay_g)" "$(get http_gw_vs_relay_r)")
R_CART=$(ratio "$(get cart_checkout)" "$(get cart_ceiling)")
R_CART_SHALLOW=$(ratio "$(get cart_shallow_checkout)" "$(get cart_shallow_ceiling)")
R_WH=$(ratio "$(get wh_drain)" "$(get wh_raw)")
R_LT=$(ratio "$(get loadtest_ceiling)" "$(get http_ceiling)")

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo)
RABBIT=$(rabbitmqctl version 2>/dev/null | tail -1 || true)
RABBIT=${RABBIT:-unknown}
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
RUSTC=$(rustc --version 2>/dev/null || echo unknown)

{
  cat <<EOF
# Benchmarks

Generated by \`$COMMAND\` on $STARTED_AT (commit $COMMIT; the run took ${T_TOTAL} s after the build).
Do not edit by hand: re-run the script.

**Machine:** $(nproc) cores ($CPU), $MEM RAM, kernel $(uname -r), RabbitMQ $RABBIT on the same
host (loopback), $RUSTC, release profile. Load average at the end of the run: $(cut -d' ' -f1-3 /proc/loadavg).

> The load generators (wrk, loadtest, the benchmark examples), the services and RabbitMQ all share
> the same $(nproc) cores, and the host is shared with other builds and tests. Absolute rates are
> therefore low and noisy; the **ratios** (each figure against its ceiling measured in the same run)
> are what this file is for.

## Throughput against the ceilings

| measurement | figure | ceiling | ratio | target | verdict |
| --- | ---: | ---: | ---: | --- | --- |
| product GET /products/{id}, direct (wrk; rounds $(get http_rounds_direct)) | $(num "$(get http_direct)") req/s | $(num "$(get http_ceiling)") req/s bare axum (http-ceiling, wrk) | ${R_DIRECT:-n/a} | ≥ 0.85 of bare axum | $(verdict "$R_DIRECT" 0.85) |
| product GET through the gateway (wrk; rounds $(get http_rounds_gateway)) | $(num "$(get http_gateway)") req/s | $(num "$(get http_gw_direct)") req/s direct | ${R_GW:-n/a} | ≥ 0.5 of direct | $(verdict "$R_GW" 0.5) |
| for reference: a layer-4 TCP relay (examples/tcp_relay.rs; rounds $(get http_rounds_relay)) | $(num "$(get http_relay)") req/s | $(num "$(get http_relay_direct)") req/s direct | ${R_RELAY:-n/a} | none: the floor of the extra hop, for any proxy | — |
| for reference: a bare hyper reverse proxy (examples/bare_proxy.rs; rounds $(get http_rounds_bare)) | $(num "$(get http_bare)") req/s | $(num "$(get http_bare_direct)") req/s direct | ${R_BARE:-n/a} | none: the floor of a proxy on hyper | — |
| gateway against the TCP relay (rounds $(get http_rounds_gw_relay)) | $(num "$(get http_gw_vs_relay_g)") req/s | $(num "$(get http_gw_vs_relay_r)") req/s TCP relay | ${R_GW_RELAY:-n/a} | none: the gateway's cost beyond the hop | — |
| checkout, cart direct (loadtest checkout, $(get cart_detail | tr '_' ' '); rounds $(get cart_rounds)) | $(num "$(get cart_checkout)") checkouts/s | $(num "$(get cart_ceiling)") msg/s raw confirmed publishes (publish_ceiling, 20 channels) | ${R_CART:-n/a} | ≥ 0.5 of raw publishes | $(verdict "$R_CART" 0.5) |
| for reference: checkout against the broker with $(get cart_shallow_depth) publishes in flight (20 channels; rounds $(get cart_shallow_rounds)) | $(num "$(get cart_shallow_checkout)") checkouts/s | $(num "$(get cart_shallow_ceiling)") msg/s | ${R_CART_SHALLOW:-n/a} | none: the broker at the checkout's depth | — |
| warehouse drain, $WH_MESSAGES orders | $(num "$(get wh_drain)") msg/s | $(num "$(get wh_raw)") msg/s raw consume+ack | ${R_WH:-n/a} | ≥ 0.9 of raw | $(verdict "$R_WH" 0.9) |
| loadtest product vs wrk, against http-ceiling | $(num "$(get loadtest_ceiling)") req/s | $(num "$(get http_ceiling)") req/s wrk | ${R_LT:-n/a} | ≥ 0.9 of wrk | $(verdict "$R_LT" 0.9) |

Each ratio is the median of $ROUNDS rounds; a round measures a figure and its ceiling back to back
(HTTP: ceiling, direct, gateway, TCP relay, bare proxy; checkout: ceiling, then checkouts), and the row shows the median
round's two figures, with every round's ratio in the first column.
HTTP: wrk -t$THREADS -c$CONCURRENCY -d${SECS}s (2 s warm-up each), ids 1..1000 round-robin, the same
settings for every server; loadtest product --threads $THREADS -c $CONCURRENCY -d ${SECS}s.
Checkout: $CHECKOUTS one-item carts prepared untimed per round, concurrency $CONCURRENCY, DECLINE_RATE=0,
against the cart directly (product-service and credit-card-authorizer behind it, all on loopback);
the ceiling publishes the same number of real \`OrderMessage\`s (persistent, mandatory, confirms,
window 64 per channel) over 20 channels, like the cart's \`CHANNEL_POOL_SIZE\`. The broker costs more
CPU per message the fewer publishes it has in flight, and a closed-model checkout at concurrency
$CONCURRENCY never has more than $CONCURRENCY; the reference row measures the broker at that depth.
Warehouse: 10 channels × prefetch 10, fresh queue filled with confirms, then drained raw and by
the warehouse's consumer (services/warehouse/examples/drain_bench.rs, round 1).

## Memory and start-up

VmRSS from /proc/PID/status: idle = 1 s after /ready; under load = max sampled every 0.2 s during
that service's benchmarks above (warehouse: while $WH_LOAD orders are published to it and drained).
Ready = from spawning the process to the first \`GET /ready\` 200 (polled every 50 ms).

| service | RSS idle (MB) | RSS under load (MB) | idle < 15 MB | time to /ready (ms) |
| --- | ---: | ---: | --- | ---: |
EOF
  for svc in product-service credit-card-authorizer cart-service warehouse gateway; do
    idle=$(get "rss_idle.$svc")
    ok="n/a"
    [[ -n $idle && $idle != 0 ]] && ok=$(awk -v k="$idle" 'BEGIN { print (k < 15 * 1024 ? "meets" : "**misses**") }')
    ready=$(get "ready_ms.$svc")
    echo "| $svc | $(mb "$idle") | $(mb "$(get_max "rss_load.$svc")") | $ok | ${ready:-n/a} |"
  done
  if [[ -f services/warehouse/BENCH-NOTES.md || -f loadtest/BENCH-NOTES.md ]]; then
    echo
    echo "## Earlier runs (from the BENCH-NOTES.md files)"
    echo
    [[ -f services/warehouse/BENCH-NOTES.md ]] && cat <<'EOF'
- Warehouse (services/warehouse/BENCH-NOTES.md, `scripts/bench-warehouse.sh -n 100000 -r 2`):
  raw 11 285 / 10 677 msg/s, warehouse 11 234 / 10 412 msg/s, mean ratio 0.985.
EOF
    [[ -f loadtest/BENCH-NOTES.md ]] && cat <<'EOF'
- loadtest vs wrk (loadtest/BENCH-NOTES.md, `scripts/bench-http.sh -r 3 -d 6`, -c 100 against
  http-ceiling): median wrk 75 383 req/s, loadtest 70 575 req/s, ratio 0.936 (rounds 0.82–1.02).
EOF
  fi
  cat <<EOF

## Reproduce

\`\`\`
$COMMAND
\`\`\`
The parts alone: \`scripts/bench-http.sh\` (loadtest vs wrk), \`scripts/bench-gateway.sh\`,
\`scripts/bench-cart.sh\`, \`scripts/bench-warehouse.sh\`.
EOF
} >"$OUT"

echo "== wrote $OUT (${T_TOTAL} s)" >&2
sed -n '/^## Throughput/,/^## Reproduce/p' "$OUT"
