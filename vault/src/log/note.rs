//! The vault's own Ed25519 key and the C2SP signed-note format it signs checkpoints with.
//!
//! A signed note (<https://c2sp.org/signed-note>) is a UTF-8 text ending in a newline, a blank
//! line, and one line per signature: `— <key name> <base64(key hash (4) || signature (64))>`.
//! For Ed25519 the key hash is the first four bytes of
//! `SHA-256(key name || "\n" || 0x01 || public key)`, and the verifier key is written
//! `<name>+<key hash hex>+<base64(0x01 || public key)>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Signs with the vault's Ed25519 key: checkpoints, consent and erasure receipts.
pub struct VaultSigner {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for VaultSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultSigner")
            .field("name", &self.name)
            .field("public_key", &B64.encode(self.public_key()))
            .finish()
    }
}

/// The signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

/// The 4-byte key hash of a note verifier key.
pub fn key_hash(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl VaultSigner {
    /// A signer named `name` (a note key name: no spaces, no `+`) from a 32-byte seed.
    pub fn new(name: &str, seed: &[u8; 32]) -> Self {
        Self { name: name.to_owned(), key: SigningKey::from_bytes(seed) }
    }

    /// The key name used in notes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The C2SP verifier-key form: `<name>+<8 hex>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        let pk = self.public_key();
        let mut typed = vec![ED25519];
        typed.extend_from_slice(&pk);
        format!("{}+{}+{}", self.name, hex::encode(key_hash(&self.name, &pk)), B64.encode(typed))
    }

    /// A raw Ed25519 signature.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// Signs `text` (which must end in a newline) as a signed note.
    pub fn sign_note(&self, text: &str) -> String {
        let sig = self.sign(text.as_bytes());
        let mut blob = key_hash(&self.name, &self.public_key()).to_vec();
        blob.extend_from_slice(&sig);
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// Why a signed note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a well-formed note or verifier key.
    #[error("malformed signed note: {0}")]
    Malformed(&'static str),
    /// No signature by the expected key verifies.
    #[error("the note is not signed by the expected key")]
    BadSignature,
}

/// A parsed verifier key `<name>+<hash>+<base64(0x01 || key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// Key name.
    pub name: String,
    /// Ed25519 public key.
    pub public_key: [u8; 32],
}

impl NoteVerifier {
    /// Parses the verifier-key form, checking that the hash matches the key.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        // The name has no `+` and the hash is hex; the base64 key may contain `+`.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Malformed("a verifier key is name+hash+key"));
        };
        let typed = B64.decode(key).map_err(|_| NoteError::Malformed("verifier key is not base64"))?;
        if typed.len() != 33 || typed[0] != ED25519 {
            return Err(NoteError::Malformed("verifier key is not an Ed25519 key"));
        }
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&typed[1..]);
        if hex::encode(key_hash(name, &public_key)) != hash {
            return Err(NoteError::Malformed("verifier key hash does not match"));
        }
        Ok(Self { name: name.to_owned(), public_key })
    }

    /// Verifies a signed note and returns its text (without the signature block).
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed("signature lines must end in a newline"));
        }
        let vk = VerifyingKey::from_bytes(&self.public_key).map_err(|_| NoteError::BadSignature)?;
        let want_hash = key_hash(&self.name, &self.public_key);
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or(NoteError::Malformed("a signature line starts with an em dash"))?;
            let (name, b64) =
                rest.split_once(' ').ok_or(NoteError::Malformed("a signature line is name and signature"))?;
            if name != self.name {
                continue;
            }
            let blob = B64.decode(b64).map_err(|_| NoteError::Malformed("signature is not base64"))?;
            if blob.len() != 68 || blob[..4] != want_hash {
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&blob[4..]).map_err(|_| NoteError::BadSignature)?;
            if vk.verify_strict(text.as_bytes(), &sig).is_ok() {
                return Ok(text);
            }
        }
        Err(NoteError::BadSignature)
    }
}

/// A checkpoint body (C2SP tlog-checkpoint): origin, tree size, base64 root hash.
pub fn checkpoint_text(origin: &str, size: u64, root: &[u8; 32]) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// Parses a checkpoint body into (origin, size, root).
pub fn parse_checkpoint(text: &str) -> Result<(String, u64, [u8; 32]), NoteError> {
    let mut lines = text.lines();
    let origin = lines.next().filter(|s| !s.is_empty()).ok_or(NoteError::Malformed("checkpoint has no origin"))?;
    let size = lines
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(NoteError::Malformed("checkpoint size is not a number"))?;
    let root = lines
        .next()
        .and_then(|s| B64.decode(s).ok())
        .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
        .ok_or(NoteError::Malformed("checkpoint root is not base64 of 32 bytes"))?;
    Ok((origin.to_owned(), size, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_round_trip_and_tampering() {
        let s = VaultSigner::new("vault.example", &[5; 32]);
        let text = checkpoint_text("vault.example/log", 42, &[9; 32]);
        let note = s.sign_note(&text);
        let v = NoteVerifier::parse(&s.verifier_key()).unwrap();
        assert_eq!(v.verify(&note).unwrap(), text);
        assert_eq!(parse_checkpoint(&text).unwrap(), ("vault.example/log".into(), 42, [9; 32]));
        let tampered = note.replacen("42", "43", 1);
        assert_eq!(v.verify(&tampered), Err(NoteError::BadSignature));
        let other = VaultSigner::new("vault.example", &[6; 32]);
        assert_eq!(NoteVerifier::parse(&other.verifier_key()).unwrap().verify(&note), Err(NoteError::BadSignature));
        assert!(NoteVerifier::parse("vault+00000000+AQ==").is_err());
        assert!(v.verify("no signature").is_err());
    }

    /// The example key of the C2SP signed-note specification (from golang.org/x/mod/sumdb/note):
    /// our key-hash computation must reproduce its verifier key exactly.
    #[test]
    fn c2sp_example_verifier_key() {
        let vk = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let parsed = NoteVerifier::parse(vk).unwrap();
        assert_eq!(parsed.name, "PeterNeumann");
    }
}
