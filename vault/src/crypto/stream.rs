//! The blob format: AES-256-GCM in a STREAM construction (as in age), with a header that wraps
//! a fresh per-content key and binds the blob to its owner and digest.
//!
//! Byte layout (all integers big-endian; SPEC.md "Blob format" has test vectors):
//!
//! ```text
//! offset size
//!  0      8   magic "VAULTBLB"
//!  8      1   format version = 1
//!  9      1   log2(chunk size) = 16 (64 KiB)
//! 10      2   reserved, zero
//! 12      8   plaintext size in bytes (u64)
//! 20     12   nonce of the key wrap
//! 32     32   content key, encrypted (AES-256-GCM, owner blob-wrap key)
//! 64     16   tag of the key wrap; associated data = bytes 0..20 || binding
//! 80      -   chunks: chunk i = AES-256-GCM(content key, nonce = i as 11 bytes || last flag,
//!             plaintext[i*64KiB ..][..64KiB]) || tag (16); the last chunk has flag 0x01, every
//!             other 0x00; an empty content is one empty last chunk.
//! ```
//!
//! The binding is `owner reference (16) || digest (32)`, so a blob copied under another owner's
//! or content's name does not open. Reading verifies every chunk's tag, the chunk count implied
//! by the size, the file length, and (when the whole content is read in order) the BLAKE3 digest
//! of the plaintext. Every failure is the same opaque [`DecryptError`].

use std::io::{self, Read, Seek, SeekFrom, Write};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::crypto::keys::{random_array, SecretKey};
use crate::Digest;

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << CHUNK_LOG2;
const CHUNK_LOG2: u8 = 16;
/// Bytes of a GCM tag.
pub const TAG: usize = 16;
/// Bytes of the blob header.
pub const HEADER_LEN: usize = 80;
const MAGIC: &[u8; 8] = b"VAULTBLB";
const VERSION: u8 = 1;

/// The one error for any blob that does not decrypt and verify: altered, truncated, extended,
/// reordered, wrong key, wrong owner, wrong digest. It says nothing more, so it is no oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("content failed authentication")]
pub struct DecryptError;

impl From<DecryptError> for io::Error {
    fn from(e: DecryptError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Whether an I/O error from a [`BlobReader`] is the opaque decryption failure.
pub fn is_decrypt_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<DecryptError>())
}

/// Number of chunks of a content of `size` bytes (at least one).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK as u64).max(1)
}

/// Length of the blob of a content of `size` bytes.
pub fn blob_len(size: u64) -> u64 {
    HEADER_LEN as u64 + size + chunk_count(size) * TAG as u64
}

fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

fn header_aad(prefix: &[u8], binding: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(20 + binding.len());
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(binding);
    aad
}

/// Encrypts a content into a blob while hashing it. Write the plaintext with [`Write`] (or
/// [`BlobWriter::update`]), then [`BlobWriter::finish`] to learn the digest, then
/// [`Finished::write_header`] once the caller has decided to keep it.
pub struct BlobWriter<W: Write + Seek> {
    out: W,
    key: SecretKey,
    cipher: Aes256Gcm,
    hasher: blake3::Hasher,
    /// Plaintext, then ciphertext, of the chunk being written. Content bytes are not key
    /// material and are not wiped (wiping 64 KiB byte by byte on every drop costs more than a
    /// small put); keys are.
    buf: Vec<u8>,
    index: u64,
    size: u64,
}

impl<W: Write + Seek> std::fmt::Debug for BlobWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter").field("size", &self.size).finish_non_exhaustive()
    }
}

impl<W: Write + Seek> BlobWriter<W> {
    /// Starts a blob at the current position of `out` (normally an empty file), with a fresh
    /// random content key.
    pub fn new(out: W) -> io::Result<Self> {
        Self::with_key(out, SecretKey::generate())
    }

    /// Starts a blob with a given content key (test vectors only; real blobs use fresh keys).
    pub fn with_key(mut out: W, key: SecretKey) -> io::Result<Self> {
        out.write_all(&[0u8; HEADER_LEN])?;
        let cipher = Aes256Gcm::new(key.expose().into());
        let buf = Vec::with_capacity(CHUNK + TAG);
        Ok(Self { out, key, cipher, hasher: blake3::Hasher::new(), buf, index: 0, size: 0 })
    }

    /// Encrypts and writes the buffered chunk (which is full) as a non-last chunk.
    fn emit(&mut self, last: bool) -> io::Result<()> {
        self.hasher.update(&self.buf);
        let nonce = chunk_nonce(self.index, last);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], &mut self.buf)
            .map_err(|_| io::Error::other("chunk encryption failed"))?;
        self.buf.extend_from_slice(&tag);
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Adds plaintext.
    pub fn update(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.buf.len() == CHUNK {
                // More data follows, so the full buffer is not the last chunk.
                self.emit(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            self.size += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// Plaintext bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Encrypts the last chunk and returns the digest and size; the header is still blank.
    pub fn finish(mut self) -> io::Result<Finished<W>> {
        self.emit(true)?;
        let digest = Digest::from(self.hasher.finalize());
        Ok(Finished { out: self.out, key: self.key, digest, size: self.size })
    }
}

impl<W: Write + Seek> Write for BlobWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.update(data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A blob whose chunks are written and whose header is not.
pub struct Finished<W> {
    out: W,
    key: SecretKey,
    digest: Digest,
    size: u64,
}

impl<W> std::fmt::Debug for Finished<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished").field("digest", &self.digest).field("size", &self.size).finish()
    }
}

impl<W: Write + Seek> Finished<W> {
    /// BLAKE3 of the plaintext.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Plaintext size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Wraps the content key under `wrap_key`, bound to `binding`, writes the header at the
    /// start of the blob and returns the output (not yet synced).
    pub fn write_header(self, wrap_key: &SecretKey, binding: &[u8]) -> io::Result<W> {
        self.write_header_with_nonce(wrap_key, binding, random_array())
    }

    /// [`Finished::write_header`] with a given wrap nonce: for test vectors only.
    pub(crate) fn write_header_with_nonce(
        mut self,
        wrap_key: &SecretKey,
        binding: &[u8],
        nonce: [u8; 12],
    ) -> io::Result<W> {
        let header = make_header(&self.key, self.size, wrap_key, binding, nonce)?;
        let end = self.out.stream_position()?;
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header)?;
        self.out.seek(SeekFrom::Start(end))?;
        Ok(self.out)
    }
}

fn make_header(
    key: &SecretKey,
    size: u64,
    wrap_key: &SecretKey,
    binding: &[u8],
    nonce: [u8; 12],
) -> io::Result<[u8; HEADER_LEN]> {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8] = VERSION;
    h[9] = CHUNK_LOG2;
    h[12..20].copy_from_slice(&size.to_be_bytes());
    h[20..32].copy_from_slice(&nonce);
    h[32..64].copy_from_slice(key.expose());
    let aad = header_aad(&h[..20], binding);
    let (_, rest) = h.split_at_mut(32);
    let (ct, tagspace) = rest.split_at_mut(32);
    let tag = Aes256Gcm::new(wrap_key.expose().into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, ct)
        .map_err(|_| io::Error::other("key wrap failed"))?;
    tagspace.copy_from_slice(&tag);
    Ok(h)
}

/// Reads a blob back: `Read` gives the plaintext, `Seek` moves within the plaintext.
pub struct BlobReader<R: Read + Seek> {
    inner: R,
    cipher: Aes256Gcm,
    size: u64,
    chunks: u64,
    digest: Digest,
    /// Plaintext of chunk `buf_index`, if any is loaded (content, not key material: not wiped).
    buf: Vec<u8>,
    buf_index: Option<u64>,
    pos: u64,
    /// Chunks 0..hashed have been hashed in order; hashing stops at the first out-of-order read.
    hasher: Option<blake3::Hasher>,
    hashed: u64,
    failed: bool,
}

impl<R: Read + Seek> std::fmt::Debug for BlobReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader").field("size", &self.size).field("pos", &self.pos).finish_non_exhaustive()
    }
}

impl<R: Read + Seek> BlobReader<R> {
    /// Opens a blob: checks the header, unwraps the content key with `wrap_key` and `binding`,
    /// and checks the blob's length. `digest` is what the whole plaintext must hash to.
    pub fn open(mut inner: R, wrap_key: &SecretKey, binding: &[u8], digest: Digest) -> io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut h = [0u8; HEADER_LEN];
        read_exact_or_opaque(&mut inner, &mut h)?;
        if &h[..8] != MAGIC || h[8] != VERSION || h[9] != CHUNK_LOG2 || h[10..12] != [0, 0] {
            return Err(DecryptError.into());
        }
        let mut size_bytes = [0u8; 8];
        size_bytes.copy_from_slice(&h[12..20]);
        let size = u64::from_be_bytes(size_bytes);
        if size > u64::MAX / 2 || len != blob_len(size) {
            return Err(DecryptError.into());
        }
        let aad = header_aad(&h[..20], binding);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&h[32..64]);
        Aes256Gcm::new(wrap_key.expose().into())
            .decrypt_in_place_detached(Nonce::from_slice(&h[20..32]), &aad, key.as_mut_slice(), h[64..80].into())
            .map_err(|_| DecryptError)?;
        let cipher = Aes256Gcm::new(key.as_ref().into());
        Ok(Self {
            inner,
            cipher,
            size,
            chunks: chunk_count(size),
            digest,
            buf: Vec::with_capacity(CHUNK + TAG),
            buf_index: None,
            pos: 0,
            hasher: Some(blake3::Hasher::new()),
            hashed: 0,
            failed: false,
        })
    }

    /// Plaintext size, from the authenticated header.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest the content must have.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    fn load(&mut self, index: u64) -> io::Result<()> {
        if self.buf_index == Some(index) {
            return Ok(());
        }
        let last = index + 1 == self.chunks;
        let plain_len = if last { self.size - index * CHUNK as u64 } else { CHUNK as u64 } as usize;
        self.buf_index = None;
        self.inner.seek(SeekFrom::Start(HEADER_LEN as u64 + index * (CHUNK + TAG) as u64))?;
        self.buf.resize(plain_len + TAG, 0);
        read_exact_or_opaque(&mut self.inner, &mut self.buf)?;
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&self.buf[plain_len..]);
        self.buf.truncate(plain_len);
        self.cipher
            .decrypt_in_place_detached(Nonce::from_slice(&chunk_nonce(index, last)), &[], &mut self.buf, (&tag).into())
            .map_err(|_| DecryptError)?;
        self.buf_index = Some(index);
        if let Some(hasher) = self.hasher.as_mut() {
            if index == self.hashed {
                hasher.update(&self.buf);
                self.hashed += 1;
                if self.hashed == self.chunks && Digest::from(hasher.finalize()) != self.digest {
                    return Err(DecryptError.into());
                }
            } else if index > self.hashed {
                // Out of order: this read can no longer check the whole-content digest; every
                // chunk is still authenticated and bound to this blob by the header.
                self.hasher = None;
            }
        }
        Ok(())
    }

    /// Whether the whole content was read in order and matched its digest.
    pub fn verified_whole(&self) -> bool {
        self.hasher.is_some() && self.hashed == self.chunks
    }
}

fn read_exact_or_opaque(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| if e.kind() == io::ErrorKind::UnexpectedEof { DecryptError.into() } else { e })
}

impl<R: Read + Seek> Read for BlobReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(DecryptError.into());
        }
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.size {
            if self.size == 0 {
                // The one empty chunk still has to authenticate.
                self.load(0).inspect_err(|_| self.failed = true)?;
            }
            return Ok(0);
        }
        let index = self.pos / CHUNK as u64;
        self.load(index).inspect_err(|_| self.failed = true)?;
        let off = (self.pos - index * CHUNK as u64) as usize;
        let n = (self.buf.len() - off).min(out.len());
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for BlobReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the content")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    const WRAP: SecretKey = SecretKey::from_bytes([9; 32]);

    fn binding(d: &Digest) -> Vec<u8> {
        let mut b = vec![1u8; 16];
        b.extend_from_slice(d.as_bytes());
        b
    }

    fn encrypt(data: &[u8]) -> (Vec<u8>, Digest) {
        let mut w = BlobWriter::new(Cursor::new(Vec::new())).unwrap();
        // Uneven writes exercise the buffering.
        for piece in data.chunks(7777) {
            w.write_all(piece).unwrap();
        }
        let f = w.finish().unwrap();
        let d = f.digest();
        assert_eq!(d, Digest::of(data));
        assert_eq!(f.size(), data.len() as u64);
        (f.write_header(&WRAP, &binding(&d)).unwrap().into_inner(), d)
    }

    fn decrypt(blob: &[u8], d: Digest, wrap: &SecretKey) -> io::Result<Vec<u8>> {
        let mut r = BlobReader::open(Cursor::new(blob), wrap, &binding(&d), d)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        assert!(r.verified_whole());
        Ok(out)
    }

    fn assert_opaque(r: io::Result<Vec<u8>>) {
        match r {
            Err(e) => assert!(is_decrypt_error(&e), "not the opaque error: {e}"),
            Ok(_) => panic!("tampered blob decrypted"),
        }
    }

    fn data_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn edge_sizes_round_trip() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5] {
            let data = data_of(len, 1);
            let (blob, d) = encrypt(&data);
            assert_eq!(blob.len() as u64, blob_len(len as u64));
            assert_eq!(decrypt(&blob, d, &WRAP).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn wrong_digest_binding_or_key() {
        let data = data_of(1000, 2);
        let (blob, d) = encrypt(&data);
        let other = Digest::of(b"other");
        assert_opaque(decrypt(&blob, other, &WRAP));
        assert_opaque(decrypt(&blob, d, &SecretKey::from_bytes([8; 32])));
        let mut b2 = vec![2u8; 16];
        b2.extend_from_slice(d.as_bytes());
        assert_opaque(BlobReader::open(Cursor::new(&blob), &WRAP, &b2, d).and_then(|mut r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        }));
    }

    #[test]
    fn empty_content_still_authenticates() {
        let (mut blob, d) = encrypt(&[]);
        let last = blob.len() - 1;
        blob[last] ^= 1;
        assert_opaque(decrypt(&blob, d, &WRAP));
    }

    #[test]
    fn chunk_swap_is_detected() {
        let data = data_of(3 * CHUNK, 3);
        let (blob, d) = encrypt(&data);
        let c = CHUNK + TAG;
        let mut swapped = blob.clone();
        swapped[HEADER_LEN..HEADER_LEN + c].copy_from_slice(&blob[HEADER_LEN + c..HEADER_LEN + 2 * c]);
        swapped[HEADER_LEN + c..HEADER_LEN + 2 * c].copy_from_slice(&blob[HEADER_LEN..HEADER_LEN + c]);
        assert_opaque(decrypt(&swapped, d, &WRAP));
        // Dropping the last chunk and relabelling the size is caught by the header tag.
        let mut cut = blob[..HEADER_LEN + 2 * c].to_vec();
        cut[12..20].copy_from_slice(&((2 * CHUNK) as u64).to_be_bytes());
        assert_opaque(decrypt(&cut, d, &WRAP));
    }

    #[test]
    fn ranges_read_the_right_bytes() {
        let data = data_of(3 * CHUNK + 100, 4);
        let (blob, d) = encrypt(&data);
        let mut r = BlobReader::open(Cursor::new(&blob), &WRAP, &binding(&d), d).unwrap();
        // Out of order: chunk 2 first.
        for (start, len) in [(2 * CHUNK + 7, CHUNK), (0usize, 10usize), (CHUNK - 3, 10), (3 * CHUNK + 90, 10)] {
            r.seek(SeekFrom::Start(start as u64)).unwrap();
            let mut got = vec![0u8; len];
            r.read_exact(&mut got).unwrap();
            assert_eq!(got, data[start..start + len]);
        }
        r.seek(SeekFrom::Start(data.len() as u64 + 5)).unwrap();
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        assert!(!r.verified_whole());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn round_trip_any_size(len in 0usize..4 * CHUNK + 10, seed in any::<u8>()) {
            let data = data_of(len, seed);
            let (blob, d) = encrypt(&data);
            prop_assert_eq!(decrypt(&blob, d, &WRAP).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_is_detected(len in prop_oneof![Just(0usize), Just(1), Just(CHUNK - 1), Just(CHUNK), Just(CHUNK + 1), 0..3 * CHUNK], bit in any::<usize>()) {
            let data = data_of(len, 5);
            let (mut blob, d) = encrypt(&data);
            let bit = bit % (blob.len() * 8);
            blob[bit / 8] ^= 1 << (bit % 8);
            assert_opaque(decrypt(&blob, d, &WRAP));
        }

        #[test]
        fn any_truncation_or_extension_is_detected(len in prop_oneof![Just(0usize), Just(1), Just(CHUNK - 1), Just(CHUNK), Just(CHUNK + 1), 0..3 * CHUNK], cut in any::<usize>(), extra in 1usize..100) {
            let data = data_of(len, 6);
            let (blob, d) = encrypt(&data);
            let cut = cut % blob.len();
            assert_opaque(decrypt(&blob[..cut], d, &WRAP));
            let mut longer = blob.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            assert_opaque(decrypt(&longer, d, &WRAP));
        }
    }
}
