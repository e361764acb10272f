#!/usr/bin/env bash
# Run every program in examples/ on memory:// and on a fresh SQLite file each, as CI does.
# Builds the examples once, then runs each binary; fails on a non-zero exit or a run longer
# than 60 s. Prints each run's time. Usage: scripts/examples.sh [EXAMPLE...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --examples -p courier
bin=target/debug/examples
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if (($# > 0)); then
    names=("$@")
else
    names=()
    for f in examples/*.rs; do
        names+=("$(basename "$f" .rs)")
    done
fi

failed=0
for name in "${names[@]}"; do
    for url in "memory://" "sqlite://$tmp/$name.db"; do
        start=$(date +%s%N)
        rc=0
        timeout 60 "$bin/$name" "$url" >"$tmp/$name.out" 2>&1 </dev/null || rc=$?
        ms=$((($(date +%s%N) - start) / 1000000))
        if ((rc == 0)); then
            printf 'ok     %-24s %-10s %6d ms\n' "$name" "${url%%://*}" "$ms"
        else
            ((rc == 124)) && why="timed out after 60 s" || why="exit $rc"
            printf 'FAILED %-24s %-10s %6d ms (%s)\n' "$name" "${url%%://*}" "$ms" "$why"
            sed 's/^/    /' "$tmp/$name.out"
            failed=1
        fi
    done
done
exit "$failed"
