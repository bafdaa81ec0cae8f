//! The top-level error of the library. Each area has its own narrow error ([`IdError`],
//! [`KeyError`], [`StoreError`], [`DecryptError`]); this enum is what the public API returns,
//! and the HTTP service maps it to status codes in exactly one place.

use crate::crypto::keys::KeyError;
use crate::crypto::stream::DecryptError;
use crate::ids::{Digest, IdError};
use crate::storage::StoreError;

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
    /// A master-key rotation was interrupted; it must be finished before the vault opens.
    #[error("a master-key rotation was interrupted: run the rotation again with the old and the new key to finish it")]
    RotationInProgress,
    /// The data folder was written by an unknown format version.
    #[error("the data folder has format {found:?}, this build reads {expected:?}")]
    UnsupportedFormat {
        /// What the folder says.
        found: String,
        /// What this build reads.
        expected: &'static str,
    },
    /// A request that is well-formed but not acceptable (e.g. a purpose that differs from the
    /// stated one, a grant beyond 366 days).
    #[error("{0}")]
    InvalidRequest(String),
    /// An issuer signature is missing, malformed or does not verify.
    #[error("invalid issuer signature: {0}")]
    InvalidSignature(String),
    /// The issuer or its key is not registered, or the key was not valid at `issued_at`.
    #[error("unknown issuer key: {0}")]
    UnknownIssuerKey(String),
    /// The caller may not do this (never says whether the thing exists).
    #[error("forbidden")]
    Forbidden,
    /// An agency read needs an active grant covering it for the stated purpose.
    #[error("no active grant of the owner covers this for the stated purpose")]
    GrantRequired,
    /// An agency read must state its purpose.
    #[error("state the purpose (procedure code) of this read")]
    PurposeRequired,
    /// The owner's data was erased.
    #[error("the owner's data was erased")]
    Gone,
    /// The audit log could not record the operation, so it did not happen (fail closed).
    #[error("the audit log could not record this operation, so it was not done: {0}")]
    AuditFailed(String),
    /// An agency holds as many uploads that no document uses as it may (SPEC.md §14).
    #[error("{0}")]
    TooManyPending(String),
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
    Store(StoreError),
    /// A write or sync of the metadata journal or the blob store failed, so the vault refuses
    /// every write until it is restarted and recovery has run (SPEC.md §8, "Fail-stop").
    /// Reads go on.
    #[error(
        "the vault stopped accepting writes after a storage failure ({reason}); {}; restart the server to run recovery",
        outcome_text(*.outcome_unknown)
    )]
    FailStopped {
        /// The first failure.
        reason: String,
        /// The write was under way when the failure happened: it was neither acknowledged nor
        /// is it known to be absent.
        outcome_unknown: bool,
    },
    /// Returned only by the non-blocking starts of audited reads ([`Vault::start_content_as`],
    /// [`Vault::start_document_as`]) when deciding would wait for a lock or for file I/O; the
    /// caller then makes the same call with the blocking method. Nothing was done or recorded.
    ///
    /// [`Vault::start_content_as`]: crate::Vault::start_content_as
    /// [`Vault::start_document_as`]: crate::Vault::start_document_as
    #[error("the call would block")]
    WouldBlock,
}

fn outcome_text(unknown: bool) -> &'static str {
    if unknown {
        "this change may or may not have been stored (recovery keeps it whole or drops it whole)"
    } else {
        "nothing of this request was changed"
    }
}

impl Error {
    /// The error code of the HTTP contract (api.md) for this error; also written in audit
    /// outcomes as `refused:<code>`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) | Error::InvalidRequest(_) | Error::Source(_) => "invalid_request",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::DigestMismatch { .. } => "digest_mismatch",
            Error::InvalidSignature(_) => "invalid_signature",
            Error::UnknownIssuerKey(_) => "unknown_issuer_key",
            Error::Forbidden => "forbidden",
            Error::GrantRequired => "grant_required",
            Error::PurposeRequired => "purpose_required",
            Error::Gone => "gone",
            Error::FailStopped { .. }
            | Error::Store(StoreError::Stopped(_) | StoreError::Unavailable(_))
            | Error::WouldBlock => "unavailable",
            Error::TooManyPending(_) => "too_many_requests",
            Error::Key(_)
            | Error::WrongMasterKey
            | Error::RotationInProgress
            | Error::UnsupportedFormat { .. }
            | Error::Decrypt(_)
            | Error::Corrupt(_)
            | Error::Store(_)
            | Error::AuditFailed(_) => "internal",
        }
    }
}

impl From<StoreError> for Error {
    /// A backend's read that would block (in a non-blocking section) is the vault's
    /// [`Error::WouldBlock`]: the caller takes its blocking path.
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WouldBlock => Error::WouldBlock,
            other => Error::Store(other),
        }
    }
}

impl From<std::io::Error> for Error {
    /// I/O errors out of the blob codec: the opaque decryption error stays opaque.
    fn from(e: std::io::Error) -> Self {
        if crate::crypto::stream::is_decrypt_error(&e) {
            Error::Decrypt(DecryptError)
        } else {
            Error::Store(StoreError::Io { what: "blob I/O".into(), source: e })
        }
    }
}
