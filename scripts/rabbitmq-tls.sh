#!/usr/bin/env bash
# A throwaway RabbitMQ node with a TLS listener, for the amqps tests: a CA made for it, a server
# certificate for localhost and 127.0.0.1 signed by that CA, and a second, unrelated CA (the
# "wrong" one a client must refuse). Loopback only; everything lives under $AMQPS_DIR.
#
#   scripts/rabbitmq-tls.sh up     make the certificates (once) and start the node (unless it
#                                  runs already); prints the tests' settings as KEY=VALUE lines:
#                                  AMQPS_URL, AMQPS_CA_FILE, AMQPS_WRONG_CA_FILE
#   scripts/rabbitmq-tls.sh down   stop the node
#
# Settings: AMQPS_DIR (default /tmp/shop-amqps), AMQPS_PORT (TLS listener, default 5781; the
# Erlang distribution port is 20000 above it). Needs rabbitmq-server (Debian's package) and
# openssl. The tests run `up` themselves; scripts/test.sh runs `down` after them.
set -euo pipefail

DIR=${AMQPS_DIR:-/tmp/shop-amqps}
PORT=${AMQPS_PORT:-5781}
DIST_PORT=$((PORT + 20000))
NODE=shopamqps@localhost

# The caller's RabbitMQ or Erlang settings would leak into the node; it gets only ours.
while read -r var; do
  case $var in RABBITMQ_* | ERL_*) unset "$var" ;; esac
done < <(compgen -e)

say() { printf 'rabbitmq-tls: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# The real server scripts: Debian's /usr/sbin/rabbitmq-* wrappers switch to the rabbitmq user,
# whose HOME (and Erlang cookie) belong to the system broker.
find_rabbitmq() {
  local s real
  for s in /usr/lib/rabbitmq/bin/rabbitmq-server "$(command -v rabbitmq-server 2>/dev/null || true)" \
    /usr/sbin/rabbitmq-server /usr/local/sbin/rabbitmq-server; do
    [[ -n $s && -e $s ]] || continue
    real=$(readlink -f "$s")
    if [[ ${real##*/} == rabbitmq-script-wrapper ]]; then
      [[ -e ${real%/*}/rabbitmq-server ]] || continue
      real=$(readlink -f "${real%/*}/rabbitmq-server")
    fi
    if [[ ${real##*/} == rabbitmq-server && -x ${real%/*}/rabbitmqctl ]]; then
      echo "${real%/*}"
      return 0
    fi
  done
  return 1
}

node_env=(
  "HOME=$DIR/home"
  "RABBITMQ_NODENAME=$NODE"
  "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1"
  "RABBITMQ_DIST_PORT=$DIST_PORT"
  "RABBITMQ_CONF_ENV_FILE=$DIR/rabbitmq-env.conf"
  "RABBITMQ_CONFIG_FILE=$DIR/rabbitmq.conf"
  "RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/advanced.config"
  "RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/enabled_plugins"
  "RABBITMQ_MNESIA_BASE=$DIR/mnesia"
  "RABBITMQ_MNESIA_DIR=$DIR/mnesia/$NODE"
  "RABBITMQ_LOG_BASE=$DIR/log"
  "RABBITMQ_PID_FILE=$DIR/rabbitmq.pid"
  "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=+sbwt none +sbwtdcpu none +sbwtdio none -kernel inet_dist_use_interface {127,0,0,1}"
  "ERL_EPMD_ADDRESS=127.0.0.1"
  "ERL_CRASH_DUMP=$DIR/erl_crash.dump"
)

ctl() { env "${node_env[@]}" timeout 60 "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@"; }

# A CA, a server certificate for localhost/127.0.0.1 signed by it, and an unrelated CA.
make_certificates() {
  [[ -s $DIR/server.pem && -s $DIR/wrong-ca.pem ]] && return 0
  command -v openssl >/dev/null || die "openssl is required"
  say "making a throwaway CA and a server certificate in $DIR"
  local ca
  for ca in ca wrong-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=shop throwaway $ca" \
      -keyout "$DIR/$ca.key" -out "$DIR/$ca.pem" 2>/dev/null
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$DIR/server.key" -out "$DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$DIR/server.ext"
  openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days 30 -extfile "$DIR/server.ext" -out "$DIR/server.pem" 2>/dev/null
  chmod 600 "$DIR"/*.key
}

write_config() {
  cat >"$DIR/rabbitmq.conf" <<CONF
# Written by scripts/rabbitmq-tls.sh: TLS only, on loopback.
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:$PORT
ssl_options.cacertfile = $DIR/ca.pem
ssl_options.certfile = $DIR/server.pem
ssl_options.keyfile = $DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
disk_free_limit.absolute = 50MB
log.console = false
CONF
  printf '[].\n' >"$DIR/advanced.config"
  : >"$DIR/rabbitmq-env.conf"
  printf '[].\n' >"$DIR/enabled_plugins"
}

running() { ctl -q await_startup --timeout 1 >/dev/null 2>&1; }

up() {
  mkdir -p "$DIR/home" "$DIR/log" "$DIR/mnesia"
  # One caller starts the node; others (tests in parallel) wait for it here.
  exec 9>"$DIR/lock"
  flock 9
  make_certificates
  if ! running; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      die "port 127.0.0.1:$PORT is in use by something else (set AMQPS_PORT)"
    fi
    write_config
    say "starting $NODE with a TLS listener on 127.0.0.1:$PORT"
    (
      exec 9>&- </dev/null >>"$DIR/node.out" 2>&1
      cd "$DIR"
      exec env "${node_env[@]}" setsid "$RMQ_BIN/rabbitmq-server"
    ) &
    local deadline=$((SECONDS + 90))
    until running; do
      ((SECONDS < deadline)) || {
        tail -n 30 "$DIR/node.out" >&2 || true
        die "the node did not start within 90 s (log: $DIR/log)"
      }
      sleep 1
    done
  fi
  echo "AMQPS_URL=amqps://guest:guest@localhost:$PORT/%2f"
  echo "AMQPS_CA_FILE=$DIR/ca.pem"
  echo "AMQPS_WRONG_CA_FILE=$DIR/wrong-ca.pem"
}

down() {
  [[ -d $DIR ]] || return 0
  if running; then
    say "stopping $NODE"
    ctl -q stop >/dev/null 2>&1 || true
  fi
}

RMQ_BIN=$(find_rabbitmq) || die "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
case ${1:-} in
  up) up ;;
  down) down ;;
  *)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
