//! Routers (`/v2.0/routers`): the external gateway (`ext-gw-mode`), static
//! routes (`extraroute`, `extraroute-atomic`) and interfaces
//! (`add_router_interface` / `remove_router_interface`).
//!
//! A router's ports are ordinary ports: its interfaces have device_owner
//! `network:router_interface` and the router as `device_id`; its gateway
//! port (`network:router_gateway`, owned by no project, as in Neutron)
//! holds its addresses on the external network. Every operation, ports
//! and addresses included, is one store transaction: a refused request
//! leaves nothing behind.

use std::collections::HashSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{self, Cidr, Ip};
use super::model::{FixedIp, FloatingIp, Gateway, HostRoute, Network, Port, Router, Std, Subnet};
use super::networks::{self, external_for};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_bool, opt_str, owns, reply,
    require_member, require_reader, resource_body, select_fields, subnets, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

pub use super::model::{OWNER_FLOATINGIP, OWNER_GATEWAY, OWNER_INTERFACE};

/// Neutron's `max_routes`.
const MAX_ROUTES: usize = 30;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/routers", get(list).post(create))
        .route("/routers/{id}", get(show).put(update).delete(delete))
        .route("/routers/{id}/add_router_interface", put(add_interface))
        .route(
            "/routers/{id}/remove_router_interface",
            put(remove_interface),
        )
        .route("/routers/{id}/add_extraroutes", put(add_extraroutes))
        .route("/routers/{id}/remove_extraroutes", put(remove_extraroutes))
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found("RouterNotFound", format!("Router {id} could not be found"))
}

/// Neutron's `BadRequest(resource='router')`.
fn bad(msg: impl std::fmt::Display) -> NetError {
    NetError::bad("BadRequest", format!("Bad router request: {msg}."))
}

fn port_not_found(id: &str) -> NetError {
    NetError::not_found("PortNotFound", format!("Port {id} could not be found."))
}

/// The router `id` if the caller's project owns it (or it is admin).
pub fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<Router> {
    match tx.get::<Router>(id)? {
        Some(r) if owns(ctx, &r.project_id) => Ok(r),
        _ => Err(not_found(id)),
    }
}

/// The interface ports of router `id`.
pub fn interfaces(tx: &Tx, id: &str) -> NetResult<Vec<Port>> {
    Ok(tx
        .list::<Port>(&SQ::all())?
        .into_iter()
        .filter(|p| p.device_id == id && p.device_owner == OWNER_INTERFACE)
        .collect())
}

fn cidr_of(s: &Subnet) -> NetResult<Cidr> {
    Cidr::parse_loose(&s.cidr)
        .map(|(c, _)| c)
        .ok_or_else(|| NetError::invalid(format!("stored cidr {}", s.cidr)))
}

fn random_mac() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// Creates a port the network service itself uses (router interface or
/// gateway, floating IP) holding `fixed_ips` (already claimed by the
/// caller in the same transaction under `id`).
pub(super) fn service_port(
    tx: &Tx,
    net: &Network,
    id: &str,
    project: &str,
    device_id: &str,
    device_owner: &str,
    fixed_ips: Vec<FixedIp>,
) -> NetResult<Port> {
    let macs: HashSet<String> = tx
        .list::<Port>(&SQ::parent(&net.id))?
        .into_iter()
        .map(|p| p.mac_address)
        .collect();
    let mut mac = random_mac();
    while macs.contains(&mac) {
        mac = random_mac();
    }
    let port = Port {
        id: id.to_string(),
        network_id: net.id.clone(),
        project_id: project.to_string(),
        name: String::new(),
        admin_state_up: true,
        mac_address: mac,
        fixed_ips,
        device_id: device_id.to_string(),
        device_owner: device_owner.to_string(),
        security_groups: Vec::new(),
        port_security_enabled: false,
        allowed_address_pairs: Vec::new(),
        host_id: String::new(),
        vnic_type: "normal".into(),
        profile: Value::Null,
        // No agent reports on these: the router is ACTIVE as soon as it
        // is written, and so are its ports; a floating IP's port is
        // "N/A" as in Neutron.
        status: if device_owner == OWNER_FLOATINGIP {
            "N/A".into()
        } else {
            "ACTIVE".into()
        },
        std: Std::new(String::new()),
    };
    tx.insert(&port)?;
    Ok(port)
}

pub(super) use super::ipam::drop_port;

// ---- external gateway -------------------------------------------------------

/// A requested external gateway.
pub(super) struct GwReq {
    pub network_id: String,
    pub enable_snat: Option<bool>,
    /// (subnet_id, ip_address) pairs, when asked for.
    pub fixed_ips: Option<Vec<(Option<String>, Option<Ip>)>>,
}

fn gw_invalid(reason: impl std::fmt::Display) -> NetError {
    NetError::bad_request(format!(
        "Invalid input for external_gateway_info. Reason: {reason}."
    ))
}

/// Parses `external_gateway_info` (`null` or `{}`: no gateway), with
/// Neutron's policy: `enable_snat` and `external_fixed_ips` are for
/// admins.
fn parse_gw(ctx: &Ctx, v: &Value, action: &str) -> NetResult<Option<GwReq>> {
    let m = match v {
        Value::Null => return Ok(None),
        Value::Object(m) if m.is_empty() => return Ok(None),
        Value::Object(m) => m,
        _ => return Err(gw_invalid(format!("'{v}' is not a dictionary"))),
    };
    for k in m.keys() {
        if ![
            "network_id",
            "enable_snat",
            "external_fixed_ips",
            "qos_policy_id",
        ]
        .contains(&k.as_str())
        {
            return Err(gw_invalid(format!("Unrecognized key '{k}'")));
        }
    }
    if m.get("qos_policy_id").is_some_and(|v| !v.is_null()) {
        return Err(NetError::bad_request(
            "qos_policy_id is not supported by this cloud",
        ));
    }
    let network_id = match m.get("network_id") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(gw_invalid("network_id is required")),
    };
    let enable_snat = opt_bool(m, "enable_snat")?;
    if enable_snat.is_some() && !ctx.is_admin() {
        return Err(NetError::policy(&format!(
            "{action}:external_gateway_info:enable_snat"
        )));
    }
    let fixed_ips = match m.get("external_fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            if !ctx.is_admin() {
                return Err(NetError::policy(&format!(
                    "{action}:external_gateway_info:external_fixed_ips"
                )));
            }
            let mut out = Vec::new();
            for f in items {
                let sid = f
                    .get("subnet_id")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let ip =
                    match f.get("ip_address") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_str().and_then(Ip::parse).ok_or_else(|| {
                            gw_invalid(format!("'{v}' is not a valid IP address"))
                        })?),
                    };
                if sid.is_none() && ip.is_none() {
                    return Err(gw_invalid(
                        "an external fixed IP needs a subnet_id or an ip_address",
                    ));
                }
                out.push((sid, ip));
            }
            Some(out)
        }
        Some(v) => return Err(gw_invalid(format!("'{v}' is not a list"))),
    };
    Ok(Some(GwReq {
        network_id,
        enable_snat,
        fixed_ips,
    }))
}

/// Floating IPs that depend on router `id`.
fn floating_ips_of(tx: &Tx, id: &str) -> NetResult<Vec<FloatingIp>> {
    Ok(tx
        .list::<FloatingIp>(&SQ::all())?
        .into_iter()
        .filter(|f| f.router_id.as_deref() == Some(id))
        .collect())
}

/// Claims the gateway's addresses on `net` for port `port_id`.
fn gateway_ips(
    tx: &Tx,
    net: &Network,
    port_id: &str,
    wanted: Option<Vec<(Option<String>, Option<Ip>)>>,
) -> NetResult<Vec<FixedIp>> {
    let subnets = tx.list::<Subnet>(&SQ::parent(&net.id))?;
    let mut out = Vec::new();
    let mut take = |s: &Subnet, ip: Ip| -> NetResult<()> {
        ipam::claim(tx, s, ip, port_id)?;
        out.push(FixedIp {
            subnet_id: s.id.clone(),
            ip_address: ip.to_string(),
        });
        Ok(())
    };
    match wanted {
        Some(list) if !list.is_empty() => {
            for (sid, ip) in list {
                let sub = match (&sid, ip) {
                    (Some(sid), _) => subnets.iter().find(|s| &s.id == sid).ok_or_else(|| {
                        NetError::invalid(format!(
                            "subnet {sid} is not a subnet of external network {}",
                            net.id
                        ))
                    })?,
                    (None, Some(ip)) => subnets
                        .iter()
                        .find(|s| cidr_of(s).is_ok_and(|c| c.contains(ip)))
                        .ok_or_else(|| {
                            NetError::bad(
                                "InvalidIpForNetwork",
                                format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."),
                            )
                        })?,
                    (None, None) => unreachable!("checked when parsed"),
                };
                match ip {
                    Some(ip) => {
                        let c = cidr_of(sub)?;
                        if !c.contains(ip) {
                            return Err(NetError::bad(
                                "InvalidIpForSubnet",
                                format!(
                                    "IP address {ip} is not a valid IP for the specified subnet."
                                ),
                            ));
                        }
                        if sub.gateway_ip.as_deref().and_then(Ip::parse) == Some(ip) {
                            return Err(bad(format!(
                                "External IP {ip} is the same as the gateway IP"
                            )));
                        }
                        take(sub, ip)?;
                    }
                    None => {
                        let ip = ipam::next_free(tx, sub)?.ok_or_else(|| {
                            NetError::conflict(
                                "IpAddressGenerationFailure",
                                format!("No more IP addresses available for subnet {}.", sub.id),
                            )
                        })?;
                        take(sub, ip)?;
                    }
                }
            }
        }
        _ => {
            // One address from the first IPv4 subnet that has one (and
            // one from the first IPv6 subnet); a network without
            // subnets gives a gateway without addresses, as in Neutron.
            for v in [4u8, 6] {
                let subs: Vec<&Subnet> = subnets.iter().filter(|s| s.ip_version == v).collect();
                if subs.is_empty() {
                    continue;
                }
                let mut got = false;
                for s in subs {
                    if let Some(ip) = ipam::next_free(tx, s)? {
                        take(s, ip)?;
                        got = true;
                        break;
                    }
                }
                if !got {
                    return Err(NetError::conflict(
                        "IpAddressGenerationFailure",
                        format!("No more IP addresses available on network {}.", net.id),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Sets, changes or clears router `r`'s gateway inside `tx` (the router
/// record itself is written by the caller).
/// `ctx` is the caller (None: the service itself).
pub(super) fn set_gateway(
    tx: &Tx,
    ctx: Option<&Ctx>,
    r: &mut Router,
    req: Option<GwReq>,
) -> NetResult<()> {
    let Some(req) = req else {
        if let Some(g) = r.gateway.take() {
            if !floating_ips_of(tx, &r.id)?.is_empty() {
                return Err(gw_in_use(&r.id, &g.network_id));
            }
            drop_port(tx, &g.port_id)?;
        }
        return Ok(());
    };
    let net = match tx.get::<Network>(&req.network_id)? {
        Some(n)
            if ctx.is_none_or(|c| networks::visible(c, &n)) || external_for(&n, &r.project_id) =>
        {
            n
        }
        _ => return Err(networks::not_found(&req.network_id)),
    };
    if !external_for(&net, &r.project_id) {
        return Err(bad(format!(
            "Network {} is not an external network",
            net.id
        )));
    }
    let enable_snat = req.enable_snat.unwrap_or(true);
    if let Some(g) = r.gateway.as_mut()
        && g.network_id == net.id
        && req.fixed_ips.is_none()
    {
        g.enable_snat = enable_snat;
        return Ok(());
    }
    if let Some(g) = r.gateway.take() {
        if g.network_id != net.id && !floating_ips_of(tx, &r.id)?.is_empty() {
            return Err(gw_in_use(&r.id, &g.network_id));
        }
        drop_port(tx, &g.port_id)?;
    }
    let port_id = new_id();
    let ips = gateway_ips(tx, &net, &port_id, req.fixed_ips)?;
    // The gateway's subnets must not overlap the router's interfaces.
    let gw_subnets = tx.list::<Subnet>(&SQ::parent(&net.id))?;
    for p in interfaces(tx, &r.id)? {
        for f in &p.fixed_ips {
            if let Some(s) = tx.get::<Subnet>(&f.subnet_id)? {
                for g in &gw_subnets {
                    overlap_check(&s, g)?;
                }
            }
        }
    }
    service_port(tx, &net, &port_id, "", &r.id, OWNER_GATEWAY, ips.clone())?;
    r.gateway = Some(Gateway {
        network_id: net.id.clone(),
        enable_snat,
        port_id,
        external_fixed_ips: ips,
    });
    Ok(())
}

fn gw_in_use(router: &str, net: &str) -> NetError {
    NetError::conflict(
        "RouterExternalGatewayInUseByFloatingIp",
        format!(
            "Gateway cannot be updated for router {router}, since a gateway to external network {net} is required by one or more floating IPs."
        ),
    )
}

// ---- static routes ----------------------------------------------------------

fn parse_routes(v: &Value) -> NetResult<Vec<HostRoute>> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => {
            return Err(NetError::bad_request(
                "Invalid input for routes. Reason: not a list.",
            ));
        }
    };
    let mut out: Vec<HostRoute> = Vec::new();
    for r in items {
        let (Some(d), Some(n)) = (
            r.get("destination").and_then(Value::as_str),
            r.get("nexthop").and_then(Value::as_str),
        ) else {
            return Err(NetError::bad_request(format!(
                "Invalid input for routes. Reason: Invalid data format for hostroute: '{r}'."
            )));
        };
        let (dest, _) = Cidr::parse_loose(d)
            .filter(|_| d.contains('/'))
            .ok_or_else(|| {
                NetError::bad_request(format!(
                    "Invalid input for routes. Reason: '{d}' is not a valid IP subnet."
                ))
            })?;
        let hop = Ip::parse(n).ok_or_else(|| {
            NetError::bad_request(format!(
                "Invalid input for routes. Reason: '{n}' is not a valid IP address."
            ))
        })?;
        let route = HostRoute {
            destination: dest.to_string(),
            nexthop: hop.to_string(),
        };
        if out.contains(&route) {
            return Err(NetError::bad_request(format!(
                "Invalid input for routes. Reason: Duplicate hostroute '{r}'."
            )));
        }
        out.push(route);
    }
    Ok(out)
}

/// The subnets a router is connected to (interfaces and gateway network)
/// and the addresses it holds on them.
fn connected(tx: &Tx, r: &Router) -> NetResult<(Vec<Subnet>, Vec<Ip>)> {
    let mut subs = Vec::new();
    let mut ips = Vec::new();
    for p in interfaces(tx, &r.id)? {
        for f in &p.fixed_ips {
            if let Some(s) = tx.get::<Subnet>(&f.subnet_id)? {
                subs.push(s);
            }
            ips.extend(Ip::parse(&f.ip_address));
        }
    }
    if let Some(g) = &r.gateway {
        subs.extend(tx.list::<Subnet>(&SQ::parent(&g.network_id))?);
        ips.extend(
            g.external_fixed_ips
                .iter()
                .filter_map(|f| Ip::parse(&f.ip_address)),
        );
    }
    Ok((subs, ips))
}

fn check_routes(tx: &Tx, r: &Router, routes: &[HostRoute]) -> NetResult<()> {
    if routes.len() > MAX_ROUTES {
        return Err(NetError::bad(
            "RoutesExhausted",
            format!(
                "Unable to complete operation for {}. The number of routes exceeds the maximum {MAX_ROUTES}.",
                r.id
            ),
        ));
    }
    let (subs, ips) = connected(tx, r)?;
    let cidrs: Vec<Cidr> = subs.iter().filter_map(|s| cidr_of(s).ok()).collect();
    for route in routes {
        let Some(hop) = Ip::parse(&route.nexthop) else {
            continue;
        };
        let invalid = |reason: &str| {
            NetError::bad(
                "InvalidRoutes",
                format!(
                    "Invalid format for routes: {}, {reason}",
                    serde_json::to_string(routes).unwrap_or_default()
                ),
            )
        };
        if !cidrs.iter().any(|c| c.contains(hop)) {
            return Err(invalid("the nexthop is not connected with router"));
        }
        if ips.contains(&hop) {
            return Err(invalid("the nexthop is used by router"));
        }
    }
    Ok(())
}

// ---- interfaces -------------------------------------------------------------

fn overlap_check(existing: &Subnet, new: &Subnet) -> NetResult<()> {
    let (a, b) = (cidr_of(existing)?, cidr_of(new)?);
    if a.overlaps(&b) {
        return Err(bad(format!(
            "Cidr {} of subnet {} overlaps with cidr {} of subnet {}",
            new.cidr, new.id, existing.cidr, existing.id
        )));
    }
    Ok(())
}

/// Refuses subnets already on the router or overlapping its others.
fn check_new_subnets(tx: &Tx, r: &Router, new: &[Subnet]) -> NetResult<()> {
    let new_ids: HashSet<&str> = new.iter().map(|s| s.id.as_str()).collect();
    let mut existing: Vec<Subnet> = Vec::new();
    for p in interfaces(tx, &r.id)? {
        for f in &p.fixed_ips {
            if new_ids.contains(f.subnet_id.as_str()) {
                return Err(bad(format!(
                    "Router already has a port on subnet {}",
                    f.subnet_id
                )));
            }
            if let Some(s) = tx.get::<Subnet>(&f.subnet_id)? {
                existing.push(s);
            }
        }
    }
    if let Some(g) = &r.gateway {
        existing.extend(tx.list::<Subnet>(&SQ::parent(&g.network_id))?);
    }
    for e in &existing {
        for n in new {
            overlap_check(e, n)?;
        }
    }
    Ok(())
}

/// Attaches `sub` to router `r` with a new port holding the subnet's
/// gateway address. Runs in `tx`.
pub(super) fn attach_subnet(tx: &Tx, r: &Router, sub: &Subnet) -> NetResult<Port> {
    let gw = sub
        .gateway_ip
        .as_deref()
        .and_then(Ip::parse)
        .ok_or_else(|| bad("Subnet for router interface must have a gateway IP"))?;
    check_new_subnets(tx, r, std::slice::from_ref(sub))?;
    let net = tx
        .get::<Network>(&sub.network_id)?
        .ok_or_else(|| networks::not_found(&sub.network_id))?;
    let port_id = new_id();
    if tx.exists::<super::model::IpAllocation>(&super::model::IpAllocation::key(
        &sub.id,
        &gw.to_string(),
    ))? {
        return Err(NetError::conflict(
            "IpAddressInUse",
            format!(
                "Unable to complete operation for network {}. The IP address {gw} is in use.",
                net.id
            ),
        ));
    }
    ipam::claim(tx, sub, gw, &port_id)?;
    let ips = vec![FixedIp {
        subnet_id: sub.id.clone(),
        ip_address: gw.to_string(),
    }];
    service_port(
        tx,
        &net,
        &port_id,
        &r.project_id,
        &r.id,
        OWNER_INTERFACE,
        ips,
    )
}

/// Takes an existing port as an interface of router `r`.
fn attach_port(tx: &Tx, r: &Router, mut p: Port) -> NetResult<(Port, Vec<Subnet>)> {
    if !p.device_id.is_empty() && p.device_id != r.id {
        return Err(NetError::conflict(
            "PortInUse",
            format!(
                "Unable to complete operation on port {} for network {}. Port already has an attached device {}.",
                p.id, p.network_id, p.device_id
            ),
        ));
    }
    if p.fixed_ips.is_empty() {
        return Err(bad("Router port must have at least one fixed IP"));
    }
    let mut subs = Vec::new();
    for f in &p.fixed_ips {
        subs.push(
            tx.get::<Subnet>(&f.subnet_id)?
                .ok_or_else(|| subnets::not_found(&f.subnet_id))?,
        );
    }
    check_new_subnets(tx, r, &subs)?;
    if subs.iter().filter(|s| s.ip_version == 4).count() > 1 {
        return Err(bad("Cannot have multiple IPv4 subnets on router port"));
    }
    p.device_id = r.id.clone();
    p.device_owner = OWNER_INTERFACE.into();
    p.security_groups.clear();
    p.status = "ACTIVE".into();
    p.std.touch();
    tx.update(&p)?;
    Ok((p, subs))
}

/// Refuses to take `sub` off router `r` while floating IPs or routes
/// depend on it.
fn check_detach(tx: &Tx, r: &Router, sub: &Subnet) -> NetResult<()> {
    let cidr = cidr_of(sub)?;
    for f in floating_ips_of(tx, &r.id)? {
        let inside = f
            .fixed_ip_address
            .as_deref()
            .and_then(Ip::parse)
            .is_some_and(|ip| cidr.contains(ip));
        if inside {
            return Err(NetError::conflict(
                "RouterInterfaceInUseByFloatingIP",
                format!(
                    "Router interface for subnet {} on router {} cannot be deleted, as it is required by one or more floating IPs.",
                    sub.id, r.id
                ),
            ));
        }
    }
    // A route whose nexthop only this subnet reaches.
    let others: Vec<Cidr> = connected(tx, r)?
        .0
        .iter()
        .filter(|s| s.id != sub.id)
        .filter_map(|s| cidr_of(s).ok())
        .collect();
    for route in &r.routes {
        if let Some(hop) = Ip::parse(&route.nexthop)
            && cidr.contains(hop)
            && !others.iter().any(|c| c.contains(hop))
        {
            return Err(NetError::conflict(
                "RouterInterfaceInUseByRoute",
                format!(
                    "Router interface for subnet {} on router {} cannot be deleted, as it is required by one or more routes.",
                    sub.id, r.id
                ),
            ));
        }
    }
    Ok(())
}

/// Takes `sub` off router `r`: deletes its interface port (or, for a
/// port on several subnets, the subnet's address). Returns the port.
pub(super) fn detach_subnet(tx: &Tx, r: &Router, sub: &Subnet) -> NetResult<Port> {
    let port = interfaces(tx, &r.id)?
        .into_iter()
        .find(|p| p.fixed_ips.iter().any(|f| f.subnet_id == sub.id))
        .ok_or_else(|| {
            NetError::not_found(
                "RouterInterfaceNotFoundForSubnet",
                format!("Router {} has no interface on subnet {}", r.id, sub.id),
            )
        })?;
    check_detach(tx, r, sub)?;
    if port.fixed_ips.len() > 1 {
        let mut p = port.clone();
        for f in p.fixed_ips.iter().filter(|f| f.subnet_id == sub.id) {
            ipam::release(tx, &f.subnet_id, &f.ip_address)?;
        }
        p.fixed_ips.retain(|f| f.subnet_id != sub.id);
        p.std.touch();
        tx.update(&p)?;
    } else {
        drop_port(tx, &port.id)?;
    }
    Ok(port)
}

fn interface_info(r: &Router, p: &Port, subnet_ids: Vec<String>) -> Value {
    json!({
        "id": r.id,
        "tenant_id": p.project_id,
        "project_id": p.project_id,
        "port_id": p.id,
        "network_id": p.network_id,
        "subnet_id": subnet_ids.first(),
        "subnet_ids": subnet_ids,
    })
}

/// The `subnet_id` / `port_id` of an interface request.
fn interface_body(body: &Value) -> NetResult<(Option<String>, Option<String>)> {
    let Value::Object(m) = body else {
        return Err(bad("Either subnet_id or port_id must be specified"));
    };
    let sid = opt_str(m, "subnet_id")?;
    let pid = opt_str(m, "port_id")?;
    if sid.is_none() && pid.is_none() {
        return Err(bad("Either subnet_id or port_id must be specified"));
    }
    Ok((sid, pid))
}

async fn add_interface(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "add_router_interface")?;
    let (sid, pid) = interface_body(&body)?;
    if sid.is_some() && pid.is_some() {
        return Err(bad("Cannot specify both subnet-id and port-id"));
    }
    let info = state.store.write(|tx| {
        let mut r = find_in(tx, &ctx, &id)?;
        let (port, subnet_ids) = if let Some(sid) = &sid {
            let (sub, net) = subnets::find_in(tx, &ctx, sid)?;
            // Another project's subnet only on a network shared with this
            // project by an RBAC policy naming it (Neutron's rule).
            let named = net
                .rbac_shared
                .iter()
                .any(|t| Some(t.as_str()) == ctx.project_id());
            if !owns(&ctx, &sub.project_id) && !named {
                return Err(bad(format!(
                    "Cannot add interface to router because subnet {sid} is not owned by project making the request"
                )));
            }
            let p = attach_subnet(tx, &r, &sub)?;
            (p, vec![sub.id])
        } else {
            let pid = pid.as_deref().unwrap_or_default();
            let p = tx.get::<Port>(pid)?.ok_or_else(|| port_not_found(pid))?;
            let net_owner = tx
                .get::<Network>(&p.network_id)?
                .is_some_and(|n| owns(&ctx, &n.project_id));
            if !owns(&ctx, &p.project_id) && !net_owner {
                return Err(port_not_found(pid));
            }
            let (p, subs) = attach_port(tx, &r, p)?;
            (p, subs.into_iter().map(|s| s.id).collect())
        };
        r.std.touch();
        tx.update(&r)?;
        Ok::<_, NetError>(interface_info(&r, &port, subnet_ids))
    })?;
    Ok(reply(StatusCode::OK, info))
}

async fn remove_interface(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "remove_router_interface")?;
    let (sid, pid) = interface_body(&body)?;
    let info = state.store.write(|tx| {
        let mut r = find_in(tx, &ctx, &id)?;
        let (port, subnet_ids) = if let Some(pid) = &pid {
            let port = interfaces(tx, &r.id)?
                .into_iter()
                .find(|p| &p.id == pid)
                .ok_or_else(|| {
                    NetError::not_found(
                        "RouterInterfaceNotFound",
                        format!("Router {} does not have an interface with id {pid}", r.id),
                    )
                })?;
            let ids: Vec<String> = port.fixed_ips.iter().map(|f| f.subnet_id.clone()).collect();
            if let Some(sid) = &sid
                && !ids.contains(sid)
            {
                return Err(NetError::bad(
                    "SubnetMismatchForPort",
                    format!("Subnet on port {pid} does not match the requested subnet {sid}."),
                ));
            }
            for s in &ids {
                if let Some(sub) = tx.get::<Subnet>(s)? {
                    check_detach(tx, &r, &sub)?;
                }
            }
            drop_port(tx, &port.id)?;
            (port, ids)
        } else {
            let sid = sid.as_deref().unwrap_or_default();
            let (sub, _) = subnets::find_in(tx, &ctx, sid)?;
            let port = detach_subnet(tx, &r, &sub)?;
            (port, vec![sub.id])
        };
        r.std.touch();
        tx.update(&r)?;
        Ok::<_, NetError>(interface_info(&r, &port, subnet_ids))
    })?;
    Ok(reply(StatusCode::OK, info))
}

// ---- CRUD -------------------------------------------------------------------

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_router")?;
    let items: Vec<Value> = state
        .store
        .list::<Router>(&SQ::all())?
        .iter()
        .filter(|r| owns(&ctx, &r.project_id))
        .map(|r| r.render(ctx.is_admin()))
        .collect();
    list_answer(&state, "routers", "routers", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_router")?;
    let r = match state.store.get::<Router>(&id)? {
        Some(r) if owns(&ctx, &r.project_id) => r,
        _ => return Err(not_found(&id)),
    };
    Ok(reply(
        StatusCode::OK,
        json!({ "router": select_fields(r.render(ctx.is_admin()), &fields_of(&q)) }),
    ))
}

const CREATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "external_gateway_info",
    "distributed",
    "ha",
    "availability_zone_hints",
    "flavor_id",
    "project_id",
    "tenant_id",
];

/// `distributed` and `ha` are admin-only, and this cloud has neither.
fn check_dvr_ha(ctx: &Ctx, m: &Map<String, Value>, action: &str) -> NetResult<()> {
    for a in ["distributed", "ha"] {
        if let Some(v) = opt_bool(m, a)? {
            if !ctx.is_admin() {
                return Err(NetError::policy(&format!("{action}:{a}")));
            }
            if v {
                return Err(NetError::bad_request(format!(
                    "{a} routers are not supported by this cloud"
                )));
            }
        }
    }
    if m.get("flavor_id").is_some_and(|v| !v.is_null()) {
        return Err(NetError::bad_request(
            "flavor_id is not supported by this cloud",
        ));
    }
    Ok(())
}

fn parse_az(m: &Map<String, Value>) -> NetResult<Option<Vec<String>>> {
    match m.get("availability_zone_hints") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| {
                NetError::bad_request(
                    "Invalid input for availability_zone_hints. Reason: not a list of strings.",
                )
            }),
        Some(_) => Err(NetError::bad_request(
            "Invalid input for availability_zone_hints. Reason: not a list.",
        )),
    }
}

/// Creates a router of `project` inside `tx`, with its gateway.
#[allow(clippy::too_many_arguments)]
pub(super) fn create_in(
    tx: &Tx,
    ctx: Option<&Ctx>,
    project: &str,
    name: String,
    description: String,
    admin_state_up: bool,
    az: Vec<String>,
    gw: Option<GwReq>,
) -> NetResult<Router> {
    super::quotas::check(tx, project, "router", 1)?;
    let mut r = Router {
        id: new_id(),
        project_id: project.to_string(),
        name,
        admin_state_up,
        gateway: None,
        routes: Vec::new(),
        availability_zone_hints: az,
        std: Std::new(description),
    };
    set_gateway(tx, ctx, &mut r, gw)?;
    tx.insert(&r)?;
    Ok(r)
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_router")?;
    let m = resource_body(body, "router", CREATE_ATTRS)?;
    let project = target_project(&ctx, &m, "create_router")?;
    check_dvr_ha(&ctx, &m, "create_router")?;
    let gw = match m.get("external_gateway_info") {
        None => None,
        Some(v) => parse_gw(&ctx, v, "create_router")?,
    };
    let name = opt_str(&m, "name")?.unwrap_or_default();
    let description = opt_str(&m, "description")?.unwrap_or_default();
    let admin_state_up = opt_bool(&m, "admin_state_up")?.unwrap_or(true);
    let az = parse_az(&m)?.unwrap_or_default();
    let r = state.store.write(|tx| {
        create_in(
            tx,
            Some(&ctx),
            &project,
            name,
            description,
            admin_state_up,
            az,
            gw,
        )
    })?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "router": r.render(ctx.is_admin()) }),
    ))
}

const UPDATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "external_gateway_info",
    "routes",
    "distributed",
    "ha",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_router")?;
    let m = resource_body(body, "router", UPDATE_ATTRS)?;
    check_dvr_ha(&ctx, &m, "update_router")?;
    let gw = match m.get("external_gateway_info") {
        None => None,
        Some(v) => Some(parse_gw(&ctx, v, "update_router")?),
    };
    let routes = m.get("routes").map(parse_routes).transpose()?;
    let r = state.store.write(|tx| {
        let mut r = find_in(tx, &ctx, &id)?;
        if let Some(v) = opt_str(&m, "name")? {
            r.name = v;
        }
        if let Some(v) = opt_str(&m, "description")? {
            r.std.description = v;
        }
        if let Some(v) = opt_bool(&m, "admin_state_up")? {
            r.admin_state_up = v;
        }
        if let Some(gw) = gw {
            set_gateway(tx, Some(&ctx), &mut r, gw)?;
        }
        if let Some(routes) = routes {
            check_routes(tx, &r, &routes)?;
            r.routes = routes;
        }
        r.std.touch();
        tx.update(&r)?;
        Ok::<_, NetError>(r)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "router": r.render(ctx.is_admin()) }),
    ))
}

/// `add_extraroutes` / `remove_extraroutes` (`extraroute-atomic`).
async fn change_routes(
    state: AppState,
    ctx: Ctx,
    id: String,
    body: Value,
    add: bool,
) -> NetResult<Response> {
    require_member(&ctx, "update_router")?;
    let m = resource_body(body, "router", &["routes"])?;
    let asked = parse_routes(m.get("routes").unwrap_or(&Value::Null))?;
    let r = state.store.write(|tx| {
        let mut r = find_in(tx, &ctx, &id)?;
        let mut routes = r.routes.clone();
        if add {
            for a in asked {
                if !routes.contains(&a) {
                    routes.push(a);
                }
            }
            check_routes(tx, &r, &routes)?;
        } else {
            routes.retain(|x| !asked.contains(x));
        }
        r.routes = routes;
        r.std.touch();
        tx.update(&r)?;
        Ok::<_, NetError>(r)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "router": r.render(ctx.is_admin()) }),
    ))
}

async fn add_extraroutes(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    change_routes(state, ctx, id, body, true).await
}

async fn remove_extraroutes(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    change_routes(state, ctx, id, body, false).await
}

/// Deletes router `r` and its gateway port inside `tx`; refuses while it
/// has interfaces or floating IPs depend on it.
pub(super) fn delete_in(tx: &Tx, r: &Router) -> NetResult<()> {
    let ports = interfaces(tx, &r.id)?;
    if !ports.is_empty() {
        let ids: Vec<&str> = ports.iter().map(|p| p.id.as_str()).collect();
        return Err(NetError::conflict(
            "RouterInUse",
            format!(
                "Router {} has ports still attached: {}",
                r.id,
                ids.join(", ")
            ),
        ));
    }
    if !floating_ips_of(tx, &r.id)?.is_empty() {
        return Err(NetError::conflict(
            "RouterInUse",
            format!(
                "Router {} still has floating IPs associated through it",
                r.id
            ),
        ));
    }
    if let Some(g) = &r.gateway {
        drop_port(tx, &g.port_id)?;
    }
    tx.delete::<Router>(&r.id)?;
    Ok(())
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_router")?;
    state.store.write(|tx| {
        let r = find_in(tx, &ctx, &id)?;
        delete_in(tx, &r)
    })?;
    Ok(super::no_content())
}

// ---- ports the L3 service owns ----------------------------------------------

/// Called by the port API's delete inside its transaction: refuses ports
/// a router or floating IP owns (Neutron's `ServicePortInUse`).
pub(super) fn before_port_delete(tx: &Tx, p: &Port) -> NetResult<()> {
    let owned = match p.device_owner.as_str() {
        OWNER_INTERFACE | OWNER_GATEWAY => tx.exists::<Router>(&p.device_id)?,
        OWNER_FLOATINGIP => tx.exists::<FloatingIp>(&p.device_id)?,
        _ => false,
    };
    if owned {
        return Err(NetError::conflict(
            "ServicePortInUse",
            format!(
                "Port {} cannot be deleted directly via the port API: has device owner {}.",
                p.id, p.device_owner
            ),
        ));
    }
    Ok(())
}
