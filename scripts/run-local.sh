#!/usr/bin/env bash
# Builds and runs the gateway on its embedded defaults against a local SmolLM2 model.
#
# Starts the model server on 127.0.0.1:8081 (installing it first if needed), waits until it
# responds, then runs `xiaomaolv serve` on 127.0.0.1:8080. Ctrl-C or SIGTERM stops both, and the
# script returns only after both have exited; extra arguments go to `xiaomaolv serve`.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/local-model.sh install
cargo build --release

mkdir -p target
scripts/local-model.sh serve 8081 >target/model-server.log 2>&1 &
model_pid=$!
gateway_pid=
# Seconds the model server gets to exit after SIGTERM before it is sent SIGKILL.
model_stop_timeout=15

# Waits up to $1 seconds for process $2 to exit, and fails if it is still running then.
wait_for_exit() {
    local tenths=$(($1 * 10))
    while kill -0 "$2" 2>/dev/null; do
        [ "$tenths" -gt 0 ] || return 1
        tenths=$((tenths - 1))
        sleep 0.1
    done
}

stop() {
    # A second Ctrl-C must not end this cleanup early and leave the model server running. The
    # gateway and the model server receive that Ctrl-C from the terminal themselves.
    trap '' INT TERM
    if [ -n "$gateway_pid" ]; then
        kill -TERM "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    kill -TERM "$model_pid" 2>/dev/null || true
    if ! wait_for_exit "$model_stop_timeout" "$model_pid"; then
        echo "the model server did not exit within ${model_stop_timeout} s; killing it" >&2
        kill -KILL "$model_pid" 2>/dev/null || true
    fi
    wait "$model_pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

echo "waiting for the model server on 127.0.0.1:8081 (log: target/model-server.log)" >&2
until curl -fsS http://127.0.0.1:8081/v1/models >/dev/null 2>&1; do
    if ! kill -0 "$model_pid" 2>/dev/null; then
        echo "the model server exited; see target/model-server.log" >&2
        exit 1
    fi
    sleep 0.5
done

target/release/xiaomaolv serve "$@" &
gateway_pid=$!
wait "$gateway_pid"
