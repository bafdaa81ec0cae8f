//! End-to-end HTTP benchmark (issue #4): the release `vault-server` on 127.0.0.1 under a load
//! generator, beside a minimal axum "hello" server measured in the same run.
//!
//! Run: `cargo build --release -p vault-server && cargo bench --bench http`.
//! `VAULT_HTTP_ONLY` keeps the wrk workloads whose name contains it (and hello).
//! `VAULT_HTTP_SECONDS` sets each measurement's length (default 5), `VAULT_HTTP_CONNECTIONS` the
//! concurrent connections (default 64), `VAULT_HTTP_UPLOAD_MIB` the upload size (default 1024).
//! With `VAULT_HTTP_WRK=wrk` the read workloads of issue #11 are measured instead by `wrk` from a
//! second process (`benches/reads.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use vault::Digest;

const OWNER: &str = "citizen:001099012345";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn token(key: &SigningKey, kid: &str, iss: &str, sub: &str) -> String {
    let now = vault::Timestamp::now().unix();
    let input = format!(
        "{}.{}",
        B64URL.encode(json!({"alg": "EdDSA", "kid": kid}).to_string()),
        B64URL.encode(json!({"iss": iss, "sub": sub, "aud": "vault", "iat": now, "exp": now + 3600}).to_string())
    );
    format!("{input}.{}", B64URL.encode(key.sign(input.as_bytes()).to_bytes()))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured load: requests per second and latency percentiles.
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Runs `make` (building one request and checking its answer) on `conns` threads, each with its
/// own keep-alive connection, for `secs` seconds.
fn load(conns: usize, secs: u64, make: impl Fn(&ureq::Agent) -> bool + Send + Sync + 'static) -> Load {
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (make, stop) = (make.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().max_idle_connections_per_host(1).build();
                let mut lat = Vec::new();
                let mut errors = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if make(&agent) {
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    Load { rps: all.len() as f64 / elapsed, p50_ms: pct(0.5), p99_ms: pct(0.99), errors }
}

fn hello_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap();
        });
    });
    format!("http://{addr}")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and test discovery
    }
    let secs = env_num("VAULT_HTTP_SECONDS", 5);
    let conns = env_num("VAULT_HTTP_CONNECTIONS", 64) as usize;
    let upload_mib = env_num("VAULT_HTTP_UPLOAD_MIB", 1024);
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/vault-server");
    if !bin.exists() {
        eprintln!("build the server first: cargo build --release -p vault-server");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir_in(std::env::var("VAULT_BENCH_DIR").unwrap_or_else(|_| "target".into())).unwrap();
    std::fs::write(dir.path().join("master.key"), B64.encode([9u8; 32])).unwrap();
    let op = SigningKey::from_bytes(&[1; 32]);
    let idp = SigningKey::from_bytes(&[2; 32]);
    let agency_key = SigningKey::from_bytes(&[3; 32]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(&bin)
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--master-key-file")
            .arg(dir.path().join("master.key"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--operator-key", &B64.encode(op.verifying_key().to_bytes())])
            .args(["--identity-provider", &format!("idp={}", B64.encode(idp.verifying_key().to_bytes()))])
            .args(["--max-content-size", &(2u64 << 30).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let owner_t = token(&idp, "idp", "idp", OWNER);
    let op_t = token(&op, "operator", "operator", "operator");
    ureq::put(&format!("{base}/v1/agencies/bench"))
        .set("Authorization", &format!("Bearer {op_t}"))
        .send_json(json!({"name": "Bench", "keys": [{"id": "k1", "public_key": B64.encode(agency_key.verifying_key().to_bytes()), "not_before": "2020-01-01T00:00:00Z"}]}))
        .unwrap();
    let agency_t = token(&agency_key, "k1", "bench", "bench");
    // Setup: 100 documents of 10 KiB, one of 1 MiB, a grant for the agency.
    let mut small_ids = Vec::new();
    for i in 0..100u32 {
        let data = format!("{i:05}").repeat(2048).into_bytes(); // 10 KiB
        let d = Digest::of(&data);
        ureq::put(&format!("{base}/v1/owners/{OWNER}/contents/{d}"))
            .set("Authorization", &format!("Bearer {owner_t}"))
            .send_bytes(&data)
            .unwrap();
        let doc: serde_json::Value = ureq::post(&format!("{base}/v1/owners/{OWNER}/documents"))
            .set("Authorization", &format!("Bearer {owner_t}"))
            .send_json(json!({"digest": d, "doc_type": format!("type-{}", i % 10), "title": "Giấy tờ", "media_type": "application/pdf"}))
            .unwrap()
            .into_json()
            .unwrap();
        small_ids.push(doc["id"].as_str().unwrap().to_owned());
    }
    let big = vec![7u8; 1 << 20];
    let bd = Digest::of(&big);
    ureq::put(&format!("{base}/v1/owners/{OWNER}/contents/{bd}"))
        .set("Authorization", &format!("Bearer {owner_t}"))
        .send_bytes(&big)
        .unwrap();
    let big_doc: serde_json::Value = ureq::post(&format!("{base}/v1/owners/{OWNER}/documents"))
        .set("Authorization", &format!("Bearer {owner_t}"))
        .send_json(json!({"digest": bd, "doc_type": "big", "title": "Big", "media_type": "application/pdf"}))
        .unwrap()
        .into_json()
        .unwrap();
    let big_id = big_doc["id"].as_str().unwrap().to_owned();
    let expires = vault::Timestamp::now().plus_seconds(3600).to_string();
    let types: Vec<String> = (0..10).map(|i| format!("type-{i}")).chain(["big".to_owned()]).collect();
    ureq::post(&format!("{base}/v1/owners/{OWNER}/grants"))
        .set("Authorization", &format!("Bearer {owner_t}"))
        .send_json(json!({"grantee": "bench", "purpose": "1.1", "doc_types": types, "expires_at": expires}))
        .unwrap();

    let hello = hello_server();
    if let Ok(wrk) = std::env::var("VAULT_HTTP_WRK") {
        let agency = [format!("Authorization: Bearer {agency_t}"), "Vault-Purpose: 1.1".to_owned()];
        let owner = [format!("Authorization: Bearer {owner_t}")];
        let doc = format!("{base}/v1/owners/{OWNER}/documents/{}", small_ids[0]);
        let runs: Vec<(&str, String, &[String])> = vec![
            ("minimal axum hello", format!("{hello}/"), &[]),
            ("vault `/healthz`", format!("{base}/healthz"), &[]),
            ("agency reads a 10 KiB content under a grant (audited, use counted)", format!("{doc}/content"), &agency),
            ("owner reads the same content (audited)", format!("{doc}/content"), &owner),
            ("agency reads the document's record (audited)", doc.clone(), &agency),
        ];
        println!("\n== wrk -t2 -c{conns} -d{secs}s from a second process, release server on 127.0.0.1");
        println!("| workload | req/s | vs hello | p50 ms | p99 ms | non-2xx |");
        println!("|---|---|---|---|---|---|");
        let mut hello_rps = 0.0;
        // `VAULT_HTTP_ONLY=agency` (a part of a workload's name): hello and that workload only,
        // e.g. to profile the server meanwhile.
        let only = std::env::var("VAULT_HTTP_ONLY").unwrap_or_default();
        for (name, url, headers) in runs.into_iter().filter(|(n, _, _)| n.contains("hello") || n.contains(&only)) {
            let w = wrk_run(&wrk, conns, secs, &url, headers);
            if hello_rps == 0.0 {
                hello_rps = w.0;
            }
            println!("| {name} | {:.0} | {:.1}% | {:.2} | {:.2} | {} |", w.0, 100.0 * w.0 / hello_rps, w.1, w.2, w.3);
        }
        return;
    }
    let mut rows = Vec::new();
    let h = hello.clone();
    let hello_load = load(conns, secs, move |a| a.get(&h).call().is_ok());
    rows.push((
        "hello (minimal axum, same machine)",
        hello_load.rps,
        hello_load.p50_ms,
        hello_load.p99_ms,
        hello_load.errors,
    ));

    let digests: Vec<String> = (0..1000u32).map(|i| Digest::of(&i.to_le_bytes()).to_hex()).collect();
    let body = json!({"digests": digests}).to_string();
    let (b, t) = (base.clone(), owner_t.clone());
    let l = load(conns, secs, move |a| {
        a.post(&format!("{b}/v1/owners/{OWNER}/contents/missing"))
            .set("Authorization", &format!("Bearer {t}"))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .is_ok()
    });
    rows.push(("contents/missing, 1,000 digests (owner, audited)", l.rps, l.p50_ms, l.p99_ms, l.errors));

    let (b, t) = (base.clone(), agency_t.clone());
    let reuse = json!({"purpose": "1.1", "doc_types": ["type-1", "type-2", "type-3", "cccd"]}).to_string();
    let l = load(conns, secs, move |a| {
        a.post(&format!("{b}/v1/owners/{OWNER}/reuse"))
            .set("Authorization", &format!("Bearer {t}"))
            .set("Vault-Purpose", "1.1")
            .set("Content-Type", "application/json")
            .send_string(&reuse)
            .is_ok()
    });
    rows.push(("reuse check, 4 types, 101 documents (agency, audited)", l.rps, l.p50_ms, l.p99_ms, l.errors));

    let (b, t) = (base.clone(), agency_t.clone());
    let ids = Arc::new(small_ids);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l10 = load(conns, secs, move |a| {
        let id = &ids[counter.fetch_add(1, Ordering::Relaxed) % ids.len()];
        match a
            .get(&format!("{b}/v1/owners/{OWNER}/documents/{id}/content"))
            .set("Authorization", &format!("Bearer {t}"))
            .set("Vault-Purpose", "1.1")
            .call()
        {
            Ok(r) => {
                let mut v = Vec::new();
                r.into_reader().read_to_end(&mut v).is_ok() && v.len() == 10240
            }
            Err(_) => false,
        }
    });
    rows.push((
        "10 KiB content read (agency, grant use counted, audited)",
        l10.rps,
        l10.p50_ms,
        l10.p99_ms,
        l10.errors,
    ));

    let (b, t) = (base.clone(), owner_t.clone());
    let l = load(conns, secs, move |a| {
        match a
            .get(&format!("{b}/v1/owners/{OWNER}/documents/{big_id}/content"))
            .set("Authorization", &format!("Bearer {t}"))
            .call()
        {
            Ok(r) => std::io::copy(&mut r.into_reader(), &mut std::io::sink()).map(|n| n == 1 << 20).unwrap_or(false),
            Err(_) => false,
        }
    });
    rows.push(("1 MiB content read (owner, audited)", l.rps, l.p50_ms, l.p99_ms, l.errors));

    // Upload of a large content, against the library's own put of the same size in this process.
    let size = upload_mib << 20;
    let gen = |seed: &[u8]| {
        struct Gen(u64, blake3::OutputReader);
        impl Read for Gen {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(self.0 as usize);
                self.1.fill(&mut b[..n]);
                self.0 -= n as u64;
                Ok(n)
            }
        }
        Gen(size, blake3::Hasher::new().update(seed).finalize_xof())
    };
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut gen(b"upload"), &mut h).unwrap();
    let ud: Digest = h.finalize().into();
    let t0 = Instant::now();
    let r = ureq::put(&format!("{base}/v1/owners/{OWNER}/contents/{ud}"))
        .set("Authorization", &format!("Bearer {owner_t}"))
        .send(gen(b"upload"))
        .unwrap();
    let http_secs = t0.elapsed().as_secs_f64();
    assert_eq!(r.status(), 201);
    let lib = vault::Vault::open(&dir.path().join("lib"), &vault::MasterKey::from_bytes([3; 32])).unwrap();
    let t0 = Instant::now();
    lib.put_content(&vault::OwnerId::parse(OWNER).unwrap(), gen(b"library"), None).unwrap();
    let lib_secs = t0.elapsed().as_secs_f64();

    println!("\n== HTTP benchmark: {conns} connections, {secs} s each, release server on 127.0.0.1");
    println!("| workload | requests/s | vs hello | p50 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|");
    for (name, rps, p50, p99, errors) in &rows {
        println!("| {name} | {rps:.0} | {:.0}% | {p50:.1} | {p99:.1} | {errors} |", 100.0 * rps / hello_load.rps);
    }
    let (http_mbs, lib_mbs) = (size as f64 / http_secs / 1e6, size as f64 / lib_secs / 1e6);
    println!(
        "\nupload of {upload_mib} MiB: HTTP {http_mbs:.0} MB/s, library put {lib_mbs:.0} MB/s = {:.0}% (target ≥ 60%)",
        100.0 * http_mbs / lib_mbs
    );
    println!(
        "targets: audited 10 KiB reads ≥ 30% of hello at {conns} connections: {:.0}%; p99 < 50 ms: {:.1} ms",
        100.0 * l10.rps / hello_load.rps,
        l10.p99_ms
    );
}

/// One wrk run (`-t2 -c<conns> -d<secs>s --latency`): requests per second, p50 and p99 in ms,
/// and the count of non-2xx/3xx answers.
fn wrk_run(wrk: &str, conns: usize, secs: u64, url: &str, headers: &[String]) -> (f64, f64, f64, u64) {
    let mut c = Command::new(wrk);
    c.args(["-t2", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency"]);
    for h in headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()));
    let ms = |v: &str| {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => f64::NAN,
        }
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let p50 = field("50%").map(|v| ms(&v)).unwrap_or(f64::NAN);
    let p99 = field("99%").map(|v| ms(&v)).unwrap_or(f64::NAN);
    let bad = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    (rps, p50, p99, bad)
}
