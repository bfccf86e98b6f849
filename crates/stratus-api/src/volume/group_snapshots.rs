//! Group snapshots (`/group_snapshots`, microversion 3.14): one real
//! snapshot of every volume of a group, made by the storage nodes as any
//! snapshot (`snapshots::create_in`), each carrying the group snapshot's
//! id. List (filters, sort and paging as 3.29), show, delete (its member
//! snapshots with it) and `reset_status` (3.19, admins).
//!
//! Status: `creating` until every member snapshot is made, then
//! `available` (`error` when one failed); `deleting` until the last
//! member is gone, then gone ([`super::group_model::snapshot_settled`], called when a
//! storage node reports).

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};
use stratus_wire::volume::VolumeTask;

use super::group_model::GroupSnapshot;
use super::group_model::{MV_GROUP_SNAPSHOTS, MV_PROJECT_ID};
use super::model::Snapshot;
use super::service::written;
use super::{Mv, VCtx, blocking, body, opt_str, param, policy_denied, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

const MV_RESET_STATUS: u16 = 19;

/// Cinder's `GroupSnapshotStatus` values, which `reset_status` accepts.
const STATUSES: &[&str] = &[
    "error",
    "available",
    "creating",
    "deleting",
    "deleted",
    "updating",
    "error_deleting",
];

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;
type Created = Result<(StatusCode, axum::Json<Value>), ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/group_snapshots", get(list).post(create))
        .route("/group_snapshots/detail", get(list_detail))
        .route("/group_snapshots/{id}", get(show).delete(delete))
        .route("/group_snapshots/{id}/action", post(action))
}

// ---- views and handlers ------------------------------------------------------

/// A group snapshot the caller may see, or Cinder's 404.
pub(crate) fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<GroupSnapshot, ApiError> {
    super::group_model::find_group_snapshot(tx, ctx, id)
}

fn render(ctx: &VCtx, g: &GroupSnapshot, mv: Mv) -> Value {
    let mut out = json!({
        "id": g.id,
        "group_id": g.group_id,
        "group_type_id": g.group_type_id,
        "status": g.status,
        "created_at": ts(g.created_us),
        "name": g.name,
        "description": g.description,
    });
    // Cinder's `group:group_snapshot_project_attribute`: admins.
    if mv.at_least(MV_PROJECT_ID) && ctx.is_admin() {
        out["project_id"] = json!(g.project_id);
    }
    out
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
    mv.require(MV_GROUP_SNAPSHOTS)?;
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "group_snapshot", &[])?;
    let paging = super::paging(&q)?;
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
            .list::<GroupSnapshot>(&query)?
            .iter()
            .filter(|g| {
                super::filters::text_matches(&q, "name", g.name.as_deref(), mv)
                    && super::filters::text_matches_ci(&q, "status", &g.status, mv)
                    && q.get("group_id").is_none_or(|x| *x == g.group_id)
                    && (!all || q.get("project_id").is_none_or(|x| *x == g.project_id))
            })
            .map(|g| {
                let mut v = render(&ctx, g, mv);
                v["project_id"] = json!(g.project_id);
                v
            })
            .collect();
        let items = super::page(items, &paging)?;
        let path = if detail {
            "group_snapshots/detail"
        } else {
            "group_snapshots"
        };
        let links = super::next_links(&state, &own, path, &items, &paging);
        let show_project = mv.at_least(MV_PROJECT_ID) && ctx.is_admin();
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut v| {
                if !detail {
                    return json!({"id": v["id"], "name": v["name"]});
                }
                if !show_project && let Some(o) = v.as_object_mut() {
                    o.remove("project_id");
                }
                v
            })
            .collect();
        let mut out = json!({"group_snapshots": items});
        if let Some(l) = links {
            out["group_snapshots_links"] = l;
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(MV_GROUP_SNAPSHOTS)?;
    blocking(move || {
        let g = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"group_snapshot": render(&ctx, &g, mv)})))
    })
    .await
}

async fn create(State(state): State<AppState>, ctx: VCtx, mv: Mv, raw: Bytes) -> Created {
    mv.require(MV_GROUP_SNAPSHOTS)?;
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let a = b
        .get("group_snapshot")
        .filter(|g| g.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'group_snapshot' in request body.")
        })?;
    let group_id = opt_str(&a, "group_id", 255)?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field/attribute group_id: it is required.")
    })?;
    let name = opt_str(&a, "name", 255)?.map(|n| n.trim().to_string());
    let description = opt_str(&a, "description", 255)?.map(|n| n.trim().to_string());
    blocking(move || {
        let (gs, rev) = state.store.write(|tx| {
            let g = super::group_model::find_group(tx, &ctx, &group_id)?;
            if g.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid group: Group {} status must be available, but current status is: {}.",
                    g.id, g.status
                )));
            }
            let vols = super::group_model::group_members(tx, &g)?;
            if let Some(v) = vols
                .iter()
                .find(|v| v.status != "available" && v.status != "in-use")
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume {} in group {} status must be available or in-use, but current status is: {}.",
                    v.id, g.id, v.status
                )));
            }
            let now = now_us();
            let mut gs = GroupSnapshot {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: project.clone(),
                user_id: ctx.user_id().to_string(),
                group_id: g.id.clone(),
                group_type_id: g.group_type_id.clone(),
                name: name.clone(),
                description: description.clone(),
                // A group without volumes has nothing to wait for.
                status: if vols.is_empty() { "available" } else { "creating" }.into(),
                created_us: now,
                updated_us: now,
            };
            tx.insert(&gs)?;
            let mut failed = false;
            for v in &vols {
                // The snapshot path every snapshot takes (quota, node),
                // then tagged with the group snapshot in the same write.
                let (mut s, _) = super::snapshots::create_in(
                    tx,
                    &ctx,
                    v,
                    name.clone(),
                    description.clone(),
                    Default::default(),
                )?;
                s.group_snapshot_id = Some(gs.id.clone());
                if s.host.is_none() {
                    // No node holds the volume: nothing can copy it.
                    s.status = "error".into();
                    s.task = None;
                    failed = true;
                }
                tx.update(&s)?;
            }
            if failed {
                gs.status = "error".into();
                tx.update(&gs)?;
            }
            let rev = tx.last_revision()?;
            Ok::<_, ApiError>((gs, rev))
        })?;
        written(&state, rev);
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"group_snapshot": {
                "id": gs.id, "name": gs.name, "group_type_id": gs.group_type_id,
            }})),
        ))
    })
    .await
}

async fn delete(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
) -> Result<StatusCode, ApiError> {
    mv.require(MV_GROUP_SNAPSHOTS)?;
    blocking(move || {
        let rev = state.store.write(|tx| {
            let mut gs = find(tx, &ctx, &param(&p, "id"))?;
            if !["available", "error", "error_deleting"].contains(&gs.status.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid group snapshot: Group snapshot status must be available or error, and no Group can be currently using it as source for its creation (it is {}).",
                    gs.status
                )));
            }
            let members = super::group_model::snapshot_members(tx, &gs)?;
            if let Some(s) = members
                .iter()
                .find(|s| !["available", "error", "error_deleting"].contains(&s.status.as_str()))
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid group snapshot: Snapshot {} is {}, it cannot be deleted with its group snapshot.",
                    s.id, s.status
                )));
            }
            let mut left = 0;
            for mut s in members {
                if s.host.is_none() {
                    tx.delete::<Snapshot>(&s.id)?;
                    continue;
                }
                s.status = "deleting".into();
                s.task = Some(VolumeTask::DeleteSnapshot);
                s.generation += 1;
                s.updated_us = now_us();
                tx.update(&s)?;
                left += 1;
            }
            if left == 0 {
                tx.delete::<GroupSnapshot>(&gs.id)?;
                return Ok(tx.last_revision()?);
            }
            gs.status = "deleting".into();
            gs.updated_us = now_us();
            Ok::<_, ApiError>(tx.update(&gs)?)
        })?;
        written(&state, rev);
        Ok(StatusCode::ACCEPTED)
    })
    .await
}

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    mv.require(MV_GROUP_SNAPSHOTS)?;
    let b = body(&raw)?;
    let Some(arg) = b.get("reset_status") else {
        return Err(ApiError::bad_request("There is no such action."));
    };
    mv.require(MV_RESET_STATUS)?;
    if !ctx.is_admin() {
        return Err(policy_denied("group:reset_group_snapshot_status"));
    }
    let status = arg
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| ApiError::bad_request("Must specify 'status'"))?;
    if !STATUSES.contains(&status.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid group snapshot status: {status} is not a group snapshot status."
        )));
    }
    blocking(move || {
        state.store.write(|tx| {
            let mut gs = find(tx, &ctx, &param(&p, "id"))?;
            gs.status = status;
            gs.updated_us = now_us();
            tx.update(&gs)?;
            Ok::<_, ApiError>(())
        })?;
        Ok(StatusCode::ACCEPTED)
    })
    .await
}
