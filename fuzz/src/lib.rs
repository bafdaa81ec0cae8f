//! Fixtures shared by the fuzz targets and the seed generator: fixed keys, so that seeds made
//! by `seeds` carry signatures the targets can verify, and a small vault for the token checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // fixtures: a failure here is a broken harness

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ed25519_dalek::SigningKey;
use vault::crypto::keys::SecretKey;
use vault::engine::provenance::{AgencyKey, NewAgency, PublicKey};
use vault::log::note::VaultSigner;
use vault::{AgencyId, KeyId, MasterKey, Timestamp, Vault};
use vault_server::http::auth::{AuthConfig, IdentityProvider};

/// The fixed "now" of the token checks (2027-01-15).
pub const NOW: i64 = 1_800_000_000;
/// The identity provider's name (`kid` and `iss` of owner tokens).
pub const PROVIDER: &str = "idp";
/// The registered agency and its key id.
pub const AGENCY: &str = "so-tp";
/// The agency's key id.
pub const AGENCY_KID: &str = "k1";
/// The owner of the seeds.
pub const OWNER: &str = "citizen:001099012345";

/// The identity provider's key.
pub fn provider_key() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}
/// The operator's key.
pub fn operator_key() -> SigningKey {
    SigningKey::from_bytes(&[12; 32])
}
/// The agency's key (tokens and statements).
pub fn agency_key() -> SigningKey {
    SigningKey::from_bytes(&[13; 32])
}
/// The signer of checkpoints and receipts (the vault's key).
pub fn note_signer() -> VaultSigner {
    VaultSigner::new("vault.example", &[5; 32])
}
/// The blob-wrap key of the blob target.
pub const WRAP: SecretKey = SecretKey::from_bytes([9; 32]);

/// The server's token settings: audience `vault`, one provider, the operator.
pub fn auth_config() -> AuthConfig {
    let mut providers = HashMap::new();
    providers.insert(PROVIDER.to_owned(), IdentityProvider { key: provider_key().verifying_key(), only: None });
    AuthConfig {
        audience: "vault".into(),
        max_lifetime: 3600,
        operator: Some(operator_key().verifying_key()),
        providers,
        cache: Arc::default(),
    }
}

/// A vault (in a temporary folder, kept for the process) with the agency registered.
pub fn vault() -> &'static Vault {
    static V: OnceLock<(tempfile::TempDir, Vault)> = OnceLock::new();
    &V.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([42; 32])).unwrap();
        let key = AgencyKey {
            id: KeyId::parse(AGENCY_KID).unwrap(),
            public_key: PublicKey::from_bytes(agency_key().verifying_key().to_bytes()).unwrap(),
            not_before: Timestamp::from_unix(NOW - 86_400).unwrap(),
            not_after: None,
        };
        let new = NewAgency { name: "So Tu phap".into(), keys: vec![key] };
        v.put_agency(&AgencyId::parse(AGENCY).unwrap(), new, Timestamp::from_unix(NOW - 3600).unwrap()).unwrap();
        (dir, v)
    })
    .1
}
