//! `/v2/metadefs`: Glance's metadata definitions catalog.
//!
//! A namespace groups property definitions, objects (named groups of
//! properties) and tags, and says which resource types
//! (`OS::Glance::Image`, `OS::Nova::Flavor`, ...) it applies to. This
//! module holds namespaces, resource types and their associations;
//! `metadef_items.rs` holds objects, properties and tags, and
//! `metadef_common.rs` the checks both share.
//!
//! Policy is Glance's default: project readers (and admins) read public
//! namespaces and their own project's private ones; only admins create,
//! change or delete anything. A namespace the caller cannot see is a 404,
//! as in Glance. A protected namespace, and everything in it, cannot be
//! deleted (403) until `protected` is cleared.

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde_json::{Map, Value, json};
use stratus_store::{Query, Store, Tx};

use super::metadef_common::*;
use super::metadef_items::{self, Item, delete_children};
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
