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

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stratus_store::{Query, Record, Tx};

use super::model::Server;
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

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

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/quota-leases", get(list))
        .route(
            "/edge/v1/quota-leases/{zone}/{project}",
            put(set).get(show).delete(remove),
        )
}

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

fn view(tx: &Tx, own_zone: Option<&str>, l: &QuotaLease) -> Result<Value, ApiError> {
    let here = Some(l.zone.as_str()) == own_zone;
    let spent = spent(tx, &l.zone, &l.project, here)?;
    Ok(json!({
        "zone": l.zone,
        "project_id": l.project,
        "lease": l.limits,
        "spent": spent,
        "counted_at": if here { "site" } else { "parent" },
    }))
}

async fn list(State(state): State<AppState>, ctx: Ctx) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("edge:quota_leases:list")?;
    let own = state.sites.own_zone();
    let items = state.store.write(|tx| {
        let mut out = Vec::new();
        for l in tx.list::<QuotaLease>(&Query::all())? {
            out.push(view(tx, own.as_deref(), &l)?);
        }
        Ok::<_, ApiError>(out)
    })?;
    Ok(axum::Json(json!({"quota_leases": items})))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((zone, project)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("edge:quota_leases:show")?;
    let own = state.sites.own_zone();
    let v = state.store.write(|tx| {
        let l = tx
            .get::<QuotaLease>(&format!("{zone}/{project}"))?
            .ok_or_else(|| ApiError::not_found("quota lease", &format!("{zone}/{project}")))?;
        view(tx, own.as_deref(), &l)
    })?;
    Ok(axum::Json(json!({"quota_lease": v})))
}

async fn set(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((zone, project)): Path<(String, String)>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<axum::Json<Value>, ApiError> {
    ctx.require_admin("edge:quota_leases:set")?;
    if state.sites.own_zone().is_some() {
        return Err(ApiError::conflict(
            "Quota leases are set at the root and come down to the site.",
        ));
    }
    if !state.sites.is_site_zone(&state.store, &zone)? {
        return Err(ApiError::not_found("site", &zone));
    }
    if state
        .store
        .get::<crate::identity::model::Project>(&project)?
        .is_none()
    {
        return Err(ApiError::not_found("project", &project));
    }
    let o = body
        .get("quota_lease")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("A 'quota_lease' object is required."))?;
    let mut limits = BTreeMap::new();
    for (k, v) in o {
        if !KEYS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Unknown resource '{k}': a lease covers instances, cores and ram."
            )));
        }
        let n = v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(format!("'{k}' must be an integer of at least 0."))
        })?;
        limits.insert(k.clone(), n);
    }
    let own = state.sites.own_zone();
    let v = state.store.write(|tx| {
        let id = format!("{zone}/{project}");
        let mut l = tx.get::<QuotaLease>(&id)?.unwrap_or(QuotaLease {
            id,
            zone: zone.clone(),
            project: project.clone(),
            limits: BTreeMap::new(),
            updated_us: 0,
        });
        l.limits.extend(limits);
        l.updated_us = crate::timeutil::now_us();
        tx.upsert(&l)?;
        // The lease must fit the project's quota beside what it uses.
        let lim = super::quotas::limits_tx(tx, &project, None)?;
        let used = super::quotas::usage_tx(tx, &project, None, "")?;
        let held = reserved(tx, own.as_deref(), &project)?;
        for k in KEYS {
            let max = lim.get(k).copied().unwrap_or(-1);
            if max >= 0 && used.get(k) + held[k] > max {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "The lease does not fit project {project}'s {k} quota: {max}, with {} in use and {} leased to sites and not spent.",
                        used.get(k),
                        held[k]
                    ),
                ));
            }
        }
        view(tx, own.as_deref(), &l)
    })?;
    Ok(axum::Json(json!({"quota_lease": v})))
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((zone, project)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    ctx.require_admin("edge:quota_leases:delete")?;
    state.store.write(|tx| {
        let id = format!("{zone}/{project}");
        if !tx.delete::<QuotaLease>(&id)? {
            return Err(ApiError::not_found("quota lease", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
