//! VMs' network ports as they change: a VM with a port live-migrates with
//! its network (its taps are on the destination's bridge before the
//! switch, and the guest goes on reaching another VM across the move:
//! VXLAN before, one bridge after), and an interface attached to or
//! detached from a running VM is hot-plugged into its guest.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Agent, TestNetns};
use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime, test_images};

fn neutron(c: &Cloud, method: &str, path: &str, body: Option<Value>) -> Value {
    let net = c.server.client_at("/network/v2.0");
    let r = net.raw(
        method,
        path,
        Some(&c.admin),
        &[],
        body.map(|b| b.to_string()),
    );
    assert!(r.status < 300, "{method} {path}: {} {}", r.status, r.body);
    r.body
}

/// The highest `PING-OK n` on the console.
fn last_ok(out: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("PING-OK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
}

#[test]
fn compute_real_vm_live_migration_with_a_port_keeps_its_network() {
    require_runtime();
    require_qemu();
    let dir = test_images();
    let c = Cloud::start_in_netns(&["--import-images", dir.to_str().unwrap()]);
    c.wait_nodes(1);
    let node_ns = TestNetns::new(c.server.netns.as_ref());
    // Its listener on the link, where the controller (console reads) and
    // the other node (the migration stream) reach it.
    let listen = format!("{}:0", node_ns.addr);
    let agent = Agent::start_in_netns(
        &c.server,
        "node2",
        &["--heartbeat", "1", "--agent-listen", &listen],
        &node_ns,
    );
    c.wait_nodes_logged(2, &agent.log);
    let hosts = c.req("GET", "/os-hypervisors", &c.admin, None);
    let first = hosts.body["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hypervisor_hostname"].as_str().unwrap().to_string())
        .find(|n| n != "node2")
        .unwrap();

    let n = neutron(
        &c,
        "POST",
        "/networks",
        Some(json!({"network": {"name": "livenet"}})),
    );
    let net = n["network"]["id"].as_str().unwrap().to_string();
    neutron(
        &c,
        "POST",
        "/subnets",
        Some(json!({"subnet": {"network_id": net, "cidr": "10.74.0.0/24", "ip_version": 4}})),
    );
    // A group that lets ICMP in (and everything out).
    let g = neutron(
        &c,
        "POST",
        "/security-groups",
        Some(json!({"security_group": {"name": "icmp-in"}})),
    );
    let sg = g["security_group"]["id"].as_str().unwrap().to_string();
    neutron(
        &c,
        "POST",
        "/security-group-rules",
        Some(
            json!({"security_group_rule": {"security_group_id": sg, "direction": "ingress", "protocol": "icmp", "ethertype": "IPv4"}}),
        ),
    );
    let port = |ip: &str| -> String {
        let p = neutron(
            &c,
            "POST",
            "/ports",
            Some(
                json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": ip}], "security_groups": [sg]}}),
            ),
        );
        p["port"]["id"].as_str().unwrap().to_string()
    };
    let (peer_port, mover_port) = (port("10.74.0.21"), port("10.74.0.22"));
    let img = image_id(&c, "busybox-vm");
    let boot = |name: &str, port: &str, zone: &str, user_data: &str| -> String {
        use base64::Engine;
        let body = json!({"server": {
            "name": name, "imageRef": img, "flavorRef": "1",
            "networks": [{"port": port}],
            "availability_zone": zone,
            "user_data": base64::engine::general_purpose::STANDARD.encode(user_data),
        }});
        let r = c.req("POST", "/servers", &c.admin, Some(body));
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.body["server"]["id"].as_str().unwrap().to_string();
        c.wait(&c.admin, &id, "ACTIVE");
        id
    };
    let peer = boot(
        "peer",
        &peer_port,
        &format!("nova:{first}"),
        "#!/bin/sh\necho PEER-UP\n",
    );
    // The mover pings the peer once a second for as long as it lives,
    // numbering each answer.
    let mover = boot(
        "mover",
        &mover_port,
        "nova:node2",
        "#!/bin/sh\n(i=0; while :; do i=$((i+1)); if ping -c 1 -W 1 10.74.0.21 >/dev/null 2>&1; then echo \"PING-OK $i\"; fi; sleep 1; done) &\n",
    );
    // Two guests under TCG on a busy machine: give the first answer time.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = super::compute_real::try_console(&c, &c.admin, &mover).unwrap_or_default();
        if last_ok(&out).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no answer from the peer:\n{out}");
        std::thread::sleep(Duration::from_millis(500));
    }

    let r = c.nova.raw(
        "POST",
        &format!("/servers/{mover}/action"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.30")],
        Some(json!({"os-migrateLive": {"host": null, "block_migration": "auto"}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let start = Instant::now();
    let mut seen = 0;
    loop {
        let s = c
            .req("GET", &format!("/servers/{mover}"), &c.admin, None)
            .body["server"]
            .clone();
        if let Some(t) = super::compute_real::try_console(&c, &c.admin, &mover)
            .ok()
            .and_then(|o| last_ok(&o))
        {
            seen = seen.max(t);
        }
        if s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] == first.as_str() {
            break;
        }
        assert_ne!(s["status"], "ERROR", "{s}");
        if start.elapsed() > Duration::from_secs(5) && s["OS-EXT-STS:task_state"].is_null() {
            let m = c.req("GET", "/os-migrations", &c.admin, None);
            panic!(
                "the migration ended without a move: {}\n{}",
                m.body,
                std::fs::read_to_string(&agent.log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "never moved: {s}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // At the destination the guest reaches the peer again: more answers,
    // counted on from where it was (the same guest, not a new boot).
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let out = super::compute_real::try_console(&c, &c.admin, &mover).unwrap_or_default();
        if last_ok(&out).is_some_and(|t| t > seen + 2) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no ping through after the move (last before: {seen}):\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        !after.contains("STRATUS-TEST-IMAGE OK"),
        "rebooted: {after}"
    );
    // The port is bound where the VM now runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = neutron(&c, "GET", &format!("/ports/{mover_port}"), None);
        if p["port"]["binding:host_id"] == first.as_str() && p["port"]["status"] == "ACTIVE" {
            break;
        }
        assert!(Instant::now() < deadline, "{p}");
        std::thread::sleep(Duration::from_millis(250));
    }
    for id in [&mover, &peer] {
        assert_eq!(
            c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
                .status,
            204
        );
        c.wait_gone(&c.admin, id);
    }
}

#[test]
fn compute_real_vm_interface_attach_and_detach_hot_plug_a_nic() {
    require_runtime();
    require_qemu();
    let dir = test_images();
    let c = Cloud::start_in_netns(&["--import-images", dir.to_str().unwrap()]);
    c.wait_nodes(1);
    let mut nets = Vec::new();
    for (name, cidr) in [("first", "10.76.0.0/24"), ("second", "10.77.0.0/24")] {
        let n = neutron(
            &c,
            "POST",
            "/networks",
            Some(json!({"network": {"name": name}})),
        );
        let id = n["network"]["id"].as_str().unwrap().to_string();
        neutron(
            &c,
            "POST",
            "/subnets",
            Some(json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4}})),
        );
        nets.push(id);
    }
    // The guest waits for a second NIC, takes a lease on it, then waits
    // for it to go.
    let script = "#!/bin/sh\n(while [ ! -e /sys/class/net/eth1 ]; do sleep 1; done; echo HOTPLUG-ETH1; sleep 2; ip link set eth1 up; udhcpc -i eth1 -s /bin/dhcp-event -q -n -t 10 -T 1; while [ -e /sys/class/net/eth1 ]; do sleep 1; done; echo ETH1-GONE) &\n";
    use base64::Engine;
    let img = image_id(&c, "busybox-vm");
    let body = json!({"server": {
        "name": "plug", "imageRef": img, "flavorRef": "1",
        "networks": [{"uuid": nets[0]}],
        "user_data": base64::engine::general_purpose::STANDARD.encode(script),
    }});
    let r = c.req("POST", "/servers", &c.admin, Some(body));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "dhcp: eth0 10.76.0.");

    let r = c.req(
        "POST",
        &format!("/servers/{id}/os-interface"),
        &c.admin,
        Some(json!({"interfaceAttachment": {"net_id": nets[1]}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let port = r.body["interfaceAttachment"]["port_id"]
        .as_str()
        .unwrap()
        .to_string();
    let ip = r.body["interfaceAttachment"]["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    // The guest sees the new NIC and gets the port's address on it.
    console_until(&c, &c.admin, &id, "HOTPLUG-ETH1");
    console_until(&c, &c.admin, &id, &format!("dhcp: eth1 {ip}/24"));

    let r = c.req(
        "DELETE",
        &format!("/servers/{id}/os-interface/{port}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    console_until(&c, &c.admin, &id, "ETH1-GONE");
    // Not booted again: one boot banner on the console.
    let out = super::compute_real::try_console(&c, &c.admin, &id).unwrap();
    assert_eq!(out.matches("STRATUS-TEST-IMAGE OK").count(), 1, "{out}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

/// The live migration of `id` in progress, once it is `running`: its id.
fn running_migration(c: &Cloud, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = c.nova.raw(
            "GET",
            &format!("/servers/{id}/migrations"),
            Some(&c.admin),
            &[("OpenStack-API-Version", "compute 2.80")],
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        if let Some(m) = r.body["migrations"]
            .as_array()
            .and_then(|l| l.iter().find(|m| m["status"] == "running"))
        {
            return m["id"].to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no running migration: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn compute_real_vm_live_migration_can_be_aborted_or_forced_to_complete() {
    require_runtime();
    require_qemu();
    let dir = test_images();
    // Both nodes send at 1 MiB/s: the migrations last long enough to
    // be steered while they run.
    let c = Cloud::start(&[
        "--import-images",
        dir.to_str().unwrap(),
        "--live-migration-bandwidth",
        "1",
    ]);
    c.wait_nodes(1);
    let b = Agent::start(
        &c.server,
        "node-b",
        &["--heartbeat", "1", "--live-migration-bandwidth", "1"],
    );
    c.wait_nodes_logged(2, &b.log);
    let img = image_id(&c, "busybox-vm");
    let r = c.req(
        "POST",
        "/servers",
        &c.admin,
        Some(
            json!({"server": {"name": "steered", "imageRef": img, "flavorRef": "1",
            "networks": "none", "availability_zone": "nova:node-b"}}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "tick 2");
    let at = |mv: &str, method: &str, path: &str, body: Option<Value>| {
        c.nova.raw(
            method,
            path,
            Some(&c.admin),
            &[("OpenStack-API-Version", mv)],
            body.map(|b| b.to_string()),
        )
    };
    let migrate = || {
        let r = at(
            "compute 2.30",
            "POST",
            &format!("/servers/{id}/action"),
            Some(json!({"os-migrateLive": {"host": null, "block_migration": "auto"}})),
        );
        assert_eq!(r.status, 202, "{}", r.body);
    };
    // Nothing to steer: 404.
    let r = at(
        "compute 2.24",
        "DELETE",
        &format!("/servers/{id}/migrations/999"),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Aborted while it streams: the guest runs on at node-b, the
    // migration ends `cancelled`.
    migrate();
    let mid = running_migration(&c, &id);
    let r = at(
        "compute 2.23",
        "DELETE",
        &format!("/servers/{id}/migrations/{mid}"),
        None,
    );
    assert_eq!(r.status, 404, "abort starts at 2.24: {}", r.body);
    let (_, member) = c.project("steer");
    let r = c.nova.raw(
        "DELETE",
        &format!("/servers/{id}/migrations/{mid}"),
        Some(&member),
        &[("OpenStack-API-Version", "compute 2.24")],
        None,
    );
    assert!(r.status == 403 || r.status == 404, "{}", r.body);
    let r = at(
        "compute 2.24",
        "DELETE",
        &format!("/servers/{id}/migrations/{mid}"),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let m = at(
            "compute 2.59",
            "GET",
            &format!("/os-migrations?instance_uuid={id}"),
            None,
        );
        let st = m.body["migrations"][0]["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if st == "cancelled" || st == "error" || st == "completed" {
            break st;
        }
        assert!(Instant::now() < deadline, "{}", m.body);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, "cancelled");
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    assert!(s["OS-EXT-STS:task_state"].is_null(), "{s}");
    let before = super::compute_real::try_console(&c, &c.admin, &id).unwrap();
    let ticks = |out: &str| {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("tick "))
            .filter_map(|n| n.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let t0 = ticks(&before);
    console_until(&c, &c.admin, &id, &format!("tick {}", t0 + 2));

    // Forced to complete: it completes, on the other node.
    migrate();
    let mid = running_migration(&c, &id);
    let r = at(
        "compute 2.22",
        "POST",
        &format!("/servers/{id}/migrations/{mid}/action"),
        Some(json!({"force_complete": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"].clone();
        if s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] != "node-b" {
            break;
        }
        assert_ne!(s["status"], "ERROR", "{s}");
        assert!(Instant::now() < deadline, "never moved: {s}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = at(
        "compute 2.22",
        "POST",
        &format!("/servers/{id}/migrations/{mid}/action"),
        Some(json!({"force_complete": null})),
    );
    assert_eq!(r.status, 404, "over now: {}", r.body);
    let out = super::compute_real::try_console(&c, &c.admin, &id).unwrap_or_default();
    assert!(
        !out.contains("STRATUS-TEST-IMAGE OK") || out.matches("STRATUS-TEST-IMAGE OK").count() == 1,
        "{out}"
    );
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}
