//! `--dev` mode: key files created in the data folder, the demo agency and the tokens printed
//! for trying vault out.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use vault::access::Caller;
use vault::crypto::token::{mint, Claims};
use vault::engine::provenance::{AgencyKey, NewAgency, PublicKey};
use vault::{AgencyId, KeyId, MasterKey, Timestamp, Vault};
use vault_server::http::auth;

use crate::config::Args;

/// Reads a dev-mode seed file, creating it with a fresh random seed if missing.
pub(crate) fn dev_seed(data: &Path, name: &str) -> Result<[u8; 32], String> {
    let path = data.join(name);
    if !path.exists() {
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let key = MasterKey::generate();
        write_private(&path, format!("{}\n", key.to_base64().as_str()).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = B64.decode(text.trim()).map_err(|_| format!("{} is not base64", path.display()))?;
    raw.try_into().map_err(|_| format!("{} is not 32 bytes", path.display()))
}

/// Creates a new file readable by its owner only (mode 0600 on Unix: key files must not be
/// readable by other users, and `check` warns about one that is).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The development keys (`--dev`): created under the data folder if missing.
pub(crate) struct DevKeys {
    op: SigningKey,
    idp: SigningKey,
    agency: SigningKey,
}

/// Loads the dev keys and trusts them, unless explicit keys were given.
pub(crate) fn dev_keys(args: &Args, auth: &mut auth::AuthConfig) -> Result<DevKeys, String> {
    let keys = DevKeys {
        op: SigningKey::from_bytes(&dev_seed(&args.data, "dev-operator.key")?),
        idp: SigningKey::from_bytes(&dev_seed(&args.data, "dev-idp.key")?),
        agency: SigningKey::from_bytes(&dev_seed(&args.data, "dev-agency.key")?),
    };
    if auth.operator.is_none() {
        auth.operator = Some(keys.op.verifying_key());
    }
    auth.providers
        .entry("dev-idp".into())
        .or_insert(auth::IdentityProvider { key: keys.idp.verifying_key(), only: None });
    Ok(keys)
}

/// Registers the demo agency and prints what a developer needs: tokens and a working call.
pub(crate) fn dev_announce(args: &Args, vault: &Vault, keys: &DevKeys) -> Result<(), String> {
    let agency = AgencyId::parse("demo-agency").map_err(|e| e.to_string())?;
    if vault.agency(&agency).map_err(|e| e.to_string())?.is_none() {
        let key = AgencyKey {
            id: KeyId::parse("k1").map_err(|e| e.to_string())?,
            public_key: PublicKey::from_bytes(keys.agency.verifying_key().to_bytes()).map_err(|e| e.to_string())?,
            not_before: Timestamp::parse("2020-01-01T00:00:00Z").map_err(|e| e.to_string())?,
            not_after: None,
        };
        vault
            .put_agency_as(&Caller::operator(), &agency, NewAgency { name: "Demo agency".into(), keys: vec![key] })
            .map_err(|e| e.to_string())?;
    }
    let now = Timestamp::now().unix();
    let aud = &args.audience;
    let citizen = "citizen:001099012345";
    let claims = |kid, iss, sub| Claims { kid, iss, sub, aud, iat: now, exp: now + 3600 };
    let t_op = mint(&keys.op, &claims("operator", "operator", "operator"));
    let t_cit = mint(&keys.idp, &claims("dev-idp", "dev-idp", citizen));
    let t_ag = mint(&keys.agency, &claims("k1", "demo-agency", "demo-agency"));
    let base = format!("http://{}", args.listen);
    println!("# vault-server --dev: FOR TRYING IT OUT ONLY. Keys are stored in clear in {}.", args.data.display());
    println!("# Tokens, valid 1 hour: the operator; the citizen {citizen} (identity provider dev-idp);");
    println!("# the agency demo-agency (key k1, seed in {}).", args.data.join("dev-agency.key").display());
    println!("export OPERATOR_TOKEN={t_op}");
    println!("export CITIZEN_TOKEN={t_cit}");
    println!("export AGENCY_TOKEN={t_ag}");
    println!("# Try (after pasting the exports above):");
    println!("curl -s -H \"Authorization: Bearer $CITIZEN_TOKEN\" {base}/v1/owners/{citizen}/documents");
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(unix)]
    #[test]
    fn item_10_7_dev_key_files_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let seed = dev_seed(&data, "dev-master.key").unwrap();
        let mode = std::fs::metadata(data.join("dev-master.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // Read back as the same key, and usable as a master key file.
        assert_eq!(dev_seed(&data, "dev-master.key").unwrap(), seed);
        MasterKey::from_file(&data.join("dev-master.key")).unwrap();
        dev_seed(&data, "dev-operator.key").unwrap();
        let mode = std::fs::metadata(data.join("dev-operator.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
}
