//! Scale-out benchmark (issue #12): in one run, ingest and audited reads against
//! (1) one release `vault-server` on its embedded storage (sled + files),
//! (2) one on PostgreSQL + S3 (a throwaway cluster and `s3s-fs`, as the tests start them),
//! (3) two on the same PostgreSQL database and bucket, requests alternating between them.
//!
//! Run: `benches/scale_out.sh [seconds per read run, default 10] [clients, default 16]` (it
//! builds the release server, makes sure PostgreSQL and s3s-fs are there, and runs this).
//! Ingest: `VAULT_SCALE_DOCS` (default 2,000) deposits of 10 KiB (a content upload and a
//! document, each audited), from the clients at once. Reads: an agency reads 10 KiB contents
//! under an unlimited grant (audited, use counted), for the given seconds. Everything runs on
//! this one machine (the load generator, the servers, PostgreSQL and the S3 server share its
//! cores), so the figures compare the configurations with each other, not with a cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::{register_agency, try_call, Server};
use serde_json::json;
use vault::Digest;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

struct Figures {
    ingest_docs_per_s: f64,
    ingest_mb_per_s: f64,
    ingest_errors: usize,
    reads_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    read_errors: u64,
}

/// The bases of the instances, each request to the next one in turn.
struct Bases(Vec<String>, AtomicUsize);

impl Bases {
    fn next(&self) -> &str {
        &self.0[self.1.fetch_add(1, Ordering::Relaxed) % self.0.len()]
    }
}

fn measure(first: &Server, bases: Bases, clients: usize, docs: usize, secs: u64) -> Figures {
    let (_, agency) = register_agency(first, "bench", 3);
    let owners: Vec<String> = (0..clients).map(|i| format!("citizen:{:012}", 700 + i)).collect();
    // Ingest: each client deposits docs/clients documents of 10 KiB for its own owner.
    let per = docs / clients;
    let bases = Arc::new(bases);
    let start = Instant::now();
    let results: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = owners
            .iter()
            .enumerate()
            .map(|(c, owner)| {
                let bases = bases.clone();
                s.spawn(move || {
                    let token = first.owner(owner);
                    let (mut errors, mut ids) = (0, Vec::new());
                    for i in 0..per {
                        let data = format!("{c:04}-{i:06}|").repeat(1024).into_bytes()[..10240].to_vec();
                        let d = Digest::of(&data);
                        let base = bases.next();
                        let put = try_call(
                            "PUT",
                            &format!("{base}/v1/owners/{owner}/contents/{d}"),
                            Some(&token),
                            &[],
                            Some(&data),
                        );
                        if !put.is_ok_and(|r| r.status == 201) {
                            errors += 1;
                            continue;
                        }
                        let body = json!({"digest": d, "doc_type": "giay-khai-sinh", "title": "t", "media_type": "application/pdf"});
                        let base = bases.next();
                        match try_call(
                            "POST",
                            &format!("{base}/v1/owners/{owner}/documents"),
                            Some(&token),
                            &[("Content-Type", "application/json")],
                            Some(body.to_string().as_bytes()),
                        ) {
                            Ok(r) if r.status == 201 => ids.push(r.json()["id"].as_str().unwrap().to_owned()),
                            _ => errors += 1,
                        }
                    }
                    (errors, ids)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ingest_secs = start.elapsed().as_secs_f64();
    let ingest_errors: usize = results.iter().map(|r| r.0).sum();
    let done = (per * clients - ingest_errors) as f64;
    // Grants: each owner lets the agency read its documents (no use limit).
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    for owner in &owners {
        let r = try_call(
            "POST",
            &format!("{}/v1/owners/{owner}/grants", bases.next()),
            Some(&first.owner(owner)),
            &[("Content-Type", "application/json")],
            Some(
                json!({"grantee": "bench", "purpose": "1.1", "doc_types": ["giay-khai-sinh"], "expires_at": expires})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .unwrap();
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    // Reads: each client reads its owner's documents in turn, as the agency, for `secs`.
    let stop = AtomicBool::new(false);
    let read_start = Instant::now();
    let (mut lat, read_errors) = std::thread::scope(|s| {
        let handles: Vec<_> = owners
            .iter()
            .zip(&results)
            .map(|(owner, (_, ids))| {
                let (bases, agency, stop) = (bases.clone(), agency.clone(), &stop);
                s.spawn(move || {
                    let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, 0usize);
                    while !stop.load(Ordering::Relaxed) && !ids.is_empty() {
                        let id = &ids[i % ids.len()];
                        i += 1;
                        let t = Instant::now();
                        let url = format!("{}/v1/owners/{owner}/documents/{id}/content", bases.next());
                        match try_call("GET", &url, Some(&agency), &[("Vault-Purpose", "1.1")], None) {
                            Ok(r) if r.status == 200 && r.body.len() == 10240 => {
                                lat.push(t.elapsed().as_secs_f64() * 1e3)
                            }
                            _ => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        handles.into_iter().map(|h| h.join().unwrap()).fold((Vec::new(), 0), |(mut l, e), (l2, e2)| {
            l.extend(l2);
            (l, e + e2)
        })
    });
    let read_secs = read_start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    Figures {
        ingest_docs_per_s: done / ingest_secs,
        ingest_mb_per_s: done * 10240.0 / ingest_secs / 1e6,
        ingest_errors,
        reads_per_s: lat.len() as f64 / read_secs,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        read_errors,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery
    }
    let secs = env_num("VAULT_SCALE_SECONDS", 10);
    let clients = env_num("VAULT_SCALE_CLIENTS", 16) as usize;
    let docs = env_num("VAULT_SCALE_DOCS", 2000) as usize;
    if !common::http::binary().exists() {
        eprintln!("build the server first: cargo build --release -p vault-server");
        std::process::exit(2);
    }
    let mut rows = Vec::new();
    {
        let s = Server::start(&[]);
        let f = measure(&s, Bases(vec![s.base.clone()], AtomicUsize::new(0)), clients, docs, secs);
        rows.push(("one instance, embedded (sled + files)", f));
    }
    {
        let db = common::pg::database();
        let s = Server::start_s3(tempfile::tempdir().unwrap(), &["--metadata", &db.url]);
        let f = measure(&s, Bases(vec![s.base.clone()], AtomicUsize::new(0)), clients, docs, secs);
        rows.push(("one instance, PostgreSQL + S3", f));
    }
    {
        let db = common::pg::database();
        let a = Server::start_s3(tempfile::tempdir().unwrap(), &["--metadata", &db.url]);
        let b = Server::start_beside(&a, &["--metadata", &db.url]);
        let f = measure(&a, Bases(vec![a.base.clone(), b.base.clone()], AtomicUsize::new(0)), clients, docs, secs);
        rows.push(("two instances, one PostgreSQL + S3, alternating", f));
    }
    println!(
        "\n== scale-out: {docs} deposits of 10 KiB, then {secs} s of agency reads under a grant; {clients} clients; \
         release servers on 127.0.0.1, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| configuration | deposits/s | MB/s | vs embedded | reads/s | vs embedded | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (base_in, base_rd) = (rows[0].1.ingest_docs_per_s, rows[0].1.reads_per_s);
    for (name, f) in &rows {
        println!(
            "| {name} | {:.0} | {:.1} | {:.0}% | {:.0} | {:.0}% | {:.1} | {:.1} | {} + {} |",
            f.ingest_docs_per_s,
            f.ingest_mb_per_s,
            100.0 * f.ingest_docs_per_s / base_in,
            f.reads_per_s,
            100.0 * f.reads_per_s / base_rd,
            f.p50_ms,
            f.p99_ms,
            f.ingest_errors,
            f.read_errors
        );
    }
}
