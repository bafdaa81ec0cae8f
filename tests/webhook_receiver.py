"""A webhook receiver for the end-to-end tests (tests/webhooks.rs), on 127.0.0.1.

It verifies every delivery with an implementation independent of the vault's: the Standard
Webhooks specification (https://www.standardwebhooks.com, "Signature scheme", asymmetric `v1a`)
written out here from the spec text, with Ed25519 from the `cryptography` package (OpenSSL).
The `standardwebhooks` package on PyPI verifies only the symmetric `v1` (HMAC) scheme, so it
cannot check `v1a` signatures.

    python webhook_receiver.py --public-key whpk_... --out events.jsonl [--port N] [--mode ok|fail|redirect]

Prints `LISTENING <port>` once ready. Appends one JSON line per request to --out:
{"path", "id", "timestamp", "valid", "reason", "body"}. Answers 204 to a valid delivery in
mode `ok`, 500 in mode `fail`, 307 to /elsewhere in mode `redirect`, and 401 to an invalid one.
"""

import argparse
import base64
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOLERANCE = 5 * 60  # seconds, as the spec recommends


def load_key(text):
    if not text.startswith("whpk_"):
        raise ValueError("a public key starts with whpk_")
    raw = base64.b64decode(text[len("whpk_"):], validate=True)
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(key, headers, body):
    """Returns (valid, reason) per the spec: required headers, timestamp tolerance, and at
    least one `v1a,` signature over `{id}.{timestamp}.{body}` that verifies."""
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature")
    if not (msg_id and ts and sigs):
        return False, "missing headers"
    try:
        t = int(ts)
    except ValueError:
        return False, "bad timestamp"
    if abs(time.time() - t) > TOLERANCE:
        return False, "timestamp outside tolerance"
    signed = msg_id.encode() + b"." + ts.encode() + b"." + body
    for entry in sigs.split(" "):
        version, _, value = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(value, validate=True), signed)
            return True, "ok"
        except (InvalidSignature, ValueError):
            continue
    return False, "no valid v1a signature"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--public-key", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mode", default="ok", choices=["ok", "fail", "redirect"])
    args = ap.parse_args()
    key = load_key(args.public_key)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            valid, reason = verify(key, headers, body)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            rec = {
                "path": self.path,
                "id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "valid": valid,
                "reason": reason,
                "body": parsed,
            }
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if not valid:
                self.send_response(401)
            elif args.mode == "fail":
                self.send_response(500)
            elif args.mode == "redirect":
                self.send_response(307)
                self.send_header("Location", "/elsewhere")
            else:
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    HTTPServer.allow_reuse_address = True
    srv = HTTPServer(("127.0.0.1", args.port), Handler)
    print(f"LISTENING {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
