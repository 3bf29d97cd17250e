#!/usr/bin/env bash
# Runs the whole test suite: installs the test dependencies, checks formatting and lints, then runs
# every test, including the end-to-end test against the real local model.
set -euo pipefail

cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
