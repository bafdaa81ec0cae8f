//! Sealed values: small byte strings encrypted and authenticated with AES-256-GCM.
//!
//! Used for wrapped keys and metadata records. Format (SPEC.md §5, "Sealed values"), with
//! associated data that binds the value to where it is stored, so a value moved to another key
//! fails to open:
//!
//! - version 2 (written): `0x02 | nonce (24 random bytes) | ciphertext | tag (16)`, encrypted
//!   with AES-256-GCM under a one-time subkey `BLAKE3-derive_key(SUBKEY_CONTEXT, key || nonce)`
//!   and the all-zero 96-bit GCM nonce. Each subkey seals one value, so the 2^32 limit of random
//!   96-bit GCM nonces under one key does not apply; 192-bit nonces do not collide (birthday
//!   bound q^2 / 2^193).
//! - version 1 (still read): `0x01 | nonce (12 random bytes) | ciphertext | tag (16)` under the
//!   key itself.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::crypto::keys::{random_array, SecretKey};

/// Associated data of a sealed value: binds it to its metadata key.
pub(crate) fn aad(key: &[u8]) -> Vec<u8> {
    let mut a = b"vault-v1/".to_vec();
    a.extend_from_slice(key);
    a
}

const V1: u8 = 1;
const V2: u8 = 2;
/// Nonce bytes of a version-2 sealed value.
const NONCE_V2: usize = 24;
/// BLAKE3 key-derivation context of the per-value subkeys of version 2.
pub const SUBKEY_CONTEXT: &str = "vault 2026-12-02 sealed value subkey v2";
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_V2 + 16;
/// Bytes a version-1 sealed value added to its plaintext.
const OVERHEAD_V1: usize = 1 + 12 + 16;

/// The one error for a sealed value that does not open: wrong key, wrong place, or altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value failed authentication")]
pub struct Unsealable;

/// Encrypts `plaintext` under `key` with associated data `aad`.
pub fn seal(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with_nonce(key, aad, plaintext, random_array())
}

/// The one-time AES-256-GCM key of a version-2 value: `derive_key(SUBKEY_CONTEXT, key || nonce)`.
fn subkey(key: &SecretKey, nonce: &[u8]) -> Aes256Gcm {
    let mut material = Zeroizing::new([0u8; 32 + NONCE_V2]);
    material[..32].copy_from_slice(key.expose());
    material[32..].copy_from_slice(nonce);
    let sub = Zeroizing::new(blake3::derive_key(SUBKEY_CONTEXT, material.as_slice()));
    Aes256Gcm::new(sub.as_slice().into())
}

/// [`seal`] with a given nonce: for test vectors only; a nonce must never repeat under a key.
pub(crate) fn seal_with_nonce(key: &SecretKey, aad: &[u8], plaintext: &[u8], nonce: [u8; NONCE_V2]) -> Vec<u8> {
    let cipher = subkey(key, &nonce);
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.push(V2);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // Each subkey encrypts exactly one value: the fixed zero GCM nonce never repeats under it.
    match cipher.encrypt_in_place_detached(Nonce::from_slice(&[0; 12]), aad, &mut out[1 + NONCE_V2..]) {
        Ok(tag) => out.extend_from_slice(&tag),
        // aes-gcm refuses only plaintexts above 64 GiB; sealed values are small records.
        Err(_) => unreachable!("sealed values are far below the AES-GCM length limit"),
    }
    out
}

/// A version-1 sealed value (the format written before version 2), for tests of reading old
/// records.
#[cfg(test)]
pub(crate) fn seal_v1_with_nonce(key: &SecretKey, aad: &[u8], plaintext: &[u8], nonce: [u8; 12]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.expose().into());
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD_V1);
    out.push(V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let (head, body) = out.split_at_mut(13);
    match cipher.encrypt_in_place_detached(Nonce::from_slice(&head[1..]), aad, body) {
        Ok(tag) => out.extend_from_slice(&tag),
        Err(_) => unreachable!("sealed values are far below the AES-GCM length limit"),
    }
    out
}

/// Decrypts a value made by [`seal`] (either version) with the same key and associated data.
pub fn open(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unsealable> {
    let (cipher, nonce, rest) = match sealed.first() {
        Some(&V2) if sealed.len() >= OVERHEAD => {
            let (nonce, rest) = sealed[1..].split_at(NONCE_V2);
            (subkey(key, nonce), [0u8; 12], rest)
        }
        Some(&V1) if sealed.len() >= OVERHEAD_V1 => {
            let (nonce, rest) = sealed[1..].split_at(12);
            let mut n = [0u8; 12];
            n.copy_from_slice(nonce);
            (Aes256Gcm::new(key.expose().into()), n, rest)
        }
        _ => return Err(Unsealable),
    };
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut buf = Zeroizing::new(ct.to_vec());
    cipher.decrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut buf, tag.into()).map_err(|_| Unsealable)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn item_10_4_round_trip_and_any_change_fails_opaquely(data in proptest::collection::vec(any::<u8>(), 0..300), aad in proptest::collection::vec(any::<u8>(), 0..40), bit in any::<usize>(), cut in any::<usize>()) {
            let key = SecretKey::from_bytes([3; 32]);
            let s = seal(&key, &aad, &data);
            prop_assert_eq!(s[0], 2);
            prop_assert_eq!(s.len(), data.len() + OVERHEAD);
            let opened = open(&key, &aad, &s).unwrap();
            prop_assert_eq!(opened.as_slice(), data.as_slice());
            // Any flipped bit (version, nonce, ciphertext, tag) fails with the one error.
            let mut t = s.clone();
            let bit = bit % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open(&key, &aad, &t), Err(Unsealable));
            prop_assert_eq!(open(&key, b"elsewhere", &s).map(|_| ()), if aad == b"elsewhere" { Ok(()) } else { Err(Unsealable) });
            prop_assert_eq!(open(&SecretKey::from_bytes([4; 32]), &aad, &s), Err(Unsealable));
            // Any truncation, and any extension.
            prop_assert_eq!(open(&key, &aad, &s[..cut % s.len()]), Err(Unsealable));
            let mut longer = s.clone();
            longer.push(0);
            prop_assert_eq!(open(&key, &aad, &longer), Err(Unsealable));
            // Two seals of the same value differ (fresh nonce, fresh subkey).
            prop_assert_ne!(seal(&key, &aad, &data), s);
        }

        #[test]
        fn item_10_4_old_format_round_trip_and_tamper(data in proptest::collection::vec(any::<u8>(), 0..300), aad in proptest::collection::vec(any::<u8>(), 0..40), bit in any::<usize>()) {
            let key = SecretKey::from_bytes([3; 32]);
            let s = seal_v1_with_nonce(&key, &aad, &data, [9; 12]);
            let opened = open(&key, &aad, &s).unwrap();
            prop_assert_eq!(opened.as_slice(), data.as_slice());
            let mut t = s.clone();
            let bit = bit % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(open(&key, &aad, &t), Err(Unsealable));
        }
    }

    #[test]
    fn item_10_4_a_value_sealed_in_the_old_format_still_opens() {
        // A version-1 value as the code before version 2 wrote it (fixed bytes: SPEC.md §12's
        // "sealed index key (nonce 01*12)" vector of the version-1 format).
        let wrap = crate::crypto::keys::MasterKey::from_bytes([0x2a; 32]).wrap_key();
        let old = hex::decode(
            "01010101010101010101010101d90c0517cca099a5702cc61d16e97d4688389efa1ac0b2c7bd4c058bb5674cc359303e133155df3d4665c34c246a8a93",
        )
        .unwrap();
        let index: Vec<u8> = (0x80..=0x9f).collect();
        assert_eq!(open(&wrap, &aad(b"Mindex-key"), &old).unwrap().as_slice(), index.as_slice());
        assert_eq!(seal_v1_with_nonce(&wrap, &aad(b"Mindex-key"), &index, [1; 12]), old);
        // Changing its version byte to 2 does not make it open as the new format.
        let mut as_v2 = old.clone();
        as_v2[0] = 2;
        assert_eq!(open(&wrap, &aad(b"Mindex-key"), &as_v2), Err(Unsealable));
    }

    #[test]
    fn item_10_4_a_vault_with_old_format_records_opens_and_reads() {
        use crate::storage::{MetaStore, Op};
        // Rewrite every sealed value of a vault in the version-1 format, as an old build left it.
        let dir = tempfile::tempdir().unwrap();
        let master = crate::crypto::keys::MasterKey::from_bytes([5; 32]);
        let owner = crate::OwnerId::parse("citizen:001099012345").unwrap();
        let digest;
        {
            let v = crate::Vault::open(dir.path(), &master).unwrap();
            digest = v.put_content_bytes(&owner, b"an old record").unwrap().digest;
            v.close().unwrap();
        }
        let wrap = master.wrap_key();
        {
            let meta = crate::storage::sled::SledMeta::open(&dir.path().join("meta")).unwrap();
            let index_sealed = meta.get(b"Mindex-key").unwrap().unwrap();
            let index_raw = open(&wrap, &aad(b"Mindex-key"), &index_sealed).unwrap();
            let index = SecretKey::from_bytes(index_raw.as_slice().try_into().unwrap());
            let mut rewritten = Vec::new();
            for item in meta.scan(b"") {
                let (k, v) = item.unwrap();
                if v.first() != Some(&2) {
                    continue;
                }
                // Owner and vault keys are sealed with the master wrap key; records with the owner's.
                let candidates: Vec<SecretKey> = {
                    let mut c = vec![SecretKey::from_bytes(*wrap.expose())];
                    c.push(index.derive(crate::crypto::keys::ctx::VAULT_RECORDS));
                    if let Some(o) = meta.get(&[&b"O"[..], &k[1..17.min(k.len())]].concat()).unwrap() {
                        let plain = open(&wrap, &aad(&[&b"O"[..], &k[1..17]].concat()), &o).unwrap();
                        let ok = crate::crypto::keys::OwnerKeys::derive(&SecretKey::from_bytes(
                            plain[..32].try_into().unwrap(),
                        ));
                        c.push(SecretKey::from_bytes(*ok.records.expose()));
                    }
                    c
                };
                let Some((key, plain)) =
                    candidates.iter().find_map(|key| open(key, &aad(&k), &v).ok().map(|p| (key, p)))
                else {
                    continue;
                };
                rewritten.push(Op::Put(k.clone(), seal_v1_with_nonce(key, &aad(&k), &plain, random_array())));
            }
            assert!(rewritten.len() >= 3, "{} values rewritten", rewritten.len());
            meta.apply(rewritten).unwrap();
            meta.sync().unwrap();
            meta.checkpoint().unwrap();
        }
        let v = crate::Vault::open(dir.path(), &master).unwrap();
        assert_eq!(v.read_content(&owner, &digest).unwrap(), b"an old record");
        assert!(v.check(true).unwrap().is_clean());
    }
}
