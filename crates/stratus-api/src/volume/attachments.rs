//! Cinder's attachments API (3.27; `os-complete` 3.44, `mode` 3.54):
//! `/attachments`.
//!
//! An attachment is one entry of a volume's `attachments` (the same
//! records the compute API's attaches write), so this API shows the
//! attachments Nova made as well as its own. Like Cinder's, an attachment
//! made here is the volume service's side only: creating one reserves the
//! volume for a consumer (`reserved`), a connector moves it on
//! (`attaching`) and answers how to reach the volume, `os-complete` marks
//! it `attached` (the volume `in-use`). Nothing on a compute node changes:
//! a consumer outside the compute API (a bare-metal host, a backup agent)
//! does its own connecting. Deleting one made by a server's attach starts
//! that server's detach, so the server and the volume never disagree.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::{Query as StoreQuery, Tx};

use super::model::{Volume, VolumeAttachment};
use super::service::written;
use super::{Mv, VCtx, blocking, body, not_found, param, ts};
use crate::compute::model::Server;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

type P = Path<HashMap<String, String>>;
type J = Result<axum::Json<Value>, ApiError>;

/// The microversion the attachments API came with.
const SINCE: u16 = 27;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/attachments", get(list).post(create))
        .route("/attachments/detail", get(list_detail))
        .route("/attachments/{id}", get(show).put(update).delete(delete))
        .route("/attachments/{id}/action", post(action))
}

/// How a consumer reaches the volume: its file on the storage node, in
/// the volume's format. Volumes are served to other nodes only through
/// the compute API's attaches (NBD with a key the nodes share), so a
/// connector is answered with the local path's description.
fn connection_info(v: &Volume, a: &VolumeAttachment) -> Value {
    json!({
        "driver_volume_type": "local",
        "data": {
            "volume_id": v.id,
            "name": format!("volume-{}.qcow2", v.id),
            "format": "qcow2",
            "storage_host": v.host,
            "access_mode": a.mode.as_deref().unwrap_or("rw"),
        }
    })
}

fn summary(v: &Volume, a: &VolumeAttachment) -> Value {
    json!({
        "id": a.id,
        "status": a.status,
        "instance": a.server_id,
        "volume_id": v.id,
    })
}

fn detail(v: &Volume, a: &VolumeAttachment) -> Value {
    let connected = a.status != "reserved";
    json!({
        "id": a.id,
        "status": a.status,
        "instance": a.server_id,
        "volume_id": v.id,
        "attached_at": (a.status == "attached").then(|| ts(a.attached_us)),
        "detached_at": null,
        "attach_mode": a.mode.as_deref().unwrap_or("rw"),
        "connection_info": if connected { connection_info(v, a) } else { json!({}) },
    })
}

/// The attachment `id` and its volume, when the caller may see it.
fn find(tx: &Tx, ctx: &VCtx, id: &str) -> Result<(Volume, VolumeAttachment), ApiError> {
    // An attachment lives in its volume's record; volumes are few per
    // project, and the caller sees only their own.
    let q = if ctx.is_admin() {
        StoreQuery::all()
    } else {
        StoreQuery::owner(ctx.project()?)
    };
    for v in tx.list::<Volume>(&q)? {
        if let Some(a) = v.attachments.iter().find(|a| a.id == id).cloned() {
            return Ok((v, a));
        }
    }
    Err(not_found("VolumeAttachment", id))
}

/// A 400 while the node works on the volume's data (a revert or reimage
/// writing it): attachments wait until it is done.
fn not_busy(v: &Volume) -> Result<(), ApiError> {
    match v.task {
        Some(t) => Err(ApiError::bad_request(format!(
            "Invalid volume: volume {} is {} (its storage node is working on it: {t:?}); try again when it is done.",
            v.id, v.status
        ))),
        None => Ok(()),
    }
}

/// A 409 for an attachment a server's attach made: the compute API
/// owns it (its node plugs and unplugs the volume).
fn not_servers(tx: &Tx, a: &VolumeAttachment, v: &Volume) -> Result<(), ApiError> {
    match made_by_server(tx, a)? {
        Some(server) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Attachment {} is server {}'s attach of volume {}: the compute API manages it (openstack server add/remove volume).",
                a.id, server.id, v.id
            ),
        )),
        None => Ok(()),
    }
}

/// Whether a server's attach made this attachment (the server's block
/// device mapping refers to it).
fn made_by_server(tx: &Tx, a: &VolumeAttachment) -> Result<Option<Server>, ApiError> {
    let Some(sid) = &a.server_id else {
        return Ok(None);
    };
    Ok(tx
        .get::<Server>(sid)?
        .filter(|s| s.volumes.iter().any(|sv| sv.holds(&a.id))))
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
    detailed: bool,
) -> J {
    mv.require(SINCE)?;
    super::filters::reject_invalid(ctx.is_admin(), mv, &q, "attachment", &[])?;
    let paging = super::paging(&q)?;
    let all = super::all_projects(&ctx, &q);
    let own = ctx.project()?.to_string();
    blocking(move || {
        let query = if all {
            StoreQuery::all()
        } else {
            StoreQuery::owner(&own)
        };
        let project_filter = if all { q.get("project_id") } else { None };
        let mut items = Vec::new();
        for v in state.store.list::<Volume>(&query)? {
            if project_filter.is_some_and(|p| *p != v.project_id)
                || q.get("volume_id").is_some_and(|x| *x != v.id)
            {
                continue;
            }
            for a in &v.attachments {
                let status = q.get("status").or(q.get("attach_status"));
                if status.is_some_and(|s| !s.eq_ignore_ascii_case(&a.status))
                    || q.get("instance_id")
                        .is_some_and(|i| a.server_id.as_deref() != Some(i.as_str()))
                    || q.get("id").is_some_and(|i| *i != a.id)
                {
                    continue;
                }
                let mut item = detail(&v, a);
                // Sort keys Cinder takes for attachments.
                item["created_at"] = json!(ts(a.attached_us));
                item["project_id"] = json!(v.project_id);
                items.push(item);
            }
        }
        let items = super::page(items, &paging)?;
        let path = if detailed {
            "attachments/detail"
        } else {
            "attachments"
        };
        let links = super::next_links(&state, &own, path, &items, &paging);
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut i| {
                if let Some(o) = i.as_object_mut() {
                    o.remove("created_at");
                    o.remove("project_id");
                    if !detailed {
                        o.retain(|k, _| {
                            matches!(k.as_str(), "id" | "status" | "instance" | "volume_id")
                        });
                    }
                }
                i
            })
            .collect();
        let mut out = json!({"attachments": items});
        if let Some(l) = links {
            out["attachments_links"] = l;
        }
        Ok(axum::Json(out))
    })
    .await
}

async fn show(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(SINCE)?;
    blocking(move || {
        let (v, a) = state.store.write(|tx| find(tx, &ctx, &param(&p, "id")))?;
        Ok(axum::Json(json!({"attachment": detail(&v, &a)})))
    })
    .await
}

/// A connector: an object; an empty one is none (the client's way of
/// asking for a reservation only).
fn connector(b: &Value) -> Result<Option<&serde_json::Map<String, Value>>, ApiError> {
    match b.get("connector") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) if m.is_empty() => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(ApiError::bad_request(
            "Invalid input for field/attribute connector: it must be an object.",
        )),
    }
}

async fn create(State(state): State<AppState>, ctx: VCtx, mv: Mv, raw: Bytes) -> J {
    mv.require(SINCE)?;
    let b = body(&raw)?;
    let a = b
        .get("attachment")
        .filter(|a| a.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'attachment' in request body.")
        })?
        .clone();
    let volume_id = a
        .get("volume_uuid")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("Invalid input for field/attribute volume_uuid: it is required.")
        })?
        .to_string();
    let instance = match a.get("instance_uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => Some(s.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute instance_uuid. Value: {other}. It is not a uuid."
            )));
        }
    };
    let mode = match a.get("mode") {
        None | Some(Value::Null) => None,
        Some(_) if !mv.at_least(54) => {
            return Err(ApiError::bad_request(
                "Invalid input: 'mode' needs microversion 3.54.",
            ));
        }
        Some(Value::String(m)) if m == "rw" || m == "ro" => Some(m.clone()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute mode. Value: {other}. It must be 'rw' or 'ro'."
            )));
        }
    };
    let connected = connector(&a)?.is_some();
    let host_name = connector(&a)?
        .and_then(|c| c.get("host"))
        .and_then(Value::as_str)
        .map(str::to_string);
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut v = super::volumes::find(tx, &ctx, &volume_id)?;
            not_busy(&v)?;
            // The consumer is a server of the caller's (Stratus has no
            // other kind of instance).
            if let Some(i) = &instance
                && !tx
                    .get::<Server>(i)?
                    .is_some_and(|s| ctx.owns(&s.project_id))
            {
                return Err(not_found("Instance", i));
            }
            let shareable = v.status == "in-use" && super::attach::multiattach(tx, &v)?;
            if v.status != "available" && !shareable {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: Volume {} status must be available or in-use (with multiattach) to reserve, but the current status is: {}.",
                    v.id, v.status
                )));
            }
            if let Some(i) = &instance
                && v.attachments.iter().any(|x| x.server_id.as_deref() == Some(i.as_str()))
            {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: volume {} is already attached to instance {i}.",
                    v.id
                )));
            }
            // A read-only volume takes read-only attachments only.
            let mode = match (mode.clone(), v.readonly) {
                (Some(m), Some(true)) if m == "rw" => {
                    return Err(ApiError::bad_request(
                        "Invalid volume: the volume is read-only; attach it with mode 'ro'.",
                    ));
                }
                (None, Some(true)) => Some("ro".to_string()),
                (m, _) => m,
            };
            let now = now_us();
            let att = VolumeAttachment {
                id: uuid::Uuid::new_v4().to_string(),
                server_id: instance.clone(),
                device: None,
                host_name: host_name.clone(),
                status: if connected { "attaching" } else { "reserved" }.into(),
                attached_us: now,
                mode,
            };
            v.attachments.push(att.clone());
            v.status = super::attach::status_of(&v).into();
            v.updated_us = now;
            let rev = tx.update(&v)?;
            Ok::<_, ApiError>((json!({"attachment": detail(&v, &att)}), rev))
        })?;
        written(&state, rev);
        Ok(axum::Json(out))
    })
    .await
}

/// `PUT /attachments/{id}` with a connector: the consumer says where it
/// is; the answer says how to reach the volume.
async fn update(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P, raw: Bytes) -> J {
    mv.require(SINCE)?;
    let b = body(&raw)?;
    let a = b
        .get("attachment")
        .filter(|a| a.is_object())
        .ok_or_else(|| {
            ApiError::bad_request("Missing required element 'attachment' in request body.")
        })?
        .clone();
    let Some(conn) = connector(&a)?.cloned() else {
        return Err(ApiError::bad_request(
            "Invalid input: the attachment update needs a connector.",
        ));
    };
    let id = param(&p, "id");
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let (mut v, a) = find(tx, &ctx, &id)?;
            not_busy(&v)?;
            not_servers(tx, &a, &v)?;
            let now = now_us();
            let Some(att) = v.attachments.iter_mut().find(|x| x.id == id) else {
                return Err(not_found("VolumeAttachment", &id));
            };
            if att.status == "detaching" {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: attachment {id} is being detached."
                )));
            }
            if att.status == "reserved" {
                att.status = "attaching".into();
            }
            if let Some(h) = conn.get("host").and_then(Value::as_str) {
                att.host_name = Some(h.to_string());
            }
            if let Some(m) = conn.get("mountpoint").and_then(Value::as_str) {
                att.device = Some(m.to_string());
            }
            let att = att.clone();
            v.status = super::attach::status_of(&v).into();
            v.updated_us = now;
            let rev = tx.update(&v)?;
            Ok::<_, ApiError>((json!({"attachment": detail(&v, &att)}), rev))
        })?;
        written(&state, rev);
        Ok(axum::Json(out))
    })
    .await
}

/// `os-complete` (3.44): the consumer has connected.
async fn action(
    State(state): State<AppState>,
    ctx: VCtx,
    mv: Mv,
    Path(p): P,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    mv.require(SINCE)?;
    let b = body(&raw)?;
    let name = b
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .ok_or_else(|| ApiError::bad_request("Malformed request body: no action."))?;
    if name != "os-complete" || !mv.at_least(44) {
        return Err(ApiError::bad_request(format!(
            "There is no such action: {name}"
        )));
    }
    let id = param(&p, "id");
    blocking(move || {
        let rev = state.store.write(|tx| {
            let (mut v, a) = find(tx, &ctx, &id)?;
            not_busy(&v)?;
            not_servers(tx, &a, &v)?;
            let Some(att) = v.attachments.iter_mut().find(|x| x.id == id) else {
                return Err(not_found("VolumeAttachment", &id));
            };
            if att.status == "detaching" {
                return Err(ApiError::bad_request(format!(
                    "Invalid volume: attachment {id} is being detached."
                )));
            }
            att.status = "attached".into();
            att.attached_us = now_us();
            v.status = super::attach::status_of(&v).into();
            v.updated_us = now_us();
            Ok::<_, ApiError>(tx.update(&v)?)
        })?;
        written(&state, rev);
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Ends an attachment made here. One a server's attach made is the
/// compute API's to end (`server remove volume` unplugs it first): a
/// 409 says so, where Cinder would drop the record under Nova's feet.
async fn delete(State(state): State<AppState>, ctx: VCtx, mv: Mv, Path(p): P) -> J {
    mv.require(SINCE)?;
    let id = param(&p, "id");
    blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let (mut v, a) = find(tx, &ctx, &id)?;
            not_busy(&v)?;
            not_servers(tx, &a, &v)?;
            v.attachments.retain(|x| x.id != id);
            v.status = super::attach::status_of(&v).into();
            v.updated_us = now_us();
            let rev = tx.update(&v)?;
            let left: Vec<Value> = v.attachments.iter().map(|x| summary(&v, x)).collect();
            Ok::<_, ApiError>((json!({"attachments": left}), rev))
        })?;
        written(&state, rev);
        Ok(axum::Json(out))
    })
    .await
}
