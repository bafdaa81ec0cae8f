//! The figures behind SPEC.md §25 ("Running a country"): bytes of metadata and of blobs per
//! owner, document, grant and audited read, measured on the real record formats (in-memory
//! backends, so every key and value can be counted). Not a check: run it to print the table.
//!
//!   cargo test --release --test sizing -- --ignored --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::BTreeMap;
use std::io::Read;

use common::*;
use ed25519_dalek::SigningKey;
use vault::access::Caller;
use vault::engine::grants::NewGrant;
use vault::engine::provenance::{sign_statement, statement, AgencyKey, NewAgency, PublicKey};
use vault::storage::mem_store::{MemBlobs, MemMeta};
use vault::{AgencyId, BlobStore, DocType, KeyId, MetaStore, Purpose, Timestamp, Vault};

const OWNERS: u32 = 200;
const DOCS_PER_OWNER: usize = 10;
const READS_PER_OWNER: usize = 5;

#[test]
#[ignore = "prints the sizing figures of SPEC.md §25"]
fn sizing_figures() {
    let (meta, blobs) = (MemMeta::new(), MemBlobs::new());
    let v = Vault::open_with(Box::new(meta.clone()), Box::new(blobs.clone()), &master(), None).unwrap();
    let sk = SigningKey::from_bytes(&[3; 32]);
    let a = AgencyId::parse("so-tu-phap").unwrap();
    v.put_agency_as(
        &Caller::operator(),
        &a,
        NewAgency {
            name: "Sở Tư pháp".into(),
            keys: vec![AgencyKey {
                id: KeyId::parse("k1").unwrap(),
                public_key: PublicKey::from_bytes(sk.verifying_key().to_bytes()).unwrap(),
                not_before: Timestamp::parse("2020-01-01T00:00:00Z").unwrap(),
                not_after: None,
            }],
        },
    )
    .unwrap();
    let procedure = Purpose::parse("1.001193").unwrap();
    let issuer = Caller::agency(a.clone(), Some(procedure.clone()));
    let before = totals(&meta);
    let (mut content_bytes, mut blob_content) = (0u64, 0u64);
    for n in 0..OWNERS {
        let o = owner(n);
        let mut ids = Vec::new();
        for i in 0..DOCS_PER_OWNER {
            // Sizes of scanned certificates: half small (inline), half 60–200 KiB (blobs).
            let size = if i % 2 == 0 { 4_000 + i * 1_000 } else { 60_000 + i * 14_000 };
            let data = content(u64::from(n) << 16 | i as u64, size);
            content_bytes += size as u64;
            if size >= 60_000 {
                blob_content += size as u64;
            }
            let mut d = new_doc(vault::Digest::of(&data), ["cccd", "giay-khai-sinh", "bang-tot-nghiep"][i % 3]);
            d.issuer = Some(a.clone());
            d.issued_at = Some(Timestamp::parse("2025-01-02T03:04:05Z").unwrap());
            d.procedure = Some(procedure.clone());
            let st = statement(&o, data.len() as u64, &d);
            d.signature = Some(sign_statement(&sk, &KeyId::parse("k1").unwrap(), &st));
            let (_, doc, _) = v.put_document_as(&issuer, &o, data.as_slice(), d).unwrap();
            ids.push(doc.id);
        }
        v.grant_as(
            &Caller::owner(o.clone()),
            &o,
            NewGrant {
                grantee: a.clone(),
                purpose: procedure.clone(),
                purpose_text: "Đăng ký kết hôn".into(),
                doc_types: vec![DocType::parse("cccd").unwrap()],
                documents: vec![],
                expires_at: Timestamp::now().plus_seconds(30 * 24 * 3600),
                max_uses: None,
            },
        )
        .unwrap();
        for r in 0..READS_PER_OWNER {
            let (_, mut c) = v.content_as(&issuer, &o, &ids[(r * 2) % DOCS_PER_OWNER]).unwrap();
            std::io::copy(&mut c, &mut std::io::sink()).unwrap();
        }
        let mut buf = Vec::new();
        let (_, mut c) = v.open_document_content(&o, &ids[0]).unwrap();
        c.read_to_end(&mut buf).unwrap();
    }
    let after = totals(&meta);
    let blob_bytes: u64 = blobs.list().unwrap().blobs.iter().map(|b| blobs.len(b).unwrap().unwrap_or(0)).sum();
    let blob_count = blobs.list().unwrap().blobs.len();
    println!("{OWNERS} owners × {DOCS_PER_OWNER} signed documents (half inline), 1 grant and {READS_PER_OWNER} audited agency reads each");
    println!("prefix  keys      bytes (keys + values)   per owner");
    let mut all = 0u64;
    for (p, (n, b)) in &after {
        let (n0, b0) = before.get(p).copied().unwrap_or((0, 0));
        let (n, b) = (n - n0, b - b0);
        all += b;
        println!("{:>6}  {:>6}  {:>12}            {:>8.0}", char::from(*p), n, b, b as f64 / f64::from(OWNERS));
    }
    println!(
        "metadata total: {all} bytes = {:.0} per owner, {:.0} per document",
        all as f64 / f64::from(OWNERS),
        all as f64 / f64::from(OWNERS) / DOCS_PER_OWNER as f64
    );
    println!(
        "blobs: {blob_count} objects, {blob_bytes} bytes for {blob_content} bytes of their contents (overhead {:.3}%); all contents {content_bytes} bytes",
        (blob_bytes as f64 / blob_content as f64 - 1.0) * 100.0
    );
}

/// Keys and bytes per first key byte.
fn totals(m: &MemMeta) -> BTreeMap<u8, (u64, u64)> {
    let mut t = BTreeMap::new();
    for item in m.scan(b"") {
        let (k, val) = item.unwrap();
        let e = t.entry(k[0]).or_insert((0u64, 0u64));
        e.0 += 1;
        e.1 += (k.len() + val.len()) as u64;
    }
    t
}
