#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks formatting
# and lints, builds the release binary and runs the Rust tests in the same (release)
# profile (the API tests a second time on a throwaway PostgreSQL with blobs on a
# throwaway S3 server, LDAP sign-in on a throwaway OpenLDAP), then the OCI conformance suite, the real-client end-to-end tests (including
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

step "starting a throwaway PostgreSQL, OpenLDAP, S3 server, Azure Blob Storage and GCS emulators and a single-node Swift for the tests"
pgdir=$(mktemp -d)
chmod 755 "$pgdir"
trap 'bash scripts/postgres.sh stop "$pgdir/pg" || true; bash scripts/slapd.sh stop "$pgdir/ldap" || true; bash scripts/s3.sh stop "$pgdir/s3" || true; bash scripts/azurite.sh stop "$pgdir/azure" || true; bash scripts/gcs.sh stop "$pgdir/gcs" || true; bash scripts/swift.sh stop "$pgdir/swift" || true; bash scripts/keystone.sh stop "$pgdir/keystone" || true; rm -rf "$pgdir"' EXIT
pg_url=$(bash scripts/postgres.sh start "$pgdir/pg" "${BERTH_TEST_PG_PORT:-55439}")
ldap_url=$(bash scripts/slapd.sh start "$pgdir/ldap" "${BERTH_TEST_LDAP_PORT:-55389}")
s3_url=$(bash scripts/s3.sh start "$pgdir/s3" "${BERTH_TEST_S3_PORT:-55490}")
azure_url=$(bash scripts/azurite.sh start "$pgdir/azure" "${BERTH_TEST_AZURE_PORT:-55492}")
gcs_url=$(bash scripts/gcs.sh start "$pgdir/gcs" "${BERTH_TEST_GCS_PORT:-55493}")
# Swift's proxy on this port, its backends and memcached on the next four; it takes
# TempAuth's tokens and those of the Keystone started first (whose catalog names it).
swift_port=${BERTH_TEST_SWIFT_PORT:-55494}
keystone_url=$(bash scripts/keystone.sh start "$pgdir/keystone" "${BERTH_TEST_KEYSTONE_PORT:-55499}" "$swift_port")
swift_url=$(bash scripts/swift.sh start "$pgdir/swift" "$swift_port" "$keystone_url")

# Every cargo test below selects from the whole workspace, so features unify as in the
# build above and nothing is compiled again.
step "cargo test (release profile: the same build as the binary), LDAP sign-in against OpenLDAP"
BERTH_TEST_LDAP="$ldap_url" BERTH_TEST_LDAP_CA="$pgdir/ldap/ca.pem" cargo test --release --workspace --locked

step "the API tests again on PostgreSQL with blobs in S3, PostgreSQL's own race tests, the storage suite on S3, Azure, GCS and Swift (TempAuth and Keystone v3)"
BERTH_TEST_POSTGRES="$pg_url" BERTH_TEST_S3="$s3_url" BERTH_TEST_AZURE="$azure_url" BERTH_TEST_GCS="$gcs_url" BERTH_TEST_SWIFT="$swift_url" BERTH_TEST_KEYSTONE="$keystone_url" cargo test --release --workspace --locked --lib --test api --test postgres --test gc

step "OCI distribution-spec conformance suite, on the filesystem and on S3 + PostgreSQL"
BERTH_BIN="$PWD/target/release/berth" BERTH_TEST_S3="$s3_url" BERTH_TEST_POSTGRES="$pg_url" bash scripts/conformance.sh

step "end-to-end tests with real clients"
BERTH_BIN="$PWD/target/release/berth" BERTH_TEST_POSTGRES="$pg_url" BERTH_TEST_S3="$s3_url" BERTH_TEST_AZURE="$azure_url" BERTH_TEST_GCS="$gcs_url" BERTH_TEST_SWIFT="$swift_url" python3 -m pytest -q tests/e2e

step "fuzzing every parser of client input (bounded time per target)"
FUZZ_SECONDS="${FUZZ_SECONDS:-15}" bash scripts/fuzz.sh

step "benchmark smoke run"
BERTH_BIN="$PWD/target/release/berth" bash bench/run.sh --smoke
BERTH_BIN="$PWD/target/release/berth" python3 bench/objects.py --smoke
BERTH_BIN="$PWD/target/release/berth" python3 bench/gc.py --smoke
