//! The transport layer: the service's state, the one mapping from errors to HTTP status codes
//! and bodies ([`ApiError`]), extractors (tokens, bodies, the batch-deposit reader), stream
//! limits, metrics, the middleware around every request, and the router built from the
//! [`Route`]s that [`crate::routes`] declares.

pub mod auth;
pub mod batch;
pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod extract;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod middleware;
pub(crate) mod routing;
pub(crate) mod state;

pub use error::ApiError;
pub use limits::{Limits, BLOCKING_THREADS};
pub use metrics::Metrics;
pub use routing::{router, Route};
pub use state::AppState;
