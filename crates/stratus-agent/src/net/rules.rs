//! Security groups and anti-spoofing as one nftables ruleset.
//!
//! Ports are veths on Linux bridges, so their packets are bridged, not
//! routed. Two hooks see them:
//!
//! - the bridge family's `forward` hook, which knows the bridge ports a
//!   frame enters and leaves by (`iifname`/`oifname`) but has no
//!   connection tracking on every kernel;
//! - the inet family's hooks, which bridged IP packets pass through when
//!   `net.bridge.bridge-nf-call-ip{,6}tables` is on (br_netfilter). There
//!   conntrack works, the `prerouting` hook still sees the port a packet
//!   came in by, but `forward` only sees the bridge.
//!
//! So each port gets a small number on this node. `prerouting` puts the
//! sending port's number in the high half of the packet mark (and sets the
//! conntrack zone of its network, so equal addresses on two networks never
//! share a connection), the bridge's `forward` hook ORs the receiving
//! port's number into the low half and drops spoofed frames, and the inet
//! `forward` hook, with conntrack, runs the sender's egress rules and the
//! receiver's ingress rules. Replies of an allowed connection pass as
//! `established`; everything else a filtered port receives is dropped
//! (Neutron's default deny ingress).

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Direction, FilterRule, HostNetwork, METADATA_IP, PortWiring};

/// The nftables table (in both families) Stratus owns.
pub const TABLE: &str = "stratus";

/// The host-side name of a port's veth.
pub fn host_ifname(port_id: &str) -> String {
    format!("sp-{}", short(port_id))
}

/// The bridge of a network.
pub fn bridge_name(network_id: &str) -> String {
    format!("sb-{}", short(network_id))
}

/// The VXLAN device of a network.
pub fn vxlan_name(network_id: &str) -> String {
    format!("sv-{}", short(network_id))
}

/// Eleven characters of an id, enough to keep names unique on one node
/// and within Linux's 15-character interface names.
fn short(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(11)
        .collect()
}

/// The whole ruleset for `net`: text for `nft -f -` that replaces both
/// tables in one transaction.
pub fn ruleset(net: &HostNetwork) -> String {
    let mut ports: Vec<&PortWiring> = net.ports.iter().collect();
    ports.sort_by(|a, b| a.id.cmp(&b.id));
    let zones: BTreeMap<&str, usize> = {
        let mut ids: Vec<&str> = net.networks.iter().map(|n| n.id.as_str()).collect();
        ids.extend(net.ports.iter().map(|p| p.network_id.as_str()));
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| (id, i + 1))
            .collect()
    };
    let mut s = String::new();
    // Create-then-delete makes the delete safe when the table is absent;
    // all of it is one transaction.
    for fam in ["inet", "bridge"] {
        let _ = writeln!(s, "table {fam} {TABLE} {{}}\ndelete table {fam} {TABLE}");
    }
    let _ = writeln!(s, "table inet {TABLE} {{");
    let _ = writeln!(
        s,
        "  chain prerouting_ports {{\n    type filter hook prerouting priority -300; policy accept;"
    );
    for net in &net.networks {
        let zone = zones[net.id.as_str()];
        let _ = writeln!(
            s,
            "    iifname \"{}\" meta mark set 0 ct zone set {zone}",
            vxlan_name(&net.id)
        );
    }
    for (i, p) in ports.iter().enumerate() {
        let zone = zones[p.network_id.as_str()];
        let _ = writeln!(
            s,
            "    iifname \"{}\" meta mark set {:#x} ct zone set {zone}",
            host_ifname(&p.id),
            (i as u32 + 1) << 16
        );
    }
    // Replies from outside this node's ports (VXLAN, a router) come back
    // in the zone of the bridge they arrive on.
    let _ = writeln!(s, "  }}");
    let _ = writeln!(
        s,
        "  chain forward_ports {{\n    type filter hook forward priority 0; policy accept;\n    meta mark 0 return\n    ct state established,related accept\n    ct state invalid drop"
    );
    for (i, p) in ports.iter().enumerate() {
        if p.port_security {
            let _ = writeln!(
                s,
                "    meta mark & 0xffff0000 == {:#x} jump egress_{}",
                (i as u32 + 1) << 16,
                i + 1
            );
        }
    }
    for (i, p) in ports.iter().enumerate() {
        if p.port_security {
            let _ = writeln!(
                s,
                "    meta mark & 0xffff == {:#x} jump ingress_{}",
                i + 1,
                i + 1
            );
        }
    }
    let _ = writeln!(s, "  }}");
    for (i, p) in ports.iter().enumerate() {
        if !p.port_security {
            continue;
        }
        let n = i + 1;
        // Egress: an allowed packet goes on to the receiver's ingress
        // check (`return`); DHCP and neighbour discovery always pass.
        let _ = writeln!(
            s,
            "  chain egress_{n} {{\n    udp sport 68 udp dport 67 return\n    meta l4proto ipv6-icmp icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, mld2-listener-report }} return"
        );
        for r in p.rules.iter().filter(|r| r.direction == Direction::Egress) {
            if let Some(m) = rule_match(r) {
                let _ = writeln!(s, "    {m} return");
            }
        }
        let _ = writeln!(s, "    drop\n  }}");
        let _ = writeln!(
            s,
            "  chain ingress_{n} {{\n    udp sport 67 udp dport 68 accept\n    meta l4proto ipv6-icmp icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query }} accept"
        );
        for r in p.rules.iter().filter(|r| r.direction == Direction::Ingress) {
            if let Some(m) = rule_match(r) {
                let _ = writeln!(s, "    {m} accept");
            }
        }
        let _ = writeln!(s, "    drop\n  }}");
    }
    let _ = writeln!(s, "}}");

    let _ = writeln!(s, "table bridge {TABLE} {{");
    let _ = writeln!(
        s,
        "  chain forward_ports {{\n    type filter hook forward priority -200; policy accept;"
    );
    // A DHCP server answers this node's ports only: nothing of it
    // crosses a tunnel, either way.
    for d in &net.dhcp {
        let dev = host_ifname(&d.port);
        let _ = writeln!(
            s,
            "    iifname \"{dev}\" oifname \"sv-*\" drop\n    iifname \"sv-*\" oifname \"{dev}\" drop"
        );
    }
    // The VMs' metadata service (in the DHCP namespaces) knows a caller
    // by its source address, so a port reaches the metadata address only
    // from its own fixed addresses: not from an allowed address pair, and
    // not from any address when its port security is off (then there is
    // no spoof chain below). DHCP ports, the service's own, are exempt.
    for p in ports.iter().filter(|p| !p.device_id.starts_with("dhcp-")) {
        let own: Vec<&str> = p
            .addresses
            .iter()
            .filter(|a| a.version == 4)
            .map(|a| a.ip.as_str())
            .collect();
        let from = if own.is_empty() {
            String::new()
        } else {
            format!(" ip saddr != {{ {} }}", own.join(", "))
        };
        let _ = writeln!(
            s,
            "    iifname \"{}\" ether type ip ip daddr {METADATA_IP}{from} drop",
            host_ifname(&p.id)
        );
    }
    // Anti-spoofing: a port with port security sends only from its MAC
    // and addresses. The chain matches the port's host-side device,
    // `sp-*`, which is a container's veth end and a VM's tap alike
    // (`ensure_tap` names taps with `host_ifname` too), so it holds for
    // VMs as well; the VMs' metadata service relies on it.
    for (i, p) in ports.iter().enumerate() {
        if p.port_security {
            let _ = writeln!(
                s,
                "    iifname \"{}\" jump spoof_{}",
                host_ifname(&p.id),
                i + 1
            );
        }
        let _ = writeln!(
            s,
            "    oifname \"{}\" meta mark set meta mark | {:#x}",
            host_ifname(&p.id),
            i + 1
        );
    }
    let _ = writeln!(s, "  }}");
    for (i, p) in ports.iter().enumerate() {
        if p.port_security {
            let _ = write!(s, "{}", spoof_chain(i + 1, p));
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// What a port may send from: its MAC and addresses, and its allowed
/// address pairs. Anything else it sends is dropped at the bridge.
fn spoof_chain(n: usize, p: &PortWiring) -> String {
    let mut macs = vec![p.mac.to_ascii_lowercase()];
    let mut v4 = vec!["0.0.0.0".to_string()];
    let mut v6 = vec!["::".to_string(), "fe80::/10".to_string()];
    for a in &p.addresses {
        if a.version == 6 {
            v6.push(a.ip.clone());
        } else {
            v4.push(a.ip.clone());
        }
    }
    for (ip, mac) in &p.allowed_pairs {
        macs.push(mac.to_ascii_lowercase());
        if ip.contains(':') {
            v6.push(ip.clone());
        } else {
            v4.push(ip.clone());
        }
    }
    macs.sort();
    macs.dedup();
    let set = |v: &[String]| v.join(", ");
    format!(
        "  chain spoof_{n} {{\n    ether saddr != {{ {m} }} drop\n    ether type arp arp saddr ether != {{ {m} }} drop\n    ether type arp arp saddr ip != {{ {a} }} drop\n    ether type ip ip saddr != {{ {a} }} drop\n    ether type ip6 ip6 saddr != {{ {b} }} drop\n    ether type != {{ arp, ip, ip6 }} drop\n  }}\n",
        m = set(&macs),
        a = set(&v4),
        b = set(&v6),
    )
}

/// The nftables match for a rule, or `None` when it can match nothing we
/// can express (a remote group with no members, a protocol nftables does
/// not know): such a rule allows nothing, never more.
fn rule_match(r: &FilterRule) -> Option<String> {
    let mut m = String::from(if r.version == 6 {
        "meta nfproto ipv6"
    } else {
        "meta nfproto ipv4"
    });
    if let Some(remote) = &r.remote {
        let mut addrs: Vec<&str> = remote
            .iter()
            .map(String::as_str)
            .filter(|a| a.contains(':') == (r.version == 6))
            .collect();
        if addrs.is_empty() {
            return None;
        }
        addrs.sort();
        addrs.dedup();
        let field = match (r.version, r.direction) {
            (6, Direction::Ingress) => "ip6 saddr",
            (6, Direction::Egress) => "ip6 daddr",
            (_, Direction::Ingress) => "ip saddr",
            (_, Direction::Egress) => "ip daddr",
        };
        let _ = write!(m, " {field} {{ {} }}", addrs.join(", "));
    }
    let Some(proto) = r.protocol.as_deref() else {
        return Some(m);
    };
    let number: u8 = match proto.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" if r.version == 6 => 58,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "igmp" => 2,
        "ipip" => 4,
        "ospf" => 89,
        "pgm" => 113,
        "vrrp" => 112,
        "rsvp" => 46,
        "egp" => 8,
        "encap" => 98,
        "ipv6-encap" => 41,
        "ipv6-frag" => 44,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "ipv6-route" => 43,
        other => other.parse().ok()?,
    };
    let _ = write!(m, " meta l4proto {number}");
    match number {
        6 | 17 | 132 | 33 | 136 => {
            let name = match number {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                33 => "dccp",
                _ => "udplite",
            };
            match (r.port_min, r.port_max) {
                (Some(a), Some(b)) if a == b => {
                    let _ = write!(m, " {name} dport {a}");
                }
                (Some(a), Some(b)) if a < b => {
                    let _ = write!(m, " {name} dport {a}-{b}");
                }
                (Some(a), None) => {
                    let _ = write!(m, " {name} dport {a}");
                }
                (Some(_), Some(_)) => return None,
                _ => {}
            }
        }
        1 | 58 => {
            let kw = if number == 1 { "icmp" } else { "icmpv6" };
            if let Some(t) = r.port_min {
                let _ = write!(m, " {kw} type {t}");
                if let Some(c) = r.port_max {
                    let _ = write!(m, " {kw} code {c}");
                }
            }
        }
        _ => {}
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::super::{PortAddress, Segment};
    use super::*;

    fn port(id: &str, security: bool) -> PortWiring {
        PortWiring {
            id: id.into(),
            device_id: "srv".into(),
            network_id: "net-1".into(),
            ifname: "eth0".into(),
            mac: "FA:16:3E:00:00:01".into(),
            mtu: 1450,
            addresses: vec![PortAddress {
                ip: "10.0.0.5".into(),
                prefix_len: 24,
                version: 4,
                gateway: Some("10.0.0.1".into()),
            }],
            routes: vec![],
            dns: vec![],
            port_security: security,
            allowed_pairs: vec![("10.0.0.100".into(), "fa:16:3e:00:00:09".into())],
            rules: vec![
                FilterRule {
                    direction: Direction::Ingress,
                    version: 4,
                    protocol: Some("tcp".into()),
                    port_min: Some(22),
                    port_max: Some(22),
                    remote: None,
                },
                FilterRule {
                    direction: Direction::Ingress,
                    version: 4,
                    protocol: None,
                    port_min: None,
                    port_max: None,
                    remote: Some(vec![]),
                },
                FilterRule {
                    direction: Direction::Egress,
                    version: 4,
                    protocol: None,
                    port_min: None,
                    port_max: None,
                    remote: None,
                },
            ],
        }
    }

    #[test]
    fn filtered_port_gets_its_chains() {
        let net = HostNetwork {
            networks: vec![Segment {
                id: "net-1".into(),
                vni: 7,
                mtu: 1450,
                peers: vec![],
                host_address: None,
            }],
            ports: vec![port("port-b", true), port("port-a", false)],
            routers: vec![],
            dhcp: vec![],
        };
        let r = ruleset(&net);
        // Ports are numbered in id order: port-a is 1 (unfiltered),
        // port-b is 2.
        assert!(r.contains("iifname \"sp-porta\" meta mark set 0x10000 ct zone set 1"));
        assert!(r.contains("iifname \"sp-portb\" meta mark set 0x20000 ct zone set 1"));
        assert!(r.contains("jump egress_2"));
        assert!(r.contains("jump ingress_2"));
        assert!(!r.contains("egress_1"), "an unfiltered port has no chains");
        assert!(r.contains("meta nfproto ipv4 meta l4proto 6 tcp dport 22 accept"));
        // The empty remote group allows nothing, so it is not a rule.
        let ingress = r.split("chain ingress_2 {").nth(1).unwrap();
        let ingress = ingress.split("}\n").next().unwrap();
        assert_eq!(ingress.matches(" accept").count(), 3, "{ingress}");
        assert!(r.contains("ether saddr != { fa:16:3e:00:00:01, fa:16:3e:00:00:09 } drop"));
        assert!(r.contains("ip saddr != { 0.0.0.0, 10.0.0.5, 10.0.0.100 } drop"));
        assert!(r.contains("oifname \"sp-porta\" meta mark set meta mark | 0x1"));
        assert!(r.contains("iifname \"sv-net1\" meta mark set 0 ct zone set 1"));
        // The metadata address only from the port's own fixed address,
        // port security or not.
        assert!(r.contains(
            "iifname \"sp-porta\" ether type ip ip daddr 169.254.169.254 ip saddr != { 10.0.0.5 } drop"
        ));
        assert!(r.contains(
            "iifname \"sp-portb\" ether type ip ip daddr 169.254.169.254 ip saddr != { 10.0.0.5 } drop"
        ));
    }

    #[test]
    fn unknown_protocols_allow_nothing() {
        let mut r = port("p", true).rules[0].clone();
        r.protocol = Some("no-such-proto".into());
        assert_eq!(rule_match(&r), None);
        r.protocol = Some("icmp".into());
        r.version = 6;
        r.port_min = Some(128);
        r.port_max = None;
        assert_eq!(
            rule_match(&r).unwrap(),
            "meta nfproto ipv6 meta l4proto 58 icmpv6 type 128"
        );
        r.protocol = Some("udp".into());
        r.port_min = Some(90);
        r.port_max = Some(80);
        assert_eq!(rule_match(&r), None, "an inverted range matches nothing");
    }
}
