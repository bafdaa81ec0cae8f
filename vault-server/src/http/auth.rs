//! Bearer tokens: compact JWS with `alg` EdDSA only (RFC 8037), verified with `verify_strict`.
//!
//! The key is chosen by `kid` (and, for agencies, `iss`): the operator key (`kid` = `operator`),
//! a trusted identity provider's key (`kid` = its name), or a registered agency key valid now.
//! All five claims are required; `aud` must contain the server's audience; 60 seconds of leeway
//! apply to `iat` and `exp` but never widen the maximum lifetime (`exp − iat`).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use vault::access::Principal;
use vault::{AgencyId, KeyId, OwnerId, Timestamp, Vault};

/// Clock skew allowed on `iat` and `exp`, in seconds.
pub const LEEWAY: i64 = 60;

/// What the server trusts.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required audience.
    pub audience: String,
    /// Longest accepted `exp − iat`, seconds.
    pub max_lifetime: i64,
    /// The operator's key.
    pub operator: Option<VerifyingKey>,
    /// Identity providers by name.
    pub providers: HashMap<String, IdentityProvider>,
    /// Tokens already verified (shared by clones).
    pub cache: std::sync::Arc<TokenCache>,
}

/// A trusted identity provider: its key, and the one kind of owner it may vouch for, if limited.
#[derive(Debug, Clone)]
pub struct IdentityProvider {
    /// Its Ed25519 public key.
    pub key: VerifyingKey,
    /// `Some(kind)`: its tokens about another kind of owner are refused.
    pub only: Option<OwnerKind>,
}

/// The two kinds of owner ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    /// `citizen:` ids.
    Citizen,
    /// `org:` ids.
    Org,
}

impl OwnerKind {
    /// Parses `citizen` or `org` (the suffix of `--identity-provider <name>=<key>@<kind>`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "citizen" => Some(Self::Citizen),
            "org" => Some(Self::Org),
            _ => None,
        }
    }

    /// The kind of an owner id.
    pub fn of(owner: &OwnerId) -> Self {
        if owner.as_str().starts_with("citizen:") {
            Self::Citizen
        } else {
            Self::Org
        }
    }
}

/// Parses `<name>=<base64 key>` or `<name>=<base64 key>@citizen|org` into a name and a provider.
pub fn parse_identity_provider(spec: &str) -> Result<(String, IdentityProvider), String> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("--identity-provider takes name=base64key[@citizen|@org], not {spec:?}"))?;
    AgencyId::parse(name).map_err(|e| format!("identity provider name {name:?}: {e}"))?;
    // Base64 never contains `@`: a suffix after one is the kind.
    let (key, only) = match rest.rsplit_once('@') {
        None => (rest, None),
        Some((key, kind)) => (
            key,
            Some(OwnerKind::parse(kind.trim()).ok_or_else(|| {
                format!("identity provider {name}: the kind after @ is citizen or org, not {kind:?}")
            })?),
        ),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| format!("identity provider {name}: the key is not standard base64"))?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| format!("identity provider {name}: the key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| format!("identity provider {name}: not an Ed25519 key"))?;
    Ok((name.to_owned(), IdentityProvider { key, only }))
}

/// Most tokens remembered; the cache is emptied when it is full.
const CACHE_MAX: usize = 20_000;

/// Tokens whose signature verified, by BLAKE3 of the whole token: a token presented again is
/// not verified again (an Ed25519 verification costs more than the rest of a small read).
/// Everything that can change is still checked on every call: expiry, and for an agency that
/// the signing key is still registered, unchanged and valid now.
#[derive(Debug, Default)]
pub struct TokenCache {
    map: std::sync::Mutex<HashMap<[u8; 32], Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    principal: Principal,
    exp: i64,
    /// For an agency token: its key id and the public key that verified it.
    agency_key: Option<(KeyId, [u8; 32])>,
}

impl TokenCache {
    fn get(&self, k: &[u8; 32]) -> Option<Cached> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).get(k).cloned()
    }
    fn put(&self, k: [u8; 32], c: Cached) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(k, c);
    }
}

/// Why a token was refused (always 401 `unauthenticated`; the message says what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub &'static str);

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    iat: Option<i64>,
    exp: Option<i64>,
}

fn part<T: for<'de> Deserialize<'de>>(s: &str, what: &'static str) -> Result<T, AuthError> {
    let raw = B64URL.decode(s).map_err(|_| AuthError(what))?;
    serde_json::from_slice(&raw).map_err(|_| AuthError(what))
}

/// Verifies `Authorization: Bearer <token>` and returns who is calling.
pub fn authenticate(cfg: &AuthConfig, vault: &Vault, header: Option<&str>, now: i64) -> Result<Principal, AuthError> {
    let header = header.ok_or(AuthError("send Authorization: Bearer <token>"))?;
    let token =
        header.strip_prefix("Bearer ").ok_or(AuthError("the Authorization header must be `Bearer <token>`"))?.trim();
    let fingerprint = *blake3::hash(token.as_bytes()).as_bytes();
    if let Some(c) = cfg.cache.get(&fingerprint) {
        if now >= c.exp.saturating_add(LEEWAY) {
            return Err(AuthError("the token has expired"));
        }
        if let (Principal::Agency(agency), Some((kid, pk))) = (&c.principal, &c.agency_key) {
            let at = Timestamp::from_unix(now).ok_or(AuthError("clock out of range"))?;
            let reg = vault.agency(agency).map_err(|_| AuthError("the agency registry is unavailable"))?;
            let still =
                reg.as_ref().and_then(|a| a.key_valid_at(kid, at)).is_some_and(|k| k.public_key.as_bytes() == pk);
            if !still {
                return Err(AuthError("unknown or expired signing key"));
            }
        }
        return Ok(c.principal);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError("a token is a compact JWS: header.claims.signature"));
    };
    let head: Header = part(h, "the token header is not base64url JSON")?;
    if head.alg != "EdDSA" {
        return Err(AuthError("only alg EdDSA (Ed25519) tokens are accepted"));
    }
    let kid = head.kid.ok_or(AuthError("the token header needs a kid"))?;
    let claims: Claims = part(c, "the token claims are not base64url JSON")?;
    let sig = B64URL.decode(sig).map_err(|_| AuthError("the token signature is not base64url"))?;
    let sig = Signature::from_slice(&sig).map_err(|_| AuthError("the token signature is not 64 bytes"))?;
    let (Some(iss), Some(sub), Some(aud), Some(iat), Some(exp)) =
        (claims.iss, claims.sub, claims.aud, claims.iat, claims.exp)
    else {
        return Err(AuthError("the token needs all of iss, sub, aud, iat and exp"));
    };
    let aud_ok = match &aud {
        Audience::One(a) => a == &cfg.audience,
        Audience::Many(v) => v.iter().any(|a| a == &cfg.audience),
    };
    if !aud_ok {
        return Err(AuthError("the token is for another audience"));
    }
    if exp <= iat || exp.saturating_sub(iat) > cfg.max_lifetime {
        return Err(AuthError("the token lives longer than the server allows (or exp is not after iat)"));
    }
    if now.saturating_add(LEEWAY) < iat {
        return Err(AuthError("the token is not valid yet (iat is in the future)"));
    }
    if now >= exp.saturating_add(LEEWAY) {
        return Err(AuthError("the token has expired"));
    }
    let signing_input = &token.as_bytes()[..h.len() + 1 + c.len()];
    let mut agency_key = None;
    let (key, principal) = if kid == "operator" {
        if iss != "operator" || sub != "operator" {
            return Err(AuthError("operator tokens have iss and sub `operator`"));
        }
        (cfg.operator.ok_or(AuthError("no operator key is configured"))?, Principal::Operator)
    } else if let Some(k) = cfg.providers.get(&kid) {
        if iss != kid {
            return Err(AuthError("an identity provider's tokens have iss = its name = kid"));
        }
        let owner = OwnerId::parse(&sub).map_err(|_| AuthError("sub is not an owner id"))?;
        if k.only.is_some_and(|kind| kind != OwnerKind::of(&owner)) {
            return Err(AuthError("this identity provider may not vouch for that kind of owner"));
        }
        (k.key, Principal::Owner(owner))
    } else {
        let agency = AgencyId::parse(&iss).map_err(|_| AuthError("unknown token issuer"))?;
        if sub != iss {
            return Err(AuthError("an agency's tokens have sub = iss = its id"));
        }
        let kid = KeyId::parse(&kid).map_err(|_| AuthError("unknown key id"))?;
        let at = Timestamp::from_unix(now).ok_or(AuthError("clock out of range"))?;
        let reg = vault.agency(&agency).map_err(|_| AuthError("the agency registry is unavailable"))?;
        let key =
            reg.as_ref().and_then(|a| a.key_valid_at(&kid, at)).ok_or(AuthError("unknown or expired signing key"))?;
        let vk = VerifyingKey::from_bytes(key.public_key.as_bytes())
            .map_err(|_| AuthError("unknown or expired signing key"))?;
        agency_key = Some((kid, *key.public_key.as_bytes()));
        (vk, Principal::Agency(agency))
    };
    key.verify_strict(signing_input, &sig).map_err(|_| AuthError("the token signature does not verify"))?;
    cfg.cache.put(fingerprint, Cached { principal: principal.clone(), exp, agency_key });
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_9_5_identity_provider_specs_name_one_kind_of_owner() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let key = base64::engine::general_purpose::STANDARD.encode(sk.verifying_key().to_bytes());
        let (name, p) = parse_identity_provider(&format!("vneid={key}")).unwrap();
        assert_eq!((name.as_str(), p.only), ("vneid", None));
        assert_eq!(parse_identity_provider(&format!("vneid={key}@citizen")).unwrap().1.only, Some(OwnerKind::Citizen));
        assert_eq!(parse_identity_provider(&format!("corp={key}@org")).unwrap().1.only, Some(OwnerKind::Org));
        for bad in [format!("vneid={key}@agency"), format!("vneid={key}@"), "vneid".into(), format!("Bad={key}")] {
            assert!(parse_identity_provider(&bad).is_err(), "{bad}");
        }
        let c = OwnerId::parse("citizen:001099012345").unwrap();
        let o = OwnerId::parse("org:0101234567").unwrap();
        assert_eq!((OwnerKind::of(&c), OwnerKind::of(&o)), (OwnerKind::Citizen, OwnerKind::Org));
    }
}
