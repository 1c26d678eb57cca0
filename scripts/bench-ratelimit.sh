#!/usr/bin/env bash
# Rate-limit fairness benchmark: do other clients keep their latency while one client hammers
# the service at 20 times its limit? Target: their p99 within 2x of a run without the abuser.
#
# One product-service (in-memory catalog) with RATE_LIMIT_RPS=L and AUTH_MODE=on: each client has
# an API key of its own (a customer's, `loadtest --api-key`), and the buckets are per credential.
# With -a (by address) the service runs with AUTH_MODE=off and TRUSTED_PROXY_HOPS=1, as behind the
# gateway, and clients are told apart by the X-Forwarded-For entry a trusted proxy would have
# appended. Two rounds, each D seconds:
#   1. normal: N well-behaved clients, each at half its limit (open model, fixed rate);
#   2. abused: the same clients, plus one at 20 x L.
# Reports each normal client's p99 in both rounds, the ratio of their worst p99s, and how much
# of the abuser's load was refused (429).
#
# Usage: scripts/bench-ratelimit.sh [-l LIMIT_RPS] [-n NORMAL_CLIENTS] [-d SECONDS] [-a]
# Defaults: -l 100 -n 3 -d 10, per credential. Loopback only; the service is stopped on exit.
set -euo pipefail
LIMIT=100
CLIENTS=3
SECONDS_EACH=10
BY_ADDRESS=""
while getopts "l:n:d:ah" opt; do
  case "$opt" in
    a) BY_ADDRESS=1 ;;
    l) LIMIT=$OPTARG ;;
    n) CLIENTS=$OPTARG ;;
    d) SECONDS_EACH=$OPTARG ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release"
PORT=${BENCH_RATELIMIT_PORT:-9291}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== building release binaries" >&2
cargo build --release -q --bins -p product-service -p loadtest

# The clients' keys: client-<n>, the abuser's client-66; the service knows their hashes.
key_hash() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
if [[ -n $BY_ADDRESS ]]; then
  AUTH_ENV=(AUTH_MODE=off TRUSTED_PROXY_HOPS=1)
else
  keys=()
  for i in $(seq 1 "$CLIENTS") 66; do keys+=("$(key_hash "client-$i"):customer:$i"); done
  AUTH_ENV=(AUTH_MODE=on "API_KEYS=$(IFS=,; echo "${keys[*]}")")
fi
env PORT="$PORT" INSTANCE_ID=product-limited SEED_PRODUCTS=1000 FAILURE_RATE=0 RATE_LIMIT_RPS="$LIMIT" "${AUTH_ENV[@]}" \
  RUST_LOG=warn "$BIN/product-service" >"$WORK/product.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null || { cat "$WORK/product.log" >&2; exit 1; }

# client NAME N RATE CONCURRENCY: one loadtest run as client N (its key, or its address), JSON
# to NAME.
client() {
  local who
  if [[ -n $BY_ADDRESS ]]; then who=(-H "X-Forwarded-For: 203.0.113.$2"); else who=(--api-key "client-$2"); fi
  "$BIN/loadtest" product --base-url "http://127.0.0.1:$PORT" --rate "$3" --concurrency "$4" --products 1000 \
    --duration "${SECONDS_EACH}s" --json "${who[@]}" >"$WORK/$1.json" 2>"$WORK/$1.err"
}

# round TAG [abuser]: the normal clients (and the abuser) at once.
round() {
  local tag=$1 pids=() i
  for i in $(seq 1 "$CLIENTS"); do
    client "$tag-normal$i" "$i" "$(python3 -c "print($LIMIT / 2)")" 8 &
    pids+=($!)
  done
  if [[ ${2:-} == abuser ]]; then
    client "$tag-abuser" 66 "$((LIMIT * 20))" 64 &
    pids+=($!)
  fi
  for pid in "${pids[@]}"; do wait "$pid"; done
}

echo "== round 1: $CLIENTS clients at $((LIMIT / 2))/s each (limit $LIMIT/s)" >&2
round normal
echo "== round 2: the same, plus one client at $((LIMIT * 20))/s" >&2
round abused abuser

python3 - "$WORK" "$CLIENTS" "$LIMIT" <<'EOF'
import json, sys
work, clients, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)["iterations"]
rows, worst = [], {"normal": 0.0, "abused": 0.0}
for i in range(1, clients + 1):
    a, b = load(f"normal-normal{i}"), load(f"abused-normal{i}")
    worst["normal"] = max(worst["normal"], a["latency_ms"]["p99"])
    worst["abused"] = max(worst["abused"], b["latency_ms"]["p99"])
    refused = b["statuses"]["by_code"].get("429", 0)
    ok = b["statuses"]["ok_2xx"]
    rows.append(f"| client {i} | {a['latency_ms']['p99']:.2f} ms | {b['latency_ms']['p99']:.2f} ms | {ok} / {refused} |")
abuser = load("abused-abuser")
statuses = abuser["statuses"]["by_code"]
print("| well-behaved client | p99 alone | p99 beside the abuser | its 2xx / 429s beside it |")
print("| --- | --- | --- | --- |")
print("\n".join(rows))
ratio = worst["abused"] / worst["normal"] if worst["normal"] else float("nan")
print()
print(f"abuser: {abuser['count']} requests at 20x the limit; statuses {json.dumps(statuses)}")
verdict = "meets" if ratio <= 2.0 else "misses"
print(f"worst p99 beside the abuser / alone: {ratio:.2f} ({verdict} the 2x target)")
EOF
