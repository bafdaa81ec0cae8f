//! The `vault` command line and client against the real server on 127.0.0.1: the demo story,
//! an interrupted bulk deposit, tampered downloads, and a rolled-back or forked audit log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::http::*;
use serde_json::Value;

fn vault_bin() -> PathBuf {
    binary().with_file_name("vault")
}

/// The CLI with a clean environment, talking to `server` with state in `state`.
struct Cli {
    server: String,
    state: PathBuf,
}

impl Cli {
    fn new(server: &str, dir: &Path) -> Self {
        Cli { server: server.to_owned(), state: dir.join("client-state.json") }
    }

    fn cmd(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut c = Command::new(vault_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("VAULT_SERVER", &self.server)
            .env("VAULT_STATE", &self.state)
            .envs(env.iter().copied())
            .args(args);
        c
    }

    fn run(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        self.cmd(env, args).output().unwrap()
    }

    /// Runs with --json and expects success.
    fn ok(&self, env: &[(&str, &str)], args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(env, &all);
        assert!(
            out.status.success(),
            "vault {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }
}

/// An agency's key file made by `vault keygen`, registered by the operator with `vault agency put`.
fn cli_agency(cli: &Cli, s: &Server, dir: &Path, id: &str) -> Vec<(String, String)> {
    let key = dir.join(format!("{id}.key"));
    let v = cli.ok(&[], &["keygen", "-o", key.to_str().unwrap()]);
    let pk = v["public_key"].as_str().unwrap().to_owned();
    let op = s.operator();
    cli.ok(
        &[("VAULT_TOKEN", &op)],
        &[
            "agency",
            "put",
            id,
            "--name",
            &format!("Agency {id}"),
            "--key",
            &format!("k1={pk}"),
            "--not-before",
            "2020-01-01T00:00:00Z",
        ],
    );
    vec![
        ("VAULT_KEY_FILE".into(), key.to_str().unwrap().to_owned()),
        ("VAULT_AGENCY".into(), id.into()),
        ("VAULT_KEY_ID".into(), "k1".into()),
    ]
}

fn env<'a>(pairs: &'a [(String, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    v.extend_from_slice(extra);
    v
}

#[test]
fn the_demo_story_through_the_cli() {
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cli = Cli::new(&s.base, w);
    let issuer = cli_agency(&cli, &s, w, "ubnd-xa-hung-dong");
    let reuser = cli_agency(&cli, &s, w, "so-tu-phap");
    let citizen = s.owner(CITIZEN);
    let as_citizen = [("VAULT_TOKEN", citizen.as_str())];

    // 1. The issuing agency deposits signed results for the citizen (a CSV manifest).
    std::fs::write(w.join("khai-sinh.pdf"), b"%PDF-1.7 giay khai sinh".repeat(3000)).unwrap();
    std::fs::write(w.join("ket-hon.pdf"), b"%PDF-1.7 giay chung nhan ket hon".repeat(100)).unwrap();
    std::fs::write(
        w.join("manifest.csv"),
        format!(
            "file,owner,doc_type,title,reference,issued_at,procedure\n\
             khai-sinh.pdf,{CITIZEN},giay-khai-sinh,Giấy khai sinh,123/2024/TLKS,2024-05-06T07:08:09Z,1.001193\n\
             ket-hon.pdf,{CITIZEN},giay-chung-nhan-ket-hon,Giấy chứng nhận kết hôn,45/2024,2024-06-01T00:00:00Z,1.000894\n"
        ),
    )
    .unwrap();
    let manifest = w.join("manifest.csv");
    let dep = env(&issuer, &[("VAULT_PURPOSE", "1.001193")]);
    let sum = cli.ok(&dep, &["deposit", "--manifest", manifest.to_str().unwrap()]);
    assert_eq!(
        (sum["files"].as_u64(), sum["uploaded_files"].as_u64(), sum["deposited"].as_u64()),
        (Some(2), Some(2), Some(2))
    );
    // Running it again uploads nothing and creates nothing.
    let again = cli.ok(&dep, &["deposit", "--manifest", manifest.to_str().unwrap()]);
    assert_eq!((again["uploaded_files"].as_u64(), again["deposited"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["held_files"].as_u64(), Some(2));
    // Even without the journal: the server's idempotent deposits.
    let j = w.join("fresh.journal");
    let third = cli.ok(&dep, &["deposit", "--journal", j.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    assert_eq!((third["uploaded_files"].as_u64(), third["deposited"].as_u64()), (Some(0), Some(0)));
    assert_eq!(third["already_deposited"].as_u64(), Some(2));
    // A folder holding the manifest is the same deposit.
    let folder = cli.ok(&dep, &["deposit", w.to_str().unwrap()]);
    assert_eq!((folder["files"].as_u64(), folder["deposited"].as_u64()), (Some(2), Some(0)));

    // 2. The citizen sees them and grants another agency access for a procedure.
    let list = cli.ok(&as_citizen, &["list", CITIZEN]);
    let docs = list["documents"].as_array().unwrap().clone();
    assert_eq!(docs.len(), 2, "{list}");
    // (The citizen's own folder of scans, without a manifest: every file in it.)
    let loose = w.join("scans");
    std::fs::create_dir(&loose).unwrap();
    std::fs::write(loose.join("a.jpg"), b"scan a").unwrap();
    std::fs::write(loose.join("b.jpg"), b"scan b").unwrap();
    let own = cli.ok(&as_citizen, &["deposit", "--owner", CITIZEN, "--doc-type", "ban-sao", loose.to_str().unwrap()]);
    assert_eq!(own["deposited"].as_u64(), Some(2));
    let o = cli.run(&as_citizen, &["deposit", loose.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no manifest"));
    assert!(docs.iter().all(|d| d["verified"] == true));
    let ks = docs.iter().find(|d| d["doc_type"] == "giay-khai-sinh").unwrap()["id"].as_str().unwrap().to_owned();
    let g = cli.ok(
        &as_citizen,
        &[
            "grant",
            CITIZEN,
            "--to",
            "so-tu-phap",
            "--for",
            "2.000305",
            "--text",
            "Đăng ký kết hôn",
            "--doc-type",
            "giay-khai-sinh",
            "--doc-type",
            "cccd",
            "--days",
            "7",
        ],
    );
    assert_eq!(g["status"], "active");

    // 3. That agency's reuse check drops the held component; it fetches and verifies it.
    let agency2 = env(&reuser, &[("VAULT_PURPOSE", "2.000305")]);
    let r = cli.ok(&agency2, &["reuse", CITIZEN, "giay-khai-sinh", "cccd", "giay-chung-nhan-ket-hon"]);
    let comps = r["components"].as_array().unwrap();
    assert_eq!(comps[0]["status"], "held");
    assert_eq!(comps[0]["document"]["id"], ks.as_str());
    assert_eq!(comps[1]["status"], "missing");
    assert_eq!(comps[2]["status"], "not_granted");
    let out = w.join("fetched.pdf");
    let v = cli.ok(&agency2, &["get", CITIZEN, &ks, "-o", out.to_str().unwrap()]);
    assert_eq!(v["issuer_verified"], true);
    assert_eq!(std::fs::read(&out).unwrap(), b"%PDF-1.7 giay khai sinh".repeat(3000));
    // Outside its grant: refused, exit code 3, nothing written.
    let other = docs.iter().find(|d| d["doc_type"] != "giay-khai-sinh").unwrap()["id"].as_str().unwrap().to_owned();
    let denied = w.join("denied.pdf");
    let o = cli.run(&agency2, &["get", CITIZEN, &other, "-o", denied.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!denied.exists());
    let grants = cli.ok(&agency2, &["grants"]);
    assert_eq!(grants["grants"][0]["uses"], 1);

    // 4. The citizen reads the access log, every entry proven, and verifies the log.
    let log = cli.ok(&as_citizen, &["log", CITIZEN]);
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["actor"] == "agency:so-tu-phap" && e["action"] == "document.content"));
    assert!(entries.iter().any(|e| e["outcome"].as_str().unwrap().starts_with("refused:")));
    let a = cli.ok(&[], &["audit", "verify"]);
    assert_eq!(a["consistent"], true);
    // Export and offline verification (with the key pinned in the state file).
    let tar = w.join("export.tar");
    cli.ok(&as_citizen, &["export", CITIZEN, "-o", tar.to_str().unwrap()]);
    let ve = cli.ok(&[], &["verify-export", tar.to_str().unwrap()]);
    assert_eq!(ve["documents"], 4);
    // The citizen withdraws consent: the very next read is refused.
    cli.ok(&as_citizen, &["revoke", CITIZEN, g["id"].as_str().unwrap()]);
    let o = cli.run(&agency2, &["reuse", CITIZEN, "giay-khai-sinh"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("grant_required"));
}

/// A corpus of `n` distinct files of 20–120 KiB and its manifest.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let mut m = String::from("file,owner,doc_type,reference\n");
    for i in 0..n {
        let size = 20_000 + (i * 7919) % 100_000;
        let mut data = vec![0u8; size];
        for (j, b) in data.iter_mut().enumerate() {
            *b = (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i as u32).to_le_bytes()[3];
        }
        data[..8].copy_from_slice(&(i as u64).to_le_bytes());
        std::fs::write(dir.join(format!("f{i}.bin")), data).unwrap();
        let owner = if i % 3 == 0 { "citizen:001099000001" } else { CITIZEN };
        m.push_str(&format!("f{i}.bin,{owner},ket-qua,{i}/2025\n"));
    }
    let p = dir.join("manifest.csv");
    std::fs::write(&p, m).unwrap();
    p
}

fn journal_lines(p: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let u = text.lines().filter(|l| l.starts_with("U ") && l.split(' ').count() == 3).count();
    let d = text.lines().filter(|l| l.starts_with("D ") && l.split(' ').count() == 4).count();
    (u, d)
}

#[test]
fn an_interrupted_bulk_deposit_completes_on_rerun_without_duplicates_or_reuploads() {
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cli = Cli::new(&s.base, w);
    let agency = cli_agency(&cli, &s, w, "so-tn-mt");
    let n = 400;
    let manifest = corpus(w, n);
    let journal = w.join("deposit.journal");
    let e = env(&agency, &[("VAULT_PURPOSE", "1.004227")]);
    let args = [
        "--json",
        "deposit",
        "--concurrency",
        "4",
        "--journal",
        journal.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ];

    // Kill the CLI (SIGKILL) once some work is acknowledged.
    let mut child = cli.cmd(&e, &args).stdout(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while journal_lines(&journal).1 < 30 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (acked_uploads, acked_deposits) = journal_lines(&journal);
    assert!(acked_deposits >= 30 && acked_deposits < n, "killed too late: {acked_deposits} of {n} deposited");

    // Re-run: completes, uploads exactly what was not acknowledged, creates the rest.
    let out = cli.run(&e, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["failed"].as_array().unwrap().len(), 0, "{sum}");
    // Nothing acknowledged to the client is uploaded again (a few more may be skipped: done on
    // the server when the kill came, before the client heard the answer).
    let uploaded = sum["uploaded_files"].as_u64().unwrap() as usize;
    assert!(uploaded <= n - acked_uploads, "{sum}");
    assert_eq!(uploaded + sum["held_files"].as_u64().unwrap() as usize, n, "{sum}");
    let created = sum["deposited"].as_u64().unwrap() as usize;
    assert!(created <= n - acked_deposits, "{sum}");
    assert_eq!(created + sum["already_deposited"].as_u64().unwrap() as usize, n, "{sum}");

    // Every file is there exactly once, with its content.
    let mut refs = std::collections::BTreeSet::new();
    for owner in [CITIZEN, "citizen:001099000001"] {
        let t = s.owner(owner);
        let docs = cli.ok(&[("VAULT_TOKEN", &t)], &["list", owner]);
        for d in docs["documents"].as_array().unwrap() {
            let r = d["reference"].as_str().unwrap().to_owned();
            let i: usize = r.split('/').next().unwrap().parse().unwrap();
            let data = std::fs::read(w.join(format!("f{i}.bin"))).unwrap();
            assert_eq!(d["digest"].as_str().unwrap(), vault::Digest::of(&data).to_string());
            assert!(refs.insert(r), "duplicate document for {d}");
        }
    }
    assert_eq!(refs.len(), n);
    // A third run does nothing at all.
    let third: Value = serde_json::from_slice(&cli.run(&e, &args).stdout).unwrap();
    assert_eq!((third["uploaded_files"].as_u64(), third["deposited"].as_u64()), (Some(0), Some(0)));
}

/// A TCP proxy that replaces `from` with `to` (same length) in what the server sends back,
/// within each read (the tampered content repeats the pattern, so some are always replaced).
fn tampering_proxy(upstream: u16, from: &'static [u8], to: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
            std::thread::spawn(move || {
                let (mut s_in, mut c_out) = (server, client);
                let mut buf = vec![0u8; 65536];
                while let Ok(k) = s_in.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    let chunk = &mut buf[..k];
                    let mut i = 0;
                    while i + from.len() <= chunk.len() {
                        if &chunk[i..i + from.len()] == from {
                            chunk[i..i + from.len()].copy_from_slice(to);
                        }
                        i += 1;
                    }
                    if c_out.write_all(chunk).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn tampered_downloads_are_reported_and_never_left_as_finished_files() {
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cli = Cli::new(&s.base, w);
    let citizen = s.owner(CITIZEN);
    let as_citizen = [("VAULT_TOKEN", citizen.as_str())];
    // An owner's own upload, 300 KiB: several 64 KiB chunks on disk.
    let data: Vec<u8> = b"ORIGINAL-BYTES-".iter().copied().cycle().take(300 * 1024).collect();
    std::fs::write(w.join("scan.bin"), &data).unwrap();
    let sum = cli.ok(
        &as_citizen,
        &["deposit", "--owner", CITIZEN, "--doc-type", "ban-sao", w.join("scan.bin").to_str().unwrap()],
    );
    assert_eq!(sum["deposited"], 1);
    let id = cli.ok(&as_citizen, &["list", CITIZEN])["documents"][0]["id"].as_str().unwrap().to_owned();
    let good = w.join("good.bin");
    cli.ok(&as_citizen, &["get", CITIZEN, &id, "-o", good.to_str().unwrap()]);
    assert_eq!(std::fs::read(&good).unwrap(), data);

    // 1. Altered in transit (a proxy changes bytes of the body): exit 5, no file, no .part.
    let port = tampering_proxy(s.port, b"ORIGINAL", b"ORIGINAX");
    let via_proxy = Cli { server: format!("http://127.0.0.1:{port}"), state: w.join("proxy-state.json") };
    let bad = w.join("bad.bin");
    let o = via_proxy.run(&as_citizen, &["get", CITIZEN, &id, "-o", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("verification failed"));
    assert!(!bad.exists());
    assert!(!vault_client_part(&bad).exists());
    // To standard output: nothing is written either.
    let o = via_proxy.run(&as_citizen, &["get", CITIZEN, &id, "-o", "-"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(o.stdout.is_empty());

    // 2. A tampered blob on the server's disk: the server breaks the transfer off; the client
    // reports it and keeps nothing.
    let blob = largest_file(&s.blob_dir());
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() * 2 / 3;
    bytes[mid] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();
    let broken = w.join("broken.bin");
    let o = cli.run(&as_citizen, &["get", CITIZEN, &id, "-o", broken.to_str().unwrap()]);
    // 5 (verification failed) when the head and the first bytes got out before the abort; on a
    // very loaded machine the abort can still win the race with the head, and the client sees a
    // connection closed before any answer (6). Either way nothing is kept.
    assert!(matches!(o.status.code(), Some(5 | 6)), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!broken.exists());
    assert!(!vault_client_part(&broken).exists());
}

fn vault_client_part(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn largest_file(dir: &Path) -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if best.as_ref().is_none_or(|(n, _)| m.len() > *n) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.unwrap().1
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.metadata().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_rolled_back_or_forked_log_is_detected() {
    if one_process_only("rolls a server's data folder back") {
        return;
    }
    let s = Server::start(&[]);
    let port = s.port;
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cli = Cli::new(&s.base, w);
    let list = |cli: &Cli, s: &Server| {
        let t = s.owner(CITIZEN);
        cli.ok(&[("VAULT_TOKEN", &t)], &["list", CITIZEN]);
    };
    list(&cli, &s);
    let first = cli.ok(&[], &["audit", "verify"]);
    assert!(first["previous_size"].is_null());

    // Snapshot the data folder (server stopped), then let the log grow and verify again.
    let dir = s.stop();
    let snapshot = w.join("snapshot");
    copy_dir(&dir.path().join("data"), &snapshot);
    let s = Server::start_at(dir, port, &[]);
    for _ in 0..5 {
        list(&cli, &s);
    }
    let grown = cli.ok(&[], &["audit", "verify"]);
    let seen = grown["size"].as_u64().unwrap();
    assert!(seen > first["size"].as_u64().unwrap());

    // Roll the server back to the snapshot: the client notices the log shrank.
    let dir = s.stop();
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    copy_dir(&snapshot, &dir.path().join("data"));
    let s = Server::start_at(dir, port, &[]);
    let o = cli.run(&[], &["audit", "verify"]);
    assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rolled back"));

    // The rolled-back server grows a different history past the size seen: a fork, which the
    // consistency proof exposes. The state keeps what was seen, so it stays detected.
    for _ in 0..12 {
        let t = s.owner("citizen:001099000002");
        cli.ok(&[("VAULT_TOKEN", &t)], &["list", "citizen:001099000002"]);
    }
    for _ in 0..2 {
        let o = cli.run(&[], &["audit", "verify"]);
        assert_eq!(o.status.code(), Some(5), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not consistent"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The citizen's verified log read fails the same way.
    let t = s.owner(CITIZEN);
    let o = cli.run(&[("VAULT_TOKEN", &t)], &["log", CITIZEN]);
    assert_eq!(o.status.code(), Some(5));
    // A client that never saw the old log trusts the new one (nothing to compare with).
    let fresh = Cli::new(&s.base, &w.join("fresh"));
    fresh.ok(&[], &["audit", "verify"]);
}

#[test]
fn the_readme_demo_script_runs_against_a_dev_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Command::new(binary())
        .args(["--dev", "--data"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while ureq::get(&format!("{base}/readyz")).timeout(Duration::from_secs(2)).call().is_err() {
        assert!(start.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo.sh");
    let out = Command::new("sh")
        .arg(script)
        .env("VAULT_DATA", dir.path().join("data"))
        .env("VAULT_SERVER", &base)
        .env("VAULT_CLI", vault_bin())
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("giay-xac-nhan-tinh-trang-hon-nhan missing"), "{text}");
    assert_eq!(text.matches("issuer signature of demo-agency verified").count(), 2, "{text}");
    assert!(text.contains("export.tar: verified"), "{text}");
}

#[test]
fn item_9_9_get_never_writes_outside_the_folder_or_over_a_file() {
    use std::os::unix::fs::symlink;
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let cli = Cli::new(&s.base, w);
    let citizen = s.owner(CITIZEN);
    let as_citizen = [("VAULT_TOKEN", citizen.as_str())];
    // The owner's own deposits, each naming its file.
    let deposit = |data: &[u8], file_name: &str| -> String {
        let digest = vault::Digest::of(data);
        let r =
            call("PUT", &s.url(&format!("/v1/owners/{CITIZEN}/contents/{digest}")), Some(&citizen), &[], Some(data));
        assert!(r.status == 201 || r.status == 200, "{}", r.status);
        let body = serde_json::json!({"digest": digest, "doc_type": "ban-sao", "title": "t", "media_type": "text/plain",
            "file_name": file_name});
        let r = post_json(&s.url(&format!("/v1/owners/{CITIZEN}/documents")), &citizen, None, &body);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let home = w.join("home");
    let outside = w.join("outside");
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(home.join(".bashrc"), "original rc").unwrap();
    std::fs::write(outside.join("target"), "untouched").unwrap();
    let get = |cli: &Cli, args: &[&str]| {
        let mut all = vec!["--json", "get", CITIZEN];
        all.extend_from_slice(args);
        cli.cmd(&as_citizen, &all).current_dir(&home).output().unwrap()
    };
    let listing = || {
        let mut names: Vec<String> =
            std::fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };

    // A server (here a proxy rewriting the records) naming files with paths: only the base
    // name, made safe, lands in the current folder.
    let a = deposit(b"content a", "XXXXXXXXXXXXX");
    let b = deposit(b"content b", "YYYYYYYYYYY");
    let bashrc = tampering_proxy(s.port, b"XXXXXXXXXXXXX", b"../../.bashrc");
    let passwd = tampering_proxy(s.port, b"YYYYYYYYYYY", b"/etc/passwd");
    for (port, id) in [(bashrc, &a), (passwd, &b)] {
        let via = Cli { server: format!("http://127.0.0.1:{port}"), state: w.join(format!("state-{port}.json")) };
        let o = get(&via, &[id.as_str()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(listing(), [".bashrc", "bashrc", "passwd"]);
    assert_eq!(std::fs::read(home.join("bashrc")).unwrap(), b"content a");
    assert_eq!(std::fs::read(home.join("passwd")).unwrap(), b"content b");
    assert_eq!(std::fs::read(home.join(".bashrc")).unwrap(), b"original rc");
    assert!(!w.join(".bashrc").exists() && !work.path().parent().unwrap().join(".bashrc").exists());

    // A hidden name loses its dot; an existing file is not replaced without --force.
    let c = deposit(b"content c", ".bashrc");
    let o = get(&cli, &[c.as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exists"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(home.join("bashrc")).unwrap(), b"content a");
    let o = get(&cli, &[c.as_str(), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(home.join("bashrc")).unwrap(), b"content c");
    assert_eq!(std::fs::read(home.join(".bashrc")).unwrap(), b"original rc");
    // -o naming an explicit existing file: also refused without --force.
    let o = get(&cli, &[a.as_str(), "-o", "passwd"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(home.join("passwd")).unwrap(), b"content b");

    // Symbolic links: never followed, neither at the name nor at its `.part`.
    symlink(outside.join("target"), home.join("evil")).unwrap();
    let d = deposit(b"content d", "evil");
    let o = get(&cli, &[d.as_str()]);
    assert_eq!(o.status.code(), Some(1));
    let o = get(&cli, &[d.as_str(), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!std::fs::symlink_metadata(home.join("evil")).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read(home.join("evil")).unwrap(), b"content d");
    symlink(outside.join("planted"), home.join("fresh.part")).unwrap();
    let e = deposit(b"content e", "fresh");
    let o = get(&cli, &[e.as_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(home.join("fresh")).unwrap(), b"content e");
    assert!(!home.join("fresh.part").exists() && std::fs::symlink_metadata(home.join("fresh.part")).is_err());
    assert!(!outside.join("planted").exists());
    assert_eq!(std::fs::read(outside.join("target")).unwrap(), b"untouched");

    // Nothing usable in the name: the document id. Into a folder given with -o: the same name.
    let f = deposit(b"content f", "..");
    assert!(get(&cli, &[f.as_str()]).status.success());
    assert_eq!(std::fs::read(home.join(&f)).unwrap(), b"content f");
    std::fs::create_dir(home.join("in")).unwrap();
    assert!(get(&cli, &[c.as_str(), "-o", "in"]).status.success());
    assert_eq!(std::fs::read(home.join("in/bashrc")).unwrap(), b"content c");
}

/// The count of answers `status` to `method route` in the server's `/metrics` (0 if none).
fn route_count(s: &Server, method: &str, route: &str, status: u16) -> u64 {
    let text = String::from_utf8(call("GET", &s.url("/metrics"), None, &[], None).body).unwrap();
    let label = format!("{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} ");
    text.lines()
        .filter(|l| l.starts_with("vault_http_route_requests_total"))
        .find_map(|l| l.split_once(&label).map(|(_, n)| n.parse().unwrap()))
        .unwrap_or(0)
}

#[test]
fn item_9_4_vault_log_pages_and_proves_in_batches() {
    if one_process_only("counts one server's requests") {
        return;
    }
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s.base, work.path());
    let citizen = s.owner(CITIZEN);
    // More than one page: 1,003 entries about the citizen.
    let grants = s.url(&format!("/v1/owners/{CITIZEN}/grants"));
    for _ in 0..1003 {
        assert_eq!(call("GET", &grants, Some(&citizen), &[], None).status, 200);
    }
    let log = cli.ok(&[("VAULT_TOKEN", &citizen)], &["log", CITIZEN]);
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1003);
    let indexes: Vec<u64> = entries.iter().map(|e| e["index"].as_u64().unwrap()).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]));
    assert!(entries.iter().all(|e| e["action"] == "grant.list" && e["actor"] == "owner"));
    assert!(entries.iter().all(|e| e["proven_in"] == log["checkpoint"]["size"]));
    // Two pages, two batches of leaves and proofs; no request per entry.
    assert_eq!(route_count(&s, "GET", "/v1/owners/{owner}/access-log", 200), 2);
    assert_eq!(route_count(&s, "POST", "/v1/owners/{owner}/access-log/proofs", 200), 2);
    assert_eq!(route_count(&s, "GET", "/v1/owners/{owner}/access-log/{index}/leaf", 200), 0);
    assert_eq!(route_count(&s, "GET", "/v1/audit/proof/inclusion", 200), 0);
}

/// A proxy on 127.0.0.1 in front of `upstream` that answers 404 to the `access-log/proofs`
/// extension, as a server implementing only api.md would; its base URL.
fn proxy_without_proofs_extension(upstream: &str) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    let upstream = upstream.to_owned();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let forward = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let upstream = upstream.clone();
                async move {
                    if uri.path().ends_with("/access-log/proofs") {
                        let body = r#"{"error":{"code":"not_found","message":"no such route"}}"#;
                        return (StatusCode::NOT_FOUND, [("content-type", "application/json".to_owned())], body.into());
                    }
                    tokio::task::spawn_blocking(move || {
                        let mut req = ureq::request(method.as_str(), &format!("{upstream}{uri}"));
                        for (k, v) in &headers {
                            if k != "host" && k != "content-length" {
                                req = req.set(k.as_str(), v.to_str().unwrap());
                            }
                        }
                        let resp = match if body.is_empty() { req.call() } else { req.send_bytes(&body) } {
                            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                            Err(e) => panic!("upstream: {e}"),
                        };
                        let status = StatusCode::from_u16(resp.status()).unwrap();
                        let ct = resp.header("content-type").unwrap_or("application/octet-stream").to_owned();
                        let mut out = Vec::new();
                        resp.into_reader().read_to_end(&mut out).unwrap();
                        (status, [("content-type", ct)], out)
                    })
                    .await
                    .unwrap()
                }
            };
            let app = axum::Router::new().fallback(forward);
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    base
}

#[test]
fn vault_log_falls_back_to_single_proofs_on_a_server_without_the_extension() {
    if one_process_only("counts one server's requests") {
        return;
    }
    let s = Server::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let proxy = proxy_without_proofs_extension(&s.base);
    let cli = Cli::new(&proxy, work.path());
    let citizen = s.owner(CITIZEN);
    let grants = s.url(&format!("/v1/owners/{CITIZEN}/grants"));
    for _ in 0..20 {
        assert_eq!(call("GET", &grants, Some(&citizen), &[], None).status, 200);
    }
    let log = cli.ok(&[("VAULT_TOKEN", &citizen)], &["log", CITIZEN]);
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    assert!(entries.iter().all(|e| e["proven_in"] == log["checkpoint"]["size"]));
    // The batch request was tried once through the proxy; every entry was then proven with
    // api.md's own endpoints, one leaf and one inclusion proof each.
    assert_eq!(route_count(&s, "POST", "/v1/owners/{owner}/access-log/proofs", 200), 0);
    assert_eq!(route_count(&s, "GET", "/v1/owners/{owner}/access-log/{index}/leaf", 200), 20);
    assert_eq!(route_count(&s, "GET", "/v1/audit/proof/inclusion", 200), 20);
}

/// The operator's `vault webhooks` commands, one per route of SPEC.md §24: subscribe, show,
/// list the parked events, redeliver one, delete; refusals keep their exit codes.
#[test]
fn the_operator_manages_webhooks_with_the_cli() {
    // Every attempt is refused (nothing listens on that port) and parked after one second.
    let dead = free_port();
    let s = Server::start(&[
        "--dev",
        "--webhook-poll-ms",
        "100",
        "--webhook-retry-base",
        "1",
        "--webhook-retry-max",
        "1",
        "--webhook-park-after",
        "1",
    ]);
    let work = tempfile::tempdir().unwrap();
    let cli = Cli::new(&s.base, work.path());
    cli_agency(&cli, &s, work.path(), "so-gd");
    let op = s.operator();
    let as_op = [("VAULT_TOKEN", op.as_str())];
    let url = format!("http://127.0.0.1:{dead}/hook");
    let put = ["webhooks", "put", "so-gd", "main", "--url", url.as_str(), "--events", "grant.created,grant.revoked"];
    let v = cli.ok(&as_op, &put);
    assert_eq!(v["events"], serde_json::json!(["grant.created", "grant.revoked"]), "{v}");
    assert!(v["public_key"].as_str().unwrap().starts_with("whpk_"), "{v}");
    // Replacing says so; a citizen is refused (3); an unknown event type is a usage error (2).
    let o = cli.run(&as_op, &put);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("replaced:"), "{}", String::from_utf8_lossy(&o.stdout));
    let citizen = s.owner(CITIZEN);
    let o = cli.run(&[("VAULT_TOKEN", citizen.as_str())], &["webhooks", "get", "so-gd", "main"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli.run(&as_op, &["webhooks", "put", "so-gd", "x", "--url", &url, "--events", "grant.deleted"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));

    // A grant to the agency: its grant.created is attempted, fails, and is parked.
    let r = post_json(
        &s.url(&format!("/v1/owners/{CITIZEN}/grants")),
        &citizen,
        None,
        &serde_json::json!({"grantee": "so-gd", "purpose": "1.000001", "doc_types": ["giay-khai-sinh"],
                "expires_at": vault::Timestamp::now().plus_seconds(3600).to_string()}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let deadline = Instant::now() + Duration::from_secs(60);
    while cli.ok(&as_op, &["webhooks", "get", "so-gd", "main"])["parked"] != 1 {
        assert!(Instant::now() < deadline, "the event was never parked");
        std::thread::sleep(Duration::from_millis(100));
    }
    let f = cli.ok(&as_op, &["webhooks", "failed", "so-gd", "main", "--limit", "10"]);
    let events = f["events"].as_array().unwrap();
    assert_eq!((events.len(), f["next"].is_null()), (1, true), "{f}");
    let id = events[0]["event"]["id"].as_str().unwrap().to_owned();
    assert_eq!(events[0]["event"]["type"], "grant.created");
    let o = cli.run(&as_op, &["webhooks", "failed", "so-gd", "main"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id), "{}", String::from_utf8_lossy(&o.stdout));
    let d = cli.ok(&as_op, &["webhooks", "redeliver", "so-gd", "main", &id]);
    assert_eq!((d["event"]["id"].as_str(), d["attempts"].as_u64()), (Some(id.as_str()), Some(0)), "{d}");
    // Redelivering an event that is not parked (any more) is not found (4).
    let other = "msg_00000000000000000000000000000000";
    let o = cli.run(&as_op, &["webhooks", "redeliver", "so-gd", "main", other]);
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli.run(&as_op, &["webhooks", "get", "so-gd", "main"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("public key: whpk_"), "{}", String::from_utf8_lossy(&o.stdout));

    cli.ok(&as_op, &["webhooks", "delete", "so-gd", "main"]);
    let o = cli.run(&as_op, &["webhooks", "get", "so-gd", "main"]);
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
}
