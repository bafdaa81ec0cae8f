#!/bin/sh
# The whole story with the `vault` command line, against a server started with
# `cargo run --release -p vault-server -- --dev` from this folder (README, "Demo").
#
#   an agency deposits signed results for a citizen -> the citizen grants another agency access
#   for a procedure -> that agency's reuse check drops the held components, and it fetches and
#   verifies them (its dossier system told of the grant by a signed webhook) -> the citizen reads
#   the access log, every entry proven, and verifies the log.
#
# Settings: VAULT_DATA (the server's data folder, default ./vault-data, where --dev keeps its
# keys), VAULT_SERVER (default http://127.0.0.1:8700), VAULT_CLI (default: cargo run the CLI).
set -eu

DATA=${VAULT_DATA:-./vault-data}
VAULT=${VAULT_CLI:-"cargo run -q --release -p vault-client --bin vault --"}
export VAULT_SERVER="${VAULT_SERVER:-http://127.0.0.1:8700}"
WORK=$(mktemp -d)
export VAULT_STATE="$WORK/client-state.json"
OWNER=citizen:001099012345
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Tokens for the operator and the citizen, minted from the --dev keys (in production they come
# from the operator's key and the identity provider).
OPERATOR_TOKEN=$($VAULT token --key-file "$DATA/dev-operator.key" --kid operator --iss operator --sub operator)
CITIZEN_TOKEN=$($VAULT token --key-file "$DATA/dev-idp.key" --kid dev-idp --iss dev-idp --sub $OWNER)
operator() { VAULT_TOKEN=$OPERATOR_TOKEN $VAULT "$@"; }
citizen() { VAULT_TOKEN=$CITIZEN_TOKEN $VAULT "$@"; }
# The issuing agency: the --dev demo agency (key k1 in the data folder).
issuer() { $VAULT --key-file "$DATA/dev-agency.key" --agency demo-agency --key-id k1 --purpose 1.001193 "$@"; }
# The agency that reuses: the Department of Justice, registered below.
reuser() { $VAULT --key-file "$WORK/so-tu-phap.key" --agency so-tu-phap --key-id k1 --purpose 2.000305 "$@"; }

say "The operator registers a second agency (its key made with vault keygen)"
PUBLIC=$($VAULT --json keygen -o "$WORK/so-tu-phap.key" | sed 's/.*"public_key":"\([^"]*\)".*/\1/')
operator agency put so-tu-phap --name "Sở Tư pháp" --key "k1=$PUBLIC"
operator agency list

say "demo-agency deposits signed results for $OWNER (a CSV manifest)"
printf 'Giấy khai sinh — bản điện tử\n' > "$WORK/khai-sinh.txt"
printf 'Căn cước công dân — bản điện tử\n' > "$WORK/cccd.txt"
cat > "$WORK/manifest.csv" <<EOF
file,owner,doc_type,title,reference,issued_at,procedure
khai-sinh.txt,$OWNER,giay-khai-sinh,Giấy khai sinh,123/2024/TLKS,2024-05-06T07:08:09Z,1.001193
cccd.txt,$OWNER,cccd,Căn cước công dân,001099012345,2024-07-01T00:00:00Z,1.001193
EOF
issuer deposit --manifest "$WORK/manifest.csv"
say "... and again: everything is held, nothing is uploaded or duplicated"
issuer deposit --manifest "$WORK/manifest.csv"

HOOKS=
if command -v python3 >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
    say "The operator subscribes so-tu-phap's dossier system to grant events (signed webhooks, SPEC.md §24)"
    # A stand-in dossier system on 127.0.0.1 that prints what it receives (--dev allows http:// to loopback).
    python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        with open(sys.argv[1], "a") as f:
            for h in ("webhook-id", "webhook-timestamp", "webhook-signature"):
                f.write(h + ": " + self.headers[h] + "\n")
            f.write(body.decode() + "\n")
        self.send_response(204); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()' "$WORK/webhook.log" > "$WORK/hook-port" &
    HOOKS=$!
    trap 'kill $HOOKS 2>/dev/null || true' EXIT
    while [ ! -s "$WORK/hook-port" ]; do sleep 0.1; done
    curl -sS -X PUT "$VAULT_SERVER/v1/agencies/so-tu-phap/webhooks/dossier" \
        -H "Authorization: Bearer $OPERATOR_TOKEN" -H "Content-Type: application/json" \
        -d "{\"url\": \"http://127.0.0.1:$(cat "$WORK/hook-port")/vault\", \"events\": [\"grant.created\", \"grant.revoked\"]}"
    echo
fi

say "The citizen sees the documents and grants so-tu-phap access for procedure 2.000305"
citizen list $OWNER
citizen grant $OWNER --to so-tu-phap --for 2.000305 --text "Đăng ký kết hôn" \
    --doc-type giay-khai-sinh --doc-type cccd --doc-type giay-xac-nhan-tinh-trang-hon-nhan --days 7
if [ -n "$HOOKS" ]; then
    say "so-tu-phap's dossier system was told (verify with the subscription's public_key, whpk_...)"
    for _ in $(seq 50); do [ -s "$WORK/webhook.log" ] && break; sleep 0.2; done
    cat "$WORK/webhook.log"
fi

say "so-tu-phap's reuse check: held components are dropped from the form"
reuser reuse $OWNER giay-khai-sinh cccd giay-xac-nhan-tinh-trang-hon-nhan
HELD=$(reuser --json reuse $OWNER giay-khai-sinh cccd | tr '{' '\n' | sed -n 's/.*"id":"\([0-9a-f]\{32\}\)".*/\1/p')
for ID in $HELD; do
    reuser get $OWNER "$ID" -o "$WORK/fetched-$ID"
done

say "Reuse statistics for the monitoring system (aggregates only): the operator sees all, so-tu-phap its own"
operator stats reuse --by procedure
operator stats reuse --by doc_type --csv
reuser stats reuse --by agency

say "The citizen reads the access log (every entry proven in a signed checkpoint)"
citizen log $OWNER
$VAULT audit verify
citizen export $OWNER -o "$WORK/export.tar"
$VAULT verify-export "$WORK/export.tar"

say "Done (files in $WORK)"
