//! Ports: fixed IPs from the exact IPAM, MAC addresses unique per
//! network, device and binding attributes, security groups, port security
//! and allowed address pairs.

use std::collections::HashSet;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{self, Cidr, Ip};
use super::model::{AddressPair, FixedIp, Network, Port, SecurityGroup, Std, Subnet};
use super::subnets::is_slaac;
use super::{
    NetError, NetResult, fields_of, list_answer, networks, new_id, opt_bool, opt_str, owns, reply,
    require_member, require_reader, resource_body, security_groups, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

const VNIC_TYPES: &[&str] = &[
    "normal",
    "direct",
    "macvtap",
    "baremetal",
    "direct-physical",
    "virtio-forwarder",
    "smart-nic",
    "remote-managed",
    "vdpa",
    "accelerator-direct",
    "accelerator-direct-physical",
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ports", get(list).post(create_many))
        .route("/ports/{id}", get(show).put(update).delete(delete))
}

fn not_found(id: &str) -> NetError {
    NetError::not_found("PortNotFound", format!("Port {id} could not be found."))
}

/// The caller sees its project's ports and, as a network's owner, the
/// ports on its networks.
fn visible(ctx: &Ctx, p: &Port, net: Option<&Network>) -> bool {
    owns(ctx, &p.project_id) || net.is_some_and(|n| owns(ctx, &n.project_id))
}

fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<(Port, Network)> {
    let p = tx.get::<Port>(id)?.ok_or_else(|| not_found(id))?;
    let n = tx
        .get::<Network>(&p.network_id)?
        .ok_or_else(|| not_found(id))?;
    if visible(ctx, &p, Some(&n)) {
        Ok((p, n))
    } else {
        Err(not_found(id))
    }
}

/// Whether a port's fixed IPs pass every `fixed_ips=key=value` filter.
fn fixed_ip_filter(p: &Port, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(k, v)| {
        p.fixed_ips.iter().any(|f| match k.as_str() {
            "ip_address" => &f.ip_address == v,
            "subnet_id" => &f.subnet_id == v,
            "ip_address_substr" => f.ip_address.contains(v.as_str()),
            _ => true,
        })
    })
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_port")?;
    let nets: std::collections::HashMap<String, Network> = state
        .store
        .list::<Network>(&SQ::all())?
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect();
    let fip: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k == "fixed_ips")
        .filter_map(|(_, v)| {
            v.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let rest: Vec<(String, String)> = q
        .iter()
        .filter(|(k, _)| k != "fixed_ips")
        .cloned()
        .collect();
    let items: Vec<Value> = state
        .store
        .list::<Port>(&SQ::all())?
        .iter()
        .filter(|p| visible(&ctx, p, nets.get(&p.network_id)))
        .filter(|p| fixed_ip_filter(p, &fip))
        .map(|p| p.render(ctx.is_admin()))
        .collect();
    list_answer(&state, "ports", "ports", items, &rest)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_port")?;
    let p = state
        .store
        .get::<Port>(&id)?
        .ok_or_else(|| not_found(&id))?;
    let n = state.store.get::<Network>(&p.network_id)?;
    if !visible(&ctx, &p, n.as_ref()) {
        return Err(not_found(&id));
    }
    Ok(reply(
        StatusCode::OK,
        json!({ "port": select_fields(p.render(ctx.is_admin()), &fields_of(&q)) }),
    ))
}

/// One requested fixed IP.
struct Want {
    subnet_id: Option<String>,
    ip: Option<Ip>,
}

fn parse_fixed_ips(v: &Value) -> NetResult<Vec<Want>> {
    let Value::Array(items) = v else {
        return Err(NetError::bad_request(
            "Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: not a list.",
        ));
    };
    let mut out = Vec::new();
    for f in items {
        let Value::Object(o) = f else {
            return Err(NetError::bad_request(format!(
                "Invalid input for fixed_ips. Reason: Invalid data format for fixed IP: '{f}'."
            )));
        };
        if let Some(k) = o.keys().find(|k| *k != "subnet_id" && *k != "ip_address") {
            return Err(NetError::bad_request(format!(
                "Invalid input for fixed_ips. Reason: Unrecognized attribute '{k}' in fixed IP."
            )));
        }
        let ip = match o.get("ip_address") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_str().and_then(Ip::parse).ok_or_else(|| {
                NetError::bad_request(format!(
                    "Invalid input for fixed_ips. Reason: '{}' is not a valid IP address.",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                ))
            })?),
        };
        let subnet_id = match o.get("subnet_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                return Err(NetError::bad_request(format!(
                    "Invalid input for fixed_ips. Reason: '{v}' is not a valid UUID."
                )));
            }
        };
        if ip.is_none() && subnet_id.is_none() {
            return Err(NetError::bad_request(
                "Invalid input for fixed_ips. Reason: Exactly one of ip_address or subnet_id must be specified.",
            ));
        }
        out.push(Want { subnet_id, ip });
    }
    Ok(out)
}

fn cidr_of(s: &Subnet) -> NetResult<Cidr> {
    Cidr::parse_loose(&s.cidr)
        .map(|(c, _)| c)
        .ok_or_else(|| NetError::invalid(format!("stored cidr {}", s.cidr)))
}

fn exhausted_subnet(s: &Subnet) -> NetError {
    NetError::conflict(
        "IpAddressGenerationFailure",
        format!("No more IP addresses available for subnet {}.", s.id),
    )
}

/// Allocates the addresses of a port inside `tx`. `wants` is the request
/// (None: automatic); `keep` are addresses the port already holds that
/// stay as they are.
fn allocate(
    tx: &Tx,
    net: &Network,
    port_id: &str,
    mac: &str,
    wants: Option<Vec<Want>>,
    keep: &[FixedIp],
) -> NetResult<Vec<FixedIp>> {
    let subnets = tx.list::<Subnet>(&SQ::parent(&net.id))?;
    let mut out: Vec<FixedIp> = Vec::new();
    let take = |sub: &Subnet, ip: Ip, out: &mut Vec<FixedIp>| -> NetResult<()> {
        ipam::claim(tx, sub, ip, port_id)?;
        out.push(FixedIp {
            subnet_id: sub.id.clone(),
            ip_address: ip.to_string(),
        });
        Ok(())
    };
    match wants {
        None => {
            // One address from the first IPv4 subnet that has one, one
            // from a stateful IPv6 subnet, and the SLAAC address of each
            // SLAAC subnet.
            let v4: Vec<&Subnet> = subnets.iter().filter(|s| s.ip_version == 4).collect();
            if !v4.is_empty() {
                let mut got = false;
                for s in &v4 {
                    if let Some(ip) = ipam::next_free(tx, s)? {
                        take(s, ip, &mut out)?;
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
            let mut stateful_done = false;
            for s in subnets.iter().filter(|s| s.ip_version == 6) {
                if is_slaac(s) {
                    let ip = ipam::eui64(&cidr_of(s)?, mac)
                        .ok_or_else(|| NetError::invalid("mac address"))?;
                    take(s, ip, &mut out)?;
                } else if !stateful_done {
                    let ip = ipam::next_free(tx, s)?.ok_or_else(|| exhausted_subnet(s))?;
                    take(s, ip, &mut out)?;
                    stateful_done = true;
                }
            }
        }
        Some(wants) => {
            let mut seen = HashSet::new();
            for w in wants {
                let sub = match (&w.subnet_id, w.ip) {
                    (Some(sid), _) => {
                        let s = subnets.iter().find(|s| &s.id == sid);
                        match s {
                            Some(s) => s,
                            None if tx.exists::<Subnet>(sid)? => {
                                return Err(NetError::invalid(format!(
                                    "Failed to create port on network {}, because fixed_ips included invalid subnet {sid}",
                                    net.id
                                )));
                            }
                            None => return Err(super::subnets::not_found(sid)),
                        }
                    }
                    (None, Some(ip)) => subnets
                        .iter()
                        .find(|s| cidr_of(s).is_ok_and(|c| c.contains(ip)))
                        .ok_or_else(|| NetError::bad(
                            "InvalidIpForNetwork",
                            format!("IP address {ip} is not a valid IP for any of the subnets on the specified network."),
                        ))?,
                    (None, None) => unreachable!("checked when parsed"),
                };
                match w.ip {
                    Some(ip) => {
                        let cidr = cidr_of(sub)?;
                        let bad = !cidr.contains(ip)
                            || ip == cidr.first() && cidr.prefix < if ip.v6 { 127 } else { 31 }
                            || !ip.v6 && ip == cidr.last() && cidr.prefix < 31;
                        if bad {
                            return Err(NetError::bad(
                                "InvalidIpForSubnet",
                                format!(
                                    "IP address {ip} is not a valid IP for the specified subnet."
                                ),
                            ));
                        }
                        if !seen.insert((sub.id.clone(), ip)) {
                            return Err(NetError::bad_request(format!(
                                "Invalid input for fixed_ips. Reason: Duplicate IP address '{ip}'."
                            )));
                        }
                        if let Some(k) = keep
                            .iter()
                            .find(|k| k.subnet_id == sub.id && Ip::parse(&k.ip_address) == Some(ip))
                        {
                            out.push(k.clone());
                            continue;
                        }
                        if sub.gateway_ip.as_deref().and_then(Ip::parse) == Some(ip) {
                            return Err(NetError::conflict(
                                "IpAddressAlreadyAllocated",
                                format!(
                                    "IP address {ip} already allocated in subnet {} (it is the gateway)",
                                    sub.id
                                ),
                            ));
                        }
                        take(sub, ip, &mut out)?;
                    }
                    None if is_slaac(sub) => {
                        let ip = ipam::eui64(&cidr_of(sub)?, mac)
                            .ok_or_else(|| NetError::invalid("mac address"))?;
                        if let Some(k) = keep.iter().find(|k| k.subnet_id == sub.id) {
                            out.push(k.clone());
                        } else {
                            take(sub, ip, &mut out)?;
                        }
                    }
                    None => {
                        let ip = ipam::next_free(tx, sub)?.ok_or_else(|| exhausted_subnet(sub))?;
                        take(sub, ip, &mut out)?;
                    }
                }
            }
        }
    }
    Ok(out)
}

fn random_mac() -> String {
    let mut b = [0u8; 3];
    let _ = getrandom::fill(&mut b);
    format!("fa:16:3e:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

fn parse_mac(s: &str) -> NetResult<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    let mac = parts.join(":").to_ascii_lowercase();
    if !ok
        || mac == "00:00:00:00:00:00"
        || mac == "ff:ff:ff:ff:ff:ff"
        || u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 1)
    {
        return Err(NetError::bad_request(format!(
            "Invalid input for mac_address. Reason: '{s}' is not a valid MAC address."
        )));
    }
    Ok(mac)
}

fn mac_in_use(net: &str, mac: &str) -> NetError {
    NetError::conflict(
        "MacAddressInUse",
        format!("Unable to complete operation for network {net}. The mac address {mac} is in use."),
    )
}

fn parse_pairs(v: &Value, mac: &str) -> NetResult<Vec<AddressPair>> {
    let Value::Array(items) = v else {
        return Err(NetError::bad_request(
            "Invalid input for allowed_address_pairs. Reason: not a list.",
        ));
    };
    let mut out: Vec<AddressPair> = Vec::new();
    for p in items {
        let ip = p.get("ip_address").and_then(Value::as_str).ok_or_else(|| {
            NetError::bad(
                "AllowedAddressPairsMissingIP",
                "AllowedAddressPair must contain ip_address",
            )
        })?;
        let (c, _) = Cidr::parse_loose(ip).ok_or_else(|| {
            NetError::bad_request(format!(
                "Invalid input for allowed_address_pairs. Reason: '{ip}' is not a valid IP address."
            ))
        })?;
        let ip = if ip.contains('/') {
            c.to_string()
        } else {
            c.base.to_string()
        };
        let pmac = match p.get("mac_address") {
            None | Some(Value::Null) => mac.to_string(),
            Some(Value::String(m)) => parse_mac(m)?,
            Some(v) => {
                return Err(NetError::bad_request(format!(
                    "Invalid input for mac_address. Reason: '{v}' is not a valid MAC address."
                )));
            }
        };
        let pair = AddressPair {
            ip_address: ip,
            mac_address: pmac,
        };
        if out.contains(&pair) {
            return Err(NetError::bad(
                "DuplicateAddressPairInRequest",
                format!(
                    "Request contains duplicate address pair: mac_address {} ip_address {}.",
                    pair.mac_address, pair.ip_address
                ),
            ));
        }
        out.push(pair);
    }
    Ok(out)
}

fn parse_groups(v: &Value) -> NetResult<Vec<String>> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|g| g.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                NetError::bad_request(
                    "Invalid input for security_groups. Reason: not a list of ids.",
                )
            }),
        _ => Err(NetError::bad_request(
            "Invalid input for security_groups. Reason: not a list.",
        )),
    }
}

/// Checks that every group exists and belongs to the port's project.
fn check_groups(tx: &Tx, project: &str, groups: &[String]) -> NetResult<()> {
    for g in groups {
        match tx.get::<SecurityGroup>(g)? {
            Some(sg) if sg.project_id == project => {}
            _ => return Err(security_groups::not_found(g)),
        }
    }
    Ok(())
}

fn check_vnic(v: &str) -> NetResult<()> {
    if VNIC_TYPES.contains(&v) {
        Ok(())
    } else {
        Err(NetError::bad_request(format!(
            "Invalid input for binding:vnic_type. Reason: '{v}' is not in {VNIC_TYPES:?}."
        )))
    }
}

/// Attributes only admins (or the network's owner, for device_owner
/// `network:*` and explicit addresses) may set.
fn port_policy(ctx: &Ctx, m: &Map<String, Value>, net: &Network, action: &str) -> NetResult<()> {
    if ctx.is_admin() {
        return Ok(());
    }
    for a in ["binding:host_id", "binding:profile"] {
        if m.get(a)
            .is_some_and(|v| !v.is_null() && v != &json!("") && v != &json!({}))
        {
            return Err(NetError::policy(&format!("{action}:{a}")));
        }
    }
    let net_owner = owns(ctx, &net.project_id);
    if !net_owner {
        if m.get("device_owner")
            .and_then(Value::as_str)
            .is_some_and(|d| d.starts_with("network:"))
        {
            return Err(NetError::policy(&format!("{action}:device_owner")));
        }
        if m.get("mac_address").is_some_and(|v| !v.is_null()) {
            return Err(NetError::policy(&format!("{action}:mac_address")));
        }
        if let Some(Value::Array(f)) = m.get("fixed_ips")
            && f.iter()
                .any(|x| x.get("ip_address").is_some_and(|v| !v.is_null()))
        {
            return Err(NetError::policy(&format!("{action}:fixed_ips:ip_address")));
        }
    }
    Ok(())
}

const CREATE_ATTRS: &[&str] = &[
    "network_id",
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "project_id",
    "tenant_id",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
    "qos_policy_id",
    "dns_name",
    "propagate_uplink_status",
    "extra_dhcp_opts",
];

/// `POST /ports`: one port, or many at once (Neutron's bulk create).
async fn create_many(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    super::create_bulk(
        body,
        "port",
        "ports",
        |b| create(State(state.clone()), Ctx(ctx.0.clone()), Json(b)),
        |id| delete(State(state.clone()), Ctx(ctx.0.clone()), Path(id)),
    )
    .await
}

async fn create(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "create_port")?;
    let m = resource_body(body, "port", CREATE_ATTRS)?;
    let project = target_project(&ctx, &m, "create_port")?;
    let port = state
        .store
        .write(|tx| create_in(tx, &ctx, &project, &m, &new_id()))?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "port": port.render(ctx.is_admin()) }),
    ))
}

/// Creates port `id` of `project` from a request body's attributes inside
/// `tx`: the API's port create, and the compute service's when it makes a
/// server's ports.
pub(crate) fn create_in(
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    m: &Map<String, Value>,
    id: &str,
) -> NetResult<Port> {
    let network_id = opt_str(m, "network_id")?.ok_or_else(|| {
        NetError::bad_request(
            "Failed to parse request. Required attribute 'network_id' not specified",
        )
    })?;
    let wants = match m.get("fixed_ips") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_fixed_ips(v)?),
    };
    let asked_mac = opt_str(m, "mac_address")?
        .map(|s| parse_mac(&s))
        .transpose()?;
    let vnic = opt_str(m, "binding:vnic_type")?.unwrap_or_else(|| "normal".into());
    check_vnic(&vnic)?;
    let asked_groups = m.get("security_groups").map(parse_groups).transpose()?;
    let asked_ps = opt_bool(m, "port_security_enabled")?;
    if m.get("extra_dhcp_opts")
        .is_some_and(|v| v != &json!([]) && !v.is_null())
    {
        return Err(NetError::bad_request(
            "extra_dhcp_opts is not supported by this cloud",
        ));
    }
    let net = networks::find_in(tx, ctx, &network_id)?;
    networks::refuse_if_parents(&net)?;
    port_policy(ctx, m, &net, "create_port")?;
    super::quotas::check(tx, project, "port", 1)?;
    let macs: HashSet<String> = tx
        .list::<Port>(&SQ::parent(&net.id))?
        .into_iter()
        .map(|p| p.mac_address)
        .collect();
    let mac = match &asked_mac {
        Some(mac) if macs.contains(mac) => return Err(mac_in_use(&net.id, mac)),
        Some(mac) => mac.clone(),
        None => {
            let mut mac = random_mac();
            while macs.contains(&mac) {
                mac = random_mac();
            }
            mac
        }
    };
    let port_security = asked_ps.unwrap_or(net.port_security_enabled);
    let groups = match &asked_groups {
        Some(g) => g.clone(),
        None if port_security
            && !m
                .get("device_owner")
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with("network:")) =>
        {
            vec![security_groups::ensure_default(tx, project)?.id]
        }
        None => Vec::new(),
    };
    if !port_security && !groups.is_empty() {
        return Err(NetError::bad(
            "PortSecurityAndIPRequiredForSecurityGroups",
            "Port security must be enabled and port must have an IP address in order to use security groups.",
        ));
    }
    check_groups(tx, project, &groups)?;
    let pairs = match m.get("allowed_address_pairs") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_pairs(v, &mac)?,
    };
    if !port_security && !pairs.is_empty() {
        return Err(NetError::conflict(
            "AddressPairAndPortSecurityRequired",
            "Port Security must be enabled in order to have allowed address pairs on a port.",
        ));
    }
    let fixed_ips = allocate(tx, &net, id, &mac, wants, &[])?;
    let port = Port {
        id: id.to_string(),
        network_id: net.id.clone(),
        project_id: project.to_string(),
        name: opt_str(m, "name")?.unwrap_or_default(),
        admin_state_up: opt_bool(m, "admin_state_up")?.unwrap_or(true),
        mac_address: mac,
        fixed_ips,
        device_id: opt_str(m, "device_id")?.unwrap_or_default(),
        device_owner: opt_str(m, "device_owner")?.unwrap_or_default(),
        security_groups: groups,
        port_security_enabled: port_security,
        allowed_address_pairs: pairs,
        host_id: opt_str(m, "binding:host_id")?.unwrap_or_default(),
        vnic_type: vnic,
        profile: m.get("binding:profile").cloned().unwrap_or(Value::Null),
        status: "DOWN".into(),
        std: Std::new(opt_str(m, "description")?.unwrap_or_default()),
    };
    tx.insert(&port)?;
    Ok(port)
}

/// Deletes a port and frees its addresses inside `tx` (no policy check;
/// a router's own ports are refused, floating IPs on it disassociated).
pub(crate) fn delete_in(tx: &Tx, p: &Port) -> NetResult<()> {
    super::routers::before_port_delete(tx, p)?;
    super::floating_ips::disassociate_port(tx, &p.id)?;
    for f in &p.fixed_ips {
        ipam::release(tx, &f.subnet_id, &f.ip_address)?;
    }
    tx.delete::<Port>(&p.id)?;
    Ok(())
}

const UPDATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "admin_state_up",
    "mac_address",
    "fixed_ips",
    "device_id",
    "device_owner",
    "security_groups",
    "port_security_enabled",
    "allowed_address_pairs",
    "binding:host_id",
    "binding:vnic_type",
    "binding:profile",
    "qos_policy_id",
    "dns_name",
    "propagate_uplink_status",
    "extra_dhcp_opts",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_port")?;
    if let Some(Value::Object(inner)) = body.get("port")
        && let Some(k) = inner
            .keys()
            .find(|k| ["network_id", "id", "project_id", "tenant_id"].contains(&k.as_str()))
    {
        return Err(NetError::bad_request(format!(
            "Cannot update read-only attribute {k}"
        )));
    }
    let m = resource_body(body, "port", UPDATE_ATTRS)?;
    let wants = match m.get("fixed_ips") {
        None => None,
        Some(Value::Null) => Some(Vec::new()),
        Some(v) => Some(parse_fixed_ips(v)?),
    };
    let port = state.store.write(|tx| {
        let (mut p, net) = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &p.project_id) && !owns(&ctx, &net.project_id) {
            return Err(NetError::policy("update_port"));
        }
        port_policy(&ctx, &m, &net, "update_port")?;
        if let Some(v) = opt_str(&m, "name")? {
            p.name = v;
        }
        if let Some(v) = opt_str(&m, "description")? {
            p.std.description = v;
        }
        if let Some(v) = opt_bool(&m, "admin_state_up")? {
            p.admin_state_up = v;
        }
        if let Some(v) = opt_str(&m, "device_id")? {
            p.device_id = v;
        }
        if let Some(v) = opt_str(&m, "device_owner")? {
            p.device_owner = v;
        }
        if let Some(v) = opt_str(&m, "binding:host_id")? {
            p.host_id = v;
        }
        if let Some(v) = opt_str(&m, "binding:vnic_type")? {
            check_vnic(&v)?;
            p.vnic_type = v;
        }
        if let Some(v) = m.get("binding:profile") {
            p.profile = v.clone();
        }
        if let Some(mac) = opt_str(&m, "mac_address")? {
            let mac = parse_mac(&mac)?;
            if mac != p.mac_address {
                if !p.host_id.is_empty() {
                    return Err(NetError::conflict("PortBound", format!("Unable to complete operation on port {id}, port is already bound.")));
                }
                if tx.list::<Port>(&SQ::parent(&net.id))?.iter().any(|o| o.mac_address == mac) {
                    return Err(mac_in_use(&net.id, &mac));
                }
                p.mac_address = mac;
            }
        }
        if let Some(ps) = opt_bool(&m, "port_security_enabled")? {
            p.port_security_enabled = ps;
        }
        if let Some(v) = m.get("security_groups") {
            let g = parse_groups(v)?;
            check_groups(tx, &p.project_id, &g)?;
            p.security_groups = g;
        } else if m.get("port_security_enabled") == Some(&json!(false)) && !p.security_groups.is_empty() {
            return Err(NetError::conflict("PortSecurityPortHasSecurityGroup", "Port has security group associated. Cannot disable port security or IP address until security group is removed."));
        }
        if let Some(v) = m.get("allowed_address_pairs") {
            p.allowed_address_pairs = if v.is_null() { Vec::new() } else { parse_pairs(v, &p.mac_address)? };
        }
        if !p.port_security_enabled && !p.security_groups.is_empty() {
            return Err(NetError::bad("PortSecurityAndIPRequiredForSecurityGroups", "Port security must be enabled and port must have an IP address in order to use security groups."));
        }
        if !p.port_security_enabled && !p.allowed_address_pairs.is_empty() {
            return Err(NetError::conflict("AddressPairAndPortSecurityRequired", "Port Security must be enabled in order to have allowed address pairs on a port."));
        }
        if let Some(wants) = wants {
            let old = p.fixed_ips.clone();
            let kept: Vec<FixedIp> = old
                .iter()
                .filter(|o| wants.iter().any(|w| w.ip.is_some_and(|ip| Ip::parse(&o.ip_address) == Some(ip))))
                .cloned()
                .collect();
            for o in old.iter().filter(|o| !kept.contains(o)) {
                ipam::release(tx, &o.subnet_id, &o.ip_address)?;
            }
            p.fixed_ips = allocate(tx, &net, &p.id, &p.mac_address, Some(wants), &kept)?;
        }
        p.std.touch();
        tx.update(&p)?;
        Ok::<_, NetError>(p)
    })?;
    Ok(reply(
        StatusCode::OK,
        json!({ "port": port.render(ctx.is_admin()) }),
    ))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_port")?;
    state.store.write(|tx| {
        let (p, net) = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &p.project_id) && !owns(&ctx, &net.project_id) {
            return Err(NetError::policy("delete_port"));
        }
        delete_in(tx, &p)
    })?;
    Ok(super::no_content())
}
