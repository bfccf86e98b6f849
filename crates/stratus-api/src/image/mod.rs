//! Image service: Glance v2 under `/image`.
//!
//! Images are documents in the store; their data lives in a
//! content-addressed blob store in the data dir (`blobs.rs`). Uploads and
//! downloads stream; the data is checked against the declared format
//! (`stratus-image`) before an image becomes active.
//!
//! Policy is Glance's secure-RBAC default: readers of a project read what
//! the project can see, members of the owning project change it, `admin`
//! does everything. Visibility decides what a project can see: its own
//! images, public and community ones, and shared ones it is a member of.

pub mod blobs;
mod data;
mod images;
pub(crate) use images::{delete_image, purge_image};
pub mod local;
mod members;
mod metadef_common;
mod metadef_items;
pub mod metadefs;
pub mod model;
pub mod quota;

use std::path::Path;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use stratus_store::{Query, Store};

use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};
use blobs::BlobStore;
use model::{Image, Member, status};

/// Glance's default `image_size_cap`: 1 TiB.
pub const DEFAULT_SIZE_CAP: u64 = 1 << 40;

/// The image service's state: where the data lives and its limits.
pub struct ImageService {
    pub blobs: BlobStore,
    pub size_cap: u64,
}

impl ImageService {
    /// Opens the blob store under `data_dir/images` and repairs what a
    /// crash can leave: uploads cut short go back to `queued`, imports
    /// cut short go back to `uploading` (their staged data is kept), and
    /// blobs no image references are removed.
    pub fn open(data_dir: &Path, store: &Store, size_cap: u64) -> Result<Self, ApiError> {
        let blobs = BlobStore::open(&data_dir.join("images"))
            .map_err(|e| ApiError::internal(format!("cannot open the image store: {e}")))?;
        let svc = ImageService { blobs, size_cap };
        svc.recover(store)?;
        metadefs::seed_resource_types(store)?;
        Ok(svc)
    }

    fn recover(&self, store: &Store) -> Result<(), ApiError> {
        let staged = self.blobs.staged_ids().unwrap_or_default();
        let images = store.list::<Image>(&Query::all())?;
        store.write(|tx| {
            for img in &images {
                let mut img = img.clone();
                let has_stage = img.staged.is_some() && staged.contains(&img.id);
                let fixed = match img.status.as_str() {
                    status::SAVING => Some(status::QUEUED),
                    status::IMAGE_IMPORTING | status::UPLOADING if has_stage => Some(status::UPLOADING),
                    status::IMAGE_IMPORTING | status::UPLOADING => Some(status::QUEUED),
                    _ => None,
                };
                if let Some(s) = fixed
                    && s != img.status
                {
                    tracing::warn!(image = %img.id, from = %img.status, to = s, "repairing image interrupted by a restart");
                    img.status = s.into();
                    if s == status::QUEUED {
                        img.staged = None;
                    }
                    tx.update(&img)?;
                }
            }
            Ok::<_, ApiError>(())
        })?;
        let referenced: std::collections::HashSet<String> =
            images.iter().filter_map(|i| i.blob.clone()).collect();
        for key in self.blobs.keys().unwrap_or_default() {
            if !referenced.contains(&key) {
                tracing::info!(blob = %key, "removing image data no image references");
                self.blobs.remove_blob(&key);
            }
        }
        for id in staged {
            if !images.iter().any(|i| i.id == id && i.staged.is_some()) {
                self.blobs.remove_staged(&id);
            }
        }
        Ok(())
    }
}

/// The image API's routes at their full paths.
pub fn router() -> Router<AppState> {
    let v2 = Router::new()
        .merge(images::routes())
        .merge(data::routes())
        .merge(members::routes())
        .route("/schemas/image", get(|| schema(SCHEMA_IMAGE)))
        .route("/schemas/images", get(|| schema(SCHEMA_IMAGES)))
        .route("/schemas/member", get(|| schema(SCHEMA_MEMBER)))
        .route("/schemas/members", get(|| schema(SCHEMA_MEMBERS)))
        .merge(metadefs::routes())
        .route("/schemas/metadefs/{name}", get(metadef_schema))
        .fallback(crate::error::not_found_fallback);
    Router::new()
        .route("/image", get(versions))
        .route("/image/", get(versions))
        .route("/image/versions", get(versions_ok))
        .route("/image/v2", get(versions))
        .route("/image/v2/", get(versions))
        .nest("/image/v2", v2)
        .layer(axum::middleware::from_fn(fault_shape))
}

const SCHEMA_IMAGE: &str = include_str!("schemas/image.json");
const SCHEMA_IMAGES: &str = include_str!("schemas/images.json");
const SCHEMA_MEMBER: &str = include_str!("schemas/member.json");
const SCHEMA_MEMBERS: &str = include_str!("schemas/members.json");

/// Glance's metadata definition schemas, by the name in the path.
const SCHEMAS_METADEFS: &[(&str, &str)] = &[
    ("namespace", include_str!("schemas/metadefs-namespace.json")),
    (
        "namespaces",
        include_str!("schemas/metadefs-namespaces.json"),
    ),
    (
        "resource_type",
        include_str!("schemas/metadefs-resource_type.json"),
    ),
    (
        "resource_types",
        include_str!("schemas/metadefs-resource_types.json"),
    ),
    ("object", include_str!("schemas/metadefs-object.json")),
    ("objects", include_str!("schemas/metadefs-objects.json")),
    ("property", include_str!("schemas/metadefs-property.json")),
    (
        "properties",
        include_str!("schemas/metadefs-properties.json"),
    ),
    ("tag", include_str!("schemas/metadefs-tag.json")),
    ("tags", include_str!("schemas/metadefs-tags.json")),
];

async fn metadef_schema(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    match SCHEMAS_METADEFS.iter().find(|(n, _)| *n == name) {
        Some((_, doc)) => schema(doc).await,
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No schema named metadefs/{name}"),
        )
        .into_response(),
    }
}

async fn schema(doc: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// The image API versions we answer to: v2.0 to v2.16 (2.17 adds cache
/// management, which is not offered).
fn versions_doc(state: &AppState) -> Value {
    let href = format!("{}/image/v2/", state.config.public_url);
    let mut out = Vec::new();
    for minor in (0..=16).rev() {
        let status = if minor == 16 { "CURRENT" } else { "SUPPORTED" };
        out.push(json!({"id": format!("v2.{minor}"), "status": status, "links": [{"rel": "self", "href": href}]}));
    }
    json!({"versions": out})
}

async fn versions(State(state): State<AppState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(versions_doc(&state)),
    )
        .into_response()
}

async fn versions_ok(State(state): State<AppState>) -> axum::Json<Value> {
    axum::Json(versions_doc(&state))
}

/// Renders errors in Glance's fault shape:
/// `{"code": "404 Not Found", "title": "Not Found", "message": "..."}`.
async fn fault_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let Some(err) = resp.extensions().get::<ApiError>().cloned() else {
        return resp;
    };
    let (mut parts, _) = resp.into_parts();
    let bytes = serde_json::to_vec(&fault_body(&err)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if err.status == StatusCode::UNAUTHORIZED {
        parts.headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Keystone uri=\"/identity\""),
        );
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

fn fault_body(err: &ApiError) -> Value {
    let title = err.status.canonical_reason().unwrap_or("Error");
    json!({
        "code": format!("{} {title}", err.status.as_u16()),
        "title": title,
        "message": err.message,
    })
}

/// Glance's fault for an error answered at the HTTP edge, before routing.
pub(crate) fn fault_response(err: ApiError) -> Response {
    let mut resp = (err.status, axum::Json(fault_body(&err))).into_response();
    if err.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Keystone uri=\"/identity\""),
        );
    }
    resp
}

// ---- who may see and change what ------------------------------------------

pub(crate) fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No image found with ID {id}"),
    )
}

/// The member record of the caller's project on `img`, if any.
pub(crate) fn membership(
    state: &AppState,
    ctx: &Ctx,
    img: &Image,
) -> Result<Option<Member>, ApiError> {
    match ctx.project_id() {
        Some(p) => Ok(state.store.get::<Member>(&Member::key(&img.id, p))?),
        None => Ok(None),
    }
}

/// Whether the caller can see `img` at all.
pub(crate) fn visible(state: &AppState, ctx: &Ctx, img: &Image) -> Result<bool, ApiError> {
    if ctx.is_admin() || img.is_owned_by(ctx.project_id()) {
        return Ok(true);
    }
    Ok(match img.visibility.as_str() {
        "public" | "community" => true,
        "shared" => membership(state, ctx, img)?.is_some(),
        _ => false,
    } || crate::compute::node_access::node_may_read(state, ctx, &img.id)?)
}

/// Fetches an image the caller can see, else Glance's 404.
pub(crate) fn fetch_visible(state: &AppState, ctx: &Ctx, id: &str) -> Result<Image, ApiError> {
    match state.store.get::<Image>(id)? {
        Some(img) if visible(state, ctx, &img)? => Ok(img),
        _ => Err(not_found(id)),
    }
}

/// Readers of a project (or admins) may read; anything else is refused.
/// A node agent reads too: [`visible`] limits it to its servers' images.
pub(crate) fn require_reader(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin()
        || ctx.project_id().is_some() && ctx.has_role("reader")
        || ctx.node_host().is_some()
    {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "image read (needs a project-scoped token with the reader role)",
        ))
    }
}

/// Members of the owning project, or admins, may change an image.
pub(crate) fn require_owner_member(ctx: &Ctx, img: &Image, action: &str) -> Result<(), ApiError> {
    if ctx.is_admin() || img.is_owned_by(ctx.project_id()) && ctx.has_role("member") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("You are not authorized to {action} image {}.", img.id),
        ))
    }
}
