//! The real `vault-server` binary with its metadata in PostgreSQL (`--metadata postgres://...`,
//! SPEC.md §9a) on a throwaway cluster (tests/common/pg.rs): deposits and reads over HTTP, a
//! restart after SIGKILL, and the refusals (a second server on the same database, a data folder
//! whose metadata is in sled).

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

/// Waits until no session holds an advisory lock in `db` (a killed server's connection is
/// closed by the kernel; PostgreSQL lets go of its locks once it sees that).
fn wait_unlocked(db: &pg::PgDb) {
    let mut admin = pg::admin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND d.datname = $1",
                &[&db.name],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the killed server's lock was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
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

    // A second server on the same database is refused, with the reason.
    let other = tempfile::tempdir().unwrap();
    let err = fails_to_start(&other.path().join("data"), &["--metadata", &db.url]);
    assert!(err.contains("in use by another vault instance"), "{err}");
    // So is a data folder whose metadata is embedded.
    let sled_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sled_dir.path().join("data/meta")).unwrap();
    let err = fails_to_start(&sled_dir.path().join("data"), &["--metadata", &db.url]);
    assert!(err.contains("holds embedded (sled) metadata"), "{err}");

    // Killed and started again (recovery runs): everything acknowledged is there.
    let port = s.port;
    let dir = s.stop();
    wait_unlocked(&db);
    let s = Server::start_at(dir, port, &["--metadata", &db.url]);
    read_back(&s);

    // The operator commands on the same database (the server stopped): check, rotate the master
    // key, check under the new key.
    let dir = s.stop();
    wait_unlocked(&db);
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
    wait_unlocked(&db);
    let s = Server::start_s3(dir, &["--metadata", &db.url]);
    read_back(&s);
    // check --read-data over both stores (stop_and_check passes --blobs; add --metadata).
    let s3 = s.s3.as_ref().unwrap();
    let env = s3.env();
    let (key, data) = (s.dir.path().join("master.key"), s.dir.path().join("data"));
    let mut s = s;
    let s3 = s.s3.take().unwrap();
    let _dir = s.stop();
    wait_unlocked(&db);
    let out = Command::new(binary())
        .args(["check", "--read-data", "--metadata", &db.url, "--blobs", "s3://vault-test/blobs", "--data"])
        .arg(&data)
        .arg("--master-key-file")
        .arg(&key)
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    drop(s3);
}
