#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: build tools for llama.cpp, Node.js
# for the npm MCP server, Prometheus and promtool, the PostgreSQL server, the local model server,
# and the MCP test servers. Safe to run again; it skips what is already there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(build-essential)
command -v npm >/dev/null || missing+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# promtool and the Prometheus server, for the tests of the metrics endpoint and deploy/prometheus.
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
# initdb and postgres, for the PostgreSQL store tests, which start their own cluster with them.
# Debian keeps them off PATH, in /usr/lib/postgresql/VERSION/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]}; install them with apt-get as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

"$root/scripts/local-model.sh" install
"$root/scripts/test-mcp-servers.sh"
