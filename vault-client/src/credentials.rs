//! Who the client is: a bearer token given by someone else (an owner's token from an identity
//! provider, the operator's), or an agency's key file from which tokens are minted and
//! statements signed.
//!
//! A key file holds the 32-byte Ed25519 seed in standard base64 (surrounding whitespace
//! allowed): the format of the server's `--dev` key files and of `vault keygen`.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use vault::crypto::token::{mint, Claims};
use vault::engine::provenance::{sign_statement, statement};
use vault::{AgencyId, KeyId, NewDocument, OwnerId, Timestamp};
use zeroize::Zeroizing;

use crate::Error;

/// Lifetime of the tokens the client mints for itself, seconds (well under the server's
/// default maximum of one hour).
pub const TOKEN_LIFETIME: i64 = 300;

/// An Ed25519 signing key read from a key file; prints as `[redacted]`.
pub struct KeyFile {
    key: SigningKey,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl KeyFile {
    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(Error::io(path))?);
        Self::parse(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses the key-file text.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let raw = Zeroizing::new(B64.decode(text.trim()).map_err(|_| "a key file holds a base64 Ed25519 seed")?);
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(raw.as_slice().try_into().map_err(|_| "the seed in a key file is 32 bytes")?);
        Ok(Self { key: SigningKey::from_bytes(&seed) })
    }

    /// A new random key.
    pub fn generate() -> Self {
        let seed = vault::SecretKey::generate();
        Self { key: SigningKey::from_bytes(seed.expose()) }
    }

    /// The key-file text (keep it secret).
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", B64.encode(self.key.to_bytes())))
    }

    /// The public key, standard base64 (what `--operator-key`, `--identity-provider` and the
    /// agency registry take).
    pub fn public_key(&self) -> String {
        B64.encode(self.key.verifying_key().to_bytes())
    }

    /// Mints a token with these claims, valid from now for `lifetime` seconds.
    pub fn token(&self, kid: &str, iss: &str, sub: &str, aud: &str, lifetime: i64) -> String {
        let now = Timestamp::now().unix();
        mint(&self.key, &Claims { kid, iss, sub, aud, iat: now, exp: now + lifetime })
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }
}

/// An agency's identity: its id, the key id registered for it, and the key.
#[derive(Debug)]
pub struct AgencyCredentials {
    /// The agency.
    pub agency: AgencyId,
    /// The registered key id.
    pub key_id: KeyId,
    key: KeyFile,
}

impl AgencyCredentials {
    /// Credentials from a key.
    pub fn new(agency: AgencyId, key_id: KeyId, key: KeyFile) -> Self {
        Self { agency, key_id, key }
    }

    /// A fresh short-lived token for audience `aud`.
    pub fn token(&self, aud: &str) -> String {
        let id = self.agency.as_str();
        self.key.token(self.key_id.as_str(), id, id, aud, TOKEN_LIFETIME)
    }

    /// Makes `doc` this agency's signed deposit about a content of `size` bytes for `owner`:
    /// sets `issuer` (and `issued_at` to now if absent) and signs the statement of api.md.
    pub fn sign(&self, owner: &OwnerId, size: u64, doc: &mut NewDocument) {
        doc.issuer = Some(self.agency.clone());
        if doc.issued_at.is_none() {
            doc.issued_at = Some(Timestamp::now());
        }
        doc.signature = None;
        let text = statement(owner, size, doc);
        doc.signature = Some(sign_statement(self.key.signing_key(), &self.key_id, &text));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused() {
        let k = KeyFile::generate();
        let back = KeyFile::parse(&k.to_text()).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        assert_eq!(format!("{k:?}"), "[redacted]");
        assert!(KeyFile::parse("not base64!").is_err());
        assert!(KeyFile::parse(&B64.encode([1u8; 31])).is_err());
        assert!(KeyFile::parse(&format!("  {}  \n", B64.encode([1u8; 32]))).is_ok());
    }

    #[test]
    fn signed_deposits_verify_with_the_agency_key() {
        // The api.md vector: this seed signs this statement to this signature.
        let key = KeyFile::parse("NXntv7KoKhPkvJGl4dtCoCHAHicS1p/iPxhLHtSPATk=").unwrap();
        assert_eq!(key.public_key(), "Vwm8nGAcxYX4s+lhc7sBQ2U9GUbXrXvnsGfRgQfuNBE=");
        let creds =
            AgencyCredentials::new(AgencyId::parse("ubnd-xa-hung-dong").unwrap(), KeyId::parse("k1").unwrap(), key);
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let content = "Giấy khai sinh — bản điện tử\n";
        let mut doc: NewDocument = serde_json::from_value(serde_json::json!({
            "digest": vault::Digest::of(content.as_bytes()).to_string(),
            "doc_type": "giay-khai-sinh", "title": "Giấy khai sinh",
            "media_type": "text/plain; charset=utf-8", "issued_at": "2024-05-06T07:08:09Z",
            "reference": "123/2024/TLKS", "procedure": "1.001193"
        }))
        .unwrap();
        creds.sign(&owner, content.len() as u64, &mut doc);
        assert_eq!(
            doc.signature.unwrap().value,
            "6Q0k7SuehrzeYlVGwdaopohUJjxtG05P7DJUbiaW5R5z023eThiamuIn71AOKF8Cmfs9a+QjK6HmOqOg/HsKDw=="
        );
    }
}
