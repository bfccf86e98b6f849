//! Quotas (`/os-quota-sets`, `/os-quota-class-sets`): limits per project
//! and the defaults, with usage counted from the records. A member reads
//! their own project's; admins read and change any.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};

use super::model::VolumeQuota;
use super::service::{DEFAULT_CLASS, limits, usage};
use super::{VCtx, blocking, body, policy_denied};
use crate::identity::quota as engine;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/os-quota-sets/{target}",
            get(show).put(update).delete(reset),
        )
        .route("/os-quota-sets/{target}/defaults", get(defaults))
        .route(
            "/os-quota-class-sets/{class}",
            get(class_show).put(class_update),
        )
}

fn target(p: &HashMap<String, String>) -> String {
    super::param(p, "target")
}

/// A member may read their own project's quota; admins any.
fn may_read(ctx: &VCtx, project: &str) -> Result<(), ApiError> {
    if ctx.owns(project) {
        Ok(())
    } else {
        Err(policy_denied("volume_extension:quotas:show"))
    }
}

async fn show(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    let project = target(&p);
    may_read(&ctx, &project)?;
    let with_usage = q
        .get("usage")
        .is_some_and(|u| super::parse_bool(&json!(u)).unwrap_or(false));
    blocking(move || {
        let (lim, used, tree) = state.store.write(|tx| {
            // A tree model shows where the project stands in its tree.
            let mut tree = BTreeMap::new();
            if engine::model(tx)? != engine::Model::Flat {
                for m in super::service::METERS {
                    tree.insert(m.resource, engine::figures(tx, m, &project)?);
                }
            }
            Ok::<_, ApiError>((limits(tx, Some(&project))?, usage(tx, &project)?, tree))
        })?;
        let mut out = serde_json::Map::new();
        out.insert("id".into(), json!(project));
        for (k, v) in &lim {
            if let Some(f) = tree.get(k.as_str()) {
                let v = if with_usage {
                    json!({
                        "limit": f.limit, "in_use": f.in_use, "reserved": f.reserved,
                        "allocated": f.allocated, "borrowed": f.borrowed, "lent": f.lent,
                        "free": f.free, "quota_root": f.quota_root,
                    })
                } else {
                    json!(f.limit)
                };
                out.insert(k.clone(), v);
            } else if with_usage {
                let in_use = if k == "per_volume_gigabytes" {
                    0
                } else {
                    used.get(k).copied().unwrap_or(0)
                };
                out.insert(
                    k.clone(),
                    json!({"limit": v, "in_use": in_use, "reserved": 0, "allocated": 0}),
                );
            } else {
                out.insert(k.clone(), json!(v));
            }
        }
        Ok(axum::Json(json!({"quota_set": out})))
    })
    .await
}

async fn defaults(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    let project = target(&p);
    may_read(&ctx, &project)?;
    blocking(move || {
        let lim = state.store.write(|tx| limits(tx, None))?;
        let mut out: serde_json::Map<String, Value> =
            lim.into_iter().map(|(k, v)| (k, json!(v))).collect();
        out.insert("id".into(), json!(project));
        Ok(axum::Json(json!({"quota_set": out})))
    })
    .await
}

/// The limits a body sets, checked against the keys there are.
fn parse_limits(
    raw: &[u8],
    key: &str,
    known: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, i64>, ApiError> {
    let b = body(raw)?;
    let q = b.get(key).and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(format!("Missing required element '{key}' in request body."))
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in q {
        if k == "id" || k == "tenant_id" {
            continue;
        }
        if !known.contains_key(k) {
            return Err(ApiError::bad_request(format!(
                "Bad key(s) in quota set: {k}"
            )));
        }
        let n = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| *n >= -1 && *n <= i32::MAX as i64)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input received: Quota limit {v} for {k} must be an integer of -1 or more."
                ))
            })?;
        out.insert(k.clone(), n);
    }
    Ok(out)
}

async fn update(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin("volume_extension:quotas:update")?;
    let project = target(&p);
    if project.is_empty() || project.len() > 255 || project.starts_with("class:") {
        return Err(ApiError::bad_request(format!(
            "Invalid project id {project:?}"
        )));
    }
    blocking(move || {
        let lim = state.store.write(|tx| {
            let known = limits(tx, Some(&project))?;
            let set = parse_limits(&raw, "quota_set", &known)?;
            let mut rec = tx.get::<VolumeQuota>(&project)?.unwrap_or(VolumeQuota {
                id: project.clone(),
                limits: BTreeMap::new(),
            });
            let keys: Vec<String> = set.keys().cloned().collect();
            rec.limits.extend(set);
            tx.upsert(&rec)?;
            // A tree model keeps allocations inside the parent's limit.
            for k in keys {
                if let Some(m) = super::service::METERS.iter().find(|m| m.resource == k) {
                    engine::validate(tx, m, &project, false)?;
                }
            }
            limits(tx, Some(&project))
        })?;
        Ok(axum::Json(json!({"quota_set": lim})))
    })
    .await
}

async fn reset(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    ctx.admin("volume_extension:quotas:delete")?;
    let project = target(&p);
    blocking(move || {
        state.store.write(|tx| {
            tx.delete::<VolumeQuota>(&project)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(StatusCode::OK)
    })
    .await
}

async fn class_show(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    let class = super::param(&p, "class");
    blocking(move || {
        let _ = &ctx;
        let lim = state.store.write(|tx| {
            let mut l = limits(tx, None)?;
            if let Some(c) = tx.get::<VolumeQuota>(&format!("class:{class}"))? {
                l.extend(c.limits);
            }
            Ok::<_, ApiError>(l)
        })?;
        let mut out: serde_json::Map<String, Value> =
            lim.into_iter().map(|(k, v)| (k, json!(v))).collect();
        out.insert("id".into(), json!(class));
        Ok(axum::Json(json!({"quota_class_set": out})))
    })
    .await
}

async fn class_update(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    ctx.admin("volume_extension:quota_classes:update")?;
    let class = super::param(&p, "class");
    if class.is_empty() || class.len() > 255 {
        return Err(ApiError::bad_request("Invalid quota class name."));
    }
    blocking(move || {
        let id = if class == "default" {
            DEFAULT_CLASS.to_string()
        } else {
            format!("class:{class}")
        };
        let lim = state.store.write(|tx| {
            let known = limits(tx, None)?;
            let set = parse_limits(&raw, "quota_class_set", &known)?;
            let mut rec = tx.get::<VolumeQuota>(&id)?.unwrap_or(VolumeQuota {
                id: id.clone(),
                limits: BTreeMap::new(),
            });
            rec.limits.extend(set);
            tx.upsert(&rec)?;
            let mut l = limits(tx, None)?;
            l.extend(rec.limits);
            Ok::<_, ApiError>(l)
        })?;
        Ok(axum::Json(json!({"quota_class_set": lim})))
    })
    .await
}
