#!/usr/bin/env bash
# Services side by side with Docker Swarm mode on this machine's engine, in one run:
#   create 50 replicas, recover a task whose container was removed (restart delay 0), scale up by 20, rolling
#   update of 10 replicas with parallelism 1 and 5 (default update config otherwise: stop-first, monitor 5s, until
#   the update status says completed)
#   (ours and ../shared/tools/docker-swarm-baseline.sh, same image, same command, same polling),
# and worker loss: a worker's daemon is killed, time until all its tasks run elsewhere (ours, process driver).
#
# usage: bench/services.sh [N_REPLICAS=50] [WORKER_TASKS=10]
# needs: a Docker Engine, busybox-static, curl; builds the release binary.
set -euo pipefail
N=${1:-50}
W=${2:-10}
cd "$(dirname "$0")/.."
BASELINE=${BASELINE:-../shared/tools/docker-swarm-baseline.sh}
cargo build --release --quiet
SW=$PWD/target/release/swarm
ROOT=$(mktemp -d /tmp/swarm-bench.XXXXXX)
PIDS=()

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# daemon NAME: starts a node in $ROOT/NAME, prints nothing; its socket is $ROOT/NAME/swarm.sock
daemon() {
  mkdir -p "$ROOT/$1"
  SWARM_LOG=${SWARM_LOG:-warn} "$SW" daemon --data-dir "$ROOT/$1/data" --socket "$ROOT/$1/swarm.sock" --hostname "$1" ${2:-} \
    >"$ROOT/$1/log" 2>&1 &
  PIDS+=($!)
  echo $! >"$ROOT/$1/pid"
  until [ -S "$ROOT/$1/swarm.sock" ]; do sleep 0.05; done
}
on() { local n=$1; shift; "$SW" -H "$ROOT/$n/swarm.sock" "$@"; }
replicas_are() { # node service want: polls `service ls` as the baseline polls `docker service ls`
  while [ "$(on "$1" service ls --filter "name=$2" | awk -v s="$2" '$2==s {print $4}')" != "$3/$3" ]; do sleep 0.1; done
}
update_done() { # node service: polls the update status as the baseline polls `docker service inspect`
  while [ "$(on "$1" service inspect "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0].get("UpdateStatus",{}).get("State",""))')" != completed ]; do
    sleep 0.2
  done
}
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # process-driver tasks outlive their daemon (an agent restart adopts them): end them
  for e in /proc/[0-9]*/environ; do
    if grep -qz "^SWARM_SERVICE_NAME=bench_" "$e" 2>/dev/null; then kill -9 "$(basename "$(dirname "$e")")" 2>/dev/null || true; fi
  done
  for s in bench_a bench_u; do
    docker ps -aq --filter label=io.swarm.service.name=$s | xargs -r docker rm -f >/dev/null
  done
  [ -n "${KEEP:-}" ] || rm -rf "$ROOT"
}
trap cleanup EXIT

# The same image the baseline builds (it skips building when present).
if ! docker image inspect swarm-bench/busybox:1 >/dev/null 2>&1; then
  r=$(mktemp -d); mkdir -p "$r/bin"; cp "$(command -v busybox)" "$r/bin/busybox"
  for c in sh sleep echo cat hostname httpd true; do ln -s busybox "$r/bin/$c"; done
  echo 1 >"$r/VERSION"; tar -C "$r" -c . | docker import - swarm-bench/busybox:1 >/dev/null
  echo 2 >"$r/VERSION"; tar -C "$r" -c . | docker import - swarm-bench/busybox:2 >/dev/null
  rm -rf "$r"
fi
CMD=(sh -c 'trap "exit 0" TERM; while true; do sleep 0.2; done')

# --- ours: one node, docker driver ---
daemon m1
port=$(free_port)
on m1 init --listen-addr "127.0.0.1:$port" --advertise-addr "127.0.0.1:$port" >/dev/null
until on m1 node ls | grep -q Ready; do sleep 0.05; done

t=$(now)
on m1 service create --detach --quiet --name bench_a --replicas "$N" --restart-delay 0s swarm-bench/busybox:1 "${CMD[@]}" >/dev/null
replicas_are m1 bench_a "$N"
ours_create=$(since "$t")

c=$(docker ps -q --filter label=io.swarm.service.name=bench_a | head -n 1)
t=$(now); docker rm -f "$c" >/dev/null; sleep 0.3
replicas_are m1 bench_a "$N"
ours_recover=$(since "$t")

t=$(now); on m1 service scale --detach "bench_a=$((N + 20))" >/dev/null
replicas_are m1 bench_a $((N + 20))
ours_scale=$(since "$t")
on m1 service rm bench_a >/dev/null
while [ -n "$(docker ps -aq --filter label=io.swarm.service.name=bench_a)" ]; do sleep 0.1; done

on m1 service create --detach --quiet --name bench_u --replicas 10 swarm-bench/busybox:1 "${CMD[@]}" >/dev/null
replicas_are m1 bench_u 10
t=$(now); on m1 service update --detach --quiet --image swarm-bench/busybox:2 --update-parallelism 1 bench_u >/dev/null
update_done m1 bench_u
ours_p1=$(since "$t")
t=$(now); on m1 service update --detach --quiet --image swarm-bench/busybox:1 --update-parallelism 5 bench_u >/dev/null
update_done m1 bench_u
ours_p5=$(since "$t")
on m1 service rm bench_u >/dev/null
while [ -n "$(docker ps -aq --filter label=io.swarm.service.name=bench_u)" ]; do sleep 0.1; done

# --- worker loss: a manager and a worker on loopback, process driver, default heartbeat (1 s, grace 3) ---
daemon w1 --no-docker
token=$(on m1 join-token -q worker)
wport=$(free_port)
on w1 join --token "$token" --listen-addr "127.0.0.1:$wport" --advertise-addr "127.0.0.1:$wport" "127.0.0.1:$port" >/dev/null
until [ "$(on m1 node ls | grep -c Ready)" = 2 ]; do sleep 0.05; done
on m1 service create --detach --quiet --driver process --name bench_w --replicas $((2 * W)) --restart-delay 0s \
  -- "${CMD[@]}" >/dev/null
replicas_are m1 bench_w $((2 * W))
w1_id=$(on w1 info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["node_id"])')
running_off() { # bench_w tasks that should run and do, on nodes other than $1
  on m1 debug tasks | python3 -c 'import json,sys
print(sum(1 for t in json.load(sys.stdin) if t["service"] == "bench_w" and t["desired_state"] == "running"
          and t["status"]["state"] == "running" and t.get("node_id") != sys.argv[1]))' "$1"
}
on_w1=$(( 2 * W - $(running_off "$w1_id") ))
t=$(now); kill -9 "$(cat "$ROOT/w1/pid")"
# every task that was on w1 replaced on m1
until [ "$(running_off "$w1_id")" = $((2 * W)) ]; do sleep 0.05; done
ours_loss=$(since "$t")

# --- Docker Swarm on the same engine ---
declare -A swarm
if [ -x "$BASELINE" ] || [ -f "$BASELINE" ]; then
  while read -r name secs; do swarm[$name]=$secs; done < <(bash "$BASELINE" "$N" 10 2>/dev/null)
fi

ratio() { [ -n "${2:-}" ] && echo "scale=2; $1 / $2" | bc || echo "-"; }
printf '%-34s %10s %12s %8s\n' figure ours "docker swarm" ratio
printf '%-34s %10.2f %12s %8s\n' "create ${N} replicas (s)" "$ours_create" "${swarm[create_${N}_replicas]:--}" "$(ratio "$ours_create" "${swarm[create_${N}_replicas]:-}")"
printf '%-34s %10.2f %12s %8s\n' "recover a removed container (s)" "$ours_recover" "${swarm[recover_killed_task]:--}" "$(ratio "$ours_recover" "${swarm[recover_killed_task]:-}")"
printf '%-34s %10.2f %12s %8s\n' "scale up by 20 (s)" "$ours_scale" "${swarm[scale_up_by_20]:--}" "$(ratio "$ours_scale" "${swarm[scale_up_by_20]:-}")"
printf '%-34s %10.2f %12s %8s\n' "rolling update 10, parallelism 1 (s)" "$ours_p1" "${swarm[rolling_update_10_p1]:--}" "$(ratio "$ours_p1" "${swarm[rolling_update_10_p1]:-}")"
printf '%-34s %10.2f %12s %8s\n' "rolling update 10, parallelism 5 (s)" "$ours_p5" "${swarm[rolling_update_10_p5]:--}" "$(ratio "$ours_p5" "${swarm[rolling_update_10_p5]:-}")"
printf '%-34s %10.2f %12s %8s\n' "worker loss, ${on_w1} tasks moved (s)" "$ours_loss" "~20 (defaults)" "-"

# BENCH_JSON=FILE: the same figures as JSON for bench/report (bench/run-all.sh sets it); null where not measured.
if [ -n "${BENCH_JSON:-}" ]; then
  num() { if [ -n "${1:-}" ]; then LC_NUMERIC=C printf '%.3f' "$1"; else printf null; fi; }
  cat >"$BENCH_JSON" <<JSON
{
  "bench": "services",
  "figures": {
    "ours_create_s": $(num "${ours_create:-}"),
    "swarm_create_s": $(num "${swarm[create_${N}_replicas]:-}"),
    "ours_recover_s": $(num "${ours_recover:-}"),
    "swarm_recover_s": $(num "${swarm[recover_killed_task]:-}"),
    "ours_scale_s": $(num "${ours_scale:-}"),
    "swarm_scale_s": $(num "${swarm[scale_up_by_20]:-}"),
    "ours_update_p1_s": $(num "${ours_p1:-}"),
    "swarm_update_p1_s": $(num "${swarm[rolling_update_10_p1]:-}"),
    "ours_update_p5_s": $(num "${ours_p5:-}"),
    "swarm_update_p5_s": $(num "${swarm[rolling_update_10_p5]:-}"),
    "ours_worker_loss_s": $(num "${ours_loss:-}")
  },
  "about": { "reference": "Docker Swarm $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')", "replicas": "$N", "worker_tasks": "${on_w1:-}" }
}
JSON
  echo "figures written to $BENCH_JSON"
fi
