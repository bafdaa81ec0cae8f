//! Writes the seed corpus of every target to `fuzz/corpus/<target>/`, built the way the tests
//! build their inputs (minted tokens, signed checkpoints, encoded journal records, a real blob,
//! a batch tar, a real export, manifests). Run: `cargo run --manifest-path fuzz/Cargo.toml --bin
//! seeds` (fuzz/run.sh does it when a corpus folder is missing).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a generator: failing loudly is right

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use serde_json::json;
use vault::access::Caller;
use vault::crypto::keys::SecretKey;
use vault::crypto::stream::BlobWriter;
use vault::crypto::token::{mint, Claims};
use vault::engine::provenance::{sign_statement, statement};
use vault::log::note::checkpoint_text;
use vault::storage::Op;
use vault::{Digest, DocType, KeyId, MasterKey, NewDocument, OwnerId, Vault};
use vault_fuzz::*;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn doc(digest: Digest, signed: bool, size: u64) -> NewDocument {
    let mut d = NewDocument {
        digest,
        doc_type: DocType::parse("giay-khai-sinh").unwrap(),
        title: "Giấy khai sinh".into(),
        media_type: "text/plain; charset=utf-8".into(),
        file_name: Some("khai-sinh.txt".into()),
        issuer: None,
        issued_at: None,
        valid_from: None,
        valid_until: None,
        reference: Some("123/2024/TLKS".into()),
        procedure: None,
        signature: None,
    };
    if signed {
        d.issuer = Some(AGENCY.parse().unwrap());
        d.issued_at = Some("2024-05-06T07:08:09Z".parse().unwrap());
        d.valid_until = Some("2034-05-06T07:08:09Z".parse().unwrap());
        d.procedure = Some("1.001193".parse().unwrap());
        let owner = OwnerId::parse(OWNER).unwrap();
        let s = statement(&owner, size, &d);
        d.signature = Some(sign_statement(&agency_key(), &KeyId::parse(AGENCY_KID).unwrap(), &s));
    }
    d
}

fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn main() {
    let out: PathBuf =
        std::env::args().nth(1).map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"), PathBuf::from);

    // Tokens: each principal, and the JSON parts for the signing modes.
    let claims = |kid, iss, sub| Claims { kid, iss, sub, aud: "vault", iat: NOW - 10, exp: NOW + 600 };
    for (name, key, c) in [
        ("owner", provider_key(), claims(PROVIDER, PROVIDER, OWNER)),
        ("operator", operator_key(), claims("operator", "operator", "operator")),
        ("agency", agency_key(), claims(AGENCY_KID, AGENCY, AGENCY)),
    ] {
        let t = format!("Bearer {}", mint(&key, &c));
        write(&out, "jws_token", &format!("{name}-token"), &with_mode(0, t.as_bytes()));
        let mut parts = t["Bearer ".len()..].split('.');
        let h = B64URL.decode(parts.next().unwrap()).unwrap();
        let cl = B64URL.decode(parts.next().unwrap()).unwrap();
        let mode = match name {
            "owner" => 1,
            "operator" => 2,
            _ => 3,
        };
        let mut parts_seed = h;
        parts_seed.push(0);
        parts_seed.extend_from_slice(&cl);
        write(&out, "jws_token", &format!("{name}-parts"), &with_mode(mode, &parts_seed));
    }
    let aud_list = json!({"iss": PROVIDER, "sub": OWNER, "aud": ["x", "vault"], "iat": NOW, "exp": NOW + 3600});
    let mut s = br#"{"alg":"EdDSA","kid":"idp"}"#.to_vec();
    s.push(0);
    s.extend_from_slice(aud_list.to_string().as_bytes());
    write(&out, "jws_token", "owner-aud-list", &with_mode(1, &s));

    // Signed notes and checkpoints.
    let signer = note_signer();
    let text = checkpoint_text("vault.example/log", 42, &[9; 32]);
    let note = signer.sign_note(&text);
    write(&out, "signed_note", "checkpoint", &with_mode(0, note.as_bytes()));
    write(&out, "signed_note", "body", &with_mode(1, text.as_bytes()));
    write(&out, "signed_note", "key-and-note", &with_mode(2, format!("{}\n{note}", signer.verifier_key()).as_bytes()));

    // Deposit bodies (the statement).
    let content = "Giấy khai sinh — bản điện tử\n".as_bytes();
    let digest = Digest::from(blake3::hash(content));
    for (name, signed) in [("owner-deposit", false), ("agency-deposit", true)] {
        write(&out, "statement", name, &serde_json::to_vec(&doc(digest, signed, 40)).unwrap());
    }

    // Journal records.
    let batches = [
        vec![Op::Put(b"doc/1".to_vec(), b"{\"a\":1}".to_vec()), Op::Delete(b"pending/1".to_vec())],
        vec![Op::Put(Vec::new(), Vec::new())],
    ];
    let journal: Vec<u8> = batches.iter().flat_map(|b| vault::storage::journal::encode(b)).collect();
    write(&out, "journal", "two-records", &journal);
    write(&out, "journal", "payload", &journal[12..12 + u32::from_be_bytes(journal[..4].try_into().unwrap()) as usize]);

    // Blobs: a real one (mode 0), and sizes for the edit mode (1).
    let mut w = BlobWriter::with_key(Cursor::new(Vec::new()), SecretKey::from_bytes([7; 32])).unwrap();
    w.update(content).unwrap();
    let fin = w.finish().unwrap();
    let mut bind = vec![1u8; 16];
    bind.extend_from_slice(fin.digest().as_bytes());
    let blob = fin.write_header(&WRAP, &bind).unwrap().into_inner();
    write(&out, "blob", "real", &with_mode(0, &blob));
    write(&out, "blob", "edit-none", &[1, 0, 40]);
    write(&out, "blob", "edit-header", &[1, 0x55, 0x55, 0, 0, 20, 1]);
    write(&out, "blob", "edit-truncate", &[1, 0x80, 0, 0, 1, 0, 0x80, 5]);

    // Batch deposit bodies.
    let body = serde_json::to_vec(&doc(digest, false, 40)).unwrap();
    write(
        &out,
        "batch_tar",
        "two-items",
        &tar_of(&[("1.json", &body), ("1", content), ("2.json", &body), ("2", b"x")]),
    );
    write(&out, "batch_tar", "body-without-content", &tar_of(&[("1.json", &body)]));

    // A real export of an owner with one document.
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), &MasterKey::from_bytes([42; 32])).unwrap();
    let owner = OwnerId::parse(OWNER).unwrap();
    let stored = v.put_content_bytes(&owner, content).unwrap();
    v.deposit(&owner, doc(stored.digest, false, 40)).unwrap();
    let mut tar = Vec::new();
    v.export_as(&Caller::owner(owner.clone()), &owner, &mut tar).unwrap();
    let mut seed = v.signer().verifier_key().into_bytes();
    seed.push(b'\n');
    seed.extend_from_slice(&tar);
    write(&out, "export_verify", "one-document", &seed);

    // Manifests.
    let csv = format!("file,owner,doc_type,title,issued_at\na.pdf,{OWNER},giay-khai-sinh,Giấy khai sinh,2024-05-06T07:08:09Z\n/abs/b.txt,org:0101234567-001,cccd,,\n");
    write(&out, "manifest", "two.csv", &with_mode(0, csv.as_bytes()));
    let json = json!([{"file": "a.pdf", "owner": OWNER, "doc_type": "giay-khai-sinh", "valid_until": "2030-01-01T00:00:00Z", "procedure": "1.001193"}]);
    write(&out, "manifest", "one.json", &with_mode(1, json.to_string().as_bytes()));
    println!("seeds written to {}", out.display());
}
