//! The blob stores side by side (issue 12): the library's put and read of large contents with
//! blobs in files and in S3-compatible object storage (a real S3 server, s3s-fs, on loopback),
//! in one run with raw BLAKE3 + AES-256-GCM over the same bytes, the limit of any store.
//!
//! Run: `tests/s3-setup.sh >/dev/null && cargo bench --bench blob_stores` (knobs:
//! `VAULT_BENCH_CONTENTS`, default 24, `VAULT_BENCH_MIB`, default 16 MiB each).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

#[path = "../tests/common/s3.rs"]
#[allow(dead_code)] // the harness is shared with the tests, which use all of it
mod s3;

use std::io::Read;
use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use vault::storage::{files::FsBlobs, sled::SledMeta, BlobStore};
use vault::{Digest, MasterKey, OwnerId, Vault};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn contents(n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut out = vec![0u8; size];
            blake3::Hasher::new().update(&(i as u64).to_le_bytes()).finalize_xof().fill(&mut out);
            out
        })
        .collect()
}

/// Raw BLAKE3 + AES-256-GCM in 64 KiB chunks over the same bytes: bytes/s.
fn raw(data: &[Vec<u8>]) -> f64 {
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    for d in data {
        let _ = blake3::hash(d);
        for (i, c) in d.chunks(64 * 1024).enumerate() {
            buf[..c.len()].copy_from_slice(c);
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let _tag = cipher.detached(&Nonce::from(nonce), &mut buf[..c.len()]);
        }
    }
    let bytes: usize = data.iter().map(Vec::len).sum();
    bytes as f64 / start.elapsed().as_secs_f64()
}

trait Detached {
    fn detached(&self, nonce: &Nonce<aes_gcm::aes::cipher::consts::U12>, buf: &mut [u8]) -> aes_gcm::Tag;
}
impl Detached for Aes256Gcm {
    fn detached(&self, nonce: &Nonce<aes_gcm::aes::cipher::consts::U12>, buf: &mut [u8]) -> aes_gcm::Tag {
        self.encrypt_in_place_detached(nonce, b"", buf).unwrap()
    }
}

/// Puts every content (4 writers), then reads every one back: (put bytes/s, read bytes/s).
fn run(v: &Vault, data: &[Vec<u8>]) -> (f64, f64) {
    let owner = |i: usize| OwnerId::parse(&format!("citizen:{:012}", 1_099_000_000 + i % 8)).unwrap();
    let bytes: usize = data.iter().map(Vec::len).sum();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for (i, d) in data.iter().enumerate().filter(|(i, _)| i % 4 == t) {
                    v.put_content_bytes(&owner(i), d).unwrap();
                }
            });
        }
    });
    let put = bytes as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut buf = Vec::new();
    for (i, d) in data.iter().enumerate() {
        buf.clear();
        v.open_content(&owner(i), &Digest::of(d)).unwrap().read_to_end(&mut buf).unwrap();
        assert_eq!(buf.len(), d.len());
    }
    (put, bytes as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` asks the harness to list benchmarks: there is one, this run.
    }
    let (n, mib) = (env_num("VAULT_BENCH_CONTENTS", 24), env_num("VAULT_BENCH_MIB", 16));
    let data = contents(n, mib << 20);
    let master = MasterKey::from_bytes([9; 32]);
    let raw = raw(&data);
    let dir = tempfile::tempdir().unwrap();
    let files = {
        let meta = SledMeta::open(&dir.path().join("f/meta")).unwrap();
        let blobs = FsBlobs::open(dir.path().join("f/blobs")).unwrap();
        let _ = blobs.kind();
        let v = Vault::open_with(Box::new(meta), Box::new(blobs), &master, None).unwrap();
        run(&v, &data)
    };
    let server = s3::S3Server::start("bench");
    let s3 = {
        let meta = SledMeta::open(&dir.path().join("s/meta")).unwrap();
        let blobs = server.blobs("bench", dir.path().join("s/spool"));
        let v = Vault::open_with(Box::new(meta), Box::new(blobs), &master, None).unwrap();
        run(&v, &data)
    };
    let mbs = |b: f64| b / 1e6;
    println!("{n} contents of {mib} MiB, 4 writers; raw BLAKE3 + AES-256-GCM (one core): {:.0} MB/s", mbs(raw));
    println!("| blobs in | put MB/s | vs raw | read MB/s | vs raw |");
    println!("|---|---|---|---|---|");
    for (name, (p, r)) in [("files (data folder)", files), ("S3 (s3s-fs on loopback)", s3)] {
        println!("| {name} | {:.0} | {:.2}× | {:.0} | {:.2}× |", mbs(p), p / raw, mbs(r), r / raw);
    }
}
