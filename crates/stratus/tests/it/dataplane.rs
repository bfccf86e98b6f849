//! The network dataplane with real traffic: clouds run inside network
//! namespaces the tests make (their bridges, VXLAN devices and nftables
//! rules never touch this machine's own namespace), servers are real
//! containers, and packets go between the servers' own namespaces.
//!
//! Listeners and probes are small Python programs run in a server's
//! network namespace (the container's own stack), plus busybox `ping`
//! inside a container where the console can show it.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Agent, TestNetns, in_server_netns};
use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_runtime, test_images};

const PROBE: &str = r#"
import socket, sys, time
mode = sys.argv[1]
if mode == "listen":
    port, banner, secs = int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    s.settimeout(secs)
    try:
        while True:
            c, peer = s.accept()
            c.sendall((peer[0] if banner == "peer" else banner).encode())
            c.close()
    except Exception:
        pass
else:
    host, port = sys.argv[2], int(sys.argv[3])
    src = sys.argv[4] if len(sys.argv) > 4 else None
    s = socket.socket()
    s.settimeout(1.5)
    if src:
        s.bind((src, 0))
    try:
        s.connect((host, port))
        print("OK " + s.recv(64).decode())
    except Exception as e:
        print("FAIL " + type(e).__name__)
"#;

fn probe_file() -> PathBuf {
    let p = std::env::temp_dir().join(format!("stratus-dp-probe-{}.py", std::process::id()));
    std::fs::write(&p, PROBE).unwrap();
    p
}

/// A listener in server `id`'s namespace answering `banner` on `port`
/// for 60 s (killed when dropped).
pub(super) struct Listener(Child);

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn listen(id: &str, port: u16, banner: &str) -> Listener {
    let child = Command::new("ip")
        .args(["netns", "exec", &format!("stratus-{id}"), "python3"])
        .arg(probe_file())
        .args(["listen", &port.to_string(), banner, "60"])
        .spawn()
        .expect("listener");
    Listener(child)
}

/// Connects from server `from`'s namespace; `Some(banner)` when it got
/// through.
fn connect(from: &str, host: &str, port: u16, src: Option<&str>) -> Option<String> {
    let probe = probe_file();
    let port = port.to_string();
    let mut args = vec!["python3", probe.to_str().unwrap(), "connect", host, &port];
    if let Some(s) = src {
        args.push(s);
    }
    let out = in_server_netns(from, &args).expect("probe runs");
    out.trim().strip_prefix("OK ").map(str::to_string)
}

/// Retries a connection that should get through (the listener may still
/// be starting).
pub(super) fn reaches(from: &str, host: &str, port: u16) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(b) = connect(from, host, port, None) {
            return Some(b);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cloud() -> Cloud {
    require_runtime();
    let dir = test_images();
    let c = Cloud::start_in_netns(&["--import-images", dir.to_str().unwrap()]);
    c.wait_nodes(1);
    c
}

fn neutron(c: &Cloud, method: &str, path: &str, tok: &str, body: Option<Value>) -> Value {
    let net = c.server.client_at("/network/v2.0");
    let r = net.raw(method, path, Some(tok), &[], body.map(|b| b.to_string()));
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    r.body
}

/// A network with one IPv4 subnet; its id.
fn network(c: &Cloud, tok: &str, name: &str, cidr: &str) -> String {
    let n = neutron(
        c,
        "POST",
        "/networks",
        tok,
        Some(json!({"network": {"name": name}})),
    );
    let id = n["network"]["id"].as_str().unwrap().to_string();
    neutron(
        c,
        "POST",
        "/subnets",
        tok,
        Some(json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4}})),
    );
    id
}

/// Boots a busybox server with `extra` (networks, security groups, ...)
/// and waits for ACTIVE; (id, server body).
fn boot(c: &Cloud, tok: &str, name: &str, extra: Value) -> (String, Value) {
    let image = image_id(c, "busybox");
    let mut server = json!({"name": name, "imageRef": image, "flavorRef": "1", "networks": "auto"});
    for (k, v) in extra.as_object().unwrap() {
        server[k] = v.clone();
    }
    let r = c.req("POST", "/servers", tok, Some(json!({"server": server})));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(tok, &id, "ACTIVE");
    (id, s)
}

/// The first IPv4 address of a server on network `net`.
pub(super) fn address(s: &Value, net: &str) -> String {
    s["addresses"][net]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["version"] == 4))
        .and_then(|x| x["addr"].as_str())
        .unwrap_or_else(|| panic!("no address on {net}: {}", s["addresses"]))
        .to_string()
}

#[test]
fn dataplane_one_node_traffic_security_groups_spoofing_isolation_and_cleanup() {
    let c = cloud();
    let (_, tok) = c.project("dp1");
    let net = network(&c, &tok, "net-a", "10.20.0.0/24");

    // One usable network: a server that names none gets it (Nova's
    // `auto`), with an address and the port's MAC shown.
    let (s1, b1) = boot(&c, &tok, "s1", json!({}));
    let ip1 = address(&b1, "net-a");
    let mac = b1["addresses"]["net-a"][0]["OS-EXT-IPS-MAC:mac_addr"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(b1["addresses"]["net-a"][0]["OS-EXT-IPS:type"], "fixed");
    let (s2, b2) = boot(
        &c,
        &tok,
        "s2",
        json!({"networks": [{"uuid": net, "fixed_ip": "10.20.0.50"}]}),
    );
    assert_eq!(address(&b2, "net-a"), "10.20.0.50");
    // The server list's `ip` filter matches fixed addresses.
    let r = c.req("GET", "/servers?ip=10%5C.20%5C.0%5C.50", &tok, None);
    let names: Vec<&str> = r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["s2"], "{}", r.body);

    // The port is the network service's: bound to the node, ACTIVE.
    let ports = neutron(&c, "GET", &format!("/ports?device_id={s1}"), &c.admin, None);
    let port = &ports["ports"][0];
    assert_eq!(port["mac_address"], mac.as_str());
    assert_eq!(port["status"], "ACTIVE");
    assert!(
        !port["binding:host_id"].as_str().unwrap_or("").is_empty(),
        "{port}"
    );
    assert_eq!(port["device_owner"], "compute:nova");

    // Two servers of one project in its default group reach each other.
    let _l2 = listen(&s2, 80, "s2");
    assert_eq!(reaches(&s1, "10.20.0.50", 80).as_deref(), Some("s2"));
    let _l1 = listen(&s1, 8080, "s1");
    assert_eq!(reaches(&s2, &ip1, 8080).as_deref(), Some("s1"));

    // Inside a container, with busybox's own ping.
    let (s5, _) = boot(
        &c,
        &tok,
        "pinger",
        json!({"user_data": base64_of(&format!(
            "#!/bin/sh\nfor i in $(seq 1 50); do if ping -c 1 -W 1 {ip1} >/dev/null 2>&1; then echo PING-OK; break; fi; sleep 0.2; done\nsleep 600\n"
        ))}),
    );
    console_until(&c, &tok, &s5, "PING-OK");

    // A group that allows only TCP 22 in: 22 gets through, 80 does not.
    let g = neutron(
        &c,
        "POST",
        "/security-groups",
        &tok,
        Some(json!({"security_group": {"name": "ssh-only"}})),
    );
    let gid = g["security_group"]["id"].as_str().unwrap().to_string();
    neutron(
        &c,
        "POST",
        "/security-group-rules",
        &tok,
        Some(
            json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress",
            "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "ethertype": "IPv4"}}),
        ),
    );
    let (s3, b3) = boot(
        &c,
        &tok,
        "s3",
        json!({"security_groups": [{"name": "ssh-only"}]}),
    );
    assert_eq!(b3["security_groups"], json!([{"name": "ssh-only"}]));
    let ip3 = address(&b3, "net-a");
    let _l22 = listen(&s3, 22, "ssh");
    let _l80 = listen(&s3, 80, "web");
    assert_eq!(reaches(&s1, &ip3, 22).as_deref(), Some("ssh"));
    assert_eq!(connect(&s1, &ip3, 80, None), None, "80 is not in the group");
    // A rule added later is applied to the running server.
    neutron(
        &c,
        "POST",
        "/security-group-rules",
        &tok,
        Some(
            json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress",
            "protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "ethertype": "IPv4"}}),
        ),
    );
    assert_eq!(reaches(&s1, &ip3, 80).as_deref(), Some("web"));

    // Anti-spoofing: s1 takes an address that is not its own; nothing it
    // sends from it gets anywhere, while its own address still works.
    in_server_netns(&s1, &["ip", "addr", "add", "10.20.0.99/24", "dev", "eth0"]).unwrap();
    assert_eq!(
        connect(&s1, "10.20.0.50", 80, Some("10.20.0.99")),
        None,
        "a spoofed source address got through"
    );
    assert_eq!(
        connect(&s1, "10.20.0.50", 80, Some(&ip1)).as_deref(),
        Some("s2")
    );

    // The same CIDR in another project is another network: its server
    // at the same address is not the one s1's project reaches.
    let (_, tok2) = c.project("dp2");
    let net2 = network(&c, &tok2, "net-b", "10.20.0.0/24");
    let (t1, _) = boot(
        &c,
        &tok2,
        "t1",
        json!({"networks": [{"uuid": net2, "fixed_ip": "10.20.0.50"}]}),
    );
    let (t2, _) = boot(&c, &tok2, "t2", json!({}));
    let _lt = listen(&t1, 80, "t1");
    assert_eq!(reaches(&t2, "10.20.0.50", 80).as_deref(), Some("t1"));
    assert_eq!(
        connect(&s1, "10.20.0.50", 80, Some(&ip1)).as_deref(),
        Some("s2")
    );

    // Deleting a server releases its port and removes its wiring.
    let r = c.req("DELETE", &format!("/servers/{s2}"), &tok, None);
    assert_eq!(r.status, 204, "{}", r.body);
    c.wait_gone(&tok, &s2);
    let ports = neutron(&c, "GET", &format!("/ports?device_id={s2}"), &c.admin, None);
    assert_eq!(ports["ports"], json!([]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/run/netns/stratus-{s2}")).exists() {
        assert!(Instant::now() < deadline, "the server's namespace stayed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its address can be taken again.
    let (_, b6) = boot(
        &c,
        &tok,
        "s6",
        json!({"networks": [{"uuid": net, "fixed_ip": "10.20.0.50"}]}),
    );
    assert_eq!(address(&b6, "net-a"), "10.20.0.50");
}

#[test]
fn dataplane_bad_network_requests_get_nova_errors_and_leave_nothing() {
    let c = cloud();
    let (_, tok) = c.project("dpbad");
    let image = image_id(&c, "busybox");
    // No DHCP on this one: its server-side port would take an address.
    let n = neutron(
        &c,
        "POST",
        "/networks",
        &tok,
        Some(json!({"network": {"name": "n1"}})),
    );
    let net = n["network"]["id"].as_str().unwrap().to_string();
    neutron(
        &c,
        "POST",
        "/subnets",
        &tok,
        Some(
            json!({"subnet": {"network_id": net, "cidr": "10.40.0.0/29", "ip_version": 4, "enable_dhcp": false}}),
        ),
    );
    let post = |server: Value| {
        let mut s = json!({"name": "x", "imageRef": image, "flavorRef": "1", "networks": "auto"});
        for (k, v) in server.as_object().unwrap() {
            s[k] = v.clone();
        }
        c.req("POST", "/servers", &tok, Some(json!({"server": s})))
    };
    let r = post(json!({"networks": [{"uuid": "00000000-0000-0000-0000-000000000000"}]}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body["badRequest"]["message"].is_string(), "{}", r.body);
    let r = post(json!({"networks": [{"uuid": net, "fixed_ip": "10.99.0.5"}]}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(json!({"networks": [{"uuid": net, "fixed_ip": "not-an-ip"}]}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(json!({"security_groups": [{"name": "no-such-group"}]}));
    assert_eq!(r.status, 400, "{}", r.body);
    // Another project's private network is not there for this one.
    let (_, other) = c.project("dpother");
    let theirs = network(&c, &other, "theirs", "10.41.0.0/24");
    let r = post(json!({"networks": [{"uuid": theirs}]}));
    assert_eq!(r.status, 400, "{}", r.body);
    // Two usable networks and none named: ambiguous.
    network(&c, &tok, "n2", "10.42.0.0/24");
    let r = post(json!({}));
    assert_eq!(r.status, 409, "{}", r.body);
    // None of it left a port or a server behind.
    let ports = neutron(&c, "GET", "/ports", &tok, None);
    assert_eq!(ports["ports"], json!([]), "{ports}");
    let servers = c.req("GET", "/servers", &tok, None);
    assert_eq!(servers.body["servers"], json!([]));
    // An exhausted subnet (a /29 has 5 addresses after the gateway) is a
    // clear refusal, also with nothing left behind.
    let mut ok = 0;
    for i in 0..6 {
        let r = post(json!({"name": format!("f{i}"), "networks": [{"uuid": net}]}));
        if r.status == 202 {
            ok += 1;
        } else {
            assert_eq!(r.status, 409, "{}", r.body);
        }
    }
    assert_eq!(ok, 5);
}

#[test]
fn dataplane_two_nodes_reach_each_other_over_vxlan() {
    let c = cloud();
    let node_ns = TestNetns::new(c.server.netns.as_ref());
    let agent = Agent::start_in_netns(&c.server, "node2", &[], &node_ns);
    c.wait_nodes_logged(2, &agent.log);
    let hosts = c.req("GET", "/os-hypervisors", &c.admin, None);
    let names: Vec<String> = hosts.body["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hypervisor_hostname"].as_str().unwrap().to_string())
        .collect();
    let other = names.iter().find(|n| *n != "node2").unwrap().clone();
    let net = network(&c, &c.admin, "wide", "10.60.0.0/24");
    let (a, ba) = boot(
        &c,
        &c.admin,
        "on-first",
        json!({"networks": [{"uuid": net}], "availability_zone": format!("nova:{other}")}),
    );
    let (b, bb) = boot(
        &c,
        &c.admin,
        "on-second",
        json!({"networks": [{"uuid": net}], "availability_zone": "nova:node2"}),
    );
    let r = c.req("GET", &format!("/servers/{b}"), &c.admin, None);
    assert_eq!(r.body["server"]["OS-EXT-SRV-ATTR:host"], "node2");
    let _lb = listen(&b, 80, "second");
    let _la = listen(&a, 80, "first");
    assert_eq!(
        reaches(&a, &address(&bb, "wide"), 80).as_deref(),
        Some("second"),
        "no traffic across the nodes; agent log:\n{}",
        std::fs::read_to_string(&agent.log).unwrap_or_default()
    );
    assert_eq!(
        reaches(&b, &address(&ba, "wide"), 80).as_deref(),
        Some("first")
    );

    // A cold migration moves b to the first node: its port is wired
    // there (same address, bound to the new host) and still reached.
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{b}/action"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.56")],
        Some(json!({"migrate": {"host": other}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &b, "VERIFY_RESIZE");
    let r = c.req(
        "POST",
        &format!("/servers/{b}/action"),
        &c.admin,
        Some(json!({"confirmResize": null})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let moved = c.wait(&c.admin, &b, "ACTIVE");
    assert_eq!(moved["OS-EXT-SRV-ATTR:host"], other.as_str());
    assert_eq!(address(&moved, "wide"), address(&bb, "wide"));
    let ports = neutron(&c, "GET", &format!("/ports?device_id={b}"), &c.admin, None);
    assert_eq!(ports["ports"][0]["binding:host_id"], other.as_str());
    let _lb2 = listen(&b, 81, "moved");
    assert_eq!(
        reaches(&a, &address(&bb, "wide"), 81).as_deref(),
        Some("moved")
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `GET` over plain HTTP from inside server `id`'s namespace.
fn http_get(id: &str, url: &str) -> String {
    let code = format!(
        "import urllib.request,sys\ntry:\n  print(urllib.request.urlopen('{url}', timeout=3).read().decode())\nexcept Exception as e:\n  print('ERROR', e)"
    );
    in_server_netns(id, &["python3", "-c", &code]).expect("python runs")
}

#[test]
fn dataplane_metadata_service_serves_each_server_its_own() {
    let c = cloud();
    let (_, tok) = c.project("md");
    let net = network(&c, &tok, "md-net", "10.80.0.0/24");
    // The subnet's name servers are the guest's resolv.conf.
    let subs = neutron(&c, "GET", &format!("/subnets?network_id={net}"), &tok, None);
    let sid = subs["subnets"][0]["id"].as_str().unwrap().to_string();
    neutron(
        &c,
        "PUT",
        &format!("/subnets/{sid}"),
        &tok,
        Some(json!({"subnet": {"dns_nameservers": ["10.80.0.53"]}})),
    );
    // The guest reads its metadata with busybox's wget, from inside.
    let script = "#!/bin/sh\ncat /etc/resolv.conf\nudhcpc -i eth0 -n -q -f -s /bin/true -t 10 2>&1\nfor i in $(seq 1 50); do if wget -q -O /tmp/md http://169.254.169.254/openstack/latest/meta_data.json; then echo MD-BEGIN; cat /tmp/md; echo; echo MD-END; break; fi; sleep 0.2; done\nsleep 600\n";
    let (a, _) = boot(
        &c,
        &tok,
        "reader",
        json!({"user_data": base64_of(script), "metadata": {"role": "reader"}}),
    );
    let out = console_until(&c, &tok, &a, "MD-END");
    assert!(out.contains(&format!("\"uuid\":\"{a}\"")), "{out}");
    assert!(out.contains("\"role\":\"reader\""), "{out}");
    assert!(out.contains("nameserver 10.80.0.53"), "{out}");
    // DHCP hands the server its own address (busybox udhcpc, inside).
    let mine = address(&c.wait(&tok, &a, "ACTIVE"), "md-net");
    assert!(out.contains(&format!("lease of {mine} obtained")), "{out}");
    let (b, bb) = boot(
        &c,
        &tok,
        "other",
        json!({"user_data": base64_of("#!/bin/sh\n# b's own\nsleep 600\n")}),
    );

    // Each namespace gets its own server's documents, whatever it asks.
    let md_b = http_get(&b, "http://169.254.169.254/openstack/latest/meta_data.json");
    assert!(md_b.contains(&format!("\"uuid\":\"{b}\"")), "{md_b}");
    assert!(!md_b.contains(&a), "b sees a's metadata: {md_b}");
    let ud_b = http_get(&b, "http://169.254.169.254/openstack/latest/user_data");
    assert!(ud_b.contains("# b's own"), "{ud_b}");
    assert!(!ud_b.contains("MD-BEGIN"), "b read a's user_data");
    let net_b = http_get(
        &b,
        "http://169.254.169.254/openstack/latest/network_data.json",
    );
    assert!(net_b.contains(&address(&bb, "md-net")), "{net_b}");
    assert_eq!(
        http_get(&b, "http://169.254.169.254/latest/meta-data/instance-id").trim(),
        b
    );
    // A header naming another server changes nothing.
    let code = format!(
        "import urllib.request\nr = urllib.request.Request('http://169.254.169.254/openstack/latest/meta_data.json', headers={{'X-Instance-ID': '{a}', 'X-Forwarded-For': '10.80.0.2'}})\nprint(urllib.request.urlopen(r, timeout=3).read().decode())"
    );
    let forged = in_server_netns(&b, &["python3", "-c", &code]).unwrap();
    assert!(forged.contains(&format!("\"uuid\":\"{b}\"")), "{forged}");
    // A workload may still serve port 80 itself.
    let _l = listen(&b, 80, "mine");
    let bip = address(&bb, "md-net");
    assert_eq!(reaches(&b, &bip, 80).as_deref(), Some("mine"));
}

/// A listener in the cloud's own namespace (the host side of `public`).
fn listen_on_host(c: &Cloud, port: u16, banner: &str) -> Listener {
    let ns = c.server.netns.as_ref().expect("a namespaced cloud");
    let child = ns
        .command("python3")
        .arg(probe_file())
        .args(["listen", &port.to_string(), banner, "60"])
        .spawn()
        .expect("listener");
    Listener(child)
}

/// Connects from the cloud's own namespace (the host side).
fn connect_from_host(c: &Cloud, host: &str, port: u16) -> Option<String> {
    let ns = c.server.netns.as_ref().expect("a namespaced cloud");
    let out = ns
        .command("python3")
        .arg(probe_file())
        .args(["connect", host, &port.to_string()])
        .output()
        .expect("probe");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("OK ")
        .map(str::to_string)
}

fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn dataplane_routers_floating_ips_snat_and_auto_allocated_networks() {
    let c = cloud();
    let (_, tok) = c.project("l3");
    let n1 = network(&c, &tok, "l3-a", "10.90.1.0/24");
    let n2 = network(&c, &tok, "l3-b", "10.90.2.0/24");
    let (s1, b1) = boot(&c, &tok, "s1", json!({"networks": [{"uuid": n1}]}));
    let (s2, b2) = boot(&c, &tok, "s2", json!({"networks": [{"uuid": n2}]}));
    let ip1 = address(&b1, "l3-a");
    let ip2 = address(&b2, "l3-b");
    let _l2 = listen(&s2, 80, "s2");
    let _l1 = listen(&s1, 80, "s1");
    assert_eq!(connect(&s1, &ip2, 80, None), None, "no router yet");

    // A router joins the two networks, with a gateway to `public`.
    let public = neutron(&c, "GET", "/networks?name=public", &tok, None);
    let public_id = public["networks"][0]["id"]
        .as_str()
        .expect("public exists")
        .to_string();
    let r = neutron(
        &c,
        "POST",
        "/routers",
        &tok,
        Some(json!({"router": {"name": "r1", "external_gateway_info": {"network_id": public_id}}})),
    );
    let rid = r["router"]["id"].as_str().unwrap().to_string();
    for net in [&n1, &n2] {
        let subs = neutron(&c, "GET", &format!("/subnets?network_id={net}"), &tok, None);
        let sid = subs["subnets"][0]["id"].as_str().unwrap();
        neutron(
            &c,
            "PUT",
            &format!("/routers/{rid}/add_router_interface"),
            &tok,
            Some(json!({"subnet_id": sid})),
        );
    }
    eventually(
        || connect(&s1, &ip2, 80, None).as_deref() == Some("s2"),
        "the router never joined the networks",
    );
    assert_eq!(reaches(&s2, &ip1, 80).as_deref(), Some("s1"));

    // Out through the router: the host sees the router's address (SNAT).
    let gw = r["router"]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let _h = listen_on_host(&c, 9000, "peer");
    assert_eq!(
        reaches(&s1, "172.24.4.1", 9000).as_deref(),
        Some(gw.as_str())
    );

    // A floating IP reaches s1 from the host once its group lets TCP 80
    // in, and s1 goes out as its floating address.
    let ports = neutron(&c, "GET", &format!("/ports?device_id={s1}"), &tok, None);
    let port = ports["ports"][0]["id"].as_str().unwrap().to_string();
    let groups = neutron(&c, "GET", "/security-groups?name=default", &tok, None);
    let gid = groups["security_groups"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    neutron(
        &c,
        "POST",
        "/security-group-rules",
        &tok,
        Some(
            json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress",
            "protocol": "tcp", "port_range_min": 80, "port_range_max": 80,
            "remote_ip_prefix": "0.0.0.0/0"}}),
        ),
    );
    let f = neutron(
        &c,
        "POST",
        "/floatingips",
        &tok,
        Some(json!({"floatingip": {"floating_network_id": public_id, "port_id": port}})),
    );
    let fip = f["floatingip"]["floating_ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let fid = f["floatingip"]["id"].as_str().unwrap().to_string();
    eventually(
        || connect_from_host(&c, &fip, 80).as_deref() == Some("s1"),
        "the floating IP never reached the server",
    );
    assert_eq!(
        reaches(&s1, "172.24.4.1", 9000).as_deref(),
        Some(fip.as_str())
    );
    // The server shows it among its addresses.
    let shown = c.wait(&tok, &s1, "ACTIVE");
    assert!(
        shown["addresses"].to_string().contains(&fip),
        "{}",
        shown["addresses"]
    );
    // Disassociated, it reaches nothing.
    neutron(
        &c,
        "PUT",
        &format!("/floatingips/{fid}"),
        &tok,
        Some(json!({"floatingip": {"port_id": null}})),
    );
    eventually(
        || connect_from_host(&c, &fip, 80).is_none(),
        "the floating IP still reaches the server",
    );
    // Nova's proxy actions (before 2.44) do the same.
    let act = |body: Value| c.req("POST", &format!("/servers/{s1}/action"), &tok, Some(body));
    let r = act(json!({"addFloatingIp": {"address": fip}}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(
        || connect_from_host(&c, &fip, 80).as_deref() == Some("s1"),
        "addFloatingIp did not map the address",
    );
    let r = act(json!({"addFloatingIp": {"address": "172.24.4.250"}}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = act(json!({"removeFloatingIp": {"address": fip}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = act(json!({"removeFloatingIp": {"address": fip}}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{s1}/action"),
        Some(&tok),
        &[("OpenStack-API-Version", "compute 2.44")],
        Some(json!({"addFloatingIp": {"address": fip}}).to_string()),
    );
    assert_eq!(r.status, 404, "gone from 2.44: {}", r.body);

    // A project with no network of its own gets one with `networks:
    // auto` (the auto-allocated topology), and can reach the host.
    let (_, tok2) = c.project("fresh");
    let (s3, b3) = boot(&c, &tok2, "fresh-1", json!({"networks": "auto"}));
    assert!(
        b3["addresses"].get("auto_allocated_network").is_some(),
        "{}",
        b3["addresses"]
    );
    assert!(reaches(&s3, "172.24.4.1", 9000).is_some());
}

#[test]
fn dataplane_survives_a_restart_without_dropping_traffic_and_sweeps_leftovers() {
    let mut c = cloud();
    let (_, tok) = c.project("rs");
    network(&c, &tok, "rs-net", "10.85.0.0/24");
    let (s1, _) = boot(&c, &tok, "s1", json!({}));
    let (s2, b2) = boot(&c, &tok, "s2", json!({}));
    let ip2 = address(&b2, "rs-net");
    let _l = listen(&s2, 80, "s2");
    assert_eq!(reaches(&s1, &ip2, 80).as_deref(), Some("s2"));
    let ns = c.server.netns.as_ref().unwrap().name.clone();
    let links = |ns: &str| {
        let out = Command::new("ip")
            .args(["-n", ns, "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(": sp-") || l.contains(": sb-"))
            .map(|l| l.split(':').take(2).collect::<Vec<_>>().join(":"))
            .collect::<Vec<_>>()
    };
    let before = links(&ns);
    // Connections every 50 ms from s1 to s2 for the whole restart.
    let code = format!(
        "import socket,time,subprocess\nok=fail=0\nend=time.time()+12\nwhile time.time()<end:\n  s=socket.socket(); s.settimeout(0.5)\n  try:\n    s.connect(('{ip2}',80)); s.recv(8); ok+=1\n  except Exception: fail+=1\n  s.close(); time.sleep(0.05)\nprint(ok, fail)"
    );
    let pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("stratus-{s1}"),
            "python3",
            "-c",
            &code,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    c.server.restart();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    let out = pinger.wait_with_output().unwrap();
    let counts = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = counts.split_whitespace().map(|x| x.parse::<u32>().unwrap());
    let (ok, fail) = (it.next().unwrap(), it.next().unwrap());
    assert!(ok > 50, "too few connections: {counts}");
    assert_eq!(fail, 0, "connections failed across the restart: {counts}");
    // Nothing was made again: the same links with the same indexes.
    assert_eq!(links(&ns), before);
    // A stale port link (ours by name, no port) goes at the next sync.
    let out = Command::new("ip")
        .args([
            "-n",
            &ns,
            "link",
            "add",
            "sp-stale000000",
            "type",
            "veth",
            "peer",
            "name",
            "sq-stale",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = boot(&c, &tok, "s3", json!({}));
    eventually(
        || !links(&ns).iter().any(|l| l.contains("sp-stale")),
        "the stale port link stayed",
    );
    assert_eq!(reaches(&s1, &ip2, 80).as_deref(), Some("s2"));
}

#[test]
fn dataplane_ipv6_addresses_and_traffic() {
    let c = cloud();
    let (_, tok) = c.project("v6");
    let net = network(&c, &tok, "dual", "10.95.0.0/24");
    neutron(
        &c,
        "POST",
        "/subnets",
        &tok,
        Some(json!({"subnet": {"network_id": net, "cidr": "fd00:95::/64", "ip_version": 6}})),
    );
    let (a, ba) = boot(&c, &tok, "a6", json!({}));
    let (b, bb) = boot(&c, &tok, "b6", json!({}));
    let v6 = |s: &Value| {
        s["addresses"]["dual"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["version"] == 6))
            .and_then(|x| x["addr"].as_str())
            .unwrap_or_else(|| panic!("no IPv6 address: {}", s["addresses"]))
            .to_string()
    };
    let (a6, b6) = (v6(&ba), v6(&bb));
    assert!(b6.starts_with("fd00:95::"), "{b6}");
    let listen6 = "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('::',80))\ns.listen(4)\ns.settimeout(30)\nc,p=s.accept()\nc.sendall(p[0].encode())\nc.close()";
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("stratus-{b}"),
            "python3",
            "-c",
            listen6,
        ])
        .spawn()
        .unwrap();
    let _l = Listener(child);
    let connect6 = format!(
        "import socket,time\nfor i in range(40):\n  try:\n    s=socket.create_connection(('{b6}',80),timeout=1)\n    print('OK', s.recv(64).decode())\n    break\n  except Exception as e:\n    time.sleep(0.25)\nelse:\n  print('FAIL')"
    );
    let out = in_server_netns(&a, &["python3", "-c", &connect6]).unwrap();
    // b saw a's own IPv6 address: no translation, no spoofing.
    assert_eq!(out.trim(), format!("OK {a6}"), "{out}");
}
