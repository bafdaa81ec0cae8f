//! Audit-log and consent figures (issue #3): audited calls per second with 1 and 16 writers
//! (each call appends one leaf and waits until it is durable; group commit shares the syncs),
//! checkpoint signing, inclusion-proof generation at 1k, 100k and 1M leaves (nodes read from
//! sled, the vault's store), and reuse checks per second for an owner with 100 documents.
//! Run: `cargo bench --bench audit`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use vault::access::Caller;
use vault::log::merkle::{self, Hash, MerkleError, Nodes};
use vault::storage::{sled::SledMeta, MetaStore, Op};
use vault::{Digest, DocType, MasterKey, NewDocument, OwnerId, Purpose, Vault};

fn owner(n: u32) -> OwnerId {
    OwnerId::parse(&format!("citizen:{n:012}")).unwrap()
}

fn doc(digest: Digest, t: &str) -> NewDocument {
    NewDocument {
        digest,
        doc_type: DocType::parse(t).unwrap(),
        title: "Giấy tờ".into(),
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

/// Complete-subtree hashes in sled, keyed like the vault's (`N` + level + index).
struct SledNodes(SledMeta);

fn node_key(level: u8, index: u64) -> Vec<u8> {
    let mut k = vec![b'N', level];
    k.extend_from_slice(&index.to_be_bytes());
    k
}

impl Nodes for SledNodes {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        self.0
            .get(&node_key(level, index))
            .ok()
            .flatten()
            .and_then(|v| v.try_into().ok())
            .ok_or(MerkleError::MissingNode { level, index })
    }
}

/// Appends `n` leaves' nodes in large batches (setup only).
fn build_tree(store: &SledNodes, n: u64) {
    let mut batch = Vec::new();
    let mut cache: std::collections::HashMap<(u8, u64), Hash> = Default::default();
    for i in 0..n {
        let leaf = merkle::leaf_hash(format!("leaf {i}").as_bytes());
        let nodes = merkle::append_nodes(i, leaf, |l, j| {
            cache.get(&(l, j)).copied().ok_or(MerkleError::MissingNode { level: l, index: j })
        })
        .unwrap();
        for (l, j, h) in nodes {
            // Only left siblings are ever needed again while appending.
            if j % 2 == 0 {
                cache.insert((l, j), h);
            }
            cache.remove(&(l, j.wrapping_sub(1)));
            batch.push(Op::Put(node_key(l, j), h.to_vec()));
        }
        if batch.len() >= 100_000 {
            store.0.apply(std::mem::take(&mut batch)).unwrap();
        }
    }
    store.0.apply(batch).unwrap();
    store.0.sync().unwrap();
}

fn benches(c: &mut Criterion) {
    let base = std::env::var("VAULT_BENCH_DIR").unwrap_or_else(|_| "target".into());
    let dir = tempfile::tempdir_in(base).unwrap();
    let v = Vault::open(&dir.path().join("vault"), &MasterKey::generate()).unwrap();
    let mut g = c.benchmark_group("audit");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));

    // Audited calls: an owner's `contents/missing` with no digests is one audit append and one
    // durable wait, and almost nothing else.
    g.throughput(Throughput::Elements(1));
    for writers in [1usize, 16] {
        g.bench_function(BenchmarkId::new("audited-calls", format!("{writers}-writers")), |b| {
            b.iter_custom(|iters| {
                let per = iters.div_ceil(writers as u64);
                let t = Instant::now();
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let v = &v;
                        s.spawn(move || {
                            let o = owner(w as u32);
                            let c = Caller::owner(o.clone());
                            for _ in 0..per {
                                v.missing_as(&c, &o, &[]).unwrap();
                            }
                        });
                    }
                });
                t.elapsed().mul_f64(iters as f64 / (per * writers as u64) as f64)
            })
        });
    }
    g.bench_function("checkpoint-sign", |b| b.iter(|| black_box(v.checkpoint().unwrap())));

    // Reuse checks for an owner with 100 documents of 10 types.
    let o = owner(999);
    let c = Caller::owner(o.clone());
    for i in 0..100u32 {
        let data = format!("document {i}").into_bytes();
        v.put_document(&o, data.as_slice(), doc(Digest::of(&data), &format!("type-{}", i % 10))).unwrap();
    }
    let types: Vec<DocType> = (0..5).map(|i| DocType::parse(&format!("type-{i}")).unwrap()).collect();
    let p = Purpose::parse("1.001193").unwrap();
    g.bench_function("reuse-check-100-docs", |b| b.iter(|| black_box(v.reuse_as(&c, &o, &p, &types, None).unwrap())));

    // Inclusion proofs from sled-stored nodes at growing sizes: O(log n) reads. One tree of 1M
    // leaves holds the trees of every smaller size (their nodes are a prefix of it).
    let store = SledNodes(SledMeta::open(&dir.path().join("tree")).unwrap());
    build_tree(&store, 1_000_000);
    for (n, label) in [(1_000u64, "1k"), (100_000, "100k"), (1_000_000, "1M")] {
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("inclusion-proof", label), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(merkle::inclusion_proof(&store, i, n).unwrap())
            })
        });
    }
    g.finish();
}

fn estimate(id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("target/criterion/audit/{id}/new/estimates.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["mean"]["point_estimate"].as_f64()
}

fn summary() {
    let per_sec = |id: &str| estimate(id).map_or("n/a".into(), |ns| format!("{:.0}/s", 1e9 / ns));
    let micros = |id: &str| estimate(id).map_or("n/a".into(), |ns| format!("{:.1} µs", ns / 1e3));
    println!("\n== summary");
    println!(
        "audited calls (one durable leaf each): 1 writer {}, 16 writers {}",
        per_sec("audited-calls/1-writers"),
        per_sec("audited-calls/16-writers")
    );
    println!("checkpoint (root + Ed25519 signed note): {}", micros("checkpoint-sign"));
    println!("reuse check, 5 types, owner with 100 documents (audited): {}", per_sec("reuse-check-100-docs"));
    println!(
        "inclusion proof from sled: 1k leaves {}, 100k {}, 1M {}",
        micros("inclusion-proof/1k"),
        micros("inclusion-proof/100k"),
        micros("inclusion-proof/1M")
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    summary();
}
