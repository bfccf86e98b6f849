//! `/v2/metadefs`: Glance's metadata definitions catalog.
//!
//! A namespace groups property definitions, objects (named groups of
//! properties) and tags, and says which resource types
//! (`OS::Glance::Image`, `OS::Nova::Flavor`, ...) it applies to. This
//! module holds namespaces, resource types, their associations and the
//! checks the other metadef handlers share; `metadef_items.rs` holds
//! objects, properties and tags.
//!
//! Policy is Glance's default: project readers (and admins) read public
//! namespaces and their own project's private ones; only admins create,
//! change or delete anything. A namespace the caller cannot see is a 404,
//! as in Glance. A protected namespace, and everything in it, cannot be
//! deleted (403) until `protected` is cleared.

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use stratus_store::{Query, Store, Tx};

use super::metadef_items::{self, Item};
use super::model::{
    MetadefAssociation, MetadefItem, MetadefNamespace, MetadefObject, MetadefProperty,
    MetadefResourceType, MetadefTag, glance_time,
};
use super::require_reader;
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

/// The resource types Glance's database starts with.
pub const BUILTIN_RESOURCE_TYPES: &[&str] = &[
    "OS::Glance::Image",
    "OS::Cinder::Volume",
    "OS::Nova::Flavor",
    "OS::Nova::Aggregate",
    "OS::Nova::Server",
];

/// Glance's `limit_param_default` and `api_limit_max`.
const DEFAULT_LIMIT: usize = 25;
const MAX_LIMIT: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/metadefs/namespaces",
            get(list_namespaces).post(create_namespace),
        )
        .route(
            "/metadefs/namespaces/{ns}",
            get(show_namespace)
                .put(update_namespace)
                .delete(delete_namespace),
        )
        .route("/metadefs/resource_types", get(list_resource_types))
        .route(
            "/metadefs/namespaces/{ns}/resource_types",
            get(list_associations).post(associate),
        )
        .route(
            "/metadefs/namespaces/{ns}/resource_types/{rt}",
            delete(dissociate),
        )
        .merge(metadef_items::routes())
}

/// Writes the builtin resource types if they are missing (at start-up).
pub fn seed_resource_types(store: &Store) -> Result<(), ApiError> {
    store.write(|tx| {
        for name in BUILTIN_RESOURCE_TYPES {
            if !tx.exists::<MetadefResourceType>(name)? {
                let now = now_us();
                tx.insert(&MetadefResourceType {
                    id: (*name).into(),
                    protected: true,
                    created_at: now,
                    updated_at: now,
                })?;
            }
        }
        Ok::<_, ApiError>(())
    })
}

// ---- errors, policy, lookups shared by the metadef handlers ------------------

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
fn link(path: &str, params: &[(String, String)], marker: Option<&str>) -> String {
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

// ---- namespaces ---------------------------------------------------------------

const NS_READ_ONLY: &[&str] = &["self", "schema", "created_at", "updated_at"];
const NS_FIELDS: &[&str] = &[
    "namespace",
    "display_name",
    "description",
    "visibility",
    "protected",
    "owner",
    "resource_type_associations",
    "properties",
    "objects",
    "tags",
];

fn render_association(a: &MetadefAssociation) -> Value {
    let mut v = json!({
        "name": a.name,
        "created_at": glance_time(a.created_at),
        "updated_at": glance_time(a.updated_at),
    });
    if let Some(p) = &a.prefix {
        v["prefix"] = json!(p);
    }
    if let Some(t) = &a.properties_target {
        v["properties_target"] = json!(t);
    }
    v
}

fn render_namespace(ns: &MetadefNamespace) -> Value {
    let mut v = json!({
        "namespace": ns.namespace,
        "visibility": ns.visibility,
        "protected": ns.protected,
        "created_at": glance_time(ns.created_at),
        "updated_at": glance_time(ns.updated_at),
        "schema": "/v2/schemas/metadefs/namespace",
        "self": format!("/v2/metadefs/namespaces/{}", ns.namespace),
    });
    for (k, val) in [
        ("display_name", &ns.display_name),
        ("description", &ns.description),
        ("owner", &ns.owner),
    ] {
        if let Some(s) = val {
            v[k] = json!(s);
        }
    }
    if !ns.resource_types.is_empty() {
        v["resource_type_associations"] =
            ns.resource_types.iter().map(render_association).collect();
    }
    v
}

/// A namespace with its properties, objects and tags, as `GET` and
/// `POST` answer it (each part only when there is some).
fn render_namespace_detail(store_ns: &MetadefNamespace, children: &Children) -> Value {
    let mut v = render_namespace(store_ns);
    let ns = &store_ns.namespace;
    if !children.properties.is_empty() {
        v["properties"] = Value::Object(metadef_items::property_map(&children.properties));
    }
    if !children.objects.is_empty() {
        v["objects"] = children
            .objects
            .iter()
            .map(|o| metadef_items::render_object(ns, o))
            .collect();
    }
    if !children.tags.is_empty() {
        v["tags"] = children
            .tags
            .iter()
            .map(|t| json!({"name": t.0.name}))
            .collect();
    }
    v
}

#[derive(Default)]
struct Children {
    objects: Vec<MetadefObject>,
    properties: Vec<MetadefProperty>,
    tags: Vec<MetadefTag>,
}

fn children_of(store: &Store, ns_id: &str) -> Result<Children, ApiError> {
    let mut c = Children {
        objects: store.list(&Query::parent(ns_id))?,
        properties: store.list(&Query::parent(ns_id))?,
        tags: store.list(&Query::parent(ns_id))?,
    };
    c.objects.sort_by_key(|o| o.0.created_at);
    c.tags.sort_by_key(|t| t.0.created_at);
    Ok(c)
}

/// What a namespace body (create or update) says.
struct NamespaceBody {
    namespace: String,
    display_name: Option<String>,
    description: Option<String>,
    visibility: Option<String>,
    protected: Option<bool>,
    owner: Option<String>,
    associations: Vec<(String, Option<String>, Option<String>)>,
    properties: Vec<(String, Map<String, Value>)>,
    objects: Vec<(String, Map<String, Value>)>,
    tags: Vec<String>,
}

fn parse_association(
    schema: &str,
    v: &Value,
) -> Result<(String, Option<String>, Option<String>), ApiError> {
    let m = object(schema, v)?;
    only(
        schema,
        m,
        &[
            "name",
            "prefix",
            "properties_target",
            "created_at",
            "updated_at",
        ],
    )?;
    Ok((
        string(schema, m, "name", Some(80), true)?.unwrap_or_default(),
        string(schema, m, "prefix", Some(80), false)?,
        string(schema, m, "properties_target", Some(80), false)?,
    ))
}

fn parse_namespace(body: &Value) -> Result<NamespaceBody, ApiError> {
    const S: &str = "namespace";
    let m = object(S, body)?;
    read_only(m, NS_READ_ONLY)?;
    only(S, m, NS_FIELDS)?;
    let visibility = string(S, m, "visibility", None, false)?;
    if let Some(v) = &visibility
        && v != "public"
        && v != "private"
    {
        return Err(bad(S, format!("'{v}' is not one of ['public', 'private']")));
    }
    let associations = array(S, m, "resource_type_associations")?
        .iter()
        .map(|a| parse_association(S, a))
        .collect::<Result<Vec<_>, _>>()?;
    let properties = match m.get("properties") {
        None => Vec::new(),
        Some(Value::Object(props)) => props
            .iter()
            .map(|(k, p)| Ok((k.clone(), metadef_items::check_property(S, Some(k), p)?.1)))
            .collect::<Result<Vec<_>, ApiError>>()?,
        Some(v) => return Err(bad(S, format!("{v} is not of type 'object'"))),
    };
    let objects = array(S, m, "objects")?
        .iter()
        .map(|o| metadef_items::check_object(S, o))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = array(S, m, "tags")?
        .iter()
        .map(|t| metadef_items::check_tag(S, t))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NamespaceBody {
        namespace: string(S, m, "namespace", Some(80), true)?.unwrap_or_default(),
        display_name: string(S, m, "display_name", Some(80), false)?,
        description: string(S, m, "description", Some(500), false)?,
        visibility,
        protected: boolean(S, m, "protected")?,
        owner: string(S, m, "owner", Some(255), false)?,
        associations,
        properties,
        objects,
        tags,
    })
}

fn ns_exists(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "The metadata definition namespace={name} already exists."
    ))
}

/// Creates the resource type `name` unless it exists (Glance does so when
/// a namespace is associated with an unknown one).
fn ensure_resource_type(tx: &Tx, name: &str, now: i64) -> Result<(), ApiError> {
    if !tx.exists::<MetadefResourceType>(name)? {
        tx.insert(&MetadefResourceType {
            id: name.into(),
            protected: false,
            created_at: now,
            updated_at: now,
        })?;
    }
    Ok(())
}

fn new_item(ns_id: &str, name: String, body: Map<String, Value>, now: i64) -> MetadefItem {
    MetadefItem {
        id: uuid::Uuid::new_v4().to_string(),
        namespace_id: ns_id.into(),
        name,
        body,
        created_at: now,
        updated_at: now,
    }
}

async fn create_namespace(
    State(state): State<AppState>,
    ctx: Ctx,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    require_reader(&ctx)?;
    require_admin(&ctx, "add_metadef_namespace")?;
    let b = parse_namespace(&body)?;
    let now = now_us();
    let mut ns = MetadefNamespace {
        id: uuid::Uuid::new_v4().to_string(),
        namespace: b.namespace.clone(),
        display_name: b.display_name,
        description: b.description,
        visibility: b.visibility.unwrap_or_else(|| "private".into()),
        protected: b.protected.unwrap_or(false),
        owner: b.owner.or_else(|| ctx.project_id().map(str::to_string)),
        resource_types: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    for (name, prefix, properties_target) in b.associations {
        if ns.resource_types.iter().any(|a| a.name == name) {
            return Err(association_exists(&name, &ns.namespace));
        }
        ns.resource_types.push(MetadefAssociation {
            name,
            prefix,
            properties_target,
            created_at: now,
            updated_at: now,
        });
    }
    let mut children = Children::default();
    for (name, body) in b.properties {
        children
            .properties
            .push(MetadefProperty(new_item(&ns.id, name, body, now)));
    }
    for (name, body) in b.objects {
        if children.objects.iter().any(|o| o.0.name == name) {
            return Err(MetadefObject::exists(&name, &ns.namespace));
        }
        children
            .objects
            .push(MetadefObject(new_item(&ns.id, name, body, now)));
    }
    for name in b.tags {
        if children.tags.iter().any(|t| t.0.name == name) {
            return Err(MetadefTag::exists(&name, &ns.namespace));
        }
        children
            .tags
            .push(MetadefTag(new_item(&ns.id, name, Map::new(), now)));
    }
    state.store.write(|tx| {
        if !tx
            .list::<MetadefNamespace>(&Query::name(&ns.namespace))?
            .is_empty()
        {
            return Err(ns_exists(&ns.namespace));
        }
        for a in &ns.resource_types {
            ensure_resource_type(tx, &a.name, now)?;
        }
        tx.insert(&ns)?;
        for p in &children.properties {
            tx.insert(p)?;
        }
        for o in &children.objects {
            tx.insert(o)?;
        }
        for t in &children.tags {
            tx.insert(t)?;
        }
        Ok(())
    })?;
    Ok(created(render_namespace_detail(&ns, &children)))
}

fn ns_sort_val(ns: &MetadefNamespace, key: &str) -> SortVal {
    match key {
        "created_at" => SortVal::Int(ns.created_at),
        "updated_at" => SortVal::Int(ns.updated_at),
        "protected" => SortVal::Int(ns.protected as i64),
        "display_name" => SortVal::Str(ns.display_name.clone()),
        "description" => SortVal::Str(ns.description.clone()),
        "visibility" => SortVal::Str(Some(ns.visibility.clone())),
        "owner" => SortVal::Str(ns.owner.clone()),
        _ => SortVal::Str(Some(ns.namespace.clone())),
    }
}

async fn list_namespaces(
    State(state): State<AppState>,
    ctx: Ctx,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let page = parse_page(
        &params,
        &[
            "created_at",
            "updated_at",
            "namespace",
            "display_name",
            "description",
            "visibility",
            "protected",
            "owner",
        ],
    )?;
    let get = |k: &str| {
        params
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let visibility = get("visibility");
    if let Some(v) = visibility
        && v != "public"
        && v != "private"
    {
        return Err(ApiError::bad_request(format!(
            "Invalid visibility value: {v}"
        )));
    }
    let resource_types: Vec<&str> = get("resource_types")
        .map(|r| {
            r.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let all: Vec<MetadefNamespace> = state
        .store
        .list::<MetadefNamespace>(&Query::all())?
        .into_iter()
        .filter(|ns| visible(&ctx, ns))
        .collect();
    if let Some(m) = &page.marker
        && !all.iter().any(|ns| &ns.namespace == m)
    {
        return Err(ns_not_found(m));
    }
    let listed: Vec<MetadefNamespace> = all
        .into_iter()
        .filter(|ns| {
            (visibility.is_none() || visibility == Some(ns.visibility.as_str()))
                && (resource_types.is_empty()
                    || ns
                        .resource_types
                        .iter()
                        .any(|a| resource_types.contains(&a.name.as_str())))
                || page.marker.as_deref() == Some(ns.namespace.as_str())
        })
        .collect();
    let (items, next) = paginate(
        listed,
        &page,
        |ns| ns.namespace.as_str(),
        ns_sort_val,
        ns_not_found,
    )?;
    let path = "/v2/metadefs/namespaces";
    let mut body = json!({
        "namespaces": items.iter().map(render_namespace).collect::<Vec<_>>(),
        "first": link(path, &params, None),
        "schema": "/v2/schemas/metadefs/namespaces",
    });
    if let Some(n) = next {
        body["next"] = json!(link(path, &params, Some(&n)));
    }
    Ok(Json(body))
}

async fn show_namespace(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let ns = fetch_ns(&state, &ctx, &name)?;
    let children = children_of(&state.store, &ns.id)?;
    Ok(Json(render_namespace_detail(&ns, &children)))
}

async fn update_namespace(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    fetch_ns(&state, &ctx, &name)?;
    require_admin(&ctx, "modify_metadef_namespace")?;
    let b = parse_namespace(&body)?;
    let ns = state.store.write(|tx| {
        let mut ns = fetch_ns_tx(tx, &ctx, &name)?;
        if b.namespace != ns.namespace
            && !tx
                .list::<MetadefNamespace>(&Query::name(&b.namespace))?
                .is_empty()
        {
            return Err(ns_exists(&b.namespace));
        }
        // A full replacement, with Glance's defaults for what is left out.
        ns.namespace = b.namespace.clone();
        ns.display_name = b.display_name.clone();
        ns.description = b.description.clone();
        ns.visibility = b.visibility.clone().unwrap_or_else(|| "private".into());
        ns.protected = b.protected.unwrap_or(false);
        ns.owner = b
            .owner
            .clone()
            .or_else(|| ctx.project_id().map(str::to_string));
        ns.updated_at = now_us();
        tx.update(&ns)?;
        Ok(ns)
    })?;
    Ok(Json(render_namespace(&ns)))
}

fn delete_children<T: Item>(tx: &Tx, ns_id: &str) -> Result<(), ApiError> {
    for item in tx.list::<T>(&Query::parent(ns_id))? {
        tx.delete::<T>(&item.inner().id)?;
    }
    Ok(())
}

async fn delete_namespace(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    fetch_ns(&state, &ctx, &name)?;
    require_admin(&ctx, "delete_metadef_namespace")?;
    state.store.write(|tx| {
        let ns = fetch_ns_tx(tx, &ctx, &name)?;
        unprotected(&ns, format!("namespace {name}"))?;
        delete_children::<MetadefObject>(tx, &ns.id)?;
        delete_children::<MetadefProperty>(tx, &ns.id)?;
        delete_children::<MetadefTag>(tx, &ns.id)?;
        tx.delete::<MetadefNamespace>(&ns.id)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /namespaces/{ns}/objects|properties|tags`: everything of one kind.
pub(super) fn delete_all<T: Item>(
    state: &AppState,
    ctx: &Ctx,
    name: &str,
    rule: &str,
) -> Result<StatusCode, ApiError> {
    require_reader(ctx)?;
    fetch_ns(state, ctx, name)?;
    require_admin(ctx, rule)?;
    state.store.write(|tx| {
        let ns = fetch_ns_tx(tx, ctx, name)?;
        unprotected(&ns, format!("namespace {name}"))?;
        delete_children::<T>(tx, &ns.id)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- resource types and associations ---------------------------------------------

fn association_exists(rt: &str, ns: &str) -> ApiError {
    ApiError::conflict(format!(
        "The metadata definition resource-type association of resource-type={rt} to namespace={ns}, already exists."
    ))
}

async fn list_resource_types(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let mut types = state.store.list::<MetadefResourceType>(&Query::all())?;
    // The builtin ones first, in Glance's order, then the others by age.
    let rank = |t: &MetadefResourceType| {
        BUILTIN_RESOURCE_TYPES
            .iter()
            .position(|b| *b == t.id)
            .unwrap_or(BUILTIN_RESOURCE_TYPES.len())
    };
    types.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id))
    });
    let list: Vec<Value> = types
        .iter()
        .map(|t| {
            json!({
                "name": t.id,
                "created_at": glance_time(t.created_at),
                "updated_at": glance_time(t.updated_at),
            })
        })
        .collect();
    Ok(Json(json!({"resource_types": list})))
}

async fn list_associations(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_reader(&ctx)?;
    let ns = fetch_ns(&state, &ctx, &name)?;
    let list: Vec<Value> = ns.resource_types.iter().map(render_association).collect();
    Ok(Json(json!({"resource_type_associations": list})))
}

async fn associate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    require_reader(&ctx)?;
    fetch_ns(&state, &ctx, &name)?;
    require_admin(&ctx, "add_metadef_resource_type_association")?;
    const S: &str = "resource_type_association";
    let m = object(S, &body)?;
    read_only(m, &["created_at", "updated_at"])?;
    let (rt, prefix, properties_target) = parse_association(S, &body)?;
    let a = state.store.write(|tx| {
        let mut ns = fetch_ns_tx(tx, &ctx, &name)?;
        if ns.resource_types.iter().any(|a| a.name == rt) {
            return Err(association_exists(&rt, &name));
        }
        let now = now_us();
        ensure_resource_type(tx, &rt, now)?;
        let a = MetadefAssociation {
            name: rt.clone(),
            prefix: prefix.clone(),
            properties_target: properties_target.clone(),
            created_at: now,
            updated_at: now,
        };
        ns.resource_types.push(a.clone());
        tx.update(&ns)?;
        Ok(a)
    })?;
    Ok(created(render_association(&a)))
}

async fn dissociate(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((name, rt)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_reader(&ctx)?;
    fetch_ns(&state, &ctx, &name)?;
    require_admin(&ctx, "remove_metadef_resource_type_association")?;
    state.store.write(|tx| {
        let mut ns = fetch_ns_tx(tx, &ctx, &name)?;
        if !tx.exists::<MetadefResourceType>(&rt)? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Failed to find resource type {rt} to delete"),
            ));
        }
        let Some(pos) = ns.resource_types.iter().position(|a| a.name == rt) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "The metadata definition resource-type association of resource-type={rt} to namespace={name}, was not found."
                ),
            ));
        };
        if ns.protected {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Metadata definition resource-type-association {rt} is protected and cannot be deleted."
                ),
            ));
        }
        ns.resource_types.remove(pos);
        ns.updated_at = now_us();
        tx.update(&ns)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(q: &[(&str, &str)]) -> Result<Page, ApiError> {
        let q: Vec<(String, String)> = q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        parse_page(&q, &["created_at", "name"])
    }

    #[test]
    fn paging_follows_the_marker_and_limit() {
        let items = vec![("a", 3), ("b", 1), ("c", 2)];
        let p = page(&[
            ("sort_key", "created_at"),
            ("sort_dir", "asc"),
            ("limit", "2"),
        ])
        .unwrap();
        let key = |i: &(&str, i64), _: &str| SortVal::Int(i.1);
        let (got, next) = paginate(items.clone(), &p, |i| i.0, key, ns_not_found).unwrap();
        assert_eq!(got.iter().map(|i| i.0).collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(next.as_deref(), Some("c"));
        let p = page(&[("sort_dir", "asc"), ("limit", "2"), ("marker", "c")]).unwrap();
        let (got, next) = paginate(items.clone(), &p, |i| i.0, key, ns_not_found).unwrap();
        assert_eq!(got.iter().map(|i| i.0).collect::<Vec<_>>(), ["a"]);
        assert_eq!(next, None);
        let p = page(&[("marker", "zz")]).unwrap();
        assert!(paginate(items, &p, |i| i.0, key, ns_not_found).is_err());
    }

    #[test]
    fn bad_paging_parameters_are_400s() {
        for q in [
            [("limit", "-1")],
            [("limit", "x")],
            [("sort_dir", "up")],
            [("sort_key", "size")],
        ] {
            assert_eq!(page(&q).err().unwrap().status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn namespace_bodies_are_checked() {
        assert!(parse_namespace(&json!({"namespace": "n", "visibility": "public"})).is_ok());
        for b in [
            json!({}),
            json!({"namespace": 3}),
            json!({"namespace": "n", "visibility": "shared"}),
            json!({"namespace": "n", "bogus": 1}),
            json!({"namespace": "n", "properties": {"p": {"title": "t"}}}),
            json!([1]),
        ] {
            assert_eq!(
                parse_namespace(&b).err().unwrap().status,
                StatusCode::BAD_REQUEST,
                "{b}"
            );
        }
        let e = parse_namespace(&json!({"namespace": "n", "self": "x"}))
            .err()
            .unwrap();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
    }
}
