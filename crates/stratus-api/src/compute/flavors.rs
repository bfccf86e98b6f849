//! Flavors, their extra specs and the projects a private flavor is open to.
//!
//! Everyone reads public flavors; a private flavor is seen by admins and by
//! the projects it was shared with. Only admins create, delete and change
//! flavors.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use stratus_store::{Query as StoreQuery, Store};

use super::common::{fetch_flavor, flavor_visible};
use super::model::Flavor;
use super::{Mv, body, links, next_link, not_found, page, paging, parse_bool, policy_denied};
use crate::identity::policy::Ctx;
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/flavors", get(list).post(create))
        .route("/flavors/detail", get(list_detail))
        .route("/flavors/{id}", get(show).put(update).delete(delete))
        .route("/flavors/{id}/action", post(action))
        .route("/flavors/{id}/os-flavor-access", get(access_list))
        .route(
            "/flavors/{id}/os-extra_specs",
            get(specs_list).post(specs_create),
        )
        .route(
            "/flavors/{id}/os-extra_specs/{key}",
            get(spec_show).put(spec_update).delete(spec_delete),
        )
}

/// The flavors `stratus up` offers on a new cloud, as devstack does.
const DEFAULTS: &[(&str, &str, u64, u32, u64)] = &[
    ("1", "m1.tiny", 512, 1, 1),
    ("2", "m1.small", 2048, 1, 20),
    ("3", "m1.medium", 4096, 2, 40),
    ("4", "m1.large", 8192, 4, 80),
    ("5", "m1.xlarge", 16384, 8, 160),
    ("42", "m1.nano", 128, 1, 1),
    ("84", "m1.micro", 192, 1, 1),
];

/// Creates the default flavors on a store that has no flavor yet.
pub fn ensure_default_flavors(store: &Store) -> Result<(), ApiError> {
    if !store.list::<Flavor>(&StoreQuery::all())?.is_empty() {
        return Ok(());
    }
    store.write(|tx| {
        for (id, name, ram, vcpus, disk) in DEFAULTS {
            tx.insert(&Flavor {
                id: (*id).into(),
                name: (*name).into(),
                ram: *ram,
                vcpus: *vcpus,
                disk: *disk,
                ephemeral: 0,
                swap: 0,
                rxtx_factor: 1.0,
                is_public: true,
                disabled: false,
                extra_specs: BTreeMap::new(),
                projects: vec![],
                created_us: now_us(),
                description: None,
            })?;
        }
        Ok::<_, ApiError>(())
    })
}

pub(crate) fn render(state: &AppState, f: &Flavor, detail: bool, mv: Mv) -> Value {
    let mut v = json!({"id": f.id, "name": f.name, "links": links(state, "flavors", &f.id)});
    if mv.at_least(55) {
        v["description"] = json!(f.description);
    }
    if detail {
        let o = v.as_object_mut().expect("object");
        o.insert("ram".into(), json!(f.ram));
        o.insert("vcpus".into(), json!(f.vcpus));
        o.insert("disk".into(), json!(f.disk));
        o.insert("OS-FLV-EXT-DATA:ephemeral".into(), json!(f.ephemeral));
        o.insert(
            "swap".into(),
            // 2.75: no swap is 0, no longer "".
            if f.swap == 0 && !mv.at_least(75) {
                json!("")
            } else {
                json!(f.swap)
            },
        );
        o.insert("rxtx_factor".into(), json!(f.rxtx_factor));
        o.insert("OS-FLV-DISABLED:disabled".into(), json!(f.disabled));
        o.insert("os-flavor-access:is_public".into(), json!(f.is_public));
        // 2.61: the extra specs in the flavor itself.
        if mv.at_least(61) {
            o.insert("extra_specs".into(), json!(f.extra_specs));
        }
    }
    v
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

fn listing(
    state: &AppState,
    ctx: &Ctx,
    mv: Mv,
    q: &HashMap<String, String>,
    detail: bool,
) -> Result<Response, ApiError> {
    // Nova: admins choose with is_public (default: public only; `None`
    // means all); everybody else sees public plus what is shared with them.
    let public_filter =
        if ctx.is_admin() {
            match q.get("is_public").map(|s| s.as_str()) {
                None => Some(true),
                Some(s) if s.eq_ignore_ascii_case("none") => None,
                Some(s) => Some(parse_bool(&json!(s)).ok_or_else(|| {
                    ApiError::bad_request(format!("Invalid is_public filter [{s}]"))
                })?),
            }
        } else {
            Some(true)
        };
    let min_ram = num_filter(q, "minRam")?;
    let min_disk = num_filter(q, "minDisk")?;
    let (limit, marker) = paging(q)?;
    let sort_key = q.get("sort_key").map(String::as_str).unwrap_or("flavorid");
    let desc = match q.get("sort_dir").map(String::as_str) {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(d) => {
            return Err(ApiError::bad_request(format!(
                "Invalid sort direction: {d}"
            )));
        }
    };
    let mut all: Vec<Flavor> = state
        .store
        .list::<Flavor>(&StoreQuery::all())?
        .into_iter()
        .filter(|f| match public_filter {
            None => true,
            Some(true) if ctx.is_admin() => f.is_public,
            Some(true) => flavor_visible(ctx, f) && !f.disabled,
            Some(false) => !f.is_public,
        })
        .filter(|f| min_ram.is_none_or(|m| f.ram >= m))
        .filter(|f| min_disk.is_none_or(|m| f.disk >= m))
        .collect();
    let cmp_key = |f: &Flavor| -> (u64, String) {
        match sort_key {
            "memory_mb" | "ram" => (f.ram, f.id.clone()),
            "vcpus" => (f.vcpus as u64, f.id.clone()),
            "root_gb" | "disk" => (f.disk, f.id.clone()),
            "name" => (0, f.name.clone()),
            _ => (0, f.id.clone()),
        }
    };
    let valid = [
        "created_at",
        "description",
        "disabled",
        "ephemeral_gb",
        "flavorid",
        "id",
        "is_public",
        "memory_mb",
        "name",
        "root_gb",
        "rxtx_factor",
        "swap",
        "updated_at",
        "vcpu_weight",
        "vcpus",
    ];
    if !valid.contains(&sort_key) {
        return Err(ApiError::bad_request(format!(
            "Invalid input for query parameters sort_key. Value: {sort_key}."
        )));
    }
    all.sort_by(|a, b| {
        let o = cmp_key(a).cmp(&cmp_key(b));
        if desc { o.reverse() } else { o }
    });
    if let Some(m) = &marker
        && !all.iter().any(|f| &f.id == m)
    {
        return Err(ApiError::bad_request(format!("marker [{m}] not found")));
    }
    let items = page(all, limit, marker.as_deref(), |f| &f.id)?;
    let rendered: Vec<Value> = items.iter().map(|f| render(state, f, detail, mv)).collect();
    let mut out = json!({"flavors": rendered});
    let path = if detail { "flavors/detail" } else { "flavors" };
    if let Some(l) = next_link(
        state,
        path,
        q,
        limit,
        items.last().map(|f| f.id.as_str()),
        items.len(),
    ) {
        out["flavors_links"] = l;
    }
    Ok(axum::Json(out).into_response())
}

fn num_filter(q: &HashMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("Invalid {key} filter [{v}]")))
        })
        .transpose()
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let f = fetch_flavor(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"flavor": render(&state, &f, true, mv)})))
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(' ')
        && !s.ends_with(' ')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ' ' | '_' | '-'))
}

fn int_field(
    o: &Map<String, Value>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    let Some(v) = o.get(key) else { return Ok(None) };
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {v}. {v} is not of type 'integer', 'string'"
        ))
    })?;
    if n < min {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {n}. {n} is less than the minimum of {min}"
        )));
    }
    if n > max {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute {key}. Value: {n}. {n} is greater than the maximum of {max}"
        )));
    }
    Ok(Some(n))
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    raw: Bytes,
) -> Result<Response, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-manage:create"));
    }
    let b = body(&raw)?;
    let o = b.get("flavor").and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'flavor' is a required property",
        )
    })?;
    let name = o.get("name").ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'name' is a required property",
        )
    })?;
    let name = super::validation::name("name", name)?;
    let id = match o.get("id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if valid_id(s) => s.clone(),
        // Nova's schema takes a number too and stores its decimal text.
        Some(Value::Number(n)) if n.is_u64() => n.to_string(),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute id. Value: {v}. Flavor ids are 1-255 characters of letters, digits, '.', '_', '-' and space"
            )));
        }
    };
    const MAX: i64 = i32::MAX as i64;
    let ram = int_field(o, "ram", 1, MAX)?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'ram' is a required property",
        )
    })?;
    let vcpus = int_field(o, "vcpus", 1, MAX)?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'vcpus' is a required property",
        )
    })?;
    let disk = int_field(o, "disk", 0, MAX)?.ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'disk' is a required property",
        )
    })?;
    let ephemeral = int_field(o, "OS-FLV-EXT-DATA:ephemeral", 0, MAX)?.unwrap_or(0);
    let swap = match o.get("swap") {
        Some(Value::String(s)) if s.is_empty() => 0,
        _ => int_field(o, "swap", 0, MAX)?.unwrap_or(0),
    };
    let rxtx_factor = match o.get("rxtx_factor") {
        None => 1.0,
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .filter(|f| *f > 0.0 && *f <= 3.40282e38)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "Invalid input for field/attribute rxtx_factor. Value: {v}. It must be a number greater than 0"
                ))
            })?,
    };
    let is_public = match o.get("os-flavor-access:is_public") {
        None => true,
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for field/attribute os-flavor-access:is_public. Value: {v}. It is not a boolean"
            ))
        })?,
    };
    let description = description_field(o, mv)?;
    let f = Flavor {
        description,
        id,
        name,
        ram: ram as u64,
        vcpus: vcpus as u32,
        disk: disk as u64,
        ephemeral: ephemeral as u64,
        swap: swap as u64,
        rxtx_factor,
        is_public,
        disabled: false,
        extra_specs: BTreeMap::new(),
        projects: vec![],
        created_us: now_us(),
    };
    state.store.write(|tx| {
        if tx.exists::<Flavor>(&f.id)? {
            return Err(ApiError::conflict(format!(
                "Flavor with ID {} already exists.",
                f.id
            )));
        }
        if !tx.list::<Flavor>(&StoreQuery::name(&f.name))?.is_empty() {
            return Err(ApiError::conflict(format!(
                "Flavor with name {} already exists.",
                f.name
            )));
        }
        tx.insert(&f)?;
        Ok(())
    })?;
    Ok(axum::Json(json!({"flavor": render(&state, &f, true, mv)})).into_response())
}

/// `description` (2.55): null or up to 65535 characters; refused before.
fn description_field(o: &Map<String, Value>, mv: Mv) -> Result<Option<String>, ApiError> {
    match o.get("description") {
        None => Ok(None),
        Some(_) if !mv.at_least(55) => Err(ApiError::bad_request(
            "Invalid input for field/attribute flavor. Additional properties are not allowed ('description' was unexpected)",
        )),
        Some(Value::Null) => Ok(None),
        Some(Value::String(d)) if d.chars().count() <= 65535 => Ok(Some(d.clone())),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute description. Value: {v}. It must be a string of at most 65535 characters"
        ))),
    }
}

/// `PUT /flavors/{id}` (2.55): only the description changes.
async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<Response, ApiError> {
    if !mv.at_least(55) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method specified is not allowed for this resource.",
        ));
    }
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-manage:update"));
    }
    let b = body(&raw)?;
    let o = b.get("flavor").and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'flavor' is a required property",
        )
    })?;
    if let Some(k) = o.keys().find(|k| k.as_str() != "description") {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute flavor. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    if !o.contains_key("description") {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute flavor. 'description' is a required property",
        ));
    }
    let description = description_field(o, mv)?;
    let f = state.store.write(|tx| {
        let mut f = tx
            .get::<Flavor>(&id)?
            .ok_or_else(|| not_found("Flavor", &id))?;
        f.description = description.clone();
        tx.update(&f)?;
        Ok::<_, ApiError>(f)
    })?;
    Ok(axum::Json(json!({"flavor": render(&state, &f, true, mv)})).into_response())
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-manage:delete"));
    }
    if !state.store.write(|tx| tx.delete::<Flavor>(&id))? {
        return Err(not_found("Flavor", &id));
    }
    Ok(StatusCode::ACCEPTED)
}

/// `addTenantAccess` / `removeTenantAccess`.
async fn action(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-access"));
    }
    let b = body(&raw)?;
    let (add, arg) = if let Some(a) = b.get("addTenantAccess") {
        (true, a)
    } else if let Some(a) = b.get("removeTenantAccess") {
        (false, a)
    } else {
        return Err(ApiError::bad_request(
            "Invalid action: expected addTenantAccess or removeTenantAccess",
        ));
    };
    let tenant = arg
        .get("tenant")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute tenant. 'tenant' is a required property",
            )
        })?
        .to_string();
    // Nova checks the project before it grants access; removing access for
    // a project that is gone stays possible.
    if add {
        super::validation::verify_project(&state, &tenant)?;
    }
    let f = state.store.write(|tx| {
        let mut f = tx
            .get::<Flavor>(&id)?
            .ok_or_else(|| not_found("Flavor", &id))?;
        if f.is_public {
            return Err(ApiError::conflict(
                "Can not add access to a public flavor.".to_string(),
            ));
        }
        let has = f.projects.contains(&tenant);
        if add {
            if has {
                return Err(ApiError::conflict(format!(
                    "Flavor access already exists for flavor {id} and project {tenant} combination."
                )));
            }
            f.projects.push(tenant.clone());
        } else {
            if !has {
                return Err(not_found(
                    &format!("Flavor access not found for {id} /"),
                    &format!("{tenant} combination"),
                ));
            }
            f.projects.retain(|p| p != &tenant);
        }
        tx.update(&f)?;
        Ok(f)
    })?;
    Ok(axum::Json(access_doc(&f)))
}

fn access_doc(f: &Flavor) -> Value {
    let list: Vec<Value> = f
        .projects
        .iter()
        .map(|p| json!({"flavor_id": f.id, "tenant_id": p}))
        .collect();
    json!({"flavor_access": list})
}

async fn access_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-access"));
    }
    let f = fetch_flavor(&state, &ctx, &id)?;
    if f.is_public {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Access list not available for public flavors.",
        ));
    }
    Ok(axum::Json(access_doc(&f)))
}

// ---- extra specs ------------------------------------------------------------

fn valid_spec_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.' | ' '))
}

async fn specs_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let f = fetch_flavor(&state, &ctx, &id)?;
    Ok(axum::Json(json!({"extra_specs": f.extra_specs})))
}

async fn spec_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let f = fetch_flavor(&state, &ctx, &id)?;
    match f.extra_specs.get(&key) {
        Some(v) => Ok(axum::Json(json!({ key: v }))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Flavor {id} has no extra specs with key {key}."),
        )),
    }
}

fn spec_values(v: &Value, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let o = v.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "Invalid input for field/attribute {what}. It must be an object"
        ))
    })?;
    let mut out = BTreeMap::new();
    for (k, v) in o {
        if !valid_spec_key(k) {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute extra_specs. Key '{k}' is not valid: use 1-255 of letters, digits, '-', '_', ':', '.' and space"
            )));
        }
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid input for field/attribute {k}. Value: {other}. It is not a string, number or boolean"
                )));
            }
        };
        if s.len() > 255 {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. The value is longer than 255 characters"
            )));
        }
        out.insert(k.clone(), s);
    }
    Ok(out)
}

async fn specs_create(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-extra-specs:create"));
    }
    let b = body(&raw)?;
    let specs = spec_values(
        b.get("extra_specs").ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute extra_specs. 'extra_specs' is a required property",
            )
        })?,
        "extra_specs",
    )?;
    state.store.write(|tx| {
        let mut f = tx
            .get::<Flavor>(&id)?
            .ok_or_else(|| not_found("Flavor", &id))?;
        f.extra_specs.extend(specs.clone());
        tx.update(&f)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(axum::Json(json!({"extra_specs": specs})))
}

async fn spec_update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-extra-specs:update"));
    }
    let b = body(&raw)?;
    let specs = spec_values(&b, "extra_specs")?;
    if specs.len() != 1 {
        return Err(ApiError::bad_request(
            "Request body contains too many items",
        ));
    }
    if !specs.contains_key(&key) {
        return Err(ApiError::bad_request("Request body and URI mismatch"));
    }
    state.store.write(|tx| {
        let mut f = tx
            .get::<Flavor>(&id)?
            .ok_or_else(|| not_found("Flavor", &id))?;
        f.extra_specs.extend(specs.clone());
        tx.update(&f)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(axum::Json(json!(specs)))
}

async fn spec_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-flavor-extra-specs:delete"));
    }
    state.store.write(|tx| {
        let mut f = tx
            .get::<Flavor>(&id)?
            .ok_or_else(|| not_found("Flavor", &id))?;
        if f.extra_specs.remove(&key).is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Flavor {id} has no extra specs with key {key}."),
            ));
        }
        tx.update(&f)?;
        Ok(())
    })?;
    Ok(StatusCode::OK)
}
