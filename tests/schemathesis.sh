#!/usr/bin/env bash
# Schema-driven fuzzing of the server against its own /openapi.json (SPEC.md "Fuzzing"):
# schemathesis with every check, against a fresh `vault-server --dev` on 127.0.0.1, as the
# demo citizen, bounded in time (SCHEMATHESIS_SECONDS, default 120).
#   tests/schemathesis.sh [path to vault-server binary]
# One worker: hypothesis describes strategies with ast.parse, which CPython 3.11 before 3.11.8
# does not allow from two threads at once ("AST constructor recursion depth mismatch").
# Installs schemathesis into tests/.venv (pip) when it is missing. Exits non-zero on any
# failure that schemathesis reports.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SCHEMATHESIS_SECONDS:-120}
bin=${1:-target/debug/vault-server}
[ -x "$bin" ] || cargo build -q -p vault-server
venv=tests/.venv
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "== installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis>=4.3,<5'
fi
"$venv/bin/schemathesis" --version

data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --dev --data "$data" --listen "127.0.0.1:$port" >"$data/stdout" 2>"$data/stderr" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
token=$(sed -n 's/^export CITIZEN_TOKEN=//p' "$data/stdout")
[ -n "$token" ] || { echo "no token from --dev"; cat "$data/stderr"; exit 1; }

echo "== schemathesis: every check, ${secs}s, as citizen:001099012345"
start=$(date +%s)
set +e
timeout --signal=INT "$((secs + 30))" "$venv/bin/schemathesis" --no-color --config-file tests/schemathesis.toml \
  run "http://127.0.0.1:$port/openapi.json" \
  --url "http://127.0.0.1:$port" \
  --checks all \
  --header "Authorization: Bearer $token" \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-25}" \
  --max-time "$secs" \
  --seed 1 \
  --workers 1 2>&1 | tee "$data/report"
rc=${PIPESTATUS[0]}
set -e
echo "== schemathesis: exit $rc after $(($(date +%s) - start)) s"
exit "$rc"
