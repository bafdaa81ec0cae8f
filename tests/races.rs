//! Races that must not lose or corrupt acknowledged data (issue 10): writers racing an
//! erasure (library and HTTP), exports racing other audited calls, and exports that never touch
//! the temp folder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::*;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::json;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::{AgencyKey, NewAgency, PublicKey};
use vault::engine::rights::verify_export;
use vault::{AgencyId, Digest, DocType, Error, KeyId, Purpose, Timestamp, Vault};

const AGENCY: &str = "so-tu-phap";

fn register(v: &Vault) {
    let sk = SigningKey::from_bytes(&[3; 32]);
    let keys = vec![AgencyKey {
        id: KeyId::parse("k1").unwrap(),
        public_key: PublicKey::from_bytes(sk.verifying_key().to_bytes()).unwrap(),
        not_before: Timestamp::parse("2020-01-01T00:00:00Z").unwrap(),
        not_after: None,
    }];
    v.put_agency_as(&Caller::operator(), &AgencyId::parse(AGENCY).unwrap(), NewAgency { name: "Sở".into(), keys })
        .unwrap();
}

fn grant() -> NewGrant {
    NewGrant {
        grantee: AgencyId::parse(AGENCY).unwrap(),
        purpose: Purpose::parse("1.1").unwrap(),
        purpose_text: String::new(),
        doc_types: vec![DocType::parse("cccd").unwrap()],
        documents: vec![],
        expires_at: Timestamp::now().plus_seconds(3600),
        max_uses: None,
    }
}

/// A numeric field of an erasure receipt.
fn receipt_field(text: &str, name: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap().parse().unwrap()
}

/// What one writer thread had acknowledged.
#[derive(Default)]
struct Acked {
    /// Contents whose creation was acknowledged.
    created: Vec<Digest>,
    /// Of those, contents whose (only) document's deletion was acknowledged.
    deleted: Vec<Digest>,
}

/// Several writer threads (uploads, one-step deposits, upload + deposit, grants, deletions)
/// race one erasure of their owner, many times. Afterwards listing, export and `check` are
/// clean, the owner takes fresh writes, and every acknowledged content is either readable or
/// was counted by the erasure (nothing acknowledged vanished after it).
#[test]
fn item_10_1_erasure_racing_writers_leaves_the_owner_usable() {
    const ROUNDS: u64 = 8;
    const WRITERS: u64 = 4;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
        register(&v);
        let o = owner(7);
        let c = Caller::owner(o.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (v, o, c, stop, ops) = (v.clone(), o.clone(), c.clone(), stop.clone(), ops.clone());
                std::thread::spawn(move || {
                    let mut acked = Acked::default();
                    let mut mine = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let data = content(round << 40 | w << 32 | i, 100 + (i as usize % 3) * 20_000);
                        let digest = Digest::of(&data);
                        let result = match i % 5 {
                            0 => v.upload_as(&c, &o, data.as_slice(), Some(digest)).map(|s| {
                                assert!(s.created);
                                acked.created.push(digest);
                            }),
                            1 => {
                                v.put_document_as(&c, &o, data.as_slice(), new_doc(digest, "cccd")).map(|(s, d, _)| {
                                    assert!(s.created);
                                    acked.created.push(digest);
                                    mine.push((d.id, digest));
                                })
                            }
                            2 => v.upload_as(&c, &o, data.as_slice(), Some(digest)).and_then(|s| {
                                acked.created.push(s.digest);
                                v.deposit_as(&c, &o, new_doc(digest, "giay-khai-sinh")).map(|_| ())
                            }),
                            3 => v.grant_as(&c, &o, grant()).map(|_| ()),
                            _ => match mine.pop() {
                                Some((id, d)) => v.delete_as(&c, &o, &id).map(|()| acked.deleted.push(d)),
                                None => Ok(()),
                            },
                        };
                        // Losing the race to the erasure is fine (not held, not found); damage is not.
                        if let Err(e) = result {
                            assert!(
                                matches!(e, Error::Conflict(_) | Error::NotFound(_)),
                                "round {round}: a write racing the erasure failed with {e:?}"
                            );
                        }
                        ops.fetch_add(1, Ordering::SeqCst);
                    }
                    acked
                })
            })
            .collect();
        let wait_for = |n: usize| {
            while ops.load(Ordering::SeqCst) < n {
                std::thread::yield_now();
            }
        };
        wait_for(12);
        let receipt = v.erase_as(&c, &o).unwrap();
        let after = ops.load(Ordering::SeqCst);
        wait_for(after + 12);
        stop.store(true, Ordering::SeqCst);
        let acked: Vec<Acked> = writers.into_iter().map(|t| t.join().unwrap()).collect();

        let docs = v.documents_as(&c, &o, None).unwrap();
        let mut tar = Vec::new();
        v.export_as(&c, &o, &mut tar).unwrap();
        let summary = verify_export(tar.as_slice(), &v.signer().verifier_key()).unwrap();
        assert_eq!(summary.documents, docs.len());
        let report = v.check(true).unwrap();
        assert!(report.is_clean(), "round {round}: check after the race:\n{report}");
        // Every acknowledged content not deleted is held now, or was erased (and counted).
        let deleted: HashSet<Digest> = acked.iter().flat_map(|a| a.deleted.iter().copied()).collect();
        let live: Vec<Digest> =
            acked.iter().flat_map(|a| a.created.iter().copied()).filter(|d| !deleted.contains(d)).collect();
        let gone = live.iter().filter(|d| !v.holds(&o, d).unwrap()).count() as u64;
        assert_eq!(gone, receipt_field(&receipt.text, "contents"), "round {round}: acknowledged contents lost");
        // The owner takes fresh writes, readable at once.
        let data = content(round << 40 | 0xff << 32, 50_000);
        let (_, doc) = v.put_document(&o, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap();
        assert_eq!(v.read_content(&o, &doc.meta.digest).unwrap(), data);
        assert!(v.documents(&o, None).unwrap().iter().any(|d| d.id == doc.id));
        assert!(v.check(true).unwrap().is_clean());
        drop(v);
        let v = Vault::open(dir.path(), &master()).unwrap();
        assert_eq!(v.read_content(&o, &doc.meta.digest).unwrap(), data);
    }
}

/// Exports run while other threads make audited calls (the log grows between any two reads of
/// its size): every export verifies offline.
#[test]
fn item_10_2_export_verifies_under_concurrent_audited_calls() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
    let o = owner(8);
    let c = Caller::owner(o.clone());
    let data = content(1, 10_000);
    v.put_document_as(&c, &o, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3u32)
        .map(|t| {
            let (v, stop) = (v.clone(), stop.clone());
            // Other owners: the log grows, the exported owner's entries stay few.
            let who = owner(100 + t);
            std::thread::spawn(move || {
                let c = Caller::owner(who.clone());
                while !stop.load(Ordering::SeqCst) {
                    v.documents_as(&c, &who, None).unwrap();
                }
            })
        })
        .collect();
    let key = v.signer().verifier_key();
    for i in 0..20 {
        let mut tar = Vec::new();
        v.export_as(&c, &o, &mut tar).unwrap();
        let summary = verify_export(tar.as_slice(), &key)
            .unwrap_or_else(|e| panic!("export {i} under load does not verify: {e}"));
        assert_eq!(summary.documents, 1);
        assert!(summary.entries >= 2);
    }
    stop.store(true, Ordering::SeqCst);
    for t in callers {
        t.join().unwrap();
    }
}

/// Over HTTP: uploads race the owner's erasure. No upload acknowledged with 201 vanishes unless
/// the erasure counted it; afterwards listing, export and `check` are clean.
#[test]
fn item_10_1_erasure_racing_uploads_over_http() {
    let s = Server::start(&[]);
    let t = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let ops = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::new(s);
    let uploaders: Vec<_> = (0..4u64)
        .map(|w| {
            let (s, t, base, ops, stop) = (s.clone(), t.clone(), base.clone(), ops.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut created = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let data = content(w << 32 | i, 1000 + (i as usize % 2) * 60_000);
                    let digest = Digest::of(&data);
                    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&t), &[], Some(&data));
                    match r.status {
                        201 => created.push(digest),
                        // A clean failure of an upload that lost the race is allowed; 5xx is not.
                        s => assert!(s < 500, "upload racing the erasure: {s} {}", String::from_utf8_lossy(&r.body)),
                    }
                    ops.fetch_add(1, Ordering::SeqCst);
                }
                created
            })
        })
        .collect();
    let wait_for = |n: usize| {
        while ops.load(Ordering::SeqCst) < n {
            std::thread::yield_now();
        }
    };
    wait_for(10);
    let r = call("DELETE", &s.url(&base), Some(&t), &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let erased = receipt_field(r.json()["text"].as_str().unwrap(), "contents");
    wait_for(ops.load(Ordering::SeqCst) + 10);
    stop.store(true, Ordering::SeqCst);
    let created: Vec<Digest> = uploaders.into_iter().flat_map(|u| u.join().unwrap()).collect();
    let hex: Vec<String> = created.iter().map(|d| d.to_hex()).collect();
    let r = post_json(&s.url(&format!("{base}/contents/missing")), &t, None, &json!({"digests": hex}));
    assert_eq!(r.status, 200);
    let missing = r.json()["missing"].as_array().unwrap().len() as u64;
    assert_eq!(missing, erased, "acknowledged uploads vanished after the erasure");
    assert_eq!(call("GET", &s.url(&format!("{base}/documents")), Some(&t), &[], None).status, 200);
    let r = call("GET", &s.url(&format!("{base}/export")), Some(&t), &[], None);
    assert_eq!(r.status, 200);
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    verify_export(r.body.as_slice(), key["note_verifier_key"].as_str().unwrap()).unwrap();
    let out = Arc::into_inner(s).unwrap().stop_and_check();
    assert!(out.status.success(), "check after the race:\n{}", String::from_utf8_lossy(&out.stdout));
}

/// The server builds exports without a temp file: with `TMPDIR` pointing at a folder that does
/// not exist (no file can be made there; the old code failed with 500), an export still
/// streams and verifies, and nothing created the folder.
#[test]
fn item_10_5_export_writes_no_plaintext_to_the_temp_folder() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp-that-does-not-exist");
    let s = Server::start_env(dir, free_port(), &[], &[("TMPDIR", &tmp)]);
    let t = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let data = content(5, 3 << 20);
    let digest = Digest::of(&data);
    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&t), &[], Some(&data));
    assert_eq!(r.status, 201);
    let body = serde_json::to_value(new_doc(digest, "cccd")).unwrap();
    let r = post_json(&s.url(&format!("{base}/documents")), &t, None, &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = call("GET", &s.url(&format!("{base}/export")), Some(&t), &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    let summary = verify_export(r.body.as_slice(), key["note_verifier_key"].as_str().unwrap()).unwrap();
    assert_eq!(summary.documents, 1);
    assert!(!tmp.exists());
}

/// Concurrent agency reads under one grant: `max_uses` is exact (count vs count), and a
/// revocation racing the reads is never undone by a read counted before it.
#[test]
fn grant_uses_are_exact_and_revocation_sticks_under_concurrent_reads() {
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
    register(&v);
    let o = owner(7);
    let me = Caller::owner(o.clone());
    let data = content(7, 10 * 1024);
    v.put_document_as(&me, &o, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap();
    let doc = v.documents_as(&me, &o, None).unwrap().remove(0);
    let agency = || Caller::agency(AgencyId::parse(AGENCY).unwrap(), Some(Purpose::parse("1.1").unwrap()));

    // 1. max_uses 50, 8 readers × 20 attempts: exactly 50 reads served, the grant says 50.
    let limited = v.grant_as(&me, &o, NewGrant { max_uses: Some(50), ..grant() }).unwrap();
    let served = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..20 {
                    match v.content_as(&agency(), &o, &doc.id) {
                        Ok(_) => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Error::GrantRequired) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
    });
    assert_eq!(served.load(Ordering::SeqCst), 50);
    let g = v.grants_as(&me, &o).unwrap().into_iter().find(|g| g.id == limited.id).unwrap();
    assert_eq!(g.uses, 50);
    v.revoke_grant_as(&me, &o, &limited.id).unwrap();

    // 2. An unlimited grant, read by 8 threads while the owner revokes it: once the revocation
    // returns no read is served, and the stored grant stays revoked with every served use.
    for round in 0..5 {
        let open = v.grant_as(&me, &o, grant()).unwrap();
        let served = AtomicUsize::new(0);
        let revoked = AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..30 {
                        let after_revoke = revoked.load(Ordering::SeqCst);
                        match v.content_as(&agency(), &o, &doc.id) {
                            Ok(_) => {
                                assert!(!after_revoke, "round {round}: a read after the revocation was served");
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(Error::GrantRequired) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                });
            }
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(5 * round));
                v.revoke_grant_as(&me, &o, &open.id).unwrap();
                revoked.store(true, Ordering::SeqCst);
            });
        });
        let g = v.grants_as(&me, &o).unwrap().into_iter().find(|g| g.id == open.id).unwrap();
        assert!(g.revoked_at.is_some(), "round {round}: the revocation was overwritten");
        assert_eq!(g.uses, served.load(Ordering::SeqCst) as u64, "round {round}");
        assert!(matches!(v.content_as(&agency(), &o, &doc.id), Err(Error::GrantRequired)));
    }
    // What was stored survives a reopen: every grant revoked, the limited one at 50 uses.
    drop(v);
    let v = Vault::open(dir.path(), &master()).unwrap();
    let grants = v.grants_as(&me, &o).unwrap();
    assert_eq!(grants.len(), 6);
    assert!(grants.iter().all(|g| g.revoked_at.is_some()));
    assert_eq!(grants.iter().find(|g| g.id == limited.id).unwrap().uses, 50);
}

/// Agencies' reads under a grant (blocking calls and the non-blocking starts the server uses)
/// race an erasure of their owner, many times: a read that starts after the erasure returned is
/// refused, the grant's `max_uses` is never exceeded, every allowed read returned the right
/// bytes, and the vault is clean and usable afterwards.
#[test]
fn erasure_racing_grant_reads_serves_nothing_after_it() {
    use std::time::Instant;
    use vault::access::{ReadPoll, Started};
    const ROUNDS: u64 = 6;
    const MAX_USES: u64 = 40;
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().unwrap();
        let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
        register(&v);
        let o = owner(9);
        let c = Caller::owner(o.clone());
        let data = content(round, 12_000);
        let (_, doc, _) = v.put_document_as(&c, &o, data.as_slice(), new_doc(Digest::of(&data), "cccd")).unwrap();
        let mut terms = grant();
        terms.max_uses = Some(MAX_USES);
        v.grant_as(&c, &o, terms).unwrap();
        let a = Caller::agency(AgencyId::parse(AGENCY).unwrap(), Some(Purpose::parse("1.1").unwrap()));
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..4u32)
            .map(|t| {
                let (v, o, a, stop, ops, data) =
                    (v.clone(), o.clone(), a.clone(), stop.clone(), ops.clone(), data.clone());
                std::thread::spawn(move || {
                    // (when the call started, whether it was allowed)
                    let mut seen: Vec<(Instant, bool)> = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let r = if t % 2 == 0 {
                            v.content_as(&a, &o, &doc.id)
                        } else {
                            match v.start_content_as(&a, &o, &doc.id) {
                                Started::Blocking => v.content_as(&a, &o, &doc.id),
                                Started::Queued(mut read) => {
                                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                                    loop {
                                        match v.poll_read(&mut read, &mut cx) {
                                            ReadPoll::Ready => break,
                                            ReadPoll::Lead => {
                                                let v = v.clone();
                                                std::thread::spawn(move || v.lead_queue());
                                            }
                                            ReadPoll::Pending => std::thread::yield_now(),
                                        }
                                    }
                                    v.finish_read(read)
                                }
                            }
                        };
                        match r {
                            Ok((_, mut reader)) => {
                                let mut out = Vec::new();
                                std::io::Read::read_to_end(&mut reader, &mut out).unwrap();
                                assert!(out == data, "round {round}: an allowed read returned other bytes");
                                seen.push((started, true));
                            }
                            Err(e) => {
                                assert!(
                                    matches!(e, Error::GrantRequired | Error::NotFound(_)),
                                    "round {round}: a read racing the erasure failed with {e:?}"
                                );
                                seen.push((started, false));
                            }
                        }
                        ops.fetch_add(1, Ordering::SeqCst);
                    }
                    seen
                })
            })
            .collect();
        let wait_for = |n: usize| {
            while ops.load(Ordering::SeqCst) < n {
                std::thread::yield_now();
            }
        };
        wait_for(8 + round as usize * 4);
        v.erase_as(&c, &o).unwrap();
        let erased = Instant::now();
        let after = ops.load(Ordering::SeqCst);
        wait_for(after + 16);
        stop.store(true, Ordering::SeqCst);
        let seen: Vec<(Instant, bool)> = readers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let allowed = seen.iter().filter(|(_, ok)| *ok).count() as u64;
        assert!(allowed <= MAX_USES, "round {round}: {allowed} reads allowed under a grant of {MAX_USES}");
        let late = seen.iter().filter(|(at, ok)| *ok && *at > erased).count();
        assert_eq!(late, 0, "round {round}: {late} reads that started after the erasure were allowed");
        assert!(seen.iter().any(|(at, _)| *at > erased), "round {round}: no read ran after the erasure");
        assert!(v.check(true).unwrap().is_clean(), "round {round}: check after the race");
        // The owner starts afresh: no document, and the log's tree still verifies.
        assert!(v.documents_as(&c, &o, None).unwrap().is_empty());
        let size = v.audit_size().unwrap();
        let root = v.audit_root(size).unwrap();
        for i in [0, size / 2, size - 1] {
            let p = v.inclusion_proof(i, size).unwrap();
            assert!(
                vault::log::merkle::verify_inclusion(&p.leaf_hash, i, size, &p.hashes, &root),
                "round {round}: leaf {i}"
            );
        }
    }
}
