#!/usr/bin/env bash
# Load benchmark: requests/s and latency of recommendations (memory store, then Redis), each
# beside the static /ping endpoint of the same server in the same run; then event ingest in
# batches of 1,000 into Redis. Installs wrk if absent. Results go to stdout; copy them into
# BENCHMARKS.md with the date and machine.
#
#   scripts/load.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
cargo build --release -q
T=target/release/tongban
D=data/load
mkdir -p "$D"
[ -f "$D/events.csv" ] || $T generate --persons 20000 --enterprises 1000 --seed 7 --truth-samples 0 --out "$D"
[ -f "$D/load.model" ] || $T train --events "$D/events.csv" --catalogue catalogue --out "$D/load.model"
CUT=$(sed -n 's/.*"cutoff": "\(.*\)".*/\1/p' "$D/manifest.json")
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/recs.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  local id = string.format("p%07d", (counter * 7919) % 19000)
  return wrk.format("GET", "/v1/users/" .. id .. "/recommendations?k=10")
end
LUA
cat > "$WORK/ingest.lua" <<'LUA'
-- Each request: 1,000 new events (unique ids) of 1,000 subjects.
counter = 0
services = {"p.daily.id_renew", "p.house.gjj_withdraw_rent", "p.emp.ss_record", "p.med.reimburse", "p.travel.violation"}
request = function()
  counter = counter + 1
  local parts = {}
  for i = 1, 1000 do
    local n = counter * 1000 + i
    parts[i] = string.format('{"event_id":"load-%d-%d","subject":"p%07d","service":"%s","kind":"applied"}',
      math.random(1, 1000000000), n, n % 19000, services[(n % 5) + 1])
  end
  return wrk.format("POST", "/v1/events", {["content-type"] = "application/json"}, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
LUA

wait_ready() { for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.2; done; echo "server on $1 did not start" >&2; exit 1; }
rate() { sed -n 's/^Requests\/sec: *//p' "$1"; }
p99() { sed -n 's/^ *99% *//p' "$1"; }

run_pair() { # name port
  wrk -t2 -c32 -d"${DUR}s" --latency "http://127.0.0.1:$2/ping" > "$WORK/$1-static.txt"
  wrk -t2 -c32 -d"${DUR}s" --latency -s "$WORK/recs.lua" "http://127.0.0.1:$2" > "$WORK/$1-recs.txt"
  local s r
  s=$(rate "$WORK/$1-static.txt"); r=$(rate "$WORK/$1-recs.txt")
  echo "$1: static /ping ${s} req/s (p99 $(p99 "$WORK/$1-static.txt")); recommendations ${r} req/s (p99 $(p99 "$WORK/$1-recs.txt")); ratio $(awk -v a="$r" -v b="$s" 'BEGIN{printf "%.2f", a/b}')"
  # Latency below saturation: fewer connections (closed loop) until about 80% of the maximum rate.
  for c in 1 2 4 8 16; do
    wrk -t1 -c"$c" -d"${DUR}s" --latency -s "$WORK/recs.lua" "http://127.0.0.1:$2" > "$WORK/$1-c$c.txt"
    echo "  $c connections: $(rate "$WORK/$1-c$c.txt") req/s, p50 $(sed -n 's/^ *50% *//p' "$WORK/$1-c$c.txt"), p99 $(p99 "$WORK/$1-c$c.txt")"
  done
}

echo "== $(date -u +%FT%TZ) $(nproc) cores; ${DUR}s per run"
$T serve --memory --model "$D/load.model" --catalogue catalogue --import "$D/events.csv" --now "$CUT" --scan-every-secs 0 --addr 127.0.0.1:18080 2> "$WORK/mem.log" &
PIDS+=($!)
wait_ready 18080
run_pair memory 18080
kill "${PIDS[0]}"

redis-server --port 16379 --bind 127.0.0.1 --save "" --appendonly no > /dev/null &
PIDS+=($!)
sleep 0.5
$T serve --model "$D/load.model" --catalogue catalogue --redis redis://127.0.0.1:16379/ --allow-volatile-redis --import "$D/events.csv" --now "$CUT" --addr 127.0.0.1:18081 2> "$WORK/redis.log" &
PIDS+=($!)
wait_ready 18081
run_pair redis 18081
wrk -t2 -c8 -d"${DUR}s" -s "$WORK/ingest.lua" "http://127.0.0.1:18081" > "$WORK/ingest.txt"
echo "ingest into Redis, batches of 1,000: $(rate "$WORK/ingest.txt") batches/s = $(awk -v a="$(rate "$WORK/ingest.txt")" 'BEGIN{printf "%.0f", a*1000}') events/s"
grep -h "imported" "$WORK/mem.log" "$WORK/redis.log"
