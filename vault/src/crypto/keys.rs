//! Key material: the master key, per-owner keys and the keys derived from them.
//!
//! Every secret lives in a [`SecretKey`], which is wiped when dropped and prints as
//! `[redacted]`. Derivations use BLAKE3's key-derivation mode with a fixed context string per
//! purpose (SPEC.md, "Key hierarchy"), so no two purposes ever share a key.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::Engine as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Fills an array from the operating system's random source.
pub(crate) fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // OsRng panics only if the OS cannot provide randomness at all (getrandom(2) failing),
    // in which case no key can be made safely and stopping is the right outcome.
    OsRng.fill_bytes(&mut out);
    out
}

/// 32 bytes of secret key material.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self(random_array())
    }

    /// The raw key bytes; keep the borrow short.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Derives an independent key for `context` (BLAKE3 `derive_key`).
    pub(crate) fn derive(&self, context: &str) -> SecretKey {
        SecretKey(blake3::derive_key(context, &self.0))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a key file or key text was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The text is not standard base64 of exactly 32 bytes.
    #[error("a master key is the standard base64 of exactly 32 bytes (44 characters); this is not")]
    Malformed,
}

/// The master key: wraps the vault's index key and every owner key. Never stored next to the
/// data except in an explicit development mode.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(SecretKey);

impl MasterKey {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretKey(bytes))
    }

    /// A fresh random master key.
    pub fn generate() -> Self {
        Self(SecretKey::generate())
    }

    /// Parses the key-file form: standard base64 of 32 bytes, surrounding whitespace allowed.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| KeyError::Malformed)?,
        );
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a key file (base64 of 32 bytes, trailing whitespace allowed).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?,
        );
        Self::from_base64(&text)
    }

    /// The key-file form. The returned string is wiped when dropped.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.0.expose()))
    }

    pub(crate) fn wrap_key(&self) -> SecretKey {
        self.0.derive(ctx::MASTER_WRAP)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// BLAKE3 key-derivation contexts. Changing one makes every existing vault unreadable.
pub(crate) mod ctx {
    pub const MASTER_WRAP: &str = "vault 2026-11-27 master key wrap v1";
    pub const OWNER_RECORDS: &str = "vault 2026-11-27 owner record sealing v1";
    pub const OWNER_BLOB_WRAP: &str = "vault 2026-11-27 owner blob key wrap v1";
    pub const OWNER_BLOB_NAMES: &str = "vault 2026-11-27 owner blob names v1";
    pub const OWNER_TYPE_TAGS: &str = "vault 2026-11-27 owner type tags v1";
    pub const AUDIT_REFS: &str = "vault 2026-11-27 audit leaf references v1";
    pub const VAULT_RECORDS: &str = "vault 2026-11-27 vault record sealing v1";
    /// The id a vault claims its blob store with (SPEC.md §9b), derived from the index key.
    pub const BLOB_STORE_CLAIM: &str = "vault 2026-12-03 blob store claim v1";
    /// The webhook signing key, derived from the vault's signing seed (SPEC.md §24).
    pub const WEBHOOK_SIGNING: &str = "vault 2026-12-03 webhook signing v1";
}

/// The keys of one owner, derived from the owner key.
pub(crate) struct OwnerKeys {
    /// Seals this owner's metadata records.
    pub records: SecretKey,
    /// Wraps the per-content keys in this owner's blob headers.
    pub blob_wrap: SecretKey,
    /// Keys the BLAKE3 hash that names this owner's blobs.
    pub names: SecretKey,
    /// Keys the BLAKE3 hash that tags document types in the index.
    pub type_tags: SecretKey,
}

impl OwnerKeys {
    pub fn derive(owner_key: &SecretKey) -> Self {
        Self {
            records: owner_key.derive(ctx::OWNER_RECORDS),
            blob_wrap: owner_key.derive(ctx::OWNER_BLOB_WRAP),
            names: owner_key.derive(ctx::OWNER_BLOB_NAMES),
            type_tags: owner_key.derive(ctx::OWNER_TYPE_TAGS),
        }
    }

    /// The storage name of a content: keyed BLAKE3 of its digest, never the digest itself.
    pub fn blob_name(&self, digest: &crate::Digest) -> [u8; 32] {
        *blake3::keyed_hash(self.names.expose(), digest.as_bytes()).as_bytes()
    }

    /// The index tag of a document type.
    pub fn type_tag(&self, doc_type: &crate::DocType) -> [u8; 16] {
        let h = blake3::keyed_hash(self.type_tags.expose(), doc_type.as_str().as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.as_bytes()[..16]);
        out
    }

    /// The deposit-index tag: a keyed hash (the type-tag key, in a domain no type tag can
    /// reach) of length-prefixed parts.
    pub fn deposit_tag(&self, parts: &[&[u8]]) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(self.type_tags.expose());
        h.update(b"\0vault-deposit-index-v1\0");
        for p in parts {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }
}

impl fmt::Debug for OwnerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerKeys([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let k = MasterKey::generate();
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
        assert_eq!(format!("{:?}", SecretKey::generate()), "[redacted]");
        let ok = OwnerKeys::derive(&SecretKey::generate());
        assert!(!format!("{ok:?}").contains(|c: char| c.is_ascii_digit()));
    }

    #[test]
    fn key_file_forms() {
        let k = MasterKey::generate();
        let text = format!("{}\n  \n", k.to_base64().as_str());
        assert_eq!(MasterKey::from_base64(&text).unwrap(), k);
        assert!(matches!(MasterKey::from_base64("abc"), Err(KeyError::Malformed)));
        assert!(matches!(
            MasterKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([0u8; 31])),
            Err(KeyError::Malformed)
        ));
        assert!(MasterKey::from_file(Path::new("/nonexistent/key")).is_err());
    }

    #[test]
    fn derivations_differ() {
        let ok = OwnerKeys::derive(&SecretKey::from_bytes([7; 32]));
        let all = [&ok.records, &ok.blob_wrap, &ok.names, &ok.type_tags];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.expose(), b.expose());
            }
        }
    }
}
