#!/usr/bin/env bash
# Installs the MCP servers the integration tests run: @modelcontextprotocol/server-everything from
# npm into tests/mcp/node_modules, and the PyPI `mcp` package into target/mcp-venv for
# tests/mcp/fault_server.py. Safe to run again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=$root/target/mcp-venv

if [ ! -x "$root/tests/mcp/node_modules/.bin/mcp-server-everything" ]; then
    (cd "$root/tests/mcp" && npm ci --no-audit --no-fund)
fi

if ! "$venv/bin/python" -c 'import mcp.server.mcpserver' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet 'mcp>=2,<3'
fi
