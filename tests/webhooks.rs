//! Webhooks (SPEC.md §24) through the real server binary, received by a Python receiver on
//! 127.0.0.1 (tests/webhook_receiver.py) that verifies every `v1a` signature with its own
//! implementation of the Standard Webhooks scheme and OpenSSL's Ed25519 (`cryptography`,
//! installed into tests/.venv on first use).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http::*;
use serde_json::{json, Value};
use vault::{Digest, Timestamp};

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// The venv's python with `cryptography`, installed once (bounded in time); `None` (and the
/// test is skipped with a message) only if the install is impossible here.
fn python() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let venv = root.join("tests/.venv");
        let py = venv.join("bin/python");
        let works = |py: &Path| {
            Command::new(py).args(["-c", "import cryptography"]).status().map(|s| s.success()).unwrap_or(false)
        };
        if works(&py) {
            return Some(py);
        }
        let ok = (py.exists()
            || Command::new("timeout")
                .arg("120")
                .arg("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success()))
            && Command::new("timeout")
                .arg("300")
                .arg(venv.join("bin/pip"))
                .args(["install", "-q", "cryptography>=41"])
                .status()
                .is_ok_and(|s| s.success());
        if ok && works(&py) {
            Some(py)
        } else {
            eprintln!("SKIPPED: cannot install the Python package `cryptography` into tests/.venv (no network?)");
            None
        }
    })
    .clone()
}

struct Receiver {
    child: Child,
    out: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(py: &Path, public_key: &str, port: u16, mode: &str) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("events.jsonl");
        let mut child = Command::new(py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py"))
            .args(["--public-key", public_key, "--port", &port.to_string(), "--mode", mode])
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().strip_prefix("LISTENING ").expect("the receiver did not start").parse().unwrap();
        Receiver { child, out, port, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `f` holds of the requests received (bounded), and returns them.
    fn wait_for(&self, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r = self.requests();
            if f(&r) {
                return r;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}; received {r:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn put_hook(s: &Server, agency: &str, id: &str, body: &Value) -> Resp {
    call(
        "PUT",
        &s.url(&format!("/v1/agencies/{agency}/webhooks/{id}")),
        Some(&s.operator()),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

fn get_hook(s: &Server, agency: &str, id: &str) -> Resp {
    call("GET", &s.url(&format!("/v1/agencies/{agency}/webhooks/{id}")), Some(&s.operator()), &[], None)
}

/// Waits until the subscription's counts satisfy `f` (bounded).
fn wait_hook(s: &Server, agency: &str, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = get_hook(s, agency, id).json();
        if f(&v) {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn grant(s: &Server, grantee: &str, secs: i64, max_uses: Option<u64>) -> String {
    let r = post_json(
        &s.url(&format!("/v1/owners/{CITIZEN}/grants")),
        &s.owner(CITIZEN),
        None,
        &json!({"grantee": grantee, "purpose": "1.000001", "doc_types": ["giay-khai-sinh"],
                "expires_at": Timestamp::now().plus_seconds(secs).to_string(), "max_uses": max_uses}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

const FAST: [&str; 6] = ["--webhook-poll-ms", "100", "--webhook-retry-base", "1", "--webhook-retry-max", "1"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--dev", "--sweep-interval", "1"];
    a.extend_from_slice(&FAST);
    a.extend_from_slice(extra);
    a
}

fn all_valid(reqs: &[Value]) {
    for r in reqs {
        assert_eq!(r["valid"], true, "an invalid delivery: {r}");
        assert_eq!(r["path"], "/hook", "{r}");
        assert!(r["id"].as_str().unwrap().starts_with("msg_"));
        let b = &r["body"];
        assert_eq!(b.as_object().unwrap().len(), 3, "{b}");
        Timestamp::parse(b["timestamp"].as_str().unwrap()).unwrap();
    }
}

fn of_type<'a>(reqs: &'a [Value], t: &str) -> Vec<&'a Value> {
    reqs.iter().filter(|r| r["body"]["type"] == t).collect()
}

#[test]
fn each_event_type_is_delivered_signed_and_verified_independently() {
    let Some(py) = python() else { return };
    let s = Server::start(&args(&[]));
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let (_, reader) = register_agency(&s, "so-gd", 22);
    let pk = vault_key(&s);
    let rx = Receiver::start(&py, &pk, 0, "ok");
    let r = put_hook(
        &s,
        "ubnd-xa",
        "dossier",
        &json!({"url": rx.url(), "events": ["document.deposited", "document.revoked", "owner.erased"]}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["public_key"], pk);
    let all = ["grant.created", "grant.revoked", "grant.expired", "grant.exhausted", "owner.erased"];
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": rx.url(), "events": all})).status, 201);

    // document.deposited (signed by its issuer), then a grant used up, one revoked, one expiring.
    let base = format!("/v1/owners/{CITIZEN}");
    let data = b"birth certificate bytes".to_vec();
    let r = call("PUT", &s.url(&format!("{base}/contents/{}", Digest::of(&data))), Some(&iss), &[], Some(&data));
    assert_eq!(r.status, 201);
    let r = post_json(
        &s.url(&format!("{base}/documents")),
        &iss,
        None,
        &signed_deposit(CITIZEN, &data, "ubnd-xa", &iss_key),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let doc = r.json()["id"].as_str().unwrap().to_owned();
    let used = grant(&s, "so-gd", 3600, Some(1));
    let r = call(
        "GET",
        &s.url(&format!("{base}/documents/{doc}/content")),
        Some(&reader),
        &[("Vault-Purpose", "1.000001")],
        None,
    );
    assert_eq!(r.status, 200);
    let revoked = grant(&s, "so-gd", 3600, None);
    let r = call("DELETE", &s.url(&format!("{base}/grants/{revoked}")), Some(&s.owner(CITIZEN)), &[], None);
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    let expiring = grant(&s, "so-gd", 2, None);
    let r = post_json(&s.url(&format!("{base}/documents/{doc}/revocation")), &iss, None, &json!({"reason": "Cấp sai"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The expiry sweep emits grant.expired once the grant is past its end (before the erasure
    // would take the grant with it).
    rx.wait_for("grant.expired", |r| !of_type(r, "grant.expired").is_empty());
    let r = call("DELETE", &s.url(&base), Some(&s.owner(CITIZEN)), &[], None);
    assert_eq!(r.status, 200);

    let reqs = rx.wait_for("every event type", |r| {
        of_type(r, "owner.erased").len() == 2
            && ["grant.created", "grant.revoked", "grant.exhausted", "document.deposited", "document.revoked"]
                .iter()
                .all(|t| !of_type(r, t).is_empty())
    });
    all_valid(&reqs);
    let by = |t: &str| of_type(&reqs, t).into_iter().map(|r| r["body"]["data"].clone()).collect::<Vec<_>>();
    // Grant events go to the grantee, with the grant and owner it already knows.
    let created: Vec<String> = by("grant.created").iter().map(|d| d["grant"].as_str().unwrap().to_owned()).collect();
    assert_eq!(created.len(), 3);
    for g in [&used, &revoked, &expiring] {
        assert!(created.contains(g), "{g} not in {created:?}");
    }
    assert!(by("grant.created").iter().all(|d| d["owner"] == CITIZEN && d["purpose"] == "1.000001"));
    assert_eq!(by("grant.exhausted")[0]["grant"], used.as_str());
    assert_eq!(by("grant.exhausted")[0]["uses"], 1);
    assert_eq!(by("grant.revoked")[0]["grant"], revoked.as_str());
    let expired = by("grant.expired");
    assert_eq!(expired.len(), 1, "exactly once: {expired:?}");
    assert_eq!(expired[0]["grant"], expiring.as_str());
    // Document events go to the issuer; no content, no digest.
    for t in ["document.deposited", "document.revoked"] {
        let d = &by(t)[0];
        assert_eq!((d["document"].as_str(), d["owner"].as_str()), (Some(doc.as_str()), Some(CITIZEN)), "{t}");
        assert!(d.get("digest").is_none() && d.get("content").is_none(), "{d}");
    }
    // owner.erased names only the owner and the time, besides the receiving agency and
    // subscription that every event names (so a delivery replayed to another agency is told
    // apart by its receiver).
    let mut told: Vec<(String, String)> = Vec::new();
    for d in by("owner.erased") {
        let (a, w) = (d["agency"].as_str().unwrap().to_owned(), d["webhook"].as_str().unwrap().to_owned());
        assert_eq!(d, json!({"owner": CITIZEN, "erased_at": d["erased_at"], "agency": a, "webhook": w}));
        told.push((a, w));
    }
    told.sort();
    assert_eq!(told, [("so-gd".to_owned(), "main".to_owned()), ("ubnd-xa".to_owned(), "dossier".to_owned())]);
    assert!(by("grant.created").iter().all(|d| d["agency"] == "so-gd" && d["webhook"] == "main"));
    // Each endpoint got only what it subscribed to: the issuer no grant event, the grantee no
    // document event.
    for r in &reqs {
        assert!(r["body"]["type"].as_str().is_some());
    }
    assert_eq!(reqs.len(), 3 + 1 + 1 + 1 + 1 + 1 + 2, "{reqs:#?}");
    // Delivered events leave the outbox, and are counted.
    wait_hook(&s, "so-gd", "main", "an empty outbox", |v| v["pending"] == 0);
    // (With two instances, the one holding the background lease delivers: its counters.)
    let m = s.metrics();
    assert!(m.contains("vault_webhook_attempts_total{outcome=\"delivered\"} 10\n"), "{m}");
    assert!(m.contains("\nvault_webhook_outbox_full_total 0\n"), "no outbox was full: {m}");
    // A sweep much later emits no second grant.expired.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(of_type(&rx.requests(), "grant.expired").len(), 1);
}

fn vault_key(s: &Server) -> String {
    // Any subscription's GET shows the key; the key is the vault's, so take it from a
    // throwaway subscription of a throwaway agency.
    register_agency(s, "key-probe", 40);
    let r = put_hook(s, "key-probe", "k", &json!({"url": "http://127.0.0.1:9/", "events": ["grant.created"]}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let pk = r.json()["public_key"].as_str().unwrap().to_owned();
    assert_eq!(call("DELETE", &s.url("/v1/agencies/key-probe/webhooks/k"), Some(&s.operator()), &[], None).status, 204);
    assert!(pk.starts_with("whpk_"));
    pk
}

#[test]
fn a_receiver_down_then_up_gets_the_event_retried_with_the_same_id() {
    let Some(py) = python() else { return };
    let s = Server::start(&args(&[]));
    register_agency(&s, "so-gd", 22);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    let g = grant(&s, "so-gd", 3600, None);
    // Nothing listens: the attempt fails and is retried.
    let v = wait_hook(&s, "so-gd", "main", "a failed attempt", |v| v["retrying"] == 1);
    assert_eq!((v["pending"].as_u64(), v["parked"].as_u64()), (Some(1), Some(0)));
    let rx = Receiver::start(&py, v["public_key"].as_str().unwrap(), port, "ok");
    let reqs = rx.wait_for("the retried event", |r| !r.is_empty());
    all_valid(&reqs);
    assert_eq!(reqs[0]["body"]["data"]["grant"], g.as_str());
    wait_hook(&s, "so-gd", "main", "an empty outbox", |v| v["pending"] == 0);
    // At least once, and here exactly once: one event id.
    let ids: std::collections::BTreeSet<String> =
        rx.requests().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 1);
}

#[test]
fn an_event_failing_for_the_window_is_parked_then_redelivered_and_redirects_are_not_followed() {
    let Some(py) = python() else { return };
    let s = Server::start(&args(&["--webhook-park-after", "2"]));
    register_agency(&s, "so-gd", 22);
    let pk = vault_key(&s);
    let rx = Receiver::start(&py, &pk, 0, "redirect");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": rx.url(), "events": ["grant.created"]})).status, 201);
    let g = grant(&s, "so-gd", 3600, None);
    wait_hook(&s, "so-gd", "main", "a parked event", |v| v["parked"] == 1 && v["pending"] == 0);
    let failed = call("GET", &s.url("/v1/agencies/so-gd/webhooks/main/failed"), Some(&s.operator()), &[], None).json();
    let ev = &failed["events"][0];
    assert_eq!(ev["event"]["data"]["grant"], g.as_str());
    assert!(ev["attempts"].as_u64().unwrap() >= 2, "{ev}");
    assert!(ev["last_error"].as_str().unwrap().contains("redirects are not followed"), "{ev}");
    assert!(ev["parked_at"].is_string());
    assert!(failed["next"].is_null(), "one page: {failed}");
    // Paged: `after` the only event, nothing; bad paging parameters are refused.
    let id = ev["event"]["id"].as_str().unwrap();
    let path = format!("/v1/agencies/so-gd/webhooks/main/failed?after={id}&limit=1");
    let r = call("GET", &s.url(&path), Some(&s.operator()), &[], None).json();
    assert_eq!((r["events"].as_array().unwrap().len(), r["next"].is_null()), (0, true), "{r}");
    for q in ["limit=0", "limit=1001", "limit=x", "after=msg_1"] {
        let r = call(
            "GET",
            &s.url(&format!("/v1/agencies/so-gd/webhooks/main/failed?{q}")),
            Some(&s.operator()),
            &[],
            None,
        );
        assert_eq!((r.status, r.code()), (400, "invalid_request".into()), "{q}");
    }
    // The redirect was never followed.
    let reqs = rx.requests();
    assert!(reqs.len() >= 2 && reqs.iter().all(|r| r["path"] == "/hook"), "{reqs:#?}");
    all_valid(&reqs);
    let event_id = ev["event"]["id"].as_str().unwrap().to_owned();

    // Redeliver to a receiver that accepts: the same event id arrives.
    let rx2 = Receiver::start(&py, &pk, 0, "ok");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": rx2.url(), "events": ["grant.created"]})).status, 200);
    let path = format!("/v1/agencies/so-gd/webhooks/main/failed/{event_id}/redeliver");
    let r = call("POST", &s.url(&path), Some(&s.operator()), &[], None);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let reqs = rx2.wait_for("the redelivered event", |r| !r.is_empty());
    all_valid(&reqs);
    assert_eq!(reqs[0]["id"], event_id.as_str());
    wait_hook(&s, "so-gd", "main", "nothing left", |v| v["pending"] == 0 && v["parked"] == 0);
    // Redelivering again: no such parked event.
    assert_eq!(call("POST", &s.url(&path), Some(&s.operator()), &[], None).status, 404);
    let bad = "/v1/agencies/so-gd/webhooks/main/failed/evt_1/redeliver";
    assert_eq!(call("POST", &s.url(bad), Some(&s.operator()), &[], None).status, 404);
    assert_eq!(call("POST", &s.url(&path), Some(&s.owner(CITIZEN)), &[], None).status, 403);
}

#[test]
fn kill_9_with_undelivered_events_then_restart_delivers_every_one() {
    let Some(py) = python() else { return };
    let s = Server::start(&args(&[]));
    register_agency(&s, "so-gd", 22);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    let grants: Vec<String> = (0..5).map(|_| grant(&s, "so-gd", 3600, None)).collect();
    let pk = get_hook(&s, "so-gd", "main").json()["public_key"].as_str().unwrap().to_owned();
    // Acknowledged, not delivered (nothing listens): kill -9.
    let dir = s.stop();
    let s = Server::start_at(dir, free_port(), &args(&[]));
    let rx = Receiver::start(&py, &pk, port, "ok");
    let reqs = rx.wait_for("five events", |r| {
        let got: std::collections::BTreeSet<_> =
            r.iter().filter_map(|x| x["body"]["data"]["grant"].as_str().map(str::to_owned)).collect();
        grants.iter().all(|g| got.contains(g))
    });
    all_valid(&reqs);
    wait_hook(&s, "so-gd", "main", "an empty outbox", |v| v["pending"] == 0);
    // The signing key survived the restart (receivers keep their key), and is public.
    assert_eq!(get_hook(&s, "so-gd", "main").json()["public_key"], pk.as_str());
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    assert_eq!(key["webhook_public_key"], pk.as_str());
    assert_ne!(key["public_key"].as_str(), pk.strip_prefix("whpk_"), "not the checkpoint key");
}

#[test]
fn bad_subscriptions_are_refused_with_clear_errors() {
    let s = Server::start(&[]);
    register_agency(&s, "so-gd", 22);
    let put = |id: &str, body: &[u8]| {
        call(
            "PUT",
            &s.url(&format!("/v1/agencies/so-gd/webhooks/{id}")),
            Some(&s.operator()),
            &[("Content-Type", "application/json")],
            Some(body),
        )
    };
    let ok = json!({"url": "https://dossier.example.vn/hooks", "events": ["grant.created"]});
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"url\": ".to_vec(), "malformed JSON"),
        (
            json!({"url": "https://dossier.example.vn/", "events": ["grant.deleted"]}).to_string().into(),
            "unknown variant",
        ),
        (json!({"url": "https://dossier.example.vn/", "events": []}).to_string().into(), "at least one"),
        (
            json!({"url": "https://dossier.example.vn/", "events": ["grant.created", "grant.created"]})
                .to_string()
                .into(),
            "twice",
        ),
        (
            json!({"url": "https://dossier.example.vn/", "events": ["grant.created"], "secret": "x"})
                .to_string()
                .into(),
            "unknown field",
        ),
        (json!({"url": "http://127.0.0.1:9000/", "events": ["grant.created"]}).to_string().into(), "only https"),
        (json!({"url": "http://dossier.example.vn/", "events": ["grant.created"]}).to_string().into(), "only https"),
        (json!({"url": "ftp://dossier.example.vn/", "events": ["grant.created"]}).to_string().into(), "only https"),
        (json!({"url": "https://10.0.0.7/", "events": ["grant.created"]}).to_string().into(), "not a public address"),
        (
            json!({"url": "https://169.254.169.254/latest", "events": ["grant.created"]}).to_string().into(),
            "not a public address",
        ),
        (json!({"url": "https://[::1]:8443/", "events": ["grant.created"]}).to_string().into(), "not a public address"),
        (
            json!({"url": "https://[::ffff:192.168.0.1]/", "events": ["grant.created"]}).to_string().into(),
            "not a public address",
        ),
        (
            json!({"url": "https://user:pw@dossier.example.vn/", "events": ["grant.created"]}).to_string().into(),
            "user name",
        ),
        (
            json!({"url": format!("https://dossier.example.vn/{}", "a".repeat(3000)), "events": ["grant.created"]})
                .to_string()
                .into(),
            "at most 2048",
        ),
    ];
    for (body, why) in &cases {
        let r = put("main", body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "invalid_request"),
            "{why}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(String::from_utf8_lossy(&r.body).contains(why), "{why}: {}", String::from_utf8_lossy(&r.body));
    }
    // Oversized body.
    let mut big = ok.clone();
    big["pad"] = json!("x".repeat(20_000));
    let r = put("main", big.to_string().as_bytes());
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    // Malformed ids, unknown agency, not the operator.
    assert_eq!(put("Main!", ok.to_string().as_bytes()).code(), "invalid_request");
    let r = call(
        "PUT",
        &s.url("/v1/agencies/nobody/webhooks/main"),
        Some(&s.operator()),
        &[("Content-Type", "application/json")],
        Some(ok.to_string().as_bytes()),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let (_, agency) = register_agency(&s, "ubnd-xa", 21);
    for tok in [agency, s.owner(CITIZEN)] {
        let r = call(
            "PUT",
            &s.url("/v1/agencies/so-gd/webhooks/main"),
            Some(&tok),
            &[("Content-Type", "application/json")],
            Some(ok.to_string().as_bytes()),
        );
        assert_eq!(r.status, 403);
        // Refused before the body is read: a bad body is 403 too.
        let r = call(
            "PUT",
            &s.url("/v1/agencies/so-gd/webhooks/main"),
            Some(&tok),
            &[("Content-Type", "application/json")],
            Some(b"{\"url\": \"ftp://x\"}"),
        );
        assert_eq!(r.status, 403);
        assert_eq!(call("GET", &s.url("/v1/agencies/so-gd/webhooks/main"), Some(&tok), &[], None).status, 403);
        assert_eq!(call("GET", &s.url("/v1/agencies/so-gd/webhooks/main/failed"), Some(&tok), &[], None).status, 403);
        assert_eq!(call("DELETE", &s.url("/v1/agencies/so-gd/webhooks/main"), Some(&tok), &[], None).status, 403);
    }
    // Nothing was stored by any of it.
    assert_eq!(get_hook(&s, "so-gd", "main").status, 404);
    // A good one: created, replaced, read, deleted.
    assert_eq!(put("main", ok.to_string().as_bytes()).status, 201);
    let r = put("main", ok.to_string().as_bytes());
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(
        (v["url"].as_str(), v["events"].clone()),
        (Some("https://dossier.example.vn/hooks"), json!(["grant.created"]))
    );
    assert_eq!(call("DELETE", &s.url("/v1/agencies/so-gd/webhooks/main"), Some(&s.operator()), &[], None).status, 204);
    assert_eq!(get_hook(&s, "so-gd", "main").status, 404);
    assert_eq!(call("DELETE", &s.url("/v1/agencies/so-gd/webhooks/main"), Some(&s.operator()), &[], None).status, 404);
    // Documented in /openapi.json.
    let doc = call("GET", &s.url("/openapi.json"), None, &[], None).json();
    assert!(doc["paths"]["/v1/agencies/{agency}/webhooks/{id}"]["put"].is_object());
    assert!(doc["paths"]["/v1/agencies/{agency}/webhooks/{id}/failed/{event}/redeliver"]["post"].is_object());
}

#[test]
fn a_host_name_resolving_to_loopback_is_refused_at_delivery_and_never_connected() {
    // Not --dev: loopback is not allowed. `localhost` is a name, so the PUT cannot tell; the
    // delivery resolves it, refuses 127.0.0.1 and ::1, and never connects.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut a = FAST.to_vec();
    a.extend(["--webhook-park-after", "1"]);
    let s = Server::start(&a);
    register_agency(&s, "so-gd", 22);
    let url = format!("https://localhost:{port}/hook");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    grant(&s, "so-gd", 3600, None);
    wait_hook(&s, "so-gd", "main", "a parked event", |v| v["parked"] == 1);
    let failed = call("GET", &s.url("/v1/agencies/so-gd/webhooks/main/failed"), Some(&s.operator()), &[], None).json();
    let err = failed["events"][0]["last_error"].as_str().unwrap();
    assert!(err.contains("no allowed address"), "{err}");
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "a connection was made");
}

#[test]
fn the_independent_verifier_refuses_forged_tampered_and_stale_deliveries() {
    // The receiver's verdicts above mean something only if it refuses what it must.
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use ed25519_dalek::{Signer as _, SigningKey};
    let Some(py) = python() else { return };
    let key = SigningKey::from_bytes(&[9; 32]);
    let other = SigningKey::from_bytes(&[10; 32]);
    let rx = Receiver::start(&py, &format!("whpk_{}", B64.encode(key.verifying_key().to_bytes())), 0, "ok");
    let body = br#"{"type":"grant.created","timestamp":"2026-12-03T10:00:00Z","data":{}}"#;
    let id = "msg_0123456789abcdef0123456789abcdef";
    let sign = |k: &SigningKey, ts: i64, b: &[u8]| {
        let mut m = format!("{id}.{ts}.").into_bytes();
        m.extend_from_slice(b);
        format!("v1a,{}", B64.encode(k.sign(&m).to_bytes()))
    };
    let send = |ts: i64, sig: &str, b: &[u8]| {
        let r = call(
            "POST",
            &rx.url(),
            None,
            &[("webhook-id", id), ("webhook-timestamp", &ts.to_string()), ("webhook-signature", sig)],
            Some(b),
        );
        r.status
    };
    let t = now();
    assert_eq!(send(t, &sign(&key, t, body), body), 204);
    assert_eq!(send(t, &format!("v1,abc {}", sign(&key, t, body)), body), 204, "any matching v1a entry");
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert_eq!(send(t, &sign(&key, t, body), &tampered), 401, "tampered body");
    assert_eq!(send(t, &sign(&other, t, body), body), 401, "another key");
    assert_eq!(send(t + 1, &sign(&key, t, body), body), 401, "another timestamp");
    assert_eq!(send(t - 3600, &sign(&key, t - 3600, body), body), 401, "stale");
    assert_eq!(send(t, &sign(&key, t, body).replacen("v1a,", "v1,", 1), body), 401, "not v1a");
    let reqs = rx.requests();
    assert_eq!(reqs.iter().filter(|r| r["valid"] == true).count(), 2, "{reqs:#?}");
}

#[test]
fn kill_9_during_a_stream_of_changes_keeps_the_event_of_every_acknowledged_one() {
    let Some(py) = python() else { return };
    let s = Server::start(&args(&[]));
    register_agency(&s, "so-gd", 22);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    let pk = get_hook(&s, "so-gd", "main").json()["public_key"].as_str().unwrap().to_owned();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (acked, base, tok) = (acked.clone(), s.base.clone(), s.owner(CITIZEN));
            std::thread::spawn(move || {
                let started = Instant::now();
                while started.elapsed() < WAIT {
                    let body = json!({"grantee": "so-gd", "purpose": "1.000001", "doc_types": ["giay-khai-sinh"],
                                      "expires_at": Timestamp::now().plus_seconds(3600).to_string()});
                    let r = ureq::post(&format!("{base}/v1/owners/{CITIZEN}/grants"))
                        .timeout(Duration::from_secs(10))
                        .set("Authorization", &format!("Bearer {tok}"))
                        .send_json(body);
                    match r {
                        Ok(r) if r.status() == 201 => {
                            let v: Value = r.into_json().unwrap();
                            acked.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    while acked.lock().unwrap().len() < 20 {
        assert!(start.elapsed() < WAIT, "the writers made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir = s.stop(); // kill -9 while grants are being written
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let s = Server::start_at(dir, free_port(), &args(&[]));
    let rx = Receiver::start(&py, &pk, port, "ok");
    let reqs = rx.wait_for("an event for every acknowledged grant", |r| {
        let got: std::collections::BTreeSet<&str> =
            r.iter().filter_map(|x| x["body"]["data"]["grant"].as_str()).collect();
        acked.iter().all(|g| got.contains(g.as_str()))
    });
    all_valid(&reqs);
    wait_hook(&s, "so-gd", "main", "an empty outbox", |v| v["pending"] == 0);
}

/// A bare HTTP receiver (no verification) that holds each request `hold` before answering 204
/// and records the most requests it held at once; `hold` of `None` never answers.
struct Holder {
    port: u16,
    max: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn holder(hold: Option<Duration>) -> Holder {
    use std::io::{Read as _, Write as _};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (max, served, now) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (m, s) = (max.clone(), served.clone());
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let (m, s, now) = (m.clone(), s.clone(), now.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let held = now.fetch_add(1, SeqCst) + 1;
                m.fetch_max(held, SeqCst);
                match hold {
                    Some(d) => std::thread::sleep(d),
                    None => std::thread::sleep(Duration::from_secs(3600)),
                }
                now.fetch_sub(1, SeqCst);
                s.fetch_add(1, SeqCst);
                let _ = c.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    Holder { port, max, served }
}

#[test]
fn attempts_per_subscription_stay_within_the_concurrency_limit() {
    use std::sync::atomic::Ordering::SeqCst;
    let h = holder(Some(Duration::from_millis(300)));
    let s = Server::start(&args(&["--webhook-concurrency", "2"]));
    register_agency(&s, "so-gd", 22);
    let url = format!("http://127.0.0.1:{}/hook", h.port);
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    for _ in 0..8 {
        grant(&s, "so-gd", 3600, None);
    }
    wait_hook(&s, "so-gd", "main", "every event delivered", |v| v["pending"] == 0);
    assert!(h.served.load(SeqCst) >= 8);
    let max = h.max.load(SeqCst);
    assert!((1..=2).contains(&max), "{max} attempts at once to one subscription");
}

#[test]
fn an_attempt_that_gets_no_answer_times_out_and_is_retried_then_parked() {
    let h = holder(None);
    let s = Server::start(&args(&["--webhook-timeout", "1", "--webhook-park-after", "2"]));
    register_agency(&s, "so-gd", 22);
    let url = format!("http://127.0.0.1:{}/hook", h.port);
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    grant(&s, "so-gd", 3600, None);
    wait_hook(&s, "so-gd", "main", "a parked event", |v| v["parked"] == 1);
    let failed = call("GET", &s.url("/v1/agencies/so-gd/webhooks/main/failed"), Some(&s.operator()), &[], None).json();
    let e = &failed["events"][0];
    assert!(e["attempts"].as_u64().unwrap() >= 2, "{e}");
    assert!(e["last_error"].as_str().unwrap().to_lowercase().contains("timed out"), "{e}");
}

#[test]
fn private_targets_are_allowed_only_with_the_flag() {
    let s = Server::start(&["--webhook-allow-private"]);
    register_agency(&s, "so-gd", 22);
    let r = put_hook(&s, "so-gd", "main", &json!({"url": "https://10.0.0.7/hook", "events": ["grant.created"]}));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // Still https only without --dev.
    let r = put_hook(&s, "so-gd", "main", &json!({"url": "http://10.0.0.7/hook", "events": ["grant.created"]}));
    assert_eq!(r.code(), "invalid_request");
}

#[test]
fn sigterm_with_an_attempt_in_flight_closes_the_vault_cleanly() {
    let h = holder(None);
    let s = Server::start(&args(&[]));
    register_agency(&s, "so-gd", 22);
    let url = format!("http://127.0.0.1:{}/hook", h.port);
    assert_eq!(put_hook(&s, "so-gd", "main", &json!({"url": url, "events": ["grant.created"]})).status, 201);
    grant(&s, "so-gd", 3600, None);
    // The attempt is in flight once the receiver holds the request.
    let start = Instant::now();
    while h.max.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(start.elapsed() < WAIT, "no attempt was made");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = s;
    let st = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let code = s.child.wait().unwrap();
    assert!(code.success(), "{code:?}");
    let log = std::fs::read_to_string(s.dir.path().join("server.log")).unwrap();
    assert!(!log.contains("still hold the vault"), "{log}");
    // The event was not acknowledged, so it is still there after the restart.
    let port = s.port;
    let dir = s.stop();
    let s = Server::start_at(dir, port, &args(&[]));
    assert_eq!(get_hook(&s, "so-gd", "main").json()["pending"], 1);
}
