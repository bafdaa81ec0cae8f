//! Crash test: a child process stores documents in a loop (several threads) and reports each
//! acknowledged one; the parent kills it with SIGKILL at a random moment, reopens the vault and
//! checks that every acknowledged document reads back byte-identical, every acknowledged delete
//! stuck, and `check` is clean. `VAULT_CRASH_ROUNDS` sets the number of rounds (default 20; 12
//! for the audit sequencer variant, which checks every acknowledged entry is present once, at its
//! index, and the tree consistent with every checkpoint handed out).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use vault::{Digest, DocumentId, Error, OwnerId, Vault};

const CHILD_ENV: &str = "VAULT_CRASH_CHILD_DIR";
const SIZES: [usize; 6] = [0, 1, 1000, 65536, 70_000, 150_000];

/// Content number `n` of round `round`: some repeat, to exercise dedup and reference counts.
fn content_of(round: u64, n: u64) -> Vec<u8> {
    let seed = round * 1_000_000 + n;
    content(seed, SIZES[(seed % SIZES.len() as u64) as usize])
}

/// The child: runs only when the parent starts this test binary with the environment set.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("VAULT_CRASH_ROUND").unwrap().parse().unwrap();
    let v = std::sync::Arc::new(Vault::open(dir.as_ref(), &master()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                loop {
                    let n = t * 100_000 + i;
                    // Every fourth document reuses the previous content.
                    let cn = if i % 4 == 3 { n - 1 } else { n };
                    let owner = owner((n % 3) as u32);
                    let data = content_of(round, cn);
                    // Half the documents in one step, half as upload then deposit.
                    let doc = if i.is_multiple_of(2) {
                        v.put_document(&owner, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap().1
                    } else {
                        put_doc(&v, &owner, &data, "cccd")
                    };
                    report(&format!("ACK {owner} {} {} {round} {cn}", doc.id, doc.meta.digest));
                    if i % 5 == 4 {
                        // Announced first: a delete that never returned may or may not stick.
                        report(&format!("TRY-DEL {owner} {}", doc.id));
                        v.delete_document(&owner, &doc.id).unwrap();
                        report(&format!("DEL {owner} {}", doc.id));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // One more writer stores batches with `put_documents` (one durable wait per batch) and
    // reports the batch's documents only after it returns.
    let batcher = {
        let v = v.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            loop {
                let items: Vec<_> = (0..5)
                    .map(|k| {
                        let cn = 4 * 100_000 + i * 5 + k;
                        let data = content_of(round, cn);
                        let doc = new_doc(Digest::of(&data), "cccd");
                        (owner((cn % 3) as u32), std::io::Cursor::new(data), doc)
                    })
                    .collect();
                for (k, r) in v.put_documents(items).unwrap().into_iter().enumerate() {
                    let (_, doc, _) = r.unwrap();
                    let cn = 4 * 100_000 + i * 5 + k as u64;
                    report(&format!("ACK {} {} {} {round} {cn}", doc.owner, doc.id, doc.meta.digest));
                }
                i += 1;
            }
        })
    };
    for t in threads {
        t.join().unwrap();
    }
    batcher.join().unwrap();
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

struct Acked {
    owner: OwnerId,
    id: DocumentId,
    digest: Digest,
    round: u64,
    content: u64,
}

/// A small deterministic generator for kill delays (no extra dependency).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn kill9_never_loses_an_acknowledged_write() {
    let rounds: u64 = std::env::var("VAULT_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Acked> = Vec::new();
    let mut deleted: std::collections::HashSet<DocumentId> = Default::default();
    let mut maybe_deleted: std::collections::HashSet<DocumentId> = Default::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut recovered_unclean = 0;
    let child_log = tempfile::NamedTempFile::new().unwrap();
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("VAULT_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            // The child's panic, if any, for the failure message.
            .stderr(child_log.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledgement (the vault is open), then a random while.
        let start = Instant::now();
        let mut lines = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                let first = l.contains("ACK ");
                lines.push(l);
                if first {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10 + next(&mut rng) % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let before = acked.len();
        for l in &lines {
            // libtest prints "test crash_child ... " before the child's first line, on that line.
            let l = ["ACK ", "DEL ", "TRY-DEL "].iter().filter_map(|m| l.find(m)).min().map_or(l.as_str(), |i| &l[i..]);
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["ACK", o, id, d, r, c] => acked.push(Acked {
                    owner: OwnerId::parse(o).unwrap(),
                    id: DocumentId::parse(id).unwrap(),
                    digest: Digest::parse(d).unwrap(),
                    round: r.parse().unwrap(),
                    content: c.parse().unwrap(),
                }),
                ["DEL", _, id] => {
                    deleted.insert(DocumentId::parse(id).unwrap());
                }
                ["TRY-DEL", _, id] => {
                    maybe_deleted.insert(DocumentId::parse(id).unwrap());
                }
                _ => {}
            }
        }
        assert!(
            acked.len() > before,
            "round {round}: the child acknowledged nothing: {lines:?}\n{}",
            std::fs::read_to_string(child_log.path()).unwrap_or_default()
        );

        let v = Vault::open(dir.path(), &master()).unwrap();
        if v.recovery().unclean {
            recovered_unclean += 1;
        }
        for a in &acked {
            match v.document(&a.owner, &a.id) {
                Ok(doc) => {
                    assert!(!deleted.contains(&a.id), "round {round}: acknowledged delete of {} undone", a.id);
                    assert_eq!(doc.meta.digest, a.digest);
                    let data = v.read_content(&a.owner, &a.digest).unwrap();
                    assert_eq!(data, content_of(a.round, a.content), "round {round}: {} differs", a.id);
                }
                Err(Error::NotFound(_)) => {
                    assert!(maybe_deleted.contains(&a.id), "round {round}: acknowledged document {} lost", a.id);
                }
                Err(e) => panic!("round {round}: reading {}: {e}", a.id),
            }
        }
        let report = v.check(round % 5 == 4 || round + 1 == rounds).unwrap();
        assert!(report.is_clean(), "round {round}: check after kill -9:\n{report}");
        v.close().unwrap();
    }
    assert_eq!(recovered_unclean, rounds, "every kill must be seen as an unclean shutdown");
    eprintln!(
        "{rounds} kills, {} acknowledged documents, {} acknowledged deletes, all intact",
        acked.len(),
        deleted.len()
    );
}

const AUDIT_CHILD_ENV: &str = "VAULT_AUDIT_CRASH_CHILD_DIR";
const AUDIT_THREADS: u32 = 6;

/// The audit child: several threads, each for its own owner, hammer audited calls (reads, and
/// deposits whose change is in the entry's batch), report each acknowledged entry's index, and
/// now and then the checkpoint they were handed.
#[test]
fn audit_crash_child() {
    let Ok(dir) = std::env::var(AUDIT_CHILD_ENV) else {
        return;
    };
    let v = std::sync::Arc::new(Vault::open(dir.as_ref(), &master()).unwrap());
    let threads: Vec<_> = (0..AUDIT_THREADS)
        .map(|t| {
            let v = v.clone();
            std::thread::spawn(move || {
                let owner = owner(100 + t);
                let caller = vault::access::Caller::owner(owner.clone());
                let mut last = v.owner_entries(&owner).unwrap().last().map(|e| e.index);
                for i in 0u64.. {
                    let doc = if i % 3 == 2 {
                        let data = format!("audit crash {t} {i} {}", std::process::id()).into_bytes();
                        let new = new_doc(Digest::of(&data), "cccd");
                        Some(v.put_document_as(&caller, &owner, data.as_slice(), new).unwrap().1.id)
                    } else {
                        v.documents_as(&caller, &owner, None).unwrap();
                        None
                    };
                    // The one new entry about this owner is this call's (one caller per owner).
                    let page = v.owner_entries_page(&owner, last, vault::log::audit::PageLimit::MAX).unwrap();
                    assert_eq!(page.entries.len(), 1);
                    let e = &page.entries[0];
                    last = Some(e.index);
                    let doc = doc.map_or("-".to_owned(), |d| d.to_string());
                    report(&format!("AUD {owner} {} {} {doc}", e.index, e.action));
                    if i % 16 == 15 {
                        let note = v.checkpoint().unwrap();
                        let mut lines = note.lines().skip(1);
                        report(&format!("CKPT {} {}", lines.next().unwrap(), lines.next().unwrap()));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

struct AckedEntry {
    owner: OwnerId,
    index: u64,
    action: String,
    document: Option<DocumentId>,
}

#[test]
fn kill9_the_sequencer_never_loses_or_reuses_an_acknowledged_entry() {
    use base64::Engine as _;
    let rounds: u64 = std::env::var("VAULT_CRASH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<AckedEntry> = Vec::new();
    let mut indexes = std::collections::HashSet::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    let mut last_checkpoint: Option<(u64, [u8; 32])> = None;
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "audit_crash_child", "--nocapture", "--test-threads=1"])
            .env(AUDIT_CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let mut lines = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
                let first = l.contains("AUD ");
                lines.push(l);
                if first {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10 + next(&mut rng) % 300));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let before = acked.len();
        let mut checkpoints = Vec::new();
        for l in &lines {
            let l = ["AUD ", "CKPT "].iter().filter_map(|m| l.find(m)).min().map_or(l.as_str(), |i| &l[i..]);
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["AUD", o, i, a, d] => {
                    let index: u64 = i.parse().unwrap();
                    assert!(indexes.insert(index), "round {round}: index {index} acknowledged twice");
                    acked.push(AckedEntry {
                        owner: OwnerId::parse(o).unwrap(),
                        index,
                        action: a.to_string(),
                        document: (*d != "-").then(|| DocumentId::parse(d).unwrap()),
                    })
                }
                ["CKPT", s, r] => {
                    let root: [u8; 32] =
                        base64::engine::general_purpose::STANDARD.decode(r).unwrap().try_into().unwrap();
                    checkpoints.push((s.parse::<u64>().unwrap(), root));
                }
                _ => {}
            }
        }
        assert!(acked.len() > before, "round {round}: the child acknowledged nothing: {lines:?}");

        let v = Vault::open(dir.path(), &master()).unwrap();
        let size = v.audit_size().unwrap();
        let root = v.audit_root(size).unwrap();
        // Every acknowledged entry is there, at its index, about its owner, with its change.
        for a in &acked {
            assert!(a.index < size, "round {round}: entry {} lost (size {size})", a.index);
            let e = v.owner_entry(&a.owner, a.index).unwrap();
            let e = e.unwrap_or_else(|| panic!("round {round}: entry {} is not {}'s", a.index, a.owner));
            assert_eq!((e.index, e.action.as_str(), e.document), (a.index, a.action.as_str(), a.document));
            if let Some(id) = a.document {
                v.document(&a.owner, &id).unwrap();
            }
            let p = v.inclusion_proof(a.index, size).unwrap();
            assert_eq!(p.leaf_hash, vault::log::merkle::leaf_hash(&v.leaf(a.index).unwrap()));
            assert!(vault::log::merkle::verify_inclusion(&p.leaf_hash, a.index, size, &p.hashes, &root));
        }
        // No index was given to two entries: each owner's entries are distinct leaves.
        let mut all = std::collections::HashSet::new();
        for t in 0..AUDIT_THREADS {
            for e in v.owner_entries(&owner(100 + t)).unwrap() {
                assert!(all.insert(e.index), "round {round}: index {} in two owners' logs", e.index);
            }
        }
        // The tree is consistent with every checkpoint the child was handed, the last above all.
        checkpoints.extend(last_checkpoint);
        for (s, r) in &checkpoints {
            assert!(*s <= size, "round {round}: checkpoint of {s} entries but only {size} left");
            assert_eq!(v.audit_root(*s).unwrap(), *r, "round {round}: the tree forks from checkpoint {s}");
            let c = v.consistency_proof(*s, size).unwrap();
            assert!(vault::log::merkle::verify_consistency(*s, size, r, &root, &c), "round {round}: checkpoint {s}");
        }
        last_checkpoint = checkpoints.into_iter().max_by_key(|(s, _)| *s).or(last_checkpoint);
        let report = v.check(false).unwrap();
        assert!(report.is_clean(), "round {round}: check after kill -9:\n{report}");
        v.close().unwrap();
    }
    eprintln!("{rounds} kills, {} acknowledged audit entries, all present once", acked.len());
}
