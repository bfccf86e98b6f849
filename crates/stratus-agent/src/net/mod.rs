//! The node's dataplane: what the controller wants wired on this node
//! ([`HostNetwork`], a wire type from `stratus-wire` that both sides
//! share) and the Linux code that makes it so ([`Dataplane`]).
//!
//! The model is Neutron's linuxbridge agent without its Python: one bridge
//! per network on every node that hosts one of its ports, a VXLAN device on
//! that bridge with one flood entry per peer node (head-end replication),
//! and a veth pair per port whose inner end is the workload's `ethN`,
//! addressed directly (containers need no DHCP client). Security groups and
//! anti-spoofing are nftables rules in the node's own namespace; see
//! `rules.rs` for how bridged packets meet conntrack.
//!
//! [`Dataplane::apply`] is idempotent and whole-host: it is given every
//! port this node should have and converges links, addresses and rules on
//! it, removing what no port owns. An agent that restarts therefore
//! re-wires nothing that is already right, and traffic of running
//! workloads is not interrupted (the rules are replaced in one nftables
//! transaction).

mod linux;
mod rules;

pub use linux::{Dataplane, METADATA_PORT, netns_name};
pub use rules::ruleset;
pub use stratus_wire::net::*;

/// The metadata service's address, as every OpenStack guest knows it.
pub const METADATA_IP: &str = "169.254.169.254";
