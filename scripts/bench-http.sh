#!/usr/bin/env bash
# HTTP ceiling check: is the load tester the bottleneck?
#
# Builds the release binaries, starts `http-ceiling` (bare axum, fixed product JSON) on loopback,
# then runs `wrk` and `loadtest product` against it at the same concurrency and duration, and
# prints both rates and the ratio loadtest/wrk (target >= 0.9).
#
# Usage: scripts/bench-http.sh [-c CONCURRENCY] [-d SECONDS] [-t THREADS] [-w SERVER_WORKERS] [-r ROUNDS]
# Every run is bounded in time; everything started here is stopped on exit. Loopback only.
set -euo pipefail

CONCURRENCY=100
DURATION=10
THREADS=2          # wrk threads and loadtest threads
SERVER_WORKERS=""  # default: one tokio worker per core
ROUNDS=1           # alternate wrk/loadtest this many times (median is reported)

while getopts "c:d:t:w:r:h" opt; do
  case "$opt" in
    c) CONCURRENCY=$OPTARG ;;
    d) DURATION=$OPTARG ;;
    t) THREADS=$OPTARG ;;
    w) SERVER_WORKERS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    *) sed -n '2,10p' "$0"; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk not found; installing it (apt-get)" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq wrk >/dev/null
fi

echo "building release binaries..." >&2
cargo build --release -q -p loadtest --bins

WORK=$(mktemp -d)
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

SERVER_ARGS=(--port 0)
if [ -n "$SERVER_WORKERS" ]; then SERVER_ARGS+=(--workers "$SERVER_WORKERS"); fi
"$TARGET_DIR/release/http-ceiling" "${SERVER_ARGS[@]}" >"$WORK/server.out" 2>&1 &
SERVER_PID=$!

# shellcheck source=scripts/lib/bench.sh
source scripts/lib/bench.sh
PORT=$(port_from_log "$WORK/server.out")
if [ -z "$PORT" ]; then
  echo "http-ceiling did not start:" >&2
  cat "$WORK/server.out" >&2
  exit 1
fi
URL="http://127.0.0.1:$PORT"
LIMIT=$((DURATION + 15))

run_wrk() {
  timeout "$LIMIT" wrk -t"$THREADS" -c"$CONCURRENCY" -d"${DURATION}s" "$URL/products/1" >"$WORK/wrk.out" 2>&1
  awk '/^Requests\/sec:/ {print $2}' "$WORK/wrk.out"
}

run_loadtest() {
  timeout "$LIMIT" "$TARGET_DIR/release/loadtest" product --base-url "$URL" \
    --concurrency "$CONCURRENCY" --duration "${DURATION}s" --threads "$THREADS" --json --quiet \
    >"$WORK/lt.json" 2>"$WORK/lt.err"
  sed -n 's/^  "throughput_per_s": \([0-9.eE+-]*\),\{0,1\}$/\1/p' "$WORK/lt.json"
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "machine: $(nproc) cores, $(uname -sr); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "server: http-ceiling on $URL (workers: ${SERVER_WORKERS:-one per core}); client and server share the cores"
echo "each run: ${DURATION}s, concurrency $CONCURRENCY, $THREADS client threads, $ROUNDS round(s)"

WRK_RATES=()
LT_RATES=()
for round in $(seq 1 "$ROUNDS"); do
  w=$(run_wrk)
  l=$(run_loadtest)
  [ -n "$w" ] || { echo "wrk produced no rate:" >&2; cat "$WORK/wrk.out" >&2; exit 1; }
  [ -n "$l" ] || { echo "loadtest produced no rate:" >&2; cat "$WORK/lt.err" >&2; exit 1; }
  printf 'round %d: wrk %.0f req/s, loadtest %.0f req/s\n' "$round" "$w" "$l"
  WRK_RATES+=("$w")
  LT_RATES+=("$l")
done

W=$(printf '%s\n' "${WRK_RATES[@]}" | median)
L=$(printf '%s\n' "${LT_RATES[@]}" | median)
RATIO=$(awk -v l="$L" -v w="$W" 'BEGIN { if (w > 0) printf "%.3f", l / w; else print "nan" }')
printf 'wrk      : %.0f req/s\n' "$W"
printf 'loadtest : %.0f req/s\n' "$L"
echo "ratio loadtest/wrk: $RATIO (target >= 0.9)"
if awk -v r="$RATIO" 'BEGIN { exit !(r >= 0.9) }'; then
  echo "OK"
else
  echo "BELOW TARGET"
  exit 3
fi
