//! Quota leases for edge sites: a site is lent part of a project's
//! compute quota (`instances`, `cores`, `ram`), so people at the site can
//! create servers there even while its link to the root is cut, and never
//! more than the lease.
//!
//! - **At the root** an admin sets a lease with
//!   `PUT /edge/v1/quota-leases/{zone}/{project}` (`{"quota_lease":
//!   {"instances": 2, ...}}`). What the site has not spent of it is held
//!   back from the project's quota here (Nova's `reserved`), so the root
//!   and the site together never pass the project's limit.
//! - **The lease goes down** to the site with the rest of the site's
//!   records. At the site, a server made there (not asked by the root)
//!   spends it; one the site cannot fit into its lease is refused (403)
//!   whether or not the link is up.
//! - **Reconciled on reconnect**: the servers a site made are adopted by
//!   the root when the link returns (see `sync::adopt`) and counted as
//!   that site's spending there, so both ends then count the same.
//!   `GET /edge/v1/quota-leases` shows each lease with what is spent of
//!   it, as this controller counts.

use std::collections::{BTreeMap, HashMap};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use stratus_store::{Query, Record, Tx};

use super::model::Server;
use crate::ApiError;

/// The hint a parent puts on a server it adopted from a site below.
pub const ADOPTED_HINT: &str = "_adopted_from_site";

/// The resources a lease covers, by Nova's quota keys.
pub const KEYS: [&str; 3] = ["instances", "cores", "ram"];

/// Part of a project's compute quota lent to the site `zone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaLease {
    /// `{zone}/{project}`.
    pub id: String,
    /// The site's zone (its name).
    pub zone: String,
    pub project: String,
    pub limits: BTreeMap<String, i64>,
    pub updated_us: i64,
}
record!(
    QuotaLease,
    "quota_lease",
    owner = |l| Some(&l.project),
    parent = |l| Some(&l.zone)
);

fn adopted(s: &Server) -> bool {
    s.hints.get(ADOPTED_HINT).is_some()
}

/// Whether `zone` names the site `site` or a host in it (`site:host`).
fn in_zone(az: Option<&str>, site: &str) -> bool {
    az.is_some_and(|z| z == site || z.split(':').next() == Some(site))
}

/// What the site `zone` has spent of a lease of `project`, counted here:
/// at the site itself (`here`) the servers it made; at a parent the
/// servers it adopted from that site.
pub fn spent(
    tx: &Tx,
    zone: &str,
    project: &str,
    here: bool,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let mut out: BTreeMap<String, i64> = KEYS.iter().map(|k| (k.to_string(), 0)).collect();
    for s in tx.list::<Server>(&Query::owner(project))? {
        let counts = if here {
            s.parent_generation == 0 || adopted(&s)
        } else {
            adopted(&s) && in_zone(s.requested_az.as_deref(), zone)
        };
        if counts {
            *out.get_mut("instances").expect("key") += 1;
            *out.get_mut("cores").expect("key") += s.flavor.vcpus as i64;
            *out.get_mut("ram").expect("key") += s.flavor.ram as i64;
        }
    }
    Ok(out)
}

/// At a parent: what the project's leases to sites hold back from its
/// quota here (each lease less what its site has spent of it).
pub fn reserved(
    tx: &Tx,
    own_zone: Option<&str>,
    project: &str,
) -> Result<HashMap<&'static str, i64>, ApiError> {
    let mut out: HashMap<&'static str, i64> = KEYS.iter().map(|k| (*k, 0)).collect();
    for l in tx.list::<QuotaLease>(&Query::owner(project))? {
        if Some(l.zone.as_str()) == own_zone {
            continue;
        }
        let spent = spent(tx, &l.zone, project, false)?;
        for k in KEYS {
            if let Some(lim) = l.limits.get(k).filter(|v| **v >= 0) {
                *out.get_mut(k).expect("key") += (lim - spent[k]).max(0);
            }
        }
    }
    Ok(out)
}

/// Every project's lease reserve on `key` (`instances`, `cores`, `ram`),
/// for the quota engine at a parent. A site holds back nothing of its own
/// lease (its creates spend it: [`check_here`]); it knows it is a site by
/// its cursor on its parent's log (`sync::link::CURSOR`).
pub fn reserved_all(tx: &Tx, key: &str) -> Result<Vec<(String, i64)>, ApiError> {
    if tx.meta_get("sync.parent_revision")?.is_some() {
        return Ok(Vec::new());
    }
    let mut out: HashMap<String, i64> = HashMap::new();
    for l in tx.list::<QuotaLease>(&Query::all())? {
        let Some(lim) = l.limits.get(key).filter(|v| **v >= 0) else {
            continue;
        };
        let spent = spent(tx, &l.zone, &l.project, false)?;
        let held = (lim - spent.get(key).copied().unwrap_or(0)).max(0);
        if held > 0 {
            *out.entry(l.project.clone()).or_default() += held;
        }
    }
    Ok(out.into_iter().collect())
}

/// At a site: refuses `n` servers of `per` (instances, cores, ram each)
/// made here past the project's lease, if it has one.
pub fn check_here(
    tx: &Tx,
    own_zone: &str,
    project: &str,
    per: [i64; 3],
    n: i64,
) -> Result<(), ApiError> {
    let Some(l) = tx.get::<QuotaLease>(&format!("{own_zone}/{project}"))? else {
        return Ok(());
    };
    let spent = spent(tx, own_zone, project, true)?;
    for (k, per) in KEYS.iter().zip(per) {
        if let Some(lim) = l.limits.get(*k).filter(|v| **v >= 0)
            && spent[*k] + per * n > *lim
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Quota exceeded for {k}: Requested {}, but this site has already spent {} of its lease of {lim} {k}",
                    per * n,
                    spent[*k]
                ),
            ));
        }
    }
    Ok(())
}
