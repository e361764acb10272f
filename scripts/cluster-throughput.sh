#!/usr/bin/env bash
# Throughput on a Redis Cluster against one Redis server, in the same run: the harness
# (`throughput --queues N`) alternates the two for each N, ROUNDS times, and prints the
# end-to-end rate of each run and the medians.
#
#   scripts/cluster-throughput.sh [CLUSTER_URL] [SINGLE_URL]
#
# CLUSTER_URL defaults to the running test cluster's (scripts/redis-cluster.sh url), SINGLE_URL
# to redis://127.0.0.1:6379. QUEUES (default "1 3 12"), ROUNDS (default 3), MESSAGES (default
# 100000) and CONCURRENCY (default 1) tune it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLUSTER=${1:-$(bash scripts/redis-cluster.sh url)}
SINGLE=${2:-redis://127.0.0.1:6379}
QUEUES=${QUEUES:-"1 3 12"}
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
CONCURRENCY=${CONCURRENCY:-1}
cargo build -q --release -p courier-benches --bin throughput
bin=target/release/throughput
out=$(mktemp)
for n in $QUEUES; do
    for r in $(seq "$ROUNDS"); do
        for target in single cluster; do
            url=$SINGLE
            [[ $target == cluster ]] && url=$CLUSTER
            json=$($bin --backend "$url" --messages "$MESSAGES" --queues "$n" \
                --concurrency "$CONCURRENCY" --latency-samples 50 --json)
            printf '%s %s %s %s\n' "$n" "$target" "$r" "$json" >>"$out"
        done
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    n, target, r, js = line.split(" ", 3)
    rep = json.loads(js)
    rows.setdefault((int(n), target), []).append(rep)
print(f"{'queues':>6} {'target':>8} {'e2e msg/s (runs)':>40} {'median':>9} {'raw med':>9} {'e2e/raw':>8}")
for (n, target), reps in sorted(rows.items()):
    e2e = [r["e2e_per_s"] for r in reps]
    raw = [r["raw_per_s"] for r in reps]
    print(f"{n:>6} {target:>8} {' '.join(f'{x:,.0f}' for x in e2e):>40} "
          f"{statistics.median(e2e):>9,.0f} {statistics.median(raw):>9,.0f} "
          f"{statistics.median(e2e)/statistics.median(raw):>8.3f}")
for n in sorted({n for n, _ in rows}):
    c = statistics.median(r["e2e_per_s"] for r in rows[(n, "cluster")])
    s = statistics.median(r["e2e_per_s"] for r in rows[(n, "single")])
    print(f"queues {n}: cluster / single end to end {c / s:.3f}")
PY
rm -f "$out"
