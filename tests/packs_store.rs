//! Packs at the store (SledMeta), from a review of the packs: reads racing compaction, replay of
//! a batch that replaces its own put, a deletion checkpointed before its sync, damaged locators
//! at compaction and at deletion. Each test failed on the first version of packs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vault::storage::{sled::SledMeta, MetaStore, Op};

fn packs_of(meta_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(meta_dir.join(vault::storage::pack::PACK_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    v.sort();
    v
}

/// Whether `needle` occurs in any pack file of `meta_dir`.
fn in_packs(meta_dir: &Path, needle: &[u8]) -> bool {
    packs_of(meta_dir).iter().any(|p| std::fs::read(p).unwrap().windows(needle.len()).any(|w| w == needle))
}

/// A recognisable value (distinct per seed, no long runs of zeros).
fn value(seed: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    let mut r = h.finalize_xof();
    out.resize(len, 0);
    r.fill(&mut out);
    out
}

/// The folder as a kill -9 leaves it (page cache kept): a copy taken while the store is open.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "db.lock" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Finding 1 (medium): `get` reads the locator from sled and then the pack without any
/// coordination with compaction, which zeroes the old range (after its sync) and removes the
/// old pack (at its checkpoint). A reader that fetched the old locator just before the move
/// reads zeros (served as a damaged blob: `Error::Decrypt`/`Corrupt`) or finds the pack gone
/// (`get` returns `None`: "missing"), for a value that is live the whole time. The server runs
/// compaction at every sweep, concurrently with reads.
#[test]
fn reads_during_compaction_always_see_a_live_value() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(SledMeta::open(dir.path()).unwrap());
    let live_key = b"Blive".to_vec();
    let live = value(1, 4_000);
    meta.apply(vec![Op::Put(live_key.clone(), live.clone())]).unwrap();
    meta.sync().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (missing, wrong, reads) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (meta, stop, key, live) = (meta.clone(), stop.clone(), live_key.clone(), live.clone());
            let (missing, wrong, reads) = (missing.clone(), wrong.clone(), reads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match meta.get(&key).unwrap() {
                        None => {
                            missing.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(v) if v != live => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let dead = value(2, 200_000);
    let mut moved = 0;
    for i in 0..150u32 {
        // 200 KB dead next to 4 KB live: the current pack is sparse, the live value moves.
        let k = format!("Bdead{i}").into_bytes();
        meta.apply(vec![Op::Put(k.clone(), dead.clone())]).unwrap();
        meta.apply(vec![Op::Delete(k)]).unwrap();
        meta.sync().unwrap();
        moved += meta.compact_packs().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(moved >= 100, "compaction ran ({moved} moves)");
    let (m, w, n) = (missing.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed), reads.load(Ordering::Relaxed));
    assert_eq!((m, w), (0, 0), "of {n} reads of a live value, {m} found it missing and {w} read other bytes");
}

/// Finding 2 (low): replay decides which values a record dropped from sled's value *before*
/// the whole batch is applied, so a value put and then replaced (or deleted) within one batch
/// is not dropped: replay writes its bytes back into the pack and nothing ever zeroes them
/// again (the running store had zeroed them). Deleted bytes are resurrected by recovery.
#[test]
fn replay_of_a_batch_that_replaces_its_own_put_leaves_the_first_bytes_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let first = value(3, 3_000);
    let second = value(4, 3_000);
    let meta = SledMeta::open(dir.path()).unwrap();
    meta.apply(vec![Op::Put(b"Bk".to_vec(), first.clone()), Op::Put(b"Bk".to_vec(), second.clone())]).unwrap();
    meta.sync().unwrap();
    assert!(!in_packs(dir.path(), &first), "the running store zeroed the replaced value");
    copy_dir(dir.path(), crashed.path());
    drop(meta);
    let meta = SledMeta::open(crashed.path()).unwrap();
    assert_eq!(meta.get(b"Bk").unwrap().unwrap(), second);
    assert!(!in_packs(crashed.path(), &first), "recovery wrote the replaced value back into the pack");
}

/// Finding 3 (low/medium): a deletion journaled before a checkpoint whose zeroing waits for the
/// *next* sync (released, not yet zeroed) is lost by a crash in between: the checkpoint emptied
/// the journal, so replay knows nothing of it, and the bytes stay in the pack after recovery.
/// Checkpoints run inside any writer's apply when the journal is large (`journaled`) and at the
/// end of every compaction, so they interleave with a delete's apply and its sync.
#[test]
fn a_delete_checkpointed_before_its_sync_is_still_zeroed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let secret = value(5, 3_000);
    let meta = SledMeta::open(dir.path()).unwrap();
    meta.apply(vec![Op::Put(b"Bsecret".to_vec(), secret.clone())]).unwrap();
    meta.sync().unwrap();
    meta.apply(vec![Op::Delete(b"Bsecret".to_vec())]).unwrap();
    // Another writer's apply (or a compaction) checkpoints here; then the process dies before
    // the deleting call's sync.
    meta.checkpoint().unwrap();
    copy_dir(dir.path(), crashed.path());
    drop(meta);
    let meta = SledMeta::open(crashed.path()).unwrap();
    assert_eq!(meta.get(b"Bsecret").unwrap(), None);
    assert!(!in_packs(crashed.path(), &secret), "the deleted value's bytes survive recovery");
}

/// Finding 4 (medium): one damaged locator (its offset past 2^63) in a sparse pack makes every
/// compaction fail with an I/O error (pread EINVAL), and `Vault::compact_storage` turns that
/// error into a fail-stop of the whole vault, at every sweep after every restart. A value whose
/// bytes fail the locator's check is skipped; one that cannot be read should be too.
#[test]
fn a_damaged_locator_does_not_make_compaction_fail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let meta = SledMeta::open(dir.path()).unwrap();
        meta.apply(vec![Op::Put(b"Bgood".to_vec(), value(6, 3_000))]).unwrap();
        meta.apply(vec![Op::Put(b"Bhurt".to_vec(), value(7, 3_000))]).unwrap();
        meta.apply(vec![Op::Put(b"Bdead".to_vec(), value(8, 200_000))]).unwrap();
        meta.apply(vec![Op::Delete(b"Bdead".to_vec())]).unwrap();
        meta.sync().unwrap();
        meta.close().unwrap();
    }
    {
        // Disk damage in sled: the locator's offset gets its top bit set.
        let db = sled::Config::new().path(dir.path()).segment_size(8 << 20).open().unwrap();
        let mut v = db.get(b"Bhurt").unwrap().unwrap().to_vec();
        assert_eq!(v.len(), vault::storage::pack::LOCATOR_LEN);
        v[12] ^= 0x80;
        db.insert(b"Bhurt", v).unwrap();
        db.flush().unwrap();
    }
    // The operator accepts the database as it is (SPEC.md §10).
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(dir.path().join(vault::storage::sled::ANCHOR_FILE)).unwrap();
    let meta = SledMeta::open(dir.path()).unwrap();
    let moved = meta.compact_packs();
    assert!(moved.is_ok(), "compaction fails on one damaged locator: {moved:?}");
    assert_eq!(meta.get(b"Bgood").unwrap().unwrap(), value(6, 3_000));
}

/// Finding 5 (medium): a released range is zeroed without checking that it still holds the
/// value its locator was made for (the locator's own BLAKE3 check is not consulted). A damaged
/// locator (here: its length field) therefore zeroes whatever it covers when its key is deleted:
/// the neighbouring values of other contents (other owners') are destroyed, and the zeroing
/// buffer is allocated at the damaged length (up to 4 GiB). The same holds for erasure batches.
#[test]
fn deleting_a_value_with_a_damaged_locator_never_zeroes_other_values() {
    let dir = tempfile::tempdir().unwrap();
    let neighbour = value(10, 3_000);
    {
        let meta = SledMeta::open(dir.path()).unwrap();
        meta.apply(vec![Op::Put(b"Bhurt".to_vec(), value(9, 3_000))]).unwrap();
        meta.apply(vec![Op::Put(b"Bneighbour".to_vec(), neighbour.clone())]).unwrap();
        meta.sync().unwrap();
        meta.close().unwrap();
    }
    {
        // Disk damage in sled: the length of the first value's locator grows (3,000 → 6,000).
        let db = sled::Config::new().path(dir.path()).segment_size(8 << 20).open().unwrap();
        let mut v = db.get(b"Bhurt").unwrap().unwrap().to_vec();
        v[20..24].copy_from_slice(&6_000u32.to_be_bytes());
        db.insert(b"Bhurt", v).unwrap();
        db.flush().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    std::fs::remove_file(dir.path().join(vault::storage::sled::ANCHOR_FILE)).unwrap();
    let meta = SledMeta::open(dir.path()).unwrap();
    // The damaged content is deleted (its document deleted, or its owner erased).
    meta.apply(vec![Op::Delete(b"Bhurt".to_vec())]).unwrap();
    meta.sync().unwrap();
    assert!(meta.get(b"Bneighbour").unwrap().unwrap() == neighbour, "a live value was zeroed");
}
