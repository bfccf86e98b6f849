//! Compute nodes: the node agent's side of the API (register, heartbeat,
//! fetch the servers assigned to it, report what it did) and the admin
//! views of them (`os-services`, `os-hypervisors`, `os-availability-zone`).
//!
//! The agent dials the controller (edge nodes sit behind NAT); it long-polls
//! `GET /edge/v1/nodes/{host}/servers`, which answers at once when anything
//! on the compute side changed since the revision it last saw.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use stratus_store::Query as StoreQuery;

use super::model::{Aggregate, ComputeNode, LiveIncoming, Server};
use super::zones::{controller_host, is_up, last_seen, service_uuid, zone_of};
use super::{Mv, body, policy_denied};
use crate::identity::policy::Ctx;
use crate::timeutil::{iso_naive, now_us};
use crate::{ApiError, AppState};

pub fn agent_routes() -> Router<AppState> {
    Router::new()
        .route("/edge/v1/nodes/{host}", put(register))
        .route("/edge/v1/nodes/{host}/servers", get(assigned))
        .route("/edge/v1/nodes/{host}/network", get(wiring))
        .route("/edge/v1/nodes/{host}/servers/{id}/report", post(report))
        .route(
            "/edge/v1/nodes/{host}/servers/{id}/progress",
            post(progress),
        )
        // Every node calls these every few seconds: logged at DEBUG when
        // they succeed (see `middleware::Routine`).
        .route_layer(axum::middleware::map_response(
            crate::middleware::mark_routine,
        ))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/os-services", get(services))
        .route(
            "/os-services/{id}",
            put(service_action).delete(service_delete),
        )
        .route("/os-hypervisors", get(hypervisors))
        .route("/os-hypervisors/detail", get(hypervisors_detail))
        .route("/os-hypervisors/statistics", get(statistics))
        .route("/os-hypervisors/{id}", get(hypervisor_show))
        .route("/os-hypervisors/{id}/uptime", get(hypervisor_uptime))
        .route("/os-hypervisors/{id}/search", get(hypervisor_search))
        .route("/os-hypervisors/{id}/servers", get(hypervisor_servers))
        .route("/os-availability-zone", get(zones))
        .route("/os-availability-zone/detail", get(zones_detail))
}

/// The agent of `host`: that node's own identity (`node` role, see
/// `identity::node_users`), never another node's; or, the old way, a
/// user with the admin or `service` role.
pub(crate) fn require_agent(ctx: &Ctx, host: &str) -> Result<(), ApiError> {
    match ctx.node_host() {
        Some(h) if h == host => Ok(()),
        Some(_) => Err(policy_denied(
            "stratus:node-agent (a node acts for its own host only)",
        )),
        None if ctx.is_admin() || ctx.has_role("service") => Ok(()),
        None => Err(policy_denied("stratus:node-agent")),
    }
}

// ---- agent protocol -------------------------------------------------------------

/// The protocol's messages, defined once for both ends in `stratus-wire`.
pub use stratus_wire::net::HostNetwork;
pub use stratus_wire::{
    Assignment, Assignments, InstanceReport, NodeReply, NodeReport, RescueImage, TaskProgress,
    TaskReport,
};

async fn register(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(host): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<NodeReply>, ApiError> {
    require_agent(&ctx, &host)?;
    let r: NodeReport = crate::json::decode(&raw)?;
    stratus_wire::check_protocol(r.protocol).map_err(ApiError::bad_request)?;
    if host.is_empty() || host.len() > 255 || host.contains('/') {
        return Err(ApiError::bad_request(format!("Invalid host name {host:?}")));
    }
    // Alive as of now: a controller slow to process the report (a busy
    // database, a full blocking pool) must not see its nodes as down.
    state.compute.saw(&host, now_us());
    let st = state.clone();
    let h = host.clone();
    let out = tokio::task::spawn_blocking(move || super::service::heartbeat(&st, &h, &r))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(axum::Json(out))
}

async fn assigned(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(host): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Assignments>, ApiError> {
    require_agent(&ctx, &host)?;
    let since: u64 = q.get("since").and_then(|s| s.parse().ok()).unwrap_or(0);
    let wait = q
        .get("wait")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        .min(60);
    // Wait only while the agent is up to date. A position the controller
    // never gave out (the agent's from before a restart, or from another
    // store) gets an answer at once, with a position to poll from.
    let mut rx = state.compute.channel(&host);
    if *rx.borrow() == since && wait > 0 && !state.compute.is_closing() {
        let _ = tokio::time::timeout(Duration::from_secs(wait), async {
            while *rx.borrow_and_update() == since {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    let rev = *rx.borrow();
    // Only what was written since the agent's last answer, when it says
    // where that was: a node with 500 servers is not sent all 500 after
    // every change to one of them.
    let changed: Option<i64> = q.get("changed").and_then(|s| s.parse().ok());
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        // Read before the servers: whatever commits after it has a later
        // revision and is in the next answer.
        let at = st.store.last_revision()?;
        let query = StoreQuery::parent(&host);
        let (query, partial) = match changed {
            // A revision this store has not reached (another database's)
            // gets everything.
            Some(c) if (0..=at).contains(&c) => (query.changed_after(c), true),
            _ => (query, false),
        };
        let servers = st.store.list::<Server>(&query)?;
        let mut out = Vec::with_capacity(servers.len());
        for s in servers {
            out.push(super::service::assignment(&st, &s)?);
        }
        Ok(axum::Json(Assignments {
            revision: rev,
            servers: out,
            changes_from: Some(at as u64),
            partial,
        }))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// What the node must wire for the servers on it
/// ([`stratus_wire::net::HostNetwork`]). Asking binds the servers' ports
/// to the node (`binding:host_id`, status ACTIVE), as Nova's compute does
/// when it plugs them.
async fn wiring(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(host): Path<String>,
) -> Result<axum::Json<HostNetwork>, ApiError> {
    require_agent(&ctx, &host)?;
    let st = state.clone();
    let net = tokio::task::spawn_blocking(move || {
        let servers: Vec<(String, Vec<crate::network::nova::Nic>)> = st
            .store
            .list::<Server>(&StoreQuery::parent(&host))?
            .into_iter()
            .filter(|s| !s.nics.is_empty())
            .map(|s| (s.id, s.nics))
            .collect();
        let nodes = st.store.list::<ComputeNode>(&StoreQuery::all())?;
        let tunnels: HashMap<String, String> = nodes
            .iter()
            .map(|n| (n.id.clone(), n.host_ip.clone()))
            .collect();
        // Routers run on one node: the first (by name) of the nodes up
        // that offer to.
        let l3 = nodes
            .iter()
            .filter(|n| n.l3 && is_up(&st, n))
            .map(|n| n.id.as_str())
            .min()
            == Some(host.as_str());
        let nova = super::nics::nova_error;
        let mut unbound = false;
        for (_, nics) in &servers {
            for n in nics {
                if st
                    .store
                    .get::<crate::network::model::Port>(&n.port_id)?
                    .is_some_and(|p| p.host_id != host || p.status != "ACTIVE")
                {
                    unbound = true;
                }
            }
        }
        if unbound {
            st.store.write(|tx| {
                // Read again inside the write: a server deleted since the
                // list above has had its ports unplugged.
                for (id, _) in &servers {
                    if let Some(s) = tx.get::<Server>(id)?
                        && s.host.as_deref() == Some(host.as_str())
                    {
                        crate::network::nova::bind(tx, &s.nics, &host).map_err(nova)?;
                    }
                }
                Ok::<_, ApiError>(())
            })?;
        }
        if l3 {
            st.store
                .write(|tx| crate::network::nova::bind_routers(tx, &host).map_err(nova))?;
        }
        st.store.write(|tx| {
            // VMs live-migrating here: their ports are wired before the
            // switch (still bound to the source); records of migrations
            // that have ended go.
            let mut servers = servers;
            for m in tx.list::<LiveIncoming>(&StoreQuery::parent(&host))? {
                match tx.get::<Server>(&m.id)? {
                    Some(s)
                        if s.task_state.as_deref() == Some(super::states::task::MIGRATING)
                            && s.resize.as_ref().is_some_and(|j| {
                                j.live && j.dest_host.as_deref() == Some(host.as_str())
                            }) =>
                    {
                        if !servers.iter().any(|(id, _)| *id == s.id) {
                            servers.push((s.id, s.nics));
                        }
                    }
                    _ => {
                        tx.delete::<LiveIncoming>(&m.id)?;
                    }
                }
            }
            crate::network::nova::host_network(tx, &host, &servers, &tunnels, l3).map_err(nova)
        })
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(axum::Json(net))
}

async fn report(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((host, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    require_agent(&ctx, &host)?;
    let r: TaskReport = crate::json::decode(&raw)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || super::service::task_done(&st, &host, &id, &r))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

async fn progress(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((host, id)): Path<(String, String)>,
    raw: Bytes,
) -> Result<StatusCode, ApiError> {
    require_agent(&ctx, &host)?;
    let p: TaskProgress = crate::json::decode(&raw)?;
    let st = state.clone();
    tokio::task::spawn_blocking(move || match p.migration {
        Some(bytes) => super::live::progress(&st, &id, p.generation, bytes),
        None => super::snapshots::progress(&st, &host, &id, p.generation, &p.task),
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

// ---- os-services ------------------------------------------------------------------

fn service_json(state: &AppState, n: &ComputeNode, zone: &str, mv: Mv) -> Value {
    let mut v = json!({
        "id": if mv.at_least(53) { json!(service_uuid("nova-compute", &n.id)) } else { json!(n.seq) },
        "binary": "nova-compute",
        "host": n.id,
        "zone": zone,
        "status": if n.disabled { "disabled" } else { "enabled" },
        "state": if is_up(state, n) { "up" } else { "down" },
        "updated_at": iso_naive(last_seen(state, n)),
        "disabled_reason": n.disabled_reason,
    });
    if mv.at_least(11) {
        v["forced_down"] = json!(n.forced_down);
    }
    v
}

/// The controller's own services (scheduler and conductor run in the
/// controller process, so they are up while it answers).
fn controller_services(mv: Mv) -> Vec<Value> {
    let host = controller_host();
    let now = iso_naive(now_us());
    ["nova-scheduler", "nova-conductor"]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let id = if mv.at_least(53) {
                json!(service_uuid(b, &host))
            } else {
                json!(1_000_000 + i as i64)
            };
            let mut v = json!({"id": id, "binary": b, "host": host, "zone": "internal",
                "status": "enabled", "state": "up", "updated_at": now, "disabled_reason": null});
            if mv.at_least(11) {
                v["forced_down"] = json!(false);
            }
            v
        })
        .collect()
}

async fn services(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-services:list"));
    }
    let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    let mut out: Vec<Value> = state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .iter()
        .map(|n| service_json(&state, n, &zone_of(&aggs, &n.id), mv))
        .collect();
    out.extend(controller_services(mv));
    out.retain(|s| {
        q.get("host").is_none_or(|h| s["host"] == json!(h))
            && q.get("binary").is_none_or(|b| s["binary"] == json!(b))
    });
    Ok(axum::Json(json!({"services": out})))
}

async fn service_action(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(action): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-services:update"));
    }
    let b = body(&raw)?;
    if mv.at_least(53) {
        return service_update_v253(&state, mv, &action, &b);
    }
    let host = b
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute host. 'host' is a required property",
            )
        })?
        .to_string();
    let binary = b
        .get("binary")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid input for field/attribute binary. 'binary' is a required property",
            )
        })?
        .to_string();
    if binary != "nova-compute" {
        return Err(ApiError::bad_request(format!(
            "Updating a {binary} service is not supported: only nova-compute services can be changed"
        )));
    }
    let reason = b
        .get("disabled_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(r) = &reason
        && (r.is_empty() || r.len() > 255)
    {
        return Err(ApiError::bad_request(
            "The string containing the reason for disabling the service must be 1-255 characters",
        ));
    }
    let forced = match action.as_str() {
        "force-down" if mv.at_least(11) => Some(
            b.get("forced_down")
                .and_then(super::parse_bool)
                .ok_or_else(|| ApiError::bad_request("Invalid input for field/attribute forced_down. 'forced_down' is a required boolean"))?,
        ),
        "enable" | "disable" | "disable-log-reason" => None,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Unknown action {action}"),
            ));
        }
    };
    let n = state.store.write(|tx| {
        let mut n = tx.get::<ComputeNode>(&host)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Host '{host}' could not be found."),
            )
        })?;
        match action.as_str() {
            "enable" => {
                n.disabled = false;
                n.disabled_reason = None;
            }
            "disable" => n.disabled = true,
            "disable-log-reason" => {
                n.disabled = true;
                n.disabled_reason = Some(
                    reason
                        .clone()
                        .ok_or_else(|| ApiError::bad_request("Missing disabled reason field"))?,
                );
            }
            _ => n.forced_down = forced.unwrap_or(false),
        }
        n.updated_us = now_us();
        tx.update(&n)?;
        Ok::<_, ApiError>(n)
    })?;
    let mut v = json!({"host": n.id, "binary": "nova-compute"});
    match action.as_str() {
        "force-down" => v["forced_down"] = json!(n.forced_down),
        _ => {
            v["status"] = json!(if n.disabled { "disabled" } else { "enabled" });
            if action == "disable-log-reason" {
                v["disabled_reason"] = json!(n.disabled_reason);
            }
        }
    }
    Ok(axum::Json(json!({"service": v})))
}

/// The compute node behind a 2.53 service uuid: 400 for something that is
/// not a uuid, 404 for an unknown one.
fn node_by_service_uuid(state: &AppState, id: &str) -> Result<ComputeNode, ApiError> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::bad_request(format!("Invalid uuid {id}")));
    }
    state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .into_iter()
        .find(|n| service_uuid("nova-compute", &n.id) == id)
        .ok_or_else(|| {
            let controller = controller_host();
            if ["nova-scheduler", "nova-conductor"]
                .iter()
                .any(|b| service_uuid(b, &controller) == id)
            {
                ApiError::bad_request(
                    "Updating a nova-scheduler or nova-conductor service is not supported: only nova-compute services can be changed",
                )
            } else {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("Service {id} could not be found."),
                )
            }
        })
}

/// `PUT /os-services/{service_uuid}` (2.53): `status`, `disabled_reason`
/// (only with status disabled) and `forced_down`; answers the whole
/// service.
fn service_update_v253(
    state: &AppState,
    mv: Mv,
    id: &str,
    b: &Value,
) -> Result<axum::Json<Value>, ApiError> {
    let o = b
        .as_object()
        .ok_or_else(|| ApiError::bad_request("The request body must be an object"))?;
    if let Some(k) = o
        .keys()
        .find(|k| !["status", "disabled_reason", "forced_down"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "Invalid input for field/attribute service. Additional properties are not allowed ('{k}' was unexpected)"
        )));
    }
    let status = match o.get("status") {
        None => None,
        Some(Value::String(s)) if s == "enabled" || s == "disabled" => Some(s == "enabled"),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute status. Value: {v}. It is not one of ['enabled', 'disabled']"
            )));
        }
    };
    let reason = match o.get("disabled_reason") {
        None => None,
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 255 => Some(r.clone()),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute disabled_reason. Value: {v}. It must be 1-255 characters"
            )));
        }
    };
    if reason.is_some() && status != Some(false) {
        return Err(ApiError::bad_request(
            "Specifying 'disabled_reason' with status 'enabled' is invalid.",
        ));
    }
    let forced = match o.get("forced_down") {
        None => None,
        Some(Value::Bool(f)) => Some(*f),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute forced_down. Value: {v}. It is not a boolean"
            )));
        }
    };
    if status.is_none() && forced.is_none() {
        return Err(ApiError::bad_request(
            "At least one of 'status' or 'forced_down' must be specified in the request body.",
        ));
    }
    let host = node_by_service_uuid(state, id)?.id;
    let n = state.store.write(|tx| {
        let mut n = tx.get::<ComputeNode>(&host)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Service {id} could not be found."),
            )
        })?;
        if let Some(enabled) = status {
            n.disabled = !enabled;
            n.disabled_reason = if enabled { None } else { reason.clone() };
        }
        if let Some(f) = forced {
            n.forced_down = f;
        }
        n.updated_us = now_us();
        tx.update(&n)?;
        Ok::<_, ApiError>(n)
    })?;
    let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    Ok(axum::Json(
        json!({"service": service_json(state, &n, &zone_of(&aggs, &n.id), mv)}),
    ))
}

async fn service_delete(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-services:delete"));
    }
    let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    if mv.at_least(53) {
        node_by_service_uuid(&state, &id)?;
    }
    let n = nodes
        .iter()
        .find(|n| {
            if mv.at_least(53) {
                service_uuid("nova-compute", &n.id) == id
            } else {
                n.seq.to_string() == id
            }
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Service {id} could not be found."),
            )
        })?;
    if !state
        .store
        .list::<Server>(&StoreQuery::parent(&n.id))?
        .is_empty()
    {
        return Err(ApiError::conflict(format!(
            "Unable to delete compute service that is hosting instances. Migrate or delete the instances first. ({})",
            n.id
        )));
    }
    state.placement.delete_provider(&n.uuid).ok();
    state.store.write(|tx| tx.delete::<ComputeNode>(&n.id))?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- os-hypervisors -------------------------------------------------------------------

fn require_admin_h(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.is_admin() {
        Ok(())
    } else {
        Err(policy_denied("os_compute_api:os-hypervisors:list"))
    }
}

/// This controller's nodes as a site reports them to its parent, in
/// `zone` (the site's own): resources, use and health.
pub fn summaries(
    state: &AppState,
    zone: &str,
) -> Result<Vec<stratus_wire::sync::NodeSummary>, ApiError> {
    let reserved = state.compute.config.reserved_host_memory_mb;
    let mut out = Vec::new();
    for n in state.store.list::<ComputeNode>(&StoreQuery::all())? {
        let (vcpus, ram, disk, running) = used(state, &n.id)?;
        out.push(stratus_wire::sync::NodeSummary {
            name: n.id.clone(),
            zone: zone.to_string(),
            state: if is_up(state, &n) { "up" } else { "down" }.into(),
            status: if n.disabled { "disabled" } else { "enabled" }.into(),
            hypervisor_type: n.hypervisor_type.clone(),
            vcpus: n.vcpus as u64,
            vcpus_used: vcpus as u64,
            memory_mb: n.memory_mb,
            memory_mb_used: ram + reserved,
            local_gb: n.disk_gb,
            local_gb_used: disk,
            running_vms: running as u64,
        });
    }
    Ok(out)
}

/// Used resources of a node, from the servers placed on it.
fn used(state: &AppState, host: &str) -> Result<(u32, u64, u64, usize), ApiError> {
    let servers = state.store.list::<Server>(&StoreQuery::parent(host))?;
    let mut u = (0u32, 0u64, 0u64, servers.len());
    for s in &servers {
        u.0 += s.flavor.vcpus;
        u.1 += s.flavor.ram;
        u.2 += s.flavor.disk + s.flavor.ephemeral;
    }
    Ok(u)
}

fn hypervisor_json(
    state: &AppState,
    n: &ComputeNode,
    detail: bool,
    mv: Mv,
) -> Result<Value, ApiError> {
    let mut v = json!({
        "id": if mv.at_least(53) { json!(n.uuid) } else { json!(n.seq) },
        "hypervisor_hostname": n.id,
        "state": if is_up(state, n) { "up" } else { "down" },
        "status": if n.disabled { "disabled" } else { "enabled" },
    });
    if detail {
        let (vcpus_used, ram_used, disk_used, running) = used(state, &n.id)?;
        let reserved_ram = state.compute.config.reserved_host_memory_mb;
        let cpu_info = json!({"arch": n.arch, "model": n.cpu_model, "vendor": "", "topology": {"sockets": 1, "cores": n.vcpus, "threads": 1}, "features": []});
        let o = v.as_object_mut().expect("object");
        o.insert(
            "cpu_info".into(),
            if mv.at_least(28) {
                cpu_info
            } else {
                json!(cpu_info.to_string())
            },
        );
        o.insert("current_workload".into(), json!(0));
        o.insert(
            "disk_available_least".into(),
            json!(n.disk_gb.saturating_sub(disk_used)),
        );
        o.insert(
            "free_disk_gb".into(),
            json!(n.disk_gb as i64 - disk_used as i64),
        );
        o.insert(
            "free_ram_mb".into(),
            json!(n.memory_mb as i64 - ram_used as i64 - reserved_ram as i64),
        );
        o.insert("host_ip".into(), json!(n.host_ip));
        o.insert("hypervisor_type".into(), json!(n.hypervisor_type));
        o.insert("hypervisor_version".into(), json!(n.hypervisor_version));
        o.insert("local_gb".into(), json!(n.disk_gb));
        o.insert("local_gb_used".into(), json!(disk_used));
        o.insert("memory_mb".into(), json!(n.memory_mb));
        o.insert("memory_mb_used".into(), json!(ram_used + reserved_ram));
        o.insert("running_vms".into(), json!(running));
        o.insert("vcpus".into(), json!(n.vcpus));
        o.insert("vcpus_used".into(), json!(vcpus_used));
        o.insert(
            "service".into(),
            json!({
                "host": n.id,
                "id": if mv.at_least(53) { json!(service_uuid("nova-compute", &n.id)) } else { json!(n.seq) },
                "disabled_reason": n.disabled_reason,
            }),
        );
    }
    Ok(v)
}

fn listed_nodes(
    state: &AppState,
    q: &HashMap<String, String>,
    mv: Mv,
) -> Result<Vec<ComputeNode>, ApiError> {
    let mut nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    nodes.sort_by_key(|n| n.seq);
    // 2.53: the hostname pattern replaces /search (and pages not at all).
    if mv.at_least(53)
        && let Some(p) = q.get("hypervisor_hostname_pattern")
    {
        if q.contains_key("limit") || q.contains_key("marker") {
            return Err(ApiError::bad_request(
                "Paging over hypervisors with the hypervisor_hostname_pattern query parameter is not supported.",
            ));
        }
        return matching(state, p);
    }
    if mv.at_least(33) {
        let (limit, marker) = super::paging(q)?;
        let key = |n: &ComputeNode| {
            if mv.at_least(53) {
                n.uuid.clone()
            } else {
                n.seq.to_string()
            }
        };
        if let Some(m) = &marker
            && !nodes.iter().any(|n| &key(n) == m)
        {
            return Err(ApiError::bad_request(format!("marker [{m}] not found")));
        }
        let keyed: Vec<(String, ComputeNode)> = nodes.into_iter().map(|n| (key(&n), n)).collect();
        nodes = super::page(keyed, limit, marker.as_deref(), |p| &p.0)?
            .into_iter()
            .map(|p| p.1)
            .collect();
    }
    Ok(nodes)
}

/// 2.53's `with_servers`: the servers on the node, when there are any.
fn with_servers(
    state: &AppState,
    v: &mut Value,
    n: &ComputeNode,
    q: &HashMap<String, String>,
    mv: Mv,
) -> Result<(), ApiError> {
    let wanted = match q.get("with_servers") {
        Some(w) if mv.at_least(53) => super::parse_bool(&json!(w)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid input for query parameters with_servers. Value: {w}. It is not a boolean"
            ))
        })?,
        _ => false,
    };
    if wanted {
        let servers: Vec<Value> = state
            .store
            .list::<Server>(&StoreQuery::parent(&n.id))?
            .iter()
            .map(|s| json!({"uuid": s.id, "name": super::common::instance_name(&s.id)}))
            .collect();
        // 2.75: the list is there even when it is empty.
        if !servers.is_empty() || mv.at_least(75) {
            v["servers"] = json!(servers);
        }
    }
    Ok(())
}

async fn hypervisors(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin_h(&ctx)?;
    let mut list = Vec::new();
    for n in listed_nodes(&state, &q, mv)? {
        let mut v = hypervisor_json(&state, &n, false, mv)?;
        with_servers(&state, &mut v, &n, &q, mv)?;
        list.push(v);
    }
    Ok(axum::Json(json!({"hypervisors": list})))
}

async fn hypervisors_detail(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin_h(&ctx)?;
    let mut list = Vec::new();
    for n in listed_nodes(&state, &q, mv)? {
        let mut v = hypervisor_json(&state, &n, true, mv)?;
        with_servers(&state, &mut v, &n, &q, mv)?;
        list.push(v);
    }
    Ok(axum::Json(json!({"hypervisors": list})))
}

fn node_by_id(state: &AppState, id: &str, mv: Mv) -> Result<ComputeNode, ApiError> {
    if mv.at_least(53) && uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::bad_request(format!("Invalid uuid {id}")));
    }
    state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .into_iter()
        .find(|n| {
            if mv.at_least(53) {
                n.uuid == id
            } else {
                n.seq.to_string() == id
            }
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Hypervisor with ID '{id}' could not be found."),
            )
        })
}

async fn hypervisor_show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin_h(&ctx)?;
    let n = node_by_id(&state, &id, mv)?;
    let mut v = hypervisor_json(&state, &n, true, mv)?;
    with_servers(&state, &mut v, &n, &q, mv)?;
    Ok(axum::Json(json!({ "hypervisor": v })))
}

async fn hypervisor_uptime(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin_h(&ctx)?;
    let n = node_by_id(&state, &id, mv)?;
    let mut v = hypervisor_json(&state, &n, false, mv)?;
    let up = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    v["uptime"] = json!(format!(
        " up {} s",
        up.split_whitespace().next().unwrap_or("0")
    ));
    Ok(axum::Json(json!({"hypervisor": v})))
}

/// `/search` and `/{pattern}/servers` are replaced by query parameters at
/// 2.53.
fn gone_at_253(mv: Mv) -> Result<(), ApiError> {
    if mv.at_least(53) {
        Err(super::no_such_resource())
    } else {
        Ok(())
    }
}

/// The nodes whose name contains `pattern`; Nova's 404 when none does.
fn matching(state: &AppState, pattern: &str) -> Result<Vec<ComputeNode>, ApiError> {
    let nodes: Vec<ComputeNode> = state
        .store
        .list::<ComputeNode>(&StoreQuery::all())?
        .into_iter()
        .filter(|n| n.id.contains(pattern))
        .collect();
    if nodes.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("No hypervisor matching '{pattern}' could be found."),
        ));
    }
    Ok(nodes)
}

async fn hypervisor_search(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(pattern): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    gone_at_253(mv)?;
    require_admin_h(&ctx)?;
    let list: Vec<Value> = matching(&state, &pattern)?
        .iter()
        .map(|n| hypervisor_json(&state, n, false, mv))
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(json!({"hypervisors": list})))
}

async fn hypervisor_servers(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(pattern): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    gone_at_253(mv)?;
    require_admin_h(&ctx)?;
    let mut list = Vec::new();
    for n in matching(&state, &pattern)? {
        let mut v = hypervisor_json(&state, &n, false, mv)?;
        let servers: Vec<Value> = state
            .store
            .list::<Server>(&StoreQuery::parent(&n.id))?
            .iter()
            .map(|s| json!({"uuid": s.id, "name": super::common::instance_name(&s.id)}))
            .collect();
        if !servers.is_empty() {
            v["servers"] = json!(servers);
        }
        list.push(v);
    }
    Ok(axum::Json(json!({"hypervisors": list})))
}

async fn statistics(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    require_admin_h(&ctx)?;
    let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    let reserved_ram = state.compute.config.reserved_host_memory_mb;
    let mut t = json!({"count": nodes.len(), "current_workload": 0, "disk_available_least": 0,
        "free_disk_gb": 0, "free_ram_mb": 0, "local_gb": 0, "local_gb_used": 0, "memory_mb": 0,
        "memory_mb_used": 0, "running_vms": 0, "vcpus": 0, "vcpus_used": 0});
    let add = |t: &mut Value, k: &str, n: i64| {
        t[k] = json!(t[k].as_i64().unwrap_or(0) + n);
    };
    for n in &nodes {
        let (vc, ram, disk, running) = used(&state, &n.id)?;
        add(&mut t, "vcpus", n.vcpus as i64);
        add(&mut t, "vcpus_used", vc as i64);
        add(&mut t, "memory_mb", n.memory_mb as i64);
        add(&mut t, "memory_mb_used", (ram + reserved_ram) as i64);
        add(
            &mut t,
            "free_ram_mb",
            n.memory_mb as i64 - ram as i64 - reserved_ram as i64,
        );
        add(&mut t, "local_gb", n.disk_gb as i64);
        add(&mut t, "local_gb_used", disk as i64);
        add(&mut t, "free_disk_gb", n.disk_gb as i64 - disk as i64);
        add(
            &mut t,
            "disk_available_least",
            n.disk_gb as i64 - disk as i64,
        );
        add(&mut t, "running_vms", running as i64);
    }
    Ok(axum::Json(json!({"hypervisor_statistics": t})))
}

// ---- availability zones -----------------------------------------------------------------

async fn zones(State(state): State<AppState>, _ctx: Ctx) -> Result<axum::Json<Value>, ApiError> {
    let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    let mut zones: BTreeMap<String, bool> = BTreeMap::new();
    for n in &nodes {
        let z = zone_of(&aggs, &n.id);
        let up = is_up(&state, n) && !n.disabled;
        let e = zones.entry(z).or_insert(false);
        *e |= up;
    }
    for a in &aggs {
        if let Some(z) = &a.availability_zone
            && !a.hosts.is_empty()
        {
            zones.entry(z.clone()).or_insert(false);
        }
    }
    // Every edge site of this controller is a zone of its own.
    for (name, up) in state.sites.zones(&state.store)? {
        *zones.entry(name).or_insert(false) |= up;
    }
    let list: Vec<Value> = zones
        .iter()
        .map(|(z, up)| json!({"zoneName": z, "zoneState": {"available": up}, "hosts": null}))
        .collect();
    Ok(axum::Json(json!({"availabilityZoneInfo": list})))
}

async fn zones_detail(
    State(state): State<AppState>,
    ctx: Ctx,
) -> Result<axum::Json<Value>, ApiError> {
    if !ctx.is_admin() {
        return Err(policy_denied("os_compute_api:os-availability-zone:detail"));
    }
    let aggs = state.store.list::<Aggregate>(&StoreQuery::all())?;
    let nodes = state.store.list::<ComputeNode>(&StoreQuery::all())?;
    let mut zones: BTreeMap<String, (bool, serde_json::Map<String, Value>)> = BTreeMap::new();
    for n in &nodes {
        let z = zone_of(&aggs, &n.id);
        let up = is_up(&state, n);
        let e = zones.entry(z).or_insert((false, serde_json::Map::new()));
        e.0 |= up && !n.disabled;
        e.1.insert(
            n.id.clone(),
            json!({"nova-compute": {"available": up, "active": !n.disabled, "updated_at": iso_naive(last_seen(&state, n))}}),
        );
    }
    for (name, up) in state.sites.zones(&state.store)? {
        zones
            .entry(name)
            .or_insert((false, serde_json::Map::new()))
            .0 |= up;
    }
    let mut list: Vec<Value> = zones
        .into_iter()
        .map(|(z, (up, hosts))| json!({"zoneName": z, "zoneState": {"available": up}, "hosts": hosts}))
        .collect();
    let now = iso_naive(now_us());
    list.push(
        json!({"zoneName": "internal", "zoneState": {"available": true}, "hosts": {
            controller_host(): {
                "nova-scheduler": {"available": true, "active": true, "updated_at": now},
                "nova-conductor": {"available": true, "active": true, "updated_at": now},
            }
        }}),
    );
    Ok(axum::Json(json!({"availabilityZoneInfo": list})))
}
