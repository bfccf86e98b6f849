//! Compute service: Nova v2.1 under `/compute`, with microversions.
//!
//! The API keeps the desired state of servers in the store; the scheduler
//! (`scheduler.rs`) places them on nodes through placement; node agents
//! (`nodes.rs`) fetch the servers assigned to them, run them with their
//! driver and report back. Handlers parse, authorise, call the service and
//! render the shape the request's microversion asks for.
//!
//! Maximum microversion: [`MAX_MINOR`] (see `docs/design-notes.md`). Every
//! response at a version has the shape that version defines.

mod actions;
pub use actions::{console_text, run_forwarded};
mod admin;
mod agent_client;
pub mod boot_volumes;
pub mod commands;
mod common;
mod config;
pub mod consoles;
pub mod core;
mod flavors;
mod groups;
pub mod ha;
mod images;
mod interfaces;
mod ips;
mod keypairs;
pub mod lease_api;
pub mod leases;
mod live;
pub mod model;
pub(crate) mod nics;
pub mod node_access;
pub mod nodes;
mod params;
mod parse;
pub mod quotas;
mod rescue;
pub(crate) mod resize;
pub mod scheduler;
mod server_password;
mod servers;
pub mod service;
mod shelve;
pub mod snapshots;
pub mod states;
mod validation;
pub(crate) mod volume_attachments;
mod volumes_proxy;
pub mod zones;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::{ApiError, AppState};

pub use config::{ComputeConfig, Weigher};
pub use flavors::ensure_default_flavors;
pub use service::Compute;

/// Highest microversion implemented: 2.85.
pub const MAX_MINOR: u16 = 85;
/// Lowest: 2.1.
pub const MIN_MINOR: u16 = 1;

/// The microversion of a request (the minor number of `2.N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mv(pub u16);

impl Mv {
    pub fn at_least(self, minor: u16) -> bool {
        self.0 >= minor
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Mv {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts
            .extensions
            .get::<Mv>()
            .copied()
            .unwrap_or(Mv(MIN_MINOR)))
    }
}

/// Reads the requested microversion from `OpenStack-API-Version: compute
/// X.Y` or `X-OpenStack-Nova-API-Version: X.Y` (the first wins, as in
/// Nova). `latest` means [`MAX_MINOR`].
fn requested(headers: &HeaderMap) -> Result<Mv, ApiError> {
    let mut raw = None;
    for v in headers.get_all("openstack-api-version") {
        for part in v.to_str().unwrap_or("").split(',') {
            let mut it = part.split_whitespace();
            if it.next().is_some_and(|s| s.eq_ignore_ascii_case("compute")) {
                raw = it.next().map(str::to_string);
            }
        }
    }
    if raw.is_none() {
        raw = headers
            .get("x-openstack-nova-api-version")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_string());
    }
    let Some(raw) = raw else {
        return Ok(Mv(MIN_MINOR));
    };
    if raw.eq_ignore_ascii_case("latest") {
        return Ok(Mv(MAX_MINOR));
    }
    let bad = || {
        ApiError::bad_request(format!(
            "Version {raw} is not a valid API version: use 2.N, e.g. 2.{MAX_MINOR}, or latest"
        ))
    };
    let (major, minor) = raw.split_once('.').ok_or_else(bad)?;
    let (major, minor): (u16, u16) = (
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    );
    if major != 2 || !(MIN_MINOR..=MAX_MINOR).contains(&minor) {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Version {raw} is not supported by the API. Minimum is 2.{MIN_MINOR} and maximum is 2.{MAX_MINOR}."
            ),
        ));
    }
    Ok(Mv(minor))
}

/// Sets the microversion on the request and echoes it on the response;
/// renders errors in Nova's fault shape.
async fn compute_layer(mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let legacy = path == "/compute/v2" || path.starts_with("/compute/v2/");
    let mv = if legacy {
        Mv(MIN_MINOR)
    } else {
        match requested(req.headers()) {
            Ok(mv) => mv,
            Err(e) => return fault(e, Mv(MIN_MINOR)),
        }
    };
    req.extensions_mut().insert(mv);
    let resp = next.run(req).await;
    let mut resp = match resp.extensions().get::<ApiError>().cloned() {
        Some(err) => fault(err, mv),
        None => resp,
    };
    if !legacy {
        stamp(resp.headers_mut(), mv);
    }
    resp
}

fn stamp(h: &mut HeaderMap, mv: Mv) {
    let v = format!("2.{}", mv.0);
    if let Ok(hv) = HeaderValue::from_str(&format!("compute {v}")) {
        h.insert("openstack-api-version", hv);
    }
    if let Ok(hv) = HeaderValue::from_str(&v) {
        h.insert("x-openstack-nova-api-version", hv);
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
}

/// Nova's fault for an error answered before a microversion was read (at
/// the HTTP edge): stamped with the minimum version.
pub(crate) fn fault_response(err: ApiError) -> Response {
    fault(err, Mv(MIN_MINOR))
}

/// Nova's fault body: `{"itemNotFound": {"code": 404, "message": "..."}}`.
fn fault(err: ApiError, mv: Mv) -> Response {
    let mut resp = crate::error::wsgi_fault(err);
    stamp(resp.headers_mut(), mv);
    resp
}

/// The compute API's routes at their full paths.
pub fn router() -> Router<AppState> {
    let v21 = Router::new()
        .merge(flavors::routes())
        .merge(keypairs::routes())
        .merge(quotas::routes())
        .merge(servers::routes())
        .merge(actions::routes())
        .merge(interfaces::routes())
        .merge(volume_attachments::routes())
        .merge(volumes_proxy::routes())
        .merge(ips::routes())
        .merge(server_password::routes())
        .merge(crate::network::nova_proxy::routes())
        .merge(groups::routes())
        .merge(images::routes())
        .merge(admin::routes())
        .merge(nodes::routes())
        .merge(consoles::routes())
        .fallback(crate::error::not_found_fallback);
    let compute = Router::new()
        .route("/compute", get(versions))
        .route("/compute/", get(versions))
        .route("/compute/v2.1", get(version_v21))
        .route("/compute/v2.1/", get(version_v21))
        .route("/compute/v2", get(version_v20))
        .route("/compute/v2/", get(version_v20))
        // The legacy v2.0 endpoint: the same API without microversions.
        .nest("/compute/v2", v21.clone())
        .nest("/compute/v2.1", v21)
        .layer(axum::middleware::from_fn(compute_layer));
    compute
        .merge(nodes::agent_routes())
        .merge(volume_attachments::agent_routes())
        .merge(node_access::routes())
        .merge(consoles::proxy_routes())
}

fn version_doc(state: &AppState) -> Value {
    json!({
        "id": "v2.1",
        "status": "CURRENT",
        "version": format!("2.{MAX_MINOR}"),
        "min_version": format!("2.{MIN_MINOR}"),
        "updated": "2013-07-23T11:33:21Z",
        "links": [
            {"rel": "self", "href": format!("{}/compute/v2.1/", state.config.public_url)},
            {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}]
    })
}

/// The v2.0 document: Nova still answers the pre-microversion API at /v2.
fn version_doc_v20(state: &AppState) -> Value {
    json!({
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [
            {"rel": "self", "href": format!("{}/compute/v2/", state.config.public_url)},
            {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}
        ],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2"}]
    })
}

async fn versions(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let mut v20 = version_doc_v20(&state);
    v20["links"] =
        json!([{"rel": "self", "href": format!("{}/compute/v2/", state.config.public_url)}]);
    let mut v21 = version_doc(&state);
    v21["links"] =
        json!([{"rel": "self", "href": format!("{}/compute/v2.1/", state.config.public_url)}]);
    (StatusCode::OK, axum::Json(json!({"versions": [v20, v21]}))).into_response()
}

async fn version_v20(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Value> {
    axum::Json(json!({"version": version_doc_v20(&state)}))
}

async fn version_v21(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Value> {
    axum::Json(json!({"version": version_doc(&state)}))
}

/// Nova's "resource not found" with its wording.
pub(crate) fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("{what} {id} could not be found."),
    )
}

/// A 403 naming the policy rule, as Nova words it.
/// Nova's 404 for an API a request's microversion does not have.
pub(crate) fn no_such_resource() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "The resource could not be found.")
}

pub(crate) fn policy_denied(rule: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("Policy doesn't allow {rule} to be performed."),
    )
}

/// Link pair (`self`, `bookmark`) as Nova renders them.
pub(crate) fn links(state: &AppState, kind: &str, id: &str) -> Value {
    let base = &state.config.public_url;
    json!([
        {"rel": "self", "href": format!("{base}/compute/v2.1/{kind}/{id}")},
        {"rel": "bookmark", "href": format!("{base}/compute/{kind}/{id}")}
    ])
}

/// `limit` and `marker` from a query, as Nova reads them (limit capped at
/// `osapi_max_limit`, 1000).
pub(crate) fn paging(
    q: &std::collections::HashMap<String, String>,
) -> Result<(Option<usize>, Option<String>), ApiError> {
    let limit = match q.get("limit") {
        None => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("Invalid input for query parameters limit. Value: {l}. '{l}' is not a 'integer'")))?
                .min(1000),
        ),
    };
    Ok((limit, q.get("marker").cloned()))
}

/// The `changes-since` and (from 2.66) `changes-before` bounds of a list
/// query, in µs; since must not be after before.
pub(crate) fn time_window(
    q: &std::collections::HashMap<String, String>,
    mv: Mv,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let parse = |k: &str| -> Result<Option<i64>, ApiError> {
        match q.get(k) {
            None => Ok(None),
            Some(t) => crate::timeutil::parse_iso(&t.replace(' ', "T"))
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid input for query parameters {k}. Value: {t}. It is not a valid date-time"
                    ))
                }),
        }
    };
    let since = parse("changes-since")?;
    let before = if mv.at_least(66) {
        parse("changes-before")?
    } else {
        None
    };
    if let (Some(a), Some(b)) = (since, before)
        && a > b
    {
        return Err(ApiError::bad_request(
            "The value of changes-since must be less than or equal to changes-before.",
        ));
    }
    Ok((since, before))
}

/// Whether `t` (µs) lies in a [`time_window`].
pub(crate) fn in_window(w: (Option<i64>, Option<i64>), t: i64) -> bool {
    w.0.is_none_or(|s| t >= s) && w.1.is_none_or(|b| t <= b)
}

/// Applies marker and limit to an ordered list; an unknown marker is a 400.
pub(crate) fn page<T>(
    items: Vec<T>,
    limit: Option<usize>,
    marker: Option<&str>,
    id: impl Fn(&T) -> &str,
) -> Result<Vec<T>, ApiError> {
    let mut items = items;
    if let Some(m) = marker {
        let pos = items
            .iter()
            .position(|i| id(i) == m)
            .ok_or_else(|| ApiError::bad_request(format!("marker [{m}] not found")))?;
        items.drain(..=pos);
    }
    if let Some(l) = limit {
        items.truncate(l);
    }
    Ok(items)
}

/// The `next` link Nova adds when a page is full.
pub(crate) fn next_link(
    state: &AppState,
    path: &str,
    q: &std::collections::HashMap<String, String>,
    limit: Option<usize>,
    last: Option<&str>,
    count: usize,
) -> Option<Value> {
    let limit = limit?;
    let last = last?;
    if count < limit || limit == 0 {
        return None;
    }
    let mut params: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k.as_str() != "marker")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    params.sort();
    params.push(("marker".into(), last.into()));
    let qs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(
        json!([{"rel": "next", "href": format!("{}/compute/v2.1/{path}?{}", state.config.public_url, qs.join("&"))}]),
    )
}

/// Reads a JSON body with Nova's 400 wording on failure.
pub(crate) fn body(bytes: &[u8]) -> Result<Value, ApiError> {
    crate::json::decode::<Value>(bytes)
}

/// Parses a boolean the way Nova's query and body validators accept them.
pub(crate) fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "t" | "y" => Some(true),
            "false" | "0" | "no" | "off" | "f" | "n" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}
