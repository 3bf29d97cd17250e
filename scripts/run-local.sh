#!/usr/bin/env bash
# Builds and runs the gateway on its embedded defaults against a local SmolLM2 model.
#
# Starts the model server on 127.0.0.1:8081 (installing it first if needed), waits until it
# answers, then runs `xiaomaolv serve` on 127.0.0.1:8080. Ctrl-C or SIGTERM stops both; extra
# arguments go to `xiaomaolv serve`.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/local-model.sh install
cargo build --release

mkdir -p target
scripts/local-model.sh serve 8081 >target/model-server.log 2>&1 &
model_pid=$!
gateway_pid=
stop() {
    [ -n "$gateway_pid" ] && kill -TERM "$gateway_pid" 2>/dev/null
    [ -n "$gateway_pid" ] && wait "$gateway_pid" 2>/dev/null
    kill -TERM "$model_pid" 2>/dev/null || true
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
