#!/usr/bin/env bash
# Load benchmark of `POST /v1/messages` against a zero-latency fake model, on loopback only.
#
#   bench/load.sh
#
# The script builds the release binary and starts nginx as the fake model and the gateway, both on
# 127.0.0.1. It checks that one message makes exactly one upstream call. Then each repeat runs:
#   closed loop  wrk -t2 -c16 and -c64, a warm-up and then the measured window, against the fake
#                directly, the gateway with a new session per request, and the gateway with one
#                shared session.
#   open loop    oha at fixed rates with --latency-correction -c 64, against the fake directly and
#                then the gateway at the same rate.
# It prints the results table (medians over repeats) and stops everything it started on exit.
#
# Settings, from the environment:
#   BENCH_REPEATS      repeats of the whole series (default 2)
#   BENCH_WARMUP_S     closed-loop warm-up per series, in seconds (default 5)
#   BENCH_DURATION_S   measured window per series, in seconds (default 20)
#   BENCH_RATES        open-loop rates in requests/s (default "30 500 2000")
#   BENCH_SERIES       which series to run: "closed", "open" or both (default "closed open")
#   BENCH_GATEWAY_PORT loopback port of the gateway (default 18090)
#   BENCH_FAKE_PORT    loopback port of the fake model (default 18091)
#   BENCH_WORK_DIR     scratch directory, emptied at start (default /tmp/xiaomaolv-bench)
#   BENCH_SKIP_BUILD   set to 1 to use the existing target/release/xiaomaolv
#   BENCH_BINARY       gateway binary to measure instead of target/release/xiaomaolv; implies
#                      BENCH_SKIP_BUILD=1 (for comparing two builds)
#   BENCH_WORKER_THREADS  the gateway's app.worker_threads (default 0, picked by the CPU count)
#
# Needs nginx (Debian nginx-light), wrk, oha (`cargo install oha --locked`), curl and python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bench_dir=$root/bench
repeats=${BENCH_REPEATS:-2}
warmup_s=${BENCH_WARMUP_S:-5}
duration_s=${BENCH_DURATION_S:-20}
rates=${BENCH_RATES:-"30 500 2000"}
series=${BENCH_SERIES:-"closed open"}
gateway_port=${BENCH_GATEWAY_PORT:-18090}
fake_port=${BENCH_FAKE_PORT:-18091}
work_dir=${BENCH_WORK_DIR:-/tmp/xiaomaolv-bench}
worker_threads=${BENCH_WORKER_THREADS:-0}
binary=${BENCH_BINARY:-$root/target/release/xiaomaolv}

gateway_url=http://127.0.0.1:$gateway_port
fake_url=http://127.0.0.1:$fake_port
results=$work_dir/results.tsv
clock_ticks=$(getconf CLK_TCK)
chat_body='{"model":"fake","messages":[{"role":"user","content":"ping"}],"stream":false}'
# Upstream calls made by the check; each must reach the fake exactly once.
check_messages=100

fake_pid=
gateway_pid=
# CPU time of the last measured window in clock ticks, set by measure_window.
window_gateway_ticks=0
window_fake_ticks=0
window_other_ticks=0

log() {
    printf '[load.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

fail() {
    log "error: $*"
    exit 1
}

stop_process() {
    local pid=$1 signal=$2 name=$3
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill "-$signal" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop within 10 s of SIG$signal; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    log "stopped $name (pid $pid)"
}

cleanup() {
    stop_process "$gateway_pid" TERM gateway
    gateway_pid=
    # SIGQUIT is nginx's graceful shutdown: the master stops its worker and removes the pid file.
    stop_process "$fake_pid" QUIT nginx
    fake_pid=
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

require_tool() {
    command -v "$1" >/dev/null 2>&1 || fail "$1 is not installed; $2"
}

check_port_free() {
    if ss -Htln "sport = :$1" | grep -q .; then
        fail "port $1 is already in use; stop its listener or set $2 to a free port"
    fi
}

# Waits up to 10 s for a GET of $1 to return 2xx.
wait_until_ready() {
    local url=$1 name=$2 pid=$3
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || fail "$name exited during startup; see $work_dir/$name.log"
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "$name did not answer $url within 10 s; see $work_dir/$name.log"
}

# Writes the nginx config; $1 is the access log: a file path, or `off`.
render_fake_config() {
    sed -e "s|@PREFIX@|$work_dir/nginx|g" \
        -e "s|@PORT@|$fake_port|g" \
        -e "s|@ACCESS_LOG@|$1|g" \
        "$bench_dir/nginx.conf.template" >"$work_dir/nginx/nginx.conf"
}

start_fake() {
    mkdir -p "$work_dir/nginx"
    render_fake_config "$work_dir/nginx/access.log"
    nginx -t -q -p "$work_dir/nginx" -e "$work_dir/nginx/error.log" -c "$work_dir/nginx/nginx.conf"
    nginx -p "$work_dir/nginx" -e "$work_dir/nginx/error.log" -c "$work_dir/nginx/nginx.conf" \
        -g 'daemon off;' >"$work_dir/nginx.log" 2>&1 &
    fake_pid=$!
    wait_until_ready "$fake_url/v1/models" nginx "$fake_pid"
    log "started nginx fake model (pid $fake_pid) on $fake_url"
}

# Reloads nginx with the access log off, as the measured series need it.
disable_fake_access_log() {
    render_fake_config off
    nginx -t -q -p "$work_dir/nginx" -e "$work_dir/nginx/error.log" -c "$work_dir/nginx/nginx.conf"
    kill -HUP "$fake_pid"
    # The old worker closes its idle keep-alive connections; give it time to exit before load.
    sleep 2
    wait_until_ready "$fake_url/v1/models" nginx "$fake_pid"
}

start_gateway() {
    sed -e "s|@GATEWAY_PORT@|$gateway_port|g" \
        -e "s|@FAKE_PORT@|$fake_port|g" \
        -e "s|@WORK_DIR@|$work_dir|g" \
        -e "s|@WORKER_THREADS@|$worker_threads|g" \
        "$bench_dir/gateway.toml.template" >"$work_dir/gateway.toml"
    "$binary" serve --config "$work_dir/gateway.toml" >"$work_dir/gateway.log" 2>&1 &
    gateway_pid=$!
    wait_until_ready "$gateway_url/health" gateway "$gateway_pid"
    log "started gateway (pid $gateway_pid) on $gateway_url"
}

# Prints utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    # The command name in field 2 may contain spaces, so count fields after its closing bracket.
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# Prints the nginx worker's pid; the fake runs exactly one worker.
fake_worker_pid() {
    pgrep -P "$fake_pid" | head -n 1
}

# Writes "PID TICKS" for every process, where TICKS is its utime + stime plus that of its reaped
# children (fields 14 to 17 of /proc/PID/stat).
snapshot_process_ticks() {
    # cat skips processes that exit while it reads, where awk would stop at the missing file.
    # It then exits with status 1, which must not end the script under pipefail.
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
        awk '{ pid = $1; sub(/^.*\) /, ""); print pid, $12 + $13 + $14 + $15 }' >"$1"
}

# Prints the CPU ticks that processes other than this script, its children, nginx and the
# gateway used between two snapshots. It is an estimate: a process that exits between them counts
# with its whole lifetime when its parent reaps it, and not at all when no process reaps it.
other_process_ticks() {
    awk -v excluded="$$ $gateway_pid $fake_pid $3" '
        BEGIN { split(excluded, list, " "); for (i in list) skip[list[i]] = 1 }
        NR == FNR { before[$1] = $2; next }
        !($1 in skip) { total += $2 - (($1 in before) ? before[$1] : 0) }
        END { print total + 0 }
    ' "$1" "$2"
}

# Runs a load generator and sets window_gateway_ticks, window_fake_ticks and window_other_ticks.
# Other is the CPU time of every other process, such as a compiler, a test suite or a kernel
# thread. It excludes the load generator, whose time is added to this script when it exits.
#   measure_window NAME COMMAND [ARGS...]
measure_window() {
    local name=$1
    shift
    local worker gateway_before fake_before
    worker=$(fake_worker_pid)
    snapshot_process_ticks "$work_dir/raw/$name.ticks-before"
    gateway_before=$(cpu_ticks "$gateway_pid")
    fake_before=$(cpu_ticks "$worker")
    "$@" || fail "$1 failed in series $name; see $work_dir/raw/$name.*"
    window_gateway_ticks=$(($(cpu_ticks "$gateway_pid") - gateway_before))
    window_fake_ticks=$(($(cpu_ticks "$worker") - fake_before))
    snapshot_process_ticks "$work_dir/raw/$name.ticks-after"
    window_other_ticks=$(other_process_ticks "$work_dir/raw/$name.ticks-before" \
        "$work_dir/raw/$name.ticks-after" "$worker")
    rm -f "$work_dir/raw/$name.ticks-before" "$work_dir/raw/$name.ticks-after"
}

rss_kib() {
    awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"
}

send_message() {
    curl -fsS --max-time 10 -H 'Content-Type: application/json' \
        -d "{\"session_id\":\"$1\",\"user_id\":\"bench\",\"text\":\"ping\"}" \
        "$gateway_url/v1/messages"
}

# Sends messages one by one and checks each reply and the upstream call count in the access log.
# The access log already contains the call of the first message, sent before this check.
check_one_upstream_call_per_message() {
    local reply calls expected=$((check_messages + 1))
    for i in $(seq "$check_messages"); do
        reply=$(send_message "check-$((i % 10))") || fail "check message $i failed"
        grep -qF '"reply":"pong"' <<<"$reply" ||
            fail "check message $i returned an unexpected body: $reply"
    done
    calls=$(grep -c 'POST /v1/chat/completions' "$work_dir/nginx/access.log" || true)
    if [ "$calls" != "$expected" ]; then
        fail "$expected messages made $calls upstream calls; expected exactly one each"
    fi
    if grep -v '" 200 ' "$work_dir/nginx/access.log" | grep -q .; then
        fail "the fake model returned a non-200 status; see $work_dir/nginx/access.log"
    fi
    log "check passed: $expected messages, $calls upstream calls, all 200 with reply pong"
}

# Appends one row for the last measure_window to the results table; summarize.py lists the columns.
#   record_window KIND REPEAT TARGET MODE LOAD RAW_OUTPUT WARMUP_OUTPUT
record_window() {
    local target_ticks=$window_gateway_ticks
    [ "$3" = fake ] && target_ticks=$window_fake_ticks
    local fields=("$1" "$2" "$3" "$4" "$5" "$target_ticks" "$window_other_ticks" \
        "$clock_ticks" "$duration_s" "$6" "$7")
    (IFS=$'\t' && echo "${fields[*]}") >>"$results"
}

# Runs one closed-loop series: warm-up, then the measured window with the target's CPU counted.
#   closed_series REPEAT TARGET MODE CONNECTIONS URL SCRIPT [SCRIPT ARGS...]
closed_series() {
    local repeat=$1 target=$2 mode=$3 connections=$4 url=$5 script=$6
    shift 6
    local name="closed-$target-$mode-c$connections-r$repeat"
    log "closed loop: $target $mode c$connections (repeat $repeat)"
    wrk -t2 "-c$connections" "-d${warmup_s}s" --timeout 10s -s "$script" "$url" \
        -- "$name-warmup" "$@" >"$work_dir/raw/$name-warmup.txt"
    measure_window "$name" wrk -t2 "-c$connections" "-d${duration_s}s" --timeout 10s --latency \
        -s "$script" "$url" -- "$name" "$@" >"$work_dir/raw/$name.txt"
    record_window closed "$repeat" "$target" "$mode" "c$connections" \
        "$work_dir/raw/$name.txt" "$work_dir/raw/$name-warmup.txt"
}

# Writes BODIES unique request bodies, one per line, for oha -Z.
write_message_bodies() {
    awk -v tag="$1" -v count="$2" 'BEGIN {
        for (i = 1; i <= count; i++)
            printf "{\"session_id\":\"%s-%d\",\"user_id\":\"bench\",\"text\":\"ping\"}\n", tag, i
    }' >"$3"
}

# Runs one open-loop series at a fixed rate with the target's CPU counted.
#   open_series REPEAT TARGET RATE
open_series() {
    local repeat=$1 target=$2 rate=$3
    local name="open-$target-q$rate-r$repeat"
    local url=$gateway_url/v1/messages
    local body_args=()
    if [ "$target" = fake ]; then
        url=$fake_url/v1/chat/completions
        body_args=(-d "$chat_body")
    else
        # oha picks a line at random for each request. Ten lines per expected request keep
        # repeated sessions to about 5% of requests; each repeat is a second turn on a session.
        local bodies=$work_dir/raw/$name.bodies
        write_message_bodies "$name" "$((rate * duration_s * 10))" "$bodies"
        body_args=(-Z "$bodies")
    fi
    log "open loop: $target at $rate requests/s (repeat $repeat)"
    measure_window "$name" oha --no-tui -q "$rate" --latency-correction -c 64 \
        -z "${duration_s}s" --wait-ongoing-requests-after-deadline -m POST -T application/json \
        "${body_args[@]}" --output-format json -o "$work_dir/raw/$name.json" "$url"
    rm -f "$work_dir/raw/$name.bodies"
    record_window open "$repeat" "$target" - "q$rate" "$work_dir/raw/$name.json" -
}

run_repeat() {
    local repeat=$1
    [[ " $series " == *" closed "* ]] && run_closed_series "$repeat"
    [[ " $series " == *" open "* ]] && run_open_series "$repeat"
    return 0
}

run_closed_series() {
    local repeat=$1
    for connections in 16 64; do
        closed_series "$repeat" fake direct "$connections" \
            "$fake_url/v1/chat/completions" "$bench_dir/chat.lua"
    done
    for connections in 16 64; do
        closed_series "$repeat" gateway unique "$connections" \
            "$gateway_url/v1/messages" "$bench_dir/messages.lua"
    done
    for connections in 16 64; do
        closed_series "$repeat" gateway single "$connections" \
            "$gateway_url/v1/messages" "$bench_dir/messages.lua" single
    done
}

run_open_series() {
    local repeat=$1
    for rate in $rates; do
        open_series "$repeat" fake "$rate"
        open_series "$repeat" gateway "$rate"
    done
}

main() {
    require_tool nginx "install it with: apt-get install -y nginx-light"
    require_tool wrk "install it with: apt-get install -y wrk"
    require_tool oha "install it with: cargo install oha --locked"
    require_tool curl "install it with: apt-get install -y curl"
    require_tool python3 "install it with: apt-get install -y python3"
    check_port_free "$gateway_port" BENCH_GATEWAY_PORT
    check_port_free "$fake_port" BENCH_FAKE_PORT

    if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BINARY:-}" ]; then
        log "building the release binary"
        (cd "$root" && cargo build --release --quiet) || fail "cargo build --release failed"
    fi
    [ -x "$binary" ] || fail "$binary is missing; run cargo build --release"

    # Refuse to empty a directory that an earlier run of this script did not create.
    if [ -n "$(ls -A "$work_dir" 2>/dev/null)" ] && [ ! -f "$work_dir/results.tsv" ]; then
        fail "$work_dir is not empty and has no results.tsv; set BENCH_WORK_DIR to a new directory"
    fi
    rm -rf "$work_dir"
    mkdir -p "$work_dir/raw"
    : >"$results"

    start_fake
    start_gateway
    local rss_idle rss_one
    rss_idle=$(rss_kib "$gateway_pid" VmRSS)
    send_message check-first >/dev/null || fail "the first message failed; see $work_dir/gateway.log"
    rss_one=$(rss_kib "$gateway_pid" VmRSS)
    check_one_upstream_call_per_message
    disable_fake_access_log

    for repeat in $(seq "$repeats"); do
        run_repeat "$repeat"
    done

    local rss_after hwm db_bytes wal_bytes
    rss_after=$(rss_kib "$gateway_pid" VmRSS)
    hwm=$(rss_kib "$gateway_pid" VmHWM)
    db_bytes=$(stat -c %s "$work_dir/xiaomaolv.db")
    wal_bytes=$(stat -c %s "$work_dir/xiaomaolv.db-wal" 2>/dev/null || echo 0)

    python3 "$bench_dir/summarize.py" "$results" \
        --rss-kib "$rss_idle" "$rss_one" "$rss_after" "$hwm" \
        --store-bytes "$db_bytes" "$wal_bytes"
    log "raw wrk and oha output is in $work_dir/raw"
}

main "$@"
