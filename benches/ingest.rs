//! Bulk ingest (issue #5): the same generated corpus through the library directly, through the
//! `vault deposit` command line over HTTP against the release server, and through
//! `restic backup` into a local repository; then each again with everything already held.
//!
//! Run: `benches/ingest.sh` (installs Debian's restic if missing, builds the release binaries,
//! runs this). Knobs: `VAULT_INGEST_BIG` (files in the large corpus, default 1000),
//! `VAULT_INGEST_SMALL` (default 20000), `VAULT_BENCH_DIR` (scratch folder, default a temporary
//! folder under `target/`), `VAULT_INGEST_CONCURRENCY` (the CLI's uploads in flight, default 16),
//! `VAULT_INGEST_ONLY` (a comma-separated subset of `library,cli,restic` to run; default all).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vault::{Digest, DocType, MasterKey, NewDocument, OwnerId, Vault};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// splitmix64: a fixed-seed generator for sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Corpus {
    name: &'static str,
    dir: PathBuf,
    files: Vec<(PathBuf, u64, OwnerId)>,
    bytes: u64,
}

const OWNERS: usize = 50;

fn owner(i: usize) -> OwnerId {
    OwnerId::parse(&format!("citizen:{:012}", 1_099_000_000 + (i % OWNERS))).unwrap()
}

/// Incompressible contents (BLAKE3 XOF of the seed and index), sizes from `size`.
fn generate(name: &'static str, root: &Path, n: usize, seed: u64, size: impl Fn(&mut Rng) -> u64) -> Corpus {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(seed);
    let mut files = Vec::with_capacity(n);
    let mut bytes = 0;
    let mut manifest = String::from("file,owner,doc_type,reference\n");
    for i in 0..n {
        let len = size(&mut rng);
        let path = dir.join(format!("{i:05}.bin"));
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(len) {
            let mut h = blake3::Hasher::new();
            h.update(&seed.to_le_bytes());
            h.update(&(i as u64).to_le_bytes());
            let mut data = vec![0u8; len as usize];
            h.finalize_xof().fill(&mut data);
            std::fs::write(&path, &data).unwrap();
        }
        manifest.push_str(&format!("{i:05}.bin,{},ket-qua,{name}-{i}\n", owner(i)));
        files.push((path, len, owner(i)));
        bytes += len;
    }
    std::fs::write(dir.join("manifest.csv"), manifest).unwrap();
    Corpus { name, dir, files, bytes }
}

/// The library's bulk ingest: `VAULT_INGEST_THREADS` threads (default 16), each taking batches
/// of 32 files: every file is hashed, then the batch goes through `Vault::put_documents` (held
/// contents are only deposited, idempotently; one durable wait per batch).
fn library_ingest(v: &Vault, c: &Corpus) -> f64 {
    const BATCH: usize = 32;
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..env_num("VAULT_INGEST_THREADS", 16) {
            s.spawn(|| loop {
                let first = next.fetch_add(BATCH, Ordering::Relaxed);
                if first >= c.files.len() {
                    break;
                }
                let mut items = Vec::with_capacity(BATCH);
                for (i, (path, _, owner)) in c.files.iter().enumerate().skip(first).take(BATCH) {
                    let new = NewDocument {
                        digest: vault_client::digest_file(path).unwrap(),
                        doc_type: DocType::parse("ket-qua").unwrap(),
                        title: format!("{i:05}.bin"),
                        media_type: "application/octet-stream".into(),
                        file_name: None,
                        issuer: None,
                        issued_at: None,
                        valid_from: None,
                        valid_until: None,
                        reference: Some(format!("{}-{i}", c.name)),
                        procedure: None,
                        signature: None,
                    };
                    items.push((owner.clone(), std::fs::File::open(path).unwrap(), new));
                }
                for r in v.put_documents(items).unwrap() {
                    r.unwrap();
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn release_bin(name: &str) -> PathBuf {
    let p = target_dir().join("release").join(name);
    assert!(
        p.exists(),
        "build it first: cargo build --release -p vault-server -p vault-client ({} missing)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command to completion; returns seconds and its peak resident memory (VmHWM, MiB).
fn timed(cmd: &mut Command) -> (f64, f64, String) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(l) = s.lines().find(|l| l.starts_with("VmHWM:")) {
                let kib: u64 = l.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            let secs = start.elapsed().as_secs_f64();
            let out = reader.join().unwrap();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(st.success(), "{cmd:?} failed: {err}{out}");
            return (secs, peak_kib as f64 / 1024.0, out);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Row {
    what: String,
    secs: f64,
    bytes: u64,
    files: usize,
    peak_mib: Option<f64>,
}

fn report(rows: &[Row]) {
    for r in rows {
        println!(
            "{:<44} {:>8.2} s {:>9.1} MB/s {:>8.0} files/s{}",
            r.what,
            r.secs,
            r.bytes as f64 / 1e6 / r.secs,
            r.files as f64 / r.secs,
            r.peak_mib.map(|m| format!("   peak RSS {m:.1} MiB")).unwrap_or_default()
        );
    }
}

fn run_corpus(c: &Corpus, scratch: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let files = c.files.len();
    let row = |what: String, secs: f64, peak: Option<f64>| Row { what, secs, bytes: c.bytes, files, peak_mib: peak };

    let only = std::env::var("VAULT_INGEST_ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);

    // 1. The library.
    if runs("library") {
        let vdir = scratch.join(format!("lib-{}", c.name));
        let _ = std::fs::remove_dir_all(&vdir);
        let v = Vault::open(&vdir, &MasterKey::from_bytes([9; 32])).unwrap();
        rows.push(row(format!("{}: library ingest", c.name), library_ingest(&v, c), None));
        rows.push(row(format!("{}: library ingest again (all held)", c.name), library_ingest(&v, c), None));
        v.close().unwrap();
        let _ = std::fs::remove_dir_all(&vdir);
    }

    // 2. The CLI over HTTP against the release server.
    if runs("cli") {
        let sdir = scratch.join(format!("server-{}", c.name));
        let _ = std::fs::remove_dir_all(&sdir);
        let port = free_port();
        let server = Server(
            Command::new(release_bin("vault-server"))
                .args(["--dev", "--data"])
                .arg(&sdir)
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        while ureq::get(&format!("{base}/readyz")).call().is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let concurrency = env_num("VAULT_INGEST_CONCURRENCY", 16).to_string();
        let journal = scratch.join(format!("journal-{}", c.name));
        let _ = std::fs::remove_file(&journal);
        let cli = || {
            let mut cmd = Command::new(release_bin("vault"));
            cmd.env_clear()
                .env("VAULT_SERVER", &base)
                .env("VAULT_STATE", scratch.join("client-state.json"))
                .env("VAULT_KEY_FILE", sdir.join("dev-agency.key"))
                .env("VAULT_AGENCY", "demo-agency")
                .env("VAULT_KEY_ID", "k1")
                .env("VAULT_PURPOSE", "bench")
                .args(["--json", "deposit", "--concurrency", &concurrency, "--journal"])
                .arg(&journal)
                .arg("--manifest")
                .arg(c.dir.join("manifest.csv"));
            cmd
        };
        let (secs, peak, out) = timed(&mut cli());
        let sum: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(sum["deposited"].as_u64(), Some(files as u64), "{sum}");
        rows.push(row(format!("{}: vault deposit over HTTP", c.name), secs, Some(peak)));
        let (secs, peak, out) = timed(&mut cli());
        let sum: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(sum["uploaded_files"].as_u64(), Some(0), "{sum}");
        rows.push(row(format!("{}: vault deposit again (all held)", c.name), secs, Some(peak)));
        drop(server);
        let _ = std::fs::remove_dir_all(&sdir);
    }

    // 3. restic.
    let restic_here = Command::new("restic").arg("version").output().is_ok();
    if runs("restic") && restic_here {
        let repo = scratch.join(format!("restic-{}", c.name));
        let _ = std::fs::remove_dir_all(&repo);
        let restic = || {
            let mut cmd = Command::new("restic");
            cmd.env("RESTIC_PASSWORD", "bench")
                .env("RESTIC_CACHE_DIR", scratch.join("restic-cache"))
                .arg("-r")
                .arg(&repo);
            cmd
        };
        timed(restic().args(["init", "-q"]));
        let (secs, peak, _) = timed(restic().args(["backup", "-q"]).arg(&c.dir));
        rows.push(row(format!("{}: restic backup", c.name), secs, Some(peak)));
        let (secs, peak, _) = timed(restic().args(["backup", "-q", "--force"]).arg(&c.dir));
        rows.push(row(format!("{}: restic backup --force", c.name), secs, Some(peak)));
        let _ = std::fs::remove_dir_all(&repo);
    } else if runs("restic") {
        println!("restic is not installed: run benches/ingest.sh (apt-get install restic) for the comparison");
    }
    rows
}

fn ratio(rows: &[Row], a: &str, b: &str) -> Option<f64> {
    let find = |s: &str| rows.iter().find(|r| r.what.ends_with(s)).map(|r| r.secs);
    Some(find(b)? / find(a)?)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root =
        std::env::var_os("VAULT_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| target_dir().join("bench-ingest"));
    std::fs::create_dir_all(&root).unwrap();
    let big_n = env_num("VAULT_INGEST_BIG", 1000) as usize;
    let small_n = env_num("VAULT_INGEST_SMALL", 20_000) as usize;
    let (lo, hi) = ((20u64 << 10) as f64, (8u64 << 20) as f64);
    let big = generate("big", &root, big_n, 1, |r| (lo * (hi / lo).powf(r.unit())) as u64);
    let small = generate("small", &root, small_n, 2, |r| 2048 + r.next() % (18 * 1024 + 1));
    // Raw speed of the primitives on this machine, in the same run.
    let buf = vec![7u8; 64 << 20];
    let t = Instant::now();
    std::hint::black_box(Digest::of(&buf));
    let blake3_mbs = buf.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!("BLAKE3 on this machine: {blake3_mbs:.0} MB/s");
    // Flush the freshly written corpus now, so no measured sync pays for it.
    let _ = Command::new("sync").status();
    for c in [&big, &small] {
        if c.files.is_empty() {
            continue;
        }
        println!("\n{}: {} files, {:.1} MB", c.name, c.files.len(), c.bytes as f64 / 1e6);
        let rows = run_corpus(c, &root);
        report(&rows);
        let show = |label: &str, r: Option<f64>, target: f64| {
            if let Some(r) = r {
                println!("  {label}: {r:.2}× (target ≥ {target}×){}", if r >= target { "" } else { "  NOT MET" });
            }
        };
        show("library ingest vs restic backup", ratio(&rows, "library ingest", "restic backup"), 1.5);
        show("vault deposit over HTTP vs restic backup", ratio(&rows, "vault deposit over HTTP", "restic backup"), 1.0);
        show(
            "vault deposit again vs restic backup --force",
            ratio(&rows, "vault deposit again (all held)", "restic backup --force"),
            1.0,
        );
    }
}
