//! Nova's image proxy (`/images`, microversions up to 2.35): the image
//! service's images in Nova's shape, read and written through the same
//! store, with Nova's status names and `metadata` for custom properties.
//! From 2.36 these paths answer 404, as in Nova.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::Query as StoreQuery;

use super::{Mv, body, next_link, page, paging};
use crate::identity::policy::Ctx;
use crate::image::model::{Image, glance_time};
use crate::timeutil::{now_us, parse_iso};
use crate::{ApiError, AppState};

/// Glance's `image_property_quota`, which Nova's metadata calls hit too.
const MAX_METADATA: usize = 128;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images", get(list))
        .route("/images/detail", get(list_detail))
        .route("/images/{id}", get(show).delete(delete))
        .route(
            "/images/{id}/metadata",
            get(metadata_list)
                .post(metadata_merge)
                .put(metadata_replace),
        )
        .route(
            "/images/{id}/metadata/{key}",
            get(meta_show).put(meta_put).delete(meta_delete),
        )
}

/// The proxy is gone from 2.36 on.
fn proxy_available(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(36) {
        Err(super::no_such_resource())
    } else {
        Ok(())
    }
}

fn image_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Image {id} could not be found."),
    )
}

/// Nova's names for Glance's states.
fn nova_status(glance: &str) -> &'static str {
    match glance {
        "active" => "ACTIVE",
        "queued" | "saving" | "uploading" | "importing" => "SAVING",
        "deleted" | "pending_delete" => "DELETED",
        "killed" => "ERROR",
        _ => "UNKNOWN",
    }
}

fn progress(glance: &str) -> u8 {
    match glance {
        "queued" => 25,
        "saving" | "uploading" | "importing" => 50,
        "active" => 100,
        _ => 0,
    }
}

fn image_links(state: &AppState, id: &str) -> Value {
    let base = &state.config.public_url;
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/images/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/images/{id}")},
        {"rel": "alternate", "type": "application/vnd.openstack.image",
         "href": format!("{base}/image/images/{id}")}
    ])
}

/// Custom properties as Nova shows them: string values.
fn metadata_of(img: &Image) -> Map<String, Value> {
    img.properties
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => json!(s),
                other => json!(other.to_string()),
            };
            (k.clone(), v)
        })
        .collect()
}

fn render(state: &AppState, img: &Image, detail: bool) -> Value {
    let mut v = json!({
        "id": img.id,
        "name": img.name,
        "links": image_links(state, &img.id),
    });
    if !detail {
        return v;
    }
    v["status"] = json!(nova_status(&img.status));
    v["progress"] = json!(progress(&img.status));
    v["minRam"] = json!(img.min_ram);
    v["minDisk"] = json!(img.min_disk);
    v["created"] = json!(glance_time(img.created_at));
    v["updated"] = json!(glance_time(img.updated_at));
    v["metadata"] = Value::Object(metadata_of(img));
    v["OS-EXT-IMG-SIZE:size"] = json!(img.size);
    if let Some(server) = img.properties.get("instance_uuid").and_then(Value::as_str) {
        v["server"] = json!({"id": server, "links": super::links(state, "servers", server)});
    }
    v
}

/// The image service's visibility rules, with Nova's wording for a 404.
fn visible_image(state: &AppState, ctx: &Ctx, id: &str) -> Result<Image, ApiError> {
    crate::image::fetch_visible(state, ctx, id).map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            image_not_found(id)
        } else {
            e
        }
    })
}

/// Nova's filters: name, status, changes-since, server, type, minRam,
/// minDisk; then limit and marker.
fn filtered(
    state: &AppState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
) -> Result<Vec<Image>, ApiError> {
    let changes_since = match q.get("changes-since") {
        None => None,
        Some(t) => Some(parse_iso(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for query parameters changes-since. Value: {t}. '{t}' is not a 'date-time'"
            ))
        })?),
    };
    let min = |key: &str| -> Result<Option<u64>, ApiError> {
        q.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Invalid input for query parameters {key}. Value: {v}."
                    ))
                })
            })
            .transpose()
    };
    let (min_ram, min_disk) = (min("minRam")?, min("minDisk")?);
    let server = q
        .get("server")
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string());
    let mut out = Vec::new();
    for img in state.store.list::<Image>(&StoreQuery::all())? {
        if !crate::image::visible(state, ctx, &img)? || img.os_hidden {
            continue;
        }
        let prop = |k: &str| img.properties.get(k).and_then(Value::as_str);
        let keep = q.get("name").is_none_or(|n| img.name.as_deref() == Some(n))
            && q.get("status")
                .is_none_or(|s| s.eq_ignore_ascii_case(nova_status(&img.status)))
            && changes_since.is_none_or(|t| img.updated_at >= t)
            && server
                .as_deref()
                .is_none_or(|s| prop("instance_uuid") == Some(s))
            && q.get("type").is_none_or(|t| prop("image_type") == Some(t))
            && min_ram.is_none_or(|m| img.min_ram >= m)
            && min_disk.is_none_or(|m| img.min_disk >= m);
        if keep {
            out.push(img);
        }
    }
    // Glance's default order: newest first.
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(out)
}

fn listing(
    state: &AppState,
    ctx: &Ctx,
    mv: Mv,
    q: &HashMap<String, String>,
    detail: bool,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    crate::image::require_reader(ctx)?;
    let (limit, marker) = paging(q)?;
    let images = page(filtered(state, ctx, q)?, limit, marker.as_deref(), |i| {
        &i.id
    })?;
    let list: Vec<Value> = images.iter().map(|i| render(state, i, detail)).collect();
    let mut out = json!({ "images": list });
    let path = if detail { "images/detail" } else { "images" };
    if let Some(l) = next_link(
        state,
        path,
        q,
        limit,
        images.last().map(|i| i.id.as_str()),
        images.len(),
    ) {
        out["images_links"] = l;
    }
    Ok(axum::Json(out).into_response())
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    listing(&state, &ctx, mv, &q, false)
}

async fn list_detail(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    listing(&state, &ctx, mv, &q, true)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    crate::image::require_reader(&ctx)?;
    let img = visible_image(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"image": render(&state, &img, true)})).into_response())
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    proxy_available(mv)?;
    visible_image(&state, &ctx, &id)?;
    crate::image::delete_image(&state, &ctx, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- metadata ----------------------------------------------------------

async fn metadata_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    crate::image::require_reader(&ctx)?;
    let img = visible_image(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"metadata": metadata_of(&img)})).into_response())
}

/// Checks a client's metadata object: string keys of 1-255 characters,
/// string values up to 255, none of Glance's reserved `os_glance` keys.
fn metadata_arg(v: Option<&Value>, key: &str) -> Result<Map<String, Value>, ApiError> {
    let m = v.and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(format!("Malformed request body: '{key}' must be an object"))
    })?;
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 255 {
            return Err(ApiError::bad_request(
                "Metadata keys must be 1 to 255 characters",
            ));
        }
        if k.starts_with("os_glance") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Attribute '{k}' is reserved."),
            ));
        }
        if v.as_str().is_none_or(|s| s.chars().count() > 255) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}: values must be strings of at most 255 characters"
            )));
        }
    }
    Ok(m.clone())
}

/// Changes an image's properties in one transaction, as its owner.
fn change(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    f: impl FnOnce(&mut Image) -> Result<(), ApiError>,
) -> Result<Image, ApiError> {
    crate::image::require_reader(ctx)?;
    state.store.write(|tx| {
        let mut img = match tx.get::<Image>(id)? {
            Some(i) if crate::image::visible(state, ctx, &i)? => i,
            _ => return Err(image_not_found(id)),
        };
        crate::image::require_owner_member(ctx, &img, "modify")?;
        f(&mut img)?;
        if img.properties.len() > MAX_METADATA {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Maximum number of metadata items exceeds {MAX_METADATA}"),
            ));
        }
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(img)
    })
}

async fn metadata_merge(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    let b = body(&raw)?;
    let m = metadata_arg(b.get("metadata"), "metadata")?;
    let img = change(&state, &ctx, &id, |img| {
        img.properties.extend(m);
        Ok(())
    })?;
    Ok(axum::Json(json!({"metadata": metadata_of(&img)})).into_response())
}

async fn metadata_replace(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    let b = body(&raw)?;
    let m = metadata_arg(b.get("metadata"), "metadata")?;
    let img = change(&state, &ctx, &id, |img| {
        img.properties = m;
        Ok(())
    })?;
    Ok(axum::Json(json!({"metadata": metadata_of(&img)})).into_response())
}

async fn meta_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    crate::image::require_reader(&ctx)?;
    let img = visible_image(&state, &ctx, &id)?;
    let v = metadata_of(&img).remove(&key).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Image {id} has no metadata key {key}."),
        )
    })?;
    Ok(axum::Json(json!({"meta": {key: v}})).into_response())
}

async fn meta_put(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, key)): Path<(String, String)>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    proxy_available(mv)?;
    let b = body(&raw)?;
    let m = metadata_arg(b.get("meta"), "meta")?;
    if m.len() != 1 || !m.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    change(&state, &ctx, &id, |img| {
        img.properties.extend(m.clone());
        Ok(())
    })?;
    Ok(axum::Json(json!({ "meta": m })).into_response())
}

async fn meta_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    proxy_available(mv)?;
    change(&state, &ctx, &id, |img| {
        img.properties.remove(&key).map(|_| ()).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Image {id} has no metadata key {key}."),
            )
        })
    })?;
    Ok(StatusCode::NO_CONTENT)
}
