//! The top-level error of the library. Each area has its own narrow error ([`IdError`],
//! [`KeyError`], [`StoreError`], [`DecryptError`]); this enum is what the public API returns,
//! and the HTTP service maps it to status codes in exactly one place.

use crate::ids::{Digest, IdError};
use crate::keys::KeyError;
use crate::store::StoreError;
use crate::stream::DecryptError;

/// Everything a vault operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input was malformed (an identifier, a time, a text field).
    #[error(transparent)]
    Invalid(#[from] IdError),
    /// The master key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The master key does not open this vault.
    #[error("the master key does not open this vault (wrong key file, or a different vault's data folder); nothing was changed")]
    WrongMasterKey,
    /// The data folder was written by an unknown format version.
    #[error("the data folder has format {found:?}, this build reads {expected:?}")]
    UnsupportedFormat {
        /// What the folder says.
        found: String,
        /// What this build reads.
        expected: &'static str,
    },
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with what is stored (e.g. a deposit of content not held).
    #[error("{0}")]
    Conflict(String),
    /// Uploaded bytes do not hash to the digest they were announced with.
    #[error("the content's BLAKE3 digest is {actual}, not the announced {expected}")]
    DigestMismatch {
        /// The announced digest.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// A stored content failed authentication (opaque on purpose).
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// A stored metadata record failed authentication or could not be decoded.
    #[error("stored metadata is damaged at {0}; run `check` and restore from a backup")]
    Corrupt(String),
    /// Reading the content to be stored failed (the source, not the vault).
    #[error("reading the content to store failed: {0}")]
    Source(std::io::Error),
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<std::io::Error> for Error {
    /// I/O errors out of the blob codec: the opaque decryption error stays opaque.
    fn from(e: std::io::Error) -> Self {
        if crate::stream::is_decrypt_error(&e) {
            Error::Decrypt(DecryptError)
        } else {
            Error::Store(StoreError::Io {
                what: "blob I/O".into(),
                source: e,
            })
        }
    }
}
