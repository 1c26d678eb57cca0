#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, natively (no Docker), for the fault campaign on
# quorum queues (scripts/chaos.sh): nodes that can be killed, restarted and cut off the network.
#
#   scripts/cluster.sh up               start nodes 1..3, join 2 and 3 to 1, wait until all three run
#                                       clustered, print the status and one line
#                                       AMQP_URL=<url1>,<url2>,<url3> (stdout; also written to
#                                       $CLUSTER_DIR/amqp_urls). On a running cluster it only starts
#                                       what is missing (and restores cut links), then prints the same.
#   scripts/cluster.sh down [--purge]   stop every node (rabbitmqctl stop, then SIGKILL leftovers),
#                                       remove the namespaces, veths and bridge; --purge also deletes
#                                       the data directories. Safe when nothing is up.
#   scripts/cluster.sh status           per node: name, pid, address, running/paused/down,
#                                       partitioned or not, the running nodes it sees; membership
#   scripts/cluster.sh kill N           SIGKILL node N's Erlang VM (its beam.smp only)
#   scripts/cluster.sh start N          start node N again (it rejoins from its data dir), wait until
#                                       it runs in the cluster (if N is cut off: until its VM is up)
#   scripts/cluster.sh partition N      cut node N off from the other nodes and from the clients (its
#                                       veth down on the host side); returns at once (--wait: until
#                                       the other nodes see it gone)
#   scripts/cluster.sh heal N           restore N's link, wait until it runs in the cluster again
#                                       (--no-wait: return at once); a node still not back after
#                                       CLUSTER_GRACE s is restarted (see "stuck nodes" in this file)
#   scripts/cluster.sh leader QUEUE     the number (1..3) of the node hosting the leader of quorum
#                                       queue QUEUE in vhost /, asked of any live node
#   scripts/cluster.sh close-connections   close every client connection on every live node
#   scripts/cluster.sh ctl N [TOOL] ARGS   a RabbitMQ CLI (rabbitmqctl by default, or rabbitmq-queues,
#                                       rabbitmq-diagnostics, ...) against node N with the cluster's
#                                       cookie, names and namespace, e.g. `ctl 1 list_connections`
#
# Exit codes: 0 done, 1 failed, 2 usage, 3 skipped (partition/heal without network namespaces).
#
# Network. With namespaces (the default when `ip netns add` works, as root): node i runs in
# namespace shopmq<i> at 10.77.0.<i>, AMQP on 5672, node name rabbit@10.77.0.<i> (long names),
# each namespace with its own epmd; a veth pair per node joins the host bridge shopmq-br
# (10.77.0.254/24), through which the host and the other nodes reach it, so cutting that veth is
# a real partition for peers and clients alike. Without (CLUSTER_NETNS=0, or when namespaces
# cannot be made): nodes shopmq<i>@localhost on 127.0.0.1, AMQP 5701-5703, distribution
# 25701-25703, on the host's epmd; partitions are then skipped (exit 3).
#
# The system broker (rabbit@<host> on 127.0.0.1:5672) is never touched: the nodes use their own
# config, env file, data, logs and Erlang cookie ($CLUSTER_DIR/home/.erlang.cookie; every server
# and CLI call gets HOME=$CLUSTER_DIR/home), and the CLI scripts are called directly rather than
# through Debian's /usr/sbin wrapper, which would switch to the rabbitmq user and its cookie.
#
# Environment (all optional):
#   CLUSTER_DIR           state: data, logs, configs, cookie, urls (default <repo>/.cluster)
#   CLUSTER_NETNS         unset: namespaces when possible; 1: namespaces or fail; 0: loopback only
#   CLUSTER_SUBNET        first three octets of the namespaces' /24 (default 10.77.0)
#   CLUSTER_NET_TICKTIME  Erlang net_ticktime in seconds (default 10, so a cut node is seen
#                         down within 7-13 s rather than about a minute)
#   CLUSTER_WAIT          seconds to wait for a node or the cluster (default 120)
#   CLUSTER_GRACE         seconds `heal`/`start` give a node before restarting it as stuck
#                         (default 30; see "stuck nodes" in this file)
# rabbitmq-server is installed with apt-get when missing: as root, or with sudo when CI=true.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER_DIR=${CLUSTER_DIR:-$ROOT/.cluster}
SUBNET=${CLUSTER_SUBNET:-10.77.0}
TICKTIME=${CLUSTER_NET_TICKTIME:-10}
WAIT=${CLUSTER_WAIT:-120}
GRACE=${CLUSTER_GRACE:-30}
NODES=(1 2 3)
NS_PREFIX=shopmq
BRIDGE=shopmq-br
BRIDGE_IP=$SUBNET.254
MODE="" # netns | local, fixed by `up` in $CLUSTER_DIR/mode
RMQ_BIN=""
NODE_ENV=()
NODE_CMD=() # set by node_cmd
LOCKED=0
declare -A LAUNCHER=() # node number -> pid of the process started for it (the server script)

# Whatever RabbitMQ or Erlang settings the caller's environment carries (a CI job's
# RABBITMQ_NODENAME, ERL_FLAGS, ...) would leak into the nodes; they get only ours.
while read -r var; do
  case $var in RABBITMQ_* | ERL_*) unset "$var" ;; esac
done < <(compgen -e)

say() { printf 'cluster: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

# --- names and addresses ---------------------------------------------------------------------

node_dir() { echo "$CLUSTER_DIR/node$1"; }
ns_name() { echo "$NS_PREFIX$1"; }
veth_host() { echo "$NS_PREFIX$1-h"; }
node_name() { if [[ $MODE == netns ]]; then echo "rabbit@$SUBNET.$1"; else echo "shopmq$1@localhost"; fi; }
node_ip() { if [[ $MODE == netns ]]; then echo "$SUBNET.$1"; else echo 127.0.0.1; fi; }
amqp_port() { if [[ $MODE == netns ]]; then echo 5672; else echo $((5700 + $1)); fi; }
dist_port() { if [[ $MODE == netns ]]; then echo 25672; else echo $((25700 + $1)); fi; }
amqp_url() { echo "amqp://guest:guest@$(node_ip "$1"):$(amqp_port "$1")/%2f"; }

# The node number of a node name (rabbit@10.77.0.2 -> 2), or nothing.
node_number() {
  local i
  for i in "${NODES[@]}"; do
    if [[ $1 == "$(node_name "$i")" ]]; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

check_n() {
  [[ ${1:-} =~ ^[1-3]$ ]] || {
    say "node number must be 1, 2 or 3 (got '${1:-}')"
    exit 2
  }
}

load_mode() {
  MODE=""
  if [[ -s $CLUSTER_DIR/mode ]]; then MODE=$(<"$CLUSTER_DIR/mode"); fi
  if [[ -z $MODE ]]; then
    if [[ ${CLUSTER_NETNS:-} == 0 ]]; then MODE=local; else MODE=netns; fi
  fi
}

# --- RabbitMQ installation -------------------------------------------------------------------

# The directory of the real CLI scripts (rabbitmq-server, rabbitmqctl, ...). Debian's
# /usr/sbin/rabbitmq* is a wrapper that su's to the rabbitmq user, whose HOME (and so cookie)
# is the system broker's: skip it.
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
      RMQ_BIN=${real%/*}
      return 0
    fi
  done
  return 1
}

ensure_rabbitmq() {
  find_rabbitmq && return 0
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    [[ ${CI:-} == true ]] || die "rabbitmq-server is not installed; run: sudo apt-get install -y rabbitmq-server"
    sudo=(sudo -n)
  fi
  command -v apt-get >/dev/null || die "rabbitmq-server is not installed and there is no apt-get to install it"
  say "rabbitmq-server is missing; installing it with apt-get (the package's own broker, if it starts one, is left alone)"
  "${sudo[@]}" apt-get update -qq >/dev/null
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  find_rabbitmq || die "rabbitmq-server was installed but its scripts were not found"
}

# --- per-node environment ----------------------------------------------------------------------

# Fills NODE_ENV with node $1's settings: used for the server and for every CLI call, so they
# agree on name, cookie (HOME), net_ticktime and files.
node_env() {
  local i=$1 d longname=false extra
  d=$(node_dir "$i")
  # A cut peer is noticed within 0.75-1.25 x net_ticktime; the CLI gets the same value, or the
  # node would drop a CLI connection that stays quiet longer than that.
  extra="-kernel net_ticktime $TICKTIME"
  # Three nodes share this machine's cores with the services and the load: schedulers that
  # spin while idle (Erlang's default) would burn CPU the others need.
  extra+=" +sbwt none +sbwtdcpu none +sbwtdio none"
  if [[ $MODE == netns ]]; then
    longname=true
  else
    # Loopback only: the distribution port would otherwise listen on every interface.
    extra+=" -kernel inet_dist_use_interface {127,0,0,1}"
  fi
  NODE_ENV=(
    "HOME=$CLUSTER_DIR/home"
    "RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf"
    "RABBITMQ_NODENAME=$(node_name "$i")"
    "RABBITMQ_USE_LONGNAME=$longname"
    "RABBITMQ_NODE_IP_ADDRESS=$(node_ip "$i")"
    "RABBITMQ_NODE_PORT=$(amqp_port "$i")"
    "RABBITMQ_DIST_PORT=$(dist_port "$i")"
    "RABBITMQ_MNESIA_BASE=$d/mnesia"
    "RABBITMQ_MNESIA_DIR=$d/mnesia/$(node_name "$i")"
    "RABBITMQ_LOG_BASE=$d/log"
    "RABBITMQ_PID_FILE=$d/rabbitmq.pid"
    "RABBITMQ_CONFIG_FILE=$d/rabbitmq.conf"
    "RABBITMQ_ADVANCED_CONFIG_FILE=$d/advanced.config"
    "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins"
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=$extra"
    "RABBITMQ_CTL_ERL_ARGS=-kernel net_ticktime $TICKTIME"
    "ERL_CRASH_DUMP=$d/erl_crash.dump"
  )
  # Without namespaces the nodes share the host's epmd; one they start listens on loopback only.
  if [[ $MODE == local ]]; then NODE_ENV+=("ERL_EPMD_ADDRESS=127.0.0.1"); fi
}

# node_cmd I: fills NODE_CMD with the prefix that runs a command inside node I's namespace (if
# any) with node I's environment.
node_cmd() {
  node_env "$1"
  NODE_CMD=()
  if [[ $MODE == netns ]]; then NODE_CMD=(ip netns exec "$(ns_name "$1")"); fi
  NODE_CMD+=(env "${NODE_ENV[@]}")
}

# in_node I CMD...: CMD as node I (namespace, environment).
in_node() {
  node_cmd "$1"
  shift
  "${NODE_CMD[@]}" "$@"
}

# ctl I TOOL ARGS...: a RabbitMQ CLI tool (rabbitmqctl, rabbitmq-queues, ...) against node I, run
# in node I's own namespace so that a cut-off node still answers. Bounded, so nothing hangs.
ctl() {
  local i=$1 tool=$2
  shift 2
  in_node "$i" timeout "${CTL_TIMEOUT:-60}" "$RMQ_BIN/$tool" -n "$(node_name "$i")" "$@"
}

# ctl_or_fail I ARGS...: rabbitmqctl ARGS on node I; its chatter (join_cluster logs harmless
# errors about connection tracking tables) is shown only when it fails.
ctl_or_fail() {
  local i=$1 out
  shift
  out=$(ctl "$i" rabbitmqctl -q "$@" 2>&1) || {
    printf '%s\n' "$out" >&2
    node_fail "$i" "rabbitmqctl $* failed"
  }
}

write_node_files() {
  local i=$1 d
  d=$(node_dir "$i")
  mkdir -p "$d/log" "$d/mnesia"
  cat >"$d/rabbitmq.conf" <<CONF
# Written by scripts/cluster.sh for node $i ($(node_name "$i")); rewritten on every start.
# Clients connect over the namespace's address, so guest must be allowed off loopback.
loopback_users = none
listeners.tcp.default = $(node_ip "$i"):$(amqp_port "$i")
# Quorum queues need a majority; the minority side pauses instead of diverging.
cluster_partition_handling = pause_minority
disk_free_limit.absolute = 50MB
log.file.level = info
log.console = false
CONF
  # Ours, so an /etc/rabbitmq/advanced.config of the system broker is not read (net_ticktime
  # comes with the Erlang arguments, for the CLI too).
  printf '%%%% Written by scripts/cluster.sh: nothing advanced.\n[].\n' >"$d/advanced.config"
  # No plugins: no management listener to clash with the system broker's.
  echo '[].' >"$d/enabled_plugins"
  # Ours instead of /etc/rabbitmq/rabbitmq-env.conf, whose NODENAME, ERL_EPMD_ADDRESS and
  # inet_dist_use_interface belong to the system broker.
  echo '# scripts/cluster.sh: deliberately empty (the settings come from the environment)' >"$d/rabbitmq-env.conf"
}

ensure_cookie() {
  local home=$CLUSTER_DIR/home cookie
  cookie=$home/.erlang.cookie
  mkdir -p "$home"
  chmod 700 "$home"
  if [[ ! -s $cookie ]]; then
    (
      umask 077
      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cookie"
    )
  fi
  chmod 400 "$cookie"
}

# --- processes -------------------------------------------------------------------------------

# True when pid $1 is a beam.smp started for node directory $2: the node's environment carries
# our RABBITMQ_PID_FILE, which no other broker (the system's included) has.
is_our_beam() {
  local pid=$1 comm
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ $comm == beam.smp ]] || return 1
  tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "RABBITMQ_PID_FILE=$2/rabbitmq.pid"
}

# The pid of node $1's Erlang VM, from its pid file (checked, so a stale file naming a reused pid
# is not trusted), else found in /proc by the same mark; fails when it is not running.
node_pid() {
  local d pid f
  d=$(node_dir "$1")
  if [[ -s $d/rabbitmq.pid ]]; then
    pid=$(tr -dc '0-9' <"$d/rabbitmq.pid")
    if [[ -n $pid ]] && is_our_beam "$pid" "$d"; then
      echo "$pid"
      return 0
    fi
  fi
  while read -r f; do
    pid=${f#/proc/}
    pid=${pid%/comm}
    if is_our_beam "$pid" "$d"; then
      echo "$pid"
      return 0
    fi
  done < <(grep -lx 'beam.smp' /proc/[0-9]*/comm 2>/dev/null)
  return 1
}

show_log_tail() {
  local i=$1 d f
  d=$(node_dir "$i")
  for f in "$d/node.out" "$d/log/$(node_name "$i").log"; do
    [[ -s $f ]] || continue
    say "---- last lines of $f"
    tail -n 25 "$f" >&2
  done
}

node_fail() {
  say "error: node $1 ($(node_name "$1")): $2"
  show_log_tail "$1"
  exit 1
}

launch_node() {
  local i=$1 d
  d=$(node_dir "$i")
  if [[ $MODE == local ]]; then
    # A clear message instead of a boot failure deep in the log.
    local port
    for port in "$(amqp_port "$i")" "$(dist_port "$i")"; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        say "error: node $i: port 127.0.0.1:$port is already in use"
        exit 1
      fi
    done
  fi
  write_node_files "$i"
  rm -f "$d/rabbitmq.pid"
  printf '\n== %s starting %s\n' "$(date '+%F %T')" "$(node_name "$i")" >>"$d/node.out"
  say "starting node $i ($(node_name "$i"), AMQP $(node_ip "$i"):$(amqp_port "$i"))"
  # The server in the foreground of a background process, so start-up errors land in node.out;
  # setsid so a Ctrl-C in the caller's terminal does not reach it; fd 9 (our lock) closed, or the
  # node would hold the lock for its whole life.
  node_cmd "$i"
  (
    exec 9>&- </dev/null >>"$d/node.out" 2>&1
    cd "$d"
    exec "${NODE_CMD[@]}" setsid "$RMQ_BIN/rabbitmq-server"
  ) &
  LAUNCHER[$i]=$!
}

# state I: running (the rabbit app runs), paused (the VM is up, the app is not: booting, or
# paused by pause_minority), down (no VM).
node_state() {
  node_pid "$1" >/dev/null || {
    echo down
    return 0
  }
  if [[ $(CTL_TIMEOUT=15 ctl "$1" rabbitmqctl -q eval 'rabbit:is_running().' 2>/dev/null) == true ]]; then
    echo running
  else
    echo paused
  fi
}

# True while pid $1 exists and is not a zombie (a launcher that died stays one until reaped).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}

# Waits until node $1's Erlang VM is there, or fails with its log (at once when the server
# script we started for it has already exited).
wait_vm() {
  local i=$1 deadline=$((SECONDS + WAIT))
  until node_pid "$i" >/dev/null; do
    ((SECONDS < deadline)) || node_fail "$i" "no Erlang VM appeared within ${WAIT}s"
    if [[ -n ${LAUNCHER[$i]:-} ]] && ! alive "${LAUNCHER[$i]}"; then
      sleep 0.5
      node_pid "$i" >/dev/null || node_fail "$i" "rabbitmq-server exited during start-up"
    fi
    sleep 0.5
  done
}

# wait_running I [SECONDS [soft]]: waits until node I runs its app; after SECONDS (default
# CLUSTER_WAIT) fails with its log, or with "soft" returns 1.
wait_running() {
  local i=$1 limit=${2:-$WAIT} soft=${3:-} deadline left
  deadline=$((SECONDS + limit))
  wait_vm "$i"
  while :; do
    left=$((deadline - SECONDS))
    if ((left <= 0)); then
      [[ -n $soft ]] && return 1
      node_fail "$i" "not running after ${limit}s"
    fi
    if ctl "$i" rabbitmqctl -q await_startup --timeout "$left" >/dev/null 2>&1; then return 0; fi
    node_pid "$i" >/dev/null || node_fail "$i" "its Erlang VM exited during start-up"
    sleep 1
  done
}

# One line about node $1 as it sees itself: "<running> <members> <running nodes> <partitions>",
# lists comma-separated node numbers ("-" when empty; a paused node has no running nodes and no
# partitions to tell). Fails when the node does not answer.
node_view() {
  local out
  out=$(CTL_TIMEOUT=20 ctl "$1" rabbitmqctl -q eval '
    J = fun(L) -> case L of [] -> "-"; _ -> string:join([atom_to_list(N) || N <- lists:sort(L)], ",") end end,
    L = fun(F) -> case catch F() of X when is_list(X) -> X; _ -> [] end end,
    R = rabbit:is_running(),
    Run = case R of true -> L(fun rabbit_nodes:all_running/0); false -> [] end,
    lists:flatten(io_lib:format("~s ~s ~s ~s", [R, J(L(fun() -> rabbit_mnesia:cluster_nodes(all) end)), J(Run),
                                                 J(L(fun rabbit_node_monitor:partitions/0))])).' 2>/dev/null) || return 1
  out=${out//\"/}
  [[ $out == true\ * || $out == false\ * ]] || return 1
  # node names -> numbers
  local word result=() list nums n
  for word in $out; do
    if [[ $word == true || $word == false || $word == - ]]; then
      result+=("$word")
      continue
    fi
    nums=()
    IFS=, read -ra list <<<"$word"
    for n in "${list[@]}"; do nums+=("$(node_number "$n" || echo "?$n")"); done
    result+=("$(
      IFS=,
      echo "${nums[*]}"
    )")
  done
  echo "${result[*]}"
}

link_cut() { [[ $MODE == netns ]] && ! ip -o link show "$(veth_host "$1")" 2>/dev/null | grep -q '[<,]UP[,>]'; }

# wait_clustered [SECONDS [soft]]: waits until every node with a VM and a link runs and sees all
# of those as running; after SECONDS (default CLUSTER_WAIT) fails with the status, or with
# "soft" returns 1.
wait_clustered() {
  local limit=${1:-$WAIT} soft=${2:-} deadline i want view ok running seen
  deadline=$((SECONDS + limit))
  while :; do
    want=()
    for i in "${NODES[@]}"; do
      if node_pid "$i" >/dev/null && ! link_cut "$i"; then want+=("$i"); fi
    done
    ok=1
    for i in "${want[@]}"; do
      view=$(node_view "$i") || {
        ok=0
        break
      }
      read -r running _ seen _ <<<"$view"
      if [[ $running != true || $seen != "$(
        IFS=,
        echo "${want[*]}"
      )" ]]; then
        ok=0
        break
      fi
    done
    ((ok)) && return 0
    if ((SECONDS >= deadline)); then
      [[ -n $soft ]] && return 1
      say "error: the cluster did not settle within ${limit}s"
      cmd_status >&2 || true
      exit 1
    fi
    sleep 1
  done
}

# --- stuck nodes -----------------------------------------------------------------------------
#
# RabbitMQ 3.10.8 (Debian 12's) on Erlang/OTP >= 25.1 can leave a booting node hanging for good
# in global:sync() after a partition heals or a restart: its "global hang workaround" sends
# messages that OTP 25.1 no longer understands (rabbitmq-server#6034, fixed in 3.10.10). Seen
# here once in about fifteen heals. So that a campaign does not stall on it, `heal` and `start`
# restart a node that has not come back within CLUSTER_GRACE seconds while its peers have a
# majority (or that logged the workaround), say so, and append it to $CLUSTER_DIR/events.

node_log() { echo "$(node_dir "$1")/log/$(node_name "$1").log"; }
log_mark() { if [[ -f $(node_log "$1") ]]; then wc -l <"$(node_log "$1")"; else echo 0; fi; }
# global_hang_since I MARK: node I logged RabbitMQ's global hang workaround after line MARK.
global_hang_since() { tail -n +"$(($2 + 1))" "$(node_log "$1")" 2>/dev/null | grep -qi 'global hang workaround'; }
GLOBAL_HANG_NOTE="stuck in boot on Erlang's global (RabbitMQ 3.10.8 on OTP >= 25.1, rabbitmq-server#6034)"

# True when a node other than $1 runs its app with its link up: with $1 that is a majority.
peers_have_majority() {
  local i
  for i in "${NODES[@]}"; do
    [[ $i == "$1" ]] && continue
    link_cut "$i" && continue
    [[ $(node_state "$i") == running ]] && return 0
  done
  return 1
}

kill_node() {
  local pid
  pid=$(node_pid "$1") || return 1
  kill -KILL "$pid"
  for _ in $(seq 1 100); do
    [[ -e /proc/$pid ]] || break
    sleep 0.1
  done
  rm -f "$(node_dir "$1")/rabbitmq.pid"
  echo "$pid"
}

# restart_stuck I WHY: SIGKILL node I and start it again, waiting until it runs.
restart_stuck() {
  local i=$1
  say "warning: node $i $2; restarting it (SIGKILL + start)"
  printf '%s node %s restarted: %s\n' "$(date '+%F %T')" "$i" "$2" >>"$CLUSTER_DIR/events"
  local had_lock=$LOCKED
  ((had_lock)) || take_lock
  kill_node "$i" >/dev/null || true
  launch_node "$i"
  ((had_lock)) || release_lock
  wait_running "$i"
}

# wait_running_or_unstick I MARK: wait_running, restarting node I once if it hangs on global.
wait_running_or_unstick() {
  local i=$1 mark=$2
  wait_running "$i" "$GRACE" soft && return 0
  if global_hang_since "$i" "$mark"; then
    restart_stuck "$i" "did not start within ${GRACE}s, $GLOBAL_HANG_NOTE"
  else
    wait_running "$i"
  fi
}

# --- network namespaces ----------------------------------------------------------------------

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$1"; }

# probe FROM_NS HOST: true when HOST answers a TCP connection (a refusal counts: nothing listens
# on port 9, but the packets got there and back). FROM_NS "" is the host.
probe() {
  local pre=() err
  [[ -n $1 ]] && pre=(ip netns exec "$1")
  err=$("${pre[@]}" timeout 3 bash -c "exec 3<>/dev/tcp/$2/9" 2>&1) && return 0
  [[ $err == *refused* ]]
}

setup_netns() {
  local i ns veth
  if ip -o -4 addr show 2>/dev/null | awk -v br="$BRIDGE" -v net="$SUBNET." '$2 != br && index($4, net) == 1 { found = 1 } END { exit !found }'; then
    say "error: $SUBNET.0/24 is already used by another interface; set CLUSTER_SUBNET"
    return 1
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge || return 1
  fi
  ip addr replace "$BRIDGE_IP/24" dev "$BRIDGE" || return 1
  ip link set "$BRIDGE" up || return 1
  for i in "${NODES[@]}"; do
    ns=$(ns_name "$i")
    veth=$(veth_host "$i")
    ns_exists "$ns" || ip netns add "$ns" || return 1
    ip -n "$ns" link set lo up || return 1
    if ! ip link show "$veth" >/dev/null 2>&1; then
      ip link add "$veth" type veth peer name "$NS_PREFIX$i-n" || return 1
      ip link set "$NS_PREFIX$i-n" netns "$ns" || return 1
      ip -n "$ns" link set "$NS_PREFIX$i-n" name eth0 || return 1
    fi
    ip -n "$ns" addr replace "$SUBNET.$i/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip link set "$veth" master "$BRIDGE" || return 1
    ip link set "$veth" up || return 1
  done
  # Bridged traffic between namespaces goes through iptables' FORWARD chain when br_netfilter
  # is loaded with bridge-nf-call-iptables=1 (Docker hosts drop it there). Only if the probe
  # shows it blocked is the switch turned off; `down` puts the old value back.
  if ! probe "$(ns_name 1)" "$SUBNET.2" || ! probe "" "$SUBNET.1"; then
    local key=net.bridge.bridge-nf-call-iptables old
    if old=$(sysctl -n "$key" 2>/dev/null) && [[ $old == 1 ]]; then
      say "bridged traffic is filtered; setting $key=0 until \`down\`"
      [[ -e $CLUSTER_DIR/saved-bridge-nf-call-iptables ]] || echo "$old" >"$CLUSTER_DIR/saved-bridge-nf-call-iptables"
      sysctl -qw "$key=0" || return 1
    fi
    if ! probe "$(ns_name 1)" "$SUBNET.2" || ! probe "" "$SUBNET.1"; then
      say "error: the namespaces cannot reach each other or the host over $BRIDGE (firewall?)"
      return 1
    fi
  fi
}

# Removes what setup_netns made. Anything still running in our namespaces (the nodes' epmd,
# a VM that would not stop) was started by us there: it is ended by pid first.
teardown_netns() {
  local i ns pids
  for i in "${NODES[@]}"; do
    ns=$(ns_name "$i")
    ns_exists "$ns" || continue
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    if [[ -n ${pids// /} ]]; then
      # shellcheck disable=SC2086 # a list of pids
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
      # shellcheck disable=SC2086
      [[ -z ${pids// /} ]] || kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  for i in "${NODES[@]}"; do ip link del "$(veth_host "$i")" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  if [[ -s $CLUSTER_DIR/saved-bridge-nf-call-iptables ]]; then
    sysctl -qw "net.bridge.bridge-nf-call-iptables=$(<"$CLUSTER_DIR/saved-bridge-nf-call-iptables")" || true
    rm -f "$CLUSTER_DIR/saved-bridge-nf-call-iptables"
  fi
}

netns_possible() {
  [[ $(id -u) == 0 ]] || return 1
  command -v ip >/dev/null || return 1
  local probe_ns=${NS_PREFIX}-probe-$$
  ip netns add "$probe_ns" 2>/dev/null || return 1
  ip netns del "$probe_ns" 2>/dev/null || true
}

# --- locking ---------------------------------------------------------------------------------

# Commands that change the cluster take a lock, so chaos.sh and a person at the terminal do not
# start the same node twice.
take_lock() {
  mkdir -p "$CLUSTER_DIR"
  exec 9>"$CLUSTER_DIR/.lock"
  flock -w 300 9 || die "another scripts/cluster.sh holds $CLUSTER_DIR/.lock"
  LOCKED=1
}

# Long waits happen without the lock, so chaos.sh can kill or cut another node meanwhile.
release_lock() {
  exec 9>&-
  LOCKED=0
}

# --- commands --------------------------------------------------------------------------------

any_node_up() {
  local i
  for i in "${NODES[@]}"; do node_pid "$i" >/dev/null && return 0; done
  return 1
}

write_urls() {
  local i urls=()
  for i in "${NODES[@]}"; do urls+=("$(amqp_url "$i")"); done
  (
    IFS=,
    echo "${urls[*]}"
  ) >"$CLUSTER_DIR/amqp_urls"
}

cmd_up() {
  local t0=$SECONDS i started=() want_mode
  ensure_rabbitmq
  take_lock
  MODE=""
  [[ -s $CLUSTER_DIR/mode ]] && MODE=$(<"$CLUSTER_DIR/mode")
  if [[ -n $MODE ]] && any_node_up; then
    want_mode=$MODE
    case ${CLUSTER_NETNS:-} in
      0) want_mode=local ;;
      1) want_mode=netns ;;
    esac
    [[ $want_mode == "$MODE" ]] || die "the cluster runs in $MODE mode; run \`down\` first to switch"
  else
    case ${CLUSTER_NETNS:-} in
      0) MODE=local ;;
      1) netns_possible || die "CLUSTER_NETNS=1 but network namespaces cannot be made (needs root and ip netns)"
        MODE=netns ;;
      *) if netns_possible; then MODE=netns; else
        MODE=local
        say "network namespaces unavailable (needs root and ip netns): nodes on 127.0.0.1, partitions skipped"
      fi ;;
    esac
  fi
  echo "$MODE" >"$CLUSTER_DIR/mode"
  ensure_cookie
  if [[ $MODE == netns ]]; then
    if ! setup_netns; then
      teardown_netns
      if [[ ${CLUSTER_NETNS:-} == 1 ]] || any_node_up; then die "could not set up the network namespaces"; fi
      say "network namespaces could not be set up: falling back to nodes on 127.0.0.1 (partitions skipped)"
      MODE=local
      echo "$MODE" >"$CLUSTER_DIR/mode"
    fi
  fi
  if [[ $MODE == local ]] && ! (exec 3<>/dev/tcp/127.0.0.1/4369) 2>/dev/null && [[ ! -e $CLUSTER_DIR/epmd-ours ]]; then
    # No epmd yet: the first node starts one, which `down` stops again.
    touch "$CLUSTER_DIR/epmd-ours"
  fi

  local -A mark=()
  for i in "${NODES[@]}"; do
    if node_pid "$i" >/dev/null; then continue; fi
    mark[$i]=$(log_mark "$i")
    launch_node "$i"
    started+=("$i")
  done
  for i in "${started[@]}"; do wait_running_or_unstick "$i" "${mark[$i]}"; done
  ((${#started[@]} == 0)) || say "nodes ${started[*]} running after $((SECONDS - t0))s"

  # Join whoever is not yet a member of node 1's cluster (a fresh node; data dirs remember).
  local view members
  view=$(node_view 1) || node_fail 1 "it does not answer rabbitmqctl"
  read -r _ members _ <<<"$view"
  for i in 2 3; do
    if [[ ,$members, == *,$i,* ]]; then continue; fi
    say "joining node $i to $(node_name 1)"
    ctl_or_fail "$i" stop_app
    ctl_or_fail "$i" join_cluster "$(node_name 1)"
    ctl_or_fail "$i" start_app
  done
  # `up` means all three serving: links cut by `partition` are restored.
  for i in "${NODES[@]}"; do
    if link_cut "$i"; then
      say "restoring node $i's link (it was partitioned)"
      ip link set "$(veth_host "$i")" up
    fi
  done
  wait_clustered
  write_urls
  say "cluster of 3 up in $((SECONDS - t0))s ($MODE mode)"
  cmd_status >&2
  echo "AMQP_URL=$(<"$CLUSTER_DIR/amqp_urls")"
}

cmd_down() {
  local purge=0 i pid deadline
  case ${1:-} in
    --purge) purge=1 ;;
    "") ;;
    *) usage ;;
  esac
  take_lock
  load_mode
  if find_rabbitmq; then
    for i in "${NODES[@]}"; do
      node_pid "$i" >/dev/null || continue
      say "stopping node $i ($(node_name "$i"))"
      CTL_TIMEOUT=30 ctl "$i" rabbitmqctl -q stop >/dev/null 2>&1 &
    done
    wait
  fi
  deadline=$((SECONDS + 30))
  for i in "${NODES[@]}"; do
    while pid=$(node_pid "$i"); do
      if ((SECONDS >= deadline)); then
        say "node $i (pid $pid) did not stop; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        break
      fi
      sleep 0.5
    done
  done
  teardown_netns
  if [[ -e $CLUSTER_DIR/epmd-ours ]]; then
    # The epmd our loopback nodes started; epmd -kill refuses while any node is registered.
    local epmd
    epmd=$(command -v epmd || echo /usr/lib/erlang/bin/epmd)
    if [[ -x $epmd ]] && ! "$epmd" -names 2>/dev/null | grep -q '^name '; then "$epmd" -kill >/dev/null 2>&1 || true; fi
    rm -f "$CLUSTER_DIR/epmd-ours"
  fi
  rm -f "$CLUSTER_DIR/mode" "$CLUSTER_DIR/amqp_urls"
  for i in "${NODES[@]}"; do rm -f "$(node_dir "$i")/rabbitmq.pid"; done
  if ((purge)); then
    for i in "${NODES[@]}"; do rm -rf "$(node_dir "$i")"; done
    rm -rf "${CLUSTER_DIR:?}/home" "$CLUSTER_DIR/events"
    say "stopped; data removed"
  else
    say "stopped (data kept in $CLUSTER_DIR; down --purge removes it)"
  fi
}

cmd_status() {
  local i pid state view running members seen parts part cut first="" first_state="" first_members="" any=0
  load_mode
  find_rabbitmq || die "rabbitmq-server is not installed"
  if [[ ! -s $CLUSTER_DIR/mode ]] && ! any_node_up; then
    echo "cluster: not up (scripts/cluster.sh up)"
    return 0
  fi
  echo "mode: $MODE$([[ $MODE == netns ]] && echo " (bridge $BRIDGE $BRIDGE_IP/24, namespaces ${NS_PREFIX}1-3)")   dir: $CLUSTER_DIR"
  printf '%-4s %-20s %-8s %-17s %-8s %-24s %s\n' node name pid address state partitioned "running nodes it sees"
  for i in "${NODES[@]}"; do
    pid=$(node_pid "$i") || pid=-
    state=down seen=- part=no members=-
    cut=0
    link_cut "$i" && cut=1
    if [[ $pid != - ]]; then
      any=1
      if view=$(node_view "$i"); then
        read -r running members seen parts <<<"$view"
        if [[ $running == true ]]; then state=running; else state=paused; fi
        [[ $parts == - ]] || part="yes: with $parts"
        # Membership as a running node has it, else as any node that answers.
        if [[ -z $first || ($state == running && $first_state != running) ]]; then
          first=$i first_state=$state first_members=$members
        fi
      else
        state="no-answer"
      fi
    fi
    ((cut)) && part="yes: link cut"
    printf '%-4s %-20s %-8s %-17s %-8s %-24s %s\n' "$i" "$(node_name "$i")" "$pid" \
      "$(node_ip "$i"):$(amqp_port "$i")" "$state" "$part" "$seen"
  done
  if [[ -n $first ]]; then
    echo "members (as node $first sees them): $first_members"
  elif ((any)); then
    echo "members: unknown (no node answers)"
  fi
  [[ -s $CLUSTER_DIR/amqp_urls ]] && echo "AMQP_URL=$(<"$CLUSTER_DIR/amqp_urls")"
  return 0
}

require_up() {
  load_mode
  [[ -s $CLUSTER_DIR/mode ]] || die "the cluster is not up (scripts/cluster.sh up)"
  find_rabbitmq || die "rabbitmq-server is not installed"
}

cmd_kill() {
  local n=$1 pid
  check_n "$n"
  require_up
  take_lock
  pid=$(kill_node "$n") || {
    say "node $n is not running; nothing to kill"
    return 0
  }
  say "node $n ($(node_name "$n")): beam.smp pid $pid killed (SIGKILL)"
}

cmd_start() {
  local n=$1 t0=$SECONDS mark
  check_n "$n"
  require_up
  take_lock
  if [[ $MODE == netns ]] && ! ns_exists "$(ns_name "$n")"; then die "namespace $(ns_name "$n") is missing; run \`up\`"; fi
  mark=$(log_mark "$n")
  if node_pid "$n" >/dev/null; then
    say "node $n is already running (pid $(node_pid "$n"))"
  else
    launch_node "$n"
  fi
  release_lock
  if link_cut "$n"; then
    # Cut off, it cannot finish booting (it waits for its peers' tables) until `heal`.
    wait_vm "$n"
    say "node $n started (pid $(node_pid "$n")) but cut off: it completes its start after \`heal $n\`"
    return 0
  fi
  wait_running_or_unstick "$n" "$mark"
  wait_clustered
  say "node $n running in the cluster after $((SECONDS - t0))s"
}

need_netns() {
  if [[ $MODE != netns ]]; then
    say "partitions need network namespaces (ip netns); skipped"
    exit 3
  fi
}

cmd_partition() {
  local n=$1 wait=0 t0=$SECONDS i others=()
  check_n "$n"
  [[ ${2:-} == --wait ]] && wait=1
  load_mode
  need_netns
  require_up
  take_lock
  ip link set "$(veth_host "$n")" down
  say "node $n cut off (link $(veth_host "$n") down)"
  release_lock
  ((wait)) || return 0
  for i in "${NODES[@]}"; do [[ $i == "$n" ]] || others+=("$i"); done
  local deadline=$((SECONDS + WAIT)) view seen
  while :; do
    local gone=1
    for i in "${others[@]}"; do
      node_pid "$i" >/dev/null || continue
      view=$(node_view "$i") || continue
      read -r _ _ seen _ <<<"$view"
      [[ ,$seen, == *,$n,* ]] && gone=0
    done
    ((gone)) && break
    ((SECONDS < deadline)) || die "the other nodes still see node $n after ${WAIT}s"
    sleep 1
  done
  say "the other nodes see node $n gone after $((SECONDS - t0))s"
}

cmd_heal() {
  local n=$1 t0=$SECONDS mark why
  check_n "$n"
  load_mode
  need_netns
  require_up
  take_lock
  mark=$(log_mark "$n")
  ip link set "$(veth_host "$n")" up
  say "node $n's link restored"
  release_lock
  [[ ${2:-} == --no-wait ]] && return 0
  if node_pid "$n" >/dev/null; then
    if ! wait_clustered "$GRACE" soft && [[ $(node_state "$n") != running ]] && peers_have_majority "$n"; then
      why="did not rejoin within ${GRACE}s of the heal"
      global_hang_since "$n" "$mark" && why+=", $GLOBAL_HANG_NOTE"
      restart_stuck "$n" "$why"
    fi
    wait_clustered
    say "node $n back in the cluster after $((SECONDS - t0))s"
  else
    say "node $n has no running VM (killed?); \`start $n\` brings it back"
  fi
}

# The leader as the asked node's own Raft member knows it (ra:members, a local call), else as its
# queue record has it: both local, so unlike `list_queues name leader` the answer does not hang
# or leave the queue out while the leader's node is cut off.
cmd_leader() {
  local q=${1:-} i out n esc order=()
  [[ -n $q ]] || usage
  require_up
  esc=${q//\\/\\\\}
  esc=${esc//\"/\\\"}
  # Nodes that are not cut off first, then the others.
  for i in "${NODES[@]}"; do link_cut "$i" || order+=("$i"); done
  for i in "${NODES[@]}"; do link_cut "$i" && order+=("$i"); done
  for i in "${order[@]}"; do
    node_pid "$i" >/dev/null || continue
    out=$(CTL_TIMEOUT=20 ctl "$i" rabbitmqctl -q eval "
      QN = rabbit_misc:r(<<\"/\">>, queue, unicode:characters_to_binary(\"$esc\")),
      case rabbit_amqqueue:lookup(QN) of
        {ok, Q} ->
          case amqqueue:get_pid(Q) of
            {RaName, RecordNode} ->
              case catch ra:members({RaName, node()}, 5000) of
                {ok, _, {_, Leader}} -> atom_to_list(Leader);
                _ -> atom_to_list(RecordNode)
              end;
            P when is_pid(P) -> atom_to_list(node(P));
            _ -> \"none\"
          end;
        {error, not_found} -> \"not_found\"
      end." 2>/dev/null) || continue
    out=${out//\"/}
    case $out in
      not_found)
        say "no queue '$q' in vhost / (asked node $i)"
        exit 1
        ;;
      none | "") continue ;;
    esac
    n=$(node_number "$out") || die "leader $out is not one of ours"
    echo "$n"
    return 0
  done
  die "no live node could tell the leader of '$q'"
}

cmd_close_connections() {
  local i done_any=0
  require_up
  for i in "${NODES[@]}"; do
    node_pid "$i" >/dev/null || continue
    if CTL_TIMEOUT=30 ctl "$i" rabbitmqctl -q close_all_connections --global "chaos" >/dev/null 2>&1; then
      say "node $i: client connections closed"
      done_any=1
    else
      say "node $i: did not answer (paused or cut off); skipped"
    fi
  done
  ((done_any)) || die "no live node to close connections on"
}

cmd_ctl() {
  local n=${1:-} tool=rabbitmqctl
  check_n "$n"
  shift
  require_up
  case ${1:-} in
    rabbitmqctl | rabbitmq-*)
      tool=$1
      shift
      ;;
  esac
  [[ -x $RMQ_BIN/$tool ]] || die "no such RabbitMQ CLI: $tool"
  CTL_TIMEOUT=${CTL_TIMEOUT:-300} ctl "$n" "$tool" "$@"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down "${2:-}" ;;
  status) cmd_status ;;
  kill) cmd_kill "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  partition) cmd_partition "${2:-}" "${3:-}" ;;
  heal) cmd_heal "${2:-}" "${3:-}" ;;
  leader) cmd_leader "${2:-}" ;;
  close-connections) cmd_close_connections ;;
  ctl)
    shift
    cmd_ctl "$@"
    ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
