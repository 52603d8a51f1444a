#!/usr/bin/env bash
# Fuzzes every parser of client input with cargo-fuzz (libFuzzer + AddressSanitizer).
# The targets and what they assert are described in fuzz/README.md.
#
#   bash scripts/fuzz.sh                      # CI smoke: every target, 20 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh     # long run: every target, 10 min each
#   bash scripts/fuzz.sh manifest [range ...] # only the named targets
#
# Installs cargo-fuzz if it is missing, builds all targets once, then runs each one for
# FUZZ_SECONDS seconds, starting from the committed corpus fuzz/corpus/<target>. New
# inputs go to fuzz/target/corpus-work/<target> (not committed), so the committed corpus
# only changes by hand (see fuzz/README.md). Exits non-zero if any target crashes, panics,
# times out or exceeds the memory limit, and prints the reproducer under fuzz/artifacts/.
#
# Environment:
#   FUZZ_SECONDS        time per target (default 20)
#   FUZZ_RSS_LIMIT_MB   libFuzzer -rss_limit_mb, also the single-allocation limit (default 2048)
#   FUZZ_TIMEOUT        seconds one input may take before it counts as a hang (default 25)
#   FUZZ_SANITIZER      address (default) or none
#
# cargo-fuzz needs nightly-only compiler flags (-Zsanitizer, sancov passes). Only a stable
# toolchain is assumed, so RUSTC_BOOTSTRAP=1 unlocks them; stable ships the ASan runtime
# (librustc-stable_rt.asan.a) for x86_64-unknown-linux-gnu, so AddressSanitizer works.
# Targets are built with --debug-assertions so that integer overflow panics too.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-20}"
rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}"
timeout="${FUZZ_TIMEOUT:-25}"
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

step() { printf '\n==> %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi
build_flags=(--sanitizer "$sanitizer" --debug-assertions)

step "building fuzz targets (sanitizer: $sanitizer)"
start=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "built in $((SECONDS - start)) s"

failed=()
mkdir -p target/fuzz-logs
for target in "${targets[@]}"; do
    step "fuzzing $target for ${seconds} s"
    work="target/corpus-work/$target"
    log="target/fuzz-logs/$target.log"
    mkdir -p "$work" "corpus/$target" "artifacts/$target"
    before="$(ls -A "artifacts/$target")"
    status=0
    cargo fuzz run "${build_flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" -timeout="$timeout" \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        new="$(comm -13 <(printf '%s\n' "$before" | sort) <(ls -A "artifacts/$target" | sort) | sed '/^$/d')"
        echo "FAILED: $target (exit $status); full log: fuzz/$log"
        for f in $new; do
            echo "reproducer: fuzz/artifacts/$target/$f"
            echo "  rerun:    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target artifacts/$target/$f)"
        done
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\nfuzzing failed: %s\n' "${failed[*]}"
    exit 1
fi
printf '\nall %d fuzz targets ran %d s each without a crash\n' "${#targets[@]}" "$seconds"
