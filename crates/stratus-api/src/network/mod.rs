//! Network service: Neutron v2.0 under `/network` (the control-plane API).
//!
//! Networks, subnets, ports, security groups and their rules and quotas are
//! documents in the store (`model.rs`); addresses are handed out by an
//! exact IPAM (`ipam.rs`) inside the same write transaction that creates
//! the port, so two concurrent requests never get the same address.
//!
//! L3 (`routers.rs`, `floating_ips.rs`): routers with an external gateway,
//! static routes and interfaces, and floating IPs; their ports and
//! addresses are ordinary ports and IPAM records, written in the same
//! transaction as the router or floating IP, so a refused request leaves
//! nothing behind. Subnet pools and address scopes (`subnetpools.rs`)
//! carve subnet prefixes; RBAC policies (`rbac.rs`) share a network with
//! other projects or make it external for them; the auto-allocated
//! topology (`auto_allocate.rs`) gives a project a network routed to the
//! default external network. This is the control plane: what forwards
//! packets is the agent's dataplane, which reads these records.
//!
//! Policy is Neutron's default: members of a project create and change its
//! resources, readers read them, `admin` does everything and sees the
//! admin-only attributes (`provider:*`, `binding:*`). A project sees its
//! own networks plus shared and external ones and those an RBAC policy
//! shares with it; another project's private network is answered as not
//! found.
//!
//! Errors come out in Neutron's shape,
//! `{"NeutronError": {"type", "message", "detail"}}`, with Neutron's
//! exception names as `type`.

mod agents;
mod auto_allocate;
mod extensions;
mod floating_ips;
mod ipam;
pub mod model;
mod networks;
pub mod nova;
pub mod nova_proxy;
mod ports;
mod public;
pub mod quotas;
mod rbac;
mod routers;
mod security_groups;
mod subnetpools;
mod subnets;
mod tags;

pub use auto_allocate::auto_allocate;
pub use public::ensure_public;

use std::cmp::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

/// An error in Neutron's shape: the HTTP status, the exception name and
/// its message.
#[derive(Debug, Clone)]
pub struct NetError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

pub type NetResult<T> = Result<T, NetError>;

impl NetError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        NetError {
            status,
            kind,
            message: message.into(),
        }
    }
    /// A 400 `InvalidInput` ("Invalid input for operation: ...").
    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("Invalid input for operation: {message}."),
        )
    }
    /// A 400 `HTTPBadRequest` with a message as Neutron's attribute
    /// validation words it.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "HTTPBadRequest", message)
    }
    pub fn bad(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }
    pub fn conflict(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, message)
    }
    pub fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }
    /// Neutron's 403 for a policy check that failed.
    pub fn policy(action: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "PolicyNotAuthorized",
            format!("({action}) is disallowed by policy"),
        )
    }
    pub fn over_quota(resource: &str) -> Self {
        Self::conflict(
            "OverQuota",
            format!("Quota exceeded for resources: ['{resource}']."),
        )
    }
}

/// The exception name Neutron gives a plain HTTP error.
fn default_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "HTTPBadRequest",
        401 => "HTTPUnauthorized",
        403 => "HTTPForbidden",
        404 => "HTTPNotFound",
        405 => "HTTPMethodNotAllowed",
        409 => "HTTPConflict",
        413 => "HTTPRequestEntityTooLarge",
        415 => "HTTPUnsupportedMediaType",
        503 => "HTTPServiceUnavailable",
        _ => "HTTPInternalServerError",
    }
}

impl From<ApiError> for NetError {
    fn from(e: ApiError) -> Self {
        NetError::new(e.status, default_kind(e.status), e.message)
    }
}

impl From<stratus_store::StoreError> for NetError {
    fn from(e: stratus_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

fn neutron_body(kind: &str, message: &str) -> Value {
    json!({"NeutronError": {"type": kind, "message": message, "detail": ""}})
}

impl IntoResponse for NetError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(neutron_body(self.kind, &self.message)),
        )
            .into_response()
    }
}

/// Renders an error found outside a handler (at the HTTP edge, or by an
/// extractor) in Neutron's shape. A 401 keeps Keystone's shape, as
/// keystonemiddleware answers it in front of Neutron.
pub(crate) fn fault_response(err: ApiError) -> Response {
    if err.status == StatusCode::UNAUTHORIZED {
        return err.into_response();
    }
    NetError::from(err).into_response()
}

/// Re-renders errors that extractors answered (`ApiError`) in Neutron's
/// shape.
async fn fault_shape(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let Some(err) = resp.extensions().get::<ApiError>().cloned() else {
        return resp;
    };
    if err.status == StatusCode::UNAUTHORIZED {
        return resp;
    }
    let (mut parts, _) = resp.into_parts();
    let bytes = serde_json::to_vec(&neutron_body(default_kind(err.status), &err.message))
        .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// The network API's routes at their full paths.
pub fn router() -> Router<AppState> {
    let v2 = Router::new()
        .merge(extensions::routes())
        .merge(agents::routes())
        .merge(networks::routes())
        .merge(subnets::routes())
        .merge(ports::routes())
        .merge(security_groups::routes())
        .merge(quotas::routes())
        .merge(tags::routes())
        .merge(routers::routes())
        .merge(floating_ips::routes())
        .merge(subnetpools::routes())
        .merge(rbac::routes())
        .merge(auto_allocate::routes())
        .fallback(crate::error::not_found_fallback);
    Router::new()
        .route("/network", get(versions))
        .route("/network/", get(versions))
        .route("/network/v2.0", get(v2_index))
        .route("/network/v2.0/", get(v2_index))
        .nest("/network/v2.0", v2)
        .layer(axum::middleware::from_fn(fault_shape))
}

/// `GET /network`: Neutron's version document.
async fn versions(State(state): State<AppState>) -> axum::Json<Value> {
    let base = &state.config.public_url;
    axum::Json(json!({"versions": [{
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"href": format!("{base}/network/v2.0/"), "rel": "self"}],
    }]}))
}

/// `GET /network/v2.0/`: the collections served here.
async fn v2_index(State(state): State<AppState>) -> axum::Json<Value> {
    let base = &state.config.public_url;
    let res: Vec<Value> = [
        ("network", "networks"),
        ("subnet", "subnets"),
        ("port", "ports"),
        ("security_group", "security-groups"),
        ("security_group_rule", "security-group-rules"),
        ("quota", "quotas"),
        ("extension", "extensions"),
        ("router", "routers"),
        ("floatingip", "floatingips"),
        ("subnetpool", "subnetpools"),
        ("address_scope", "address-scopes"),
        ("rbac_policy", "rbac-policies"),
    ]
    .iter()
    .map(|(name, coll)| {
        json!({"name": name, "collection": coll.replace('-', "_"),
               "links": [{"href": format!("{base}/network/v2.0/{coll}"), "rel": "self"}]})
    })
    .collect();
    axum::Json(json!({"resources": res}))
}

// ---- policy -----------------------------------------------------------------

/// May read network resources at all (a reader of a project, or admin).
pub(crate) fn require_reader(ctx: &Ctx, action: &str) -> NetResult<()> {
    if ctx.is_admin() || ctx.project_id().is_some() && ctx.has_role("reader") {
        Ok(())
    } else {
        Err(NetError::policy(action))
    }
}

/// May create or change resources of its project (member), or admin.
pub(crate) fn require_member(ctx: &Ctx, action: &str) -> NetResult<()> {
    if ctx.is_admin() || ctx.project_id().is_some() && ctx.has_role("member") {
        Ok(())
    } else {
        Err(NetError::policy(action))
    }
}

/// The project a new resource belongs to: the caller's, or for admins the
/// `project_id`/`tenant_id` of the body.
pub(crate) fn target_project(
    ctx: &Ctx,
    body: &Map<String, Value>,
    action: &str,
) -> NetResult<String> {
    let asked = body
        .get("project_id")
        .or_else(|| body.get("tenant_id"))
        .filter(|v| !v.is_null());
    let asked = match asked {
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(NetError::bad_request(
                "Invalid input for project_id. Reason: not a string.",
            ));
        }
        None => None,
    };
    if let (Some(p), Some(t)) = (body.get("project_id"), body.get("tenant_id"))
        && p != t
    {
        return Err(NetError::bad_request(
            "'project_id' and 'tenant_id' do not match",
        ));
    }
    match (asked, ctx.project_id()) {
        (Some(a), Some(own)) if a == own => Ok(a),
        (Some(a), _) if ctx.is_admin() => Ok(a),
        (Some(_), _) => Err(NetError::policy(action)),
        (None, Some(own)) => Ok(own.to_string()),
        (None, None) => Err(NetError::bad_request(
            "'project_id' is required for a request not scoped to a project",
        )),
    }
}

/// Whether the caller owns (or, as admin, may act on) `project_id`'s things.
pub(crate) fn owns(ctx: &Ctx, project_id: &str) -> bool {
    ctx.is_admin() || ctx.project_id() == Some(project_id)
}

// ---- request bodies ---------------------------------------------------------

/// The resource object of a body (`{"network": {...}}`), refusing
/// attributes not in `allowed`.
pub(crate) fn resource_body(
    body: Value,
    key: &str,
    allowed: &[&str],
) -> NetResult<Map<String, Value>> {
    let Value::Object(mut outer) = body else {
        return Err(NetError::bad_request(format!(
            "Unable to find '{key}' in request body"
        )));
    };
    let Some(inner) = outer.remove(key) else {
        return Err(NetError::bad_request(format!(
            "Unable to find '{key}' in request body"
        )));
    };
    let Value::Object(m) = inner else {
        return Err(NetError::bad_request(format!(
            "Invalid input for {key}. Reason: not a dictionary."
        )));
    };
    let unknown: Vec<&str> = m
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(NetError::bad_request(format!(
            "Unrecognized attribute(s) '{}'",
            unknown.join(", ")
        )));
    }
    Ok(m)
}

fn type_err(attr: &str, v: &Value, what: &str) -> NetError {
    NetError::bad_request(format!(
        "Invalid input for {attr}. Reason: '{v}' is not a valid {what}."
    ))
}

/// An optional string attribute (`null` counts as absent).
pub(crate) fn opt_str(m: &Map<String, Value>, attr: &str) -> NetResult<Option<String>> {
    match m.get(attr) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.chars().count() > 255 {
                return Err(NetError::bad_request(format!(
                    "Invalid input for {attr}. Reason: '{s}' exceeds maximum length of 255."
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(v) => Err(type_err(attr, v, "string")),
    }
}

/// An optional boolean attribute; Neutron also takes "true"/"false".
pub(crate) fn opt_bool(m: &Map<String, Value>, attr: &str) -> NetResult<Option<bool>> {
    match m.get(attr) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(v) => Err(NetError::bad_request(format!(
            "Invalid input for {attr}. Reason: '{v}' cannot be converted to boolean."
        ))),
    }
}

/// An optional integer attribute (numbers or numeric strings).
pub(crate) fn opt_int(m: &Map<String, Value>, attr: &str) -> NetResult<Option<i64>> {
    match m.get(attr) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| type_err(attr, &Value::Number(n.clone()), "integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| type_err(attr, &Value::String(s.clone()), "integer")),
        Some(v) => Err(type_err(attr, v, "integer")),
    }
}

/// Neutron's timestamp format: `2026-12-03T01:48:50Z`.
pub(crate) fn now_ts() -> String {
    let s = crate::timeutil::iso_us(crate::timeutil::now_us());
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The empty 204 of a delete.
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON answer with a status.
pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Neutron's bulk create: a body `{"<plural>": [{...}, ...]}` creates each
/// item as `create` does with `{"<singular>": item}`, all or none (what was
/// made before a refusal is deleted again with `delete`), and answers 201
/// with the list; any other body goes to `create` as it is.
pub(crate) async fn create_bulk<C, CF, D, DF>(
    body: Value,
    singular: &str,
    plural: &str,
    create: C,
    delete: D,
) -> NetResult<Response>
where
    C: Fn(Value) -> CF,
    CF: std::future::Future<Output = NetResult<Response>>,
    D: Fn(String) -> DF,
    DF: std::future::Future<Output = NetResult<Response>>,
{
    let items = match body {
        Value::Object(mut m) if m.len() == 1 && m.contains_key(plural) => match m.remove(plural) {
            Some(Value::Array(items)) => items,
            _ => {
                return Err(NetError::bad_request(format!(
                    "Invalid input: '{plural}' must be a list of {singular} objects"
                )));
            }
        },
        body => return create(body).await,
    };
    let mut made: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        let done = match create(json!({ singular: item })).await {
            Ok(resp) => axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|mut v| v.get_mut(singular).map(Value::take))
                .ok_or_else(|| NetError::bad_request("bulk create: unreadable answer")),
            Err(e) => Err(e),
        };
        match done {
            Ok(v) => made.push(v),
            Err(e) => {
                for v in made.iter().rev() {
                    if let Some(id) = v.get("id").and_then(Value::as_str) {
                        let _ = delete(id.to_string()).await;
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(reply(StatusCode::CREATED, json!({ plural: made })))
}

// ---- list queries: filters, fields, sorting, paging -------------------------

/// Query parameters that are not attribute filters.
const RESERVED: &[&str] = &[
    "fields",
    "sort_key",
    "sort_dir",
    "limit",
    "marker",
    "page_reverse",
    "tags",
    "tags-any",
    "not-tags",
    "not-tags-any",
];

/// Whether `item` passes one attribute filter (any of `wanted`).
fn matches(item: &Value, key: &str, wanted: &[&str]) -> bool {
    let Some(v) = item.get(key) else {
        // Filters on attributes this resource does not have are ignored.
        return true;
    };
    wanted.iter().any(|w| match v {
        Value::String(s) => s == w,
        Value::Bool(b) => match w.to_ascii_lowercase().as_str() {
            "true" | "1" => *b,
            "false" | "0" => !*b,
            _ => false,
        },
        Value::Number(n) => n.to_string() == *w,
        Value::Null => w.is_empty() || *w == "None",
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(w)),
        Value::Object(_) => false,
    })
}

fn cmp_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Answers a list: applies attribute filters (repeated keys are ORed,
/// different keys ANDed), `sort_key`/`sort_dir`, `limit`/`marker` with a
/// `{collection}_links` next link, and `fields`.
pub(crate) fn list_answer(
    state: &AppState,
    collection: &str,
    path: &str,
    mut items: Vec<Value>,
    q: &[(String, String)],
) -> NetResult<Response> {
    let mut keys: Vec<&str> = q
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !RESERVED.contains(k))
        .collect();
    keys.dedup();
    for key in keys {
        let wanted: Vec<&str> = q
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        items.retain(|i| matches(i, key, &wanted));
    }
    let tag_list = |k: &str| -> Vec<Vec<String>> {
        q.iter()
            .filter(|(x, _)| x == k)
            .map(|(_, v)| {
                v.split(',')
                    .map(str::to_string)
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .collect()
    };
    let has = |i: &Value, t: &String| {
        i["tags"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t)))
    };
    for all in tag_list("tags") {
        items.retain(|i| all.iter().all(|t| has(i, t)));
    }
    for any in tag_list("tags-any") {
        items.retain(|i| any.iter().any(|t| has(i, t)));
    }
    for all in tag_list("not-tags") {
        items.retain(|i| !all.iter().all(|t| has(i, t)));
    }
    for any in tag_list("not-tags-any") {
        items.retain(|i| !any.iter().any(|t| has(i, t)));
    }
    let sort_keys: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_key")
        .map(|(_, v)| v.as_str())
        .collect();
    let sort_dirs: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "sort_dir")
        .map(|(_, v)| v.as_str())
        .collect();
    if sort_dirs.len() > sort_keys.len() {
        return Err(NetError::bad_request(
            "The number of sort_keys and sort_dirs must be same",
        ));
    }
    for d in &sort_dirs {
        if *d != "asc" && *d != "desc" {
            return Err(NetError::bad_request(format!(
                "{d} is invalid attribute for sort_dir"
            )));
        }
    }
    if let Some(first) = items.first() {
        for k in &sort_keys {
            if first.get(*k).is_none() {
                return Err(NetError::bad_request(format!(
                    "{k} is invalid attribute for sort_key"
                )));
            }
        }
    }
    items.sort_by(|a, b| {
        for (i, k) in sort_keys.iter().enumerate() {
            let desc = sort_dirs.get(i).is_some_and(|d| *d == "desc");
            let o = cmp_values(&a[*k], &b[*k]);
            let o = if desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        cmp_values(&a["id"], &b["id"])
    });
    let get = |k: &str| q.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    let limit = match get("limit") {
        None => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n > 0 => Some(n as usize),
            Ok(0) => None,
            _ => {
                return Err(NetError::bad_request(format!(
                    "Limit must be an integer 0 or greater and not '{l}'"
                )));
            }
        },
    };
    let reverse = get("page_reverse").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if let Some(m) = get("marker") {
        let pos = items.iter().position(|i| i["id"].as_str() == Some(m));
        match pos {
            Some(p) if reverse => {
                items.truncate(p);
            }
            Some(p) => {
                items.drain(..=p);
            }
            None => {
                return Err(NetError::not_found(
                    "HTTPNotFound",
                    format!("Marker {m} could not be found."),
                ));
            }
        }
    }
    let mut links = Vec::new();
    if let Some(n) = limit {
        if items.len() > n {
            if reverse {
                items.drain(..items.len() - n);
            } else {
                items.truncate(n);
                if let Some(last) = items.last().and_then(|i| i["id"].as_str()) {
                    let mut params: Vec<String> = q
                        .iter()
                        .filter(|(k, _)| k != "marker" && k != "page_reverse")
                        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                        .collect();
                    params.push(format!("marker={last}"));
                    links.push(json!({"rel": "next", "href": format!(
                        "{}/network/v2.0/{path}?{}", state.config.public_url, params.join("&"))}));
                }
            }
        }
        if get("marker").is_some()
            && let Some(first) = items.first().and_then(|i| i["id"].as_str())
        {
            let mut params: Vec<String> = q
                .iter()
                .filter(|(k, _)| k != "marker" && k != "page_reverse")
                .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
                .collect();
            params.push(format!("marker={first}&page_reverse=True"));
            links.push(json!({"rel": "previous", "href": format!(
                "{}/network/v2.0/{path}?{}", state.config.public_url, params.join("&"))}));
        }
    }
    let fields = fields_of(q);
    let items: Vec<Value> = items
        .into_iter()
        .map(|i| select_fields(i, &fields))
        .collect();
    let mut out = Map::new();
    out.insert(collection.to_string(), Value::Array(items));
    if !links.is_empty() {
        out.insert(format!("{collection}_links"), Value::Array(links));
    }
    Ok(reply(StatusCode::OK, Value::Object(out)))
}

/// The `fields=` asked for (repeatable, or comma-separated).
pub(crate) fn fields_of(q: &[(String, String)]) -> Vec<String> {
    q.iter()
        .filter(|(k, _)| k == "fields")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Keeps only `fields` of a rendered resource (all when none asked).
pub(crate) fn select_fields(item: Value, fields: &[String]) -> Value {
    if fields.is_empty() {
        return item;
    }
    match item {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| fields.iter().any(|f| f == k))
                .collect(),
        ),
        other => other,
    }
}

/// Percent-encodes a query component.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_or_within_a_key_and_across_keys() {
        let a = json!({"id": "a", "name": "x", "shared": true});
        assert!(matches(&a, "name", &["y", "x"]));
        assert!(!matches(&a, "name", &["y"]));
        assert!(matches(&a, "shared", &["True"]));
        assert!(!matches(&a, "shared", &["false"]));
        assert!(matches(&a, "unknown", &["z"]));
    }

    #[test]
    fn select_fields_keeps_only_asked() {
        let a = json!({"id": "a", "name": "x", "shared": true});
        assert_eq!(
            select_fields(a, &["id".into(), "name".into()]),
            json!({"id": "a", "name": "x"})
        );
    }
}
