//! Webhooks (SPEC.md §24): the delivery worker that POSTs the outbox's events, signed per the Standard Webhooks specification (`v1a`, Ed25519),
//! at least once, with exponential backoff and jitter, a per-subscription concurrency limit, a
//! time limit per attempt, and parking after the retry window. No redirects are followed, no
//! proxy is used, and every connection goes to an address the [`UrlPolicy`] allows, checked
//! after DNS resolution (no server-side request forgery). The operator's subscription routes
//! are in `routes::webhooks` (see [`crate::routes`]).

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use vault::engine::events::{Delivery, DeliveryKey, UrlPolicy, WebhookId};
use vault::{AgencyId, Timestamp, Vault};

/// Attempts by outcome since the start: delivered, failed (will be retried), parked, dropped.
static OUTCOMES: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The worker's counters for `/metrics` (a fixed set of series), and the events parked at
/// once because their subscription's outbox was full (`outbox_full`, from the vault).
pub fn prometheus(outbox_full: u64) -> String {
    let mut out = String::from(
        "# HELP vault_webhook_attempts_total Webhook delivery attempts since the start, by outcome.\n\
         # TYPE vault_webhook_attempts_total counter\n",
    );
    for (i, o) in ["delivered", "failed", "parked", "dropped"].iter().enumerate() {
        out.push_str(&format!(
            "vault_webhook_attempts_total{{outcome=\"{o}\"}} {}\n",
            OUTCOMES[i].load(Ordering::Relaxed)
        ));
    }
    out.push_str(&format!(
        "# HELP vault_webhook_outbox_full_total Events parked at once because their subscription already had \
         the most events waiting, since the start.\n\
         # TYPE vault_webhook_outbox_full_total counter\n\
         vault_webhook_outbox_full_total {outbox_full}\n"
    ));
    out
}

/// Delivery settings (flags `--webhook-*`).
#[derive(Debug, Clone, Copy)]
pub struct WebhookConfig {
    /// Which targets are allowed.
    pub policy: UrlPolicy,
    /// Time limit of one attempt (connect, send, answer).
    pub timeout: Duration,
    /// Most attempts in flight per subscription (1 to 4).
    pub concurrency: usize,
    /// Delay after the first failure; doubled after each further one (with jitter).
    pub retry_base: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// An event failing for this long since its first failure is parked.
    pub park_after: Duration,
    /// How often the outbox is looked at.
    pub poll: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            policy: UrlPolicy::default(),
            timeout: Duration::from_secs(10),
            concurrency: 2,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
            park_after: Duration::from_secs(24 * 3600),
            poll: Duration::from_secs(1),
        }
    }
}

/// The delay before attempt `failures + 1`: `base · 2^(failures−1)`, at most `max`, times a
/// random factor in [0.5, 1) (jitter), at least one second.
pub fn backoff(cfg: &WebhookConfig, failures: u32) -> Duration {
    let exp = cfg.retry_base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let d = exp.min(cfg.retry_max);
    let r = std::collections::hash_map::RandomState::new().hash_one((failures, std::time::Instant::now()));
    let factor = 0.5 + (r % 1000) as f64 / 2000.0;
    d.mul_f64(factor).max(Duration::from_secs(1))
}

/// Host name lookups of deliveries under way at once (each holds a blocking-pool thread).
const LOOKUPS_AT_ONCE: usize = 8;
/// Longest an attempt waits for a lookup slot.
const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves host names and keeps only the addresses the policy allows (an error when none is
/// left): reqwest connects to exactly these, so a name cannot smuggle in a private target.
#[derive(Debug)]
struct CheckedResolver(UrlPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // The system resolver runs on the shared blocking pool and may outlive any timeout:
            // at most LOOKUPS of them at once, so a slow DNS server of a subscribed domain
            // cannot take the threads the API needs; waiting for one is bounded too.
            static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOOKUPS_AT_ONCE);
            let slot = tokio::time::timeout(LOOKUP_WAIT, LOOKUPS.acquire())
                .await
                .map_err(|_| std::io::Error::other("too many host name lookups under way"))?
                .map_err(std::io::Error::other)?;
            // The slot goes with the lookup's thread: it is held until the system resolver
            // returns, even when the attempt's timeout dropped this future long before.
            let name = host.clone();
            let all: Vec<SocketAddr> = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0)).map(Iterator::collect)
            })
            .await
            .map_err(std::io::Error::other)??;
            let allowed: Vec<SocketAddr> = all.into_iter().filter(|a| policy.allows_ip(a.ip())).collect();
            if allowed.is_empty() {
                let e = std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to no allowed address (private and special targets are refused)"),
                );
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of the worker: no redirects, no proxy, checked resolution, rustls.
pub fn client(cfg: &WebhookConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver(cfg.policy)))
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .user_agent(concat!("vault-server/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
        .build()
        .map_err(|e| format!("cannot build the webhook client: {e}"))
}

/// Why an attempt failed, for `last_error` and the log (never the response body, never the
/// URL: its path or query may carry the receiver's secret).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// One attempt: `Ok(true)` on a 2xx answer, `Ok(false)` when the subscription is gone (the
/// event is dropped), else why not.
async fn attempt(vault: &Vault, client: &reqwest::Client, cfg: &WebhookConfig, d: &Delivery) -> Result<bool, String> {
    let Some(w) = vault.webhook(&d.agency, &d.webhook).map_err(|e| e.to_string())? else { return Ok(false) };
    // The policy of this run (it may be stricter than when the subscription was made).
    cfg.policy.check(&w.url).map_err(|e| format!("refused: {e}"))?;
    let body = d.event.body();
    let ts = Timestamp::now().unix();
    let id = d.event.id.to_string();
    let sig = vault.sign_webhook(&d.event.id, ts, &body);
    let resp = client
        .post(w.url.url().clone())
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .map_err(describe)?;
    let status = resp.status();
    if status.is_success() {
        Ok(true)
    } else if status.is_redirection() {
        Err(format!("answered {status}; redirects are not followed"))
    } else {
        Err(format!("answered {status}"))
    }
}

/// What happens after a failed attempt: the delivery with the failure counted, and either a
/// next time or parked.
pub fn after_failure(cfg: &WebhookConfig, mut d: Delivery, error: String, now: Timestamp) -> Delivery {
    d.attempts = d.attempts.saturating_add(1);
    let first = *d.first_failure.get_or_insert(now);
    d.last_error = Some(error);
    // A clock set back counts as no time passed.
    if now.unix().saturating_sub(first.unix()).max(0) as u64 >= cfg.park_after.as_secs() {
        d.parked_at = Some(now);
    } else {
        d.next_attempt = now.plus_seconds(backoff(cfg, d.attempts).as_secs() as i64);
    }
    d
}

/// The delivery worker: polls the outbox and delivers what is due, until aborted. Each event
/// leaves the outbox only after a 2xx answer (durably), so a crash or restart loses none; one
/// that was sent but not yet removed is sent again (at least once; same `webhook-id`).
pub async fn deliver_forever(vault: Arc<Vault>, cfg: WebhookConfig) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook delivery is off");
            return;
        }
    };
    // Deliveries being attempted (`None`), or finished during poll `Some(n)`: a poll's read may
    // predate a finish of the same poll (and show the delivery as still due), so a finished
    // delivery is forgotten only by a poll that began after it.
    let in_flight: Arc<Mutex<HashMap<DeliveryKey, Option<u64>>>> = Arc::default();
    let poll = Arc::new(AtomicU64::new(0));
    let mut limits: HashMap<(AgencyId, WebhookId), Arc<Semaphore>> = HashMap::new();
    // Attempts belong to this task: aborting it (shutdown) aborts them, so none holds the vault
    // past the server's end (an attempt cut short is sent again after the restart).
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        while attempts.try_join_next().is_some() {}
        if !crate::runs_background_work(&vault).await {
            continue;
        }
        let this = poll.fetch_add(1, Ordering::SeqCst) + 1;
        let v = vault.clone();
        let due = match tokio::task::spawn_blocking(move || v.due_deliveries(Timestamp::now(), 64)).await {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the event outbox");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event outbox");
                continue;
            }
        };
        in_flight.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, f| f.is_none_or(|f| f >= this));
        for (key, d) in due {
            {
                let mut m = in_flight.lock().unwrap_or_else(|p| p.into_inner());
                if m.contains_key(&key) {
                    continue;
                }
                m.insert(key.clone(), None);
            }
            let sem = limits
                .entry((d.agency.clone(), d.webhook.clone()))
                .or_insert_with(|| Arc::new(Semaphore::new(cfg.concurrency.clamp(1, 4))))
                .clone();
            let (vault, client, in_flight, poll) = (vault.clone(), client.clone(), in_flight.clone(), poll.clone());
            attempts.spawn(async move {
                if let Ok(_permit) = sem.acquire_owned().await {
                    // Still waiting? The copy was read at the poll; an erasure, a deletion of the
                    // subscription or a redelivery since then may have taken it away.
                    let (v, k) = (vault.clone(), key.clone());
                    if !matches!(tokio::task::spawn_blocking(move || v.delivery_waiting(&k)).await, Ok(Ok(true))) {
                        in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Some(poll.load(Ordering::SeqCst)));
                        return;
                    }
                    let outcome = attempt(&vault, &client, &cfg, &d).await;
                    let id = d.event.id;
                    let v = vault.clone();
                    let k = key.clone();
                    let stored = match outcome {
                        Ok(delivered) => {
                            OUTCOMES[if delivered { 0 } else { 3 }].fetch_add(1, Ordering::Relaxed);
                            if delivered {
                                tracing::info!(event = %id, agency = %d.agency, webhook = %d.webhook, "event delivered");
                            } else {
                                tracing::info!(event = %id, agency = %d.agency, webhook = %d.webhook,
                                    "event dropped: its subscription is gone");
                            }
                            tokio::task::spawn_blocking(move || v.delivery_done(&k)).await
                        }
                        Err(error) => {
                            let next = after_failure(&cfg, d, error, Timestamp::now());
                            OUTCOMES[if next.parked_at.is_some() { 2 } else { 1 }].fetch_add(1, Ordering::Relaxed);
                            match &next.parked_at {
                                Some(_) => tracing::warn!(event = %id, agency = %next.agency, webhook = %next.webhook,
                                    error = next.last_error.as_deref().unwrap_or(""), "event parked after its retry window"),
                                None => tracing::info!(event = %id, agency = %next.agency, webhook = %next.webhook,
                                    attempts = next.attempts, error = next.last_error.as_deref().unwrap_or(""),
                                    "event delivery failed; will retry"),
                            }
                            tokio::task::spawn_blocking(move || v.delivery_failed(&k, next)).await
                        }
                    };
                    match stored {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(event = %id, error = %e, "cannot record a delivery outcome"),
                        Err(e) => tracing::error!(event = %id, error = %e, "cannot record a delivery outcome"),
                    }
                }
                in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Some(poll.load(Ordering::SeqCst)));
            });
        }
    }
}

/// Emits `grant.expired` for grants that reached their expiry, and cleans the outbox (parked
/// events past their retention, records of deleted subscriptions): at start, then every `every`.
pub async fn sweep_expiry(vault: Arc<Vault>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !crate::runs_background_work(&vault).await {
            continue;
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.sweep_grant_expiry(Timestamp::now())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(events = n, "grant.expired events emitted"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sweep of expired grants failed"),
            Err(e) => tracing::error!(error = %e, "sweep of expired grants failed"),
        }
        let v = vault.clone();
        match tokio::task::spawn_blocking(move || v.sweep_outbox(Timestamp::now())).await {
            Ok(Ok(r)) if r.expired > 0 || r.orphans > 0 => tracing::info!(
                expired = r.expired,
                orphans = r.orphans,
                "outbox swept: parked events past their retention, records of deleted subscriptions"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sweep of the event outbox failed"),
            Err(e) => tracing::error!(error = %e, "sweep of the event outbox failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_failed_attempt_never_records_the_url() {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        // Port 9 (discard) on loopback: refused at once.
        let e = client.get("http://127.0.0.1:9/hook?token=s3cr3t").send().await.unwrap_err();
        let d = super::describe(e);
        assert!(!d.contains("s3cr3t") && !d.contains("/hook"), "{d}");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = WebhookConfig {
            retry_base: Duration::from_secs(10),
            retry_max: Duration::from_secs(100),
            ..Default::default()
        };
        for n in 1..40 {
            let d = backoff(&cfg, n);
            let full = Duration::from_secs(10).saturating_mul(1 << (n - 1).min(20)).min(Duration::from_secs(100));
            assert!(d <= full && d >= full / 2, "{n}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn a_failure_schedules_a_retry_then_parks_after_the_window() {
        let cfg = WebhookConfig { park_after: Duration::from_secs(60), ..Default::default() };
        let t0 = Timestamp::parse("2026-12-03T10:00:00Z").unwrap();
        let d: Delivery = serde_json::from_value(json!({
            "event": {"id": "msg_0123456789abcdef0123456789abcdef", "type": "grant.created",
                      "timestamp": "2026-12-03T10:00:00Z", "data": {}},
            "agency": "so-gd", "webhook": "main", "attempts": 0, "first_failure": null,
            "next_attempt": "2026-12-03T10:00:00Z", "last_error": null, "parked_at": null
        }))
        .unwrap();
        let d = after_failure(&cfg, d, "answered 500".into(), t0);
        assert_eq!((d.attempts, d.first_failure, d.parked_at), (1, Some(t0), None));
        assert!(d.next_attempt > t0);
        let d = after_failure(&cfg, d, "answered 500".into(), t0.plus_seconds(59));
        assert_eq!((d.attempts, d.parked_at), (2, None));
        let d = after_failure(&cfg, d, "answered 503".into(), t0.plus_seconds(60));
        assert_eq!((d.attempts, d.parked_at), (3, Some(t0.plus_seconds(60))));
        assert_eq!(d.first_failure, Some(t0));
        // A clock set back does not park.
        let mut d2 = d.clone();
        d2.parked_at = None;
        let d2 = after_failure(&cfg, d2, "answered 500".into(), t0.plus_seconds(-3600));
        assert_eq!(d2.parked_at, None);
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        use reqwest::dns::Resolve as _;
        let strict = CheckedResolver(UrlPolicy::default());
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let e = strict.resolve(name).await.err().unwrap();
        assert!(e.to_string().contains("no allowed address"), "{e}");
        let dev = CheckedResolver(UrlPolicy { dev: true, allow_private: false });
        let addrs: Vec<SocketAddr> = dev.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
