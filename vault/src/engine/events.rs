//! Events for the dossier systems (SPEC.md §24): per-agency webhook subscriptions, an outbox
//! written in the same atomic batch as the change that causes each event, and what the delivery
//! worker (in `vault-server`) needs: the due deliveries, their outcome, the parked ones, and the
//! Standard Webhooks `v1a` (Ed25519) signature.
//!
//! Records (all sealed with the vault-records key, like the agency registry):
//! - `W` ‖ agency ‖ 0 ‖ webhook id: a subscription;
//! - `Q` ‖ agency ‖ 0 ‖ webhook id ‖ 0 ‖ event id (16 bytes): a delivery waiting (or retrying);
//! - `F` ‖ (same): a parked delivery (failed for the whole retry window, or parked at once
//!   because its subscription already had [`MAX_WAITING_PER_WEBHOOK`] events waiting);
//! - `Y` ‖ agency ‖ 0 ‖ webhook id ‖ 0 ‖ next_attempt (8 bytes) ‖ event id: the due-time index,
//!   one entry per `Q` record, written and deleted in the same batch as it, so the worker reads
//!   only what is due;
//! - `Z` ‖ agency ‖ 0 ‖ webhook id ‖ 0 ‖ parked_at (8 bytes) ‖ event id: one entry per `F`
//!   record, so the sweep finds the parked events past [`PARKED_RETENTION_SECS`] without
//!   reading the others;
//! - `K` ‖ expires_at (8 bytes) ‖ owner ref ‖ grant id: a grant whose `grant.expired` event is
//!   still to be emitted. The sweep deletes it in the same batch as it writes the event, so the
//!   event is emitted exactly once.
//!
//! An agency is told only what it already knows: about its own grants (`grant.*`), about the
//! documents it issued and signed (`document.*`), and that an owner it holds a grant of, or
//! issued a signed document to, was erased. No content, no other owner's data.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::access::{Caller, Principal};
use crate::crypto::seal::{self, aad};
use crate::engine::document::Document;
use crate::engine::grants::Grant;
use crate::engine::vault::{OwnerRef, Vault};
use crate::ids::{AgencyId, IdError, OwnerId};
use crate::log::audit::Draft;
use crate::storage::layout::{self, prefix, KEY_OUTBOX_INDEXED, KEY_WEBHOOKS_VERSION};
use crate::storage::Op;
use crate::time::Timestamp;
use crate::Error;

/// Longest subscription URL, in bytes.
pub const MAX_URL: usize = 2048;
/// Most subscriptions one agency may have.
pub const MAX_WEBHOOKS_PER_AGENCY: usize = 16;

/// The change of [`KEY_WEBHOOKS_VERSION`] that goes with a change of a subscription.
fn webhooks_version_op() -> Op {
    Op::Put(KEY_WEBHOOKS_VERSION.to_vec(), crate::ids::GrantId::random().as_bytes().to_vec())
}
/// Longest `last_error` kept with a delivery.
const MAX_ERROR: usize = 300;
/// Most events waiting (in `Q`: first attempt or retrying) per subscription. An event for a
/// subscription that has this many is parked at once (`last_error` [`OUTBOX_FULL`]) instead:
/// the change that causes it never fails or waits because of the outbox (SPEC.md §24).
pub const MAX_WAITING_PER_WEBHOOK: u64 = 10_000;
/// The `last_error` of an event parked because its subscription's outbox was full.
pub const OUTBOX_FULL: &str = "outbox full: the subscription already had 10000 events waiting";
/// How long a parked event is kept (after `parked_at`) before the sweep deletes it: 30 days.
pub const PARKED_RETENTION_SECS: i64 = 30 * 24 * 3600;
/// Most records one sweep batch deletes.
const SWEEP_BATCH: usize = 1000;

/// An event type (SPEC.md §24, "Event types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventType {
    /// A grant to the agency was created (to the grantee).
    #[serde(rename = "grant.created")]
    GrantCreated,
    /// A grant to the agency was revoked by its owner (to the grantee).
    #[serde(rename = "grant.revoked")]
    GrantRevoked,
    /// A grant to the agency reached its `expires_at` (to the grantee; emitted by the sweep).
    #[serde(rename = "grant.expired")]
    GrantExpired,
    /// A grant's last allowed content read was used (to the grantee).
    #[serde(rename = "grant.exhausted")]
    GrantExhausted,
    /// A document the agency issued and signed was deposited (to the issuer).
    #[serde(rename = "document.deposited")]
    DocumentDeposited,
    /// A document the agency issued and signed was revoked (to the issuer).
    #[serde(rename = "document.revoked")]
    DocumentRevoked,
    /// An owner the agency holds a grant of, or issued a signed document to, was erased.
    #[serde(rename = "owner.erased")]
    OwnerErased,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 7] = [
        Self::GrantCreated,
        Self::GrantRevoked,
        Self::GrantExpired,
        Self::GrantExhausted,
        Self::DocumentDeposited,
        Self::DocumentRevoked,
        Self::OwnerErased,
    ];

    /// The wire name (`grant.created`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrantCreated => "grant.created",
            Self::GrantRevoked => "grant.revoked",
            Self::GrantExpired => "grant.expired",
            Self::GrantExhausted => "grant.exhausted",
            Self::DocumentDeposited => "document.deposited",
            Self::DocumentRevoked => "document.revoked",
            Self::OwnerErased => "owner.erased",
        }
    }
}

/// A subscription id: the shared name alphabet (`a-z 0-9 . _ -`, 1 to 64 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(String);

impl WebhookId {
    /// Parses a webhook id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        AgencyId::parse(s).map_err(|e| IdError { kind: "webhook id", reason: e.reason })?;
        Ok(Self(s.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WebhookId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for WebhookId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WebhookId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An event id: `msg_` and 32 lowercase hex characters (8 bytes of creation time in
/// microseconds, 8 random bytes), stable across every delivery attempt (the receiver's
/// idempotency key, the `webhook-id` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId([u8; 16]);

impl EventId {
    fn fresh() -> Self {
        let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(micros as u64).to_be_bytes());
        b[8..].copy_from_slice(&crate::crypto::keys::random_array::<8>());
        Self(b)
    }

    /// Parses `msg_<32 hex>`.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let e = IdError { kind: "event id", reason: "it is `msg_` followed by 32 lowercase hex characters" };
        let h = s.strip_prefix("msg_").ok_or(e.clone())?;
        if h.len() != 32 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(e);
        }
        let mut b = [0u8; 16];
        hex::decode_to_slice(h, &mut b).map_err(|_| e)?;
        Ok(Self(b))
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msg_{}", hex::encode(self.0))
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A subscription URL: `https://host[:port]/path[?query]`, or `http://` (allowed only to
/// loopback by a `--dev` server, see [`UrlPolicy`]); no user info, no fragment, at most
/// [`MAX_URL`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses and checks the syntax (not the [`UrlPolicy`]).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::InvalidRequest(format!("url: {why}"));
        if s.len() > MAX_URL {
            return Err(bad(&format!("at most {MAX_URL} bytes")));
        }
        let u = url::Url::parse(s).map_err(|e| bad(&format!("not a URL ({e})")))?;
        // Measured again as stored: percent-encoding and punycode can make it longer.
        if u.as_str().len() > MAX_URL {
            return Err(bad(&format!("at most {MAX_URL} bytes")));
        }
        if !matches!(u.scheme(), "https" | "http") {
            return Err(bad("only https:// URLs are accepted"));
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad("no user name or password in the URL"));
        }
        if u.fragment().is_some() {
            return Err(bad("no #fragment"));
        }
        if u.host().is_none() {
            return Err(bad("no host"));
        }
        Ok(Self(u))
    }

    /// The URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Serialize for WebhookUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for WebhookUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

/// Which targets a subscription may have (no server-side request forgery; SPEC.md §24, "SSRF").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// `--dev`: `http://` to loopback is allowed (and loopback addresses are).
    pub dev: bool,
    /// `--webhook-allow-private`: private, link-local and loopback addresses are allowed.
    pub allow_private: bool,
}

/// Whether `ip` is a public unicast address (not private, loopback, link-local, multicast,
/// unspecified, broadcast, documentation, shared/CGNAT, benchmarking or reserved; IPv4-mapped
/// and -compatible IPv6 addresses are judged as their IPv4 address).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4() {
                // ::ffff:a.b.c.d and ::a.b.c.d (but ::1 and :: are judged below).
                if !(v6.is_loopback() || v6.is_unspecified()) {
                    return is_public(IpAddr::V4(v4));
                }
            }
            let s = v6.segments();
            // Only global unicast (2000::/3) is public, less the special ranges inside it:
            // Teredo and the other IETF protocol assignments (2001::/23), documentation
            // (2001:db8::/32, 3fff::/20), 6to4 (2002::/16, which can carry a private IPv4).
            let special = match s[0] {
                0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
                0x2002 => true,
                x => (x & 0xfff0) == 0x3ff0,
            };
            (s[0] & 0xe000) == 0x2000 && !special
        }
    }
}

impl UrlPolicy {
    /// Whether a connection to `ip` is allowed.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow_private || (self.dev && ip.is_loopback())
    }

    /// Checks a subscription URL: its scheme, and its host if that is an IP address (a host
    /// name is checked after resolution, at every delivery).
    pub fn check(&self, u: &WebhookUrl) -> Result<(), Error> {
        let bad = |why: String| Error::InvalidRequest(format!("url: {why}"));
        let host = u.0.host().ok_or_else(|| bad("no host".into()))?;
        let ip = match host {
            url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
            url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
            url::Host::Domain(_) => None,
        };
        if u.0.scheme() == "http" {
            let loopback = ip.is_some_and(|ip| ip.is_loopback()) || u.0.host_str() == Some("localhost");
            if !(self.dev && loopback) {
                return Err(bad("only https:// URLs are accepted (http:// only to loopback, with --dev)".into()));
            }
        }
        if let Some(ip) = ip {
            if !self.allows_ip(ip) {
                return Err(bad(format!(
                    "{ip} is not a public address (private, loopback, link-local and other special targets are refused \
                     unless the server runs with --webhook-allow-private)"
                )));
            }
        }
        Ok(())
    }
}

/// What the operator sends to subscribe (the request body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewWebhook {
    /// Where events are POSTed.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "https://dossier.example.vn/hooks/vault"))]
    pub url: WebhookUrl,
    /// The event types wanted (at least one; no repeats).
    pub events: Vec<EventType>,
}

/// A stored subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// The agency told.
    pub agency: AgencyId,
    /// The subscription id.
    pub id: WebhookId,
    /// Where events are POSTed.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub url: WebhookUrl,
    /// The event types sent.
    pub events: Vec<EventType>,
    /// When first created.
    pub created_at: Timestamp,
    /// When last replaced.
    pub updated_at: Timestamp,
}

/// A subscription as the operator sees it: the record, the verifying key and the outbox counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookView {
    /// The subscription.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The key receivers verify `v1a` signatures with: `whpk_` + standard base64 of the 32-byte
    /// Ed25519 public key.
    pub public_key: String,
    /// Events waiting for delivery (first attempt or retrying).
    pub pending: u64,
    /// Of those, how many had at least one failed attempt.
    pub retrying: u64,
    /// Parked events (see `/failed`).
    pub parked: u64,
}

/// An event: what the body says, and its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// The event id (`webhook-id`).
    pub id: EventId,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// When the change happened.
    pub timestamp: Timestamp,
    /// What happened, as ids the agency already knows (SPEC.md §24).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Value,
}

impl Event {
    /// The delivered body: `{"type", "timestamp", "data"}` as JSON.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"type": self.kind, "timestamp": self.timestamp, "data": self.data}))
            .unwrap_or_default()
    }
}

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The agency.
    pub agency: AgencyId,
    /// The subscription.
    pub webhook: WebhookId,
    /// Attempts that failed.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failure: Option<Timestamp>,
    /// Not before this time.
    pub next_attempt: Timestamp,
    /// Why the last attempt failed (status or transport error; never the response body).
    pub last_error: Option<String>,
    /// When it was parked.
    pub parked_at: Option<Timestamp>,
}

/// A waiting delivery as the worker read it (opaque): its `Q` key and its due-time index entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryKey {
    q: Vec<u8>,
    due: Vec<u8>,
    agency: AgencyId,
    webhook: WebhookId,
}

/// What one [`Vault::sweep_outbox`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxSweep {
    /// Parked events deleted after [`PARKED_RETENTION_SECS`].
    pub expired: u64,
    /// Records (`Q`, `F`, `Y`, `Z`) of subscriptions that no longer exist, deleted.
    pub orphans: u64,
    /// Events parked because their outbox was full, put back once it had room again.
    pub requeued: u64,
}

/// The Ed25519 key that signs deliveries, derived from the vault's signing seed (never stored
/// on its own, never printed).
pub(crate) struct WebhookSigner(SigningKey);

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner([redacted])")
    }
}

impl WebhookSigner {
    /// Derived from the vault's signing seed (BLAKE3 KDF with its own context).
    pub(crate) fn derive(seed: &[u8; 32]) -> Self {
        let key = crate::crypto::keys::SecretKey::from_bytes(*seed).derive(crate::crypto::keys::ctx::WEBHOOK_SIGNING);
        Self(SigningKey::from_bytes(key.expose()))
    }
}

/// The signed content of Standard Webhooks: `{id}.{timestamp}.{body}`.
pub fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut m = format!("{id}.{timestamp}.").into_bytes();
    m.extend_from_slice(body);
    m
}

/// In-memory state: the subscriptions (loaded at first use, kept in step with every change).
#[derive(Debug, Default)]
pub(crate) struct EventState {
    subs: Mutex<Option<Subs>>,
    /// The value of [`KEY_WEBHOOKS_VERSION`] when `subs` was loaded (shared stores only).
    subs_version: Mutex<Option<Vec<u8>>>,
    /// Serialises the rewrites of outbox records (failed attempts, redelivery, delivery, the
    /// sweep, an erasure's deletions) with the deletion of a subscription's records. Taken after
    /// `subs` when both are; never taken by a holder of the audit turn.
    outbox: Mutex<()>,
    /// Events waiting per subscription, counted lazily (a bounded key scan) and kept in step
    /// by the outbox's writers; forgotten by each sweep and erasure (then counted again), so a
    /// change that failed after its events were counted cannot skew the cap for long. Taken
    /// last (under `subs` or `outbox`), never held while taking another lock.
    waiting: Mutex<HashMap<(AgencyId, WebhookId), u64>>,
    /// Events parked at once because their subscription's outbox was full (since the start).
    outbox_full: AtomicU64,
}

/// The name of the outbox's lock in a shared store.
const OUTBOX_LOCK: &str = "vault-outbox";

/// The outbox's lock ([`Vault::outbox_lock`]); the store's part is released first.
pub(crate) struct OutboxGuard<'a> {
    _remote: Option<crate::storage::RemoteLock>,
    _local: MutexGuard<'a, ()>,
}

/// Every subscription, by agency and id.
type Subs = BTreeMap<(AgencyId, WebhookId), Webhook>;

fn sub_key(agency: &AgencyId, id: &WebhookId) -> Vec<u8> {
    layout::webhook_key(agency.as_str().as_bytes(), id.as_str().as_bytes())
}

fn outbox_prefix(p: u8, agency: &AgencyId, id: &WebhookId) -> Vec<u8> {
    layout::outbox_prefix(p, agency.as_str().as_bytes(), id.as_str().as_bytes())
}

fn outbox_key(p: u8, agency: &AgencyId, id: &WebhookId, event: &EventId) -> Vec<u8> {
    layout::outbox_key(p, agency.as_str().as_bytes(), id.as_str().as_bytes(), &event.0)
}

/// A time as 8 key bytes, offset so that key order is time order for every representable time.
fn time_bytes(t: Timestamp) -> [u8; 8] {
    (t.unix() as u64 ^ (1 << 63)).to_be_bytes()
}

fn expiry_key(op: &OwnerRef, g: &Grant) -> Vec<u8> {
    layout::grant_expiry_key(&time_bytes(g.terms.expires_at), op, g.id.as_bytes())
}

/// An index entry (`Y` or `Z`) of a subscription: its prefix, the time, the event id.
fn index_key(p: u8, agency: &AgencyId, id: &WebhookId, t: Timestamp, event: &EventId) -> Vec<u8> {
    layout::outbox_index_key(p, agency.as_str().as_bytes(), id.as_str().as_bytes(), &time_bytes(t), &event.0)
}

/// The due-time index entry of a waiting delivery.
fn due_key(d: &Delivery) -> Vec<u8> {
    index_key(prefix::OUTBOX_DUE, &d.agency, &d.webhook, d.next_attempt, &d.event.id)
}

/// The retention index entry of a parked delivery.
fn parked_key(d: &Delivery) -> Vec<u8> {
    index_key(prefix::PARKED_AT, &d.agency, &d.webhook, d.parked_at.unwrap_or(d.next_attempt), &d.event.id)
}

/// The subscription and the rest of an outbox-family key (`Q`, `F`, `Y`, `Z`): `None` if it is
/// not of that shape.
fn split_outbox_key(k: &[u8]) -> Option<(AgencyId, WebhookId, &[u8])> {
    let rest = k.get(1..)?;
    let a = rest.iter().position(|&b| b == 0)?;
    let after = &rest[a + 1..];
    let w = after.iter().position(|&b| b == 0)?;
    let agency = AgencyId::parse(std::str::from_utf8(&rest[..a]).ok()?).ok()?;
    let webhook = WebhookId::parse(std::str::from_utf8(&after[..w]).ok()?).ok()?;
    Some((agency, webhook, &after[w + 1..]))
}

fn corrupt(k: &[u8]) -> Error {
    Error::Corrupt(crate::engine::vault::describe_key(k))
}

/// The `data` of a grant event.
fn grant_data(g: &Grant) -> Value {
    json!({
        "grant": g.id,
        "owner": g.owner,
        "purpose": g.terms.purpose,
        "expires_at": g.terms.expires_at,
    })
}

impl Vault {
    fn seal_vault<T: Serialize>(&self, key: &[u8], v: &T) -> Vec<u8> {
        seal::seal(&self.vault_records, &aad(key), &serde_json::to_vec(v).unwrap_or_default())
    }

    fn open_vault<T: for<'de> Deserialize<'de>>(&self, key: &[u8], v: &[u8]) -> Result<T, Error> {
        let plain = seal::open(&self.vault_records, &aad(key), v).map_err(|_| corrupt(key))?;
        serde_json::from_slice(&plain).map_err(|_| corrupt(key))
    }

    ///
    /// On a shared store it is taken in the store too (the lock `vault-outbox`), so that
    /// the deliverer at one instance never rewrites a record an erasure or a subscription's
    /// deletion at another removed (SPEC.md §9a "Several instances").
    pub(crate) fn outbox_lock(&self) -> Result<OutboxGuard<'_>, Error> {
        let local = self.events.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let remote = self.meta().lock(crate::storage::LockName::Named(OUTBOX_LOCK))?;
        Ok(OutboxGuard { _remote: remote, _local: local })
    }

    /// The counts of waiting events (the guarded map holds no invariant a panic could break).
    fn waiting(&self) -> MutexGuard<'_, HashMap<(AgencyId, WebhookId), u64>> {
        self.events.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every count of waiting events: each is counted again when next needed.
    pub(crate) fn forget_waiting_counts(&self) {
        self.waiting().clear();
    }

    /// Adds `n` (may be negative) to a subscription's count of waiting events, if counted.
    fn count_waiting(&self, agency: &AgencyId, id: &WebhookId, n: i64) {
        if let Some(c) = self.waiting().get_mut(&(agency.clone(), id.clone())) {
            *c = c.saturating_add_signed(n);
        }
    }

    /// Events parked at once because their subscription's outbox was full, since the start.
    pub fn outbox_full_total(&self) -> u64 {
        self.events.outbox_full.load(Ordering::Relaxed)
    }

    fn subs(&self) -> Result<MutexGuard<'_, Option<Subs>>, Error> {
        let mut g = self.events.subs.lock().unwrap_or_else(|p| p.into_inner());
        if self.meta().shared() {
            // Another instance may have changed a subscription since they were loaded.
            let now = self.meta().get(KEY_WEBHOOKS_VERSION)?;
            let mut seen = self.events.subs_version.lock().unwrap_or_else(|p| p.into_inner());
            if *seen != now {
                *g = None;
                *seen = now;
            }
        }
        if g.is_none() {
            let mut all = BTreeMap::new();
            for item in self.meta().scan(&[prefix::WEBHOOK]) {
                let (k, v) = item?;
                let w: Webhook = self.open_vault(&k, &v)?;
                all.insert((w.agency.clone(), w.id.clone()), w);
            }
            self.index_outbox()?;
            *g = Some(all);
        }
        Ok(g)
    }

    /// Writes the missing index entries (`Y`, `Z`) of outbox and parked records written before
    /// the indexes existed, once in the vault's life: the batch records it (`Moutbox-indexed`),
    /// so later a missing entry is damage that `check` reports, not something repaired quietly.
    fn index_outbox(&self) -> Result<(), Error> {
        // Done once in the vault's life: no lock needed to see that it was.
        if self.meta().get(KEY_OUTBOX_INDEXED)?.is_some() {
            return Ok(());
        }
        let _outbox = self.outbox_lock()?;
        if self.meta().get(KEY_OUTBOX_INDEXED)?.is_some() {
            return Ok(());
        }
        let mut ops = vec![Op::Put(KEY_OUTBOX_INDEXED.to_vec(), b"1".to_vec())];
        for (p, index) in [(prefix::OUTBOX, due_key as fn(&Delivery) -> Vec<u8>), (prefix::PARKED, parked_key)] {
            for item in self.meta().scan(&[p]) {
                let (k, v) = item?;
                // A damaged record is left to `check`.
                let Ok(d) = self.open_vault::<Delivery>(&k, &v) else { continue };
                let i = index(&d);
                if self.meta().get(&i)?.is_none() {
                    ops.push(self.index_put(i));
                }
            }
        }
        self.apply_durable(ops)?;
        Ok(())
    }

    /// An index entry: its key, an authenticated empty value.
    fn index_put(&self, key: Vec<u8>) -> Op {
        let v = seal::seal(&self.vault_records, &aad(&key), b"");
        Op::Put(key, v)
    }

    /// The ops that put `d` in the outbox: its `Q` record and due-time entry.
    fn queue_ops(&self, d: &Delivery) -> [Op; 2] {
        let key = outbox_key(prefix::OUTBOX, &d.agency, &d.webhook, &d.event.id);
        [Op::Put(key.clone(), self.seal_vault(&key, d)), self.index_put(due_key(d))]
    }

    /// The ops that park `d`: its `F` record and retention entry.
    fn park_ops(&self, d: &Delivery) -> [Op; 2] {
        let key = outbox_key(prefix::PARKED, &d.agency, &d.webhook, &d.event.id);
        [Op::Put(key.clone(), self.seal_vault(&key, d)), self.index_put(parked_key(d))]
    }

    /// Events waiting for a subscription: the count kept, else counted now (a scan of at most
    /// [`MAX_WAITING_PER_WEBHOOK`] keys, once; then kept in step).
    fn waiting_for(&self, agency: &AgencyId, id: &WebhookId) -> Result<u64, Error> {
        let mut counts = self.waiting();
        let key = (agency.clone(), id.clone());
        if let Some(n) = counts.get(&key) {
            return Ok(*n);
        }
        let mut n = 0u64;
        for item in self.meta().scan(&outbox_prefix(prefix::OUTBOX, agency, id)) {
            item?;
            n += 1;
            if n >= MAX_WAITING_PER_WEBHOOK {
                break;
            }
        }
        counts.insert(key, n);
        Ok(n)
    }

    /// The outbox records of one event for `agency`: one per subscription that wants `kind`
    /// (none when no subscription does). Call with the change's other ops, in its batch.
    /// Fails (and so fails the change: fail closed) only if the subscriptions cannot be read.
    pub(crate) fn event_ops(
        &self,
        agency: &AgencyId,
        kind: EventType,
        data: Value,
        at: Timestamp,
    ) -> Result<Vec<Op>, Error> {
        self.event_ops_at(agency, kind, data, at, Timestamp::now())
    }

    /// [`Vault::event_ops`] of a change made at `now` (the sweep's time), which is when an
    /// event parked at once (full outbox) is parked.
    fn event_ops_at(
        &self,
        agency: &AgencyId,
        kind: EventType,
        data: Value,
        at: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<Op>, Error> {
        let subs = self.subs()?;
        let Some(subs) = subs.as_ref() else { return Ok(Vec::new()) };
        let id = EventId::fresh();
        let mut ops = Vec::new();
        for ((a, wid), w) in subs.range((agency.clone(), WebhookId(String::new()))..) {
            if a != agency {
                break;
            }
            if !w.events.contains(&kind) {
                continue;
            }
            // The receiving agency and subscription are in the signed body: every agency
            // verifies with the same vault key, so a receiver that checks them refuses a
            // delivery replayed to it by another agency (SPEC.md §24).
            let mut data = data.clone();
            if let Some(m) = data.as_object_mut() {
                m.insert("agency".into(), json!(a));
                m.insert("webhook".into(), json!(wid));
            }
            let mut d = Delivery {
                event: Event { id, kind, timestamp: at, data },
                agency: a.clone(),
                webhook: wid.clone(),
                attempts: 0,
                first_failure: None,
                next_attempt: at,
                last_error: None,
                parked_at: None,
            };
            // A full outbox parks the event at once rather than fail or hold up the change:
            // the operator sees it in `/failed` (and the metric) and can redeliver it.
            if self.waiting_for(a, wid)? >= MAX_WAITING_PER_WEBHOOK {
                // Parked now (not at the event's time, which for `grant.expired` is the expiry,
                // perhaps long past): the retention counts from here.
                d.parked_at = Some(now.max(at));
                d.last_error = Some(OUTBOX_FULL.to_owned());
                ops.extend(self.park_ops(&d));
                self.events.outbox_full.fetch_add(1, Ordering::Relaxed);
            } else {
                ops.extend(self.queue_ops(&d));
                self.count_waiting(a, wid, 1);
            }
        }
        Ok(ops)
    }

    /// The ops a new grant adds: its `grant.created` event and its expiry record.
    pub(crate) fn grant_created_ops(&self, op: &OwnerRef, g: &Grant) -> Result<Vec<Op>, Error> {
        let mut ops = self.event_ops(&g.terms.grantee, EventType::GrantCreated, grant_data_created(g), g.created_at)?;
        let k = expiry_key(op, g);
        ops.push(Op::Put(k.clone(), self.seal_vault(&k, &g.terms.grantee)));
        Ok(ops)
    }

    /// The ops of a grant's revocation: its `grant.revoked` event; its expiry record goes.
    pub(crate) fn grant_revoked_ops(&self, op: &OwnerRef, g: &Grant, at: Timestamp) -> Result<Vec<Op>, Error> {
        let mut data = grant_data(g);
        data["revoked_at"] = json!(at);
        let mut ops = self.event_ops(&g.terms.grantee, EventType::GrantRevoked, data, at)?;
        ops.push(Op::Delete(expiry_key(op, g)));
        Ok(ops)
    }

    /// The ops of a grant's last allowed use: its `grant.exhausted` event.
    pub(crate) fn grant_exhausted_ops(&self, g: &Grant, at: Timestamp) -> Result<Vec<Op>, Error> {
        let mut data = grant_data(g);
        data["uses"] = json!(g.uses);
        self.event_ops(&g.terms.grantee, EventType::GrantExhausted, data, at)
    }

    /// The ops of an erasure: `owner.erased` to each agency in `agencies`, and the grants'
    /// expiry records go.
    pub(crate) fn owner_erased_ops(
        &self,
        op: &OwnerRef,
        owner: &OwnerId,
        grants: &[Grant],
        documents: &[Document],
        at: Timestamp,
    ) -> Result<Vec<Op>, Error> {
        let mut agencies: Vec<&AgencyId> = grants.iter().map(|g| &g.terms.grantee).collect();
        agencies.extend(documents.iter().filter(|d| d.verified).filter_map(|d| d.meta.issuer.as_ref()));
        agencies.sort();
        agencies.dedup();
        let mut ops: Vec<Op> = grants.iter().map(|g| Op::Delete(expiry_key(op, g))).collect();
        for a in agencies {
            ops.extend(self.event_ops(a, EventType::OwnerErased, json!({"owner": owner, "erased_at": at}), at)?);
        }
        Ok(ops)
    }

    /// The ops that delete the events about `owner` still waiting or parked, with their index
    /// entries: they go with the rest of the owner's data (SPEC.md §17), so only `owner.erased`
    /// is told after an erasure. A damaged record cannot be read to tell, so it stays (and
    /// `check` reports it). Hold the returned guard until the ops are applied: no failed
    /// attempt or redelivery moves one of these records meanwhile. Call after computing the
    /// erasure's own events (the guard is taken after the subscriptions' lock, never before).
    pub(crate) fn owner_outbox_purge_locked(&self, owner: &OwnerId) -> Result<Vec<Op>, Error> {
        let owner_value = json!(owner);
        let mut ops = Vec::new();
        for (p, index) in [(prefix::OUTBOX, due_key as fn(&Delivery) -> Vec<u8>), (prefix::PARKED, parked_key)] {
            for item in self.meta().scan(&[p]) {
                let (k, v) = item?;
                let Ok(d) = self.open_vault::<Delivery>(&k, &v) else { continue };
                if d.event.data.get("owner") == Some(&owner_value) {
                    ops.push(Op::Delete(k));
                    ops.push(Op::Delete(index(&d)));
                }
            }
        }
        Ok(ops)
    }

    /// The ops of a document event (`document.deposited` or `document.revoked`): to its issuer,
    /// only for a verified (issuer-signed) document.
    pub(crate) fn document_event_ops(&self, doc: &Document, kind: EventType, at: Timestamp) -> Result<Vec<Op>, Error> {
        let Some(issuer) = doc.meta.issuer.as_ref().filter(|_| doc.verified) else { return Ok(Vec::new()) };
        let mut data = json!({
            "document": doc.id,
            "owner": doc.owner,
            "doc_type": doc.meta.doc_type,
            "reference": doc.meta.reference,
        });
        if let Some(r) = &doc.revocation {
            data["revoked_at"] = json!(r.at);
        }
        self.event_ops(issuer, kind, data, at)
    }

    /// Emits `grant.expired` for every grant whose `expires_at` is at or before `now` and whose
    /// event is not emitted yet, exactly once each (the expiry record goes in the same batch as
    /// the event). A revoked grant, or an erased owner's, emits nothing. Returns the events
    /// emitted.
    pub fn sweep_grant_expiry(&self, now: Timestamp) -> Result<u64, Error> {
        let end = (now.unix() as u64 ^ (1 << 63)).to_be_bytes();
        let mut due = Vec::new();
        for item in self.meta().scan(&[prefix::GRANT_EXPIRY]) {
            let (k, _) = item?;
            if k.len() != 41 {
                return Err(corrupt(&k));
            }
            if k[1..9] > end[..] {
                break;
            }
            due.push(k);
        }
        let mut emitted = 0;
        for k in due {
            let op: OwnerRef = k[9..25].try_into().map_err(|_| corrupt(&k))?;
            let gid = crate::ids::GrantId::from_bytes(k[25..41].try_into().map_err(|_| corrupt(&k))?);
            let mut ops = vec![Op::Delete(k.clone())];
            let Some(o) = self.owner_by_ref(&op)? else {
                self.apply_durable(ops)?;
                continue;
            };
            // Under the owner's change lock: no erasure or revocation is between reading the
            // grant and writing the event.
            let (_guard, o) = self.owner_for_change(&o.id, false)?;
            // Still due: another instance that held the background lease before may have
            // emitted it since the scan (it deletes the record in the event's batch).
            if self.meta().get(&k)?.is_none() {
                continue;
            }
            let Some(o) = o else {
                self.apply_durable(ops)?;
                continue;
            };
            let g = {
                let pending = self.grants_lock.lock().unwrap_or_else(|p| p.into_inner());
                self.grant_for_change(&pending, &o, &gid)?
            };
            if let Some(g) = g.filter(|g| g.revoked_at.is_none()) {
                ops.extend(self.event_ops_at(
                    &g.terms.grantee,
                    EventType::GrantExpired,
                    grant_data(&g),
                    g.terms.expires_at,
                    now,
                )?);
                emitted += 1;
            }
            self.apply_durable(ops)?;
        }
        Ok(emitted)
    }

    fn require_operator(&self, caller: &Caller, action: &'static str) -> Result<Draft, Error> {
        let d = self.draft_for(caller, None, action);
        if caller.principal != Principal::Operator {
            return self.refuse_for(d, Error::Forbidden);
        }
        Ok(d)
    }

    /// Refuses (and logs the refusal as `webhook.put`) anyone but the operator: lets a server
    /// answer 403 before it reads a subscription body.
    pub fn may_put_webhook_as(&self, caller: &Caller) -> Result<(), Error> {
        self.require_operator(caller, "webhook.put").map(|_| ())
    }

    /// Creates or replaces a subscription (the operator only; logged). The agency must be
    /// registered. Returns it and whether it is new. Events already waiting keep waiting and go
    /// to the new URL.
    pub fn put_webhook_as(
        &self,
        caller: &Caller,
        agency: &AgencyId,
        id: &WebhookId,
        new: NewWebhook,
        policy: &UrlPolicy,
    ) -> Result<(Webhook, bool), Error> {
        let d = self.require_operator(caller, "webhook.put")?;
        let r = (|| {
            policy.check(&new.url)?;
            if new.events.is_empty() {
                return Err(Error::InvalidRequest("events: at least one event type".into()));
            }
            let mut events = new.events.clone();
            events.sort();
            events.dedup();
            if events.len() != new.events.len() {
                return Err(Error::InvalidRequest("events: an event type is listed twice".into()));
            }
            if self.agency(agency)?.is_none() {
                return Err(Error::NotFound("agency"));
            }
            let mut subs = self.subs()?;
            let all = subs.get_or_insert_with(BTreeMap::new);
            let key = (agency.clone(), id.clone());
            let now = Timestamp::now();
            let old = all.get(&key).cloned();
            if old.is_none() && all.keys().filter(|(a, _)| a == agency).count() >= MAX_WEBHOOKS_PER_AGENCY {
                return Err(Error::Conflict(format!("an agency has at most {MAX_WEBHOOKS_PER_AGENCY} webhooks")));
            }
            let w = Webhook {
                agency: agency.clone(),
                id: id.clone(),
                url: new.url,
                events: new.events,
                created_at: old.as_ref().map_or(now, |o| o.created_at),
                updated_at: now,
            };
            let k = sub_key(agency, id);
            // Under the subscriptions' lock: the cache and the records change together.
            let (ticket, _) =
                self.apply_audited(vec![Op::Put(k.clone(), self.seal_vault(&k, &w)), webhooks_version_op()], &d)?;
            all.insert(key, w.clone());
            drop(subs);
            self.wait_ticket(ticket)?;
            Ok((w, old.is_none()))
        })();
        r.or_else(|e| self.refuse_for(d.clone(), e))
    }

    /// One subscription with its key and counts (the operator only).
    pub fn webhook_as(&self, caller: &Caller, agency: &AgencyId, id: &WebhookId) -> Result<WebhookView, Error> {
        if caller.principal != Principal::Operator {
            return Err(Error::Forbidden);
        }
        let w = self.subs()?.as_ref().and_then(|s| s.get(&(agency.clone(), id.clone())).cloned());
        let w = w.ok_or(Error::NotFound("webhook"))?;
        let (mut pending, mut retrying, mut parked) = (0, 0, 0);
        for item in self.meta().scan(&outbox_prefix(prefix::OUTBOX, agency, id)) {
            let (k, v) = item?;
            pending += 1;
            if self.open_vault::<Delivery>(&k, &v).map_or(true, |d| d.attempts > 0) {
                retrying += 1;
            }
        }
        for item in self.meta().scan(&outbox_prefix(prefix::PARKED, agency, id)) {
            item?;
            parked += 1;
        }
        Ok(WebhookView { webhook: w, public_key: self.webhook_public_key(), pending, retrying, parked })
    }

    /// Deletes a subscription and every event waiting or parked for it (the operator only;
    /// logged).
    pub fn delete_webhook_as(&self, caller: &Caller, agency: &AgencyId, id: &WebhookId) -> Result<(), Error> {
        let d = self.require_operator(caller, "webhook.delete")?;
        let r = (|| {
            let mut subs = self.subs()?;
            let key = (agency.clone(), id.clone());
            if !subs.as_ref().is_some_and(|s| s.contains_key(&key)) {
                return Err(Error::NotFound("webhook"));
            }
            // No failed attempt or redelivery may rewrite a record deleted here. The records
            // are listed under the audit turn, after every change queued before: an event
            // queued with an earlier change is applied, and deleted here. (One computed before
            // this but queued after is deleted by the next sweep, see `sweep_outbox`.)
            let _outbox = self.outbox_lock()?;
            let all = || -> Result<Vec<Op>, Error> {
                let mut ops = Vec::new();
                for p in [prefix::OUTBOX, prefix::PARKED, prefix::OUTBOX_DUE, prefix::PARKED_AT] {
                    for item in self.meta().scan(&outbox_prefix(p, agency, id)) {
                        ops.push(Op::Delete(item?.0));
                    }
                }
                Ok(ops)
            };
            let (ticket, _) =
                self.apply_audited_with(vec![Op::Delete(sub_key(agency, id)), webhooks_version_op()], &d, all)?;
            if let Some(s) = subs.as_mut() {
                s.remove(&key);
            }
            self.waiting().remove(&key);
            drop(subs);
            self.wait_ticket(ticket)
        })();
        r.or_else(|e| self.refuse_for(d.clone(), e))
    }

    /// The parked events of a subscription, oldest first (the operator only).
    ///
    /// Paged, oldest first (event ids are time-ordered): at most `limit` events after the event
    /// `after`, and the id to pass as the next `after` when more follow.
    pub fn failed_events_as(
        &self,
        caller: &Caller,
        agency: &AgencyId,
        id: &WebhookId,
        after: Option<&EventId>,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<EventId>), Error> {
        if caller.principal != Principal::Operator {
            return Err(Error::Forbidden);
        }
        if !self.subs()?.as_ref().is_some_and(|s| s.contains_key(&(agency.clone(), id.clone()))) {
            return Err(Error::NotFound("webhook"));
        }
        let prefix = outbox_prefix(prefix::PARKED, agency, id);
        let start = match after {
            // The first key after `after`'s.
            Some(e) => [outbox_key(prefix::PARKED, agency, id, e), vec![0]].concat(),
            None => prefix.clone(),
        };
        let mut out: Vec<Delivery> = Vec::new();
        for item in self.meta().scan_from(&prefix, &start) {
            let (k, v) = item?;
            if out.len() == limit {
                let next = out.last().map(|d| d.event.id);
                return Ok((out, next));
            }
            out.push(self.open_vault(&k, &v)?);
        }
        Ok((out, None))
    }

    /// Puts a parked event back in the outbox for a fresh retry window, same event id (the
    /// operator only; logged).
    pub fn redeliver_as(
        &self,
        caller: &Caller,
        agency: &AgencyId,
        id: &WebhookId,
        event: &EventId,
    ) -> Result<Delivery, Error> {
        let d = self.require_operator(caller, "webhook.redeliver")?;
        let r = (|| {
            let _outbox = self.outbox_lock()?;
            let from = outbox_key(prefix::PARKED, agency, id, event);
            let v = self.meta().get(&from)?.ok_or(Error::NotFound("parked event"))?;
            let mut del: Delivery = self.open_vault(&from, &v)?;
            let mut ops = vec![Op::Delete(from), Op::Delete(parked_key(&del))];
            del.attempts = 0;
            del.first_failure = None;
            del.parked_at = None;
            del.last_error = None;
            del.next_attempt = Timestamp::now();
            ops.extend(self.queue_ops(&del));
            let (ticket, _) = self.apply_audited(ops, &d)?;
            self.count_waiting(agency, id, 1);
            self.wait_ticket(ticket)?;
            Ok(del)
        })();
        r.or_else(|e| self.refuse_for(d.clone(), e))
    }

    /// The subscription `agency`/`id`, if any (for the delivery worker).
    pub fn webhook(&self, agency: &AgencyId, id: &WebhookId) -> Result<Option<Webhook>, Error> {
        Ok(self.subs()?.as_ref().and_then(|s| s.get(&(agency.clone(), id.clone())).cloned()))
    }

    /// Deliveries due at `now` (not parked, `next_attempt` reached): of each subscription at
    /// most `per_subscription`, earliest `next_attempt` first, so a subscription with a large
    /// backlog does not hold up the others. Reads only the due-time index up to `now` and the
    /// records it names, never the rest of a backlog.
    pub fn due_deliveries(
        &self,
        now: Timestamp,
        per_subscription: usize,
    ) -> Result<Vec<(DeliveryKey, Delivery)>, Error> {
        let subs: Vec<(AgencyId, WebhookId)> =
            self.subs()?.as_ref().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        let end = time_bytes(now);
        let mut out = Vec::new();
        for (a, w) in subs {
            let start = outbox_prefix(prefix::OUTBOX_DUE, &a, &w);
            let mut n = 0;
            for item in self.meta().scan(&start) {
                let (k, _) = item?;
                let Some(rest) = k.get(start.len()..).filter(|r| r.len() == 24) else { continue };
                if rest[..8] > end[..] {
                    break;
                }
                let mut event = [0u8; 16];
                event.copy_from_slice(&rest[8..]);
                let q = outbox_key(prefix::OUTBOX, &a, &w, &EventId(event));
                // An entry without its record, or a damaged record (which `check` reports),
                // must not stop every other delivery.
                let Some(v) = self.meta().get(&q)? else { continue };
                let Ok(d) = self.open_vault::<Delivery>(&q, &v) else { continue };
                if d.next_attempt > now {
                    continue;
                }
                out.push((DeliveryKey { q, due: k, agency: a.clone(), webhook: w.clone() }, d));
                n += 1;
                if n >= per_subscription {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether the delivery is still in the outbox: the worker asks just before an attempt,
    /// so a copy read before an erasure, a subscription's deletion or another outcome is not
    /// sent (SPEC.md §24).
    pub fn delivery_waiting(&self, key: &DeliveryKey) -> Result<bool, Error> {
        Ok(self.meta().get(&key.q)?.is_some())
    }

    /// A delivery succeeded: it leaves the outbox (durably). Also for a delivery whose
    /// subscription is gone.
    pub fn delivery_done(&self, key: &DeliveryKey) -> Result<(), Error> {
        // Applied under the outbox lock, waited for durability outside it: outcomes of many
        // subscriptions share one sync instead of queueing behind each other's.
        let ticket = {
            let _outbox = self.outbox_lock()?;
            let was = self.meta().get(&key.q)?.is_some();
            let ticket = self.apply_visible(vec![Op::Delete(key.q.clone()), Op::Delete(key.due.clone())])?;
            if was {
                self.count_waiting(&key.agency, &key.webhook, -1);
            }
            ticket
        };
        self.durable_after(ticket)
    }

    /// A delivery failed: store its new state (`d`, with the attempt counted and the next time
    /// set); when `d.parked_at` is set it moves to the parked events. Nothing is written if
    /// the delivery is no longer in the outbox (its subscription was deleted, or its owner
    /// erased, meanwhile).
    pub fn delivery_failed(&self, key: &DeliveryKey, d: Delivery) -> Result<(), Error> {
        // As `delivery_done`: durability awaited outside the lock.
        match self.delivery_failed_visible(key, d)? {
            Some(ticket) => self.durable_after(ticket),
            None => Ok(()),
        }
    }

    fn delivery_failed_visible(&self, key: &DeliveryKey, mut d: Delivery) -> Result<Option<u64>, Error> {
        let _outbox = self.outbox_lock()?;
        let Some(old) = self.meta().get(&key.q)? else { return Ok(None) };
        // The index entry goes with the old state: the one read, and the one the record names
        // (the same, unless something else moved it).
        let mut stale = vec![key.due.clone()];
        if let Ok(old) = self.open_vault::<Delivery>(&key.q, &old) {
            stale.push(due_key(&old));
        }
        // The record names its own subscription: that of the key, whatever `d` says.
        d.agency = key.agency.clone();
        d.webhook = key.webhook.clone();
        // Not deleting the entry the new state puts back (one op per key in a batch).
        let new_due = if d.parked_at.is_some() { None } else { Some(due_key(&d)) };
        stale.dedup();
        let mut ops: Vec<Op> = stale.into_iter().filter(|k| Some(k) != new_due.as_ref()).map(Op::Delete).collect();
        if let Some(e) = d.last_error.as_mut() {
            if e.len() > MAX_ERROR {
                let mut cut = MAX_ERROR;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
        }
        let parked = d.parked_at.is_some();
        if parked {
            ops.push(Op::Delete(key.q.clone()));
            ops.extend(self.park_ops(&d));
        } else {
            ops.push(Op::Put(key.q.clone(), self.seal_vault(&key.q, &d)));
            ops.extend(new_due.map(|k| self.index_put(k)));
        }
        let ticket = self.apply_visible(ops)?;
        if parked {
            self.count_waiting(&key.agency, &key.webhook, -1);
        }
        Ok(Some(ticket))
    }

    /// The outbox's housekeeping (the server runs it with the expiry sweep): deletes the parked
    /// events whose `parked_at` is [`PARKED_RETENTION_SECS`] or more before `now`, and every
    /// record (`Q`, `F`, `Y`, `Z`) of a subscription that no longer exists (an event computed
    /// while its subscription was being deleted, applied just after). Reads the retention
    /// index only up to the cut-off, and of the other records one key per subscription.
    pub fn sweep_outbox(&self, now: Timestamp) -> Result<OutboxSweep, Error> {
        let mut r = OutboxSweep::default();
        let cutoff = time_bytes(now.plus_seconds(-PARKED_RETENTION_SECS));
        let subs: Vec<(AgencyId, WebhookId)> =
            self.subs()?.as_ref().map(|s| s.keys().cloned().collect()).unwrap_or_default();
        for (a, w) in &subs {
            loop {
                let _outbox = self.outbox_lock()?;
                let start = outbox_prefix(prefix::PARKED_AT, a, w);
                let mut ops = Vec::new();
                for item in self.meta().scan(&start) {
                    let (k, _) = item?;
                    let Some(rest) = k.get(start.len()..).filter(|r| r.len() == 24) else { continue };
                    if rest[..8] > cutoff[..] || ops.len() >= 2 * SWEEP_BATCH {
                        break;
                    }
                    let mut event = [0u8; 16];
                    event.copy_from_slice(&rest[8..]);
                    ops.push(Op::Delete(outbox_key(prefix::PARKED, a, w, &EventId(event))));
                    ops.push(Op::Delete(k));
                }
                if ops.is_empty() {
                    break;
                }
                r.expired += (ops.len() / 2) as u64;
                self.apply_durable(ops)?;
            }
        }
        // Events parked only because their outbox was full go back, oldest first, once the
        // outbox is below half its cap (never above it; at most one batch per subscription and
        // sweep): an event the change acknowledged is not left for the operator alone to save.
        for (a, w) in &subs {
            let _outbox = self.outbox_lock()?;
            let waiting = self.waiting_for(a, w)?;
            let room = (MAX_WAITING_PER_WEBHOOK / 2).saturating_sub(waiting).min(SWEEP_BATCH as u64);
            if room == 0 {
                continue;
            }
            let mut ops = Vec::new();
            let mut moved = 0u64;
            for item in self.meta().scan(&outbox_prefix(prefix::PARKED_AT, a, w)) {
                if moved >= room {
                    break;
                }
                let (z, _) = item?;
                let Some(rest) = split_outbox_key(&z).map(|(_, _, r)| r).filter(|r| r.len() == 24) else { continue };
                let mut event = [0u8; 16];
                event.copy_from_slice(&rest[8..]);
                let f = outbox_key(prefix::PARKED, a, w, &EventId(event));
                let Some(v) = self.meta().get(&f)? else { continue };
                // A damaged record is left to `check`.
                let Ok(mut d) = self.open_vault::<Delivery>(&f, &v) else { continue };
                if d.last_error.as_deref() != Some(OUTBOX_FULL) || d.attempts != 0 {
                    continue;
                }
                ops.push(Op::Delete(f));
                ops.push(Op::Delete(z));
                d.parked_at = None;
                d.last_error = None;
                d.next_attempt = now;
                ops.extend(self.queue_ops(&d));
                moved += 1;
            }
            if moved > 0 {
                self.apply_durable(ops)?;
                self.count_waiting(a, w, moved as i64);
                r.requeued += moved;
            }
        }
        // Records of subscriptions that are gone: under the subscriptions' lock, so none is
        // created (or its events computed) while its records are judged orphans.
        for p in [prefix::OUTBOX, prefix::PARKED, prefix::OUTBOX_DUE, prefix::PARKED_AT] {
            let mut from = vec![p];
            loop {
                let subs = self.subs()?;
                let _outbox = self.outbox_lock()?;
                let Some(item) = self.meta().scan_from(&[p], &from).next() else { break };
                let (k, _) = item?;
                let Some((a, w, _)) = split_outbox_key(&k) else {
                    // Not of the shape (damage, which `check` reports): step over it.
                    from = [k, vec![0]].concat();
                    continue;
                };
                let own = outbox_prefix(p, &a, &w);
                // The first key past this subscription's: its prefix ends in 0, and no id has 0.
                let mut past = own.clone();
                if let Some(last) = past.last_mut() {
                    *last = 1;
                }
                if !subs.as_ref().is_some_and(|s| s.contains_key(&(a.clone(), w.clone()))) {
                    // Every record of the gone subscription, of all four kinds, under this one
                    // hold of the lock: a subscription made again under the same id later finds
                    // none of them (not a `Y` entry left behind by a pass over `Q` alone).
                    let mut ops = Vec::new();
                    'all: for q in [prefix::OUTBOX, prefix::PARKED, prefix::OUTBOX_DUE, prefix::PARKED_AT] {
                        for item in self.meta().scan(&outbox_prefix(q, &a, &w)) {
                            ops.push(Op::Delete(item?.0));
                            if ops.len() >= SWEEP_BATCH {
                                break 'all;
                            }
                        }
                    }
                    r.orphans += ops.len() as u64;
                    let more = ops.len() >= SWEEP_BATCH;
                    self.apply_durable(ops)?;
                    if more {
                        continue;
                    }
                }
                from = past;
            }
        }
        // Counted again when next needed: no skew from changes that failed after counting.
        self.forget_waiting_counts();
        Ok(r)
    }

    /// The webhook verifying key, `whpk_` + standard base64 of the Ed25519 public key.
    pub fn webhook_public_key(&self) -> String {
        format!("whpk_{}", B64.encode(self.webhook_signer.0.verifying_key().to_bytes()))
    }

    /// The `webhook-signature` header value for one attempt: `v1a,<base64 Ed25519 signature>`
    /// over `{id}.{timestamp}.{body}`.
    pub fn sign_webhook(&self, id: &EventId, timestamp: i64, body: &[u8]) -> String {
        let sig = self.webhook_signer.0.sign(&signed_content(&id.to_string(), timestamp, body));
        format!("v1a,{}", B64.encode(sig.to_bytes()))
    }

    /// Checks every subscription and outbox record (for `check`): the problems found.
    pub(crate) fn check_events(&self) -> Result<Vec<(String, &'static str)>, Error> {
        // Indexes the records of an older version first (a damaged subscription is reported
        // below either way).
        drop(self.subs());
        let mut out = Vec::new();
        let describe = crate::engine::vault::describe_key;
        for p in [
            prefix::WEBHOOK,
            prefix::OUTBOX,
            prefix::PARKED,
            prefix::GRANT_EXPIRY,
            prefix::OUTBOX_DUE,
            prefix::PARKED_AT,
        ] {
            for item in self.meta().scan(&[p]) {
                let (k, v) = item?;
                if seal::open(&self.vault_records, &aad(&k), &v).is_err() {
                    out.push((describe(&k), "record fails authentication"));
                }
            }
        }
        // Every waiting or parked record has its index entry, and every entry its record.
        for (p, index, missing) in [
            (prefix::OUTBOX, due_key as fn(&Delivery) -> Vec<u8>, "outbox event without its due-time index entry"),
            (prefix::PARKED, parked_key, "parked event without its index entry"),
        ] {
            for item in self.meta().scan(&[p]) {
                let (k, v) = item?;
                let Ok(d) = self.open_vault::<Delivery>(&k, &v) else { continue };
                if self.meta().get(&index(&d))?.is_none() {
                    out.push((describe(&k), missing));
                }
            }
        }
        for (p, record, missing) in [
            (prefix::OUTBOX_DUE, prefix::OUTBOX, "due-time index entry without its outbox event"),
            (prefix::PARKED_AT, prefix::PARKED, "parked event index entry without its parked event"),
        ] {
            for item in self.meta().scan(&[p]) {
                let (k, _) = item?;
                let target = split_outbox_key(&k).filter(|(_, _, rest)| rest.len() == 24).map(|(a, w, rest)| {
                    let mut e = [0u8; 16];
                    e.copy_from_slice(&rest[8..]);
                    outbox_key(record, &a, &w, &EventId(e))
                });
                match target {
                    Some(t) if self.meta().get(&t)?.is_some() => {}
                    Some(_) => out.push((describe(&k), missing)),
                    None => out.push((describe(&k), "malformed index key")),
                }
            }
        }
        Ok(out)
    }
}

/// The `data` of `grant.created`: the grant's terms as the grantee sees them in `GET /v1/grants`.
fn grant_data_created(g: &Grant) -> Value {
    let mut data = grant_data(g);
    data["doc_types"] = json!(g.terms.doc_types);
    data["documents"] = json!(g.terms.documents);
    data["max_uses"] = json!(g.terms.max_uses);
    data
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_names_round_trip_and_unknown_ones_are_refused() {
        for t in EventType::ALL {
            let s = serde_json::to_string(&t).unwrap();
            assert_eq!(s, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&s).unwrap(), t);
        }
        assert!(serde_json::from_str::<EventType>("\"grant.deleted\"").is_err());
        assert!(serde_json::from_str::<EventType>("\"Grant.Created\"").is_err());
    }

    #[test]
    fn ids_are_strict() {
        assert!(WebhookId::parse("dossier-1").is_ok());
        for bad in ["", "Dossier", "a/b", "-a", &"a".repeat(65)] {
            assert!(WebhookId::parse(bad).is_err(), "{bad:?}");
        }
        let e = EventId::fresh();
        assert_eq!(EventId::parse(&e.to_string()).unwrap(), e);
        for bad in ["msg_", "msg_0123", "evt_00000000000000000000000000000000", "msg_0000000000000000000000000000000G"]
        {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_and_the_ssrf_policy() {
        let strict = UrlPolicy::default();
        let dev = UrlPolicy { dev: true, allow_private: false };
        let open = UrlPolicy { dev: false, allow_private: true };
        let ok = |p: &UrlPolicy, u: &str| p.check(&WebhookUrl::parse(u).unwrap()).is_ok();
        assert!(ok(&strict, "https://dossier.example.vn/hooks?x=1"));
        assert!(ok(&strict, "https://8.8.8.8/hooks"));
        for bad in [
            "https://10.1.2.3/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://100.64.0.1/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
        ] {
            assert!(!ok(&strict, bad), "{bad}");
        }
        assert!(!ok(&strict, "http://dossier.example.vn/"));
        assert!(!ok(&strict, "http://127.0.0.1:9000/"));
        assert!(ok(&dev, "http://127.0.0.1:9000/"));
        assert!(ok(&dev, "http://localhost:9000/"));
        assert!(!ok(&dev, "http://dossier.example.vn/"));
        assert!(!ok(&dev, "https://10.1.2.3/"));
        assert!(ok(&open, "https://10.1.2.3/"));
        assert!(!ok(&open, "http://10.1.2.3/"));
        for bad in ["ftp://x.vn/", "https://user:pw@x.vn/", "https://x.vn/#frag", "not a url", "file:///etc/passwd"] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(WebhookUrl::parse(&format!("https://x.vn/{}", "a".repeat(MAX_URL))).is_err());
    }

    use crate::engine::grants::NewGrant;
    use crate::ids::{DocType, Purpose};
    use crate::{MasterKey, Vault};

    fn setup() -> (tempfile::TempDir, Vault, AgencyId, OwnerId) {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap();
        let a = AgencyId::parse("so-gd").unwrap();
        let new = crate::engine::provenance::NewAgency { name: "Sở GD".into(), keys: vec![] };
        v.put_agency_as(&Caller::operator(), &a, new).unwrap();
        (dir, v, a, OwnerId::parse("citizen:001099012345").unwrap())
    }

    fn subscribe(v: &Vault, a: &AgencyId, id: &str, events: &[EventType]) {
        let new =
            NewWebhook { url: WebhookUrl::parse("https://dossier.example.vn/h").unwrap(), events: events.to_vec() };
        v.put_webhook_as(&Caller::operator(), a, &WebhookId::parse(id).unwrap(), new, &UrlPolicy::default()).unwrap();
    }

    fn terms(a: &AgencyId, secs: i64) -> NewGrant {
        NewGrant {
            grantee: a.clone(),
            purpose: Purpose::parse("1.000001").unwrap(),
            purpose_text: String::new(),
            doc_types: vec![DocType::parse("giay-khai-sinh").unwrap()],
            documents: vec![],
            expires_at: Timestamp::now().plus_seconds(secs),
            max_uses: None,
        }
    }

    fn kinds(v: &Vault) -> Vec<EventType> {
        v.due_deliveries(Timestamp::now().plus_seconds(1), 100)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.event.kind)
            .collect()
    }

    #[test]
    fn events_ride_with_their_change_and_only_to_subscribers_that_want_them() {
        let (_dir, v, a, owner) = setup();
        let me = Caller::owner(owner.clone());
        // No subscription: nothing is written.
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        assert!(kinds(&v).is_empty());
        subscribe(&v, &a, "main", &[EventType::GrantCreated, EventType::GrantRevoked]);
        subscribe(&v, &a, "audit", &[EventType::GrantRevoked]);
        let g = v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        assert_eq!(kinds(&v), vec![EventType::GrantCreated]);
        // A refused change writes no event.
        assert!(v.grant_as(&me, &owner, terms(&a, -10)).is_err());
        assert_eq!(kinds(&v).len(), 1);
        v.revoke_grant_as(&me, &owner, &g.id).unwrap();
        // Revoked: one event per subscription wanting it, the same event id for both.
        let due = v.due_deliveries(Timestamp::now().plus_seconds(1), 100).unwrap();
        let revoked: Vec<&Delivery> =
            due.iter().map(|(_, d)| d).filter(|d| d.event.kind == EventType::GrantRevoked).collect();
        assert_eq!(revoked.len(), 2);
        assert_eq!(revoked[0].event.id, revoked[1].event.id);
        assert_eq!(revoked[0].event.data["grant"], g.id.to_string());
        // Revoking again changes nothing and says nothing.
        v.revoke_grant_as(&me, &owner, &g.id).unwrap();
        assert_eq!(kinds(&v).len(), 3);
        // Deleting a subscription takes its events with it.
        v.delete_webhook_as(&Caller::operator(), &a, &WebhookId::parse("audit").unwrap()).unwrap();
        assert_eq!(kinds(&v).len(), 2);
        assert!(v.check(false).unwrap().is_clean());
    }

    #[test]
    fn grant_expired_is_emitted_exactly_once_and_not_for_a_revoked_grant() {
        let (dir, v, a, owner) = setup();
        let me = Caller::owner(owner.clone());
        subscribe(&v, &a, "main", &[EventType::GrantExpired]);
        let kept = v.grant_as(&me, &owner, terms(&a, 60)).unwrap();
        let revoked = v.grant_as(&me, &owner, terms(&a, 60)).unwrap();
        v.revoke_grant_as(&me, &owner, &revoked.id).unwrap();
        assert_eq!(v.sweep_grant_expiry(Timestamp::now()).unwrap(), 0, "not yet expired");
        let later = Timestamp::now().plus_seconds(120);
        assert_eq!(v.sweep_grant_expiry(later).unwrap(), 1);
        assert_eq!(v.sweep_grant_expiry(later).unwrap(), 0, "exactly once");
        // ...also across a restart.
        drop(v);
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap();
        assert_eq!(v.sweep_grant_expiry(later).unwrap(), 0);
        let due = v.due_deliveries(later, 100).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.event.data["grant"], kept.id.to_string());
        assert_eq!(due[0].1.event.timestamp, kept.terms.expires_at);
    }

    #[test]
    fn erasure_tells_each_agency_once_and_leaves_no_expiry_behind() {
        let (_dir, v, a, owner) = setup();
        let b = AgencyId::parse("ubnd-xa").unwrap();
        let new = crate::engine::provenance::NewAgency { name: "UBND".into(), keys: vec![] };
        v.put_agency_as(&Caller::operator(), &b, new).unwrap();
        subscribe(&v, &a, "main", &[EventType::OwnerErased, EventType::GrantExpired]);
        subscribe(&v, &b, "main", &[EventType::OwnerErased]);
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 60)).unwrap();
        v.grant_as(&me, &owner, terms(&a, 60)).unwrap();
        v.erase_as(&me, &owner).unwrap();
        // To the grantee once (two grants), not to an agency with nothing of the owner.
        let due = v.due_deliveries(Timestamp::now().plus_seconds(1), 100).unwrap();
        let erased: Vec<&Delivery> =
            due.iter().map(|(_, d)| d).filter(|d| d.event.kind == EventType::OwnerErased).collect();
        assert_eq!(erased.len(), 1);
        assert_eq!((&erased[0].agency, &erased[0].event.data["owner"]), (&a, &json!(owner)));
        // The grants' expiry records went with the owner: no grant.expired later.
        assert_eq!(v.sweep_grant_expiry(Timestamp::now().plus_seconds(120)).unwrap(), 0);
        assert_eq!(v.meta().scan(&[prefix::GRANT_EXPIRY]).count(), 0);
        assert!(v.check(false).unwrap().is_clean());
    }

    #[test]
    fn a_url_is_measured_as_stored() {
        // 600 characters of 3 bytes that each become 9 bytes once percent-encoded.
        let long = format!("https://dossier.example.vn/{}", "\u{1ea1}".repeat(600));
        assert!(long.len() <= MAX_URL);
        assert!(WebhookUrl::parse(&long).is_err(), "longer than MAX_URL once normalised");
        assert!(WebhookUrl::parse("https://dossier.example.vn/hooks").is_ok());
    }

    #[test]
    fn only_global_unicast_addresses_are_public() {
        for ip in ["8.8.8.8", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "2001:4860:4860::8888"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.168.1.1",
            "172.16.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:0:10.0.0.1",
            "64:ff9b::a00:1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2002:a00:1::1",
            "3fff::1",
            "100::1",
            "4000::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    /// Review finding: events about an erased owner that were not delivered yet outlived the
    /// erasure (and could reach the agency after `owner.erased`).
    #[test]
    fn erasure_takes_the_owners_undelivered_events_with_it() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated, EventType::OwnerErased]);
        let other = OwnerId::parse("citizen:001099000002").unwrap();
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 60)).unwrap();
        v.grant_as(&Caller::owner(other.clone()), &other, terms(&a, 60)).unwrap();
        let soon = Timestamp::now().plus_seconds(1);
        assert_eq!(v.due_deliveries(soon, 100).unwrap().len(), 2, "two grant.created waiting");
        v.erase_as(&me, &owner).unwrap();
        let due = v.due_deliveries(Timestamp::now().plus_seconds(1), 100).unwrap();
        let kinds: Vec<(EventType, Value)> =
            due.iter().map(|(_, d)| (d.event.kind, d.event.data["owner"].clone())).collect();
        assert_eq!(kinds.len(), 2, "{kinds:?}");
        assert!(kinds.contains(&(EventType::GrantCreated, json!(other))), "another owner's event stays: {kinds:?}");
        assert!(kinds.contains(&(EventType::OwnerErased, json!(owner))), "{kinds:?}");
        assert!(v.check(false).unwrap().is_clean());
    }

    #[test]
    fn a_backlog_of_one_subscription_does_not_hide_another() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "a-backlog", &[EventType::GrantCreated]);
        subscribe(&v, &a, "z-other", &[EventType::GrantRevoked]);
        let me = Caller::owner(owner.clone());
        for _ in 0..5 {
            v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        }
        let g = v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        v.revoke_grant_as(&me, &owner, &g.id).unwrap();
        let due = v.due_deliveries(Timestamp::now().plus_seconds(1), 2).unwrap();
        let names: Vec<&str> = due.iter().map(|(_, d)| d.webhook.as_str()).collect();
        assert_eq!(names, ["a-backlog", "a-backlog", "z-other"]);
        // Oldest first.
        assert!(due[0].1.event.id < due[1].1.event.id);
    }

    #[test]
    fn a_damaged_outbox_record_is_reported_and_holds_up_no_other_delivery() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        let (key, _) = v.due_deliveries(Timestamp::now(), 10).unwrap().remove(0);
        v.apply_durable(vec![Op::Put(key.q.clone(), b"not a sealed value".to_vec())]).unwrap();
        assert_eq!(v.due_deliveries(Timestamp::now(), 10).unwrap().len(), 1);
        let report = v.check(false).unwrap();
        assert!(!report.is_clean());
        assert!(report.to_string().contains("outbox event"), "{report}");
    }

    #[test]
    fn a_failing_delivery_is_parked_listed_and_redelivered_with_its_id() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 3600)).unwrap();
        let (key, mut d) = v.due_deliveries(Timestamp::now(), 10).unwrap().remove(0);
        let id = d.event.id;
        d.attempts = 1;
        d.next_attempt = Timestamp::now().plus_seconds(600);
        v.delivery_failed(&key, d.clone()).unwrap();
        assert!(v.due_deliveries(Timestamp::now(), 10).unwrap().is_empty(), "not due before next_attempt");
        d.parked_at = Some(Timestamp::now());
        d.last_error = Some("x".repeat(1000));
        v.delivery_failed(&key, d).unwrap();
        let w = WebhookId::parse("main").unwrap();
        let op = Caller::operator();
        let view = v.webhook_as(&op, &a, &w).unwrap();
        assert_eq!((view.pending, view.parked), (0, 1));
        let (failed, next) = v.failed_events_as(&op, &a, &w, None, 100).unwrap();
        assert_eq!((failed[0].event.id, next), (id, None));
        assert_eq!(failed[0].last_error.as_ref().unwrap().len(), MAX_ERROR);
        assert!(matches!(v.failed_events_as(&Caller::owner(owner.clone()), &a, &w, None, 100), Err(Error::Forbidden)));
        v.redeliver_as(&op, &a, &w, &id).unwrap();
        let (key, d) = v.due_deliveries(Timestamp::now(), 10).unwrap().remove(0);
        assert_eq!((d.event.id, d.attempts, d.parked_at), (id, 0, None));
        assert!(matches!(v.redeliver_as(&op, &a, &w, &id), Err(Error::NotFound(_))));
        v.delivery_done(&key).unwrap();
        assert_eq!(v.webhook_as(&op, &a, &w).unwrap().pending, 0);
    }

    /// Review finding: parked events were listed all at once.
    #[test]
    fn parked_events_are_listed_in_pages_oldest_first() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        for _ in 0..5 {
            v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 3600)).unwrap();
        }
        let mut ids = Vec::new();
        for (key, mut d) in v.due_deliveries(Timestamp::now().plus_seconds(1), 10).unwrap() {
            d.attempts = 1;
            d.parked_at = Some(Timestamp::now());
            ids.push(d.event.id);
            v.delivery_failed(&key, d).unwrap();
        }
        ids.sort();
        let (w, op) = (WebhookId::parse("main").unwrap(), Caller::operator());
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (page, next) = v.failed_events_as(&op, &a, &w, after.as_ref(), 2).unwrap();
            assert!(page.len() <= 2);
            seen.extend(page.iter().map(|d| d.event.id));
            pages += 1;
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!((seen, pages), (ids, 3), "every parked event once, oldest first, in pages of 2");
    }

    /// A grant use queued before an erasure (the owner's lock released, as `queue_grant_use`
    /// does for async reads) and applied at the erasure's turn: its `grant.exhausted`, which
    /// names the erased owner, is purged with the rest (the purge is listed at the turn).
    #[test]
    fn an_event_queued_before_an_erasure_is_purged_with_it() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantExhausted, EventType::OwnerErased]);
        let me = Caller::owner(owner.clone());
        let mut t = terms(&a, 3600);
        t.max_uses = Some(1);
        let mut g = v.grant_as(&me, &owner, t).unwrap();
        g.uses = 1;
        let d = v.draft_for(&Caller::agency(a.clone(), None), Some(&owner), "document.content");
        let ops = v.grant_exhausted_ops(&g, d.time).unwrap();
        let queued = v.enqueue_audited(ops, &d);
        v.erase_as(&me, &owner).unwrap();
        v.await_audited(queued).unwrap();
        let due = v.due_deliveries(Timestamp::now().plus_seconds(1), 100).unwrap();
        let kinds: Vec<(EventType, Value)> =
            due.iter().map(|(_, d)| (d.event.kind, d.event.data["owner"].clone())).collect();
        assert!(
            !kinds.contains(&(EventType::GrantExhausted, json!(owner))),
            "erased owner's event survived: {kinds:?}"
        );
    }

    /// A `grant.expired` swept long after the expiry and parked at once (outbox full) is
    /// parked now: the retention counts from the parking, so the next sweep keeps it.
    #[test]
    fn an_event_parked_long_after_its_time_is_kept_for_the_whole_retention() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantExpired]);
        let w = WebhookId::parse("main").unwrap();
        v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 60)).unwrap();
        v.waiting().insert((a.clone(), w.clone()), MAX_WAITING_PER_WEBHOOK);
        let later = Timestamp::now().plus_seconds(31 * 24 * 3600);
        assert_eq!(v.sweep_grant_expiry(later).unwrap(), 1);
        let (f, _) = v.failed_events_as(&Caller::operator(), &a, &w, None, 10).unwrap();
        assert_eq!(f[0].parked_at, Some(later));
        let r = v.sweep_outbox(later).unwrap();
        assert_eq!(r.expired, 0, "parked at `later`, not deleted by the sweep of the same moment");
        let r = v.sweep_outbox(later.plus_seconds(PARKED_RETENTION_SECS + 1)).unwrap();
        assert_eq!(r.expired, 1, "deleted once its retention from the parking is over");
    }

    /// A missing index entry is reported by the `check` of a fresh process (the one-time
    /// indexing of older records does not repair it quietly).
    #[test]
    fn check_of_a_fresh_process_reports_a_missing_index_entry() {
        let (dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 3600)).unwrap();
        let y: Vec<Vec<u8>> = v.meta().scan(&[prefix::OUTBOX_DUE]).map(|i| i.unwrap().0).collect();
        assert_eq!(y.len(), 1);
        v.apply_durable(vec![Op::Delete(y[0].clone())]).unwrap();
        drop(v);
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap();
        let r = v.check(false).unwrap();
        assert!(!r.is_clean(), "the missing index entry was not reported");
    }

    fn count(v: &Vault, p: u8) -> usize {
        v.meta().scan(&[p]).count()
    }

    /// Review finding: the outbox was unbounded. A full one parks the new event at once (the
    /// change succeeds), visibly, and it can be redelivered.
    #[test]
    fn a_full_outbox_parks_the_new_event_and_the_change_still_succeeds() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let (w, op) = (WebhookId::parse("main").unwrap(), Caller::operator());
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        // Counted by a key scan when first needed, then kept in step.
        assert_eq!(v.waiting_for(&a, &w).unwrap(), 1);
        v.forget_waiting_counts();
        assert_eq!(v.waiting_for(&a, &w).unwrap(), 1, "counted again");
        // As if MAX_WAITING_PER_WEBHOOK − 1 were waiting (writing 10,000 grants is too slow).
        v.waiting().insert((a.clone(), w.clone()), MAX_WAITING_PER_WEBHOOK - 1);
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        assert_eq!(v.outbox_full_total(), 0);
        let full = v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        assert_eq!(v.outbox_full_total(), 1);
        assert_eq!((count(&v, prefix::OUTBOX), count(&v, prefix::PARKED)), (2, 1));
        let (failed, _) = v.failed_events_as(&op, &a, &w, None, 10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].event.data["grant"], full.id.to_string());
        assert_eq!((failed[0].attempts, failed[0].last_error.as_deref()), (0, Some(OUTBOX_FULL)));
        assert!(failed[0].parked_at.is_some());
        // One delivered: below the cap again, the next event waits normally.
        let (key, _) = v.due_deliveries(Timestamp::now(), 1).unwrap().remove(0);
        v.delivery_done(&key).unwrap();
        assert_eq!(v.waiting_for(&a, &w).unwrap(), MAX_WAITING_PER_WEBHOOK - 1);
        v.redeliver_as(&op, &a, &w, &failed[0].event.id).unwrap();
        assert_eq!(v.waiting_for(&a, &w).unwrap(), MAX_WAITING_PER_WEBHOOK);
        let d = v.due_deliveries(Timestamp::now(), 10).unwrap();
        assert!(d.iter().any(|(_, d)| d.event.id == failed[0].event.id && d.last_error.is_none()));
        assert!(v.check(false).unwrap().is_clean());
    }

    /// An event parked because its outbox was full goes back by itself once the outbox is below
    /// half its cap (the sweep), not only when the operator redelivers it; a full outbox keeps it.
    #[test]
    fn an_event_parked_for_a_full_outbox_is_put_back_when_there_is_room() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let w = WebhookId::parse("main").unwrap();
        let me = Caller::owner(owner.clone());
        v.waiting().insert((a.clone(), w.clone()), MAX_WAITING_PER_WEBHOOK);
        let g = v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        assert_eq!((count(&v, prefix::OUTBOX), count(&v, prefix::PARKED)), (0, 1));
        // Still full (as the count says): the sweep leaves it parked.
        v.waiting().insert((a.clone(), w.clone()), MAX_WAITING_PER_WEBHOOK);
        assert_eq!(v.sweep_outbox(Timestamp::now()).unwrap().requeued, 0);
        // The count forgotten by that sweep is counted again: nothing waits, so it goes back.
        let swept = v.sweep_outbox(Timestamp::now()).unwrap();
        assert_eq!(swept.requeued, 1);
        assert_eq!((count(&v, prefix::OUTBOX), count(&v, prefix::PARKED)), (1, 0));
        let due = v.due_deliveries(Timestamp::now(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.event.data["grant"], g.id.to_string());
        assert_eq!((due[0].1.last_error.as_deref(), due[0].1.parked_at), (None, None));
        assert!(v.check(false).unwrap().is_clean());
    }

    /// Review finding: each poll decrypted every subscription's whole backlog. The due-time
    /// index follows every move of a delivery, and a poll reads it only up to `now`.
    #[test]
    fn the_due_time_index_follows_every_delivery() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let me = Caller::owner(owner.clone());
        for _ in 0..4 {
            v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        }
        assert_eq!((count(&v, prefix::OUTBOX), count(&v, prefix::OUTBOX_DUE)), (4, 4));
        let t0 = Timestamp::now();
        let due = v.due_deliveries(t0, 10).unwrap();
        assert_eq!(due.len(), 4);
        // Two rescheduled an hour and two hours on, one parked, one delivered.
        for (i, (key, mut d)) in due.into_iter().enumerate() {
            d.attempts = 1;
            d.first_failure = Some(t0);
            match i {
                0 | 1 => {
                    d.next_attempt = t0.plus_seconds(3600 * (i as i64 + 1));
                    v.delivery_failed(&key, d).unwrap();
                }
                2 => {
                    d.parked_at = Some(t0);
                    v.delivery_failed(&key, d).unwrap();
                }
                _ => v.delivery_done(&key).unwrap(),
            }
        }
        assert_eq!((count(&v, prefix::OUTBOX), count(&v, prefix::OUTBOX_DUE)), (2, 2));
        assert_eq!((count(&v, prefix::PARKED), count(&v, prefix::PARKED_AT)), (1, 1));
        assert!(v.due_deliveries(t0.plus_seconds(3599), 10).unwrap().is_empty());
        assert_eq!(v.due_deliveries(t0.plus_seconds(3600), 10).unwrap().len(), 1);
        let later = v.due_deliveries(t0.plus_seconds(7200), 10).unwrap();
        assert_eq!(later.len(), 2);
        assert!(later[0].1.next_attempt < later[1].1.next_attempt, "earliest first");
        assert!(v.check(false).unwrap().is_clean());
        // Deleting the subscription takes every record and index entry with it.
        v.delete_webhook_as(&Caller::operator(), &a, &WebhookId::parse("main").unwrap()).unwrap();
        for p in [prefix::OUTBOX, prefix::OUTBOX_DUE, prefix::PARKED, prefix::PARKED_AT] {
            assert_eq!(count(&v, p), 0, "{}", p as char);
        }
    }

    #[test]
    fn check_reports_an_outbox_record_without_its_index_entry_and_the_reverse() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        let due = v.due_deliveries(Timestamp::now(), 10).unwrap();
        v.apply_durable(vec![Op::Delete(due[0].0.due.clone()), Op::Delete(due[1].0.q.clone())]).unwrap();
        let report = v.check(false).unwrap().to_string();
        assert!(report.contains("outbox event without its due-time index entry"), "{report}");
        assert!(report.contains("due-time index entry without its outbox event"), "{report}");
    }

    /// Records of an older version (no index) are indexed when the subscriptions are read.
    #[test]
    fn outbox_records_without_index_entries_are_indexed_at_the_next_start() {
        let (dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 3600)).unwrap();
        let (key, _) = v.due_deliveries(Timestamp::now(), 10).unwrap().remove(0);
        // An older version: no index entry, and no record of the one-time indexing.
        v.apply_durable(vec![Op::Delete(key.due.clone()), Op::Delete(KEY_OUTBOX_INDEXED.to_vec())]).unwrap();
        drop(v);
        let v = Vault::open(dir.path(), &MasterKey::from_bytes([3; 32])).unwrap();
        assert_eq!(v.due_deliveries(Timestamp::now(), 10).unwrap().len(), 1);
        assert!(v.check(false).unwrap().is_clean());
    }

    /// Review finding: parked events were kept for ever.
    #[test]
    fn parked_events_are_deleted_by_the_sweep_after_their_retention() {
        let (_dir, v, a, owner) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        let me = Caller::owner(owner.clone());
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        v.grant_as(&me, &owner, terms(&a, 3600)).unwrap();
        let t0 = Timestamp::parse("2026-12-01T00:00:00Z").unwrap();
        for (i, (key, mut d)) in v.due_deliveries(Timestamp::now(), 10).unwrap().into_iter().enumerate() {
            d.attempts = 1;
            d.parked_at = Some(t0.plus_seconds(i as i64 * 86_400));
            v.delivery_failed(&key, d).unwrap();
        }
        let keep = t0.plus_seconds(PARKED_RETENTION_SECS - 1);
        assert_eq!(v.sweep_outbox(keep).unwrap(), OutboxSweep::default());
        assert_eq!(count(&v, prefix::PARKED), 2);
        let first = v.sweep_outbox(t0.plus_seconds(PARKED_RETENTION_SECS)).unwrap();
        assert_eq!(first, OutboxSweep { expired: 1, orphans: 0, requeued: 0 });
        let (left, _) =
            v.failed_events_as(&Caller::operator(), &a, &WebhookId::parse("main").unwrap(), None, 10).unwrap();
        assert_eq!(left.iter().map(|d| d.parked_at).collect::<Vec<_>>(), [Some(t0.plus_seconds(86_400))]);
        assert_eq!(v.sweep_outbox(t0.plus_seconds(PARKED_RETENTION_SECS + 86_400)).unwrap().expired, 1);
        assert_eq!((count(&v, prefix::PARKED), count(&v, prefix::PARKED_AT)), (0, 0));
        assert!(v.check(false).unwrap().is_clean());
    }

    /// Review finding: deleting a subscription while its events were written could leave
    /// outbox records behind. Changes, a worker failing and delivering, and the deletion race;
    /// after the next sweep nothing of the subscription remains.
    #[test]
    fn no_outbox_record_outlives_its_deleted_subscription() {
        let (_dir, v, a, _) = setup();
        subscribe(&v, &a, "main", &[EventType::GrantCreated]);
        subscribe(&v, &a, "other", &[EventType::GrantCreated]);
        let v = std::sync::Arc::new(v);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..3)
            .map(|t| {
                let (v, a) = (v.clone(), a.clone());
                let owner = OwnerId::parse(&format!("citizen:00109900000{t}")).unwrap();
                std::thread::spawn(move || {
                    for _ in 0..40 {
                        v.grant_as(&Caller::owner(owner.clone()), &owner, terms(&a, 3600)).unwrap();
                    }
                })
            })
            .collect();
        let worker = {
            let (v, stop) = (v.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    for (key, mut d) in v.due_deliveries(Timestamp::now().plus_seconds(10), 8).unwrap() {
                        // Only the deleted subscription's: the other's are counted at the end.
                        if d.webhook.as_str() != "main" {
                            continue;
                        }
                        n += 1;
                        d.attempts += 1;
                        match n % 3 {
                            0 => v.delivery_done(&key).unwrap(),
                            1 => v.delivery_failed(&key, d).unwrap(),
                            _ => {
                                d.parked_at = Some(Timestamp::now());
                                v.delivery_failed(&key, d).unwrap();
                            }
                        }
                    }
                }
            })
        };
        // Delete once some events are written, while the writers go on.
        while count(&v, prefix::OUTBOX) + count(&v, prefix::PARKED) < 10 && !writers.iter().all(|w| w.is_finished()) {
            std::thread::yield_now();
        }
        v.delete_webhook_as(&Caller::operator(), &a, &WebhookId::parse("main").unwrap()).unwrap();
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        worker.join().unwrap();
        v.sweep_outbox(Timestamp::now()).unwrap();
        let gone = WebhookId::parse("main").unwrap();
        for p in [prefix::OUTBOX, prefix::PARKED, prefix::OUTBOX_DUE, prefix::PARKED_AT] {
            assert_eq!(v.meta().scan(&outbox_prefix(p, &a, &gone)).count(), 0, "{} left behind", p as char);
        }
        // The other subscription lost nothing: all 120 of its events are waiting.
        let other = WebhookId::parse("other").unwrap();
        assert_eq!(v.meta().scan(&outbox_prefix(prefix::OUTBOX, &a, &other)).count(), 120);
        assert_eq!(v.meta().scan(&outbox_prefix(prefix::OUTBOX_DUE, &a, &other)).count(), 120);
        assert!(v.check(false).unwrap().is_clean(), "{}", v.check(false).unwrap());
    }

    #[test]
    fn the_signature_is_over_id_timestamp_and_body() {
        use ed25519_dalek::Verifier as _;
        let s = WebhookSigner::derive(&[7; 32]);
        let id = EventId::fresh();
        let body = br#"{"type":"grant.created"}"#;
        let sig = s.0.sign(&signed_content(&id.to_string(), 1_700_000_000, body));
        let m = format!("{id}.1700000000.{}", std::str::from_utf8(body).unwrap());
        s.0.verifying_key().verify(m.as_bytes(), &sig).unwrap();
        // Derived, not the seed's own key.
        assert_ne!(s.0.verifying_key(), SigningKey::from_bytes(&[7; 32]).verifying_key());
    }
}
