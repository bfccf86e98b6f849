//! The Placement REST API under `/placement`, microversions 1.0 to 1.28.
//!
//! Admin (or `service` role) only, as the real Placement's default policy.
//! Errors use Placement's shape:
//! `{"errors": [{"status", "title", "detail", "code", "request_id"}]}`.

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::{CandidateRequest, Inventory, PlacementError, Provider};
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

const MAX_MINOR: u16 = 28;

/// Placement's standard resource classes.
const STANDARD_CLASSES: &[&str] = &[
    "VCPU",
    "MEMORY_MB",
    "DISK_GB",
    "PCI_DEVICE",
    "SRIOV_NET_VF",
    "NUMA_SOCKET",
    "NUMA_CORE",
    "NUMA_THREAD",
    "NUMA_MEMORY_MB",
    "IPV4_ADDRESS",
    "VGPU",
    "VGPU_DISPLAY_HEAD",
    "NET_BW_EGR_KILOBIT_PER_SEC",
    "NET_BW_IGR_KILOBIT_PER_SEC",
    "PCPU",
    "MEM_ENCRYPTION_CONTEXT",
    "FPGA",
    "PGPU",
];

/// The os-traits names Stratus reports or filters on; any `CUSTOM_*` is
/// accepted too.
const STANDARD_TRAITS: &[&str] = &[
    "COMPUTE_NODE",
    "COMPUTE_STATUS_DISABLED",
    "HW_ARCH_X86_64",
    "HW_ARCH_AARCH64",
    "HW_CPU_X86_AVX",
    "HW_CPU_X86_AVX2",
    "HW_CPU_X86_SSE42",
    "HW_CPU_X86_AESNI",
    "STORAGE_DISK_SSD",
    "STORAGE_DISK_HDD",
    "COMPUTE_VOLUME_MULTI_ATTACH",
    "COMPUTE_NET_ATTACH_INTERFACE",
    "MISC_SHARES_VIA_AGGREGATE",
];

#[derive(Debug, Clone, Copy)]
struct Pv(u16);

impl Pv {
    fn at_least(self, m: u16) -> bool {
        self.0 >= m
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Pv {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(parts.extensions.get::<Pv>().copied().unwrap_or(Pv(0)))
    }
}

fn requested(h: &HeaderMap) -> Result<Pv, ApiError> {
    let mut raw = None;
    for v in h.get_all("openstack-api-version") {
        for part in v.to_str().unwrap_or("").split(',') {
            let mut it = part.split_whitespace();
            if it
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("placement"))
            {
                raw = it.next().map(str::to_string);
            }
        }
    }
    let Some(raw) = raw else { return Ok(Pv(0)) };
    if raw == "latest" {
        return Ok(Pv(MAX_MINOR));
    }
    let bad = || ApiError::bad_request(format!("invalid version string: {raw}"));
    let (a, b) = raw.split_once('.').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a != 1 || b > MAX_MINOR {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Unacceptable version header: {raw}. Minimum is 1.0 and maximum is 1.{MAX_MINOR}."
            ),
        ));
    }
    Ok(Pv(b))
}

async fn layer(mut req: Request, next: Next) -> Response {
    let pv = match requested(req.headers()) {
        Ok(v) => v,
        Err(e) => return fault(e, Pv(0), None),
    };
    let rid = req
        .extensions()
        .get::<crate::middleware::RequestId>()
        .map(|r| r.0.clone());
    req.extensions_mut().insert(pv);
    let resp = next.run(req).await;
    let mut resp = match resp.extensions().get::<ApiError>().cloned() {
        Some(e) => fault(e, pv, rid),
        None => resp,
    };
    if let Ok(v) = HeaderValue::from_str(&format!("placement 1.{}", pv.0)) {
        resp.headers_mut().insert("openstack-api-version", v);
    }
    resp.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static("openstack-api-version"),
    );
    resp
}

/// Placement's fault for an error answered at the HTTP edge, before a
/// version was read.
pub(crate) fn fault_response(e: ApiError, rid: &str) -> Response {
    fault(e, Pv(0), Some(rid.to_string()))
}

fn fault(e: ApiError, _pv: Pv, rid: Option<String>) -> Response {
    let code = if e.message.contains("generation conflict") {
        "placement.concurrent_update"
    } else if e.message.contains("in use") {
        "placement.inventory.inuse"
    } else {
        "placement.undefined_code"
    };
    let mut err = json!({
        "status": e.status.as_u16(),
        "title": e.status.canonical_reason().unwrap_or("Error"),
        "detail": e.message,
        "code": code,
        "request_id": rid,
    });
    // A client asking for too new a version learns the range here.
    if e.status == StatusCode::NOT_ACCEPTABLE {
        err["max_version"] = json!(format!("1.{MAX_MINOR}"));
        err["min_version"] = json!("1.0");
    }
    let body = json!({"errors": [err]});
    (e.status, axum::Json(body)).into_response()
}

pub fn router() -> Router<AppState> {
    let inner = Router::new()
        .route("/resource_providers", get(rp_list).post(rp_create))
        .route(
            "/resource_providers/{uuid}",
            get(rp_show).put(rp_update).delete(rp_delete),
        )
        .route(
            "/resource_providers/{uuid}/inventories",
            get(inv_list).put(inv_replace).delete(inv_delete_all),
        )
        .route(
            "/resource_providers/{uuid}/inventories/{class}",
            get(inv_show).put(inv_put).delete(inv_delete),
        )
        .route("/resource_providers/{uuid}/usages", get(rp_usages))
        .route(
            "/resource_providers/{uuid}/traits",
            get(rp_traits).put(rp_traits_put).delete(rp_traits_delete),
        )
        .route(
            "/resource_providers/{uuid}/aggregates",
            get(rp_aggs).put(rp_aggs_put),
        )
        .route(
            "/resource_providers/{uuid}/allocations",
            get(rp_allocations),
        )
        .route(
            "/allocations/{consumer}",
            get(alloc_show).put(alloc_put).delete(alloc_delete),
        )
        .route("/allocation_candidates", get(candidates))
        .route("/usages", get(usages))
        .route("/traits", get(traits_list))
        .route(
            "/traits/{name}",
            get(trait_show).put(trait_put).delete(trait_delete),
        )
        .route("/resource_classes", get(classes_list))
        .route("/resource_classes/{name}", get(class_show))
        .fallback(crate::error::not_found_fallback);
    Router::new()
        .route("/placement", get(root))
        .route("/placement/", get(root))
        .nest("/placement", inner)
        .layer(axum::middleware::from_fn(layer))
}

async fn root() -> axum::Json<Value> {
    axum::Json(json!({"versions": [{
        "id": "v1.0", "max_version": format!("1.{MAX_MINOR}"), "min_version": "1.0",
        "status": "CURRENT", "links": [{"rel": "self", "href": ""}]
    }]}))
}

fn admin(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin() || ctx.has_role("service") {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "placement (admin or service role required)",
        ))
    }
}

fn need(pv: Pv, minor: u16) -> Result<(), ApiError> {
    if pv.at_least(minor) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        ))
    }
}

fn not_found_rp(uuid: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("No resource provider with uuid {uuid} found"),
    )
}

fn rp_json(p: &Provider, pv: Pv, base: &str) -> Value {
    let me = format!("{base}/placement/resource_providers/{}", p.id);
    let mut links = vec![
        json!({"rel": "self", "href": me}),
        json!({"rel": "inventories", "href": format!("{me}/inventories")}),
        json!({"rel": "usages", "href": format!("{me}/usages")}),
    ];
    if pv.at_least(1) {
        links.push(json!({"rel": "aggregates", "href": format!("{me}/aggregates")}));
    }
    if pv.at_least(6) {
        links.push(json!({"rel": "traits", "href": format!("{me}/traits")}));
    }
    if pv.at_least(11) {
        links.push(json!({"rel": "allocations", "href": format!("{me}/allocations")}));
    }
    let mut v = json!({"uuid": p.id, "name": p.name, "generation": p.generation, "links": links});
    if pv.at_least(14) {
        v["parent_provider_uuid"] = Value::Null;
        v["root_provider_uuid"] = json!(p.id);
    }
    v
}

fn body(raw: &[u8]) -> Result<Value, ApiError> {
    let v: Value = crate::json::decode(raw)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("JSON body must be an object"));
    }
    Ok(v)
}

fn parse_resources(s: &str) -> Result<BTreeMap<String, u64>, ApiError> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (c, n) = part.split_once(':').ok_or_else(|| {
            ApiError::bad_request(format!("Badly formed resources parameter. Expected resources query string parameter in form: ?resources=VCPU:2,MEMORY_MB:1024. Got: {s}."))
        })?;
        let n: u64 = n.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "Requested resource {c} expected positive integer amount. Got: {n}."
            ))
        })?;
        if n == 0 {
            return Err(ApiError::bad_request(format!(
                "Requested resource {c} expected positive integer amount. Got: 0."
            )));
        }
        out.insert(c.to_string(), n);
    }
    Ok(out)
}

fn parse_required(s: &str) -> (Vec<String>, Vec<String>) {
    let mut req = Vec::new();
    let mut forb = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match t.strip_prefix('!') {
            Some(f) => forb.push(f.to_string()),
            None => req.push(t.to_string()),
        }
    }
    (req, forb)
}

fn parse_member_of(list: &[String]) -> Vec<Vec<String>> {
    list.iter()
        .map(|m| {
            m.strip_prefix("in:")
                .unwrap_or(m)
                .split(',')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn multi(q: &[(String, String)]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in q {
        m.entry(k.clone()).or_default().push(v.clone());
    }
    m
}

// ---- resource providers ---------------------------------------------------------

async fn rp_list(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let m = multi(&q);
    let one = |k: &str| m.get(k).and_then(|v| v.first()).cloned();
    let resources = match one("resources") {
        Some(r) if pv.at_least(4) => Some(parse_resources(&r)?),
        _ => None,
    };
    let (required, forbidden) = match one("required") {
        Some(r) if pv.at_least(18) => parse_required(&r),
        _ => (vec![], vec![]),
    };
    let member_of = m
        .get("member_of")
        .filter(|_| pv.at_least(3))
        .map(|v| parse_member_of(v))
        .unwrap_or_default();
    let base = state.config.public_url.clone();
    let list: Vec<Value> = state
        .placement
        .providers()
        .into_iter()
        .filter(|p| one("name").is_none_or(|n| n == p.name))
        .filter(|p| one("uuid").is_none_or(|u| u == p.id))
        .filter(|p| {
            one("in_tree")
                .filter(|_| pv.at_least(14))
                .is_none_or(|u| u == p.id)
        })
        .filter(|p| {
            required.iter().all(|t| p.traits.contains(t))
                && !forbidden.iter().any(|t| p.traits.contains(t))
        })
        .filter(|p| {
            member_of
                .iter()
                .all(|any| any.iter().any(|a| p.aggregates.contains(a)))
        })
        .filter(|p| {
            resources.as_ref().is_none_or(|r| {
                let used = state.placement.usage(&p.id);
                r.iter().all(|(c, n)| {
                    p.inventories.get(c).is_some_and(|i| {
                        i.capacity()
                            .saturating_sub(used.get(c).copied().unwrap_or(0))
                            >= *n
                    })
                })
            })
        })
        .map(|p| rp_json(&p, pv, &base))
        .collect();
    Ok(axum::Json(json!({"resource_providers": list})))
}

async fn rp_create(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    raw: Bytes,
) -> Result<Response, ApiError> {
    admin(&ctx)?;
    let b = body(&raw)?;
    let name = &rp_name(&b)?;
    let uuid = match b.get("uuid") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if uuid::Uuid::parse_str(u).is_ok() => Some(u.clone()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "JSON does not validate: {v} is not a 'uuid'"
            )));
        }
    };
    if b.get("parent_provider_uuid").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::bad_request(
            "Nested resource providers are not supported here: parent_provider_uuid must be null",
        ));
    }
    let p = state.placement.create_provider(uuid.as_deref(), name)?;
    let loc = format!(
        "{}/placement/resource_providers/{}",
        state.config.public_url, p.id
    );
    if pv.at_least(20) {
        Ok((
            StatusCode::OK,
            [(header::LOCATION, loc)],
            axum::Json(rp_json(&p, pv, &state.config.public_url)),
        )
            .into_response())
    } else {
        Ok((StatusCode::CREATED, [(header::LOCATION, loc)]).into_response())
    }
}

/// A resource provider's name as Placement's schema takes it: a required
/// string of at most 200 characters (of any script). Empty names and
/// control characters are refused too: a provider is looked up by name,
/// and not every SQL backend keeps a NUL.
fn rp_name(b: &Value) -> Result<String, ApiError> {
    match b.get("name") {
        None => Err(ApiError::bad_request(
            "JSON does not validate: 'name' is a required property",
        )),
        Some(Value::String(n)) if n.chars().count() > 200 => Err(ApiError::bad_request(format!(
            "JSON does not validate: '{n}' is too long"
        ))),
        Some(Value::String(n)) if n.is_empty() || n.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "JSON does not validate: {} is not a valid name: it must be non-empty, without control characters",
                Value::String(n.clone())
            )))
        }
        Some(Value::String(n)) => Ok(n.clone()),
        Some(v) => Err(ApiError::bad_request(format!(
            "JSON does not validate: {v} is not of type 'string'"
        ))),
    }
}

async fn rp_show(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    Ok(axum::Json(rp_json(&p, pv, &state.config.public_url)))
}

async fn rp_update(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let b = body(&raw)?;
    let name = rp_name(&b)?;
    let p = state.placement.update_provider(&uuid, None, |p, _| {
        p.name = name;
        Ok(())
    })?;
    Ok(axum::Json(rp_json(&p, pv, &state.config.public_url)))
}

async fn rp_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(uuid): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    if state.placement.provider(&uuid).is_none() {
        return Err(not_found_rp(&uuid));
    }
    state.placement.delete_provider(&uuid)?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- inventories -------------------------------------------------------------------

fn inv_json(i: &Inventory) -> Value {
    json!({"total": i.total, "reserved": i.reserved, "min_unit": i.min_unit, "max_unit": i.max_unit,
        "step_size": i.step_size, "allocation_ratio": i.allocation_ratio})
}

fn parse_inventory(class: &str, v: &Value, pv: Pv) -> Result<Inventory, ApiError> {
    let o = v.as_object().ok_or_else(|| {
        ApiError::bad_request(format!(
            "JSON does not validate: inventory of {class} must be an object"
        ))
    })?;
    let int = |k: &str, default: u64, min: u64| -> Result<u64, ApiError> {
        match o.get(k) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .filter(|n| *n >= min && *n <= i32::MAX as u64)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "JSON does not validate: {k} of {class} must be an integer >= {min}"
                    ))
                }),
        }
    };
    let total = match o.get("total") {
        None => {
            return Err(ApiError::bad_request(format!(
                "JSON does not validate: 'total' is a required property of {class}"
            )));
        }
        Some(_) => int("total", 0, 1)?,
    };
    let reserved = int("reserved", 0, 0)?;
    let min_unit = int("min_unit", 1, 1)?;
    let max_unit = int("max_unit", i32::MAX as u64, 1)?;
    let step_size = int("step_size", 1, 1)?;
    let allocation_ratio = match o.get("allocation_ratio") {
        None => 1.0,
        Some(x) => x.as_f64().filter(|r| *r > 0.0).ok_or_else(|| {
            ApiError::bad_request(format!(
                "JSON does not validate: allocation_ratio of {class} must be a number > 0"
            ))
        })?,
    };
    if reserved > total || (reserved == total && !pv.at_least(26)) {
        return Err(ApiError::bad_request(format!(
            "Unable to update inventory for resource provider: reserved of {class} must be less than total"
        )));
    }
    if min_unit > max_unit {
        return Err(ApiError::bad_request(format!(
            "min_unit of {class} is greater than max_unit"
        )));
    }
    Ok(Inventory {
        total,
        reserved,
        min_unit,
        max_unit,
        step_size,
        allocation_ratio,
    })
}

fn valid_class(c: &str) -> bool {
    STANDARD_CLASSES.contains(&c)
        || c.strip_prefix("CUSTOM_").is_some_and(|r| {
            !r.is_empty()
                && r.chars()
                    .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
        })
}

async fn inv_list(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    let inv: Map<String, Value> = p
        .inventories
        .iter()
        .map(|(k, v)| (k.clone(), inv_json(v)))
        .collect();
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "inventories": inv}),
    ))
}

fn generation_of(b: &Value) -> Result<u64, ApiError> {
    b.get("resource_provider_generation")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "JSON does not validate: 'resource_provider_generation' is a required property",
            )
        })
}

fn in_use_check(p: &Provider, used: &BTreeMap<String, u64>) -> Result<(), PlacementError> {
    for (c, n) in used {
        if *n > 0 && !p.inventories.contains_key(c) {
            return Err(PlacementError::Conflict(format!(
                "Inventory for '{c}' on resource provider '{}' in use.",
                p.id
            )));
        }
    }
    Ok(())
}

async fn inv_replace(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let b = body(&raw)?;
    let gen_ = generation_of(&b)?;
    let o = b
        .get("inventories")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request("JSON does not validate: 'inventories' is a required property")
        })?;
    let mut inv = BTreeMap::new();
    for (c, v) in o {
        if !valid_class(c) {
            return Err(ApiError::bad_request(format!(
                "Unknown resource class in inventory for resource provider {uuid}: {c}"
            )));
        }
        inv.insert(c.clone(), parse_inventory(c, v, pv)?);
    }
    let p = state
        .placement
        .update_provider(&uuid, Some(gen_), |p, used| {
            p.inventories = inv;
            in_use_check(p, used)
        })?;
    let inv: Map<String, Value> = p
        .inventories
        .iter()
        .map(|(k, v)| (k.clone(), inv_json(v)))
        .collect();
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "inventories": inv}),
    ))
}

async fn inv_delete_all(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    need(pv, 5)?;
    state.placement.update_provider(&uuid, None, |p, used| {
        p.inventories.clear();
        in_use_check(p, used)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn inv_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((uuid, class)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    let i = p.inventories.get(&class).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No inventory of class {class} found for {uuid}"),
        )
    })?;
    let mut v = inv_json(i);
    v["resource_provider_generation"] = json!(p.generation);
    Ok(axum::Json(v))
}

async fn inv_put(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path((uuid, class)): Path<(String, String)>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    if !valid_class(&class) {
        return Err(ApiError::bad_request(format!(
            "No such resource class {class}."
        )));
    }
    let b = body(&raw)?;
    let gen_ = generation_of(&b)?;
    let i = parse_inventory(&class, &b, pv)?;
    let p = state.placement.update_provider(&uuid, Some(gen_), |p, _| {
        p.inventories.insert(class.clone(), i);
        Ok(())
    })?;
    let mut v = inv_json(&p.inventories[&class]);
    v["resource_provider_generation"] = json!(p.generation);
    Ok(axum::Json(v))
}

async fn inv_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((uuid, class)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    state.placement.update_provider(&uuid, None, |p, used| {
        if p.inventories.remove(&class).is_none() {
            return Err(PlacementError::NotFound(format!(
                "inventory of class {class} for {uuid}"
            )));
        }
        in_use_check(p, used)
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rp_usages(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    let used = state.placement.usage(&uuid);
    let u: Map<String, Value> = p
        .inventories
        .keys()
        .map(|c| (c.clone(), json!(used.get(c).copied().unwrap_or(0))))
        .collect();
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "usages": u}),
    ))
}

// ---- traits and aggregates -----------------------------------------------------------

fn valid_trait(t: &str) -> bool {
    STANDARD_TRAITS.contains(&t)
        || t.strip_prefix("CUSTOM_").is_some_and(|r| {
            !r.is_empty()
                && r.len() <= 248
                && r.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
}

async fn rp_traits(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "traits": p.traits}),
    ))
}

async fn rp_traits_put(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    let b = body(&raw)?;
    let gen_ = generation_of(&b)?;
    let traits: Vec<String> = b
        .get("traits")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad_request("JSON does not validate: 'traits' is a required property")
        })?
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request("traits must be strings"))
        })
        .collect::<Result<_, _>>()?;
    if let Some(bad) = traits.iter().find(|t| !valid_trait(t)) {
        return Err(ApiError::bad_request(format!("No such trait(s): {bad}")));
    }
    let p = state.placement.update_provider(&uuid, Some(gen_), |p, _| {
        let mut t = traits;
        t.sort();
        t.dedup();
        p.traits = t;
        Ok(())
    })?;
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "traits": p.traits}),
    ))
}

async fn rp_traits_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    state.placement.update_provider(&uuid, None, |p, _| {
        p.traits.clear();
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn rp_aggs(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 1)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    let mut v = json!({"aggregates": p.aggregates});
    if pv.at_least(19) {
        v["resource_provider_generation"] = json!(p.generation);
    }
    Ok(axum::Json(v))
}

async fn rp_aggs_put(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(uuid): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 1)?;
    let v: Value = crate::json::decode(&raw)?;
    let (list, gen_) = if pv.at_least(19) {
        (
            v.get("aggregates").cloned().unwrap_or(Value::Null),
            Some(generation_of(&v)?),
        )
    } else {
        (v, None)
    };
    let aggs: Vec<String> = list
        .as_array()
        .ok_or_else(|| {
            ApiError::bad_request("JSON does not validate: aggregates must be a list of uuids")
        })?
        .iter()
        .map(|a| {
            a.as_str()
                .filter(|s| uuid::Uuid::parse_str(s).is_ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("JSON does not validate: {a} is not a 'uuid'"))
                })
        })
        .collect::<Result<_, _>>()?;
    let p = state.placement.update_provider(&uuid, gen_, |p, _| {
        p.aggregates = aggs;
        Ok(())
    })?;
    let mut out = json!({"aggregates": p.aggregates});
    if pv.at_least(19) {
        out["resource_provider_generation"] = json!(p.generation);
    }
    Ok(axum::Json(out))
}

// ---- allocations ------------------------------------------------------------------------

async fn rp_allocations(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(uuid): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let p = state
        .placement
        .provider(&uuid)
        .ok_or_else(|| not_found_rp(&uuid))?;
    let a: Map<String, Value> = state
        .placement
        .provider_allocations(&uuid)
        .into_iter()
        .map(|(c, r)| (c, json!({"resources": r})))
        .collect();
    Ok(axum::Json(
        json!({"resource_provider_generation": p.generation, "allocations": a}),
    ))
}

async fn alloc_show(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(consumer): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let a = state.placement.allocation(&consumer);
    let allocs: Map<String, Value> = a
        .as_ref()
        .map(|a| {
            a.allocations
                .iter()
                .map(|(rp, r)| {
                    let g = state
                        .placement
                        .provider(rp)
                        .map(|p| p.generation)
                        .unwrap_or(0);
                    (rp.clone(), json!({"resources": r, "generation": g}))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut v = json!({"allocations": allocs});
    if let Some(a) = &a
        && pv.at_least(12)
    {
        v["project_id"] = json!(a.project_id);
        v["user_id"] = json!(a.user_id);
    }
    if let Some(a) = &a
        && pv.at_least(28)
    {
        v["consumer_generation"] = json!(a.generation);
    }
    Ok(axum::Json(v))
}

async fn alloc_put(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(consumer): Path<String>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    if uuid::Uuid::parse_str(&consumer).is_err() {
        return Err(ApiError::bad_request(format!(
            "Malformed consumer_uuid: {consumer}"
        )));
    }
    let b = body(&raw)?;
    let mut allocs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let parse_res = |r: &Value| -> Result<BTreeMap<String, u64>, ApiError> {
        let o = r.as_object().ok_or_else(|| {
            ApiError::bad_request("JSON does not validate: resources must be an object")
        })?;
        let mut m = BTreeMap::new();
        for (c, n) in o {
            let n = n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "JSON does not validate: {c} amount must be an integer >= 1"
                ))
            })?;
            m.insert(c.clone(), n);
        }
        Ok(m)
    };
    if pv.at_least(12) {
        let o = b
            .get("allocations")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "JSON does not validate: 'allocations' is a required property (an object)",
                )
            })?;
        for (rp, v) in o {
            allocs.insert(
                rp.clone(),
                parse_res(v.get("resources").unwrap_or(&Value::Null))?,
            );
        }
    } else {
        let list = b
            .get("allocations")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "JSON does not validate: 'allocations' is a required property (a list)",
                )
            })?;
        for a in list {
            let rp = a["resource_provider"]["uuid"].as_str().ok_or_else(|| {
                ApiError::bad_request("JSON does not validate: resource_provider.uuid is required")
            })?;
            allocs.insert(rp.to_string(), parse_res(&a["resources"])?);
        }
    }
    let project = b.get("project_id").and_then(Value::as_str);
    let user = b.get("user_id").and_then(Value::as_str);
    if pv.at_least(8) && (project.is_none() || user.is_none()) {
        return Err(ApiError::bad_request(
            "JSON does not validate: 'project_id' and 'user_id' are required properties",
        ));
    }
    if allocs.is_empty() && !pv.at_least(28) {
        return Err(ApiError::bad_request(
            "JSON does not validate: allocations must not be empty",
        ));
    }
    let expect = if pv.at_least(28) {
        match b.get("consumer_generation") {
            Some(Value::Null) => Some(None),
            Some(v) => Some(Some(v.as_u64().ok_or_else(|| {
                ApiError::bad_request("consumer_generation must be an integer or null")
            })?)),
            None => {
                return Err(ApiError::bad_request(
                    "JSON does not validate: 'consumer_generation' is a required property",
                ));
            }
        }
    } else {
        None
    };
    for rp in allocs.keys() {
        if state.placement.provider(rp).is_none() {
            return Err(ApiError::bad_request(format!(
                "Allocation for resource provider '{rp}' that does not exist."
            )));
        }
    }
    state
        .placement
        .claim_checked(&consumer, project.unwrap_or(""), user.unwrap_or(""), &allocs, expect)
        .map_err(|e| match e {
            PlacementError::Capacity { provider, class } => ApiError::conflict(format!(
                "Unable to allocate inventory: Unable to create allocation for '{class}' on resource provider '{provider}'. The requested amount would exceed the capacity."
            )),
            PlacementError::Invalid(m) => ApiError::bad_request(m),
            other => other.into(),
        })?;
    Ok(StatusCode::NO_CONTENT)
}

async fn alloc_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(consumer): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    if state.placement.allocation(&consumer).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No allocations for consumer '{consumer}'"),
        ));
    }
    state.placement.release(&consumer)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn candidates(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 10)?;
    let m = multi(&q);
    let one = |k: &str| m.get(k).and_then(|v| v.first()).cloned();
    let resources = parse_resources(
        &one("resources")
            .ok_or_else(|| ApiError::bad_request("'resources' is a required property"))?,
    )?;
    if resources.is_empty() {
        return Err(ApiError::bad_request(
            "Badly formed resources parameter: nothing requested",
        ));
    }
    let (required, forbidden) = match one("required") {
        Some(r) if pv.at_least(17) => parse_required(&r),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Invalid query string parameters: 'required' needs microversion 1.17",
            ));
        }
        None => (vec![], vec![]),
    };
    let limit = match one("limit") {
        Some(l) if pv.at_least(16) => Some(
            l.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid limit {l}")))?,
        ),
        _ => None,
    };
    let req = CandidateRequest {
        resources: resources.clone(),
        required_traits: required,
        forbidden_traits: forbidden,
        member_of: m
            .get("member_of")
            .filter(|_| pv.at_least(21))
            .map(|v| parse_member_of(v))
            .unwrap_or_default(),
        in_tree: None,
        limit,
    };
    let cands = state.placement.candidates(&req)?;
    let mut requests = Vec::new();
    let mut summaries = Map::new();
    for c in &cands {
        if pv.at_least(12) {
            requests.push(json!({"allocations": {c.provider.clone(): {"resources": resources}}}));
        } else {
            requests.push(json!({"allocations": [{"resource_provider": {"uuid": c.provider}, "resources": resources}]}));
        }
        let used = &c.used;
        let res: Map<String, Value> = c
            .capacity
            .iter()
            .filter(|(k, _)| pv.at_least(27) || resources.contains_key(*k))
            .map(|(k, cap)| {
                (
                    k.clone(),
                    json!({"capacity": cap, "used": used.get(k).copied().unwrap_or(0)}),
                )
            })
            .collect();
        let mut s = json!({"resources": res});
        if pv.at_least(17) {
            s["traits"] = json!(c.traits);
        }
        if pv.at_least(14) {
            s["parent_provider_uuid"] = Value::Null;
            s["root_provider_uuid"] = json!(c.provider);
        }
        summaries.insert(c.provider.clone(), s);
    }
    Ok(axum::Json(
        json!({"allocation_requests": requests, "provider_summaries": summaries}),
    ))
}

async fn usages(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 9)?;
    let project = q
        .get("project_id")
        .ok_or_else(|| ApiError::bad_request("'project_id' is a required property"))?;
    let u = state
        .placement
        .project_usage(project, q.get("user_id").map(String::as_str));
    Ok(axum::Json(json!({"usages": u})))
}

// ---- traits and resource classes ------------------------------------------------------------

/// Custom traits made with `PUT /traits/CUSTOM_*`, kept in the store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CustomTrait {
    id: String,
}
record!(CustomTrait, "placement_trait");
use stratus_store::Record;

async fn traits_list(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    let mut all: Vec<String> = STANDARD_TRAITS.iter().map(|s| s.to_string()).collect();
    all.extend(
        state
            .store
            .list::<CustomTrait>(&stratus_store::Query::all())?
            .into_iter()
            .map(|t| t.id),
    );
    if let Some(n) = q.get("name") {
        if let Some(list) = n.strip_prefix("in:") {
            let want: Vec<&str> = list.split(',').collect();
            all.retain(|t| want.contains(&t.as_str()));
        } else if let Some(p) = n.strip_prefix("startswith:") {
            all.retain(|t| t.starts_with(p));
        } else {
            return Err(ApiError::bad_request(format!(
                "Badly formatted name parameter. Expected name query string parameter in form: ?name=[in|startswith]:[name1,name2|prefix]. Got: \"{n}\""
            )));
        }
    }
    if q.get("associated").is_some_and(|a| a == "true") {
        let used: Vec<String> = state
            .placement
            .providers()
            .into_iter()
            .flat_map(|p| p.traits)
            .collect();
        all.retain(|t| used.contains(t));
    }
    all.sort();
    all.dedup();
    Ok(axum::Json(json!({"traits": all})))
}

async fn trait_show(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    if STANDARD_TRAITS.contains(&name.as_str()) || state.store.get::<CustomTrait>(&name)?.is_some()
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No such trait(s): {name}"),
        ))
    }
}

async fn trait_put(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    if !name.starts_with("CUSTOM_") || !valid_trait(&name) {
        return Err(ApiError::bad_request(format!(
            "The trait is invalid. A valid trait must be no longer than 255 characters, start with the prefix \"CUSTOM_\" and use following characters: \"A\"-\"Z\", \"0\"-\"9\" and \"_\" ({name})"
        )));
    }
    if state.store.get::<CustomTrait>(&name)?.is_some() {
        return Ok(StatusCode::NO_CONTENT);
    }
    state
        .store
        .write(|tx| tx.insert(&CustomTrait { id: name.clone() }))?;
    Ok(StatusCode::CREATED)
}

async fn trait_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    pv: Pv,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx)?;
    need(pv, 6)?;
    if STANDARD_TRAITS.contains(&name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "Cannot delete standard trait {name}."
        )));
    }
    if state
        .placement
        .providers()
        .iter()
        .any(|p| p.traits.contains(&name))
    {
        return Err(ApiError::conflict(format!(
            "The trait {name} is in use by a resource provider."
        )));
    }
    if !state.store.write(|tx| tx.delete::<CustomTrait>(&name))? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No such trait(s): {name}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn classes_list(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    let base = &state.config.public_url;
    let list: Vec<Value> = STANDARD_CLASSES
        .iter()
        .map(|c| json!({"name": c, "links": [{"rel": "self", "href": format!("{base}/placement/resource_classes/{c}")}]}))
        .collect();
    Ok(axum::Json(json!({"resource_classes": list})))
}

async fn class_show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx)?;
    if !STANDARD_CLASSES.contains(&name.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No such resource class {name}."),
        ));
    }
    let base = &state.config.public_url;
    Ok(axum::Json(
        json!({"name": name, "links": [{"rel": "self", "href": format!("{base}/placement/resource_classes/{name}")}]}),
    ))
}
