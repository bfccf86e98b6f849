//! The metadata service at 169.254.169.254, served by each node's agent
//! for the servers on that node.
//!
//! Every server with ports gets a listener bound inside its own network
//! namespace (`Dataplane::metadata_listener`), so the server a request is
//! from is known by the socket it arrived on: there is no header to
//! forge and no address to spoof. Answers come from what the agent was
//! given for the server (its `meta_data`, `user_data`) and its ports:
//! the OpenStack layout (`/openstack/latest/meta_data.json`, `user_data`,
//! `network_data.json`, `vendor_data.json`, `vendor_data2.json`) and the
//! EC2 one (`/latest/meta-data/...`, `/latest/user-data`).
//!
//! A VM has no namespace of its own: its ports are taps on the network's
//! bridge. For VMs the service is the one Neutron gives isolated
//! networks: a listener per network, bound in the network's DHCP
//! namespace on this node (`Dataplane::dhcp_metadata_listener`), which
//! DHCP makes the guest's next hop to 169.254.169.254 (a classless static
//! route). There the caller is known by its source address: it must be a
//! fixed address of a VM port on this node on that network, which the
//! node's bridge rules make true (anti-spoofing on every tap, and a rule
//! that lets a port reach the metadata address only from its own fixed
//! addresses, see `net/rules.rs`). Anything else is answered 404.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::net::{HostNetwork, PortWiring};
use serde_json::{Value, json};

/// What one server's metadata is made of.
#[derive(Default, Clone)]
pub struct Doc {
    pub meta: Value,
    pub user_data: Option<Vec<u8>>,
    pub network: Value,
}

struct Served {
    stop: Arc<AtomicBool>,
    doc: Arc<Mutex<Doc>>,
}

/// A VM port's fixed address on a network: whose it is, and the VM's
/// `network_data.json` (all its ports on this node).
#[derive(Clone)]
struct Guest {
    server: String,
    network: Value,
}

/// The listener of one network's DHCP namespace, for the VMs on it.
struct NetServed {
    stop: Arc<AtomicBool>,
    /// The namespace the listener is bound in (its nsfs inode): a
    /// namespace made again under the same name gets a new listener.
    netns: u64,
    /// VM addresses on this network (this node's ports only).
    guests: Arc<Mutex<HashMap<IpAddr, Guest>>>,
}

/// At most this many requests of one network's VMs are answered at once;
/// more connections are closed unanswered.
const NET_CONCURRENCY: usize = 16;

/// The node's metadata listeners: one per container with ports, one per
/// network with VM ports.
#[derive(Default)]
pub struct Metadata {
    served: Mutex<HashMap<String, Served>>,
    /// Per network id.
    networks: Mutex<HashMap<String, NetServed>>,
    /// Meta and user data of every server (of containers known before
    /// their listener exists; of VMs read at each request).
    docs: Arc<Mutex<HashMap<String, Doc>>>,
}

impl Metadata {
    /// Records what the controller says about server `id` (its
    /// assignment's `meta_data` and `user_data`).
    pub fn set_server(&self, id: &str, meta: Value, user_data: Option<Vec<u8>>) {
        // One lock at a time: `sync` takes `served` before `docs`, so
        // holding both here in the other order would deadlock the agent.
        {
            let mut docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
            let d = docs.entry(id.to_string()).or_default();
            d.meta = meta.clone();
            d.user_data = user_data.clone();
        }
        let doc = self
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|s| s.doc.clone());
        if let Some(doc) = doc {
            let mut doc = doc.lock().unwrap_or_else(|e| e.into_inner());
            doc.meta = meta;
            doc.user_data = user_data;
        }
    }

    /// Serves every server with ports in `net`, and stops serving those
    /// that have none any more. `bind` makes a server's listener.
    pub fn sync(
        &self,
        net: &HostNetwork,
        bind: impl Fn(&str) -> Result<TcpListener, crate::DriverError>,
    ) {
        let mut by_server: HashMap<&str, Vec<&PortWiring>> = HashMap::new();
        // Servers only: not the routers' or DHCP servers' namespaces.
        let routers: std::collections::HashSet<&str> =
            net.routers.iter().map(|r| r.id.as_str()).collect();
        for p in net.ports.iter().filter(|p| {
            !routers.contains(p.device_id.as_str()) && !p.device_id.starts_with("dhcp-")
        }) {
            by_server.entry(&p.device_id).or_default().push(p);
        }
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        served.retain(|id, s| {
            let keep = by_server.contains_key(id.as_str());
            if !keep {
                s.stop.store(true, Ordering::SeqCst);
            }
            keep
        });
        let docs = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        for (id, ports) in by_server {
            let network = network_data(&ports);
            if let Some(s) = served.get(id) {
                s.doc.lock().unwrap_or_else(|e| e.into_inner()).network = network;
                continue;
            }
            let listener = match bind(id) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(server = id, error = %e, "no metadata service for this server");
                    continue;
                }
            };
            let mut doc = docs.get(id).cloned().unwrap_or_default();
            doc.network = network;
            let doc = Arc::new(Mutex::new(doc));
            let stop = Arc::new(AtomicBool::new(false));
            let (d, st) = (doc.clone(), stop.clone());
            std::thread::spawn(move || {
                serve(listener, &st, |s, _| {
                    let d = d.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    answer(s, Some(&d));
                });
            });
            served.insert(id.to_string(), Served { stop, doc });
        }
    }

    /// Serves the VMs (`is_vm`) with ports in `net` from a listener per
    /// network with a DHCP server here, and stops the listeners of
    /// networks with no DHCP namespace or no VM port left. `netns` is the
    /// identity of a DHCP device's namespace now (`None`: there is none);
    /// `bind` makes a DHCP device's listener and says which namespace it
    /// is in.
    pub fn sync_vms(
        &self,
        net: &HostNetwork,
        is_vm: impl Fn(&str) -> bool,
        netns: impl Fn(&str) -> Option<u64>,
        bind: impl Fn(&str) -> Result<(TcpListener, u64), crate::DriverError>,
    ) {
        let mut by_server: HashMap<&str, Vec<&PortWiring>> = HashMap::new();
        for p in net.ports.iter().filter(|p| is_vm(&p.device_id)) {
            by_server.entry(&p.device_id).or_default().push(p);
        }
        // Each VM's addresses, by network.
        let mut by_network: HashMap<&str, HashMap<IpAddr, Guest>> = HashMap::new();
        for (server, ports) in &by_server {
            let network = network_data(ports);
            for p in ports {
                for a in p.addresses.iter().filter(|a| a.version == 4) {
                    if let Ok(ip) = a.ip.parse::<IpAddr>() {
                        by_network.entry(&p.network_id).or_default().insert(
                            ip,
                            Guest {
                                server: server.to_string(),
                                network: network.clone(),
                            },
                        );
                    }
                }
            }
        }
        let mut want: HashMap<&str, (&str, HashMap<IpAddr, Guest>)> = HashMap::new();
        for d in &net.dhcp {
            let Some(dhcp) = net.ports.iter().find(|p| p.id == d.port) else {
                continue;
            };
            if let Some(guests) = by_network.remove(d.network_id.as_str()) {
                want.insert(&d.network_id, (&dhcp.device_id, guests));
            }
        }
        let mut served = self.networks.lock().unwrap_or_else(|e| e.into_inner());
        served.retain(|id, s| {
            let keep = want
                .get(id.as_str())
                .is_some_and(|(device, _)| netns(device) == Some(s.netns));
            if !keep {
                s.stop.store(true, Ordering::SeqCst);
            }
            keep
        });
        for (network_id, (device, guests)) in want {
            if let Some(s) = served.get(network_id) {
                *s.guests.lock().unwrap_or_else(|e| e.into_inner()) = guests;
                continue;
            }
            let (listener, ns) = match bind(device) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(network = network_id, error = %e, "no metadata service for this network's VMs");
                    continue;
                }
            };
            let guests = Arc::new(Mutex::new(guests));
            let stop = Arc::new(AtomicBool::new(false));
            let (g, st, docs) = (guests.clone(), stop.clone(), self.docs.clone());
            let busy = Arc::new(AtomicUsize::new(0));
            std::thread::spawn(move || {
                serve(listener, &st, |s, peer| {
                    // Only the source address says who asks; headers
                    // (X-Forwarded-For, X-Instance-ID) are never read.
                    let guest = g
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&unmapped(peer))
                        .cloned();
                    let doc = guest.map(|guest| {
                        let mut d = docs
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(&guest.server)
                            .cloned()
                            .unwrap_or_default();
                        d.network = guest.network;
                        d
                    });
                    // Many guests share this listener: each request gets
                    // a thread, so a slow one delays no other, up to a
                    // bound past which connections are closed.
                    if busy.fetch_add(1, Ordering::SeqCst) >= NET_CONCURRENCY {
                        busy.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let b = busy.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("metadata".into())
                            .spawn(move || {
                                answer(s, doc.as_ref());
                                b.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            });
            served.insert(
                network_id.to_string(),
                NetServed {
                    stop,
                    netns: ns,
                    guests,
                },
            );
        }
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Accepts until told to stop (the listener is non-blocking, so a
/// listener no longer wanted ends its thread within a tenth of a second)
/// and hands each connection, with its peer's address, to `handle`. A
/// container's listener answers one request at a time: a guest that
/// opens many connections, or a slow one, delays only its own answers
/// and costs the agent no threads.
fn serve(l: TcpListener, stop: &AtomicBool, mut handle: impl FnMut(TcpStream, IpAddr)) {
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, peer)) => handle(s, peer.ip()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Reads one request from `s` and answers it from `doc`; without one (a
/// caller that is no server here) every path is 404.
fn answer(mut s: TcpStream, doc: Option<&Doc>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            b"405 Method Not Allowed\n".to_vec(),
        )
    } else {
        match doc.and_then(|doc| route(path.split('?').next().unwrap_or(""), doc)) {
            Some((ctype, body)) => ("200 OK", ctype, body),
            None => ("404 Not Found", "text/plain", b"404 Not Found\n".to_vec()),
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(&body);
    }
    let _ = s.write_all(&out);
}

const VERSIONS: &[&str] = &[
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "2020-10-14",
    "latest",
];

fn text(s: String) -> Option<(&'static str, Vec<u8>)> {
    Some(("text/plain", s.into_bytes()))
}

fn route(path: &str, doc: &Doc) -> Option<(&'static str, Vec<u8>)> {
    let path = path.trim_end_matches('/');
    let meta = &doc.meta;
    let s = |k: &str| meta[k].as_str().unwrap_or("").to_string();
    if path.is_empty() {
        return text("1.0\n2007-01-19\n2009-04-04\nlatest".into());
    }
    if path == "/openstack" {
        return text(VERSIONS.join("\n"));
    }
    if let Some(rest) = path.strip_prefix("/openstack/") {
        let (version, file) = rest.split_once('/').unwrap_or((rest, ""));
        if !VERSIONS.contains(&version) {
            return None;
        }
        return match file {
            "" => text(
                "meta_data.json\nnetwork_data.json\nuser_data\nvendor_data.json\nvendor_data2.json"
                    .into(),
            ),
            "meta_data.json" => Some(("application/json", meta.to_string().into_bytes())),
            "network_data.json" => Some(("application/json", doc.network.to_string().into_bytes())),
            "vendor_data.json" | "vendor_data2.json" => Some(("application/json", b"{}".to_vec())),
            "user_data" => doc
                .user_data
                .clone()
                .map(|u| ("application/octet-stream", u)),
            _ => None,
        };
    }
    let ec2 = path
        .strip_prefix("/latest")
        .or_else(|| path.strip_prefix("/2009-04-04"))
        .or_else(|| path.strip_prefix("/2007-01-19"))?;
    let ipv4 = doc.network["networks"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["type"] == "ipv4"))
        .and_then(|n| n["ip_address"].as_str())
        .unwrap_or("")
        .to_string();
    let key = meta["keys"]
        .as_array()
        .and_then(|k| k.first())
        .and_then(|k| k["data"].as_str())
        .map(str::to_string);
    match ec2 {
        "" => text("meta-data\nuser-data".into()),
        "/user-data" => doc
            .user_data
            .clone()
            .map(|u| ("application/octet-stream", u)),
        "/meta-data" => {
            let mut items = vec![
                "ami-id",
                "ami-launch-index",
                "hostname",
                "instance-id",
                "instance-type",
                "local-hostname",
                "local-ipv4",
                "placement/",
                "reservation-id",
                "security-groups",
            ];
            if key.is_some() {
                items.push("public-keys/");
            }
            text(items.join("\n"))
        }
        "/meta-data/ami-id" => text(String::new()),
        "/meta-data/ami-launch-index" => text(meta["launch_index"].to_string()),
        "/meta-data/hostname" | "/meta-data/local-hostname" => text(s("hostname")),
        "/meta-data/instance-id" => text(s("uuid")),
        "/meta-data/instance-type" => text(String::new()),
        "/meta-data/local-ipv4" => text(ipv4),
        "/meta-data/placement" => text("availability-zone".into()),
        "/meta-data/placement/availability-zone" => text(s("availability_zone")),
        "/meta-data/reservation-id" => text(String::new()),
        "/meta-data/security-groups" => text("default".into()),
        "/meta-data/public-keys" => key.map(|_| ("text/plain", b"0=key".to_vec())),
        "/meta-data/public-keys/0" => key.map(|_| ("text/plain", b"openssh-key".to_vec())),
        "/meta-data/public-keys/0/openssh-key" => key.map(|k| ("text/plain", k.into_bytes())),
        _ => None,
    }
}

/// OpenStack's `network_data.json` for a server's ports.
fn network_data(ports: &[&PortWiring]) -> Value {
    let mut links = Vec::new();
    let mut networks = Vec::new();
    let mut dns = Vec::new();
    for p in ports {
        let link = format!("tap{}", &p.id.chars().take(11).collect::<String>());
        links.push(json!({
            "id": link,
            "vif_id": p.id,
            "type": "bridge",
            "mtu": p.mtu,
            "ethernet_mac_address": p.mac,
        }));
        for a in &p.addresses {
            let mut routes = Vec::new();
            if let Some(gw) = &a.gateway {
                routes.push(if a.version == 6 {
                    json!({"network": "::", "netmask": "::", "gateway": gw})
                } else {
                    json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gw})
                });
            }
            networks.push(json!({
                "id": format!("network{}", networks.len()),
                "type": if a.version == 6 { "ipv6" } else { "ipv4" },
                "link": link,
                "ip_address": a.ip,
                "netmask": netmask(a.version, a.prefix_len),
                "routes": routes,
                "network_id": p.network_id,
                "services": p.dns.iter().map(|d| json!({"type": "dns", "address": d})).collect::<Vec<_>>(),
            }));
        }
        dns.extend(p.dns.iter().cloned());
    }
    dns.sort();
    dns.dedup();
    json!({
        "links": links,
        "networks": networks,
        "services": dns.iter().map(|d| json!({"type": "dns", "address": d})).collect::<Vec<_>>(),
    })
}

fn netmask(version: u8, prefix: u8) -> String {
    if version == 6 {
        let bits: u128 = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(prefix.min(128)))
        };
        std::net::Ipv6Addr::from(bits).to_string()
    } else {
        let bits: u32 = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix.min(32)))
        };
        std::net::Ipv4Addr::from(bits).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let doc = Doc {
            meta: json!({"uuid": "u-1", "hostname": "web", "availability_zone": "nova",
                "keys": [{"name": "k", "type": "ssh", "data": "ssh-ed25519 AAAA"}]}),
            user_data: Some(b"#!/bin/sh\necho hi\n".to_vec()),
            network: json!({"networks": [{"type": "ipv4", "ip_address": "10.0.0.5"}]}),
        };
        let get = |p: &str| route(p, &doc).map(|(_, b)| String::from_utf8(b).unwrap());
        assert!(
            get("/openstack/latest/meta_data.json")
                .unwrap()
                .contains("\"u-1\"")
        );
        assert_eq!(
            get("/openstack/2018-08-27/user_data").unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(get("/latest/meta-data/instance-id").unwrap(), "u-1");
        assert_eq!(get("/latest/meta-data/local-ipv4").unwrap(), "10.0.0.5");
        assert_eq!(
            get("/latest/meta-data/public-keys/0/openssh-key").unwrap(),
            "ssh-ed25519 AAAA"
        );
        assert_eq!(get("/openstack/1999-01-01/meta_data.json"), None);
        assert_eq!(get("/nope"), None);
        assert_eq!(netmask(4, 24), "255.255.255.0");
        assert_eq!(netmask(6, 64), "ffff:ffff:ffff:ffff::");
    }

    fn port(id: &str, device: &str, ip: &str) -> PortWiring {
        PortWiring {
            id: id.into(),
            device_id: device.into(),
            network_id: "net-1".into(),
            ifname: "eth0".into(),
            mac: "fa:16:3e:00:00:01".into(),
            mtu: 1450,
            addresses: vec![crate::net::PortAddress {
                ip: ip.into(),
                prefix_len: 8,
                version: 4,
                gateway: None,
            }],
            routes: vec![],
            dns: vec![],
            port_security: true,
            allowed_pairs: vec![],
            rules: vec![],
        }
    }

    /// GET `path` from `port` on 127.0.0.1 (the caller's source is
    /// 127.0.0.1), with a header that claims another address.
    fn get(port: u16, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: 127.0.0.2\r\nX-Instance-ID: vm-2\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// A network's VMs are told apart by source address only: a caller
    /// that is no VM port's address gets 404 whatever its headers say;
    /// the listener goes with the DHCP namespace, and a namespace made
    /// again gets a new one.
    #[test]
    fn vms_are_known_by_source_address() {
        let md = Metadata::default();
        md.set_server("vm-1", json!({"uuid": "vm-1"}), Some(b"one".to_vec()));
        md.set_server("vm-2", json!({"uuid": "vm-2"}), Some(b"two".to_vec()));
        let mut net = HostNetwork {
            networks: vec![],
            ports: vec![
                port("p2", "vm-2", "127.0.0.2"),
                port("d", "dhcp-net1-0", "127.0.0.9"),
                port("c", "container", "127.0.0.1"),
            ],
            routers: vec![],
            dhcp: vec![crate::net::DhcpWiring {
                network_id: "net-1".into(),
                port: "d".into(),
                hosts: vec![],
                subnets: vec![],
                mtu: 1450,
            }],
        };
        let bound = std::cell::RefCell::new(Vec::new());
        let netns = std::cell::Cell::new(7u64);
        let sync = |net: &HostNetwork| {
            md.sync_vms(
                net,
                |id| id.starts_with("vm-"),
                |dev| (dev == "dhcp-net1-0").then(|| netns.get()),
                |dev| {
                    assert_eq!(dev, "dhcp-net1-0");
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    l.set_nonblocking(true).unwrap();
                    bound.borrow_mut().push(l.local_addr().unwrap().port());
                    Ok((l, netns.get()))
                },
            )
        };
        sync(&net);
        let port1 = bound.borrow()[0];
        // 127.0.0.1 is a container's address, not a VM's here.
        let r = get(port1, "/openstack/latest/meta_data.json");
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        assert!(!r.contains("vm-2"), "{r}");
        // The VM that is 127.0.0.1 gets its own documents.
        net.ports.push(port("p1", "vm-1", "127.0.0.1"));
        net.ports.retain(|p| p.id != "c");
        sync(&net);
        assert_eq!(bound.borrow().len(), 1, "the listener stays");
        let r = get(port1, "/openstack/latest/meta_data.json");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with(r#"{"uuid":"vm-1"}"#), "{r}");
        let r = get(port1, "/openstack/latest/user_data");
        assert!(r.ends_with("\r\n\r\none"), "{r}");
        let r = get(port1, "/latest/meta-data/local-ipv4");
        assert!(r.ends_with("127.0.0.1"), "{r}");
        // The namespace made again: a listener in the new one.
        netns.set(8);
        sync(&net);
        assert_eq!(bound.borrow().len(), 2);
        let port2 = bound.borrow()[1];
        assert!(get(port2, "/latest/meta-data/instance-id").ends_with("vm-1"));
        // No DHCP server for the network any more: no listener.
        net.dhcp.clear();
        sync(&net);
        std::thread::sleep(Duration::from_millis(400));
        assert!(TcpStream::connect(("127.0.0.1", port2)).is_err());
        assert!(TcpStream::connect(("127.0.0.1", port1)).is_err());
    }
}
