//! Nova's volume proxy (`/os-volumes`, `/os-snapshots`, microversions up
//! to 2.35): the block storage API's volumes and snapshots in Nova's old
//! camel-case shape. As Nova does, each call is a call to the volume API
//! with the caller's token (here in process, through the volume router),
//! so quotas, checks, errors and who may do what are the volume API's own.
//! From 2.36 these paths answer 404, as in Nova.

use std::collections::HashMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{Mv, body};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-volumes", get(list).post(create))
        .route("/os-volumes/detail", get(list))
        .route("/os-volumes/{id}", get(show).delete(delete))
        .route("/os-snapshots", get(snap_list).post(snap_create))
        .route("/os-snapshots/detail", get(snap_list))
        .route("/os-snapshots/{id}", get(snap_show).delete(snap_delete))
}

fn available(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(36) {
        Err(super::no_such_resource())
    } else {
        Ok(())
    }
}

/// One call to the volume API as the caller. An error answer comes back
/// as it is: the volume API's fault shape is Nova's.
async fn cinder(
    state: &AppState,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ApiError> {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("/volume/v3{path}"))
        .header("content-type", "application/json");
    if let Some(t) = headers.get("x-auth-token") {
        req = req.header("x-auth-token", t);
    }
    let req = req
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .map_err(|e| ApiError::internal(format!("volume proxy request: {e}")))?;
    let resp = crate::volume::router()
        .with_state(state.clone())
        .oneshot(req)
        .await
        .map_err(|e| ApiError::internal(format!("volume proxy: {e}")))?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .map_err(|e| ApiError::internal(format!("volume proxy answer: {e}")))?;
    let v: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    if status.is_success() {
        return Ok(v);
    }
    let message = v
        .as_object()
        .and_then(|o| o.values().next())
        .and_then(|f| f.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("The volume service refused the request.")
        .to_string();
    Err(ApiError::new(status, message))
}

/// Nova's volume view.
fn volume_view(v: &Value) -> Value {
    let attachments: Vec<Value> = v["attachments"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|at| {
                    json!({
                        "id": at["attachment_id"].as_str().or(at["id"].as_str()),
                        "volumeId": v["id"],
                        "serverId": at["server_id"],
                        "device": at["device"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": v["id"],
        "status": v["status"],
        "size": v["size"],
        "availabilityZone": v["availability_zone"],
        "createdAt": v["created_at"],
        "displayName": v["name"],
        "displayDescription": v["description"],
        "volumeType": v["volume_type"],
        "snapshotId": v["snapshot_id"],
        "metadata": v.get("metadata").cloned().unwrap_or_else(|| json!({})),
        // Nova shows an unattached volume's attachments as `[{}]`.
        "attachments": if attachments.is_empty() { vec![json!({})] } else { attachments },
    })
}

fn snapshot_view(s: &Value) -> Value {
    json!({
        "id": s["id"],
        "volumeId": s["volume_id"],
        "status": s["status"],
        "size": s["size"],
        "createdAt": s["created_at"],
        "displayName": s["name"],
        "displayDescription": s["description"],
    })
}

/// Nova's `limit`/`offset` paging over the whole list.
fn limited(items: Vec<Value>, q: &HashMap<String, String>) -> Result<Vec<Value>, ApiError> {
    let num = |k: &str| -> Result<Option<usize>, ApiError> {
        q.get(k)
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("{k} param must be an integer")))
            })
            .transpose()
    };
    let offset = num("offset")?.unwrap_or(0);
    let limit = num("limit")?.unwrap_or(usize::MAX);
    Ok(items.into_iter().skip(offset).take(limit).collect())
}

async fn list(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let all = cinder(&state, &headers, Method::GET, "/volumes/detail", None).await?;
    let items = all["volumes"]
        .as_array()
        .map(|a| a.iter().map(volume_view).collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({"volumes": limited(items, &q)?})))
}

async fn show(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let v = cinder(
        &state,
        &headers,
        Method::GET,
        &format!("/volumes/{id}"),
        None,
    )
    .await?;
    Ok(axum::Json(json!({"volume": volume_view(&v["volume"])})))
}

/// Nova's create: `size` (a whole number from 1) and the old names
/// `display_name`, `display_description`; answers the volume as made.
async fn create(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let b = body(&raw)?;
    let v = b
        .get("volume")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute volume."))?;
    let size = match v.get("size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|n| *n >= 1)
    .ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute size: a whole number of GiB from 1 is required.",
        )
    })?;
    let mut out = json!({"size": size});
    for (from, to) in [
        ("display_name", "name"),
        ("display_description", "description"),
        ("volume_type", "volume_type"),
        ("metadata", "metadata"),
        ("availability_zone", "availability_zone"),
        ("snapshot_id", "snapshot_id"),
        ("imageRef", "imageRef"),
    ] {
        if let Some(x) = v.get(from).filter(|x| !x.is_null()) {
            out[to] = x.clone();
        }
    }
    let made = cinder(
        &state,
        &headers,
        Method::POST,
        "/volumes",
        Some(json!({"volume": out})),
    )
    .await?;
    Ok(axum::Json(json!({"volume": volume_view(&made["volume"])})))
}

async fn delete(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    available(mv)?;
    cinder(
        &state,
        &headers,
        Method::DELETE,
        &format!("/volumes/{id}"),
        None,
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn snap_list(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let all = cinder(&state, &headers, Method::GET, "/snapshots/detail", None).await?;
    let items = all["snapshots"]
        .as_array()
        .map(|a| a.iter().map(snapshot_view).collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({"snapshots": limited(items, &q)?})))
}

async fn snap_show(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let s = cinder(
        &state,
        &headers,
        Method::GET,
        &format!("/snapshots/{id}"),
        None,
    )
    .await?;
    Ok(axum::Json(
        json!({"snapshot": snapshot_view(&s["snapshot"])}),
    ))
}

/// Nova's create: `volume_id`, `force`, `display_name`,
/// `display_description`.
async fn snap_create(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    available(mv)?;
    let b = body(&raw)?;
    let s = b
        .get("snapshot")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute snapshot."))?;
    let volume_id = s
        .get("volume_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute volume_id."))?;
    let mut out = json!({"volume_id": volume_id});
    for (from, to) in [
        ("display_name", "name"),
        ("display_description", "description"),
        ("force", "force"),
    ] {
        if let Some(x) = s.get(from).filter(|x| !x.is_null()) {
            out[to] = x.clone();
        }
    }
    let made = cinder(
        &state,
        &headers,
        Method::POST,
        "/snapshots",
        Some(json!({"snapshot": out})),
    )
    .await?;
    Ok(axum::Json(
        json!({"snapshot": snapshot_view(&made["snapshot"])}),
    ))
}

async fn snap_delete(
    State(state): State<AppState>,
    mv: Mv,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    available(mv)?;
    cinder(
        &state,
        &headers,
        Method::DELETE,
        &format!("/snapshots/{id}"),
        None,
    )
    .await?;
    Ok(StatusCode::ACCEPTED)
}
