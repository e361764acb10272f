#!/usr/bin/env bash
# Make sure the brokers the external backends' tests need are up:
#   Redis              127.0.0.1:6379
#   RabbitMQ           127.0.0.1:5672 (guest/guest)
#   NATS + JetStream   127.0.0.1:4222
#
# For each one: if it already answers, leave it alone. Otherwise install it if its binary is
# missing (apt, root only), start it with the commands from SERVICES.md, and wait a bounded
# time for it to answer. Prints one line per broker. Exits non-zero, naming the broker, if one
# cannot be brought up. Safe to run any number of times: it never stops or restarts a broker.
#
# Ports can be overridden for checking (COURIER_BROKERS_REDIS_PORT, ..._AMQP_PORT,
# ..._NATS_PORT). The Redis and NATS start commands use the port too. RabbitMQ always starts on
# the port in its own configuration.
set -euo pipefail

HOST=127.0.0.1
REDIS_PORT=${COURIER_BROKERS_REDIS_PORT:-6379}
AMQP_PORT=${COURIER_BROKERS_AMQP_PORT:-5672}
NATS_PORT=${COURIER_BROKERS_NATS_PORT:-4222}

# Bounded waits after a start, in seconds.
REDIS_WAIT=20
AMQP_WAIT=60
NATS_WAIT=20

APT_PACKAGES=(redis-server rabbitmq-server nats-server)
apt_done=0

log() { printf '%s\n' "$*"; }
die() { printf 'brokers.sh: %s\n' "$*" >&2; exit 1; }

# --- checks: succeed only when the broker really answers --------------------------------------

# Does anything accept TCP connections on HOST:$1?
port_open() {
    timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# Redis answers PING with +PONG (this is not the case while it is still loading its data).
redis_ok() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "PING\r\n" >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ $reply == "+PONG"* ]]' "$HOST" "$REDIS_PORT" 2>/dev/null
}

# RabbitMQ counts as up when its AMQP listener is open, which happens late in the node's boot.
# After starting it, also wait for the node to answer `rabbitmq-diagnostics -q ping`.
amqp_ok() {
    port_open "$AMQP_PORT"
}
amqp_ready() {
    amqp_ok && timeout 20 rabbitmq-diagnostics -q ping </dev/null >/dev/null 2>&1
}

# NATS greets every client with an INFO line, and that line says whether JetStream is enabled.
nats_info() {
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        printf "%s\n" "$line"' "$HOST" "$NATS_PORT" 2>/dev/null
}
nats_ok() {
    local info
    info=$(nats_info) || return 1
    [[ $info == INFO* ]] || return 1
    if [[ $info != *'"jetstream":true'* ]]; then
        die "nats: a server answers on $HOST:$NATS_PORT but JetStream is off; it must run with -js"
    fi
}

# --- starting ----------------------------------------------------------------------------------

# Install the three brokers from Debian's packages, once per run, only when a binary is missing.
install_brokers() {
    [[ $apt_done == 1 ]] && return 0
    [[ $(id -u) == 0 ]] || die "$1: not installed, and installing needs root: apt-get install -y ${APT_PACKAGES[*]}"
    log "$1: not installed; running apt-get install -y ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update </dev/null || die "$1: apt-get update failed"
    apt-get install -y "${APT_PACKAGES[@]}" </dev/null || die "$1: apt-get install failed"
    apt_done=1
}

# The start commands are the ones from SERVICES.md. Each one returns at once; the caller waits.
start_redis() {
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}
start_amqp() {
    rabbitmq-server -detached
}
start_nats() {
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p "$NATS_PORT" -js -sd /var/lib/nats-server -l /var/log/nats-server.log
}

# --- the generic flow --------------------------------------------------------------------------

# wait_for SECONDS CHECK: run CHECK every half second until it succeeds, for up to SECONDS.
wait_for() {
    local deadline=$((SECONDS + $1)) check=$2
    while ((SECONDS < deadline)); do
        "$check" && return 0
        sleep 0.5
    done
    "$check"
}

# ensure NAME ADDRESS PORT BINARY CHECK START WAIT [READY]
# CHECK says the broker is up. READY (default CHECK) is what to wait for after starting it.
ensure() {
    local name=$1 addr=$2 port=$3 binary=$4 check=$5 start=$6 wait=$7 ready=${8:-$5}
    if "$check"; then
        log "$name: up (already running)"
        return 0
    fi
    if port_open "$port"; then
        # Something listens but does not answer (yet): maybe still booting or loading. Never
        # start a second server on a taken port.
        log "$name: $addr is open but not answering yet; waiting up to ${wait}s"
        wait_for "$wait" "$ready" ||
            die "$name: something listens on $addr but does not answer like $name"
        log "$name: up (was starting)"
        return 0
    fi
    if ! command -v "$binary" >/dev/null 2>&1; then
        install_brokers "$name"
        command -v "$binary" >/dev/null 2>&1 || die "$name: $binary still missing after apt-get install"
        # Installing a package may start its service.
        if wait_for 5 "$check"; then
            log "$name: started (by the package install)"
            return 0
        fi
    fi
    log "$name: down on $addr; starting it"
    "$start" || die "$name: the start command failed (exit $?)"
    wait_for "$wait" "$ready" || die "$name: started, but no answer on $addr within ${wait}s"
    log "$name: started"
}

main() {
    ensure redis "$HOST:$REDIS_PORT" "$REDIS_PORT" redis-server redis_ok start_redis "$REDIS_WAIT"
    ensure rabbitmq "$HOST:$AMQP_PORT" "$AMQP_PORT" rabbitmq-server amqp_ok start_amqp "$AMQP_WAIT" amqp_ready
    ensure nats "$HOST:$NATS_PORT" "$NATS_PORT" nats-server nats_ok start_nats "$NATS_WAIT"
}

# Run main when executed (tests can source this file to use the functions one by one).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
