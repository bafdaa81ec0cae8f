//! The `/v1` HTTP contract of api.md and the service endpoints, one file per resource. Each
//! file declares its routes once (its `ROUTES`, see [`Route`]) with their handlers; the
//! router, `/openapi.json` and the `Allow` lists of 405 answers are fed from the union,
//! [`all`].

use crate::http::Route;

pub(crate) mod agencies;
pub(crate) mod audit;
pub(crate) mod contents;
pub(crate) mod documents;
pub(crate) mod grants;
pub(crate) mod owners;
pub(crate) mod reuse;
pub(crate) mod service;
pub mod stats;
pub(crate) mod webhooks;

/// The route lists of every resource, in the order the contract lists them.
const ALL: &[&[Route]] = &[
    contents::ROUTES,
    documents::ROUTES,
    reuse::ROUTES,
    grants::ROUTES,
    owners::ROUTES,
    audit::ROUTES,
    agencies::ROUTES,
    webhooks::ROUTES,
    stats::ROUTES,
    service::ROUTES,
];

/// Every route of the service (see [`Route`]).
pub fn all() -> impl Iterator<Item = &'static Route> {
    ALL.iter().flat_map(|routes| routes.iter())
}

#[cfg(test)]
mod tests {
    /// Each method and path is declared by exactly one resource.
    #[test]
    fn every_route_is_declared_once() {
        let mut seen = std::collections::HashSet::new();
        for r in super::all() {
            assert!(seen.insert((r.method, r.path)), "{r:?} is declared twice");
        }
    }
}
