//! Two vault instances on one PostgreSQL database and one S3 bucket (SPEC.md §9a "Several
//! instances"), in one test process: each instance is a `Vault` of its own with its own stores
//! (connections, caches, sequencer), so they share nothing but the database and the bucket, as
//! two servers do. Every promise one instance keeps holds across the two: `max_uses` exact under
//! racing reads at both, a revocation or an erasure at one refused at the other on the very next
//! call, one audit log (no index twice, no gap, the same root at both) and a clean `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::Read;
use std::sync::Arc;

use common::pg;
use common::s3;
use common::*;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::NewAgency;
use vault::storage::pg_store::PgMeta;
use vault::{AgencyId, DocType, Error, Purpose, Timestamp, Vault};

struct Pair {
    a: Arc<Vault>,
    b: Arc<Vault>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    _db: pg::PgDb,
    _s3: s3::S3Server,
}

fn two_instances(name: &str) -> Pair {
    let db = pg::database();
    let server = s3::S3Server::start(name);
    let open = |dir: &tempfile::TempDir| {
        let meta = PgMeta::open(&db.url).unwrap();
        let blobs = server.blobs("shared", dir.path().join("spool"));
        Arc::new(Vault::open_with(Box::new(meta), Box::new(blobs), &master(), None).unwrap())
    };
    let (da, db_) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&da);
    let b = open(&db_);
    assert!(a.shared_store() && b.shared_store());
    Pair { a, b, _dirs: (da, db_), _db: db, _s3: server }
}

fn agency() -> AgencyId {
    AgencyId::parse("ubnd-hn").unwrap()
}

fn purpose() -> Purpose {
    Purpose::parse("1.1").unwrap()
}

fn terms(max_uses: Option<u64>) -> NewGrant {
    NewGrant {
        grantee: agency(),
        purpose: purpose(),
        purpose_text: "Đăng ký kết hôn".into(),
        doc_types: vec![DocType::parse("khai-sinh").unwrap()],
        documents: vec![],
        expires_at: Timestamp::now().plus_seconds(3600),
        max_uses,
    }
}

fn read_all(v: &Vault, caller: &Caller, o: &vault::OwnerId, id: &vault::DocumentId) -> Result<Vec<u8>, Error> {
    let (_, mut r) = v.content_as(caller, o, id)?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    Ok(out)
}

/// Eight readers, four at each instance, race for a grant of 5 uses: exactly 5 reads are
/// allowed, and the stored grant counts 5, seen alike from both instances.
#[test]
fn max_uses_is_exact_across_two_instances() {
    let p = two_instances("two-max-uses");
    p.a.put_agency_as(&Caller::operator(), &agency(), NewAgency { name: "UBND".into(), keys: vec![] }).unwrap();
    let citizen = owner(1);
    let data = content(1, 400);
    let doc = put_doc(&p.a, &citizen, &data, "khai-sinh");
    let me = Caller::owner(citizen.clone());
    let g = p.b.grant_as(&me, &citizen, terms(Some(5))).unwrap();
    let ag = Caller::agency(agency(), Some(purpose()));
    let allowed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for (i, v) in [&p.a, &p.b, &p.a, &p.b, &p.a, &p.b, &p.a, &p.b].into_iter().enumerate() {
            let (allowed, ag, citizen, doc, data) = (&allowed, &ag, &citizen, &doc, &data);
            s.spawn(move || {
                for _ in 0..4 {
                    match read_all(v, ag, citizen, &doc.id) {
                        Ok(got) => {
                            assert!(got == *data, "reader {i}: the content");
                            allowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(Error::GrantRequired) => {}
                        Err(e) => panic!("reader {i}: {e}"),
                    }
                }
            });
        }
    });
    assert_eq!(allowed.into_inner(), 5, "exactly max_uses reads across both instances");
    for v in [&p.a, &p.b] {
        let stored = v.grants_as(&me, &citizen).unwrap().into_iter().find(|x| x.id == g.id).unwrap();
        assert_eq!(stored.uses, 5);
        assert!(matches!(read_all(v, &ag, &citizen, &doc.id), Err(Error::GrantRequired)), "exhausted at both");
    }
    assert!(p.a.check(true).unwrap().is_clean());
}

/// A revocation at one instance is refused at the other on the very next call, though the
/// other has just read under the grant (its caches are warm); so is an erasure, and a deposit
/// after it at the other instance starts a fresh owner rather than writing under erased keys.
#[test]
fn revocation_and_erasure_at_one_instance_hold_at_the_other_at_once() {
    let p = two_instances("two-revoke");
    p.a.put_agency_as(&Caller::operator(), &agency(), NewAgency { name: "UBND".into(), keys: vec![] }).unwrap();
    let citizen = owner(2);
    let me = Caller::owner(citizen.clone());
    let ag = Caller::agency(agency(), Some(purpose()));
    let data = content(2, 300);
    let doc = put_doc(&p.a, &citizen, &data, "khai-sinh");
    let g = p.a.grant_as(&me, &citizen, terms(None)).unwrap();
    for _ in 0..3 {
        assert!(read_all(&p.b, &ag, &citizen, &doc.id).unwrap() == data);
        assert!(p.b.document_as(&ag, &citizen, &doc.id).is_ok());
    }
    p.a.revoke_grant_as(&me, &citizen, &g.id).unwrap();
    assert!(matches!(read_all(&p.b, &ag, &citizen, &doc.id), Err(Error::GrantRequired)), "revoked at a");
    assert!(matches!(p.b.document_as(&ag, &citizen, &doc.id), Err(Error::GrantRequired)));

    // Erasure at b while a has the owner's keys warm.
    let g2 = p.a.grant_as(&me, &citizen, terms(None)).unwrap();
    assert!(read_all(&p.a, &ag, &citizen, &doc.id).unwrap() == data);
    p.b.erase_as(&me, &citizen).unwrap();
    assert!(p.a.open_document_content(&citizen, &doc.id).is_err(), "erased at b: gone at a");
    assert!(matches!(read_all(&p.a, &ag, &citizen, &doc.id), Err(Error::NotFound(_))), "{:?}", g2.id);
    // A new deposit at a after the erasure: a fresh owner, readable at b.
    let again = content(3, 200);
    let d2 = put_doc(&p.a, &citizen, &again, "khai-sinh");
    let (_, mut r) = p.b.open_document_content(&citizen, &d2.id).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(out == again, "the fresh owner's document, read at b");
    assert_eq!(p.b.documents_as(&me, &citizen, None).map(|d| d.len()).unwrap_or(0), 1, "only the new one");
    for v in [&p.a, &p.b] {
        assert!(v.check(true).unwrap().is_clean());
    }
}

/// Audited calls at both instances at once make one log: every index once, no gap, each
/// owner's entries listed at either instance alike, the same root at both for every size, and
/// a checkpoint of one consistent with a later one of the other.
#[test]
fn two_instances_append_to_one_audit_log() {
    let p = two_instances("two-log");
    let owners: Vec<_> = (10..18).map(owner).collect();
    std::thread::scope(|s| {
        for (i, o) in owners.iter().enumerate() {
            let v = if i % 2 == 0 { &p.a } else { &p.b };
            s.spawn(move || {
                for n in 0..6 {
                    let d = put_doc(v, o, &content(100 * i as u64 + n, 150), "khai-sinh");
                    v.document_as(&Caller::owner(o.clone()), o, &d.id).unwrap();
                }
            });
        }
    });
    let first = p.a.checkpoint().unwrap();
    let size = p.b.audit_size().unwrap();
    assert_eq!(p.a.audit_size().unwrap(), size, "both see every entry");
    let mut seen = std::collections::BTreeSet::new();
    for o in &owners {
        let at_a: Vec<u64> = p.a.owner_entries(o).unwrap().iter().map(|e| e.index).collect();
        let at_b: Vec<u64> = p.b.owner_entries(o).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(at_a, at_b, "the owner's entries, alike at both");
        assert!(at_a.len() >= 6, "a read entry per document at least");
        for i in at_a {
            assert!(seen.insert(i), "index {i} used twice");
        }
    }
    for i in 0..size {
        assert!(p.a.leaf(i).is_ok(), "leaf {i}: no gap");
    }
    for n in [1, size / 3, size / 2, size] {
        assert_eq!(p.a.audit_root(n).unwrap(), p.b.audit_root(n).unwrap(), "root at {n}");
    }
    // More entries at b, then a checkpoint there: consistent with a's earlier one.
    let d = put_doc(&p.b, &owners[0], &content(9_999, 100), "khai-sinh");
    p.b.document_as(&Caller::owner(owners[0].clone()), &owners[0], &d.id).unwrap();
    let later = p.b.checkpoint().unwrap();
    let size_of = |note: &str| note.lines().nth(1).unwrap().parse::<u64>().unwrap();
    let (m, n) = (size_of(&first), size_of(&later));
    assert!(n > m, "{first}\n{later}");
    let proof = p.a.consistency_proof(m, n).unwrap();
    assert!(!proof.is_empty() || m == n);
    assert_eq!(p.a.consistency_proof(m, n).unwrap(), p.b.consistency_proof(m, n).unwrap());
    for v in [&p.a, &p.b] {
        assert!(v.check(true).unwrap().is_clean());
    }
}

/// An erasure at one instance while the owner's reads are logged at the other: no entry from
/// before the erasure survives it (the erasure lists the owner's entries under the sequencer's
/// lease), so the first of the owner's entries afterwards is the erasure's own, at both.
#[test]
fn an_erasure_leaves_no_earlier_entry_written_at_the_other_instance() {
    let p = two_instances("two-erase-race");
    for round in 0..3u32 {
        let citizen = owner(40 + round);
        let me = Caller::owner(citizen.clone());
        let doc = put_doc(&p.a, &citizen, &content(40 + u64::from(round), 120), "khai-sinh");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..3 {
                let (stop, me, citizen, doc, a) = (&stop, &me, &citizen, &doc, &p.a);
                s.spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        // Allowed before the erasure, refused after it: logged either way.
                        let _ = a.document_as(me, citizen, &doc.id);
                    }
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
            p.b.erase_as(&me, &citizen).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        for v in [&p.a, &p.b] {
            let entries = v.owner_entries(&citizen).unwrap();
            assert_eq!(entries.first().map(|e| e.action.as_str()), Some("owner.erase"), "round {round}");
        }
    }
    assert!(p.a.check(true).unwrap().is_clean());
}

/// The reuse statistics (SPEC.md §23) fold tallies into a day's rollup, a read and a rewrite:
/// folds running in two processes at once while reads are counted at both instances still
/// count every read exactly once (the fold takes `vault-stats-rollup` in the database). The
/// second folding process is this test binary again (`fold_until_killed`), since two `Vault`s
/// in one process would share its in-process lock.
#[test]
fn reuse_statistics_fold_exactly_with_folds_in_two_processes() {
    let p = two_instances("two-stats");
    let citizen = owner(60);
    let me = Caller::owner(citizen.clone());
    let doc = put_doc(&p.a, &citizen, &content(60, 120), "khai-sinh");
    let before = p.a.reuse_totals().unwrap().content_reads;
    let settings: Vec<String> = p._s3.settings().iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fold_until_killed", "--ignored", "--nocapture"])
        .env("FOLD_PG_URL", &p._db.url)
        .env("FOLD_S3_URL", format!("s3://{}/shared", p._s3.bucket))
        .env("FOLD_S3_SETTINGS", settings.join("\n"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child says when its vault is open and it folds.
    let mut said = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    while !said.contains("FOLDING") {
        said.clear();
        assert!(std::io::BufRead::read_line(&mut out, &mut said).unwrap() > 0, "the second process ended");
    }
    let reads = 400u64;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (stop, a) = (&stop, &p.a);
        let folder = s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                a.fold_reuse_stats().unwrap();
            }
        });
        let readers: Vec<_> = [&p.a, &p.b, &p.a, &p.b]
            .into_iter()
            .map(|v| {
                let (me, citizen, doc) = (&me, &citizen, &doc);
                s.spawn(move || {
                    for _ in 0..reads / 4 {
                        read_all(v, me, citizen, &doc.id).unwrap();
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        folder.join().unwrap();
    });
    assert!(child.try_wait().unwrap().is_none(), "the second process was folding all along");
    child.kill().unwrap();
    child.wait().unwrap();
    let after = p.b.reuse_totals().unwrap().content_reads;
    assert_eq!(after as i64 - before as i64, reads as i64, "every content read counted exactly once");
}

/// The other process of `reuse_statistics_fold_exactly_with_folds_in_two_processes`: opens the
/// vault its parent names and folds until it is killed.
#[test]
#[ignore]
fn fold_until_killed() {
    let Ok(url) = std::env::var("FOLD_PG_URL") else { return };
    let settings = std::env::var("FOLD_S3_SETTINGS").unwrap();
    let settings: Vec<(&str, &str)> = settings.lines().filter_map(|l| l.split_once('=')).collect();
    let spool = tempfile::tempdir().unwrap();
    let blobs = vault::storage::s3_store::S3Blobs::open_with(
        &std::env::var("FOLD_S3_URL").unwrap(),
        spool.path().join("spool"),
        &settings,
    )
    .unwrap();
    let v = Vault::open_with(Box::new(PgMeta::open(&url).unwrap()), Box::new(blobs), &master(), None).unwrap();
    v.fold_reuse_stats().unwrap();
    println!("FOLDING");
    loop {
        v.fold_reuse_stats().unwrap();
    }
}
