//! One conformance suite for the storage traits, run against every backend: the in-memory
//! reference (`vault::storage::mem_store`, which keeps apart what was synced), the embedded one
//! (sled + journal, files) and the PostgreSQL metadata store (`vault::storage::pg_store`, on a throwaway
//! cluster: tests/common/pg.rs). Then power loss of the whole vault on the in-memory backend:
//! every acknowledged write survives, whichever prefix of the unsynced batches the "disk" kept;
//! and a whole vault on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

use common::pg;
use common::s3;
use common::*;
use vault::storage::mem_store::{MemBlobs, MemMeta};
use vault::storage::pg_store::{PgMeta, PgOptions};
use vault::storage::{files::FsBlobs, sled::SledMeta, BlobName, BlobStore, LockName, MetaStore, Op, StoreError};
use vault::{Digest, Vault};

fn put(k: &[u8], v: &[u8]) -> Op {
    Op::Put(k.to_vec(), v.to_vec())
}

fn keys(it: vault::storage::ScanIter<'_>) -> Vec<Vec<u8>> {
    it.map(|r| r.unwrap().0).collect()
}

/// What every [`MetaStore`] must do.
fn meta_suite(name: &str, m: &dyn MetaStore) {
    let p = |k: &str| format!("Ztest-{k}").into_bytes();
    assert_eq!(m.get(&p("a")).unwrap(), None, "{name}: absent");
    m.apply(vec![
        put(&p("a"), b"1"),
        put(&p("ab"), b"2"),
        put(&p("abc"), b"3"),
        put(&p("ac"), b"4"),
        put(&[p("a"), vec![0xff]].concat(), b"5"),
        put(&p("b"), b"6"),
    ])
    .unwrap();
    assert_eq!(m.get(&p("ab")).unwrap().as_deref(), Some(&b"2"[..]), "{name}: get");
    // Prefix scans: exactly the keys with the prefix, in byte order.
    assert_eq!(keys(m.scan(&p("ab"))), vec![p("ab"), p("abc")], "{name}: prefix scan");
    assert_eq!(
        keys(m.scan(&p("a"))),
        vec![p("a"), p("ab"), p("abc"), p("ac"), [p("a"), vec![0xff]].concat()],
        "{name}: byte order"
    );
    // Range scans start at the first key at or after `start`, inside the prefix.
    assert_eq!(
        keys(m.scan_from(&p("a"), &[p("ab"), vec![0]].concat())),
        vec![p("abc"), p("ac"), [p("a"), vec![0xff]].concat()],
        "{name}: scan_from"
    );
    assert_eq!(keys(m.scan_from(&p("a"), &p("zz"))), Vec::<Vec<u8>>::new(), "{name}: scan_from past the end");
    // A batch applies in order: a put then a delete of one key leaves it absent.
    m.apply(vec![put(&p("t"), b"x"), Op::Delete(p("t")), Op::Delete(p("b")), put(&p("ac"), b"44")]).unwrap();
    assert_eq!(m.get(&p("t")).unwrap(), None, "{name}: batch order");
    assert_eq!(m.get(&p("b")).unwrap(), None, "{name}: delete");
    assert_eq!(m.get(&p("ac")).unwrap().as_deref(), Some(&b"44"[..]), "{name}: overwrite");
    // Compare-and-swap.
    assert!(m.compare_and_swap(&p("cas"), None, Some(b"1".to_vec())).unwrap(), "{name}: cas from absent");
    assert!(!m.compare_and_swap(&p("cas"), None, Some(b"2".to_vec())).unwrap(), "{name}: cas, not absent");
    assert!(!m.compare_and_swap(&p("cas"), Some(b"9"), Some(b"2".to_vec())).unwrap(), "{name}: cas, wrong old");
    assert!(m.compare_and_swap(&p("cas"), Some(b"1"), Some(b"2".to_vec())).unwrap(), "{name}: cas");
    assert!(m.compare_and_swap(&p("cas"), Some(b"2"), None).unwrap(), "{name}: cas to absent");
    assert_eq!(m.get(&p("cas")).unwrap(), None);
    // Large values round-trip.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    m.apply(vec![put(&p("big"), &big)]).unwrap();
    assert!(m.get(&p("big")).unwrap().unwrap() == big, "{name}: 1 MB value");
    // Concurrent batches all land.
    std::thread::scope(|s| {
        for t in 0..4u8 {
            s.spawn(move || {
                for i in 0..100u8 {
                    m.apply(vec![put(&[b"Zconc-".as_slice(), &[t, i]].concat(), &[t, i])]).unwrap();
                }
            });
        }
    });
    assert_eq!(m.scan(b"Zconc-").count(), 400, "{name}: concurrent batches");
    m.sync().unwrap();
    // The signed floor only rises.
    m.raise_signed_floor(10, [1; 32]).unwrap();
    m.raise_signed_floor(5, [2; 32]).unwrap();
    if let Some(floor) = m.signed_floor() {
        assert_eq!(floor, (10, [1; 32]), "{name}: the floor never goes down");
    }
}

/// Prefix scans at the edges of the byte range: a prefix ending in 0xFF (its range ends at the
/// next byte up, the key just past it is outside) and one of only 0xFF bytes (no upper bound).
fn prefix_edges_suite(name: &str, m: &dyn MetaStore) {
    let k = |b: &[u8]| b.to_vec();
    m.apply(
        [
            k(&[b'Y', 0xff]),
            k(&[b'Y', 0xff, 0x00]),
            k(&[b'Y', 0xff, 0xff]),
            k(&[b'Y', 0xff, 0xff, 0xff, 0x01]),
            k(&[b'Y', 0xfe, 0xff]),
            k(b"Z"),
            k(&[0xff, 0xfe]),
            k(&[0xff, 0xff]),
            k(&[0xff, 0xff, 0x00]),
            k(&[0xff, 0xff, 0xff, 0xff]),
        ]
        .into_iter()
        .map(|key| Op::Put(key, b"v".to_vec()))
        .collect(),
    )
    .unwrap();
    assert_eq!(
        keys(m.scan(&[b'Y', 0xff])),
        vec![k(&[b'Y', 0xff]), k(&[b'Y', 0xff, 0x00]), k(&[b'Y', 0xff, 0xff]), k(&[b'Y', 0xff, 0xff, 0xff, 0x01])],
        "{name}: a prefix ending in 0xFF"
    );
    assert_eq!(
        keys(m.scan(&[b'Y', 0xff, 0xff])),
        vec![k(&[b'Y', 0xff, 0xff]), k(&[b'Y', 0xff, 0xff, 0xff, 0x01])],
        "{name}: a prefix ending in two 0xFF"
    );
    assert_eq!(
        keys(m.scan_from(&[b'Y', 0xff], &[b'Y', 0xff, 0x01])),
        vec![k(&[b'Y', 0xff, 0xff]), k(&[b'Y', 0xff, 0xff, 0xff, 0x01])],
        "{name}: a range scan in a prefix ending in 0xFF"
    );
    assert_eq!(
        keys(m.scan(&[0xff, 0xff])),
        vec![k(&[0xff, 0xff]), k(&[0xff, 0xff, 0x00]), k(&[0xff, 0xff, 0xff, 0xff])],
        "{name}: a prefix of only 0xFF bytes"
    );
    assert_eq!(keys(m.scan(&[0xff])).len(), 4, "{name}: the last prefix of all");
    m.apply(
        [k(&[b'Y', 0xff]), k(&[b'Y', 0xff, 0x00]), k(&[b'Y', 0xff, 0xff]), k(&[b'Y', 0xff, 0xff, 0xff, 0x01])]
            .into_iter()
            .chain([k(&[b'Y', 0xfe, 0xff]), k(b"Z"), k(&[0xff, 0xfe]), k(&[0xff, 0xff])])
            .chain([k(&[0xff, 0xff, 0x00]), k(&[0xff, 0xff, 0xff, 0xff])])
            .map(Op::Delete)
            .collect(),
    )
    .unwrap();
}

/// A scan longer than any backend's page: every key once, in order, from the start or from the
/// middle (across page boundaries).
fn long_scan_suite(name: &str, m: &dyn MetaStore, rows: u32) {
    let key = |i: u32| [b"Vlong-".as_slice(), &i.to_be_bytes()].concat();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(500) {
        m.apply(chunk.iter().map(|&i| Op::Put(key(i), i.to_le_bytes().to_vec())).collect()).unwrap();
    }
    let all: Vec<_> = m.scan(b"Vlong-").map(|r| r.unwrap()).collect();
    assert_eq!(all.len(), rows as usize, "{name}: every row of a long scan");
    for (i, (k, v)) in all.iter().enumerate() {
        assert_eq!((k, v), (&key(i as u32), &(i as u32).to_le_bytes().to_vec()), "{name}: row {i} of a long scan");
    }
    let from = rows / 2 + 1;
    let tail = keys(m.scan_from(b"Vlong-", &key(from)));
    assert_eq!(tail, (from..rows).map(key).collect::<Vec<_>>(), "{name}: a long range scan");
    // The scan is lazy: the first rows of a long one come without the rest.
    assert_eq!(keys(Box::new(m.scan(b"Vlong-").take(3))), (0..3).map(key).collect::<Vec<_>>());
}

/// Compare-and-swap races: several threads swap one key at the same moment, round after round;
/// exactly one wins each round, and the value is the winner's.
fn cas_race_suite(name: &str, m: &dyn MetaStore) {
    const THREADS: u8 = 6;
    const ROUNDS: u32 = 40;
    let barrier = std::sync::Barrier::new(usize::from(THREADS));
    // Each thread records its results and never panics, so that a failing store cannot leave the
    // others waiting at the barrier: the failure is reported after the threads end.
    let results: Vec<Vec<Result<bool, String>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut won = Vec::new();
                    for round in 0..ROUNDS {
                        let key = [b"Wrace-".as_slice(), &round.to_be_bytes()].concat();
                        // From absent, then from the value everyone saw: both kinds of swap.
                        barrier.wait();
                        won.push(m.compare_and_swap(&key, None, Some(vec![t])).map_err(|e| e.to_string()));
                        barrier.wait();
                        let seen = m.get(&key).ok().flatten().unwrap_or_default();
                        barrier.wait();
                        won.push(m.compare_and_swap(&key, Some(&seen), Some(vec![t, 1])).map_err(|e| e.to_string()));
                    }
                    won
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wins: Vec<Vec<bool>> = results
        .into_iter()
        .map(|r| r.into_iter().map(|w| w.unwrap_or_else(|e| panic!("{name}: a racing swap failed: {e}"))).collect())
        .collect();
    let winners_at = |step: usize| -> Vec<u8> { (0..THREADS).filter(|&t| wins[usize::from(t)][step]).collect() };
    for (step, winners) in (0..2 * ROUNDS as usize).map(|step| (step, winners_at(step))) {
        assert_eq!(winners.len(), 1, "{name}: step {step}: exactly one winner, not {winners:?}");
        let round = (step / 2) as u32;
        let value = m.get(&[b"Wrace-".as_slice(), &round.to_be_bytes()].concat()).unwrap().unwrap();
        if step % 2 == 1 {
            assert_eq!(value, vec![winners[0], 1], "{name}: round {round}: the winner's value");
        }
    }
}

/// Every metadata suite.
fn all_meta_suites(name: &str, m: &dyn MetaStore) {
    meta_suite(name, m);
    prefix_edges_suite(name, m);
    long_scan_suite(name, m, 2_500);
    cas_race_suite(name, m);
}

/// What every [`BlobStore`] must do.
fn blob_suite(name: &str, b: &dyn BlobStore) {
    let owner = [7u8; 16];
    let other = [8u8; 16];
    let n = |i: u8, o: [u8; 16]| BlobName { owner: o, name: [i; 32] };
    assert!(b.open(&n(1, owner)).unwrap().is_none(), "{name}: absent");
    assert_eq!(b.len(&n(1, owner)).unwrap(), None);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    for (i, o) in [(1, owner), (2, owner), (3, other)] {
        let mut w = b.create(&o).unwrap();
        // Written out of order, as the blob codec does (header last).
        w.write_all(&[0u8; 16]).unwrap();
        w.write_all(&data[16..]).unwrap();
        w.seek(SeekFrom::Start(0)).unwrap();
        w.write_all(&data[..16]).unwrap();
        w.commit(&n(i, o)).unwrap();
    }
    b.sync().unwrap();
    let mut r = b.open(&n(1, owner)).unwrap().unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == data, "{name}: round trip");
    r.seek(SeekFrom::Start(299_990)).unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, data[299_990..], "{name}: seek");
    assert_eq!(b.len(&n(2, owner)).unwrap(), Some(300_000));
    let listed = b.list().unwrap().blobs;
    for i in [n(1, owner), n(2, owner), n(3, other)] {
        assert!(listed.contains(&i), "{name}: listed {i:?}");
    }
    // A blob never committed is not there.
    let mut w = b.create(&owner).unwrap();
    w.write_all(b"unfinished").unwrap();
    drop(w);
    assert!(b.open(&n(9, owner)).unwrap().is_none(), "{name}: uncommitted");
    b.remove(&n(2, owner)).unwrap();
    b.remove(&n(2, owner)).unwrap(); // absent is fine
    assert!(b.open(&n(2, owner)).unwrap().is_none(), "{name}: removed");
    // A blob of the owner set aside (§10): the erasure takes it too.
    let mut w = b.create(&owner).unwrap();
    w.write_all(b"set aside").unwrap();
    w.commit(&n(4, owner)).unwrap();
    b.sync().unwrap();
    assert!(b.set_aside(&n(4, owner)).unwrap(), "{name}: set aside");
    let owner_hex: String = owner.iter().map(|x| format!("{x:02x}")).collect();
    let aside_of_owner =
        |b: &dyn BlobStore| b.set_aside_list().unwrap().iter().filter(|p| p.contains(&owner_hex)).count();
    assert_eq!(aside_of_owner(b), 1, "{name}: listed as set aside");
    assert_eq!(b.remove_owner(&owner).unwrap(), 1, "{name}: remove_owner counts");
    assert_eq!(aside_of_owner(b), 0, "{name}: the owner's set-aside blobs are erased too");
    assert!(b.open(&n(1, owner)).unwrap().is_none(), "{name}: owner removed");
    assert!(b.open(&n(3, other)).unwrap().is_some(), "{name}: other owners untouched");
    b.sync().unwrap();
    assert!(!b.describe(&n(3, other)).is_empty());
}

#[test]
fn the_in_memory_backend_conforms() {
    all_meta_suites("memory", &MemMeta::new());
    blob_suite("memory", &MemBlobs::new());
}

#[test]
fn the_embedded_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    {
        let m = SledMeta::open(&dir.path().join("meta")).unwrap();
        all_meta_suites("sled", &m);
        m.close().unwrap();
    }
    // What was synced is there after a reopen.
    let m = SledMeta::open(&dir.path().join("meta")).unwrap();
    assert_eq!(m.get(b"Ztest-ac").unwrap().as_deref(), Some(&b"44"[..]));
    assert_eq!(m.scan(b"Zconc-").count(), 400);
    blob_suite("files", &FsBlobs::open(dir.path().join("blobs")).unwrap());
}

#[test]
fn the_in_memory_backend_loses_exactly_what_was_not_synced() {
    let m = MemMeta::new();
    m.apply(vec![put(b"k1", b"1")]).unwrap();
    m.sync().unwrap();
    m.apply(vec![put(b"k2", b"2")]).unwrap();
    m.apply(vec![put(b"k3", b"3"), Op::Delete(b"k1".to_vec())]).unwrap();
    assert_eq!(m.unsynced_batches(), 2);
    let lost = m.crash(0);
    assert_eq!((lost.get(b"k1").unwrap(), lost.get(b"k2").unwrap()), (Some(b"1".to_vec()), None));
    let prefix = m.crash(1);
    assert_eq!((prefix.get(b"k2").unwrap().is_some(), prefix.get(b"k3").unwrap()), (true, None));
    let all = m.crash(usize::MAX);
    assert_eq!((all.get(b"k1").unwrap(), all.get(b"k3").unwrap()), (None, Some(b"3".to_vec())));
    let b = MemBlobs::new();
    let name = BlobName { owner: [1; 16], name: [2; 32] };
    let mut w = b.create(&[1; 16]).unwrap();
    w.write_all(b"x").unwrap();
    w.commit(&name).unwrap();
    assert!(b.crash().open(&name).unwrap().is_none(), "committed, not synced: lost");
    b.sync().unwrap();
    assert!(b.crash().open(&name).unwrap().is_some(), "synced: kept");
}

/// An acknowledged document: its owner, id and content.
type Acked = (vault::OwnerId, vault::DocumentId, Vec<u8>);

/// Power loss under concurrent writers: every write the vault acknowledged is there after the
/// crash, whichever prefix of the unsynced metadata batches survived, and `check` is clean.
#[test]
fn power_loss_keeps_every_acknowledged_write() {
    for (round, keep) in [0usize, 1, 3, usize::MAX].into_iter().enumerate() {
        let (meta, blobs) = (MemMeta::new(), MemBlobs::new());
        let v = Arc::new(Vault::open_with(Box::new(meta.clone()), Box::new(blobs.clone()), &master(), None).unwrap());
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4u32)
            .map(|t| {
                let (v, acked, stop) = (v.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let o = owner(t);
                    for i in 0u64.. {
                        if stop.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        // Small (inline) and large (blob) contents.
                        let data =
                            content((round as u64) << 40 | u64::from(t) << 32 | i, [200, 40_000][i as usize % 2]);
                        let doc = v.put_document(&o, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap().1;
                        acked.lock().unwrap().push((o.clone(), doc.id, data));
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The power goes: metadata first, then blobs (their durable state only grows after,
        // and the vault makes a blob durable before any record points at it).
        let (crashed_meta, crashed_blobs, before) = {
            let acked = acked.lock().unwrap();
            (meta.crash(keep), blobs.crash(), acked.clone())
        };
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            w.join().unwrap();
        }
        drop(v);
        assert!(before.len() > 10, "round {round}: only {} writes acknowledged", before.len());
        let v = Vault::open_with(Box::new(crashed_meta), Box::new(crashed_blobs), &master(), None).unwrap();
        for (o, id, data) in &before {
            let (_, mut r) = v.open_document_content(o, id).unwrap_or_else(|e| panic!("round {round}: {id} lost: {e}"));
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert!(got == *data, "round {round}: {id} differs");
        }
        let report = v.check(true).unwrap();
        assert!(report.is_clean(), "round {round} (kept {keep} unsynced batches):\n{report}");
    }
}

/// The S3 backend against a real S3 server (s3s-fs, started here): the blob suite, a blob big
/// enough for a multipart upload read back in ranges, the set-aside folder, and a listing that
/// tells blobs from strays.
#[test]
fn the_s3_backend_conforms() {
    let server = s3::S3Server::start("vault-conformance");
    let spool = tempfile::tempdir().unwrap();
    let b = server.blobs("province/test", spool.path().to_path_buf());
    blob_suite("s3", &b);
    // Above the multipart threshold: uploaded in parts, read back whole and from the middle.
    let owner = [9u8; 16];
    let big: Vec<u8> =
        (0..(vault::storage::s3_store::MULTIPART_THRESHOLD as u32 + 3_000_001)).map(|i| (i % 241) as u8).collect();
    let name = BlobName { owner, name: [5; 32] };
    let mut w = b.create(&owner).unwrap();
    w.write_all(&[0u8; 64]).unwrap();
    w.write_all(&big[64..]).unwrap();
    w.seek(SeekFrom::Start(0)).unwrap();
    w.write_all(&big[..64]).unwrap();
    w.commit(&name).unwrap();
    assert_eq!(b.len(&name).unwrap(), Some(big.len() as u64));
    let mut r = b.open(&name).unwrap().unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == big, "multipart round trip");
    r.seek(SeekFrom::Start(5_999_999)).unwrap();
    let mut some = vec![0u8; 2_500_000];
    r.read_exact(&mut some).unwrap();
    assert!(some == big[5_999_999..8_499_999], "ranged read across read-ahead windows");
    // No spool file is left behind, committed or dropped.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "spool folder empty");
    // Set aside: out of the blob listing, into the orphans listing.
    assert!(b.set_aside(&name).unwrap());
    assert!(b.open(&name).unwrap().is_none());
    assert!(!b.list().unwrap().blobs.contains(&name));
    let aside = b.set_aside_list().unwrap();
    assert!(aside.iter().any(|p| p.ends_with(&hex_name(&name))), "{aside:?}");
    // A stranger object under the blob prefix is a stray, not a blob.
    let other = server.blobs("province/test/blobs", spool.path().to_path_buf());
    let mut w = other.create(&[1; 16]).unwrap();
    w.write_all(b"x").unwrap();
    w.commit(&BlobName { owner: [1; 16], name: [1; 32] }).unwrap();
    let listing = b.list().unwrap();
    assert!(listing.strays.iter().any(|s| s.contains("/blobs/blobs/")), "{:?}", listing.strays);
    // A wrong key is refused at open, not at the first upload.
    let mut s = server.settings();
    s.retain(|(k, _)| *k != "secret_access_key");
    let mut settings: Vec<(&str, &str)> = s.iter().map(|(k, v)| (*k, v.as_str())).collect();
    settings.push(("secret_access_key", "wrong"));
    let e =
        vault::storage::s3_store::S3Blobs::open_with("s3://vault-conformance/x", spool.path().to_path_buf(), &settings)
            .unwrap_err();
    assert!(e.to_string().contains("object storage"), "{e}");
}

fn hex_name(n: &BlobName) -> String {
    n.name.iter().map(|b| format!("{b:02x}")).collect()
}

/// A whole vault on the embedded metadata and S3 blobs: deposit small and large contents (the
/// large ones as S3 objects, one in parts), read them back, `check --read-data` clean, erase an
/// owner (their objects leave the bucket), reopen and read the others.
#[test]
fn a_vault_runs_on_s3_blobs() {
    let server = s3::S3Server::start("vault-whole");
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let meta = SledMeta::open(&dir.path().join("meta")).unwrap();
        let blobs = server.blobs("v", dir.path().join("spool"));
        Vault::open_with(Box::new(meta), Box::new(blobs), &master(), Some(dir.path().join("OPEN"))).unwrap()
    };
    let v = open();
    let (a, b) = (owner(1), owner(2));
    let sizes = [300usize, 70_000, 1_000_000, vault::storage::s3_store::MULTIPART_THRESHOLD as usize + 1];
    let mut docs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        for o in [&a, &b] {
            let data = content(i as u64 * 2 + u64::from(o == &b), *size);
            let doc = put_doc(&v, o, &data, "cccd");
            docs.push((o.clone(), doc.id, data));
        }
    }
    let read = |v: &Vault, o: &vault::OwnerId, id: &vault::DocumentId| {
        let (_, mut r) = v.open_document_content(o, id).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    };
    for (o, id, data) in &docs {
        assert!(read(&v, o, id) == *data, "{id} round trip");
    }
    let report = v.check(true).unwrap();
    assert!(report.is_clean(), "{report}");
    let before = server.blobs("v", dir.path().join("spool")).list().unwrap().blobs.len();
    assert!(before >= 6, "large contents are objects: {before}");
    v.erase_as(&vault::access::Caller::owner(a.clone()), &a).unwrap();
    let after = server.blobs("v", dir.path().join("spool")).list().unwrap().blobs.len();
    assert_eq!(after, before / 2, "the erased owner's objects left the bucket");
    drop(v);
    let v = open();
    for (o, id, data) in docs.iter().filter(|(o, ..)| o == &b) {
        assert!(read(&v, o, id) == *data, "{id} after reopen");
    }
    assert!(v.open_document_content(&a, &docs[0].1).is_err());
    let report = v.check(true).unwrap();
    assert!(report.is_clean(), "{report}");
}

/// Object storage down is a failed request, not a stopped vault: the upload is refused as
/// `unavailable` (nothing recorded), small contents (kept in the metadata) go on, and once the
/// store is back large ones do too.
#[test]
fn an_unreachable_object_store_fails_the_request_not_the_vault() {
    let mut server = s3::S3Server::start("vault-down");
    let dir = tempfile::tempdir().unwrap();
    let meta = SledMeta::open(&dir.path().join("meta")).unwrap();
    let v = Vault::open_with(
        Box::new(meta),
        Box::new(server.blobs("v", dir.path().join("spool"))),
        &master(),
        Some(dir.path().join("OPEN")),
    )
    .unwrap();
    let o = owner(1);
    let kept = put_doc(&v, &o, &content(1, 200_000), "cccd");
    server.kill();
    let e = v.put_content_bytes(&o, &content(2, 200_000)).unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
    assert!(v.fail_stopped().is_none(), "a refused upload must not stop the vault");
    assert!(!v.holds(&o, &Digest::of(&content(2, 200_000))).unwrap(), "nothing recorded");
    // A read of a large content is refused as unavailable too (not "not found", not damage).
    let e = v.open_document_content(&o, &kept.id).map(|_| ()).unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
    put_doc(&v, &o, b"small, kept inline", "cccd");
    server.restart();
    let again = put_doc(&v, &o, &content(2, 200_000), "cccd");
    let (_, mut r) = v.open_document_content(&o, &again.id).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == content(2, 200_000));
    assert!(v.check(true).unwrap().is_clean());
}

/// One bucket prefix, one vault: a second vault given the prefix another one claimed is refused
/// before it writes anything (so it cannot, at its recovery, set the first one's blobs aside),
/// and a bucket that went away is an error, never "no such blob".
#[test]
fn a_bucket_prefix_belongs_to_one_vault() {
    let server = s3::S3Server::start("vault-claim");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let open = |d: &std::path::Path, prefix: &str| {
        let meta = SledMeta::open(&d.join("meta")).unwrap();
        Vault::open_with(Box::new(meta), Box::new(server.blobs(prefix, d.join("spool"))), &master(), None)
    };
    let a = open(da.path(), "shared").unwrap();
    let o = owner(1);
    let doc = put_doc(&a, &o, &content(1, 100_000), "cccd");
    let e = open(db.path(), "shared").map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("claimed by another vault"), "{e}");
    // Nothing was written for the refused vault: it can be created on its own prefix.
    let b = open(db.path(), "its-own").unwrap();
    drop(b);
    // The first vault still reads its blob; it reopens over its own prefix.
    drop(a);
    let a = open(da.path(), "shared").unwrap();
    assert!(a.open_document_content(&o, &doc.id).is_ok());
    // The bucket gone: reads are errors of the store, not a missing blob.
    std::fs::remove_dir_all(server.root().join("vault-claim")).unwrap();
    let e = a.open_document_content(&o, &doc.id).map(|_| ()).unwrap_err();
    assert_eq!(e.code(), "unavailable", "{e}");
}

/// On S3, orphans are collected by age, not by listing the bucket at an unclean open: a blob
/// no record points at stays while it could be another writer's upload in flight, and is set
/// aside once it is older than an hour; a blob with its record is never taken.
#[test]
fn s3_orphans_are_collected_by_age() {
    let server = s3::S3Server::start("vault-orphans");
    let dir = tempfile::tempdir().unwrap();
    // No open marker: every open is unclean and runs recovery.
    let open = || {
        let meta = SledMeta::open(&dir.path().join("meta")).unwrap();
        Vault::open_with(Box::new(meta), Box::new(server.blobs("v", dir.path().join("spool"))), &master(), None)
            .unwrap()
    };
    let v = open();
    let o = owner(1);
    let kept = put_doc(&v, &o, &content(1, 100_000), "cccd");
    // An upload whose record was never written (another instance's, in flight, or lost).
    let raw = server.blobs("v", dir.path().join("spool2"));
    let stray = BlobName { owner: [3; 16], name: [4; 32] };
    let mut w = raw.create(&stray.owner).unwrap();
    w.write_all(b"an upload without its record").unwrap();
    w.commit(&stray).unwrap();
    drop(v);
    let v = open();
    assert_eq!(v.recovery().orphans_set_aside, 0, "no listing of the bucket at open");
    assert!(raw.open(&stray).unwrap().is_some());
    let now = vault::Timestamp::now();
    assert_eq!(v.collect_orphans(now).unwrap(), 0, "younger than an hour: perhaps in flight");
    // `check` does not call it damage either (yet it says so).
    let report = v.check(false).unwrap();
    assert!(report.is_clean() && report.young_unreferenced == 1, "{report}");
    assert_eq!(v.collect_orphans(now.plus_seconds(vault::ORPHAN_AGE_SECS + 60)).unwrap(), 1);
    assert!(raw.open(&stray).unwrap().is_none(), "set aside");
    assert_eq!(raw.set_aside_list().unwrap().len(), 1);
    let (_, mut r) = v.open_document_content(&o, &kept.id).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert!(got == content(1, 100_000), "a blob with its record is never taken");
}

#[test]
fn the_postgres_backend_conforms() {
    let db = pg::database();
    {
        let m = PgMeta::open(&db.url).unwrap();
        all_meta_suites("postgres", &m);
        m.close().unwrap();
    }
    // Every commit was durable: all of it is there after a reopen, the signed floor too.
    let m = PgMeta::open(&db.url).unwrap();
    assert_eq!(m.get(b"Ztest-ac").unwrap().as_deref(), Some(&b"44"[..]));
    assert_eq!(m.scan(b"Zconc-").count(), 400);
    assert_eq!(m.scan(b"Vlong-").count(), 2_500);
    assert_eq!(m.signed_floor(), Some((10, [1; 32])));
    m.raise_signed_floor(11, [3; 32]).unwrap();
    drop(m);
    assert_eq!(PgMeta::open(&db.url).unwrap().signed_floor(), Some((11, [3; 32])));
}

#[test]
fn postgres_scans_read_in_pages() {
    let db = pg::database();
    let m = PgMeta::open_with(&db.url, PgOptions { pool_size: 2, page_rows: 7 }).unwrap();
    // 98 rows: 14 full pages of 7, then an empty one; then 3 rows more (a partial last page).
    long_scan_suite("postgres, 7-row pages", &m, 98);
    long_scan_suite("postgres, 7-row pages", &m, 101);
    prefix_edges_suite("postgres, 7-row pages", &m);
    // Two connections for six racing threads: they wait for each other, nobody fails.
    cas_race_suite("postgres, 2 connections", &m);
}

/// A database whose default isolation is serializable: the store's connections use read
/// committed all the same, so racing swaps still have one winner and no failure (under
/// serializable, a swap that met a concurrent update would fail instead).
#[test]
fn postgres_compare_and_swap_ignores_the_databases_default_isolation() {
    let db = pg::database();
    pg::admin()
        .unwrap()
        .batch_execute(&format!("ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'", db.name))
        .unwrap();
    let m = PgMeta::open(&db.url).unwrap();
    cas_race_suite("postgres, serializable by default", &m);
}

/// Several stores on one database (several vault instances): sequenced batches exclude each
/// other and each reads what the one before wrote; a change lock held by one store makes the
/// other wait until it is released; one store at a time holds the background lease, and it
/// moves when its holder goes.
#[test]
fn several_instances_share_one_postgres_database() {
    let db = pg::database();
    let (a, b) = (PgMeta::open(&db.url).unwrap(), PgMeta::open(&db.url).unwrap());
    assert!(a.shared() && b.shared());
    // Sequenced counters from both stores, 4 threads each: no increment lost.
    std::thread::scope(|s| {
        for m in [&a, &b, &a, &b, &a, &b, &a, &b] {
            s.spawn(move || {
                for _ in 0..25 {
                    m.sequenced(&mut |r| {
                        let n = r.get(b"Ztest-counter")?.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                        Ok(vec![put(b"Ztest-counter", &(n + 1).to_be_bytes())])
                    })
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(b.get(b"Ztest-counter").unwrap(), Some(200u64.to_be_bytes().to_vec()), "no increment lost");
    // A failing build applies nothing.
    let err = a.sequenced(&mut |_| Err(StoreError::Meta("refused".into()))).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    // A change lock held by `a` keeps `b` waiting until it is released.
    let held = a.lock(LockName::Owner(&[7; 16])).unwrap().expect("a shared store locks");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let got = b.lock(LockName::Owner(&[7; 16])).unwrap();
            tx.send(()).unwrap();
            drop(got);
        });
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "b waits while a holds it");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("b takes it once a releases it");
    });
    // Another name is not held.
    drop(b.lock(LockName::Owner(&[8; 16])).unwrap());
    // The background lease: one holder, and it moves when the holder goes.
    assert!(a.background_lease().unwrap());
    assert!(a.background_lease().unwrap(), "kept");
    assert!(!b.background_lease().unwrap(), "held by a");
    drop(a);
    assert!(b.background_lease().unwrap(), "taken over");
    // An older build (one instance per database) takes 0x7661756c74000001 exclusively: it
    // cannot while an instance of this build is open, and this build refuses to open while it
    // holds it.
    let mut old = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    let take = "SELECT pg_try_advisory_lock(x'7661756c74000001'::bigint)";
    assert!(!old.query_one(take, &[]).unwrap().get::<_, bool>(0), "an older build refused beside this one");
    drop(b);
    assert!(old.query_one(take, &[]).unwrap().get::<_, bool>(0), "alone, the older build starts");
    let err = PgMeta::open(&db.url).unwrap_err();
    assert!(err.to_string().contains("older vault-server"), "{err}");
    drop(old);
    drop(PgMeta::open(&db.url).unwrap());
    // A database of a one-instance build (schema 1) is moved to 2, which such builds refuse.
    let mut c = postgres::Client::connect(&db.url, postgres::NoTls).unwrap();
    c.execute("UPDATE vault_schema_version SET version = 1", &[]).unwrap();
    drop(PgMeta::open(&db.url).unwrap());
    let v: i32 = c.query_one("SELECT version FROM vault_schema_version", &[]).unwrap().get(0);
    assert_eq!(v, vault::storage::pg_store::SCHEMA_VERSION);
    assert_eq!(v, 2);
    // A URL that is not one, and a server that is not there, are errors, not panics.
    assert!(matches!(PgMeta::open("postgres://[::1"), Err(StoreError::Meta(_))));
    let port = common::http::free_port();
    let err = PgMeta::open(&format!("postgres://vault@127.0.0.1:{port}/none")).unwrap_err();
    assert!(err.to_string().contains("connecting"), "{err}");
}

/// A whole vault with its metadata in PostgreSQL and its blobs in files: deposit, read (the
/// started reads take the blocking way: a PostgreSQL read never runs in the non-blocking
/// section), grant, agency read, erasure, checkpoint; then close, reopen and read it all back.
#[test]
fn a_whole_vault_on_postgres() {
    use vault::access::{Caller, Started};
    use vault::engine::grants::NewGrant;
    use vault::engine::provenance::NewAgency;
    use vault::{AgencyId, DocType, Error, Purpose, Timestamp};
    let db = pg::database();
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let meta = PgMeta::open(&db.url).unwrap();
        let blobs = FsBlobs::open(dir.path().join("blobs")).unwrap();
        Vault::open_with(Box::new(meta), Box::new(blobs), &master(), Some(dir.path().join("OPEN"))).unwrap()
    };
    let v = Arc::new(open());
    let (kept, erased) = (owner(1), owner(2));
    let agency = AgencyId::parse("ubnd-hn").unwrap();
    v.put_agency_as(&Caller::operator(), &agency, NewAgency { name: "UBND".into(), keys: vec![] }).unwrap();
    let small = content(1, 300);
    let big = content(2, 200_000);
    let d_small = put_doc(&v, &kept, &small, "khai-sinh");
    let d_big = put_doc(&v, &kept, &big, "cccd");
    let d_gone = put_doc(&v, &erased, &small, "khai-sinh");
    let read = |v: &Vault, o: &vault::OwnerId, id: &vault::DocumentId| {
        let (_, mut r) = v.open_document_content(o, id).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    };
    assert!(read(&v, &kept, &d_small.id) == small && read(&v, &kept, &d_big.id) == big);
    assert!(read(&v, &erased, &d_gone.id) == small);
    let me = Caller::owner(kept.clone());
    // On sled a small content's audited read starts without blocking; here it may not.
    assert!(matches!(v.start_content_as(&me, &kept, &d_small.id), Started::Blocking));
    let (_, mut r) = v.content_as(&me, &kept, &d_small.id).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(out == small);
    let grant = v
        .grant_as(
            &me,
            &kept,
            NewGrant {
                grantee: agency.clone(),
                purpose: Purpose::parse("1.1").unwrap(),
                purpose_text: "Đăng ký kết hôn".into(),
                doc_types: vec![DocType::parse("khai-sinh").unwrap()],
                documents: vec![],
                expires_at: Timestamp::now().plus_seconds(3600),
                max_uses: Some(2),
            },
        )
        .unwrap();
    let a = Caller::agency(agency.clone(), Some(Purpose::parse("1.1").unwrap()));
    v.content_as(&a, &kept, &d_small.id).unwrap();
    assert!(matches!(v.content_as(&a, &kept, &d_big.id), Err(Error::GrantRequired)), "cccd is not granted");
    v.erase_as(&Caller::owner(erased.clone()), &erased).unwrap();
    assert!(v.open_document_content(&erased, &d_gone.id).is_err(), "erased");
    let note = v.checkpoint().unwrap();
    let size = v.audit_size().unwrap();
    assert!(v.check(true).unwrap().is_clean());
    match Arc::try_unwrap(v) {
        Ok(v) => v.close().unwrap(),
        Err(_) => panic!("a handle of the vault is still held"),
    }
    assert!(!dir.path().join("OPEN").exists(), "a clean close");

    let v = open();
    assert!(!v.recovery().unclean);
    assert!(read(&v, &kept, &d_small.id) == small && read(&v, &kept, &d_big.id) == big);
    assert!(v.open_document_content(&erased, &d_gone.id).is_err(), "still erased");
    let g = v.grants_as(&me, &kept).unwrap().into_iter().find(|g| g.id == grant.id).unwrap();
    assert_eq!(g.uses, 1, "the agency's counted read");
    v.content_as(&a, &kept, &d_small.id).unwrap();
    assert!(matches!(v.content_as(&a, &kept, &d_small.id), Err(Error::GrantRequired)), "max_uses 2");
    assert!(v.audit_size().unwrap() > size);
    assert!(note.contains(&size.to_string()), "{note}");
    assert!(v.check(true).unwrap().is_clean());
    v.close().unwrap();
}

/// Not a test: prints throughput figures of small deposits (inline contents, each one
/// metadata batch) with 4 writers, on sled and on PostgreSQL, and a long scan of each.
/// `cargo test --test store_conformance -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_small_deposits_on_sled_and_postgres() {
    let db = pg::database();
    let dir = tempfile::tempdir().unwrap();
    let backends: [(&str, Box<dyn MetaStore>); 2] = [
        ("sled", Box::new(SledMeta::open(&dir.path().join("meta")).unwrap())),
        ("postgres", Box::new(PgMeta::open(&db.url).unwrap())),
    ];
    for (i, (name, meta)) in backends.into_iter().enumerate() {
        let blobs = FsBlobs::open(dir.path().join(format!("blobs-{i}"))).unwrap();
        let v = Arc::new(Vault::open_with(meta, Box::new(blobs), &master(), None).unwrap());
        const WRITERS: u32 = 4;
        const EACH: u64 = 250;
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for t in 0..WRITERS {
                let v = &v;
                s.spawn(move || {
                    for n in 0..EACH {
                        let data = content(u64::from(t) << 32 | n, 200);
                        v.put_document(&owner(t), data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap();
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        let docs = f64::from(WRITERS) * EACH as f64;
        let start = std::time::Instant::now();
        let listed: usize = (0..WRITERS).map(|t| v.documents(&owner(t), None).unwrap().len()).sum();
        let list_secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {docs} small deposits by {WRITERS} writers in {secs:.2} s = {:.0}/s; listing {listed} in {:.0} ms",
            docs / secs,
            list_secs * 1e3
        );
    }
}
