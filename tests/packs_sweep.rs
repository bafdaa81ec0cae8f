//! Packs at the vault, from a review of the packs: the sweep's compaction with a damaged
//! locator, and reads of a live document while compaction moves it. Each test failed on the
//! first version of packs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use common::*;
use vault::{Error, Vault};

/// Finding 4, at the vault: one damaged locator (offset with its top bit set) in a sparse pack
/// makes `Vault::compact_storage` fail, and the failure trips fail-stop: the vault refuses every
/// write from then on (the server runs compaction at every sweep, so this recurs after every
/// restart). A read failure of one value should skip that value (as a failed check does).
#[test]
fn one_damaged_locator_does_not_fail_stop_the_vault_at_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        let docs: Vec<_> = (0..10).map(|i| put_doc(&v, &a, &content(200 + i, 20_000), "cccd")).collect();
        for d in &docs[2..] {
            v.delete_document(&a, &d.id).unwrap();
        }
        v.close().unwrap();
    }
    {
        let db = open_sled(dir.path());
        let (k, v) = db.scan_prefix([b'B']).next().unwrap().unwrap();
        let mut v = v.to_vec();
        assert_eq!(v.len(), vault::storage::pack::LOCATOR_LEN);
        v[12] ^= 0x80;
        db.insert(k, v).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The operator accepts the database as it is (SPEC.md §10).
    std::fs::remove_file(dir.path().join("meta").join(vault::storage::sled::ANCHOR_FILE)).unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let compacted = v.compact_storage();
    let after = v.put_content_bytes(&a, b"a write after the sweep");
    assert!(
        compacted.is_ok() && !matches!(after, Err(Error::FailStopped { .. })),
        "compaction: {compacted:?}; a write afterwards: {:?}",
        after.map(|_| ())
    );
}

/// Finding 1, at the vault: `read_content` of a live document fails (as damaged or missing)
/// while the sweep's compaction moves its content, with nothing wrong on disk.
#[test]
fn reading_a_live_document_during_compaction_never_fails() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
    let live = content(300, 3_000);
    let doc = put_doc(&v, &a, &live, "cccd");
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (v, a, stop, failed, first_error, live, digest) = (
                v.clone(),
                a.clone(),
                stop.clone(),
                failed.clone(),
                first_error.clone(),
                live.clone(),
                doc.meta.digest,
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match v.read_content(&a, &digest) {
                        Ok(d) if d == live => {}
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            first_error.lock().unwrap().get_or_insert(format!("{:?}", other.map(|d| d.len())));
                        }
                    }
                }
            })
        })
        .collect();
    let mut moved = 0;
    for round in 0..200u64 {
        let dead: Vec<_> = (0..4).map(|i| put_doc(&v, &a, &content(1_000 + round * 4 + i, 30_000), "cccd")).collect();
        for d in dead {
            v.delete_document(&a, &d.id).unwrap();
        }
        moved += v.compact_storage().unwrap();
    }
    assert!(moved >= 100, "compaction moved {moved} values");
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "first failure: {:?}", first_error.lock().unwrap());
}
