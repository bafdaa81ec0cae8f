//! The page's OpenID Connect relying party: authorization code flow with PKCE (S256), `state`
//! and `nonce` (OpenID Connect Core 1.0 §3.1, RFC 7636). The ID token must be a compact JWS
//! with `alg` EdDSA (Ed25519, RFC 8037), its key taken from the provider's JWKS by `kid`, and
//! verified with `verify_strict` as auth.rs verifies bearer tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use sha2::Digest as _;
use vault::OwnerId;

/// Clock skew allowed on `iat` and `exp`, seconds.
const LEEWAY: i64 = 60;

/// Why a sign-in failed (shown to the person as "sign-in failed", logged in full).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered something unusable.
    #[error("identity provider: {0}")]
    Provider(String),
    /// The ID token did not verify.
    #[error("ID token refused: {0}")]
    Token(&'static str),
}

/// The provider's metadata (OpenID Connect Discovery 1.0), the fields used.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the person is sent to sign in.
    pub authorization_endpoint: String,
    /// Where the code is exchanged.
    pub token_endpoint: String,
    /// The provider's signing keys.
    pub jwks_uri: String,
}

/// The relying party's settings.
#[derive(Clone)]
pub struct RelyingParty {
    /// The issuer, exactly as its tokens name it.
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// Our client secret (sent with HTTP Basic to the token endpoint).
    pub client_secret: zeroize::Zeroizing<String>,
    /// `<public url>/page/callback`.
    pub redirect_uri: String,
    http: reqwest::Client,
    discovery: std::sync::Arc<tokio::sync::OnceCell<Discovery>>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("redirect_uri", &self.redirect_uri)
            .finish()
    }
}

/// What is kept between sending the person to the provider and their return.
#[derive(Debug)]
pub struct Pending {
    /// PKCE code verifier.
    pub verifier: zeroize::Zeroizing<String>,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// When the sign-in started (unix seconds).
    pub started: i64,
}

/// 32 random bytes in base64url (43 characters).
pub fn random_token() -> String {
    let k = vault::SecretKey::generate();
    B64URL.encode(k.expose())
}

/// The PKCE S256 challenge of a verifier.
pub fn challenge(verifier: &str) -> String {
    B64URL.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct IdClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
}

impl RelyingParty {
    /// A relying party for `issuer`; discovery happens at the first sign-in.
    pub fn new(issuer: String, client_id: String, client_secret: String, redirect_uri: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id,
            client_secret: zeroize::Zeroizing::new(client_secret),
            redirect_uri,
            http,
            discovery: Default::default(),
        }
    }

    /// The provider's metadata (fetched once; its `issuer` must be ours).
    pub async fn discovery(&self) -> Result<&Discovery, OidcError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let d: Discovery = self.get_json(&url).await?;
                if d.issuer.trim_end_matches('/') != self.issuer {
                    return Err(OidcError::Provider(format!("discovery names issuer {:?}", d.issuer)));
                }
                Ok(d)
            })
            .await
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(&self, url: &str) -> Result<T, OidcError> {
        let r = self.http.get(url).send().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
        if !r.status().is_success() {
            return Err(OidcError::Provider(format!("{url}: status {}", r.status())));
        }
        r.json().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))
    }

    /// Where to send the person, and what to keep until they return (keyed by the `state`).
    pub async fn start(&self, now: i64) -> Result<(String, String, Pending), OidcError> {
        let d = self.discovery().await?;
        let state = random_token();
        let nonce = random_token();
        let verifier = zeroize::Zeroizing::new(random_token());
        let url = reqwest::Url::parse_with_params(
            &d.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", self.client_id.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("scope", "openid"),
                ("state", state.as_str()),
                ("nonce", nonce.as_str()),
                ("code_challenge", challenge(&verifier).as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
        .map_err(|e| OidcError::Provider(format!("authorization_endpoint: {e}")))?;
        Ok((url.to_string(), state, Pending { verifier, nonce, started: now }))
    }

    /// Exchanges the code and verifies the ID token; returns the owner it names.
    pub async fn finish(&self, code: &str, pending: &Pending, now: i64) -> Result<OwnerId, OidcError> {
        let d = self.discovery().await?;
        let r = self
            .http
            .post(&d.token_endpoint)
            .basic_auth(&self.client_id, Some(self.client_secret.as_str()))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("code_verifier", pending.verifier.as_str()),
            ])
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        if !r.status().is_success() {
            return Err(OidcError::Provider(format!("token endpoint: status {}", r.status())));
        }
        let t: TokenResponse = r.json().await.map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        let jwks: Jwks = self.get_json(&d.jwks_uri).await?;
        self.verify(&t.id_token, &jwks, &pending.nonce, now)
    }

    fn verify(&self, token: &str, jwks: &Jwks, nonce: &str, now: i64) -> Result<OwnerId, OidcError> {
        let bad = OidcError::Token;
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(bad("not a compact JWS"));
        };
        let head: Header = decode(h).ok_or(bad("malformed header"))?;
        if head.alg != "EdDSA" {
            return Err(bad("only alg EdDSA is accepted"));
        }
        let key = jwks
            .keys
            .iter()
            .filter(|k| k.kty == "OKP" && k.crv.as_deref() == Some("Ed25519"))
            .find(|k| head.kid.is_none() || k.kid == head.kid)
            .and_then(|k| k.x.as_deref())
            .and_then(|x| B64URL.decode(x).ok())
            .and_then(|x| <[u8; 32]>::try_from(x).ok())
            .and_then(|x| VerifyingKey::from_bytes(&x).ok())
            .ok_or(bad("no Ed25519 key in the provider's JWKS for its kid"))?;
        let sig = B64URL.decode(s).map_err(|_| bad("malformed signature"))?;
        let sig = Signature::from_slice(&sig).map_err(|_| bad("malformed signature"))?;
        key.verify_strict(&token.as_bytes()[..h.len() + 1 + c.len()], &sig).map_err(|_| bad("signature"))?;
        let claims: IdClaims = decode(c).ok_or(bad("malformed claims"))?;
        if claims.iss.trim_end_matches('/') != self.issuer {
            return Err(bad("another issuer"));
        }
        let auds = match &claims.aud {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if !auds.contains(&self.client_id.as_str()) {
            return Err(bad("another audience"));
        }
        if (auds.len() > 1 || claims.azp.is_some()) && claims.azp.as_deref() != Some(self.client_id.as_str()) {
            return Err(bad("azp is not us"));
        }
        if now >= claims.exp.saturating_add(LEEWAY) {
            return Err(bad("expired"));
        }
        if now.saturating_add(LEEWAY) < claims.iat {
            return Err(bad("issued in the future"));
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(bad("nonce"));
        }
        OwnerId::parse(&claims.sub).map_err(|_| bad("sub is not a citizen or organisation id"))
    }
}

fn decode<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    serde_json::from_slice(&B64URL.decode(part).ok()?).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    fn jws(sk: &SigningKey, head: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", B64URL.encode(head.to_string()), B64URL.encode(claims.to_string()));
        format!("{input}.{}", B64URL.encode(sk.sign(input.as_bytes()).to_bytes()))
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn id_tokens_are_refused_unless_issuer_audience_nonce_time_and_signature_hold() {
        let sk = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let jwks = Jwks {
            keys: vec![Jwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                kid: Some("k".into()),
                x: Some(B64URL.encode(sk.verifying_key().to_bytes())),
            }],
        };
        let rp = RelyingParty::new("http://i".into(), "c".into(), "s".into(), "http://r/cb".into());
        let now = 1_700_000_000;
        let good = json!({"iss": "http://i", "sub": "citizen:001099012345", "aud": "c", "exp": now + 300, "iat": now, "nonce": "n"});
        let head = json!({"alg": "EdDSA", "kid": "k"});
        assert_eq!(
            rp.verify(&jws(&sk, head.clone(), good.clone()), &jwks, "n", now).unwrap().as_str(),
            "citizen:001099012345"
        );
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            jws(&sk, head.clone(), c)
        };
        for (why, t) in [
            ("issuer", with("iss", json!("http://evil"))),
            ("audience", with("aud", json!("other"))),
            ("nonce", with("nonce", json!("m"))),
            ("expired", with("exp", json!(now - 120))),
            ("future", with("iat", json!(now + 600))),
            ("sub", with("sub", json!("alice"))),
            ("azp", with("aud", json!(["c", "d"]))),
            ("key", jws(&other, head.clone(), good.clone())),
            ("alg", jws(&sk, json!({"alg": "none", "kid": "k"}), good.clone())),
        ] {
            assert!(rp.verify(&t, &jwks, "n", now).is_err(), "{why}");
        }
    }
}
