#!/usr/bin/env bash
# Demo credentials for a local stack (scripts/stack.sh, docker-compose.yml), made once with
# openssl and kept in .secrets/ (ignored by git); never used anywhere but on this machine.
#
#   scripts/demo-keys.sh [DIR]     make them if DIR (default .secrets) has none; print where
#   scripts/demo-keys.sh --print   also print the keys themselves
#
# DIR then holds:
#   admin.key            an X-API-Key with role admin (also Prometheus's scrape key)
#   service.key          the cart's key (role service) for its calls to product and authorizer
#   customer-7.key       role customer:7; customer-8.key: customer:8 (one may not touch the other's carts)
#   jwt-signing.pem      an RSA key that signs demo JWTs (scripts/demo-jwt.sh)
#   jwks.json            its public half as a JWKS, for the services' JWT_JWKS
#   auth.env             API_KEYS (the keys' SHA-256 only), JWT_ISSUER, JWT_AUDIENCE, for every service
#   service.env          SERVICE_API_KEY, for the carts only
# The services never see a key in clear except the cart's own SERVICE_API_KEY.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
print=0
if [[ ${1:-} == --print ]]; then print=1; shift; fi
DIR="${1:-$ROOT/.secrets}"

# Demo tokens' issuer and audience; the services are given the same.
JWT_ISSUER="${JWT_ISSUER:-shop-demo}"
JWT_AUDIENCE="${JWT_AUDIENCE:-shop}"

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
sha256() { printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1; }
newkey() { printf 'shop_%s_%s' "$1" "$(openssl rand -hex 24)"; }

command -v openssl >/dev/null || { echo "demo-keys: openssl is needed (apt-get install openssl)" >&2; exit 1; }

if [[ ! -s $DIR/auth.env ]]; then
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  for who in admin service customer-7 customer-8; do
    newkey "${who//-/}" >"$DIR/$who.key"
  done
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DIR/jwt-signing.pem" 2>/dev/null
  # The JWK's n: the modulus as unsigned big-endian bytes, base64url; e = 65537 (AQAB).
  modulus=$(openssl rsa -in "$DIR/jwt-signing.pem" -noout -modulus 2>/dev/null | cut -d= -f2)
  n=$(printf '%b' "$(printf '%s' "$modulus" | sed 's/^\(00\)*//; s/../\\x&/g')" | b64url)
  kid="demo-$(printf '%s' "$n" | openssl dgst -sha256 -r | cut -c1-12)"
  printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"%s","n":"%s","e":"AQAB"}]}\n' \
    "$kid" "$n" >"$DIR/jwks.json"
  printf '%s' "$kid" >"$DIR/jwt-kid"
  {
    echo "# Made by scripts/demo-keys.sh: the hashes of the demo keys, and the demo token issuer."
    echo "API_KEYS=$(sha256 "$(cat "$DIR/admin.key")"):admin,$(sha256 "$(cat "$DIR/service.key")"):service,$(sha256 "$(cat "$DIR/customer-7.key")"):customer:7,$(sha256 "$(cat "$DIR/customer-8.key")"):customer:8"
    echo "JWT_ISSUER=$JWT_ISSUER"
    echo "JWT_AUDIENCE=$JWT_AUDIENCE"
  } >"$DIR/auth.env"
  echo "SERVICE_API_KEY=$(cat "$DIR/service.key")" >"$DIR/service.env"
  chmod 600 "$DIR"/*.key "$DIR"/*.pem "$DIR/service.env"
  # Prometheus's container runs as nobody and reads the admin key through a compose secret.
  chmod 644 "$DIR/admin.key" "$DIR/jwks.json" "$DIR/auth.env" "$DIR/jwt-kid"
  chmod 755 "$DIR"
  echo "demo-keys: made new demo credentials in $DIR"
fi

if ((print)); then
  for who in admin service customer-7 customer-8; do
    printf '  %-11s X-API-Key: %s\n' "$who" "$(cat "$DIR/$who.key")"
  done
  echo "  a JWT:      scripts/demo-jwt.sh 7   (customer 7; 'admin' for an administrator)"
fi
