//! The real `vault-server` binary with its metadata in PostgreSQL (`--metadata postgres://...`,
//! SPEC.md §9a) on a throwaway cluster (tests/common/pg.rs): deposits and reads over HTTP, a
//! restart after SIGKILL, a data folder whose metadata is in sled refused, and two servers on one
//! database and one bucket (SPEC.md §9a "Several instances"), one of them killed under load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use vault::Digest;

use common::http::*;
use common::pg;

/// Runs the server binary with `args` (bounded: it must exit on its own within a minute);
/// returns whether it succeeded, and what it printed (stdout, then stderr).
fn run(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let mut child = Command::new(binary()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).unwrap();
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("vault-server {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.success(), stdout.join().unwrap() + &stderr.join().unwrap())
}

/// Runs the server on `data` with `extra` flags, expecting it to exit without becoming ready;
/// returns what it printed.
fn fails_to_start(data: &std::path::Path, extra: &[&str]) -> String {
    let key = data.with_extension("key");
    std::fs::write(&key, format!("{}\n", B64.encode([5u8; 32]))).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["--data".as_ref(), data.as_ref(), "--master-key-file".as_ref(), key.as_ref()];
    args.extend(["--listen", listen.as_str()].into_iter().chain(extra.iter().copied()).map(std::ffi::OsStr::new));
    let (ok, out) = run(&args);
    assert!(!ok, "{out}");
    out
}

#[test]
fn the_server_keeps_its_metadata_in_postgres() {
    let db = pg::database();
    let s = Server::start(&["--metadata", &db.url]);
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    // A small content (kept in the metadata: its reads may start on the async side) and a
    // large one (a blob file).
    let small = b"%PDF-1.7 giay khai sinh".to_vec();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut ids = Vec::new();
    for data in [&small, &large] {
        let digest = Digest::of(data);
        let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&iss), &[], Some(data));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let r = post_json(
            &s.url(&format!("{base}/documents")),
            &iss,
            None,
            &signed_deposit(CITIZEN, data, "ubnd-xa", &iss_key),
        );
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["verified"], json!(true));
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    let read_back = |s: &Server| {
        let citizen = s.owner(CITIZEN);
        for (id, data) in ids.iter().zip([&small, &large]) {
            let r = call("GET", &s.url(&format!("{base}/documents/{id}/content")), Some(&citizen), &[], None);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert!(r.body == *data, "{id} differs");
        }
        let r = call("GET", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None);
        assert_eq!(r.json()["documents"].as_array().unwrap().len(), 2);
    };
    read_back(&s);
    let r = call("GET", &s.url(&format!("{base}/access-log")), Some(&citizen), &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A data folder whose metadata is embedded is refused with --metadata.
    let sled_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sled_dir.path().join("data/meta")).unwrap();
    let err = fails_to_start(&sled_dir.path().join("data"), &["--metadata", &db.url]);
    assert!(err.contains("holds embedded (sled) metadata"), "{err}");

    // Killed and started again (recovery runs): everything acknowledged is there.
    let port = s.port;
    let dir = s.stop();
    wait_unlocked(&db.url);
    let s = Server::start_at(dir, port, &["--metadata", &db.url]);
    read_back(&s);

    // The operator commands on the same database (the server stopped): check, rotate the master
    // key, check under the new key.
    let dir = s.stop();
    wait_unlocked(&db.url);
    let data = dir.path().join("data");
    let (old_key, new_key) = (dir.path().join("master.key"), dir.path().join("new.key"));
    std::fs::write(&new_key, format!("{}\n", B64.encode([6u8; 32]))).unwrap();
    let with = |cmd: &'static str, key: &std::path::Path, more: &[&std::path::Path]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![cmd.as_ref(), "--metadata".as_ref(), db.url.as_ref()];
        args.extend(["--data".as_ref(), data.as_os_str(), "--master-key-file".as_ref(), key.as_os_str()]);
        if let Some(p) = more.first() {
            args.extend(["--new-master-key-file".as_ref(), p.as_os_str()]);
        }
        run(&args)
    };
    let (ok, out) = with("check", &old_key, &[]);
    assert!(ok, "{out}");
    let (ok, out) = with("rotate-master-key", &old_key, &[&new_key]);
    assert!(ok && out.contains("rotated"), "{out}");
    let (ok, out) = with("check", &old_key, &[]);
    assert!(!ok && out.contains("master key"), "the old key no longer opens it: {out}");
    let (ok, out) = with("check", &new_key, &[]);
    assert!(ok, "{out}");
    drop(citizen);
}

/// Both scale-out stores at once, as the issue asks (`--metadata postgres://... --blobs
/// s3://...`): metadata in PostgreSQL, blobs in a real S3 server; deposits and reads over HTTP,
/// a SIGKILL and a restart, and `check --read-data` over both stores.
#[test]
fn the_server_runs_on_postgres_and_s3() {
    let db = pg::database();
    let s = Server::start_s3(tempfile::tempdir().unwrap(), &["--metadata", &db.url]);
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let small = b"%PDF-1.7 small".to_vec();
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut ids = Vec::new();
    for data in [&small, &large] {
        let digest = Digest::of(data);
        let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&citizen), &[], Some(data));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let body =
            json!({"digest": digest, "doc_type": "giay-khai-sinh", "title": "t", "media_type": "application/pdf"});
        let r = post_json(&s.url(&format!("{base}/documents")), &citizen, None, &body);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    // No sled folder, no blob folder: the metadata is in PostgreSQL, the large blob in S3.
    let data = s.dir.path().join("data");
    assert!(!data.join("meta").exists() && !data.join("blobs").exists());
    // (Under the prefix: the objects in blobs/, and the vault-id claim.)
    assert_eq!(common::files_below(&s.blob_dir().join("blobs")).len(), 1, "the large content is an object");
    let read_back = |s: &Server| {
        let citizen = s.owner(CITIZEN);
        for (id, want) in ids.iter().zip([&small, &large]) {
            let r = call("GET", &s.url(&format!("{base}/documents/{id}/content")), Some(&citizen), &[], None);
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert!(r.body == *want, "{id} differs");
        }
    };
    read_back(&s);
    let dir = s.stop();
    wait_unlocked(&db.url);
    let s = Server::start_s3(dir, &["--metadata", &db.url]);
    read_back(&s);
    // check --read-data over both stores (stop_and_check passes --blobs; add --metadata).
    let s3 = s.s3.as_ref().unwrap();
    let env = s3.env();
    let (key, data) = (s.dir.path().join("master.key"), s.dir.path().join("data"));
    let mut s = s;
    let s3 = s.s3.take().unwrap();
    let _dir = s.stop();
    wait_unlocked(&db.url);
    check_both_stores(&db.url, &data, &key, env);
    drop(s3);
}

/// `vault-server check --read-data` over the metadata in `db_url` and the blobs in the test S3
/// bucket (`env` names its server), with the servers stopped: it must find nothing wrong.
fn check_both_stores(db_url: &str, data: &std::path::Path, key: &std::path::Path, env: Vec<(&str, String)>) {
    let out = Command::new(binary())
        .args(["check", "--read-data", "--metadata", db_url, "--blobs", "s3://vault-test/blobs", "--data"])
        .arg(data)
        .arg("--master-key-file")
        .arg(key)
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Deposits a content and a document about it at `s`: the document's id, or None when the
/// server did not acknowledge it (killed meanwhile).
fn deposit_at(s: &Server, owner: &str, data: &[u8]) -> Option<String> {
    let token = s.owner(owner);
    let base = format!("/v1/owners/{owner}");
    let digest = Digest::of(data);
    let r = try_call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&token), &[], Some(data)).ok()?;
    if r.status != 201 && r.status != 200 {
        return None;
    }
    let body = json!({"digest": digest, "doc_type": "giay-khai-sinh", "title": "t", "media_type": "application/pdf"});
    let h = [("Content-Type", "application/json")];
    let r = try_call("POST", &s.url(&format!("{base}/documents")), Some(&token), &h, Some(body.to_string().as_bytes()))
        .ok()?;
    (r.status == 201 || r.status == 200).then(|| r.json()["id"].as_str().unwrap().to_owned())
}

/// Two servers on one PostgreSQL database and one S3 bucket, requests alternating between
/// them: a grant's `max_uses` is exact across both, a revocation at one is refused at the other
/// on the very next call, both sign checkpoints of one log. Then one server is killed (SIGKILL)
/// while four writers alternate between them: the other carries on (it takes the sequencer's
/// lease and the background lease), every acknowledged deposit is readable there, and `check
/// --read-data` over both stores is clean.
#[test]
fn two_servers_share_one_database_and_bucket() {
    let db = pg::database();
    let a = Server::start_s3(tempfile::tempdir().unwrap(), &["--metadata", &db.url]);
    let b = Server::start_beside(&a, &["--metadata", &db.url]);
    let (_, reader) = register_agency(&a, "so-gd", 31);
    let citizen = a.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let data = b"%PDF-1.7 giay khai sinh, hai may chu".to_vec();
    let id = deposit_at(&b, CITIZEN, &data).expect("deposited at b");
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    let r = post_json(
        &a.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "purpose_text": "Tuyển sinh", "doc_types": ["giay-khai-sinh"], "expires_at": expires, "max_uses": 3}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let gid = r.json()["id"].as_str().unwrap().to_owned();
    let content = format!("{base}/documents/{id}/content");
    let p = [("Vault-Purpose", "1.000001")];
    // Alternating: 3 reads allowed, then refused at both.
    let statuses: Vec<u16> =
        (0..6).map(|i| call("GET", &[&a, &b][i % 2].url(&content), Some(&reader), &p, None).status).collect();
    assert_eq!(statuses, [200, 200, 200, 403, 403, 403], "max_uses 3 across both servers");
    let r = call("GET", &b.url("/v1/grants"), Some(&reader), &[], None);
    assert_eq!(r.json()["grants"][0]["uses"], 3);
    // A fresh grant, read at b (warm), revoked at a: refused at b on the next call.
    let r = post_json(
        &b.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "purpose_text": "Tuyển sinh", "doc_types": ["giay-khai-sinh"], "expires_at": expires}),
    );
    assert_eq!(r.status, 201);
    let g2 = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(call("GET", &b.url(&content), Some(&reader), &p, None).status, 200);
    assert_eq!(call("DELETE", &a.url(&format!("{base}/grants/{g2}")), Some(&citizen), &[], None).status, 204);
    let r = call("GET", &b.url(&content), Some(&reader), &p, None);
    assert_eq!((r.status, r.code()), (403, "grant_required".into()), "revoked at a, refused at b");
    assert_ne!(gid, g2);
    // One log: a checkpoint at each, the later one at least as large, both verifiable.
    let size = |s: &Server| {
        let note = call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None);
        assert_eq!(note.status, 200);
        String::from_utf8(note.body).unwrap().lines().nth(1).unwrap().parse::<u64>().unwrap()
    };
    let (at_a, at_b) = (size(&a), size(&b));
    assert!(at_b >= at_a && at_a > 5, "{at_a} {at_b}");

    // Four writers alternating between the servers; a is killed halfway.
    let pid = a.child.id();
    let acknowledged = std::sync::Mutex::new(Vec::new());
    let killed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (a, b, acknowledged, killed) = (&a, &b, &acknowledged, &killed);
            s.spawn(move || {
                // Writers 0 and 1 share an owner: its change lock is taken at both servers.
                let owner = format!("citizen:{:012}", if t < 2 { 500 } else { 500 + t });
                for i in 0..24u32 {
                    if t == 0 && i == 12 {
                        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
                        killed.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    let data = format!("%PDF-1.7 writer {t} item {i}").into_bytes();
                    let s = if (t + i) % 2 == 0 { a } else { b };
                    if let Some(id) = deposit_at(s, &owner, &data) {
                        acknowledged.lock().unwrap().push((owner.clone(), id, data));
                    }
                }
            });
        }
    });
    assert!(killed.into_inner());
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() >= 48, "b acknowledges its half at least: {}", acknowledged.len());
    // After the kill, b carries on alone: the lease moved (a's open batch, if any, was rolled back).
    let after = deposit_at(&b, CITIZEN, b"%PDF-1.7 after the kill").expect("b writes after a died");
    for (owner, id, data) in &acknowledged {
        let r = call(
            "GET",
            &b.url(&format!("/v1/owners/{owner}/documents/{id}/content")),
            Some(&b.owner(owner)),
            &[],
            None,
        );
        assert!(r.status == 200 && r.body == *data, "{owner} {id}: {}", r.status);
    }
    assert!(size(&b) > at_b);
    // The deposit made after the kill is listed at b.
    let r = call("GET", &b.url(&format!("{base}/documents")), Some(&b.owner(CITIZEN)), &[], None);
    assert!(r.json()["documents"].as_array().unwrap().iter().any(|d| d["id"] == after.as_str()));
    // check --read-data over both stores, with both servers gone.
    let env = a.s3.as_ref().unwrap().env();
    let (key, data_dir) = (b.dir.path().join("master.key"), b.dir.path().join("data"));
    let b_dir = b.stop();
    wait_unlocked(&db.url);
    check_both_stores(&db.url, &data_dir, &key, env);
    drop((a, b_dir));
}
