#!/usr/bin/env bash
# Appends the results of the single-purpose benchmarks (SQL, capture, auth,
# standby, WAL, webhooks, retention) to benches/results/latest.md, after benches/run.sh wrote it, so
# that one file holds every number of a `make bench` run.
set -euo pipefail
RESULTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/results"
{
    echo
    echo "# Other benchmarks of this run"
    for name in sql capture auth standby wal webhooks retention; do
        [ -f "$RESULTS/$name.md" ] || continue
        echo
        echo "<!-- benches/results/$name.md (benches/$name.sh) -->"
        # One level down: their titles become sections of latest.md.
        sed 's/^# /## /' "$RESULTS/$name.md"
    done
} >>"$RESULTS/latest.md"
