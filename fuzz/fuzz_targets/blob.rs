//! The blob header and chunks (vault/src/crypto/stream.rs): decrypting arbitrary bytes must give the
//! one opaque error, never a panic, never other bytes.
//!
//! Input: a mode byte. Mode 0: the rest is a blob to open and read. Mode 1: two bytes give a
//! plaintext size (up to about 3 chunks), the harness encrypts a plaintext of that size, then
//! applies the rest of the input as edits: (3-byte offset, xor byte) pairs, and a final byte
//! that may truncate or extend the blob. Properties: an unchanged blob reads back exactly; a
//! changed one fails with the opaque error (on open, or on a read: every byte is covered by
//! a tag or the digest); reads from any offset give the right bytes or the opaque error.
#![no_main]

use std::io::{Cursor, Read, Seek, SeekFrom};

use libfuzzer_sys::fuzz_target;
use vault::crypto::keys::SecretKey;
use vault::crypto::stream::{is_decrypt_error, BlobReader, BlobWriter, CHUNK};
use vault::Digest;
use vault_fuzz::WRAP;

fn binding(d: &Digest) -> Vec<u8> {
    let mut b = vec![1u8; 16];
    b.extend_from_slice(d.as_bytes());
    b
}

/// Reads everything; `Ok` with the bytes, or `Err` after checking the error is the opaque one.
fn read_all(blob: &[u8], digest: Digest) -> Result<Vec<u8>, ()> {
    let mut r = match BlobReader::open(Cursor::new(blob), &WRAP, &binding(&digest), digest) {
        Ok(r) => r,
        Err(e) => {
            assert!(is_decrypt_error(&e), "open failed with another error: {e}");
            return Err(());
        }
    };
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => {
            assert!(is_decrypt_error(&e), "read failed with another error: {e}");
            Err(())
        }
    }
}

/// Reads `len` bytes from `at`; checks them against `plain` when they come.
fn read_at(blob: &[u8], digest: Digest, plain: &[u8], at: u64, len: usize) {
    let Ok(mut r) = BlobReader::open(Cursor::new(blob), &WRAP, &binding(&digest), digest) else { return };
    r.seek(SeekFrom::Start(at)).expect("seek");
    let mut buf = vec![0u8; len];
    match r.read(&mut buf) {
        Ok(n) => {
            let start = (at as usize).min(plain.len());
            assert!(n <= plain.len() - start);
            assert_eq!(&buf[..n], &plain[start..start + n], "a read gave other bytes");
        }
        Err(e) => assert!(is_decrypt_error(&e), "read failed with another error: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let digest = Digest::from(blake3::hash(rest));
        if let Ok(plain) = read_all(rest, digest) {
            assert_eq!(Digest::from(blake3::hash(&plain)), digest, "a blob read whole matches its digest");
        }
        return;
    }
    let [a, b, edits @ ..] = rest else { return };
    let size = (usize::from(*a) << 8 | usize::from(*b)) * (3 * CHUNK + 1000) / 65_535;
    let mut plain = vec![0u8; size];
    blake3::Hasher::new().update(&[*a, *b]).finalize_xof().fill(&mut plain);
    let mut w = BlobWriter::with_key(Cursor::new(Vec::new()), SecretKey::from_bytes([7; 32])).expect("writer");
    w.update(&plain).expect("encrypts");
    let fin = w.finish().expect("finishes");
    let digest = fin.digest();
    let original = fin.write_header(&WRAP, &binding(&digest)).expect("header").into_inner();
    let mut blob = original.clone();
    let mut pairs = edits.chunks_exact(4);
    for e in pairs.by_ref() {
        let at = (usize::from(e[0]) << 16 | usize::from(e[1]) << 8 | usize::from(e[2])) % blob.len();
        blob[at] ^= e[3];
    }
    match pairs.remainder() {
        [n, ..] if n % 4 == 1 => blob.truncate(blob.len().saturating_sub(usize::from(*n))),
        [n, ..] if n % 4 == 2 => blob.extend(std::iter::repeat_n(*n, usize::from(*n) + 1)),
        _ => {}
    }
    match read_all(&blob, digest) {
        Ok(got) => {
            assert_eq!(blob, original, "a changed blob was read without error");
            assert_eq!(got, plain);
        }
        Err(()) => assert_ne!(blob, original, "an intact blob failed to read"),
    }
    let at = edits.first().map_or(0, |x| u64::from(*x) * 997) % (size as u64 + 2);
    read_at(&blob, digest, &plain, at, 1 + edits.len() * 50);
});
