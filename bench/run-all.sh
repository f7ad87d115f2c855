#!/usr/bin/env bash
# Runs the benchmarks that have a reference, each next to its reference in one run, then writes the report:
#   cargo bench --bench cluster   ours: three managers on loopback, committed writes/s (1, 64 clients), failover
#   cargo bench --bench etcd      the reference: a three-member etcd 3.4 on loopback, measured the same way
#   bench/services.sh             services next to Docker Swarm on this engine; worker loss
#   bench/report                  (its own crate) reads the JSON figures and writes
#                                 $RESULTS/{writes,failover,services}.svg and $RESULTS/report.md
#
# usage: bench/run-all.sh
#   ROUNDS=1           cluster and etcd run alternately this many times; the report shows median and min–max
#   WRITE_SECONDS=5    seconds of writes per client count      FAILOVER_TRIALS=20   kill -9 trials per system
#   SERVICES=0         skip bench/services.sh (it needs a Docker Engine and takes a few minutes)
#   RESULTS=bench/results   where the JSON figures (cleared at the start), SVGs, report.md and run.log go
# needs: etcd-server (apt-get install etcd-server); for services: a Docker Engine, busybox-static, bc, python3.
# Everything is built before the first measurement; run it on an otherwise idle machine (see `uptime`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-1}
SERVICES=${SERVICES:-1}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)

if ! command -v "${ETCD:-etcd}" >/dev/null; then
  echo "etcd not found: apt-get install -y etcd-server (or ETCD=/path/to/etcd)" >&2
  exit 1
fi

exec > >(tee "$RESULTS/run.log") 2>&1
echo "== building"
# The bench executables are run directly, so an edit made meanwhile cannot start a compile in the middle.
exe() { # bench name → its executable
  cargo bench --no-run --bench "$1" --message-format=json | python3 -c 'import json, sys
print([m["executable"] for m in map(json.loads, sys.stdin)
       if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]][0])' "$1"
}
CLUSTER=$(exe cluster)
BENCH_ETCD=$(exe etcd)
[ "$SERVICES" = 0 ] || cargo build --release
cargo build --release --manifest-path bench/report/Cargo.toml
REPORT=bench/report/target/release/swarm-bench-report

rm -f "$RESULTS"/*.json # figures of an earlier run would mix into the medians
echo "== load before measuring: $(uptime)"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS: ours (cargo bench --bench cluster)"
  BENCH_JSON="$RESULTS/cluster-$round.json" "$CLUSTER" --bench
  echo "== round $round/$ROUNDS: etcd (cargo bench --bench etcd)"
  BENCH_JSON="$RESULTS/etcd-$round.json" "$BENCH_ETCD" --bench
done
if [ "$SERVICES" != 0 ]; then
  echo "== services vs Docker Swarm (bench/services.sh)"
  BENCH_JSON="$RESULTS/services.json" bench/services.sh
fi

echo "== report"
"$REPORT" "$RESULTS"
