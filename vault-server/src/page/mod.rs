//! The citizen's page (issue 13, SPEC.md §22): server-rendered HTML at `/page`, signed in with
//! OpenID Connect ([`oidc`]), with a built-in development provider under `--dev` ([`devidp`]).
//!
//! Every action calls the library as the owner ([`Caller::owner`]), exactly as the API handlers
//! do, so it is checked and audited exactly as the API call would be. The page never sees an
//! API token: the session cookie is an opaque random id known only to this process.

pub mod devidp;
mod i18n;
pub mod oidc;
mod views;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup, DOCTYPE};
use vault::access::Caller;
use vault::OwnerId;

use crate::http::AppState;
pub use i18n::Lang;
use oidc::{Pending, RelyingParty};

/// Longest a session may sit unused, seconds.
pub const IDLE: i64 = 30 * 60;
/// Longest a sign-in may take at the provider, seconds.
const LOGIN_WINDOW: i64 = 10 * 60;
/// Most sessions (and, separately, sign-ins under way) held at once.
const MAX_SESSIONS: usize = 100_000;
/// Session cookie name.
const SESSION: &str = "vault_session";
/// The cookie binding a sign-in to the browser that started it.
const LOGIN: &str = "vault_login";
/// Language cookie name.
const LANG: &str = "vault_lang";

/// A signed-in person.
#[derive(Debug, Clone)]
struct Session {
    owner: OwnerId,
    csrf: String,
    last: i64,
}

/// What the page needs.
#[derive(Debug)]
pub struct PageState {
    /// The API's state (the vault).
    pub app: Arc<AppState>,
    /// The identity provider we trust for sign-in.
    pub rp: RelyingParty,
    /// Cookies get `Secure` (the public URL is https).
    pub secure: bool,
    /// The provider's origin, allowed as a form target in the CSP (sign-in redirects there).
    form_action: String,
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl PageState {
    /// The page's state for a public URL (`http://host:port`, no trailing slash).
    pub fn new(app: Arc<AppState>, rp: RelyingParty, public_url: &str) -> Self {
        let origin = reqwest::Url::parse(&rp.issuer).map(|u| u.origin().ascii_serialization()).unwrap_or_default();
        Self {
            app,
            rp,
            secure: public_url.starts_with("https://"),
            form_action: origin,
            sessions: Default::default(),
            pending: Default::default(),
        }
    }
}

/// The page's routes (mounted beside the API's).
pub fn router(st: Arc<PageState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/page") }))
        .route("/page", get(home))
        .route("/page/style.css", get(style))
        // Browsers ask for it on every site: nothing, rather than a 404 in the console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/page/login", get(login))
        .route("/page/callback", get(callback))
        .route("/page/logout", post(logout))
        .merge(views::routes())
        .with_state(st)
}

/// Headers of every page: a strict CSP (no script at all), no sniffing, no framing, no caching.
pub(crate) fn page_headers() -> [(HeaderName, HeaderValue); 6] {
    page_headers_with("'self'")
}

fn page_headers_with(form_action: &str) -> [(HeaderName, HeaderValue); 6] {
    let csp = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action {form_action}; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("sandbox"))),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The language: `?lang=` (remembered in a cookie), else the cookie, else Vietnamese.
fn lang_of(headers: &HeaderMap, q: &HashMap<String, String>) -> (Lang, Option<HeaderValue>) {
    if let Some(l) = q.get("lang").and_then(|l| Lang::parse(l)) {
        let c = format!("{LANG}={}; Path=/; Max-Age=31536000; SameSite=Lax", l.code());
        return (l, HeaderValue::from_str(&c).ok());
    }
    (cookie(headers, LANG).and_then(|l| Lang::parse(&l)).unwrap_or(Lang::Vi), None)
}

/// `path?query&` with the query's `lang` left out (values percent-encoded again), ready for
/// `lang=<code>` to be appended.
fn switch_target(path: &str, q: &HashMap<String, String>) -> String {
    let mut keep: Vec<(&String, &String)> = q.iter().filter(|(k, _)| k.as_str() != "lang").collect();
    keep.sort();
    let Ok(mut url) = reqwest::Url::parse("http://x/") else { return format!("{path}?") };
    if keep.is_empty() {
        return format!("{path}?");
    }
    url.query_pairs_mut().extend_pairs(keep);
    format!("{path}?{}&", url.query().unwrap_or(""))
}

/// One request's context: language, and the session if signed in.
pub(crate) struct Ctx {
    pub st: Arc<PageState>,
    pub lang: Lang,
    set_lang: Option<HeaderValue>,
    /// Path and query of this page without `lang`, ending in `?` or `&`, for the language switch.
    pub here: String,
    session: Option<(String, Session)>,
}

impl Ctx {
    fn new(st: &Arc<PageState>, headers: &HeaderMap, uri: &axum::http::Uri, get: bool) -> Self {
        let q: HashMap<String, String> = uri
            .query()
            .map(|q| reqwest::Url::parse(&format!("http://x/?{q}")).map(|u| u.query_pairs().into_owned().collect()))
            .and_then(Result::ok)
            .unwrap_or_default();
        let (lang, set_lang) = lang_of(headers, &q);
        let now = vault::Timestamp::now().unix();
        let session = cookie(headers, SESSION).and_then(|id| {
            let mut s = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match s.get_mut(&id) {
                Some(sess) if now - sess.last < IDLE => {
                    sess.last = now;
                    Some((id, sess.clone()))
                }
                Some(_) => {
                    s.remove(&id);
                    None
                }
                None => None,
            }
        });
        // The language switch reloads this page with its query (an access-log filter, say) but
        // another `lang`; after a form, it goes to the start.
        let here = if get { switch_target(uri.path(), &q) } else { "/page?".to_owned() };
        Self { st: st.clone(), lang, set_lang, here, session }
    }

    /// The signed-in owner and the caller the library sees: the owner themself.
    pub fn owner(&self) -> Option<(OwnerId, Caller)> {
        self.session.as_ref().map(|(_, s)| (s.owner.clone(), Caller::owner(s.owner.clone())))
    }

    /// The session's CSRF token (empty when signed out).
    pub fn csrf(&self) -> &str {
        self.session.as_ref().map(|(_, s)| s.csrf.as_str()).unwrap_or("")
    }

    /// Whether a form's CSRF token is this session's.
    pub fn csrf_ok(&self, token: Option<&str>) -> bool {
        match (&self.session, token) {
            (Some((_, s)), Some(t)) => blake3::hash(s.csrf.as_bytes()) == blake3::hash(t.as_bytes()),
            _ => false,
        }
    }

    /// Translates.
    pub fn t(&self, key: i18n::K) -> &'static str {
        self.lang.t(key)
    }

    /// A full page with the navigation.
    pub fn page(&self, status: StatusCode, title: &str, body: Markup) -> Response {
        let t = |k| self.t(k);
        use i18n::K;
        let other = match self.lang {
            Lang::Vi => (Lang::En, "English"),
            Lang::En => (Lang::Vi, "Tiếng Việt"),
        };
        let markup = html! {
            (DOCTYPE)
            html lang=(self.lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · " (t(K::AppName)) }
                    link rel="stylesheet" href="/page/style.css";
                }
                body {
                    header {
                        span.brand { (t(K::AppName)) }
                        @if let Some((owner, _)) = self.owner() {
                            nav aria-label=(t(K::Navigation)) {
                                a href="/page/documents" { (t(K::MyDocuments)) }
                                a href="/page/sharing" { (t(K::Sharing)) }
                                a href="/page/access-log" { (t(K::AccessLog)) }
                                a href="/page/account" { (t(K::MyData)) }
                            }
                            form.inline method="post" action="/page/logout" {
                                input type="hidden" name="csrf" value=(self.csrf());
                                span.who { (owner.as_str()) " " }
                                button type="submit" { (t(K::SignOut)) }
                            }
                        }
                        a.lang href={ (self.here) "lang=" (other.0.code()) } lang=(other.0.code()) hreflang=(other.0.code()) { (other.1) }
                    }
                    main { h1 { (title) } (body) }
                }
            }
        };
        let mut resp = (status, page_headers_with(&self.form_action_csp()), markup.into_string()).into_response();
        if let Some(c) = &self.set_lang {
            resp.headers_mut().append(header::SET_COOKIE, c.clone());
        }
        resp
    }

    fn form_action_csp(&self) -> String {
        if self.st.form_action.is_empty() {
            "'self'".into()
        } else {
            format!("'self' {}", self.st.form_action)
        }
    }

    /// A page saying something went wrong.
    pub fn error(&self, status: StatusCode, msg: &str) -> Response {
        self.page(status, self.t(i18n::K::Error), html! { p.error role="alert" { (msg) } })
    }

    /// The answer to a page that needs a session when there is none.
    pub fn signed_out(&self) -> Response {
        Redirect::to("/page").into_response()
    }

    /// The answer to a form whose CSRF token is wrong.
    pub fn csrf_refused(&self) -> Response {
        self.error(StatusCode::FORBIDDEN, self.t(i18n::K::CsrfRefused))
    }

    /// Maps a library error to a page (the API's mapping decides the status).
    pub fn vault_error(&self, e: crate::http::ApiError) -> Response {
        let status = e.status();
        let msg = match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => self.t(i18n::K::NotFound),
            StatusCode::FORBIDDEN => self.t(i18n::K::Forbidden),
            StatusCode::BAD_REQUEST => {
                return self.error(status, &format!("{}: {}", self.t(i18n::K::Invalid), e.message()))
            }
            _ => self.t(i18n::K::Unavailable),
        };
        self.error(status, msg)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ctx
where
    Arc<PageState>: axum::extract::FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &S) -> Result<Self, Self::Rejection> {
        let st: Arc<PageState> = axum::extract::FromRef::from_ref(s);
        Ok(Ctx::new(&st, &parts.headers, &parts.uri, parts.method == axum::http::Method::GET))
    }
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        include_str!("style.css"),
    )
        .into_response()
}

async fn home(ctx: Ctx) -> Response {
    use i18n::K;
    if ctx.owner().is_some() {
        return Redirect::to("/page/documents").into_response();
    }
    let body = html! {
        p { (ctx.t(K::Intro)) }
        form method="get" action="/page/login" {
            button type="submit" { (ctx.t(K::SignIn)) }
        }
    };
    ctx.page(StatusCode::OK, ctx.t(K::Welcome), body)
}

fn now() -> i64 {
    vault::Timestamp::now().unix()
}

async fn login(ctx: Ctx) -> Response {
    let st = &ctx.st;
    let (url, state, pending) = match st.rp.start(now()).await {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "sign-in could not start");
            return ctx.error(StatusCode::BAD_GATEWAY, ctx.t(i18n::K::SignInFailed));
        }
    };
    {
        let mut p = st.pending.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        p.retain(|_, v| t - v.started < LOGIN_WINDOW);
        if p.len() >= MAX_SESSIONS {
            return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(i18n::K::Unavailable));
        }
        p.insert(state.clone(), pending);
    }
    // Lax, not Strict: the provider sends the browser back with a cross-site navigation.
    let c = format!(
        "{LOGIN}={state}; Path=/page/callback; Max-Age={LOGIN_WINDOW}; HttpOnly; SameSite=Lax{}",
        if st.secure { "; Secure" } else { "" }
    );
    let mut r = Redirect::to(&url).into_response();
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

async fn callback(ctx: Ctx, headers: HeaderMap, Query(q): Query<CallbackQuery>) -> Response {
    let st = &ctx.st;
    let failed = || ctx.error(StatusCode::BAD_REQUEST, ctx.t(i18n::K::SignInFailed));
    let (Some(code), Some(state)) = (q.code, q.state) else { return failed() };
    // The state must be the one this browser was given (no sign-in fixation).
    if cookie(&headers, LOGIN).as_deref() != Some(state.as_str()) {
        return failed();
    }
    let Some(pending) = st.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&state) else {
        return failed();
    };
    if now() - pending.started >= LOGIN_WINDOW {
        return failed();
    }
    let owner = match st.rp.finish(&code, &pending, now()).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in refused");
            return failed();
        }
    };
    let id = oidc::random_token();
    {
        let mut s = st.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        s.retain(|_, v| t - v.last < IDLE);
        if s.len() >= MAX_SESSIONS {
            return ctx.error(StatusCode::SERVICE_UNAVAILABLE, ctx.t(i18n::K::Unavailable));
        }
        s.insert(id.clone(), Session { owner, csrf: oidc::random_token(), last: t });
    }
    let secure = if st.secure { "; Secure" } else { "" };
    let session = format!("{SESSION}={id}; Path=/; HttpOnly; SameSite=Strict{secure}");
    let clear = format!("{LOGIN}=; Path=/page/callback; Max-Age=0; HttpOnly; SameSite=Lax{secure}");
    // A Strict cookie is not sent on the rest of a redirect chain that began at another site:
    // land on a page of our own that moves on by itself (a meta refresh, no script).
    let markup = html! {
        (DOCTYPE)
        html lang=(ctx.lang.code()) {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0; url=/page/documents";
                title { (ctx.t(i18n::K::AppName)) }
                link rel="stylesheet" href="/page/style.css";
            }
            body { main { p { a href="/page/documents" { (ctx.t(i18n::K::Continue)) } } } }
        }
    };
    let mut r = (StatusCode::OK, page_headers(), markup.into_string()).into_response();
    for c in [session, clear] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// A form with only the CSRF token.
#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: Option<String>,
}

async fn logout(ctx: Ctx, axum::Form(f): axum::Form<CsrfForm>) -> Response {
    if !ctx.csrf_ok(f.csrf.as_deref()) {
        return ctx.csrf_refused();
    }
    if let Some((id, _)) = &ctx.session {
        ctx.st.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
    let c = format!(
        "{SESSION}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if ctx.st.secure { "; Secure" } else { "" }
    );
    let mut r = Redirect::to("/page").into_response();
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(public: &str) -> Arc<PageState> {
        let app = Arc::new(AppState {
            vault: std::sync::OnceLock::new(),
            auth: crate::http::auth::AuthConfig {
                audience: "vault".into(),
                max_lifetime: 3600,
                operator: None,
                providers: HashMap::new(),
                cache: Default::default(),
            },
            max_content: 1,
            metrics: Default::default(),
            limits: crate::http::Limits::new(1, 1, 1, std::time::Duration::from_secs(1)),
            webhooks: Default::default(),
        });
        let rp =
            RelyingParty::new("https://idp.example".into(), "c".into(), "s".into(), format!("{public}/page/callback"));
        Arc::new(PageState::new(app, rp, public))
    }

    fn ctx_with(st: &Arc<PageState>, cookie: &str) -> Ctx {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        Ctx::new(st, &h, &"/page/documents".parse().unwrap(), true)
    }

    #[test]
    fn a_session_unused_for_30_minutes_is_gone_and_a_used_one_is_kept_alive() {
        let st = state("http://127.0.0.1:1");
        let owner = OwnerId::parse("citizen:001099012345").unwrap();
        let t = now();
        for (id, last) in [("old", t - IDLE), ("fresh", t - IDLE + 120)] {
            let s = Session { owner: owner.clone(), csrf: "x".into(), last };
            st.sessions.lock().unwrap().insert(id.into(), s);
        }
        assert!(ctx_with(&st, "vault_session=old").owner().is_none());
        assert!(!st.sessions.lock().unwrap().contains_key("old"));
        let c = ctx_with(&st, "a=b; vault_session=fresh");
        assert_eq!(c.owner().unwrap().0, owner);
        assert!(c.csrf_ok(Some("x")) && !c.csrf_ok(Some("y")) && !c.csrf_ok(None));
        // Its use moved the idle clock on.
        assert!(st.sessions.lock().unwrap()["fresh"].last >= t);
        assert!(ctx_with(&st, "vault_session=unknown").owner().is_none());
    }

    #[test]
    fn the_language_switch_keeps_the_query_but_its_lang() {
        let q = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(switch_target("/page/documents", &q(&[])), "/page/documents?");
        assert_eq!(switch_target("/page/documents", &q(&[("lang", "en")])), "/page/documents?");
        assert_eq!(
            switch_target("/page/access-log", &q(&[("lang", "vi"), ("agency", "so-gd"), ("from", "2026-01-02")])),
            "/page/access-log?agency=so-gd&from=2026-01-02&"
        );
        // What the person typed is encoded again, never pasted into the link as it came.
        assert_eq!(switch_target("/p", &q(&[("x", "a&b=c\"<")])), "/p?x=a%26b%3Dc%22%3C&");
    }

    #[test]
    fn cookies_are_secure_behind_https_and_the_csp_allows_only_the_provider_as_a_form_target() {
        assert!(state("https://vault.example").secure);
        assert!(!state("http://127.0.0.1:1").secure);
        let st = state("http://127.0.0.1:1");
        assert_eq!(ctx_with(&st, "").form_action_csp(), "'self' https://idp.example");
        let csp = page_headers().into_iter().find(|(k, _)| k == header::CONTENT_SECURITY_POLICY).unwrap().1;
        let csp = csp.to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'") && !csp.contains("unsafe") && !csp.contains("script"), "{csp}");
    }
}
