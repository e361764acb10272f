#!/usr/bin/env bash
# A local Redis Cluster for tests: 3 masters + 3 replicas, plain redis-server processes on free
# ports, each in its own directory. No containers.
#
#   scripts/redis-cluster.sh up   [DIR]   start it (or find it running) and print its URL
#   scripts/redis-cluster.sh down [DIR]   stop its processes and remove DIR
#   scripts/redis-cluster.sh url  [DIR]   print the URL of a running cluster
#
# DIR defaults to $COURIER_REDIS_CLUSTER_DIR or /tmp/courier-redis-cluster. It holds one
# directory per node (redis.conf, nodes.conf, pid, log) and `url`, the cluster's
# `redis+cluster://` URL, which the tests read from COURIER_TEST_REDIS_CLUSTER_URL:
#
#   export COURIER_TEST_REDIS_CLUSTER_URL=$(scripts/redis-cluster.sh up)
#
# `up` is idempotent: when DIR's cluster answers with cluster_state:ok it only prints the URL.
# Nodes use a short cluster-node-timeout (REDIS_CLUSTER_NODE_TIMEOUT ms, default 1000) so a
# killed master's replica takes over in about 2 s, a replica may always take over
# (cluster-replica-validity-factor 0: availability over staleness, as a test wants), and no
# persistence (test data only).
# Ports: 6 free ports p with p+10000 (the cluster bus) free too, from 17000 up by default
# (REDIS_CLUSTER_BASE_PORT); keep base + 10000 below 32768, where Linux's ephemeral ports
# begin. Everything is logged to stderr; stdout is the URL only.
set -euo pipefail

ACTION=${1:-up}
DIR=${2:-${COURIER_REDIS_CLUSTER_DIR:-/tmp/courier-redis-cluster}}
HOST=127.0.0.1
NODES=6
NODE_TIMEOUT=${REDIS_CLUSTER_NODE_TIMEOUT:-1000}
BASE_PORT=${REDIS_CLUSTER_BASE_PORT:-17000}
WAIT=30

log() { printf 'redis-cluster.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

port_free() {
    ! timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

cli() { redis-cli -h "$HOST" -p "$1" "${@:2}"; }

# The ports of DIR's nodes (one directory per port).
node_ports() {
    local d
    for d in "$DIR"/node-*; do
        [[ -d $d ]] && printf '%s\n' "${d##*-}"
    done
}

cluster_ok() {
    local p
    [[ -d $DIR ]] || return 1
    local n=0
    for p in $(node_ports); do
        [[ $(cli "$p" cluster info 2>/dev/null | tr -d '\r' | grep '^cluster_state:') == "cluster_state:ok" ]] || return 1
        n=$((n + 1))
    done
    ((n == NODES))
}

url() {
    local ports
    ports=$(node_ports | head -3 | sed "s/^/$HOST:/" | paste -sd, -)
    printf 'redis+cluster://%s\n' "$ports"
}

# Start the node of one port from its directory (its config is written by `up`, and kept, so
# a killed node can be started again with the same identity: tests do that).
start_node() {
    local port=$1 d="$DIR/node-$1"
    redis-server "$d/redis.conf" >/dev/null
}

down() {
    local p pid
    if [[ -d $DIR ]]; then
        for p in $(node_ports); do
            if [[ -f "$DIR/node-$p/pid" ]]; then
                pid=$(cat "$DIR/node-$p/pid")
                kill "$pid" 2>/dev/null || true
            fi
        done
        for p in $(node_ports); do
            for _ in $(seq 50); do
                port_free "$p" && break
                sleep 0.1
            done
        done
        rm -rf "$DIR"
    fi
    log "stopped; removed $DIR"
}

up() {
    command -v redis-server >/dev/null || die "redis-server is not installed"
    command -v redis-cli >/dev/null || die "redis-cli is not installed"
    if cluster_ok; then
        log "already up in $DIR"
        url | tee "$DIR/url"
        return
    fi
    [[ -d $DIR ]] && down
    mkdir -p "$DIR"
    # A failed start stops what it started (a test that gets no cluster cannot stop it).
    trap 'rc=$?; if ((rc != 0)); then down; fi' EXIT
    local ports=() p=$BASE_PORT
    while ((${#ports[@]} < NODES)); do
        ((p < 55000)) || die "no free ports from $BASE_PORT"
        if port_free "$p" && port_free $((p + 10000)); then
            ports+=("$p")
        fi
        p=$((p + 1))
    done
    for p in "${ports[@]}"; do
        local d="$DIR/node-$p"
        mkdir -p "$d"
        cat >"$d/redis.conf" <<EOF
port $p
bind $HOST
daemonize yes
dir $d
pidfile $d/pid
logfile $d/log
cluster-enabled yes
cluster-config-file $d/nodes.conf
cluster-node-timeout $NODE_TIMEOUT
cluster-replica-validity-factor 0
appendonly no
save ""
maxmemory-policy noeviction
protected-mode no
EOF
        start_node "$p"
    done
    for p in "${ports[@]}"; do
        for _ in $(seq $((WAIT * 10))); do
            [[ $(cli "$p" ping 2>/dev/null) == PONG ]] && break
            sleep 0.1
        done
        [[ $(cli "$p" ping 2>/dev/null) == PONG ]] || {
            tail -n 5 "$DIR/node-$p/log" >&2 2>/dev/null || true
            die "node $p did not start (its log's end is above)"
        }
    done
    local addrs=()
    for p in "${ports[@]}"; do addrs+=("$HOST:$p"); done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 \
        || die "redis-cli --cluster create failed (see $DIR/create.log)"
    for _ in $(seq $((WAIT * 10))); do
        cluster_ok && break
        sleep 0.1
    done
    cluster_ok || {
        cat "$DIR/create.log" >&2
        die "cluster_state is not ok after ${WAIT}s"
    }
    # Every node must also see the 3 masters with their replicas (create can return before
    # the replicas' roles have spread over the bus).
    for _ in $(seq $((WAIT * 10))); do
        local ok=1
        for p in "${ports[@]}"; do
            [[ $(cli "$p" cluster nodes 2>/dev/null | grep -c slave) == 3 ]] || ok=0
        done
        ((ok)) && break
        sleep 0.1
    done
    # And every replica must have synced with its master once: a replica that never did
    # cannot take over, so a failover test killing a master right away would wait forever.
    for _ in $(seq $((WAIT * 10))); do
        local synced=0
        for p in "${ports[@]}"; do
            cli "$p" info replication 2>/dev/null | tr -d '\r' | grep -q '^master_link_status:up' && synced=$((synced + 1))
        done
        ((synced == NODES / 2)) && break
        sleep 0.1
    done
    ((synced == NODES / 2)) || {
        for p in "${ports[@]}"; do
            log "node $p: $(cli "$p" info replication 2>&1 | tr -d '\r' | grep -E '^(role|master_link_status):' | paste -sd' ')"
        done
        die "replicas not in sync after ${WAIT}s"
    }
    log "up in $DIR: ${addrs[*]}"
    trap - EXIT
    url | tee "$DIR/url"
}

case "$ACTION" in
up) up ;;
down) down ;;
url) cluster_ok || die "no cluster running in $DIR"; url ;;
*) die "usage: $0 up|down|url [DIR]" ;;
esac
