//! Client side of vault: what a dossier system computes before talking to the server.
//!
//! The typed HTTP client and the `vault` command line are being built (issue 5). This crate
//! already gives the local half of the skip-upload negotiation: the digests the server is asked
//! about are computed here, without the server.

use std::io::{self, Read};
use std::path::Path;

pub use vault::Digest;

/// BLAKE3-256 of a file's content, as the server addresses it.
pub fn digest_file(path: &Path) -> io::Result<Digest> {
    let mut f = std::fs::File::open(path)?;
    digest_reader(&mut f)
}

/// BLAKE3-256 of everything `r` yields.
pub fn digest_reader(r: &mut impl Read) -> io::Result<Digest> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
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
