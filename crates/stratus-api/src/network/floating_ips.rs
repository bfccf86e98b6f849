//! Floating IPs (`/v2.0/floatingips`): an address of an external network,
//! held by a port with device_owner `network:floatingip` (owned by no
//! project, as in Neutron), mapped to a fixed IP of a port. The router
//! that carries the mapping (`router_id`) is found when the floating IP
//! is associated: the router with its gateway on the floating network and
//! an interface on the fixed IP's subnet.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{self, Cidr, Ip};
use super::model::{FixedIp, FloatingIp, Network, Port, Router as L3Router, Std, Subnet};
use super::networks::{self, external_for};
use super::routers::{self, OWNER_FLOATINGIP};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_str, owns, reply, require_member,
    require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/floatingips", get(list).post(create))
        .route("/floatingips/{id}", get(show).put(update).delete(delete))
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found(
        "FloatingIPNotFound",
        format!("Floating IP {id} could not be found"),
    )
}

/// Neutron's `BadRequest(resource='floatingip')`.
fn bad(msg: impl std::fmt::Display) -> NetError {
    NetError::bad("BadRequest", format!("Bad floatingip request: {msg}."))
}

fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<FloatingIp> {
    match tx.get::<FloatingIp>(id)? {
        Some(f) if owns(ctx, &f.project_id) => Ok(f),
        _ => Err(not_found(id)),
    }
}

/// The router that connects `subnet` (of the port) to the external
/// network `ext_net`: its gateway is on `ext_net` and it has an interface
/// on `subnet` (one whose address is the subnet's gateway first).
fn router_for(tx: &Tx, port: &Port, subnet: &Subnet, ext_net: &str) -> NetResult<String> {
    let mut first = None;
    for p in tx.list::<Port>(&SQ::parent(&port.network_id))? {
        if p.device_owner != routers::OWNER_INTERFACE {
            continue;
        }
        let Some(f) = p.fixed_ips.iter().find(|f| f.subnet_id == subnet.id) else {
            continue;
        };
        let reaches = tx
            .get::<L3Router>(&p.device_id)?
            .and_then(|r| r.gateway)
            .is_some_and(|g| g.network_id == ext_net);
        if !reaches {
            continue;
        }
        if subnet.gateway_ip.as_deref() == Some(f.ip_address.as_str()) {
            return Ok(p.device_id);
        }
        first.get_or_insert(p.device_id);
    }
    first.ok_or_else(|| {
        NetError::not_found(
            "ExternalGatewayForFloatingIPNotFound",
            format!(
                "External network {ext_net} is not reachable from subnet {}.  Therefore, cannot associate Port {} with a Floating IP.",
                subnet.id, port.id
            ),
        )
    })
}

fn is_v4(ip: &str) -> bool {
    Ip::parse(ip).is_some_and(|i| !i.v6)
}

/// Maps `f` to `port_id` (and `fixed_ip`, or the port's only IPv4
/// address), finding the router; runs in `tx`.
pub(super) fn associate(
    tx: &Tx,
    ctx: &Ctx,
    f: &mut FloatingIp,
    port_id: &str,
    fixed_ip: Option<String>,
) -> NetResult<()> {
    let port = tx.get::<Port>(port_id)?.ok_or_else(|| {
        NetError::not_found(
            "PortNotFound",
            format!("Port {port_id} could not be found."),
        )
    })?;
    if port.project_id != f.project_id && !ctx.is_admin() {
        if !owns(ctx, &port.project_id) {
            return Err(NetError::not_found(
                "PortNotFound",
                format!("Port {port_id} could not be found."),
            ));
        }
        return Err(bad(format!(
            "Cannot process floating IP association with Port {port_id}, since that port is owned by a different project"
        )));
    }
    if port.device_owner.starts_with("network:") {
        return Err(bad(format!(
            "Port {port_id} is unable to be assigned a floating IP"
        )));
    }
    let fixed: FixedIp = match fixed_ip {
        Some(ip) => {
            if !is_v4(&ip) {
                return Err(bad(format!(
                    "Cannot process floating IP association with {ip}, since that is not an IPv4 address"
                )));
            }
            let want = Ip::parse(&ip);
            port.fixed_ips
                .iter()
                .find(|x| Ip::parse(&x.ip_address) == want)
                .cloned()
                .ok_or_else(|| bad(format!("Port {port_id} does not have fixed ip {ip}")))?
        }
        None => {
            let v4: Vec<&FixedIp> = port
                .fixed_ips
                .iter()
                .filter(|x| is_v4(&x.ip_address))
                .collect();
            match v4.as_slice() {
                [] => {
                    return Err(bad(format!(
                        "Cannot add floating IP to port {port_id} that has no fixed IPv4 addresses"
                    )));
                }
                [one] => (*one).clone(),
                _ => {
                    return Err(bad(format!(
                        "Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 address when assigning a floating IP"
                    )));
                }
            }
        }
    };
    let subnet = tx
        .get::<Subnet>(&fixed.subnet_id)?
        .ok_or_else(|| super::subnets::not_found(&fixed.subnet_id))?;
    let router_id = router_for(tx, &port, &subnet, &f.floating_network_id)?;
    if let Some(other) = tx.list::<FloatingIp>(&SQ::all())?.into_iter().find(|o| {
        o.id != f.id
            && o.floating_network_id == f.floating_network_id
            && o.port_id.as_deref() == Some(port_id)
            && o.fixed_ip_address.as_deref() == Some(fixed.ip_address.as_str())
    }) {
        return Err(NetError::conflict(
            "FloatingIPPortAlreadyAssociated",
            format!(
                "Cannot associate floating IP {} ({}) with port {port_id} using fixed IP {}, as that fixed IP already has a floating IP on external network {}.",
                f.floating_ip_address, f.id, fixed.ip_address, other.floating_network_id
            ),
        ));
    }
    f.port_id = Some(port_id.to_string());
    f.fixed_ip_address = Some(fixed.ip_address);
    f.router_id = Some(router_id);
    Ok(())
}

pub(super) fn disassociate(f: &mut FloatingIp) {
    f.port_id = None;
    f.fixed_ip_address = None;
    f.router_id = None;
}

/// Disassociates the floating IPs of port `port_id` (it is being
/// deleted); runs in the deleting transaction.
pub(super) fn disassociate_port(tx: &Tx, port_id: &str) -> NetResult<()> {
    for mut f in tx.list::<FloatingIp>(&SQ::all())? {
        if f.port_id.as_deref() == Some(port_id) {
            disassociate(&mut f);
            f.std.touch();
            tx.update(&f)?;
        }
    }
    Ok(())
}

pub(super) async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_floatingip")?;
    let items: Vec<Value> = state
        .store
        .list::<FloatingIp>(&SQ::all())?
        .iter()
        .filter(|f| owns(&ctx, &f.project_id))
        .map(FloatingIp::render)
        .collect();
    list_answer(&state, "floatingips", "floatingips", items, &q)
}

pub(super) async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_floatingip")?;
    let f = match state.store.get::<FloatingIp>(&id)? {
        Some(f) if owns(&ctx, &f.project_id) => f,
        _ => return Err(not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "floatingip": select_fields(f.render(), &fields_of(&q)) }),
    ))
}

const CREATE_ATTRS: &[&str] = &[
    "floating_network_id",
    "floating_ip_address",
    "subnet_id",
    "port_id",
    "fixed_ip_address",
    "description",
    "project_id",
    "tenant_id",
    "qos_policy_id",
    "dns_name",
    "dns_domain",
];

fn parse_ip(attr: &str, s: &str) -> NetResult<Ip> {
    Ip::parse(s).ok_or_else(|| {
        NetError::bad_request(format!(
            "Invalid input for {attr}. Reason: '{s}' is not a valid IP address."
        ))
    })
}

/// Picks and claims the floating address on `net` for port `port_id`.
fn floating_address(
    tx: &Tx,
    net: &Network,
    port_id: &str,
    subnet_id: Option<&str>,
    ip: Option<Ip>,
) -> NetResult<FixedIp> {
    let subnets: Vec<Subnet> = tx
        .list::<Subnet>(&SQ::parent(&net.id))?
        .into_iter()
        .filter(|s| s.ip_version == 4)
        .collect();
    if subnets.is_empty() {
        return Err(bad(format!(
            "Network {} does not contain any IPv4 subnet",
            net.id
        )));
    }
    let cidr = |s: &Subnet| Cidr::parse_loose(&s.cidr).map(|(c, _)| c);
    let candidates: Vec<&Subnet> = match (subnet_id, ip) {
        (Some(sid), _) => {
            let s = subnets.iter().find(|s| s.id == sid).ok_or_else(|| {
                NetError::invalid(format!(
                    "subnet {sid} is not an IPv4 subnet of network {}",
                    net.id
                ))
            })?;
            vec![s]
        }
        (None, Some(ip)) => {
            let s = subnets
                .iter()
                .find(|s| cidr(s).is_some_and(|c| c.contains(ip)))
                .ok_or_else(|| {
                    NetError::bad(
                        "InvalidIpForNetwork",
                        format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."),
                    )
                })?;
            vec![s]
        }
        (None, None) => subnets.iter().collect(),
    };
    if let Some(ip) = ip {
        let s = candidates[0];
        let c = cidr(s).ok_or_else(|| NetError::invalid("stored cidr"))?;
        if !c.contains(ip) || ip == c.first() || ip == c.last() {
            return Err(NetError::bad(
                "InvalidIpForSubnet",
                format!("IP address {ip} is not a valid IP for the specified subnet."),
            ));
        }
        if s.gateway_ip.as_deref().and_then(Ip::parse) == Some(ip) {
            return Err(NetError::conflict(
                "IpAddressAlreadyAllocated",
                format!(
                    "IP address {ip} already allocated in subnet {} (it is the gateway)",
                    s.id
                ),
            ));
        }
        ipam::claim(tx, s, ip, port_id)?;
        return Ok(FixedIp {
            subnet_id: s.id.clone(),
            ip_address: ip.to_string(),
        });
    }
    for s in candidates {
        if let Some(ip) = ipam::next_free(tx, s)? {
            ipam::claim(tx, s, ip, port_id)?;
            return Ok(FixedIp {
                subnet_id: s.id.clone(),
                ip_address: ip.to_string(),
            });
        }
    }
    Err(NetError::bad(
        "ExternalIpAddressExhausted",
        format!(
            "Unable to find any IP address on external network {}.",
            net.id
        ),
    ))
}

pub(super) async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_floatingip")?;
    let m = resource_body(body, "floatingip", CREATE_ATTRS)?;
    let project = target_project(&ctx, &m, "create_floatingip")?;
    for a in ["qos_policy_id", "dns_name", "dns_domain"] {
        if m.get(a).is_some_and(|v| !v.is_null() && v != &json!("")) {
            return Err(NetError::bad_request(format!(
                "{a} is not supported by this cloud"
            )));
        }
    }
    let net_id = opt_str(&m, "floating_network_id")?.ok_or_else(|| {
        NetError::bad_request(
            "Failed to parse request. Required attribute 'floating_network_id' not specified",
        )
    })?;
    let address = opt_str(&m, "floating_ip_address")?
        .map(|s| parse_ip("floating_ip_address", &s))
        .transpose()?;
    if address.is_some() && !ctx.is_admin() {
        return Err(NetError::policy("create_floatingip:floating_ip_address"));
    }
    let subnet_id = opt_str(&m, "subnet_id")?;
    let port_id = opt_str(&m, "port_id")?;
    let fixed_ip = opt_str(&m, "fixed_ip_address")?;
    if let Some(ip) = &fixed_ip {
        parse_ip("fixed_ip_address", ip)?;
        if port_id.is_none() {
            return Err(bad(
                "fixed_ip_address cannot be specified without a port_id",
            ));
        }
    }
    let description = opt_str(&m, "description")?.unwrap_or_default();
    let f = state.store.write(|tx| {
        let net = match tx.get::<Network>(&net_id)? {
            Some(n) if networks::visible(&ctx, &n) => n,
            _ => return Err(networks::not_found(&net_id)),
        };
        if !external_for(&net, &project) {
            return Err(bad(format!(
                "Network {net_id} is not a valid external network"
            )));
        }
        super::quotas::check(tx, &project, "floatingip", 1)?;
        let id = new_id();
        let port_uuid = new_id();
        let fixed = floating_address(tx, &net, &port_uuid, subnet_id.as_deref(), address)?;
        routers::service_port(
            tx,
            &net,
            &port_uuid,
            "",
            &id,
            OWNER_FLOATINGIP,
            vec![fixed.clone()],
        )?;
        let mut f = FloatingIp {
            id,
            project_id: project.clone(),
            floating_network_id: net.id.clone(),
            floating_ip_address: fixed.ip_address,
            floating_port_id: port_uuid,
            port_id: None,
            fixed_ip_address: None,
            router_id: None,
            std: Std::new(description),
        };
        if let Some(p) = &port_id {
            associate(tx, &ctx, &mut f, p, fixed_ip.clone())?;
        }
        tx.insert(&f)?;
        Ok::<_, NetError>(f)
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "floatingip": f.render() }),
    ))
}

const UPDATE_ATTRS: &[&str] = &[
    "port_id",
    "fixed_ip_address",
    "description",
    "qos_policy_id",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_floatingip")?;
    let m: Map<String, Value> = resource_body(body, "floatingip", UPDATE_ATTRS)?;
    if m.get("qos_policy_id").is_some_and(|v| !v.is_null()) {
        return Err(NetError::bad_request(
            "qos_policy_id is not supported by this cloud",
        ));
    }
    let port_id = opt_str(&m, "port_id")?;
    let fixed_ip = opt_str(&m, "fixed_ip_address")?;
    if let Some(ip) = &fixed_ip {
        parse_ip("fixed_ip_address", ip)?;
        if port_id.is_none() {
            return Err(bad(
                "fixed_ip_address cannot be specified without a port_id",
            ));
        }
    }
    let f = state.store.write(|tx| {
        let mut f = find_in(tx, &ctx, &id)?;
        if let Some(v) = opt_str(&m, "description")? {
            f.std.description = v;
        }
        if m.contains_key("port_id") {
            match &port_id {
                Some(p) => associate(tx, &ctx, &mut f, p, fixed_ip.clone())?,
                None => disassociate(&mut f),
            }
        }
        f.std.touch();
        tx.update(&f)?;
        Ok::<_, NetError>(f)
    })?;
    Ok(reply(StatusCode::OK, json!({ "floatingip": f.render() })))
}

pub(super) async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_floatingip")?;
    state.store.write(|tx| {
        let f = find_in(tx, &ctx, &id)?;
        routers::drop_port(tx, &f.floating_port_id)?;
        tx.delete::<FloatingIp>(&f.id)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}
