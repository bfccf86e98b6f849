//! Block storage: Cinder v3 under `/volume/v3`, with microversions.
//!
//! Volumes, snapshots, volume types and quota limits are records in the
//! store (`model.rs`). A volume is placed on a storage node (an agent
//! started with `--volumes DIR`) when it is created, by capacity and
//! availability zone (`service.rs`); the node long-polls its pending
//! tasks (`agent.rs`), makes or changes the volume's file with `qemu-img`
//! and reports back, which moves the status on (`creating` ->
//! `available`, `extending` -> `available`, `deleting` -> gone).
//!
//! Both URL forms are served: `/volume/v3/{project_id}/...` (what the
//! catalog lists, as devstack does) and `/volume/v3/...` (Cinder 3.67).
//! A project id in the URL must be the token's, as in Cinder.
//!
//! Policy is Cinder's default: members of a project create and change
//! its volumes and snapshots, another project's are answered as not
//! found; admins see everything and alone may manage types, quotas,
//! services and the admin actions (`os-reset_status`, `os-force_delete`).
//! Errors come out in Cinder's shape, `{"itemNotFound": {"code": 404,
//! "message": ...}}`.
//!
//! Backups (`backups.rs`, data in `chunks.rs`), transfers
//! (`transfers.rs`) and uploads to images (`upload.rs`) are records of
//! their own beside the volumes.
//!
//! Maximum microversion: [`MAX_MINOR`] (see `docs/block-storage.md`).

mod agent;
pub mod attach;
mod attachments;
mod backup_model;
mod backups;
mod chunks;
mod clusters;
mod default_types;
mod encryption;
pub(crate) mod filters;
mod group_model;
mod group_snapshots;
mod group_types;
mod groups;
mod hosts;
mod limits;
mod manage;
pub(crate) mod messages;
mod migrate;
pub mod model;
pub(crate) mod moves;
pub mod qos;
mod quotas;
mod resource_filters;
pub mod service;
pub(crate) mod snapshots;
mod transfers;
mod types;
pub mod upload;
pub(crate) mod volumes;
mod workers;

pub use types::ensure_default_type;

use std::collections::HashMap;

use axum::Router;
use axum::extract::{FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

/// Highest microversion implemented: 3.70 (Cinder 2023.1); what each
/// step changes is in `docs/block-storage.md`.
pub const MAX_MINOR: u16 = 70;
/// Lowest: 3.0.
pub const MIN_MINOR: u16 = 0;

/// The microversion of a request (the minor number of `3.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u16);

impl Mv {
    /// Whether the request asked for `3.minor` or later.
    pub fn at_least(self, minor: u16) -> bool {
        self.0 >= minor
    }

    /// A 404 unless the request is at `3.minor` or later: what Cinder
    /// answers for an API added at that microversion.
    pub fn require(self, minor: u16) -> Result<(), ApiError> {
        if self.at_least(minor) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The resource could not be found (it needs microversion 3.{minor})."),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Mv {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Mv>()
            .copied()
            .unwrap_or(Mv(MIN_MINOR)))
    }
}

/// Wakes storage nodes waiting for work: a position that moves with
/// every change to a volume or snapshot (followed from the change log,
/// and bumped by this process's own writes at once).
pub struct Volumes {
    tx: tokio::sync::watch::Sender<u64>,
}

impl Default for Volumes {
    fn default() -> Self {
        Volumes {
            tx: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Volumes {
    /// Moves the position to `seq` (if it is further on).
    pub fn bump(&self, seq: u64) {
        self.tx.send_if_modified(|v| {
            if seq > *v {
                *v = seq;
                true
            } else {
                false
            }
        });
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// Follows the change log: a change to a volume or snapshot wakes the
/// storage nodes.
pub fn on_change(state: &AppState, c: &stratus_store::Change) {
    use stratus_store::Record;
    // A server with volumes that moves changes which volumes its
    // storage nodes export.
    let moved_with_volumes = c.kind == crate::compute::model::Server::KIND
        && c.body
            .as_deref()
            .is_some_and(|b| b.contains("\"volume_id\""));
    if c.kind == model::Volume::KIND
        || c.kind == model::Snapshot::KIND
        || backups::wakes_nodes(&c.kind)
        || c.kind == moves::VolumeMove::KIND
        || moved_with_volumes
    {
        state.volumes.bump(c.seq as u64);
    }
}

/// The caller of a volume API request: the token's context, checked
/// against a project id in the URL.
pub struct VCtx(pub Ctx);

impl std::ops::Deref for VCtx {
    type Target = Ctx;
    fn deref(&self) -> &Ctx {
        &self.0
    }
}

impl FromRequestParts<AppState> for VCtx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = Ctx::from_request_parts(parts, state).await?;
        if let Ok(params) = RawPathParams::from_request_parts(parts, state).await
            && let Some((_, url_project)) = params.iter().find(|(k, _)| *k == "project_id")
            && Some(url_project) != ctx.project_id()
            && !ctx.is_admin()
        {
            return Err(ApiError::bad_request(format!(
                "Malformed request url: project_id '{url_project}' does not match the context's project_id '{}'.",
                ctx.project_id().unwrap_or("")
            )));
        }
        Ok(VCtx(ctx))
    }
}

impl VCtx {
    /// The project the caller acts for; a token without one may not.
    pub fn project(&self) -> Result<&str, ApiError> {
        self.project_id().ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "The volume API needs a project-scoped token.",
            )
        })
    }

    /// A 403 in Cinder's words unless the caller is an admin.
    pub fn admin(&self, rule: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(policy_denied(rule))
        }
    }

    /// Whether the caller may see (and act on) a resource of `project`.
    pub fn owns(&self, project: &str) -> bool {
        self.is_admin() || self.project_id() == Some(project)
    }
}

/// Cinder's 403 for a policy check that failed.
pub(crate) fn policy_denied(rule: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("Policy doesn't allow {rule} to be performed."),
    )
}

/// Cinder's 404 wording.
pub(crate) fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("{what} {id} could not be found."),
    )
}

/// Cinder's 413 for a quota that a request would pass.
pub(crate) fn over_limit(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
}

/// Whether the caller is an admin asking for every project's resources
/// (`all_tenants`, any value but a false one).
pub(crate) fn all_projects(ctx: &VCtx, q: &HashMap<String, String>) -> bool {
    ctx.is_admin()
        && q.get("all_tenants")
            .is_some_and(|v| parse_bool(&json!(v)).unwrap_or(true))
}

/// A path parameter of a route that may also carry `{project_id}`.
pub(crate) fn param(p: &HashMap<String, String>, key: &str) -> String {
    p.get(key).cloned().unwrap_or_default()
}

/// Reads `OpenStack-API-Version: volume 3.N`; `latest` means
/// [`MAX_MINOR`].
fn requested(headers: &HeaderMap) -> Result<Mv, ApiError> {
    let mut raw = None;
    for v in headers.get_all("openstack-api-version") {
        for part in v.to_str().unwrap_or("").split(',') {
            let mut it = part.split_whitespace();
            if it.next().is_some_and(|s| s.eq_ignore_ascii_case("volume")) {
                raw = it.next().map(str::to_string);
            }
        }
    }
    let Some(raw) = raw else {
        return Ok(Mv(MIN_MINOR));
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(Mv(MAX_MINOR));
    }
    let bad = || {
        ApiError::bad_request(format!(
            "API Version String {raw} is of invalid format. Must be of format MajorNum.MinorNum."
        ))
    };
    let (major, minor) = raw.split_once('.').ok_or_else(bad)?;
    let (major, minor): (u16, u16) = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    if major != 3 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Version {raw} is not supported by the API. Minimum is 3.{MIN_MINOR} and maximum is 3.{MAX_MINOR}."
            ),
        ));
    }
    Ok(Mv(minor))
}

fn stamp(h: &mut HeaderMap, mv: Mv) {
    if let Ok(hv) = HeaderValue::from_str(&format!("volume 3.{}", mv.0)) {
        h.insert("openstack-api-version", hv);
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("OpenStack-API-Version"),
    );
}

/// Sets the microversion on the request and echoes it; renders errors in
/// Cinder's fault shape.
async fn volume_layer(mut req: Request, next: Next) -> Response {
    let mv = match requested(req.headers()) {
        Ok(mv) => mv,
        Err(e) => return fault(e, Mv(MIN_MINOR)),
    };
    req.extensions_mut().insert(mv);
    let resp = next.run(req).await;
    let mut resp = match resp.extensions().get::<ApiError>().cloned() {
        Some(err) => fault(err, mv),
        None => resp,
    };
    stamp(resp.headers_mut(), mv);
    resp
}

/// Cinder's fault for an error answered at the HTTP edge.
pub(crate) fn fault_response(err: ApiError) -> Response {
    fault(err, Mv(MIN_MINOR))
}

/// Cinder's fault body: `{"itemNotFound": {"code": 404, "message": "..."}}`
/// (the names of Cinder's `wsgi.Fault`).
fn fault(err: ApiError, mv: Mv) -> Response {
    let mut resp = crate::error::wsgi_fault(err);
    stamp(resp.headers_mut(), mv);
    resp
}

/// The volume API's routes at their full paths.
pub fn router() -> Router<AppState> {
    let v3 = Router::new()
        // `os-volume_upload_image` answers a body: taken before the
        // volume actions (see `upload::intercept`).
        .merge(volumes::routes().route_layer(axum::middleware::from_fn(upload::intercept)))
        .merge(snapshots::routes())
        .merge(attachments::routes())
        .merge(messages::routes())
        .merge(manage::routes())
        .merge(backups::routes())
        .merge(transfers::routes())
        .merge(types::routes())
        .merge(encryption::routes())
        .merge(qos::routes())
        .merge(quotas::routes())
        .merge(limits::routes())
        .merge(hosts::routes())
        .merge(groups::routes())
        .merge(group_snapshots::routes())
        .merge(clusters::routes())
        .merge(workers::routes())
        .merge(resource_filters::routes())
        .merge(default_types::routes());
    Router::new()
        .route("/volume", get(versions))
        .route("/volume/", get(versions))
        .route("/volume/v3", get(version_v3))
        .route("/volume/v3/", get(version_v3))
        .nest("/volume/v3/{project_id}", v3.clone())
        .nest("/volume/v3", v3)
        .layer(axum::middleware::from_fn(volume_layer))
        .merge(agent::routes())
        .merge(chunks::routes())
}

fn version_doc(state: &AppState) -> Value {
    json!({
        "id": "v3.0",
        "status": "CURRENT",
        "version": format!("3.{MAX_MINOR}"),
        "min_version": format!("3.{MIN_MINOR}"),
        "updated": "2023-08-31T00:00:00Z",
        "links": [
            {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
            {"rel": "self", "href": format!("{}/volume/v3/", state.config.public_url)}
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}]
    })
}

async fn versions(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        axum::Json(json!({"versions": [version_doc(&state)]})),
    )
        .into_response()
}

async fn version_v3(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Value> {
    axum::Json(json!({"versions": [version_doc(&state)]}))
}

/// Runs blocking store work off the async workers.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, ApiError> + Send + 'static,
) -> Result<R, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}

/// `limit`, `marker`, `offset` and `sort` of a list query.
pub(crate) struct Paging {
    pub limit: Option<usize>,
    pub marker: Option<String>,
    pub offset: usize,
    /// (key, descending)
    pub sort: Vec<(String, bool)>,
}

/// Cinder's `<collection>_links`: a `next` link when a page came back
/// full (its last item is the next page's marker).
pub(crate) fn next_links(
    state: &AppState,
    project: &str,
    path: &str,
    items: &[Value],
    p: &Paging,
) -> Option<Value> {
    let limit = p.limit?;
    let last = items.last()?.get("id")?.as_str()?;
    (items.len() == limit).then(|| {
        json!([{"rel": "next", "href": format!(
            "{}/volume/v3/{project}/{path}?limit={limit}&marker={last}",
            state.config.public_url
        )}])
    })
}

pub(crate) fn paging(q: &HashMap<String, String>) -> Result<Paging, ApiError> {
    let int = |k: &str| -> Result<Option<usize>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("Invalid {k} value: {v}")))
            })
            .transpose()
    };
    let mut sort = Vec::new();
    // Cinder sorts by `display_name` as `name` (what the views show).
    let key = |k: &str| match k.trim() {
        "display_name" => "name".to_string(),
        "display_description" => "description".to_string(),
        k => k.to_string(),
    };
    if let Some(s) = q.get("sort") {
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, dir) = part.split_once(':').unwrap_or((part, "desc"));
            sort.push((key(k), parse_dir(dir)?));
        }
    } else if let Some(k) = q.get("sort_key") {
        let dir = q.get("sort_dir").map(String::as_str).unwrap_or("desc");
        sort.push((key(k), parse_dir(dir)?));
    }
    // Cinder's sortable keys; another is a 400, not a silent order.
    const SORTABLE: &[&str] = &[
        "id",
        "name",
        "display_name",
        "status",
        "size",
        "created_at",
        "updated_at",
        "availability_zone",
        "bootable",
        "volume_type",
        "volume_id",
        "project_id",
        "user_id",
        "description",
    ];
    if let Some((k, _)) = sort.iter().find(|(k, _)| !SORTABLE.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "Invalid input received: Invalid sort key {k}"
        )));
    }
    Ok(Paging {
        limit: int("limit")?.map(|l| l.min(1000)),
        marker: q.get("marker").cloned(),
        offset: int("offset")?.unwrap_or(0),
        sort,
    })
}

fn parse_dir(d: &str) -> Result<bool, ApiError> {
    match d.trim().to_ascii_lowercase().as_str() {
        "desc" => Ok(true),
        "asc" => Ok(false),
        other => Err(ApiError::bad_request(format!(
            "Invalid sort direction {other}: use asc or desc"
        ))),
    }
}

/// Sorts (newest first unless asked otherwise), then applies marker,
/// offset and limit; an unknown marker is a 404 as in Cinder.
pub(crate) fn page(mut items: Vec<Value>, p: &Paging) -> Result<Vec<Value>, ApiError> {
    let keys: Vec<(String, bool)> = if p.sort.is_empty() {
        vec![("created_at".into(), true), ("id".into(), true)]
    } else {
        p.sort.clone()
    };
    items.sort_by(|a, b| {
        for (k, desc) in &keys {
            let o = cmp_values(&a[k], &b[k]);
            let o = if *desc { o.reverse() } else { o };
            if o != std::cmp::Ordering::Equal {
                return o;
            }
        }
        std::cmp::Ordering::Equal
    });
    if let Some(m) = &p.marker {
        let pos = items
            .iter()
            .position(|i| i["id"].as_str() == Some(m.as_str()))
            .ok_or_else(|| not_found("Marker", m))?;
        items.drain(..=pos);
    }
    let mut items: Vec<Value> = items.into_iter().skip(p.offset).collect();
    if let Some(l) = p.limit {
        items.truncate(l);
    }
    Ok(items)
}

fn cmp_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Less,
        (_, Value::Null) => std::cmp::Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Reads a JSON body with a 400 in Cinder's shape on failure.
pub(crate) fn body(bytes: &[u8]) -> Result<Value, ApiError> {
    crate::json::decode::<Value>(bytes)
}

/// A string field of a body, or a 400 naming it.
pub(crate) fn opt_str(v: &Value, key: &str, max: usize) -> Result<Option<String>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}: longer than {max} characters."
        ))),
        Some(other) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {other}. It is not a string."
        ))),
    }
}

/// A metadata map: string keys (1-255) to string values (up to 255).
pub(crate) fn metadata(v: &Value) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let Some(m) = v.as_object() else {
        return Err(ApiError::bad_request(
            "Malformed request body: metadata must be an object.",
        ));
    };
    let mut out = std::collections::BTreeMap::new();
    for (k, val) in m {
        if k.is_empty() || k.len() > 255 {
            return Err(ApiError::bad_request(
                "Invalid metadata: a key must be 1 to 255 characters.",
            ));
        }
        let s = match val {
            Value::String(s) => s.clone(),
            Value::Null => {
                return Err(ApiError::bad_request(format!(
                    "Invalid metadata: the value of {k} must be a string."
                )));
            }
            other => other.to_string(),
        };
        if s.len() > 255 {
            return Err(ApiError::bad_request(format!(
                "Invalid metadata: the value of {k} is longer than 255 characters."
            )));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

/// Parses a boolean as Cinder's `strutils.bool_from_string(strict=True)`.
pub(crate) fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Cinder's timestamps: `2026-12-03T10:00:00.000000`.
pub(crate) fn ts(us: i64) -> String {
    crate::timeutil::iso_us(us)
        .trim_end_matches('Z')
        .to_string()
}
