//! Snapshots (`/snapshots`): create (a copy of the volume on its storage
//! node), list, show, update, delete, metadata, and `os-reset_status`
//! for admins.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};
use stratus_wire::volume::VolumeTask;

use super::model::{Snapshot, Volume, VolumeType};
use super::service::{Delta, check_quota, written};
use super::{Mv, VCtx, blocking, body, not_found, opt_str, param, policy_denied, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/snapshots", get(list).post(create))
        .route("/snapshots/detail", get(list_detail))
        .route("/snapshots/{id}", get(show).put(update).delete(delete))
        .route(
            "/snapshots/{id}/metadata",
            get(meta).post(meta_merge).put(meta_replace),
        )
        .route(
            "/snapshots/{id}/metadata/{key}",
            get(meta_key).put(meta_put).delete(meta_delete),
        )
        .route("/snapshots/{id}/action", post(action))
}

/// A snapshot; with `detail` (show and the detailed list) the extended
/// attributes too, as Cinder's views.
fn render(s: &Snapshot, detail: bool, mv: Mv, admin: bool) -> Value {
    let mut out = json!({
        "id": s.id,
        "name": s.name,
        "description": s.description,
        "volume_id": s.volume_id,
        "size": s.size,
        "status": s.status,
        "metadata": s.metadata,
        "created_at": ts(s.created_us),
        "updated_at": ts(s.updated_us),
    });
    if detail {
        out["os-extended-snapshot-attributes:project_id"] = json!(s.project_id);
        out["os-extended-snapshot-attributes:progress"] = json!(match &s.progress {
            Some(p) => p.as_str(),
            None if s.status == "available" => "100%",
            None => "0%",
        });
        if admin && mv.at_least(21) {
            out["provider_id"] = Value::Null;
        }
        if mv.at_least(41) {
            out["user_id"] = json!(s.user_id);
        }
    }
    if mv.at_least(65) {
        out["consumes_quota"] = json!(true);
    }
    super::group_model::snapshot_view(&mut out, s, mv);
    out
}

fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<Snapshot, ApiError> {
    tx.get::<Snapshot>(id)?
        .filter(|s| ctx.owns(&s.project_id))
        .ok_or_else(|| not_found("Snapshot", id))
}

async fn list(s: State<AppState>, ctx: VCtx, mv: Mv, q: Query<HashMap<String, String>>) -> J {
    listing(s, ctx, mv, q, false).await
}

async fn list_detail(
    s: State<AppState>,
    ctx: VCtx,
    mv: Mv,
    q: Query<HashMap<String, String>>,
) -> J {
    listing(s, ctx, mv, q, true).await
}

async fn listing(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
    detail: bool,
) -> J {
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "snapshot", &[])?;
    let paging = super::paging(&q)?;
    // 3.22: snapshots with this metadata.
    let meta_filter = match q.get("metadata") {
        Some(m) if mv.at_least(22) => {
            let fixed = m.replace('\'', "\"");
            let v: Value = serde_json::from_str(&fixed)
                .map_err(|_| ApiError::bad_request(format!("Invalid metadata filter: {m}")))?;
            Some(super::metadata(&v)?)
        }
        _ => None,
    };
    let with_count = mv.at_least(45)
        && q.get("with_count")
            .is_some_and(|c| super::parse_bool(&json!(c)).unwrap_or(false));
    let admin = ctx.is_admin();
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let items: Vec<Value> = state
            .store
            .list::<Snapshot>(&query)?
            .iter()
            .filter(|s| {
                super::filters::text_matches(&q, "name", s.name.as_deref(), mv)
                    && super::filters::text_matches_ci(&q, "status", &s.status, mv)
                    && q.get("volume_id").is_none_or(|x| *x == s.volume_id)
                    && (!all || q.get("project_id").is_none_or(|x| *x == s.project_id))
                    && meta_filter
                        .as_ref()
                        .is_none_or(|m| m.iter().all(|(k, x)| s.metadata.get(k) == Some(x)))
            })
            .map(|s| render(s, detail, mv, admin))
            .collect();
        let count = items.len();
        let items = super::page(items, &paging)?;
        let path = if detail {
            "snapshots/detail"
        } else {
            "snapshots"
        };
        let mut out = json!({"snapshots": items});
        if let Some(l) = super::next_links(
            &state,
            &own,
            path,
            out["snapshots"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
            &paging,
        ) {
            out["snapshots_links"] = l;
        }
        if with_count {
            out["count"] = json!(count);
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    blocking(move || {
        let s = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(
            json!({"snapshot": render(&s, true, mv, ctx.is_admin())}),
        ))
    })
    .await
}

async fn create(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    raw: Bytes,
) -> Result<(StatusCode, axum::Json<Value>), ApiError> {
    ctx.project()?;
    let b = body(&raw)?;
    let s = b
        .get("snapshot")
        .filter(|s| s.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'snapshot' in request body.")
        })?;
    let volume_id = opt_str(&s, "volume_id", 255)?.ok_or_else(|| not_found("Volume", "None"))?;
    let name = opt_str(&s, "name", 255)?.or(opt_str(&s, "display_name", 255)?);
    let description = opt_str(&s, "description", 255)?.or(opt_str(&s, "display_description", 255)?);
    let force = s
        .get("force")
        .map(|f| {
            super::parse_bool(f)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid value '{f}' for force.")))
        })
        .transpose()?;
    // 3.66: a volume in use is snapshotted without asking; saying it must
    // not be is a contradiction Cinder refuses.
    if mv.at_least(66) && force == Some(false) {
        return Err(ApiError::bad_request(
            "Invalid value 'False' for force: from microversion 3.66 a snapshot of a volume in use needs no force flag, and force=False is refused.",
        ));
    }
    let force = force.unwrap_or(false) || mv.at_least(66);
    let metadata = match s.get("metadata") {
        None | Some(Value::Null) => Default::default(),
        Some(m) => super::metadata(m)?,
    };
    blocking(move || {
        let (snap, rev) = state.store.write(|tx| {
            let v = super::volumes::find(tx, &ctx, &volume_id)?;
            let ok = v.status == "available" || (force && v.status == "in-use");
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume {} status must be available, but current status is: {}.",
                    v.id, v.status
                )));
            }
            create_in(tx, &ctx, &v, name.clone(), description.clone(), metadata.clone())
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(json!({"snapshot": render(&snap, false, mv, false)}))))
    })
    .await
}

/// Records a new snapshot of `v` (its status already checked) in `tx`,
/// within the project's quota; the storage node makes it. Also Nova's
/// snapshot of a volume-backed server (`compute/snapshots.rs`).
pub(crate) fn create_in(
    tx: &Tx,
    ctx: &VCtx,
    v: &Volume,
    name: Option<String>,
    description: Option<String>,
    metadata: std::collections::BTreeMap<String, String>,
) -> Result<(Snapshot, i64), ApiError> {
    let tname = tx.get::<VolumeType>(&v.volume_type_id)?.map(|t| t.name);
    check_quota(
        tx,
        &v.project_id,
        &Delta {
            volumes: 0,
            snapshots: 1,
            gigabytes: v.size as i64,
            type_name: tname.as_deref(),
        },
        v.size,
    )?;
    let now = now_us();
    let snap = Snapshot {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: v.project_id.clone(),
        user_id: ctx.user_id().to_string(),
        volume_id: v.id.clone(),
        name,
        description,
        size: v.size,
        status: "creating".into(),
        host: v.host.clone(),
        volume_type_id: v.volume_type_id.clone(),
        metadata,
        task: Some(VolumeTask::Snapshot),
        generation: 1,
        fault: None,
        progress: None,
        group_snapshot_id: None,
        created_us: now,
        updated_us: now,
    };
    let rev = tx.insert(&snap)?;
    Ok((snap, rev))
}

async fn update(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    let b = body(&raw)?;
    let u = b
        .get("snapshot")
        .filter(|v| v.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'snapshot' in request body.")
        })?;
    let name = opt_str(&u, "name", 255)?.or(opt_str(&u, "display_name", 255)?);
    let description = opt_str(&u, "description", 255)?.or(opt_str(&u, "display_description", 255)?);
    blocking(move || {
        let s = state.store.write(|tx| {
            let mut s = find(tx, &ctx, &param(&p, "id"))?;
            if u.get("name").is_some() || u.get("display_name").is_some() {
                s.name = name;
            }
            if u.get("description").is_some() || u.get("display_description").is_some() {
                s.description = description;
            }
            s.updated_us = now_us();
            tx.update(&s)?;
            Ok::<_, ApiError>(s)
        })?;
        Ok(axum::Json(
            json!({"snapshot": render(&s, false, mv, false)}),
        ))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let rev = state.store.write(|tx| {
            let mut s = find(tx, &ctx, &param(&p, "id"))?;
            super::group_model::check_snapshot_delete(&s)?;
            if !["available", "error", "error_deleting"].contains(&s.status.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid snapshot: Snapshot status must be available or error (it is {}).",
                    s.status
                )));
            }
            if s.host.is_none() {
                tx.delete::<Snapshot>(&s.id)?;
                return Ok(tx.last_revision()?);
            }
            s.status = "deleting".into();
            s.task = Some(VolumeTask::DeleteSnapshot);
            s.generation += 1;
            s.updated_us = now_us();
            Ok(tx.update(&s)?)
        })?;
        written(&state, rev);
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

fn change_meta(
    state: &AppState,
    ctx: &VCtx,
    id: &str,
    f: impl FnOnce(&mut Snapshot),
) -> Result<Snapshot, ApiError> {
    state.store.write(|tx| {
        let mut s = find(tx, ctx, id)?;
        f(&mut s);
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok(s)
    })
}

fn meta_body(raw: &[u8]) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let b = body(raw)?;
    super::metadata(
        b.get("metadata")
            .ok_or_else(|| ApiError::bad_request("Malformed request body: missing 'metadata'."))?,
    )
}

async fn meta(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let s = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"metadata": s.metadata})))
    })
    .await
}

async fn meta_merge(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let m = meta_body(&raw)?;
    blocking(move || {
        let s = change_meta(&state, &ctx, &param(&p, "id"), |s| s.metadata.extend(m))?;
        Ok(axum::Json(json!({"metadata": s.metadata})))
    })
    .await
}

async fn meta_replace(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let m = meta_body(&raw)?;
    blocking(move || {
        let s = change_meta(&state, &ctx, &param(&p, "id"), |s| s.metadata = m)?;
        Ok(axum::Json(json!({"metadata": s.metadata})))
    })
    .await
}

async fn meta_key(State(state): State<AppState>, ctx: VCtx, Path(p): P) -> J {
    blocking(move || {
        let s = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        let key = param(&p, "key");
        let val = s.metadata.get(&key).ok_or_else(|| {
            not_found(&format!("Snapshot {} has no metadata with key", s.id), &key)
        })?;
        Ok(axum::Json(json!({"meta": {key: val}})))
    })
    .await
}

async fn meta_put(State(state): State<AppState>, ctx: VCtx, Path(p): P, raw: Bytes) -> J {
    let b = body(&raw)?;
    let m = super::metadata(
        b.get("meta")
            .ok_or_else(|| ApiError::bad_request("Malformed request body: missing 'meta'."))?,
    )?;
    let key = param(&p, "key");
    if m.len() != 1 || !m.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    blocking(move || {
        let mm = m.clone();
        change_meta(&state, &ctx, &param(&p, "id"), |s| s.metadata.extend(mm))?;
        Ok(axum::Json(json!({"meta": m})))
    })
    .await
}

async fn meta_delete(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    blocking(move || {
        let key = param(&p, "key");
        let s = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        if !s.metadata.contains_key(&key) {
            return Err(not_found(
                &format!("Snapshot {} has no metadata with key", s.id),
                &key,
            ));
        }
        change_meta(&state, &ctx, &param(&p, "id"), |s| {
            s.metadata.remove(&key);
        })?;
        Ok(StatusCode::OK)
    })
    .await
}

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    let b = body(&raw)?;
    if b.get("os-force_delete").is_some() {
        if !ctx.is_admin() {
            return Err(policy_denied(
                "volume_extension:snapshot_admin_actions:force_delete",
            ));
        }
        return blocking(move || {
            let rev = state.store.write(|tx| {
                let mut s = find(tx, &ctx, &param(&p, "id"))?;
                if s.host.is_none() {
                    tx.delete::<Snapshot>(&s.id)?;
                    return Ok::<_, ApiError>(tx.last_revision()?);
                }
                s.status = "deleting".into();
                s.task = Some(VolumeTask::DeleteSnapshot);
                s.generation += 1;
                s.updated_us = now_us();
                Ok(tx.update(&s)?)
            })?;
            written(&state, rev);
            Ok(StatusCode::ACCEPTED)
        })
        .await;
    }
    // `os-update_snapshot_status`: what a volume driver reports of a
    // snapshot it makes (Nova's assisted snapshots); the snapshot's
    // project's members, as Cinder's default policy).
    let arg = match (b.get("os-reset_status"), b.get("os-update_snapshot_status")) {
        (Some(a), _) => {
            if !ctx.is_admin() {
                return Err(policy_denied(
                    "volume_extension:snapshot_admin_actions:reset_status",
                ));
            }
            a
        }
        (None, Some(a)) => a,
        _ => return Err(ApiError::bad_request("There is no such action.")),
    };
    let status = arg
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ApiError::bad_request("Must specify 'status'"))?;
    if ![
        "available",
        "error",
        "creating",
        "deleting",
        "error_deleting",
    ]
    .contains(&status.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "Must specify a valid status: {status} is not one"
        )));
    }
    let progress = match arg.get("progress") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p.len() <= 255 => Some(p.clone()),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid progress: a string is expected.",
            ));
        }
    };
    blocking(move || {
        state.store.write(|tx| {
            let mut s = find(tx, &ctx, &param(&p, "id"))?;
            s.status = status;
            // Only a driver's report carries progress; a reset forgets it.
            s.progress = progress;
            s.updated_us = now_us();
            tx.update(&s)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(StatusCode::ACCEPTED)
    })
    .await
}
