#!/usr/bin/env bash
# `make fuzz`: every libFuzzer target of fuzz/ for a bounded time, one at a
# time in one process (no -jobs/-workers: one core), starting from the
# committed corpus. Prints each target's executions, coverage and crashes.
#   FUZZ_SECONDS   seconds per target (default 60)
#   FUZZ_TARGETS   space-separated subset (default: all, see fuzz/Cargo.toml)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# New inputs go to a scratch corpus (not the committed one: keep it small);
# a crash is written to fuzz/artifacts/<target>/ and stops the run. Make it
# a regression: minimise it (`cargo +nightly fuzz tmin --fuzz-dir fuzz
# <target> <file>`), copy it into fuzz/regressions/<target>/, then fix the
# parser and add a unit test beside it. `cargo test -p ds-fuzz` (part of
# `make test`) replays corpus and regressions on stable.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS="${FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir .)}"
SCRATCH="${FUZZ_SCRATCH:-$(mktemp -d /tmp/ds-fuzz.XXXXXX)}"
cargo +nightly fuzz build --fuzz-dir . -O
for target in $TARGETS; do
    mkdir -p "$SCRATCH/$target"
    echo "== $target (${SECONDS_EACH}s)"
    status=0
    cargo +nightly fuzz run --fuzz-dir . -O "$target" "$SCRATCH/$target" "corpus/$target" \
        "regressions/$target" -- -max_total_time="$SECONDS_EACH" -max_len=4096 \
        -print_final_stats=1 >"$SCRATCH/$target.log" 2>&1 || status=$?
    grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|thread .* panicked|SUMMARY)' \
        "$SCRATCH/$target.log" || true
    if [ "$status" != 0 ]; then
        tail -40 "$SCRATCH/$target.log" >&2
    fi
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "crash inputs in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "scratch corpus (new inputs found): $SCRATCH"
