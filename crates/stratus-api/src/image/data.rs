//! Image data: `PUT/GET /v2/images/{id}/file`, the interoperable import
//! flow (`PUT /stage` + `POST /import` with `glance-direct`) and
//! `/v2/info/*`.
//!
//! Status flow: queued -> saving -> active for a direct upload; queued ->
//! uploading -> importing -> active for an import. Any failure puts the
//! image back to `queued` (its data removed), so an image is never active
//! without complete, checked, synced data.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use stratus_store::Query;

use super::blobs::{DISK_RESERVE, FileBody, ReceiveError, Written, receive};
use super::images::{IMPORT_METHODS, STORE_ID};
use super::model::{Image, Staged, status};
use super::{fetch_visible, not_found, quota, require_owner_member, require_reader, visible};
use crate::identity::policy::Ctx;
use crate::metrics::Counted;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images/{id}/file", put(upload).get(download))
        .route("/images/{id}/stage", put(stage))
        .route("/images/{id}/import", post(import))
        .route("/images/{id}/tasks", get(tasks))
        .route("/info/import", get(info_import))
        .route("/info/stores", get(info_stores))
        .route("/info/usage", get(info_usage))
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    /// `PUT /file`: straight to the blob store, then active.
    Upload,
    /// `PUT /stage`: to the staging area, waiting for an import.
    Stage,
}

fn check_octet_stream(headers: &HeaderMap) -> Result<(), ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ctype.as_deref() {
        Some("application/octet-stream") | None => Ok(()),
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Invalid content type {other}: image data must be sent as application/octet-stream"
            ),
        )),
    }
}

/// Moves a queued image to `saving`/`uploading`, checking who asks and
/// that the image can take data.
fn begin(state: &AppState, ctx: &Ctx, id: &str, target: Target) -> Result<Image, ApiError> {
    require_reader(ctx)?;
    let to = match target {
        Target::Upload => status::SAVING,
        Target::Stage => status::UPLOADING,
    };
    state.store.write(|tx| {
        let mut img = match tx.get::<Image>(id)? {
            Some(img) if visible(state, ctx, &img)? => img,
            _ => return Err(not_found(id)),
        };
        // A node uploads what its server's snapshot, shelve or migration
        // writes.
        // A storage node uploads a volume's data (`os-volume_upload_image`).
        if !(target == Target::Upload
            && (crate::compute::node_access::node_may_upload(state, ctx, id)?
                || crate::volume::upload::node_may_upload(state, ctx, id)?))
        {
            require_owner_member(ctx, &img, "upload data to")?;
        }
        if img.status != status::QUEUED {
            return Err(ApiError::conflict(format!(
                "Image status transition from {} to {to} is not allowed",
                img.status
            )));
        }
        if target == Target::Upload && (img.disk_format.is_none() || img.container_format.is_none())
        {
            return Err(ApiError::bad_request(
                "Properties disk_format, container_format must be set prior to saving data.",
            ));
        }
        img.status = to.into();
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(img)
    })
}

/// Puts an image back to `queued` after a failed transfer (if it still
/// exists and is still in `from`).
fn back_to_queued(state: &AppState, id: &str, from: &[&str]) {
    let r = state.store.write(|tx| {
        if let Some(mut img) = tx.get::<Image>(id)?
            && from.contains(&img.status.as_str())
        {
            img.status = status::QUEUED.into();
            img.staged = None;
            img.updated_at = now_us();
            tx.update(&img)?;
        }
        Ok::<_, ApiError>(())
    });
    if let Err(e) = r {
        tracing::error!(image = id, error = %e, "could not reset a failed upload to queued");
    }
}

/// The largest refused body read to its end before answering.
const DRAIN_MAX: u64 = 16 << 20;

/// Reads and discards a request body (for at most 10 s).
async fn drain(body: &mut Body) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse().ok())
}

/// Receives the body into a synced temporary file within the size cap,
/// the project's quota and the free disk space.
async fn receive_checked(
    state: &AppState,
    img: &Image,
    headers: &HeaderMap,
    body: Body,
    target: Target,
) -> Result<Written, ApiError> {
    let staged = target == Target::Stage;
    let quota_left = match &img.owner {
        Some(p) => quota::bytes_left(&state.store, p, staged)?,
        None => u64::MAX,
    };
    let cap = state.image.size_cap;
    let limit = cap.min(quota_left);
    let too_large = |attempted: u64| -> ApiError {
        if attempted > cap || quota_left >= cap {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Image exceeds the storage quota: the largest image this cloud accepts is {cap} bytes."
                ),
            )
        } else {
            quota::over_size(
                &state.store,
                img.owner.as_deref().unwrap_or(""),
                staged,
                attempted,
            )
        }
    };
    let no_space = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Image storage media is full: not enough free disk space for this image.",
        )
    };
    let mut body = body;
    if let Some(len) = declared_length(headers) {
        let refused = if len > limit {
            Some(too_large(len))
        } else {
            let free = state.image.blobs.free_bytes().unwrap_or(u64::MAX);
            (free < len.saturating_add(DISK_RESERVE)).then(no_space)
        };
        if let Some(e) = refused {
            // A client still sending a modest body would see its
            // connection closed under it (a broken pipe) instead of the
            // answer: read what it sends first.
            if len <= DRAIN_MAX {
                drain(&mut body).await;
            }
            return Err(e);
        }
    }
    let tmp = state.image.blobs.tmp_path();
    match receive(body, tmp, limit, &state.image.blobs).await {
        Ok(w) => Ok(w),
        Err(ReceiveError::TooLarge(_)) => Err(too_large(limit.saturating_add(1))),
        Err(ReceiveError::NoSpace) => Err(no_space()),
        Err(ReceiveError::Body(e)) => Err(ApiError::bad_request(format!(
            "The image data could not be read from the request: {e}"
        ))),
        Err(ReceiveError::Io(e)) => {
            tracing::error!(image = %img.id, error = %e, "image write failed");
            Err(ApiError::internal(format!(
                "The image data could not be stored: {e}"
            )))
        }
    }
}

/// Checks the data against the declared formats; returns the virtual size.
async fn inspect(
    path: PathBuf,
    disk: Option<String>,
    container: Option<String>,
) -> Result<Option<u64>, ApiError> {
    tokio::task::spawn_blocking(move || {
        inspect_blocking(&path, disk.as_deref(), container.as_deref())
    })
    .await
    .map_err(|e| ApiError::internal(format!("image inspection failed: {e}")))?
}

pub(crate) fn inspect_blocking(
    path: &std::path::Path,
    disk: Option<&str>,
    container: Option<&str>,
) -> Result<Option<u64>, ApiError> {
    let refused =
        |e: stratus_image::InspectError| ApiError::bad_request(format!("Image data refused: {e}"));
    match container {
        Some("docker") => {
            // A `docker save` tarball, or an OCI layout uploaded as docker.
            if let Err(e) = stratus_image::check_container(path, "docker") {
                stratus_image::check_container(path, "oci").map_err(|_| refused(e))?;
            }
            Ok(std::fs::metadata(path).ok().map(|m| m.len()))
        }
        Some("oci") => {
            stratus_image::check_container(path, "oci").map_err(refused)?;
            Ok(std::fs::metadata(path).ok().map(|m| m.len()))
        }
        // Archives of other kinds carry a disk inside; check only when the
        // container is bare (the data is the disk itself).
        Some("ova" | "ovf" | "compressed") => Ok(None),
        _ => {
            let Some(disk) = disk else { return Ok(None) };
            let info = stratus_image::check_disk(path, disk).map_err(refused)?;
            // qemu-img, when present, must agree on the structured formats
            // (it sees deeper); raw sectors have nothing more to show it.
            if matches!(info.format, "raw" | "iso") {
                return Ok(info.virtual_size);
            }
            let deep = stratus_image::qemu_img_check(path, info.format).map_err(refused)?;
            Ok(info.virtual_size.or(deep.and_then(|d| d.virtual_size)))
        }
    }
}

async fn upload(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_octet_stream(&headers)?;
    let img = begin(&state, &ctx, &id, Target::Upload)?;
    let body = Body::new(Counted::new(body, state.metrics.image_bytes_in()));
    match upload_data(&state, &img, &headers, body).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => {
            back_to_queued(&state, &id, &[status::SAVING]);
            Err(e)
        }
    }
}

async fn upload_data(
    state: &AppState,
    img: &Image,
    headers: &HeaderMap,
    body: Body,
) -> Result<(), ApiError> {
    let w = receive_checked(state, img, headers, body, Target::Upload).await?;
    let virtual_size = match inspect(
        w.path.clone(),
        img.disk_format.clone(),
        img.container_format.clone(),
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&w.path);
            return Err(e);
        }
    };
    activate(
        state,
        &img.id,
        &w.path,
        w.size,
        w.md5,
        w.sha512,
        virtual_size,
        &[status::SAVING],
    )
}

/// Links synced data into the blob store and marks the image active, in
/// that order, under the blob lock (so a concurrent delete of another
/// image with the same data cannot unlink it in between).
#[allow(clippy::too_many_arguments)]
fn activate(
    state: &AppState,
    id: &str,
    file: &std::path::Path,
    size: u64,
    md5: String,
    sha512: String,
    virtual_size: Option<u64>,
    from: &[&str],
) -> Result<(), ApiError> {
    let blobs = &state.image.blobs;
    let _guard = blobs.lock();
    blobs
        .commit(file, &sha512)
        .map_err(|e| ApiError::internal(format!("The image data could not be stored: {e}")))?;
    let r = state.store.write(|tx| {
        let Some(mut img) = tx.get::<Image>(id)? else {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!("Image {id} could not be found after upload. The image may have been deleted during the upload."),
            ));
        };
        if !from.contains(&img.status.as_str()) {
            return Err(ApiError::conflict(format!(
                "Image {id} changed status to {} during the upload.",
                img.status
            )));
        }
        if let Some(p) = img.owner.clone() {
            // Checked again at commit: uploads running side by side must
            // not together pass the project's quota.
            let used: u64 = tx
                .list::<Image>(&Query::owner(&p))?
                .iter()
                .filter(|i| i.blob.is_some())
                .map(|i| i.size.unwrap_or(0))
                .sum();
            if let Some(max) = quota::limit(&state.store, &p, quota::SIZE_TOTAL)?
                && used + size > (max.max(0) as u64).saturating_mul(1024 * 1024)
            {
                return Err(quota::over_size(&state.store, &p, false, size));
            }
        }
        img.status = status::ACTIVE.into();
        img.size = Some(size);
        img.virtual_size = virtual_size;
        img.checksum = Some(md5.clone());
        img.os_hash_algo = Some("sha512".into());
        img.os_hash_value = Some(sha512.clone());
        img.blob = Some(sha512.clone());
        img.staged = None;
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(())
    });
    if r.is_err() {
        let still_used = state
            .store
            .list::<Image>(&Query::all())
            .map(|all| all.iter().any(|i| i.blob.as_deref() == Some(&sha512)))
            .unwrap_or(true);
        if !still_used {
            blobs.remove_blob(&sha512);
        }
    }
    r
}

/// Parses `Range: bytes=a-b` (one range) against `size`.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("Requested range {v} not satisfiable for an image of {size} bytes"),
        )
    };
    let spec = v.strip_prefix("bytes=").ok_or_else(unsatisfiable)?;
    if spec.contains(',') {
        return Err(ApiError::bad_request("Multiple ranges are not supported."));
    }
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (
            a.parse().map_err(|_| unsatisfiable())?,
            size.saturating_sub(1),
        ),
        (a, b) => (
            a.parse().map_err(|_| unsatisfiable())?,
            b.parse::<u64>()
                .map_err(|_| unsatisfiable())?
                .min(size.saturating_sub(1)),
        ),
    };
    if size == 0 || start > end || start >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

async fn download(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_reader(&ctx)?;
    let img = fetch_visible(&state, &ctx, &id)?;
    // As Glance: only an admin downloads a deactivated image, not even
    // its owner.
    if img.status == status::DEACTIVATED && !ctx.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "The requested image has been deactivated. Image data download is forbidden.",
        ));
    }
    let Some(key) = img.blob.as_deref() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let size = img.size.unwrap_or(0);
    let path = state.image.blobs.blob_path(key);
    // On an edge site, an image synced from the parent has its data
    // there: it crosses the link once, then every node reads it here.
    if !path.exists()
        && let Some(fetched) = state.sites.fetch_blob(key, size).await
    {
        fetched.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The data of image {id} could not be fetched from the parent site: {e}"),
            )
        })?;
    }
    let range = parse_range(&headers, size)?;
    let (start, len) = match range {
        Some((a, b)) => (a, b - a + 1),
        None => (0, size),
    };
    let body = FileBody::open(&path, start, len).map_err(|e| {
        tracing::error!(image = %id, error = %e, "image data missing");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("The data of image {id} cannot be read: {e}"),
        )
    })?;
    let mut resp = Response::new(Body::new(Counted::new(
        body,
        state.metrics.image_bytes_out(),
    )));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(sum) = img
        .checksum
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert("content-md5", sum);
    }
    if let Some((a, b)) = range {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

// ---- import flow -------------------------------------------------------------

async fn stage(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_octet_stream(&headers)?;
    let img = begin(&state, &ctx, &id, Target::Stage)?;
    let body = Body::new(Counted::new(body, state.metrics.image_bytes_in()));
    let result =
        async {
            let w = receive_checked(&state, &img, &headers, body, Target::Stage).await?;
            state.image.blobs.stage(&w.path, &id).map_err(|e| {
                ApiError::internal(format!("The image data could not be staged: {e}"))
            })?;
            state.store.write(|tx| {
                let Some(mut cur) = tx.get::<Image>(&id)? else {
                    return Err(not_found(&id));
                };
                cur.staged = Some(Staged {
                    size: w.size,
                    md5: w.md5.clone(),
                    sha512: w.sha512.clone(),
                });
                cur.size = Some(w.size);
                cur.updated_at = now_us();
                tx.update(&cur)?;
                Ok(())
            })
        }
        .await;
    match result {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => {
            state.image.blobs.remove_staged(&id);
            back_to_queued(&state, &id, &[status::UPLOADING]);
            Err(e)
        }
    }
}

async fn import(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    axum::Extension(req_id): axum::Extension<crate::middleware::RequestId>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    let method = body
        .pointer("/method/name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("Import request requires a 'method' with a 'name'.")
        })?;
    if method != "glance-direct" {
        return Err(ApiError::bad_request(format!(
            "Import method {method} is not valid or not enabled here: this cloud offers {IMPORT_METHODS}."
        )));
    }
    if let Some(stores) = body.get("stores").and_then(Value::as_array)
        && stores.iter().any(|s| s.as_str() != Some(STORE_ID))
    {
        return Err(ApiError::conflict(format!(
            "Unknown store: this cloud has one store, '{STORE_ID}'."
        )));
    }
    let img = state.store.write(|tx| {
        let mut img = match tx.get::<Image>(&id)? {
            Some(img) if visible(&state, &ctx, &img)? => img,
            _ => return Err(not_found(&id)),
        };
        require_owner_member(&ctx, &img, "import")?;
        if img.status != status::UPLOADING || img.staged.is_none() {
            return Err(ApiError::conflict(format!(
                "Image needs to be staged before 'glance-direct' method can be used (image {id} is {}).",
                img.status
            )));
        }
        if img.disk_format.is_none() || img.container_format.is_none() {
            return Err(ApiError::conflict(
                "'disk_format' needs to be set before import",
            ));
        }
        img.status = status::IMAGE_IMPORTING.into();
        img.updated_at = now_us();
        let at = super::model::glance_time(img.updated_at);
        let expires = super::model::glance_time(img.updated_at + 48 * 3600 * 1_000_000);
        img.tasks.push(json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "type": "api_image_import",
            "status": "processing",
            "owner": img.owner,
            "image_id": img.id,
            "request_id": req_id.0,
            "user_id": ctx.user_id(),
            "input": {
                "image_id": img.id,
                "import_req": {"method": {"name": method}},
                "backend": [STORE_ID],
            },
            "result": null,
            "message": "",
            "created_at": at,
            "updated_at": at,
            "expires_at": expires,
        }));
        tx.update(&img)?;
        Ok(img)
    })?;
    // Glance imports asynchronously: 202 now, the image turns active (or
    // back to queued with the failure recorded) when done.
    tokio::spawn(async move {
        let outcome = finish_import(&state, &img).await;
        finish_task(
            &state,
            &img.id,
            outcome.as_ref().err().map(|e| e.message.as_str()),
        );
        if let Err(e) = outcome {
            tracing::warn!(image = %img.id, error = %e, "image import failed");
            state.image.blobs.remove_staged(&img.id);
            let _ = state.store.write(|tx| {
                if let Some(mut cur) = tx.get::<Image>(&img.id)? {
                    cur.status = status::QUEUED.into();
                    cur.staged = None;
                    cur.size = None;
                    cur.properties
                        .insert("os_glance_failed_import".into(), json!(STORE_ID));
                    cur.properties
                        .insert("os_glance_import_error".into(), json!(e.message));
                    cur.updated_at = now_us();
                    tx.update(&cur)?;
                }
                Ok::<_, ApiError>(())
            });
        }
    });
    Ok(StatusCode::ACCEPTED)
}

/// Marks the image's running import task done (success, or failure with
/// the reason).
fn finish_task(state: &AppState, id: &str, failure: Option<&str>) {
    let _ = state.store.write(|tx| {
        if let Some(mut cur) = tx.get::<Image>(id)? {
            let at = super::model::glance_time(now_us());
            if let Some(t) = cur
                .tasks
                .iter_mut()
                .rev()
                .find(|t| t["status"] == "processing")
            {
                t["status"] = json!(if failure.is_some() {
                    "failure"
                } else {
                    "success"
                });
                t["message"] = json!(failure.unwrap_or(""));
                t["result"] = json!({"image_id": id});
                t["updated_at"] = json!(at);
                tx.update(&cur)?;
            }
        }
        Ok::<_, ApiError>(())
    });
}

async fn finish_import(state: &AppState, img: &Image) -> Result<(), ApiError> {
    let staged = img
        .staged
        .clone()
        .ok_or_else(|| ApiError::conflict("nothing staged"))?;
    let path = state.image.blobs.staging_path(&img.id);
    let virtual_size = inspect(
        path.clone(),
        img.disk_format.clone(),
        img.container_format.clone(),
    )
    .await?;
    activate(
        state,
        &img.id,
        &path,
        staged.size,
        staged.md5,
        staged.sha512,
        virtual_size,
        &[status::IMAGE_IMPORTING],
    )?;
    let _ = state.store.write(|tx| {
        if let Some(mut cur) = tx.get::<Image>(&img.id)? {
            let a = cur.properties.remove("os_glance_failed_import").is_some();
            let b = cur.properties.remove("os_glance_import_error").is_some();
            if a || b {
                tx.update(&cur)?;
            }
        }
        Ok::<_, ApiError>(())
    });
    Ok(())
}

async fn tasks(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let img = fetch_visible(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"tasks": img.tasks})))
}

async fn info_import(_ctx: Ctx) -> axum::Json<Value> {
    axum::Json(json!({"import-methods": {
        "description": "Import methods available.",
        "type": "array",
        "value": IMPORT_METHODS.split(',').collect::<Vec<_>>(),
    }}))
}

async fn info_stores(_ctx: Ctx) -> axum::Json<Value> {
    axum::Json(
        json!({"stores": [{"id": STORE_ID, "description": "Content-addressed files in the Stratus data directory", "default": true}]}),
    )
}

/// Glance's `GET /v2/info/usage`: the caller's project's usage and limits.
async fn info_usage(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let Some(project) = ctx.project_id() else {
        return Err(ApiError::bad_request(
            "Usage is reported for a project-scoped token.",
        ));
    };
    let images = state.store.list::<Image>(&Query::owner(project))?;
    let mib = |b: u64| b.div_ceil(1024 * 1024);
    let size: u64 = images
        .iter()
        .filter(|i| i.blob.is_some())
        .map(|i| i.size.unwrap_or(0))
        .sum();
    let staged: u64 = images
        .iter()
        .filter_map(|i| i.staged.as_ref())
        .map(|s| s.size)
        .sum();
    let uploading = images
        .iter()
        .filter(|i| {
            [status::SAVING, status::UPLOADING, status::IMAGE_IMPORTING]
                .contains(&i.status.as_str())
        })
        .count();
    let lim = |r: &str| -> Result<i64, ApiError> {
        Ok(quota::limit(&state.store, project, r)?.unwrap_or(-1))
    };
    Ok(axum::Json(json!({"usage": {
        "image_size_total": {"limit": lim(quota::SIZE_TOTAL)?, "usage": mib(size)},
        "image_stage_total": {"limit": lim(quota::STAGE_TOTAL)?, "usage": mib(staged)},
        "image_count_total": {"limit": lim(quota::COUNT_TOTAL)?, "usage": images.len()},
        "image_count_uploading": {"limit": -1, "usage": uploading},
    }})))
}
