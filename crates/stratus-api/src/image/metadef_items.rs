//! `/v2/metadefs/namespaces/{ns}/objects|properties|tags`: what a
//! metadata definition namespace holds.
//!
//! The three share one stored shape (`MetadefItem`: a name unique within
//! the namespace, plus the kind's own fields) and one set of generic
//! operations here; each kind checks and renders its own body. Lookups,
//! policy and paging come from `metadefs.rs`.

use axum::extract::{Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use stratus_store::{Query, Record, Store};

use super::metadef_common::{
    SortVal, array, bad, created, fetch_ns, fetch_ns_tx, object, only, paginate, parse_page,
    read_only, require_admin, string, unprotected,
};
use super::model::{MetadefItem, MetadefObject, MetadefProperty, MetadefTag, glance_time};
use super::require_reader;
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/metadefs/namespaces/{ns}/objects",
            get(list_objects).post(create_object).delete(delete_objects),
        )
        .route(
            "/metadefs/namespaces/{ns}/objects/{name}",
            get(show_object).put(update_object).delete(delete_object),
        )
        .route(
            "/metadefs/namespaces/{ns}/properties",
            get(list_properties)
                .post(create_property)
                .delete(delete_properties),
        )
        .route(
            "/metadefs/namespaces/{ns}/properties/{name}",
            get(show_property)
                .put(update_property)
                .delete(delete_property),
        )
        .route(
            "/metadefs/namespaces/{ns}/tags",
            get(list_tags).post(create_tags).delete(delete_tags),
        )
        .route(
            "/metadefs/namespaces/{ns}/tags/{name}",
            get(show_tag)
                .post(create_tag)
                .put(update_tag)
                .delete(delete_tag),
        )
}

// ---- the generic part -----------------------------------------------------------

/// An object, a property or a tag.
pub(super) trait Item: Record + Clone + Serialize + DeserializeOwned {
    /// How Glance's messages name the kind.
    const WHAT: &'static str;
    fn wrap(i: MetadefItem) -> Self;
    fn inner(&self) -> &MetadefItem;
    fn inner_mut(&mut self) -> &mut MetadefItem;

    fn not_found(name: &str, ns: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "The metadata definition {} with name={name} was not found in namespace={ns}.",
                Self::WHAT
            ),
        )
    }

    fn exists(name: &str, ns: &str) -> ApiError {
        ApiError::conflict(format!(
            "A metadata definition {} with name={name} already exists in namespace={ns}.",
            Self::WHAT
        ))
    }
}

macro_rules! item {
    ($t:ident, $what:literal) => {
        impl Item for $t {
            const WHAT: &'static str = $what;
            fn wrap(i: MetadefItem) -> Self {
                $t(i)
            }
            fn inner(&self) -> &MetadefItem {
                &self.0
            }
            fn inner_mut(&mut self) -> &mut MetadefItem {
                &mut self.0
            }
        }
    };
}

item!(MetadefObject, "object");
item!(MetadefProperty, "property");

impl Item for MetadefTag {
    const WHAT: &'static str = "tag";
    fn wrap(i: MetadefItem) -> Self {
        MetadefTag(i)
    }
    fn inner(&self) -> &MetadefItem {
        &self.0
    }
    fn inner_mut(&mut self) -> &mut MetadefItem {
        &mut self.0
    }
    fn exists(name: &str, ns: &str) -> ApiError {
        ApiError::conflict(format!(
            "A metadata tag with name={name} already exists in namespace={ns}."
        ))
    }
}

fn by_name<'a>(ns_id: &'a str, name: &'a str) -> Query<'a> {
    Query {
        parent: Some(ns_id),
        name: Some(name),
        ..Query::default()
    }
}

fn find<T: Item>(store: &Store, ns_id: &str, name: &str) -> Result<Option<T>, ApiError> {
    Ok(store
        .list::<T>(&by_name(ns_id, name))?
        .into_iter()
        .find(|i| i.inner().name == name))
}

fn find_tx<T: Item>(
    tx: &stratus_store::Tx,
    ns_id: &str,
    name: &str,
) -> Result<Option<T>, ApiError> {
    Ok(tx
        .list::<T>(&by_name(ns_id, name))?
        .into_iter()
        .find(|i| i.inner().name == name))
}

fn all<T: Item>(state: &AppState, ctx: &Ctx, ns: &str) -> Result<Vec<T>, ApiError> {
    require_reader(ctx)?;
    let ns = fetch_ns(state, ctx, ns)?;
    Ok(state.store.list::<T>(&Query::parent(&ns.id))?)
}

fn show<T: Item>(state: &AppState, ctx: &Ctx, ns: &str, name: &str) -> Result<T, ApiError> {
    require_reader(ctx)?;
    let n = fetch_ns(state, ctx, ns)?;
    find::<T>(&state.store, &n.id, name)?.ok_or_else(|| T::not_found(name, ns))
}

fn create<T: Item>(
    state: &AppState,
    ctx: &Ctx,
    ns: &str,
    rule: &str,
    name: String,
    body: Map<String, Value>,
) -> Result<T, ApiError> {
    require_reader(ctx)?;
    fetch_ns(state, ctx, ns)?;
    require_admin(ctx, rule)?;
    state.store.write(|tx| {
        let n = fetch_ns_tx(tx, ctx, ns)?;
        if find_tx::<T>(tx, &n.id, &name)?.is_some() {
            return Err(T::exists(&name, ns));
        }
        let now = now_us();
        let item = T::wrap(MetadefItem {
            id: uuid::Uuid::new_v4().to_string(),
            namespace_id: n.id,
            name: name.clone(),
            body,
            created_at: now,
            updated_at: now,
        });
        tx.insert(&item)?;
        Ok(item)
    })
}

/// Replaces `name` with `new_name` and `body` (a rename when they differ).
fn update<T: Item>(
    state: &AppState,
    ctx: &Ctx,
    ns: &str,
    rule: &str,
    name: &str,
    new_name: String,
    body: Map<String, Value>,
) -> Result<T, ApiError> {
    require_reader(ctx)?;
    fetch_ns(state, ctx, ns)?;
    require_admin(ctx, rule)?;
    state.store.write(|tx| {
        let n = fetch_ns_tx(tx, ctx, ns)?;
        let mut item = find_tx::<T>(tx, &n.id, name)?.ok_or_else(|| T::not_found(name, ns))?;
        if new_name != name && find_tx::<T>(tx, &n.id, &new_name)?.is_some() {
            return Err(T::exists(&new_name, ns));
        }
        let i = item.inner_mut();
        i.name = new_name.clone();
        i.body = body;
        i.updated_at = now_us();
        tx.update(&item)?;
        Ok(item)
    })
}

fn remove<T: Item>(
    state: &AppState,
    ctx: &Ctx,
    ns: &str,
    rule: &str,
    name: &str,
) -> Result<StatusCode, ApiError> {
    require_reader(ctx)?;
    fetch_ns(state, ctx, ns)?;
    require_admin(ctx, rule)?;
    state.store.write(|tx| {
        let n = fetch_ns_tx(tx, ctx, ns)?;
        let item = find_tx::<T>(tx, &n.id, name)?.ok_or_else(|| T::not_found(name, ns))?;
        unprotected(&n, format!("{} {name}", T::WHAT))?;
        tx.delete::<T>(&item.inner().id)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

fn sort_val(i: &MetadefItem, key: &str) -> SortVal {
    match key {
        "created_at" => SortVal::Int(i.created_at),
        "updated_at" => SortVal::Int(i.updated_at),
        _ => SortVal::Str(Some(i.name.clone())),
    }
}

/// One page of `items`, by the caller's `limit`, `marker` and sort.
fn page_of<T: Item>(
    items: Vec<T>,
    params: &[(String, String)],
    ns: &str,
) -> Result<Vec<T>, ApiError> {
    let page = parse_page(params, &["created_at", "updated_at", "name"])?;
    let (items, _) = paginate(
        items,
        &page,
        |i| i.inner().name.as_str(),
        |i, k| sort_val(i.inner(), k),
        |m| T::not_found(m, ns),
    )?;
    Ok(items)
}

// ---- properties ---------------------------------------------------------------------

const PROPERTY_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

fn check_type(schema: &str, v: &Value) -> Result<(), ApiError> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if PROPERTY_TYPES.contains(&s.as_str()) => Ok(()),
        other => Err(bad(
            schema,
            format!(
                "{other} is not one of ['array', 'boolean', 'integer', 'number', 'object', 'string', None]"
            ),
        )),
    }
}

/// Checks a property definition against Glance's property schema. The
/// name comes from the body (`key` is `None`, then it is required) or
/// from the key it sits under in a `properties` map. Returns the name and
/// the definition without it.
pub(super) fn check_property(
    schema: &str,
    key: Option<&str>,
    v: &Value,
) -> Result<(String, Map<String, Value>), ApiError> {
    let m = object(schema, v)?;
    let name = match key {
        Some(k) => {
            string(schema, m, "name", Some(80), false)?;
            k.to_string()
        }
        None => string(schema, m, "name", Some(80), true)?.unwrap_or_default(),
    };
    if name.chars().count() > 80 {
        return Err(bad(schema, format!("'{name}' is too long")));
    }
    let mut out = Map::new();
    let required = ["title", "type"];
    if let Some(r) = required.iter().find(|r| !m.contains_key(**r)) {
        return Err(bad(schema, format!("'{r}' is a required property")));
    }
    for (k, val) in m {
        let ok = match k.as_str() {
            "name" => continue,
            "title" | "description" => val.is_string(),
            "type" => {
                check_type(schema, val)?;
                true
            }
            "pattern" => match val.as_str() {
                Some(p) if regex::Regex::new(p).is_err() => {
                    return Err(bad(schema, format!("'{p}' is not a 'regex'")));
                }
                Some(_) => true,
                None => false,
            },
            "operators" => val
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            "required" => val.as_array().is_some_and(|a| {
                a.iter().all(Value::is_string)
                    && a.iter().enumerate().all(|(i, x)| !a[..i].contains(x))
            }),
            "minimum" | "maximum" => val.is_number(),
            "maxLength" | "minLength" | "maxItems" | "minItems" => val.is_u64(),
            "enum" => val.is_array(),
            "readonly" | "uniqueItems" | "additionalItems" => val.is_boolean(),
            "default" => true,
            "items" => match val.as_object() {
                Some(items) => {
                    if let Some(t) = items.get("type") {
                        check_type(schema, t)?;
                    }
                    items.get("enum").is_none_or(Value::is_array)
                }
                None => false,
            },
            other => {
                return Err(bad(
                    schema,
                    format!("Additional properties are not allowed ('{other}' was unexpected)"),
                ));
            }
        };
        if !ok {
            return Err(bad(
                schema,
                format!("{val} is not valid under the schema of '{k}'"),
            ));
        }
        out.insert(k.clone(), val.clone());
    }
    Ok((name, out))
}

/// A property as Glance shows it: its definition with its name.
fn render_property(p: &MetadefProperty) -> Value {
    let mut m = p.0.body.clone();
    m.insert("name".into(), json!(p.0.name));
    Value::Object(m)
}

/// Properties as a map from name to definition (namespace show, list).
pub(super) fn property_map(props: &[MetadefProperty]) -> Map<String, Value> {
    props
        .iter()
        .map(|p| (p.0.name.clone(), Value::Object(p.0.body.clone())))
        .collect()
}

fn property_body(body: &Value) -> Result<(String, Map<String, Value>), ApiError> {
    let m = object("property", body)?;
    read_only(m, &["created_at", "updated_at"])?;
    check_property("property", None, body)
}

async fn list_properties(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut props = all::<MetadefProperty>(&state, &ctx, &ns)?;
    props.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(Json(
        json!({"properties": property_map(&props), "schema": "/v2/schemas/metadefs/properties"}),
    ))
}

async fn create_property(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    let (name, def) = property_body(&body)?;
    let p = create::<MetadefProperty>(&state, &ctx, &ns, "add_metadef_property", name, def)?;
    Ok(created(render_property(&p)))
}

async fn show_property(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(render_property(&show::<MetadefProperty>(
        &state, &ctx, &ns, &name,
    )?)))
}

async fn update_property(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let (new_name, def) = property_body(&body)?;
    let p = update::<MetadefProperty>(
        &state,
        &ctx,
        &ns,
        "modify_metadef_property",
        &name,
        new_name,
        def,
    )?;
    Ok(Json(render_property(&p)))
}

async fn delete_property(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove::<MetadefProperty>(&state, &ctx, &ns, "remove_metadef_property", &name)
}

async fn delete_properties(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_all::<MetadefProperty>(&state, &ctx, &ns, "remove_metadef_property")
}

// ---- objects ----------------------------------------------------------------------------

/// Checks an object body; returns its name and its other fields.
pub(super) fn check_object(
    schema: &str,
    v: &Value,
) -> Result<(String, Map<String, Value>), ApiError> {
    let m = object(schema, v)?;
    read_only(m, &["self", "schema", "created_at", "updated_at"])?;
    only(
        schema,
        m,
        &["name", "description", "required", "properties"],
    )?;
    let name = string(schema, m, "name", Some(80), true)?.unwrap_or_default();
    let mut out = Map::new();
    if let Some(d) = string(schema, m, "description", None, false)? {
        out.insert("description".into(), json!(d));
    }
    let required = array(schema, m, "required")?;
    if !required.iter().all(Value::is_string) {
        return Err(bad(schema, "'required' must be a list of strings"));
    }
    if m.contains_key("required") {
        out.insert("required".into(), json!(required));
    }
    let props = match m.get("properties") {
        None => Map::new(),
        Some(Value::Object(p)) => p
            .iter()
            .map(|(k, d)| {
                Ok((
                    k.clone(),
                    Value::Object(check_property(schema, Some(k), d)?.1),
                ))
            })
            .collect::<Result<Map<_, _>, ApiError>>()?,
        Some(v) => return Err(bad(schema, format!("{v} is not of type 'object'"))),
    };
    out.insert("properties".into(), Value::Object(props));
    Ok((name, out))
}

pub(super) fn render_object(ns: &str, o: &MetadefObject) -> Value {
    let mut m = o.0.body.clone();
    m.entry("properties").or_insert_with(|| json!({}));
    m.insert("name".into(), json!(o.0.name));
    m.insert("created_at".into(), json!(glance_time(o.0.created_at)));
    m.insert("updated_at".into(), json!(glance_time(o.0.updated_at)));
    m.insert("schema".into(), json!("/v2/schemas/metadefs/object"));
    m.insert(
        "self".into(),
        json!(format!("/v2/metadefs/namespaces/{ns}/objects/{}", o.0.name)),
    );
    Value::Object(m)
}

async fn list_objects(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let objects = page_of(all::<MetadefObject>(&state, &ctx, &ns)?, &params, &ns)?;
    let list: Vec<Value> = objects.iter().map(|o| render_object(&ns, o)).collect();
    Ok(Json(
        json!({"objects": list, "schema": "/v2/schemas/metadefs/objects"}),
    ))
}

async fn create_object(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    let (name, fields) = check_object("object", &body)?;
    let o = create::<MetadefObject>(&state, &ctx, &ns, "add_metadef_object", name, fields)?;
    Ok(created(render_object(&ns, &o)))
}

async fn show_object(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let o = show::<MetadefObject>(&state, &ctx, &ns, &name)?;
    Ok(Json(render_object(&ns, &o)))
}

async fn update_object(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let (new_name, fields) = check_object("object", &body)?;
    let o = update::<MetadefObject>(
        &state,
        &ctx,
        &ns,
        "modify_metadef_object",
        &name,
        new_name,
        fields,
    )?;
    Ok(Json(render_object(&ns, &o)))
}

async fn delete_object(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove::<MetadefObject>(&state, &ctx, &ns, "delete_metadef_object", &name)
}

async fn delete_objects(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_all::<MetadefObject>(&state, &ctx, &ns, "delete_metadef_object")
}

// ---- tags -------------------------------------------------------------------------------

/// Checks a tag body (`{"name": ...}`); returns the name.
pub(super) fn check_tag(schema: &str, v: &Value) -> Result<String, ApiError> {
    let m = object(schema, v)?;
    read_only(m, &["created_at", "updated_at"])?;
    only(schema, m, &["name"])?;
    Ok(string(schema, m, "name", Some(80), true)?.unwrap_or_default())
}

fn render_tag(t: &MetadefTag) -> Value {
    json!({
        "name": t.0.name,
        "created_at": glance_time(t.0.created_at),
        "updated_at": glance_time(t.0.updated_at),
    })
}

async fn list_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    QueryParams(params): QueryParams<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    let tags = page_of(all::<MetadefTag>(&state, &ctx, &ns)?, &params, &ns)?;
    Ok(Json(
        json!({"tags": tags.iter().map(render_tag).collect::<Vec<_>>()}),
    ))
}

/// `POST /tags/{name}`: one tag, no body.
async fn create_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_tag("tag", &json!({ "name": name }))?;
    let t = create::<MetadefTag>(&state, &ctx, &ns, "add_metadef_tag", name, Map::new())?;
    Ok(created(render_tag(&t)))
}

/// Glance's (oslo's) reading of a boolean header.
fn truthy(h: Option<&str>) -> bool {
    matches!(
        h.map(|s| s.trim().to_ascii_lowercase()).as_deref(),
        Some("1" | "t" | "true" | "on" | "y" | "yes")
    )
}

/// `POST /tags`: several tags at once. They replace the namespace's tags
/// unless `X-Openstack-Append: true`.
async fn create_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
    headers: HeaderMap,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Response, ApiError> {
    const S: &str = "tags";
    let m = object(S, &body)?;
    only(S, m, &["tags"])?;
    if !m.contains_key("tags") {
        return Err(bad(S, "'tags' is a required property"));
    }
    let names = array(S, m, "tags")?
        .iter()
        .map(|t| check_tag(S, t))
        .collect::<Result<Vec<_>, _>>()?;
    let append = truthy(
        headers
            .get("x-openstack-append")
            .and_then(|v| v.to_str().ok()),
    );
    require_reader(&ctx)?;
    fetch_ns(&state, &ctx, &ns)?;
    require_admin(&ctx, "add_metadef_tags")?;
    state.store.write(|tx| {
        let n = fetch_ns_tx(tx, &ctx, &ns)?;
        let existing = tx.list::<MetadefTag>(&Query::parent(&n.id))?;
        if !append {
            for t in &existing {
                tx.delete::<MetadefTag>(&t.0.id)?;
            }
        }
        let now = now_us();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) || append && existing.iter().any(|t| &t.0.name == name) {
                return Err(MetadefTag::exists(name, &ns));
            }
            tx.insert(&MetadefTag(MetadefItem {
                id: uuid::Uuid::new_v4().to_string(),
                namespace_id: n.id.clone(),
                name: name.clone(),
                body: Map::new(),
                created_at: now,
                updated_at: now,
            }))?;
        }
        Ok(())
    })?;
    let tags: Vec<Value> = names.iter().map(|n| json!({ "name": n })).collect();
    Ok(created(json!({ "tags": tags })))
}

async fn show_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(render_tag(&show::<MetadefTag>(
        &state, &ctx, &ns, &name,
    )?)))
}

async fn update_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
    crate::json::Json(body): crate::json::Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let new_name = check_tag("tag", &body)?;
    let t = update::<MetadefTag>(
        &state,
        &ctx,
        &ns,
        "modify_metadef_tag",
        &name,
        new_name,
        Map::new(),
    )?;
    Ok(Json(render_tag(&t)))
}

async fn delete_tag(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((ns, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove::<MetadefTag>(&state, &ctx, &ns, "delete_metadef_tag", &name)
}

async fn delete_tags(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(ns): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete_all::<MetadefTag>(&state, &ctx, &ns, "delete_metadef_tags")
}

pub(super) fn delete_children<T: Item>(
    tx: &stratus_store::Tx,
    ns_id: &str,
) -> Result<(), ApiError> {
    for item in tx.list::<T>(&Query::parent(ns_id))? {
        tx.delete::<T>(&item.inner().id)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_definitions_are_checked() {
        let (name, def) = check_property(
            "property",
            None,
            &json!({"name": "hypervisor", "title": "H", "type": "string", "enum": ["kvm"]}),
        )
        .unwrap();
        assert_eq!(name, "hypervisor");
        assert!(!def.contains_key("name"));
        for b in [
            json!({"title": "H", "type": "string"}),
            json!({"name": "p", "type": "string"}),
            json!({"name": "p", "title": "H", "type": "text"}),
            json!({"name": "p", "title": "H", "type": "string", "minLength": -1}),
            json!({"name": "p", "title": "H", "type": "string", "color": "red"}),
            json!({"name": "p", "title": "H", "type": "string", "pattern": "("}),
        ] {
            assert!(check_property("property", None, &b).is_err(), "{b}");
        }
        // Under a `properties` map the key is the name.
        let (name, _) =
            check_property("object", Some("k"), &json!({"title": "t", "type": null})).unwrap();
        assert_eq!(name, "k");
    }

    #[test]
    fn append_header_reads_like_oslo() {
        assert!(truthy(Some("True")));
        assert!(truthy(Some("1")));
        assert!(!truthy(Some("false")));
        assert!(!truthy(None));
    }
}
