//! What the controller wants wired on a node ([`HostNetwork`]): the
//! networks its ports are on, the ports with their filter rules, the
//! routers and DHCP servers it runs. The agent's dataplane
//! (`stratus_agent::net::Dataplane`) makes it so.

use serde::{Deserialize, Serialize};

/// Everything this node must wire: the networks its ports are on, and the
/// ports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostNetwork {
    #[serde(default)]
    pub networks: Vec<Segment>,
    #[serde(default)]
    pub ports: Vec<PortWiring>,
    /// Routers this node runs (their ports are in `ports`, with the
    /// router as their device).
    #[serde(default)]
    pub routers: Vec<RouterWiring>,
    /// DHCP servers this node runs: one per network it has ports on,
    /// answering for this node's ports only.
    #[serde(default)]
    pub dhcp: Vec<DhcpWiring>,
}

/// The DHCP server of one network on one node: its port (in `ports`,
/// with the DHCP namespace as its device) and the leases it hands out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhcpWiring {
    pub network_id: String,
    /// The DHCP port's id.
    pub port: String,
    /// (MAC, IPv4 address, host name) of each port on this node.
    pub hosts: Vec<(String, String, String)>,
    pub subnets: Vec<DhcpSubnet>,
    pub mtu: u32,
}

/// What a lease says about one subnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhcpSubnet {
    /// `a.b.c.d/len`.
    pub cidr: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A router: a network namespace with an interface on each of its
/// subnets (`qr-*`) and, with a gateway, one on the external network
/// (`qg-*`) holding its floating IPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterWiring {
    pub id: String,
    /// The gateway port's id, when the router has one.
    #[serde(default)]
    pub gateway_port: Option<String>,
    /// Source NAT of the router's subnets behind its gateway address.
    pub snat: bool,
    /// (floating address, fixed address) pairs.
    #[serde(default)]
    pub floating: Vec<(String, String)>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// One network as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub id: String,
    /// The VXLAN network identifier (Neutron's `provider:segmentation_id`).
    pub vni: u32,
    pub mtu: u32,
    /// Tunnel addresses of the other nodes with ports on this network.
    #[serde(default)]
    pub peers: Vec<String>,
    /// An address (`ip/prefix`) this node's own side takes on the
    /// network's bridge: the external network's gateway on the node that
    /// runs the routers, so the host reaches floating IPs and routers
    /// reach the host.
    #[serde(default)]
    pub host_address: Option<String>,
}

/// One port bound to a workload on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortWiring {
    pub id: String,
    /// The server the port belongs to (its network namespace).
    pub device_id: String,
    pub network_id: String,
    /// The interface name inside the workload (`eth0`, `eth1`, ...).
    pub ifname: String,
    pub mac: String,
    pub mtu: u32,
    #[serde(default)]
    pub addresses: Vec<PortAddress>,
    /// Host routes of the port's subnets.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// Filtering and anti-spoofing apply (Neutron's `port_security_enabled`).
    pub port_security: bool,
    /// Extra (ip or CIDR, MAC) pairs the port may send from.
    #[serde(default)]
    pub allowed_pairs: Vec<(String, String)>,
    /// The port's security group rules, remote groups already resolved to
    /// addresses.
    #[serde(default)]
    pub rules: Vec<FilterRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortAddress {
    pub ip: String,
    pub prefix_len: u8,
    /// 4 or 6.
    pub version: u8,
    #[serde(default)]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

/// One security group rule, as Neutron stores it, with a remote group
/// turned into the addresses of its member ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterRule {
    pub direction: Direction,
    /// 4 or 6.
    pub version: u8,
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`, another name nftables knows, or
    /// an IP protocol number; `None` is any.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_min: Option<u32>,
    #[serde(default)]
    pub port_max: Option<u32>,
    /// Remote addresses (CIDRs or single addresses); `None` is any. An
    /// empty list matches nothing (a remote group with no members).
    #[serde(default)]
    pub remote: Option<Vec<String>>,
}

/// The device (and namespace) name of a network's DHCP server on `host`:
/// both ends spell it the same, so it lives here.
pub fn dhcp_device(network_id: &str, host: &str) -> String {
    let short: String = network_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(11)
        .collect();
    // FNV-1a of the host name: short, stable, no dependency.
    let h = host.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("dhcp-{short}-{:08x}", h as u32)
}
