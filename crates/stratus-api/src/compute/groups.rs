//! Server groups (`os-server-groups`) and host aggregates
//! (`os-aggregates`).

use std::collections::{BTreeMap, HashMap};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::model::{Aggregate, ComputeNode, Server, ServerGroup};
use super::quotas::{self, Resource};
use super::{Mv, body, not_found, policy_denied};
use crate::identity::policy::Ctx;
use crate::timeutil::{iso_naive, now_us};
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-server-groups", get(groups_list).post(group_create))
        .route(
            "/os-server-groups/{id}",
            get(group_show).delete(group_delete),
        )
        .route("/os-aggregates", get(aggs_list).post(agg_create))
        .route(
            "/os-aggregates/{id}",
            get(agg_show).put(agg_update).delete(agg_delete),
        )
        .route("/os-aggregates/{id}/action", post(agg_action))
        .route("/os-aggregates/{id}/images", post(agg_cache_images))
}

/// `POST /os-aggregates/{id}/images` (2.81): every node of the aggregate
/// fetches the images into its cache now, so servers booted later (or
/// while the link to the controller is poor) start from local copies.
/// The agents fetch at their next heartbeat; 202 at once, as in Nova.
async fn agg_cache_images(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    if !mv.at_least(81) {
        return Err(super::no_such_resource());
    }
    admin(&ctx, "compute:aggregates:images")?;
    let b = body(&raw)?;
    let bad =
        |why: String| ApiError::bad_request(format!("Invalid input for field/attribute {why}"));
    let o = b
        .as_object()
        .ok_or_else(|| bad("request. It is not of type 'object'".into()))?;
    if let Some(k) = o.keys().find(|k| k.as_str() != "cache") {
        return Err(bad(format!(
            "request. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let list = o
        .get("cache")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("cache. 'cache' must be a non-empty list".into()))?;
    let mut images: Vec<String> = Vec::new();
    for item in list {
        let Some(io) = item.as_object() else {
            return Err(bad(format!(
                "cache. Value: {item}. It is not of type 'object'"
            )));
        };
        if let Some(k) = io.keys().find(|k| k.as_str() != "id") {
            return Err(bad(format!(
                "cache. Additional properties are not allowed ('{k}' was unexpected)"
            )));
        }
        let iid = io
            .get("id")
            .and_then(Value::as_str)
            .filter(|i| uuid::Uuid::parse_str(i).is_ok())
            .ok_or_else(|| bad(format!("id. Value: {item}. It is not a 'uuid'")))?;
        if images.iter().any(|x| x == iid) {
            return Err(ApiError::bad_request(format!(
                "Duplicate images in request: {iid}"
            )));
        }
        match state.store.get::<crate::image::model::Image>(iid)? {
            Some(img) if img.status == crate::image::model::status::ACTIVE => {}
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Image {iid} could not be found."
                )));
            }
        }
        images.push(iid.to_string());
    }
    let agg = state
        .store
        .get::<Aggregate>(&id)?
        .ok_or_else(|| agg_not_found(&id))?;
    // An aggregate in an edge site's zone: the site's nodes cache them.
    let site_zone = match &agg.availability_zone {
        Some(z) if state.sites.is_site_zone(&state.store, z)? => Some(z.clone()),
        _ => None,
    };
    state.store.write(|tx| {
        for h in &agg.hosts {
            if let Some(mut n) = tx.get::<ComputeNode>(h)? {
                for i in &images {
                    if !n.precache.contains(i) {
                        n.precache.push(i.clone());
                    }
                }
                tx.update(&n)?;
            }
        }
        if let Some(zone) = &site_zone {
            tx.insert(&super::model::SitePrecache {
                id: uuid::Uuid::new_v4().to_string(),
                zone: zone.clone(),
                images: images.clone(),
                created_us: crate::timeutil::now_us(),
            })?;
        }
        Ok::<_, ApiError>(())
    })?;
    tracing::info!(aggregate = %id, images = ?images, hosts = ?agg.hosts, site = ?site_zone, "image pre-caching requested");
    Ok(StatusCode::ACCEPTED)
}

// ---- server groups -------------------------------------------------------------

fn render_group(g: &ServerGroup, mv: Mv) -> Value {
    // 2.64: `policy` and `rules` replace `policies`; `metadata` is gone.
    let mut v = if mv.at_least(64) {
        json!({
            "id": g.id,
            "name": g.name,
            "policy": g.policy,
            "rules": g.rules,
            "members": g.members,
        })
    } else {
        json!({
            "id": g.id,
            "name": g.name,
            "policies": [g.policy],
            "members": g.members,
            "metadata": g.metadata,
        })
    };
    if mv.at_least(13) {
        v["project_id"] = json!(g.project_id);
        v["user_id"] = json!(g.user_id);
    }
    v
}

fn visible_group(ctx: &Ctx, g: &ServerGroup) -> bool {
    ctx.is_admin() || ctx.project_id() == Some(g.project_id.as_str())
}

async fn groups_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    let all = ctx.is_admin() && q.contains_key("all_projects");
    let mut groups: Vec<ServerGroup> = if all {
        state.store.list::<ServerGroup>(&StoreQuery::all())?
    } else {
        let p = ctx
            .project_id()
            .ok_or_else(|| policy_denied("os_compute_api:os-server-groups:index"))?;
        state.store.list::<ServerGroup>(&StoreQuery::owner(p))?
    };
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|o| o.parse().ok())
        .unwrap_or(1000)
        .min(1000);
    let list: Vec<Value> = groups
        .iter()
        .skip(offset)
        .take(limit)
        .map(|g| render_group(g, mv))
        .collect();
    Ok(axum::Json(json!({"server_groups": list})))
}

async fn group_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    let g = state
        .store
        .get::<ServerGroup>(&id)?
        .filter(|g| visible_group(&ctx, g))
        .ok_or_else(|| not_found("Instance group", &id))?;
    Ok(axum::Json(json!({"server_group": render_group(&g, mv)})))
}

async fn group_create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    super::common::require_member(&ctx, "os_compute_api:os-server-groups:create")?;
    let project = ctx
        .project_id()
        .ok_or_else(|| policy_denied("os_compute_api:os-server-groups:create"))?
        .to_string();
    let b = body(&raw)?;
    let o = b
        .get("server_group")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute server_group. 'server_group' is a required property"))?;
    let name = o.get("name").ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute server_group. 'name' is a required property",
        )
    })?;
    let name = super::validation::name("name", name)?;
    let (policy, rules) = if mv.at_least(64) {
        policy_and_rules(o)?
    } else {
        (policies(o, mv)?, BTreeMap::new())
    };
    let g = ServerGroup {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_string(),
        project_id: project.clone(),
        user_id: ctx.user_id().to_string(),
        policy,
        rules,
        members: vec![],
        metadata: BTreeMap::new(),
    };
    let user = ctx.user_id().to_string();
    state.store.write(|tx| {
        let used = tx.list::<ServerGroup>(&StoreQuery::owner(&project))?.len() as i64;
        let lim = quotas::limit_tx(tx, &project, Some(&user), Resource::ServerGroups)?;
        if lim >= 0 && used + 1 > lim {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Quota exceeded, too many server groups.",
            ));
        }
        tx.insert(&g)?;
        Ok(())
    })?;
    Ok(axum::Json(json!({"server_group": render_group(&g, mv)})))
}

const POLICIES: &[&str] = &[
    "affinity",
    "anti-affinity",
    "soft-affinity",
    "soft-anti-affinity",
];

/// 2.64: `policy` (a name) and `rules` (only `max_server_per_host`, only
/// for anti-affinity).
fn policy_and_rules(
    o: &serde_json::Map<String, Value>,
) -> Result<(String, BTreeMap<String, Value>), ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("Invalid input for field/attribute {m}"));
    if let Some(k) = o
        .keys()
        .find(|k| !["name", "policy", "rules"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "server_group. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let policy = match o.get("policy") {
        Some(Value::String(p)) if POLICIES.contains(&p.as_str()) => p.clone(),
        Some(v) => {
            return Err(bad(format!(
                "policy. Value: {v}. It is not one of {POLICIES:?}"
            )));
        }
        None => return Err(bad("server_group. 'policy' is a required property".into())),
    };
    let mut rules = BTreeMap::new();
    match o.get("rules") {
        None => {}
        Some(Value::Object(r)) => {
            for (k, v) in r {
                if k != "max_server_per_host" {
                    return Err(bad(format!(
                        "rules. Additional properties are not allowed ('{k}' was unexpected)"
                    )));
                }
                let n = v
                    .as_i64()
                    .or_else(|| {
                        v.as_str()
                            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                            .and_then(|s| s.parse().ok())
                    })
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        bad(format!(
                            "max_server_per_host. Value: {v}. It must be a positive integer"
                        ))
                    })?;
                rules.insert(k.clone(), json!(n));
            }
        }
        Some(v) => {
            return Err(bad(format!(
                "rules. Value: {v}. It is not of type 'object'"
            )));
        }
    }
    if !rules.is_empty() && policy != "anti-affinity" {
        return Err(ApiError::bad_request(
            "Only anti-affinity policy supports rules.",
        ));
    }
    Ok((policy, rules))
}

/// Before 2.64: `policies`, a list of exactly one name.
fn policies(o: &serde_json::Map<String, Value>, mv: Mv) -> Result<String, ApiError> {
    let policies = o.get("policies").and_then(Value::as_array).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute server_group. 'policies' is a required property",
        )
    })?;
    let allowed: &[&str] = if mv.at_least(15) {
        &[
            "affinity",
            "anti-affinity",
            "soft-affinity",
            "soft-anti-affinity",
        ]
    } else {
        &["affinity", "anti-affinity"]
    };
    let policy = match policies.as_slice() {
        [Value::String(p)] if allowed.contains(&p.as_str()) => p.clone(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute policies. Value: {}. It must hold exactly one of {allowed:?}",
                Value::Array(policies.clone())
            )));
        }
    };
    if let Some(k) = o
        .keys()
        .find(|k| !["name", "policies"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute server_group. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    Ok(policy)
}

async fn group_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    super::common::require_member(&ctx, "os_compute_api:os-server-groups:delete")?;
    state.store.write(|tx| {
        let g = tx
            .get::<ServerGroup>(&id)?
            .filter(|g| visible_group(&ctx, g))
            .ok_or_else(|| not_found("Instance group", &id))?;
        // Members keep running; they simply leave the group.
        for m in &g.members {
            if let Some(mut s) = tx.get::<Server>(m)? {
                s.server_group = None;
                tx.update(&s)?;
            }
        }
        tx.delete::<ServerGroup>(&g.id)?;
        Ok::<_, ApiError>(())
    })?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- aggregates ------------------------------------------------------------------

fn render_agg(a: &Aggregate, mv: Mv) -> Value {
    let mut v = json!({
        "id": a.id.parse::<i64>().unwrap_or(0),
        "name": a.name,
        "availability_zone": a.availability_zone,
        "hosts": a.hosts,
        "metadata": a.metadata,
        "created_at": iso_naive(a.created_us),
        "updated_at": a.updated_us.map(iso_naive),
        "deleted": false,
        "deleted_at": null,
    });
    if mv.at_least(41) {
        v["uuid"] = json!(a.uuid);
    }
    v
}

fn admin(ctx: &Ctx, rule: &str) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(policy_denied(rule))
    }
}

fn agg_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Aggregate {id} could not be found."),
    )
}

async fn aggs_list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:index")?;
    let mut aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    aggs.sort_by_key(|a| a.id.parse::<i64>().unwrap_or(0));
    let list: Vec<Value> = aggs.iter().map(|a| render_agg(a, mv)).collect();
    Ok(axum::Json(json!({"aggregates": list})))
}

async fn agg_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:show")?;
    let a = state
        .store
        .get::<Aggregate>(&id)?
        .ok_or_else(|| agg_not_found(&id))?;
    Ok(axum::Json(json!({"aggregate": render_agg(&a, mv)})))
}

fn name_field(v: Option<&Value>, required: bool) -> Result<Option<String>, ApiError> {
    match v {
        None if required => Err(ApiError::bad_request(
            "Invalid input for field/attribute aggregate. 'name' is a required property",
        )),
        None => Ok(None),
        // Create takes Nova's `name`; update keeps the older, looser rule.
        Some(v) if required => super::validation::name("name", v).map(Some),
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 255 && n.trim() == n => {
            Ok(Some(n.clone()))
        }
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute name. Value: {v}. Names must be 1-255 characters without leading or trailing whitespace"
        ))),
    }
}

fn zone_field(v: Option<&Value>) -> Result<Option<Option<String>>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(z)) if !z.is_empty() && z.len() <= 255 && !z.contains(':') => {
            Ok(Some(Some(z.clone())))
        }
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute availability_zone. Value: {v}. Zones are 1-255 characters without ':'"
        ))),
    }
}

async fn agg_create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:create")?;
    let b = body(&raw)?;
    let o = b
        .get("aggregate")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute aggregate. 'aggregate' is a required property",
            )
        })?;
    let name = name_field(o.get("name"), true)?.expect("required");
    let zone = zone_field(o.get("availability_zone"))?.flatten();
    if zone.as_deref() == Some("internal") {
        return Err(ApiError::bad_request(
            "Aggregate availability zone 'internal' is reserved for the controller's services",
        ));
    }
    let a = state.store.write(|tx| {
        if !tx.list::<Aggregate>(&StoreQuery::name(&name))?.is_empty() {
            return Err(ApiError::conflict(format!(
                "Aggregate {name} already exists."
            )));
        }
        let mut metadata = BTreeMap::new();
        if let Some(z) = &zone {
            metadata.insert("availability_zone".to_string(), z.clone());
        }
        let mut a = Aggregate {
            id: String::new(),
            uuid: uuid::Uuid::new_v4().to_string(),
            name: name.clone(),
            availability_zone: zone.clone(),
            hosts: vec![],
            metadata,
            created_us: now_us(),
            updated_us: None,
        };
        let next = tx
            .list::<Aggregate>(&StoreQuery::all())?
            .iter()
            .filter_map(|a| a.id.parse::<i64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        a.id = next.to_string();
        tx.insert(&a)?;
        Ok(a)
    })?;
    let mut v = render_agg(&a, mv);
    // Nova's create answer has no hosts and metadata.
    if let Some(o) = v.as_object_mut() {
        o.remove("hosts");
        o.remove("metadata");
    }
    Ok(axum::Json(json!({"aggregate": v})))
}

/// A host can be in several aggregates, but only in one zone.
fn zone_conflict(aggs: &[Aggregate], host: &str, zone: Option<&str>, skip: &str) -> Option<String> {
    let z = zone?;
    aggs.iter()
        .filter(|a| a.id != skip && a.hosts.iter().any(|h| h == host))
        .filter_map(|a| a.availability_zone.clone())
        .find(|other| other != z)
}

async fn agg_update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:update")?;
    let b = body(&raw)?;
    let o = b
        .get("aggregate")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute aggregate. 'aggregate' is a required property",
            )
        })?;
    if o.is_empty() {
        return Err(ApiError::bad_request(
            "Invalid input for field/attribute aggregate. It must name name or availability_zone",
        ));
    }
    let name = name_field(o.get("name"), false)?;
    let zone = zone_field(o.get("availability_zone"))?;
    let a = state.store.write(|tx| {
        let mut a = tx.get::<Aggregate>(&id)?.ok_or_else(|| agg_not_found(&id))?;
        if let Some(n) = &name
            && n != &a.name
        {
            if !tx.list::<Aggregate>(&StoreQuery::name(n))?.is_empty() {
                return Err(ApiError::conflict(format!("Aggregate {n} already exists.")));
            }
            a.name = n.clone();
        }
        if let Some(z) = &zone {
            let all = tx.list::<Aggregate>(&StoreQuery::all())?;
            for h in &a.hosts {
                if let Some(other) = zone_conflict(&all, h, z.as_deref(), &a.id) {
                    return Err(ApiError::bad_request(format!(
                        "Cannot update aggregate {id}: host {h} is already in availability zone {other}"
                    )));
                }
            }
            a.availability_zone = z.clone();
            match z {
                Some(z) => a.metadata.insert("availability_zone".into(), z.clone()),
                None => a.metadata.remove("availability_zone"),
            };
        }
        a.updated_us = Some(now_us());
        tx.update(&a)?;
        Ok(a)
    })?;
    Ok(axum::Json(json!({"aggregate": render_agg(&a, mv)})))
}

async fn agg_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:delete")?;
    state.store.write(|tx| {
        let a = tx
            .get::<Aggregate>(&id)?
            .ok_or_else(|| agg_not_found(&id))?;
        if !a.hosts.is_empty() {
            return Err(ApiError::bad_request(format!(
                "Cannot remove aggregate {id}: it still has hosts; remove them first"
            )));
        }
        tx.delete::<Aggregate>(&id)?;
        Ok(())
    })?;
    Ok(StatusCode::OK)
}

async fn agg_action(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    admin(&ctx, "os_compute_api:os-aggregates:action")?;
    let b = body(&raw)?;
    let (name, arg) = b
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.iter().next())
        .ok_or_else(|| ApiError::bad_request("Malformed request body: name exactly one action"))?;
    let a = state.store.write(|tx| {
        let mut a = tx.get::<Aggregate>(&id)?.ok_or_else(|| agg_not_found(&id))?;
        match name.as_str() {
            "add_host" | "remove_host" => {
                let host = arg.get("host").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request("Invalid input for field/attribute host. 'host' is a required property")
                })?;
                if name == "add_host" {
                    if tx.get::<ComputeNode>(host)?.is_none() {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("Compute host {host} could not be found."),
                        ));
                    }
                    if a.hosts.iter().any(|h| h == host) {
                        return Err(ApiError::conflict(format!(
                            "Aggregate {id} already has host {host}."
                        )));
                    }
                    let all = tx.list::<Aggregate>(&StoreQuery::all())?;
                    if let Some(other) = zone_conflict(&all, host, a.availability_zone.as_deref(), &a.id) {
                        return Err(ApiError::conflict(format!(
                            "Cannot add host to aggregate {id}. Reason: One or more hosts already in availability zone(s) ['{other}']."
                        )));
                    }
                    a.hosts.push(host.to_string());
                } else {
                    if !a.hosts.iter().any(|h| h == host) {
                        return Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("Cannot remove host {host} in aggregate {id}"),
                        ));
                    }
                    a.hosts.retain(|h| h != host);
                }
            }
            "set_metadata" => {
                let meta = arg.get("metadata").and_then(Value::as_object).ok_or_else(|| {
                    ApiError::bad_request("Invalid input for field/attribute metadata. 'metadata' is a required property")
                })?;
                for (k, v) in meta {
                    if k.is_empty() || k.len() > 255 {
                        return Err(ApiError::bad_request(format!("Invalid metadata key '{k}'")));
                    }
                    match v {
                        Value::Null => {
                            a.metadata.remove(k);
                            if k == "availability_zone" {
                                a.availability_zone = None;
                            }
                        }
                        Value::String(s) if s.len() <= 255 => {
                            if k == "availability_zone" {
                                a.availability_zone = Some(s.clone());
                            }
                            a.metadata.insert(k.clone(), s.clone());
                        }
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "Invalid input for field/attribute {k}. Value: {other}. It must be a string or null"
                            )));
                        }
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "Invalid action {other} for aggregate"
                )));
            }
        }
        a.updated_us = Some(now_us());
        tx.update(&a)?;
        Ok(a)
    })?;
    Ok(axum::Json(json!({"aggregate": render_agg(&a, mv)})))
}
