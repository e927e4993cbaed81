#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (which call the Python reference in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CPW_PYTHON="$PWD/.venv/bin/python"
cargo test --release --locked -- --test-threads="${TEST_THREADS:-2}"
