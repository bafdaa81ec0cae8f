//! Provenance, consent, reuse and audit through the principal-aware API of the library.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use ed25519_dalek::SigningKey;
use vault::access::{Caller, ReuseStatus};
use vault::engine::grants::{verify_receipt, GrantStatus, NewGrant};
use vault::engine::provenance::{sign_statement, statement, AgencyKey, NewAgency, PublicKey};
use vault::{AgencyId, Digest, DocType, Error, KeyId, NewDocument, OwnerId, Purpose, Timestamp, Vault};

fn agency(s: &str) -> AgencyId {
    AgencyId::parse(s).unwrap()
}

fn purpose(s: &str) -> Purpose {
    Purpose::parse(s).unwrap()
}

fn signing_key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

fn key(id: &str, sk: &SigningKey, not_before: &str, not_after: Option<&str>) -> AgencyKey {
    AgencyKey {
        id: KeyId::parse(id).unwrap(),
        public_key: PublicKey::from_bytes(sk.verifying_key().to_bytes()).unwrap(),
        not_before: Timestamp::parse(not_before).unwrap(),
        not_after: not_after.map(|t| Timestamp::parse(t).unwrap()),
    }
}

fn register(v: &Vault, id: &str, keys: Vec<AgencyKey>) {
    v.put_agency_as(&Caller::operator(), &agency(id), NewAgency { name: format!("Agency {id}"), keys }).unwrap();
}

/// A signed document by `issuer` with key `k1` (seed `seed`).
fn signed_doc(owner: &OwnerId, data: &[u8], doc_type: &str, issuer: &str, seed: u8) -> NewDocument {
    let mut d = new_doc(Digest::of(data), doc_type);
    d.issuer = Some(agency(issuer));
    d.issued_at = Some(Timestamp::parse("2025-01-02T03:04:05Z").unwrap());
    d.procedure = Some(purpose("1.001193"));
    let st = statement(owner, data.len() as u64, &d);
    d.signature = Some(sign_statement(&signing_key(seed), &KeyId::parse("k1").unwrap(), &st));
    d
}

fn grant_terms(grantee: &str, p: &str, types: &[&str], max_uses: Option<u64>, secs: i64) -> NewGrant {
    NewGrant {
        grantee: agency(grantee),
        purpose: purpose(p),
        purpose_text: "Đăng ký kết hôn".into(),
        doc_types: types.iter().map(|t| DocType::parse(t).unwrap()).collect(),
        documents: vec![],
        expires_at: Timestamp::now().plus_seconds(secs),
        max_uses,
    }
}

#[test]
fn signed_deposits_verify_and_forgeries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", Some("2030-01-01T00:00:00Z"))]);
    let o = owner(1);
    let data = content(1, 5000);
    let iss = Caller::agency(agency("ubnd-xa"), None);
    v.upload_as(&iss, &o, data.as_slice(), Some(Digest::of(&data))).unwrap();

    let good = signed_doc(&o, &data, "giay-khai-sinh", "ubnd-xa", 1);
    let doc = v.deposit_as_caller(&iss, &o, good.clone()).unwrap();
    assert!(doc.verified);

    // Forged (another key), truncated, flipped, not base64, missing.
    let mut forged = good.clone();
    forged.signature = signed_doc(&o, &data, "giay-khai-sinh", "ubnd-xa", 2).signature;
    assert!(matches!(v.deposit_as_caller(&iss, &o, forged), Err(Error::InvalidSignature(_))));
    let mut truncated = good.clone();
    let sig = truncated.signature.as_mut().unwrap();
    sig.value = B64.encode(&B64.decode(&sig.value).unwrap()[..63]);
    assert!(matches!(v.deposit_as_caller(&iss, &o, truncated), Err(Error::InvalidSignature(_))));
    let mut flipped = good.clone();
    let sig = flipped.signature.as_mut().unwrap();
    let mut raw = B64.decode(&sig.value).unwrap();
    raw[5] ^= 1;
    sig.value = B64.encode(raw);
    assert!(matches!(v.deposit_as_caller(&iss, &o, flipped), Err(Error::InvalidSignature(_))));
    let mut garbage = good.clone();
    garbage.signature.as_mut().unwrap().value = "not base64!".into();
    assert!(matches!(v.deposit_as_caller(&iss, &o, garbage), Err(Error::InvalidSignature(_))));
    let mut unsigned = good.clone();
    unsigned.signature = None;
    assert!(matches!(v.deposit_as_caller(&iss, &o, unsigned), Err(Error::InvalidSignature(_))));
    // A signed field changed after signing.
    let mut altered = good.clone();
    altered.title = "Giấy khai tử".into();
    assert!(matches!(v.deposit_as_caller(&iss, &o, altered), Err(Error::InvalidSignature(_))));
    // Unknown key id, and a key outside its validity window at issued_at.
    let mut unknown = good.clone();
    unknown.signature.as_mut().unwrap().key_id = KeyId::parse("k9").unwrap();
    assert!(matches!(v.deposit_as_caller(&iss, &o, unknown), Err(Error::UnknownIssuerKey(_))));
    let mut early = good.clone();
    early.issued_at = Some(Timestamp::parse("2019-12-31T23:59:59Z").unwrap());
    let st = statement(&o, data.len() as u64, &early);
    early.signature = Some(sign_statement(&signing_key(1), &KeyId::parse("k1").unwrap(), &st));
    assert!(matches!(v.deposit_as_caller(&iss, &o, early), Err(Error::UnknownIssuerKey(_))));
    // Depositing as another agency, or as an unregistered one.
    let other = Caller::agency(agency("ubnd-khac"), None);
    assert!(matches!(v.deposit_as_caller(&other, &o, good.clone()), Err(Error::Forbidden)));
    register(&v, "ubnd-khac", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    assert!(matches!(v.deposit_as_caller(&other, &o, good.clone()), Err(Error::Forbidden)));
    // The owner deposits unverified documents only.
    let owner_caller = Caller::owner(o.clone());
    assert!(matches!(v.deposit_as_caller(&owner_caller, &o, good), Err(Error::InvalidRequest(_))));
    let own = v.deposit_as_caller(&owner_caller, &o, new_doc(Digest::of(&data), "cccd")).unwrap();
    assert!(!own.verified);
    assert_eq!(v.documents(&o, None).unwrap().len(), 2);

    // A weak key cannot be registered; a key that signed cannot be dropped or changed.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(PublicKey::from_bytes(identity).is_err());
    let drop_used = NewAgency { name: "x".into(), keys: vec![] };
    assert!(matches!(v.put_agency_as(&Caller::operator(), &agency("ubnd-xa"), drop_used), Err(Error::Conflict(_))));
    let changed = NewAgency { name: "x".into(), keys: vec![key("k1", &signing_key(3), "2020-01-01T00:00:00Z", None)] };
    assert!(matches!(v.put_agency_as(&Caller::operator(), &agency("ubnd-xa"), changed), Err(Error::Conflict(_))));
    // Retiring it by setting not_after is fine, and old documents stay verified.
    let retired = NewAgency {
        name: "x".into(),
        keys: vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", Some("2026-01-01T00:00:00Z"))],
    };
    let (_, created) = v.put_agency_as(&Caller::operator(), &agency("ubnd-xa"), retired).unwrap();
    assert!(!created);
    assert!(v.document(&o, &doc.id).unwrap().verified);
    // Only the operator registers agencies.
    let nope = NewAgency { name: "x".into(), keys: vec![] };
    assert!(matches!(v.put_agency_as(&owner_caller, &agency("new"), nope), Err(Error::Forbidden)));
    assert!(v.check(true).unwrap().is_clean());
}

/// The outcome of one call, as an error code or "ok".
fn code<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().into(),
    }
}

#[test]
fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let o = owner(1);
    let op = Caller::operator();
    for (i, a) in ["iss", "a-match", "a-expired", "a-revoked", "a-used", "a-other-type", "a-none"].iter().enumerate() {
        register(&v, a, vec![key("k1", &signing_key(i as u8 + 1), "2020-01-01T00:00:00Z", None)]);
    }
    let _ = op;
    let data = content(7, 3000);
    let iss = Caller::agency(agency("iss"), None);
    v.upload_as(&iss, &o, data.as_slice(), None).unwrap();
    let doc = v.deposit_as_caller(&iss, &o, signed_doc(&o, &data, "cccd", "iss", 1)).unwrap();
    let owner_c = Caller::owner(o.clone());
    let p = "2.000001";
    v.grant_as(&owner_c, &o, grant_terms("a-match", p, &["cccd"], None, 3600)).unwrap();
    v.grant_as(&owner_c, &o, grant_terms("a-expired", p, &["cccd"], None, 1)).unwrap();
    let revoked = v.grant_as(&owner_c, &o, grant_terms("a-revoked", p, &["cccd"], None, 3600)).unwrap();
    v.revoke_grant_as(&owner_c, &o, &revoked.id).unwrap();
    v.grant_as(&owner_c, &o, grant_terms("a-used", p, &["cccd"], Some(1), 3600)).unwrap();
    let used = Caller::agency(agency("a-used"), Some(purpose(p)));
    v.content_as(&used, &o, &doc.id).unwrap();
    v.grant_as(&owner_c, &o, grant_terms("a-other-type", p, &["giay-khai-sinh"], None, 3600)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100)); // let the 1-second grant expire

    let log_before = v.access_log_as(&owner_c, &o).unwrap().len();
    let callers: Vec<(&str, Caller)> = vec![
        ("owner", owner_c.clone()),
        ("other owner", Caller::owner(owner(2))),
        ("matching grant", Caller::agency(agency("a-match"), Some(purpose(p)))),
        ("wrong purpose", Caller::agency(agency("a-match"), Some(purpose("9.999999")))),
        ("no purpose", Caller::agency(agency("a-match"), None)),
        ("expired grant", Caller::agency(agency("a-expired"), Some(purpose(p)))),
        ("revoked grant", Caller::agency(agency("a-revoked"), Some(purpose(p)))),
        ("used-up grant", Caller::agency(agency("a-used"), Some(purpose(p)))),
        ("grant for another type", Caller::agency(agency("a-other-type"), Some(purpose(p)))),
        ("no grant", Caller::agency(agency("a-none"), Some(purpose(p)))),
        ("unregistered agency", Caller::agency(agency("a-ghost"), Some(purpose(p)))),
        ("operator", Caller::operator()),
    ];
    let cccd = DocType::parse("cccd").unwrap();
    // Expected outcome per caller, in the order of the actions below:
    // missing, list, read, content, reuse, delete-unknown, revoke, grant, grants, revoke-grant, access-log
    let expected: &[(&str, [&str; 11])] = &[
        ("owner", ["ok", "ok", "ok", "ok", "ok", "not_found", "forbidden", "ok", "ok", "not_found", "ok"]),
        ("other owner", ["forbidden"; 11]),
        (
            "matching grant",
            [
                "ok",
                "ok",
                "ok",
                "ok",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "wrong purpose",
            [
                "ok",
                "grant_required",
                "grant_required",
                "grant_required",
                "grant_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "no purpose",
            [
                "purpose_required",
                "purpose_required",
                "purpose_required",
                "purpose_required",
                "purpose_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "expired grant",
            [
                "ok",
                "grant_required",
                "grant_required",
                "grant_required",
                "grant_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "revoked grant",
            [
                "ok",
                "grant_required",
                "grant_required",
                "grant_required",
                "grant_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "used-up grant",
            [
                "ok",
                "grant_required",
                "grant_required",
                "grant_required",
                "grant_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "grant for another type",
            [
                "ok",
                "ok",
                "grant_required",
                "grant_required",
                "ok",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "no grant",
            [
                "ok",
                "grant_required",
                "grant_required",
                "grant_required",
                "grant_required",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "unregistered agency",
            [
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
        (
            "operator",
            [
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
                "forbidden",
            ],
        ),
    ];
    let mut calls = 0;
    let mut refusals = 0;
    for (name, c) in &callers {
        let reuse_purpose = c.purpose.clone().unwrap_or_else(|| purpose(p));
        let got = [
            code(v.missing_as(c, &o, &[doc.meta.digest])),
            code(v.documents_as(c, &o, None)),
            code(v.document_as(c, &o, &doc.id)),
            code(v.content_as(c, &o, &doc.id)),
            code(v.reuse_as(c, &o, &reuse_purpose, std::slice::from_ref(&cccd), None)),
            code(v.delete_as(c, &o, &vault::DocumentId::from_bytes([9; 16]))),
            code(v.revoke_as(c, &o, &doc.id, "wrong")),
            code(v.grant_as(c, &o, grant_terms("a-none", "3.000003", &["cccd"], Some(5), 60))),
            code(v.grants_as(c, &o)),
            code(v.revoke_grant_as(c, &o, &vault::GrantId::from_bytes([7; 16]))),
            code(v.access_log_as(c, &o)),
        ];
        let want = expected.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got.iter().map(String::as_str).collect::<Vec<_>>(), want.to_vec(), "caller: {name}");
        // Every call but the access-log read is one audit entry about the owner.
        calls += 10;
        refusals += got[..10].iter().filter(|g| *g != "ok").count();
    }
    // What an agency sees: the matching grant sees the document, another type's grant does not.
    let listed = v.documents_as(&callers[2].1, &o, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(v.documents_as(&callers[8].1, &o, None).unwrap().is_empty());
    let r = v.reuse_as(&callers[8].1, &o, &purpose(p), std::slice::from_ref(&cccd), None).unwrap();
    assert_eq!(r[0].status, ReuseStatus::NotGranted);
    assert!(r[0].document.is_none());
    // The issuer reads what it issued without a grant (still stating a purpose).
    let iss_p = Caller::agency(agency("iss"), Some(purpose("7.000007")));
    v.document_as(&iss_p, &o, &doc.id).unwrap();
    v.content_as(&iss_p, &o, &doc.id).unwrap();
    assert!(matches!(v.document_as(&iss, &o, &doc.id), Err(Error::PurposeRequired)));
    calls += 6;
    refusals += 1;

    let log = v.access_log_as(&owner_c, &o).unwrap();
    let new_entries = &log[log_before..];
    assert_eq!(new_entries.len(), calls, "one entry per call about the owner");
    let refused = new_entries.iter().filter(|e| e.outcome.starts_with("refused:")).count();
    assert_eq!(refused, refusals, "each refusal is audited");
    // Refused entries carry the error code; grant uses carry the grant.
    assert!(new_entries.iter().any(|e| e.outcome == "refused:grant_required" && e.actor == "agency:a-expired"));
    assert!(new_entries
        .iter()
        .any(|e| e.action == "document.content" && e.actor == "agency:a-match" && e.grant.is_some()));
    // The other owner's calls are in the log of the owner they were about, not their own.
    assert!(v.access_log_as(&Caller::owner(owner(2)), &owner(2)).unwrap().is_empty());
    // Grant status after use.
    let grants = v.grants_as(&owner_c, &o).unwrap();
    let used_grant = grants.iter().find(|g| g.terms.grantee == agency("a-used")).unwrap();
    assert_eq!((used_grant.uses, used_grant.status(Timestamp::now())), (1, GrantStatus::Exhausted));
    assert_eq!(grants.iter().find(|g| g.id == revoked.id).unwrap().status(Timestamp::now()), GrantStatus::Revoked);
    assert!(v.check(true).unwrap().is_clean());
}

#[test]
fn grants_validate_and_carry_signed_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "a", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let c = Caller::owner(o.clone());
    let g = v.grant_as(&c, &o, grant_terms("a", "1.1", &["cccd"], Some(3), 3600)).unwrap();
    assert_eq!(g.uses, 0);
    assert!(verify_receipt(&g.receipt, &v.signer().public_key()));
    assert!(g.receipt.text.contains(&format!("grant:{}\nowner:{o}\ngrantee:a\n", g.id)));
    let mut forged = g.receipt.clone();
    forged.text = forged.text.replace("max_uses:3", "max_uses:300");
    assert!(!verify_receipt(&forged, &v.signer().public_key()));
    // Invalid grants.
    for (terms, what) in [
        (grant_terms("ghost", "1.1", &["cccd"], None, 3600), "unregistered grantee"),
        (grant_terms("a", "1.1", &["cccd"], None, -10), "expiry in the past"),
        (grant_terms("a", "1.1", &["cccd"], None, 367 * 24 * 3600), "beyond 366 days"),
        (grant_terms("a", "1.1", &["cccd"], Some(0), 3600), "max_uses 0"),
        (grant_terms("a", "1.1", &[], None, 3600), "nothing covered"),
    ] {
        assert!(matches!(v.grant_as(&c, &o, terms), Err(Error::InvalidRequest(_))), "{what}");
    }
    let mut unknown_doc = grant_terms("a", "1.1", &[], None, 3600);
    unknown_doc.documents = vec![vault::DocumentId::from_bytes([1; 16])];
    assert!(matches!(v.grant_as(&c, &o, unknown_doc), Err(Error::InvalidRequest(_))));
    // Revocation is effective for the very next call, and revoked grants stay listed.
    let a = Caller::agency(agency("a"), Some(purpose("1.1")));
    let data = b"can cuoc";
    let d = put_doc(&v, &o, data, "cccd");
    v.document_as(&a, &o, &d.id).unwrap();
    v.revoke_grant_as(&c, &o, &g.id).unwrap();
    assert!(matches!(v.document_as(&a, &o, &d.id), Err(Error::GrantRequired)));
    assert_eq!(v.grants_as(&c, &o).unwrap().len(), 1);
    assert_eq!(v.agency_grants_as(&Caller::agency(agency("a"), None)).unwrap().len(), 1);
    assert!(matches!(v.agency_grants_as(&c), Err(Error::Forbidden)));
    // A grant by document id covers that document only.
    let mut by_id = grant_terms("a", "1.1", &[], None, 3600);
    by_id.documents = vec![d.id];
    v.grant_as(&c, &o, by_id).unwrap();
    let d2 = put_doc(&v, &o, b"other cccd", "cccd");
    v.document_as(&a, &o, &d.id).unwrap();
    assert!(matches!(v.document_as(&a, &o, &d2.id), Err(Error::GrantRequired)));
}

#[test]
fn reuse_check_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "iss", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let c = Caller::owner(o.clone());
    let t = |s: &str| Timestamp::parse(s).unwrap();
    let dep = |data: &[u8], ty: &str, from: Option<&str>, until: Option<&str>, signed: bool| {
        let mut d = if signed { signed_doc(&o, data, ty, "iss", 1) } else { new_doc(Digest::of(data), ty) };
        d.valid_from = from.map(t);
        d.valid_until = until.map(t);
        if signed {
            let st = statement(&o, data.len() as u64, &d);
            d.signature = Some(sign_statement(&signing_key(1), &KeyId::parse("k1").unwrap(), &st));
        }
        v.put_content_bytes(&o, data).unwrap();
        if signed {
            v.deposit_signed(&o, d).unwrap()
        } else {
            v.deposit(&o, d).unwrap()
        }
    };
    // held: a valid unverified and a valid verified one: the verified one wins.
    dep(b"a1", "a", None, None, false);
    let verified = dep(b"a2", "a", None, None, true);
    // expired: newest is expired.
    dep(b"b1", "b", None, Some("2024-01-01T00:00:00Z"), false);
    // revoked.
    let r = dep(b"c1", "c", None, None, true);
    v.revoke_document(&o, &r.id, "error", Timestamp::now()).unwrap();
    // only not yet valid -> missing.
    dep(b"d1", "d", Some("2099-01-01T00:00:00Z"), None, false);
    let types: Vec<DocType> = ["a", "b", "c", "d", "e"].iter().map(|s| DocType::parse(s).unwrap()).collect();
    let res = v.reuse_as(&c, &o, &purpose("1.1"), &types, Some(t("2025-06-01T00:00:00Z"))).unwrap();
    let statuses: Vec<ReuseStatus> = res.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [ReuseStatus::Held, ReuseStatus::Expired, ReuseStatus::Revoked, ReuseStatus::Missing, ReuseStatus::Missing]
    );
    assert_eq!(res[0].document.as_ref().unwrap().id, verified.id);
    assert!(res[1..].iter().all(|c| c.document.is_none()));
    // At a later time the not-yet-valid one is held.
    let later = v.reuse_as(&c, &o, &purpose("1.1"), &types[3..4], Some(t("2099-06-01T00:00:00Z"))).unwrap();
    assert_eq!(later[0].status, ReuseStatus::Held);
    // An agency's body purpose must equal its header.
    register(&v, "b-agency", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    v.grant_as(&c, &o, grant_terms("b-agency", "1.1", &["a"], None, 3600)).unwrap();
    let ag = Caller::agency(agency("b-agency"), Some(purpose("1.1")));
    assert!(matches!(v.reuse_as(&ag, &o, &purpose("1.2"), &types, None), Err(Error::InvalidRequest(_))));
    let res = v.reuse_as(&ag, &o, &purpose("1.1"), &types, None).unwrap();
    assert_eq!(res[0].status, ReuseStatus::Held);
    assert!(res[1..].iter().all(|c| c.status == ReuseStatus::NotGranted));
}

#[test]
fn audit_log_proofs_and_privacy() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    let o = owner(1);
    let c = Caller::owner(o.clone());
    let note_key = vault::log::note::NoteVerifier::parse(&v.signer().verifier_key()).unwrap();
    let cp0 = v.checkpoint().unwrap();
    let (_, size0, root0) = vault::log::note::parse_checkpoint(note_key.verify(&cp0).unwrap()).unwrap();
    let data = content(3, 1000);
    v.upload_as(&c, &o, data.as_slice(), None).unwrap();
    let doc = v.deposit_as_caller(&c, &o, new_doc(Digest::of(&data), "cccd")).unwrap();
    v.documents_as(&c, &o, None).unwrap();
    v.content_as(&c, &o, &doc.id).unwrap();
    let _ = v.document_as(&Caller::owner(owner(2)), &o, &doc.id);
    let cp = v.checkpoint().unwrap();
    let (origin, size, root) = vault::log::note::parse_checkpoint(note_key.verify(&cp).unwrap()).unwrap();
    assert_eq!(origin, v.log_origin());
    assert_eq!(size, size0 + 5);
    let entries = v.access_log_as(&c, &o).unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[4].outcome, "refused:forbidden");
    for e in &entries {
        let leaf = v.access_log_leaf_as(&c, &o, e.index).unwrap();
        let text = String::from_utf8(leaf.clone()).unwrap();
        // No personal data in clear: neither the owner id nor the document id.
        assert!(
            !text.contains(o.as_str())
                && !text.contains(&o.as_str()["citizen:".len()..])
                && !text.contains(&doc.id.to_string()),
            "{text}"
        );
        assert!(text.starts_with("vault-audit-v1\n"));
        let proof = v.inclusion_proof(e.index, size).unwrap();
        assert_eq!(proof.leaf_hash, vault::log::merkle::leaf_hash(&leaf));
        assert!(vault::log::merkle::verify_inclusion(&proof.leaf_hash, e.index, size, &proof.hashes, &root));
    }
    let cons = v.consistency_proof(size0, size).unwrap();
    assert!(vault::log::merkle::verify_consistency(size0, size, &root0, &root, &cons));
    // Out of range.
    assert!(matches!(v.inclusion_proof(size, size), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.inclusion_proof(0, size + 1), Err(Error::InvalidRequest(_))));
    assert!(matches!(v.consistency_proof(size, size - 1), Err(Error::InvalidRequest(_))));
    // Another owner cannot read this owner's log or leaves.
    assert!(matches!(v.access_log_leaf_as(&Caller::owner(owner(2)), &o, 0), Err(Error::Forbidden)));
    // The log survives a reopen and `check` recomputes it.
    v.close().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    assert_eq!(v.audit_size().unwrap(), size);
    assert_eq!(v.audit_root(size).unwrap(), root);
    assert!(v.check(false).unwrap().is_clean());
}

#[test]
fn statement_vector_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/statement-1");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap().trim().to_owned();
    let content = B64.decode(read("content.b64")).unwrap();
    let fields: serde_json::Value = serde_json::from_str(&read("fields.json")).unwrap();
    let mut d = new_doc(Digest::of(&content), fields["doc_type"].as_str().unwrap());
    assert_eq!(d.digest.to_hex(), read("digest.hex"));
    d.media_type = fields["media_type"].as_str().unwrap().into();
    d.title = fields["title"].as_str().unwrap().into();
    d.issuer = Some(agency(fields["issuer"].as_str().unwrap()));
    d.issued_at = Some(Timestamp::parse(fields["issued_at"].as_str().unwrap()).unwrap());
    d.reference = Some(fields["reference"].as_str().unwrap().into());
    d.procedure = Some(purpose(fields["procedure"].as_str().unwrap()));
    let o = OwnerId::parse(fields["owner"].as_str().unwrap()).unwrap();
    let st = statement(&o, content.len() as u64, &d);
    assert_eq!(B64.encode(st.as_bytes()), read("statement.b64"));
    let seed: [u8; 32] = B64.decode(read("seed.b64")).unwrap().try_into().unwrap();
    let sk = SigningKey::from_bytes(&seed);
    assert_eq!(B64.encode(sk.verifying_key().to_bytes()), read("public.b64"));
    let sig = sign_statement(&sk, &KeyId::parse("k1").unwrap(), &st);
    assert_eq!(sig.value, read("signature.b64"));
    let pk = PublicKey::parse(&read("public.b64")).unwrap();
    assert!(pk.verify(st.as_bytes(), &B64.decode(read("signature.b64")).unwrap().try_into().unwrap()));
}

#[test]
fn repeated_deposits_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let data = content(1, 3000);
    let iss = Caller::agency(agency("ubnd-xa"), None);
    v.upload_as(&iss, &o, data.as_slice(), None).unwrap();
    let mut first = signed_doc(&o, &data, "cccd", "ubnd-xa", 1);
    first.reference = Some("123/2024".into());
    resign(&o, &data, &mut first);
    let (a, created) = v.deposit_as(&iss, &o, first.clone()).unwrap();
    assert!(created);
    // The same deposit again (a re-run bulk deposit): the same document, nothing new.
    let (b, created) = v.deposit_as(&iss, &o, first.clone()).unwrap();
    assert!(!created);
    assert_eq!(a.id, b.id);
    // A forged signature is still refused on a repeat.
    let mut forged = first.clone();
    forged.signature = Some(sign_statement(&signing_key(9), &KeyId::parse("k1").unwrap(), "x"));
    assert!(matches!(v.deposit_as(&iss, &o, forged), Err(Error::InvalidSignature(_))));
    // Another reference, another type or the owner's own deposit: new documents.
    let mut other = signed_doc(&o, &data, "cccd", "ubnd-xa", 1);
    other.reference = Some("124/2024".into());
    resign(&o, &data, &mut other);
    assert!(v.deposit_as(&iss, &o, other).unwrap().1);
    let own = Caller::owner(o.clone());
    let mut mine = new_doc(Digest::of(&data), "cccd");
    mine.reference = Some("123/2024".into());
    assert!(v.deposit_as(&own, &o, mine.clone()).unwrap().1);
    assert!(!v.deposit_as(&own, &o, mine).unwrap().1);
    assert_eq!(v.documents(&o, None).unwrap().len(), 3);
    // Revoked or deleted: a repeat deposits afresh.
    v.revoke_as(&iss, &o, &a.id, "sai sót").unwrap();
    let (c, created) = v.deposit_as(&iss, &o, first.clone()).unwrap();
    assert!(created);
    assert_ne!(c.id, a.id);
    v.delete_as(&own, &o, &c.id).unwrap();
    let (d, created) = v.deposit_as(&iss, &o, first).unwrap();
    assert!(created);
    assert_ne!(d.id, c.id);
    // Every repeat was audited with the document it returned.
    let log = v.access_log_as(&own, &o).unwrap();
    assert_eq!(log.iter().filter(|e| e.action == "document.deposit" && e.document == Some(a.id)).count(), 2);
    assert!(v.check(true).unwrap().is_clean());
}

fn resign(owner: &OwnerId, data: &[u8], d: &mut NewDocument) {
    let st = statement(owner, data.len() as u64, d);
    d.signature = Some(sign_statement(&signing_key(1), &KeyId::parse("k1").unwrap(), &st));
}

/// The message of an error with the digest it names taken out (the rest must not differ).
fn shape(r: Result<vault::Document, Error>, digest: &Digest) -> (String, String) {
    let e = r.unwrap_err();
    (e.code().to_owned(), e.to_string().replace(&digest.to_string(), "<digest>"))
}

#[test]
fn item_9_1_agency_cannot_claim_held_content() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    register(&v, "ubnd-khac", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let owner_c = Caller::owner(o.clone());
    let p = "1.001193";
    let thief = Caller::agency(agency("ubnd-khac"), Some(purpose(p)));
    // The owner holds a content and a document about it; the other agency even has a grant.
    let data = content(91, 50_000);
    let d = Digest::of(&data);
    let own = put_doc(&v, &o, &data, "cccd");
    v.grant_as(&owner_c, &o, grant_terms("ubnd-khac", p, &["giay-khai-sinh"], Some(1), 3600)).unwrap();

    // Knowing the digest and size is not enough: a self-signed deposit is refused, nothing made.
    let claim = signed_doc(&o, &data, "giay-khai-sinh", "ubnd-khac", 2);
    assert!(matches!(v.deposit_as(&thief, &o, claim.clone()), Err(Error::Conflict(_))));
    assert_eq!(v.documents(&o, None).unwrap().len(), 1);
    // contents/missing answers "missing": a grant does not count, nor does the owner's holding.
    assert_eq!(v.missing_as(&thief, &o, &[d]).unwrap(), vec![d]);
    assert_eq!(v.missing_as(&owner_c, &o, &[d]).unwrap(), Vec::<Digest>::new());
    // The owner's document stays out of reach.
    assert!(matches!(v.content_as(&thief, &o, &own.id), Err(Error::GrantRequired)));

    // Once the agency supplies the bytes itself, it may deposit and read its own document.
    let up = v.upload_as(&thief, &o, data.as_slice(), Some(d)).unwrap();
    assert!(up.created, "an agency is not told that the owner held it");
    assert!(v.missing_as(&thief, &o, &[d]).unwrap().is_empty());
    let (mine, new) = v.deposit_as(&thief, &o, claim.clone()).unwrap();
    assert!(new && mine.verified);
    v.content_as(&thief, &o, &mine.id).unwrap();
    // A repeat returns its own document, never another issuer's.
    let (again, new) = v.deposit_as(&thief, &o, claim).unwrap();
    assert_eq!((again.id, new), (mine.id, false));
    // Still held by the owner's document: the owner's view is unchanged.
    assert!(v.missing_as(&owner_c, &o, &[d]).unwrap().is_empty());

    // Another agency that supplied the same bytes gets its own document on an identical deposit.
    let iss = Caller::agency(agency("ubnd-xa"), Some(purpose(p)));
    assert_eq!(v.missing_as(&iss, &o, &[d]).unwrap(), vec![d]);
    let doc_a = signed_doc(&o, &data, "giay-khai-sinh", "ubnd-xa", 1);
    assert!(matches!(v.deposit_as(&iss, &o, doc_a.clone()), Err(Error::Conflict(_))));
    // One-step deposit: the bytes come with it; afterwards missing says held for this agency.
    let (_, one, new) = v.put_document_as(&iss, &o, data.as_slice(), doc_a).unwrap();
    assert!(new && one.id != mine.id && one.id != own.id);
    assert!(v.missing_as(&iss, &o, &[d]).unwrap().is_empty());
    // Batch deposits record the supply too (new content for a third type).
    let other = content(92, 4000);
    let batch =
        v.put_documents_as(&iss, &o, vec![(other.as_slice(), signed_doc(&o, &other, "cccd", "ubnd-xa", 1))]).unwrap();
    assert!(batch[0].is_ok());
    assert!(v.missing_as(&iss, &o, &[Digest::of(&other)]).unwrap().is_empty());
    assert_eq!(v.missing_as(&thief, &o, &[Digest::of(&other)]).unwrap(), vec![Digest::of(&other)]);
    assert!(v.check(true).unwrap().is_clean());
}

#[test]
fn item_9_2_refusals_and_uploads_do_not_reveal_holdings() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-khac", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let a = Caller::agency(agency("ubnd-khac"), Some(purpose("1.001193")));
    let held = content(93, 20_000);
    put_doc(&v, &o, &held, "cccd");
    let absent = content(94, 20_000);
    // Deposits with a junk signature about held and not-held content: the same refusal.
    let junk = |data: &[u8]| {
        let mut d = signed_doc(&o, data, "giay-khai-sinh", "ubnd-khac", 2);
        d.signature.as_mut().unwrap().value = "junk".into();
        d
    };
    let a1 = shape(v.deposit_as_caller(&a, &o, junk(&held)), &Digest::of(&held));
    let a2 = shape(v.deposit_as_caller(&a, &o, junk(&absent)), &Digest::of(&absent));
    assert_eq!(a1.0, "conflict");
    assert_eq!(a1, a2);
    // Also for an owner the vault has never seen.
    let a3 = shape(v.deposit_as_caller(&a, &owner(77), junk(&absent)), &Digest::of(&absent));
    assert_eq!(a1, a3);
    // Uploads of held and of new content: the same answer.
    let u1 = v.upload_as(&a, &o, held.as_slice(), Some(Digest::of(&held))).unwrap();
    let u2 = v.upload_as(&a, &o, absent.as_slice(), Some(Digest::of(&absent))).unwrap();
    assert_eq!((u1.created, u1.size), (u2.created, u2.size));
    assert!(u1.created);
    // Only now, having supplied the bytes, does the signature matter.
    assert!(matches!(v.deposit_as_caller(&a, &o, junk(&held)), Err(Error::InvalidSignature(_))));
    // A second upload by the same agency tells it only what it already knows.
    assert!(!v.upload_as(&a, &o, held.as_slice(), Some(Digest::of(&held))).unwrap().created);
    assert!(v.check(true).unwrap().is_clean());
}

/// Prints the time of agency uploads of held and of new content (16 MiB each); no assertion on
/// time (SPEC.md §14 records the figures).
#[test]
fn item_9_2_held_and_new_agency_uploads_timing() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-khac", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let a = Caller::agency(agency("ubnd-khac"), Some(purpose("1.001193")));
    let mut held_t = Vec::new();
    let mut new_t = Vec::new();
    for round in 0..3u64 {
        let held = content(1000 + round, 16 << 20);
        v.put_content_bytes(&o, &held).unwrap();
        let fresh = content(2000 + round, 16 << 20);
        let t = std::time::Instant::now();
        v.upload_as(&a, &o, held.as_slice(), Some(Digest::of(&held))).unwrap();
        held_t.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = std::time::Instant::now();
        v.upload_as(&a, &o, fresh.as_slice(), Some(Digest::of(&fresh))).unwrap();
        new_t.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("agency upload of 16 MiB: held {held_t:.1?} ms, new {new_t:.1?} ms");
    assert_eq!(held_t.len(), new_t.len());
}

#[test]
fn item_9_3_unused_agency_uploads_are_removed_after_24_hours() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let a = Caller::agency(agency("ubnd-xa"), Some(purpose("1.001193")));
    let big = content(95, 100_000); // a blob file
    let small = content(96, 1000); // inline
    let shared = content(97, 100_000); // the owner holds it too
    let used = content(98, 100_000); // a document uses it
    for d in [&big, &small, &shared, &used] {
        v.upload_as(&a, &o, d.as_slice(), Some(Digest::of(d))).unwrap();
    }
    v.put_content_bytes(&o, &shared).unwrap();
    let doc = v.deposit_as_caller(&a, &o, signed_doc(&o, &used, "cccd", "ubnd-xa", 1)).unwrap();
    let stats = v.pending_stats().unwrap();
    assert_eq!((stats.pending_uploads, stats.pending_bytes), (3, 201_000));
    let blobs_before = files_below(&dir.path().join("blobs")).len();

    // Within 24 hours nothing goes.
    let r = v.sweep_pending(Timestamp::now().plus_seconds(23 * 3600)).unwrap();
    assert_eq!(r.claims_removed, 0);
    // After: the unused uploads go, the owner's and the document's content stay.
    let r = v.sweep_pending(Timestamp::now().plus_seconds(25 * 3600)).unwrap();
    assert_eq!((r.claims_removed, r.contents_removed, r.bytes_removed), (3, 2, 101_000));
    assert!(!v.holds(&o, &Digest::of(&big)).unwrap());
    assert!(!v.holds(&o, &Digest::of(&small)).unwrap());
    assert!(v.holds(&o, &Digest::of(&shared)).unwrap());
    assert_eq!(v.read_content(&o, &Digest::of(&used)).unwrap(), used);
    assert_eq!(files_below(&dir.path().join("blobs")).len(), blobs_before - 1);
    let stats = v.pending_stats().unwrap();
    assert_eq!((stats.pending_uploads, stats.removed_uploads, stats.removed_bytes), (0, 3, 201_000));
    // The agency's claims on them are gone: it must upload again; its document still counts.
    let ds: Vec<Digest> = [&big, &shared, &used].iter().map(|d| Digest::of(d)).collect();
    assert_eq!(v.missing_as(&a, &o, &ds).unwrap(), ds[..2].to_vec());
    assert!(matches!(
        v.deposit_as_caller(&a, &o, signed_doc(&o, &shared, "cccd", "ubnd-xa", 1)),
        Err(Error::Conflict(_))
    ));
    v.content_as(&a, &o, &doc.id).unwrap();
    assert!(v.check(true).unwrap().is_clean());
}

#[test]
fn item_9_3_one_agency_holds_a_bounded_amount_pending() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    register(&v, "ubnd-khac", vec![key("k1", &signing_key(2), "2020-01-01T00:00:00Z", None)]);
    v.set_pending_limits(vault::PendingLimits { max_count: 2, max_bytes: 10_000 });
    let o = owner(1);
    let a = Caller::agency(agency("ubnd-xa"), Some(purpose("1.001193")));
    let up = |c: &Caller, d: &[u8]| v.upload_as(c, &o, d, Some(Digest::of(d)));
    let (d1, d2, d3) = (content(1, 1000), content(2, 1000), content(3, 1000));
    up(&a, &d1).unwrap();
    up(&a, &d2).unwrap();
    // The count bound: refused, nothing stored.
    assert_eq!(code(up(&a, &d3)), "too_many_requests");
    assert!(!v.holds(&o, &Digest::of(&d3)).unwrap());
    // Uploading the same bytes again is no new pending upload.
    up(&a, &d1).unwrap();
    // Other agencies and the owner are not limited by it.
    up(&Caller::agency(agency("ubnd-khac"), None), &d3).unwrap();
    v.upload_as(&Caller::owner(o.clone()), &o, d3.as_slice(), None).unwrap();
    // A deposit uses an upload and frees its place.
    v.deposit_as_caller(&a, &o, signed_doc(&o, &d1, "cccd", "ubnd-xa", 1)).unwrap();
    up(&a, &d3).unwrap();
    // The byte bound.
    v.deposit_as_caller(&a, &o, signed_doc(&o, &d2, "cccd", "ubnd-xa", 1)).unwrap();
    assert_eq!(code(up(&a, &content(4, 9500))), "too_many_requests");
    up(&a, &content(5, 9000)).unwrap();
    // The audit log records the refusals.
    let log = v.access_log_as(&Caller::owner(o.clone()), &o).unwrap();
    assert_eq!(log.iter().filter(|e| e.outcome == "refused:too_many_requests").count(), 2);
}

#[test]
fn item_9_5_a_retired_key_cannot_back_date_a_deposit() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &master()).unwrap();
    // k1 was valid at issued_at (2025-01-02) but is retired now.
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", Some("2025-06-01T00:00:00Z"))]);
    let o = owner(1);
    let a = Caller::agency(agency("ubnd-xa"), None);
    let data = content(99, 3000);
    v.upload_as(&a, &o, data.as_slice(), Some(Digest::of(&data))).unwrap();
    let d = signed_doc(&o, &data, "cccd", "ubnd-xa", 1);
    assert!(matches!(v.deposit_as_caller(&a, &o, d.clone()), Err(Error::UnknownIssuerKey(_))));
    assert!(matches!(v.put_document_as(&a, &o, data.as_slice(), d.clone()), Err(Error::UnknownIssuerKey(_))));
    // Re-registered with the key still valid, the same deposit verifies.
    register(&v, "ubnd-xa", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    assert!(v.deposit_as_caller(&a, &o, d).unwrap().verified);
}

/// Drives a started read to its end the way an async caller does: polls it, and when given the
/// sequencer's turn has it led on another thread (as the server's leader thread does).
fn drive<T>(v: &std::sync::Arc<Vault>, started: vault::access::Started<T>) -> Option<Result<T, Error>> {
    use vault::access::{ReadPoll, Started};
    let mut read = match started {
        Started::Queued(r) => r,
        Started::Blocking => return None,
    };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match v.poll_read(&mut read, &mut cx) {
            ReadPoll::Ready => return Some(v.finish_read(read)),
            ReadPoll::Lead => {
                let v = v.clone();
                std::thread::spawn(move || v.lead_queue());
            }
            ReadPoll::Pending => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
        assert!(std::time::Instant::now() < deadline, "a started read was never answered");
    }
}

#[test]
fn started_reads_are_audited_counted_and_refused_like_blocking_ones() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let v = Arc::new(Vault::open(dir.path(), &master()).unwrap());
    register(&v, "a", vec![key("k1", &signing_key(1), "2020-01-01T00:00:00Z", None)]);
    let o = owner(1);
    let c = Caller::owner(o.clone());
    let d = put_doc(&v, &o, b"giay khai sinh", "khai-sinh");
    const USES: u64 = 10;
    let g = v.grant_as(&c, &o, grant_terms("a", "1.1", &["khai-sinh"], Some(USES), 3600)).unwrap();
    let a = Caller::agency(agency("a"), Some(purpose("1.1")));
    let before = v.audit_size().unwrap();

    // 8 threads race 24 started content reads (and record reads, which count no use) against
    // a grant of 10 uses: exactly 10 content reads are allowed, each audited.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (v, a, o, id) = (v.clone(), a.clone(), o.clone(), d.id);
            std::thread::spawn(move || {
                let mut allowed = 0u64;
                for _ in 0..3 {
                    match drive(&v, v.start_content_as(&a, &o, &id)).expect("a small content starts") {
                        Ok((_, mut r)) => {
                            let mut out = Vec::new();
                            std::io::Read::read_to_end(&mut r, &mut out).unwrap();
                            assert_eq!(out, b"giay khai sinh");
                            allowed += 1;
                        }
                        Err(e) => assert!(matches!(e, Error::GrantRequired), "{e:?}"),
                    }
                    // The record is readable while the grant is active; once it is used up,
                    // refused like any read under an exhausted grant.
                    match drive(&v, v.start_document_as(&a, &o, &id)).expect("a record read starts") {
                        Ok(doc) => assert_eq!(doc.id, id),
                        Err(e) => assert!(matches!(e, Error::GrantRequired), "{e:?}"),
                    }
                }
                allowed
            })
        })
        .collect();
    let allowed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(allowed, USES, "max_uses exact under started reads");
    let g2 = v.grants_as(&c, &o).unwrap().into_iter().find(|x| x.id == g.id).unwrap();
    assert_eq!(g2.uses, USES);
    // Every started read left exactly one entry: 24 content reads and 24 record reads.
    assert_eq!(v.audit_size().unwrap() - before, 48 + 1, "48 reads and the grant.list");
    let log = v.access_log_as(&c, &o).unwrap();
    let refused = log.iter().filter(|e| e.action == "document.content" && e.outcome == "refused:grant_required");
    assert_eq!(refused.count() as u64, 24 - USES);

    // Revocation is effective on the very next started read.
    let g3 = v.grant_as(&c, &o, grant_terms("a", "1.1", &["khai-sinh"], None, 3600)).unwrap();
    drive(&v, v.start_document_as(&a, &o, &d.id)).unwrap().unwrap();
    v.revoke_grant_as(&c, &o, &g3.id).unwrap();
    assert!(matches!(drive(&v, v.start_document_as(&a, &o, &d.id)).unwrap(), Err(Error::GrantRequired)));
    assert!(matches!(drive(&v, v.start_content_as(&a, &o, &d.id)).unwrap(), Err(Error::GrantRequired)));
    // A content kept in a blob file is not started (its header would be read from disk).
    let big = vec![7u8; 200_000];
    let bd = put_doc(&v, &o, &big, "khai-sinh");
    assert!(drive(&v, v.start_content_as(&c, &o, &bd.id)).is_none(), "a blob file is read the blocking way");
    assert!(v.check(true).unwrap().is_clean());
}
