//! Wiring with the kernel's own tools: `ip` (iproute2) for links,
//! namespaces, addresses and routes, `bridge` for VXLAN flood entries, and
//! `nft` for the ruleset. Every step checks what is there first, so
//! applying the same [`HostNetwork`] twice changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::rules::{bridge_name, host_ifname, ruleset, vxlan_name};
use super::{DhcpWiring, HostNetwork, METADATA_IP, PortWiring, RouterWiring, Segment};
use crate::DriverError;
use std::fmt::Write as _;

/// The network namespace a server's ports live in (and its container
/// joins).
pub fn netns_name(server_id: &str) -> String {
    format!("stratus-{server_id}")
}

/// The node's dataplane, or the reason it has none.
pub struct Dataplane {
    /// Why this node cannot wire ports (not root, a tool missing); `None`
    /// when it can.
    missing: Option<String>,
    /// This node's VXLAN endpoint; without one, networks stay local to the
    /// node.
    tunnel_ip: Option<String>,
    /// Where the namespaces this agent made are recorded (one empty file
    /// each): namespace names are global to the machine, and another
    /// agent's are not ours to sweep.
    state: PathBuf,
    /// dnsmasq is there to serve DHCP.
    dnsmasq: bool,
    /// One apply at a time; what the last one wired, so the next touches
    /// only what changed (a full apply checks everything again).
    lock: Mutex<Wired>,
    /// Servers that are VMs: their ports are tap devices on the bridge
    /// (QEMU opens them) rather than veths into a namespace.
    vms: Mutex<BTreeSet<String>>,
}

/// What an apply made sure of, by id.
#[derive(Default)]
struct Wired {
    segments: HashMap<String, Segment>,
    ports: HashMap<String, (PortWiring, u32)>,
    routers: HashMap<String, RouterWiring>,
}

fn run(cmd: &mut Command) -> Result<String, DriverError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DriverError::Runtime(format!("{cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(DriverError::Runtime(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, DriverError> {
    run(Command::new("ip").args(args))
}

fn ip_in(ns: &str, args: &[&str]) -> Result<String, DriverError> {
    run(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// Whether a link exists in this network namespace (asked of the kernel:
/// /sys may be another namespace's when the agent was started with
/// `nsenter --net`).
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The names of the links in this network namespace.
fn link_names() -> Vec<String> {
    ip(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            // `veth@peer` shows the peer after the name.
            Some(name.split('@').next().unwrap_or(name).to_string())
        })
        .collect()
}

/// Effective uid 0, read from /proc (no `unsafe` for a getter).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    })
}

fn tool_present(name: &str) -> bool {
    Command::new(name)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

impl Dataplane {
    /// Probes the host. A node without the tools still runs workloads;
    /// their ports get addresses but no wiring, and [`Dataplane::missing`]
    /// says why.
    pub fn probe(state: PathBuf, tunnel_ip: Option<String>) -> Dataplane {
        let mut missing = Vec::new();
        if !is_root() {
            missing.push("root privileges".to_string());
        }
        if !tool_present("ip") {
            missing.push("the ip command (apt install iproute2)".to_string());
        }
        if !tool_present("nft") {
            missing.push("the nft command (apt install nftables)".to_string());
        }
        if !std::path::Path::new("/proc/sys/net/bridge").exists() {
            missing.push("bridge netfilter in the kernel (br_netfilter)".to_string());
        }
        Dataplane {
            missing: (!missing.is_empty()).then(|| missing.join(", ")),
            tunnel_ip: tunnel_ip.filter(|t| !t.is_empty()),
            state,
            dnsmasq: Command::new("dnsmasq")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            lock: Mutex::new(Wired::default()),
            vms: Mutex::default(),
        }
    }

    /// A dataplane that wires nothing (the fake driver's).
    pub fn disabled(why: &str) -> Dataplane {
        Dataplane {
            missing: Some(why.to_string()),
            tunnel_ip: None,
            state: PathBuf::new(),
            dnsmasq: false,
            lock: Mutex::new(Wired::default()),
            vms: Mutex::default(),
        }
    }

    /// Marks `server_id` as a VM: its ports become taps at the next apply
    /// (a port wired as a veth before is made again). True when it was
    /// not marked yet: the caller must apply even an unchanged network.
    pub fn mark_vm(&self, server_id: &str) -> bool {
        let new = self
            .vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(server_id.to_string());
        if new {
            self.lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ports
                .retain(|_, (p, _)| p.device_id != server_id);
        }
        new
    }

    pub fn is_vm(&self, server_id: &str) -> bool {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(server_id)
    }

    /// A VM's NICs in `net`: one tap per port, in interface order.
    pub fn vm_nics(&self, net: &HostNetwork, server_id: &str) -> Vec<crate::VmNic> {
        if self.missing.is_some() {
            return Vec::new();
        }
        let mut ports: Vec<&PortWiring> = net
            .ports
            .iter()
            .filter(|p| p.device_id == server_id)
            .collect();
        ports.sort_by_key(|p| {
            let n: u32 = p
                .ifname
                .trim_start_matches("eth")
                .parse()
                .unwrap_or(u32::MAX);
            (n, p.ifname.clone())
        });
        ports
            .into_iter()
            .map(|p| crate::VmNic {
                tap: host_ifname(&p.id),
                mac: p.mac.to_ascii_lowercase(),
                // eth0 in slot 0x10, eth1 in 0x11, ...: after the disks.
                slot: p
                    .ifname
                    .strip_prefix("eth")
                    .and_then(|n| n.parse::<u8>().ok())
                    .filter(|n| *n < 16)
                    .map_or(0, |n| 0x10 + n),
            })
            .collect()
    }

    pub fn missing(&self) -> Option<&str> {
        self.missing.as_deref()
    }

    pub fn tunnel_ip(&self) -> Option<&str> {
        self.tunnel_ip.as_deref()
    }

    /// Whether this node serves DHCP (dnsmasq is installed).
    pub fn serves_dhcp(&self) -> bool {
        self.missing.is_none() && self.dnsmasq
    }

    /// The namespace path a server's container joins, when the server has
    /// ports and this node wires them.
    pub fn netns_path(&self, net: &HostNetwork, server_id: &str) -> Option<PathBuf> {
        if self.missing.is_some()
            || self.is_vm(server_id)
            || !net.ports.iter().any(|p| p.device_id == server_id)
        {
            return None;
        }
        Some(PathBuf::from("/run/netns").join(netns_name(server_id)))
    }

    /// Makes the node's links, addresses and rules what `net` says, and
    /// removes ports, bridges and tunnels nothing wants any more. `keep`
    /// names servers whose namespaces stay even without ports (their
    /// workloads still run).
    pub fn apply(
        &self,
        net: &HostNetwork,
        keep: &BTreeSet<String>,
        full: bool,
    ) -> Result<(), DriverError> {
        if self.missing.is_some() {
            return Ok(());
        }
        let mut wired = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if full {
            *wired = Wired::default();
        }
        for f in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            std::fs::write(format!("/proc/sys/net/bridge/{f}"), "1")?;
        }
        let mut errors = Vec::new();
        let segments: HashMap<&str, &Segment> =
            net.networks.iter().map(|n| (n.id.as_str(), n)).collect();
        // Tunnels of networks gone go first: a new network may have been
        // given the VNI one of them still holds.
        let tunnels: BTreeSet<String> = net.networks.iter().map(|n| vxlan_name(&n.id)).collect();
        for name in link_names() {
            if name.starts_with("sv-") && !tunnels.contains(&name) {
                let _ = ip(&["link", "delete", &name]);
                wired.segments.retain(|id, _| vxlan_name(id) != name);
            }
        }
        let mut now = Wired::default();
        for seg in &net.networks {
            if wired.segments.get(&seg.id) == Some(seg) {
                now.segments.insert(seg.id.clone(), seg.clone());
                continue;
            }
            match self.ensure_segment(seg) {
                Ok(()) => {
                    now.segments.insert(seg.id.clone(), seg.clone());
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        std::fs::create_dir_all(&self.state)?;
        let vms = self.vms.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in &net.ports {
            let mtu = segments.get(p.network_id.as_str()).map_or(p.mtu, |s| s.mtu);
            let this = (p.clone(), mtu);
            // A port wired as it is now, on a network not made again,
            // needs nothing (about ten `ip` runs saved per port).
            if wired.ports.get(&p.id) == Some(&this)
                && wired.segments.get(&p.network_id) == segments.get(p.network_id.as_str()).copied()
            {
                now.ports.insert(p.id.clone(), this);
                continue;
            }
            let wiring = if vms.contains(&p.device_id) {
                ensure_tap(p, mtu)
            } else {
                std::fs::write(self.state.join(netns_name(&p.device_id)), b"")?;
                ensure_port(p, mtu)
            };
            match wiring {
                Ok(()) => {
                    now.ports.insert(p.id.clone(), this);
                }
                Err(e) => errors.push(format!("port {}: {e}", p.id)),
            }
        }
        for r in &net.routers {
            let ports_same = net
                .ports
                .iter()
                .filter(|p| p.device_id == r.id)
                .all(|p| wired.ports.contains_key(&p.id));
            if wired.routers.get(&r.id) == Some(r) && ports_same {
                now.routers.insert(r.id.clone(), r.clone());
                continue;
            }
            match ensure_router(r, net) {
                Ok(()) => {
                    now.routers.insert(r.id.clone(), r.clone());
                }
                Err(e) => errors.push(format!("router {}: {e}", r.id)),
            }
        }
        *wired = now;
        // DHCP is a service to the workloads, not their wiring: a DHCP
        // server that will not start is logged and tried again at the
        // next sync, and fails no spawn.
        if self.dnsmasq {
            for d in &net.dhcp {
                if let Err(e) = self.ensure_dhcp(d, net) {
                    tracing::warn!(network = d.network_id, error = %e, "DHCP server not running");
                }
            }
        }
        // The rules go in before anything is removed, so a port that
        // moves between applies is never unfiltered.
        if let Err(e) = nft_apply(None, &ruleset(net)) {
            errors.push(e.to_string());
        }
        self.sweep(net, keep);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DriverError::Runtime(errors.join("; ")))
        }
    }

    /// Removes a server's namespace (and with it its ports' inner ends;
    /// the host ends go with them).
    pub fn unplug(&self, server_id: &str) {
        if self.missing.is_some() {
            return;
        }
        let ns = netns_name(server_id);
        if std::path::Path::new("/run/netns").join(&ns).exists() {
            let _ = ip(&["netns", "delete", &ns]);
        }
        let _ = std::fs::remove_file(self.state.join(ns));
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(server_id);
    }

    fn ensure_segment(&self, seg: &Segment) -> Result<(), DriverError> {
        let br = bridge_name(&seg.id);
        if !link_exists(&br) {
            ip(&["link", "add", &br, "type", "bridge"])?;
        }
        let mtu = seg.mtu.to_string();
        ip(&["link", "set", &br, "mtu", &mtu, "up"])?;
        if let Some(a) = &seg.host_address {
            ip(&["addr", "replace", a, "dev", &br])?;
        }
        let Some(local) = &self.tunnel_ip else {
            return Ok(());
        };
        let vx = vxlan_name(&seg.id);
        if !link_exists(&vx) {
            let vni = seg.vni.to_string();
            ip(&[
                "link", "add", &vx, "type", "vxlan", "id", &vni, "local", local, "dstport", "4789",
            ])?;
        }
        ip(&["link", "set", &vx, "mtu", &mtu, "master", &br, "up"])?;
        // Flood entries: one per peer node, and none for nodes gone.
        let fdb = run(Command::new("bridge").args(["fdb", "show", "dev", &vx]))?;
        let have: BTreeSet<String> = fdb
            .lines()
            .filter(|l| l.starts_with("00:00:00:00:00:00"))
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                w.position(|x| x == "dst")?;
                w.next().map(str::to_string)
            })
            .collect();
        let want: BTreeSet<String> = seg
            .peers
            .iter()
            .filter(|p| p.as_str() != local)
            .cloned()
            .collect();
        for peer in want.difference(&have) {
            run(Command::new("bridge").args([
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &vx,
                "dst",
                peer,
            ]))?;
        }
        for gone in have.difference(&want) {
            let _ = run(Command::new("bridge").args([
                "fdb",
                "del",
                "00:00:00:00:00:00",
                "dev",
                &vx,
                "dst",
                gone,
            ]));
        }
        Ok(())
    }

    /// Deletes our links and namespaces that `net` no longer names.
    fn sweep(&self, net: &HostNetwork, keep: &BTreeSet<String>) {
        let ports: BTreeSet<String> = net.ports.iter().map(|p| host_ifname(&p.id)).collect();
        let bridges: BTreeSet<String> = net
            .networks
            .iter()
            .flat_map(|n| [bridge_name(&n.id), vxlan_name(&n.id)])
            .collect();
        let mut names = link_names();
        // Ports first, tunnels before their bridges.
        names.sort_by_key(|n| match &n[..n.len().min(3)] {
            "sp-" => 0,
            "sv-" => 1,
            _ => 2,
        });
        for name in names {
            let ours_gone = match &name[..name.len().min(3)] {
                "sp-" => !ports.contains(&name),
                "sb-" | "sv-" => !bridges.contains(&name),
                _ => false,
            };
            if ours_gone {
                let _ = ip(&["link", "delete", &name]);
            }
        }
        let servers: BTreeSet<String> = net
            .ports
            .iter()
            .map(|p| p.device_id.clone())
            .chain(net.routers.iter().map(|r| r.id.clone()))
            .collect();
        if let Ok(dir) = std::fs::read_dir(&self.state) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("stratus-")
                    && !servers.contains(id)
                    && !keep.contains(id)
                {
                    let dhcp = dhcp_dir(id);
                    stop_dnsmasq(&dhcp);
                    let _ = std::fs::remove_dir_all(dhcp);
                    let _ = ip(&["netns", "delete", &name]);
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The tap of one VM port, on the network's bridge; QEMU opens it by
/// name. The guest gets its address by DHCP.
fn ensure_tap(p: &PortWiring, mtu: u32) -> Result<(), DriverError> {
    let host = host_ifname(&p.id);
    // Asked of the kernel, not /sys (another namespace's, see link_exists).
    let is_tap =
        ip(&["-d", "link", "show", "dev", &host]).is_ok_and(|o| o.contains("tun type tap"));
    // The veth of a server that was a container before goes.
    if link_exists(&host) && !is_tap {
        ip(&["link", "delete", &host])?;
    }
    if !link_exists(&host) {
        ip(&["tuntap", "add", "dev", &host, "mode", "tap"])?;
    }
    on_bridge(&host, &p.network_id, mtu)
}

/// Puts a port's host end on its network's bridge, with the MTU, up.
fn on_bridge(host: &str, network_id: &str, mtu: u32) -> Result<(), DriverError> {
    ip(&[
        "link",
        "set",
        host,
        "master",
        &bridge_name(network_id),
        "mtu",
        &mtu.to_string(),
        "up",
    ])?;
    Ok(())
}

/// The veth of one port, its inner end named and addressed inside the
/// server's namespace.
fn ensure_port(p: &PortWiring, mtu: u32) -> Result<(), DriverError> {
    let ns = netns_name(&p.device_id);
    if !std::path::Path::new("/run/netns").join(&ns).exists() {
        ip(&["netns", "add", &ns])?;
    }
    ip_in(&ns, &["link", "set", "lo", "up"])?;
    let host = host_ifname(&p.id);
    let mtu_s = mtu.to_string();
    // A host end whose inner end is not in the namespace (the namespace
    // was made again) is made again too.
    if link_exists(&host) && ip_in(&ns, &["link", "show", "dev", &p.ifname]).is_err() {
        ip(&["link", "delete", &host])?;
    }
    if !link_exists(&host) {
        // Made under a temporary inner name in our namespace, then moved
        // and renamed: two ports of two servers may both be `eth0`.
        let tmp = format!("sq-{}", &host[3..]);
        let _ = ip(&["link", "delete", &tmp]);
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &tmp])?;
        ip(&["link", "set", &tmp, "netns", &ns])?;
        ip_in(&ns, &["link", "set", &tmp, "name", &p.ifname])?;
    }
    on_bridge(&host, &p.network_id, mtu)?;
    let mac = p.mac.to_ascii_lowercase();
    ip_in(
        &ns,
        &[
            "link", "set", &p.ifname, "address", &mac, "mtu", &mtu_s, "up",
        ],
    )?;
    // Addresses: the port's, and no others.
    let shown = ip_in(&ns, &["-o", "addr", "show", "dev", &p.ifname])?;
    let want: BTreeSet<String> = p
        .addresses
        .iter()
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect();
    for line in shown.lines() {
        let mut w = line.split_whitespace();
        if let (Some(_), Some(fam), Some(addr)) = (w.nth(1), w.next(), w.next()) {
            let link_local = fam == "inet6" && addr.starts_with("fe80:");
            if !link_local && !want.contains(addr) {
                let _ = ip_in(&ns, &["addr", "del", addr, "dev", &p.ifname]);
            }
        }
    }
    for a in &p.addresses {
        let cidr = format!("{}/{}", a.ip, a.prefix_len);
        let fam = if a.version == 6 { "-6" } else { "-4" };
        let mut args = vec![fam, "addr", "replace", &cidr, "dev", &p.ifname];
        if a.version == 6 {
            args.push("nodad");
        }
        ip_in(&ns, &args)?;
    }
    for a in &p.addresses {
        if let Some(gw) = &a.gateway {
            let fam = if a.version == 6 { "-6" } else { "-4" };
            // The first port with a gateway gives the default route.
            if p.ifname == "eth0" || !has_default(&ns, fam) {
                ip_in(
                    &ns,
                    &[
                        fam, "route", "replace", "default", "via", gw, "dev", &p.ifname,
                    ],
                )?;
            }
        }
    }
    for r in &p.routes {
        let fam = if r.destination.contains(':') {
            "-6"
        } else {
            "-4"
        };
        let _ = ip_in(
            &ns,
            &[
                fam,
                "route",
                "replace",
                &r.destination,
                "via",
                &r.nexthop,
                "dev",
                &p.ifname,
            ],
        );
    }
    Ok(())
}

impl Dataplane {
    /// Runs (or reloads) dnsmasq for one network's DHCP in its namespace,
    /// with a static lease per port of this node.
    fn ensure_dhcp(&self, d: &DhcpWiring, net: &HostNetwork) -> Result<(), DriverError> {
        let Some(port) = net.ports.iter().find(|p| p.id == d.port) else {
            return Ok(());
        };
        let ns = netns_name(&port.device_id);
        let dir = dhcp_dir(&port.device_id);
        std::fs::create_dir_all(&dir)?;
        let hosts: String = d
            .hosts
            .iter()
            .map(|(mac, ip, name)| format!("{},{name},{ip}\n", mac.to_ascii_lowercase()))
            .collect();
        let mut opts = format!("option:mtu,{}\n", d.mtu);
        let mut ranges = Vec::new();
        for (i, sub) in d.subnets.iter().enumerate() {
            let Some((addr, mask)) = network_and_mask(&sub.cidr) else {
                continue;
            };
            ranges.push(format!("--dhcp-range=set:s{i},{addr},static,{mask},86400s"));
            if let Some(gw) = &sub.gateway {
                let _ = writeln!(opts, "tag:s{i},option:router,{gw}");
            }
            if !sub.dns.is_empty() {
                let _ = writeln!(opts, "tag:s{i},option:dns-server,{}", sub.dns.join(","));
            }
            let r = static_routes(sub, port);
            if !r.is_empty() {
                let _ = writeln!(
                    opts,
                    "tag:s{i},option:classless-static-route,{}",
                    r.join(",")
                );
            }
        }
        let hosts_path = dir.join("hosts");
        let opts_path = dir.join("opts");
        let pid_path = dir.join("pid");
        let args: Vec<String> = [
            "--no-hosts".to_string(),
            "--no-resolv".into(),
            "--port=0".into(),
            "--bind-interfaces".into(),
            format!("--interface={}", port.ifname),
            "--except-interface=lo".into(),
            "--dhcp-authoritative".into(),
            "--leasefile-ro".into(),
            format!("--pid-file={}", pid_path.display()),
            format!("--dhcp-hostsfile={}", hosts_path.display()),
            format!("--dhcp-optsfile={}", opts_path.display()),
        ]
        .into_iter()
        .chain(ranges)
        .collect();
        let changed_files = std::fs::read_to_string(&hosts_path).ok().as_deref() != Some(&hosts)
            || std::fs::read_to_string(&opts_path).ok().as_deref() != Some(&opts);
        std::fs::write(&hosts_path, &hosts)?;
        std::fs::write(&opts_path, &opts)?;
        let cmdline = args.join(" ");
        let running = read_pid(&pid_path).filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("dnsmasq"))
        });
        let same_args = std::fs::read_to_string(dir.join("args")).ok().as_deref() == Some(&cmdline);
        match running {
            Some(pid) if same_args => {
                if changed_files {
                    let _ = run(Command::new("kill").args(["-HUP", &pid.to_string()]));
                }
            }
            _ => {
                stop_dnsmasq(&dir);
                run(Command::new("ip")
                    .args(["netns", "exec", &ns, "dnsmasq"])
                    .args(&args))?;
                std::fs::write(dir.join("args"), &cmdline)?;
            }
        }
        Ok(())
    }
}

/// A subnet's classless static routes (DHCP option 121), as dnsmasq
/// spells them (`dest/len,next-hop`): its host routes, the metadata
/// address via the DHCP port's own address on the subnet (the VMs'
/// metadata service listens in the DHCP namespace), and the default route
/// via the gateway, since a client that takes option 121 ignores the
/// router option.
fn static_routes(sub: &super::DhcpSubnet, dhcp_port: &PortWiring) -> Vec<String> {
    let mut r: Vec<String> = sub
        .routes
        .iter()
        .filter(|x| !x.destination.contains(':'))
        .map(|x| format!("{},{}", x.destination, x.nexthop))
        .collect();
    let own = dhcp_port
        .addresses
        .iter()
        .filter(|a| a.version == 4)
        .find(|a| in_cidr(&a.ip, &sub.cidr));
    // A host route of the subnet's own to the metadata address wins.
    let metadata = format!("{METADATA_IP}/32");
    if let Some(own) = own
        && !sub.routes.iter().any(|x| x.destination == metadata)
    {
        r.push(format!("{metadata},{}", own.ip));
    }
    if !r.is_empty()
        && let Some(gw) = &sub.gateway
    {
        r.push(format!("0.0.0.0/0,{gw}"));
    }
    r
}

/// Whether IPv4 address `ip` is in `cidr`.
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (Ok(a), Some((net, mask))) = (ip.parse::<std::net::Ipv4Addr>(), network_and_mask(cidr))
    else {
        return false;
    };
    let (Ok(net), Ok(mask)) = (
        net.parse::<std::net::Ipv4Addr>(),
        mask.parse::<std::net::Ipv4Addr>(),
    ) else {
        return false;
    };
    u32::from(a) & u32::from(mask) == u32::from(net)
}

/// Where a DHCP server's files are: dnsmasq reads its hosts and options
/// files after dropping to `nobody`, so they live outside the agent's
/// private state directory (under /run, gone at reboot like the
/// namespaces themselves).
fn dhcp_dir(device: &str) -> PathBuf {
    PathBuf::from("/run/stratus-dhcp").join(device)
}

fn read_pid(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Stops the dnsmasq whose files are in `dir`, if it runs.
fn stop_dnsmasq(dir: &std::path::Path) {
    if let Some(pid) = read_pid(&dir.join("pid")) {
        let _ = Command::new("kill")
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(dir.join("pid"));
    }
}

/// `a.b.c.d/len` as (network address, netmask).
fn network_and_mask(cidr: &str) -> Option<(String, String)> {
    let (a, l) = cidr.split_once('/')?;
    let a: std::net::Ipv4Addr = a.parse().ok()?;
    let l: u32 = l.parse().ok()?;
    let mask = if l == 0 {
        0
    } else {
        u32::MAX << (32 - l.min(32))
    };
    Some((
        std::net::Ipv4Addr::from(u32::from(a) & mask).to_string(),
        std::net::Ipv4Addr::from(mask).to_string(),
    ))
}

/// A router's namespace beyond its ports: forwarding on, static routes,
/// and NAT (floating IPs both ways, source NAT of the rest behind the
/// gateway address).
fn ensure_router(r: &RouterWiring, net: &HostNetwork) -> Result<(), DriverError> {
    let ns = netns_name(&r.id);
    if !std::path::Path::new("/run/netns").join(&ns).exists() {
        ip(&["netns", "add", &ns])?;
        ip_in(&ns, &["link", "set", "lo", "up"])?;
    }
    run(Command::new("ip").args([
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]))?;
    for route in &r.routes {
        let _ = ip_in(
            &ns,
            &[
                "route",
                "replace",
                &route.destination,
                "via",
                &route.nexthop,
            ],
        );
    }
    let gw = r
        .gateway_port
        .as_ref()
        .and_then(|g| net.ports.iter().find(|p| &p.id == g));
    let mut rules = String::from(
        "table ip stratus_router {}\ndelete table ip stratus_router\ntable ip stratus_router {\n",
    );
    if let Some(gw) = gw {
        let own: Vec<&str> = gw
            .addresses
            .iter()
            .filter(|a| a.version == 4 && a.prefix_len < 32)
            .map(|a| a.ip.as_str())
            .collect();
        let _ = writeln!(
            rules,
            "  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;"
        );
        for (fip, fixed) in &r.floating {
            let _ = writeln!(rules, "    ip daddr {fip} dnat to {fixed}");
        }
        let _ = writeln!(
            rules,
            "  }}\n  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;"
        );
        for (fip, fixed) in &r.floating {
            let _ = writeln!(
                rules,
                "    oifname \"{}\" ip saddr {fixed} snat to {fip}",
                gw.ifname
            );
        }
        if r.snat
            && let Some(addr) = own.first()
        {
            let _ = writeln!(
                rules,
                "    oifname \"{}\" ip saddr != {{ {} }} snat to {addr}",
                gw.ifname,
                own.join(", ")
            );
        }
        let _ = writeln!(rules, "  }}");
    }
    rules.push_str("}\n");
    nft_apply(Some(&ns), &rules)
}

fn has_default(ns: &str, fam: &str) -> bool {
    ip_in(ns, &[fam, "route", "show", "default"]).is_ok_and(|o| !o.trim().is_empty())
}

/// Loads `rules` with `nft -f -`, in this namespace or in `ns`.
fn nft_apply(ns: Option<&str>, rules: &str) -> Result<(), DriverError> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DriverError::Runtime(format!("nft: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(DriverError::Runtime(format!(
            "nft refused the ruleset{}: {}",
            ns.map(|n| format!(" in {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The port the metadata listener binds inside a server's namespace; the
/// namespace redirects port 80 of [`METADATA_IP`] to it, so a workload
/// that binds `0.0.0.0:80` itself is not in the way.
pub const METADATA_PORT: u16 = 8775;

impl Dataplane {
    /// A listener for server `server_id`'s metadata, bound inside its
    /// network namespace: whatever connects to it is that server, so it is
    /// identified by where it connects from, never by a header it could
    /// forge. The namespace gets [`METADATA_IP`] on its loopback and a
    /// redirect of port 80 to [`METADATA_PORT`].
    pub fn metadata_listener(&self, server_id: &str) -> Result<std::net::TcpListener, DriverError> {
        if self.missing.is_some() {
            return Err(DriverError::Runtime("no dataplane on this node".into()));
        }
        let ns = netns_name(server_id);
        ip_in(
            &ns,
            &["addr", "replace", &format!("{METADATA_IP}/32"), "dev", "lo"],
        )?;
        let rules = format!(
            "table ip stratus_metadata {{}}\ndelete table ip stratus_metadata\ntable ip stratus_metadata {{\n  chain output {{\n    type nat hook output priority -100; policy accept;\n    ip daddr {METADATA_IP} tcp dport 80 dnat to {METADATA_IP}:{METADATA_PORT}\n  }}\n}}\n"
        );
        nft_apply(Some(&ns), &rules)?;
        bind_in_netns(PathBuf::from("/run/netns").join(&ns), METADATA_PORT)
    }

    /// A listener for the metadata of the VMs on the network whose DHCP
    /// server is `dhcp_device` (its namespace's device id), bound on
    /// [`METADATA_IP`] port 80 inside that DHCP namespace, and the
    /// namespace's identity ([`Dataplane::netns_id`]) it is bound in.
    ///
    /// DHCP gives each VM a route to [`METADATA_IP`] via the DHCP port's
    /// address, so a VM's request arrives here with its own fixed address
    /// as the source; that is what identifies it (see
    /// `node::metadata`). No workload shares this namespace, so port 80
    /// itself is bound.
    pub fn dhcp_metadata_listener(
        &self,
        dhcp_device: &str,
    ) -> Result<(std::net::TcpListener, u64), DriverError> {
        if self.missing.is_some() {
            return Err(DriverError::Runtime("no dataplane on this node".into()));
        }
        let ns = netns_name(dhcp_device);
        let path = PathBuf::from("/run/netns").join(&ns);
        let id =
            ns_inode(&path).ok_or_else(|| DriverError::Runtime(format!("no namespace {ns}")))?;
        ip_in(
            &ns,
            &["addr", "replace", &format!("{METADATA_IP}/32"), "dev", "lo"],
        )?;
        let l = bind_in_netns(path.clone(), 80)?;
        // The namespace bound in is the one that was looked at: one made
        // again in between would have a listener nothing reaches.
        if ns_inode(&path) != Some(id) {
            return Err(DriverError::Runtime(format!("{ns} was made again")));
        }
        Ok((l, id))
    }

    /// The identity of device `device`'s network namespace (its nsfs
    /// inode), while there is one.
    pub fn netns_id(&self, device: &str) -> Option<u64> {
        ns_inode(&PathBuf::from("/run/netns").join(netns_name(device)))
    }
}

fn ns_inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// A non-blocking listener on [`METADATA_IP`] port `port`, bound inside
/// the network namespace at `path`: a thread of its own enters the
/// namespace, binds, and ends; the socket stays in the namespace it was
/// made in.
fn bind_in_netns(path: PathBuf, port: u16) -> Result<std::net::TcpListener, DriverError> {
    std::thread::spawn(move || -> Result<std::net::TcpListener, DriverError> {
        enter_netns(&path)?;
        let l = std::net::TcpListener::bind((METADATA_IP, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| DriverError::Runtime("the metadata bind thread panicked".into()))?
}

/// Moves the calling thread into the network namespace at `path`.
#[allow(unsafe_code)]
fn enter_netns(path: &std::path::Path) -> Result<(), DriverError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: `f` is an open file descriptor that outlives the call;
    // setns(2) with CLONE_NEWNET only changes the calling thread's
    // network namespace and touches no memory of ours.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{DhcpSubnet, PortAddress, Route};
    use super::*;

    #[test]
    fn dhcp_routes_lead_the_metadata_address_to_the_dhcp_port() {
        let dhcp = PortWiring {
            id: "d".into(),
            device_id: "dhcp-x".into(),
            network_id: "n".into(),
            ifname: "ns-d".into(),
            mac: "fa:16:3e:00:00:02".into(),
            mtu: 1450,
            addresses: vec![
                PortAddress {
                    ip: "10.1.0.2".into(),
                    prefix_len: 24,
                    version: 4,
                    gateway: None,
                },
                PortAddress {
                    ip: "10.2.0.2".into(),
                    prefix_len: 24,
                    version: 4,
                    gateway: None,
                },
            ],
            routes: vec![],
            dns: vec![],
            port_security: false,
            allowed_pairs: vec![],
            rules: vec![],
        };
        let mut sub = DhcpSubnet {
            cidr: "10.2.0.0/24".into(),
            gateway: Some("10.2.0.1".into()),
            dns: vec![],
            routes: vec![Route {
                destination: "192.168.0.0/16".into(),
                nexthop: "10.2.0.9".into(),
            }],
        };
        assert_eq!(
            static_routes(&sub, &dhcp),
            [
                "192.168.0.0/16,10.2.0.9",
                "169.254.169.254/32,10.2.0.2",
                "0.0.0.0/0,10.2.0.1"
            ]
        );
        sub.routes.clear();
        sub.gateway = None;
        assert_eq!(static_routes(&sub, &dhcp), ["169.254.169.254/32,10.2.0.2"]);
        // No address of the DHCP port on the subnet: no metadata route.
        sub.cidr = "10.3.0.0/24".into();
        assert!(static_routes(&sub, &dhcp).is_empty());
        assert!(in_cidr("10.3.0.200", "10.3.0.0/24"));
        assert!(!in_cidr("10.3.1.1", "10.3.0.0/24"));
    }
}
