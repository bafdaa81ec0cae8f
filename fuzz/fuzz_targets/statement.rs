//! A deposit body (JSON) and the signed statement built from it (vault/src/engine/document.rs,
//! vault/src/engine/provenance.rs).
//!
//! Input: a deposit body. Properties: a body that parses and validates re-serialises to an
//! equal body; its statement has exactly the 13 lines of api.md, each with its field name, and
//! reading the values back from the lines gives the body's values (no field can smuggle in a
//! line of another); a signature is checked without panicking, and one made by the harness
//! verifies.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use vault::engine::provenance::{sign_statement, statement, PublicKey};
use vault::{KeyId, NewDocument, OwnerId};
use vault_fuzz::{agency_key, AGENCY_KID, OWNER};

const NAMES: [&str; 12] = [
    "owner",
    "digest",
    "size",
    "doc_type",
    "media_type",
    "title",
    "issuer",
    "issued_at",
    "valid_from",
    "valid_until",
    "reference",
    "procedure",
];

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<NewDocument>(data) else { return };
    let back: NewDocument = serde_json::from_slice(&serde_json::to_vec(&doc).expect("serialises")).expect("re-parses");
    assert_eq!(back, doc, "a deposit body survives a JSON round trip");
    if doc.validate().is_err() {
        return;
    }
    let owner = OwnerId::parse(OWNER).expect("fixture owner");
    let size = u64::from(data.len() as u32);
    let s = statement(&owner, size, &doc);
    let lines: Vec<&str> = s.split('\n').collect();
    assert_eq!(lines.len(), 14, "13 lines, each ending in a newline: {s:?}");
    assert_eq!(lines[0], "vault-statement-v1");
    assert_eq!(lines[13], "");
    let value = |i: usize| lines[i + 1].strip_prefix(NAMES[i]).and_then(|l| l.strip_prefix(':')).expect("field name");
    assert_eq!(value(0), OWNER);
    assert_eq!(value(1), doc.digest.to_string());
    assert_eq!(value(2), size.to_string());
    assert_eq!(value(3), doc.doc_type.as_str());
    assert_eq!(value(4), doc.media_type);
    assert_eq!(value(5), doc.title);
    assert_eq!(value(6), doc.issuer.as_ref().map(|a| a.as_str()).unwrap_or_default());
    assert_eq!(value(10), doc.reference.as_deref().unwrap_or_default());
    assert_eq!(value(11), doc.procedure.as_ref().map(|p| p.as_str()).unwrap_or_default());
    let key = PublicKey::from_bytes(agency_key().verifying_key().to_bytes()).expect("fixture key");
    if let Some(sig) = &doc.signature {
        if let Ok(raw) = B64.decode(&sig.value) {
            if let Ok(raw) = <[u8; 64]>::try_from(raw.as_slice()) {
                let _ = key.verify(s.as_bytes(), &raw);
            }
        }
    }
    let mine = sign_statement(&agency_key(), &KeyId::parse(AGENCY_KID).expect("fixture kid"), &s);
    let raw: [u8; 64] = B64.decode(&mine.value).expect("base64").try_into().expect("64 bytes");
    assert!(key.verify(s.as_bytes(), &raw), "a statement signed by the key verifies");
});
