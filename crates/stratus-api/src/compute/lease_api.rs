//! The quota-lease API (`/edge/v1/quota-leases`, admins only); the
//! leases themselves are in [`super::leases`].

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use serde_json::{Value, json};
use stratus_store::{Query, Tx};

use super::leases::{KEYS, QuotaLease, reserved, spent};
use super::quotas::Resource;
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/quota-leases", get(list))
        .route(
            "/edge/v1/quota-leases/{zone}/{project}",
            put(set).get(show).delete(remove),
        )
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
        // Under a tree model the engine's figures, which hold back the
        // leases of every project of the pool, must stay non-negative.
        if super::quotas::tree_model(tx)? {
            for r in [Resource::Instances, Resource::Cores, Resource::Ram] {
                let Some(m) = super::quotas::meter(r) else { continue };
                let f = crate::identity::quota::figures(tx, m, &project)?;
                if f.limit >= 0 && f.in_use + f.reserved + f.allocated + f.lent - f.borrowed > f.limit {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!(
                            "The lease does not fit the {} quota of {}: {}, with {} in use, {} held for sites and {} allocated to child projects.",
                            r.key(), f.quota_root, f.limit, f.in_use, f.reserved, f.allocated
                        ),
                    ));
                }
            }
            return view(tx, own.as_deref(), &l);
        }
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
    if state.sites.own_zone().is_some() {
        return Err(ApiError::conflict(
            "Quota leases are set at the root and come down to the site.",
        ));
    }
    state.store.write(|tx| {
        let id = format!("{zone}/{project}");
        if !tx.delete::<QuotaLease>(&id)? {
            return Err(ApiError::not_found("quota lease", &id));
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
