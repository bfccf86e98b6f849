//! What the metadef handlers (`metadefs.rs`, `metadef_items.rs`) share:
//! errors, policy, the namespace lookups, body checks and paging. Both
//! call down here and never each other for these.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use stratus_store::{Query, Tx};

use super::model::MetadefNamespace;
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

/// Glance's page sizes for metadef lists.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

pub(super) fn ns_not_found(ns: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("Namespace {ns} not found"))
}

/// Glance's policy refusal for the admin-only metadef rules.
pub(super) fn require_admin(ctx: &Ctx, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("You are not authorized to complete {rule} action."),
        ))
    }
}

pub(super) fn bad(schema: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "Provided object does not match schema '{schema}': {msg}"
    ))
}

pub(super) fn visible(ctx: &Ctx, ns: &MetadefNamespace) -> bool {
    ctx.is_admin()
        || ns.visibility == "public"
        || ctx.project_id().is_some() && ns.owner.as_deref() == ctx.project_id()
}

/// The namespace named `name` if the caller may see it, else Glance's 404.
pub(super) fn fetch_ns(
    state: &AppState,
    ctx: &Ctx,
    name: &str,
) -> Result<MetadefNamespace, ApiError> {
    match state.store.get_unique::<MetadefNamespace>(name)? {
        Some(ns) if visible(ctx, &ns) => Ok(ns),
        _ => Err(ns_not_found(name)),
    }
}

/// The same lookup inside a write transaction.
pub(super) fn fetch_ns_tx(tx: &Tx, ctx: &Ctx, name: &str) -> Result<MetadefNamespace, ApiError> {
    match tx
        .list::<MetadefNamespace>(&Query::name(name))?
        .into_iter()
        .find(|n| n.namespace == name)
    {
        Some(ns) if visible(ctx, &ns) => Ok(ns),
        _ => Err(ns_not_found(name)),
    }
}

/// A 403 when `ns` is protected: nothing in it may be deleted.
pub(super) fn unprotected(ns: &MetadefNamespace, what: String) -> Result<(), ApiError> {
    if ns.protected {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Metadata definition {what} is protected and cannot be deleted."),
        ))
    } else {
        Ok(())
    }
}

// ---- body checks, in the words of Glance's JSON-schema validation ---------

/// The body as a JSON object.
pub(super) fn object<'a>(schema: &str, v: &'a Value) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| bad(schema, format!("{v} is not of type 'object'")))
}

/// Server-set attributes cannot be sent (Glance answers 403).
pub(super) fn read_only(map: &Map<String, Value>, keys: &[&str]) -> Result<(), ApiError> {
    match keys.iter().find(|k| map.contains_key(**k)) {
        Some(k) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Attribute '{k}' is read-only."),
        )),
        None => Ok(()),
    }
}

pub(super) fn only(
    schema: &str,
    map: &Map<String, Value>,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(bad(
            schema,
            format!("Additional properties are not allowed ('{k}' was unexpected)"),
        )),
        None => Ok(()),
    }
}

pub(super) fn string(
    schema: &str,
    map: &Map<String, Value>,
    key: &str,
    max: Option<usize>,
    required: bool,
) -> Result<Option<String>, ApiError> {
    match map.get(key) {
        None if required => Err(bad(schema, format!("'{key}' is a required property"))),
        None => Ok(None),
        Some(Value::String(s)) => match max {
            Some(max) if s.chars().count() > max => Err(bad(schema, format!("'{s}' is too long"))),
            _ if required && s.is_empty() => Err(bad(schema, format!("'{key}' must not be empty"))),
            _ => Ok(Some(s.clone())),
        },
        Some(v) => Err(bad(schema, format!("{v} is not of type 'string'"))),
    }
}

pub(super) fn boolean(
    schema: &str,
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, ApiError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(bad(schema, format!("{v} is not of type 'boolean'"))),
    }
}

pub(super) fn array<'a>(
    schema: &str,
    map: &'a Map<String, Value>,
    key: &str,
) -> Result<&'a [Value], ApiError> {
    match map.get(key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(bad(schema, format!("{v} is not of type 'array'"))),
    }
}

// ---- sorting and paging -----------------------------------------------------

/// `limit`, `marker`, `sort_key` and `sort_dir` of a list call.
pub(super) struct Page {
    pub limit: usize,
    pub marker: Option<String>,
    pub sort_key: String,
    pub desc: bool,
}

pub(super) fn parse_page(params: &[(String, String)], keys: &[&str]) -> Result<Page, ApiError> {
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if n < 0 => return Err(ApiError::bad_request("limit param must be positive")),
            Ok(n) => (n as usize).min(MAX_LIMIT),
            Err(_) => return Err(ApiError::bad_request("limit param must be an integer")),
        },
    };
    let desc = match get("sort_dir").unwrap_or("desc") {
        "desc" => true,
        "asc" => false,
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid sort direction: {other}"
            )));
        }
    };
    let sort_key = get("sort_key").unwrap_or("created_at");
    if !keys.contains(&sort_key) {
        return Err(ApiError::bad_request(format!(
            "Invalid sort key: {sort_key}. It must be one of the following: {}.",
            keys.join(", ")
        )));
    }
    Ok(Page {
        limit,
        marker: get("marker").map(str::to_string),
        sort_key: sort_key.into(),
        desc,
    })
}

/// A value to sort on.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum SortVal {
    Int(i64),
    Str(Option<String>),
}

/// Sorts `items` (ties broken by name, as the key is not unique), starts
/// after the marker (a name; 404 when absent) and cuts to the limit.
/// Returns the page and the marker of the next one when it is full.
pub(super) fn paginate<T>(
    mut items: Vec<T>,
    page: &Page,
    name: impl Fn(&T) -> &str,
    key: impl Fn(&T, &str) -> SortVal,
    marker_missing: impl Fn(&str) -> ApiError,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    items.sort_by(|a, b| {
        let ord = key(a, &page.sort_key)
            .cmp(&key(b, &page.sort_key))
            .then_with(|| name(a).cmp(name(b)));
        if page.desc { ord.reverse() } else { ord }
    });
    if let Some(m) = &page.marker {
        match items.iter().position(|i| name(i) == m) {
            Some(pos) => {
                items.drain(..=pos);
            }
            None => return Err(marker_missing(m)),
        }
    }
    items.truncate(page.limit);
    let next = if !items.is_empty() && items.len() == page.limit {
        items.last().map(|i| name(i).to_string())
    } else {
        None
    };
    Ok((items, next))
}

pub(super) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?query` with the caller's parameters, less `marker`, plus `marker`.
pub(super) fn link(path: &str, params: &[(String, String)], marker: Option<&str>) -> String {
    let mut parts: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "marker")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if let Some(m) = marker {
        parts.push(format!("marker={}", encode(m)));
    }
    if parts.is_empty() {
        path.into()
    } else {
        format!("{path}?{}", parts.join("&"))
    }
}

pub(super) fn created(body: Value) -> Response {
    (StatusCode::CREATED, Json(body)).into_response()
}
