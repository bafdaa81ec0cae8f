//! Reuse statistics through the real server binary (webhooks: tests/webhooks.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::http::*;
use serde_json::json;
use vault::{Digest, Timestamp};

fn stats(s: &Server, tok: &str, q: &str, h: &[(&str, &str)]) -> Resp {
    call("GET", &s.url(&format!("/v1/stats/reuse{q}")), Some(tok), h, None)
}

fn check(s: &Server) {
    let r = stats(s, &s.operator(), "?by=procedure", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["by"], "procedure");
    let row = v["rows"].as_array().unwrap().iter().find(|r| r["group"] == "1.000001").unwrap().clone();
    assert_eq!((row["reuse_checks"].as_u64(), row["components"].as_u64()), (Some(2), Some(4)));
    assert_eq!((row["held"].as_u64(), row["missing"].as_u64()), (Some(2), Some(2)));
}

#[test]
fn reuse_statistics_over_http_json_csv_metrics_and_restart() {
    let s = Server::start(&[]);
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let (_, reader) = register_agency(&s, "so-gd", 22);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let data = b"birth certificate bytes".to_vec();
    let digest = Digest::of(&data);
    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&iss), &[], Some(&data));
    assert_eq!(r.status, 201);
    let r = post_json(
        &s.url(&format!("{base}/documents")),
        &iss,
        None,
        &signed_deposit(CITIZEN, &data, "ubnd-xa", &iss_key),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let expires = Timestamp::now().plus_seconds(3600).to_string();
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "purpose_text": "Tuyển sinh", "doc_types": ["giay-khai-sinh", "cccd"], "expires_at": expires}),
    );
    assert_eq!(r.status, 201);
    for _ in 0..2 {
        let r = post_json(
            &s.url(&format!("{base}/reuse")),
            &reader,
            Some("1.000001"),
            &json!({"purpose": "1.000001", "doc_types": ["giay-khai-sinh", "cccd"]}),
        );
        assert_eq!(r.status, 200);
    }

    check(&s);
    // CSV by Accept or format=csv.
    for (q, h) in [("?by=doc_type", vec![("Accept", "text/csv")]), ("?by=doc_type&format=csv", vec![])] {
        let r = stats(&s, &s.operator(), q, &h);
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/csv"));
        let text = String::from_utf8(r.body).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("doc_type,reuse_checks,components,held,missing,expired,revoked,not_granted,content_reads,bytes_not_uploaded")
        );
        assert!(text.contains("\r\ncccd,0,2,0,2,0,0,0,0,0\r\n"), "{text}");
        assert!(text.contains("\r\ngiay-khai-sinh,0,2,2,0,0,0,0,0,0\r\n"), "{text}");
    }
    // An agency sees only its own; the issuer did no checks; an owner is refused.
    let r = stats(&s, &iss, "?by=procedure", &[]).json();
    assert_eq!(r["total"]["reuse_checks"], 0);
    assert_eq!(stats(&s, &reader, "?by=agency", &[]).json()["rows"][0]["group"], "so-gd");
    assert_eq!(stats(&s, &citizen, "", &[]).status, 403);
    assert_eq!(stats(&s, &s.operator(), "?by=owner", &[]).code(), "invalid_request");
    assert_eq!(stats(&s, &s.operator(), "?from=2026-02-30", &[]).code(), "invalid_request");
    assert_eq!(stats(&s, &s.operator(), "?from=2026-02-02&to=2026-02-01", &[]).code(), "invalid_request");
    // Prometheus: the same totals, a fixed set of series.
    let m = String::from_utf8(call("GET", &s.url("/metrics"), None, &[], None).body).unwrap();
    assert!(m.contains("vault_reuse_components_total{status=\"held\"} 2\n"), "{m}");
    assert!(m.contains("vault_reuse_components_total{status=\"missing\"} 2\n"), "{m}");
    assert!(m.contains("vault_reuse_checks_total 2\n"), "{m}");
    // Documented in /openapi.json.
    let doc = call("GET", &s.url("/openapi.json"), None, &[], None).json();
    assert!(doc["paths"]["/v1/stats/reuse"]["get"].is_object());
    // Erasure keeps the counts, and a kill -9 and restart keep them too.
    let r = call("DELETE", &s.url(&base), Some(&citizen), &[], None);
    assert!(r.status == 200 || r.status == 204, "{}", r.status);
    let port = s.port;
    let dir = s.stop();
    let s = Server::start_at(dir, port, &[]);
    check(&s);
    // The command line: `vault stats reuse --by procedure --from ... --csv`, and JSON.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(binary().with_file_name("vault"))
            .env_clear()
            .env("VAULT_SERVER", &s.base)
            .env("VAULT_STATE", s.dir.path().join("client-state.json"))
            .env("VAULT_TOKEN", s.operator())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "vault {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let today = Timestamp::now().to_string()[..10].to_owned();
    let csv = cli(&["stats", "reuse", "--by", "procedure", "--from", &today, "--csv"]);
    assert!(csv.starts_with("procedure,reuse_checks,"), "{csv}");
    assert!(csv.contains("\r\n1.000001,2,4,2,2,0,0,0,0,0\r\n"), "{csv}");
    let v: serde_json::Value = serde_json::from_str(&cli(&["--json", "stats", "reuse", "--by", "month"])).unwrap();
    assert_eq!(v["total"]["reuse_checks"], 2);
}
