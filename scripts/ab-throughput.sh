#!/usr/bin/env bash
# A/B the throughput harness of two builds, in turn, pair by pair (same machine, same minutes).
#
#   scripts/ab-throughput.sh BEFORE_BIN AFTER_BIN [ROUNDS] [-- EXTRA_AFTER_ARGS]
#
# BEFORE_BIN / AFTER_BIN are `throughput` binaries (build the old one in a worktree:
# `git worktree add /tmp/before <rev> && CARGO_TARGET_DIR=/tmp/before-target cargo build
# --release -p courier-benches --bin throughput`). Each round runs BEFORE, AFTER, and AFTER with
# --keys, and AFTER with --ttl-ms (every message expiring in an hour), on every backend in BACKENDS (default: memory, SQLite, Redis, NATS, RabbitMQ on their
# usual local ports). Prints one line per run, then per backend the median publish rates, the
# geometric mean of the pairwise after/before publish ratios, and the keyed publish cost.
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
backends=${BACKENDS:-"memory://=300000 sqlite:///tmp/courier-ab.db=100000 redis://127.0.0.1:6379=100000 nats://127.0.0.1:4222=30000 amqp://guest:guest@127.0.0.1:5672/%2f=20000"}
out=$(mktemp)
one() { # label bin url messages [extra]
    local json
    json=$("$2" --backend "$3" --messages "$4" --batch 100 --concurrency 4 --latency-samples 50 --json ${5:-})
    echo "$1 $3 $(python3 -c 'import sys,json; r=json.load(sys.stdin); print(round(r["publish_per_s"]), round(r["e2e_per_s"]))' <<<"$json")" | tee -a "$out"
}
for spec in $backends; do
    url=${spec%=*} n=${spec##*=}
    for _ in $(seq "$rounds"); do
        one before "$before" "$url" "$n"
        one after "$after" "$url" "$n"
        one keys "$after" "$url" "$n" --keys
        one ttl "$after" "$url" "$n" "--ttl-ms 3600000"
    done
done
python3 - "$out" <<'PY'
import math, statistics, sys
from collections import defaultdict
runs = defaultdict(lambda: defaultdict(list))
for line in open(sys.argv[1]):
    label, url, pub, e2e = line.split()
    runs[url][label].append((int(pub), int(e2e)))
gm = lambda v: math.exp(sum(map(math.log, v)) / len(v))
for url, r in runs.items():
    pairs = list(zip(r["after"], r["before"]))
    ratio = gm([a[0] / b[0] for a, b in pairs])
    e2e = gm([a[1] / b[1] for a, b in pairs])
    ma = statistics.median(p for p, _ in r["after"])
    mb = statistics.median(p for p, _ in r["before"])
    mk = statistics.median(p for p, _ in r["keys"])
    mt = statistics.median(p for p, _ in r["ttl"])
    et = statistics.median(e for _, e in r["ttl"])
    ea = statistics.median(e for _, e in r["after"])
    print(f"{url}: publish/s median before {mb:.0f} after {ma:.0f}; after/before publish "
          f"{ratio:.3f} (e2e {e2e:.3f}); with --keys {mk:.0f}/s = +{1e6/mk - 1e6/ma:.2f} us/msg; "
          f"with --ttl-ms {mt:.0f}/s = +{1e6/mt - 1e6/ma:.2f} us/msg (e2e {et:.0f}/s vs {ea:.0f}/s)")
PY
rm -f "$out"
