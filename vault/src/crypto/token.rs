//! Minting bearer tokens as vault-server accepts them (api.md "Authentication"): a compact JWS,
//! header `{"alg":"EdDSA","kid":..}`, claims `iss`, `sub`, `aud`, `iat`, `exp`, signed with
//! Ed25519. Used by the client (agency tokens from a key file) and by the server's `--dev`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims<'a> {
    /// Key id: the identity provider's name, `operator`, or the agency's bare key id.
    pub kid: &'a str,
    /// Issuer: provider name, `operator`, or the agency id.
    pub iss: &'a str,
    /// Subject: owner id, `operator`, or the agency id.
    pub sub: &'a str,
    /// Audience (the server's, `vault` by default).
    pub aud: &'a str,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

/// Signs `claims` into a compact JWS.
pub fn mint(key: &SigningKey, claims: &Claims<'_>) -> String {
    let header = B64URL.encode(serde_json::json!({"alg": "EdDSA", "kid": claims.kid}).to_string());
    let body = B64URL.encode(
        serde_json::json!({"iss": claims.iss, "sub": claims.sub, "aud": claims.aud, "iat": claims.iat, "exp": claims.exp})
            .to_string(),
    );
    let input = format!("{header}.{body}");
    let sig = B64URL.encode(key.sign(input.as_bytes()).to_bytes());
    format!("{input}.{sig}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signature, Verifier};

    #[test]
    fn minted_tokens_verify_and_carry_the_claims() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let c = Claims { kid: "k1", iss: "so-tp", sub: "so-tp", aud: "vault", iat: 100, exp: 200 };
        let t = mint(&key, &c);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let head: serde_json::Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(head, serde_json::json!({"alg": "EdDSA", "kid": "k1"}));
        let claims: serde_json::Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["exp"], 200);
        assert_eq!(claims["sub"], "so-tp");
        let sig = Signature::from_slice(&B64URL.decode(parts[2]).unwrap()).unwrap();
        key.verifying_key().verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    }
}
