//! An HTTP test harness: the real server binary on 127.0.0.1, tokens minted independently.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use vault::engine::provenance::{sign_statement, statement};
use vault::{AgencyId, Digest, DocType, KeyId, NewDocument, OwnerId, Purpose, Timestamp};

pub const CITIZEN: &str = "citizen:001099012345";

pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    pub op: SigningKey,
    pub idp: SigningKey,
    pub port: u16,
    /// With `VAULT_TEST_BLOBS=s3`: the S3 server holding this server's blobs.
    pub s3: Option<super::s3::S3Server>,
    /// With `VAULT_TEST_INSTANCES=2`: the second instance (same PostgreSQL database and S3
    /// bucket), and the database's URL; [`Server::url`] alternates between the two.
    pub pair: Option<Box<(Server, String)>>,
    turn: std::sync::atomic::AtomicUsize,
}

/// Whether the servers of these tests keep their blobs in S3 (`VAULT_TEST_BLOBS=s3`: tests/all.sh
/// runs the HTTP suites a second time so).
pub fn blobs_in_s3() -> bool {
    std::env::var("VAULT_TEST_BLOBS").is_ok_and(|v| v == "s3")
}

/// True, after saying so, when the calling test checks what one process does by itself
/// (its logs, its counters and limits, its data folder, its restarts) and so does not run with
/// two instances (`VAULT_TEST_INSTANCES=2`).
pub fn one_process_only(what: &str) -> bool {
    if two_instances() {
        eprintln!("skipped with two instances: {what}");
    }
    two_instances()
}

/// Whether every server of these tests is two instances on one PostgreSQL database and one S3
/// bucket, requests alternating between them (`VAULT_TEST_INSTANCES=2`: tests/all.sh runs the
/// HTTP suites a third time so; SPEC.md §9a "Several instances").
pub fn two_instances() -> bool {
    std::env::var("VAULT_TEST_INSTANCES").is_ok_and(|v| v == "2")
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn binary() -> std::path::PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/vault-server
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("vault-server")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until no session holds an advisory lock in the database of `url` (a killed server's
/// connections are closed by the kernel; PostgreSQL lets go of their locks once it sees that).
pub fn wait_unlocked(url: &str) {
    let name = url.rsplit('/').next().unwrap_or("").to_owned();
    let mut admin = super::pg::admin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
                 WHERE l.locktype = 'advisory' AND d.datname = $1",
                &[&name],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "a killed server's lock was never released");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn now() -> i64 {
    Timestamp::now().unix()
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_in(tempfile::tempdir().unwrap(), extra)
    }

    /// Starts the server on the data folder in `dir` (which may hold an earlier run's data).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Self::start_at(dir, free_port(), extra)
    }

    /// Stops the server (SIGKILL) and hands back its folder.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Stops the server (SIGKILL) and runs `vault-server check --read-data` over its stores
    /// (its data folder, and its S3 server when its blobs are there).
    pub fn stop_and_check(mut self) -> std::process::Output {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut cmd = Command::new(binary());
        cmd.args(["check", "--read-data", "--data"])
            .arg(self.dir.path().join("data"))
            .arg("--master-key-file")
            .arg(self.dir.path().join("master.key"));
        if let Some(s3) = &self.s3 {
            cmd.args(["--blobs", "s3://vault-test/blobs"]).envs(s3.env());
        }
        if let Some(pair) = self.pair.take() {
            let (second, url) = *pair;
            drop(second);
            wait_unlocked(&url);
            cmd.args(["--metadata", &url]);
        }
        cmd.output().unwrap()
    }

    /// [`Server::start_in`] on a given port (a restart that clients see as the same server).
    pub fn start_at(dir: tempfile::TempDir, port: u16, extra: &[&str]) -> Server {
        Self::start_env(dir, port, extra, &[])
    }

    /// [`Server::start_at`] with extra environment variables for the server process.
    pub fn start_env(dir: tempfile::TempDir, port: u16, extra: &[&str], env: &[(&str, &std::path::Path)]) -> Server {
        Self::start_full(dir, port, extra, env, blobs_in_s3())
    }

    /// [`Server::start_in`] with the blobs in S3 whatever `VAULT_TEST_BLOBS` says.
    pub fn start_s3(dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Self::start_full(dir, free_port(), extra, &[], true)
    }

    /// Another instance of the vault `first` serves (same keys), in a folder of its own, on
    /// the metadata `extra` names (`--metadata postgres://...`, the same as `first`'s) and, when
    /// `first` keeps its blobs in S3, on the same bucket and prefix.
    pub fn start_beside(first: &Server, extra: &[&str]) -> Server {
        Self::start_one(tempfile::tempdir().unwrap(), free_port(), extra, &[], false, first.s3.as_ref())
    }

    /// One server, or two instances with `VAULT_TEST_INSTANCES=2` unless `extra` names the
    /// metadata itself.
    fn start_full(
        dir: tempfile::TempDir,
        port: u16,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
        in_s3: bool,
    ) -> Server {
        if two_instances() && !extra.contains(&"--metadata") {
            return Self::start_pair(dir, port, extra, env);
        }
        Self::start_one(dir, port, extra, env, in_s3, None)
    }

    /// Two instances on one new PostgreSQL database (kept with the folder, for a restart in
    /// it) and the first one's S3 bucket.
    fn start_pair(dir: tempfile::TempDir, port: u16, extra: &[&str], env: &[(&str, &std::path::Path)]) -> Server {
        let url_file = dir.path().join("pair-metadata-url");
        let url = match std::fs::read_to_string(&url_file) {
            Ok(url) => url,
            Err(_) => {
                // Kept until the test binary ends (its cluster goes then), so a restart finds it.
                let db = std::mem::ManuallyDrop::new(super::pg::database());
                std::fs::write(&url_file, &db.url).unwrap();
                db.url.clone()
            }
        };
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--metadata", url.as_str()]);
        let mut first = Self::start_one(dir, port, &args, env, true, None);
        let second = Self::start_one(tempfile::tempdir().unwrap(), free_port(), &args, env, false, first.s3.as_ref());
        first.pair = Some(Box::new((second, url)));
        first
    }

    fn start_one(
        dir: tempfile::TempDir,
        port: u16,
        extra: &[&str],
        env: &[(&str, &std::path::Path)],
        in_s3: bool,
        shared_s3: Option<&super::s3::S3Server>,
    ) -> Server {
        let key = dir.path().join("master.key");
        std::fs::write(&key, format!("{}\n", B64.encode([5u8; 32]))).unwrap();
        let op = SigningKey::from_bytes(&[11; 32]);
        let idp = SigningKey::from_bytes(&[12; 32]);
        // The S3 server's folder is in the test's folder, so a restart finds its objects.
        let s3 = in_s3.then(|| super::s3::S3Server::start_in(&dir.path().join("s3"), "vault-test"));
        let mut cmd = Command::new(binary());
        if let Some(s3) = s3.as_ref().or(shared_s3) {
            cmd.args(["--blobs", "s3://vault-test/blobs"]).envs(s3.env());
        }
        let child = cmd
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--master-key-file")
            .arg(&key)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--operator-key", &B64.encode(op.verifying_key().to_bytes())])
            .args(["--identity-provider", &format!("vneid={}", B64.encode(idp.verifying_key().to_bytes()))])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            op,
            idp,
            port,
            s3,
            pair: None,
            turn: Default::default(),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if ureq::get(&format!("{}/readyz", s.base)).timeout(Duration::from_secs(2)).call().is_ok() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server did not become ready");
    }

    /// Where this server's blobs are on disk: its data folder's `blobs/`, or, with its blobs in
    /// S3, the folder where the S3 server keeps the bucket's `blobs/` prefix.
    pub fn blob_dir(&self) -> std::path::PathBuf {
        match &self.s3 {
            None => self.dir.path().join("data/blobs"),
            Some(_) => self.dir.path().join("s3/vault-test/blobs"),
        }
    }

    /// The URL of `path` at every instance (one, or two with `VAULT_TEST_INSTANCES=2`): for
    /// what each process keeps apart, such as `/metrics`.
    pub fn each_url(&self, path: &str) -> Vec<String> {
        let mut out = vec![format!("{}{path}", self.base)];
        out.extend(self.pair.iter().map(|p| format!("{}{path}", p.0.base)));
        out
    }

    /// `/metrics` of every instance, one after the other.
    pub fn metrics(&self) -> String {
        self.each_url("/metrics")
            .iter()
            .map(|u| String::from_utf8(call("GET", u, None, &[], None).body).unwrap())
            .collect()
    }

    /// The URL of `path` at this server; with two instances, at each in turn.
    pub fn url(&self, path: &str) -> String {
        match &self.pair {
            Some(pair) if self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2 == 1 => {
                format!("{}{path}", pair.0.base)
            }
            _ => format!("{}{path}", self.base),
        }
    }

    pub fn operator(&self) -> String {
        token(&self.op, "operator", "operator", "operator", json!("vault"), now(), now() + 600)
    }

    pub fn owner(&self, owner: &str) -> String {
        token(&self.idp, "vneid", "vneid", owner, json!("vault"), now(), now() + 600)
    }
}

/// Mints a compact JWS, independently of the server's own code.
pub fn token(key: &SigningKey, kid: &str, iss: &str, sub: &str, aud: Value, iat: i64, exp: i64) -> String {
    raw_token(
        &json!({"alg": "EdDSA", "kid": kid}),
        &json!({"iss": iss, "sub": sub, "aud": aud, "iat": iat, "exp": exp}),
        key,
    )
}

pub fn raw_token(header: &Value, claims: &Value, key: &SigningKey) -> String {
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    format!("{input}.{}", B64URL.encode(key.sign(input.as_bytes()).to_bytes()))
}

pub struct Resp {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn call(method: &str, url: &str, token: Option<&str>, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    try_call(method, url, token, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`call`], with a transport failure (a refused or reset connection: a killed server) as an
/// error rather than a panic; a body cut short is one too.
pub fn try_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let result = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let headers = resp.headers_names().iter().map(|n| (n.clone(), resp.header(n).unwrap_or("").to_owned())).collect();
    let mut body = Vec::new();
    resp.into_reader().read_to_end(&mut body).map_err(|e| e.to_string())?;
    Ok(Resp { status, body, headers })
}

pub fn post_json(url: &str, token: &str, purpose: Option<&str>, v: &Value) -> Resp {
    let mut h = vec![("Content-Type", "application/json")];
    if let Some(p) = purpose {
        h.push(("Vault-Purpose", p));
    }
    call("POST", url, Some(token), &h, Some(v.to_string().as_bytes()))
}

/// Registers `agency` with one key (`k1`) and returns its signing key and a token for it.
pub fn register_agency(s: &Server, agency: &str, seed: u8) -> (SigningKey, String) {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let body = json!({"name": format!("Agency {agency}"), "keys": [{"id": "k1", "public_key": B64.encode(sk.verifying_key().to_bytes()), "not_before": "2020-01-01T00:00:00Z", "not_after": null}]});
    let r = call(
        "PUT",
        &s.url(&format!("/v1/agencies/{agency}")),
        Some(&s.operator()),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    );
    assert!(r.status == 201 || r.status == 200, "{}", String::from_utf8_lossy(&r.body));
    let t = token(&sk, "k1", agency, agency, json!(["other", "vault"]), now(), now() + 600);
    (sk, t)
}

pub fn signed_deposit(owner: &str, data: &[u8], issuer: &str, sk: &SigningKey) -> Value {
    let d = NewDocument {
        digest: Digest::of(data),
        doc_type: DocType::parse("giay-khai-sinh").unwrap(),
        title: "Giấy khai sinh".into(),
        media_type: "application/pdf".into(),
        file_name: Some("khai-sinh.pdf".into()),
        issuer: Some(AgencyId::parse(issuer).unwrap()),
        issued_at: Some(Timestamp::parse("2024-05-06T07:08:09Z").unwrap()),
        valid_from: None,
        valid_until: None,
        reference: Some("123/2024/TLKS".into()),
        procedure: Some(Purpose::parse("1.001193").unwrap()),
        signature: None,
    };
    let st = statement(&OwnerId::parse(owner).unwrap(), data.len() as u64, &d);
    let sig = sign_statement(sk, &KeyId::parse("k1").unwrap(), &st);
    let mut v = serde_json::to_value(&d).unwrap();
    v["signature"] = json!({"key_id": "k1", "value": sig.value});
    v
}
