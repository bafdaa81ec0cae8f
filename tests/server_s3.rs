//! The server with its blobs in S3-compatible object storage (`--blobs s3://...`, SPEC.md §9b)
//! against a real S3 server (s3s-fs, started by the harness): large contents go to the bucket,
//! read back over HTTP, survive a kill -9 and a restart, `check --read-data` is clean, erasure
//! empties the owner's objects, and the data folder is refused without its blob store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::Command;

use common::http::*;
use serde_json::json;
use vault::Digest;

/// Objects under the bucket's `blobs/blobs/` prefix (the test server's folder layout).
fn objects(s: &Server) -> usize {
    let root = s.dir.path().join("s3/vault-test/blobs/blobs");
    let Ok(owners) = std::fs::read_dir(&root) else { return 0 };
    owners.map(|o| std::fs::read_dir(o.unwrap().path()).map(|r| r.count()).unwrap_or(0)).sum()
}

fn upload(s: &Server, token: &str, data: &[u8]) -> String {
    let digest = Digest::of(data).to_string();
    let r = call("PUT", &s.url(&format!("/v1/owners/{CITIZEN}/contents/{digest}")), Some(token), &[], Some(data));
    assert!(r.status == 201 || r.status == 200, "{} {}", r.status, String::from_utf8_lossy(&r.body));
    let doc = json!({"digest": digest, "doc_type": "giay-khai-sinh", "title": "Giấy khai sinh",
                     "media_type": "application/pdf"});
    let r = post_json(&s.url(&format!("/v1/owners/{CITIZEN}/documents")), token, None, &doc);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_owned()
}

fn content(s: &Server, token: &str, id: &str) -> Vec<u8> {
    let r = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents/{id}/content")), Some(token), &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.body
}

#[test]
fn the_server_keeps_its_blobs_in_s3() {
    let s = Server::start_s3(tempfile::tempdir().unwrap(), &[]);
    let t = s.owner(CITIZEN);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let small = b"%PDF-1.7 small".to_vec();
    let (big_id, small_id) = (upload(&s, &t, &big), upload(&s, &t, &small));
    assert_eq!(objects(&s), 1, "the large content is an object in the bucket; the small one is inline");
    assert!(content(&s, &t, &big_id) == big);
    // A range is a ranged read of the object.
    let r = call(
        "GET",
        &s.url(&format!("/v1/owners/{CITIZEN}/documents/{big_id}/content")),
        Some(&t),
        &[("Range", "bytes=2000000-2000099")],
        None,
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, big[2_000_000..2_000_100]);

    // kill -9 and restart over the same folders (the S3 server restarts over its folder too).
    let dir = s.stop();
    let s = Server::start_s3(dir, &[]);
    let t = s.owner(CITIZEN);
    assert!(content(&s, &t, &big_id) == big, "after kill -9 and restart");
    assert_eq!(content(&s, &t, &small_id), small);

    // check --read-data over the same stores: clean.
    let key = s.dir.path().join("master.key");
    let data = s.dir.path().join("data");
    let s3 = s.s3.as_ref().unwrap();
    let endpoint_env = s3.env();
    let dir = {
        // The running server holds the data folder: stop it, keep the S3 server of this run.
        let mut s = s;
        let s3 = s.s3.take().unwrap();
        let dir = s.stop();
        let out = Command::new(binary())
            .arg("--data")
            .arg(&data)
            .arg("--master-key-file")
            .arg(&key)
            .args(["--blobs", "s3://vault-test/blobs", "check", "--read-data"])
            .envs(endpoint_env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Without --blobs, the data folder is refused: its blobs are not in files.
        let out = Command::new(binary())
            .arg("--data")
            .arg(&data)
            .arg("--master-key-file")
            .arg(&key)
            .args(["check"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("blobs are in s3://vault-test/blobs"), "{err}");
        drop(s3);
        dir
    };

    // Erasure removes the owner's objects from the bucket.
    let s = Server::start_s3(dir, &[]);
    let t = s.owner(CITIZEN);
    assert_eq!(objects(&s), 1);
    let r = call("DELETE", &s.url(&format!("/v1/owners/{CITIZEN}")), Some(&t), &[], None);
    assert!(r.status == 200 || r.status == 202, "{} {}", r.status, String::from_utf8_lossy(&r.body));
    assert_eq!(objects(&s), 0, "the erased owner's objects left the bucket");
}
