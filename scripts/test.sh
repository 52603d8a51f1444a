#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks formatting
# and lints, builds the release binary, runs the Rust tests, the real-client end-to-end
# tests and the benchmark's smoke mode.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --release"
cargo build --release --locked

step "cargo test"
cargo test --workspace --locked

step "end-to-end tests with real clients"
BERTH_BIN="$PWD/target/release/berth" python3 -m pytest -q tests/e2e

step "benchmark smoke run"
BERTH_BIN="$PWD/target/release/berth" bash bench/run.sh --smoke
