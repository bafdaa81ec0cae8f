//! `--dev`: a small built-in OpenID provider at `/dev-idp` speaking the same protocol as a real
//! one (discovery, JWKS, authorize, token; code flow with PKCE S256 only), so that trying the
//! page out goes through the relying party's real code path. It asks for no password: anyone
//! can sign in as anyone. For trying it out only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use maud::html;
use serde::Deserialize;
use serde_json::json;
use vault::OwnerId;

use super::oidc::{challenge, random_token};

/// How long a code may wait for its exchange, seconds.
const CODE_LIFETIME: i64 = 60;
/// Most codes waiting at once.
const MAX_CODES: usize = 10_000;

/// The provider's settings and the codes it issued.
pub struct DevIdp {
    /// `<public url>/dev-idp`.
    pub issuer: String,
    /// The one client it knows.
    pub client_id: String,
    client_secret: zeroize::Zeroizing<String>,
    /// The one redirect URI it accepts.
    pub redirect_uri: String,
    key: SigningKey,
    codes: Mutex<HashMap<String, Code>>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp").field("issuer", &self.issuer).field("key", &"[redacted]").finish()
    }
}

struct Code {
    sub: OwnerId,
    challenge: String,
    nonce: Option<String>,
    issued: i64,
}

impl DevIdp {
    /// A provider signing with `key`, knowing one client.
    pub fn new(
        issuer: String,
        client_id: String,
        client_secret: String,
        redirect_uri: String,
        key: SigningKey,
    ) -> Self {
        Self {
            issuer,
            client_id,
            client_secret: zeroize::Zeroizing::new(client_secret),
            redirect_uri,
            key,
            codes: Mutex::new(HashMap::new()),
        }
    }
}

/// The provider's routes, under `/dev-idp`.
pub fn router(idp: Arc<DevIdp>) -> Router {
    Router::new()
        .route("/dev-idp/.well-known/openid-configuration", get(discovery))
        .route("/dev-idp/jwks", get(jwks))
        .route("/dev-idp/authorize", get(authorize_form).post(authorize))
        .route("/dev-idp/token", axum::routing::post(token))
        .with_state(idp)
}

async fn discovery(State(idp): State<Arc<DevIdp>>) -> Response {
    let i = &idp.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": ["openid"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Arc<DevIdp>>) -> Response {
    let x = B64URL.encode(idp.key.verifying_key().to_bytes());
    Json(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "dev-oidc", "x": x}]}))
        .into_response()
}

/// The authorization request's parameters (carried through the form as hidden fields).
#[derive(Debug, Deserialize)]
struct AuthRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    code_challenge: String,
    code_challenge_method: String,
    /// Only in the form's answer.
    #[serde(default)]
    login: Option<String>,
}

fn bad(msg: &str) -> Response {
    (StatusCode::BAD_REQUEST, super::page_headers(), msg.to_owned()).into_response()
}

/// Checks what must hold before anything is shown or issued.
fn check(idp: &DevIdp, q: &AuthRequest) -> Result<(), &'static str> {
    if q.client_id != idp.client_id || q.redirect_uri != idp.redirect_uri {
        return Err("unknown client or redirect_uri");
    }
    if q.response_type != "code" || q.code_challenge_method != "S256" || q.code_challenge.len() < 43 {
        return Err("only response_type=code with PKCE S256");
    }
    if !q.scope.split(' ').any(|s| s == "openid") {
        return Err("scope must include openid");
    }
    Ok(())
}

async fn authorize_form(State(idp): State<Arc<DevIdp>>, Query(q): Query<AuthRequest>) -> Response {
    if let Err(why) = check(&idp, &q) {
        return bad(why);
    }
    let hidden = [
        ("response_type", Some(q.response_type.as_str())),
        ("client_id", Some(q.client_id.as_str())),
        ("redirect_uri", Some(q.redirect_uri.as_str())),
        ("scope", Some(q.scope.as_str())),
        ("state", q.state.as_deref()),
        ("nonce", q.nonce.as_deref()),
        ("code_challenge", Some(q.code_challenge.as_str())),
        ("code_challenge_method", Some(q.code_challenge_method.as_str())),
    ];
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Development identity provider" }
                link rel="stylesheet" href="/page/style.css";
            }
            body {
                main {
                    h1 { "Development identity provider" }
                    p.warn { "For trying vault out only: no password is asked, anyone can sign in as anyone." }
                    form method="post" action="/dev-idp/authorize" {
                        @for (k, v) in hidden {
                            @if let Some(v) = v { input type="hidden" name=(k) value=(v); }
                        }
                        label for="login" { "Citizen or organisation ID" }
                        input #login name="login" required autofocus autocomplete="username"
                            placeholder="citizen:001099012345" aria-describedby="login-hint";
                        p #login-hint.hint { "citizen: and 12 digits, or org: and a tax code" }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    (super::page_headers(), maud::Markup::into_string(body)).into_response()
}

async fn authorize(State(idp): State<Arc<DevIdp>>, Form(q): Form<AuthRequest>) -> Response {
    if let Err(why) = check(&idp, &q) {
        return bad(why);
    }
    let Some(sub) = q.login.as_deref().and_then(|l| OwnerId::parse(l.trim()).ok()) else {
        return bad("type citizen:<12 digits> or org:<tax code>");
    };
    let code = random_token();
    let now = vault::Timestamp::now().unix();
    {
        let mut codes = idp.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, c| now - c.issued < CODE_LIFETIME);
        if codes.len() >= MAX_CODES {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many sign-ins at once").into_response();
        }
        codes.insert(
            code.clone(),
            Code { sub, challenge: q.code_challenge.clone(), nonce: q.nonce.clone(), issued: now },
        );
    }
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = q.state.as_deref() {
        params.push(("state", s));
    }
    match reqwest::Url::parse_with_params(&q.redirect_uri, &params) {
        Ok(u) => Redirect::to(u.as_str()).into_response(),
        Err(_) => bad("redirect_uri is not a URL"),
    }
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    code: String,
    redirect_uri: String,
    code_verifier: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_secret: Option<String>,
}

fn token_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": code}))).into_response()
}

/// The client's credentials from HTTP Basic (RFC 6749 §2.3.1) or the form.
fn client_ok(idp: &DevIdp, headers: &HeaderMap, t: &TokenRequest) -> bool {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| B64.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok());
    let (id, secret) = match &basic {
        Some(b) => match b.split_once(':') {
            Some((i, s)) => (i.to_owned(), zeroize::Zeroizing::new(s.to_owned())),
            None => return false,
        },
        None => match (&t.client_id, &t.client_secret) {
            (Some(i), Some(s)) => (i.clone(), zeroize::Zeroizing::new(s.clone())),
            _ => return false,
        },
    };
    // Both are short and not comparison-timing sensitive enough for a dev-only provider to
    // matter, but compare their BLAKE3 hashes anyway (constant-time equality of the digests).
    id == idp.client_id && blake3::hash(secret.as_bytes()) == blake3::hash(idp.client_secret.as_bytes())
}

async fn token(State(idp): State<Arc<DevIdp>>, headers: HeaderMap, Form(t): Form<TokenRequest>) -> Response {
    if !client_ok(&idp, &headers, &t) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    if t.grant_type != "authorization_code" {
        return token_error("unsupported_grant_type");
    }
    let now = vault::Timestamp::now().unix();
    // One use: the code is gone whatever happens next.
    let code = idp.codes.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.code);
    let Some(code) = code.filter(|c| now - c.issued < CODE_LIFETIME) else {
        return token_error("invalid_grant");
    };
    if t.redirect_uri != idp.redirect_uri || challenge(&t.code_verifier) != code.challenge {
        return token_error("invalid_grant");
    }
    let mut claims = json!({
        "iss": idp.issuer, "sub": code.sub.as_str(), "aud": idp.client_id, "iat": now, "exp": now + 300,
    });
    if let Some(n) = code.nonce {
        claims["nonce"] = json!(n);
    }
    let head = json!({"alg": "EdDSA", "typ": "JWT", "kid": "dev-oidc"});
    let input = format!("{}.{}", B64URL.encode(head.to_string()), B64URL.encode(claims.to_string()));
    let id_token = format!("{input}.{}", B64URL.encode(idp.key.sign(input.as_bytes()).to_bytes()));
    let mut resp = Json(json!({
        "access_token": random_token(), "token_type": "Bearer", "expires_in": 300, "id_token": id_token,
    }))
    .into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    resp
}
