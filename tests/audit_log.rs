//! Issue 9, item 4: who the audit log names as the actor, and the access log's paging (the
//! library, and the server over HTTP on 127.0.0.1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use vault::access::Caller;
use vault::log::audit::{PageLimit, MAX_PAGE};
use vault::{Error, Vault};

use common::http::*;
use common::*;

/// The `actor:` line of a leaf.
fn leaf_actor(leaf: &[u8]) -> String {
    let text = std::str::from_utf8(leaf).unwrap();
    text.lines().find_map(|l| l.strip_prefix("actor:")).unwrap().to_owned()
}

#[test]
fn item_9_4_another_owner_is_logged_as_another_owner() {
    // The library.
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let (me, other) = (owner(1), owner(2));
    put_doc(&v, &me, b"my birth certificate", "giay-khai-sinh");
    let mine = Caller::owner(me.clone());
    let them = Caller::owner(other.clone());
    v.documents_as(&mine, &me, None).unwrap();
    assert!(matches!(v.documents_as(&them, &me, None), Err(Error::Forbidden)));
    assert!(matches!(v.grants_as(&them, &me), Err(Error::Forbidden)));
    let log = v.access_log_as(&mine, &me).unwrap();
    let actors: Vec<(&str, &str, &str)> =
        log.iter().map(|e| (e.action.as_str(), e.actor.as_str(), e.outcome.as_str())).collect();
    assert_eq!(
        actors,
        [
            ("document.list", "owner", "allowed"),
            ("document.list", "another-owner", "refused:forbidden"),
            ("grant.list", "another-owner", "refused:forbidden"),
        ]
    );
    // The leaf bytes say the same, and the other citizen's own log holds nothing of it.
    for e in &log {
        assert_eq!(leaf_actor(&v.access_log_leaf_as(&mine, &me, e.index).unwrap()), e.actor);
    }
    assert!(v.access_log_as(&them, &other).unwrap().is_empty());

    // Over HTTP.
    let s = Server::start(&[]);
    let citizen = s.owner(CITIZEN);
    let stranger = s.owner("org:0101234567-001");
    let base = format!("/v1/owners/{CITIZEN}");
    let r = call("GET", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None);
    assert_eq!(r.status, 200);
    let r = call("GET", &s.url(&format!("{base}/documents")), Some(&stranger), &[], None);
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
    let entries = call("GET", &s.url(&format!("{base}/access-log")), Some(&citizen), &[], None).json()["entries"]
        .as_array()
        .unwrap()
        .clone();
    let actors: Vec<&str> = entries.iter().map(|e| e["actor"].as_str().unwrap()).collect();
    assert_eq!(actors, ["owner", "another-owner"]);
    let index = entries[1]["index"].as_u64().unwrap();
    let leaf = call("GET", &s.url(&format!("{base}/access-log/{index}/leaf")), Some(&citizen), &[], None).json();
    assert_eq!(leaf_actor(&B64.decode(leaf["leaf"].as_str().unwrap()).unwrap()), "another-owner");
}

#[test]
fn item_9_4_access_log_pages_in_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let (me, other) = (owner(1), owner(2));
    let (mine, theirs) = (Caller::owner(me.clone()), Caller::owner(other.clone()));
    // 1,001 entries about me, interleaved with entries about someone else.
    for i in 0..MAX_PAGE + 1 {
        v.documents_as(&mine, &me, None).unwrap();
        if i % 100 == 0 {
            v.documents_as(&theirs, &other, None).unwrap();
        }
    }
    let all = v.access_log_as(&mine, &me).unwrap();
    assert_eq!(all.len(), MAX_PAGE + 1);

    // The default (and largest) page: 1,000, then the one left.
    let p1 = v.access_log_page_as(&mine, &me, None, PageLimit::default()).unwrap();
    assert_eq!(p1.entries, all[..MAX_PAGE]);
    assert_eq!(p1.next, Some(all[MAX_PAGE - 1].index));
    let p2 = v.access_log_page_as(&mine, &me, p1.next, PageLimit::default()).unwrap();
    assert_eq!(p2.entries, all[MAX_PAGE..]);
    assert_eq!(p2.next, None);

    // Small pages walk the same entries; a page that ends exactly at the last entry has no next.
    let ten = PageLimit::new(10).unwrap();
    let mut after = None;
    let mut walked = Vec::new();
    loop {
        let p = v.access_log_page_as(&mine, &me, after, ten).unwrap();
        assert!(p.entries.len() <= 10);
        assert!(p.entries.iter().all(|e| after.is_none_or(|a| e.index > a)));
        walked.extend(p.entries);
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(walked, all);
    let before_last = all[all.len() - 11].index;
    let p = v.access_log_page_as(&mine, &me, Some(before_last), ten).unwrap();
    assert_eq!((p.entries.len(), p.next), (10, None));
    let p = v.access_log_page_as(&mine, &me, Some(before_last - 1), ten).unwrap();
    assert_eq!((p.entries.len(), p.next), (10, Some(all[all.len() - 2].index)));
    // `after` between two of my entries (an index about someone else) and past the end.
    let theirs_index = v.access_log_as(&theirs, &other).unwrap()[1].index;
    let p = v.access_log_page_as(&mine, &me, Some(theirs_index), PageLimit::new(1).unwrap()).unwrap();
    assert_eq!(p.entries[0].index, theirs_index + 1);
    for past in [all[MAX_PAGE].index, u64::MAX] {
        let p = v.access_log_page_as(&mine, &me, Some(past), ten).unwrap();
        assert!(p.entries.is_empty() && p.next.is_none());
    }

    // Limits: 1 to 1,000; only the owner.
    assert!(matches!(PageLimit::new(0), Err(Error::InvalidRequest(_))));
    assert!(matches!(PageLimit::new(MAX_PAGE as u64 + 1), Err(Error::InvalidRequest(_))));
    assert_eq!(PageLimit::new(MAX_PAGE as u64).unwrap(), PageLimit::default());
    assert!(matches!(v.access_log_page_as(&theirs, &me, None, ten), Err(Error::Forbidden)));

    // Many leaves and their proofs at once, each verifying against the root.
    let size = v.audit_size().unwrap();
    let root = v.audit_root(size).unwrap();
    let indexes: Vec<u64> = p1.entries.iter().map(|e| e.index).collect();
    let proofs = v.access_log_proofs_as(&mine, &me, size, &indexes).unwrap();
    assert_eq!(proofs.len(), MAX_PAGE);
    for (p, i) in proofs.iter().zip(&indexes) {
        assert_eq!(p.index, *i);
        assert_eq!(p.leaf, v.leaf(*i).unwrap());
        assert!(vault::log::merkle::verify_inclusion(
            &vault::log::merkle::leaf_hash(&p.leaf),
            *i,
            size,
            &p.hashes,
            &root
        ));
    }
    let too_many: Vec<u64> = all.iter().map(|e| e.index).collect();
    assert!(matches!(v.access_log_proofs_as(&mine, &me, size, &too_many), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.access_log_proofs_as(&mine, &me, size, &[]), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.access_log_proofs_as(&mine, &me, size, &[theirs_index]), Err(Error::NotFound(_))));
    assert!(matches!(v.access_log_proofs_as(&mine, &me, size + 1, &[0]), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.access_log_proofs_as(&mine, &me, indexes[5], &indexes[5..6]), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.access_log_proofs_as(&theirs, &me, size, &indexes[..1]), Err(Error::Forbidden)));
}

#[test]
fn item_9_4_access_log_pages_over_http() {
    let s = Server::start(&[]);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    for _ in 0..7 {
        assert_eq!(call("GET", &s.url(&format!("{base}/grants")), Some(&citizen), &[], None).status, 200);
    }
    let get = |q: &str| call("GET", &s.url(&format!("{base}/access-log{q}")), Some(&citizen), &[], None);
    let all = get("").json();
    assert!(all["next"].is_null(), "{all}");
    let all: Vec<u64> = all["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert_eq!(all.len(), 7);

    // Pages of 3: 3 + 3 + 1, each `next` the `after` of the following page.
    let mut after: Option<u64> = None;
    let mut pages = Vec::new();
    loop {
        let q = match after {
            Some(a) => format!("?limit=3&after={a}"),
            None => "?limit=3".into(),
        };
        let r = get(&q);
        assert_eq!(r.status, 200);
        let p = r.json();
        let idx: Vec<u64> = p["entries"].as_array().unwrap().iter().map(|e| e["index"].as_u64().unwrap()).collect();
        pages.push(idx);
        match p["next"].as_u64() {
            Some(n) => after = Some(n),
            None => {
                assert_eq!(p["next"], Value::Null);
                break;
            }
        }
    }
    assert_eq!(pages, [all[0..3].to_vec(), all[3..6].to_vec(), all[6..7].to_vec()]);
    // Exactly at the boundary: the last full page says there is no next one.
    let p = get(&format!("?after={}&limit=6", all[0])).json();
    assert_eq!((p["entries"].as_array().unwrap().len(), p["next"].clone()), (6, Value::Null));
    let p = get(&format!("?after={}&limit=1000", all[6])).json();
    assert_eq!(p, json!({"entries": [], "next": null}));

    // Bad parameters: 400 invalid_request.
    for q in ["?limit=0", "?limit=1001", "?limit=-1", "?limit=ten", "?after=x", "?after=-1", "?after=1.5", "?limit="] {
        let r = get(q);
        assert_eq!((r.status, r.code()), (400, "invalid_request".into()), "{q}");
    }

    // The extension: leaves and proofs of many entries at once, verifiable against a checkpoint.
    let proofs_url = s.url(&format!("{base}/access-log/proofs"));
    let cp = String::from_utf8(call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None).body).unwrap();
    let mut lines = cp.lines().skip(1);
    let size: u64 = lines.next().unwrap().parse().unwrap();
    let root: [u8; 32] = B64.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    let r = post_json(&proofs_url, &citizen, None, &json!({"size": size, "indexes": all}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["size"], size);
    let proofs = body["proofs"].as_array().unwrap();
    assert_eq!(proofs.len(), all.len());
    for (p, i) in proofs.iter().zip(&all) {
        assert_eq!(p["index"].as_u64(), Some(*i));
        let leaf = B64.decode(p["leaf"].as_str().unwrap()).unwrap();
        let hashes: Vec<[u8; 32]> = p["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
            .collect();
        assert!(vault::log::merkle::verify_inclusion(&vault::log::merkle::leaf_hash(&leaf), *i, size, &hashes, &root));
    }
    let r = post_json(&proofs_url, &citizen, None, &json!({"size": size + 1000, "indexes": [all[0]]}));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = post_json(&proofs_url, &citizen, None, &json!({"size": size, "indexes": vec![all[0]; 1001]}));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let r = post_json(&proofs_url, &citizen, None, &json!({"size": size, "indexes": "all"}));
    assert_eq!((r.status, r.code()), (400, "invalid_request".into()));
    let stranger = s.owner("citizen:001099000009");
    let r = post_json(&proofs_url, &stranger, None, &json!({"size": size, "indexes": [all[0]]}));
    assert_eq!((r.status, r.code()), (403, "forbidden".into()));
    // An entry about someone else is not the citizen's to see.
    let theirs = call("GET", &s.url("/v1/owners/citizen:001099000009/grants"), Some(&stranger), &[], None);
    assert_eq!(theirs.status, 200);
    let cp = String::from_utf8(call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None).body).unwrap();
    let size2: u64 = cp.lines().nth(1).unwrap().parse().unwrap();
    let r = post_json(&proofs_url, &citizen, None, &json!({"size": size2, "indexes": [size2 - 1]}));
    assert_eq!((r.status, r.code()), (404, "not_found".into()));
}
