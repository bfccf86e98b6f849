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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Std {
    #[serde(default)]
    pub description: String,
    pub created_at: String,
    pub updated_at: String,
    pub revision_number: u64,
    #[serde(default)]
    pub tags: Vec<String>,
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
            "is_default": false,
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
            "subnetpool_id": null,
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
        self.device_owner == "network:dhcp"
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
    pub remote_ip_prefix: Option<String>,
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
            "remote_ip_prefix": self.remote_ip_prefix,
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
