# shellcheck shell=bash
# Credentials for scripts that start the services themselves (the benchmarks, the fault
# campaign): the services run as they do in the stack, with AUTH_MODE=on, and every client sends
# a key. Source it, then `use_demo_auth DIR`.

# use_demo_auth DIR: makes demo credentials in DIR (scripts/demo-keys.sh) and exports what the
# services read (AUTH_MODE, API_KEYS, JWT_*, the carts' SERVICE_API_KEY) and what the clients
# send: LOADTEST_API_KEY (loadtest's --api-key) and ADMIN_KEY, both the administrator's key,
# since the load generator acts for many customers at once.
use_demo_auth() {
    local dir=$1 root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    "$root/scripts/demo-keys.sh" "$dir" >/dev/null
    set -a
    # shellcheck disable=SC1091
    source "$dir/auth.env"
    # shellcheck disable=SC1091
    source "$dir/service.env"
    set +a
    export AUTH_MODE=on JWT_JWKS="$dir/jwks.json"
    ADMIN_KEY=$(cat "$dir/admin.key")
    export ADMIN_KEY LOADTEST_API_KEY=$ADMIN_KEY
}

# admin_curl ARGS…: curl with the administrator's key (for /stats, /metrics, /gateway/targets).
# Without ADMIN_KEY (AUTH_MODE=off), plain curl.
admin_curl() {
    if [[ -n ${ADMIN_KEY:-} ]]; then curl -H "X-API-Key: $ADMIN_KEY" "$@"; else curl "$@"; fi
}
