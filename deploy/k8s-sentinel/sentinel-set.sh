#!/bin/sh
# One Redis or one Sentinel of QueueNet's Sentinel set. The Kubernetes overlay (this directory)
# and docker-compose.sentinel.yml both run this script in the redis:7-alpine image (POSIX sh,
# redis-cli; Redis >= 7.0, whose Sentinel resolves a host name again when an instance's address
# changes).
#
#   sentinel-set.sh redis                     run this Redis: the master, or a replica of it
#   sentinel-set.sh sentinel                  run this Sentinel, watching the master of today
#   sentinel-set.sh sentinel-conf HOST:PORT   print the Sentinel configuration for that master
#
# Environment (the manifests set it; host names everywhere, never IP addresses, which change
# when a pod or container is replaced):
#   REDIS_PASSWORD       requirepass and masterauth of every Redis, requirepass of every
#                        Sentinel (the sentinels authenticate to each other with it too)
#   SENTINEL_MASTER      name of the master set: the SERVICE of redis+sentinel://.../SERVICE
#   REDIS_NODES          host:port of every Redis, separated by spaces; the first is the master
#                        when the set starts from nothing
#   SENTINELS            host:port of every Sentinel, separated by spaces
#   ANNOUNCE_HOST        this instance's own host name, as REDIS_NODES or SENTINELS list it
#   SENTINEL_QUORUM      sentinels that must agree the master is down: a majority of SENTINELS
#   SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS
#   REDIS_PORT (6379), SENTINEL_PORT (26379), DATA_DIR (/data, writable), BIND_ADDRESS (all),
#   REDIS_MAXMEMORY (none), FAILOVER_WAIT_S (60): how long a starting instance waits for the
#   set (a Redis for the promotion of its replica, see below; a Sentinel for a master to watch)
#
# Nothing is persisted (as in the single-Redis deployments: the queue holds short-lived work).
# So a Redis that starts decides its role by asking, never from a file:
# - the sentinels name another master: it becomes that master's replica;
# - the sentinels name this very Redis (it stopped and came back before they noticed, with an
#   empty data set): as master it would make its replicas copy the empty set, so while a
#   replica is up it waits, not listening, until the sentinels promote one, then replicates it;
# - no sentinel answers: it replicates a Redis that says it is a master, else the first node
#   is the master.
# A Sentinel takes the master from the other sentinels, else from the Redis that says it is a
# master, and keeps one identity (myid, from its host name) across restarts: the others know a
# replaced pod as the sentinel they knew, whatever its new address (sentinels never forget one
# they have seen, and a majority of all of them must vote for a failover).
set -eu

REDIS_PORT=${REDIS_PORT:-6379}
SENTINEL_PORT=${SENTINEL_PORT:-26379}
DATA_DIR=${DATA_DIR:-/data}
FAILOVER_WAIT_S=${FAILOVER_WAIT_S:-60}
# Word lists with one space between words, whatever whitespace the manifest put there.
# shellcheck disable=SC2086,SC2116
REDIS_NODES=$(echo $REDIS_NODES)
# shellcheck disable=SC2086,SC2116
SENTINELS=$(echo $SENTINELS)
export REDISCLI_AUTH="$REDIS_PASSWORD"

log() {
    echo "sentinel-set: $*" >&2
}

# cli HOST:PORT COMMAND...: the reply of one command (at most 3 s), nothing when none came.
cli() {
    target=$1
    shift
    timeout 3 redis-cli -h "${target%:*}" -p "${target##*:}" --raw "$@" 2>/dev/null || true
}

# The master (host:port) the first sentinel that answers names, leaving out $1; else nothing.
sentinels_master() {
    for sentinel in $SENTINELS; do
        [ "$sentinel" != "${1:-}" ] || continue
        reply=$(cli "$sentinel" SENTINEL GET-MASTER-ADDR-BY-NAME "$SENTINEL_MASTER")
        host=$(printf '%s\n' "$reply" | sed -n 1p)
        port=$(printf '%s\n' "$reply" | sed -n 2p)
        case $port in '' | *[!0-9]*) continue ;; esac
        echo "$host:$port"
        return 0
    done
    return 0
}

# A Redis (leaving out $1) that says it is a master, one with replicas first; else nothing.
nodes_master() {
    fallback=""
    for node in $REDIS_NODES; do
        [ "$node" != "${1:-}" ] || continue
        info=$(cli "$node" INFO replication)
        case $info in *role:master*) ;; *) continue ;; esac
        case $info in
            *connected_slaves:0*) [ -n "$fallback" ] || fallback=$node ;;
            *) echo "$node" && return 0 ;;
        esac
    done
    echo "$fallback"
}

# How many replicas the first sentinel that answers sees up (flags exactly "slave").
healthy_replicas() {
    for sentinel in $SENTINELS; do
        reply=$(cli "$sentinel" SENTINEL REPLICAS "$SENTINEL_MASTER")
        case $reply in *flags*) ;; *) continue ;; esac
        printf '%s\n' "$reply" |
            awk 'previous == "flags" && $0 == "slave" { n++ } { previous = $0 } END { print n + 0 }'
        return 0
    done
    echo 0
}

must_be_listed() {
    case " $2 " in
        *" $1 "*) ;;
        *) log "$1 (ANNOUNCE_HOST:port) is not among $3: $2" && exit 2 ;;
    esac
}

start_redis() {
    self="$ANNOUNCE_HOST:$REDIS_PORT"
    must_be_listed "$self" "$REDIS_NODES" REDIS_NODES
    master=$(sentinels_master)
    if [ "$master" = "$self" ] && [ "$(healthy_replicas)" -gt 0 ]; then
        log "the sentinels still name $self, which starts empty, as the master: waiting up to" \
            "${FAILOVER_WAIT_S}s for them to promote a replica"
        waited=0
        while [ "$master" = "$self" ] && [ "$waited" -lt "$FAILOVER_WAIT_S" ]; do
            sleep 1
            waited=$((waited + 1))
            master=$(sentinels_master)
        done
    fi
    if [ -z "$master" ]; then
        master=$(nodes_master "$self")
        [ -n "$master" ] || master=${REDIS_NODES%% *}
    fi
    set -- --port "$REDIS_PORT" --dir "$DATA_DIR" \
        --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD" \
        --replica-announce-ip "$ANNOUNCE_HOST" --save "" --appendonly no \
        --repl-diskless-load on-empty-db
    [ -z "${BIND_ADDRESS:-}" ] || set -- "$@" --bind "$BIND_ADDRESS"
    if [ -n "${REDIS_MAXMEMORY:-}" ]; then
        # With noeviction a full Redis refuses new requests (the web tier answers 503) instead
        # of dropping queued work.
        set -- "$@" --maxmemory "$REDIS_MAXMEMORY" --maxmemory-policy noeviction
    fi
    if [ "$master" = "$self" ]; then
        log "starting $self as the master"
    else
        log "starting $self as a replica of $master"
        set -- "$@" --replicaof "${master%:*}" "${master##*:}"
    fi
    exec redis-server "$@"
}

# The configuration of this Sentinel, watching the master $1 (host:port). resolve-hostnames
# and announce-hostnames come before `sentinel monitor`, which needs them to take a host name.
sentinel_conf() {
    myid=$(printf '%s' "$ANNOUNCE_HOST:$SENTINEL_PORT" | sha1sum | cut -c1-40)
    cat <<EOF
port $SENTINEL_PORT
dir "$DATA_DIR"
requirepass "$REDIS_PASSWORD"
sentinel myid $myid
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip "$ANNOUNCE_HOST"
sentinel monitor $SENTINEL_MASTER ${1%:*} ${1##*:} $SENTINEL_QUORUM
sentinel auth-pass $SENTINEL_MASTER "$REDIS_PASSWORD"
sentinel down-after-milliseconds $SENTINEL_MASTER $SENTINEL_DOWN_AFTER_MS
sentinel failover-timeout $SENTINEL_MASTER $SENTINEL_FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $SENTINEL_MASTER 1
EOF
    [ -z "${BIND_ADDRESS:-}" ] || echo "bind $BIND_ADDRESS"
}

start_sentinel() {
    self="$ANNOUNCE_HOST:$SENTINEL_PORT"
    must_be_listed "$self" "$SENTINELS" SENTINELS
    # Wait (up to FAILOVER_WAIT_S) for a master to watch: `sentinel monitor` refuses a host name
    # that does not resolve yet, e.g. while the first Redis's pod is still being scheduled.
    waited=0
    while :; do
        master=$(sentinels_master "$self")
        [ -n "$master" ] || master=$(nodes_master)
        [ -z "$master" ] || break
        if [ "$waited" -ge "$FAILOVER_WAIT_S" ]; then
            master=${REDIS_NODES%% *}
            break
        fi
        sleep 2
        waited=$((waited + 2))
    done
    # Written anew at each start (Sentinel needs a writable file; it learns the other
    # sentinels, the replicas and the epoch from the set within seconds).
    sentinel_conf "$master" >"$DATA_DIR/sentinel.conf"
    log "starting sentinel $self watching $SENTINEL_MASTER at $master"
    exec redis-sentinel "$DATA_DIR/sentinel.conf"
}

case ${1:-} in
    redis) start_redis ;;
    sentinel) start_sentinel ;;
    sentinel-conf) sentinel_conf "$2" ;;
    *) log "usage: $0 redis | sentinel | sentinel-conf HOST:PORT" && exit 2 ;;
esac
