//! The network service's stored records and how they render.
//!
//! What we store: networks, subnets (under their network), ports (under
//! their network, the MAC checked unique per network), one
//! `ip_allocation` per address a port holds (under its subnet: the IPAM's
//! exact record, see `ipam.rs`), security groups (owned by their project)
//! and rules (under their group), and per-project quota overrides.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use stratus_store::Record;

/// Standard attributes every Neutron resource carries.
/// The `device_owner` of the ports the network service itself holds.
pub const OWNER_INTERFACE: &str = "network:router_interface";
pub const OWNER_GATEWAY: &str = "network:router_gateway";
pub const OWNER_FLOATINGIP: &str = "network:floatingip";
pub const OWNER_DHCP: &str = "network:dhcp";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Std {
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
    #[serde(default)]
    pub tags: Vec<String>,
    /// At an edge site: the document came down from the parent, which
    /// owns it (and its addresses); never shown in the API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_parent: bool,
}

impl Std {
    pub fn new(description: String) -> Std {
        let now = super::now_ts();
        Std {
            description,
            created_at: now.clone(),
            updated_at: now,
            revision_number: 1,
            tags: Vec::new(),
            from_parent: false,
        }
    }
    /// Marks a change: a new revision and update time.
    pub fn touch(&mut self) {
        self.revision_number += 1;
        self.updated_at = super::now_ts();
    }
    fn put(&self, v: &mut Value) {
        v["description"] = json!(self.description);
        v["created_at"] = json!(self.created_at);
        v["updated_at"] = json!(self.updated_at);
        v["revision_number"] = json!(self.revision_number);
        v["tags"] = json!(self.tags);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub admin_state_up: bool,
    pub shared: bool,
    pub external: bool,
    pub mtu: u32,
    pub port_security_enabled: bool,
    pub network_type: String,
    pub physical_network: Option<String>,
    pub segmentation_id: Option<u32>,
    #[serde(default)]
    pub availability_zone_hints: Vec<String>,
    /// The deployment's default external network (`is_default`, from the
    /// auto-allocated-topology extension).
    #[serde(default)]
    pub is_default: bool,
    /// Projects (or `*`) an `access_as_shared` RBAC policy shares the
    /// network with; kept here, in the policy's own transaction, so that
    /// `networks::visible` needs no lookup (see `rbac.rs`).
    #[serde(default)]
    pub rbac_shared: Vec<String>,
    /// Projects (or `*`) an `access_as_external` RBAC policy makes the
    /// network external for.
    #[serde(default)]
    pub rbac_external: Vec<String>,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    Network,
    "network",
    owner = |n| Some(&n.project_id),
    name = |n| Some(&n.name)
);

impl Network {
    /// The API view; `admin` adds the `provider:*` attributes.
    pub fn render(&self, subnets: Vec<String>, admin: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "admin_state_up": self.admin_state_up,
            "shared": self.shared,
            "router:external": self.external,
            "mtu": self.mtu,
            "status": "ACTIVE",
            "subnets": subnets,
            "port_security_enabled": self.port_security_enabled,
            "availability_zone_hints": self.availability_zone_hints,
            "availability_zones": [],
            "ipv4_address_scope": null,
            "ipv6_address_scope": null,
            "is_default": self.is_default,
            "l2_adjacency": true,
        });
        if admin {
            v["provider:network_type"] = json!(self.network_type);
            v["provider:physical_network"] = json!(self.physical_network);
            v["provider:segmentation_id"] = json!(self.segmentation_id);
        }
        self.std.put(&mut v);
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: String,
    pub nexthop: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subnet {
    pub id: String,
    pub network_id: String,
    pub project_id: String,
    pub name: String,
    pub cidr: String,
    pub ip_version: u8,
    pub gateway_ip: Option<String>,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<String>,
    pub host_routes: Vec<HostRoute>,
    pub enable_dhcp: bool,
    pub ipv6_ra_mode: Option<String>,
    pub ipv6_address_mode: Option<String>,
    /// The subnet pool its prefix was carved from.
    #[serde(default)]
    pub subnetpool_id: Option<String>,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    Subnet,
    "subnet",
    owner = |s| Some(&s.project_id),
    parent = |s| Some(&s.network_id),
    name = |s| Some(&s.name)
);

impl Subnet {
    pub fn render(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "network_id": self.network_id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "cidr": self.cidr,
            "ip_version": self.ip_version,
            "gateway_ip": self.gateway_ip,
            "allocation_pools": self.allocation_pools,
            "dns_nameservers": self.dns_nameservers,
            "host_routes": self.host_routes,
            "enable_dhcp": self.enable_dhcp,
            "ipv6_ra_mode": self.ipv6_ra_mode,
            "ipv6_address_mode": self.ipv6_address_mode,
            "subnetpool_id": self.subnetpool_id,
            "segment_id": null,
            "service_types": [],
            "dns_publish_fixed_ip": false,
        });
        self.std.put(&mut v);
        v
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddressPair {
    pub ip_address: String,
    pub mac_address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub project_id: String,
    pub name: String,
    pub admin_state_up: bool,
    pub mac_address: String,
    pub fixed_ips: Vec<FixedIp>,
    pub device_id: String,
    pub device_owner: String,
    pub security_groups: Vec<String>,
    pub port_security_enabled: bool,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub host_id: String,
    pub vnic_type: String,
    #[serde(default)]
    pub profile: Value,
    pub status: String,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    Port,
    "port",
    owner = |p| Some(&p.project_id),
    parent = |p| Some(&p.network_id),
    name = |p| Some(&p.name)
);

impl Port {
    /// The API view; `admin` adds the `binding:*` attributes.
    pub fn render(&self, admin: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "network_id": self.network_id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "admin_state_up": self.admin_state_up,
            "mac_address": self.mac_address,
            "fixed_ips": self.fixed_ips,
            "device_id": self.device_id,
            "device_owner": self.device_owner,
            "security_groups": self.security_groups,
            "port_security_enabled": self.port_security_enabled,
            "allowed_address_pairs": self.allowed_address_pairs,
            "status": self.status,
            "extra_dhcp_opts": [],
        });
        if admin {
            v["binding:host_id"] = json!(self.host_id);
            v["binding:vnic_type"] = json!(self.vnic_type);
            v["binding:vif_type"] = json!(if self.host_id.is_empty() {
                "unbound"
            } else {
                "bridge"
            });
            v["binding:vif_details"] = json!({});
            v["binding:profile"] = if self.profile.is_null() {
                json!({})
            } else {
                self.profile.clone()
            };
        }
        self.std.put(&mut v);
        v
    }

    /// Ports the network itself owns (DHCP): they do not keep a network
    /// or subnet in use.
    pub fn network_owned(&self) -> bool {
        self.device_owner == OWNER_DHCP
    }
}

/// One address held by a port (see `ipam.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpAllocation {
    /// `subnet_id/address`.
    pub id: String,
    pub subnet_id: String,
    pub network_id: String,
    pub ip_address: String,
    pub port_id: String,
}

record!(
    IpAllocation,
    "ip_allocation",
    parent = |a| Some(&a.subnet_id)
);

impl IpAllocation {
    pub fn key(subnet_id: &str, ip: &str) -> String {
        format!("{subnet_id}/{ip}")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub stateful: bool,
    /// The project's `default` group (one per project).
    pub is_default: bool,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    SecurityGroup,
    "security_group",
    owner = |g| Some(&g.project_id),
    name = |g| Some(&g.name),
    unique = |g| g.is_default.then(|| format!("default/{}", g.project_id))
);

impl SecurityGroup {
    pub fn render(&self, rules: &[SecurityGroupRule]) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "stateful": self.stateful,
            "shared": false,
            "security_group_rules": rules.iter().map(SecurityGroupRule::render).collect::<Vec<_>>(),
        });
        self.std.put(&mut v);
        v
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub security_group_id: String,
    pub project_id: String,
    pub direction: String,
    pub ethertype: String,
    pub protocol: Option<String>,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    /// The prefix normalised (host bits cleared): what is enforced.
    pub remote_ip_prefix: Option<String>,
    /// The prefix as given, when it had host bits set: Neutron shows it so
    /// as `remote_ip_prefix` (and the normalised one as `normalized_cidr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix_given: Option<String>,
    pub remote_group_id: Option<String>,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    SecurityGroupRule,
    "security_group_rule",
    owner = |r| Some(&r.project_id),
    parent = |r| Some(&r.security_group_id)
);

impl SecurityGroupRule {
    pub fn render(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "security_group_id": self.security_group_id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "direction": self.direction,
            "ethertype": self.ethertype,
            "protocol": self.protocol,
            "port_range_min": self.port_range_min,
            "port_range_max": self.port_range_max,
            "remote_ip_prefix": self.remote_ip_prefix_given.as_ref().or(self.remote_ip_prefix.as_ref()),
            "remote_group_id": self.remote_group_id,
            "remote_address_group_id": null,
            "normalized_cidr": self.remote_ip_prefix,
            "belongs_to_default_sg": null,
        });
        self.std.put(&mut v);
        v
    }
}

/// A project's quota overrides (resource -> limit, -1 unlimited).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetQuota {
    /// The project id.
    pub id: String,
    pub limits: std::collections::BTreeMap<String, i64>,
}

record!(NetQuota, "network_quota");

/// A router's external gateway: the network, SNAT, and the gateway port
/// (device_owner `network:router_gateway`) holding its addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Gateway {
    pub network_id: String,
    pub enable_snat: bool,
    pub port_id: String,
    pub external_fixed_ips: Vec<FixedIp>,
}

/// A router. Its interfaces are the ports whose `device_id` is the
/// router and whose device_owner is `network:router_interface`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub admin_state_up: bool,
    pub gateway: Option<Gateway>,
    /// Static routes (`extraroute`).
    pub routes: Vec<HostRoute>,
    #[serde(default)]
    pub availability_zone_hints: Vec<String>,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    Router,
    "router",
    owner = |r| Some(&r.project_id),
    name = |r| Some(&r.name)
);

impl Router {
    /// The API view; `admin` adds `distributed` and `ha`.
    pub fn render(&self, admin: bool) -> Value {
        let gw = self.gateway.as_ref().map(|g| {
            json!({
                "network_id": g.network_id,
                "enable_snat": g.enable_snat,
                "external_fixed_ips": g.external_fixed_ips,
            })
        });
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "external_gateway_info": gw,
            "routes": self.routes,
            "availability_zone_hints": self.availability_zone_hints,
            "availability_zones": [],
            "flavor_id": null,
        });
        if admin {
            v["distributed"] = json!(false);
            v["ha"] = json!(false);
        }
        self.std.put(&mut v);
        v
    }
}

/// A floating IP: an address of an external network (held by a port with
/// device_owner `network:floatingip`), and the fixed IP it maps to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    pub project_id: String,
    pub floating_network_id: String,
    pub floating_ip_address: String,
    /// The port on the external network that holds the address.
    pub floating_port_id: String,
    pub port_id: Option<String>,
    pub fixed_ip_address: Option<String>,
    pub router_id: Option<String>,
    #[serde(flatten)]
    pub std: Std,
}

record!(FloatingIp, "floatingip", owner = |f| Some(&f.project_id));

impl FloatingIp {
    pub fn render(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "floating_network_id": self.floating_network_id,
            "floating_ip_address": self.floating_ip_address,
            "port_id": self.port_id,
            "fixed_ip_address": self.fixed_ip_address,
            "router_id": self.router_id,
            "status": if self.port_id.is_some() { "ACTIVE" } else { "DOWN" },
            "port_forwardings": [],
        });
        self.std.put(&mut v);
        v
    }
}

/// A subnet pool: prefixes subnets are carved from (`subnet_allocation`).
/// What it has handed out is the subnets whose `subnetpool_id` it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubnetPool {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub ip_version: u8,
    pub prefixes: Vec<String>,
    pub default_prefixlen: u8,
    pub min_prefixlen: u8,
    pub max_prefixlen: u8,
    pub is_default: bool,
    pub shared: bool,
    pub address_scope_id: Option<String>,
    pub default_quota: Option<i64>,
    #[serde(flatten)]
    pub std: Std,
}

record!(
    SubnetPool,
    "subnetpool",
    owner = |p| Some(&p.project_id),
    name = |p| Some(&p.name),
    unique = |p| p.is_default.then(|| format!("default/v{}", p.ip_version))
);

impl SubnetPool {
    pub fn render(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "ip_version": self.ip_version,
            "prefixes": self.prefixes,
            "default_prefixlen": self.default_prefixlen,
            "min_prefixlen": self.min_prefixlen,
            "max_prefixlen": self.max_prefixlen,
            "is_default": self.is_default,
            "shared": self.shared,
            "address_scope_id": self.address_scope_id,
            "default_quota": self.default_quota,
        });
        self.std.put(&mut v);
        v
    }
}

/// An address scope: subnet pools whose prefixes route to each other
/// without NAT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddressScope {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub ip_version: u8,
    pub shared: bool,
}

record!(
    AddressScope,
    "address_scope",
    owner = |a| Some(&a.project_id),
    name = |a| Some(&a.name)
);

impl AddressScope {
    pub fn render(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "ip_version": self.ip_version,
            "shared": self.shared,
        })
    }
}

/// An RBAC policy on a network: `access_as_shared` or
/// `access_as_external` for a target project (or `*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RbacPolicy {
    pub id: String,
    pub project_id: String,
    pub object_type: String,
    pub object_id: String,
    pub action: String,
    pub target_tenant: String,
}

record!(
    RbacPolicy,
    "rbac_policy",
    owner = |r| Some(&r.project_id),
    parent = |r| Some(&r.object_id)
);

impl RbacPolicy {
    pub fn render(&self) -> Value {
        json!({
            "id": self.id,
            "project_id": self.project_id,
            "tenant_id": self.project_id,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "action": self.action,
            "target_tenant": self.target_tenant,
        })
    }
}

/// A project's auto-allocated topology (keyed by the project id).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoTopology {
    /// The project id.
    pub id: String,
    pub network_id: String,
    pub router_id: String,
}

record!(AutoTopology, "auto_allocated_topology");
