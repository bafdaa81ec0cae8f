//! `vault-server`: the HTTP service over a vault on embedded storage.
//!
//! This first version opens (or creates) the vault and serves the service endpoints
//! `/healthz` and `/readyz`; the `/v1` contract of api.md is being built on top (issue 4).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use clap::Parser;
use vault::{MasterKey, Vault};

/// Flags as in api.md, "Starting the server".
#[derive(Debug, Parser)]
#[command(name = "vault-server", version, about = "HTTP service for the vault")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Data folder (created if missing).
    #[arg(long, global = true, env = "VAULT_DATA", default_value = "./vault-data")]
    data: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "VAULT_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// File holding the 32-byte master key in standard base64.
    #[arg(long, global = true, env = "VAULT_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Development mode: create missing keys under the data folder. For trying it out only.
    #[arg(long, global = true, env = "VAULT_DEV")]
    dev: bool,
}

/// Operator subcommands; without one, the server runs.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Verify the vault offline: records, blobs, reference counts (exit 0 clean, 1 problems).
    Check {
        /// Also decrypt every blob and verify its digest.
        #[arg(long)]
        read_data: bool,
    },
    /// Print a new random master key in the form `--master-key-file` takes.
    Keygen,
    /// Re-wrap every key under a new master key (the server must be stopped). Resumes an
    /// interrupted rotation when run again with the same two keys.
    RotateMasterKey {
        /// File holding the new master key (make one with `vault-server keygen`).
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
}

/// `vault-server check`: exit 0 when clean, 1 when problems were found, 2 when it cannot run.
fn check(args: &Args, read_data: bool) -> ExitCode {
    let result = master_key(args).and_then(|master| {
        let vault = Vault::open(&args.data, &master)
            .map_err(|e| format!("cannot open the vault in {}: {e}", args.data.display()))?;
        let report = vault.check(read_data).map_err(|e| format!("check failed: {e}"))?;
        vault.close().map_err(|e| e.to_string())?;
        Ok(report)
    });
    match result {
        Ok(report) => {
            print!("{report}");
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("vault-server check: {e}");
            ExitCode::from(2)
        }
    }
}

/// The master key from `--master-key-file`, or in `--dev` mode from (or into) the data folder.
fn master_key(args: &Args) -> Result<MasterKey, String> {
    let key_file = match (&args.master_key_file, args.dev) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            let p = dev_master_key(&args.data)?;
            eprintln!(
                "WARNING: --dev: the master key is stored in clear at {} next to the data. \
                 This is for trying vault out only; never use it for real documents.",
                p.display()
            );
            p
        }
        (None, false) => return Err("no master key: pass --master-key-file <path> (or --dev to try it out)".into()),
    };
    MasterKey::from_file(&key_file).map_err(|e| e.to_string())
}

fn dev_master_key(data: &Path) -> Result<PathBuf, String> {
    let path = data.join("dev-master.key");
    if !path.exists() {
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let key = MasterKey::generate();
        std::fs::write(&path, format!("{}\n", key.to_base64().as_str()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(path)
}

async fn run(args: Args) -> Result<(), String> {
    let master = master_key(&args)?;
    let data = args.data.clone();
    let vault = tokio::task::spawn_blocking(move || Vault::open(&data, &master))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot open the vault in {}: {e}", args.data.display()))?;
    let vault = Arc::new(vault);
    let app = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(|| async { "ready\n" }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    eprintln!("vault-server listening on http://{} (data: {})", args.listen, args.data.display());
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| e.to_string())?;
    // Last reference: closing syncs the metadata and marks the vault cleanly closed.
    if let Ok(v) = Arc::try_unwrap(vault) {
        tokio::task::spawn_blocking(move || v.close()).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Check { read_data }) => return check(&args, read_data),
        Some(Command::RotateMasterKey { ref new_master_key_file }) => {
            let result = master_key(&args).and_then(|old| {
                let new = MasterKey::from_file(new_master_key_file).map_err(|e| e.to_string())?;
                vault::rotation::rotate_master_key(&args.data, &old, &new).map_err(|e| e.to_string())
            });
            return match result {
                Ok(r) => {
                    println!(
                        "rotated: {} keys re-wrapped, {} already under the new key{}; use the new key file from now on",
                        r.rewrapped,
                        r.already_new,
                        if r.resumed { " (resumed an interrupted rotation)" } else { "" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vault-server rotate-master-key: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Keygen) => {
            println!("{}", MasterKey::generate().to_base64().as_str());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vault-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vault-server: {e}");
            ExitCode::FAILURE
        }
    }
}
