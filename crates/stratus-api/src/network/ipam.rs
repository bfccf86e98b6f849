//! Exact IPAM: address arithmetic for IPv4 and IPv6 and the allocator.
//!
//! Every address a port holds is a record of its own, `ip_allocation`,
//! keyed by `subnet_id/address` and hung under its subnet. Allocation runs
//! inside the store's write transaction (one writer at a time), so two
//! concurrent port creations can never take the same address: the second
//! sees the first's record. Picking the lowest free address reads only the
//! subnet's allocated records (sorted) and walks the allocation pools,
//! skipping the allocated ones: the cost follows the number of addresses
//! in use, never the size of the subnet (a /8 or a /64 costs the same).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use stratus_store::{Query, Tx};

use super::model::{IpAllocation, Pool, Subnet};
use super::{NetError, NetResult};

/// An address as a number and its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ip {
    pub v6: bool,
    pub n: u128,
}

impl Ip {
    pub fn parse(s: &str) -> Option<Ip> {
        match s.trim().parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => Some(Ip {
                v6: false,
                n: u32::from(a) as u128,
            }),
            IpAddr::V6(a) => Some(Ip {
                v6: true,
                n: u128::from(a),
            }),
        }
    }
    pub fn version(&self) -> u8 {
        if self.v6 { 6 } else { 4 }
    }
    pub fn offset(&self, by: u128) -> Ip {
        Ip {
            v6: self.v6,
            n: self.n.wrapping_add(by),
        }
    }
}

impl std::fmt::Display for Ip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.v6 {
            write!(f, "{}", Ipv6Addr::from(self.n))
        } else {
            write!(f, "{}", Ipv4Addr::from(self.n as u32))
        }
    }
}

/// A network prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ip,
    pub prefix: u8,
}

impl Cidr {
    fn bits(v6: bool) -> u8 {
        if v6 { 128 } else { 32 }
    }

    /// Parses `addr/len` (a bare address is a host prefix). Returns the
    /// prefix and whether host bits were set.
    pub fn parse_loose(s: &str) -> Option<(Cidr, bool)> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let ip = Ip::parse(a)?;
        let max = Self::bits(ip.v6);
        let prefix = match p {
            Some(p) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                p.parse::<u8>().ok().filter(|n| *n <= max)?
            }
            None => max,
        };
        let mask = Self::mask(ip.v6, prefix);
        let base = Ip {
            v6: ip.v6,
            n: ip.n & mask,
        };
        Some((Cidr { base, prefix }, base != ip))
    }

    fn mask(v6: bool, prefix: u8) -> u128 {
        let bits = Self::bits(v6);
        let all: u128 = if v6 { u128::MAX } else { u32::MAX as u128 };
        if prefix == 0 {
            0
        } else {
            (all >> (bits - prefix)) << (bits - prefix) & all
        }
    }

    pub fn first(&self) -> Ip {
        self.base
    }
    pub fn last(&self) -> Ip {
        let host = !Self::mask(self.base.v6, self.prefix)
            & if self.base.v6 {
                u128::MAX
            } else {
                u32::MAX as u128
            };
        Ip {
            v6: self.base.v6,
            n: self.base.n | host,
        }
    }
    pub fn contains(&self, ip: Ip) -> bool {
        ip.v6 == self.base.v6 && ip.n >= self.first().n && ip.n <= self.last().n
    }
    pub fn overlaps(&self, o: &Cidr) -> bool {
        self.base.v6 == o.base.v6 && self.first().n <= o.last().n && o.first().n <= self.last().n
    }
    pub fn version(&self) -> u8 {
        self.base.version()
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Neutron's default pools: the prefix minus its first address (and for
/// IPv4 the broadcast address), minus the gateway.
pub fn default_pools(cidr: &Cidr, gateway: Option<Ip>) -> Vec<(Ip, Ip)> {
    let first = cidr.first();
    let last = cidr.last();
    if first == last {
        return vec![(first, last)];
    }
    let lo = first.offset(1);
    let hi = if cidr.base.v6 {
        last
    } else {
        Ip {
            v6: false,
            n: last.n - 1,
        }
    };
    if lo.n >= hi.n {
        return Vec::new();
    }
    match gateway {
        Some(g) if g.v6 == lo.v6 && g.n >= lo.n && g.n <= hi.n => {
            let mut out = Vec::new();
            if g.n > lo.n {
                out.push((
                    lo,
                    Ip {
                        v6: g.v6,
                        n: g.n - 1,
                    },
                ));
            }
            if g.n < hi.n {
                out.push((g.offset(1), hi));
            }
            out
        }
        _ => vec![(lo, hi)],
    }
}

/// The number of addresses in a subnet's pools.
pub fn pool_size(sub: &Subnet) -> u128 {
    sub.allocation_pools
        .iter()
        .filter_map(|p| Some((Ip::parse(&p.start)?, Ip::parse(&p.end)?)))
        .map(|(a, b)| b.n.saturating_sub(a.n) + 1)
        .sum()
}

/// Parses a subnet's stored pools.
fn pools_of(sub: &Subnet) -> Vec<(Ip, Ip)> {
    let mut v: Vec<(Ip, Ip)> = sub
        .allocation_pools
        .iter()
        .filter_map(|p: &Pool| Some((Ip::parse(&p.start)?, Ip::parse(&p.end)?)))
        .collect();
    v.sort();
    v
}

/// The lowest free address of `sub`'s pools, if any. Runs in `tx`.
pub fn next_free(tx: &Tx, sub: &Subnet) -> NetResult<Option<Ip>> {
    let mut used: Vec<u128> = tx
        .list::<IpAllocation>(&Query::parent(&sub.id))?
        .iter()
        .filter_map(|a| Ip::parse(&a.ip_address))
        .map(|i| i.n)
        .collect();
    used.sort_unstable();
    Ok(lowest_free(&pools_of(sub), &used))
}

/// The lowest address of `pools` (sorted) not in `used` (sorted).
pub fn lowest_free(pools: &[(Ip, Ip)], used: &[u128]) -> Option<Ip> {
    'pools: for (start, end) in pools {
        let mut cand = start.n;
        let from = used.partition_point(|u| *u < cand);
        for u in &used[from..] {
            if *u > cand {
                break;
            }
            if *u == cand {
                if cand >= end.n {
                    continue 'pools;
                }
                cand += 1;
            }
        }
        if cand <= end.n {
            return Some(Ip {
                v6: start.v6,
                n: cand,
            });
        }
    }
    None
}

/// Records `ip` as taken by `port_id` in `sub`; refuses an address already
/// taken with `IpAddressAlreadyAllocated`.
pub fn claim(tx: &Tx, sub: &Subnet, ip: Ip, port_id: &str) -> NetResult<()> {
    let rec = IpAllocation {
        id: IpAllocation::key(&sub.id, &ip.to_string()),
        subnet_id: sub.id.clone(),
        network_id: sub.network_id.clone(),
        ip_address: ip.to_string(),
        port_id: port_id.to_string(),
    };
    if tx.exists::<IpAllocation>(&rec.id)? {
        return Err(NetError::conflict(
            "IpAddressAlreadyAllocated",
            format!("IP address {ip} already allocated in subnet {}", sub.id),
        ));
    }
    tx.insert(&rec)?;
    Ok(())
}

/// Gives `ip` of `sub` back.
pub fn release(tx: &Tx, subnet_id: &str, ip: &str) -> NetResult<()> {
    tx.delete::<IpAllocation>(&IpAllocation::key(subnet_id, ip))?;
    Ok(())
}

/// The modified EUI-64 address of `mac` in a /64 (SLAAC).
pub fn eui64(cidr: &Cidr, mac: &str) -> Option<Ip> {
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    if b.len() != 6 {
        return None;
    }
    let iid: [u8; 8] = [b[0] ^ 0x02, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]];
    Some(Ip {
        v6: true,
        n: cidr.base.n | u64::from_be_bytes(iid) as u128,
    })
}

/// Deletes a service port and gives its addresses back.
pub fn drop_port(tx: &Tx, port_id: &str) -> NetResult<()> {
    if let Some(p) = tx.get::<super::model::Port>(port_id)? {
        for f in &p.fixed_ips {
            release(tx, &f.subnet_id, &f.ip_address)?;
        }
        tx.delete::<super::model::Port>(&p.id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ip {
        Ip::parse(s).unwrap()
    }

    #[test]
    fn cidr_parse_and_normalise() {
        let (c, host) = Cidr::parse_loose("10.0.0.0/24").unwrap();
        assert!(!host);
        assert_eq!(c.last(), ip("10.0.0.255"));
        let (c, host) = Cidr::parse_loose("10.0.0.7/24").unwrap();
        assert!(host);
        assert_eq!(c.to_string(), "10.0.0.0/24");
        let (c, _) = Cidr::parse_loose("2001:DB8::/64").unwrap();
        assert_eq!(c.to_string(), "2001:db8::/64");
        assert!(Cidr::parse_loose("10.0.0.0/33").is_none());
        assert!(Cidr::parse_loose("10.0.0/24").is_none());
        assert!(Cidr::parse_loose("10.0.0.0/").is_none());
        let (a, _) = Cidr::parse_loose("10.0.0.0/16").unwrap();
        let (b, _) = Cidr::parse_loose("10.0.5.0/24").unwrap();
        assert!(a.overlaps(&b));
    }

    #[test]
    fn default_pools_skip_gateway_network_and_broadcast() {
        let (c, _) = Cidr::parse_loose("10.0.0.0/28").unwrap();
        let p = default_pools(&c, Some(ip("10.0.0.1")));
        assert_eq!(p, vec![(ip("10.0.0.2"), ip("10.0.0.14"))]);
        let p = default_pools(&c, Some(ip("10.0.0.5")));
        assert_eq!(
            p,
            vec![
                (ip("10.0.0.1"), ip("10.0.0.4")),
                (ip("10.0.0.6"), ip("10.0.0.14"))
            ]
        );
        let (c6, _) = Cidr::parse_loose("2001:db8::/64").unwrap();
        let p = default_pools(&c6, Some(ip("2001:db8::1")));
        assert_eq!(p[0].0, ip("2001:db8::2"));
        assert_eq!(p[0].1, ip("2001:db8::ffff:ffff:ffff:ffff"));
    }

    #[test]
    fn lowest_free_skips_used_without_scanning() {
        let (c, _) = Cidr::parse_loose("10.0.0.0/8").unwrap();
        let pools = default_pools(&c, Some(ip("10.0.0.1")));
        let used = vec![ip("10.0.0.2").n, ip("10.0.0.3").n, ip("10.0.0.5").n];
        assert_eq!(lowest_free(&pools, &used), Some(ip("10.0.0.4")));
        let small = vec![(ip("10.0.0.2"), ip("10.0.0.3"))];
        assert_eq!(lowest_free(&small, &used), None);
        // The very last IPv6 address taken: no overflow, just full.
        let top = Ip {
            v6: true,
            n: u128::MAX,
        };
        assert_eq!(lowest_free(&[(top, top)], &[u128::MAX]), None);
        assert_eq!(lowest_free(&[(top, top)], &[]), Some(top));
    }

    #[test]
    fn eui64_from_mac() {
        let (c, _) = Cidr::parse_loose("2001:db8::/64").unwrap();
        assert_eq!(
            eui64(&c, "fa:16:3e:00:00:01").unwrap().to_string(),
            "2001:db8::f816:3eff:fe00:1"
        );
    }
}
