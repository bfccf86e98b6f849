//! What the compute service asks of the network service: a server's ports
//! (made in the same transaction as the server, released with it), their
//! binding to the node the server runs on, and the wiring a node must do
//! ([`host_network`], the agent's view).
//!
//! The compute side keeps a copy of each port's addresses on the server
//! (`Nic`, Nova's network info cache) so that server lists render
//! `addresses` without reading ports.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use stratus_store::{Query as SQ, Tx};
use stratus_wire::net::{
    DhcpSubnet, DhcpWiring, Direction, FilterRule, HostNetwork, PortAddress, PortWiring, Route,
    RouterWiring, Segment,
};

use super::ipam::Cidr;
use super::model::{FloatingIp, Network, Port, Router, SecurityGroup, SecurityGroupRule, Subnet};
use super::model::{OWNER_DHCP, OWNER_GATEWAY, OWNER_INTERFACE};
use super::{NetError, NetResult, networks, ports};
use crate::identity::policy::Ctx;

/// One requested NIC of a server create (`networks: [{uuid, port,
/// fixed_ip}]`).
#[derive(Debug, Clone, Default)]
pub struct NicRequest {
    pub network_id: Option<String>,
    pub port_id: Option<String>,
    pub fixed_ip: Option<String>,
}

/// What a server create asked for.
#[derive(Debug, Clone)]
pub enum Requested {
    /// `networks: none`.
    Nothing,
    /// `networks: auto` (`allocate`: a project with no network gets its
    /// auto-allocated topology, Nova's "Get Me A Network"), or no
    /// `networks` before 2.37 (the one network the project can use, or
    /// none).
    Auto {
        allocate: bool,
    },
    List(Vec<NicRequest>),
}

/// A server's port as the compute side keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub port_id: String,
    pub network_id: String,
    pub network_name: String,
    pub mac: String,
    pub ips: Vec<String>,
    /// The interface name inside the server (`eth0`, `eth1`, ...), kept
    /// while the port is attached.
    #[serde(default)]
    pub ifname: String,
    /// Names of the port's security groups (Nova shows them per server).
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The user brought the port (`--nic port-id=`): it is unbound, not
    /// deleted, when the server goes.
    #[serde(default)]
    pub preserve: bool,
}

impl Nic {
    fn of(tx: &Tx, p: &Port, net: &Network, preserve: bool) -> NetResult<Nic> {
        let mut groups = Vec::new();
        for g in &p.security_groups {
            if let Some(g) = tx.get::<SecurityGroup>(g)? {
                groups.push(g.name);
            }
        }
        Ok(Nic {
            port_id: p.id.clone(),
            network_id: net.id.clone(),
            network_name: net.name.clone(),
            mac: p.mac_address.clone(),
            ips: p.fixed_ips.iter().map(|f| f.ip_address.clone()).collect(),
            ifname: String::new(),
            security_groups: groups,
            preserve,
        })
    }
}

/// The networks `networks: auto` may pick for `project`: its own and
/// shared ones, never an external one (Nova's choice, less the floating
/// pool).
fn usable(tx: &Tx, project: &str) -> NetResult<Vec<Network>> {
    Ok(tx
        .list::<Network>(&SQ::all())?
        .into_iter()
        .filter(|n| (n.project_id == project || n.shared) && !n.external && n.admin_state_up)
        .collect())
}

/// Makes (or takes) the ports of server `server_id` inside `tx`.
pub fn plug(
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    server_id: &str,
    zone: &str,
    req: &Requested,
    groups: Option<&[String]>,
) -> NetResult<Vec<Nic>> {
    let wanted: Vec<NicRequest> = match req {
        Requested::Nothing => return Ok(Vec::new()),
        Requested::Auto { allocate } => {
            let nets = usable(tx, project)?;
            match nets.len() {
                0 if *allocate => match super::auto_allocate::ensure_in(tx, project)? {
                    Some(id) => vec![NicRequest {
                        network_id: Some(id),
                        ..NicRequest::default()
                    }],
                    None => return Ok(Vec::new()),
                },
                0 => return Ok(Vec::new()),
                1 => vec![NicRequest {
                    network_id: Some(nets[0].id.clone()),
                    ..NicRequest::default()
                }],
                _ => {
                    return Err(NetError::conflict(
                        "NetworkAmbiguous",
                        "Multiple possible networks found, use a Network ID to be more specific.",
                    ));
                }
            }
        }
        Requested::List(l) => l.clone(),
    };
    let owner = format!("compute:{zone}");
    // Security groups by name or id, in the project (Nova's lookup).
    let group_ids = match groups {
        None => None,
        Some(names) => {
            let mine = tx.list::<SecurityGroup>(&SQ::owner(project))?;
            let mut ids = Vec::new();
            for n in names {
                if n == "default" && !mine.iter().any(|g| g.name == "default") {
                    ids.push(super::security_groups::ensure_default(tx, project)?.id);
                    continue;
                }
                let found: Vec<&SecurityGroup> =
                    mine.iter().filter(|g| &g.id == n || &g.name == n).collect();
                match found.as_slice() {
                    [g] => ids.push(g.id.clone()),
                    [] => {
                        return Err(NetError::bad(
                            "SecurityGroupNotFound",
                            format!("Security group {n} not found for project {project}."),
                        ));
                    }
                    _ => {
                        return Err(NetError::conflict(
                            "NoUniqueMatch",
                            format!(
                                "Multiple security groups found matching '{n}'. Use an ID to be more specific."
                            ),
                        ));
                    }
                }
            }
            ids.sort();
            ids.dedup();
            Some(ids)
        }
    };
    let mut nics = Vec::new();
    for w in wanted {
        if let Some(pid) = &w.port_id {
            let mut p = tx
                .get::<Port>(pid)?
                .filter(|p| ctx.is_admin() || p.project_id == project)
                .ok_or_else(|| {
                    NetError::not_found("PortNotFound", format!("Port {pid} could not be found."))
                })?;
            if !p.device_id.is_empty() {
                return Err(NetError::conflict(
                    "PortInUse",
                    format!("Port {pid} is still in use."),
                ));
            }
            let net = tx
                .get::<Network>(&p.network_id)?
                .ok_or_else(|| networks::not_found(&p.network_id))?;
            networks::refuse_if_parents(&net)?;
            p.device_id = server_id.to_string();
            p.device_owner = owner.clone();
            p.std.touch();
            tx.update(&p)?;
            nics.push(Nic::of(tx, &p, &net, true)?);
            continue;
        }
        let Some(net_id) = &w.network_id else {
            continue;
        };
        let mut m = Map::new();
        m.insert("network_id".into(), json!(net_id));
        m.insert("device_id".into(), json!(server_id));
        m.insert("device_owner".into(), json!(owner));
        if let Some(ip) = &w.fixed_ip {
            m.insert("fixed_ips".into(), json!([{ "ip_address": ip }]));
        }
        if let Some(g) = &group_ids {
            m.insert("security_groups".into(), json!(g));
        }
        let p = ports::create_in(tx, ctx, project, &m, &super::new_id())?;
        let net = networks::find_in(tx, ctx, net_id)?;
        nics.push(Nic::of(tx, &p, &net, false)?);
    }
    for (i, n) in nics.iter_mut().enumerate() {
        n.ifname = format!("eth{i}");
    }
    Ok(nics)
}

/// Attaches one more port to a server that has `nics` (`os-interface`):
/// the new NIC, named with the lowest free `ethN`.
pub fn attach(
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    server_id: &str,
    zone: &str,
    nics: &[Nic],
    req: NicRequest,
) -> NetResult<Nic> {
    let mut made = plug(
        tx,
        ctx,
        project,
        server_id,
        zone,
        &Requested::List(vec![req]),
        None,
    )?;
    let mut nic = made
        .pop()
        .ok_or_else(|| NetError::bad_request("Must input network_id or port_id"))?;
    let taken: BTreeSet<&str> = nics.iter().map(|n| n.ifname.as_str()).collect();
    nic.ifname = (0..)
        .map(|i| format!("eth{i}"))
        .find(|n| !taken.contains(n.as_str()))
        .expect("a free name");
    Ok(nic)
}

/// Puts security group `group` (name or id) on every port of a server
/// (`add`), or takes it off; the server's NICs with their new group
/// names. Neutron's `SecurityGroupNotFound` when the project has no such
/// group; removing a group no port has is `SecurityGroupNotInUse`.
pub fn change_group(
    tx: &Tx,
    project: &str,
    nics: &[Nic],
    group: &str,
    add: bool,
) -> NetResult<Vec<Nic>> {
    let mine = tx.list::<SecurityGroup>(&SQ::owner(project))?;
    let found: Vec<&SecurityGroup> = mine
        .iter()
        .filter(|g| g.id == group || g.name == group)
        .collect();
    let g = match found.as_slice() {
        [g] => (*g).clone(),
        [] => {
            return Err(NetError::not_found(
                "SecurityGroupNotFound",
                format!("Security group {group} not found for project {project}."),
            ));
        }
        _ => {
            return Err(NetError::conflict(
                "NoUniqueMatch",
                format!(
                    "Multiple security groups found matching '{group}'. Use an ID to be more specific."
                ),
            ));
        }
    };
    let mut out = Vec::new();
    let mut changed = false;
    for n in nics {
        let Some(mut p) = tx.get::<Port>(&n.port_id)? else {
            continue;
        };
        let has = p.security_groups.contains(&g.id);
        if add && !has {
            if !p.port_security_enabled {
                return Err(NetError::bad(
                    "PortSecurityAndIPRequiredForSecurityGroups",
                    "Port security must be enabled and port must have an IP address in order to use security groups.",
                ));
            }
            p.security_groups.push(g.id.clone());
        } else if !add && has {
            p.security_groups.retain(|x| x != &g.id);
        } else {
            out.push(n.clone());
            continue;
        }
        changed = true;
        p.std.touch();
        tx.update(&p)?;
        let net = tx
            .get::<Network>(&p.network_id)?
            .ok_or_else(|| networks::not_found(&p.network_id))?;
        let mut nic = Nic::of(tx, &p, &net, n.preserve)?;
        nic.ifname = n.ifname.clone();
        out.push(nic);
    }
    if !changed && !add {
        return Err(NetError::not_found(
            "SecurityGroupNotInUse",
            format!("Security Group {} not in use.", g.name),
        ));
    }
    if !changed && add && !nics.is_empty() {
        return Err(NetError::bad(
            "SecurityGroupExistsForInstance",
            format!(
                "Security group {} is already associated with the instance",
                g.name
            ),
        ));
    }
    Ok(out)
}

/// Nova's `addFloatingIp` (before 2.44): maps the project's floating IP
/// `address` to the server's port holding `fixed` (or its first IPv4
/// address).
pub fn add_floating(
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    nics: &[Nic],
    address: &str,
    fixed: Option<String>,
) -> NetResult<()> {
    let mut f = floating_by_address(tx, ctx, project, address)?;
    let nic = match &fixed {
        Some(ip) => nics
            .iter()
            .find(|n| n.ips.iter().any(|x| x == ip))
            .ok_or_else(|| {
                NetError::bad(
                    "FixedIpNotFoundForAddress",
                    format!("Fixed IP {ip} is not an address of this server."),
                )
            })?,
        None => nics
            .iter()
            .find(|n| n.ips.iter().any(|x| !x.contains(':')))
            .ok_or_else(|| {
                NetError::bad(
                    "FixedIpNotFoundForInstance",
                    "The server has no fixed IPv4 address to map a floating IP to.",
                )
            })?,
    };
    let fixed = fixed.or_else(|| nic.ips.iter().find(|x| !x.contains(':')).cloned());
    super::floating_ips::associate(tx, ctx, &mut f, &nic.port_id, fixed)?;
    f.std.touch();
    tx.update(&f)?;
    Ok(())
}

/// Nova's `removeFloatingIp` (before 2.44): unmaps `address` from the
/// server.
pub fn remove_floating(
    tx: &Tx,
    ctx: &Ctx,
    project: &str,
    nics: &[Nic],
    address: &str,
) -> NetResult<()> {
    let mut f = floating_by_address(tx, ctx, project, address)?;
    let mine = f
        .port_id
        .as_ref()
        .is_some_and(|p| nics.iter().any(|n| &n.port_id == p));
    if !mine {
        return Err(NetError::conflict(
            "FloatingIpNotAssociated",
            format!("Floating IP {address} is not associated with this server."),
        ));
    }
    super::floating_ips::disassociate(&mut f);
    f.std.touch();
    tx.update(&f)?;
    Ok(())
}

fn floating_by_address(tx: &Tx, ctx: &Ctx, project: &str, address: &str) -> NetResult<FloatingIp> {
    tx.list::<FloatingIp>(&SQ::all())?
        .into_iter()
        .find(|f| f.floating_ip_address == address && (f.project_id == project || ctx.is_admin()))
        .ok_or_else(|| {
            NetError::not_found(
                "FloatingIPNotFound",
                format!("floating IP not found for address {address}"),
            )
        })
}

/// Releases a server's ports inside `tx`: deletes those made for it,
/// unbinds those the user brought.
pub fn unplug(tx: &Tx, nics: &[Nic]) -> NetResult<()> {
    for n in nics {
        let Some(mut p) = tx.get::<Port>(&n.port_id)? else {
            continue;
        };
        if n.preserve {
            p.device_id.clear();
            p.device_owner.clear();
            p.host_id.clear();
            p.status = "DOWN".into();
            p.std.touch();
            tx.update(&p)?;
        } else {
            ports::delete_in(tx, &p)?;
        }
    }
    Ok(())
}

/// Binds a server's ports to `host` (`binding:host_id`, status ACTIVE);
/// writes only what changes. A port no longer attached to anything (its
/// server went after the caller read it) stays unbound.
pub fn bind(tx: &Tx, nics: &[Nic], host: &str) -> NetResult<()> {
    for n in nics {
        if let Some(mut p) = tx.get::<Port>(&n.port_id)?
            && !p.device_id.is_empty()
            && (p.host_id != host || p.status != "ACTIVE")
        {
            p.host_id = host.to_string();
            p.status = "ACTIVE".into();
            p.std.touch();
            tx.update(&p)?;
        }
    }
    Ok(())
}

/// Binds every router port to `host`, the node that runs the routers
/// (writes only what changes).
pub fn bind_routers(tx: &Tx, host: &str) -> NetResult<()> {
    for mut p in router_ports(tx)? {
        if p.host_id != host {
            p.host_id = host.to_string();
            p.std.touch();
            tx.update(&p)?;
        }
    }
    Ok(())
}

/// Whether a stored change concerns what nodes wire (ports, networks,
/// subnets, security groups and rules).
pub fn is_wiring_kind(kind: &str) -> bool {
    matches!(
        kind,
        "port"
            | "network"
            | "subnet"
            | "security_group"
            | "security_group_rule"
            | "router"
            | "floatingip"
    )
}

/// Lookups shared by the ports of one [`host_network`] answer.
#[derive(Default)]
struct Cache {
    nets: BTreeMap<String, Network>,
    subnets: HashMap<String, Subnet>,
    group_rules: HashMap<String, Vec<SecurityGroupRule>>,
    members: HashMap<String, Vec<String>>,
}

impl Cache {
    fn network(&mut self, tx: &Tx, id: &str) -> NetResult<Option<Network>> {
        if let Some(n) = self.nets.get(id) {
            return Ok(Some(n.clone()));
        }
        let n = tx.get::<Network>(id)?;
        if let Some(n) = &n {
            self.nets.insert(n.id.clone(), n.clone());
        }
        Ok(n)
    }

    fn subnet(&mut self, tx: &Tx, id: &str) -> NetResult<Option<Subnet>> {
        if let Some(s) = self.subnets.get(id) {
            return Ok(Some(s.clone()));
        }
        let s = tx.get::<Subnet>(id)?;
        if let Some(s) = &s {
            self.subnets.insert(s.id.clone(), s.clone());
        }
        Ok(s)
    }
}

/// How a port is wired: `device` is the namespace it goes in (a server or
/// a router), `with_gateway` whether its subnets' gateways become its
/// default route (not for a router's own interfaces).
fn port_wiring(
    tx: &Tx,
    cache: &mut Cache,
    p: &Port,
    device: &str,
    ifname: String,
    with_gateway: bool,
) -> NetResult<Option<PortWiring>> {
    let Some(net) = cache.network(tx, &p.network_id)? else {
        return Ok(None);
    };
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    let mut dns = Vec::new();
    for f in &p.fixed_ips {
        let Some(sub) = cache.subnet(tx, &f.subnet_id)? else {
            continue;
        };
        let Some((cidr, _)) = Cidr::parse_loose(&sub.cidr) else {
            continue;
        };
        addresses.push(PortAddress {
            ip: f.ip_address.clone(),
            prefix_len: cidr.prefix,
            version: sub.ip_version,
            gateway: if with_gateway {
                sub.gateway_ip.clone()
            } else {
                None
            },
        });
        routes.extend(sub.host_routes.iter().map(|r| Route {
            destination: r.destination.clone(),
            nexthop: r.nexthop.clone(),
        }));
        dns.extend(sub.dns_nameservers.iter().cloned());
    }
    let mut rules = Vec::new();
    if p.port_security_enabled {
        for g in &p.security_groups {
            if !cache.group_rules.contains_key(g) {
                let r = tx.list::<SecurityGroupRule>(&SQ::parent(g))?;
                cache.group_rules.insert(g.clone(), r);
            }
            for r in cache.group_rules[g].clone() {
                let remote = match (&r.remote_group_id, &r.remote_ip_prefix) {
                    (Some(rg), _) => Some(group_members(tx, rg, &mut cache.members)?),
                    (None, Some(prefix)) => Some(vec![prefix.clone()]),
                    (None, None) => None,
                };
                rules.push(FilterRule {
                    direction: if r.direction == "egress" {
                        Direction::Egress
                    } else {
                        Direction::Ingress
                    },
                    version: if r.ethertype == "IPv6" { 6 } else { 4 },
                    protocol: r.protocol.clone(),
                    port_min: r.port_range_min,
                    port_max: r.port_range_max,
                    remote,
                });
            }
        }
    }
    Ok(Some(PortWiring {
        id: p.id.clone(),
        device_id: device.to_string(),
        network_id: net.id.clone(),
        ifname,
        mac: p.mac_address.clone(),
        mtu: net.mtu,
        addresses,
        routes,
        dns,
        port_security: p.port_security_enabled,
        allowed_pairs: p
            .allowed_address_pairs
            .iter()
            .map(|a| (a.ip_address.clone(), a.mac_address.clone()))
            .collect(),
        rules,
    }))
}

/// The network's DHCP port (`network:dhcp`, one address on each
/// DHCP-enabled IPv4 subnet), made on first use. Every node that serves
/// the network answers from it; its traffic never crosses to another
/// node (see the agent's rules), so the one address serves them all.
fn dhcp_port(tx: &Tx, net: &Network, subs: &[Subnet]) -> NetResult<Option<Port>> {
    if let Some(p) = tx
        .list::<Port>(&SQ::parent(&net.id))?
        .into_iter()
        .find(|p| p.device_owner == OWNER_DHCP)
    {
        return Ok(Some(p));
    }
    // At an edge site the parent makes the DHCP port of its networks
    // (with the server's ports); until it arrives there is none.
    if net.std.from_parent {
        return Ok(None);
    }
    let id = super::new_id();
    let mut fixed = Vec::new();
    for s in subs {
        if let Some(ip) = super::ipam::next_free(tx, s)? {
            super::ipam::claim(tx, s, ip, &id)?;
            fixed.push(super::model::FixedIp {
                subnet_id: s.id.clone(),
                ip_address: ip.to_string(),
            });
        }
    }
    super::routers::service_port(
        tx,
        net,
        &id,
        &net.project_id,
        &format!("dhcp{}", net.id),
        OWNER_DHCP,
        fixed,
    )
    .map(Some)
}

/// Makes the DHCP port of each network `nics` are on (with a DHCP
/// subnet) now rather than when a node first wires it: for servers an
/// edge site runs, whose addresses this controller hands out.
pub fn ensure_dhcp_ports(tx: &Tx, nics: &[Nic]) -> NetResult<()> {
    let nets: BTreeSet<&str> = nics.iter().map(|n| n.network_id.as_str()).collect();
    for id in nets {
        let Some(net) = tx.get::<Network>(id)? else {
            continue;
        };
        let subs: Vec<Subnet> = tx
            .list::<Subnet>(&SQ::parent(&net.id))?
            .into_iter()
            .filter(|s| s.enable_dhcp && s.ip_version == 4)
            .collect();
        if !subs.is_empty() {
            dhcp_port(tx, &net, &subs)?;
        }
    }
    Ok(())
}

/// The ports of the routers a node runs: each router's interfaces and
/// gateway, with its floating IPs on the gateway.
pub fn router_ports(tx: &Tx) -> NetResult<Vec<Port>> {
    Ok(tx
        .list::<Port>(&SQ::all())?
        .into_iter()
        .filter(|p| p.device_owner == OWNER_INTERFACE || p.device_owner == OWNER_GATEWAY)
        .collect())
}

/// What node `host` must wire for the servers on it: their ports, with
/// addresses, rules (remote groups resolved) and the other nodes that
/// share each network; and every router when `l3` (this node runs them).
/// `tunnels` maps hosts to their tunnel addresses.
pub fn host_network(
    tx: &Tx,
    host: &str,
    servers: &[(String, Vec<Nic>)],
    tunnels: &HashMap<String, String>,
    l3: bool,
) -> NetResult<HostNetwork> {
    let mut out = HostNetwork::default();
    let mut cache = Cache::default();
    for (server_id, nics) in servers {
        for (i, nic) in nics.iter().enumerate() {
            let Some(p) = tx.get::<Port>(&nic.port_id)? else {
                continue;
            };
            let ifname = if nic.ifname.is_empty() {
                format!("eth{i}")
            } else {
                nic.ifname.clone()
            };
            if let Some(w) = port_wiring(tx, &mut cache, &p, server_id, ifname, true)? {
                out.ports.push(w);
            }
        }
    }
    // A DHCP server per network this node has servers on.
    let mut server_nets: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for p in &out.ports {
        let hosts = server_nets.entry(p.network_id.clone()).or_default();
        for a in p.addresses.iter().filter(|a| a.version == 4) {
            hosts.push((
                p.mac.clone(),
                a.ip.clone(),
                format!("host-{}", a.ip.replace('.', "-")),
            ));
        }
    }
    for (net_id, hosts) in server_nets {
        let Some(net) = cache.network(tx, &net_id)? else {
            continue;
        };
        let subs: Vec<Subnet> = tx
            .list::<Subnet>(&SQ::parent(&net.id))?
            .into_iter()
            .filter(|s| s.enable_dhcp && s.ip_version == 4)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let Some(port) = dhcp_port(tx, &net, &subs)? else {
            continue;
        };
        let short: String = port
            .id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(11)
            .collect();
        let device = stratus_wire::net::dhcp_device(&net.id, host);
        let Some(w) = port_wiring(tx, &mut cache, &port, &device, format!("ns-{short}"), false)?
        else {
            continue;
        };
        out.ports.push(w);
        out.dhcp.push(DhcpWiring {
            network_id: net.id.clone(),
            port: port.id.clone(),
            hosts,
            mtu: net.mtu,
            subnets: subs
                .iter()
                .map(|s| DhcpSubnet {
                    cidr: s.cidr.clone(),
                    gateway: s.gateway_ip.clone(),
                    dns: s.dns_nameservers.clone(),
                    routes: s
                        .host_routes
                        .iter()
                        .map(|r| Route {
                            destination: r.destination.clone(),
                            nexthop: r.nexthop.clone(),
                        })
                        .collect(),
                })
                .collect(),
        });
    }
    if l3 {
        let ports = router_ports(tx)?;
        for r in tx.list::<Router>(&SQ::all())? {
            let mine: Vec<&Port> = ports.iter().filter(|p| p.device_id == r.id).collect();
            if mine.is_empty() {
                continue;
            }
            let floating: Vec<(String, String)> = tx
                .list::<FloatingIp>(&SQ::all())?
                .into_iter()
                .filter(|f| f.router_id.as_deref() == Some(r.id.as_str()) && f.port_id.is_some())
                .filter_map(|f| Some((f.floating_ip_address, f.fixed_ip_address?)))
                .collect();
            let mut gateway_port = None;
            for p in mine {
                let gw = p.device_owner == OWNER_GATEWAY;
                let short: String =
                    p.id.chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(11)
                        .collect();
                let ifname = format!("{}-{short}", if gw { "qg" } else { "qr" });
                let Some(mut w) = port_wiring(tx, &mut cache, p, &r.id, ifname, gw)? else {
                    continue;
                };
                if gw {
                    gateway_port = Some(p.id.clone());
                    // The floating addresses live on the gateway.
                    for (fip, _) in &floating {
                        w.addresses.push(PortAddress {
                            ip: fip.clone(),
                            prefix_len: 32,
                            version: 4,
                            gateway: None,
                        });
                    }
                }
                out.ports.push(w);
            }
            out.routers.push(RouterWiring {
                id: r.id.clone(),
                snat: r.gateway.as_ref().is_some_and(|g| g.enable_snat),
                gateway_port,
                floating,
                routes: r
                    .routes
                    .iter()
                    .map(|x| Route {
                        destination: x.destination.clone(),
                        nexthop: x.nexthop.clone(),
                    })
                    .collect(),
            });
        }
    }
    for net in cache.nets.values() {
        let peers: BTreeSet<String> = tx
            .list::<Port>(&SQ::parent(&net.id))?
            .into_iter()
            .filter(|p| !p.host_id.is_empty() && p.host_id != host)
            .filter_map(|p| tunnels.get(&p.host_id).cloned())
            .filter(|ip| {
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|a| !a.is_loopback() && !a.is_unspecified())
            })
            .collect();
        // The node that runs the routers is the external network's host
        // side: it takes the external subnet's gateway address.
        let host_address = if l3 && net.external {
            tx.list::<Subnet>(&SQ::parent(&net.id))?
                .into_iter()
                .filter(|s| s.ip_version == 4)
                .find_map(|s| {
                    let (cidr, _) = Cidr::parse_loose(&s.cidr)?;
                    Some(format!("{}/{}", s.gateway_ip?, cidr.prefix))
                })
        } else {
            None
        };
        out.networks.push(Segment {
            id: net.id.clone(),
            vni: net.segmentation_id.unwrap_or(0),
            mtu: net.mtu,
            peers: peers.into_iter().collect(),
            host_address,
        });
    }
    Ok(out)
}

/// The addresses of the ports in security group `group` (a remote group).
fn group_members(
    tx: &Tx,
    group: &str,
    cache: &mut HashMap<String, Vec<String>>,
) -> NetResult<Vec<String>> {
    if let Some(m) = cache.get(group) {
        return Ok(m.clone());
    }
    let Some(g) = tx.get::<SecurityGroup>(group)? else {
        return Ok(Vec::new());
    };
    let mut ips: Vec<String> = tx
        .list::<Port>(&SQ::owner(&g.project_id))?
        .into_iter()
        .filter(|p| p.security_groups.iter().any(|x| x == group))
        .flat_map(|p| {
            let pairs: Vec<String> = p
                .allowed_address_pairs
                .iter()
                .map(|a| a.ip_address.clone())
                .collect();
            p.fixed_ips
                .into_iter()
                .map(|f| f.ip_address)
                .chain(pairs)
                .collect::<Vec<_>>()
        })
        .collect();
    ips.sort();
    ips.dedup();
    cache.insert(group.to_string(), ips.clone());
    Ok(ips)
}

/// The `addresses` of a server: per network name, its ports' addresses,
/// each fixed one followed by the floating IP mapped to it.
pub fn addresses(store: &stratus_store::Store, project: &str, nics: &[Nic]) -> Value {
    let floating: Vec<FloatingIp> = if nics.is_empty() {
        Vec::new()
    } else {
        store
            .list::<FloatingIp>(&SQ::owner(project))
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f.port_id.is_some())
            .collect()
    };
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for n in nics {
        let list = out.entry(n.network_name.clone()).or_default();
        for ip in &n.ips {
            list.push(json!({
                "version": if ip.contains(':') { 6 } else { 4 },
                "addr": ip,
                "OS-EXT-IPS:type": "fixed",
                "OS-EXT-IPS-MAC:mac_addr": n.mac,
            }));
            for f in floating.iter().filter(|f| {
                f.port_id.as_deref() == Some(n.port_id.as_str())
                    && f.fixed_ip_address.as_deref() == Some(ip.as_str())
            }) {
                list.push(json!({
                    "version": 4,
                    "addr": f.floating_ip_address,
                    "OS-EXT-IPS:type": "floating",
                    "OS-EXT-IPS-MAC:mac_addr": n.mac,
                }));
            }
        }
    }
    json!(out)
}
