//! A server's network interfaces after boot: `os-interface` (list, show,
//! attach, detach), `os-security-groups` on a server, and the
//! `addSecurityGroup` / `removeSecurityGroup` actions. The ports are the
//! network service's; the server keeps its copy (`nics`), and the node
//! agent wires the change into the running workload on its next sync.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::common::{check_locked, fetch, fetch_tx, require_member};
use super::model::Server;
use super::nics::nova_error;
use super::states::vm;
use super::{Mv, body};
use crate::identity::policy::Ctx;
use crate::network::model::Port;
use crate::network::nova::{self, NicRequest};
use crate::timeutil::now_us;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/servers/{id}/os-interface", get(list).post(attach))
        .route(
            "/servers/{id}/os-interface/{port}",
            get(show).delete(detach),
        )
        .route("/servers/{id}/os-security-groups", get(groups))
}

fn render(p: &Port, mv: Mv) -> Value {
    let mut v = json!({
        "port_state": p.status,
        "fixed_ips": p.fixed_ips,
        "port_id": p.id,
        "net_id": p.network_id,
        "mac_addr": p.mac_address,
    });
    if mv.at_least(70) {
        v["tag"] = Value::Null;
    }
    v
}

fn not_attached(server: &str, port: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("Port {port} is not attached to instance {server}"),
    )
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    super::common::require_reader(&ctx, "os_compute_api:os-attach-interfaces:list")?;
    let s = fetch(&state, &ctx, &id)?;
    let mut out = Vec::new();
    for n in &s.nics {
        if let Some(p) = state.store.get::<Port>(&n.port_id)? {
            out.push(render(&p, mv));
        }
    }
    Ok(axum::Json(json!({"interfaceAttachments": out})))
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path((id, port)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    super::common::require_reader(&ctx, "os_compute_api:os-attach-interfaces:show")?;
    let s = fetch(&state, &ctx, &id)?;
    if !s.nics.iter().any(|n| n.port_id == port) {
        return Err(not_attached(&id, &port));
    }
    let p = state
        .store
        .get::<Port>(&port)?
        .ok_or_else(|| not_attached(&id, &port))?;
    Ok(axum::Json(json!({"interfaceAttachment": render(&p, mv)})))
}

/// Nova lets interfaces change while the server is active, paused,
/// stopped or suspended, and no task runs.
fn may_change(s: &Server, action: &str) -> Result<(), ApiError> {
    let ok = s.task_state.is_none()
        && matches!(
            s.vm_state.as_str(),
            vm::ACTIVE | vm::PAUSED | vm::STOPPED | vm::SUSPENDED
        );
    if ok {
        Ok(())
    } else {
        Err(super::states::wrong_state(action, s))
    }
}

async fn attach(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
    raw: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    require_member(&ctx, "os_compute_api:os-attach-interfaces:create")?;
    let b = body(&raw)?;
    let a = b.get("interfaceAttachment").and_then(Value::as_object).ok_or_else(|| {
        ApiError::bad_request(
            "Invalid input for field/attribute interfaceAttachment. 'interfaceAttachment' is a required property",
        )
    })?;
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match a.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(v) => Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute {k}. Value: {v}. It is not a valid value"
            ))),
        }
    };
    let port_id = text("port_id")?;
    let net_id = text("net_id")?;
    let fixed_ip = match a.get("fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(l)) if l.len() == 1 => l[0]
            .get("ip_address")
            .and_then(Value::as_str)
            .map(str::to_string),
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "Invalid input for field/attribute fixed_ips. Value: {v}. It must hold one address"
            )));
        }
    };
    if let Some(ip) = &fixed_ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(ApiError::bad_request(format!(
            "Invalid fixed IP address ({ip})"
        )));
    }
    if port_id.is_some() && (net_id.is_some() || fixed_ip.is_some()) {
        return Err(ApiError::bad_request(
            "Must not input both network_id and port_id",
        ));
    }
    if port_id.is_none() && net_id.is_none() {
        return Err(ApiError::bad_request("Must input network_id or port_id"));
    }
    let at_site = match state.store.get::<Server>(&id)?.and_then(|s| s.requested_az) {
        Some(z) => state.sites.is_site_zone(&state.store, &z)?,
        None => false,
    };
    let (s, port) = state.store.write(|tx| {
        let mut s = fetch_tx(tx, &ctx, &id)?;
        check_locked(&ctx, &s)?;
        may_change(&s, "attach_interface")?;
        let zone = s
            .availability_zone
            .clone()
            .unwrap_or_else(|| super::zones::DEFAULT_ZONE.to_string());
        let nic = nova::attach(
            tx,
            &ctx,
            &s.project_id,
            &s.id,
            &zone,
            &s.nics,
            NicRequest {
                network_id: net_id.clone(),
                port_id: port_id.clone(),
                fixed_ip: fixed_ip.clone(),
            },
        )
        .map_err(nova_error)?;
        if at_site {
            nova::ensure_dhcp_ports(tx, std::slice::from_ref(&nic)).map_err(nova_error)?;
        }
        if let Some(h) = &s.host {
            nova::bind(tx, std::slice::from_ref(&nic), h).map_err(nova_error)?;
        }
        let port = tx
            .get::<Port>(&nic.port_id)?
            .ok_or_else(|| ApiError::internal("the new port vanished"))?;
        s.nics.push(nic);
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok::<_, ApiError>((s, port))
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(axum::Json(
        json!({"interfaceAttachment": render(&port, mv)}),
    ))
}

async fn detach(
    State(state): State<AppState>,
    ctx: Ctx,
    Path((id, port)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require_member(&ctx, "os_compute_api:os-attach-interfaces:delete")?;
    let s = state.store.write(|tx| {
        let mut s = fetch_tx(tx, &ctx, &id)?;
        check_locked(&ctx, &s)?;
        may_change(&s, "detach_interface")?;
        let Some(pos) = s.nics.iter().position(|n| n.port_id == port) else {
            return Err(not_attached(&id, &port));
        };
        let nic = s.nics.remove(pos);
        nova::unplug(tx, std::slice::from_ref(&nic)).map_err(nova_error)?;
        s.updated_us = now_us();
        tx.update(&s)?;
        Ok::<_, ApiError>(s)
    })?;
    state.compute.notify(s.host.as_deref());
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The security groups of a server's ports, in the shape of the
/// (deprecated) `os-security-groups` proxy.
async fn groups(
    State(state): State<AppState>,
    ctx: Ctx,
    mv: Mv,
    Path(id): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    if mv.at_least(36) {
        return Err(super::no_such_resource());
    }
    super::common::require_reader(&ctx, "os_compute_api:os-security-groups:list")?;
    let s = fetch(&state, &ctx, &id)?;
    let mut ids: Vec<String> = Vec::new();
    for n in &s.nics {
        if let Some(p) = state.store.get::<Port>(&n.port_id)? {
            ids.extend(p.security_groups);
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::new();
    for g in ids {
        if let Some(g) = state
            .store
            .get::<crate::network::model::SecurityGroup>(&g)?
        {
            out.push(json!({
                "id": g.id,
                "name": g.name,
                "description": g.std.description,
                "tenant_id": g.project_id,
                "rules": [],
            }));
        }
    }
    Ok(axum::Json(json!({"security_groups": out})))
}
