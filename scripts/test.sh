#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks formatting
# and lints, builds the release binary and runs the Rust tests in the same (release)
# profile, then the OCI conformance suite, the real-client end-to-end tests (including
# the model-based concurrency test and the power-cut test), the fuzzers for a bounded
# time, and the benchmark's smoke mode.
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

step "cargo test (release profile: the same build as the binary)"
cargo test --release --workspace --locked

step "OCI distribution-spec conformance suite"
BERTH_BIN="$PWD/target/release/berth" bash scripts/conformance.sh

step "end-to-end tests with real clients"
BERTH_BIN="$PWD/target/release/berth" python3 -m pytest -q tests/e2e

step "fuzzing every parser of client input (bounded time per target)"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh

step "benchmark smoke run"
BERTH_BIN="$PWD/target/release/berth" bash bench/run.sh --smoke
