//! Generic volume groups (`/groups`, microversions 3.13 to 3.58): create,
//! list, show, update (name, description, adding and removing volumes),
//! the actions `delete`, `reset_status` (3.20, admins), `create-from-src`
//! (3.14: a new group from a group snapshot or another group), and the
//! replication actions of 3.38, refused: the file backend does not
//! replicate. Group types live in `group_types.rs`, group snapshots in
//! `group_snapshots.rs`.
//!
//! A group holds no data: it is available as soon as it is recorded,
//! unless its volumes are being made from a source (then `creating`
//! until they are, see [`super::group_model::volume_settled`]). Its volumes carry its id;
//! a volume of a group is deleted with the group (`delete-volumes`), not
//! on its own.
//!
//! The small hooks the volume and snapshot code calls are here too:
//! [`volume_view`], [`snapshot_view`], [`check_new_volume`],
//! [`check_volume_delete`], [`super::group_model::volume_settled`].

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::group_model::{Group, GroupSnapshot};
use super::model::{Snapshot, Volume};
use super::service::written;
use super::volumes::NewVolume;
use super::{Mv, VCtx, blocking, body, not_found, opt_str, param, policy_denied, ts};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// 3.13: groups; 3.14: group snapshots and groups from a source; 3.20:
/// `reset_status`; 3.25: a group's `volumes`; 3.38: replication; 3.58:
/// `project_id` in the views.
pub(crate) use super::group_model::{MV_GROUP_SNAPSHOTS, MV_GROUPS};
const MV_RESET_STATUS: u16 = 20;
const MV_VOLUME_LIST: u16 = 25;
const MV_REPLICATION: u16 = 38;
pub(crate) use super::group_model::MV_PROJECT_ID;

/// Cinder's `GroupStatus` values, which `reset_status` accepts.
const STATUSES: &[&str] = &[
    "error",
    "available",
    "creating",
    "deleting",
    "deleted",
    "updating",
    "in-use",
    "error_deleting",
];

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;
type Created = Result<(StatusCode, axum::Json<Value>), ApiError>;

/// The routes of groups, group types and group snapshots.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/detail", get(list_detail))
        .route("/groups/action", post(create_from_src))
        .route("/groups/{id}", get(show).put(update))
        .route("/groups/{id}/action", post(action))
        .merge(super::group_types::routes())
}

// ---- views -------------------------------------------------------------------

/// Cinder's detailed group view at `mv`; `volumes` when asked for.
fn render(ctx: &VCtx, g: &Group, mv: Mv, volumes: Option<Vec<String>>) -> Value {
    let mut out = json!({
        "id": g.id,
        "status": g.status,
        "availability_zone": g.availability_zone,
        "created_at": ts(g.created_us),
        "name": g.name,
        "description": g.description,
        "group_type": g.group_type_id,
        "volume_types": g.volume_type_ids,
    });
    if mv.at_least(MV_GROUP_SNAPSHOTS) {
        out["group_snapshot_id"] = json!(g.group_snapshot_id);
        out["source_group_id"] = json!(g.source_group_id);
    }
    if mv.at_least(MV_VOLUME_LIST)
        && let Some(v) = volumes
    {
        out["volumes"] = json!(v);
    }
    if mv.at_least(MV_REPLICATION) {
        out["replication_status"] = json!("disabled");
    }
    // Cinder's `group:group_project_attribute` policy: admins.
    if mv.at_least(MV_PROJECT_ID) && ctx.is_admin() {
        out["project_id"] = json!(g.project_id);
    }
    out
}

fn summary(g: &Group) -> Value {
    json!({"id": g.id, "name": g.name})
}

/// A group the caller may see, or Cinder's 404.
pub(crate) fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<Group, ApiError> {
    super::group_model::find_group(tx, ctx, id)
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
    mv.require(MV_GROUPS)?;
    // Cinder reads `list_volume` on lists too (and ignores it there).
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "group", &["list_volume"])?;
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
            .list::<Group>(&query)?
            .iter()
            .filter(|g| {
                super::filters::text_matches(&q, "name", g.name.as_deref(), mv)
                    && super::filters::text_matches_ci(&q, "status", &g.status, mv)
                    && q.get("group_type").is_none_or(|x| *x == g.group_type_id)
                    && q.get("availability_zone")
                        .is_none_or(|x| *x == g.availability_zone)
                    && (!all || q.get("project_id").is_none_or(|x| *x == g.project_id))
            })
            .map(|g| {
                // Sorting by project needs it in the item; dropped below.
                let mut v = render(&ctx, g, mv, None);
                v["project_id"] = json!(g.project_id);
                v
            })
            .collect();
        let items = super::page(items, &paging)?;
        let path = if detail { "groups/detail" } else { "groups" };
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
        let mut out = json!({"groups": items});
        if let Some(l) = links {
            out["groups_links"] = l;
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    Query(q): Query<HashMap<String, String>>,
) -> J {
    mv.require(MV_GROUPS)?;
    let with_volumes = q
        .get("list_volume")
        .is_some_and(|v| super::parse_bool(&json!(v)).unwrap_or(false));
    blocking(move || {
        let out = state.store.write(|tx| {
            let g = find(tx, &ctx, &param(&p, "id"))?;
            let vols = if with_volumes {
                Some(
                    super::group_model::group_members(tx, &g)?
                        .into_iter()
                        .map(|v| v.id)
                        .collect(),
                )
            } else {
                None
            };
            Ok::<_, ApiError>(render(&ctx, &g, mv, vols))
        })?;
        Ok(axum::Json(json!({"group": out})))
    })
    .await
}

/// A group's volume types by id or name (each one the caller may see).
fn volume_types_of(tx: &Tx, ctx: &VCtx, v: &Value) -> Result<Vec<String>, ApiError> {
    let list = v
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute volume_types: a non-empty list of volume types is required.",
            )
        })?;
    let mut out = Vec::new();
    for t in list {
        let key = t.as_str().ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute volume_types. Value: {t}. It is not a string."
            ))
        })?;
        let vt = super::types::find(tx, ctx, key)?;
        if !out.contains(&vt.id) {
            out.push(vt.id);
        }
    }
    Ok(out)
}

/// Refuses (413) a group past the project's `groups` quota (Cinder's
/// default 10); counted in the write that records the group.
fn check_group_quota(tx: &Tx, project: &str) -> Result<(), ApiError> {
    let limit = super::service::limits(tx, Some(project))?
        .get("groups")
        .copied()
        .unwrap_or(-1);
    let used = tx.list::<Group>(&StoreQuery::owner(project))?.len() as i64;
    if limit >= 0 && used + 1 > limit {
        return Err(super::over_limit(format!(
            "GroupLimitExceeded: Maximum number of groups allowed ({limit}) exceeded for quota 'groups'."
        )));
    }
    Ok(())
}

fn zone_of(state: &AppState, zone: Option<String>) -> Result<String, ApiError> {
    match zone {
        Some(z) => {
            if !crate::compute::zones::zone_exists(state, &z)? {
                return Err(ApiError::bad_request(format!(
                    "Invalid input received: Availability zone '{z}' is invalid."
                )));
            }
            Ok(z)
        }
        None => Ok(crate::compute::zones::DEFAULT_ZONE.into()),
    }
}

async fn create(State(state): State<AppState>, ctx: VCtx, mv: Mv, raw: Bytes) -> Created {
    mv.require(MV_GROUPS)?;
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let g = b
        .get("group")
        .filter(|g| g.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'group' in request body.")
        })?;
    let name = opt_str(&g, "name", 255)?.map(|n| n.trim().to_string());
    let description = opt_str(&g, "description", 255)?.map(|n| n.trim().to_string());
    let group_type = opt_str(&g, "group_type", 255)?.ok_or_else(|| {
        ApiError::bad_request("Invalid input for field/attribute group_type: it is required.")
    })?;
    let types = g.get("volume_types").cloned().ok_or_else(|| {
        ApiError::bad_request("Invalid input for field/attribute volume_types: it is required.")
    })?;
    let zone = opt_str(&g, "availability_zone", 255)?;
    blocking(move || {
        let zone = zone_of(&state, zone)?;
        let g = state.store.write(|tx| {
            let gt = super::group_types::find(tx, &ctx, &group_type)?;
            let volume_type_ids = volume_types_of(tx, &ctx, &types)?;
            check_group_quota(tx, &project)?;
            let now = now_us();
            let g = Group {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: project.clone(),
                user_id: ctx.user_id().to_string(),
                name: name.clone(),
                description: description.clone(),
                // Nothing to make on disk: available in the same write.
                status: "available".into(),
                availability_zone: zone.clone(),
                group_type_id: gt.id,
                volume_type_ids,
                group_snapshot_id: None,
                source_group_id: None,
                created_us: now,
                updated_us: now,
            };
            tx.insert(&g)?;
            Ok::<_, ApiError>(g)
        })?;
        Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"group": summary(&g)})),
        ))
    })
    .await
}

/// The ids of a comma-separated list (`"id1, id2"`).
fn ids(s: &Option<String>) -> Vec<String> {
    s.as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

async fn update(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    mv.require(MV_GROUPS)?;
    let b = body(&raw)?;
    let u = b
        .get("group")
        .filter(|g| g.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'group' in request body.")
        })?;
    let name = opt_str(&u, "name", 255)?.map(|n| n.trim().to_string());
    let description = opt_str(&u, "description", 255)?.map(|n| n.trim().to_string());
    let add = ids(&opt_str(&u, "add_volumes", 65535)?);
    let remove = ids(&opt_str(&u, "remove_volumes", 65535)?);
    if name.is_none() && description.is_none() && add.is_empty() && remove.is_empty() {
        return Err(ApiError::bad_request(
            "Name, description, add_volumes, and remove_volumes can not be all empty in the request body.",
        ));
    }
    if let Some(both) = add.iter().find(|a| remove.contains(a)) {
        return Err(ApiError::bad_request(format!(
            "Invalid volume: Volume {both} cannot be both added to and removed from the group."
        )));
    }
    blocking(move || {
        state.store.write(|tx| {
            let mut g = find(tx, &ctx, &param(&p, "id"))?;
            if (!add.is_empty() || !remove.is_empty()) && g.status != "available" {
                return Err(ApiError::bad_request(format!(
                    "Invalid group: Group {} status must be available, but current status is: {}.",
                    g.id, g.status
                )));
            }
            let now = now_us();
            for id in &add {
                let cannot = |why: &str| {
                    ApiError::bad_request(format!(
                        "Invalid volume: Cannot add volume {id} to group {} because {why}.",
                        g.id
                    ))
                };
                let mut v = tx
                    .get::<Volume>(id)?
                    .filter(|v| v.project_id == g.project_id)
                    .ok_or_else(|| cannot("volume cannot be found"))?;
                match v.group_id.as_deref() {
                    Some(x) if x == g.id => continue,
                    Some(x) => return Err(cannot(&format!("it is already in group {x}"))),
                    None => {}
                }
                if v.status != "available" && v.status != "in-use" {
                    return Err(cannot(&format!(
                        "volume is in an invalid state: {}. Valid states are: ('available', 'in-use')",
                        v.status
                    )));
                }
                if !g.volume_type_ids.contains(&v.volume_type_id) {
                    return Err(cannot("volume type is not supported by the group"));
                }
                v.group_id = Some(g.id.clone());
                v.updated_us = now;
                tx.update(&v)?;
            }
            for id in &remove {
                let cannot = |why: &str| {
                    ApiError::bad_request(format!(
                        "Invalid volume: Cannot remove volume {id} from group {} because {why}.",
                        g.id
                    ))
                };
                let mut v = tx
                    .get::<Volume>(id)?
                    .filter(|v| v.group_id.as_deref() == Some(g.id.as_str()))
                    .ok_or_else(|| cannot("it is not in the group"))?;
                if !["available", "in-use", "error", "error_deleting"].contains(&v.status.as_str())
                {
                    return Err(cannot(&format!(
                        "volume is in an invalid state: {}. Valid states are: ('available', 'in-use', 'error', 'error_deleting')",
                        v.status
                    )));
                }
                v.group_id = None;
                v.updated_us = now;
                tx.update(&v)?;
            }
            if u.get("name").is_some() {
                g.name = name;
            }
            if u.get("description").is_some() {
                g.description = description;
            }
            g.updated_us = now;
            tx.update(&g)?;
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    mv.require(MV_GROUPS)?;
    let b = body(&raw)?;
    let Some((name, arg)) = b
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
    else {
        return Err(ApiError::bad_request(
            "Malformed request body: exactly one action is expected.",
        ));
    };
    let id = param(&p, "id");
    match name.as_str() {
        "delete" => {
            let delete_volumes = match arg.get("delete-volumes") {
                None | Some(Value::Null) => false,
                Some(v) => super::parse_bool(v).ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid value '{v}' for delete-volumes."))
                })?,
            };
            blocking(move || {
                let rev = state
                    .store
                    .write(|tx| start_delete(tx, &ctx, &id, delete_volumes))?;
                written(&state, rev);
                Ok(StatusCode::ACCEPTED.into_response())
            })
            .await
        }
        "reset_status" => {
            mv.require(MV_RESET_STATUS)?;
            if !ctx.is_admin() {
                return Err(policy_denied("group:reset_status"));
            }
            let status = arg
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| ApiError::bad_request("Must specify 'status'"))?;
            if !STATUSES.contains(&status.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "Invalid group status: {status} is not a group status."
                )));
            }
            blocking(move || {
                state.store.write(|tx| {
                    let mut g = find(tx, &ctx, &id)?;
                    g.status = status;
                    g.updated_us = now_us();
                    tx.update(&g)?;
                    Ok::<_, ApiError>(())
                })?;
                Ok(StatusCode::ACCEPTED.into_response())
            })
            .await
        }
        "enable_replication"
        | "disable_replication"
        | "failover_replication"
        | "list_replication_targets" => {
            mv.require(MV_REPLICATION)?;
            blocking(move || {
                let g = state.store.write(|tx| find(tx, &ctx, &id))?;
                Err(ApiError::bad_request(format!(
                    "Invalid group type: Group {} is not a replication group type (the file backend does not replicate).",
                    g.id
                )))
            })
            .await
        }
        other => Err(ApiError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

/// Starts deleting a group: refused while it has group snapshots, or
/// volumes without `delete-volumes`; its volumes are deleted by their
/// storage node and the group goes with the last (at once when empty).
fn start_delete(tx: &Tx, ctx: &VCtx, id: &str, delete_volumes: bool) -> Result<i64, ApiError> {
    let mut g = find(tx, ctx, id)?;
    if !delete_volumes && !["available", "error"].contains(&g.status.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid group: Group status must be available or error, but current status is: {}",
            g.status
        )));
    }
    if tx
        .list::<GroupSnapshot>(&StoreQuery::parent(&g.id))?
        .iter()
        .any(|s| s.group_id == g.id)
    {
        return Err(ApiError::bad_request(format!(
            "Invalid group: Group {} has existing snapshots.",
            g.id
        )));
    }
    let vols = super::group_model::group_members(tx, &g)?;
    if !vols.is_empty() && !delete_volumes {
        return Err(ApiError::bad_request(format!(
            "Invalid group: Group {} still contains volumes. The delete-volumes flag is required to delete it.",
            g.id
        )));
    }
    let snaps = tx.list::<Snapshot>(&StoreQuery::owner(&g.project_id))?;
    for v in &vols {
        if !v.attachments.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Invalid group: Volume {} in group {} is attached. Need to detach first.",
                v.id, g.id
            )));
        }
        if snaps.iter().any(|s| s.volume_id == v.id) {
            return Err(ApiError::bad_request(format!(
                "Invalid group: Volume {} in group {} still has dependent snapshots.",
                v.id, g.id
            )));
        }
        if v.task.is_some() && v.status != "deleting" {
            return Err(ApiError::bad_request(format!(
                "Invalid group: Volume {} in group {} is {}; wait until it settles.",
                v.id, g.id, v.status
            )));
        }
    }
    for mut v in vols {
        if v.status != "deleting" {
            super::volumes::start_delete(tx, &mut v, false)?;
        }
    }
    if super::group_model::group_members(tx, &g)?.is_empty() {
        tx.delete::<Group>(&g.id)?;
        return Ok(tx.last_revision()?);
    }
    g.status = "deleting".into();
    g.updated_us = now_us();
    Ok(tx.update(&g)?)
}

/// `POST /groups/action` `create-from-src` (3.14): a new group of the
/// source's group type and volume types, with one volume made from each
/// member snapshot of a group snapshot, or cloned from each volume of a
/// source group; `creating` until they are all made.
async fn create_from_src(State(state): State<AppState>, ctx: VCtx, mv: Mv, raw: Bytes) -> Created {
    mv.require(MV_GROUP_SNAPSHOTS)?;
    let project = ctx.project()?.to_string();
    let b = body(&raw)?;
    let a = b
        .get("create-from-src")
        .filter(|g| g.is_object())
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'create-from-src' in request body.")
        })?;
    let name = opt_str(&a, "name", 255)?.map(|n| n.trim().to_string());
    let description = opt_str(&a, "description", 255)?.map(|n| n.trim().to_string());
    let from_snapshot = opt_str(&a, "group_snapshot_id", 255)?;
    let from_group = opt_str(&a, "source_group_id", 255)?;
    let from_snapshot = match (from_snapshot, from_group) {
        (Some(s), None) => Ok(s),
        (None, Some(g)) => Err(g),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid input received: exactly one of group_snapshot_id and source_group_id is required.",
            ));
        }
    };
    blocking(move || {
        let (g, rev) = state.store.write(|tx| {
            // The source: its group (type, volume types, zone) and, per
            // new volume, where its data comes from.
            let (src, sources): (Group, Vec<NewVolume>) = match &from_snapshot {
                Ok(sid) => {
                    let gs = super::group_model::find_group_snapshot(tx, &ctx, sid)?;
                    if gs.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid group snapshot: Group snapshot {} status must be available, but current status is: {}.",
                            gs.id, gs.status
                        )));
                    }
                    let src = tx
                        .get::<Group>(&gs.group_id)?
                        .ok_or_else(|| not_found("Group", &gs.group_id))?;
                    let mut out = Vec::new();
                    for s in super::group_model::snapshot_members(tx, &gs)? {
                        let parent = tx.get::<Volume>(&s.volume_id)?;
                        out.push(NewVolume {
                            size: Some(s.size),
                            name: parent.as_ref().and_then(|p| p.name.clone()),
                            description: parent.as_ref().and_then(|p| p.description.clone()),
                            volume_type: Some(s.volume_type_id.clone()),
                            snapshot: Some(s.id.clone()),
                            ..Default::default()
                        });
                    }
                    (src, out)
                }
                Err(gid) => {
                    let src = find(tx, &ctx, gid)?;
                    if src.status != "available" {
                        return Err(ApiError::bad_request(format!(
                            "Invalid group: Source group {} status must be available, but current status is: {}.",
                            src.id, src.status
                        )));
                    }
                    let out = super::group_model::group_members(tx, &src)?
                        .into_iter()
                        .map(|v| NewVolume {
                            size: Some(v.size),
                            name: v.name.clone(),
                            description: v.description.clone(),
                            volume_type: Some(v.volume_type_id.clone()),
                            source_volume: Some(v.id.clone()),
                            ..Default::default()
                        })
                        .collect();
                    (src, out)
                }
            };
            check_group_quota(tx, &project)?;
            let now = now_us();
            let mut g = Group {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: project.clone(),
                user_id: ctx.user_id().to_string(),
                name: name.clone(),
                description: description.clone(),
                status: "creating".into(),
                availability_zone: src.availability_zone.clone(),
                group_type_id: src.group_type_id.clone(),
                volume_type_ids: src.volume_type_ids.clone(),
                group_snapshot_id: from_snapshot.as_ref().ok().cloned(),
                source_group_id: from_snapshot.as_ref().err().cloned(),
                created_us: now,
                updated_us: now,
            };
            tx.insert(&g)?;
            let mut made = Vec::new();
            for mut req in sources {
                req.group_id = Some(g.id.clone());
                let (v, _) = super::volumes::create_in(&state, tx, &ctx, &project, &req, None)?;
                made.push(v);
            }
            // Volumes no node could take are in `error` already.
            if !made.iter().any(|v| v.status == "creating") {
                g.status = if made.iter().any(|v| v.status == "error") {
                    "error"
                } else {
                    "available"
                }
                .into();
                tx.update(&g)?;
            }
            let rev = tx.last_revision()?;
            Ok::<_, ApiError>((g, rev))
        })?;
        written(&state, rev);
        Ok((StatusCode::ACCEPTED, axum::Json(json!({"group": summary(&g)}))))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_store::Store;

    fn group(status: &str) -> Group {
        Group {
            id: "g".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            name: None,
            description: None,
            status: status.into(),
            availability_zone: "nova".into(),
            group_type_id: "gt".into(),
            volume_type_ids: vec!["t".into()],
            group_snapshot_id: None,
            source_group_id: None,
            created_us: 0,
            updated_us: 0,
        }
    }

    fn volume(id: &str, status: &str) -> Volume {
        serde_json::from_value(json!({
            "id": id, "project_id": "p", "user_id": "u", "size": 1,
            "status": status, "availability_zone": "nova", "host": "n",
            "volume_type_id": "t", "group_id": "g",
            "created_us": 0, "updated_us": 0,
        }))
        .unwrap()
    }

    fn status(store: &Store) -> Option<String> {
        store.get::<Group>("g").unwrap().map(|g| g.status)
    }

    #[test]
    fn a_group_made_from_a_source_settles_with_its_last_volume() {
        let store = Store::open_in_memory().unwrap();
        store
            .write(|tx| {
                tx.insert(&group("creating"))?;
                tx.insert(&volume("a", "creating"))?;
                tx.insert(&volume("b", "creating"))?;
                Ok::<_, ApiError>(())
            })
            .unwrap();
        let settle = |id: &str, st: &str| {
            store
                .write(|tx| {
                    let v = volume(id, st);
                    crate::volume::group_model::volume_settled(tx, &v, false)?;
                    tx.update(&v)?;
                    Ok::<_, ApiError>(())
                })
                .unwrap()
        };
        settle("a", "available");
        assert_eq!(status(&store).as_deref(), Some("creating"));
        settle("b", "error");
        assert_eq!(status(&store).as_deref(), Some("error"));
    }

    #[test]
    fn a_deleted_group_goes_with_its_last_volume() {
        let store = Store::open_in_memory().unwrap();
        store
            .write(|tx| {
                tx.insert(&group("deleting"))?;
                tx.insert(&volume("a", "deleting"))?;
                tx.insert(&volume("b", "deleting"))?;
                Ok::<_, ApiError>(())
            })
            .unwrap();
        for (id, left) in [("a", true), ("b", false)] {
            store
                .write(|tx| {
                    tx.delete::<Volume>(id)?;
                    crate::volume::group_model::volume_settled(tx, &volume(id, "deleting"), true)
                })
                .unwrap();
            assert_eq!(status(&store).is_some(), left, "after {id}");
        }
    }

    #[test]
    fn volume_lists_are_comma_separated_ids() {
        assert_eq!(ids(&Some(" a, b,,c ".into())), vec!["a", "b", "c"]);
        assert!(ids(&None).is_empty());
    }
}
