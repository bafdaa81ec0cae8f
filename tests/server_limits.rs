//! Bad input cannot exhaust the server (issue 9, items 5–7): tar bombs in batch deposits, stalled
//! uploads, content-response headers and identity providers limited to one kind of owner. The
//! real binary on 127.0.0.1; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use serde_json::json;
use vault::Digest;

use common::http::*;

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// A 512-byte tar header (GNU magic unless `posix`), checksum set.
fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000600");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0");
    checksum(&mut h);
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

#[test]
fn item_9_6_sparse_tar_bomb_is_refused_and_memory_stays_bounded() {
    let s = Server::start(&[]);
    let (sk, agency) = register_agency(&s, "ubnd", 61);
    let url = s.url(&format!("/v1/owners/{CITIZEN}/deposits"));
    let tar_ct = [("Content-Type", "application/x-tar")];
    let end = [0u8; 1024];

    // A GNU sparse member (in the deposit-body position) whose real size is 1.4 GB: 1,536 bytes.
    let mut sparse = header("0.json", 0, b'S');
    sparse[386..398].copy_from_slice(b"12000000000\0"); // one region at 1.4 GB ...
    sparse[398..410].copy_from_slice(b"00000000000\0"); // ... of no bytes
    sparse[483..495].copy_from_slice(b"12000000000\0"); // real size
    checksum(&mut sparse);
    let bomb = [&sparse[..], &end].concat();
    assert_eq!(bomb.len(), 1536);

    // A member claiming more bytes than the body holds.
    let liar = [&header("0.json", (1 << 33) - 1, b'0')[..], &[b'{'; 512], &end].concat();
    // A symlink and a character device where the content should be.
    let doc = signed_deposit(CITIZEN, b"x", "ubnd", &sk).to_string();
    let json_member = [&header("0.json", doc.len() as u64, b'0')[..], &padded(doc.as_bytes())].concat();
    let mut link = header("0.bin", 0, b'2');
    link[157..168].copy_from_slice(b"/etc/passwd");
    checksum(&mut link);
    let symlink = [&json_member[..], &link, &end].concat();
    let device = [&json_member[..], &header("0.bin", 0, b'3'), &end].concat();
    // A PAX header overriding the next member's size.
    let pax_body = b"30 size=99999999999999999999\n";
    let pax =
        [&header("././@PaxHeader", pax_body.len() as u64, b'x')[..], &padded(pax_body), &json_member, &end].concat();
    // A GNU long name.
    let long = [&header("././@LongLink", 600, b'L')[..], &padded(&[b'a'; 600]), &json_member, &end].concat();

    for (what, body) in [
        ("sparse", &bomb),
        ("size beyond the body", &liar),
        ("symlink", &symlink),
        ("device", &device),
        ("pax size", &pax),
        ("gnu long name", &long),
    ] {
        for _ in 0..3 {
            let r = call("POST", &url, Some(&agency), &tar_ct, Some(body));
            assert_eq!((r.status, r.code().as_str()), (400, "invalid_request"), "{what}");
        }
    }
    // Authorisation comes before the body is read: another citizen gets 403 even for the bomb.
    let other = s.owner("citizen:001099000009");
    let r = call("POST", &url, Some(&other), &tar_ct, Some(&bomb));
    assert_eq!((r.status, r.code().as_str()), (403, "forbidden"));
    // A declared body above 64 MiB is refused before it is read.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        tcp,
        "POST /v1/owners/{CITIZEN}/deposits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agency}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        100u64 << 20
    )
    .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"413");
    drop(tcp);

    // Nothing stored, and the server never grew.
    let owner = s.owner(CITIZEN);
    let docs = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&owner), &[], None).json();
    assert!(docs["documents"].as_array().unwrap().is_empty());
    let peak = peak_rss(s.child.id());
    eprintln!("peak RSS after the bombs: {:.1} MiB", peak as f64 / (1 << 20) as f64);
    assert!(peak < 100 << 20, "peak RSS {peak} bytes");
}

/// Opens a connection and sends the head of an upload whose body never comes.
fn stalled_upload(s: &Server, token: &str, digest: &Digest) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        tcp,
        "PUT /v1/owners/{CITIZEN}/contents/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 1000\r\n\r\n"
    )
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    tcp
}

/// What a connection has answered so far (empty if nothing yet).
fn answered(tcp: &mut TcpStream, got: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    match tcp.read(&mut buf) {
        Ok(n) => got.extend_from_slice(&buf[..n]),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
        Err(_) => {}
    }
}

#[test]
fn item_9_7_stalled_uploads_are_limited_per_caller_and_others_still_answer() {
    let s = Server::start(&[]);
    let owner = s.owner(CITIZEN);
    let digest = Digest::of(b"never sent");
    let n = 40;
    let mut conns: Vec<(TcpStream, Vec<u8>)> =
        (0..n).map(|_| (stalled_upload(&s, &owner, &digest), Vec::new())).collect();
    // Beyond the 16 uploads one caller may have in flight, every one is refused at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = |conns: &[(TcpStream, Vec<u8>)]| conns.iter().filter(|(_, g)| g.starts_with(b"HTTP/1.1 429")).count();
    while refused(&conns) < n - 16 && Instant::now() < deadline {
        for (tcp, got) in conns.iter_mut() {
            if got.is_empty() {
                answered(tcp, got);
            }
        }
    }
    assert_eq!(refused(&conns), n - 16);
    let answers: Vec<String> = conns.iter().map(|(_, g)| String::from_utf8_lossy(g).to_ascii_lowercase()).collect();
    assert!(answers
        .iter()
        .filter(|a| a.starts_with("http/1.1 429"))
        .all(|a| a.contains("retry-after: 1") && a.contains("too_many_requests")));
    // The server still answers others, and the same caller's other calls.
    let quick = |url: &str, token: Option<&str>| {
        let mut req = ureq::get(url).timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req.call().map(|r| r.status()).unwrap_or_else(|e| panic!("{url}: {e}"))
    };
    assert_eq!(quick(&s.url("/healthz"), None), 200);
    assert_eq!(quick(&s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&owner)), 200);
    let other = "citizen:001099000007";
    let data = b"another citizen uploads meanwhile";
    let r = call(
        "PUT",
        &s.url(&format!("/v1/owners/{other}/contents/{}", Digest::of(data))),
        Some(&s.owner(other)),
        &[],
        Some(data),
    );
    assert_eq!(r.status, 201);
    drop(conns);
}

#[test]
fn item_9_7_a_stalled_body_is_aborted_after_the_idle_timeout_and_frees_its_slot() {
    let s = Server::start(&["--stream-idle-timeout", "2", "--max-uploads-per-caller", "2"]);
    let owner = s.owner(CITIZEN);
    let digest = Digest::of(b"never sent");
    let mut conns: Vec<(TcpStream, Vec<u8>)> =
        (0..2).map(|_| (stalled_upload(&s, &owner, &digest), Vec::new())).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while conns.iter().any(|(_, g)| g.is_empty()) && Instant::now() < deadline {
        for (tcp, got) in conns.iter_mut() {
            if got.is_empty() {
                answered(tcp, got);
            }
        }
    }
    for (_, got) in &conns {
        let a = String::from_utf8_lossy(got);
        assert!(a.starts_with("HTTP/1.1 408") && a.contains("\"timeout\""), "{a}");
    }
    // The slots are free again, and nothing was stored.
    let data = b"now the body comes";
    let r = call(
        "PUT",
        &s.url(&format!("/v1/owners/{CITIZEN}/contents/{}", Digest::of(data))),
        Some(&owner),
        &[],
        Some(data),
    );
    assert_eq!(r.status, 201);
    let r = post_json(
        &s.url(&format!("/v1/owners/{CITIZEN}/contents/missing")),
        &owner,
        None,
        &json!({"digests": [digest]}),
    );
    assert_eq!(r.json()["missing"][0].as_str(), Some(digest.to_hex().as_str()));
}

#[test]
fn item_9_5_content_responses_are_nosniff_and_sandboxed() {
    let s = Server::start(&[]);
    let owner = s.owner(CITIZEN);
    let data = b"<html><script>alert(1)</script></html>";
    let digest = Digest::of(data);
    let base = format!("/v1/owners/{CITIZEN}");
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&owner), &[], Some(data)).status, 201);
    let body = json!({"digest": digest, "doc_type": "ghi-chu", "title": "page", "media_type": "text/html"});
    let r = post_json(&s.url(&format!("{base}/documents")), &owner, None, &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let url = s.url(&format!("{base}/documents/{id}/content"));
    let etag = format!("\"{digest}\"");
    for (headers, status) in
        [(vec![], 200), (vec![("Range", "bytes=0-5")], 206), (vec![("If-None-Match", etag.as_str())], 304)]
    {
        let r = call("GET", &url, Some(&owner), &headers, None);
        assert_eq!(r.status, status);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{status}");
        assert_eq!(r.header("content-security-policy"), Some("sandbox"), "{status}");
    }
}

#[test]
fn item_9_5_an_identity_provider_limited_to_one_kind_of_owner() {
    let corp = SigningKey::from_bytes(&[71; 32]);
    let cit = SigningKey::from_bytes(&[72; 32]);
    let corp_spec = format!("corp={}@org", B64.encode(corp.verifying_key().to_bytes()));
    let cit_spec = format!("cit={}@citizen", B64.encode(cit.verifying_key().to_bytes()));
    let s = Server::start(&["--identity-provider", &corp_spec, "--identity-provider", &cit_spec]);
    let org = "org:0101234567";
    let list = |key: &SigningKey, kid: &str, owner: &str| {
        let t = token(key, kid, kid, owner, json!("vault"), now(), now() + 600);
        let r = call("GET", &s.url(&format!("/v1/owners/{owner}/documents")), Some(&t), &[], None);
        (r.status, if r.status == 200 { String::new() } else { r.code() })
    };
    assert_eq!(list(&corp, "corp", org), (200, String::new()));
    assert_eq!(list(&corp, "corp", CITIZEN), (401, "unauthenticated".into()));
    assert_eq!(list(&cit, "cit", CITIZEN), (200, String::new()));
    assert_eq!(list(&cit, "cit", org), (401, "unauthenticated".into()));
    // The unlimited provider of the harness still vouches for both kinds.
    assert_eq!(call("GET", &s.url(&format!("/v1/owners/{org}/documents")), Some(&s.owner(org)), &[], None).status, 200);
}

#[test]
fn item_9_7_an_unread_download_is_dropped_after_the_idle_timeout() {
    let s = Server::start(&["--stream-idle-timeout", "2"]);
    let owner = s.owner(CITIZEN);
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    let base = format!("/v1/owners/{CITIZEN}");
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&owner), &[], Some(&data)).status, 201);
    let body = json!({"digest": digest, "doc_type": "ghi-chu", "title": "big", "media_type": "application/pdf"});
    let id =
        post_json(&s.url(&format!("{base}/documents")), &owner, None, &body).json()["id"].as_str().unwrap().to_owned();
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        tcp,
        "GET {base}/documents/{id}/content HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Not read for well beyond the idle timeout: the server gives up on the response.
    std::thread::sleep(Duration::from_secs(8));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert!(got.len() < data.len(), "the whole unread response arrived ({} bytes)", got.len());
    // The server still serves the content to a reader.
    let r = call("GET", &s.url(&format!("{base}/documents/{id}/content")), Some(&owner), &[], None);
    assert_eq!(r.body.len(), data.len());
}

#[test]
fn review_a_stalled_batch_body_is_aborted_after_the_idle_timeout_and_frees_its_slot() {
    let s = Server::start(&["--stream-idle-timeout", "2", "--max-uploads-per-caller", "1"]);
    let (_sk, agency) = register_agency(&s, "ustl", 62);
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(
        tcp,
        "POST /v1/owners/{CITIZEN}/deposits HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agency}\r\n\
         Content-Type: application/x-tar\r\nContent-Length: 1024\r\n\r\n"
    )
    .unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.is_empty() && Instant::now() < deadline {
        answered(&mut tcp, &mut got);
    }
    let a = String::from_utf8_lossy(&got);
    assert!(a.starts_with("HTTP/1.1 408") && a.contains("\"timeout\""), "{a}");
    // Its slot is free again: an (empty) batch from the same caller is answered.
    let r = call(
        "POST",
        &s.url(&format!("/v1/owners/{CITIZEN}/deposits")),
        Some(&agency),
        &[("Content-Type", "application/x-tar")],
        Some(&[0u8; 1024]),
    );
    assert_ne!(r.status, 429);
}

#[test]
fn item_9_7_unread_downloads_are_limited_per_caller_and_free_their_slot() {
    let s = Server::start(&["--max-downloads-per-caller", "2", "--stream-idle-timeout", "60"]);
    let owner = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let content = big_document(&s, CITIZEN);
    let data_len = 32usize << 20;
    let open = || unread_download(&s, &owner, &content);
    // Two downloads whose clients read nothing more: each holds a reader thread.
    let slow = [open(), open()];
    // A third one by the same caller is refused at once, before anything is read or audited.
    let log_len = |s: &Server| {
        call("GET", &s.url(&format!("{base}/access-log?limit=1000")), Some(&owner), &[], None).json()["entries"]
            .as_array()
            .unwrap()
            .len()
    };
    let (a, b) = (log_len(&s), log_len(&s));
    let r = call("GET", &s.url(&content), Some(&owner), &[], None);
    assert_eq!((r.status, r.code().as_str()), (429, "too_many_requests"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Listing the log may add its own entry; the refused download added none.
    assert_eq!(log_len(&s) - b, b - a);
    let e = call("GET", &s.url(&format!("{base}/export")), Some(&owner), &[], None);
    assert_eq!(e.status, 429, "an export counts as a download");
    // Another caller is not affected.
    let other = "citizen:001099000007";
    assert_eq!(
        call("GET", &s.url(&format!("/v1/owners/{other}/documents")), Some(&s.owner(other)), &[], None).status,
        200
    );
    // Once the slow clients go away their slots come back.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call("GET", &s.url(&content), Some(&owner), &[], None);
        if r.status == 200 {
            assert_eq!(r.body.len(), data_len);
            break;
        }
        assert_eq!(r.status, 429);
        assert!(Instant::now() < deadline, "the slots were never given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends a download request for `path` and reads only the head of its 200 answer: the client
/// then reads nothing more, so the server's reader thread waits on it.
fn unread_download(s: &Server, token: &str, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    tcp
}

/// Stores a 32 MiB content and a document on it for `who`; the document's content path.
fn big_document(s: &Server, who: &str) -> String {
    let token = s.owner(who);
    let data: Vec<u8> = (0..32u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    let base = format!("/v1/owners/{who}");
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&token), &[], Some(&data)).status, 201);
    let body = json!({"digest": digest, "doc_type": "ghi-chu", "title": "big", "media_type": "application/pdf"});
    let id =
        post_json(&s.url(&format!("{base}/documents")), &token, None, &body).json()["id"].as_str().unwrap().to_owned();
    format!("{base}/documents/{id}/content")
}

#[test]
fn item_9_7_streams_of_all_callers_together_are_bounded() {
    let s = Server::start(&["--max-streams", "2", "--stream-idle-timeout", "60"]);
    let who = ["citizen:001099000011", "citizen:001099000012", "citizen:001099000013"];
    let paths: Vec<String> = who.iter().map(|w| big_document(&s, w)).collect();
    let open = |i: usize| unread_download(&s, &s.owner(who[i]), &paths[i]);
    // Two callers hold one unread download each: the server's two stream slots.
    let slow = [open(0), open(1)];
    let r = call("GET", &s.url(&paths[2]), Some(&s.owner(who[2])), &[], None);
    assert_eq!((r.status, r.code().as_str()), (429, "too_many_requests"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Calls that are not streams still answer.
    assert_eq!(
        call("GET", &s.url(&format!("/v1/owners/{}/documents", who[2])), Some(&s.owner(who[2])), &[], None).status,
        200
    );
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call("GET", &s.url(&paths[2]), Some(&s.owner(who[2])), &[], None).status != 200 {
        assert!(Instant::now() < deadline, "the slots were never given back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_small_content_is_sent_whole_or_refused_cleanly_when_damaged() {
    let s = Server::start(&[]);
    let owner = s.owner(CITIZEN);
    // 48 KiB: above the inline threshold (a blob file of its own), below the one-frame size.
    let data: Vec<u8> = b"SMALL-CONTENT-".iter().copied().cycle().take(48 * 1024).collect();
    let digest = Digest::of(&data);
    let base = format!("/v1/owners/{CITIZEN}");
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&owner), &[], Some(&data)).status, 201);
    let body = json!({"digest": digest, "doc_type": "ghi-chu", "title": "small", "media_type": "application/pdf"});
    let id =
        post_json(&s.url(&format!("{base}/documents")), &owner, None, &body).json()["id"].as_str().unwrap().to_owned();
    let url = s.url(&format!("{base}/documents/{id}/content"));
    let r = call("GET", &url, Some(&owner), &[], None);
    assert_eq!((r.status, r.body.len()), (200, data.len()));
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-length"), Some(data.len().to_string().as_str()));
    let r = call("GET", &url, Some(&owner), &[("Range", "bytes=100-199")], None);
    assert_eq!((r.status, &r.body[..]), (206, &data[100..200]));
    // One flipped bit in the blob on disk: an error answer with the opaque code, never a 200
    // with bytes (nothing was sent before the whole content was authenticated).
    let blob =
        common::files_below(&s.blob_dir()).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let r = call("GET", &url, Some(&owner), &[], None);
    assert_eq!((r.status, r.code().as_str()), (500, "internal"));
    assert!(!String::from_utf8_lossy(&r.body).contains("SMALL-CONTENT"));
}
