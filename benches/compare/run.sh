#!/usr/bin/env bash
# Compares aqueduct with Redis Streams and NATS JetStream on this machine.
#
# Installs redis-server and nats-server with apt-get when they are missing (needs root). Starts
# two Redis servers (appendfsync everysec and always) and one NATS server with JetStream, each
# on a free port on 127.0.0.1 with its data in a new temporary directory. Runs the harness in
# release mode, then stops the servers and removes the directory.
#
# Usage: benches/compare/run.sh [HARNESS OPTIONS]
# Options and COMPARE_* environment variables go to the harness; see
# `cargo run --release --manifest-path benches/compare/Cargo.toml -- --help`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# Seconds to wait for a server to accept connections.
ready_timeout=30

log() { echo "run.sh: $*" >&2; }

install_servers() {
    local missing=()
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        log "missing ${missing[*]}; run as root or install them with: apt-get install ${missing[*]}"
        exit 1
    fi
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Process ids of the servers this script started, stopped by cleanup.
server_pids=()
work=""

cleanup() {
    local status=$?
    for pid in "${server_pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${server_pids[@]}"; do
        # A server that ignores SIGTERM for 10 s is killed.
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$work" ] && [ -d "$work" ]; then
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until a TCP port on 127.0.0.1 accepts connections, or fails after $ready_timeout s.
wait_for_port() {
    local name=$1 port=$2 pid=$3 logfile=$4
    for _ in $(seq $((ready_timeout * 10))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; its log:"
            cat "$logfile" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    log "$name did not accept connections on 127.0.0.1:$port within $ready_timeout s; its log:"
    cat "$logfile" >&2
    exit 1
}

# Starts a Redis server with append-only persistence and the given appendfsync policy.
# Prints its port.
start_redis() {
    local name=$1 fsync=$2
    local port dir conf
    port="$("$harness" --free-port)"
    dir="$work/$name"
    conf="$work/$name.conf"
    mkdir -p "$dir"
    cat >"$conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
daemonize no
dir $dir
logfile $work/$name.log
# Append-only file only: no RDB snapshots, and no automatic AOF rewrite, which would fork
# and write the whole data set in the middle of a scenario.
save ""
appendonly yes
appendfsync $fsync
auto-aof-rewrite-percentage 0
EOF
    redis-server "$conf" >/dev/null 2>&1 &
    server_pids+=("$!")
    wait_for_port "$name" "$port" "$!" "$work/$name.log"
    until [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]; do
        sleep 0.1
    done
    redis_port=$port
}

start_nats() {
    local port
    port="$("$harness" --free-port)"
    mkdir -p "$work/nats"
    cat >"$work/nats.conf" <<EOF
listen: 127.0.0.1:$port
server_name: aqueduct-compare
log_file: "$work/nats.log"
jetstream {
  store_dir: "$work/nats"
}
EOF
    nats-server -c "$work/nats.conf" >/dev/null 2>&1 &
    server_pids+=("$!")
    wait_for_port nats "$port" "$!" "$work/nats.log"
    # JetStream is set up before the server logs that it is ready for connections.
    for _ in $(seq $((ready_timeout * 10))); do
        if grep -q "Server is ready" "$work/nats.log" 2>/dev/null; then
            nats_port=$port
            return
        fi
        sleep 0.1
    done
    log "nats-server did not report ready within $ready_timeout s; its log:"
    cat "$work/nats.log" >&2
    exit 1
}

install_servers

log "building the harness (release)"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
harness="$here/target/release/aqueduct-compare"

work="$(mktemp -d -t aqueduct-compare.XXXXXX)"
mkdir -p "$work/aqueduct"

start_redis redis-buffered everysec
redis_buffered_port=$redis_port
start_redis redis-flushed always
redis_flushed_port=$redis_port
start_nats

commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$root" status --porcelain -- broker 2>/dev/null)" ]; then
    commit="$commit with uncommitted changes in broker/"
fi

echo "started $(date -u '+%Y-%m-%d %H:%M:%S') UTC on $(uname -srm), $(nproc) cores"
echo "scratch directory $work ($(df -PT "$work" | awk 'NR == 2 { print $2 }'))"
echo

# The broker's databases go under the scratch directory too, on the same file system.
TMPDIR="$work/aqueduct" "$harness" \
    --redis-buffered-url "redis://127.0.0.1:$redis_buffered_port" \
    --redis-flushed-url "redis://127.0.0.1:$redis_flushed_port" \
    --nats-url "nats://127.0.0.1:$nats_port" \
    --commit "$commit" \
    "$@"

echo
echo "finished $(date -u '+%Y-%m-%d %H:%M:%S') UTC"
