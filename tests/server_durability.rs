//! The server under stress: 1 GiB streamed both ways in flat memory, kill -9 during
//! concurrent uploads and deposits, SIGTERM during an upload.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::http::*;
use serde_json::json;
use vault::Digest;

/// Peak resident memory of a process, MiB.
fn vm_hwm_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 =
        status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// A deterministic pseudo-random stream of `left` bytes, optionally slowed down.
struct Gen {
    left: u64,
    out: blake3::OutputReader,
    /// Sleep this long after every MiB produced.
    pause: Option<Duration>,
    since_pause: usize,
    /// Bytes produced so far (shared with the test).
    produced: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Read for Gen {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = b.len().min(self.left as usize).min(1 << 20);
        self.out.fill(&mut b[..n]);
        self.left -= n as u64;
        self.since_pause += n;
        self.produced.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
        if let Some(p) = self.pause {
            if self.since_pause >= 1 << 20 {
                self.since_pause = 0;
                std::thread::sleep(p);
            }
        }
        Ok(n)
    }
}

fn gen(seed: &[u8], len: u64, pause: Option<Duration>) -> Gen {
    Gen {
        left: len,
        out: blake3::Hasher::new().update(seed).finalize_xof(),
        pause,
        since_pause: 0,
        produced: Default::default(),
    }
}

fn digest_of(mut r: impl Read) -> Digest {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut r, &mut h).unwrap();
    h.finalize().into()
}

#[test]
fn one_gib_streams_both_ways_in_flat_memory() {
    let s = Server::start(&[]);
    let t = s.owner(CITIZEN);
    const SIZE: u64 = 1 << 30;
    let digest = digest_of(gen(b"1GiB", SIZE, None));
    let url = s.url(&format!("/v1/owners/{CITIZEN}/contents/{digest}"));
    // Chunked transfer encoding: the server never knows the length in advance.
    let r = ureq::put(&url)
        .set("Authorization", &format!("Bearer {t}"))
        .timeout(Duration::from_secs(600))
        .send(gen(b"1GiB", SIZE, None))
        .unwrap();
    assert_eq!(r.status(), 201);
    let dep = json!({"digest": digest, "doc_type": "video", "title": "Big", "media_type": "application/octet-stream"});
    let doc = post_json(&s.url(&format!("/v1/owners/{CITIZEN}/documents")), &t, None, &dep).json();
    let id = doc["id"].as_str().unwrap();
    let r = ureq::get(&s.url(&format!("/v1/owners/{CITIZEN}/documents/{id}/content")))
        .set("Authorization", &format!("Bearer {t}"))
        .timeout(Duration::from_secs(600))
        .call()
        .unwrap();
    assert_eq!(r.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(digest_of(r.into_reader()), digest);
    let peak = vm_hwm_mib(s.child.id());
    eprintln!("server peak RSS after 1 GiB up and down: {peak:.1} MiB");
    assert!(peak < 100.0, "server peak RSS {peak:.1} MiB");
}

#[test]
fn kill9_during_uploads_loses_no_acknowledged_write() {
    let s = Server::start(&[]);
    let (sk, agency) = register_agency(&s, "ubnd", 51);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String, Vec<u8>)>::new()));
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            let (base, token, sk, stop, acked) =
                (s.base.clone(), agency.clone(), sk.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let owner = format!("citizen:{:012}", 100 + w);
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let data = format!("result {w}/{i} ").repeat(1 + (i % 50) as usize * 100).into_bytes();
                    let d = Digest::of(&data);
                    let req = ureq::put(&format!("{base}/v1/owners/{owner}/contents/{d}"))
                        .set("Authorization", &format!("Bearer {token}"));
                    if req.send_bytes(&data).is_err() {
                        break;
                    }
                    let dep = signed_deposit(&owner, &data, "ubnd", &sk);
                    let r = ureq::post(&format!("{base}/v1/owners/{owner}/documents"))
                        .set("Authorization", &format!("Bearer {token}"))
                        .set("Content-Type", "application/json")
                        .send_string(&dep.to_string());
                    match r {
                        Ok(r) if r.status() == 201 => {
                            let v: serde_json::Value = serde_json::from_reader(r.into_reader()).unwrap();
                            acked.lock().unwrap().push((owner.clone(), v["id"].as_str().unwrap().to_owned(), data));
                        }
                        _ => break,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "only {} acknowledged deposits", acked.len());
    // Restart on the same data: everything acknowledged is there and intact.
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let s = Server::start_in(dir, &[]);
    let _ = register_agency(&s, "ubnd", 51);
    for (owner, id, data) in &acked {
        let t = s.owner(owner);
        let r = call("GET", &s.url(&format!("/v1/owners/{owner}/documents/{id}/content")), Some(&t), &[], None);
        assert_eq!(r.status, 200, "{owner} {id} lost after kill -9");
        assert!(r.body == *data, "{owner} {id} differs after kill -9");
    }
    let out = s.stop_and_check();
    assert!(
        out.status.success(),
        "check after kill -9:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{} acknowledged deposits survived kill -9", acked.len());
}

#[test]
fn sigterm_finishes_in_flight_uploads_and_exits_zero() {
    if one_process_only("opens the server's data folder after it exits") {
        return;
    }
    let mut s = Server::start(&[]);
    let t = s.owner(CITIZEN);
    const SIZE: u64 = 30 << 20;
    let digest = digest_of(gen(b"slow", SIZE, None));
    let url = s.url(&format!("/v1/owners/{CITIZEN}/contents/{digest}"));
    let slow = gen(b"slow", SIZE, Some(Duration::from_millis(50)));
    let produced = slow.produced.clone();
    let upload = std::thread::spawn(move || {
        // About 1.5 s of upload: 30 chunks of 1 MiB, 50 ms apart.
        ureq::put(&url).set("Authorization", &format!("Bearer {t}")).send(slow).map(|r| r.status()).ok()
    });
    // Signal only once more has been sent than loopback socket buffers can hold, so the server
    // has certainly accepted the request and is reading it.
    let start = Instant::now();
    while produced.load(std::sync::atomic::Ordering::SeqCst) < 16 << 20 {
        assert!(start.elapsed() < Duration::from_secs(60), "the upload did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let term = std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", s.child.id())]).status().unwrap();
    assert!(term.success());
    let status = upload.join().unwrap();
    assert_eq!(status, Some(201), "the in-flight upload must finish");
    let start = Instant::now();
    let exit = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(exit.code(), Some(0));
    // The shutdown was clean: no recovery needed at the next open, and the content is there.
    let data = s.dir.path().join("data");
    assert!(!data.join("OPEN").exists());
    let master = vault::MasterKey::from_bytes([5; 32]);
    let v = match &s.s3 {
        None => vault::Vault::open(&data, &master).unwrap(),
        Some(s3) => {
            let meta = vault::storage::sled::SledMeta::open(&data.join("meta")).unwrap();
            let blobs = s3.blobs("blobs", data.join("spool"));
            vault::Vault::open_with(Box::new(meta), Box::new(blobs), &master, Some(data.join("OPEN"))).unwrap()
        }
    };
    assert!(v.holds(&vault::OwnerId::parse(CITIZEN).unwrap(), &digest).unwrap());
}

/// kill -9 while agencies read a small content under a grant (the reads that wait for the
/// audit sequencer without a thread): after the restart every acknowledged read is in the
/// owner's access log with its own index (none lost, none reused), the grant's use count covers
/// every acknowledged read, and the log verifies against a checkpoint.
#[test]
fn kill9_during_audited_reads_loses_no_acknowledged_entry() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let s = Server::start(&[]);
    let (iss_key, iss) = register_agency(&s, "ubnd", 52);
    let (_, reader) = register_agency(&s, "so-gd", 53);
    let owner = "citizen:001099000777";
    let base = format!("/v1/owners/{owner}");
    let data = b"giay khai sinh ".repeat(700); // 10.5 KB: kept in the metadata store
    let d = Digest::of(&data);
    let r = call("PUT", &s.url(&format!("{base}/contents/{d}")), Some(&iss), &[], Some(&data));
    assert_eq!(r.status, 201);
    let r =
        post_json(&s.url(&format!("{base}/documents")), &iss, None, &signed_deposit(owner, &data, "ubnd", &iss_key));
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let citizen = s.owner(owner);
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    let r = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "purpose_text": "Tuyển sinh", "doc_types": ["giay-khai-sinh"], "expires_at": expires}),
    );
    assert_eq!(r.status, 201);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(0u64));
    let url = s.url(&format!("{base}/documents/{id}/content"));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, reader, stop, acked, data) =
                (url.clone(), reader.clone(), stop.clone(), acked.clone(), data.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                while !stop.load(Ordering::SeqCst) {
                    let r = agent
                        .get(&url)
                        .set("Authorization", &format!("Bearer {reader}"))
                        .set("Vault-Purpose", "1.000001")
                        .call();
                    let Ok(r) = r else { break };
                    let mut body = Vec::new();
                    if r.into_reader().read_to_end(&mut body).is_err() {
                        break;
                    }
                    assert!(body == data, "a read answered other bytes");
                    *acked.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut s = s;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = *acked.lock().unwrap();
    assert!(acked > 20, "only {acked} acknowledged reads");

    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let s = Server::start_in(dir, &[]);
    let citizen = s.owner(owner);
    let (_, reader) = register_agency(&s, "so-gd", 53);
    let mut reads = 0u64;
    let mut indexes = std::collections::HashSet::new();
    let mut after: Option<u64> = None;
    loop {
        let q = after.map(|a| format!("?after={a}")).unwrap_or_default();
        let page = call("GET", &s.url(&format!("{base}/access-log{q}")), Some(&citizen), &[], None).json();
        for e in page["entries"].as_array().unwrap() {
            assert!(indexes.insert(e["index"].as_u64().unwrap()), "index {} listed twice", e["index"]);
            if e["action"] == "document.content" && e["outcome"] == "allowed" {
                reads += 1;
            }
        }
        match page["next"].as_u64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert!(reads >= acked, "{acked} reads acknowledged, {reads} in the access log");
    let g = call("GET", &s.url("/v1/grants"), Some(&reader), &[], None).json();
    let uses = g["grants"][0]["uses"].as_u64().unwrap();
    assert!(uses >= acked && uses == reads, "uses {uses}, acknowledged {acked}, logged {reads}");
    // The tree after the restart is consistent with a checkpoint that covers every entry.
    let cp = call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None);
    assert_eq!(cp.status, 200);
    let size: u64 = String::from_utf8_lossy(&cp.body).lines().nth(1).unwrap().parse().unwrap();
    assert!(size > *indexes.iter().max().unwrap());
    eprintln!("{acked} acknowledged audited reads survived kill -9 ({reads} logged)");
}
