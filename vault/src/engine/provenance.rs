//! Issuer provenance: the agency registry, the signed statement and its verification.
//!
//! An issuing agency signs, with Ed25519, a versioned, domain-separated statement of a document
//! (api.md "The signed statement"; SPEC.md §13 with test vectors). Deposits by an agency are
//! accepted only with a signature that verifies (`verify_strict`) under a key of that agency
//! valid at `issued_at`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crypto::seal::{self, aad};
use crate::engine::document::{check_text, NewDocument, Signature};
use crate::engine::vault::Vault;
use crate::ids::{AgencyId, IdError, KeyId, OwnerId};
use crate::storage::layout::{self, prefix};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// The first line of every statement.
pub const STATEMENT_VERSION: &str = "vault-statement-v1";

/// The exact bytes an issuer signs for a document of `size` bytes deposited for `owner`.
pub fn statement(owner: &OwnerId, size: u64, doc: &NewDocument) -> String {
    let opt = |t: Option<Timestamp>| t.map(|t| t.to_string()).unwrap_or_default();
    format!(
        "{STATEMENT_VERSION}\nowner:{owner}\ndigest:{}\nsize:{size}\ndoc_type:{}\nmedia_type:{}\ntitle:{}\nissuer:{}\nissued_at:{}\nvalid_from:{}\nvalid_until:{}\nreference:{}\nprocedure:{}\n",
        doc.digest,
        doc.doc_type,
        doc.media_type,
        doc.title,
        doc.issuer.as_ref().map(|a| a.as_str()).unwrap_or_default(),
        opt(doc.issued_at),
        opt(doc.valid_from),
        opt(doc.valid_until),
        doc.reference.as_deref().unwrap_or_default(),
        doc.procedure.as_ref().map(|p| p.as_str()).unwrap_or_default(),
    )
}

/// Signs a statement with an issuer key: what a dossier system does (see also SPEC.md for doing
/// it without this crate). Returns the signature in the form a deposit carries.
pub fn sign_statement(key: &SigningKey, key_id: &KeyId, statement: &str) -> Signature {
    Signature { key_id: key_id.clone(), value: B64.encode(key.sign(statement.as_bytes()).to_bytes()) }
}

/// An Ed25519 public key: a valid curve point that is not of small order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Accepts 32 bytes that decode to a point of large order (weak keys are refused, since
    /// signatures under them prove nothing).
    pub fn from_bytes(b: [u8; 32]) -> Result<Self, IdError> {
        let vk = VerifyingKey::from_bytes(&b)
            .map_err(|_| IdError { kind: "public key", reason: "it is not an Ed25519 point" })?;
        if vk.is_weak() {
            return Err(IdError { kind: "public key", reason: "it is a weak (small-order) Ed25519 key" });
        }
        Ok(Self(b))
    }

    /// Parses standard base64 of 32 bytes.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = IdError { kind: "public key", reason: "it must be the standard base64 of 32 bytes" };
        let v = B64.decode(s).map_err(|_| bad.clone())?;
        Self::from_bytes(v.as_slice().try_into().map_err(|_| bad)?)
    }

    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies an Ed25519 signature with `verify_strict` (no malleable or small-order forms).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(vk) = VerifyingKey::from_bytes(&self.0) else { return false };
        vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig)).is_ok()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", B64.encode(self.0))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One key of an agency, for tokens and statements alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgencyKey {
    /// The key id (`kid` of tokens, `key_id` of signatures).
    pub id: KeyId,
    /// The Ed25519 public key.
    pub public_key: PublicKey,
    /// Valid from (inclusive).
    pub not_before: Timestamp,
    /// Valid until (exclusive); `None` = no end.
    #[serde(default)]
    pub not_after: Option<Timestamp>,
}

impl AgencyKey {
    /// `not_before ≤ t < not_after`.
    pub fn valid_at(&self, t: Timestamp) -> bool {
        self.not_before <= t && self.not_after.is_none_or(|end| t < end)
    }
}

/// What the operator registers for an agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewAgency {
    /// Human name, 1 to 200 characters.
    pub name: String,
    /// The agency's keys.
    pub keys: Vec<AgencyKey>,
}

/// A registered agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agency {
    /// The agency id.
    pub id: AgencyId,
    /// Human name.
    pub name: String,
    /// Its keys.
    pub keys: Vec<AgencyKey>,
    /// When first registered.
    pub created_at: Timestamp,
    /// When last changed.
    pub updated_at: Timestamp,
}

impl Agency {
    /// The key with this id, if valid at `t`.
    pub fn key_valid_at(&self, id: &KeyId, t: Timestamp) -> Option<&AgencyKey> {
        self.keys.iter().find(|k| &k.id == id && k.valid_at(t))
    }
}

/// Most keys one agency may have.
pub const MAX_AGENCY_KEYS: usize = 100;

fn agency_key(id: &AgencyId) -> Vec<u8> {
    layout::agency_key(id.as_str().as_bytes())
}

/// Marks that a key id signed a stored document (so it cannot be dropped).
fn used_key(agency: &AgencyId, key: &KeyId) -> Vec<u8> {
    layout::used_key(agency.as_str().as_bytes(), key.as_str().as_bytes())
}

/// The name of the registry's change lock in a shared store ([`crate::storage::MetaStore::lock`]).
const REGISTRY_LOCK: &str = "vault-registry";

impl Vault {
    /// Creates (`true`) or replaces (`false`) an agency's registration. Dropping a key id that
    /// signed stored documents, or changing its public key, is a [`Error::Conflict`].
    pub fn put_agency(&self, id: &AgencyId, new: NewAgency, now: Timestamp) -> Result<(Agency, bool), Error> {
        self.put_agency_with(id, new, now, None)
    }

    pub(crate) fn put_agency_with(
        &self,
        id: &AgencyId,
        new: NewAgency,
        now: Timestamp,
        audit: Option<&crate::log::audit::Draft>,
    ) -> Result<(Agency, bool), Error> {
        check_text("name", &new.name, 200)?;
        if new.name.is_empty() {
            return Err(IdError { kind: "name", reason: "it must not be empty" }.into());
        }
        if new.keys.len() > MAX_AGENCY_KEYS {
            return Err(Error::InvalidRequest(format!("an agency has at most {MAX_AGENCY_KEYS} keys")));
        }
        for (i, k) in new.keys.iter().enumerate() {
            if new.keys[..i].iter().any(|o| o.id == k.id) {
                return Err(Error::InvalidRequest(format!("key id {} appears twice", k.id)));
            }
            if k.not_after.is_some_and(|end| end <= k.not_before) {
                return Err(Error::InvalidRequest(format!("key {}: not_after must be after not_before", k.id)));
            }
        }
        let _guard = self.registry_lock();
        // Registry changes of every instance sharing the store, one at a time.
        let _remote = self.meta().lock(crate::storage::LockName::Named(REGISTRY_LOCK))?;
        let old = self.agency_uncached(id)?;
        if let Some(old) = &old {
            for k in &old.keys {
                let kept = new.keys.iter().find(|n| n.id == k.id);
                let used = self.meta().get(&used_key(id, &k.id))?.is_some();
                match kept {
                    None if used => {
                        return Err(Error::Conflict(format!(
                            "key {} signed stored documents and cannot be dropped; set its not_after instead",
                            k.id
                        )))
                    }
                    Some(n) if used && n.public_key != k.public_key => {
                        return Err(Error::Conflict(format!(
                            "key {} signed stored documents; its public key cannot change",
                            k.id
                        )))
                    }
                    _ => {}
                }
            }
        }
        let agency = Agency {
            id: id.clone(),
            name: new.name,
            keys: new.keys,
            created_at: old.as_ref().map_or(now, |o| o.created_at),
            updated_at: now,
        };
        let key = agency_key(id);
        let value = seal::seal(&self.vault_records, &aad(&key), &serde_json::to_vec(&agency).unwrap_or_default());
        match audit {
            Some(d) => {
                let (ticket, _) = self.apply_audited(vec![Op::Put(key, value)], d)?;
                self.wait_ticket(ticket)?;
            }
            None => self.apply_durable(vec![Op::Put(key, value)])?,
        }
        // Still under the registry lock: no reader can cache the old registration after this.
        self.agency_cache().remove(id);
        Ok((agency, old.is_none()))
    }

    fn agency_cache(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<AgencyId, Option<Agency>>> {
        // The map holds whole values only; a poisoned lock cannot leave a half-written entry.
        self.agency_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A registered agency.
    pub fn agency(&self, id: &AgencyId) -> Result<Option<Agency>, Error> {
        // On a shared store another instance may change the registration at any time: it is
        // read every time (SPEC.md §9a "Several instances").
        if self.shared_store() {
            return self.agency_uncached(id);
        }
        if let Some(hit) = self.agency_cache().get(id) {
            return Ok(hit.clone());
        }
        let _guard = self.registry_lock();
        let found = self.agency_uncached(id)?;
        let mut cache = self.agency_cache();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn agency_uncached(&self, id: &AgencyId) -> Result<Option<Agency>, Error> {
        let key = agency_key(id);
        match self.meta().get(&key)? {
            None => Ok(None),
            Some(v) => {
                let plain = seal::open(&self.vault_records, &aad(&key), &v)
                    .map_err(|_| Error::Corrupt(format!("agency record {id}")))?;
                let a: Agency =
                    serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(format!("agency record {id}")))?;
                Ok(Some(a))
            }
        }
    }

    /// Every registered agency, by id.
    pub fn agencies(&self) -> Result<Vec<Agency>, Error> {
        let mut out = Vec::new();
        for item in self.meta().scan(&[prefix::AGENCY]) {
            let (k, v) = item?;
            let plain = seal::open(&self.vault_records, &aad(&k), &v)
                .map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?;
            out.push(
                serde_json::from_slice(&plain).map_err(|_| Error::Corrupt(crate::engine::vault::describe_key(&k)))?,
            );
        }
        Ok(out)
    }

    /// Checks an issuer's signature over the statement of `doc` (content of `size` bytes for
    /// `owner`); returns the marker to store with the document.
    pub(crate) fn verify_issuer(&self, owner: &OwnerId, size: u64, doc: &NewDocument) -> Result<Op, Error> {
        let issuer =
            doc.issuer.as_ref().ok_or_else(|| Error::InvalidRequest("a signed deposit names its issuer".into()))?;
        let sig = doc
            .signature
            .as_ref()
            .ok_or_else(|| Error::InvalidSignature("an agency deposit must carry the issuer's signature".into()))?;
        let issued_at =
            doc.issued_at.ok_or_else(|| Error::InvalidRequest("a signed deposit needs issued_at".into()))?;
        let agency = self
            .agency(issuer)?
            .ok_or_else(|| Error::UnknownIssuerKey(format!("issuer {issuer} is not registered")))?;
        let key = agency.key_valid_at(&sig.key_id, issued_at).ok_or_else(|| {
            Error::UnknownIssuerKey(format!("issuer {issuer} has no key {} valid at {issued_at}", sig.key_id))
        })?;
        // And valid now: a retired key cannot back-date new documents (SPEC.md §13).
        if !key.valid_at(crate::time::Timestamp::now()) {
            return Err(Error::UnknownIssuerKey(format!("key {} of issuer {issuer} is no longer valid", sig.key_id)));
        }
        let raw = B64
            .decode(&sig.value)
            .map_err(|_| Error::InvalidSignature("the signature is not standard base64".into()))?;
        let raw: [u8; 64] = raw
            .as_slice()
            .try_into()
            .map_err(|_| Error::InvalidSignature("an Ed25519 signature is 64 bytes".into()))?;
        if !key.public_key.verify(statement(owner, size, doc).as_bytes(), &raw) {
            return Err(Error::InvalidSignature("it does not verify over the document's statement".into()));
        }
        Ok(Op::Put(used_key(issuer, &sig.key_id), Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Digest, DocType, Purpose};

    /// api.md's vector, made with PyNaCl and the blake3 package.
    #[test]
    fn api_md_statement_vector() {
        let content = B64.decode("R2nhuqV5IGtoYWkgc2luaCDigJQgYuG6o24gxJFp4buHbiB04butCg==").unwrap();
        let digest = Digest::of(&content);
        assert_eq!(digest.to_hex(), "2dfecf5537128321903c2470e0125ba9cc23fc8fea9d057e99075c9952741901");
        let seed: [u8; 32] = B64.decode("NXntv7KoKhPkvJGl4dtCoCHAHicS1p/iPxhLHtSPATk=").unwrap().try_into().unwrap();
        let sk = SigningKey::from_bytes(&seed);
        assert_eq!(B64.encode(sk.verifying_key().to_bytes()), "Vwm8nGAcxYX4s+lhc7sBQ2U9GUbXrXvnsGfRgQfuNBE=");
        let doc = NewDocument {
            digest,
            doc_type: DocType::parse("giay-khai-sinh").unwrap(),
            title: "Giấy khai sinh".into(),
            media_type: "text/plain; charset=utf-8".into(),
            file_name: None,
            issuer: Some(AgencyId::parse("ubnd-xa-hung-dong").unwrap()),
            issued_at: Some(Timestamp::parse("2024-05-06T07:08:09Z").unwrap()),
            valid_from: None,
            valid_until: None,
            reference: Some("123/2024/TLKS".into()),
            procedure: Some(Purpose::parse("1.001193").unwrap()),
            signature: None,
        };
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let st = statement(&owner, content.len() as u64, &doc);
        assert_eq!(B64.encode(st.as_bytes()), "dmF1bHQtc3RhdGVtZW50LXYxCm93bmVyOmNpdGl6ZW46MDAxMDk5MDEyMzQ1CmRpZ2VzdDoyZGZlY2Y1NTM3MTI4MzIxOTAzYzI0NzBlMDEyNWJhOWNjMjNmYzhmZWE5ZDA1N2U5OTA3NWM5OTUyNzQxOTAxCnNpemU6NDAKZG9jX3R5cGU6Z2lheS1raGFpLXNpbmgKbWVkaWFfdHlwZTp0ZXh0L3BsYWluOyBjaGFyc2V0PXV0Zi04CnRpdGxlOkdp4bqleSBraGFpIHNpbmgKaXNzdWVyOnVibmQteGEtaHVuZy1kb25nCmlzc3VlZF9hdDoyMDI0LTA1LTA2VDA3OjA4OjA5Wgp2YWxpZF9mcm9tOgp2YWxpZF91bnRpbDoKcmVmZXJlbmNlOjEyMy8yMDI0L1RMS1MKcHJvY2VkdXJlOjEuMDAxMTkzCg==");
        let sig = sign_statement(&sk, &KeyId::parse("k1").unwrap(), &st);
        assert_eq!(
            sig.value,
            "6Q0k7SuehrzeYlVGwdaopohUJjxtG05P7DJUbiaW5R5z023eThiamuIn71AOKF8Cmfs9a+QjK6HmOqOg/HsKDw=="
        );
        let pk = PublicKey::from_bytes(sk.verifying_key().to_bytes()).unwrap();
        let raw: [u8; 64] = B64.decode(&sig.value).unwrap().try_into().unwrap();
        assert!(pk.verify(st.as_bytes(), &raw));
    }

    /// RFC 8032 §7.1 test vectors 1-3 through our verify path (`verify_strict`).
    #[test]
    fn rfc8032_vectors() {
        let vectors = [
            ("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "", "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
            ("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72", "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
            ("fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82", "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
        ];
        for (pk, msg, sig) in vectors {
            let pk = PublicKey::from_bytes(hex::decode(pk).unwrap().try_into().unwrap()).unwrap();
            let msg = hex::decode(msg).unwrap();
            let sig: [u8; 64] = hex::decode(sig).unwrap().try_into().unwrap();
            assert!(pk.verify(&msg, &sig));
            let mut bad = sig;
            bad[10] ^= 1;
            assert!(!pk.verify(&msg, &bad));
            assert!(!pk.verify(b"other", &sig));
        }
    }

    #[test]
    fn weak_and_invalid_keys_are_refused() {
        // The identity point (small order) and a non-canonical encoding.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(PublicKey::from_bytes(identity).is_err());
        assert!(PublicKey::from_bytes([0u8; 32]).is_err());
        assert!(PublicKey::parse("AAAA").is_err());
    }

    #[test]
    fn validity_windows() {
        let k = AgencyKey {
            id: KeyId::parse("k").unwrap(),
            public_key: PublicKey::from_bytes(SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes()).unwrap(),
            not_before: Timestamp::parse("2024-01-01T00:00:00Z").unwrap(),
            not_after: Some(Timestamp::parse("2025-01-01T00:00:00Z").unwrap()),
        };
        assert!(!k.valid_at(Timestamp::parse("2023-12-31T23:59:59Z").unwrap()));
        assert!(k.valid_at(Timestamp::parse("2024-01-01T00:00:00Z").unwrap()));
        assert!(!k.valid_at(Timestamp::parse("2025-01-01T00:00:00Z").unwrap()));
    }
}
