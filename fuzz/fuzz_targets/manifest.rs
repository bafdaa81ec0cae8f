//! Bulk-deposit manifests, CSV or JSON (vault-client/src/bulk.rs `read_manifest`).
//!
//! Input: a mode byte (even: CSV, odd: JSON), then the manifest file. Property: no panic;
//! every item read has its file below the manifest's folder or absolute, and an owner and
//! document type that parse again from their text form.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vault::{DocType, OwnerId};

fn dir() -> &'static std::path::Path {
    static D: OnceLock<tempfile::TempDir> = OnceLock::new();
    D.get_or_init(|| tempfile::tempdir().expect("temporary folder")).path()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let path = dir().join(if mode % 2 == 0 { "manifest.csv" } else { "manifest.json" });
    std::fs::write(&path, rest).expect("write the manifest");
    if let Ok(items) = vault_client::bulk::read_manifest(&path) {
        for it in items {
            assert!(it.file.is_absolute() || it.file.starts_with(dir()), "{:?}", it.file);
            assert_eq!(OwnerId::parse(it.owner.as_str()).as_ref(), Ok(&it.owner));
            assert_eq!(DocType::parse(it.doc_type.as_str()).as_ref(), Ok(&it.doc_type));
        }
    }
});
