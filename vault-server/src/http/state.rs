//! The service's shared state ([`AppState`]) and running blocking vault work off the async
//! threads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use vault::access::{Caller, Principal};
use vault::{Purpose, Timestamp, Vault};

use crate::http::auth::{authenticate, AuthConfig};
use crate::http::error::ApiError;
use crate::http::limits::Limits;
use crate::http::metrics::Metrics;

/// Shared state of the service.
#[derive(Debug)]
pub struct AppState {
    /// The vault, once opened and recovered (until then every call answers 503 `sealed`).
    pub vault: std::sync::OnceLock<Arc<Vault>>,
    /// Token verification settings.
    pub auth: AuthConfig,
    /// Largest content accepted.
    pub max_content: u64,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Per-principal upload limits and stream timeouts.
    pub limits: Limits,
    /// Webhook delivery settings and the URL policy (SPEC.md §24).
    pub webhooks: crate::webhooks::WebhookConfig,
}

/// Runs blocking vault work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, vault::Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(e)),
    }
}

impl AppState {
    /// The vault, or 503 `sealed` while it is still opening (recovery after a crash).
    pub fn vault(&self) -> Result<Arc<Vault>, ApiError> {
        self.vault.get().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sealed",
                "the vault is still opening (recovery); retry shortly",
            )
        })
    }

    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let vault = self.vault()?;
        let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let principal = authenticate(&self.auth, &vault, auth, Timestamp::now().unix()).map_err(|e| {
            self.metrics.unauthenticated.fetch_add(1, Ordering::Relaxed);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.0)
        })?;
        let purpose = match headers.get("vault-purpose") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| Purpose::parse(s.trim()).ok())
                    .ok_or_else(|| ApiError::invalid("Vault-Purpose must be a procedure code"))?,
            ),
        };
        let purpose = if matches!(principal, Principal::Agency(_)) { purpose } else { None };
        Ok(Caller { principal, purpose })
    }
}

/// A state whose vault is still opening (the unit tests' server).
#[cfg(test)]
pub(crate) fn sealed_state() -> Arc<AppState> {
    Arc::new(AppState {
        vault: std::sync::OnceLock::new(),
        auth: AuthConfig {
            audience: "vault".into(),
            max_lifetime: 3600,
            operator: None,
            providers: Default::default(),
            cache: Default::default(),
        },
        max_content: 1 << 20,
        metrics: Metrics::default(),
        limits: Limits::default(),
        webhooks: Default::default(),
    })
}
