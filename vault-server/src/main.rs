//! `vault-server`: the HTTP service over a vault on embedded storage (api.md), and the
//! operator subcommands `check`, `keygen` and `rotate-master-key`.

use axum::serve::ListenerExt;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::Parser;
use ed25519_dalek::{SigningKey, VerifyingKey};
use vault::access::Caller;
use vault::crypto::token::{mint, Claims};
use vault::engine::provenance::{AgencyKey, NewAgency, PublicKey};
use vault::{AgencyId, KeyId, MasterKey, Timestamp, Vault};
use vault_server::{api, auth};

/// Flags as in api.md, "Starting the server"; each also as `VAULT_<FLAG>`.
#[derive(Debug, Parser)]
#[command(name = "vault-server", version, about = "HTTP service for the vault")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// A TOML file of the same settings (names with `_`, `[identity_providers]` as a table of
    /// name = key). A flag beats its environment variable, which beats the file.
    #[arg(long, global = true, env = "VAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (created if missing).
    #[arg(long, global = true, env = "VAULT_DATA", default_value = "./vault-data")]
    data: PathBuf,
    /// Where blobs are kept: the data folder (default), or S3-compatible object storage
    /// `s3://bucket/prefix`, with the endpoint, region and credentials from the usual `AWS_*`
    /// environment variables (SPEC.md §9b). Metadata stays in the data folder.
    #[arg(long, global = true, env = "VAULT_BLOBS")]
    blobs: Option<String>,
    /// Where the metadata lives: `sled` (the default: embedded, in the data folder) or a
    /// PostgreSQL URL `postgres://user@host:port/db` (SPEC.md §9a; blobs stay in the data
    /// folder; one server per database).
    #[arg(long, global = true, env = "VAULT_METADATA")]
    metadata: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "VAULT_LISTEN", default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// File holding the 32-byte master key in standard base64.
    #[arg(long, global = true, env = "VAULT_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The operator's Ed25519 public key (standard base64 of 32 bytes).
    #[arg(long, env = "VAULT_OPERATOR_KEY")]
    operator_key: Option<String>,
    /// A trusted identity provider: `<name>=<base64 public key>`, or with `@citizen` / `@org`
    /// after the key to accept its tokens only about that kind of owner; repeatable
    /// (comma-separated in the environment).
    #[arg(long = "identity-provider", env = "VAULT_IDENTITY_PROVIDER", value_delimiter = ',')]
    identity_providers: Vec<String>,
    /// The audience tokens must name.
    #[arg(long, env = "VAULT_AUDIENCE", default_value = "vault")]
    audience: String,
    /// Longest token lifetime accepted (exp − iat), seconds.
    #[arg(long, env = "VAULT_MAX_TOKEN_LIFETIME", default_value_t = 3600)]
    max_token_lifetime: i64,
    /// Largest content accepted, bytes.
    #[arg(long, env = "VAULT_MAX_CONTENT_SIZE", default_value_t = 1 << 30)]
    max_content_size: u64,
    /// Most uploads (content PUTs, batch deposits) one caller may have in flight; more → 429.
    #[arg(long, env = "VAULT_MAX_UPLOADS_PER_CALLER", default_value_t = 16)]
    max_uploads_per_caller: usize,
    /// Most downloads (content GETs, exports) one caller may have in flight; more → 429.
    #[arg(long, env = "VAULT_MAX_DOWNLOADS_PER_CALLER", default_value_t = 64)]
    max_downloads_per_caller: usize,
    /// Most uploads and downloads of all callers together (each holds a blocking thread); more → 429.
    #[arg(long, env = "VAULT_MAX_STREAMS", default_value_t = 384)]
    max_streams: usize,
    /// Seconds a request body may send nothing, or a response go unread, before it is aborted.
    #[arg(long, env = "VAULT_STREAM_IDLE_TIMEOUT", default_value_t = 30)]
    stream_idle_timeout: u64,
    /// Most uploads one agency may hold that no document uses yet (beyond: 429).
    #[arg(long, env = "VAULT_MAX_PENDING_UPLOADS", default_value_t = 100_000)]
    max_pending_uploads: u64,
    /// Most bytes one agency may hold in uploads that no document uses yet (beyond: 429).
    #[arg(long, env = "VAULT_MAX_PENDING_BYTES", default_value_t = 10 << 30)]
    max_pending_bytes: u64,
    /// Seconds between sweeps of expired agency uploads (one also runs at start).
    #[arg(long, env = "VAULT_SWEEP_INTERVAL", default_value_t = 300)]
    sweep_interval: u64,
    /// Webhooks: allow targets at private, loopback, link-local and other non-public addresses
    /// (refused by default, also after DNS resolution).
    #[arg(long, env = "VAULT_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// Webhooks: time limit of one delivery attempt, seconds.
    #[arg(long, env = "VAULT_WEBHOOK_TIMEOUT", default_value_t = 10)]
    webhook_timeout: u64,
    /// Webhooks: most delivery attempts in flight per subscription (1 to 4).
    #[arg(long, env = "VAULT_WEBHOOK_CONCURRENCY", default_value_t = 2)]
    webhook_concurrency: usize,
    /// Webhooks: delay after the first failed attempt, seconds (doubled after each further
    /// failure, with jitter).
    #[arg(long, env = "VAULT_WEBHOOK_RETRY_BASE", default_value_t = 5)]
    webhook_retry_base: u64,
    /// Webhooks: longest delay between attempts, seconds.
    #[arg(long, env = "VAULT_WEBHOOK_RETRY_MAX", default_value_t = 3600)]
    webhook_retry_max: u64,
    /// Webhooks: an event failing for this many seconds since its first failure is parked.
    #[arg(long, env = "VAULT_WEBHOOK_PARK_AFTER", default_value_t = 86_400)]
    webhook_park_after: u64,
    /// Webhooks: milliseconds between looks at the event outbox (and seconds between sweeps
    /// for `grant.expired` are `--sweep-interval`, at most 60).
    #[arg(long, env = "VAULT_WEBHOOK_POLL_MS", default_value_t = 1000)]
    webhook_poll_ms: u64,
    /// Log one JSON object per line (default: human-readable text). `RUST_LOG`-style levels are
    /// not configurable yet: requests are logged at info.
    #[arg(long, env = "VAULT_LOG_JSON")]
    log_json: bool,
    /// The citizen's page: the OpenID provider to sign in with (its issuer URL). Without it (and
    /// without --dev) the page is not served.
    #[arg(long, env = "VAULT_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The page's client id at the OpenID provider.
    #[arg(long, env = "VAULT_OIDC_CLIENT_ID", default_value = "vault-page")]
    oidc_client_id: String,
    /// File holding the page's client secret at the OpenID provider.
    #[arg(long, env = "VAULT_OIDC_CLIENT_SECRET_FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// The address people open (behind a proxy: its https URL); the page's redirect URI is
    /// `<public-url>/page/callback`, and its cookies are `Secure` when this is https.
    /// Default: `http://<listen>`.
    #[arg(long, env = "VAULT_PUBLIC_URL")]
    public_url: Option<String>,
    /// Development mode: create missing keys under the data folder and print tokens. For
    /// trying it out only.
    #[arg(long, global = true, env = "VAULT_DEV")]
    dev: bool,
}

/// The `--config` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    metadata: Option<String>,
    listen: Option<SocketAddr>,
    master_key_file: Option<PathBuf>,
    operator_key: Option<String>,
    identity_providers: Option<std::collections::BTreeMap<String, String>>,
    audience: Option<String>,
    max_token_lifetime: Option<i64>,
    max_content_size: Option<u64>,
    max_uploads_per_caller: Option<usize>,
    max_downloads_per_caller: Option<usize>,
    max_streams: Option<usize>,
    stream_idle_timeout: Option<u64>,
    max_pending_uploads: Option<u64>,
    max_pending_bytes: Option<u64>,
    sweep_interval: Option<u64>,
    webhook_allow_private: Option<bool>,
    webhook_timeout: Option<u64>,
    webhook_concurrency: Option<usize>,
    webhook_retry_base: Option<u64>,
    webhook_retry_max: Option<u64>,
    webhook_park_after: Option<u64>,
    webhook_poll_ms: Option<u64>,
    dev: Option<bool>,
    blobs: Option<String>,
    log_json: Option<bool>,
    oidc_issuer: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret_file: Option<PathBuf>,
    public_url: Option<String>,
}

/// Fills in, from the `--config` file, every setting that neither a flag nor the environment
/// gave.
fn apply_config(args: &mut Args, m: &clap::ArgMatches) -> Result<(), String> {
    use clap::parser::ValueSource;
    let Some(path) = &args.config else { return Ok(()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    let f: FileConfig = toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
    // Subcommand flags are marked global, so look in the subcommand's matches too.
    let sub = m.subcommand().map(|(_, s)| s);
    const GLOBAL: [&str; 5] = ["data", "metadata", "blobs", "master_key_file", "dev"];
    let unset = |id: &str| {
        // Global flags are known to the subcommand's matches as well; the others only to the top.
        let in_sub = if GLOBAL.contains(&id) { sub.and_then(|s| s.value_source(id)) } else { None };
        let src = in_sub.or_else(|| m.value_source(id));
        matches!(src, None | Some(ValueSource::DefaultValue))
    };
    if let (true, Some(v)) = (unset("data"), f.data) {
        args.data = v;
    }
    if let (true, Some(v)) = (unset("blobs"), f.blobs) {
        args.blobs = Some(v);
    }
    if let (true, Some(v)) = (unset("metadata"), f.metadata) {
        args.metadata = Some(v);
    }
    if let (true, Some(v)) = (unset("listen"), f.listen) {
        args.listen = v;
    }
    if let (true, Some(v)) = (unset("master_key_file"), f.master_key_file) {
        args.master_key_file = Some(v);
    }
    if let (true, Some(v)) = (unset("operator_key"), f.operator_key) {
        args.operator_key = Some(v);
    }
    if let (true, Some(v)) = (unset("identity_providers"), f.identity_providers) {
        args.identity_providers = v.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    }
    if let (true, Some(v)) = (unset("audience"), f.audience) {
        args.audience = v;
    }
    if let (true, Some(v)) = (unset("max_token_lifetime"), f.max_token_lifetime) {
        args.max_token_lifetime = v;
    }
    if let (true, Some(v)) = (unset("max_content_size"), f.max_content_size) {
        args.max_content_size = v;
    }
    if let (true, Some(v)) = (unset("max_uploads_per_caller"), f.max_uploads_per_caller) {
        args.max_uploads_per_caller = v;
    }
    if let (true, Some(v)) = (unset("max_downloads_per_caller"), f.max_downloads_per_caller) {
        args.max_downloads_per_caller = v;
    }
    if let (true, Some(v)) = (unset("max_streams"), f.max_streams) {
        args.max_streams = v;
    }
    if let (true, Some(v)) = (unset("stream_idle_timeout"), f.stream_idle_timeout) {
        args.stream_idle_timeout = v;
    }
    if let (true, Some(v)) = (unset("max_pending_uploads"), f.max_pending_uploads) {
        args.max_pending_uploads = v;
    }
    if let (true, Some(v)) = (unset("max_pending_bytes"), f.max_pending_bytes) {
        args.max_pending_bytes = v;
    }
    if let (true, Some(v)) = (unset("sweep_interval"), f.sweep_interval) {
        args.sweep_interval = v;
    }
    if let (true, Some(v)) = (unset("webhook_allow_private"), f.webhook_allow_private) {
        args.webhook_allow_private = v;
    }
    if let (true, Some(v)) = (unset("webhook_timeout"), f.webhook_timeout) {
        args.webhook_timeout = v;
    }
    if let (true, Some(v)) = (unset("webhook_concurrency"), f.webhook_concurrency) {
        args.webhook_concurrency = v;
    }
    if let (true, Some(v)) = (unset("webhook_retry_base"), f.webhook_retry_base) {
        args.webhook_retry_base = v;
    }
    if let (true, Some(v)) = (unset("webhook_retry_max"), f.webhook_retry_max) {
        args.webhook_retry_max = v;
    }
    if let (true, Some(v)) = (unset("webhook_park_after"), f.webhook_park_after) {
        args.webhook_park_after = v;
    }
    if let (true, Some(v)) = (unset("webhook_poll_ms"), f.webhook_poll_ms) {
        args.webhook_poll_ms = v;
    }
    if let (true, Some(v)) = (unset("oidc_issuer"), f.oidc_issuer) {
        args.oidc_issuer = Some(v);
    }
    if let (true, Some(v)) = (unset("oidc_client_id"), f.oidc_client_id) {
        args.oidc_client_id = v;
    }
    if let (true, Some(v)) = (unset("oidc_client_secret_file"), f.oidc_client_secret_file) {
        args.oidc_client_secret_file = Some(v);
    }
    if let (true, Some(v)) = (unset("public_url"), f.public_url) {
        args.public_url = Some(v);
    }
    if let (true, Some(v)) = (unset("dev"), f.dev) {
        args.dev = v;
    }
    if let (true, Some(v)) = (unset("log_json"), f.log_json) {
        args.log_json = v;
    }
    Ok(())
}

/// Operator subcommands; without one, the server runs.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Verify the vault offline: records, blobs, reference counts, the audit tree (exit 0
    /// clean, 1 problems found, 2 cannot run).
    Check {
        /// Also decrypt every blob and verify its digest.
        #[arg(long)]
        read_data: bool,
    },
    /// Print a new random master key (the form `--master-key-file` takes), or with `--ed25519`
    /// a new Ed25519 key pair (private seed and public key, base64).
    Keygen {
        /// Make an Ed25519 key pair instead.
        #[arg(long)]
        ed25519: bool,
    },
    /// Re-wrap every key under a new master key (the server must be stopped). Resumes an
    /// interrupted rotation when run again with the same two keys.
    RotateMasterKey {
        /// File holding the new master key (make one with `vault-server keygen`).
        #[arg(long)]
        new_master_key_file: PathBuf,
    },
}

/// Reads a dev-mode seed file, creating it with a fresh random seed if missing.
fn dev_seed(data: &Path, name: &str) -> Result<[u8; 32], String> {
    let path = data.join(name);
    if !path.exists() {
        std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let key = MasterKey::generate();
        write_private(&path, format!("{}\n", key.to_base64().as_str()).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let raw = B64.decode(text.trim()).map_err(|_| format!("{} is not base64", path.display()))?;
    raw.try_into().map_err(|_| format!("{} is not 32 bytes", path.display()))
}

/// Creates a new file readable by its owner only (mode 0600 on Unix: key files must not be
/// readable by other users, and `check` warns about one that is).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

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

/// The development keys (`--dev`): created under the data folder if missing.
struct DevKeys {
    op: SigningKey,
    idp: SigningKey,
    agency: SigningKey,
}

/// Loads the dev keys and trusts them, unless explicit keys were given.
fn dev_keys(args: &Args, auth: &mut auth::AuthConfig) -> Result<DevKeys, String> {
    let keys = DevKeys {
        op: SigningKey::from_bytes(&dev_seed(&args.data, "dev-operator.key")?),
        idp: SigningKey::from_bytes(&dev_seed(&args.data, "dev-idp.key")?),
        agency: SigningKey::from_bytes(&dev_seed(&args.data, "dev-agency.key")?),
    };
    if auth.operator.is_none() {
        auth.operator = Some(keys.op.verifying_key());
    }
    auth.providers
        .entry("dev-idp".into())
        .or_insert(auth::IdentityProvider { key: keys.idp.verifying_key(), only: None });
    Ok(keys)
}

/// Registers the demo agency and prints what a developer needs: tokens and a working call.
fn dev_announce(args: &Args, vault: &Vault, keys: &DevKeys) -> Result<(), String> {
    let agency = AgencyId::parse("demo-agency").map_err(|e| e.to_string())?;
    if vault.agency(&agency).map_err(|e| e.to_string())?.is_none() {
        let key = AgencyKey {
            id: KeyId::parse("k1").map_err(|e| e.to_string())?,
            public_key: PublicKey::from_bytes(keys.agency.verifying_key().to_bytes()).map_err(|e| e.to_string())?,
            not_before: Timestamp::parse("2020-01-01T00:00:00Z").map_err(|e| e.to_string())?,
            not_after: None,
        };
        vault
            .put_agency_as(&Caller::operator(), &agency, NewAgency { name: "Demo agency".into(), keys: vec![key] })
            .map_err(|e| e.to_string())?;
    }
    let now = Timestamp::now().unix();
    let aud = &args.audience;
    let citizen = "citizen:001099012345";
    let claims = |kid, iss, sub| Claims { kid, iss, sub, aud, iat: now, exp: now + 3600 };
    let t_op = mint(&keys.op, &claims("operator", "operator", "operator"));
    let t_cit = mint(&keys.idp, &claims("dev-idp", "dev-idp", citizen));
    let t_ag = mint(&keys.agency, &claims("k1", "demo-agency", "demo-agency"));
    let base = format!("http://{}", args.listen);
    println!("# vault-server --dev: FOR TRYING IT OUT ONLY. Keys are stored in clear in {}.", args.data.display());
    println!("# Tokens, valid 1 hour: the operator; the citizen {citizen} (identity provider dev-idp);");
    println!("# the agency demo-agency (key k1, seed in {}).", args.data.join("dev-agency.key").display());
    println!("export OPERATOR_TOKEN={t_op}");
    println!("export CITIZEN_TOKEN={t_cit}");
    println!("export AGENCY_TOKEN={t_ag}");
    println!("# Try (after pasting the exports above):");
    println!("curl -s -H \"Authorization: Bearer $CITIZEN_TOKEN\" {base}/v1/owners/{citizen}/documents");
    Ok(())
}

/// The citizen's page (SPEC.md §22) with its OpenID relying party, and under `--dev` without
/// `--oidc-issuer` the built-in development provider; empty when neither is configured.
fn page_router(args: &Args, state: &Arc<api::AppState>) -> Result<axum::Router, String> {
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
    if args.max_streams == 0 || args.max_streams > api::BLOCKING_THREADS - 64 {
        return Err(format!(
            "--max-streams must be 1 to {} (the rest of the threads serve other calls)",
            api::BLOCKING_THREADS - 64
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
    let state = Arc::new(api::AppState {
        vault: std::sync::OnceLock::new(),
        auth,
        max_content: args.max_content_size,
        metrics: Default::default(),
        limits: api::Limits::new(
            args.max_uploads_per_caller,
            args.max_downloads_per_caller,
            args.max_streams,
            std::time::Duration::from_secs(args.stream_idle_timeout),
        ),
        webhooks,
    });
    let app = api::router(state.clone()).merge(page_router(&args, &state)?);
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
    let folder = tokio::spawn(vault_server::stats::fold_every(vault.clone(), std::time::Duration::from_secs(60)));
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
        .max_blocking_threads(api::BLOCKING_THREADS)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[cfg(unix)]
    #[test]
    fn item_10_7_dev_key_files_are_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let seed = dev_seed(&data, "dev-master.key").unwrap();
        let mode = std::fs::metadata(data.join("dev-master.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        // Read back as the same key, and usable as a master key file.
        assert_eq!(dev_seed(&data, "dev-master.key").unwrap(), seed);
        MasterKey::from_file(&data.join("dev-master.key")).unwrap();
        dev_seed(&data, "dev-operator.key").unwrap();
        let mode = std::fs::metadata(data.join("dev-operator.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    }
}
