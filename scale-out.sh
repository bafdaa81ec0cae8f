#!/usr/bin/env bash
# Scale-out on one machine (README, "Several servers"): a throwaway PostgreSQL cluster, an S3
# server (s3s-fs, built once by tests/s3-setup.sh) and two vault-server instances on the same
# database and bucket (SPEC.md §9a "Several instances", §9b), on 127.0.0.1:8701 and :8702, both
# in --dev mode with the same keys. Put any load balancer in front of them, or call either.
# Ctrl-C stops everything and removes the folder.
#
# Settings: VAULT_SCALE_DIR (the folder, default a new one under /tmp), VAULT_PG_PORT (55432),
# VAULT_S3_PORT (9010).
set -euo pipefail
cd "$(dirname "$0")"
bash tests/pg-setup.sh >/dev/null
S3_BIN=$(tests/s3-setup.sh)
cargo build -q --release -p vault-server
SERVER=target/release/vault-server
WORK=${VAULT_SCALE_DIR:-$(mktemp -d /tmp/vault-scale-out.XXXXXX)}
PG_PORT=${VAULT_PG_PORT:-55432}
S3_PORT=${VAULT_S3_PORT:-9010}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== PostgreSQL on 127.0.0.1:$PG_PORT ($WORK/pg)"
mkdir -p "$WORK/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$WORK" "$WORK/pg"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U vault --auth=trust -E UTF8 --locale=C >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$WORK/pg -c max_connections=300" \
  start >/dev/null || { cat "$WORK/pg/server.log"; exit 1; }
psql -q -h 127.0.0.1 -p "$PG_PORT" -U vault -d postgres -c 'CREATE DATABASE vault'
METADATA="postgres://vault@127.0.0.1:$PG_PORT/vault"

echo "== S3 (s3s-fs) on 127.0.0.1:$S3_PORT, bucket vault-blobs ($WORK/s3)"
mkdir -p "$WORK/s3/vault-blobs"
"$S3_BIN" --host 127.0.0.1 --port "$S3_PORT" --access-key vault-local --secret-key vault-local-secret-key-0123 \
  "$WORK/s3" >"$WORK/s3.log" 2>&1 &
pids+=($!)
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=vault-local AWS_SECRET_ACCESS_KEY=vault-local-secret-key-0123

"$SERVER" keygen >"$WORK/master.key"
chmod 600 "$WORK/master.key"
start() { # name port
  "$SERVER" --dev --data "$WORK/$1" --master-key-file "$WORK/master.key" --metadata "$METADATA" \
    --blobs s3://vault-blobs/province --listen "127.0.0.1:$2" >"$WORK/$1.out" 2>"$WORK/$1.log" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if curl -sf "http://127.0.0.1:$2/readyz" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "the server $1 did not start:"; cat "$WORK/$1.log"; exit 1
}
echo "== vault-server one on 127.0.0.1:8701"
start one 8701
# The second instance gets the first one's --dev keys (operator, identity provider, agency).
mkdir -p "$WORK/two"
cp "$WORK"/one/dev-*.key "$WORK/two/"
echo "== vault-server two on 127.0.0.1:8702"
start two 8702
cat "$WORK/one.out"
echo
echo "Two instances of one vault: http://127.0.0.1:8701 and http://127.0.0.1:8702 (the tokens above work at both)."
echo "Logs: $WORK/one.log, $WORK/two.log. Ctrl-C stops everything."
wait
