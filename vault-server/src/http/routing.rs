//! The [`Route`] type and the router built from every route of [`crate::routes`], with JSON
//! errors for unknown routes and 405 answers naming the allowed methods.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;

use crate::http::error::ApiError;
use crate::http::middleware::observe;
use crate::http::state::AppState;

/// One route of the HTTP contract, declared once: the source of the router, of the summaries
/// and the operation check of `/openapi.json` ([`crate::openapi`]) and of the `Allow` lists of
/// 405 answers.
#[derive(Clone, Copy)]
pub struct Route {
    /// The method, lower case (`get`, `put`, `post`, `delete`).
    pub method: &'static str,
    /// The path, with `{parameters}` as axum and OpenAPI write them.
    pub path: &'static str,
    /// A one-line summary (the OpenAPI operation's).
    pub summary: &'static str,
    /// The handler as a method router.
    pub(crate) handler: fn() -> MethodRouter<Arc<AppState>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method.to_ascii_uppercase(), self.path)
    }
}

/// The router: every route of [`crate::routes::all`], JSON errors for unknown routes and
/// methods, metrics.
pub fn router(state: Arc<AppState>) -> Router {
    let mut by_path: Vec<(&str, MethodRouter<Arc<AppState>>)> = Vec::new();
    for route in crate::routes::all() {
        let (path, h) = (route.path, (route.handler)());
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, mr)) => {
                let old = std::mem::replace(mr, MethodRouter::new());
                *mr = old.merge(h);
            }
            None => by_path.push((path, h)),
        }
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        let mut methods: Vec<String> =
            crate::routes::all().filter(|r| r.path == path).map(|r| r.method.to_ascii_uppercase()).collect();
        if methods.iter().any(|m| m == "GET") {
            methods.push("HEAD".into());
        }
        let allow = HeaderValue::from_str(&methods.join(", ")).unwrap_or(HeaderValue::from_static(""));
        // A tile path holds slashes (`<L>/<N>[.p/<W>]`): routed as a wildcard, documented as one
        // parameter.
        let routed = path.replace("{tile}", "{*tile}");
        r = r.route(&routed, mr.fallback(move || method_not_allowed(allow.clone())));
    }
    let counting = state.clone();
    r.fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let st = counting.clone();
            async move { observe(st, req, next).await }
        }))
        .with_state(state)
}

async fn fallback() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

/// 405 with the `Allow` header that RFC 9110 requires (the route's methods).
async fn method_not_allowed(allow: HeaderValue) -> Response {
    let mut resp =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
            .into_response();
    resp.headers_mut().insert(header::ALLOW, allow);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use serde_json::{json, Value};
    use tower::ServiceExt as _;
    use vault::{Timestamp, Vault};

    use crate::http::state::sealed_state;

    async fn status_and_code(app: Router, method: &str, uri: &str) -> (u16, String) {
        let req = axum::http::Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let code =
            serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        (status, code.unwrap_or_default())
    }

    #[tokio::test]
    async fn while_the_vault_opens_readyz_says_503_and_calls_are_sealed() {
        let st = sealed_state();
        assert_eq!(status_and_code(router(st.clone()), "GET", "/healthz").await.0, 200);
        assert_eq!(status_and_code(router(st.clone()), "GET", "/readyz").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/v1/audit/checkpoint").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/v1/agencies").await, (503, "sealed".into()));
        assert_eq!(status_and_code(router(st.clone()), "GET", "/nowhere").await, (404, "not_found".into()));
        let openapi = status_and_code(router(st), "GET", "/openapi.json").await;
        assert_eq!(openapi.0, 200);
    }

    async fn metrics_len(st: &Arc<AppState>) -> usize {
        let req = axum::http::Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let resp = router(st.clone()).oneshot(req).await.unwrap();
        axum::body::to_bytes(resp.into_body(), 1 << 24).await.unwrap().len()
    }

    #[tokio::test]
    async fn item_9_8_made_up_methods_and_paths_do_not_grow_metrics() {
        let st = sealed_state();
        let send = |i: u32| {
            let st = st.clone();
            async move {
                for (method, uri) in [
                    (format!("M{i}X"), format!("/made/up/{i}")),
                    (format!("Q{i}"), "/healthz".to_owned()),
                    ("GET".to_owned(), format!("/nowhere/{i}")),
                    ("POST".to_owned(), format!("/v1/owners/x{i}/nothing")),
                ] {
                    status_and_code(router(st.clone()), &method, &uri).await;
                }
            }
        };
        for i in 0..20 {
            send(i).await;
        }
        // (The first call to /metrics adds its own series.)
        metrics_len(&st).await;
        let before = metrics_len(&st).await;
        for i in 20..1020 {
            send(i).await;
        }
        let after = metrics_len(&st).await;
        // Only the counts' digits may grow; 4,000 distinct methods and paths add no series.
        assert!(after < before + 512, "metrics grew from {before} to {after} bytes");
        let req = axum::http::Request::builder().uri("/metrics").body(Body::empty()).unwrap();
        let text = axum::body::to_bytes(router(st).oneshot(req).await.unwrap().into_body(), 1 << 24).await.unwrap();
        let text = String::from_utf8(text.to_vec()).unwrap();
        assert!(!text.contains("M500X") && !text.contains("/nowhere/") && text.contains("method=\"other\""));
    }

    #[tokio::test]
    async fn item_10_3_after_a_failed_sync_readyz_and_writes_answer_503() {
        use vault::storage::{files::FsBlobs, sled::SledMeta};
        let dir = tempfile::tempdir().unwrap();
        let faults = vault::Faults::new();
        let meta = SledMeta::open(&dir.path().join("meta")).unwrap().with_faults(&faults);
        let blobs = FsBlobs::open(dir.path().join("blobs")).unwrap().with_faults(&faults);
        let master = vault::MasterKey::from_bytes([7; 32]);
        let v = Vault::open_with(Box::new(meta), Box::new(blobs), &master, Some(dir.path().join("OPEN"))).unwrap();
        let op = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let mut st = sealed_state();
        Arc::get_mut(&mut st).unwrap().auth.operator = Some(op.verifying_key());
        let _ = st.vault.set(Arc::new(v));
        let now = Timestamp::now().unix();
        let claims = vault::crypto::token::Claims {
            kid: "operator",
            iss: "operator",
            sub: "operator",
            aud: "vault",
            iat: now,
            exp: now + 600,
        };
        let token = format!("Bearer {}", vault::crypto::token::mint(&op, &claims));
        let call = |method: &str, uri: &str, body: Option<Value>| {
            let mut req = axum::http::Request::builder().method(method).uri(uri).header(header::AUTHORIZATION, &token);
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
            let app = router(st.clone());
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                let v = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
                (status, v["error"]["code"].as_str().unwrap_or_default().to_owned())
            }
        };
        let agency = |name: &str| json!({"name": name, "keys": []});
        assert_eq!(call("GET", "/readyz", None).await.0, 200);
        assert_eq!(call("PUT", "/v1/agencies/before", Some(agency("Before"))).await.0, 201);
        faults.fail_nth(vault::Fault::JournalSync, 1);
        assert_eq!(call("PUT", "/v1/agencies/failing", Some(agency("Failing"))).await, (503, "unavailable".into()));
        assert_eq!(call("GET", "/readyz", None).await, (503, "unavailable".into()));
        assert_eq!(call("PUT", "/v1/agencies/after", Some(agency("After"))).await, (503, "unavailable".into()));
        // Reads go on.
        assert_eq!(call("GET", "/v1/agencies/before", None).await.0, 200);
        assert_eq!(call("GET", "/v1/vault-key", None).await.0, 200);
        assert_eq!(call("GET", "/healthz", None).await.0, 200);
    }

    /// Found by schemathesis (`allow_header_conformance`): a 405 must name the route's methods.
    #[tokio::test]
    async fn a_wrong_method_answers_405_with_the_allow_header() {
        let req = axum::http::Request::builder()
            .method("PATCH")
            .uri("/v1/owners/citizen:001099012345/documents")
            .body(Body::empty())
            .unwrap();
        let resp = router(sealed_state()).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "POST, GET, HEAD");
    }

    /// Each route's declared method is the one its handler answers: a route whose `method` and
    /// `handler` disagreed would answer its own method with 405 (and name a wrong one in
    /// `Allow` and in `/openapi.json`).
    #[tokio::test]
    async fn every_route_answers_its_declared_method() {
        for r in crate::routes::all() {
            let mut path = String::new();
            let mut rest = r.path;
            while let Some(open) = rest.find('{') {
                path.push_str(&rest[..open]);
                let close = open + rest[open..].find('}').unwrap();
                path.push_str(if &rest[open..=close] == "{tile}" { "0/000" } else { "x" });
                rest = &rest[close + 1..];
            }
            path.push_str(rest);
            let req = axum::http::Request::builder()
                .method(r.method.to_ascii_uppercase().as_str())
                .uri(&path)
                .body(Body::empty())
                .unwrap();
            let resp = router(sealed_state()).oneshot(req).await.unwrap();
            assert_ne!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
        }
    }
}
