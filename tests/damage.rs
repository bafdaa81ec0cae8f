//! Damaged bytes (issue 10, item 6): one-byte flips in every file of a data folder, after a
//! clean close and after a crash (the files of an open vault, copied after its journal was
//! written but before sled was flushed). Every flip must be detected (the vault refuses to
//! open, a read fails, or `check --read-data` reports a problem) or provably harmless (the whole
//! observable state equals the state before the flip). `VAULT_FLIP_STRIDE` sets the stride over
//! large files (smaller: more flips).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::*;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::NewAgency;
use vault::{AgencyId, DocType, Error, OwnerId, Purpose, Timestamp, Vault};

fn agency() -> AgencyId {
    AgencyId::parse("ubnd-xa").unwrap()
}

fn org() -> OwnerId {
    OwnerId::parse("org:0101234567").unwrap()
}

fn owners() -> Vec<OwnerId> {
    vec![owner(1), org()]
}

/// Documents (inline and file blobs), a grant, agency reads (audited) and a deletion.
fn workload(v: &Vault, round: u64) {
    let purpose = Purpose::parse("1.001193").unwrap();
    for (i, o) in owners().iter().enumerate() {
        for n in 0..3u64 {
            let seed = round * 100 + i as u64 * 10 + n;
            let len = if n == 2 { 70_000 } else { 900 + n as usize * 300 };
            put_doc(v, o, &content(seed, len), "cccd");
        }
        let extra = put_doc(v, o, &content(round * 100 + 99, 500), "giay-khai-sinh");
        v.delete_document(o, &extra.id).unwrap();
        let terms = NewGrant {
            grantee: agency(),
            purpose: purpose.clone(),
            purpose_text: "Đăng ký kết hôn".into(),
            doc_types: vec![DocType::parse("cccd").unwrap()],
            documents: vec![],
            expires_at: Timestamp::now().plus_seconds(3600),
            max_uses: None,
        };
        v.grant_as(&Caller::owner(o.clone()), o, terms).unwrap();
        let reader = Caller::agency(agency(), Some(purpose.clone()));
        assert_eq!(v.documents_as(&reader, o, None).unwrap().len(), 3 * round as usize + 3);
    }
    v.checkpoint().unwrap();
}

/// Everything a caller can observe, read without changing anything.
fn observe(v: &Vault) -> Result<String, Error> {
    let mut s = String::new();
    for o in owners() {
        for d in v.documents(&o, None)? {
            let bytes = v.read_content(&o, &d.meta.digest)?;
            writeln!(s, "{d:?} {}", blake3::hash(&bytes)).unwrap();
        }
        for e in v.owner_entries(&o)? {
            writeln!(s, "{e:?}").unwrap();
        }
    }
    for g in v.grants_to(&agency())? {
        writeln!(s, "{g:?}").unwrap();
    }
    for a in v.agencies()? {
        writeln!(s, "{a:?}").unwrap();
    }
    let size = v.audit_size()?;
    writeln!(s, "tree {size} {:?}", v.audit_root(size)?).unwrap();
    for i in 0..size {
        writeln!(s, "{}", blake3::hash(&v.leaf(i)?)).unwrap();
    }
    Ok(s)
}

/// Opens (`Vault::open` itself waits for sled's threads of a vault just closed in this process
/// to let go of its lock).
fn open(dir: &Path) -> Result<Vault, Error> {
    Vault::open(dir, &master())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Offsets to flip in a file: all of a small one; of a larger one the first and last bytes, a
/// stride, and the length and check bytes of every journal record header. With
/// `VAULT_FLIP_STRIDE` set, every offset of files up to 2 KiB and that stride elsewhere.
fn offsets(path: &Path, data: &[u8], stride: Option<usize>) -> Vec<usize> {
    let edge = if stride.is_some() { 64 } else { 16 };
    if data.len() <= if stride.is_some() { 2048 } else { 64 } {
        return (0..data.len()).collect();
    }
    let per = stride.map_or(16, |s| data.len() / s);
    let stride = stride.unwrap_or((data.len() / 16).max(1));
    let mut out: Vec<usize> =
        (0..edge).chain(data.len() - edge..data.len()).chain((0..data.len()).step_by(stride)).collect();
    // And as many again among the bytes in use (sled's files are mostly zeros).
    let used: Vec<usize> = (0..data.len()).filter(|&i| data[i] != 0).collect();
    out.extend(used.iter().step_by((used.len() / per.max(1)).max(1)).copied());
    if path.components().any(|c| c.as_os_str() == "blobs") {
        // Blob files authenticate every byte (SPEC.md §7): a sample of header and chunks.
        out = vec![0, 12, 40, 70, 100, data.len() / 2, data.len() - 1];
    }
    if path.file_name().is_some_and(|n| n == vault::storage::sled::JOURNAL_FILE)
        && data.starts_with(vault::storage::journal::MAGIC)
    {
        let mut pos = vault::storage::journal::MAGIC.len();
        while pos + 16 <= data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            // The length (format 1 took a damaged one for a torn tail), its check, the checksum,
            // and the record's last byte.
            out.extend([pos, pos + 1, pos + 2, pos + 3, pos + 4, pos + 8, (pos + 15 + len).min(data.len() - 1)]);
            pos += 16 + len;
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Default, Debug)]
struct Tally {
    /// Per file: flips, and how many were refused at open, failed a read, found by check, harmless.
    files: std::collections::BTreeMap<String, [usize; 5]>,
    flips: usize,
    refused: usize,
    read_failed: usize,
    check_found: usize,
    harmless: usize,
    silent: Vec<String>,
}

fn sweep(name: &str, folder: &Path, expected: &str, work: &Path, tally: &mut Tally) {
    let stride: Option<usize> = std::env::var("VAULT_FLIP_STRIDE").ok().and_then(|s| s.parse().ok()).filter(|&s| s > 0);
    let files = files_below(folder);
    assert!(files.iter().any(|f| f.ends_with("meta/db")), "{files:?}");
    for file in &files {
        let rel = file.strip_prefix(folder).unwrap().to_path_buf();
        let data = std::fs::read(file).unwrap();
        for off in offsets(file, &data, stride) {
            tally.flips += 1;
            let copy: PathBuf = work.join(format!("{name}-{}", tally.flips));
            copy_dir(folder, &copy);
            let mut bad = data.clone();
            bad[off] ^= 1 << (off % 8);
            std::fs::write(copy.join(&rel), &bad).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                let v = match open(&copy) {
                    Ok(v) => v,
                    Err(e) => return Err(format!("refused: {e}")),
                };
                let seen = match observe(&v) {
                    Ok(s) => s,
                    Err(e) => return Err(format!("read failed: {e}")),
                };
                let report = v.check(true).map_err(|e| format!("read failed: check: {e}"))?;
                if !report.is_clean() {
                    return Err(format!("check: {}", report.problems[0].what));
                }
                Ok(seen)
            });
            let _ = std::fs::remove_dir_all(&copy);
            let kind = if rel.starts_with("blobs") {
                "blobs/*".to_owned()
            } else {
                format!(
                    "{} ({} bytes, {} not zero)",
                    rel.display(),
                    data.len(),
                    data.iter().filter(|&&b| b != 0).count()
                )
            };
            let row = tally.files.entry(format!("{name} {kind}")).or_default();
            row[0] += 1;
            match outcome {
                Ok(Ok(seen)) if seen == expected => {
                    row[4] += 1;
                    tally.harmless += 1;
                }
                Ok(Ok(_)) => tally.silent.push(format!("{name} {} offset {off}: state differs", rel.display())),
                Ok(Err(e)) if e.starts_with("refused") => {
                    row[1] += 1;
                    tally.refused += 1;
                }
                Ok(Err(e)) if e.starts_with("check") => {
                    row[3] += 1;
                    tally.check_found += 1;
                }
                Ok(Err(_)) => {
                    row[2] += 1;
                    tally.read_failed += 1;
                }
                // sled panicked on the damaged bytes: the vault does not come up.
                Err(_) => {
                    row[1] += 1;
                    tally.refused += 1;
                }
            }
        }
    }
}

#[test]
fn item_10_6_flip_sweep_of_a_clean_and_a_crashed_data_folder_finds_no_silent_change() {
    // On a memory file system when there is one: the sweep is about detection, not durability,
    // and thousands of fsyncs would make it slow.
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let clean = root.path().join("clean");
    let crashed = root.path().join("crashed");
    let work = root.path().join("work");
    let (expected_clean, expected_crashed) = {
        let v = open(&clean).unwrap();
        v.put_agency_as(&Caller::operator(), &agency(), NewAgency { name: "UBND xã".into(), keys: vec![] }).unwrap();
        workload(&v, 0);
        let before = observe(&v).unwrap();
        v.close().unwrap();
        let v = open(&clean).unwrap();
        assert_eq!(observe(&v).unwrap(), before);
        v.close().unwrap();
        // A second session whose changes are only in the journal when its files are copied.
        copy_dir(&clean, &crashed);
        let v = open(&crashed).unwrap();
        workload(&v, 1);
        let after = observe(&v).unwrap();
        let snapshot = root.path().join("crashed-snapshot");
        copy_dir(&crashed, &snapshot);
        drop(v);
        std::fs::remove_dir_all(&crashed).unwrap();
        std::fs::rename(&snapshot, &crashed).unwrap();
        (before, after)
    };
    assert!(crashed.join("OPEN").exists());
    let journal = std::fs::metadata(crashed.join("meta").join(vault::storage::sled::JOURNAL_FILE)).unwrap().len();
    assert!(journal > 1000, "the crashed folder's changes must be in its journal ({journal} bytes)");
    // Unflipped, both folders open to exactly the acknowledged state.
    for (folder, expected) in [(&clean, &expected_clean), (&crashed, &expected_crashed)] {
        let copy = work.join("unflipped");
        copy_dir(folder, &copy);
        let v = open(&copy).unwrap();
        assert_eq!(&observe(&v).unwrap(), expected);
        assert!(v.check(true).unwrap().is_clean());
        drop(v);
        std::fs::remove_dir_all(&copy).unwrap();
    }
    let mut tally = Tally::default();
    sweep("clean", &clean, &expected_clean, &work, &mut tally);
    sweep("crashed", &crashed, &expected_crashed, &work, &mut tally);
    println!("{tally:#?}");
    assert!(tally.silent.is_empty(), "{} of {} flips silent: {:#?}", tally.silent.len(), tally.flips, tally.silent);
    assert!(tally.refused > 0 && tally.harmless + tally.check_found + tally.read_failed > 0, "{tally:#?}");
}

fn is_damaged(e: &Error) -> bool {
    matches!(e, Error::Store(vault::storage::StoreError::Damaged { .. }))
}

#[test]
fn item_10_6_a_rolled_back_database_is_refused_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old = dir.path().join("old-meta");
    {
        let v = Vault::open(&data, &master()).unwrap();
        v.put_agency_as(&Caller::operator(), &agency(), NewAgency { name: "UBND xã".into(), keys: vec![] }).unwrap();
        workload(&v, 0);
        v.close().unwrap();
    }
    copy_dir(&data.join("meta"), &old);
    {
        let v = Vault::open(&data, &master()).unwrap();
        workload(&v, 1);
        v.close().unwrap();
    }
    // sled's files from before the second session, with today's anchor: a rollback.
    for f in ["db", "conf"] {
        std::fs::copy(old.join(f), data.join("meta").join(f)).unwrap();
    }
    for e in std::fs::read_dir(data.join("meta")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(p).unwrap();
        }
    }
    for e in std::fs::read_dir(&old).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().starts_with("snap.") {
            std::fs::copy(&p, data.join("meta").join(p.file_name().unwrap())).unwrap();
        }
    }
    let err = Vault::open(&data, &master()).unwrap_err();
    assert!(is_damaged(&err), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("lost or altered") && msg.contains("restore"), "{msg}");
}

#[test]
fn item_10_6_an_empty_database_over_existing_blobs_makes_no_new_vault_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        put_doc(&v, &owner(1), &content(1, 70_000), "cccd");
        v.close().unwrap();
    }
    // The whole database gone (anchor included): the blobs still say a vault lived here.
    std::fs::remove_dir_all(dir.path().join("meta")).unwrap();
    let err = Vault::open(dir.path(), &master()).unwrap_err();
    assert!(is_damaged(&err) && err.to_string().contains("new vault key"), "{err}");
    // Nothing was created meanwhile: the same refusal again.
    assert!(is_damaged(&Vault::open(dir.path(), &master()).unwrap_err()));
}

#[test]
fn item_10_6_a_damaged_journal_record_refuses_the_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let journal = dir.path().join("meta").join(vault::storage::sled::JOURNAL_FILE);
    let snapshot = other.path().join("crashed");
    {
        let v = Vault::open(dir.path(), &master()).unwrap();
        for n in 0..4 {
            put_doc(&v, &owner(1), &content(n, 1000), "cccd");
        }
        copy_dir(dir.path(), &snapshot);
    }
    let snap_journal = snapshot.join("meta").join(vault::storage::sled::JOURNAL_FILE);
    let mut bytes = std::fs::read(&snap_journal).unwrap();
    assert!(bytes.len() > 100, "the changes are in the journal");
    // The first record's length: format 1 took this for a torn tail and dropped everything.
    bytes[vault::storage::journal::MAGIC.len()] ^= 0x10;
    std::fs::write(&snap_journal, &bytes).unwrap();
    let err = Vault::open(&snapshot, &master()).unwrap_err();
    let msg = err.to_string();
    assert!(is_damaged(&err), "{msg}");
    assert!(msg.contains(&snap_journal.display().to_string()) && msg.contains("at byte 8"), "{msg}");
    assert!(journal.exists());
    // Nothing changed: the damaged byte is still there for the operator.
    assert_eq!(std::fs::read(&snap_journal).unwrap(), bytes);
}
