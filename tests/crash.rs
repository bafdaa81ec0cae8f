//! Crash test: a child process stores documents in a loop (several threads) and reports each
//! acknowledged one; the parent kills it with SIGKILL at a random moment, reopens the vault and
//! checks that every acknowledged document reads back byte-identical, every acknowledged delete
//! stuck, and `check` is clean. `VAULT_CRASH_ROUNDS` sets the number of rounds (default 20).

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
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("VAULT_CRASH_ROUND", round.to_string())
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
        assert!(acked.len() > before, "round {round}: the child acknowledged nothing: {lines:?}");

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
