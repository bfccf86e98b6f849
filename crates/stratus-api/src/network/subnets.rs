//! Subnets: IPv4 and IPv6 prefixes of a network, their gateway,
//! allocation pools, DNS servers, host routes and IPv6 modes.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};

use super::ipam::{Cidr, Ip, default_pools};
use super::model::{HostRoute, IpAllocation, Network, Pool, Port, Std, Subnet};
use super::networks::{self, visible};
use super::{
    NetError, NetResult, fields_of, list_answer, new_id, opt_bool, opt_int, opt_str, owns, reply,
    require_member, require_reader, resource_body, select_fields, target_project,
};
use crate::AppState;
use crate::identity::policy::Ctx;
use crate::json::Json;

const MAX_DNS: usize = 5;
const MAX_ROUTES: usize = 20;
const IPV6_MODES: &[&str] = &["slaac", "dhcpv6-stateful", "dhcpv6-stateless"];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/subnets", get(list).post(create_many))
        .route("/subnets/{id}", get(show).put(update).delete(delete))
}

pub fn not_found(id: &str) -> NetError {
    NetError::not_found("SubnetNotFound", format!("Subnet {id} could not be found."))
}

/// A subnet as the API shows it, with its network's `router:external`
/// (Neutron's `subnet-external-network`).
fn render(s: &Subnet, net: Option<&Network>) -> Value {
    let mut v = s.render();
    v["router:external"] = json!(net.is_some_and(|n| n.external));
    v
}

/// The subnet `id` if the caller sees its network.
pub fn find_in(tx: &Tx, ctx: &Ctx, id: &str) -> NetResult<(Subnet, Network)> {
    let s = tx.get::<Subnet>(id)?.ok_or_else(|| not_found(id))?;
    match tx.get::<Network>(&s.network_id)? {
        Some(n) if visible(ctx, &n) || owns(ctx, &s.project_id) => Ok((s, n)),
        _ => Err(not_found(id)),
    }
}

async fn list(
    State(state): State<AppState>,
    ctx: Ctx,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_subnet")?;
    let nets: std::collections::HashMap<String, Network> = state
        .store
        .list::<Network>(&SQ::all())?
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect();
    let items: Vec<Value> = state
        .store
        .list::<Subnet>(&SQ::all())?
        .iter()
        .filter(|s| {
            owns(&ctx, &s.project_id) || nets.get(&s.network_id).is_some_and(|n| visible(&ctx, n))
        })
        .map(|s| render(s, nets.get(&s.network_id)))
        .collect();
    list_answer(&state, "subnets", "subnets", items, &q)
}

async fn show(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> NetResult<Response> {
    require_reader(&ctx, "get_subnet")?;
    let s = state
        .store
        .get::<Subnet>(&id)?
        .ok_or_else(|| not_found(&id))?;
    let net = state.store.get::<Network>(&s.network_id)?;
    let seen = owns(&ctx, &s.project_id) || net.as_ref().is_some_and(|n| visible(&ctx, n));
    if !seen {
        return Err(not_found(&id));
    }
    Ok(reply(
        StatusCode::OK,
        json!({ "subnet": select_fields(render(&s, net.as_ref()), &fields_of(&q)) }),
    ))
}

fn parse_ip(attr: &str, v: &Value) -> NetResult<Ip> {
    v.as_str().and_then(Ip::parse).ok_or_else(|| {
        NetError::bad_request(format!(
            "Invalid input for {attr}. Reason: '{}' is not a valid IP address.",
            v.as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string())
        ))
    })
}

/// Parses and checks a subnet CIDR: no host bits, the right family.
pub(super) fn parse_cidr(s: &str) -> NetResult<Cidr> {
    let (c, host_bits) = Cidr::parse_loose(s).ok_or_else(|| {
        NetError::bad_request(format!(
            "Invalid input for cidr. Reason: '{s}' is not a valid IP subnet."
        ))
    })?;
    if !s.contains('/') {
        return Err(NetError::bad_request(format!(
            "Invalid input for cidr. Reason: '{s}' is not a valid IP subnet."
        )));
    }
    if host_bits {
        return Err(NetError::bad_request(format!(
            "Invalid input for cidr. Reason: '{s}' isn't a recognized IP subnet cidr, '{c}' is recommended."
        )));
    }
    if c.prefix == 0 {
        return Err(NetError::invalid("0 is not allowed as CIDR prefix length"));
    }
    Ok(c)
}

fn parse_pools(v: &Value) -> NetResult<Vec<(Ip, Ip)>> {
    let Value::Array(items) = v else {
        return Err(NetError::bad_request(
            "Invalid input for allocation_pools. Reason: Invalid data format for IP pool.",
        ));
    };
    items
        .iter()
        .map(|p| {
            let (Some(s), Some(e)) = (p.get("start"), p.get("end")) else {
                return Err(NetError::bad_request(format!(
                    "Invalid input for allocation_pools. Reason: Invalid data format for IP pool: '{p}'."
                )));
            };
            Ok((parse_ip("allocation_pools", s)?, parse_ip("allocation_pools", e)?))
        })
        .collect()
}

/// Checks pools against the prefix, each other and the gateway, as
/// Neutron does.
fn check_pools(cidr: &Cidr, pools: &[(Ip, Ip)], gateway: Option<Ip>) -> NetResult<()> {
    for (s, e) in pools {
        if s.v6 != cidr.base.v6 || e.v6 != cidr.base.v6 || s.n > e.n {
            return Err(NetError::bad(
                "InvalidAllocationPool",
                format!("The allocation pool {s}-{e} is not valid."),
            ));
        }
        if !cidr.contains(*s) || !cidr.contains(*e) {
            return Err(NetError::bad(
                "OutOfBoundsAllocationPool",
                format!("The allocation pool {s}-{e} spans beyond the subnet cidr {cidr}."),
            ));
        }
    }
    let mut sorted = pools.to_vec();
    sorted.sort();
    for w in sorted.windows(2) {
        if w[1].0.n <= w[0].1.n {
            return Err(NetError::conflict(
                "OverlappingAllocationPools",
                format!(
                    "Found overlapping allocation pools: {}-{} and {}-{} for subnet {cidr}.",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ),
            ));
        }
    }
    if let Some(g) = gateway
        && let Some((s, e)) = pools
            .iter()
            .find(|(s, e)| g.v6 == s.v6 && g.n >= s.n && g.n <= e.n)
    {
        return Err(NetError::conflict(
            "GatewayConflictWithAllocationPools",
            format!("Gateway ip {g} conflicts with allocation pool {s}-{e}."),
        ));
    }
    Ok(())
}

fn parse_dns(v: &Value, version: u8) -> NetResult<Vec<String>> {
    let Value::Array(items) = v else {
        return Err(NetError::bad_request(
            "Invalid input for dns_nameservers. Reason: not a list.",
        ));
    };
    if items.len() > MAX_DNS {
        return Err(NetError::bad(
            "DNSNameServersExhausted",
            format!(
                "Unable to complete operation for subnet. The number of DNS nameservers exceeds the limit {MAX_DNS}."
            ),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for d in items {
        let ip = parse_ip("dns_nameservers", d)?;
        if ip.version() != version {
            return Err(NetError::invalid(format!(
                "DNS nameserver {ip} does not match the subnet's IP version"
            )));
        }
        let s = ip.to_string();
        if out.contains(&s) {
            return Err(NetError::bad_request(format!(
                "Invalid input for dns_nameservers. Reason: Duplicate nameserver '{s}'."
            )));
        }
        out.push(s);
    }
    Ok(out)
}

fn parse_routes(v: &Value, version: u8) -> NetResult<Vec<HostRoute>> {
    let Value::Array(items) = v else {
        return Err(NetError::bad_request(
            "Invalid input for host_routes. Reason: not a list.",
        ));
    };
    if items.len() > MAX_ROUTES {
        return Err(NetError::bad(
            "HostRoutesExhausted",
            format!(
                "Unable to complete operation for subnet. The number of host routes exceeds the limit {MAX_ROUTES}."
            ),
        ));
    }
    let mut out: Vec<HostRoute> = Vec::new();
    for r in items {
        let (Some(d), Some(n)) = (
            r.get("destination").and_then(Value::as_str),
            r.get("nexthop"),
        ) else {
            return Err(NetError::bad_request(format!(
                "Invalid input for host_routes. Reason: Invalid data format for hostroute: '{r}'."
            )));
        };
        let (dest, _) = Cidr::parse_loose(d)
            .filter(|_| d.contains('/'))
            .ok_or_else(|| {
                NetError::bad_request(format!(
                    "Invalid input for host_routes. Reason: '{d}' is not a valid IP subnet."
                ))
            })?;
        let hop = parse_ip("host_routes", n)?;
        if dest.version() != version || hop.version() != version {
            return Err(NetError::invalid(format!(
                "host route {d} via {hop} does not match the subnet's IP version"
            )));
        }
        let route = HostRoute {
            destination: dest.to_string(),
            nexthop: hop.to_string(),
        };
        if out.contains(&route) {
            return Err(NetError::bad_request(format!(
                "Invalid input for host_routes. Reason: Duplicate hostroute '{r}'."
            )));
        }
        out.push(route);
    }
    Ok(out)
}

fn ipv6_mode(m: &Map<String, Value>, attr: &str) -> NetResult<Option<String>> {
    let v = opt_str(m, attr)?;
    if let Some(v) = &v
        && !IPV6_MODES.contains(&v.as_str())
    {
        return Err(NetError::bad_request(format!(
            "Invalid input for {attr}. Reason: '{v}' is not in {IPV6_MODES:?}."
        )));
    }
    Ok(v)
}

fn check_ipv6_modes(cidr: &Cidr, ra: &Option<String>, addr: &Option<String>) -> NetResult<()> {
    if cidr.version() == 4 {
        if let Some(r) = ra {
            return Err(NetError::invalid(format!(
                "ipv6_ra_mode set to '{r}' with ip_version set to '4' is not valid. Modes are only valid for IPv6"
            )));
        }
        if let Some(a) = addr {
            return Err(NetError::invalid(format!(
                "ipv6_address_mode set to '{a}' with ip_version set to '4' is not valid. Modes are only valid for IPv6"
            )));
        }
        return Ok(());
    }
    if let (Some(r), Some(a)) = (ra, addr)
        && r != a
    {
        return Err(NetError::invalid(format!(
            "ipv6_ra_mode set to '{r}' with ipv6_address_mode set to '{a}' is not valid. If both attributes are set, they must be the same value"
        )));
    }
    let auto = |m: &Option<String>| m.as_deref().is_some_and(|m| m != "dhcpv6-stateful");
    if (auto(ra) || auto(addr)) && cidr.prefix != 64 {
        return Err(NetError::invalid(format!(
            "Invalid CIDR {cidr} for IPv6 address mode. OpenStack uses the EUI-64 address format, which requires the prefix to be /64"
        )));
    }
    Ok(())
}

/// Whether ports get addresses from this subnet by SLAAC (EUI-64).
pub fn is_slaac(s: &Subnet) -> bool {
    matches!(
        s.ipv6_address_mode.as_deref(),
        Some("slaac") | Some("dhcpv6-stateless")
    )
}

const CREATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "network_id",
    "cidr",
    "ip_version",
    "gateway_ip",
    "allocation_pools",
    "dns_nameservers",
    "host_routes",
    "enable_dhcp",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "project_id",
    "tenant_id",
    "subnetpool_id",
    "use_default_subnetpool",
    "prefixlen",
    "segment_id",
    "service_types",
    "dns_publish_fixed_ip",
];

/// `POST /subnets`: one subnet, or many at once (Neutron's bulk create).
async fn create_many(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    super::create_bulk(
        body,
        "subnet",
        "subnets",
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
    require_member(&ctx, "create_subnet")?;
    let m = resource_body(body, "subnet", CREATE_ATTRS)?;
    let project = target_project(&ctx, &m, "create_subnet")?;
    for (a, ok) in [
        ("segment_id", m.get("segment_id").is_none_or(Value::is_null)),
        (
            "service_types",
            m.get("service_types").is_none_or(|v| v == &json!([])),
        ),
    ] {
        if !ok {
            return Err(NetError::bad_request(format!(
                "{a} is not supported by this cloud"
            )));
        }
    }
    let network_id = opt_str(&m, "network_id")?.ok_or_else(|| {
        NetError::bad_request(
            "Failed to parse request. Required attribute 'network_id' not specified",
        )
    })?;
    // A prefix from a subnet pool (`subnetpool_id`, or the default pool),
    // carved inside the write below; else the `cidr` given.
    let pool = super::subnetpools::ask(&m)?;
    let cidr = opt_str(&m, "cidr")?.map(|c| parse_cidr(&c)).transpose()?;
    if pool.is_none() && cidr.is_none() {
        return Err(NetError::bad_request(
            "Bad subnets request: a subnetpool must be specified in the absence of a cidr.",
        ));
    }
    let sub = state.store.write(|tx| {
        let mut net = networks::find_in(tx, &ctx, &network_id)?;
        if !owns(&ctx, &net.project_id) {
            return Err(NetError::policy("create_subnet"));
        }
        networks::refuse_if_parents(&net)?;
        let (cidr, pool_id) = match &pool {
            Some(ask) => {
                let (c, id) = super::subnetpools::carve(tx, Some(&ctx), ask, &project, cidr)?;
                (c, Some(id))
            }
            None => (cidr.ok_or_else(|| NetError::invalid("cidr"))?, None),
        };
        let mut sub = build(&m, &project, &network_id, cidr)?;
        sub.subnetpool_id = pool_id;
        for other in tx.list::<Subnet>(&SQ::parent(&net.id))? {
            if let Some((oc, _)) = Cidr::parse_loose(&other.cidr)
                && oc.overlaps(&cidr)
            {
                return Err(NetError::invalid(format!(
                    "Requested subnet with cidr: {cidr} for network: {} overlaps with another subnet",
                    net.id
                )));
            }
        }
        super::quotas::check(tx, &project, "subnet", 1)?;
        tx.insert(&sub)?;
        net.std.touch();
        tx.update(&net)?;
        Ok::<_, NetError>(render(&sub, Some(&net)))
    })?;
    Ok(reply(StatusCode::CREATED, json!({ "subnet": sub })))
}

/// The subnet a create body asks for on prefix `cidr`: version, gateway,
/// pools, DNS servers, host routes and IPv6 modes checked as Neutron does.
pub(super) fn build(
    m: &Map<String, Value>,
    project: &str,
    network_id: &str,
    cidr: Cidr,
) -> NetResult<Subnet> {
    let cidr_s = cidr.to_string();
    let version = match opt_int(m, "ip_version")? {
        None => cidr.version(),
        Some(v @ (4 | 6)) => v as u8,
        Some(v) => {
            return Err(NetError::bad_request(format!(
                "Invalid input for ip_version. Reason: {v} is not in [4, 6]."
            )));
        }
    };
    if version != cidr.version() {
        return Err(NetError::invalid(format!(
            "Cidr {cidr_s} does not match the subnet's IP version {version}"
        )));
    }
    let gateway = match m.get("gateway_ip") {
        None => Some(cidr.first().offset(1))
            .filter(|g| cidr.contains(*g) && cidr.prefix < if cidr.base.v6 { 128 } else { 31 }),
        Some(Value::Null) => None,
        Some(v) => Some(parse_ip("gateway_ip", v)?),
    };
    if let Some(g) = gateway {
        if g.v6 != cidr.base.v6 {
            return Err(NetError::invalid(format!(
                "Gateway IP version {} does not match the subnet's {version}",
                g.version()
            )));
        }
        if cidr.contains(g) && (g == cidr.first() || !cidr.base.v6 && g == cidr.last()) {
            return Err(NetError::invalid("Gateway is not valid on subnet"));
        }
    }
    let pools = match m.get("allocation_pools") {
        None | Some(Value::Null) => default_pools(&cidr, gateway),
        Some(v) => parse_pools(v)?,
    };
    check_pools(&cidr, &pools, gateway)?;
    let dns = match m.get("dns_nameservers") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_dns(v, version)?,
    };
    let routes = match m.get("host_routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_routes(v, version)?,
    };
    let ra = ipv6_mode(m, "ipv6_ra_mode")?;
    let addr = ipv6_mode(m, "ipv6_address_mode")?;
    check_ipv6_modes(&cidr, &ra, &addr)?;
    Ok(Subnet {
        id: new_id(),
        network_id: network_id.to_string(),
        project_id: project.to_string(),
        name: opt_str(m, "name")?.unwrap_or_default(),
        cidr: cidr.to_string(),
        ip_version: version,
        gateway_ip: gateway.map(|g| g.to_string()),
        allocation_pools: pools
            .iter()
            .map(|(s, e)| Pool {
                start: s.to_string(),
                end: e.to_string(),
            })
            .collect(),
        dns_nameservers: dns,
        host_routes: routes,
        enable_dhcp: opt_bool(m, "enable_dhcp")?.unwrap_or(true),
        ipv6_ra_mode: ra,
        ipv6_address_mode: addr,
        subnetpool_id: None,
        std: Std::new(opt_str(m, "description")?.unwrap_or_default()),
    })
}

const UPDATE_ATTRS: &[&str] = &[
    "name",
    "description",
    "gateway_ip",
    "allocation_pools",
    "dns_nameservers",
    "host_routes",
    "enable_dhcp",
    "dns_publish_fixed_ip",
];

const READ_ONLY: &[&str] = &[
    "cidr",
    "ip_version",
    "network_id",
    "ipv6_ra_mode",
    "ipv6_address_mode",
    "id",
    "project_id",
    "tenant_id",
    "subnetpool_id",
];

async fn update(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> NetResult<Response> {
    require_member(&ctx, "update_subnet")?;
    if let Some(Value::Object(inner)) = body.get("subnet")
        && let Some(k) = inner.keys().find(|k| READ_ONLY.contains(&k.as_str()))
    {
        return Err(NetError::bad_request(format!(
            "Cannot update read-only attribute {k}"
        )));
    }
    let m = resource_body(body, "subnet", UPDATE_ATTRS)?;
    let sub = state.store.write(|tx| {
        let (mut s, _) = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &s.project_id) {
            return Err(NetError::policy("update_subnet"));
        }
        let (cidr, _) =
            Cidr::parse_loose(&s.cidr).ok_or_else(|| NetError::invalid("stored cidr"))?;
        if let Some(v) = opt_str(&m, "name")? {
            s.name = v;
        }
        if let Some(v) = opt_str(&m, "description")? {
            s.std.description = v;
        }
        if let Some(v) = opt_bool(&m, "enable_dhcp")? {
            s.enable_dhcp = v;
        }
        let mut gateway = s.gateway_ip.as_deref().and_then(Ip::parse);
        if let Some(v) = m.get("gateway_ip") {
            gateway = if v.is_null() {
                None
            } else {
                Some(parse_ip("gateway_ip", v)?)
            };
            if let Some(g) = gateway
                && (g.v6 != cidr.base.v6
                    || cidr.contains(g) && (g == cidr.first() || !cidr.base.v6 && g == cidr.last()))
            {
                return Err(NetError::invalid("Gateway is not valid on subnet"));
            }
            if let Some(g) = gateway
                && tx.exists::<IpAllocation>(&IpAllocation::key(&s.id, &g.to_string()))?
            {
                return Err(NetError::conflict(
                    "GatewayIpInUse",
                    format!("Current gateway ip {g} already in use by port. Unable to update."),
                ));
            }
        }
        let pools = match m.get("allocation_pools") {
            Some(v) if !v.is_null() => parse_pools(v)?,
            _ => s
                .allocation_pools
                .iter()
                .filter_map(|p| Some((Ip::parse(&p.start)?, Ip::parse(&p.end)?)))
                .collect(),
        };
        check_pools(&cidr, &pools, gateway)?;
        s.gateway_ip = gateway.map(|g| g.to_string());
        s.allocation_pools = pools
            .iter()
            .map(|(a, b)| Pool {
                start: a.to_string(),
                end: b.to_string(),
            })
            .collect();
        if let Some(v) = m.get("dns_nameservers") {
            s.dns_nameservers = if v.is_null() {
                Vec::new()
            } else {
                parse_dns(v, s.ip_version)?
            };
        }
        if let Some(v) = m.get("host_routes") {
            s.host_routes = if v.is_null() {
                Vec::new()
            } else {
                parse_routes(v, s.ip_version)?
            };
        }
        s.std.touch();
        tx.update(&s)?;
        Ok(s)
    })?;
    let net = state.store.get::<Network>(&sub.network_id)?;
    Ok(reply(
        StatusCode::OK,
        json!({ "subnet": render(&sub, net.as_ref()) }),
    ))
}

async fn delete(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
) -> NetResult<Response> {
    require_member(&ctx, "delete_subnet")?;
    state.store.write(|tx| {
        let (s, mut net) = find_in(tx, &ctx, &id)?;
        if !owns(&ctx, &s.project_id) {
            return Err(NetError::policy("delete_subnet"));
        }
        let allocs = tx.list::<IpAllocation>(&SQ::parent(&s.id))?;
        // Addresses of an auto-address (SLAAC) subnet leave the ports with
        // it, as in Neutron; only a router interface keeps it.
        let auto = is_slaac(&s);
        let released = |p: &Port| {
            p.network_owned() || auto && p.device_owner != super::model::OWNER_INTERFACE
        };
        let mut owned = Vec::new();
        for a in &allocs {
            match tx.get::<Port>(&a.port_id)? {
                Some(p) if !released(&p) => {
                    return Err(NetError::conflict(
                        "SubnetInUse",
                        format!("Unable to complete operation on subnet {id}: One or more ports have an IP allocation from this subnet."),
                    ));
                }
                Some(p) => owned.push(p),
                None => {}
            }
        }
        for mut p in owned {
            p.fixed_ips.retain(|f| f.subnet_id != s.id);
            p.std.touch();
            tx.update(&p)?;
        }
        for a in allocs {
            tx.delete::<IpAllocation>(&a.id)?;
        }
        tx.delete::<Subnet>(&s.id)?;
        net.std.touch();
        tx.update(&net)?;
        Ok::<_, NetError>(())
    })?;
    Ok(super::no_content())
}
