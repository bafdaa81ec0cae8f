//! The citizen's page in headless Chromium (Debian's `chromium` and `chromium-driver`, installed
//! by tests/browser-setup.sh), driven over W3C WebDriver from Rust with the blocking HTTP client
//! the other end-to-end tests use. Skips, saying why, when chromedriver is missing.
//! Screenshots at phone and desktop width go to `target/page-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use common::http::*;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ =
            ureq::delete(&format!("{}/session/{}", self.base, self.session)).timeout(Duration::from_secs(10)).call();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wd(method: &str, url: &str, body: Option<Value>) -> Value {
    let req = ureq::request(method, url).timeout(Duration::from_secs(60));
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => panic!("{method} {url}: {code} {}", r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    resp.into_json::<Value>().unwrap()["value"].clone()
}

impl Driver {
    fn start() -> Option<Driver> {
        let exe = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let port = free_port();
        let child =
            Command::new(exe).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if ureq::get(&format!("{base}/status")).timeout(Duration::from_secs(2)).call().is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US"]}
        }}});
        let v = wd("POST", &format!("{base}/session"), Some(caps));
        let session = v["sessionId"].as_str().unwrap().to_owned();
        Some(Driver { child, base, session })
    }

    fn url(&self, p: &str) -> String {
        format!("{}/session/{}{p}", self.base, self.session)
    }

    fn go(&self, to: &str) {
        wd("POST", &self.url("/url"), Some(json!({"url": to})));
    }

    fn current(&self) -> String {
        wd("GET", &self.url("/url"), None).as_str().unwrap().to_owned()
    }

    fn source(&self) -> String {
        wd("GET", &self.url("/source"), None).as_str().unwrap().to_owned()
    }

    fn find(&self, xpath: &str) -> String {
        let v = wd("POST", &self.url("/element"), Some(json!({"using": "xpath", "value": xpath})));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("{xpath}: {v}")).to_owned()
    }

    /// A button by its accessible (visible) name.
    fn button(&self, name: &str) -> String {
        self.find(&format!("//button[normalize-space()='{name}']"))
    }

    /// A form field by the text of its label.
    fn field(&self, label: &str) -> String {
        self.find(&format!("//*[@id=//label[normalize-space()='{label}']/@for]"))
    }

    fn click(&self, el: &str) {
        wd("POST", &self.url(&format!("/element/{el}/click")), Some(json!({})));
    }

    fn type_into(&self, el: &str, text: &str) {
        wd("POST", &self.url(&format!("/element/{el}/value")), Some(json!({"text": text})));
    }

    fn active(&self) -> String {
        wd("GET", &self.url("/element/active"), None)[ELEMENT].as_str().unwrap().to_owned()
    }

    fn attr(&self, el: &str, name: &str) -> String {
        wd("GET", &self.url(&format!("/element/{el}/attribute/{name}")), None).as_str().unwrap_or("").to_owned()
    }

    fn text(&self, el: &str) -> String {
        wd("GET", &self.url(&format!("/element/{el}/text")), None).as_str().unwrap_or("").to_owned()
    }

    /// Presses keys on whatever has focus (the keyboard only: no clicks).
    fn keys(&self, text: &str) {
        let mut actions = Vec::new();
        for c in text.chars() {
            actions.push(json!({"type": "keyDown", "value": c.to_string()}));
            actions.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        wd("POST", &self.url("/actions"), Some(json!({"actions": [{"type": "key", "id": "kb", "actions": actions}]})));
    }

    /// Tabs until the focused element satisfies `want` (at most 60 presses).
    fn tab_to(&self, what: &str, want: impl Fn(&Driver, &str) -> bool) {
        for _ in 0..60 {
            if want(self, &self.active()) {
                return;
            }
            self.keys(TAB);
        }
        panic!("Tab never reached {what}");
    }

    fn wait_for(&self, what: &str, cond: impl Fn(&Driver) -> bool) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; at {}", self.current());
    }

    fn screenshot(&self, name: &str, width: u32, height: u32) {
        wd("POST", &self.url("/window/rect"), Some(json!({"width": width, "height": height})));
        let png = B64.decode(wd("GET", &self.url("/screenshot"), None).as_str().unwrap()).unwrap();
        let dir = binary().parent().unwrap().parent().unwrap().join("page-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
    }

    fn screenshots(&self, name: &str) {
        self.screenshot(name, 390, 844);
        self.screenshot(name, 1280, 900);
    }

    /// Console messages at level SEVERE (errors, CSP violations) since the last call.
    fn console_errors(&self) -> Vec<String> {
        let v = wd("POST", &self.url("/se/log"), Some(json!({"type": "browser"})));
        v.as_array()
            .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").map(|e| e["message"].to_string()).collect())
            .unwrap_or_default()
    }
}

#[test]
fn a_citizen_signs_in_shares_by_keyboard_sees_the_read_revokes_switches_language_exports_and_erases() {
    let Some(d) = Driver::start() else {
        println!(
            "SKIPPED: chromedriver not found (run tests/browser-setup.sh to install chromium and chromium-driver)"
        );
        return;
    };
    let s = Server::start(&["--dev"]);
    let (iss_key, iss) = register_agency(&s, "ubnd-xa", 21);
    let (_, reader) = register_agency(&s, "so-gd", 22);
    let data = b"%PDF-1.4 khai sinh".to_vec();
    let digest = vault::Digest::of(&data);
    let base = format!("/v1/owners/{CITIZEN}");
    assert_eq!(call("PUT", &s.url(&format!("{base}/contents/{digest}")), Some(&iss), &[], Some(&data)).status, 201);
    let r = post_json(
        &s.url(&format!("{base}/documents")),
        &iss,
        None,
        &signed_deposit(CITIZEN, &data, "ubnd-xa", &iss_key),
    );
    let id = r.json()["id"].as_str().unwrap().to_owned();

    // Sign in through the --dev provider, in English.
    d.go(&s.url("/page?lang=en"));
    d.screenshots("welcome");
    d.click(&d.button("Sign in"));
    d.wait_for("the provider's form", |d| d.current().contains("/dev-idp/authorize"));
    d.type_into(&d.field("Citizen or organisation ID"), CITIZEN);
    d.click(&d.button("Sign in"));
    d.wait_for("my documents", |d| d.current().ends_with("/page/documents"));
    let src = d.source();
    assert!(src.contains("Giấy khai sinh") && src.contains("Signed by Agency ubnd-xa, verified"), "{src}");
    d.screenshots("documents");

    // Share, keyboard only: Tab to each field, type, Enter; then Tab to Confirm and Enter.
    d.go(&s.url("/page/sharing"));
    let expires = vault::Timestamp::now().plus_seconds(30 * 86_400).to_string();
    let (y, m, day) = (&expires[0..4], &expires[5..7], &expires[8..10]);
    let is = |id: &'static str| move |d: &Driver, el: &str| d.attr(el, "id") == id;
    d.tab_to("Agency", is("grantee"));
    d.keys("Agency s");
    d.keys(TAB);
    d.tab_to("Procedure code", is("purpose"));
    d.keys("1.000001");
    d.keys(TAB);
    d.keys("Tuyen sinh");
    d.tab_to("Document types", is("doc_types"));
    d.keys("giay-khai-sinh");
    d.tab_to("Expires on", is("expires"));
    d.keys(&format!("{m}{day}{y}"));
    d.tab_to("Maximum uses", is("max_uses"));
    d.keys("3");
    d.screenshots("sharing");
    d.keys(ENTER);
    d.wait_for("the review", |d| d.current().ends_with("/page/sharing/review"));
    let src = d.source();
    assert!(src.contains("Agency so-gd") && src.contains("1.000001") && src.contains("Giấy khai sinh"), "{src}");
    d.screenshots("review");
    d.tab_to("Confirm", |d, el| d.text(el) == "Confirm");
    d.keys(ENTER);
    d.wait_for("the grant list", |d| d.current().ends_with("/page/sharing") && d.source().contains("Active"));

    // The agency reads over the API; the read shows in the access log, proven.
    let url = s.url(&format!("{base}/documents/{id}/content"));
    assert_eq!(call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None).status, 200);
    d.go(&s.url("/page/access-log"));
    let src = d.source();
    assert!(
        src.contains("Agency so-gd") && src.contains("document.content") && src.contains("class=\"proof\""),
        "{src}"
    );
    d.screenshots("access-log");
    // Filter by agency: the issuer's deposit and the owner's own entries go, so-gd's read stays.
    assert!(src.contains("document.deposit"));
    d.click(&d.find("//select[@id='agency']/option[@value='so-gd']"));
    d.click(&d.button("Filter"));
    d.wait_for("the filtered log", |d| d.current().contains("agency=so-gd"));
    let src = d.source();
    assert!(src.contains("document.content") && !src.contains("document.deposit"), "{src}");
    assert!(src.contains("class=\"proof\""), "{src}");

    // Revoke; the agency is refused, and the refusal stands out in the log.
    d.go(&s.url("/page/sharing"));
    d.click(&d.button("Revoke"));
    d.wait_for("the revoked grant", |d| d.source().contains("Revoked"));
    assert_eq!(call("GET", &url, Some(&reader), &[("Vault-Purpose", "1.000001")], None).status, 403);
    d.go(&s.url("/page/access-log"));
    assert!(d.source().contains("class=\"refused\""));

    // Switch language.
    d.click(&d.find("//a[@hreflang='vi']"));
    d.wait_for("Vietnamese", |d| d.source().contains("lang=\"vi\""));
    assert!(d.source().contains("Nhật ký truy cập"));
    d.screenshots("access-log-vi");

    // Export (a download: the page stays), then erase with the typed word.
    d.go(&s.url("/page/account?lang=en"));
    d.click(&d.button("Export my data"));
    d.type_into(&d.field("Type this word to confirm: ERASE"), "ERASE");
    d.click(&d.button("Erase my vault"));
    d.wait_for("the erasure receipt", |d| d.source().contains("Your vault is erased."));
    d.screenshots("erased");
    let errors = d.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// Interoperability: signing in through an OpenID provider we did not write (the npm package
/// `oidc-provider`, its development login and consent pages), RS256 ID tokens under its own keys.
#[test]
fn signing_in_through_an_independent_openid_provider() {
    let root = binary().parent().unwrap().parent().unwrap().join("oidc-interop");
    if !root.join("node_modules/oidc-provider").is_dir() || Command::new("node").arg("--version").output().is_err() {
        println!("SKIPPED: node or the npm package oidc-provider is missing (run tests/browser-setup.sh)");
        return;
    }
    let Some(d) = Driver::start() else {
        println!(
            "SKIPPED: chromedriver not found (run tests/browser-setup.sh to install chromium and chromium-driver)"
        );
        return;
    };
    let script = root.join("provider.mjs");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc-interop/provider.mjs"), &script).unwrap();
    let (idp_port, port) = (free_port(), free_port());
    let redirect = format!("http://127.0.0.1:{port}/page/callback");
    let mut idp = Command::new("node")
        .arg(&script)
        .args([&idp_port.to_string(), "vault-page", "interop-secret", &redirect])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open until the end: the provider must not see its stdout closed.
    let mut out = std::io::BufReader::new(idp.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "interop-secret\n").unwrap();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    // The provider signs with its own keys as shipped: no Ed25519 key among them, so the sign-in
    // below verifies an RS256 ID token (its default algorithm).
    let conf: Value =
        ureq::get(&format!("{issuer}/.well-known/openid-configuration")).call().unwrap().into_json().unwrap();
    let keys: Value = ureq::get(conf["jwks_uri"].as_str().unwrap()).call().unwrap().into_json().unwrap();
    let ktys: Vec<&str> = keys["keys"].as_array().unwrap().iter().map(|k| k["kty"].as_str().unwrap()).collect();
    assert!(ktys.contains(&"RSA") && !ktys.contains(&"OKP"), "{keys}");
    let s =
        Server::start_at(dir, port, &["--oidc-issuer", &issuer, "--oidc-client-secret-file", secret.to_str().unwrap()]);
    d.go(&s.url("/page?lang=en"));
    d.click(&d.button("Sign in"));
    d.wait_for("the provider's login", |d| d.current().starts_with(&issuer));
    d.type_into(&d.find("//input[@name='login']"), CITIZEN);
    d.type_into(&d.find("//input[@name='password']"), "anything");
    d.click(&d.find("//button[@type='submit']"));
    d.wait_for("the consent", |d| d.source().contains("Continue") || d.current().contains("/page/"));
    if !d.current().contains("/page/") {
        d.click(&d.find("//button[@type='submit']"));
    }
    d.wait_for("my documents", |d| d.current().ends_with("/page/documents"));
    let src = d.source();
    assert!(src.contains(CITIZEN) && src.contains(">Sign out<"), "{src}");
    let _ = idp.kill();
    let _ = idp.wait();
    drop(out);
}
