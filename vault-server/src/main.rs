//! `vault-server`: the HTTP service over a vault on embedded storage (api.md), and the
//! operator subcommands `check`, `keygen` and `rotate-master-key`.

mod config;
mod dev;

use axum::serve::ListenerExt;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use vault::engine::provenance::PublicKey;
use vault::{MasterKey, Vault};
use vault_server::http::{self, auth};

use crate::config::{apply_config, Args, Command};
use crate::dev::{dev_announce, dev_keys, dev_seed};

/// The master key from `--master-key-file`, or in `--dev` mode from (or into) the data folder.
fn master_key(args: &Args) -> Result<MasterKey, String> {
    let key_file = match (&args.master_key_file, args.dev) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            dev_seed(&args.data, "dev-master.key")?;
            let p = args.data.join("dev-master.key");
            eprintln!(
                "WARNING: --dev: the master key is stored in clear at {} next to the data. \
                 This is for trying vault out only; never use it for real documents.",
                p.display()
            );
            p
        }
        (None, false) => return Err("no master key: pass --master-key-file <path> (or --dev to try it out)".into()),
    };
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(&key_file) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 && !args.dev {
            eprintln!("WARNING: the master key file {} can be read by other users; chmod 600 it", key_file.display());
        }
    }
    MasterKey::from_file(&key_file).map_err(|e| e.to_string())
}

fn verifying_key(text: &str, what: &str) -> Result<VerifyingKey, String> {
    let pk = PublicKey::parse(text.trim()).map_err(|e| format!("{what}: {e}"))?;
    VerifyingKey::from_bytes(pk.as_bytes()).map_err(|_| format!("{what}: not an Ed25519 key"))
}

/// The citizen's page (SPEC.md §22) with its OpenID relying party, and under `--dev` without
/// `--oidc-issuer` the built-in development provider; empty when neither is configured.
fn page_router(args: &Args, state: &Arc<http::AppState>) -> Result<axum::Router, String> {
    use vault_server::page;
    let public = args.public_url.clone().unwrap_or_else(|| format!("http://{}", args.listen));
    let public = public.trim_end_matches('/').to_owned();
    let redirect = format!("{public}/page/callback");
    let (rp, idp) = match (&args.oidc_issuer, args.dev) {
        (Some(issuer), _) => {
            let file = args.oidc_client_secret_file.as_ref().ok_or("--oidc-issuer needs --oidc-client-secret-file")?;
            let secret = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let rp = page::oidc::RelyingParty::new(
                issuer.clone(),
                args.oidc_client_id.clone(),
                secret.trim().to_owned(),
                redirect,
            );
            (rp, None)
        }
        (None, true) => {
            let issuer = format!("{public}/dev-idp");
            let secret = page::oidc::random_token();
            let key = SigningKey::from_bytes(&dev_seed(&args.data, "dev-oidc.key")?);
            let idp = page::devidp::DevIdp::new(
                issuer.clone(),
                args.oidc_client_id.clone(),
                secret.clone(),
                redirect.clone(),
                key,
            );
            let rp = page::oidc::RelyingParty::new(issuer, args.oidc_client_id.clone(), secret, redirect);
            (rp, Some(idp))
        }
        (None, false) => return Ok(axum::Router::new()),
    };
    let mut r = page::router(Arc::new(page::PageState::new(state.clone(), rp, &public)));
    if let Some(idp) = idp {
        eprintln!("WARNING: --dev: a built-in OpenID provider at {public}/dev-idp lets anyone sign in as anyone.");
        r = r.merge(page::devidp::router(Arc::new(idp)));
    }
    println!("# The citizen's page: {public}/page");
    Ok(r)
}

async fn run(args: Args) -> Result<(), String> {
    let master = master_key(&args)?;
    let mut providers = HashMap::new();
    for spec in &args.identity_providers {
        let (name, provider) = auth::parse_identity_provider(spec)?;
        providers.insert(name, provider);
    }
    if args.max_uploads_per_caller == 0 || args.max_downloads_per_caller == 0 || args.stream_idle_timeout == 0 {
        return Err(
            "--max-uploads-per-caller, --max-downloads-per-caller and --stream-idle-timeout must be at least 1".into(),
        );
    }
    if args.max_streams == 0 || args.max_streams > http::BLOCKING_THREADS - 64 {
        return Err(format!(
            "--max-streams must be 1 to {} (the rest of the threads serve other calls)",
            http::BLOCKING_THREADS - 64
        ));
    }
    if !(1..=4).contains(&args.webhook_concurrency) {
        return Err("--webhook-concurrency must be 1 to 4".into());
    }
    if args.webhook_timeout == 0 || args.webhook_retry_base == 0 || args.webhook_poll_ms == 0 {
        return Err("--webhook-timeout, --webhook-retry-base and --webhook-poll-ms must be at least 1".into());
    }
    let webhooks = vault_server::webhooks::WebhookConfig {
        policy: vault::engine::events::UrlPolicy { dev: args.dev, allow_private: args.webhook_allow_private },
        timeout: std::time::Duration::from_secs(args.webhook_timeout),
        concurrency: args.webhook_concurrency,
        retry_base: std::time::Duration::from_secs(args.webhook_retry_base),
        retry_max: std::time::Duration::from_secs(args.webhook_retry_max.max(args.webhook_retry_base)),
        park_after: std::time::Duration::from_secs(args.webhook_park_after),
        poll: std::time::Duration::from_millis(args.webhook_poll_ms),
    };
    let operator = args.operator_key.as_deref().map(|k| verifying_key(k, "--operator-key")).transpose()?;
    let mut auth = auth::AuthConfig {
        audience: args.audience.clone(),
        max_lifetime: args.max_token_lifetime,
        operator,
        providers,
        cache: Default::default(),
    };
    let dev = if args.dev { Some(dev_keys(&args, &mut auth)?) } else { None };
    // Serve first, so /readyz answers 503 while the vault opens (recovery after a crash may walk
    // the whole blob folder); every other call answers 503 `sealed` meanwhile.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
        // Small responses (JSON, streamed content frames) must not wait for the client's delayed
        // ACK (Nagle): issue 11 measured content reads going from ~1,500 to ~2,200/s with this.
        .tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
    let state = Arc::new(http::AppState {
        vault: std::sync::OnceLock::new(),
        auth,
        max_content: args.max_content_size,
        metrics: Default::default(),
        limits: http::Limits::new(
            args.max_uploads_per_caller,
            args.max_downloads_per_caller,
            args.max_streams,
            std::time::Duration::from_secs(args.stream_idle_timeout),
        ),
        webhooks,
    });
    let app = http::router(state.clone()).merge(page_router(&args, &state)?);
    let server = tokio::spawn(axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).into_future());
    let (data, meta, blobs) = (args.data.clone(), metadata(&args)?, args.blobs.clone());
    let where_meta = match &meta {
        Metadata::Embedded => "embedded".to_owned(),
        Metadata::Postgres(url) => vault::storage::pg_store::describe_url(url),
    };
    let vault = tokio::task::spawn_blocking(move || open_vault(&data, &meta, blobs.as_deref(), &master))
        .await
        .map_err(|e| e.to_string())??;
    let vault = Arc::new(vault);
    // Fail-stop (SPEC.md §8): one clear line when the vault stops accepting writes.
    vault.on_fail_stop(|reason| {
        tracing::error!(
            reason,
            "STORAGE FAILURE: the vault refuses every write from now on (reads go on, /readyz answers 503); \
             fix the storage and restart the server, whose recovery keeps every acknowledged write"
        );
    });
    vault.set_pending_limits(vault::PendingLimits {
        max_count: args.max_pending_uploads,
        max_bytes: args.max_pending_bytes,
    });
    let sweeper = tokio::spawn(sweep_pending(vault.clone(), args.sweep_interval.max(1)));
    let folder =
        tokio::spawn(vault_server::routes::stats::fold_every(vault.clone(), std::time::Duration::from_secs(60)));
    // Events (SPEC.md §24): grant.expired at most a minute late; the outbox's delivery worker.
    let expiry = tokio::spawn(vault_server::webhooks::sweep_expiry(
        vault.clone(),
        std::time::Duration::from_secs(args.sweep_interval.clamp(1, 60)),
    ));
    let deliverer = tokio::spawn(vault_server::webhooks::deliver_forever(vault.clone(), webhooks));
    if let Some(keys) = &dev {
        dev_announce(&args, &vault, keys)?;
    }
    let _ = state.vault.set(vault.clone());
    eprintln!("vault-server ready on http://{} (data: {}, metadata: {where_meta})", args.listen, args.data.display());
    server.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    sweeper.abort();
    let _ = sweeper.await;
    folder.abort();
    let _ = folder.await;
    expiry.abort();
    let _ = expiry.await;
    deliverer.abort();
    let _ = deliverer.await;
    drop(state);
    // In-flight requests have finished; close the vault (sync, mark clean) once they let go.
    for _ in 0..100 {
        if Arc::strong_count(&vault) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match Arc::try_unwrap(vault) {
        Ok(v) => tokio::task::spawn_blocking(move || v.close())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?,
        Err(_) => eprintln!("vault-server: requests still hold the vault; it will recover at the next start"),
    }
    Ok(())
}

/// Removes agency uploads no document used within 24 hours: at start, then every `every`
/// seconds (SPEC.md §20).
async fn sweep_pending(vault: Arc<Vault>, every: u64) {
    // The first collection of orphans an hour after the start, like the ones after it.
    let mut last_orphans = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !vault_server::runs_background_work(&vault).await {
            continue;
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.sweep_pending(vault::Timestamp::now())).await {
            Ok(Ok(r)) if r.claims_removed > 0 => tracing::info!(
                claims = r.claims_removed,
                contents = r.contents_removed,
                bytes = r.bytes_removed,
                "removed agency uploads no document used"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sweep of pending uploads failed"),
            Err(e) => tracing::error!(error = %e, "sweep of pending uploads failed"),
        }
        // The space of deleted small contents (the embedded store's packs).
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.compact_storage()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(values = n, "compacted the pack files"),
            Ok(Err(e)) => tracing::error!(error = %e, "compacting the pack files failed"),
            Err(e) => tracing::error!(error = %e, "compacting the pack files failed"),
        }
        // Hourly: blobs no record points at, for a store whose orphans are found by age
        // (object storage; SPEC.md §9b). A no-op for the embedded store.
        if last_orphans.elapsed() >= std::time::Duration::from_secs(3600) {
            last_orphans = std::time::Instant::now();
            let v = vault.clone();
            match tokio::task::spawn_blocking(move || v.collect_orphans(vault::Timestamp::now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::warn!(blobs = n, "set aside blobs that no record points at (see check)"),
                Ok(Err(e)) => tracing::error!(error = %e, "collecting orphan blobs failed"),
                Err(e) => tracing::error!(error = %e, "collecting orphan blobs failed"),
            }
        }
    }
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

/// The metadata store `--metadata` names.
#[derive(Debug, Clone)]
enum Metadata {
    /// sled in `<data>/meta` (the default).
    Embedded,
    /// PostgreSQL at this URL.
    Postgres(String),
}

fn metadata(args: &Args) -> Result<Metadata, String> {
    match args.metadata.as_deref().map(str::trim) {
        None | Some("") | Some("sled") => Ok(Metadata::Embedded),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Metadata::Postgres(url.to_owned()))
        }
        Some(_) => Err("--metadata takes `sled` or a PostgreSQL URL postgres://user@host:port/db".into()),
    }
}

/// Opens the vault of the data folder `data`: its metadata where `--metadata` says, its blobs
/// in the data folder or, with `--blobs s3://...`, in object storage.
fn open_vault(data: &Path, metadata: &Metadata, blobs: Option<&str>, master: &MasterKey) -> Result<Vault, String> {
    let cannot = |e: &dyn std::fmt::Display| match blobs {
        None => format!("cannot open the vault in {}: {e}", data.display()),
        Some(loc) => format!("cannot open the vault in {} with blobs in {loc}: {e}", data.display()),
    };
    if let (Metadata::Embedded, None) = (metadata, blobs) {
        return Vault::open(data, master).map_err(|e| cannot(&e));
    }
    let meta: Box<dyn vault::MetaStore> = match metadata {
        Metadata::Embedded => {
            std::fs::create_dir_all(data).map_err(|e| cannot(&e))?;
            Box::new(vault::storage::sled::SledMeta::open(&data.join("meta")).map_err(|e| cannot(&e))?)
        }
        Metadata::Postgres(url) => {
            // A folder whose metadata is in sled would come up as a new, empty vault.
            if data.join("meta").exists() {
                return Err(format!(
                    "{} holds embedded (sled) metadata: it cannot be opened with --metadata postgres://... \
                     (moving a vault's metadata to PostgreSQL is not supported yet)",
                    data.display()
                ));
            }
            std::fs::create_dir_all(data).map_err(|e| cannot(&e))?;
            Box::new(vault::storage::pg_store::PgMeta::open(url).map_err(|e| cannot(&e))?)
        }
    };
    let store: Box<dyn vault::BlobStore> = match blobs {
        None => Box::new(vault::storage::files::FsBlobs::open(data.join("blobs")).map_err(|e| cannot(&e))?),
        Some(loc) => {
            Box::new(vault::storage::s3_store::S3Blobs::open(loc, data.join("spool")).map_err(|e| cannot(&e))?)
        }
    };
    Vault::open_with(meta, store, master, Some(data.join("OPEN"))).map_err(|e| cannot(&e))
}

/// `vault-server check`: exit 0 when clean, 1 when problems were found, 2 when it cannot run.
fn check(args: &Args, read_data: bool) -> ExitCode {
    let result = master_key(args).and_then(|master| {
        let vault = open_vault(&args.data, &metadata(args)?, args.blobs.as_deref(), &master)?;
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

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command().get_matches();
    let mut args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Err(e) = apply_config(&mut args, &matches) {
        eprintln!("vault-server: {e}");
        return ExitCode::from(2);
    }
    match args.command {
        Some(Command::Check { read_data }) => return check(&args, read_data),
        Some(Command::Keygen { ed25519 }) => {
            if ed25519 {
                let seed = MasterKey::generate();
                let seed_b64 = seed.to_base64();
                let pk = B64
                    .decode(seed_b64.as_str())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(|s| SigningKey::from_bytes(&s).verifying_key());
                match pk {
                    Some(pk) => {
                        println!("private (seed): {}", seed_b64.as_str());
                        println!("public:         {}", B64.encode(pk.to_bytes()));
                    }
                    None => return ExitCode::FAILURE,
                }
            } else {
                println!("{}", MasterKey::generate().to_base64().as_str());
            }
            return ExitCode::SUCCESS;
        }
        Some(Command::RotateMasterKey { ref new_master_key_file }) => {
            let result = master_key(&args).and_then(|old| {
                let new = MasterKey::from_file(new_master_key_file).map_err(|e| e.to_string())?;
                match metadata(&args)? {
                    Metadata::Embedded => vault::engine::rotation::rotate_master_key(&args.data, &old, &new),
                    Metadata::Postgres(url) => vault::storage::pg_store::PgMeta::open(&url)
                        .map_err(vault::Error::from)
                        .and_then(|meta| vault::engine::rotation::rotate(&meta, &old, &new)),
                }
                .map_err(|e| e.to_string())
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
        None => {}
    }
    if args.log_json {
        tracing_subscriber::fmt().json().with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(http::BLOCKING_THREADS)
        .enable_all()
        .build()
    {
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
