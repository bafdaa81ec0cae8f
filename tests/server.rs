//! End-to-end tests of `vault-server` over HTTP on 127.0.0.1: the real binary, the contract of
//! api.md, tokens minted here independently of the server's code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use vault::{Digest, Timestamp};

use common::http::*;

#[test]
fn the_whole_story_over_http() {
    let s = Server::start(&[]);
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let (_, reader) = register_agency(&s, "so-gd", 22);
    let citizen = s.owner(CITIZEN);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    let base = format!("/v1/owners/{CITIZEN}");

    // Skip-upload negotiation, upload (chunked), deposit.
    let r =
        post_json(&s.url(&format!("{base}/contents/missing")), &iss, Some("1.001193"), &json!({"digests": [digest]}));
    assert_eq!((r.status, r.json()["missing"][0].as_str()), (200, Some(digest.to_hex().as_str())));
    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&iss), &[], Some(&data));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["size"], 200_000);
    let r = post_json(
        &s.url(&format!("{base}/documents")),
        &iss,
        None,
        &signed_deposit(CITIZEN, &data, "ubnd-xa", &iss_key),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let doc = r.json();
    assert_eq!((doc["verified"].as_bool(), doc["status"].as_str()), (Some(true), Some("valid")));
    let id = doc["id"].as_str().unwrap().to_owned();
    // The citizen sees it; held content is now reported held to the citizen.
    let r = call("GET", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None);
    assert_eq!(r.json()["documents"].as_array().unwrap().len(), 1);
    let r = post_json(&s.url(&format!("{base}/contents/missing")), &citizen, None, &json!({"digests": [digest]}));
    assert_eq!(r.json()["missing"], json!([]));
    // A re-upload of held content by the owner: 200.
    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&citizen), &[], Some(&data));
    assert_eq!(r.status, 200);

    // Content: whole, ranges, ETag.
    let url = s.url(&format!("{base}/documents/{id}/content"));
    let r = call("GET", &url, Some(&citizen), &[], None);
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    assert!(r.body == data);
    assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(r.header("content-type"), Some("application/pdf"));
    let r = call("GET", &url, Some(&citizen), &[("Range", "bytes=100000-100099")], None);
    assert_eq!(r.status, 206);
    assert!(r.body == data[100_000..100_100]);
    assert_eq!(r.header("content-range"), Some("bytes 100000-100099/200000"));
    let r = call("GET", &url, Some(&citizen), &[("Range", "bytes=-10")], None);
    assert!(r.status == 206 && r.body == data[data.len() - 10..]);
    let r = call("GET", &url, Some(&citizen), &[("Range", "bytes=300000-")], None);
    assert_eq!((r.status, r.code()), (416, "invalid_range".into()));
    let r = call("GET", &url, Some(&citizen), &[("If-None-Match", &format!("\"{digest}\""))], None);
    assert_eq!(r.status, 304);

    // Consent: the other agency needs a grant and a purpose.
    let r =
        call("GET", &s.url(&format!("{base}/documents/{id}")), Some(&reader), &[("Vault-Purpose", "1.000001")], None);
    assert_eq!((r.status, r.code()), (403, "grant_required".into()));
    let r = call("GET", &s.url(&format!("{base}/documents/{id}")), Some(&reader), &[], None);
    assert_eq!((r.status, r.code()), (400, "purpose_required".into()));
    let expires = Timestamp::now().plus_seconds(3600).to_string();
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "purpose_text": "Tuyển sinh", "doc_types": ["giay-khai-sinh"], "expires_at": expires, "max_uses": 5}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let grant = r.json();
    assert_eq!((grant["uses"].as_u64(), grant["status"].as_str()), (Some(0), Some("active")));
    assert!(grant["receipt"]["signature"].is_string());
    let r = post_json(
        &s.url(&format!("{base}/reuse")),
        &reader,
        Some("1.000001"),
        &json!({"purpose": "1.000001", "doc_types": ["giay-khai-sinh", "cccd"]}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let comps = r.json()["components"].clone();
    assert_eq!((comps[0]["status"].as_str(), comps[1]["status"].as_str()), (Some("held"), Some("not_granted")));
    assert_eq!(comps[0]["document"]["id"].as_str(), Some(id.as_str()));
    assert!(comps[1]["document"].is_null());
    let r = post_json(
        &s.url(&format!("{base}/reuse")),
        &reader,
        Some("1.000001"),
        &json!({"purpose": "1.000002", "doc_types": ["cccd"]}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None);
    assert!(r.status == 200 && r.body == data);
    let r = call("GET", &s.url("/v1/grants"), Some(&reader), &[], None);
    assert_eq!(r.json()["grants"][0]["uses"], 1);
    // A range, a 304 and a 416 are reads too (each tells the agency something of the content)
    // and count one use each (SPEC.md §20); the document's record counts none.
    let p = [("Vault-Purpose", "1.000001")];
    let r = call("GET", &url, Some(&reader), &[p[0], ("Range", "bytes=10-19")], None);
    assert!(r.status == 206 && r.body == data[10..20], "{}", r.status);
    let etag = format!("\"{digest}\"");
    let r = call("GET", &url, Some(&reader), &[p[0], ("If-None-Match", &etag)], None);
    assert_eq!((r.status, r.header("etag")), (304, Some(etag.as_str())));
    let r = call("GET", &url, Some(&reader), &[p[0], ("Range", "bytes=200000-")], None);
    assert_eq!((r.status, r.code()), (416, "invalid_range".into()));
    let r = call("GET", &s.url(&format!("{base}/documents/{id}")), Some(&reader), &p, None);
    assert_eq!(r.status, 200);
    let r = call("GET", &s.url("/v1/grants"), Some(&reader), &[], None);
    assert_eq!(r.json()["grants"][0]["uses"], 4);
    let r = call("GET", &s.url("/v1/grants"), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
    let gid = grant["id"].as_str().unwrap();
    let r = call("DELETE", &s.url(&format!("{base}/grants/{gid}")), Some(&citizen), &[], None);
    assert_eq!(r.status, 204);
    let r = call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None);
    assert_eq!((r.status, r.code()), (403, "grant_required".into()));
    // Revocation by the issuer only.
    let r = post_json(&s.url(&format!("{base}/documents/{id}/revocation")), &reader, None, &json!({"reason": "x"}));
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));

    // The access log, a leaf, its inclusion in a signed checkpoint.
    let r = call("GET", &s.url(&format!("{base}/access-log")), Some(&citizen), &[], None);
    let entries = r.json()["entries"].as_array().unwrap().clone();
    assert!(entries.len() >= 15, "{}", entries.len());
    assert!(entries.iter().any(|e| e["outcome"] == "refused:grant_required" && e["actor"] == "agency:so-gd"));
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    let verifier = vault::log::note::NoteVerifier::parse(key["note_verifier_key"].as_str().unwrap()).unwrap();
    let note = String::from_utf8(call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None).body).unwrap();
    let (_, size, root) = vault::log::note::parse_checkpoint(verifier.verify(&note).unwrap()).unwrap();
    let e = &entries[3];
    let index = e["index"].as_u64().unwrap();
    let leaf = call("GET", &s.url(&format!("{base}/access-log/{index}/leaf")), Some(&citizen), &[], None).json();
    let leaf = B64.decode(leaf["leaf"].as_str().unwrap()).unwrap();
    assert!(!String::from_utf8_lossy(&leaf).contains(CITIZEN));
    let proof =
        call("GET", &s.url(&format!("/v1/audit/proof/inclusion?index={index}&size={size}")), None, &[], None).json();
    let hashes: Vec<[u8; 32]> = proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    assert!(vault::log::merkle::verify_inclusion(&vault::log::merkle::leaf_hash(&leaf), index, size, &hashes, &root));
    let r = call("GET", &s.url(&format!("/v1/audit/proof/inclusion?index={size}&size={size}")), None, &[], None);
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = call("GET", &s.url(&format!("/v1/audit/proof/consistency?from=3&to={size}")), None, &[], None);
    assert_eq!(r.status, 200);

    // Export, verified offline; then erasure.
    let r = call("GET", &s.url(&format!("{base}/export")), Some(&citizen), &[], None);
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/x-tar")));
    let summary =
        vault::engine::rights::verify_export(r.body.as_slice(), key["note_verifier_key"].as_str().unwrap()).unwrap();
    assert_eq!((summary.documents, summary.signed_documents), (1, 1));
    let r = call("DELETE", &s.url(&base), Some(&citizen), &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["text"].as_str().unwrap().starts_with("vault-erasure-receipt-v1\n"));
    let r = call("GET", &s.url(&format!("{base}/documents/{id}")), Some(&citizen), &[], None);
    assert_eq!(r.status, 404);
    let r = call("GET", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None);
    assert_eq!(r.json()["documents"], json!([]));
    let m = s.metrics();
    assert!(m.contains("vault_http_requests_total{class=\"2xx\"}"), "{m}");
    assert!(m.contains("vault_http_route_requests_total{route=\"/v1/owners/{owner}/documents/{id}/content\",method=\"GET\",status=\"206\"}"), "{m}");
    assert!(m.contains("vault_http_request_duration_seconds_bucket{route=\"/v1/owners/{owner}/reuse\",method=\"POST\",le=\"+Inf\"}"), "{m}");
    assert!(m.contains("vault_metadata_syncs_total"), "{m}");
    assert!(m.contains("vault_audit_batches_total") && m.contains("vault_audit_entries_total"), "{m}");
    let r = call("GET", &s.url("/metrics"), None, &[], None);
    assert!(r.header("x-request-id").is_some());
    let r = call("GET", &s.url("/healthz"), None, &[("X-Request-Id", "abc-123")], None);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
}

#[test]
fn tokens_are_checked() {
    let s = Server::start(&[]);
    let (agency_key, _) = register_agency(&s, "a1", 31);
    let url = s.url(&format!("/v1/owners/{CITIZEN}/documents"));
    let ok = s.owner(CITIZEN);
    assert_eq!(call("GET", &url, Some(&ok), &[], None).status, 200);
    let t = now();
    let cases: Vec<(&str, String)> = vec![
        ("no token", String::new()),
        ("malformed", "abc.def".into()),
        ("garbage parts", "a.b.c".into()),
        ("expired", token(&s.idp, "vneid", "vneid", CITIZEN, json!("vault"), t - 4000, t - 3000)),
        ("not yet valid", token(&s.idp, "vneid", "vneid", CITIZEN, json!("vault"), t + 600, t + 1200)),
        ("too long-lived", token(&s.idp, "vneid", "vneid", CITIZEN, json!("vault"), t, t + 3601)),
        ("other audience", token(&s.idp, "vneid", "vneid", CITIZEN, json!("someone-else"), t, t + 60)),
        ("unknown kid", token(&s.idp, "other-idp", "other-idp", CITIZEN, json!("vault"), t, t + 60)),
        ("wrong key", token(&SigningKey::from_bytes(&[99; 32]), "vneid", "vneid", CITIZEN, json!("vault"), t, t + 60)),
        (
            "alg none",
            format!(
                "{}.{}.",
                B64URL.encode(r#"{"alg":"none","kid":"vneid"}"#),
                B64URL.encode(json!({"iss":"vneid","sub":CITIZEN,"aud":"vault","iat":t,"exp":t+60}).to_string())
            ),
        ),
        (
            "HS256",
            raw_token(
                &json!({"alg": "HS256", "kid": "vneid"}),
                &json!({"iss":"vneid","sub":CITIZEN,"aud":"vault","iat":t,"exp":t+60}),
                &s.idp,
            ),
        ),
        (
            "missing exp",
            raw_token(
                &json!({"alg": "EdDSA", "kid": "vneid"}),
                &json!({"iss":"vneid","sub":CITIZEN,"aud":"vault","iat":t}),
                &s.idp,
            ),
        ),
        ("sub not an owner", token(&s.idp, "vneid", "vneid", "bob", json!("vault"), t, t + 60)),
        ("agency unknown key id", token(&agency_key, "k9", "a1", "a1", json!("vault"), t, t + 60)),
        ("agency sub differs", token(&agency_key, "k1", "a1", "a2", json!("vault"), t, t + 60)),
        ("unregistered agency", token(&agency_key, "k1", "ghost", "ghost", json!("vault"), t, t + 60)),
    ];
    for (what, tok) in cases {
        let r = call("GET", &url, if tok.is_empty() { None } else { Some(&tok) }, &[], None);
        assert_eq!((r.status, r.code()), (401, "unauthenticated".into()), "{what}");
    }
    // Leeway: 30 s in the future is fine; exactly the maximum lifetime is fine.
    assert_eq!(
        call("GET", &url, Some(&token(&s.idp, "vneid", "vneid", CITIZEN, json!("vault"), t + 30, t + 90)), &[], None)
            .status,
        200
    );
    assert_eq!(
        call("GET", &url, Some(&token(&s.idp, "vneid", "vneid", CITIZEN, json!("vault"), t, t + 3600)), &[], None)
            .status,
        200
    );
    // A retired agency key stops working.
    let body = json!({"name": "A1", "keys": [{"id": "k1", "public_key": B64.encode(agency_key.verifying_key().to_bytes()), "not_before": "2020-01-01T00:00:00Z", "not_after": "2021-01-01T00:00:00Z"}]});
    call(
        "PUT",
        &s.url("/v1/agencies/a1"),
        Some(&s.operator()),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    let r = call(
        "GET",
        &s.url("/v1/agencies"),
        Some(&token(&agency_key, "k1", "a1", "a1", json!("vault"), t, t + 60)),
        &[],
        None,
    );
    assert_eq!(r.status, 401);
    // Only the operator registers agencies.
    let r = call(
        "PUT",
        &s.url("/v1/agencies/a2"),
        Some(&ok),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
}

#[test]
fn contract_errors() {
    let s = Server::start(&["--max-content-size", "1000"]);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    // Unknown route (no token needed) and wrong method: JSON errors.
    let r = call("GET", &s.url("/v1/nothing-here"), None, &[], None);
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    let r = call("PATCH", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (405, "method_not_allowed".into()));
    // Bad owner, wrong content type, malformed JSON, too many digests.
    let r = call("GET", &s.url("/v1/owners/citizen:12/documents"), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = call(
        "POST",
        &s.url(&format!("{base}/contents/missing")),
        Some(&citizen),
        &[("Content-Type", "text/plain")],
        Some(b"{}"),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = call(
        "POST",
        &s.url(&format!("{base}/contents/missing")),
        Some(&citizen),
        &[("Content-Type", "application/json")],
        Some(b"{nope"),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let many: Vec<String> = (0..10_001u32).map(|i| Digest::of(&i.to_le_bytes()).to_hex()).collect();
    let r = post_json(&s.url(&format!("{base}/contents/missing")), &citizen, None, &json!({"digests": many}));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    // Uploads: mismatch, too large (declared and chunked), bad digest.
    let d = Digest::of(b"right");
    let r = call("PUT", &s.url(&format!("{base}/contents/{d}")), Some(&citizen), &[], Some(b"wrong"));
    assert_eq!((r.status, r.code()), (400, "digest_mismatch".into()));
    let big = vec![7u8; 5000];
    let r = call("PUT", &s.url(&format!("{base}/contents/{}", Digest::of(&big))), Some(&citizen), &[], Some(&big));
    assert_eq!((r.status, r.code()), (413, "too_large".into()));
    let r = ureq::put(&s.url(&format!("{base}/contents/{}", Digest::of(&big))))
        .set("Authorization", &format!("Bearer {citizen}"))
        .send(std::io::Cursor::new(big.clone()));
    match r {
        Err(ureq::Error::Status(413, _)) => {}
        other => panic!("chunked oversize: {other:?}"),
    }
    let r = call("PUT", &s.url(&format!("{base}/contents/ABC")), Some(&citizen), &[], Some(b"x"));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    // Deposit of content not held; malformed and unknown document ids.
    let dep = json!({"digest": d, "doc_type": "cccd", "title": "x", "media_type": "text/plain"});
    let r = post_json(&s.url(&format!("{base}/documents")), &citizen, None, &dep);
    assert_eq!((r.status, r.code()), (409, "conflict".into()));
    let r = call("GET", &s.url(&format!("{base}/documents/not-an-id")), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    let r = call("GET", &s.url(&format!("{base}/documents/{}", "0".repeat(32))), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
    // Another owner's data: 403 without telling whether it exists.
    let r = call("GET", &s.url("/v1/owners/citizen:000000000001/documents"), Some(&citizen), &[], None);
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
    // Signed deposits: unknown issuer key, invalid signature.
    let (sk, agency) = register_agency(&s, "ubnd", 41);
    let data = b"small result";
    let r = call("PUT", &s.url(&format!("{base}/contents/{}", Digest::of(data))), Some(&agency), &[], Some(data));
    assert_eq!(r.status, 201);
    let mut dep = signed_deposit(CITIZEN, data, "ubnd", &sk);
    dep["signature"]["key_id"] = json!("k7");
    let r = post_json(&s.url(&format!("{base}/documents")), &agency, None, &dep);
    assert_eq!((r.status, r.code()), (400, "unknown_issuer_key".into()));
    let mut dep = signed_deposit(CITIZEN, data, "ubnd", &sk);
    dep["title"] = json!("changed");
    let r = post_json(&s.url(&format!("{base}/documents")), &agency, None, &dep);
    assert_eq!((r.status, r.code()), (400, "invalid_signature".into()));
    let mut dep = signed_deposit(CITIZEN, data, "ubnd", &sk);
    dep["signature"] = Value::Null;
    let r = post_json(&s.url(&format!("{base}/documents")), &agency, None, &dep);
    assert_eq!((r.status, r.code()), (400, "invalid_signature".into()));
    let r = post_json(&s.url(&format!("{base}/documents")), &agency, None, &signed_deposit(CITIZEN, data, "ubnd", &sk));
    assert_eq!(r.status, 201);
    // A grant beyond 366 days, to an unregistered agency.
    let far = Timestamp::now().plus_seconds(400 * 86400).to_string();
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "ubnd", "purpose": "1.1", "doc_types": ["cccd"], "expires_at": far}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let soon = Timestamp::now().plus_seconds(60).to_string();
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "ghost", "purpose": "1.1", "doc_types": ["cccd"], "expires_at": soon}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "ubnd", "purpose": "1.1", "doc_types": ["cccd"], "expires_at": "2030-01-01T00:00:00+07:00"}),
    );
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
}

#[test]
fn openapi_covers_the_contract() {
    let s = Server::start(&[]);
    let doc = call("GET", &s.url("/openapi.json"), None, &[], None).json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("post", "/v1/owners/{owner}/contents/missing"),
        ("put", "/v1/owners/{owner}/contents/{digest}"),
        ("post", "/v1/owners/{owner}/documents"),
        ("get", "/v1/owners/{owner}/documents"),
        ("get", "/v1/owners/{owner}/documents/{id}"),
        ("get", "/v1/owners/{owner}/documents/{id}/content"),
        ("delete", "/v1/owners/{owner}/documents/{id}"),
        ("post", "/v1/owners/{owner}/documents/{id}/revocation"),
        ("post", "/v1/owners/{owner}/reuse"),
        ("post", "/v1/owners/{owner}/grants"),
        ("get", "/v1/owners/{owner}/grants"),
        ("delete", "/v1/owners/{owner}/grants/{id}"),
        ("get", "/v1/grants"),
        ("get", "/v1/owners/{owner}/access-log"),
        ("get", "/v1/owners/{owner}/access-log/{index}/leaf"),
        ("get", "/v1/audit/checkpoint"),
        ("get", "/v1/audit/proof/inclusion"),
        ("get", "/v1/audit/proof/consistency"),
        ("get", "/v1/owners/{owner}/export"),
        ("delete", "/v1/owners/{owner}"),
        ("put", "/v1/agencies/{agency}"),
        ("get", "/v1/agencies"),
        ("get", "/v1/agencies/{agency}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/vault-key"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from /openapi.json");
    }
}

#[test]
fn logs_are_structured_and_never_hold_tokens() {
    if one_process_only("one server's log file") {
        return;
    }
    let s = Server::start(&["--log-json"]);
    let t = s.owner(CITIZEN);
    let (_, agency) = register_agency(&s, "ubnd", 61);
    call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&t), &[], None);
    call("GET", &s.url("/v1/agencies"), Some(&agency), &[], None);
    call("GET", &s.url("/v1/agencies"), Some("not-a-token"), &[], None);
    let log = std::fs::read_to_string(s.dir.path().join("server.log")).unwrap();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.len() >= 4, "{log}");
    assert!(
        lines.iter().any(|l| l["fields"]["route"] == "/v1/owners/{owner}/documents" && l["fields"]["status"] == 200),
        "{log}"
    );
    for secret in [&t, &agency, &s.operator()] {
        let sig = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(sig), "a token reached the log");
    }
    assert!(!log.contains(CITIZEN), "an owner id reached the log");
}

#[test]
fn upload_with_vault_deposit_stores_and_deposits_in_one_step() {
    let s = Server::start(&[]);
    let (sk, agency) = register_agency(&s, "ubnd", 31);
    let data = b"%PDF-1.7 one-step deposit".repeat(50);
    let digest = Digest::of(&data);
    let body = signed_deposit(CITIZEN, &data, "ubnd", &sk);
    let header = B64URL.encode(body.to_string());
    let url = s.url(&format!("/v1/owners/{CITIZEN}/contents/{digest}"));
    let put = |h: &str, bytes: &[u8]| call("PUT", &url, Some(&agency), &[("Vault-Deposit", h)], Some(bytes));
    let r = put(&header, &data);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["digest"], digest.to_string());
    assert_eq!(v["document"]["verified"], true);
    let id = v["document"]["id"].as_str().unwrap().to_owned();
    // The same again: the same document, 200.
    let r = put(&header, &data);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["document"]["id"], id.as_str());
    // Bad inputs: malformed header, a header about another digest, bytes that are not the
    // digest, a signature that does not verify. Nothing is stored by any of them.
    assert_eq!(put("%%%", &data).code(), "invalid_request");
    let mut other = body.clone();
    other["digest"] = json!(Digest::of(b"x").to_string());
    assert_eq!(put(&B64URL.encode(other.to_string()), &data).code(), "invalid_request");
    let r = put(&header, b"other bytes");
    assert_eq!((r.status, r.code().as_str()), (400, "digest_mismatch"));
    let data2 = b"second".repeat(10);
    let mut forged = signed_deposit(CITIZEN, &data2, "ubnd", &sk);
    forged["title"] = json!("changed after signing");
    let url2 = s.url(&format!("/v1/owners/{CITIZEN}/contents/{}", Digest::of(&data2)));
    let r = call("PUT", &url2, Some(&agency), &[("Vault-Deposit", &B64URL.encode(forged.to_string()))], Some(&data2));
    assert_eq!(r.code(), "invalid_signature");
    let owner = s.owner(CITIZEN);
    let missing = post_json(
        &s.url(&format!("/v1/owners/{CITIZEN}/contents/missing")),
        &owner,
        None,
        &json!({"digests": [Digest::of(&data2).to_string()]}),
    );
    assert_eq!(missing.json()["missing"].as_array().unwrap().len(), 1, "a refused one-step deposit stores nothing");
    let docs = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&owner), &[], None).json();
    assert_eq!(docs["documents"].as_array().unwrap().len(), 1);
}

#[test]
fn a_token_seen_before_is_still_refused_once_expired_or_its_key_is_retired() {
    let s = Server::start(&[]);
    let (sk, agency) = register_agency(&s, "so-tp", 41);
    let list = |t: &str| call("GET", &s.url("/v1/agencies"), Some(t), &[], None).status;
    assert_eq!(list(&agency), 200);
    assert_eq!(list(&agency), 200); // now from the cache of verified tokens
                                    // Expiring within the leeway: accepted now, refused three seconds later.
    let t = now();
    let short = token(&sk, "k1", "so-tp", "so-tp", json!("vault"), t - 100, t - 58);
    assert_eq!(list(&short), 200);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(list(&short), 401);
    // The key retired: the cached token stops working at once.
    let retire = |pk: &[u8; 32], not_after: Option<&str>| {
        let body = json!({"name": "Agency so-tp", "keys": [{"id": "k1", "public_key": B64.encode(pk), "not_before": "2020-01-01T00:00:00Z", "not_after": not_after}]});
        let r = call(
            "PUT",
            &s.url("/v1/agencies/so-tp"),
            Some(&s.operator()),
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    };
    retire(&sk.verifying_key().to_bytes(), Some("2021-01-01T00:00:00Z"));
    assert_eq!(list(&agency), 401);
    // Restored, then the key id given another public key: the old token is refused.
    retire(&sk.verifying_key().to_bytes(), None);
    assert_eq!(list(&agency), 200);
    retire(&SigningKey::from_bytes(&[42; 32]).verifying_key().to_bytes(), None);
    assert_eq!(list(&agency), 401);
}

/// A batch body: a tar of (deposit body, content) pairs.
fn batch_tar(items: &[(Value, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (i, (doc, data)) in items.iter().enumerate() {
        for (name, bytes) in [(format!("{i}.json"), doc.to_string().into_bytes()), (format!("{i}.bin"), data.clone())] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, bytes.as_slice()).unwrap();
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn batch_deposits_store_many_small_documents_in_one_request() {
    let s = Server::start(&[]);
    let (sk, agency) = register_agency(&s, "ubnd", 33);
    let url = s.url(&format!("/v1/owners/{CITIZEN}/deposits"));
    let tar_ct = [("Content-Type", "application/x-tar")];
    let a = b"first small result".to_vec();
    let b = b"second small result".to_vec();
    let c = b"third, badly signed".to_vec();
    let mut forged = signed_deposit(CITIZEN, &c, "ubnd", &sk);
    forged["title"] = json!("changed after signing");
    let body = batch_tar(&[
        (signed_deposit(CITIZEN, &a, "ubnd", &sk), a.clone()),
        (signed_deposit(CITIZEN, &b, "ubnd", &sk), b.clone()),
        (forged, c.clone()),
    ]);
    let r = call("POST", &url, Some(&agency), &tar_ct, Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["created"], true);
    assert_eq!(results[1]["document"]["verified"], true);
    assert_eq!(results[2]["error"]["code"], "invalid_signature");
    assert_eq!(results[2]["status"], 400);
    // The same batch again: nothing new.
    let again = call("POST", &url, Some(&agency), &tar_ct, Some(&body)).json();
    assert_eq!(again["results"][0]["created"], false);
    assert_eq!(again["results"][0]["document"]["id"], results[0]["document"]["id"]);
    // Malformed batches are refused whole, and store nothing.
    assert_eq!(
        call("POST", &url, Some(&agency), &[("Content-Type", "application/json")], Some(&body)).code(),
        "invalid_request"
    );
    assert_eq!(
        call("POST", &url, Some(&agency), &tar_ct, Some(b"not a tar at all, just bytes")).code(),
        "invalid_request"
    );
    let d = b"unpaired".to_vec();
    let mut unpaired = batch_tar(&[(signed_deposit(CITIZEN, &d, "ubnd", &sk), d.clone())]);
    // Cut the content member off (keep the deposit body and the end-of-archive blocks).
    let cut = batch_tar(&[]);
    unpaired.truncate(1024);
    unpaired.extend_from_slice(&cut);
    assert_eq!(call("POST", &url, Some(&agency), &tar_ct, Some(&unpaired)).code(), "invalid_request");
    // Another owner's token cannot batch-deposit for this owner: refused whole, before the body
    // is read (one audit entry).
    let other = s.owner("citizen:001099000009");
    let r = call("POST", &url, Some(&other), &tar_ct, Some(&body));
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    // The owner sees the two documents, and one audit entry per item of each batch.
    let owner = s.owner(CITIZEN);
    let docs = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&owner), &[], None).json();
    assert_eq!(docs["documents"].as_array().unwrap().len(), 2);
    let log = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/access-log")), Some(&owner), &[], None).json();
    let deposits = log["entries"].as_array().unwrap().iter().filter(|e| e["action"] == "document.deposit").count();
    assert_eq!(deposits, 7);
}

#[test]
fn batch_deposits_keep_the_content_limit_and_the_item_limit() {
    let s = Server::start(&["--max-content-size", "1000"]);
    let (sk, agency) = register_agency(&s, "ubnd", 34);
    let url = s.url(&format!("/v1/owners/{CITIZEN}/deposits"));
    let tar_ct = [("Content-Type", "application/x-tar")];
    let small = vec![1u8; 500];
    let big = vec![2u8; 2000];
    let body = batch_tar(&[
        (signed_deposit(CITIZEN, &small, "ubnd", &sk), small.clone()),
        (signed_deposit(CITIZEN, &big, "ubnd", &sk), big.clone()),
    ]);
    let r = call("POST", &url, Some(&agency), &tar_ct, Some(&body));
    assert_eq!((r.status, r.code().as_str()), (413, "too_large"));
    // 1,001 documents: refused whole.
    let items: Vec<(Value, Vec<u8>)> = (0..1001u32)
        .map(|i| {
            let d = i.to_le_bytes().to_vec();
            (signed_deposit(CITIZEN, &d, "ubnd", &sk), d)
        })
        .collect();
    let r = call("POST", &url, Some(&agency), &tar_ct, Some(&batch_tar(&items)));
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"));
    // Neither stored anything.
    let owner = s.owner(CITIZEN);
    let docs = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&owner), &[], None).json();
    assert!(docs["documents"].as_array().unwrap().is_empty());
}

#[test]
fn item_9_2_agency_deposit_refusals_are_one_answer_over_http() {
    if one_process_only("the pending-upload bound is per instance (SPEC.md §9a)") {
        return;
    }
    let s = Server::start(&["--max-pending-uploads", "2"]);
    let (sk, agency) = register_agency(&s, "ubnd", 41);
    let owner = s.owner(CITIZEN);
    let held = b"%PDF-1.7 held by the owner".repeat(40);
    let absent = b"%PDF-1.7 not held at all!!".repeat(40);
    let put = |t: &str, data: &[u8]| {
        call("PUT", &s.url(&format!("/v1/owners/{CITIZEN}/contents/{}", Digest::of(data))), Some(t), &[], Some(data))
    };
    assert_eq!(put(&owner, &held).status, 201);
    // A deposit with a junk signature: the same 409 and body whether the owner holds it or not.
    let deposit = |data: &[u8]| {
        let mut body = signed_deposit(CITIZEN, data, "ubnd", &sk);
        body["signature"]["value"] = json!("junk");
        let r = post_json(&s.url(&format!("/v1/owners/{CITIZEN}/documents")), &agency, None, &body);
        (r.status, String::from_utf8_lossy(&r.body).replace(&Digest::of(data).to_string(), "<digest>"))
    };
    let (a, b) = (deposit(&held), deposit(&absent));
    assert_eq!(a.0, 409);
    assert_eq!(a, b);
    // Uploads of held and new content: the same status and body shape.
    let (u1, u2) = (put(&agency, &held), put(&agency, &absent));
    assert_eq!((u1.status, u2.status), (201, 201));
    // The pending bound: a third unused upload is 429 too_many_requests.
    let third = put(&agency, b"a third upload".as_slice());
    assert_eq!((third.status, third.code().as_str()), (429, "too_many_requests"));
    let m = String::from_utf8(call("GET", &s.url("/metrics"), None, &[], None).body).unwrap();
    assert!(m.lines().any(|l| l == "vault_pending_uploads 2"), "{m}");
    assert!(m.lines().any(|l| l.starts_with("vault_pending_removed_total ")));
}
