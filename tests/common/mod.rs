//! Helpers shared by the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod http;
pub mod pg;
pub mod s3;

use std::path::Path;

use vault::{DocType, Document, MasterKey, NewDocument, OwnerId, Vault};

pub fn master() -> MasterKey {
    MasterKey::from_bytes([42; 32])
}

pub fn owner(n: u32) -> OwnerId {
    OwnerId::parse(&format!("citizen:{n:012}")).unwrap()
}

pub fn new_doc(digest: vault::Digest, doc_type: &str) -> NewDocument {
    NewDocument {
        digest,
        doc_type: DocType::parse(doc_type).unwrap(),
        title: "Giấy khai sinh".into(),
        media_type: "application/pdf".into(),
        file_name: Some("khai-sinh.pdf".into()),
        issuer: None,
        issued_at: None,
        valid_from: None,
        valid_until: None,
        reference: Some("123/2024/TLKS".into()),
        procedure: None,
        signature: None,
    }
}

/// Stores `data` for `owner` and deposits a document about it.
pub fn put_doc(v: &Vault, owner: &OwnerId, data: &[u8], doc_type: &str) -> Document {
    let s = v.put_content_bytes(owner, data).unwrap();
    v.deposit(owner, new_doc(s.digest, doc_type)).unwrap()
}

/// Deterministic pseudo-random content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Every regular file below `dir`.
pub fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Opens the sled database of a data folder directly (tests that look at or damage what is
/// stored). sled's threads of a database closed a moment ago in this process let go of its file
/// lock a little after the close returns (later on a loaded machine): wait up to 10 s for it.
pub fn open_sled(data: &Path) -> sled::Db {
    let start = std::time::Instant::now();
    loop {
        match sled::Config::new().path(data.join("meta")).segment_size(8 << 20).open() {
            Ok(db) => return db,
            // sled reports a held lock as an `Other` error naming the lock and the inner
            // `WouldBlock`.
            Err(sled::Error::Io(e))
                if (e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock"))
                    && start.elapsed().as_secs() < 10 =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("opening sled in {}: {e}", data.display()),
        }
    }
}
