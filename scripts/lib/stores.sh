# shellcheck shell=bash
# PostgreSQL and Redis for the stack and the tests. Sourced by scripts/stack.sh and scripts/test.sh.
#
#   ensure_postgres URL          something answers at URL's host:port; a local cluster that is
#                                installed but stopped is started first (pg_ctlcluster)
#   ensure_redis URL             the same for Redis on 127.0.0.1:6379 (systemd's redis-server, else
#                                a daemonized one)
#   postgres_login URL           psql can log in there without a password prompt
#   postgres_create_database URL creates the database URL names, if missing
#   postgres_drop_schemas URL S… drops those schemas (and everything in them)
#   redis_delete_prefix URL P    deletes every key starting with P
#   store_redact URL             URL with its password masked, for messages
#
# Messages go to stderr; the functions return non-zero instead of exiting, so the caller decides
# whether a missing store is fatal (the tests) or means "keep state in memory" (the stack).

store_say() { printf '%s\n' "$*" >&2; }

# "host port" of a postgres:// or redis:// URL; localhost becomes 127.0.0.1.
store_host_port() {
  local url=$1 default_port=$2 rest host port
  rest=${url#*://}
  rest=${rest%%/*}
  rest=${rest%%\?*}
  rest=${rest##*@}
  if [[ $rest == \[* ]]; then # [v6]:port
    host=${rest%%]*}
    host=${host#[}
    rest=${rest#*]}
    port=${rest#:}
  else
    host=${rest%%:*}
    port=""
    [[ $rest == *:* ]] && port=${rest##*:}
  fi
  [[ -z $host || $host == localhost ]] && host=127.0.0.1
  echo "$host ${port:-$default_port}"
}

store_redact() {
  local url=$1 scheme rest
  scheme=${url%%://*}
  rest=${url#*://}
  local authority=${rest%%/*}
  if [[ $authority == *@* && ${authority%@*} == *:* ]]; then
    local userinfo=${authority%@*}
    echo "$scheme://${userinfo%%:*}:***@${rest#"$userinfo"@}"
  else
    echo "$url"
  fi
}

store_port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

store_is_local() {
  [[ $1 == 127.* || $1 == ::1 ]]
}

# Runs a command as root: directly, or through passwordless sudo; fails (without prompting) else.
store_as_root() {
  if [[ $(id -u) == 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

store_have_systemd() {
  [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1
}

# ------------------------------------------------------------------ PostgreSQL

# "version cluster" of the installed Debian cluster that listens on port $1, if any.
postgres_cluster_on_port() {
  command -v pg_lsclusters >/dev/null 2>&1 || return 1
  pg_lsclusters -h 2>/dev/null | awk -v port="$1" '$3 == port { print $1, $2; found = 1; exit } END { exit !found }'
}

postgres_help() {
  store_say "Get one in either of these ways:
  - Debian/Ubuntu:  sudo apt-get install -y postgresql   (then: sudo pg_ctlcluster <version> main start)
  - Docker:         docker run -d --name postgres -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16
or point the URL at a server you have."
}

# Waits up to $3 seconds until PostgreSQL at $1:$2 accepts connections (not only the port: a
# starting server answers "the database system is starting up").
postgres_wait() {
  local host=$1 port=$2 limit=$3 waited=0
  while ((waited < limit)); do
    if command -v pg_isready >/dev/null 2>&1; then
      pg_isready -q -h "$host" -p "$port" -t 1 && return 0
    elif store_port_open "$host" "$port"; then
      return 0
    fi
    sleep 1
    waited=$((waited + 1))
  done
  return 1
}

ensure_postgres() {
  local url=$1 host port
  read -r host port < <(store_host_port "$url" 5432)
  if store_port_open "$host" "$port"; then
    postgres_wait "$host" "$port" 30 && return 0
    store_say "PostgreSQL at $host:$port opened its port but does not accept connections within 30 s"
    return 1
  fi
  local cluster
  if ! store_is_local "$host" || ! cluster=$(postgres_cluster_on_port "$port"); then
    store_say "no PostgreSQL answers at $host:$port ($(store_redact "$url")), and no local cluster is installed for that port."
    postgres_help
    return 1
  fi
  local version name
  read -r version name <<<"$cluster"
  # Plain pg_ctlcluster hands over to systemctl where systemd runs (so the unit supervises the
  # server) and starts the server itself where it does not (containers, CI machines).
  store_say "PostgreSQL $version/$name is installed but not running; starting it: pg_ctlcluster $version $name start"
  if ! store_as_root pg_ctlcluster "$version" "$name" start >&2; then
    store_say "could not start it (it needs root: sudo pg_ctlcluster $version $name start)"
    return 1
  fi
  if ! postgres_wait "$host" "$port" 60; then
    store_say "PostgreSQL $version/$name was started but $host:$port did not accept connections within 60 s (log: /var/log/postgresql/postgresql-$version-$name.log)"
    return 1
  fi
  store_say "PostgreSQL $version/$name is up on $host:$port"
}

# The URL with its path (the database) replaced by $2.
postgres_url_with_database() {
  local url=$1 db=$2 scheme rest query="" authority
  scheme=${url%%://*}
  rest=${url#*://}
  if [[ $rest == *\?* ]]; then
    query="?${rest#*\?}"
    rest=${rest%%\?*}
  fi
  authority=${rest%%/*}
  echo "$scheme://$authority/$db$query"
}

# The database a URL names (empty when it names none).
postgres_url_database() {
  local rest=${1#*://}
  rest=${rest%%\?*}
  [[ $rest == */* ]] && echo "${rest#*/}"
  return 0
}

# psql without a password prompt, a .psqlrc, or a long wait; $1 is the URL, the rest psql's.
store_psql() {
  local url=$1
  shift
  PGCONNECT_TIMEOUT=5 psql -w -X -q -A -t -v ON_ERROR_STOP=1 -d "$url" "$@"
}

# Logs in and runs SELECT 1; on failure prints psql's reason.
postgres_login() {
  local url=$1 out
  if ! command -v psql >/dev/null 2>&1; then
    store_say "psql not found (Debian: postgresql-client)"
    return 1
  fi
  if ! out=$(store_psql "$url" -c 'SELECT 1' 2>&1); then
    store_say "cannot log in to $(store_redact "$url"): $(printf '%s' "$out" | head -n 3)"
    return 1
  fi
}

# Creates the database that $1 names, through the maintenance database `postgres` of the same
# server, unless it exists.
postgres_create_database() {
  local url=$1 db admin exists
  db=$(postgres_url_database "$url")
  if [[ ! $db =~ ^[a-z_][a-z0-9_]{0,62}$ ]]; then
    store_say "will not create database '$db': expected a lower-case identifier"
    return 1
  fi
  admin=$(postgres_url_with_database "$url" postgres)
  # Quiet: without access to `postgres` the caller's own login attempt says why.
  exists=$(store_psql "$admin" -c "SELECT 1 FROM pg_database WHERE datname = '$db'" 2>/dev/null) || return 1
  [[ $exists == 1 ]] && return 0
  store_say "creating database $db"
  # Another `up` may create it at the same moment: check again rather than fail on that.
  store_psql "$admin" -c "CREATE DATABASE \"$db\"" >/dev/null 2>&1 ||
    [[ $(store_psql "$admin" -c "SELECT 1 FROM pg_database WHERE datname = '$db'") == 1 ]]
}

postgres_drop_schemas() {
  local url=$1 schema list=""
  shift
  for schema in "$@"; do
    [[ $schema =~ ^[a-z_][a-z0-9_]*$ ]] || { store_say "refusing schema name '$schema'"; return 1; }
    list+="${list:+, }\"$schema\""
  done
  store_psql "$url" -c "DROP SCHEMA IF EXISTS $list CASCADE" 2>&1 | grep -v '^NOTICE' >&2
  return "${PIPESTATUS[0]}"
}

# ------------------------------------------------------------------ Redis

redis_help() {
  store_say "Get one in either of these ways:
  - Debian/Ubuntu:  sudo apt-get install -y redis-server
  - Docker:         docker run -d --name redis -p 6379:6379 redis:7
or point the URL at a server you have."
}

redis_ping() {
  local url=$1 host port
  if command -v redis-cli >/dev/null 2>&1; then
    [[ $(redis-cli --no-auth-warning -u "$url" ping 2>/dev/null) == PONG ]]
  else
    read -r host port < <(store_host_port "$url" 6379)
    store_port_open "$host" "$port"
  fi
}

# Starts the installed redis-server on 127.0.0.1:6379, where the package puts it.
redis_start_local() {
  local port=6379
  # The packaged unit (its own config, persistence, the redis user) where systemd runs it.
  if store_have_systemd && systemctl cat redis-server.service >/dev/null 2>&1; then
    store_say "Redis is installed but not running; starting it: systemctl start redis-server"
    store_as_root systemctl start redis-server >&2 && return 0
    store_say "could not start it (it needs root: sudo systemctl start redis-server)"
    return 1
  fi
  # Elsewhere (containers, CI machines) a daemon like the CI machines' own: loopback only and
  # nothing on disk, so carts survive a service restart but not a restart of this Redis.
  local dir=/var/lib/redis logfile=/var/log/redis/redis-server.log bind=(127.0.0.1)
  [[ -w $dir ]] || dir=${TMPDIR:-/tmp}
  [[ -w ${logfile%/*} ]] || logfile="${TMPDIR:-/tmp}/redis-$port.log"
  # "-::1": IPv6 loopback too where there is one (Redis 7 accepts the optional "-" form).
  [[ $(redis-server --version 2>/dev/null) =~ v=([0-9]+) ]] && ((BASH_REMATCH[1] >= 7)) && bind+=(-::1)
  store_say "Redis is installed but not running; starting redis-server on 127.0.0.1:$port (log: $logfile)"
  redis-server --daemonize yes --bind "${bind[@]}" --port "$port" --save "" --appendonly no \
    --dir "$dir" --logfile "$logfile" >&2
}

ensure_redis() {
  local url=$1 host port
  read -r host port < <(store_host_port "$url" 6379)
  if store_port_open "$host" "$port"; then
    return 0
  fi
  # An installed Redis listens on 6379; for another port there is nothing we know to start.
  if ! store_is_local "$host" || [[ $port != 6379 ]] || ! command -v redis-server >/dev/null 2>&1; then
    store_say "no Redis answers at $host:$port ($(store_redact "$url")), and no redis-server is installed here for that port."
    redis_help
    return 1
  fi
  redis_start_local || return 1
  local waited=0
  until redis_ping "$url"; do
    if ((waited >= 30)); then
      store_say "redis-server was started but $host:$port did not answer PING within 30 s"
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  store_say "Redis is up on $host:$port"
}

# Deletes the keys under a prefix (glob characters in it are escaped).
redis_delete_prefix() {
  local url=$1 prefix=$2 pattern
  [[ -n $prefix ]] || { store_say "refusing to delete every key: no prefix"; return 1; }
  command -v redis-cli >/dev/null 2>&1 || { store_say "redis-cli not found (Debian: redis-tools)"; return 1; }
  # shellcheck disable=SC2001 # a bracket expression, not a parameter expansion
  pattern="$(sed 's/[][*?\\]/\\&/g' <<<"$prefix")*"
  redis-cli --no-auth-warning -u "$url" --scan --pattern "$pattern" |
    xargs -r -d '\n' -n 500 redis-cli --no-auth-warning -u "$url" unlink >/dev/null
}
