#!/usr/bin/env bash
# The lab's Redis Cluster on loopback: 3 masters, 3 replicas (Debian's redis-server), used by
# docker/stack.sh (ICS_REDIS_CLUSTER=1) and by the unit tests' fixture (tests/unit/conftest.py).
#
#   docker/redis-cluster.sh start DIR PORT   six redis-server on 127.0.0.1:PORT..PORT+5 (cluster bus
#                                            PORT+10000..), data, logs and pidfiles in DIR/<port>/;
#                                            creates the cluster unless DIR holds one already, and
#                                            returns once every node says cluster_state:ok
#   docker/redis-cluster.sh stop DIR         stop the six (TERM, then KILL after 5 s)
#
# ICS_REDIS_ACLFILE / ICS_REDIS_ADMIN_PASSWORD: each node loads the stack's ACL users
# (docker/stack.sh render_redis_acl) and replicas log in to their masters as the admin.
# ICS_REDIS_NODE_TIMEOUT_MS (1000): how long a master may be silent before its replica takes over.
# ICS_REDIS_APPENDONLY (yes) / ICS_REDIS_APPENDFSYNC (everysec): durability (README, Redis Cluster).
set -euo pipefail

NODE_TIMEOUT_MS=${ICS_REDIS_NODE_TIMEOUT_MS:-1000}
APPENDONLY=${ICS_REDIS_APPENDONLY:-yes}
APPENDFSYNC=${ICS_REDIS_APPENDFSYNC:-everysec}

die() { echo "redis-cluster: $*" >&2; exit 1; }
ACLFILE=${ICS_REDIS_ACLFILE:-}
ACL_OPTS=()
if [ -n "$ACLFILE" ]; then
    [ -n "${ICS_REDIS_ADMIN_PASSWORD:-}" ] || { echo "redis-cluster: ICS_REDIS_ACLFILE needs ICS_REDIS_ADMIN_PASSWORD" >&2; exit 2; }
    ACL_OPTS=(--aclfile "$ACLFILE" --masteruser default --masterauth "$ICS_REDIS_ADMIN_PASSWORD")
    export REDISCLI_AUTH=$ICS_REDIS_ADMIN_PASSWORD
fi
# ICS_REDIS_TLS_DIR (docker/stack.sh, ICS_STACK_REDIS_TLS): its ca.crt / redis.crt / redis.key; every node
# then serves clients, its replicas and the cluster bus over TLS only
TLS_DIR=${ICS_REDIS_TLS_DIR:-}
CLI_TLS=()
[ -z "$TLS_DIR" ] || CLI_TLS=(--tls --cacert "$TLS_DIR/ca.crt")
listen() {
    if [ -n "$TLS_DIR" ]; then
        echo --port 0 --tls-port "$1" --tls-cert-file "$TLS_DIR/redis.crt" --tls-key-file "$TLS_DIR/redis.key" \
            --tls-ca-cert-file "$TLS_DIR/ca.crt" --tls-auth-clients no --tls-replication yes --tls-cluster yes
    else
        echo --port "$1"
    fi
}
cli() { redis-cli "${CLI_TLS[@]}" -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }

start() {
    local dir=$1 port=$2 p i nodes=()
    for i in 0 1 2 3 4 5; do
        p=$((port + i)); nodes+=("127.0.0.1:$p")
        mkdir -p "$dir/$p"
        if [ "$(cli "$p" ping)" = PONG ]; then  # running: it takes the users as written now
            [ -z "$ACLFILE" ] || [ "$(cli "$p" acl load)" = OK ] || die "node $p refused ACL LOAD of $ACLFILE"
            continue
        fi
        # shellcheck disable=SC2046  # (paths without spaces)
        redis-server --bind 127.0.0.1 $(listen "$p") --dir "$dir/$p" --daemonize yes \
            --pidfile "$dir/$p/redis.pid" --logfile "$dir/$p/redis.log" --save '' \
            --appendonly "$APPENDONLY" --appendfsync "$APPENDFSYNC" \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT_MS" \
            "${ACL_OPTS[@]}"
    done
    for p in "${nodes[@]}"; do
        for i in $(seq 100); do [ "$(cli "${p#*:}" ping)" = PONG ] && break; sleep 0.05; done
        [ "$(cli "${p#*:}" ping)" = PONG ] || die "node $p did not answer (log: $dir/${p#*:}/redis.log)"
    done
    if [ "$(cli "$port" cluster info | tr -d '\r' | sed -n 's/^cluster_known_nodes://p')" != 6 ]; then
        redis-cli "${CLI_TLS[@]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
            || { tail -n 5 "$dir/create.log" >&2; die "redis-cli --cluster create failed"; }
    fi
    for p in "${nodes[@]}"; do
        for i in $(seq 200); do
            cli "${p#*:}" cluster info | grep -q '^cluster_state:ok' && break
            sleep 0.05
        done
        cli "${p#*:}" cluster info | grep -q '^cluster_state:ok' || die "node $p: cluster_state is not ok after 10 s"
    done
    for p in "${nodes[@]}"; do  # every replica has its master's data (WAIT can count it)
        for i in $(seq 200); do
            cli "${p#*:}" info replication | grep -q '^role:master' && break
            cli "${p#*:}" info replication | grep -q '^master_link_status:up' && break
            sleep 0.05
        done
    done
}

stop() {
    local dir=$1 f pid i
    for f in "$dir"/*/redis.pid; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

case ${1:-} in
    start) [ $# -eq 3 ] || die "usage: $0 start DIR PORT"; start "$2" "$3" ;;
    stop)  [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
    *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
