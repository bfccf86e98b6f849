//! Nova's network proxy APIs (microversions below 2.36): security groups
//! (`os-security-groups`, `os-security-group-rules`) and floating IPs
//! (`os-floating-ips`, `os-floating-ip-pools`), in Nova's shapes and with
//! Nova's checks, in front of the network service's own resources as Nova
//! does in front of Neutron. Only ingress rules are shown, as in Nova; a
//! floating IP pool is an external network, by name. `os-networks` and
//! `os-tenant-networks` list the networks the caller sees, by name
//! (`label`), as Nova does in front of Neutron.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Map, Value, json};

use super::model::Network;
use super::{NetError, floating_ips as fip, security_groups as sg};
use crate::compute::Mv;
use crate::identity::policy::Ctx;
use crate::json::Json;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-security-groups", get(list).post(create))
        .route(
            "/os-security-groups/{id}",
            get(show).put(update).delete(remove),
        )
        .route("/os-security-group-rules", post(create_rule))
        .route("/os-security-group-rules/{id}", delete(delete_rule))
        .route("/os-floating-ips", get(list_fips).post(create_fip))
        .route("/os-floating-ips/{id}", get(show_fip).delete(delete_fip))
        .route("/os-floating-ip-pools", get(pools))
        .route("/os-networks", get(list_networks))
        .route("/os-networks/{id}", get(show_network))
        .route("/os-tenant-networks", get(list_tenant_networks))
        .route("/os-tenant-networks/{id}", get(show_tenant_network))
}

/// Gone from 2.36 on, as in Nova.
fn check_mv(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(36) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "The resource could not be found.",
        ));
    }
    Ok(())
}

/// A network service error as Nova passes it on: a conflict (in use,
/// duplicate) is the caller's bad request, quota is 403.
fn nova_err(e: NetError) -> ApiError {
    let status = match (e.status, e.kind) {
        (_, "OverQuota") => StatusCode::FORBIDDEN,
        (StatusCode::CONFLICT, _) => StatusCode::BAD_REQUEST,
        (s, _) => s,
    };
    ApiError::new(status, e.message)
}

/// The JSON body of a network service answer, or its error for Nova.
async fn body_of(r: Result<Response, NetError>) -> Result<Value, ApiError> {
    let resp = r.map_err(nova_err)?;
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))
}

fn ctx2(ctx: &Ctx) -> Ctx {
    Ctx(ctx.0.clone())
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn bad_id(id: &str) -> ApiError {
    ApiError::bad_request(format!("Security group id should be uuid: {id}"))
}

/// A Neutron rule in Nova's shape.
fn nova_rule(r: &Value, names: &dyn Fn(&str) -> Option<(String, String)>) -> Value {
    let proto = r["protocol"].as_str();
    let (from, to) = match (proto, &r["port_range_min"], &r["port_range_max"]) {
        (Some(p), Value::Null, Value::Null) if p == "tcp" || p == "udp" => (json!(1), json!(65535)),
        (Some(_), Value::Null, Value::Null) => (json!(-1), json!(-1)),
        (None, _, _) => (Value::Null, Value::Null),
        (Some(_), a, b) => (
            if a.is_null() { json!(-1) } else { a.clone() },
            if b.is_null() { json!(-1) } else { b.clone() },
        ),
    };
    let mut v = json!({
        "id": r["id"],
        "parent_group_id": r["security_group_id"],
        "ip_protocol": r["protocol"],
        "from_port": from,
        "to_port": to,
        "group": {},
        "ip_range": {},
    });
    match r["remote_group_id"].as_str() {
        Some(g) => {
            if let Some((name, tenant)) = names(g) {
                v["group"] = json!({"name": name, "tenant_id": tenant});
            }
        }
        None => {
            let any = if r["ethertype"] == "IPv6" {
                "::/0"
            } else {
                "0.0.0.0/0"
            };
            let cidr = r["remote_ip_prefix"].as_str().unwrap_or(any);
            v["ip_range"] = json!({ "cidr": cidr });
        }
    }
    v
}

fn group_names(state: &AppState) -> impl Fn(&str) -> Option<(String, String)> + '_ {
    move |id: &str| {
        state
            .store
            .get::<super::model::SecurityGroup>(id)
            .ok()
            .flatten()
            .map(|g| (g.name, g.project_id))
    }
}

/// A Neutron security group in Nova's shape (its ingress rules only).
fn nova_group(state: &AppState, g: &Value) -> Value {
    let names = group_names(state);
    let rules: Vec<Value> = g["security_group_rules"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["direction"] == "ingress")
                .map(|r| nova_rule(r, &names))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": g["id"],
        "name": g["name"],
        "description": g["description"],
        "tenant_id": g["project_id"],
        "rules": rules,
    })
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let all = ctx.is_admin()
        && q.iter()
            .any(|(k, v)| k == "all_tenants" && v != "0" && !v.eq_ignore_ascii_case("false"));
    let mut filter = Vec::new();
    if !all && let Some(p) = ctx.project_id() {
        filter.push(("project_id".to_string(), p.to_string()));
    }
    let v = body_of(sg::list(State(state.clone()), ctx2(&ctx), Query(filter)).await).await?;
    let groups: Vec<Value> = v["security_groups"]
        .as_array()
        .map(|a| a.iter().map(|g| nova_group(&state, g)).collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({ "security_groups": groups })).into_response())
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    if !is_uuid(&id) {
        return Err(bad_id(&id));
    }
    let v = body_of(
        sg::show(
            State(state.clone()),
            ctx2(&ctx),
            Path(id),
            Query(Vec::new()),
        )
        .await,
    )
    .await?;
    Ok(
        axum::Json(json!({ "security_group": nova_group(&state, &v["security_group"]) }))
            .into_response(),
    )
}

/// Nova's checks of a group's name and description.
fn group_body(body: Value, update: bool) -> Result<Map<String, Value>, ApiError> {
    let m = match body.get("security_group") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(ApiError::bad_request("security_group not specified")),
    };
    let mut out = Map::new();
    for k in ["name", "description"] {
        match m.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 255 => {
                out.insert(k.into(), json!(s));
            }
            None if update => {}
            Some(Value::String(s)) if s.chars().count() > 255 => {
                return Err(ApiError::bad_request(format!(
                    "Security group {k} should not be greater than 255 characters."
                )));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "Security group {k} should not be empty."
                )));
            }
        }
    }
    Ok(out)
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let m = group_body(body, false)?;
    let v = body_of(
        sg::create(
            State(state.clone()),
            ctx2(&ctx),
            Json(json!({ "security_group": m })),
        )
        .await,
    )
    .await?;
    Ok(
        axum::Json(json!({ "security_group": nova_group(&state, &v["security_group"]) }))
            .into_response(),
    )
}

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    if !is_uuid(&id) {
        return Err(bad_id(&id));
    }
    let m = group_body(body, true)?;
    let v = body_of(
        sg::update(
            State(state.clone()),
            ctx2(&ctx),
            Path(id),
            Json(json!({ "security_group": m })),
        )
        .await,
    )
    .await?;
    Ok(
        axum::Json(json!({ "security_group": nova_group(&state, &v["security_group"]) }))
            .into_response(),
    )
}

async fn remove(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    if !is_uuid(&id) {
        return Err(bad_id(&id));
    }
    // Nova refuses the default group for everyone.
    if let Some(g) = state.store.get::<super::model::SecurityGroup>(&id)?
        && g.is_default
        && ctx.project_id() == Some(g.project_id.as_str())
    {
        return Err(ApiError::bad_request(
            "Removing default security group not allowed.",
        ));
    }
    body_of(sg::delete(State(state), ctx2(&ctx), Path(id)).await).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn port_value(m: &Map<String, Value>, k: &str) -> Result<Option<i64>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{k} must be an integer."))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{k} must be an integer."))),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be an integer."))),
    }
}

async fn create_rule(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let m = match body.get("security_group_rule") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(ApiError::bad_request("security_group_rule not specified")),
    };
    let parent = m
        .get("parent_group_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !is_uuid(&parent) {
        return Err(bad_id(&parent));
    }
    let group_id = m
        .get("group_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(g) = &group_id
        && !is_uuid(g)
    {
        return Err(bad_id(g));
    }
    let cidr = m.get("cidr").and_then(Value::as_str).map(str::to_string);
    let proto = match m.get("ip_protocol") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.to_ascii_lowercase()),
        Some(v) => Some(v.to_string()),
    };
    let from = port_value(&m, "from_port")?;
    let to = port_value(&m, "to_port")?;
    let (proto, from, to) = match (proto, from, to) {
        (Some(p), Some(a), Some(b)) => {
            if p.parse::<u8>().is_err() && !["tcp", "udp", "icmp"].contains(&p.as_str()) {
                return Err(ApiError::bad_request(format!("Invalid IP protocol {p}.")));
            }
            if (p == "tcp" || p == "udp") && a > b {
                return Err(ApiError::bad_request(format!(
                    "Invalid port range {a}:{b}. Former value cannot be greater than the later"
                )));
            }
            if (p == "tcp" || p == "udp") && (a < 1 || b > 65535) {
                return Err(ApiError::bad_request(format!(
                    "Invalid port range {a}:{b}. Valid {} ports should be between 1-65535",
                    p.to_uppercase()
                )));
            }
            if p == "icmp" && !((-1..=255).contains(&a) && (-1..=255).contains(&b)) {
                return Err(ApiError::bad_request(format!(
                    "Invalid port range {a}:{b}. For ICMP, the type:code must be valid"
                )));
            }
            let port = |n: i64| if n < 0 { Value::Null } else { json!(n) };
            (json!(p), port(a), port(b))
        }
        _ => {
            return Err(ApiError::bad_request(
                "Not enough parameters to build a valid rule.",
            ));
        }
    };
    let v6 = cidr.as_deref().is_some_and(|c| c.contains(':'));
    let mut rule = json!({
        "security_group_id": parent,
        "direction": "ingress",
        "ethertype": if v6 { "IPv6" } else { "IPv4" },
        "protocol": proto,
        "port_range_min": from,
        "port_range_max": to,
    });
    match (&group_id, &cidr) {
        (Some(g), _) => rule["remote_group_id"] = json!(g),
        (None, Some(c)) => rule["remote_ip_prefix"] = json!(c),
        (None, None) => rule["remote_ip_prefix"] = json!("0.0.0.0/0"),
    }
    // The parent group is looked for first: an unknown one is 404.
    body_of(
        sg::show(
            State(state.clone()),
            ctx2(&ctx),
            Path(parent.clone()),
            Query(Vec::new()),
        )
        .await,
    )
    .await?;
    let v = body_of(
        sg::create_rule(
            State(state.clone()),
            ctx2(&ctx),
            Json(json!({ "security_group_rule": rule })),
        )
        .await,
    )
    .await?;
    let names = group_names(&state);
    Ok(axum::Json(json!({
        "security_group_rule": nova_rule(&v["security_group_rule"], &names)
    }))
    .into_response())
}

async fn delete_rule(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    if !is_uuid(&id) {
        return Err(bad_id(&id));
    }
    body_of(sg::delete_rule(State(state), ctx2(&ctx), Path(id)).await).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

// ---- floating IPs -------------------------------------------------------------

/// External networks the caller may take floating IPs from.
fn external_networks(state: &AppState, ctx: &Ctx) -> Result<Vec<Network>, ApiError> {
    let project = ctx.project_id().unwrap_or_default().to_string();
    Ok(state
        .store
        .list::<Network>(&stratus_store::Query::all())?
        .into_iter()
        .filter(|n| super::networks::external_for(n, &project))
        .collect())
}

/// A Neutron floating IP in Nova's shape.
fn nova_fip(state: &AppState, f: &Value) -> Value {
    let pool = f["floating_network_id"]
        .as_str()
        .and_then(|id| state.store.get::<Network>(id).ok().flatten())
        .map(|n| n.name);
    let instance = f["port_id"]
        .as_str()
        .and_then(|id| state.store.get::<super::model::Port>(id).ok().flatten())
        .map(|p| p.device_id)
        .filter(|d| !d.is_empty());
    json!({
        "id": f["id"],
        "ip": f["floating_ip_address"],
        "fixed_ip": f["fixed_ip_address"],
        "instance_id": instance,
        "pool": pool,
    })
}

async fn list_fips(State(state): State<AppState>, ctx: Ctx, mv: Mv) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let filter: Vec<(String, String)> = ctx
        .project_id()
        .map(|p| ("project_id".to_string(), p.to_string()))
        .into_iter()
        .collect();
    let v = body_of(fip::list(State(state.clone()), ctx2(&ctx), Query(filter)).await).await?;
    let list: Vec<Value> = v["floatingips"]
        .as_array()
        .map(|a| a.iter().map(|f| nova_fip(&state, f)).collect())
        .unwrap_or_default();
    Ok(axum::Json(json!({ "floating_ips": list })).into_response())
}

async fn show_fip(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let v = body_of(
        fip::show(
            State(state.clone()),
            ctx2(&ctx),
            Path(id),
            Query(Vec::new()),
        )
        .await,
    )
    .await?;
    Ok(axum::Json(json!({ "floating_ip": nova_fip(&state, &v["floatingip"]) })).into_response())
}

async fn create_fip(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Malformed request body: {e}")))?
    };
    let pool = body.get("pool").and_then(Value::as_str).map(str::to_string);
    let nets = external_networks(&state, &ctx)?;
    // No pool named: the default external network, or the only one.
    let net = match &pool {
        Some(p) => nets.iter().find(|n| &n.name == p || &n.id == p),
        None => {
            nets.iter()
                .find(|n| n.is_default)
                .or(if nets.len() == 1 { nets.first() } else { None })
        }
    };
    let Some(net) = net else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "Floating IP pool not found: {}",
                pool.unwrap_or_else(|| "(default)".into())
            ),
        ));
    };
    let v = body_of(
        fip::create(
            State(state.clone()),
            ctx2(&ctx),
            Json(json!({"floatingip": {"floating_network_id": net.id}})),
        )
        .await,
    )
    .await?;
    Ok(axum::Json(json!({ "floating_ip": nova_fip(&state, &v["floatingip"]) })).into_response())
}

async fn delete_fip(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    body_of(fip::delete(State(state), ctx2(&ctx), Path(id)).await).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `os-floating-ip-pools`: the external networks, by name.
async fn pools(State(state): State<AppState>, ctx: Ctx, mv: Mv) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let list: Vec<Value> = external_networks(&state, &ctx)?
        .into_iter()
        .map(|n| json!({ "name": n.name }))
        .collect();
    Ok(axum::Json(json!({ "floating_ip_pools": list })).into_response())
}

// ---- networks -----------------------------------------------------------------

/// The networks the caller sees.
fn seen_networks(state: &AppState, ctx: &Ctx) -> Result<Vec<Network>, ApiError> {
    Ok(state
        .store
        .list::<Network>(&stratus_store::Query::all())?
        .into_iter()
        .filter(|n| super::networks::visible(ctx, n))
        .collect())
}

fn seen_network(state: &AppState, ctx: &Ctx, id: &str) -> Result<Network, ApiError> {
    match state.store.get::<Network>(id)? {
        Some(n) if super::networks::visible(ctx, &n) => Ok(n),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Network {id} could not be found."),
        )),
    }
}

/// Nova's `os-networks` view of a Neutron network: what nova-network had
/// and Neutron has not is null.
fn nova_network(n: &Network, admin: bool) -> Value {
    let mut v = json!({
        "id": n.id, "label": n.name, "cidr": null, "netmask": null, "gateway": null,
        "broadcast": null, "dns1": null, "dns2": null, "cidr_v6": null,
        "gateway_v6": null, "netmask_v6": null,
    });
    if admin {
        for k in [
            "deleted_at",
            "deleted",
            "injected",
            "bridge",
            "vlan",
            "vpn_public_address",
            "vpn_public_port",
            "vpn_private_address",
            "dhcp_start",
            "host",
            "bridge_interface",
            "multi_host",
            "priority",
            "rxtx_base",
            "dhcp_server",
            "enable_dhcp",
            "share_address",
        ] {
            v[k] = Value::Null;
        }
        v["project_id"] = json!(n.project_id);
        v["mtu"] = json!(n.mtu);
        v["created_at"] = json!(n.std.created_at);
        v["updated_at"] = json!(n.std.updated_at);
    }
    v
}

async fn list_networks(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let list: Vec<Value> = seen_networks(&state, &ctx)?
        .iter()
        .map(|n| nova_network(n, ctx.is_admin()))
        .collect();
    Ok(axum::Json(json!({ "networks": list })).into_response())
}

async fn show_network(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let n = seen_network(&state, &ctx, &id)?;
    Ok(axum::Json(json!({ "network": nova_network(&n, ctx.is_admin()) })).into_response())
}

fn tenant_network(n: &Network) -> Value {
    json!({"id": n.id, "label": n.name, "cidr": null})
}

async fn list_tenant_networks(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let list: Vec<Value> = seen_networks(&state, &ctx)?
        .iter()
        .map(tenant_network)
        .collect();
    Ok(axum::Json(json!({ "networks": list })).into_response())
}

async fn show_tenant_network(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_mv(mv)?;
    let n = seen_network(&state, &ctx, &id)?;
    Ok(axum::Json(json!({ "network": tenant_network(&n) })).into_response())
}
