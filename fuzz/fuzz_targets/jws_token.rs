//! `Authorization: Bearer <JWS>` as the server verifies it (vault-server/src/http/auth.rs).
//!
//! Input: a mode byte, then either the whole header value (mode 0), or a token header JSON,
//! a NUL byte and a claims JSON that the harness signs with the identity provider's (1), the
//! operator's (2) or the agency's (3) key, so the claim checks behind the signature are reached.
//! Property: no panic, and the same header gives the same answer twice (the verified-token
//! cache agrees with a full verification).
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use libfuzzer_sys::fuzz_target;
use vault_fuzz::{agency_key, auth_config, operator_key, provider_key, vault, NOW};
use vault_server::http::auth::{authenticate, AuthConfig};

fn cfg() -> &'static AuthConfig {
    static C: OnceLock<AuthConfig> = OnceLock::new();
    C.get_or_init(auth_config)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let header = match mode % 4 {
        0 => String::from_utf8_lossy(rest).into_owned(),
        m => {
            let mut it = rest.splitn(2, |b| *b == 0);
            let (h, c) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            let key = match m {
                1 => provider_key(),
                2 => operator_key(),
                _ => agency_key(),
            };
            let input = format!("{}.{}", B64URL.encode(h), B64URL.encode(c));
            let sig = key.sign(input.as_bytes());
            format!("Bearer {input}.{}", B64URL.encode(sig.to_bytes()))
        }
    };
    let v = vault();
    let first = authenticate(cfg(), v, Some(&header), NOW);
    let again = authenticate(cfg(), v, Some(&header), NOW);
    assert_eq!(format!("{first:?}"), format!("{again:?}"), "cached and fresh verification disagree");
});
