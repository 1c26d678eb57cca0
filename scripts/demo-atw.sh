#!/usr/bin/env bash
# The load balancer shifting traffic away from the bad product instance, as ALB automatic target
# weights do on AWS. Needs the stack up (scripts/stack.sh up).
#
#   scripts/demo-atw.sh [GATEWAY_URL]        default http://127.0.0.1:8080 (loopback only)
#
# Drives steady GET /products/{id} load through the gateway for DEMO_SECONDS (default 150), samples
# GET /gateway/targets every SAMPLE_SECONDS (default 10), and prints per interval each product
# instance's share of the requests and its weight, and the 5xx rate the clients saw (the 5xx
# the product group answered through the gateway in that interval; the loadtest report at the end
# gives the client-side tally by x-served-by). The first sample comes after 1 s. Ends with
# PASS/FAIL against: the bad instance's share falls to <= 10 % within 2 minutes (and stays there).
#
# Load: target/release/loadtest (open model, DEMO_RATE requests/s, default 300) if it is built,
# else a few curl workers on keep-alive connections. Needs bash, curl and awk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GW="${1:-${GATEWAY_URL:-http://127.0.0.1:8080}}"
GW="${GW%/}"
DEMO_SECONDS="${DEMO_SECONDS:-150}"
SAMPLE_SECONDS="${SAMPLE_SECONDS:-10}"
DEMO_RATE="${DEMO_RATE:-300}"
CURL_WORKERS="${CURL_WORKERS:-4}"
PRODUCTS="${SEED_PRODUCTS:-1000}"
LIMIT_SECONDS=120
LIMIT_SHARE=10
LOADTEST="${LOADTEST:-${CARGO_TARGET_DIR:-$ROOT/target}/release/loadtest}"
WORK=$(mktemp -d)
LOAD_PIDS=()

case "$GW" in
    http://127.0.0.1:* | http://localhost:* | http://\[::1\]:*) ;;
    *) echo "demo-atw.sh drives load only against a loopback gateway; got $GW" >&2; exit 2 ;;
esac
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }
command -v awk >/dev/null || { echo "awk is required" >&2; exit 2; }
# The stack asks for credentials (AUTH_MODE=on): the demo administrator's key, unless given.
if [[ -z ${ADMIN_KEY:-} && -s ${SECRETS_DIR:-$ROOT/.secrets}/admin.key ]]; then
    ADMIN_KEY=$(cat "${SECRETS_DIR:-$ROOT/.secrets}/admin.key")
fi
AUTH=()
if [[ -n ${ADMIN_KEY:-} ]]; then
    AUTH=(-H "X-API-Key: $ADMIN_KEY")
    export LOADTEST_API_KEY=$ADMIN_KEY
fi

# shellcheck disable=SC2329 # called by the EXIT trap below
cleanup() {
    for pid in "${LOAD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The product group's targets as lines "url weight requests errors verdict healthy", from the
# gateway's JSON (field order is fixed by the gateway, so sed is enough; no jq needed).
product_targets() {
    local json
    json=$(curl -s --max-time 3 ${AUTH[@]+"${AUTH[@]}"} "$GW/gateway/targets") || return 1
    json=${json%%\"name\":\"cart\"*}
    printf '%s' "$json" |
        grep -o '"url":"[^"]*","healthy":[a-z]*,"state":"[a-z]*","weight":[-0-9.e]*,"atw_verdict":"[a-z_]*","requests":[0-9]*,"errors":[0-9]*' |
        sed 's/"url":"\([^"]*\)","healthy":\([a-z]*\),"state":"[a-z]*","weight":\([-0-9.e]*\),"atw_verdict":"\([a-z_]*\)","requests":\([0-9]*\),"errors":\([0-9]*\)/\1 \3 \5 \6 \4 \2/'
}

# A readable name for a target URL: the stack's instance names by port.
name_of() {
    case "$1" in
        *:"${PRODUCT1_PORT:-8081}") echo product-1 ;;
        *:"${PRODUCT2_PORT:-8085}") echo product-2 ;;
        *:"${PRODUCT_BAD_PORT:-8086}") echo product-bad ;;
        *) echo "${1#http://}" ;;
    esac
}

targets=$(product_targets) || { echo "the gateway does not answer at $GW/gateway/targets; is the stack up (scripts/stack.sh up)?" >&2; exit 1; }
[[ -n $targets ]] || { echo "no product targets in $GW/gateway/targets" >&2; exit 1; }
n_targets=$(wc -l <<<"$targets")
if ((n_targets < 3)); then
    echo "the product group has $n_targets targets; automatic target weights need at least 3" >&2
    exit 1
fi
BAD_URL=""
while read -r url _; do
    [[ $(name_of "$url") == product-bad ]] && BAD_URL=$url
done <<<"$targets"
[[ -n $BAD_URL ]] || BAD_URL=$(tail -n 1 <<<"$targets" | cut -d' ' -f1)

# Start from equal weights: after earlier traffic the bad target may still be weighted down; with
# no traffic its window empties and its weight climbs back (about 40 s with the defaults).
bad_weight() { product_targets | awk -v u="$BAD_URL" '$1 == u { print $2 }'; }
w=$(bad_weight)
if awk -v w="${w:-1}" 'BEGIN { exit !(w < 1) }'; then
    echo "the bad target is still weighted down from earlier traffic (weight $w); waiting for it to recover (up to 60 s, no load)..."
    for _ in $(seq 1 60); do
        sleep 1
        w=$(bad_weight)
        awk -v w="${w:-1}" 'BEGIN { exit !(w >= 1) }' && break
    done
    echo "bad target weight now ${w:-?}"
fi

echo "ATW demonstration against $GW for ${DEMO_SECONDS}s (sample every ${SAMPLE_SECONDS}s), bad target $(name_of "$BAD_URL") ($BAD_URL)"

# ------------------------------------------------------------------ load
if [[ -x $LOADTEST ]]; then
    echo "load: $LOADTEST product --rate $DEMO_RATE (GET /products/{1..$PRODUCTS})"
    "$LOADTEST" product --base-url "$GW" --duration "${DEMO_SECONDS}s" --rate "$DEMO_RATE" \
        --concurrency 64 --products "$PRODUCTS" --quiet >"$WORK/loadtest.txt" 2>&1 &
    LOAD_PIDS+=($!)
else
    echo "load: $CURL_WORKERS curl workers on keep-alive connections (build target/release/loadtest for an even rate)"
    end=$((SECONDS + DEMO_SECONDS))
    for wkr in $(seq 1 "$CURL_WORKERS"); do
        (
            while ((SECONDS < end)); do
                args=()
                for _ in $(seq 1 100); do args+=(-o /dev/null "$GW/products/$((RANDOM % PRODUCTS + 1))"); done
                curl -s --max-time 10 -w '%{http_code}\n' ${AUTH[@]+"${AUTH[@]}"} "${args[@]}" >>"$WORK/codes.$wkr" 2>/dev/null || true
            done
        ) &
        LOAD_PIDS+=($!)
    done
fi

# ------------------------------------------------------------------ samples
declare -A prev_req prev_err
while read -r url _ req err _; do prev_req[$url]=$req; prev_err[$url]=$err; done < <(product_targets)

names=()
while read -r url _; do names+=("$url"); done <<<"$targets"
header=$(printf '%6s' "t")
for url in "${names[@]}"; do header+=$(printf ' | %-22s' "$(name_of "$url") share/weight"); done
header+=$(printf ' | %9s | %s' "5xx seen" "requests")
echo
echo "$header"
echo "${header//[^|]/-}"

start=$SECONDS
first_share=""
reached_at=""
last_share=""
over_after_reached=0
elapsed=0
while ((elapsed < DEMO_SECONDS)); do
    # A first look after a couple of seconds shows the equal split before the weights move.
    if [[ -z $first_share ]]; then sleep "${FIRST_SAMPLE_SECONDS:-1}"; else sleep "$SAMPLE_SECONDS"; fi
    elapsed=$((SECONDS - start))
    snap=$(product_targets) || { echo "the gateway stopped answering" >&2; break; }
    total=0
    errors=0
    declare -A d_req=() weight=()
    while read -r url w req err _; do
        d_req[$url]=$((req - ${prev_req[$url]:-0}))
        total=$((total + d_req[$url]))
        errors=$((errors + err - ${prev_err[$url]:-0}))
        weight[$url]=$w
        prev_req[$url]=$req
        prev_err[$url]=$err
    done <<<"$snap"
    row=$(printf '%5ss' "$elapsed")
    for url in "${names[@]}"; do
        row+=$(awk -v n="${d_req[$url]:-0}" -v t="$total" -v w="${weight[$url]:-?}" \
            'BEGIN { printf " | %5.1f%%  w=%-12s", (t > 0 ? 100 * n / t : 0), w }')
    done
    row+=$(awk -v e="$errors" -v t="$total" 'BEGIN { printf " | %8.2f%% | %d", (t > 0 ? 100 * e / t : 0), t }')
    echo "$row"
    share=$(awk -v n="${d_req[$BAD_URL]:-0}" -v t="$total" 'BEGIN { printf "%.2f", (t > 0 ? 100 * n / t : 0) }')
    [[ -z $first_share ]] && first_share=$share
    last_share=$share
    if ((total > 0)); then
        if awk -v s="$share" -v l="$LIMIT_SHARE" 'BEGIN { exit !(s <= l) }'; then
            [[ -z $reached_at ]] && reached_at=$elapsed
        elif [[ -n $reached_at ]]; then
            over_after_reached=$((over_after_reached + 1))
        fi
    fi
done

for pid in "${LOAD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
LOAD_PIDS=()

echo
if [[ -f $WORK/loadtest.txt ]]; then
    echo "---- loadtest report (client side) ----"
    cat "$WORK/loadtest.txt"
    echo "----"
elif compgen -G "$WORK/codes.*" >/dev/null; then
    awk '{ n++; if ($1 + 0 >= 500 || $1 == "000") e++ } END { printf "client side (curl): %d requests, %d 5xx/failed (%.2f%%)\n", n, e, (n ? 100 * e / n : 0) }' "$WORK"/codes.*
fi

echo "bad target share: first interval ${first_share:-?}%, last interval ${last_share:-?}%"
if [[ -n $reached_at ]] && ((reached_at <= LIMIT_SECONDS)) && ((over_after_reached == 0)) &&
    awk -v s="${last_share:-100}" -v l="$LIMIT_SHARE" 'BEGIN { exit !(s <= l) }'; then
    echo "PASS: the bad instance's share fell to <= ${LIMIT_SHARE}% by ${reached_at}s (limit ${LIMIT_SECONDS}s) and stayed there"
    exit 0
fi
if [[ -z $reached_at ]]; then
    echo "FAIL: the bad instance's share never fell to <= ${LIMIT_SHARE}%"
elif ((reached_at > LIMIT_SECONDS)); then
    echo "FAIL: the bad instance's share fell to <= ${LIMIT_SHARE}% only at ${reached_at}s (limit ${LIMIT_SECONDS}s)"
else
    echo "FAIL: the bad instance's share went back above ${LIMIT_SHARE}% in $over_after_reached later interval(s)"
fi
exit 1
