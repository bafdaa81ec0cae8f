//! A throwaway PostgreSQL cluster for the tests of the PostgreSQL metadata store: one per test
//! binary, started on first use, each test in a database of its own ([`database`]).
//!
//! The cluster is made with `initdb` in a fresh folder under `/tmp` and started with `pg_ctl`
//! on a free port of 127.0.0.1 (`fsync=on`, its socket inside that folder), by a small
//! supervisor shell whose standard input is a pipe from this process: when the test binary
//! exits, however it exits (a panic, a failed assertion, SIGKILL), the pipe closes and the
//! supervisor stops the cluster (`pg_ctl stop -m immediate`) and removes its folder. As root
//! (PostgreSQL refuses to run as root) the folder is given to the user `postgres` and the
//! binaries run through `runuser -u postgres --`; `tests/pg-setup.sh` (run by `tests/all.sh`)
//! makes sure the binaries and that user exist. A [`PgDb`] drops its database when dropped
//! (also while a failing test unwinds).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The running cluster.
pub struct PgCluster {
    pub port: u16,
    pub dir: PathBuf,
    /// The supervisor; its standard input stays open for the life of this process.
    supervisor: Mutex<Child>,
}

/// One test's database; dropped (with any connection still open to it) on drop.
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _guard = DDL.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(mut c) = admin() {
            let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
/// Databases are created and dropped one at a time (both copy or remove a whole folder).
static DDL: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The folder of the PostgreSQL server binaries: `VAULT_PG_BINDIR`, `pg_config --bindir`, or
/// the newest `/usr/lib/postgresql/<version>/bin`.
pub fn bindir() -> PathBuf {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("VAULT_PG_BINDIR").map(PathBuf::from) {
        return d;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&d) {
            return d;
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| usable(d))
        .collect();
    found.sort();
    match found.pop() {
        Some((_, d)) => d,
        None => panic!("no PostgreSQL server binaries (initdb, pg_ctl): run tests/pg-setup.sh (tests/all.sh does)"),
    }
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id").args([flag, "postgres"]).output().expect("id");
    assert!(out.status.success(), "the user postgres is missing: run tests/pg-setup.sh (tests/all.sh does)");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a numeric id")
}

/// What the supervisor runs: make the cluster, start it, say "ready", wait for its standard
/// input to close, stop it and remove the folder (also after a failed start).
const SUPERVISOR: &str = r#"
set -u
run() { if [ "$AS_ROOT" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() { run "$BIN/pg_ctl" -D "$DIR/data" -m immediate -w stop >/dev/null 2>&1; rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 1' HUP INT TERM
# The throwaway cluster skips initdb's own fsyncs; the server itself runs with fsync=on.
if ! run "$BIN/initdb" -D "$DIR/data" -U vault --auth=trust -E UTF8 --locale=C --no-sync >"$DIR/initdb.log" 2>&1; then
  cat "$DIR/initdb.log" >&2; exit 1
fi
if ! run "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR -c fsync=on -c synchronous_commit=on -c max_connections=300" \
    start >/dev/null 2>&1; then
  cat "$DIR/server.log" >&2; exit 1
fi
echo ready
cat >/dev/null
"#;

fn start() -> PgCluster {
    let bin = bindir();
    let root = running_as_root();
    let mut last = String::new();
    // A free port may be taken by someone else before the server binds it: try a few.
    for _ in 0..3 {
        let dir = tempfile::Builder::new().prefix("vault-pg-").tempdir_in("/tmp").expect("temp dir").keep();
        if root {
            std::os::unix::fs::chown(&dir, Some(id_of("-u")), Some(id_of("-g"))).expect("chown to postgres");
        }
        let port = super::http::free_port();
        let mut child = Command::new("sh")
            .args(["-c", SUPERVISOR])
            .env("BIN", &bin)
            .env("DIR", &dir)
            .env("PORT", port.to_string())
            .env("AS_ROOT", if root { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        if line.trim() == "ready" {
            return PgCluster { port, dir, supervisor: Mutex::new(child) };
        }
        let mut err = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
        let _ = child.wait();
        last = err;
    }
    panic!("the throwaway PostgreSQL cluster did not start:\n{last}");
}

/// The cluster of this test binary (started at the first call).
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(start)
}

/// A connection to the cluster's `postgres` database, as its superuser `vault`.
pub fn admin() -> Result<postgres::Client, postgres::Error> {
    let port = cluster().port;
    postgres::Client::connect(&format!("host=127.0.0.1 port={port} user=vault dbname=postgres"), postgres::NoTls)
}

/// A new, empty database for one test.
pub fn database() -> PgDb {
    let port = cluster().port;
    let name = format!("vault_test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    {
        let _guard = DDL.lock().unwrap_or_else(|p| p.into_inner());
        admin()
            .expect("connect to the test cluster")
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("create database");
    }
    PgDb { url: format!("postgres://vault@127.0.0.1:{port}/{name}"), name }
}
