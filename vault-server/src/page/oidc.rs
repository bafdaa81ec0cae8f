//! The page's OpenID relying party: authorization code flow with PKCE (S256), `state`
//! and `nonce` (OpenID Connect Core 1.0 §3.1, RFC 7636). The ID token is a compact JWS signed
//! with `RS256` (what most providers use) or `EdDSA` (Ed25519, RFC 8037), nothing else; its key
//! is taken from the provider's JWKS by `kid`, and the signature and the registered claims are
//! checked by the `jsonwebtoken` crate; the OpenID-specific checks (`azp`, `iat`, `nonce`, the
//! owner id in `sub`) are made here.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

/// The provider's JWKS: each key is read on its own, so that a key of a type this relying party
/// does not know (an encryption key, another curve) is skipped, not a reason to refuse them all.
#[derive(Debug, Default)]
struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    fn parse(v: &serde_json::Value) -> Self {
        let keys = v
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .map(|ks| ks.iter().filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok()).collect())
            .unwrap_or_default();
        Self { keys }
    }

    /// The one signing key for `alg` named by `kid` (with no `kid`, the only such key).
    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Option<DecodingKey> {
        let fits = |k: &&Jwk| {
            let kind_fits = match (&k.algorithm, alg) {
                (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
                (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => p.curve == EllipticCurve::Ed25519,
                _ => false,
            };
            let use_fits = matches!(k.common.public_key_use, None | Some(PublicKeyUse::Signature));
            // A key that names its algorithm is for that one only.
            let alg_fits = k.common.key_algorithm.is_none_or(|a| format!("{a:?}") == format!("{alg:?}"));
            kind_fits && use_fits && alg_fits && (kid.is_none() || k.common.key_id.as_deref() == kid)
        };
        let mut found = self.keys.iter().filter(fits);
        let (Some(k), None) = (found.next(), found.next()) else { return None };
        DecodingKey::from_jwk(k).ok()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: String,
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
    /// Checked here too: jsonwebtoken 9 treats a non-numeric `nbf` as absent (GHSA-h395-gr6q-cpjc);
    /// here a non-numeric one fails to parse, so the token is refused.
    #[serde(default)]
    nbf: Option<i64>,
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
        let jwks = Jwks::parse(&self.get_json::<serde_json::Value>(&d.jwks_uri).await?);
        self.verify(&t.id_token, &jwks, &pending.nonce, now)
    }

    fn verify(&self, token: &str, jwks: &Jwks, nonce: &str, now: i64) -> Result<OwnerId, OidcError> {
        let bad = OidcError::Token;
        if token.split('.').count() != 3 {
            return Err(bad("not a compact JWS"));
        }
        // The header is read unverified only to choose the key; `none` and HS* are no
        // `Algorithm` we accept (and `none` is none the crate knows).
        let head = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed header or unknown alg"))?;
        if !ALGORITHMS.contains(&head.alg) {
            return Err(bad("only alg RS256 or EdDSA is accepted"));
        }
        let key =
            jwks.key_for(head.alg, head.kid.as_deref()).ok_or(bad("no key in the provider's JWKS for its kid"))?;
        let mut v = Validation::new(head.alg);
        v.leeway = LEEWAY.unsigned_abs();
        v.set_issuer(&[self.issuer.as_str(), format!("{}/", self.issuer).as_str()]);
        v.set_audience(&[self.client_id.as_str()]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        let claims = match jsonwebtoken::decode::<IdClaims>(token, &key, &v) {
            Ok(t) => t.claims,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as E;
                return Err(bad(match e.kind() {
                    E::InvalidSignature => "signature",
                    E::ExpiredSignature => "expired",
                    E::ImmatureSignature => "not valid yet (nbf)",
                    E::InvalidIssuer => "another issuer",
                    E::InvalidAudience => "another audience",
                    E::InvalidAlgorithm => "the key is for another alg",
                    E::MissingRequiredClaim(_) => "a required claim is missing",
                    _ => "malformed",
                }));
            }
        };
        // The crate checked the registered claims against its own clock; these hold against
        // ours too (and `iat`, which the crate does not check, must not be in the future).
        let auds = match &claims.aud {
            Audience::One(a) => vec![a.as_str()],
            Audience::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if claims.iss.trim_end_matches('/') != self.issuer {
            return Err(bad("another issuer"));
        }
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
        if claims.nbf.is_some_and(|nbf| now.saturating_add(LEEWAY) < nbf) {
            return Err(bad("not valid yet"));
        }
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(bad("nonce"));
        }
        OwnerId::parse(&claims.sub).map_err(|_| bad("sub is not a citizen or organisation id"))
    }
}

/// The ID-token algorithms accepted: never `none`, never a MAC (HS*) whose key would be the
/// client secret.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::EdDSA];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    /// A 2048-bit RSA key made for these tests only (PKCS#1 DER, base64), and its modulus.
    const RSA_DER: &str = "MIIEogIBAAKCAQEA6n3Sy/LbhGWI5WpCajrhirTR2slQd3cke3PsPXCE5AVeviCk0cELZg7fKlPUIYFNIalZFHHRrcSJ+PW7p3POmXh8rKC9vsgU3H7ny2Z1TZKgBTlWL77434eSaciSEHQ4uyM23rEG+KFBQXcSjSHsmFNzj0N8RBrjLnFyO1HXpe0GIxgnDbP0Uf373XvQLgun6pHYuSbQGSDLv6AgptMSTnAlabp1qn6KF7lpWVkXp8nO6U1jGQLfTagQ/6lpZWa1X7+rhET9YMI/a6KhKF6pk6fc1mM1fqXdcDsKXpNR7fAtY26XSpi1XU1Oo7RlRj1Mmc/FNsdgQc/C8QV49NZlswIDAQABAoIBAAlynVojRE3uy1e28ssV6T1t8KCYiNnvXnRs5MFK9ce8IaeWaB2dYgiwI7SwYPUioQlwqcqllVWjfA2gVPm3tETBsoBAD7UOmaySnmM3ExXXiQP83eiZkKxs6WzCrIPmMtzzW8QYLNg6owbwtboi+kXe4uKMTQbvcGTQJFKYhxBDy0IceKPKybmsv2s6xDpYuxIrBSlgzKyP8KbUhTYGHURx9EPwDaVEg2szDILaexgc5qGp3bNQypjCzHhmTQlkt73hCrsflBQMBRPRtVtpumSk+0uF5CJntlmoPBzxFlIQANd+MYRpNrDb3xgxAfwPjd9/SYmPRpNvz7rujRlhWLkCgYEA+0X7ethSzTLGDy+zkzCaUPlezFggrPFGbyRlbMSFiPnDDhYqWfG0fdPPKNWsMOh49VnWO5v+cXUdbT+ZVvIrOhv1jnR3hiS+MxPZHOfqGiEVQj3ETWkEmrs4Epmm4DS2KavGRlKHKSUJIUH3bmuOU5JC8pYrAGFijjosNVkA1GsCgYEA7ucG+s99mzmLGYViTEwfbHmmSqGxvHL6rJ0OAQ2PYvsSVhzmYwwBrg5zFBJXDlfFs3PJPJsrgkwqidhSoqV6GVWmR4Ko8av8Lt+KMLdoBiDa1qg2O3t9/ndLOAflxxMeGhCnyDWDaD5qq+Wt0qLiXQehqficv8oXGNExMioExdkCgYBrQhE5+/NEYkMHIn6N+vY0UG413fx8tjUxpiChUDYMJUkszyte330DJRHNxX/OFL3lRWbcZRc0ySA5jSdgZNks4dhs6axHl5GU7gkEfL6CTtLrRsBvpr9vaTFjRzFjjTyhBxEI3ZuSZZvDFYyQFttXMxzevlk2vVs7iPtr/kULZwKBgHMhNPTjz3Vhys4WwKNiP/aHvYLT35KgmntbCKerQEGEG3cSYFi1LY4S+pRerkOEOwtbLkydvt8BE7LwZApr0qao5wQpTH+C0XpJUhBeIqxpYuz1jYUm4zYhiUdMTwicBvKquiC64UP4aHHEsvsCcjJA/kCqRegLXQwhrCKvqzMpAoGADrrFrB7ilKviaPxn9Aqop9Z0NdlqAM24pC7LtsHW9jbu3SNHKjvp5sKm2I99r7Q9hOJf3QdWNmgLCYKSdSr+WLEN51ui+LBmkU9Zjyv2xfCVfzXs1VvJeQu48HyKEADyQTw7nk2kxDbAV43LFYFs91lin+NCccr7Ra2ECOIIOMw=";
    const RSA_N: &str = "6n3Sy_LbhGWI5WpCajrhirTR2slQd3cke3PsPXCE5AVeviCk0cELZg7fKlPUIYFNIalZFHHRrcSJ-PW7p3POmXh8rKC9vsgU3H7ny2Z1TZKgBTlWL77434eSaciSEHQ4uyM23rEG-KFBQXcSjSHsmFNzj0N8RBrjLnFyO1HXpe0GIxgnDbP0Uf373XvQLgun6pHYuSbQGSDLv6AgptMSTnAlabp1qn6KF7lpWVkXp8nO6U1jGQLfTagQ_6lpZWa1X7-rhET9YMI_a6KhKF6pk6fc1mM1fqXdcDsKXpNR7fAtY26XSpi1XU1Oo7RlRj1Mmc_FNsdgQc_C8QV49NZlsw";

    /// A 1024-bit RSA modulus and an RS256 token it signed (`good`'s claims, `exp` in 2100).
    const WEAK_N: &str = "l55rhMaxB_rtFgIDODr5462TOdpJ7I6S0OfjcIscrFfCiL95Mp8EZEeiZaLAvAhC_gx5yvYq2X9VZBg4vxF4Nok8y0Q9lk6L7t3QwS8RfbnkbTNh3eSrTaaKQIhv-M19LZlQ4YSHodjMfmg9TLHuM8pfV3esNwfTNMUkAEGUgg8";
    const WEAK_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IndlYWsifQ.eyJpc3MiOiJodHRwOi8vaSIsInN1YiI6ImNpdGl6ZW46MDAxMDk5MDEyMzQ1IiwiYXVkIjoiYyIsImV4cCI6NDEwMjQ0NDgwMCwiaWF0IjoxNzAwMDAwMDAwLCJub25jZSI6Im4ifQ.Daqd9dos08lQOM4o3AMK7OvlOQ8_vw-fsGjaL5cNLSpuo3L8Zq-CtvTMc--YD1z90-OnCSsZucdx8K9QdbaUU3prCOwJN4P5rZS5OVIEh6ym-VZv6eAuXByFjSN3Emk-wg5TU_S-G-r4kSVii5hIvr5nvKtnYrtn-w5A_uLD9Tc";

    fn jws(sk: &SigningKey, head: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!("{}.{}", B64URL.encode(head.to_string()), B64URL.encode(claims.to_string()));
        format!("{input}.{}", B64URL.encode(sk.sign(input.as_bytes()).to_bytes()))
    }

    fn rs256(kid: &str, claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_rsa_der(
            &base64::engine::general_purpose::STANDARD.decode(RSA_DER).unwrap(),
        );
        let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &key).unwrap()
    }

    fn jwks(sk: &SigningKey) -> Jwks {
        Jwks::parse(&json!({"keys": [
            // A key of a kind we do not use is skipped, not fatal.
            {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "whatever"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": B64URL.encode(sk.verifying_key().to_bytes())},
            {"kty": "RSA", "kid": "r", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB"},
        ]}))
    }

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_jwks_keeps_the_keys_it_can_use_and_a_key_is_chosen_by_kid_and_alg() {
        let sk = SigningKey::from_bytes(&[3; 32]);
        let j = jwks(&sk);
        assert_eq!(j.keys.len(), 3, "the EC and the unknown kty are skipped or kept unused, not fatal");
        assert!(j.key_for(Algorithm::EdDSA, Some("k")).is_some());
        assert!(j.key_for(Algorithm::RS256, Some("r")).is_some());
        // The kid must name a key of the header's algorithm.
        assert!(j.key_for(Algorithm::RS256, Some("k")).is_none());
        assert!(j.key_for(Algorithm::EdDSA, Some("r")).is_none());
        assert!(j.key_for(Algorithm::RS256, Some("nope")).is_none());
        // No kid: only when exactly one key fits.
        assert!(j.key_for(Algorithm::RS256, None).is_some());
        let two = Jwks::parse(&json!({"keys": [
            {"kty": "RSA", "kid": "a", "n": RSA_N, "e": "AQAB"}, {"kty": "RSA", "kid": "b", "n": RSA_N, "e": "AQAB"}]}));
        assert!(two.key_for(Algorithm::RS256, None).is_none());
        // An encryption key is not a signing key.
        let enc = Jwks::parse(&json!({"keys": [{"kty": "RSA", "kid": "a", "use": "enc", "n": RSA_N, "e": "AQAB"}]}));
        assert!(enc.key_for(Algorithm::RS256, Some("a")).is_none());
        assert!(Jwks::parse(&json!({"nokeys": 1})).keys.is_empty());
    }

    /// Both algorithms pass through the same checks: each bad token is refused for its reason.
    #[test]
    fn id_tokens_are_refused_unless_issuer_audience_nonce_time_and_signature_hold() {
        let sk = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let jwks = jwks(&sk);
        let rp = RelyingParty::new("http://i".into(), "c".into(), "s".into(), "http://r/cb".into());
        // The crate checks `exp` against the real clock: the tokens are made for now.
        let now = vault::Timestamp::now().unix();
        let good = json!({"iss": "http://i", "sub": "citizen:001099012345", "aud": "c", "exp": now + 300, "iat": now, "nonce": "n"});
        let head = json!({"alg": "EdDSA", "kid": "k"});
        let ed = |c: &serde_json::Value| jws(&sk, head.clone(), c.clone());
        let rs = |c: &serde_json::Value| rs256("r", c);
        for (alg, sign) in [("EdDSA", &ed as &dyn Fn(&serde_json::Value) -> String), ("RS256", &rs)] {
            assert_eq!(rp.verify(&sign(&good), &jwks, "n", now).unwrap().as_str(), "citizen:001099012345", "{alg}");
            // A provider whose issuer ends in a slash, and a list of audiences with azp = us.
            let mut ok = good.clone();
            ok["iss"] = json!("http://i/");
            ok["aud"] = json!(["c", "d"]);
            ok["azp"] = json!("c");
            assert!(rp.verify(&sign(&ok), &jwks, "n", now).is_ok(), "{alg}");
            let with = |k: &str, v: serde_json::Value| {
                let mut c = good.clone();
                c[k] = v;
                sign(&c)
            };
            let without = |k: &str| {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove(k);
                sign(&c)
            };
            for (why, t, want) in [
                ("issuer", with("iss", json!("http://evil")), "another issuer"),
                ("audience", with("aud", json!("other")), "another audience"),
                ("nonce", with("nonce", json!("m")), "nonce"),
                ("replayed nonce", sign(&good), "nonce"),
                ("expired", with("exp", json!(now - 120)), "expired"),
                ("future", with("iat", json!(now + 600)), "issued in the future"),
                ("nbf", with("nbf", json!(now + 600)), "not valid yet (nbf)"),
                ("string nbf", with("nbf", json!((now + 600).to_string())), "malformed"),
                ("sub", with("sub", json!("alice")), "sub is not a citizen or organisation id"),
                ("azp", with("aud", json!(["c", "d"])), "azp is not us"),
                ("no exp", without("exp"), "malformed"),
                ("no iat", without("iat"), "malformed"),
                ("no nonce", without("nonce"), "nonce"),
            ] {
                // The replayed case: a good token checked against the next sign-in's nonce.
                let nonce = if why == "replayed nonce" { "next" } else { "n" };
                match rp.verify(&t, &jwks, nonce, now) {
                    Err(OidcError::Token(got)) => assert_eq!(got, want, "{alg}: {why}"),
                    other => panic!("{alg}: {why}: {other:?}"),
                }
            }
            // Tampered claims under the original signature.
            let t = sign(&good);
            let parts: Vec<&str> = t.split('.').collect();
            let mut evil = good.clone();
            evil["sub"] = json!("citizen:001099099999");
            let forged = format!("{}.{}.{}", parts[0], B64URL.encode(evil.to_string()), parts[2]);
            assert!(matches!(rp.verify(&forged, &jwks, "n", now), Err(OidcError::Token("signature"))), "{alg}");
            // Not a compact JWS.
            assert!(rp.verify(&format!("{t}.x"), &jwks, "n", now).is_err(), "{alg}");
            assert!(rp.verify(&parts[..2].join("."), &jwks, "n", now).is_err(), "{alg}");
        }
        // Signed by a key the provider does not publish under that kid.
        assert!(matches!(
            rp.verify(&jws(&other, head.clone(), good.clone()), &jwks, "n", now),
            Err(OidcError::Token("signature"))
        ));
        // An RS256 header naming the Ed25519 key, and the reverse: no key fits.
        let t = rs256("k", &good);
        assert!(matches!(
            rp.verify(&t, &jwks, "n", now),
            Err(OidcError::Token("no key in the provider's JWKS for its kid"))
        ));
        let t = jws(&sk, json!({"alg": "EdDSA", "kid": "r"}), good.clone());
        assert!(rp.verify(&t, &jwks, "n", now).is_err());
        // alg none (with no signature), HS256 with the client secret as the MAC key, and others.
        let unsigned =
            format!("{}.{}.", B64URL.encode(json!({"alg": "none"}).to_string()), B64URL.encode(good.to_string()));
        assert!(rp.verify(&unsigned, &jwks, "n", now).is_err());
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &good,
            &jsonwebtoken::EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(matches!(
            rp.verify(&hs, &jwks, "n", now),
            Err(OidcError::Token("only alg RS256 or EdDSA is accepted"))
        ));
        for alg in ["RS384", "PS256", "ES256"] {
            let t = jws(&sk, json!({"alg": alg, "kid": "k"}), good.clone());
            assert!(
                matches!(rp.verify(&t, &jwks, "n", now), Err(OidcError::Token("only alg RS256 or EdDSA is accepted"))),
                "{alg}"
            );
        }
        // A 1024-bit RSA key is too weak (at least 2048 bits): its valid signature is refused.
        // The token was signed once with a key made for this test; it expires in 2100.
        let weak = Jwks::parse(&json!({"keys": [{"kty": "RSA", "kid": "weak", "n": WEAK_N, "e": "AQAB"}]}));
        assert!(matches!(rp.verify(WEAK_TOKEN, &weak, "n", now), Err(OidcError::Token("signature"))));
        // Malformed headers.
        for h in ["!!", &B64URL.encode("[]"), &B64URL.encode("{\"alg\": \"EdDSA\"")] {
            let t = format!("{h}.{}.{}", B64URL.encode(good.to_string()), "AAAA");
            assert!(rp.verify(&t, &jwks, "n", now).is_err(), "{h}");
        }
    }
}
