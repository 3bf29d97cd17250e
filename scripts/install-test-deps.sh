#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine: build tools for llama.cpp and the
# local model server. Safe to run again; it skips what is already there.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

packages=(cmake build-essential python3-venv)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: ${missing[*]}; install them with apt-get as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

"$root/scripts/local-model.sh" install
