# shellcheck shell=bash
# Makes sure a RabbitMQ answers at AMQP_URL: uses a running one, else starts an installed
# rabbitmq-server, else says exactly how to get one. Sourced by the stack and test scripts.

amqp_host_port() {
  local url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
  local rest="${url#*://}"
  rest="${rest##*@}"
  rest="${rest%%/*}"
  local host="${rest%%:*}"
  local port="${rest##*:}"
  [ "$port" = "$rest" ] && port=5672
  [[ "$url" == amqps://* && "$port" = "$rest" ]] && port=5671
  echo "$host $port"
}

rabbitmq_reachable() {
  local host port
  read -r host port < <(amqp_host_port)
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

ensure_rabbitmq() {
  if rabbitmq_reachable; then
    return 0
  fi
  local host port
  read -r host port < <(amqp_host_port)
  if command -v rabbitmq-server >/dev/null 2>&1 && [[ "$host" == 127.* || "$host" == localhost ]]; then
    echo "RabbitMQ is not answering on $host:$port; starting the installed rabbitmq-server ..."
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      if rabbitmq_reachable; then
        echo "RabbitMQ is up."
        return 0
      fi
      sleep 1
    done
    echo "error: rabbitmq-server was started but $host:$port did not answer within 60 s" >&2
    return 1
  fi
  cat >&2 <<MSG
error: no RabbitMQ answers at $host:$port (AMQP_URL=${AMQP_URL:-unset}).
Get one of:
  - Debian/Ubuntu:  sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached
  - Docker:         docker run -d --name rabbitmq -p 5672:5672 -p 15672:15672 rabbitmq:3-management
or point AMQP_URL at a broker you have.
MSG
  return 1
}
