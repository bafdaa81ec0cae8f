//! End-to-end tests of the citizen's page (SPEC.md §21) over plain HTTP on 127.0.0.1: the real
//! binary with `--dev` (its built-in OpenID provider), a hand-kept cookie jar, forms posted as a
//! browser posts them. The headless-browser test is tests/page_browser.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::time::Duration;

use serde_json::json;

use common::http::*;

/// A browser without script: follows nothing by itself, keeps cookies per name.
struct Browser {
    base: String,
    agent: ureq::Agent,
    jar: HashMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Page {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The value of the first `name="csrf"` hidden field.
    fn csrf(&self) -> String {
        let t = self.text();
        let i = t.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
        t[i..i + t[i..].find('"').unwrap()].to_owned()
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

impl Browser {
    fn new(base: &str) -> Self {
        let agent = ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(30)).build();
        Self { base: base.to_owned(), agent, jar: HashMap::new() }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Page {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) };
        let mut req = self.agent.request(method, &url);
        let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !cookies.is_empty() {
            req = req.set("Cookie", &cookies.join("; "));
        }
        let r = match body {
            Some(b) => req.set("Content-Type", "application/x-www-form-urlencoded").send_string(b),
            None => req.call(),
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        };
        let set_cookies: Vec<String> = resp.all("set-cookie").into_iter().map(str::to_owned).collect();
        for c in &set_cookies {
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() || c.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_owned(), v.to_owned());
            }
        }
        let headers =
            resp.headers_names().iter().map(|n| (n.clone(), resp.header(n).unwrap_or("").to_owned())).collect();
        let status = resp.status();
        let location = resp.header("location").map(str::to_owned);
        let mut body = Vec::new();
        resp.into_reader().read_to_end(&mut body).unwrap();
        Page { status, location, set_cookies, headers, body }
    }

    fn get(&mut self, path: &str) -> Page {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, pairs: &[(&str, &str)]) -> Page {
        self.send("POST", path, Some(&form(pairs)))
    }

    /// Signs in through the `--dev` provider as `owner`; returns the callback's answer.
    fn sign_in(&mut self, owner: &str) -> Page {
        let r = self.get("/page/login");
        assert_eq!(r.status, 303, "{}", r.text());
        let to = r.location.unwrap();
        assert!(to.contains("/dev-idp/authorize?") && to.contains("code_challenge_method=S256"), "{to}");
        assert!(to.contains("state=") && to.contains("nonce="), "{to}");
        let form_page = self.get(&to);
        assert_eq!(form_page.status, 200);
        let t = form_page.text();
        assert!(t.contains("Citizen or organisation ID") && t.contains(">Sign in<"), "{t}");
        let query = to.split_once('?').unwrap().1;
        let r = self.send(
            "POST",
            &format!("{}/dev-idp/authorize", self.base),
            Some(&format!("{query}&login={}", enc(owner))),
        );
        assert_eq!(r.status, 303, "{}", r.text());
        let back = r.location.unwrap();
        assert!(back.contains("/page/callback?code="), "{back}");
        self.get(&back)
    }
}

/// A server with `--dev` (the built-in provider), an issuing agency that deposited one signed
/// document for CITIZEN, and a second agency that may read with a grant.
fn setup() -> (Server, String, String, String) {
    let s = Server::start(&["--dev"]);
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let (_, reader) = register_agency(&s, "so-gd", 22);
    let data = b"%PDF-1.4 khai sinh".to_vec();
    let digest = vault::Digest::of(&data);
    let base = format!("/v1/owners/{CITIZEN}");
    let r = call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&iss), &[], Some(&data));
    assert_eq!(r.status, 201);
    let r = post_json(
        &s.url(&format!("{base}/documents")),
        &iss,
        None,
        &signed_deposit(CITIZEN, &data, "ubnd-xa", &iss_key),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    (s, iss, reader, id)
}

#[test]
fn signing_in_through_the_dev_provider_gives_a_strict_httponly_session_cookie() {
    let (s, _, _, _) = setup();
    let mut b = Browser::new(&s.base);
    // Signed out: the welcome page with the Sign in button; Vietnamese by default.
    let r = b.get("/page");
    assert!(r.text().contains("<html lang=\"vi\"") && r.text().contains("Đăng nhập"), "{}", r.text());
    let r = b.get("/page/documents");
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/page")));
    let r = b.sign_in(CITIZEN);
    assert_eq!(r.status, 200, "{}", r.text());
    let session = r.set_cookies.iter().find(|c| c.starts_with("vault_session=")).expect("a session cookie");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict") && session.contains("Path=/"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain http: no Secure flag ({session})");
    assert!(r.text().contains("http-equiv=\"refresh\""));
    // The page, in English, with the document the agency deposited, signed and verified.
    let r = b.get("/page/documents?lang=en");
    assert_eq!(r.status, 200);
    let t = r.text();
    assert!(
        t.contains("<html lang=\"en\"")
            && t.contains(">My documents<")
            && t.contains(">Sharing<")
            && t.contains(">Access log<"),
        "{t}"
    );
    assert!(t.contains("Giấy khai sinh") && t.contains("Signed by Agency ubnd-xa, verified"), "{t}");
    assert!(t.contains(">Sign out<"));
    // Strict CSP: nothing but our own stylesheet; no script at all.
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert!(!t.contains("<script"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    // The language is remembered.
    assert!(b.get("/page/documents").text().contains("<html lang=\"en\""));
    // Sign out needs the CSRF token; then the session is gone.
    let csrf = r.csrf();
    assert_eq!(b.post("/page/logout", &[("csrf", "wrong")]).status, 403);
    let r = b.post("/page/logout", &[("csrf", &csrf)]);
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/page/documents").status, 303);
}

#[test]
fn a_forged_or_replayed_sign_in_is_refused() {
    if one_process_only("sign-ins and the --dev identity provider are per instance (SPEC.md §22)") {
        return;
    }
    let (s, _, _, _) = setup();
    let mut b = Browser::new(&s.base);
    let r = b.get("/page/login");
    let to = r.location.unwrap();
    let query = to.split_once('?').unwrap().1.to_owned();
    let r = b.send("POST", &format!("{}/dev-idp/authorize", s.base), Some(&format!("{query}&login={}", enc(CITIZEN))));
    let back = r.location.unwrap();
    // Another browser (without this one's sign-in cookie) cannot use the code.
    let mut other = Browser::new(&s.base);
    let r = other.get(&back);
    assert_eq!(r.status, 400);
    assert!(r.set_cookies.iter().all(|c| !c.starts_with("vault_session=")));
    // The right browser can, once; a replay of the same callback is refused.
    assert_eq!(b.get(&back).status, 200);
    let mut again = Browser::new(&s.base);
    again.jar = b.jar.clone();
    again.jar.remove("vault_session");
    again.jar.insert("vault_login".into(), back.split("state=").nth(1).unwrap().split('&').next().unwrap().to_owned());
    assert_eq!(again.get(&back).status, 400);
    // The token endpoint refuses a wrong PKCE verifier and an unknown client.
    let r = call("POST", &s.url("/dev-idp/token"), None, &[("Content-Type", "application/x-www-form-urlencoded")], Some(b"grant_type=authorization_code&code=x&redirect_uri=y&code_verifier=z&client_id=vault-page&client_secret=nope"));
    assert_eq!(r.status, 401);
    // Discovery and JWKS are there for any relying party.
    let d = call("GET", &s.url("/dev-idp/.well-known/openid-configuration"), None, &[], None).json();
    assert_eq!(d["issuer"], json!(format!("{}/dev-idp", s.base)));
    let k = call("GET", &s.url("/dev-idp/jwks"), None, &[], None).json();
    assert_eq!(k["keys"][0]["crv"], "Ed25519");
}

#[test]
fn share_read_see_it_proven_in_the_log_revoke_and_the_agency_is_refused() {
    let (s, _, reader, id) = setup();
    let mut b = Browser::new(&s.base);
    b.sign_in(CITIZEN);
    let r = b.get("/page/sharing?lang=en");
    let t = r.text();
    for name in ["Agency", "Procedure code", "Purpose", "Document types", "Expires on", "Maximum uses", ">Share<"] {
        assert!(t.contains(name), "{name} missing: {t}");
    }
    let csrf = r.csrf();
    let in_30_days = vault::Timestamp::now().plus_seconds(30 * 86_400).to_string();
    let expires = &in_30_days[..10];
    let terms = [
        ("grantee", "so-gd"),
        ("purpose", "1.000001"),
        ("purpose_text", "Tuyển sinh đầu cấp"),
        ("doc_types", "giay-khai-sinh"),
        ("expires", expires),
        ("max_uses", "3"),
    ];
    // Without the CSRF token: refused, nothing granted.
    let r = b.post("/page/sharing/review", &terms);
    assert_eq!(r.status, 403);
    let mut with = vec![("csrf", csrf.as_str())];
    with.extend_from_slice(&terms);
    assert_eq!(b.post("/page/sharing/confirm", &terms).status, 403);
    // The review shows what will be shared, then Confirm creates the grant.
    let r = b.post("/page/sharing/review", &with);
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.text();
    assert!(
        t.contains("Agency so-gd") && t.contains("1.000001") && t.contains("Giấy khai sinh") && t.contains(">Confirm<"),
        "{t}"
    );
    let r = b.post("/page/sharing/confirm", &with);
    assert_eq!((r.status, r.location.as_deref()), (303, Some("/page/sharing")), "{}", r.text());
    let page = b.get("/page/sharing");
    let t = page.text();
    assert!(t.contains("Active") && t.contains("0 / 3") && t.contains(">Revoke<"), "{t}");
    // The receipt downloads.
    let rid = t.split("/page/sharing/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let r = b.get(&format!("/page/sharing/{rid}/receipt"));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("signature"));
    // The agency reads over the API under the grant.
    let url = s.url(&format!("/v1/owners/{CITIZEN}/documents/{id}/content"));
    assert_eq!(call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None).status, 200);
    // A read for another procedure is refused; both show in the access log, proven.
    assert_eq!(call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000009")], None).status, 403);
    let r = b.get("/page/access-log");
    let t = r.text();
    assert!(t.contains("Agency so-gd") && t.contains("document.content") && t.contains("1.000001"), "{t}");
    assert!(t.contains("class=\"refused\"") && t.contains("Refused"), "{t}");
    assert!(t.contains("class=\"proof\""), "{t}");
    // Filter by agency and period.
    let t = b.get("/page/access-log?agency=ubnd-xa").text();
    assert!(!t.contains("document.content") && t.contains("document.deposit"), "{t}");
    let t = b.get("/page/access-log?from=2000-01-01&to=2000-01-02").text();
    assert!(t.contains("No entries."), "{t}");
    // Revoke: the agency is refused on its next call.
    let csrf = page.csrf();
    let r = b.post(&format!("/page/sharing/{rid}/revoke"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303);
    let r = call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None);
    assert_eq!((r.status, r.code()), (403, "grant_required".to_owned()));
    assert!(b.get("/page/sharing").text().contains("Revoked"));
}

#[test]
fn the_page_audits_as_the_api_and_another_owner_sees_nothing() {
    let (s, _, _, id) = setup();
    let citizen = s.owner(CITIZEN);
    let log = || call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/access-log")), Some(&citizen), &[], None).json();
    let mut b = Browser::new(&s.base);
    b.sign_in(CITIZEN);
    let before = log()["entries"].as_array().unwrap().len();
    assert_eq!(b.get("/page/documents").status, 200);
    let entries = log()["entries"].as_array().unwrap().clone();
    // One page view of the documents = one `document.list` entry by the owner (plus the API's
    // own read of the log before it).
    let new: Vec<_> =
        entries[before..].iter().map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(new.iter().filter(|(_, a)| *a == "document.list").count(), 1, "{new:?}");
    assert!(
        new.iter().all(|(who, a)| *who == "owner" && (*a == "document.list" || *a == "access_log.read")),
        "{new:?}"
    );
    // Details: the statement fields and the verification result, in the chosen language.
    let t = b.get(&format!("/page/documents/{id}?lang=en")).text();
    assert!(
        t.contains("Signed by Agency ubnd-xa, verified")
            && t.contains("123/2024/TLKS")
            && t.contains(">Download<")
            && t.contains(">View<"),
        "{t}"
    );
    assert!(t.contains("6 May 2024 14:08 (Vietnam time)"), "issued 07:08:09Z is 14:08 in Vietnam: {t}");
    assert!(!t.contains(">Delete<"), "a signed document is not the owner's own upload");
    let t = b.get(&format!("/page/documents/{id}?lang=vi")).text();
    assert!(t.contains("14:08 06/05/2024"), "{t}");
    // Content: sandboxed, never sniffed.
    let r = b.get(&format!("/page/documents/{id}/content"));
    assert_eq!(r.status, 200);
    const CSP: &str = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'";
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!((r.header("x-frame-options"), r.header("referrer-policy")), (Some("DENY"), Some("no-referrer")));
    assert_eq!(r.body, b"%PDF-1.4 khai sinh");
    assert_eq!(r.header("content-disposition"), Some("attachment; filename=\"khai-sinh.pdf\""));
    // View: the same bytes shown in the browser, just as sandboxed.
    let r = b.get(&format!("/page/documents/{id}/content?view=1"));
    assert_eq!((r.status, r.header("content-disposition")), (200, Some("inline; filename=\"khai-sinh.pdf\"")));
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.body, b"%PDF-1.4 khai sinh");
    // Another citizen, signed in, cannot reach the first one's document through the page.
    let mut other = Browser::new(&s.base);
    other.sign_in("citizen:001099099999");
    assert_eq!(other.get(&format!("/page/documents/{id}")).status, 404);
    assert_eq!(other.get(&format!("/page/documents/{id}/content")).status, 404);
    assert!(!other.get("/page/documents").text().contains("Giấy khai sinh"));
}

#[test]
fn export_then_erase_with_typed_confirmation() {
    let (s, _, _, _) = setup();
    let mut b = Browser::new(&s.base);
    b.sign_in(CITIZEN);
    let r = b.get("/page/account?lang=en");
    let t = r.text();
    assert!(t.contains(">Export my data<") && t.contains(">Erase my vault<"), "{t}");
    let csrf = r.csrf();
    let r = b.post("/page/export", &[("csrf", &csrf)]);
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/x-tar")));
    assert_eq!(r.header("content-disposition"), Some("attachment; filename=\"my-vault.tar\""));
    // Streamed as it is built (no length known up front), and the tar verifies offline.
    assert_eq!((r.header("content-length"), r.header("transfer-encoding")), (None, Some("chunked")));
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    let summary =
        vault::engine::rights::verify_export(r.body.as_slice(), key["note_verifier_key"].as_str().unwrap()).unwrap();
    assert_eq!((summary.owner.as_str(), summary.documents, summary.signed_documents), (CITIZEN, 1, 1));
    assert_eq!(b.post("/page/export", &[]).status, 403);
    // The wrong word erases nothing.
    assert_eq!(b.post("/page/erase", &[("csrf", &csrf), ("confirm", "yes")]).status, 400);
    assert!(b.get("/page/documents").text().contains("Giấy khai sinh"));
    let r = b.post("/page/erase", &[("csrf", &csrf), ("confirm", "ERASE")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("Your vault is erased.") && r.text().contains("signature"));
    let citizen = s.owner(CITIZEN);
    let r = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/documents")), Some(&citizen), &[], None);
    assert!(
        r.status == 404 || r.json()["documents"].as_array().is_some_and(|d| d.is_empty()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn own_uploads_can_be_deleted_on_the_page_and_another_owners_grant_cannot_be_revoked() {
    let (s, _, _, _) = setup();
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    // The citizen's own upload, over the API.
    let data = b"my own scan".to_vec();
    let digest = vault::Digest::of(&data);
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&citizen), &[], Some(&data)).status, 201);
    let own = json!({"digest": digest, "doc_type": "anh-ca-nhan", "title": "My scan", "media_type": "image/png"});
    let r = post_json(&s.url(&format!("{base}/documents")), &citizen, None, &own);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let own_id = r.json()["id"].as_str().unwrap().to_owned();
    // And a grant, over the API.
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    let g = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "doc_types": ["giay-khai-sinh"], "expires_at": expires}),
    );
    let gid = g.json()["id"].as_str().unwrap().to_owned();

    let mut b = Browser::new(&s.base);
    b.sign_in(CITIZEN);
    let t = b.get("/page/documents?lang=en").text();
    assert!(t.contains("My scan") && t.contains("Your own upload, not verified"), "{t}");
    let page = b.get(&format!("/page/documents/{own_id}"));
    assert!(page.text().contains(">Delete<"));
    let csrf = page.csrf();
    assert_eq!(b.post(&format!("/page/documents/{own_id}/delete"), &[("csrf", "x")]).status, 403);
    let r = b.post(&format!("/page/documents/{own_id}/delete"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 303);
    assert!(!b.get("/page/documents").text().contains("My scan"));

    // Another owner's page cannot revoke this owner's grant.
    let mut other = Browser::new(&s.base);
    other.sign_in("citizen:001099099999");
    let csrf = other.get("/page/sharing").csrf();
    let r = other.post(&format!("/page/sharing/{gid}/revoke"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 404, "{}", r.text());
    let r = call("GET", &s.url(&format!("{base}/grants")), Some(&citizen), &[], None);
    assert_eq!(r.json()["grants"][0]["status"], "active");
    // Nor use this owner's CSRF token with its own session.
    let mine = b.get("/page/sharing").csrf();
    assert_eq!(other.post(&format!("/page/sharing/{gid}/revoke"), &[("csrf", &mine)]).status, 403);
}

/// The rows of an access-log page (English) and the `after` of its "Next page" link.
fn log_rows(t: &str) -> (Vec<String>, Option<String>) {
    let rows = t.split("<td data-label=\"Who\">").skip(1).map(|r| r[..r.find("</td>").unwrap()].to_owned()).collect();
    let next = t.split("rel=\"next\" href=\"").nth(1).map(|r| r[..r.find('"').unwrap()].replace("&amp;", "&"));
    (rows, next)
}

#[test]
fn the_access_log_filters_by_agency_and_period_and_pages_through_the_filter() {
    let (s, _, reader, id) = setup();
    let citizen = s.owner(CITIZEN);
    let base = format!("/v1/owners/{CITIZEN}");
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    let g = post_json(
        &s.url(&format!("{base}/grants")),
        &citizen,
        None,
        &json!({"grantee": "so-gd", "purpose": "1.000001", "doc_types": ["giay-khai-sinh"], "expires_at": expires}),
    );
    assert_eq!(g.status, 201);
    // 55 reads by so-gd, each after one listing by the owner: the agency's entries are
    // interleaved with others, so a filter must search past them.
    let url = s.url(&format!("{base}/documents/{id}/content"));
    for _ in 0..55 {
        assert_eq!(call("GET", &s.url(&format!("{base}/documents")), Some(&citizen), &[], None).status, 200);
        assert_eq!(call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None).status, 200);
    }
    let mut b = Browser::new(&s.base);
    b.sign_in(CITIZEN);

    // Unfiltered: 50 a page, then the rest; the last page has no Next, a later one a First.
    let first = b.get("/page/access-log?lang=en").text();
    let (rows, next) = log_rows(&first);
    assert_eq!(rows.len(), 50, "{first}");
    assert!(!first.contains("rel=\"first\""));
    let mut total = rows.len();
    let mut next = next;
    while let Some(n) = next {
        let t = b.get(&n).text();
        assert!(t.contains("rel=\"first\""), "{t}");
        let (rows, nn) = log_rows(&t);
        assert!(!rows.is_empty() && rows.len() <= 50);
        total += rows.len();
        next = nn;
    }
    // Deposit (2), the grant, 55 listings, 55 reads, at least.
    assert!(total >= 2 + 1 + 55 + 55, "{total}");

    // By agency: only so-gd's reads, 50 then 5, the filter carried by the Next link.
    let t = b.get("/page/access-log?agency=so-gd").text();
    let (rows, next) = log_rows(&t);
    assert_eq!(rows.len(), 50, "{t}");
    assert!(rows.iter().all(|r| r == "Agency so-gd"), "{rows:?}");
    let next = next.expect("a second page");
    assert!(next.contains("agency=so-gd"), "{next}");
    let t = b.get(&next).text();
    let (rows, next) = log_rows(&t);
    assert_eq!((rows.len(), next), (5, None), "{t}");
    assert!(rows.iter().all(|r| r == "Agency so-gd") && t.contains("class=\"proof\""), "{t}");
    let t = b.get("/page/access-log?agency=ubnd-xa").text();
    let (rows, _) = log_rows(&t);
    assert!(!rows.is_empty() && rows.iter().all(|r| r == "Agency ubnd-xa"), "{rows:?}");
    assert!(t.contains("document.deposit") && !t.contains("document.content"), "{t}");
    // An agency with no entries.
    assert!(b.get("/page/access-log?agency=no-such-agency").text().contains("No entries."));

    // By period (Vietnam's days): today holds everything, tomorrow and a past day nothing.
    let day = |secs: i64| vault::Timestamp::now().plus_seconds(7 * 3600 + secs).to_string()[..10].to_owned();
    let (today, tomorrow) = (day(0), day(86_400));
    let t = b.get(&format!("/page/access-log?from={today}&to={today}&agency=so-gd")).text();
    assert_eq!(log_rows(&t).0.len(), 50, "{t}");
    assert!(b.get(&format!("/page/access-log?from={tomorrow}")).text().contains("No entries."));
    assert!(b.get("/page/access-log?to=2000-01-01").text().contains("No entries."));
    // The form keeps the filter it shows, and so does the language switch.
    assert!(t.contains(&format!("value=\"{today}\"")) && t.contains("value=\"so-gd\" selected"), "{t}");
    let switch = format!("href=\"/page/access-log?agency=so-gd&amp;from={today}&amp;to={today}&amp;lang=vi\"");
    assert!(t.contains(&switch), "{switch}: {t}");

    // Malformed filters are refused with a clear message, not ignored.
    for bad in [
        "from=2024-13-01",
        "to=yesterday",
        &format!("from={tomorrow}&to={today}"),
        "agency=Not%20An%20Agency",
        "after=-1",
    ] {
        let r = b.get(&format!("/page/access-log?{bad}"));
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.text().contains("Invalid filter"), "{bad}: {}", r.text());
    }
}
