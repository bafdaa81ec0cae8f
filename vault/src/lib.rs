//! # vault
//!
//! Encrypted, content-addressed storage of individuals' and organisations' documents and the
//! results of public-service procedures, so that a procedure can reuse what the state already
//! issued instead of asking people to upload it again.
//!
//! - Contents are addressed by the BLAKE3-256 digest of their plaintext ([`Digest`]), stored
//!   once per owner, encrypted with AES-256-GCM in a STREAM construction under a fresh key per
//!   content, which is wrapped by the owner's key, which is wrapped by the master key.
//! - Storage names are keyed hashes, never plain digests; metadata records are sealed too.
//! - Nothing returns success before it is durable; concurrent writers share syncs.
//! - [`Vault::check`] finds and reports damage; damaged data is never served.
//!
//! ```
//! use vault::{MasterKey, NewDocument, OwnerId, DocType, Vault};
//! use std::io::Read;
//!
//! # fn main() -> Result<(), vault::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let master = MasterKey::generate();
//! let vault = Vault::open(dir.path(), &master)?;
//!
//! let owner = OwnerId::parse("citizen:001099012345")?;
//! let stored = vault.put_content_bytes(&owner, b"%PDF-1.7 ...")?;
//! let doc = vault.deposit(&owner, NewDocument {
//!     digest: stored.digest,
//!     doc_type: DocType::parse("giay-khai-sinh")?,
//!     title: "Giấy khai sinh".into(),
//!     media_type: "application/pdf".into(),
//!     file_name: Some("khai-sinh.pdf".into()),
//!     issuer: None, issued_at: None, valid_from: None, valid_until: None,
//!     reference: None, procedure: None, signature: None,
//! })?;
//!
//! let (_, mut content) = vault.open_document_content(&owner, &doc.id)?;
//! let mut bytes = Vec::new();
//! content.read_to_end(&mut bytes)?;
//! assert_eq!(bytes, b"%PDF-1.7 ...");
//! assert!(vault.check(true)?.is_clean());
//! # Ok(()) }
//! ```

pub mod access;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod ids;
pub mod log;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod storage;
pub mod time;
#[cfg(test)]
mod vectors;

/// The README's library example, compiled as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use crypto::keys::{KeyError, MasterKey, SecretKey};
pub use crypto::stream::DecryptError;
pub use engine::check::{CheckReport, Problem};
pub use engine::document::{Document, NewDocument, Revocation, Signature, Status};
pub use engine::supply::{PendingLimits, PendingStats, SweepReport, PENDING_LIFETIME_SECS};
pub use engine::vault::{
    ContentReader, OwnerRef, Put, RecoveryReport, Stored, Vault, FORMAT, INLINE_MAX, ORPHAN_AGE_SECS,
};
pub use error::Error;
pub use ids::{AgencyId, Digest, DocType, DocumentId, GrantId, IdError, KeyId, OwnerId, Purpose};
pub use storage::failstop::{Fault, Faults};
pub use storage::{BlobStore, MetaStore, StoreError};
pub use time::Timestamp;
