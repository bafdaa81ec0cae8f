//! `vault`: the command line for dossier systems, operators and citizens (README, "The vault
//! command line"). Human-readable output by default, `--json` for scripts; exit codes:
//! 0 success, 1 bad input or a local file problem, 2 wrong usage, 3 refused by the server,
//! 4 not found, 5 verification failed (tampered content, bad signature, inconsistent log),
//! 6 server unreachable or failing, 7 a bulk deposit finished with some files failed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use vault::engine::events::{Delivery, EventId, EventType, NewWebhook, WebhookId, WebhookUrl, WebhookView};
use vault::engine::grants::NewGrant;
use vault::engine::provenance::{AgencyKey, NewAgency, PublicKey};
use vault::{AgencyId, DocType, DocumentId, GrantId, KeyId, OwnerId, Purpose, Timestamp};
use vault_client::bulk::{self, Item, Outcome, Progress};
use vault_client::{safe_file_name, AgencyCredentials, Auth, Client, Error, KeyFile, TrustStore};

#[derive(Debug, Parser)]
#[command(name = "vault", version, about = "Command line for a vault server: deposit, reuse, consent, audit")]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// The server.
    #[arg(long, global = true, env = "VAULT_SERVER", default_value = "http://127.0.0.1:8700")]
    server: String,
    /// A bearer token (an owner's, from an identity provider; the operator's).
    #[arg(long, global = true, env = "VAULT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// An agency's key file (base64 Ed25519 seed): tokens are minted from it, deposits signed.
    #[arg(long, global = true, env = "VAULT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// The agency the key file belongs to.
    #[arg(long, global = true, env = "VAULT_AGENCY", value_parser = AgencyId::parse)]
    agency: Option<AgencyId>,
    /// The key id registered for that key.
    #[arg(long, global = true, env = "VAULT_KEY_ID", value_parser = KeyId::parse)]
    key_id: Option<KeyId>,
    /// The purpose (procedure code) an agency states when reading an owner's data.
    #[arg(long, global = true, env = "VAULT_PURPOSE", value_parser = Purpose::parse)]
    purpose: Option<Purpose>,
    /// The server's audience.
    #[arg(long, global = true, env = "VAULT_AUDIENCE", default_value = "vault")]
    audience: String,
    /// The client's state file (pinned vault key, last checkpoint seen); deposit journals go
    /// beside it. Default: $XDG_STATE_HOME/vault/state.json or ~/.local/state/vault/state.json.
    #[arg(long, global = true, env = "VAULT_STATE")]
    state: Option<PathBuf>,
    /// Machine-readable output (JSON on standard output).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new Ed25519 key file; prints its public key (for the agency registry or a server flag).
    Keygen {
        /// Where to write the key file (mode 0600); without it the key is printed.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Mint a token from the key file (an agency token by default).
    Token {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        lifetime: i64,
        /// Key id (default: --key-id).
        #[arg(long)]
        kid: Option<String>,
        /// Issuer (default: --agency).
        #[arg(long)]
        iss: Option<String>,
        /// Subject (default: --agency).
        #[arg(long)]
        sub: Option<String>,
    },
    /// Print the BLAKE3-256 digest of files, as the vault addresses contents.
    Digest {
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Deposit files (signed when acting as an agency), uploading only what the vault does not hold.
    Deposit(DepositArgs),
    /// List an owner's documents.
    List {
        /// The owner.
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        /// Only this type.
        #[arg(long, value_parser = DocType::parse)]
        doc_type: Option<DocType>,
    },
    /// Show one document's record.
    Show {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        #[arg(value_parser = DocumentId::parse)]
        id: DocumentId,
    },
    /// Download a document's content, verified (digest, size, issuer signature) before it is kept.
    Get {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        #[arg(value_parser = DocumentId::parse)]
        id: DocumentId,
        /// Output file (`-`: standard output), or a folder to write into; default: the current
        /// folder. In a folder the file is named after the record's file name, made safe (its
        /// last component, no leading dots, no control or reserved characters), else the id.
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Replace a file that already exists (never done otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Reuse check: which of these document types the owner already holds (needs --purpose).
    Reuse {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        /// Document types of the procedure's dossier.
        #[arg(required = true, value_parser = DocType::parse)]
        doc_types: Vec<DocType>,
        /// Evaluate at this time instead of now.
        #[arg(long, value_parser = Timestamp::parse)]
        at: Option<Timestamp>,
    },
    /// Grant an agency access to documents for a procedure (the owner).
    Grant(GrantArgs),
    /// Revoke a grant (the owner).
    Revoke {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        #[arg(value_parser = GrantId::parse)]
        grant: GrantId,
    },
    /// List grants: an owner's, or without OWNER those given to the calling agency.
    Grants {
        #[arg(value_parser = OwnerId::parse)]
        owner: Option<OwnerId>,
    },
    /// Revoke a document (its issuing agency).
    RevokeDocument {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        #[arg(value_parser = DocumentId::parse)]
        id: DocumentId,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Delete a document (the owner).
    Delete {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        #[arg(value_parser = DocumentId::parse)]
        id: DocumentId,
    },
    /// The owner's access log, every entry proven included in a verified checkpoint.
    Log {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
    },
    /// Export everything of an owner to a tar file, and verify it.
    Export {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
        /// The tar file to write.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Verify an export offline.
    VerifyExport {
        /// The tar file.
        file: PathBuf,
        /// The vault's note verifier key (default: the one pinned for --server in the state file).
        #[arg(long)]
        vault_key: Option<String>,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Agency registry (listing: anyone; changes: the operator).
    Agency {
        #[command(subcommand)]
        command: AgencyCommand,
    },
    /// Statistics (the operator: all; an agency: its own).
    Stats {
        #[command(subcommand)]
        command: StatsCommand,
    },
    /// Webhook subscriptions of agencies and their parked events (the operator; SPEC.md §24).
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Erase an owner: every content unreadable at once, then removed (the owner or the operator).
    Erase {
        #[arg(value_parser = OwnerId::parse)]
        owner: OwnerId,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the checkpoint with the pinned vault key and prove it consistent with the last one seen.
    Verify,
}

#[derive(Debug, Subcommand)]
enum StatsCommand {
    /// Reuse statistics: checks, components held (reused) or missing, reads, bytes saved.
    Reuse {
        /// Grouping: procedure, agency, doc_type or month.
        #[arg(long, default_value = "procedure", value_parser = vault::engine::stats::GroupBy::parse)]
        by: vault::engine::stats::GroupBy,
        /// First day (YYYY-MM-DD, UTC), inclusive.
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, UTC), inclusive; default today.
        #[arg(long)]
        to: Option<String>,
        /// Print the server's CSV (for the national monitoring system).
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Subscribe an agency's endpoint to event types, or replace the subscription.
    Put {
        #[arg(value_parser = AgencyId::parse)]
        agency: AgencyId,
        #[arg(value_parser = WebhookId::parse)]
        id: WebhookId,
        /// Where events are POSTed (https://).
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (grant.created, grant.revoked, grant.expired,
        /// grant.exhausted, document.deposited, document.revoked, owner.erased).
        #[arg(long, value_delimiter = ',', required = true, value_parser = event_type)]
        events: Vec<EventType>,
    },
    /// A subscription: its URL, events, verifying key and outbox counts.
    Get {
        #[arg(value_parser = AgencyId::parse)]
        agency: AgencyId,
        #[arg(value_parser = WebhookId::parse)]
        id: WebhookId,
    },
    /// Delete a subscription with its waiting and parked events.
    Delete {
        #[arg(value_parser = AgencyId::parse)]
        agency: AgencyId,
        #[arg(value_parser = WebhookId::parse)]
        id: WebhookId,
    },
    /// Parked events, oldest first, one page.
    Failed {
        #[arg(value_parser = AgencyId::parse)]
        agency: AgencyId,
        #[arg(value_parser = WebhookId::parse)]
        id: WebhookId,
        /// Events after this event id (the `next` of the previous page).
        #[arg(long, value_parser = EventId::parse)]
        after: Option<EventId>,
        /// At most this many (1 to 1000; the server's default 100).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
    },
    /// Put a parked event back in the outbox (same event id, fresh retry window).
    Redeliver {
        #[arg(value_parser = AgencyId::parse)]
        agency: AgencyId,
        #[arg(value_parser = WebhookId::parse)]
        id: WebhookId,
        #[arg(value_parser = EventId::parse)]
        event: EventId,
    },
}

fn event_type(s: &str) -> Result<EventType, String> {
    serde_json::from_value(json!(s)).map_err(|_| {
        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        format!("unknown event type {s:?} (one of {})", names.join(", "))
    })
}

fn delivery_line(d: &Delivery) -> String {
    format!(
        "{} {:<18} attempts {} parked {} {}\n",
        d.event.id,
        d.event.kind.as_str(),
        d.attempts,
        d.parked_at.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        d.last_error.as_deref().unwrap_or("")
    )
}

fn webhook_text(w: &WebhookView) -> String {
    let events: Vec<&str> = w.webhook.events.iter().map(|t| t.as_str()).collect();
    format!(
        "webhook {}/{}\nurl: {}\nevents: {}\npublic key: {}\npending {}, retrying {}, parked {}\n",
        w.webhook.agency,
        w.webhook.id,
        w.webhook.url.as_str(),
        events.join(", "),
        w.public_key,
        w.pending,
        w.retrying,
        w.parked
    )
}

#[derive(Debug, Subcommand)]
enum AgencyCommand {
    /// Register or replace an agency (the operator).
    Put {
        #[arg(value_parser = AgencyId::parse)]
        id: AgencyId,
        /// Human name.
        #[arg(long)]
        name: String,
        /// A key: KEY_ID=BASE64_PUBLIC_KEY (no end of validity); repeatable.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
        /// Start of the keys' validity (default: now). Statements dated earlier need an earlier start.
        #[arg(long, value_parser = Timestamp::parse)]
        not_before: Option<Timestamp>,
    },
    /// List registered agencies.
    List,
}

#[derive(Debug, Args)]
struct DepositArgs {
    /// Files to deposit (all for --owner, of --doc-type), or one folder: its manifest.csv or
    /// manifest.json, or without one (with --owner and --doc-type) every file in it.
    files: Vec<PathBuf>,
    /// A CSV or JSON manifest (columns/fields: file, owner, doc_type, title, media_type,
    /// file_name, reference, issued_at, valid_from, valid_until, procedure).
    #[arg(long, conflicts_with = "files")]
    manifest: Option<PathBuf>,
    /// Every file's owner (with FILES).
    #[arg(long, value_parser = OwnerId::parse)]
    owner: Option<OwnerId>,
    /// Every file's type (with FILES).
    #[arg(long, value_parser = DocType::parse)]
    doc_type: Option<DocType>,
    /// Title (with one file; default: the file name).
    #[arg(long)]
    title: Option<String>,
    /// Reference (document number or dossier code).
    #[arg(long)]
    reference: Option<String>,
    /// The procedure that produced it.
    #[arg(long, value_parser = Purpose::parse)]
    procedure: Option<Purpose>,
    /// When issued (default: now).
    #[arg(long, value_parser = Timestamp::parse)]
    issued_at: Option<Timestamp>,
    /// Valid from.
    #[arg(long, value_parser = Timestamp::parse)]
    valid_from: Option<Timestamp>,
    /// Valid until.
    #[arg(long, value_parser = Timestamp::parse)]
    valid_until: Option<Timestamp>,
    /// Uploads and deposits in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The journal of acknowledged uploads and deposits (default: one per server, caller and
    /// input, beside the state file).
    #[arg(long)]
    journal: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GrantArgs {
    #[arg(value_parser = OwnerId::parse)]
    owner: OwnerId,
    /// The agency granted access.
    #[arg(long, value_parser = AgencyId::parse)]
    to: AgencyId,
    /// The procedure code the access is for.
    #[arg(long = "for", value_parser = Purpose::parse)]
    purpose: Purpose,
    /// The purpose in words, for the consent receipt.
    #[arg(long)]
    text: String,
    /// Document types covered (repeatable).
    #[arg(long = "doc-type", value_parser = DocType::parse)]
    doc_types: Vec<DocType>,
    /// Documents covered (repeatable).
    #[arg(long = "document", value_parser = DocumentId::parse)]
    documents: Vec<DocumentId>,
    /// Days until it expires.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Content reads allowed.
    #[arg(long)]
    max_uses: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.global.json;
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vault: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if json {
                let out = json!({"error": {"message": e.to_string(), "code": e.code(), "exit_code": e.exit_code()}});
                println!("{out}");
            }
            eprintln!("vault: {e}");
            if let Some(h) = e.hint() {
                eprintln!("  hint: {h}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

fn state_path(g: &Global) -> PathBuf {
    if let Some(p) = &g.state {
        return p.clone();
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("vault/state.json")
}

fn key_file(g: &Global) -> Result<KeyFile, Error> {
    let path =
        g.key_file.as_ref().ok_or_else(|| Error::Invalid("give the key file: --key-file or VAULT_KEY_FILE".into()))?;
    KeyFile::read(path)
}

fn client(g: &Global) -> Result<Client, Error> {
    let auth = if g.key_file.is_some() {
        let agency =
            g.agency.clone().ok_or_else(|| Error::Invalid("with a key file, say which agency: --agency".into()))?;
        let key_id =
            g.key_id.clone().ok_or_else(|| Error::Invalid("with a key file, give its key id: --key-id".into()))?;
        Auth::Agency(Arc::new(AgencyCredentials::new(agency, key_id, key_file(g)?)))
    } else if let Some(t) = &g.token {
        Auth::Bearer(t.clone())
    } else {
        Auth::None
    };
    Ok(Client::new(&g.server, auth)?.with_audience(&g.audience).with_purpose(g.purpose.clone()))
}

/// Prints `value` as JSON, or the human text.
fn out(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{}", text.trim_end());
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn doc_line(d: &vault_client::DocumentView) -> String {
    let m = &d.document.meta;
    format!(
        "{}  {:<16} {:<13} {:>10}  {}{}  {}",
        d.document.id,
        m.doc_type.as_str(),
        serde_json::to_value(d.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        d.document.size,
        if d.document.verified { "signed by " } else { "own upload" },
        m.issuer.as_ref().map(|a| a.as_str()).unwrap_or(""),
        m.title
    )
}

async fn run(cli: Cli) -> Result<u8, Error> {
    let g = &cli.global;
    let json = g.json;
    match cli.command {
        Command::Keygen { out: path } => {
            let k = KeyFile::generate();
            match &path {
                Some(p) => write_secret(p, &k.to_text())?,
                None if !json => print!("{}", k.to_text().as_str()),
                None => {}
            }
            let secret = if path.is_none() { Some(k.to_text().trim().to_owned()) } else { None };
            out(json, json!({"public_key": k.public_key(), "file": path, "secret_key": secret}), || match &path {
                Some(p) => format!("wrote {}\npublic key: {}", p.display(), k.public_key()),
                None => format!("# public key: {}", k.public_key()),
            });
        }
        Command::Token { lifetime, kid, iss, sub } => {
            let k = key_file(g)?;
            let agency = g.agency.as_ref().map(|a| a.as_str().to_owned());
            let pick = |v: Option<String>, d: Option<String>, what: &str| {
                v.or(d).ok_or_else(|| Error::Invalid(format!("say the token's {what} (or --agency / --key-id)")))
            };
            let kid = pick(kid, g.key_id.as_ref().map(|k| k.as_str().to_owned()), "--kid")?;
            let iss = pick(iss, agency.clone(), "--iss")?;
            let sub = pick(sub, agency, "--sub")?;
            let t = k.token(&kid, &iss, &sub, &g.audience, lifetime);
            out(json, json!({"token": t}), || t.clone());
        }
        Command::Digest { files } => {
            let mut all = Vec::new();
            for f in &files {
                let d = vault_client::digest_file(f).map_err(Error::io(f.clone()))?;
                all.push((f.clone(), d));
            }
            out(json, json!(all.iter().map(|(f, d)| json!({"file": f, "digest": d})).collect::<Vec<_>>()), || {
                all.iter().map(|(f, d)| format!("{d}  {}\n", f.display())).collect()
            });
        }
        Command::Deposit(a) => return deposit(g, a).await,
        Command::List { owner, doc_type } => {
            let docs = client(g)?.documents(&owner, doc_type.as_ref()).await?;
            out(json, json!({"documents": docs}), || {
                if docs.is_empty() {
                    return "no documents".into();
                }
                docs.iter().map(|d| doc_line(d) + "\n").collect()
            });
        }
        Command::Show { owner, id } => {
            let d = client(g)?.document(&owner, &id).await?;
            out(json, to_json(&d), || serde_json::to_string_pretty(&d).unwrap_or_default());
        }
        Command::Get { owner, id, out: dest, force } => {
            let c = client(g)?;
            if dest.as_deref() == Some(Path::new("-")) {
                let (v, bytes) = c.fetch(&owner, &id).await?;
                std::io::stdout().write_all(&bytes).map_err(Error::io("standard output"))?;
                eprintln!("vault: verified {} bytes{}", v.size, issuer_note(&v));
                return Ok(0);
            }
            let dest = match dest {
                Some(d) if !d.is_dir() => d,
                folder => {
                    // The name comes from the depositor: only a safe base name, in this folder.
                    let rec = c.document(&owner, &id).await?;
                    let name = rec.document.meta.file_name.as_deref().and_then(safe_file_name);
                    folder.unwrap_or_default().join(name.unwrap_or_else(|| id.to_string()))
                }
            };
            let v = if force {
                c.download_replacing(&owner, &id, &dest).await?
            } else {
                c.download(&owner, &id, &dest).await?
            };
            out(json, to_json(&v), || {
                format!("wrote {} ({} bytes, digest verified{})", dest.display(), v.size, issuer_note(&v))
            });
        }
        Command::Reuse { owner, doc_types, at } => {
            let purpose = g
                .purpose
                .clone()
                .ok_or_else(|| Error::Invalid("a reuse check is for a procedure: --purpose".into()))?;
            let comps = client(g)?.reuse(&owner, &purpose, &doc_types, at).await?;
            out(json, json!({"components": comps}), || {
                comps
                    .iter()
                    .map(|c| {
                        let status = to_json(&c.status).as_str().unwrap_or_default().to_owned();
                        match &c.document {
                            Some(d) => format!(
                                "{:<18} {:<12} {}  {}\n",
                                c.doc_type.as_str(),
                                status,
                                d.document.id,
                                d.document.meta.title
                            ),
                            None => format!("{:<18} {status}\n", c.doc_type.as_str()),
                        }
                    })
                    .collect()
            });
        }
        Command::Grant(a) => {
            let terms = NewGrant {
                grantee: a.to,
                purpose: a.purpose,
                purpose_text: a.text,
                doc_types: a.doc_types,
                documents: a.documents,
                expires_at: Timestamp::now().plus_seconds(a.days.saturating_mul(86_400)),
                max_uses: a.max_uses,
            };
            let gr = client(g)?.grant(&a.owner, &terms).await?;
            out(json, to_json(&gr), || {
                format!(
                    "granted {} to {} for {} until {}",
                    gr.grant.id,
                    gr.grant.terms.grantee,
                    gr.grant.terms.purpose.as_str(),
                    gr.grant.terms.expires_at
                )
            });
        }
        Command::Revoke { owner, grant } => {
            client(g)?.revoke_grant(&owner, &grant).await?;
            out(json, json!({"revoked": grant}), || format!("revoked grant {grant}"));
        }
        Command::Grants { owner } => {
            let c = client(g)?;
            let list = match &owner {
                Some(o) => c.grants(o).await?,
                None => c.my_grants().await?,
            };
            out(json, json!({"grants": list}), || {
                if list.is_empty() {
                    return "no grants".into();
                }
                list.iter()
                    .map(|gr| {
                        let t = &gr.grant.terms;
                        format!(
                            "{}  {:<10} {} → {} for {} until {} (uses {})\n",
                            gr.grant.id,
                            to_json(&gr.status).as_str().unwrap_or_default(),
                            gr.grant.owner,
                            t.grantee,
                            t.purpose.as_str(),
                            t.expires_at,
                            gr.grant.uses
                        )
                    })
                    .collect()
            });
        }
        Command::RevokeDocument { owner, id, reason } => {
            let d = client(g)?.revoke_document(&owner, &id, &reason).await?;
            out(json, to_json(&d), || format!("revoked document {}", d.document.id));
        }
        Command::Delete { owner, id } => {
            client(g)?.delete_document(&owner, &id).await?;
            out(json, json!({"deleted": id}), || format!("deleted document {id}"));
        }
        Command::Log { owner } => {
            let mut trust = TrustStore::load(&state_path(g))?;
            let (cp, entries) = client(g)?.verified_access_log(&owner, &mut trust).await?;
            out(json, json!({"checkpoint": {"size": cp.size, "origin": cp.origin}, "entries": entries}), || {
                let mut s = format!(
                    "{} entries, each proven in the checkpoint of size {} (verified)\n",
                    entries.len(),
                    cp.size
                );
                for e in &entries {
                    let e = &e.entry;
                    s.push_str(&format!(
                        "{:>7}  {}  {:<24} {:<18} {:<10} {}{}\n",
                        e.index,
                        e.time,
                        e.actor,
                        e.action,
                        e.purpose.as_ref().map(|p| p.as_str()).unwrap_or("-"),
                        e.outcome,
                        e.document.map(|d| format!("  {d}")).unwrap_or_default()
                    ));
                }
                s
            });
        }
        Command::Export { owner, out: dest } => {
            let c = client(g)?;
            let mut trust = TrustStore::load(&state_path(g))?;
            let cp = c.verified_checkpoint(&mut trust).await?;
            let key = trust.seen(c.base()).map(|s| s.vault_key.clone()).unwrap_or_default();
            let n = c.export(&owner, &dest).await?;
            let s = verify_file(&dest, &key)?;
            out(
                json,
                json!({"file": dest, "bytes": n, "documents": s.documents, "entries": s.entries, "verified": true}),
                || {
                    format!(
                    "wrote {} ({n} bytes): {} documents ({} signed), {} log entries, verified against the vault key (log size {} ≥ {})",
                    dest.display(), s.documents, s.signed_documents, s.entries, s.tree_size, cp.size
                )
                },
            );
        }
        Command::VerifyExport { file, vault_key } => {
            let key = match vault_key {
                Some(k) => k,
                None => TrustStore::load(&state_path(g))?
                    .seen(g.server.trim_end_matches('/'))
                    .map(|s| s.vault_key.clone())
                    .ok_or_else(|| {
                        Error::Invalid(
                            "give --vault-key (no key is pinned for this server; `vault audit verify` pins it)".into(),
                        )
                    })?,
            };
            let s = verify_file(&file, &key)?;
            out(
                json,
                json!({"owner": s.owner, "documents": s.documents, "signed_documents": s.signed_documents, "entries": s.entries, "tree_size": s.tree_size, "verified": true}),
                || {
                    format!(
                        "{}: verified — owner {}, {} documents ({} signed), {} log entries proven in a tree of {}",
                        file.display(),
                        s.owner,
                        s.documents,
                        s.signed_documents,
                        s.entries,
                        s.tree_size
                    )
                },
            );
        }
        Command::Audit { command: AuditCommand::Verify } => {
            let c = client(g)?;
            let mut trust = TrustStore::load(&state_path(g))?;
            let before = trust.seen(c.base()).map(|s| s.size);
            let cp = c.verified_checkpoint(&mut trust).await?;
            out(
                json,
                json!({"origin": cp.origin, "size": cp.size, "previous_size": before, "consistent": true}),
                || match before {
                    Some(b) => format!("checkpoint verified: {} entries, consistent with the {b} seen before", cp.size),
                    None => format!("checkpoint verified: {} entries (first time: vault key pinned)", cp.size),
                },
            );
        }
        Command::Agency { command: AgencyCommand::Put { id, name, keys, not_before } } => {
            let mut list = Vec::new();
            for k in keys {
                let (kid, pk) = k
                    .split_once('=')
                    .ok_or_else(|| Error::Invalid(format!("--key takes KEY_ID=BASE64_PUBLIC_KEY, not {k:?}")))?;
                list.push(AgencyKey {
                    id: KeyId::parse(kid).map_err(|e| Error::Invalid(format!("key id {kid:?}: {e}")))?,
                    public_key: PublicKey::parse(pk)
                        .map_err(|e| Error::Invalid(format!("public key of {kid}: {e}")))?,
                    not_before: not_before.unwrap_or_else(Timestamp::now),
                    not_after: None,
                });
            }
            let (a, created) = client(g)?.put_agency(&id, &NewAgency { name, keys: list }).await?;
            out(json, to_json(&a), || {
                format!("{} agency {} ({} keys)", if created { "registered" } else { "updated" }, a.id, a.keys.len())
            });
        }
        Command::Agency { command: AgencyCommand::List } => {
            let list = client(g)?.agencies().await?;
            out(json, json!({"agencies": list}), || {
                list.iter().map(|a| format!("{:<24} {} ({} keys)\n", a.id.as_str(), a.name, a.keys.len())).collect()
            });
        }
        Command::Webhooks { command } => webhooks(g, json, command).await?,
        Command::Stats { command: StatsCommand::Reuse { by, from, to, csv } } => {
            let c = client(g)?;
            if csv {
                print!("{}", c.reuse_stats_csv(by, from.as_deref(), to.as_deref()).await?);
            } else {
                let r = c.reuse_stats(by, from.as_deref(), to.as_deref()).await?;
                out(json, to_json(&r), || {
                    let mut t = format!(
                        "{} to {}, by {}\n{:<24} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                        r.from,
                        r.to,
                        r.by.as_str(),
                        r.by.as_str(),
                        "checks",
                        "components",
                        "held",
                        "missing",
                        "expired",
                        "revoked",
                        "reads"
                    );
                    for row in &r.rows {
                        let n = &row.counters;
                        t.push_str(&format!(
                            "{:<24} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                            row.group.as_deref().unwrap_or("-"),
                            n.reuse_checks,
                            n.components,
                            n.held,
                            n.missing,
                            n.expired,
                            n.revoked,
                            n.content_reads
                        ));
                    }
                    t.push_str(&format!("bytes not uploaded thanks to dedup: {}\n", r.total.bytes_not_uploaded));
                    t
                });
            }
        }
        Command::Erase { owner } => {
            let r = client(g)?.erase(&owner).await?;
            out(json, to_json(&r), || format!("erased; signed receipt:\n{}signature: {}", r.text, r.signature));
        }
    }
    Ok(0)
}

/// `vault webhooks ...` (the operator): the routes of SPEC.md §24.
async fn webhooks(g: &Global, json: bool, command: WebhooksCommand) -> Result<(), Error> {
    let c = client(g)?;
    match command {
        WebhooksCommand::Put { agency, id, url, events } => {
            let url = WebhookUrl::parse(&url).map_err(|e| Error::Invalid(e.to_string()))?;
            let (w, created) = c.put_webhook(&agency, &id, &NewWebhook { url, events }).await?;
            out(json, to_json(&w), || {
                format!("{} {}", if created { "subscribed:" } else { "replaced:" }, webhook_text(&w))
            });
        }
        WebhooksCommand::Get { agency, id } => {
            let w = c.webhook(&agency, &id).await?;
            out(json, to_json(&w), || webhook_text(&w));
        }
        WebhooksCommand::Delete { agency, id } => {
            c.delete_webhook(&agency, &id).await?;
            out(json, json!({"deleted": {"agency": agency, "id": id}}), || format!("deleted webhook {agency}/{id}"));
        }
        WebhooksCommand::Failed { agency, id, after, limit } => {
            let (events, next) = c.failed_events(&agency, &id, after.as_ref(), limit.map(usize::from)).await?;
            out(json, json!({"events": events, "next": next}), || {
                let mut t: String = events.iter().map(delivery_line).collect();
                if events.is_empty() {
                    t.push_str("no parked events\n");
                }
                if let Some(n) = next {
                    t.push_str(&format!("more: --after {n}\n"));
                }
                t
            });
        }
        WebhooksCommand::Redeliver { agency, id, event } => {
            let d = c.redeliver(&agency, &id, &event).await?;
            out(json, to_json(&d), || format!("queued again: {}", delivery_line(&d)));
        }
    }
    Ok(())
}

fn issuer_note(v: &vault_client::Verified) -> String {
    match (&v.document.document.meta.issuer, v.issuer_verified) {
        (Some(i), true) => format!(", issuer signature of {i} verified"),
        _ => ", an owner's own upload (no issuer signature)".into(),
    }
}

fn verify_file(path: &Path, vault_key: &str) -> Result<vault_client::ExportSummary, Error> {
    let f = std::fs::File::open(path).map_err(Error::io(path))?;
    vault_client::verify_export(std::io::BufReader::new(f), vault_key)
        .map_err(|e| Error::Verification(format!("{}: {e}", path.display())))
}

fn write_secret(path: &Path, text: &str) -> Result<(), Error> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::Invalid(format!("{} exists; not overwriting a key", path.display()))
        }
        _ => Error::io(path)(e),
    })?;
    f.write_all(text.as_bytes()).map_err(Error::io(path))
}

/// The progress bar: bytes, files, skipped-as-held and rate.
struct Bar {
    bar: indicatif::ProgressBar,
    counts: std::sync::Mutex<(u64, u64, u64, u64)>,
}

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        self.bar.set_length(bytes);
        if let Ok(mut c) = self.counts.lock() {
            c.3 = files;
        }
    }
    fn file_done(&self, bytes: u64, outcome: Outcome) {
        let Ok(mut c) = self.counts.lock() else { return };
        match outcome {
            Outcome::Uploaded => c.0 += 1,
            Outcome::Held => c.1 += 1,
            Outcome::Failed => c.2 += 1,
        }
        self.bar.set_message(format!("files {}/{} · held {} · failed {}", c.0 + c.1 + c.2, c.3, c.1, c.2));
        self.bar.inc(bytes);
    }
}

async fn deposit(g: &Global, a: DepositArgs) -> Result<u8, Error> {
    // A folder: its manifest.csv / manifest.json, or (with --owner and --doc-type) its files.
    let mut a = a;
    if a.manifest.is_none() && a.files.len() == 1 && a.files[0].is_dir() {
        let dir = a.files[0].clone();
        let found = ["manifest.csv", "manifest.json"].into_iter().map(|m| dir.join(m)).find(|p| p.is_file());
        match found {
            Some(m) => {
                a.manifest = Some(m);
                a.files.clear();
            }
            None if a.owner.is_some() && a.doc_type.is_some() => {
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map_err(Error::io(&dir))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                files.sort();
                a.files = files;
            }
            None => {
                return Err(Error::Invalid(format!(
                "{} has no manifest.csv or manifest.json; add one, or give --owner and --doc-type for all its files",
                dir.display()
            )))
            }
        }
    }
    let items: Vec<Item> = match &a.manifest {
        Some(m) => bulk::read_manifest(m)?,
        None => {
            if a.files.is_empty() {
                return Err(Error::Invalid("give files, a folder, or --manifest FILE".into()));
            }
            let owner =
                a.owner.clone().ok_or_else(|| Error::Invalid("with files, say whose they are: --owner".into()))?;
            let doc_type =
                a.doc_type.clone().ok_or_else(|| Error::Invalid("with files, say their type: --doc-type".into()))?;
            if a.title.is_some() && a.files.len() > 1 {
                return Err(Error::Invalid("--title is for one file; use a manifest for several titles".into()));
            }
            a.files
                .iter()
                .map(|f| Item {
                    file: f.clone(),
                    owner: owner.clone(),
                    doc_type: doc_type.clone(),
                    title: a.title.clone(),
                    media_type: None,
                    file_name: None,
                    reference: a.reference.clone(),
                    issued_at: a.issued_at,
                    valid_from: a.valid_from,
                    valid_until: a.valid_until,
                    procedure: a.procedure.clone(),
                })
                .collect()
        }
    };
    let c = client(g)?;
    // One journal per server, caller and input, beside the state file.
    let journal = a.journal.clone().unwrap_or_else(|| {
        let mut h = blake3::Hasher::new();
        h.update(c.base().as_bytes());
        h.update(
            format!("{:?}|{:?}|{:?}", g.agency, g.token.as_ref().map(|t| blake3::hash(t.as_bytes())), a.manifest)
                .as_bytes(),
        );
        for it in &items {
            h.update(it.file.as_os_str().as_encoded_bytes());
        }
        let dir = state_path(g).parent().map(Path::to_path_buf).unwrap_or_default();
        dir.join("deposits").join(format!("{}.journal", &h.finalize().to_hex()[..32]))
    });
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(0),
        if g.json { indicatif::ProgressDrawTarget::hidden() } else { indicatif::ProgressDrawTarget::stderr() },
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed_precise} {msg}",
    ) {
        bar.set_style(style);
    }
    let progress = Bar { bar, counts: Default::default() };
    let opts = bulk::Options { concurrency: a.concurrency, journal: Some(journal), ..Default::default() };
    let s = bulk::deposit(&c, items, &opts, &progress).await;
    progress.bar.finish_and_clear();
    let mb = s.uploaded_bytes as f64 / 1e6;
    out(g.json, to_json(&s), || {
        let mut t = format!(
            "{} files ({:.1} MB) in {:.1} s: {} uploaded ({mb:.1} MB, {:.1} MB/s), {} already held (skipped), {} documents created, {} already deposited, {} failed\n",
            s.files,
            s.bytes as f64 / 1e6,
            s.seconds,
            s.uploaded_files,
            if s.seconds > 0.0 { mb / s.seconds } else { 0.0 },
            s.held_files,
            s.deposited,
            s.already_deposited,
            s.failed.len()
        );
        for (f, e) in s.failed.iter().take(20) {
            t.push_str(&format!("  failed: {}: {e}\n", f.display()));
        }
        if s.failed.len() > 20 {
            t.push_str(&format!("  ... and {} more (use --json for all)\n", s.failed.len() - 20));
        }
        t
    });
    Ok(if s.failed.is_empty() { 0 } else { 7 })
}
