//! Throughput of the vault library against raw BLAKE3, raw AES-256-GCM and a bare pipeline that
//! does the same work without the vault, all in one run. Prints a summary with the ratios the
//! library issue sets as targets. Run: `cargo bench --bench store`.
//!
//! Also measures, in a child process, the peak memory (VmHWM) of putting a 1 GiB content that
//! is generated on the fly (never held in memory).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{BenchmarkId, Criterion, Throughput};
use vault::{DocType, MasterKey, NewDocument, OwnerId, Vault};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const SIZES: [(usize, &str); 3] = [(64 * KIB, "64KiB"), (MIB, "1MiB"), (64 * MIB, "64MiB")];
const CHUNK: usize = 64 * KIB;

fn data(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(b"bench").finalize_xof().fill(&mut out);
    out
}

fn owner() -> OwnerId {
    OwnerId::parse("citizen:001099012345").unwrap()
}

fn doc(digest: vault::Digest) -> NewDocument {
    NewDocument {
        digest,
        doc_type: DocType::parse("giay-khai-sinh").unwrap(),
        title: "Giấy khai sinh".into(),
        media_type: "application/pdf".into(),
        file_name: None,
        issuer: None,
        issued_at: None,
        valid_from: None,
        valid_until: None,
        reference: None,
        procedure: None,
        signature: None,
    }
}

/// Makes `buf` a content never stored before (so a put is a real put, not a dedup hit).
fn freshen(buf: &mut [u8], n: &mut u64) {
    *n += 1;
    let k = buf.len().min(8);
    buf[..k].copy_from_slice(&n.to_le_bytes()[..k]);
}

/// The bare pipeline: hash, encrypt in 64 KiB chunks, write a file, fsync.
fn bare_store(path: &Path, data: &[u8], cipher: &Aes256Gcm) {
    let mut f = File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = Vec::with_capacity(CHUNK + 16);
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        hasher.update(chunk);
        buf.clear();
        buf.extend_from_slice(chunk);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut buf).unwrap();
        buf.extend_from_slice(&tag);
        f.write_all(&buf).unwrap();
    }
    black_box(hasher.finalize());
    f.sync_all().unwrap();
}

/// The bare read: read the file, decrypt in chunks, hash.
fn bare_read(path: &Path, len: usize, cipher: &Aes256Gcm) {
    let mut f = File::open(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK + 16];
    let mut left = len;
    let mut i = 0u64;
    while left > 0 {
        let n = left.min(CHUNK);
        f.read_exact(&mut buf[..n + 16]).unwrap();
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&i.to_be_bytes());
        let (ct, tag) = buf[..n + 16].split_at_mut(n);
        cipher.decrypt_in_place_detached(Nonce::from_slice(&nonce), &[], ct, (&*tag).into()).unwrap();
        hasher.update(ct);
        left -= n;
        i += 1;
    }
    black_box(hasher.finalize());
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::var("VAULT_BENCH_DIR").unwrap_or_else(|_| "target".into())).unwrap();
    let vault = Vault::open(&dir.path().join("vault"), &MasterKey::generate()).unwrap();
    let cipher = Aes256Gcm::new(&[7u8; 32].into());
    let o = owner();
    let mut g = c.benchmark_group("store");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    for (len, label) in SIZES {
        let mut buf = data(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(BenchmarkId::new("blake3", label), |b| b.iter(|| black_box(blake3::hash(&buf))));
        g.bench_function(BenchmarkId::new("aes-gcm", label), |b| {
            let mut work = buf.clone();
            b.iter(|| {
                for (i, chunk) in work.chunks_mut(CHUNK).enumerate() {
                    let mut nonce = [0u8; 12];
                    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
                    black_box(cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], chunk).unwrap());
                }
            })
        });
        let bare = dir.path().join("bare");
        g.bench_function(BenchmarkId::new("bare-store", label), |b| b.iter(|| bare_store(&bare, &buf, &cipher)));
        bare_store(&bare, &buf, &cipher);
        g.bench_function(BenchmarkId::new("bare-read", label), |b| b.iter(|| bare_read(&bare, len, &cipher)));

        let mut n = 0u64;
        g.bench_function(BenchmarkId::new("put", label), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    freshen(&mut buf, &mut n);
                    let t = Instant::now();
                    let s = vault.put_content_bytes(&o, &buf).unwrap();
                    total += t.elapsed();
                    assert!(s.created);
                    // Untimed clean-up keeps the disk use bounded.
                    let d = vault.deposit(&o, doc(s.digest)).unwrap();
                    vault.delete_document(&o, &d.id).unwrap();
                }
                total
            })
        });
        let held = vault.put_content_bytes(&o, &buf).unwrap();
        g.bench_function(BenchmarkId::new("re-put", label), |b| {
            b.iter(|| assert!(!vault.put_content_bytes(&o, &buf).unwrap().created))
        });
        g.bench_function(BenchmarkId::new("get", label), |b| {
            b.iter(|| {
                let mut r = vault.open_content(&o, &held.digest).unwrap();
                std::io::copy(&mut r, &mut std::io::sink()).unwrap();
                assert!(r.verified_whole());
            })
        });
        if len == 64 * MIB {
            // Two different contents put at once (two threads), bytes of both counted.
            g.throughput(Throughput::Bytes(2 * len as u64));
            let bare2 = [dir.path().join("bare-a"), dir.path().join("bare-b")];
            g.bench_function(BenchmarkId::new("bare-store-2-parallel", label), |b| {
                b.iter(|| {
                    std::thread::scope(|s| {
                        for p in &bare2 {
                            let (buf, cipher) = (&buf, &cipher);
                            s.spawn(move || bare_store(p, buf, cipher));
                        }
                    })
                })
            });
            let mut bufs = [buf.clone(), buf.clone()];
            g.bench_function(BenchmarkId::new("put-2-parallel", label), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        for bb in bufs.iter_mut() {
                            freshen(bb, &mut n);
                        }
                        let t = Instant::now();
                        let stored: Vec<_> = std::thread::scope(|s| {
                            let hs: Vec<_> =
                                bufs.iter().map(|bb| s.spawn(|| vault.put_content_bytes(&o, bb).unwrap())).collect();
                            hs.into_iter().map(|h| h.join().unwrap()).collect()
                        });
                        total += t.elapsed();
                        for st in stored {
                            let d = vault.deposit(&o, doc(st.digest)).unwrap();
                            vault.delete_document(&o, &d.id).unwrap();
                        }
                    }
                    total
                })
            });
        }
    }

    // Durable small documents: put a fresh 4 KiB content and deposit a record about it.
    g.throughput(Throughput::Elements(1));
    let small_dir = dir.path().join("small");
    std::fs::create_dir_all(&small_dir).unwrap();
    g.bench_function("bare-4KiB-write-fsync", |b| {
        let buf = data(4 * KIB);
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let mut f = File::create(small_dir.join(format!("{}", i % 64))).unwrap();
            f.write_all(&buf).unwrap();
            f.sync_all().unwrap();
        })
    });
    for writers in [1usize, 16] {
        let counter = std::sync::atomic::AtomicU64::new(1 << 40);
        g.bench_function(BenchmarkId::new("small-doc-puts", format!("{writers}-writers")), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers as u64);
                let t = Instant::now();
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let vault = &vault;
                        let counter = &counter;
                        s.spawn(move || {
                            let o = OwnerId::parse(&format!("citizen:{:012}", w)).unwrap();
                            let mut buf = data(4 * KIB);
                            for _ in 0..per {
                                let mut n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                freshen(&mut buf, &mut n);
                                let d = vault::Digest::of(&buf);
                                vault.put_document(&o, buf.as_slice(), doc(d)).unwrap();
                            }
                        });
                    }
                });
                // Report time per document (per * writers documents were stored).
                t.elapsed().mul_f64(iters as f64 / (per * writers as u64) as f64)
            })
        });
    }
    g.finish();
}

/// Child mode: put a 1 GiB generated content and print the peak resident memory.
fn memory_child() {
    struct Gen(u64, blake3::OutputReader);
    impl Read for Gen {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = b.len().min(self.0 as usize);
            self.1.fill(&mut b[..n]);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let dir = tempfile::tempdir_in(std::env::var("VAULT_BENCH_DIR").unwrap_or_else(|_| "target".into())).unwrap();
    let vault = Vault::open(dir.path(), &MasterKey::generate()).unwrap();
    let gen = Gen(1 << 30, blake3::Hasher::new().update(b"1GiB").finalize_xof());
    let t = Instant::now();
    let s = vault.put_content(&owner(), gen, None).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .unwrap();
    println!("MEMORY {} {} {:.3}", s.size, hwm, secs);
}

fn estimate(group: &str, id: &str) -> Option<f64> {
    let path = format!("target/criterion/{group}/{id}/new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64() // nanoseconds per iteration
}

fn summary(memory: Option<(u64, u64, f64)>) {
    let bps = |id: &str, bytes: f64| estimate("store", id).map(|ns| bytes / (ns / 1e9));
    let gbs = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{:.3} GB/s", v / 1e9));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a / b),
        _ => "n/a".into(),
    };
    println!("\n== summary (bytes/s; ratios are this run's figures against this run's baselines)");
    println!("| size | BLAKE3 | AES-GCM | bare store | put | put/bare (≥80%) | bare read | get | get/bare (≥80%) | re-put | re-put/BLAKE3 (≥80%) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (len, label) in SIZES {
        let b = len as f64;
        let [h, a, bs, p, br, g, rp] = ["blake3", "aes-gcm", "bare-store", "put", "bare-read", "get", "re-put"]
            .map(|k| bps(&format!("{k}/{label}"), b));
        println!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            gbs(h),
            gbs(a),
            gbs(bs),
            gbs(p),
            ratio(p, bs),
            gbs(br),
            gbs(g),
            ratio(g, br),
            gbs(rp),
            ratio(rp, h)
        );
    }
    let one = bps("put/64MiB", (64 * MIB) as f64);
    let two = bps("put-2-parallel/64MiB", (128 * MIB) as f64);
    let bare_one = bps("bare-store/64MiB", (64 * MIB) as f64);
    let bare_two = bps("bare-store-2-parallel/64MiB", (128 * MIB) as f64);
    println!(
        "\ntwo 64 MiB contents at once: {} vs one: {} = {} (target ≥150%); the bare pipeline on two threads: {} vs one: {} = {}",
        gbs(two), gbs(one), ratio(two, one), gbs(bare_two), gbs(bare_one), ratio(bare_two, bare_one)
    );
    let ops = |id: &str| estimate("store", id).map(|ns| 1e9 / ns);
    let w1 = ops("small-doc-puts/1-writers");
    let w16 = ops("small-doc-puts/16-writers");
    let fs = ops("bare-4KiB-write-fsync");
    let f = |x: Option<f64>| x.map_or("n/a".into(), |v| format!("{v:.0}/s"));
    println!(
        "durable 4 KiB document puts (content + record): 1 writer {}, 16 writers {} = {} of one (target ≥300%); bare 4 KiB write+fsync {}",
        f(w1), f(w16), ratio(w16, w1), f(fs)
    );
    match memory {
        Some((size, kib, secs)) => println!(
            "peak memory putting a {} MiB generated content: {:.1} MiB VmHWM (target < 64 MiB), {:.3} GB/s",
            size >> 20,
            kib as f64 / 1024.0,
            size as f64 / secs / 1e9
        ),
        None => println!("peak memory: not measured"),
    }
}

fn main() {
    if std::env::var_os("VAULT_BENCH_MEMORY_CHILD").is_some() {
        memory_child();
        return;
    }
    let memory = std::process::Command::new(std::env::current_exe().unwrap())
        .env("VAULT_BENCH_MEMORY_CHILD", "1")
        .output()
        .ok()
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let l = s.lines().find(|l| l.starts_with("MEMORY "))?.to_owned();
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f[1].parse().ok()?, f[2].parse().ok()?, f[3].parse().ok()?))
        });
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary(memory);
}
