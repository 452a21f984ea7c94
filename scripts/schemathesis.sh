#!/usr/bin/env bash
# schemathesis (pinned, in a virtualenv) against a real `tongban serve` on /openapi.json, twice:
# without API keys (the API is open and declares no security) and with an operator key (every
# keyed route must answer 401/403 without it). Every check (`--checks all`) must pass: no server
# error, status codes, content types, headers and bodies as documented, bad input rejected.
# Usage: scripts/schemathesis.sh [TONGBAN_BINARY]   (default: target/debug/tongban)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/tongban}
venv=${SCHEMATHESIS_VENV:-.ci/venv}
examples=${SCHEMATHESIS_EXAMPLES:-30}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r scripts/schemathesis-requirements.txt
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
# A small history and a quickly trained model (the API's answers, not the model's quality, are
# under test).
"$bin" generate --persons 1500 --enterprises 300 --seed 3 --truth-samples 0 --out "$work/data" >/dev/null 2>&1
cp scripts/schemathesis-params.json "$work/params.json"
"$bin" train --events "$work/data/events.csv" --params "$work/params.json" --out "$work/model.tbm" >"$work/train.log" 2>&1 || { cat "$work/train.log"; exit 1; }

run() { # name, extra env assignment or "", schemathesis header args...
  local name=$1 keys=$2; shift 2
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env $keys "$bin" serve --memory --model "$work/model.tbm" --import "$work/data/events.csv" \
    --addr "127.0.0.1:$port" --now 2026-01-01T02:00:00Z --scan-every-secs 0 >"$work/serve-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  # The document must be valid OpenAPI before anything is generated from it.
  curl -sf "http://127.0.0.1:$port/openapi.json" >"$work/openapi-$name.json"
  "$venv/bin/python" -c 'import json, sys; from openapi_spec_validator import validate; d = json.load(open(sys.argv[1])); validate(d); print("openapi.json (" + sys.argv[2] + "): valid OpenAPI " + d["openapi"] + ", " + str(sum(len(p) for p in d["paths"].values())) + " operations")' "$work/openapi-$name.json" "$name"
  local out="$work/schemathesis-$name.txt" rc=0
  "$venv/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" --checks all --experimental=openapi-3.1 \
    --hypothesis-max-examples "$examples" --hypothesis-seed 1 --no-color "$@" >"$out" 2>&1 || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "schemathesis ($name): $(grep -E '^=+ .* in [0-9.]+s =+$' "$out" | tr -d '=' | sed 's/^ *//')"
  grep -E '^\s+[a-z_]+\s+[0-9]+ / [0-9]+ passed' "$out" | sed 's/^ */  /'
  if [ "$rc" -ne 0 ]; then
    sed -n '/FAILURES/,$p' "$out" | head -80
    return "$rc"
  fi
}
run open ""
run keyed "TONGBAN_OPERATOR_KEYS=schemathesis-operator-key-0123456789" -H "x-api-key: schemathesis-operator-key-0123456789"
