//! Availability zones and node liveness: the default zone, which zone a
//! host is in, whether a node is up, and the stable ids of services. Used
//! by handlers, the core and the scheduler alike; depends on the model only.

use stratus_store::Query as StoreQuery;

use super::model::{Aggregate, ComputeNode};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The zone of hosts in no zone aggregate (Nova's
/// `default_availability_zone`).
pub const DEFAULT_ZONE: &str = "nova";

/// Whether a node's heartbeat is recent enough (Nova's
/// `service_down_time`) and it is not forced down.
pub fn is_up(state: &AppState, n: &ComputeNode) -> bool {
    !n.forced_down
        && now_us() - last_seen(state, n)
            < state.compute.config.service_down_time_s as i64 * 1_000_000
}

/// When the node was last heard of: its newest heartbeat, which lives in
/// memory and the store's liveness table rather than in the record.
pub fn last_seen(state: &AppState, n: &ComputeNode) -> i64 {
    state
        .compute
        .last_seen(&n.id)
        .unwrap_or(0)
        .max(n.last_seen_us)
}

/// The zone a host is in.
pub fn zone_of(aggs: &[Aggregate], host: &str) -> String {
    aggs.iter()
        .find(|a| a.availability_zone.is_some() && a.hosts.iter().any(|h| h == host))
        .and_then(|a| a.availability_zone.clone())
        .unwrap_or_else(|| DEFAULT_ZONE.to_string())
}

pub fn zone_exists(state: &AppState, zone: &str) -> Result<bool, ApiError> {
    if zone == DEFAULT_ZONE || is_own_zone(state, zone) {
        return Ok(true);
    }
    // An edge site (or a site below one): the server goes down to it.
    if state.sites.is_site_zone(&state.store, zone)? {
        return Ok(true);
    }
    Ok(state
        .store
        .list::<Aggregate>(&StoreQuery::all())?
        .iter()
        .any(|a| a.availability_zone.as_deref() == Some(zone)))
}

/// On an edge site: whether `zone` is the site's own zone at its parent,
/// which any of its nodes serves.
pub fn is_own_zone(state: &AppState, zone: &str) -> bool {
    state.sites.own_zone().as_deref() == Some(zone)
}

/// A service's stable uuid (2.53 ids): derived from its binary and host,
/// so it is the same on every controller and across restarts.
pub fn service_uuid(binary: &str, host: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{binary}@{host}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid().to_string()
}

pub fn controller_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}
