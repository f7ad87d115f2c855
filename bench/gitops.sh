#!/usr/bin/env bash
# GitOps latency: from `git commit` to the stack converged, with the webhook. One manager on loopback (process
# driver), a git repository in a temp dir followed as a file:// source with a 1 h interval (so only the webhook can
# explain a sync). Each round changes the stack's environment (which replaces its 2 tasks, all at once, start-first),
# commits, POSTs the webhook with the bearer secret (as a CI job would, with curl and no client certificate), and
# times:
#   applied   - commit until the stack's history has the commit (`git <sha>`: fetched, loaded, planned, applied)
#   converged - commit until both tasks of the new version run and no old one does
#
# usage: bench/gitops.sh [ROUNDS=10]        SW=path/to/swarm to skip the release build
# needs: git, curl, jq, bc.
set -euo pipefail
ROUNDS=${1:-10}
cd "$(dirname "$0")/.."
if [ -z "${SW:-}" ]; then
  cargo build --release --quiet
  SW=$PWD/target/release/swarm
fi
ROOT=$(mktemp -d /tmp/swarm-bench-gitops.XXXXXX)
PID=

now() { date +%s.%N; }
ms_since() { echo "($(now) - $1) * 1000 / 1" | bc; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
on() { "$SW" -H "$ROOT/m1/swarm.sock" "$@"; }
cleanup() {
  if [ -n "$PID" ]; then { kill -9 "$PID" && wait "$PID"; } 2>/dev/null || true; fi
  for e in /proc/[0-9]*/environ; do
    if grep -qz "^SWARM_SERVICE_NAME=bench_web" "$e" 2>/dev/null; then kill -9 "$(basename "$(dirname "$e")")" 2>/dev/null || true; fi
  done
  [ -n "${KEEP:-}" ] || rm -rf "$ROOT"
}
trap cleanup EXIT

mkdir -p "$ROOT/m1"
SWARM_LOG=${SWARM_LOG:-warn} "$SW" daemon --data-dir "$ROOT/m1/data" --socket "$ROOT/m1/swarm.sock" --hostname m1 \
  --no-docker >"$ROOT/m1/log" 2>&1 &
PID=$!
until [ -S "$ROOT/m1/swarm.sock" ]; do sleep 0.05; done
port=$(free_port)
on init --listen-addr "127.0.0.1:$port" --advertise-addr "127.0.0.1:$port" >/dev/null
until on node ls | grep -q Ready; do sleep 0.05; done

repo=$ROOT/repo
git init --quiet --initial-branch main "$repo"
git() { command git -C "$repo" -c user.name=bench -c user.email=bench@swarm.invalid -c commit.gpgsign=false "$@"; }
write_stack() {
  cat >"$repo/bench.yml" <<EOF
services:
  web:
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.05; done"]
    x-swarm: {driver: process}
    environment:
      VERSION: "$1"
    deploy:
      replicas: 2
      update_config: {parallelism: 2, order: start-first}
EOF
}
write_stack v0
git add --all && git commit --quiet -m v0
secret=$(on source add bench --repo "file://$repo" --interval 1h --quiet)

# converged VERSION: both live tasks run VERSION
converged() {
  [ "$(on debug tasks | jq --arg v "$1" '[.[] | select(.service == "bench_web" and .desired_state == "running")
      | (.status.state == "running" and .spec.env.VERSION == $v)] | (length == 2 and all)')" = true ]
}
applied() { on stack history bench | grep -q "git $1"; }
until converged v0; do sleep 0.05; done

hook() {
  curl --silent --show-error --fail --max-time 10 --cacert "$ROOT/m1/data/tls/ca.pem" \
    --resolve "swarm-manager:$port:127.0.0.1" -H "Authorization: Bearer $secret" \
    -H 'X-GitHub-Event: push' --data-binary '{"ref":"refs/heads/main"}' \
    "https://swarm-manager:$port/v1/sources/bench/sync" >/dev/null
}

applied_ms=()
converged_ms=()
for i in $(seq 1 "$ROUNDS"); do
  write_stack "v$i"
  t=$(now)
  git add --all && git commit --quiet -m "v$i"
  sha=$(git rev-parse HEAD)
  hook
  until applied "$sha"; do sleep 0.02; done
  applied_ms+=("$(ms_since "$t")")
  until converged "v$i"; do sleep 0.02; done
  converged_ms+=("$(ms_since "$t")")
done

stats() { # name values...: median, min, max
  local name=$1; shift
  sorted=$(printf '%s\n' "$@" | sort -n)
  n=$#
  median=$(echo "$sorted" | sed -n "$(( (n + 1) / 2 ))p")
  printf '%-10s median %5s ms   min %5s ms   max %5s ms   (%s rounds)\n' "$name" "$median" \
    "$(echo "$sorted" | head -n 1)" "$(echo "$sorted" | tail -n 1)" "$n"
}
echo "git commit -> webhook -> stack converged, one manager, 2 process tasks replaced start-first:"
stats applied "${applied_ms[@]}"
stats converged "${converged_ms[@]}"
