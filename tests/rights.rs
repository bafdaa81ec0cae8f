//! Owner rights (erasure, export) and master-key rotation, including rotation interrupted by
//! SIGKILL at random points and then resumed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use ed25519_dalek::SigningKey;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::{sign_statement, statement, AgencyKey, NewAgency, PublicKey};
use vault::engine::rights::verify_export;
use vault::engine::rotation::rotate_master_key;
use vault::{AgencyId, Digest, DocType, Error, KeyId, MasterKey, Purpose, Timestamp, Vault};

fn setup_agency(v: &Vault) -> SigningKey {
    let sk = SigningKey::from_bytes(&[3; 32]);
    let keys = vec![AgencyKey {
        id: KeyId::parse("k1").unwrap(),
        public_key: PublicKey::from_bytes(sk.verifying_key().to_bytes()).unwrap(),
        not_before: Timestamp::parse("2020-01-01T00:00:00Z").unwrap(),
        not_after: None,
    }];
    v.put_agency_as(
        &Caller::operator(),
        &AgencyId::parse("so-tu-phap").unwrap(),
        NewAgency { name: "Sở Tư pháp".into(), keys },
    )
    .unwrap();
    sk
}

/// Stores a signed and an unsigned document, a grant and a few access-log entries for `o`.
fn populate(v: &Vault, sk: &SigningKey, o: &vault::OwnerId, seed: u64) -> Vec<Vec<u8>> {
    let iss = Caller::agency(AgencyId::parse("so-tu-phap").unwrap(), None);
    let signed = content(seed, 70_000);
    let mut d = new_doc(Digest::of(&signed), "giay-khai-sinh");
    d.issuer = Some(AgencyId::parse("so-tu-phap").unwrap());
    d.issued_at = Some(Timestamp::parse("2024-05-06T07:08:09Z").unwrap());
    d.signature = Some(sign_statement(sk, &KeyId::parse("k1").unwrap(), &statement(o, signed.len() as u64, &d)));
    v.put_document_as(&iss, o, signed.as_slice(), d).unwrap();
    let own = content(seed + 1, 1234);
    let c = Caller::owner(o.clone());
    v.put_document_as(&c, o, own.as_slice(), new_doc(Digest::of(&own), "cccd")).unwrap();
    v.grant_as(
        &c,
        o,
        NewGrant {
            grantee: AgencyId::parse("so-tu-phap").unwrap(),
            purpose: Purpose::parse("1.1").unwrap(),
            purpose_text: String::new(),
            doc_types: vec![DocType::parse("cccd").unwrap()],
            documents: vec![],
            expires_at: Timestamp::now().plus_seconds(3600),
            max_uses: None,
        },
    )
    .unwrap();
    v.documents_as(&c, o, None).unwrap();
    vec![signed, own]
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn erasure_shreds_the_owner_and_keeps_the_log_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let v = Vault::open(&live, &master()).unwrap();
    let sk = setup_agency(&v);
    let (a, b) = (owner(1), owner(2));
    populate(&v, &sk, &a, 10);
    let b_data = populate(&v, &sk, &b, 20);
    let before_size = v.audit_size().unwrap();
    let before_root = v.audit_root(before_size).unwrap();
    let a_docs = v.documents(&a, None).unwrap();
    v.close().unwrap();
    let copy = dir.path().join("copy-before");
    copy_dir(&live, &copy);

    let v = Vault::open(&live, &master()).unwrap();
    let c = Caller::owner(a.clone());
    // Only the owner or the operator may erase.
    assert!(matches!(v.erase_as(&Caller::owner(b.clone()), &a), Err(Error::Forbidden)));
    let receipt = v.erase_as(&c, &a).unwrap();
    assert!(receipt.text.starts_with(&format!("vault-erasure-receipt-v1\nowner:{a}\n")), "{}", receipt.text);
    assert!(receipt.text.contains("documents:2\ncontents:2\ngrants:1\n"), "{}", receipt.text);
    let sig: [u8; 64] = B64.decode(&receipt.signature).unwrap().try_into().unwrap();
    assert!(PublicKey::from_bytes(v.signer().public_key()).unwrap().verify(receipt.text.as_bytes(), &sig));

    // Everything about the owner is gone; the access log keeps only the erasure entry.
    assert!(v.documents_as(&c, &a, None).unwrap().is_empty());
    for d in &a_docs {
        assert!(matches!(v.document_as(&c, &a, &d.id), Err(Error::NotFound(_))));
        assert!(matches!(v.content_as(&c, &a, &d.id), Err(Error::NotFound(_))));
        assert!(matches!(v.open_content(&a, &d.meta.digest), Err(Error::NotFound(_))));
    }
    assert!(v.grants_as(&c, &a).unwrap().is_empty());
    let log = v.access_log_as(&c, &a).unwrap();
    assert!(log.iter().any(|e| e.action == "owner.erase"));
    assert!(log.iter().all(|e| e.action == "owner.erase" || e.index > before_size), "{log:?}");
    // Only the other owner's blob directory is left.
    let mut dirs: Vec<_> =
        files_below(&live.join("blobs")).iter().filter_map(|f| f.parent().map(|p| p.to_path_buf())).collect();
    dirs.dedup();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    // The other owner is untouched, and the log still verifies against the older checkpoint.
    for data in &b_data {
        assert!(v.read_content(&b, &Digest::of(data)).unwrap() == *data, "the other owner's content changed");
    }
    let size = v.audit_size().unwrap();
    let proof = v.consistency_proof(before_size, size).unwrap();
    assert!(vault::log::merkle::verify_consistency(
        before_size,
        size,
        &before_root,
        &v.audit_root(size).unwrap(),
        &proof
    ));
    assert!(v.check(true).unwrap().is_clean());
    // New uploads start a fresh vault for that owner.
    let fresh = put_doc(&v, &a, b"fresh start", "cccd");
    assert_eq!(v.documents(&a, None).unwrap(), vec![fresh]);
    v.close().unwrap();

    // Rotate the master key: the copy taken before the erasure is now useless without the old
    // key file, and nothing of the erased owner opens with the new one.
    let new_key = MasterKey::from_bytes([77; 32]);
    rotate_master_key(&live, &master(), &new_key).unwrap();
    assert!(matches!(Vault::open(&copy, &new_key), Err(Error::WrongMasterKey)));
    let v = Vault::open(&live, &new_key).unwrap();
    for d in &a_docs {
        assert!(v.open_content(&a, &d.meta.digest).is_err());
    }
    v.close().unwrap();
    // What the old key file still opens (documented in SPEC.md): the pre-erasure copy.
    let old = Vault::open(&copy, &master()).unwrap();
    assert_eq!(old.documents(&a, None).unwrap().len(), 2);
}

#[test]
fn export_round_trip_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let sk = setup_agency(&v);
    let o = owner(5);
    let datas = populate(&v, &sk, &o, 30);
    let c = Caller::owner(o.clone());
    let mut tar = Vec::new();
    v.export_as(&c, &o, &mut tar).unwrap();
    let key = v.signer().verifier_key();
    let summary = verify_export(tar.as_slice(), &key).unwrap();
    assert_eq!((summary.documents, summary.signed_documents), (2, 1));
    assert_eq!(summary.entries, v.access_log_as(&c, &o).unwrap().len());
    assert!(summary.entries >= 5);
    // Only the owner exports.
    assert!(matches!(v.export_as(&Caller::owner(owner(6)), &o, Vec::new()), Err(Error::Forbidden)));

    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle).unwrap();
    // A content byte.
    let mut t = tar.clone();
    let at = find(&t, &datas[0][..64]) + 10;
    t[at] ^= 1;
    assert!(verify_export(t.as_slice(), &key).unwrap_err().to_string().contains("does not match its digest"));
    // A signed field in the manifest (same length, so the tar stays well-formed).
    let mut t = tar.clone();
    let at = find(&t, b"\"reference\": \"123/2024/TLKS\"") + 14;
    t[at] = b'9';
    assert!(verify_export(t.as_slice(), &key).is_err());
    // The checkpoint.
    let mut t = tar.clone();
    let at = find(&t, format!("{}\n", v.log_origin()).as_bytes()) + v.log_origin().len() + 1;
    t[at] = if t[at] == b'1' { b'2' } else { b'1' };
    assert!(verify_export(t.as_slice(), &key).is_err());
    // An audit entry's outcome.
    let mut t = tar.clone();
    let at = find(&t, b"\"outcome\": \"allowed\"") + 12;
    t[at] = b'X';
    assert!(verify_export(t.as_slice(), &key).is_err());
    // Another vault's key.
    let other = Vault::open(&dir.path().join("other"), &master()).unwrap();
    assert!(verify_export(tar.as_slice(), &other.signer().verifier_key()).is_err());
    // Garbage.
    assert!(verify_export(&b"not a tar"[..], &key).is_err());
}

const CHILD_ENV: &str = "VAULT_ROTATE_CHILD_DIR";

/// Child: rotates from key `VAULT_ROTATE_FROM` to `VAULT_ROTATE_TO` (one byte each).
#[test]
fn rotate_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let byte = |n: &str| MasterKey::from_bytes([std::env::var(n).unwrap().parse().unwrap(); 32]);
    use std::io::Write as _;
    let meta = vault::storage::sled::SledMeta::open(&std::path::Path::new(&dir).join("meta")).unwrap();
    println!("START");
    std::io::stdout().flush().unwrap();
    vault::engine::rotation::rotate(&meta, &byte("VAULT_ROTATE_FROM"), &byte("VAULT_ROTATE_TO")).unwrap();
    println!("DONE");
}

#[test]
fn rotation_killed_at_random_points_then_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let n_owners = 1500u32;
    let mut docs = Vec::new();
    {
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([1; 32])).unwrap();
        for i in 0..n_owners {
            let o = owner(1000 + i);
            let data = content(u64::from(i), 100);
            docs.push((o.clone(), put_doc(&v, &o, &data, "cccd"), data));
        }
        v.close().unwrap();
    }
    let mut rng = 0x1234_5678_9abc_def0u64 ^ u64::from(std::process::id());
    let mut interrupted = 0;
    for round in 1..=6u8 {
        let (from, to) = (round, round + 1);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "rotate_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("VAULT_ROTATE_FROM", from.to_string())
            .env("VAULT_ROTATE_TO", to.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child has opened the store, then kill it a random moment later.
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // libtest prints "test rotate_child ... " before the test's own output, on the same line.
        while !line.contains("START") {
            line.clear();
            if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
                break;
            }
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_micros(rng % 25_000));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let (old, new) = (MasterKey::from_bytes([from; 32]), MasterKey::from_bytes([to; 32]));
        // Interrupted or not, the vault opens with neither key until the rotation is finished,
        // except when the child finished (then the new key opens it) or never started.
        match Vault::open(dir.path(), &new) {
            Ok(v) => v.close().unwrap(),
            Err(Error::RotationInProgress) => interrupted += 1,
            Err(Error::WrongMasterKey) => {}
            Err(e) => panic!("round {round}: {e} ({status:?})"),
        }
        // Resume (or run) with the same keys.
        let report = rotate_master_key(dir.path(), &old, &new);
        match report {
            Ok(_) => {}
            // The child had already finished: the old key no longer opens the vault.
            Err(Error::WrongMasterKey) => {}
            Err(e) => panic!("round {round}: resume failed: {e}"),
        }
        assert!(matches!(Vault::open(dir.path(), &old), Err(Error::WrongMasterKey)));
        let v = Vault::open(dir.path(), &new).unwrap();
        for (o, d, data) in &docs {
            assert_eq!(&v.read_content(o, &d.meta.digest).unwrap(), data, "round {round}");
        }
        assert!(v.check(false).unwrap().is_clean());
        v.close().unwrap();
    }
    eprintln!("6 rotations, {interrupted} interrupted mid-way and resumed");
}

#[test]
fn item_9_5_agencies_get_not_found_after_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let sk = setup_agency(&v);
    let o = owner(5);
    populate(&v, &sk, &o, 50);
    let a = Caller::agency(AgencyId::parse("so-tu-phap").unwrap(), Some(Purpose::parse("1.1").unwrap()));
    let cccd = DocType::parse("cccd").unwrap();
    let docs = v.documents_as(&a, &o, None).unwrap();
    assert_eq!(docs.len(), 2, "its own document and the granted one");
    v.content_as(&a, &o, &docs[0].id).unwrap();
    let code = |e: Error| e.code().to_owned();

    // A live owner's unknown document, and an owner the vault never saw: 403, as before.
    let unknown = vault::DocumentId::from_bytes([7; 16]);
    let never = owner(6);
    assert_eq!(code(v.document_as(&a, &o, &unknown).unwrap_err()), "grant_required");
    assert_eq!(code(v.document_as(&a, &never, &unknown).unwrap_err()), "grant_required");
    assert_eq!(code(v.documents_as(&a, &never, None).unwrap_err()), "grant_required");

    v.erase_as(&Caller::owner(o.clone()), &o).unwrap();
    for d in &docs {
        assert_eq!(code(v.document_as(&a, &o, &d.id).unwrap_err()), "not_found");
        assert_eq!(code(v.content_as(&a, &o, &d.id).unwrap_err()), "not_found");
    }
    assert!(v.documents_as(&a, &o, None).unwrap().is_empty());
    let r = v.reuse_as(&a, &o, &Purpose::parse("1.1").unwrap(), std::slice::from_ref(&cccd), None).unwrap();
    assert_eq!(r[0].status, vault::access::ReuseStatus::Missing);
    // Still purpose_required without a purpose; the never-seen owner is unchanged.
    let no_purpose = Caller::agency(AgencyId::parse("so-tu-phap").unwrap(), None);
    assert_eq!(code(v.document_as(&no_purpose, &o, &docs[0].id).unwrap_err()), "purpose_required");
    assert_eq!(code(v.document_as(&a, &never, &unknown).unwrap_err()), "grant_required");
    // A new upload starts a fresh vault: the live-owner answer again.
    v.put_content_bytes(&o, b"fresh").unwrap();
    assert_eq!(code(v.document_as(&a, &o, &docs[0].id).unwrap_err()), "grant_required");
}
