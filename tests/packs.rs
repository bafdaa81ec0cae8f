//! Packs (SPEC.md §8, "Packs"): the embedded store keeps the bytes of small blobs in append-only
//! pack files, journaled with their batch. Deleted and erased values are zeroed before the call
//! returns; a pack page lost in a crash is rewritten from the journal; damage is reported by
//! `check` and never served; sparse packs are compacted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vault::access::Caller;
use vault::{Digest, Error, Vault};

fn packs_of(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("meta").join(vault::storage::pack::PACK_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    v.sort();
    v
}

fn all_pack_bytes(dir: &Path) -> Vec<u8> {
    packs_of(dir).iter().flat_map(|p| std::fs::read(p).unwrap()).collect()
}

/// Whether the bytes of the pack range `[from, to)` of the only pack are all zero.
fn zeroed(dir: &Path, from: usize, to: usize) -> bool {
    let packs = packs_of(dir);
    assert_eq!(packs.len(), 1);
    std::fs::read(&packs[0]).unwrap()[from..to].iter().all(|&b| b == 0)
}

#[test]
fn small_contents_go_to_a_pack_and_sled_holds_only_locators() {
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    let data: Vec<Vec<u8>> = (0..20).map(|i| content(i, 2_000 + 1_000 * i as usize)).collect();
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        for d in &data {
            put_doc(&v, &a, d, "cccd");
        }
        for d in &data {
            assert_eq!(&v.read_content(&a, &Digest::of(d)).unwrap(), d);
        }
        v.close().unwrap();
    }
    let total: usize = data.iter().map(|d| 80 + d.len() + 16).sum();
    assert_eq!(all_pack_bytes(dir.path()).len(), 8 + total);
    let db = open_sled(dir.path());
    for item in db.scan_prefix([b'B']) {
        let (_, v) = item.unwrap();
        assert_eq!(v.len(), vault::storage::pack::LOCATOR_LEN);
        assert!(v.starts_with(vault::storage::pack::LOCATOR_MAGIC));
    }
    drop(db);
    let v = Vault::open(dir.path(), &master()).unwrap();
    for d in &data {
        assert_eq!(&v.read_content(&a, &Digest::of(d)).unwrap(), d);
    }
    assert!(v.check(true).unwrap().is_clean());
}

#[test]
fn a_deleted_or_erased_small_content_is_zeroed_before_the_call_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (owner(1), owner(2));
    let v = Vault::open(dir.path(), &master()).unwrap();
    let first = content(1, 5_000);
    let doc = put_doc(&v, &a, &first, "cccd");
    let first_end = 8 + 80 + first.len() + 16;
    let second = content(2, 7_000);
    put_doc(&v, &b, &second, "cccd");
    let second_end = first_end + 80 + second.len() + 16;
    let kept = content(3, 3_000);
    put_doc(&v, &a, &kept, "cccd");
    let before = std::fs::read(&packs_of(dir.path())[0]).unwrap();
    assert!(!zeroed(dir.path(), 8, first_end));

    v.delete_document(&a, &doc.id).unwrap();
    assert!(zeroed(dir.path(), 8, first_end), "the deleted content's bytes are still in the pack");
    assert!(!zeroed(dir.path(), first_end, second_end));

    v.erase_as(&Caller::owner(b.clone()), &b).unwrap();
    assert!(zeroed(dir.path(), first_end, second_end), "the erased owner's bytes are still in the pack");
    // The rest is untouched and reads back.
    let after = std::fs::read(&packs_of(dir.path())[0]).unwrap();
    assert_eq!(after[second_end..], before[second_end..]);
    assert_eq!(v.read_content(&a, &Digest::of(&kept)).unwrap(), kept);
    assert!(v.check(true).unwrap().is_clean());
    v.close().unwrap();
    // And after a reopen.
    let v = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(v.read_content(&a, &Digest::of(&kept)).unwrap(), kept);
    assert!(!v.holds(&a, &Digest::of(&first)).unwrap());
}

#[test]
fn a_pack_whose_pages_were_lost_in_a_crash_is_rewritten_from_the_journal() {
    // The state a power cut can leave: the journal's fdatasync made the batch durable, the
    // pack's own pages never reached the disk (packs are synced at checkpoints only).
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let a = owner(1);
    let data = content(9, 12_000);
    let v = Vault::open(dir.path(), &master()).unwrap();
    let doc = put_doc(&v, &a, &data, "cccd");
    // A copy of the folder as it is on disk now, before any checkpoint.
    copy_dir(dir.path(), crashed.path());
    drop(v);
    for p in packs_of(crashed.path()) {
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(8).unwrap();
    }
    let v = Vault::open(crashed.path(), &master()).unwrap();
    assert!(v.recovery().unclean);
    assert_eq!(v.document(&a, &doc.id).unwrap(), doc);
    assert_eq!(v.read_content(&a, &doc.meta.digest).unwrap(), data);
    assert!(v.check(true).unwrap().is_clean());
}

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

#[test]
fn a_flipped_byte_in_a_pack_is_reported_by_check_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    let data = content(5, 9_000);
    let other = content(6, 4_000);
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        put_doc(&v, &a, &data, "cccd");
        put_doc(&v, &a, &other, "cccd");
        v.close().unwrap();
    }
    let pack = packs_of(dir.path())[0].clone();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[8 + 3_000] ^= 0x20;
    std::fs::write(&pack, bytes).unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let report = v.check(true).unwrap();
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(matches!(v.read_content(&a, &Digest::of(&data)), Err(Error::Decrypt(_))));
    assert_eq!(v.read_content(&a, &Digest::of(&other)).unwrap(), other);
    // A pack file that is gone: its contents are reported, not served.
    drop(v);
    std::fs::remove_file(&pack).unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let report = v.check(false).unwrap();
    assert_eq!(report.problems.len(), 2, "{report}");
    assert!(v.read_content(&a, &Digest::of(&other)).is_err());
}

#[test]
fn sparse_packs_are_compacted_and_what_is_live_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    let v = Vault::open(dir.path(), &master()).unwrap();
    let docs: Vec<_> = (0..30).map(|i| (put_doc(&v, &a, &content(100 + i, 6_000), "cccd"), i)).collect();
    let full = all_pack_bytes(dir.path()).len();
    assert_eq!(v.compact_storage().unwrap(), 0, "nothing to compact yet");
    for (d, i) in &docs {
        if i % 4 != 0 {
            v.delete_document(&a, &d.id).unwrap();
        }
    }
    let moved = v.compact_storage().unwrap();
    assert_eq!(moved, 8);
    let packs = packs_of(dir.path());
    assert_eq!(packs.len(), 1, "the sparse pack was removed: {packs:?}");
    let now = all_pack_bytes(dir.path()).len();
    assert!(now * 3 < full, "{now} of {full} bytes");
    for (d, i) in &docs {
        let read = v.read_content(&a, &d.meta.digest);
        if i % 4 == 0 {
            assert_eq!(read.unwrap(), content(100 + i, 6_000));
        } else {
            assert!(read.is_err());
        }
    }
    assert!(v.check(true).unwrap().is_clean());
    v.close().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(v.documents(&a, None).unwrap().len(), 8);
    assert!(v.check(true).unwrap().is_clean());
}

#[test]
fn a_folder_of_format_1_opens_and_is_marked_format_2() {
    // Format 1 kept small blobs whole in sled; those values still read (and a new put packs).
    let dir = tempfile::tempdir().unwrap();
    let a = owner(1);
    let old = content(1, 3_000);
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        put_doc(&v, &a, &old, "cccd");
        v.close().unwrap();
    }
    // Rewrite the folder as format 1 left it: the blob whole under its key, the format mark 1.
    {
        let meta = vault::storage::sled::SledMeta::open(&dir.path().join("meta")).unwrap();
        use vault::storage::MetaStore;
        let (k, blob) = meta.scan(b"B").next().unwrap().unwrap();
        drop(meta);
        let db = open_sled(dir.path());
        db.insert(&k, blob).unwrap();
        db.insert(b"Mformat", &b"vault-format-1"[..]).unwrap();
        db.flush().unwrap();
        drop(db);
        std::fs::remove_file(dir.path().join("meta").join(vault::storage::sled::ANCHOR_FILE)).unwrap();
    }
    let v = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(v.read_content(&a, &Digest::of(&old)).unwrap(), old);
    let new = content(2, 3_000);
    put_doc(&v, &a, &new, "cccd");
    assert!(v.check(true).unwrap().is_clean());
    v.close().unwrap();
    let db = open_sled(dir.path());
    assert_eq!(db.get(b"Mformat").unwrap().unwrap().as_ref(), b"vault-format-2");
}
