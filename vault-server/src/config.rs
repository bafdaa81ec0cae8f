//! The server's settings: flags, their environment variables and the `--config` file, and
//! the operator subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Flags as in api.md, "Starting the server"; each also as `VAULT_<FLAG>`.
#[derive(Debug, Parser)]
#[command(name = "vault-server", version, about = "HTTP service for the vault")]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// A TOML file of the same settings (names with `_`, `[identity_providers]` as a table of
    /// name = key). A flag beats its environment variable, which beats the file.
    #[arg(long, global = true, env = "VAULT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Data folder (created if missing).
    #[arg(long, global = true, env = "VAULT_DATA", default_value = "./vault-data")]
    pub(crate) data: PathBuf,
    /// Where blobs are kept: the data folder (default), or S3-compatible object storage
    /// `s3://bucket/prefix`, with the endpoint, region and credentials from the usual `AWS_*`
    /// environment variables (SPEC.md §9b). Metadata stays in the data folder.
    #[arg(long, global = true, env = "VAULT_BLOBS")]
    pub(crate) blobs: Option<String>,
    /// Where the metadata lives: `sled` (the default: embedded, in the data folder) or a
    /// PostgreSQL URL `postgres://user@host:port/db` (SPEC.md §9a; blobs stay in the data
    /// folder; one server per database).
    #[arg(long, global = true, env = "VAULT_METADATA")]
    pub(crate) metadata: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "VAULT_LISTEN", default_value = "127.0.0.1:8700")]
    pub(crate) listen: SocketAddr,
    /// File holding the 32-byte master key in standard base64.
    #[arg(long, global = true, env = "VAULT_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// The operator's Ed25519 public key (standard base64 of 32 bytes).
    #[arg(long, env = "VAULT_OPERATOR_KEY")]
    pub(crate) operator_key: Option<String>,
    /// A trusted identity provider: `<name>=<base64 public key>`, or with `@citizen` / `@org`
    /// after the key to accept its tokens only about that kind of owner; repeatable
    /// (comma-separated in the environment).
    #[arg(long = "identity-provider", env = "VAULT_IDENTITY_PROVIDER", value_delimiter = ',')]
    pub(crate) identity_providers: Vec<String>,
    /// The audience tokens must name.
    #[arg(long, env = "VAULT_AUDIENCE", default_value = "vault")]
    pub(crate) audience: String,
    /// Longest token lifetime accepted (exp − iat), seconds.
    #[arg(long, env = "VAULT_MAX_TOKEN_LIFETIME", default_value_t = 3600)]
    pub(crate) max_token_lifetime: i64,
    /// Largest content accepted, bytes.
    #[arg(long, env = "VAULT_MAX_CONTENT_SIZE", default_value_t = 1 << 30)]
    pub(crate) max_content_size: u64,
    /// Most uploads (content PUTs, batch deposits) one caller may have in flight; more → 429.
    #[arg(long, env = "VAULT_MAX_UPLOADS_PER_CALLER", default_value_t = 16)]
    pub(crate) max_uploads_per_caller: usize,
    /// Most downloads (content GETs, exports) one caller may have in flight; more → 429.
    #[arg(long, env = "VAULT_MAX_DOWNLOADS_PER_CALLER", default_value_t = 64)]
    pub(crate) max_downloads_per_caller: usize,
    /// Most uploads and downloads of all callers together (each holds a blocking thread); more → 429.
    #[arg(long, env = "VAULT_MAX_STREAMS", default_value_t = 384)]
    pub(crate) max_streams: usize,
    /// Seconds a request body may send nothing, or a response go unread, before it is aborted.
    #[arg(long, env = "VAULT_STREAM_IDLE_TIMEOUT", default_value_t = 30)]
    pub(crate) stream_idle_timeout: u64,
    /// Most uploads one agency may hold that no document uses yet (beyond: 429).
    #[arg(long, env = "VAULT_MAX_PENDING_UPLOADS", default_value_t = 100_000)]
    pub(crate) max_pending_uploads: u64,
    /// Most bytes one agency may hold in uploads that no document uses yet (beyond: 429).
    #[arg(long, env = "VAULT_MAX_PENDING_BYTES", default_value_t = 10 << 30)]
    pub(crate) max_pending_bytes: u64,
    /// Seconds between sweeps of expired agency uploads (one also runs at start).
    #[arg(long, env = "VAULT_SWEEP_INTERVAL", default_value_t = 300)]
    pub(crate) sweep_interval: u64,
    /// Webhooks: allow targets at private, loopback, link-local and other non-public addresses
    /// (refused by default, also after DNS resolution).
    #[arg(long, env = "VAULT_WEBHOOK_ALLOW_PRIVATE")]
    pub(crate) webhook_allow_private: bool,
    /// Webhooks: time limit of one delivery attempt, seconds.
    #[arg(long, env = "VAULT_WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub(crate) webhook_timeout: u64,
    /// Webhooks: most delivery attempts in flight per subscription (1 to 4).
    #[arg(long, env = "VAULT_WEBHOOK_CONCURRENCY", default_value_t = 2)]
    pub(crate) webhook_concurrency: usize,
    /// Webhooks: delay after the first failed attempt, seconds (doubled after each further
    /// failure, with jitter).
    #[arg(long, env = "VAULT_WEBHOOK_RETRY_BASE", default_value_t = 5)]
    pub(crate) webhook_retry_base: u64,
    /// Webhooks: longest delay between attempts, seconds.
    #[arg(long, env = "VAULT_WEBHOOK_RETRY_MAX", default_value_t = 3600)]
    pub(crate) webhook_retry_max: u64,
    /// Webhooks: an event failing for this many seconds since its first failure is parked.
    #[arg(long, env = "VAULT_WEBHOOK_PARK_AFTER", default_value_t = 86_400)]
    pub(crate) webhook_park_after: u64,
    /// Webhooks: milliseconds between looks at the event outbox (and seconds between sweeps
    /// for `grant.expired` are `--sweep-interval`, at most 60).
    #[arg(long, env = "VAULT_WEBHOOK_POLL_MS", default_value_t = 1000)]
    pub(crate) webhook_poll_ms: u64,
    /// Log one JSON object per line (default: human-readable text). `RUST_LOG`-style levels are
    /// not configurable yet: requests are logged at info.
    #[arg(long, env = "VAULT_LOG_JSON")]
    pub(crate) log_json: bool,
    /// The citizen's page: the OpenID provider to sign in with (its issuer URL). Without it (and
    /// without --dev) the page is not served.
    #[arg(long, env = "VAULT_OIDC_ISSUER")]
    pub(crate) oidc_issuer: Option<String>,
    /// The page's client id at the OpenID provider.
    #[arg(long, env = "VAULT_OIDC_CLIENT_ID", default_value = "vault-page")]
    pub(crate) oidc_client_id: String,
    /// File holding the page's client secret at the OpenID provider.
    #[arg(long, env = "VAULT_OIDC_CLIENT_SECRET_FILE")]
    pub(crate) oidc_client_secret_file: Option<PathBuf>,
    /// The address people open (behind a proxy: its https URL); the page's redirect URI is
    /// `<public-url>/page/callback`, and its cookies are `Secure` when this is https.
    /// Default: `http://<listen>`.
    #[arg(long, env = "VAULT_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// Development mode: create missing keys under the data folder and print tokens. For
    /// trying it out only.
    #[arg(long, global = true, env = "VAULT_DEV")]
    pub(crate) dev: bool,
}

/// The `--config` file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) data: Option<PathBuf>,
    pub(crate) metadata: Option<String>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) master_key_file: Option<PathBuf>,
    pub(crate) operator_key: Option<String>,
    pub(crate) identity_providers: Option<std::collections::BTreeMap<String, String>>,
    pub(crate) audience: Option<String>,
    pub(crate) max_token_lifetime: Option<i64>,
    pub(crate) max_content_size: Option<u64>,
    pub(crate) max_uploads_per_caller: Option<usize>,
    pub(crate) max_downloads_per_caller: Option<usize>,
    pub(crate) max_streams: Option<usize>,
    pub(crate) stream_idle_timeout: Option<u64>,
    pub(crate) max_pending_uploads: Option<u64>,
    pub(crate) max_pending_bytes: Option<u64>,
    pub(crate) sweep_interval: Option<u64>,
    pub(crate) webhook_allow_private: Option<bool>,
    pub(crate) webhook_timeout: Option<u64>,
    pub(crate) webhook_concurrency: Option<usize>,
    pub(crate) webhook_retry_base: Option<u64>,
    pub(crate) webhook_retry_max: Option<u64>,
    pub(crate) webhook_park_after: Option<u64>,
    pub(crate) webhook_poll_ms: Option<u64>,
    pub(crate) dev: Option<bool>,
    pub(crate) blobs: Option<String>,
    pub(crate) log_json: Option<bool>,
    pub(crate) oidc_issuer: Option<String>,
    pub(crate) oidc_client_id: Option<String>,
    pub(crate) oidc_client_secret_file: Option<PathBuf>,
    pub(crate) public_url: Option<String>,
}

/// Fills in, from the `--config` file, every setting that neither a flag nor the environment
/// gave.
pub(crate) fn apply_config(args: &mut Args, m: &clap::ArgMatches) -> Result<(), String> {
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
pub(crate) enum Command {
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
