//! `os-volume_upload_image`: a volume's data into a new image.
//!
//! The controller makes the image (queued, owned by the volume's
//! project, carrying the volume's `volume_image_metadata` as Cinder
//! does) and records a [`VolumeUpload`] for the volume's storage node;
//! the volume is `uploading` meanwhile. The node converts the file to
//! the asked format and uploads it through the image API's
//! `PUT /v2/images/{id}/file` with its own identity, which the image API
//! lets write exactly that image while the task runs
//! ([`node_may_upload`]). The report puts the volume back to what it was
//! (`available` or `in-use`).

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use stratus_store::{Query as StoreQuery, Tx};
use stratus_wire::volume::{ImageUpload, VolumeReport, VolumeTask, VolumeWork};

use super::backup_model::VolumeUpload;
use super::model::{Volume, VolumeType};
use super::{VCtx, opt_str, parse_bool, ts};
use crate::identity::policy::Ctx;
use crate::image::model::Image;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// Image properties Cinder does not copy from `volume_image_metadata`
/// (Glance's core properties).
const CORE: &[&str] = &[
    "checksum",
    "container_format",
    "disk_format",
    "image_name",
    "image_id",
    "min_disk",
    "min_ram",
    "name",
    "size",
];

/// Takes `POST /volumes/{id}/action` with `os-volume_upload_image` (an
/// action answered with a body, unlike the others there) and passes
/// every other request on unchanged. Layered on the volume routes; the
/// state comes from the request's extensions.
pub async fn intercept(req: Request, next: Next) -> Response {
    let Some(state) = req.extensions().get::<AppState>().cloned() else {
        return next.run(req).await;
    };
    if req.method() != Method::POST || !req.uri().path().ends_with("/action") {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            )
            .into_response();
        }
    };
    let arg = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("os-volume_upload_image").cloned());
    let Some(arg) = arg else {
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    let ctx = match VCtx::from_request_parts(&mut parts, &state).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let id = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(p) => p
            .iter()
            .find(|(k, _)| *k == "id")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        Err(e) => return e.into_response(),
    };
    let r = super::blocking(move || {
        let (out, rev) = state.store.write(|tx| {
            let mut v = super::volumes::find(tx, &ctx, &id)?;
            let out = start(tx, &ctx, &mut v, &arg)?;
            v.updated_us = now_us();
            Ok::<_, ApiError>((out, tx.update(&v)?))
        })?;
        super::service::written(&state, rev);
        Ok(out)
    })
    .await;
    match r {
        Ok(out) => (StatusCode::ACCEPTED, axum::Json(out)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Starts an upload (in the action's write transaction) and answers
/// Cinder's `{"os-volume_upload_image": {...}}`.
pub fn start(tx: &Tx, ctx: &VCtx, v: &mut Volume, arg: &Value) -> Result<Value, ApiError> {
    let image_name = opt_str(arg, "image_name", 255)?
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("No image_name was specified in request."))?;
    let disk_format = opt_str(arg, "disk_format", 32)?.unwrap_or_else(|| "raw".into());
    if disk_format != "raw" && disk_format != "qcow2" {
        return Err(ApiError::bad_request(format!(
            "Invalid disk-format '{disk_format}' is specified. Allowed disk-formats are raw, qcow2."
        )));
    }
    let container_format = opt_str(arg, "container_format", 32)?.unwrap_or_else(|| "bare".into());
    if container_format != "bare" {
        return Err(ApiError::bad_request(format!(
            "Invalid container-format '{container_format}' is specified. Allowed container-formats are bare."
        )));
    }
    let force = match arg.get("force") {
        None | Some(Value::Null) => false,
        Some(f) => parse_bool(f)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid value for 'force': {f}")))?,
    };
    let visibility = opt_str(arg, "visibility", 32)?.unwrap_or_else(|| "private".into());
    if !["private", "public", "shared", "community"].contains(&visibility.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Invalid visibility '{visibility}'."
        )));
    }
    if visibility == "public" && !ctx.is_admin() {
        return Err(super::policy_denied(
            "volume_extension:volume_actions:upload_public",
        ));
    }
    let protected = match arg.get("protected") {
        None | Some(Value::Null) => false,
        Some(f) => parse_bool(f)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid value for 'protected': {f}")))?,
    };
    match v.status.as_str() {
        "available" => {}
        "in-use" if force => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid volume: Volume status must be available{} to upload it to an image (it is {other}).",
                if other == "in-use" {
                    " or use force"
                } else {
                    ""
                }
            )));
        }
    }
    let Some(host) = v.host.clone() else {
        return Err(ApiError::bad_request(
            "Invalid volume: the volume is on no storage node.",
        ));
    };
    let now = now_us();
    let mut props = Map::new();
    for (k, val) in &v.image_metadata {
        if !CORE.contains(&k.as_str()) {
            props.insert(k.clone(), json!(val));
        }
    }
    let meta = |k: &str| v.image_metadata.get(k).and_then(|x| x.parse::<u64>().ok());
    let img = Image {
        id: uuid::Uuid::new_v4().to_string(),
        name: Some(image_name.clone()),
        owner: Some(v.project_id.clone()),
        status: "queued".into(),
        visibility: visibility.clone(),
        disk_format: Some(disk_format.clone()),
        container_format: Some(container_format.clone()),
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        protected,
        min_ram: meta("min_ram").unwrap_or(0),
        min_disk: meta("min_disk").unwrap_or(0).max(v.size),
        os_hidden: false,
        tags: Vec::new(),
        properties: props,
        created_at: now,
        updated_at: now,
        blob: None,
        staged: None,
        tasks: Vec::new(),
    };
    tx.insert(&img)?;
    let prior = std::mem::replace(&mut v.status, "uploading".into());
    tx.insert(&VolumeUpload {
        id: uuid::Uuid::new_v4().to_string(),
        project_id: v.project_id.clone(),
        volume_id: v.id.clone(),
        image_id: img.id.clone(),
        disk_format: disk_format.clone(),
        host: Some(host),
        task: Some(VolumeTask::Upload),
        generation: 1,
        prior_status: prior,
        fault: None,
        created_us: now,
    })?;
    let vtype = tx.get::<VolumeType>(&v.volume_type_id)?;
    Ok(json!({"os-volume_upload_image": {
        "id": v.id,
        "updated_at": ts(now),
        "status": "uploading",
        "display_description": v.description,
        "size": v.size,
        "volume_type": vtype.map(|t| json!({
            "id": t.id, "name": t.name, "description": t.description,
            "is_public": t.is_public, "extra_specs": t.extra_specs,
        })),
        "image_id": img.id,
        "container_format": container_format,
        "disk_format": disk_format,
        "image_name": image_name,
        "visibility": visibility,
        "protected": protected,
    }}))
}

/// The uploads pending on storage node `host`.
pub fn work(state: &AppState, host: &str) -> Result<Vec<VolumeWork>, ApiError> {
    let mut out = Vec::new();
    for u in state
        .store
        .list::<VolumeUpload>(&StoreQuery::parent(host))?
    {
        let Some(task) = u.task else { continue };
        let size_gb = state
            .store
            .get::<Volume>(&u.volume_id)?
            .map(|v| v.size)
            .unwrap_or(0);
        out.push(VolumeWork {
            id: u.id,
            task,
            generation: u.generation,
            size_gb,
            source: None,
            volume_id: Some(u.volume_id),
            upload: Some(ImageUpload {
                image_id: u.image_id,
                disk_format: u.disk_format,
            }),
            nbd: None,
        });
    }
    Ok(out)
}

/// Settles a node's report of an upload: the volume goes back to what it
/// was; a failed upload deletes the image that never got its data. The
/// record goes either way.
pub fn task_done(tx: &Tx, host: &str, id: &str, r: &VolumeReport) -> Result<Option<i64>, ApiError> {
    let Some(u) = tx.get::<VolumeUpload>(id)? else {
        return Ok(None);
    };
    if u.host.as_deref() != Some(host) || u.task != Some(r.task) || u.generation != r.generation {
        return Ok(None);
    }
    let img = tx.get::<Image>(&u.image_id)?;
    // A re-run after a crash finds the image already active: done.
    let ok = r.error.is_none() || img.as_ref().is_some_and(|i| i.status == "active");
    if !ok {
        tracing::warn!(upload = %id, volume = %u.volume_id, error = ?r.error, "a volume upload failed");
        if let Some(i) = img
            && i.status != "active"
        {
            tx.delete::<Image>(&i.id)?;
        }
    }
    if let Some(mut v) = tx.get::<Volume>(&u.volume_id)?
        && v.status == "uploading"
    {
        v.status = u.prior_status.clone();
        v.updated_us = now_us();
        tx.update(&v)?;
    }
    tx.delete::<VolumeUpload>(id)?;
    Ok(Some(tx.last_revision()?))
}

/// Whether the caller is the agent of a storage node uploading a volume
/// into image `image_id` now (the image API lets it write that image).
pub fn node_may_upload(state: &AppState, ctx: &Ctx, image_id: &str) -> Result<bool, ApiError> {
    match ctx.node_host() {
        Some(host) => super::service::uploads_to_image(state, host, image_id),
        None => Ok(false),
    }
}
