//! Client side of vault, for dossier systems, migrations and the `vault` command line.
//!
//! - [`Client`]: a typed async client (reqwest, rustls) for every endpoint of the HTTP
//!   contract. Downloads are verified (digest, size, and the issuer's signature against the
//!   agency registry) before the caller is told they succeeded; checkpoints are verified with
//!   the pinned vault key and proven consistent with the last one seen ([`TrustStore`]).
//! - [`AgencyCredentials`]: an agency's key file, minting short-lived tokens and signing
//!   deposit statements.
//! - [`bulk`]: deposits of many files that upload only what the vault does not hold, and that
//!   can be re-run after an interruption without duplicates.
//! - [`verify_export`]: offline verification of an owner's export.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vault_client::Error> {
//! use vault_client::{Auth, Client};
//! let citizen = vault::OwnerId::parse("citizen:001099012345").map_err(|e| vault_client::Error::Invalid(e.to_string()))?;
//! let client = Client::new("http://127.0.0.1:8700", Auth::Bearer(std::env::var("CITIZEN_TOKEN").unwrap_or_default()))?;
//! for d in client.documents(&citizen, None).await? {
//!     println!("{} {} {}", d.document.id, d.document.meta.doc_type, d.document.meta.title);
//! }
//! # Ok(()) }
//! ```

use std::io::{self, Read};
use std::path::Path;

pub mod bulk;
mod client;
mod credentials;
mod error;
pub mod trust;

pub use client::{
    part_path, safe_file_name, Auth, Client, Component, DocumentView, GrantView, Uploaded, VaultKey, Verified,
    VerifiedEntry, LOG_PAGE, MISSING_BATCH,
};
pub use credentials::{AgencyCredentials, KeyFile, TOKEN_LIFETIME};
pub use error::Error;
pub use trust::{Checkpoint, TrustStore};
pub use vault::engine::rights::{verify_export, ExportSummary};
pub use vault::Digest;

/// BLAKE3-256 of a file's content, as the server addresses it.
pub fn digest_file(path: &Path) -> io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    digest_reader(&mut f)
}

/// BLAKE3-256 of everything `r` yields.
pub fn digest_reader(r: &mut impl Read) -> io::Result<Digest> {
    let mut h = blake3::Hasher::new();
    // 64 KiB: large enough for full-speed hashing, small enough that zeroing it costs nothing
    // next to a small file.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(h.finalize().into()),
            Ok(n) => {
                h.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_vault() {
        let data = vec![7u8; 300_000];
        assert_eq!(digest_reader(&mut data.as_slice()).unwrap(), Digest::of(&data));
    }
}
