//! Sealed values: small byte strings encrypted and authenticated with AES-256-GCM.
//!
//! Used for wrapped keys and metadata records. Format (SPEC.md, "Sealed values"):
//! `0x01 | nonce (12) | ciphertext | tag (16)`, with associated data that binds the value to
//! where it is stored, so a value moved to another key fails to open.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::keys::{random_array, SecretKey};

const VERSION: u8 = 1;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + 12 + 16;

/// The one error for a sealed value that does not open: wrong key, wrong place, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value failed authentication")]
pub struct Unsealable;

/// Encrypts `plaintext` under `key` with associated data `aad`.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(key, aad, plaintext, random_array())
}

/// [`seal`] with a given nonce: for test vectors only; a nonce must never repeat under a key.
pub(crate) fn seal_with_nonce(key: &SecretKey, aad: &[u8], plaintext: &[u8], nonce: [u8; 12]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let (head, body) = out.split_at_mut(13);
    match cipher.encrypt_in_place_detached(Nonce::from_slice(&head[1..]), aad, body) {
        Ok(tag) => out.extend_from_slice(&tag),
        // aes-gcm refuses only plaintexts above 64 GiB; sealed values are small records.
        Err(_) => unreachable!("sealed values are far below the AES-GCM length limit"),
    }
    out
}

/// Decrypts a value made by [`seal`] with the same key and associated data.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unsealable> {
    if sealed.len() < OVERHEAD || sealed[0] != VERSION {
        return Err(Unsealable);
    }
    let cipher = Aes256Gcm::new(key.expose().into());
    let (nonce, rest) = sealed[1..].split_at(12);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher.decrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf, tag.into()).map_err(|_| Unsealable)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_and_tamper(data in proptest::collection::vec(any::<u8>(), 0..300), aad in proptest::collection::vec(any::<u8>(), 0..40), bit in any::<usize>()) {
            let key = SecretKey::from_bytes([3; 32]);
            let s = seal(&key, &aad, &data);
            prop_assert_eq!(s.len(), data.len() + OVERHEAD);
            let opened = open(&key, &aad, &s).unwrap();
            prop_assert_eq!(opened.as_slice(), data.as_slice());
            let mut t = s.clone();
            let bit = bit % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open(&key, &aad, &t), Err(Unsealable));
            prop_assert_eq!(open(&key, b"elsewhere", &s).map(|_| ()), if aad == b"elsewhere" { Ok(()) } else { Err(Unsealable) });
            prop_assert_eq!(open(&SecretKey::from_bytes([4; 32]), &aad, &s), Err(Unsealable));
            prop_assert_eq!(open(&key, &aad, &s[..s.len() - 1]), Err(Unsealable));
        }
    }
}
