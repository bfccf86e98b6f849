//! `/v2/images`: create, list, show, JSON-patch update, delete, tags and
//! the deactivate/reactivate actions.

use std::collections::HashMap;

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use stratus_store::Query;

use super::model::{
    CONTAINER_FORMATS, DISK_FORMATS, Image, Member, VISIBILITIES, glance_time, status,
};
use super::{fetch_visible, not_found, quota, require_owner_member, require_reader, visible};
use crate::identity::policy::Ctx;
use crate::timeutil::{now_us, parse_iso};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/images", get(list).post(create))
        .route("/images/{id}", get(show).patch(update).delete(remove))
        .route("/images/{id}/tags/{tag}", delete(untag).put(tag))
        .route("/images/{id}/actions/deactivate", post(deactivate))
        .route("/images/{id}/actions/reactivate", post(reactivate))
}

/// Attributes a client may never set.
const READ_ONLY: &[&str] = &[
    "status",
    "checksum",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "direct_url",
    "self",
    "file",
    "schema",
    "os_hash_algo",
    "os_hash_value",
    "stores",
    "locations",
];
/// Core attributes: always present, cannot be removed.
const CORE: &[&str] = &[
    "id",
    "name",
    "visibility",
    "disk_format",
    "container_format",
    "protected",
    "min_ram",
    "min_disk",
    "os_hidden",
    "owner",
    "tags",
];
/// Glance's per-image limits (`image_property_quota`, `image_tag_quota`).
const MAX_PROPERTIES: usize = 128;
const MAX_TAGS: usize = 128;

pub const IMPORT_METHODS: &str = "glance-direct";
pub const STORE_ID: &str = "local";

/// Glance's JSON for an image: custom properties flat beside the core
/// attributes, plus links.
pub fn render(img: &Image) -> Value {
    let mut m = img.properties.clone();
    let core = json!({
        "id": img.id,
        "name": img.name,
        "status": img.status,
        "visibility": img.visibility,
        "disk_format": img.disk_format,
        "container_format": img.container_format,
        "size": img.size,
        "virtual_size": img.virtual_size,
        "checksum": img.checksum,
        "os_hash_algo": img.os_hash_algo,
        "os_hash_value": img.os_hash_value,
        "protected": img.protected,
        "min_ram": img.min_ram,
        "min_disk": img.min_disk,
        "owner": img.owner,
        "os_hidden": img.os_hidden,
        "tags": img.tags,
        "created_at": glance_time(img.created_at),
        "updated_at": glance_time(img.updated_at),
        "self": format!("/v2/images/{}", img.id),
        "file": format!("/v2/images/{}/file", img.id),
        "schema": "/v2/schemas/image",
    });
    if let Value::Object(core) = core {
        m.extend(core);
    }
    if img.blob.is_some() {
        m.insert("stores".into(), json!(STORE_ID));
    }
    Value::Object(m)
}

fn forbidden(msg: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, msg)
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Sets one attribute from a client value, checking type and range as
/// Glance's schema does. Custom properties must be strings.
fn set_attr(ctx: &Ctx, img: &mut Image, key: &str, v: &Value) -> Result<(), ApiError> {
    let bad = |what: &str| ApiError::bad_request(format!("Invalid value for '{key}': {what}"));
    let opt_enum = |allowed: &[&str]| -> Result<Option<String>, ApiError> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) if allowed.contains(&s.as_str()) => Ok(Some(s.clone())),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value {v} for '{key}': it must be one of {}",
                allowed.join(", ")
            ))),
        }
    };
    let non_negative = || -> Result<u64, ApiError> {
        match v {
            Value::Number(n) if n.is_u64() => Ok(n.as_u64().unwrap_or(0)),
            Value::Number(n) if n.is_i64() => Err(ApiError::bad_request(format!(
                "Invalid value '{n}' for parameter '{key}': Cannot be a negative value"
            ))),
            _ => Err(bad("must be an integer")),
        }
    };
    let boolean = || -> Result<bool, ApiError> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(bad("must be a boolean")),
        }
    };
    match key {
        "name" => match v {
            Value::Null => img.name = None,
            // Glance's schema: a string of at most 255 characters, or null.
            // Control characters are refused as well: no client means them
            // and not every SQL backend keeps them (PostgreSQL refuses NUL).
            Value::String(s) if s.chars().any(char::is_control) => {
                return Err(bad("must not contain control characters"));
            }
            Value::String(s) if s.chars().count() <= 255 => img.name = Some(s.clone()),
            Value::String(_) => return Err(bad("longer than 255 characters")),
            _ => return Err(bad("must be a string or null")),
        },
        "visibility" => {
            let vis = match v {
                Value::String(s) if VISIBILITIES.contains(&s.as_str()) => s.clone(),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid visibility value {v}: it must be one of community, public, private, shared"
                    )));
                }
            };
            if vis == "public" && img.visibility != "public" && !ctx.is_admin() {
                return Err(forbidden(
                    "You are not authorized to publicize images: setting visibility to public needs the admin role".into(),
                ));
            }
            img.visibility = vis;
        }
        "disk_format" => img.disk_format = opt_enum(DISK_FORMATS)?,
        "container_format" => img.container_format = opt_enum(CONTAINER_FORMATS)?,
        "protected" => img.protected = boolean()?,
        "os_hidden" => img.os_hidden = boolean()?,
        "min_ram" => img.min_ram = non_negative()?,
        "min_disk" => img.min_disk = non_negative()?,
        "owner" => {
            let owner = match v {
                Value::Null => None,
                Value::String(s) if s.len() <= 255 => Some(s.clone()),
                _ => return Err(bad("must be a string of at most 255 characters")),
            };
            if !ctx.is_admin() && owner.as_deref() != ctx.project_id() {
                return Err(forbidden(format!(
                    "You are not permitted to create or change images owned by '{}'.",
                    owner.as_deref().unwrap_or("")
                )));
            }
            img.owner = owner;
        }
        "tags" => {
            let Value::Array(items) = v else {
                return Err(bad("must be a list of strings"));
            };
            let mut tags: Vec<String> = Vec::new();
            for t in items {
                match t {
                    Value::String(s) if !s.is_empty() && s.chars().count() <= 255 => {
                        if !tags.contains(s) {
                            tags.push(s.clone());
                        }
                    }
                    _ => return Err(bad("tags must be strings of 1 to 255 characters")),
                }
            }
            if tags.len() > MAX_TAGS {
                return Err(too_many("tags", MAX_TAGS));
            }
            img.tags = tags;
        }
        "id" => return Err(forbidden(format!("Attribute '{key}' is read-only."))),
        k if READ_ONLY.contains(&k) => {
            return Err(forbidden(format!("Attribute '{k}' is read-only.")));
        }
        k if k.starts_with("os_glance") => {
            return Err(forbidden(format!("Attribute '{k}' is reserved.")));
        }
        k => {
            if k.is_empty() || k.chars().count() > 255 {
                return Err(ApiError::bad_request(format!(
                    "Invalid property name '{k}': it must be 1 to 255 characters"
                )));
            }
            match v {
                Value::String(s) if s.len() <= 65_535 => {
                    img.properties.insert(k.to_string(), v.clone());
                    let _ = s;
                }
                Value::String(_) => return Err(bad("longer than 65535 characters")),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "Provided object does not match schema 'image': {v} is not of type 'string' (property '{k}')"
                    )));
                }
            }
            if img.properties.len() > MAX_PROPERTIES {
                return Err(too_many("properties", MAX_PROPERTIES));
            }
        }
    }
    Ok(())
}

fn too_many(what: &str, max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Maximum number of {what} exceeded: an image may have at most {max}."),
    )
}

/// Checks that hold across attributes, after every change.
fn check_image(img: &Image) -> Result<(), ApiError> {
    const KERNEL: &[&str] = &["aki", "ari", "ami"];
    let (d, c) = (img.disk_format.as_deref(), img.container_format.as_deref());
    let kernel = |f: Option<&str>| f.is_some_and(|f| KERNEL.contains(&f));
    if (kernel(d) || kernel(c)) && d.is_some() && c.is_some() && d != c {
        return Err(ApiError::bad_request(
            "Invalid mix of disk and container formats. When setting a disk or container format to one of 'aki', 'ari', or 'ami', the container and disk formats must match.",
        ));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::bad_request("Request body must be a JSON object."));
    };
    if !(ctx.is_admin() || ctx.project_id().is_some() && ctx.has_role("member")) {
        return Err(forbidden(
            "You are not authorized to create images: it needs the member role on a project".into(),
        ));
    }
    let now = now_us();
    let id = match body.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if is_uuid(s) => s.to_lowercase(),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid value {v} for 'id': it must be a UUID"
            )));
        }
    };
    let mut img = Image {
        id: id.clone(),
        name: None,
        owner: ctx.project_id().map(str::to_string),
        status: status::QUEUED.into(),
        visibility: "shared".into(),
        disk_format: None,
        container_format: None,
        size: None,
        virtual_size: None,
        checksum: None,
        os_hash_algo: None,
        os_hash_value: None,
        protected: false,
        min_ram: 0,
        min_disk: 0,
        os_hidden: false,
        tags: Vec::new(),
        properties: Map::new(),
        created_at: now,
        updated_at: now,
        blob: None,
        staged: None,
        tasks: Vec::new(),
    };
    for (k, v) in &body {
        if k != "id" {
            set_attr(&ctx, &mut img, k, v)?;
        }
    }
    check_image(&img)?;
    let project = img.owner.clone();
    state.store.write(|tx| {
        if tx.exists::<Image>(&id)? {
            return Err(ApiError::conflict(format!(
                "Image with identifier {id} already exists!"
            )));
        }
        if let Some(p) = &project {
            quota::check_count(&state.store, tx, p)?;
        }
        tx.insert(&img)?;
        Ok(())
    })?;
    let mut resp = (StatusCode::CREATED, Json(render(&img))).into_response();
    let h = resp.headers_mut();
    if let Ok(v) =
        HeaderValue::from_str(&format!("{}/image/v2/images/{id}", state.config.public_url))
    {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        "openstack-image-import-methods",
        HeaderValue::from_static(IMPORT_METHODS),
    );
    h.insert(
        "openstack-image-store-ids",
        HeaderValue::from_static(STORE_ID),
    );
    Ok(resp)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    Ok(Json(render(&fetch_visible(&state, &ctx, &id)?)))
}

// ---- list -------------------------------------------------------------

const SORT_KEYS: &[&str] = &[
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
    "min_disk",
    "min_ram",
    "virtual_size",
    "visibility",
    "owner",
];
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

/// A parsed `GET /v2/images` query.
struct ListQuery {
    limit: usize,
    marker: Option<String>,
    sort: Vec<(String, bool)>, // (key, descending)
    visibility: Option<String>,
    member_status: String,
    hidden: bool,
    tags: Vec<String>,
    size_min: Option<u64>,
    size_max: Option<u64>,
    /// attribute -> allowed values (`in:` gives several).
    equals: Vec<(String, Vec<String>)>,
    times: Vec<(String, String, i64)>, // (attr, op, time)
    protected: Option<bool>,
    raw: Vec<(String, String)>,
}

fn parse_list_query(pairs: Vec<(String, String)>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        limit: DEFAULT_LIMIT,
        marker: None,
        sort: Vec::new(),
        visibility: None,
        member_status: "accepted".into(),
        hidden: false,
        tags: Vec::new(),
        size_min: None,
        size_max: None,
        equals: Vec::new(),
        times: Vec::new(),
        protected: None,
        raw: pairs.clone(),
    };
    let mut sort_keys: Vec<String> = Vec::new();
    let mut sort_dirs: Vec<bool> = Vec::new();
    let parse_bool = |k: &str, v: &str| -> Result<bool, ApiError> {
        match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ApiError::bad_request(format!(
                "Invalid value '{v}' for {k}: expected true or false"
            ))),
        }
    };
    let dir = |v: &str| -> Result<bool, ApiError> {
        match v {
            "asc" => Ok(false),
            "desc" => Ok(true),
            _ => Err(ApiError::bad_request(format!(
                "Invalid sort direction: {v}. It must be one of the following: asc, desc."
            ))),
        }
    };
    for (k, v) in pairs {
        match k.as_str() {
            "limit" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("limit param must be an integer"))?;
                if n < 0 {
                    return Err(ApiError::bad_request("limit param must be positive"));
                }
                q.limit = (n as usize).min(MAX_LIMIT);
            }
            "marker" => q.marker = Some(v),
            "sort_key" => sort_keys.extend(v.split(',').map(|s| s.trim().to_string())),
            "sort_dir" => {
                for d in v.split(',') {
                    sort_dirs.push(dir(d.trim())?);
                }
            }
            "sort" => {
                for part in v.split(',') {
                    let (key, d) = part.split_once(':').unwrap_or((part, "desc"));
                    q.sort.push((key.trim().to_string(), dir(d.trim())?));
                }
            }
            "visibility" => {
                if !VISIBILITIES.contains(&v.as_str()) && v != "all" {
                    return Err(ApiError::bad_request(format!(
                        "Invalid visibility value: {v}. It must be one of community, public, private, shared or all."
                    )));
                }
                q.visibility = Some(v);
            }
            "member_status" => {
                if !["pending", "accepted", "rejected", "all"].contains(&v.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid status value: {v}. It must be one of pending, accepted, rejected or all."
                    )));
                }
                q.member_status = v;
            }
            "os_hidden" => q.hidden = parse_bool(&k, &v)?,
            "protected" => q.protected = Some(parse_bool(&k, &v)?),
            "tag" => q.tags.push(v),
            "size_min" | "size_max" => {
                let n: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "Invalid value '{v}' for {k}: must be an integer"
                    ))
                })?;
                if k == "size_min" {
                    q.size_min = Some(n);
                } else {
                    q.size_max = Some(n);
                }
            }
            "created_at" | "updated_at" => {
                let (op, t) = v
                    .split_once(':')
                    .filter(|(op, _)| op.len() <= 3)
                    .unwrap_or(("eq", &v));
                if !["gt", "gte", "lt", "lte", "eq", "neq"].contains(&op) {
                    return Err(ApiError::bad_request(format!(
                        "Invalid operator '{op}' for {k}"
                    )));
                }
                let t = parse_iso(t).ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid time value '{t}' for {k}"))
                })?;
                q.times.push((k, op.to_string(), t));
            }
            _ => {
                let values = match v.strip_prefix("in:") {
                    Some(list) => list
                        .split(',')
                        .map(|s| s.trim_matches('"').to_string())
                        .collect(),
                    None => vec![v.strip_prefix("eq:").unwrap_or(&v).to_string()],
                };
                q.equals.push((k, values));
            }
        }
    }
    if !sort_keys.is_empty() && !q.sort.is_empty() {
        return Err(ApiError::bad_request(
            "The 'sort' parameter cannot be used with 'sort_key' or 'sort_dir'.",
        ));
    }
    if sort_dirs.len() > sort_keys.len().max(1) {
        return Err(ApiError::bad_request(
            "The number of sort_dir values exceeds the number of sort_key values.",
        ));
    }
    for (i, k) in sort_keys.into_iter().enumerate() {
        let d = sort_dirs
            .get(i)
            .or(sort_dirs.last())
            .copied()
            .unwrap_or(true);
        q.sort.push((k, d));
    }
    for (k, _) in &q.sort {
        if !SORT_KEYS.contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Invalid sort key: {k}. It must be one of the following: {}.",
                SORT_KEYS.join(", ")
            )));
        }
    }
    if q.sort.is_empty() {
        q.sort.push(("created_at".into(), true));
    }
    Ok(q)
}

/// Whether `img` belongs in the caller's listing before attribute filters.
fn listed(ctx: &Ctx, img: &Image, q: &ListQuery, member: Option<&Member>) -> bool {
    let own = img.is_owned_by(ctx.project_id());
    let member_ok = member.is_some_and(|m| q.member_status == "all" || m.status == q.member_status);
    let in_scope = match q.visibility.as_deref() {
        None => {
            own || img.visibility == "public"
                || img.visibility == "shared" && member_ok
                || ctx.is_admin() && img.visibility != "community"
        }
        Some("all") => {
            own || img.visibility == "public"
                || img.visibility == "community"
                || img.visibility == "shared" && member_ok
                || ctx.is_admin()
        }
        Some(v) => {
            img.visibility == v
                && (own
                    || ctx.is_admin()
                    || v == "public"
                    || v == "community"
                    || v == "shared" && member_ok)
        }
    };
    in_scope && img.os_hidden == q.hidden
}

fn attr_string(rendered: &Value, key: &str) -> Option<String> {
    match rendered.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

fn matches(img: &Image, rendered: &Value, q: &ListQuery) -> bool {
    if let Some(p) = q.protected
        && img.protected != p
    {
        return false;
    }
    if !q.tags.iter().all(|t| img.tags.contains(t)) {
        return false;
    }
    if q.size_min.is_some_and(|m| img.size.is_none_or(|s| s < m))
        || q.size_max.is_some_and(|m| img.size.is_none_or(|s| s > m))
    {
        return false;
    }
    for (k, values) in &q.equals {
        match attr_string(rendered, k) {
            Some(s) if values.contains(&s) => {}
            _ => return false,
        }
    }
    for (k, op, t) in &q.times {
        let v = if k == "created_at" {
            img.created_at
        } else {
            img.updated_at
        };
        // Compare at the second precision the API shows.
        let (v, t) = (v / 1_000_000, t / 1_000_000);
        let ok = match op.as_str() {
            "gt" => v > t,
            "gte" => v >= t,
            "lt" => v < t,
            "lte" => v <= t,
            "neq" => v != t,
            _ => v == t,
        };
        if !ok {
            return false;
        }
    }
    true
}

fn compare(a: &Value, b: &Value, sort: &[(String, bool)]) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for (k, desc) in sort
        .iter()
        .map(|(k, d)| (k.as_str(), *d))
        .chain([("created_at", true), ("id", true)])
    {
        let (x, y) = (
            a.get(k).unwrap_or(&Value::Null),
            b.get(k).unwrap_or(&Value::Null),
        );
        let ord = match (x, y) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Less,
            (_, Value::Null) => Ordering::Greater,
            (x, y) => x.to_string().cmp(&y.to_string()),
        };
        if ord != Ordering::Equal {
            return if desc { ord.reverse() } else { ord };
        }
    }
    Ordering::Equal
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    QueryParams(pairs): QueryParams<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let q = parse_list_query(pairs)?;
    let memberships: HashMap<String, Member> = match ctx.project_id() {
        Some(p) => state
            .store
            .list::<Member>(&Query::owner(p))?
            .into_iter()
            .map(|m| (m.image_id.clone(), m))
            .collect(),
        None => HashMap::new(),
    };
    let mut rows: Vec<Value> = state
        .store
        .list::<Image>(&Query::all())?
        .iter()
        .filter(|img| listed(&ctx, img, &q, memberships.get(&img.id)))
        .filter_map(|img| {
            let r = render(img);
            matches(img, &r, &q).then_some(r)
        })
        .collect();
    rows.sort_by(|a, b| compare(a, b, &q.sort));
    if let Some(marker) = &q.marker {
        let visible_marker = state
            .store
            .get::<Image>(marker)?
            .map(|m| visible(&state, &ctx, &m))
            .transpose()?
            .unwrap_or(false);
        if !visible_marker {
            return Err(ApiError::bad_request(format!(
                "No image found with ID {marker}"
            )));
        }
        match rows.iter().position(|r| r["id"] == marker.as_str()) {
            Some(pos) => {
                rows.drain(..=pos);
            }
            None => {
                // The marker exists but is filtered out: continue after
                // where it would sort.
                let m = render(&state.store.fetch::<Image>(marker)?);
                rows.retain(|r| compare(r, &m, &q.sort) == std::cmp::Ordering::Greater);
            }
        }
    }
    let more = rows.len() > q.limit;
    rows.truncate(q.limit);
    let first = list_link(&q.raw, None);
    let mut body = json!({"images": rows, "first": first, "schema": "/v2/schemas/images"});
    if more
        && let Some(last) = body["images"]
            .as_array()
            .and_then(|a| a.last())
            .and_then(|r| r["id"].as_str())
    {
        body["next"] = json!(list_link(&q.raw, Some(last)));
    }
    Ok(Json(body))
}

/// `/v2/images?...` with the caller's parameters and a new marker.
fn list_link(raw: &[(String, String)], marker: Option<&str>) -> String {
    let mut parts: Vec<String> = raw
        .iter()
        .filter(|(k, _)| k != "marker")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if let Some(m) = marker {
        parts.push(format!("marker={}", encode(m)));
    }
    if parts.is_empty() {
        "/v2/images".into()
    } else {
        format!("/v2/images?{}", parts.join("&"))
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- update (JSON patch) ------------------------------------------------

const PATCH_TYPES: &[&str] = &[
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
];

/// Decodes a JSON-pointer path of one segment (`/name`, `/a~1b`).
fn patch_key(path: &str) -> Result<String, ApiError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(ApiError::bad_request(format!(
            "Json path should start with a '/', got '{path}'"
        )));
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(ApiError::bad_request(format!(
            "Invalid JSON pointer for this resource: '{path}'"
        )));
    }
    Ok(rest.replace("~1", "/").replace("~0", "~"))
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if !PATCH_TYPES.contains(&ctype.as_str()) {
        let mut resp = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "The request media type {ctype} is not supported by this server. Image PATCH expects Content-Type one of: {}",
                PATCH_TYPES.join(", ")
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert("accept-patch", HeaderValue::from_static("application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch"));
        return Ok(resp);
    }
    let ops: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("Malformed JSON in request body."))?;
    let Value::Array(ops) = ops else {
        return Err(ApiError::bad_request(
            "Request body must be a JSON array of operation objects.",
        ));
    };
    require_reader(&ctx)?;
    let img = state.store.write(|tx| {
        let mut img = match tx.get::<Image>(&id)? {
            Some(img) if visible(&state, &ctx, &img)? => img,
            _ => return Err(not_found(&id)),
        };
        require_owner_member(&ctx, &img, "modify")?;
        let before = img.clone();
        for op in &ops {
            apply_op(&ctx, &mut img, &before, op)?;
        }
        check_image(&img)?;
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(img)
    })?;
    Ok(Json(render(&img)).into_response())
}

fn apply_op(ctx: &Ctx, img: &mut Image, before: &Image, op: &Value) -> Result<(), ApiError> {
    let Value::Object(op) = op else {
        return Err(ApiError::bad_request("Operations must be JSON objects."));
    };
    // The v2.1 form is {"op": "replace", "path": "/name"}; the older v2.0
    // form, which Tempest and old clients send, is {"replace": "/name"}.
    let legacy = ["add", "replace", "remove"]
        .into_iter()
        .find(|k| !op.contains_key("op") && op.get(*k).is_some_and(Value::is_string));
    let (name, path) = match legacy {
        Some(k) => (k, op.get(k).and_then(Value::as_str)),
        None => (
            op.get("op").and_then(Value::as_str).unwrap_or(""),
            op.get("path").and_then(Value::as_str),
        ),
    };
    let path =
        path.ok_or_else(|| ApiError::bad_request("Unable to find 'path' in JSON Schema change"))?;
    let key = patch_key(path)?;
    let value = op.get("value");
    if key.starts_with("os_glance") {
        return Err(forbidden(format!("Attribute '{key}' is reserved.")));
    }
    if READ_ONLY.contains(&key.as_str()) || key == "id" {
        return Err(forbidden(format!("Attribute '{key}' is read-only.")));
    }
    let core = CORE.contains(&key.as_str());
    if (key == "disk_format" || key == "container_format") && before.status != status::QUEUED {
        return Err(forbidden(format!(
            "Attribute {key} can be only replaced for a queued image."
        )));
    }
    match name {
        "add" | "replace" => {
            let v = value.ok_or_else(|| {
                ApiError::bad_request(format!("Operation '{name}' needs a 'value'"))
            })?;
            if name == "replace" && !core && !img.properties.contains_key(&key) {
                return Err(ApiError::conflict(format!(
                    "Property {key} does not exist."
                )));
            }
            set_attr(ctx, img, &key, v)
        }
        "remove" => {
            if core {
                return Err(forbidden(format!("Property {key} may not be removed.")));
            }
            if img.properties.remove(&key).is_none() {
                return Err(ApiError::conflict(format!(
                    "Property {key} does not exist."
                )));
            }
            Ok(())
        }
        other => Err(ApiError::bad_request(format!(
            "Invalid operation: `{other}`. It must be one of the following: add, remove, replace."
        ))),
    }
}

// ---- delete, tags, actions ------------------------------------------------

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_image(&state, &ctx, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes an image the caller may delete, its memberships, and its data
/// once no other image shares it (also behind Nova's image proxy).
pub(crate) fn delete_image(state: &AppState, ctx: &Ctx, id: &str) -> Result<(), ApiError> {
    let id = id.to_string();
    require_reader(ctx)?;
    let img = fetch_visible(state, ctx, &id)?;
    require_owner_member(ctx, &img, "delete")?;
    if img.protected {
        return Err(forbidden(format!(
            "Image {id} is protected and cannot be deleted."
        )));
    }
    purge_image(state, &id)
}

/// Removes an image, its memberships, and its data once no other image
/// shares it; no policy checks (the caller made them, or is the compute
/// service cleaning up after a snapshot).
pub(crate) fn purge_image(state: &AppState, id: &str) -> Result<(), ApiError> {
    let id = id.to_string();
    let blobs = &state.image.blobs;
    let _guard = blobs.lock();
    let orphan = state.store.write(|tx| {
        let Some(img) = tx.get::<Image>(&id)? else {
            return Err(not_found(&id));
        };
        for m in tx.list::<Member>(&Query::parent(&id))? {
            tx.delete::<Member>(&m.id)?;
        }
        tx.delete::<Image>(&id)?;
        let orphan = match &img.blob {
            Some(key) => !tx
                .list::<Image>(&Query::all())?
                .iter()
                .any(|i| i.blob.as_deref() == Some(key)),
            None => false,
        };
        Ok((img, orphan))
    })?;
    if let (img, true) = &orphan
        && let Some(key) = &img.blob
    {
        blobs.remove_blob(key);
    }
    if orphan.0.staged.is_some() {
        blobs.remove_staged(&id);
    }
    Ok(())
}

async fn tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    if tag.is_empty() || tag.chars().count() > 255 {
        return Err(ApiError::bad_request("Tags must be 1 to 255 characters."));
    }
    state.store.write(|tx| {
        let mut img = match tx.get::<Image>(&id)? {
            Some(img) if visible(&state, &ctx, &img)? => img,
            _ => return Err(not_found(&id)),
        };
        require_owner_member(&ctx, &img, "modify")?;
        if !img.tags.contains(&tag) {
            if img.tags.len() >= MAX_TAGS {
                return Err(too_many("tags", MAX_TAGS));
            }
            img.tags.push(tag.clone());
            img.updated_at = now_us();
            tx.update(&img)?;
        }
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn untag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, tag)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    state.store.write(|tx| {
        let mut img = match tx.get::<Image>(&id)? {
            Some(img) if visible(&state, &ctx, &img)? => img,
            _ => return Err(not_found(&id)),
        };
        require_owner_member(&ctx, &img, "modify")?;
        let before = img.tags.len();
        img.tags.retain(|t| *t != tag);
        if img.tags.len() == before {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Tag {tag} not found on image {id}."),
            ));
        }
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deactivate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    transition(&state, &ctx, &id, "deactivate", status::DEACTIVATED)
}

async fn reactivate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    transition(&state, &ctx, &id, "reactivate", status::ACTIVE)
}

/// active <-> deactivated; a no-op when already there.
fn transition(
    state: &AppState,
    ctx: &Ctx,
    id: &str,
    action: &str,
    to: &str,
) -> Result<StatusCode, ApiError> {
    require_reader(ctx)?;
    state.store.write(|tx| {
        let mut img = match tx.get::<Image>(id)? {
            Some(img) if visible(state, ctx, &img)? => img,
            _ => return Err(not_found(id)),
        };
        require_owner_member(ctx, &img, action)?;
        if img.status == to {
            return Ok(());
        }
        if img.status != status::ACTIVE && img.status != status::DEACTIVATED {
            return Err(ApiError::bad_request(format!(
                "Not allowed to {action} image in status '{}'",
                img.status
            )));
        }
        img.status = to.into();
        img.updated_at = now_us();
        tx.update(&img)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_parses_glance_forms() {
        let q = parse_list_query(vec![
            ("sort".into(), "name:asc,size".into()),
            ("limit".into(), "5000".into()),
            ("status".into(), "in:active,queued".into()),
            ("created_at".into(), "gte:2026-01-01T00:00:00Z".into()),
            ("tag".into(), "a".into()),
            ("tag".into(), "b".into()),
        ])
        .unwrap();
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(
            q.sort,
            vec![("name".to_string(), false), ("size".to_string(), true)]
        );
        assert_eq!(
            q.equals,
            vec![(
                "status".to_string(),
                vec!["active".to_string(), "queued".to_string()]
            )]
        );
        assert_eq!(q.tags, vec!["a", "b"]);
        assert_eq!(q.times[0].1, "gte");
        assert!(parse_list_query(vec![("limit".into(), "-1".into())]).is_err());
        assert!(parse_list_query(vec![("sort_key".into(), "bogus".into())]).is_err());
        assert!(parse_list_query(vec![("sort_dir".into(), "sideways".into())]).is_err());
    }

    #[test]
    fn patch_paths_are_json_pointers() {
        assert_eq!(patch_key("/a~1b").unwrap(), "a/b");
        assert!(patch_key("name").is_err());
        assert!(patch_key("/a/b").is_err());
    }
}
