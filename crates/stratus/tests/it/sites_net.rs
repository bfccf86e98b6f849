//! Edge sites with real networks: the root (fake driver, no dataplane)
//! owns the networks and hands out their addresses; a site controller in
//! a test namespace of its own runs the servers as real containers, wires
//! their ports between them and serves DHCP with the root's addresses.
//! Traffic stays inside the namespaces the test made.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Client, TestNetns, bin, free_port, reap_containers, unique_dir};
use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_runtime, test_images};
use super::dataplane::{address, listen, reaches};

/// A site controller with the container driver, in its own namespace;
/// killed, its containers and namespaces reaped, when dropped.
struct RealSite {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl RealSite {
    fn start(ns: &TestNetns, parent: &str, token: &str, node: &str) -> RealSite {
        let dir = unique_dir();
        let port = free_port();
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = ns
            .command(bin())
            .args(["up", "--listen", &format!("{}:{port}", ns.addr)])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--parent", parent, "--join-token", token])
            .args(["--node-name", node, "--public-network", "none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the site");
        let url = format!("http://{}:{port}", ns.addr);
        let ks = Client {
            base: format!("{url}/identity/v3"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr: std::net::SocketAddr = format!("{}:{port}", ns.addr).parse().unwrap();
        let listening =
            || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        while !listening() || ks.call("GET", "", None, None).status != 200 {
            assert!(Instant::now() < deadline, "the site did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        RealSite { child, dir, url }
    }

    fn neutron(&self) -> Client {
        Client {
            base: format!("{}/network/v2.0", self.url),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for RealSite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        reap_containers(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(self.dir.with_extension("log"));
        }
    }
}

fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ports_of(neutron: &Client, token: &str, server: &str) -> Vec<Value> {
    let r = neutron.get(&format!("/ports?device_id={server}"), token);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["ports"].as_array().unwrap().clone()
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn sites_servers_at_a_site_get_the_parents_network_addresses_dhcp_and_traffic() {
    require_runtime();
    let images = test_images();
    // The site's namespace hangs off this machine's; the root's sync
    // listener is on this side of that link only.
    let ns = TestNetns::new(None);
    let here: std::net::Ipv4Addr = ns.addr.parse().unwrap();
    let here = std::net::Ipv4Addr::from(u32::from(here) - 1);
    let sync = format!("{here}:{}", free_port());
    let c = Cloud::start(&[
        "--sync-listen",
        &sync,
        "--driver",
        "fake",
        "--import-images",
        images.to_str().unwrap(),
    ]);
    let r = c.server.client_at("/edge/v1").post(
        "/sites",
        &c.admin,
        json!({"site": {"name": "edge-n"}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["join_token"].as_str().unwrap().to_string();
    let site = RealSite::start(&ns, &format!("https://{sync}"), &token, "edge-n-node");

    // The site is a zone of the compute and the network service alike,
    // as the real CLI lists them.
    let r = c
        .server
        .client_at("/network/v2.0")
        .get("/availability_zones?resource=network", &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let site_zone = || {
        c.server
            .client_at("/network/v2.0")
            .get("/availability_zones?name=edge-n&resource=network", &c.admin)
            .body["availability_zones"][0]["state"]
            == "available"
    };
    eventually(30, "the site is an available network zone", site_zone);
    if let Some(os) = super::cli::Os::new(&c.server) {
        let zones = os.json(&["availability", "zone", "list", "--long"]);
        // Compute zones have no resource column; network zones name theirs.
        let has = |resource: &str| {
            zones.as_array().unwrap().iter().any(|z| {
                z["Zone Name"] == "edge-n"
                    && z["Zone Status"] == "available"
                    && z["Zone Resource"] == resource
            })
        };
        assert!(has("") && has("network") && has("router"), "{zones}");
    }

    // A tenant's network, made at the root.
    let (_, tok) = c.project("edgenet");
    let root_net = c.server.client_at("/network/v2.0");
    let r = root_net.post("/networks", &tok, json!({"network": {"name": "edge-net"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let net = r.body["network"]["id"].as_str().unwrap().to_string();
    let r = root_net.post(
        "/subnets",
        &tok,
        json!({"subnet": {"network_id": net, "cidr": "10.93.0.0/24", "ip_version": 4}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // Two servers on it in the site's zone: the root hands out their
    // addresses, the site runs them.
    let image = image_id(&c, "busybox");
    let dhcp = "#!/bin/sh\nudhcpc -i eth0 -n -q -f -s /bin/true -t 20 2>&1\nsleep 600\n";
    let boot = |name: &str, user_data: Option<&str>| -> String {
        let mut s = json!({"name": name, "imageRef": image, "flavorRef": "1",
                           "networks": [{"uuid": net}], "availability_zone": "edge-n"});
        if let Some(u) = user_data {
            s["user_data"] = json!(base64_of(u));
        }
        let r = c.req("POST", "/servers", &tok, Some(json!({"server": s})));
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["server"]["id"].as_str().unwrap().to_string()
    };
    let a = boot("edge-a", Some(dhcp));
    let b = boot("edge-b", None);
    let wait_active = |id: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = c.req("GET", &format!("/servers/{id}"), &tok, None);
            assert_eq!(r.status, 200, "{}", r.body);
            if r.body["server"]["status"] == "ACTIVE" {
                return r.body["server"].clone();
            }
            assert_ne!(r.body["server"]["status"], "ERROR", "{}", r.body);
            assert!(
                Instant::now() < deadline,
                "{id} never ACTIVE at the root: {}\nsite log:\n{}",
                r.body,
                site.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let sa = wait_active(&a);
    let sb = wait_active(&b);
    let (ip_a, ip_b) = (address(&sa, "edge-net"), address(&sb, "edge-net"));
    assert!(ip_a.starts_with("10.93.0.") && ip_b.starts_with("10.93.0."));
    assert_ne!(ip_a, ip_b);

    // The root shows the ports bound to the site's node; the site has the
    // same ports (address and MAC), bound there too, and the network's
    // DHCP port the root made.
    let site_net = site.neutron();
    let root_ports = ports_of(&root_net, &c.admin, &a);
    assert_eq!(root_ports.len(), 1);
    eventually(20, "the root's port bound to the site's node", || {
        ports_of(&root_net, &c.admin, &a)[0]["binding:host_id"] == "edge-n-node"
    });
    let at_site = ports_of(&site_net, &c.admin, &a);
    assert_eq!(at_site.len(), 1, "{at_site:?}");
    assert_eq!(at_site[0]["id"], root_ports[0]["id"]);
    assert_eq!(at_site[0]["mac_address"], root_ports[0]["mac_address"]);
    assert_eq!(at_site[0]["fixed_ips"], root_ports[0]["fixed_ips"]);
    assert_eq!(at_site[0]["binding:host_id"], "edge-n-node");
    let dhcp_ports = |n: &Client| -> Vec<Value> {
        let r = n.get(
            &format!("/ports?network_id={net}&device_owner=network:dhcp"),
            &c.admin,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["ports"].as_array().unwrap().clone()
    };
    let root_dhcp = dhcp_ports(&root_net);
    assert_eq!(root_dhcp.len(), 1, "{root_dhcp:?}");
    assert_eq!(
        dhcp_ports(&site_net)[0]["fixed_ips"],
        root_dhcp[0]["fixed_ips"]
    );

    // DHCP at the site answers with the root's address; the console is
    // read at the root, through the site's own link.
    console_until(&c, &tok, &a, &format!("lease of {ip_a} obtained"));
    // Real traffic between the two servers, across the site's bridge.
    let _l = listen(&b, 80, "b-at-the-site");
    assert_eq!(
        reaches(&a, &ip_b, 80).as_deref(),
        Some("b-at-the-site"),
        "site log:\n{}",
        site.log()
    );

    // The site takes no address of the root's network itself.
    let r = site_net.post("/ports", &c.admin, json!({"port": {"network_id": net}}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["NeutronError"]["type"], "NetworkManagedByParent");
    let r = site_net.post(
        "/subnets",
        &c.admin,
        json!({"subnet": {"network_id": net, "cidr": "10.94.0.0/24", "ip_version": 4}}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // Its own networks it still makes, and servers on them.
    let r = site_net.post("/networks", &tok, json!({"network": {"name": "local"}}));
    assert_eq!(r.status, 201, "{}", r.body);

    // An interface attached at the root reaches the site: a second port,
    // wired into the running server.
    let r = root_net.post("/networks", &tok, json!({"network": {"name": "edge-net2"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let net2 = r.body["network"]["id"].as_str().unwrap().to_string();
    let r = root_net.post(
        "/subnets",
        &tok,
        json!({"subnet": {"network_id": net2, "cidr": "10.95.0.0/24", "ip_version": 4}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.req(
        "POST",
        &format!("/servers/{b}/os-interface"),
        &tok,
        Some(json!({"interfaceAttachment": {"net_id": net2}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ip_b2 = r.body["interfaceAttachment"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(30, "the attached port wired at the site", || {
        super::common::in_server_netns(&b, &["ip", "-4", "addr"])
            .is_ok_and(|o| o.contains(&format!("{ip_b2}/24")))
    });
    assert_eq!(ports_of(&site_net, &c.admin, &b).len(), 2);

    // Deleted at the root: gone at the site, ports and all.
    let r = c.req("DELETE", &format!("/servers/{a}"), &tok, None);
    assert_eq!(r.status, 204, "{}", r.body);
    c.wait_gone(&tok, &a);
    eventually(30, "the server's ports gone at the site", || {
        ports_of(&site_net, &c.admin, &a).is_empty()
    });
    assert!(ports_of(&root_net, &c.admin, &a).is_empty());
    let r = site.neutron().get(&format!("/networks/{net}"), &c.admin);
    assert_eq!(r.status, 200, "the network stays at the site: {}", r.body);
}
