//! The authorization matrix of the library, over HTTP against the real binary: every action ×
//! every kind of caller → the expected status and error code; every refusal audited.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::http::*;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use vault::{Digest, Timestamp};

fn grant(s: &Server, citizen: &str, grantee: &str, secs: i64, max_uses: Option<u64>, types: &[&str]) -> Value {
    let expires = Timestamp::now().plus_seconds(secs).to_string();
    let r = post_json(
        &s.url(&format!("/v1/owners/{CITIZEN}/grants")),
        citizen,
        None,
        &json!({"grantee": grantee, "purpose": "2.000001", "doc_types": types, "expires_at": expires, "max_uses": max_uses}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// "ok", or the error code of the answer.
fn outcome(r: &Resp) -> String {
    if (200..300).contains(&r.status) {
        "ok".into()
    } else {
        r.code()
    }
}

#[test]
fn authorization_matrix_over_http() {
    let s = Server::start(&[]);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let (iss_key, iss) = register_agency(&s, "iss", 70);
    let mut agency_tokens = std::collections::HashMap::new();
    for (i, a) in ["a-match", "a-expired", "a-revoked", "a-used", "a-other-type", "a-none"].iter().enumerate() {
        agency_tokens.insert(*a, register_agency(&s, a, 71 + i as u8).1);
    }
    let data = b"can cuoc cong dan".to_vec();
    let d = Digest::of(&data);
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{d}")), Some(&iss), &[], Some(&data)).status, 201);
    let mut dep = signed_deposit(CITIZEN, &data, "iss", &iss_key);
    dep["doc_type"] = json!("cccd");
    let st = vault::engine::provenance::statement(
        &vault::OwnerId::parse(CITIZEN).unwrap(),
        data.len() as u64,
        &serde_json::from_value::<vault::NewDocument>(dep.clone()).unwrap(),
    );
    dep["signature"]["value"] =
        json!(vault::engine::provenance::sign_statement(&iss_key, &vault::KeyId::parse("k1").unwrap(), &st).value);
    let r = post_json(&s.url(&format!("{base}/documents")), &iss, None, &dep);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();

    grant(&s, &citizen, "a-match", 3600, None, &["cccd"]);
    grant(&s, &citizen, "a-expired", 1, None, &["cccd"]);
    let revoked = grant(&s, &citizen, "a-revoked", 3600, None, &["cccd"]);
    assert_eq!(
        call(
            "DELETE",
            &s.url(&format!("{base}/grants/{}", revoked["id"].as_str().unwrap())),
            Some(&citizen),
            &[],
            None
        )
        .status,
        204
    );
    grant(&s, &citizen, "a-used", 3600, Some(1), &["cccd"]);
    let used = call(
        "GET",
        &s.url(&format!("{base}/documents/{id}/content")),
        Some(&agency_tokens["a-used"]),
        &[("Vault-Purpose", "2.000001")],
        None,
    );
    assert_eq!(used.status, 200);
    grant(&s, &citizen, "a-other-type", 3600, None, &["giay-khai-sinh"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));

    let ghost = register_free_token();
    let p = Some("2.000001");
    let callers: Vec<(&str, String, Option<&str>)> = vec![
        ("owner", citizen.clone(), None),
        ("other owner", s.owner("citizen:000000000002"), None),
        ("matching grant", agency_tokens["a-match"].clone(), p),
        ("wrong purpose", agency_tokens["a-match"].clone(), Some("9.999999")),
        ("no purpose", agency_tokens["a-match"].clone(), None),
        ("expired grant", agency_tokens["a-expired"].clone(), p),
        ("revoked grant", agency_tokens["a-revoked"].clone(), p),
        ("used-up grant", agency_tokens["a-used"].clone(), p),
        ("grant for another type", agency_tokens["a-other-type"].clone(), p),
        ("no grant", agency_tokens["a-none"].clone(), p),
        ("unregistered agency", ghost, p),
        ("operator", s.operator(), None),
    ];
    let f = "forbidden";
    let g = "grant_required";
    let expected: Vec<(&str, [&str; 11])> = vec![
        ("owner", ["ok", "ok", "ok", "ok", "ok", "not_found", f, "ok", "ok", "not_found", "ok"]),
        ("other owner", [f; 11]),
        ("matching grant", ["ok", "ok", "ok", "ok", "ok", f, f, f, f, f, f]),
        ("wrong purpose", ["ok", g, g, g, g, f, f, f, f, f, f]),
        (
            "no purpose",
            [
                "purpose_required",
                "purpose_required",
                "purpose_required",
                "purpose_required",
                "purpose_required",
                f,
                f,
                f,
                f,
                f,
                f,
            ],
        ),
        ("expired grant", ["ok", g, g, g, g, f, f, f, f, f, f]),
        ("revoked grant", ["ok", g, g, g, g, f, f, f, f, f, f]),
        ("used-up grant", ["ok", g, g, g, g, f, f, f, f, f, f]),
        ("grant for another type", ["ok", "ok", g, g, "ok", f, f, f, f, f, f]),
        ("no grant", ["ok", g, g, g, g, f, f, f, f, f, f]),
        ("unregistered agency", ["unauthenticated"; 11]),
        ("operator", [f; 11]),
    ];
    let before = call("GET", &s.url(&format!("{base}/access-log")), Some(&citizen), &[], None).json()["entries"]
        .as_array()
        .unwrap()
        .len();
    let mut audited_refusals = 0;
    let mut audited_calls = 0;
    for (name, tok, purpose) in &callers {
        let mut h: Vec<(&str, &str)> = Vec::new();
        if let Some(p) = purpose {
            h.push(("Vault-Purpose", p));
        }
        let mut hj = h.clone();
        hj.push(("Content-Type", "application/json"));
        let reuse_purpose = purpose.unwrap_or("2.000001");
        let zero = "0".repeat(32);
        let expires = Timestamp::now().plus_seconds(60).to_string();
        let got: Vec<String> = [
            call("POST", &s.url(&format!("{base}/contents/missing")), Some(tok), &hj, Some(json!({"digests": [d]}).to_string().as_bytes())),
            call("GET", &s.url(&format!("{base}/documents")), Some(tok), &h, None),
            call("GET", &s.url(&format!("{base}/documents/{id}")), Some(tok), &h, None),
            call("GET", &s.url(&format!("{base}/documents/{id}/content")), Some(tok), &h, None),
            call("POST", &s.url(&format!("{base}/reuse")), Some(tok), &hj, Some(json!({"purpose": reuse_purpose, "doc_types": ["cccd"]}).to_string().as_bytes())),
            call("DELETE", &s.url(&format!("{base}/documents/{zero}")), Some(tok), &h, None),
            call("POST", &s.url(&format!("{base}/documents/{id}/revocation")), Some(tok), &hj, Some(br#"{"reason": "x"}"#)),
            call("POST", &s.url(&format!("{base}/grants")), Some(tok), &hj, Some(json!({"grantee": "a-none", "purpose": "3.3", "doc_types": ["cccd"], "expires_at": expires, "max_uses": 5}).to_string().as_bytes())),
            call("GET", &s.url(&format!("{base}/grants")), Some(tok), &h, None),
            call("DELETE", &s.url(&format!("{base}/grants/{zero}")), Some(tok), &h, None),
            call("GET", &s.url(&format!("{base}/access-log")), Some(tok), &h, None),
        ]
        .iter()
        .map(outcome)
        .collect();
        let want = expected.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got, want.to_vec(), "caller: {name}");
        if *name != "unregistered agency" {
            audited_calls += 10;
            audited_refusals += got[..10].iter().filter(|g| *g != "ok").count();
        }
    }
    let entries = call("GET", &s.url(&format!("{base}/access-log")), Some(&citizen), &[], None).json()["entries"]
        .as_array()
        .unwrap()
        .clone();
    let new = &entries[before..];
    assert_eq!(new.len(), audited_calls, "one audit entry per authenticated call about the owner");
    let refused = new.iter().filter(|e| e["outcome"].as_str().unwrap().starts_with("refused:")).count();
    assert_eq!(refused, audited_refusals, "each refusal is audited");
}

/// A token signed by a key no agency registered.
fn register_free_token() -> String {
    let sk = SigningKey::from_bytes(&[99; 32]);
    let now = now();
    token(&sk, "k1", "a-ghost", "a-ghost", json!("vault"), now, now + 600)
}
