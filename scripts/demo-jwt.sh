#!/usr/bin/env bash
# Mints a demo JWT (RS256) signed with the stack's demo key (scripts/demo-keys.sh), for
# `Authorization: Bearer <token>`.
#
#   scripts/demo-jwt.sh 7            a token for customer 7, valid one hour
#   scripts/demo-jwt.sh admin        an administrator's token
#   TTL=60 scripts/demo-jwt.sh 7     valid 60 s (negative: already expired, for tests)
#   AUD=other scripts/demo-jwt.sh 7  another audience (rejected by the services)
#
#   curl -H "Authorization: Bearer $(scripts/demo-jwt.sh 7)" localhost:8080/customers/7/orders
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SECRETS_DIR:-$ROOT/.secrets}"
who="${1:?usage: demo-jwt.sh <customer id>|admin}"
[[ -s $DIR/jwt-signing.pem ]] || "$ROOT/scripts/demo-keys.sh" "$DIR" >&2
# shellcheck disable=SC1091
source "$DIR/auth.env"
ttl="${TTL:-3600}"
now=$(date +%s)

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

if [[ $who == admin ]]; then
  claims=$(printf '"sub":"demo-admin","role":"admin"')
elif [[ $who =~ ^[1-9][0-9]*$ ]]; then
  claims=$(printf '"sub":"customer-%s","customer_id":%s' "$who" "$who")
else
  echo "demo-jwt: expected a customer id (a positive integer) or admin, got $who" >&2
  exit 2
fi
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"%s"}' "$(cat "$DIR/jwt-kid")" | b64url)
payload=$(printf '{"iss":"%s","aud":"%s",%s,"iat":%d,"exp":%d}' \
  "${ISS:-$JWT_ISSUER}" "${AUD:-$JWT_AUDIENCE}" "$claims" "$now" "$((now + ttl))" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$DIR/jwt-signing.pem" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
