#!/usr/bin/env bash
# Added latency of the gateway next to two floors, at one open-loop rate, on loopback only.
#
#   bench/floor.sh
#
# The floors are two modes of the `bench_floor` example. "proxy" forwards each message to the fake
# model with the gateway's HTTP crates and no store. "sqlite" also reads the history and writes
# the turn in SQLite on the runtime thread, and it never checkpoints. Each repeat takes the
# targets in turn, and for each one measures the fake alone and then that target at the same rate
# (oha --latency-correction -c 64), on a new database after a warm-up. Added latency is the
# target's percentile minus the fake's, from the run right before it.
#
# Settings, from the environment:
#   FLOOR_RATE        requests/s (default 2000)
#   FLOOR_DURATION_S  measured window per run, in seconds (default 12)
#   FLOOR_WARMUP_S    warm-up of each target, in seconds (default 6)
#   FLOOR_REPEATS     repeats of the whole series (default 3)
#   FLOOR_TARGETS     targets in the order they run (default "proxy sqlite gateway")
#   FLOOR_WORK_DIR    scratch directory, deleted and made again at start and kept afterwards with
#                     the raw oha output (default /tmp/xiaomaolv-floor)
#   BENCH_BINARY      gateway binary (default target/release/xiaomaolv)
#   BENCH_SKIP_BUILD  set to 1 to use the binaries already built
#
# Needs nginx (Debian nginx-light), oha (`cargo install oha --locked`), curl and python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
rate=${FLOOR_RATE:-2000}
duration_s=${FLOOR_DURATION_S:-12}
warmup_s=${FLOOR_WARMUP_S:-6}
repeats=${FLOOR_REPEATS:-3}
targets=${FLOOR_TARGETS:-"proxy sqlite gateway"}
work_dir=${FLOOR_WORK_DIR:-/tmp/xiaomaolv-floor}
gateway=${BENCH_BINARY:-$root/target/release/xiaomaolv}
floor=$root/target/release/examples/bench_floor
target_port=18290
fake_port=18291
fake_pid=
target_pid=

log() {
    printf '[floor.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2
}

stop() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop "$target_pid"
    stop "$fake_pid"
}
trap cleanup EXIT

for tool in nginx oha curl python3; do
    command -v "$tool" >/dev/null || { log "error: $tool is not installed"; exit 1; }
done
for name in $targets; do
    case $name in
        proxy | sqlite | gateway) ;;
        *) log "error: unknown target '$name' in FLOOR_TARGETS; use proxy, sqlite or gateway"; exit 1 ;;
    esac
done
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    (cd "$root" && cargo build --release --bin xiaomaolv --example bench_floor)
fi
for binary in "$gateway" "$floor"; do
    if [ ! -x "$binary" ]; then
        log "error: $binary is not an executable file; build it, or unset BENCH_SKIP_BUILD and BENCH_BINARY"
        exit 1
    fi
done

rm -rf "$work_dir"
mkdir -p "$work_dir/nginx"
sed -e "s|@PREFIX@|$work_dir/nginx|g" -e "s|@PORT@|$fake_port|g" -e "s|@ACCESS_LOG@|off|g" \
    "$root/bench/nginx.conf.template" > "$work_dir/nginx/nginx.conf"
nginx -p "$work_dir/nginx" -e "$work_dir/nginx/error.log" -c "$work_dir/nginx/nginx.conf" \
    -g 'daemon off;' &
fake_pid=$!

# oha takes each body at random from this file of 10 session ids per planned request, as
# bench/load.sh does, so about 5% of requests are a second turn on a session.
awk -v count=$((rate * (duration_s + warmup_s) * 10)) 'BEGIN { for (i = 1; i <= count; i++)
    printf "{\"session_id\":\"floor-%d\",\"user_id\":\"bench\",\"text\":\"ping\"}\n", i }' \
    > "$work_dir/bodies"

# run_oha NAME SECONDS URL runs oha once at the open-loop rate and writes its JSON summary to
# $work_dir/NAME.json.
run_oha() {
    oha --no-tui -q "$rate" --latency-correction -c 64 -z "${2}s" \
        --wait-ongoing-requests-after-deadline -m POST -T application/json \
        -Z "$work_dir/bodies" --output-format json -o "$work_dir/$1.json" "$3" >/dev/null
}

start_target() {
    local name=$1 data=$work_dir/data model=http://127.0.0.1:$fake_port/v1
    local command
    rm -rf "$data"
    mkdir -p "$data"
    case $name in
        proxy) command=("$floor" "127.0.0.1:$target_port" "$model/chat/completions") ;;
        sqlite) command=("$floor" "127.0.0.1:$target_port" "$model/chat/completions" "$data/floor.db") ;;
        gateway)
            cat > "$data/gateway.toml" <<EOF
[app]
bind = "127.0.0.1:$target_port"
default_provider = "fake"
[store]
url = "sqlite://$data/xiaomaolv.db"
[providers.fake]
kind = "openai-compatible"
base_url = "$model"
model = "fake"
EOF
            command=("$gateway" serve --config "$data/gateway.toml") ;;
        *) log "error: unknown target $name"; exit 1 ;;
    esac
    "${command[@]}" > "$work_dir/$name.log" 2>&1 &
    target_pid=$!
    for _ in $(seq 100); do
        curl -fsS -o /dev/null -X POST -H 'content-type: application/json' \
            -d '{"session_id":"floor-check","user_id":"bench","text":"ping"}' \
            "http://127.0.0.1:$target_port/v1/messages" 2>/dev/null && return 0
        sleep 0.1
    done
    log "error: $name did not answer within 10 s; see $work_dir/$name.log"
    exit 1
}

cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

rows=$work_dir/rows.tsv
: > "$rows"
for repeat in $(seq "$repeats"); do
    for name in $targets; do
        log "repeat $repeat: the fake, then $name, at $rate/s"
        run_oha fake "$duration_s" "http://127.0.0.1:$fake_port/v1/chat/completions"
        start_target "$name"
        run_oha warm "$warmup_s" "http://127.0.0.1:$target_port/v1/messages"
        before=$(cpu_ticks "$target_pid")
        run_oha target "$duration_s" "http://127.0.0.1:$target_port/v1/messages"
        after=$(cpu_ticks "$target_pid")
        stop "$target_pid"
        target_pid=
        python3 - "$work_dir" "$repeat" "$name" "$((after - before))" "$(getconf CLK_TCK)" \
            "$rate" "$duration_s" >> "$rows" <<'EOF'
import json, sys
work, repeat, name, ticks, hz, rate, seconds = sys.argv[1:]
def load(run):
    summary = json.load(open(f"{work}/{run}.json"))
    codes = summary["statusCodeDistribution"]
    failed = sum(n for code, n in codes.items() if code != "200")
    failed += sum(summary.get("errorDistribution", {}).values())
    p = summary["latencyPercentiles"]
    return p["p50"] * 1000, p["p99"] * 1000, p["p99.9"] * 1000, failed
fake, target = load("fake"), load("target")
cpu_ms = int(ticks) * 1000 / int(hz) / (int(rate) * int(seconds))
print("\t".join([repeat, name] + ["%.3f" % v for v in (
    fake[0], fake[1], target[0], target[1], target[2],
    target[0] - fake[0], target[1] - fake[1], cpu_ms)] + [str(fake[3]), str(target[3])]))
EOF
        tail -n 1 "$rows" >&2
    done
done

python3 - "$rows" "$rate" <<'EOF'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
print("Latency in ms. Failed counts non-200 responses and errors of the fake run, then the target run.")
print(f"| repeat | target | fake p50 / p99 | target p50 / p99 / p99.9 | added p50 / p99 "
      f"| CPU ms per message | failed |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} / {r[3]} | {r[4]} / {r[5]} / {r[6]} | {r[7]} / {r[8]} "
          f"| {r[9]} | {r[10]} / {r[11]} |")
print()
print(f"Median added p99 at {sys.argv[2]}/s:")
for name in dict.fromkeys(r[1] for r in rows):
    values = [float(r[8]) for r in rows if r[1] == name]
    print(f"  {name}: {statistics.median(values):.3f} ms "
          f"[{min(values):.3f}-{max(values):.3f}], repeats: {len(values)}")
EOF
