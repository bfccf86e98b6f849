//! Neutron L3 and the remaining control-plane resources against the real
//! binary: routers (gateway, interfaces, static routes), floating IPs,
//! RBAC sharing of networks, subnet pools and address scopes, and the
//! auto-allocated topology. Refused requests are checked to leave nothing
//! behind (no port, no address).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Client, Resp, Server};
use super::network::{Net, fault, ids};

/// A second `stratus controller` process on the same store (SQLite file
/// or PostgreSQL) as `s`; killed when dropped.
struct SecondController {
    child: std::process::Child,
    base: String,
}

impl SecondController {
    fn start(s: &Server) -> SecondController {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = s.data_dir().join("second-controller.log");
        let child = std::process::Command::new(super::common::bin())
            .args(["controller", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(s.data_dir())
            .args(s.database.iter().flat_map(|d| ["--database", d.as_str()]))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        while agent
            .get(format!("{url}/identity/v3"))
            .call()
            .map_or(true, |r| r.status() != 200)
        {
            assert!(
                Instant::now() < deadline,
                "the second controller did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SecondController {
            child,
            base: format!("{url}/network/v2.0"),
        }
    }
}

impl Drop for SecondController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

impl Net {
    /// An external network `public` (admin's) with 172.24.4.0/24.
    fn public(&self, extra: Value) -> (String, String) {
        let mut body = json!({"name": "public", "router:external": true});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let n = self.network(&self.admin, body);
        let s = self.subnet(&self.admin, &id(&n), "172.24.4.0/24");
        (id(&n), id(&s))
    }

    /// A network of `tok`'s project with one subnet; (network, subnet).
    fn net_with(&self, tok: &str, name: &str, cidr: &str) -> (String, String) {
        let n = self.network(tok, json!({ "name": name }));
        let s = self.subnet(tok, &id(&n), cidr);
        (id(&n), id(&s))
    }

    fn ports(&self, tok: &str, query: &str) -> Vec<Value> {
        let r = self.nn.get(&format!("/ports?{query}"), tok);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["ports"].as_array().unwrap().clone()
    }

    /// Addresses in use on a network (admin's availability view).
    fn used_ips(&self, net: &str) -> u64 {
        let r = self
            .nn
            .get(&format!("/network-ip-availabilities/{net}"), &self.admin);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["network_ip_availability"]["used_ips"]
            .as_u64()
            .unwrap()
    }

    fn router(&self, tok: &str, body: Value) -> Value {
        self.nn.create(tok, "/routers", "router", body)
    }

    fn interface(&self, tok: &str, router: &str, add: bool, body: Value) -> Resp {
        let verb = if add { "add" } else { "remove" };
        self.put(
            &format!("/routers/{router}/{verb}_router_interface"),
            tok,
            body,
        )
    }
}

#[test]
fn l3_router_gateway_interfaces_routes_and_refusals() {
    let c = Net::start();
    let (_pid, tok) = c.project("alpha", "member");
    let (_other, other_tok) = c.project("beta", "member");
    let (public, public_sub) = c.public(json!({}));
    let (net1, sub1) = c.net_with(&tok, "net1", "10.1.0.0/24");
    let (net2, sub2) = c.net_with(&tok, "net2", "10.2.0.0/24");
    let (net3, sub3) = c.net_with(&tok, "net3", "10.1.0.0/25");
    let net4 = id(&c.network(&tok, json!({"name": "net4"})));
    let sub4 = id(&c.nn.create(
        &tok,
        "/subnets",
        "subnet",
        json!({"network_id": net4, "cidr": "10.4.0.0/24", "ip_version": 4, "gateway_ip": null}),
    ));

    // Create with a gateway: an address on the external subnet, held by
    // a gateway port; SNAT on by default. Only admins choose SNAT.
    fault(
        &c.nn.post(
            "/routers",
            &tok,
            json!({"router": {"name": "r", "external_gateway_info": {"network_id": public, "enable_snat": false}}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    let r = c.router(
        &tok,
        json!({"name": "r1", "external_gateway_info": {"network_id": public}}),
    );
    let rid = id(&r);
    assert_eq!(r["status"], "ACTIVE");
    assert_eq!(r["admin_state_up"], true);
    assert_eq!(r["routes"], json!([]));
    let gw = &r["external_gateway_info"];
    assert_eq!(gw["network_id"], public.as_str());
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(
        gw["external_fixed_ips"],
        json!([{"subnet_id": public_sub, "ip_address": "172.24.4.2"}])
    );
    let gw_ports = c.ports(&c.admin, &format!("device_id={rid}&network_id={public}"));
    assert_eq!(gw_ports.len(), 1);
    assert_eq!(gw_ports[0]["device_owner"], "network:router_gateway");
    assert_eq!(gw_ports[0]["fixed_ips"][0]["ip_address"], "172.24.4.2");
    // Another project does not see the router.
    fault(
        &c.nn.get(&format!("/routers/{rid}"), &other_tok),
        404,
        "RouterNotFound",
    );
    assert!(ids(&c.nn.get("/routers", &other_tok).body, "routers").is_empty());
    assert_eq!(
        ids(&c.nn.get("/routers", &tok).body, "routers"),
        vec![rid.clone()]
    );

    // Interface by subnet: a port with the subnet's gateway address.
    let i1 = c.interface(&tok, &rid, true, json!({"subnet_id": sub1}));
    assert_eq!(i1.status, 200, "{}", i1.body);
    assert_eq!(i1.body["id"], rid.as_str());
    assert_eq!(i1.body["subnet_id"], sub1.as_str());
    assert_eq!(i1.body["subnet_ids"], json!([sub1]));
    assert_eq!(i1.body["network_id"], net1.as_str());
    let p1 = c.nn.get(
        &format!("/ports/{}", i1.body["port_id"].as_str().unwrap()),
        &tok,
    );
    assert_eq!(p1.body["port"]["device_id"], rid.as_str());
    assert_eq!(p1.body["port"]["device_owner"], "network:router_interface");
    assert_eq!(p1.body["port"]["fixed_ips"][0]["ip_address"], "10.1.0.1");

    // Refusals, each leaving no port and no address behind.
    fault(
        &c.interface(&tok, &rid, true, json!({"subnet_id": sub1})),
        400,
        "BadRequest",
    );
    assert_eq!(c.ports(&tok, &format!("network_id={net1}")).len(), 1);
    let overlap = c.interface(&tok, &rid, true, json!({"subnet_id": sub3}));
    fault(&overlap, 400, "BadRequest");
    assert!(
        overlap.body["NeutronError"]["message"]
            .as_str()
            .unwrap()
            .contains("overlaps"),
        "{}",
        overlap.body
    );
    assert!(c.ports(&tok, &format!("network_id={net3}")).is_empty());
    assert_eq!(c.used_ips(&net3), 0);
    fault(
        &c.interface(&tok, &rid, true, json!({"subnet_id": sub4})),
        400,
        "BadRequest",
    );
    assert!(c.ports(&tok, &format!("network_id={net4}")).is_empty());
    fault(
        &c.interface(&tok, &rid, true, json!({"subnet_id": sub2, "port_id": "x"})),
        400,
        "BadRequest",
    );
    fault(&c.interface(&tok, &rid, true, json!({})), 400, "BadRequest");
    fault(
        &c.interface(&tok, &rid, true, json!({"subnet_id": "nope"})),
        404,
        "SubnetNotFound",
    );
    fault(
        &c.interface(&other_tok, &rid, true, json!({"subnet_id": sub2})),
        404,
        "RouterNotFound",
    );

    // Interface by port: the port is taken as it is.
    let port2 = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": net2, "name": "if2"}),
    );
    let i2 = c.interface(&tok, &rid, true, json!({"port_id": id(&port2)}));
    assert_eq!(i2.status, 200, "{}", i2.body);
    assert_eq!(i2.body["port_id"], id(&port2).as_str());
    assert_eq!(i2.body["subnet_id"], sub2.as_str());
    let p2 = c.nn.get(&format!("/ports/{}", id(&port2)), &tok).body["port"].clone();
    assert_eq!(p2["device_owner"], "network:router_interface");
    assert_eq!(p2["device_id"], rid.as_str());
    // A port another device holds is refused.
    let held = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": net4, "device_id": "vm-1", "device_owner": "compute:nova"}),
    );
    fault(
        &c.interface(&tok, &rid, true, json!({"port_id": id(&held)})),
        409,
        "PortInUse",
    );

    // Static routes: the nexthop must be on a connected subnet and not
    // the router itself.
    let route = json!([{"destination": "192.168.7.0/24", "nexthop": "10.1.0.5"}]);
    let up = c.put(
        &format!("/routers/{rid}"),
        &tok,
        json!({"router": {"routes": route}}),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.body["router"]["routes"], route);
    for hop in ["10.9.9.9", "10.1.0.1"] {
        fault(
            &c.put(
                &format!("/routers/{rid}"),
                &tok,
                json!({"router": {"routes": [{"destination": "192.168.8.0/24", "nexthop": hop}]}}),
            ),
            400,
            "InvalidRoutes",
        );
    }
    assert_eq!(
        c.nn.get(&format!("/routers/{rid}"), &tok).body["router"]["routes"],
        route
    );
    // The interface a route needs cannot go.
    fault(
        &c.interface(&tok, &rid, false, json!({"subnet_id": sub1})),
        409,
        "RouterInterfaceInUseByRoute",
    );
    // extraroute-atomic adds and removes.
    let more = json!([{"destination": "192.168.9.0/24", "nexthop": "10.2.0.9"}]);
    let added = c.put(
        &format!("/routers/{rid}/add_extraroutes"),
        &tok,
        json!({"router": {"routes": more}}),
    );
    assert_eq!(added.status, 200, "{}", added.body);
    assert_eq!(added.body["router"]["routes"].as_array().unwrap().len(), 2);
    let removed = c.put(
        &format!("/routers/{rid}/remove_extraroutes"),
        &tok,
        json!({"router": {"routes": more}}),
    );
    assert_eq!(removed.body["router"]["routes"], route);
    let cleared = c.put(
        &format!("/routers/{rid}"),
        &tok,
        json!({"router": {"routes": null}}),
    );
    assert_eq!(cleared.body["router"]["routes"], json!([]));

    // In use: the router with interfaces, and the interface port itself.
    let inuse = c.nn.delete(&format!("/routers/{rid}"), &tok);
    fault(&inuse, 409, "RouterInUse");
    assert_eq!(c.nn.get(&format!("/routers/{rid}"), &tok).status, 200);
    fault(
        &c.nn.delete(&format!("/ports/{}", id(&port2)), &tok),
        409,
        "ServicePortInUse",
    );
    assert_eq!(
        c.nn.get(&format!("/ports/{}", id(&port2)), &tok).status,
        200
    );
    // A subnet with a router interface on it is in use too.
    fault(
        &c.nn.delete(&format!("/subnets/{sub1}"), &tok),
        409,
        "SubnetInUse",
    );

    // The gateway: not to an internal network, not to one that is not
    // there; a refusal keeps the gateway as it was.
    fault(
        &c.put(
            &format!("/routers/{rid}"),
            &tok,
            json!({"router": {"external_gateway_info": {"network_id": net4}}}),
        ),
        400,
        "BadRequest",
    );
    fault(
        &c.put(
            &format!("/routers/{rid}"),
            &tok,
            json!({"router": {"external_gateway_info": {"network_id": "missing"}}}),
        ),
        404,
        "NetworkNotFound",
    );
    assert_eq!(
        c.nn.get(&format!("/routers/{rid}"), &tok).body["router"]["external_gateway_info"]["network_id"],
        public.as_str()
    );
    assert_eq!(c.used_ips(&public), 1);
    // Nor may the external network stop being external under it.
    fault(
        &c.put(
            &format!("/networks/{public}"),
            &c.admin,
            json!({"network": {"router:external": false}}),
        ),
        409,
        "ExternalNetworkInUse",
    );

    // Removing interfaces: by subnet for the port given by id (the port
    // goes, as in Neutron), then twice is 404.
    let rm2 = c.interface(&tok, &rid, false, json!({"subnet_id": sub2}));
    assert_eq!(rm2.status, 200, "{}", rm2.body);
    assert_eq!(rm2.body["port_id"], id(&port2).as_str());
    assert_eq!(
        c.nn.get(&format!("/ports/{}", id(&port2)), &tok).status,
        404
    );
    fault(
        &c.interface(&tok, &rid, false, json!({"subnet_id": sub2})),
        404,
        "RouterInterfaceNotFoundForSubnet",
    );
    fault(
        &c.interface(&tok, &rid, false, json!({"port_id": id(&held)})),
        404,
        "RouterInterfaceNotFound",
    );
    let rm1 = c.interface(&tok, &rid, false, json!({"port_id": i1.body["port_id"]}));
    assert_eq!(rm1.status, 200, "{}", rm1.body);
    assert!(c.ports(&tok, &format!("network_id={net1}")).is_empty());
    assert_eq!(c.used_ips(&net1), 0);

    // Clearing the gateway frees its port and address.
    let cl = c.put(
        &format!("/routers/{rid}"),
        &tok,
        json!({"router": {"external_gateway_info": {}}}),
    );
    assert_eq!(cl.status, 200, "{}", cl.body);
    assert_eq!(cl.body["router"]["external_gateway_info"], Value::Null);
    assert!(c.ports(&c.admin, &format!("device_id={rid}")).is_empty());
    assert_eq!(c.used_ips(&public), 0);

    // Admin-set fixed gateway address; a taken one is 409 with nothing
    // made.
    let fixed = c.router(
        &c.admin,
        json!({"name": "fixed", "external_gateway_info": {"network_id": public,
            "enable_snat": false,
            "external_fixed_ips": [{"subnet_id": public_sub, "ip_address": "172.24.4.50"}]}}),
    );
    assert_eq!(fixed["external_gateway_info"]["enable_snat"], false);
    assert_eq!(
        fixed["external_gateway_info"]["external_fixed_ips"][0]["ip_address"],
        "172.24.4.50"
    );
    let before = c.nn.get("/routers", &c.admin).body["routers"]
        .as_array()
        .unwrap()
        .len();
    fault(
        &c.nn.post(
            "/routers",
            &c.admin,
            json!({"router": {"name": "dup", "external_gateway_info": {"network_id": public,
                "external_fixed_ips": [{"ip_address": "172.24.4.50"}]}}}),
        ),
        409,
        "IpAddressAlreadyAllocated",
    );
    assert_eq!(
        c.nn.get("/routers", &c.admin).body["routers"]
            .as_array()
            .unwrap()
            .len(),
        before
    );
    assert_eq!(c.used_ips(&public), 1);
    // Deleting a router takes its gateway port with it.
    assert_eq!(
        c.nn.delete(&format!("/routers/{}", id(&fixed)), &c.admin)
            .status,
        204
    );
    assert_eq!(c.used_ips(&public), 0);

    assert_eq!(c.nn.delete(&format!("/routers/{rid}"), &tok).status, 204);
    fault(
        &c.nn.get(&format!("/routers/{rid}"), &tok),
        404,
        "RouterNotFound",
    );
    // Router quota.
    let (pid, gtok) = c.project("gamma", "member");
    assert_eq!(
        c.put(
            &format!("/quotas/{pid}"),
            &c.admin,
            json!({"quota": {"router": 1}})
        )
        .status,
        200
    );
    c.router(&gtok, json!({"name": "one"}));
    fault(
        &c.nn
            .post("/routers", &gtok, json!({"router": {"name": "two"}})),
        409,
        "OverQuota",
    );
}

#[test]
fn l3_floating_ips_associate_disassociate_and_dependencies() {
    let c = Net::start();
    let (pid, tok) = c.project("alpha", "member");
    let (public, _) = c.public(json!({}));
    let (net1, sub1) = c.net_with(&tok, "net1", "10.1.0.0/24");
    let (net2, _) = c.net_with(&tok, "net2", "10.2.0.0/24");
    let r = c.router(
        &tok,
        json!({"name": "r", "external_gateway_info": {"network_id": public}}),
    );
    let rid = id(&r);
    assert_eq!(
        c.interface(&tok, &rid, true, json!({"subnet_id": sub1}))
            .status,
        200
    );
    let vm1 = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": net1, "name": "vm1"}),
    );
    let vm2 = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": net1, "name": "vm2"}),
    );
    let lone = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": net2, "name": "lone"}),
    );
    let vm1_ip = vm1["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();

    // Only on an external network, and nothing made when refused.
    fault(
        &c.nn.post(
            "/floatingips",
            &tok,
            json!({"floatingip": {"floating_network_id": net1}}),
        ),
        400,
        "BadRequest",
    );
    assert_eq!(c.ports(&tok, &format!("network_id={net1}")).len(), 3);
    // Only admins pick the address.
    fault(
        &c.nn.post(
            "/floatingips",
            &tok,
            json!({"floatingip": {"floating_network_id": public, "floating_ip_address": "172.24.4.99"}}),
        ),
        403,
        "PolicyNotAuthorized",
    );

    let f = c.nn.create(
        &tok,
        "/floatingips",
        "floatingip",
        json!({"floating_network_id": public, "description": "web"}),
    );
    let fid = id(&f);
    let fip_addr = f["floating_ip_address"].as_str().unwrap().to_string();
    assert!(fip_addr.starts_with("172.24.4."), "{f}");
    assert_eq!(f["status"], "DOWN");
    assert_eq!(f["port_id"], Value::Null);
    assert_eq!(f["router_id"], Value::Null);
    assert_eq!(f["project_id"], pid.as_str());
    assert_eq!(f["description"], "web");
    let fports = c.ports(&c.admin, &format!("device_id={fid}"));
    assert_eq!(fports.len(), 1);
    assert_eq!(fports[0]["device_owner"], "network:floatingip");
    assert_eq!(fports[0]["fixed_ips"][0]["ip_address"], fip_addr.as_str());
    fault(
        &c.nn.get(&format!("/floatingips/{fip_addr}"), &tok),
        404,
        "FloatingIPNotFound",
    );

    // Associate: the fixed IP and the router are found.
    let a = c.put(
        &format!("/floatingips/{fid}"),
        &tok,
        json!({"floatingip": {"port_id": id(&vm1)}}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["floatingip"]["port_id"], id(&vm1).as_str());
    assert_eq!(a.body["floatingip"]["fixed_ip_address"], vm1_ip.as_str());
    assert_eq!(a.body["floatingip"]["router_id"], rid.as_str());
    assert_eq!(a.body["floatingip"]["status"], "ACTIVE");
    let listed =
        c.nn.get(&format!("/floatingips?port_id={}", id(&vm1)), &tok);
    assert_eq!(ids(&listed.body, "floatingips"), vec![fid.clone()]);

    // A fixed IP with a floating IP already: 409, and no second floating
    // IP nor its port is left.
    let used_before = c.used_ips(&public);
    fault(
        &c.nn.post(
            "/floatingips",
            &tok,
            json!({"floatingip": {"floating_network_id": public, "port_id": id(&vm1)}}),
        ),
        409,
        "FloatingIPPortAlreadyAssociated",
    );
    // No router between the port's subnet and the external network: 404.
    fault(
        &c.nn.post(
            "/floatingips",
            &tok,
            json!({"floatingip": {"floating_network_id": public, "port_id": id(&lone)}}),
        ),
        404,
        "ExternalGatewayForFloatingIPNotFound",
    );
    assert_eq!(c.used_ips(&public), used_before);
    assert_eq!(
        ids(&c.nn.get("/floatingips", &tok).body, "floatingips"),
        vec![fid.clone()]
    );
    fault(
        &c.put(
            &format!("/floatingips/{fid}"),
            &tok,
            json!({"floatingip": {"port_id": id(&vm1), "fixed_ip_address": "10.1.0.200"}}),
        ),
        400,
        "BadRequest",
    );

    // What the floating IP depends on cannot go.
    fault(
        &c.interface(&tok, &rid, false, json!({"subnet_id": sub1})),
        409,
        "RouterInterfaceInUseByFloatingIP",
    );
    fault(
        &c.put(
            &format!("/routers/{rid}"),
            &tok,
            json!({"router": {"external_gateway_info": null}}),
        ),
        409,
        "RouterExternalGatewayInUseByFloatingIp",
    );
    fault(
        &c.nn.delete(&format!("/routers/{rid}"), &tok),
        409,
        "RouterInUse",
    );
    fault(
        &c.nn.delete(
            &format!("/ports/{}", fports[0]["id"].as_str().unwrap()),
            &c.admin,
        ),
        409,
        "ServicePortInUse",
    );

    // Deleting the port disassociates.
    assert_eq!(
        c.nn.delete(&format!("/ports/{}", id(&vm1)), &tok).status,
        204
    );
    let shown = c.nn.get(&format!("/floatingips/{fid}"), &tok).body["floatingip"].clone();
    assert_eq!(shown["port_id"], Value::Null);
    assert_eq!(shown["fixed_ip_address"], Value::Null);
    assert_eq!(shown["router_id"], Value::Null);
    assert_eq!(shown["status"], "DOWN");

    // Associate on another port, then disassociate with null.
    let a2 = c.put(
        &format!("/floatingips/{fid}"),
        &tok,
        json!({"floatingip": {"port_id": id(&vm2)}}),
    );
    assert_eq!(a2.body["floatingip"]["router_id"], rid.as_str());
    let d = c.put(
        &format!("/floatingips/{fid}"),
        &tok,
        json!({"floatingip": {"port_id": null}}),
    );
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["floatingip"]["port_id"], Value::Null);
    assert_eq!(d.body["floatingip"]["router_id"], Value::Null);
    // With nothing depending on it, the interface goes.
    assert_eq!(
        c.interface(&tok, &rid, false, json!({"subnet_id": sub1}))
            .status,
        200
    );

    // Delete: the address and its port are given back.
    let used = c.used_ips(&public);
    assert_eq!(
        c.nn.delete(&format!("/floatingips/{fid}"), &tok).status,
        204
    );
    assert_eq!(c.used_ips(&public), used - 1);
    assert!(c.ports(&c.admin, &format!("device_id={fid}")).is_empty());
    fault(
        &c.nn.get(&format!("/floatingips/{fid}"), &tok),
        404,
        "FloatingIPNotFound",
    );
    let again = c.nn.create(
        &tok,
        "/floatingips",
        "floatingip",
        json!({"floating_network_id": public}),
    );
    assert_eq!(again["floating_ip_address"], fip_addr.as_str());

    // An admin picks the address; the floating IP quota holds.
    let picked = c.nn.create(
        &c.admin,
        "/floatingips",
        "floatingip",
        json!({"floating_network_id": public, "floating_ip_address": "172.24.4.99"}),
    );
    assert_eq!(picked["floating_ip_address"], "172.24.4.99");
    assert_eq!(
        c.put(
            &format!("/quotas/{pid}"),
            &c.admin,
            json!({"quota": {"floatingip": 1}})
        )
        .status,
        200
    );
    fault(
        &c.nn.post(
            "/floatingips",
            &tok,
            json!({"floatingip": {"floating_network_id": public}}),
        ),
        409,
        "OverQuota",
    );
}

#[test]
fn l3_rbac_policy_shares_a_network_with_one_project() {
    let c = Net::start();
    let (_a, atok) = c.project("alpha", "member");
    let (beta, btok) = c.project("beta", "member");
    let (_g, gtok) = c.project("gamma", "member");
    let (net, _) = c.net_with(&atok, "private", "10.5.0.0/24");

    fault(
        &c.nn.get(&format!("/networks/{net}"), &btok),
        404,
        "NetworkNotFound",
    );
    fault(
        &c.nn
            .post("/ports", &btok, json!({"port": {"network_id": net}})),
        404,
        "NetworkNotFound",
    );
    // Only admins share with everyone.
    fault(
        &c.nn.post(
            "/rbac-policies",
            &atok,
            json!({"rbac_policy": {"object_type": "network", "object_id": net,
                "action": "access_as_shared", "target_tenant": "*"}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    let rb = c.nn.create(
        &atok,
        "/rbac-policies",
        "rbac_policy",
        json!({"object_type": "network", "object_id": net,
               "action": "access_as_shared", "target_tenant": beta}),
    );
    assert_eq!(rb["target_tenant"], beta.as_str());
    assert_eq!(rb["object_id"], net.as_str());
    assert_eq!(rb["action"], "access_as_shared");
    fault(
        &c.nn.post(
            "/rbac-policies",
            &atok,
            json!({"rbac_policy": {"object_type": "network", "object_id": net,
                "action": "access_as_shared", "target_tenant": beta}}),
        ),
        409,
        "DuplicateRbacPolicy",
    );
    // Another project may not share what is not its own.
    fault(
        &c.nn.post(
            "/rbac-policies",
            &gtok,
            json!({"rbac_policy": {"object_type": "network", "object_id": net,
                "action": "access_as_shared", "target_tenant": beta}}),
        ),
        404,
        "NetworkNotFound",
    );

    // Beta sees it (shared, to beta) and may put a port on it; gamma
    // still may not.
    let seen = c.nn.get(&format!("/networks/{net}"), &btok);
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.body["network"]["shared"], true);
    assert_eq!(
        c.nn.get(&format!("/networks/{net}"), &atok).body["network"]["shared"],
        false
    );
    assert!(ids(&c.nn.get("/networks", &btok).body, "networks").contains(&net));
    assert_eq!(ids(&c.nn.get("/subnets", &btok).body, "subnets").len(), 1);
    let bport =
        c.nn.create(&btok, "/ports", "port", json!({"network_id": net}));
    assert!(ids(&c.nn.get("/networks", &gtok).body, "networks").is_empty());
    fault(
        &c.nn
            .post("/ports", &gtok, json!({"port": {"network_id": net}})),
        404,
        "NetworkNotFound",
    );
    // The policy is alpha's: beta does not list it.
    assert!(ids(&c.nn.get("/rbac-policies", &btok).body, "rbac_policies").is_empty());
    assert_eq!(
        ids(&c.nn.get("/rbac-policies", &atok).body, "rbac_policies"),
        vec![id(&rb)]
    );

    // Beta's port depends on it: the policy stays until the port goes.
    fault(
        &c.nn.delete(&format!("/rbac-policies/{}", id(&rb)), &atok),
        409,
        "RbacPolicyInUse",
    );
    assert_eq!(c.nn.get(&format!("/networks/{net}"), &btok).status, 200);
    assert_eq!(
        c.nn.delete(&format!("/ports/{}", id(&bport)), &btok).status,
        204
    );
    assert_eq!(
        c.nn.delete(&format!("/rbac-policies/{}", id(&rb)), &atok)
            .status,
        204
    );
    fault(
        &c.nn.get(&format!("/networks/{net}"), &btok),
        404,
        "NetworkNotFound",
    );

    // access_as_external (admin): the network becomes usable as a router
    // gateway by the target only.
    let (ext, _) = c.net_with(&c.admin, "edge-uplink", "198.51.100.0/24");
    let body = json!({"router": {"name": "r", "external_gateway_info": {"network_id": ext}}});
    fault(
        &c.nn.post("/routers", &btok, body.clone()),
        404,
        "NetworkNotFound",
    );
    c.nn.create(
        &c.admin,
        "/rbac-policies",
        "rbac_policy",
        json!({"object_type": "network", "object_id": ext,
               "action": "access_as_external", "target_tenant": beta}),
    );
    assert_eq!(
        c.nn.get(&format!("/networks/{ext}"), &btok).body["network"]["router:external"],
        true
    );
    let r = c.nn.post("/routers", &btok, body.clone());
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["router"]["external_gateway_info"]["network_id"],
        ext.as_str()
    );
    fault(&c.nn.post("/routers", &gtok, body), 404, "NetworkNotFound");
}

#[test]
fn l3_subnets_from_pools_and_address_scopes() {
    let c = Net::start();
    let (pid, tok) = c.project("alpha", "member");
    let (net, _) = c.net_with(&tok, "n", "192.168.50.0/24");

    fault(
        &c.nn.post(
            "/subnetpools",
            &tok,
            json!({"subnetpool": {"name": "p", "prefixes": ["10.10.0.0/16"], "shared": true}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    fault(
        &c.nn.post(
            "/subnetpools",
            &c.admin,
            json!({"subnetpool": {"name": "mixed", "prefixes": ["10.10.0.0/16", "2001:db8::/48"]}}),
        ),
        400,
        "PrefixVersionMismatch",
    );
    fault(
        &c.nn.post(
            "/subnetpools",
            &c.admin,
            json!({"subnetpool": {"name": "b", "prefixes": ["10.10.0.0/16"],
                "min_prefixlen": 24, "default_prefixlen": 20}}),
        ),
        400,
        "IllegalSubnetPoolPrefixBounds",
    );
    let scope = c.nn.create(
        &c.admin,
        "/address-scopes",
        "address_scope",
        json!({"name": "s4", "ip_version": 4, "shared": true}),
    );
    assert_eq!(scope["ip_version"], 4);
    let pool = c.nn.create(
        &c.admin,
        "/subnetpools",
        "subnetpool",
        json!({"name": "pool4", "prefixes": ["10.10.0.0/16", "10.10.4.0/24"],
               "default_prefixlen": 24, "max_prefixlen": 28, "shared": true,
               "is_default": true, "address_scope_id": id(&scope)}),
    );
    let pool_id = id(&pool);
    assert_eq!(pool["prefixes"], json!(["10.10.0.0/16"]));
    assert_eq!(pool["ip_version"], 4);
    assert_eq!(pool["min_prefixlen"], 8);
    assert_eq!(pool["default_prefixlen"], 24);
    assert_eq!(pool["max_prefixlen"], 28);
    assert_eq!(pool["is_default"], true);
    assert_eq!(pool["address_scope_id"], id(&scope).as_str());
    // One default per IP version.
    fault(
        &c.nn.post(
            "/subnetpools",
            &c.admin,
            json!({"subnetpool": {"name": "second", "prefixes": ["10.30.0.0/16"], "is_default": true}}),
        ),
        400,
        "InvalidInput",
    );
    // Pools of one address scope may not overlap.
    fault(
        &c.nn.post(
            "/subnetpools",
            &c.admin,
            json!({"subnetpool": {"name": "clash", "prefixes": ["10.10.8.0/24"],
                "address_scope_id": id(&scope)}}),
        ),
        409,
        "AddressScopePrefixConflict",
    );
    // The project sees the shared pool.
    assert_eq!(
        ids(&c.nn.get("/subnetpools", &tok).body, "subnetpools"),
        vec![pool_id.clone()]
    );

    let carve = |extra: Value| -> Resp {
        let mut body = json!({"network_id": net, "ip_version": 4});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        c.nn.post("/subnets", &tok, json!({ "subnet": body }))
    };
    let s1 = carve(json!({"subnetpool_id": pool_id}));
    assert_eq!(s1.status, 201, "{}", s1.body);
    assert_eq!(s1.body["subnet"]["cidr"], "10.10.0.0/24");
    assert_eq!(s1.body["subnet"]["subnetpool_id"], pool_id.as_str());
    assert_eq!(s1.body["subnet"]["gateway_ip"], "10.10.0.1");
    let s2 = carve(json!({"subnetpool_id": pool_id, "prefixlen": 26}));
    assert_eq!(s2.body["subnet"]["cidr"], "10.10.1.0/26", "{}", s2.body);
    let s3 = carve(json!({"use_default_subnetpool": true}));
    assert_eq!(s3.body["subnet"]["cidr"], "10.10.2.0/24", "{}", s3.body);
    assert_eq!(s3.body["subnet"]["subnetpool_id"], pool_id.as_str());
    // A given prefix inside the pool, if free.
    let s4 = carve(json!({"subnetpool_id": pool_id, "cidr": "10.10.9.0/24"}));
    assert_eq!(s4.body["subnet"]["cidr"], "10.10.9.0/24", "{}", s4.body);
    fault(
        &carve(json!({"subnetpool_id": pool_id, "cidr": "10.10.0.128/25"})),
        409,
        "SubnetAllocationError",
    );
    fault(
        &carve(json!({"subnetpool_id": pool_id, "cidr": "10.99.0.0/24"})),
        409,
        "SubnetAllocationError",
    );
    fault(
        &carve(json!({"subnetpool_id": pool_id, "prefixlen": 30})),
        400,
        "MaxPrefixSubnetAllocationError",
    );
    fault(
        &carve(json!({"subnetpool_id": "missing"})),
        404,
        "SubnetPoolNotFound",
    );
    let subnets_now = ids(
        &c.nn.get(&format!("/subnets?network_id={net}"), &tok).body,
        "subnets",
    );
    assert_eq!(subnets_now.len(), 5);

    // A pool in use is not deleted; its prefixes only grow.
    fault(
        &c.nn.delete(&format!("/subnetpools/{pool_id}"), &c.admin),
        400,
        "SubnetPoolDeleteError",
    );
    fault(
        &c.put(
            &format!("/subnetpools/{pool_id}"),
            &c.admin,
            json!({"subnetpool": {"prefixes": ["10.10.0.0/17"]}}),
        ),
        400,
        "IllegalSubnetPoolPrefixUpdate",
    );
    let grown = c.put(
        &format!("/subnetpools/{pool_id}"),
        &c.admin,
        json!({"subnetpool": {"prefixes": ["10.10.0.0/16", "10.11.0.0/16"], "name": "grown"}}),
    );
    assert_eq!(grown.status, 200, "{}", grown.body);
    // Adjacent prefixes are merged, as Neutron compacts them.
    assert_eq!(
        grown.body["subnetpool"]["prefixes"],
        json!(["10.10.0.0/15"])
    );

    // A deleted subnet gives its prefix back.
    let s1_id = id(&s1.body["subnet"]);
    assert_eq!(c.nn.delete(&format!("/subnets/{s1_id}"), &tok).status, 204);
    let again = carve(json!({"subnetpool_id": pool_id}));
    assert_eq!(
        again.body["subnet"]["cidr"], "10.10.0.0/24",
        "{}",
        again.body
    );

    // Per-project prefix quota of the pool (in /32 units for IPv4).
    let own = c.nn.create(
        &tok,
        "/subnetpools",
        "subnetpool",
        json!({"name": "mine", "prefixes": ["172.16.0.0/16"], "default_prefixlen": 28,
               "default_quota": 20}),
    );
    assert_eq!(own["project_id"], pid.as_str());
    let q1 = carve(json!({"subnetpool_id": id(&own)}));
    assert_eq!(q1.body["subnet"]["cidr"], "172.16.0.0/28", "{}", q1.body);
    fault(
        &carve(json!({"subnetpool_id": id(&own)})),
        409,
        "SubnetPoolQuotaExceeded",
    );
    // Address scope in use by a pool.
    fault(
        &c.nn
            .delete(&format!("/address-scopes/{}", id(&scope)), &c.admin),
        409,
        "AddressScopeInUse",
    );
}

#[test]
fn l3_auto_allocated_topology_is_made_once() {
    let c = Net::start();
    let (pid, tok) = c.project("alpha", "member");
    let (_b, btok) = c.project("beta", "member");
    let path = format!("/auto-allocated-topology/{pid}");

    fault(&c.nn.get(&path, &tok), 409, "AutoAllocationFailure");
    fault(
        &c.nn.get(&format!("{path}?fields=dry-run"), &tok),
        409,
        "AutoAllocationFailure",
    );
    // is_default is the admin's to set, on one external network.
    fault(
        &c.nn.post(
            "/networks",
            &tok,
            json!({"network": {"name": "x", "is_default": true}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    let (public, _) = c.public(json!({"is_default": true}));
    assert_eq!(
        c.nn.get(&format!("/networks/{public}"), &tok).body["network"]["is_default"],
        true
    );
    fault(
        &c.nn.post(
            "/networks",
            &c.admin,
            json!({"network": {"name": "other", "router:external": true, "is_default": true}}),
        ),
        409,
        "DefaultExternalNetworkExists",
    );
    let dry = c.nn.get(&format!("{path}?fields=dry-run"), &tok);
    assert_eq!(dry.status, 200, "{}", dry.body);
    assert_eq!(dry.body["auto_allocated_topology"]["id"], "dry-run=pass");
    assert!(ids(&c.nn.get("/networks", &tok).body, "networks") == vec![public.clone()]);
    fault(&c.nn.get(&path, &btok), 403, "NotAuthorized");

    // Concurrent first calls, through two controller processes on one
    // store, get one topology.
    let second = SecondController::start(&c.server);
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 {
                c.nn.base.clone()
            } else {
                second.base.clone()
            };
            let (tok, path) = (tok.clone(), path.clone());
            std::thread::spawn(move || Client { base }.get(&path, &tok))
        })
        .collect();
    let got: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let net = got[0].body["auto_allocated_topology"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", got[0].body))
        .to_string();
    for r in &got {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["auto_allocated_topology"]["id"], net.as_str());
        assert_eq!(
            r.body["auto_allocated_topology"]["project_id"],
            pid.as_str()
        );
    }
    let nets = c.nn.get("/networks?name=auto_allocated_network", &tok);
    assert_eq!(ids(&nets.body, "networks"), vec![net.clone()]);
    let routers = c.nn.get("/routers", &tok).body["routers"].clone();
    assert_eq!(routers.as_array().unwrap().len(), 1, "{routers}");
    assert_eq!(routers[0]["name"], "auto_allocated_router");
    assert_eq!(
        routers[0]["external_gateway_info"]["network_id"],
        public.as_str()
    );
    let subs = c.nn.get(&format!("/subnets?network_id={net}"), &tok).body["subnets"].clone();
    assert_eq!(subs.as_array().unwrap().len(), 1);
    // No default pool: the documented fallback range.
    assert_eq!(subs[0]["cidr"], "10.0.0.0/24");
    let rid = id(&routers[0]);
    let ifs = c.ports(
        &tok,
        &format!("device_id={rid}&device_owner=network:router_interface"),
    );
    assert_eq!(ifs.len(), 1);
    assert_eq!(ifs[0]["fixed_ips"][0]["ip_address"], "10.0.0.1");
    // Again: the same network.
    assert_eq!(
        c.nn.get(&path, &tok).body["auto_allocated_topology"]["id"],
        net.as_str()
    );

    // Delete takes it all away; the next call makes a new one, from the
    // default subnet pool now that there is one.
    assert_eq!(c.nn.delete(&path, &tok).status, 204);
    assert!(
        ids(
            &c.nn.get("/networks?name=auto_allocated_network", &tok).body,
            "networks"
        )
        .is_empty()
    );
    assert!(ids(&c.nn.get("/routers", &tok).body, "routers").is_empty());
    assert_eq!(c.used_ips(&public), 0);
    c.nn.create(
        &c.admin,
        "/subnetpools",
        "subnetpool",
        json!({"name": "default4", "prefixes": ["10.20.0.0/16"], "default_prefixlen": 26,
               "shared": true, "is_default": true}),
    );
    let again = c.nn.get(&path, &tok);
    assert_eq!(again.status, 200, "{}", again.body);
    let net2 = again.body["auto_allocated_topology"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(net2, net);
    let subs = c.nn.get(&format!("/subnets?network_id={net2}"), &tok).body["subnets"].clone();
    assert_eq!(subs[0]["cidr"], "10.20.0.0/26");
    assert!(subs[0]["subnetpool_id"].is_string());
}

#[test]
fn l3_external_network_subnets_visible_and_deleted_with_free_floating_ips() {
    let c = Net::start();
    let (_pid, tok) = c.project("ext-user", "member");
    let ext = c.network(&c.admin, json!({"name": "ext", "router:external": true}));
    let ext_id = id(&ext);
    let sub = c.nn.create(
        &c.admin,
        "/subnets",
        "subnet",
        json!({"network_id": ext_id, "cidr": "172.30.0.0/24", "ip_version": 4, "enable_dhcp": false}),
    );
    assert_eq!(sub["router:external"], true, "{sub}");
    // Another project sees the external network's subnet, marked as such
    // (subnet-external-network); its own subnets are not.
    let mine = c.network(&tok, json!({"name": "mine"}));
    let my_sub = c.subnet(&tok, &id(&mine), "10.9.0.0/24");
    assert_eq!(my_sub["router:external"], false);
    let seen = c.nn.get(&format!("/subnets?network_id={ext_id}"), &tok);
    assert_eq!(ids(&seen.body, "subnets"), vec![id(&sub)]);
    assert_eq!(seen.body["subnets"][0]["router:external"], true);
    let shown = c.nn.get(&format!("/subnets/{}", id(&my_sub)), &tok);
    assert_eq!(shown.body["subnet"]["router:external"], false);
    let exts = c.nn.get("/extensions", &tok).body;
    assert!(
        exts["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alias"] == "subnet-external-network")
    );

    // Floating IPs that map to nothing go with their network, as in
    // Neutron (before, the network could not be deleted at all).
    let f = c.nn.create(
        &tok,
        "/floatingips",
        "floatingip",
        json!({"floating_network_id": ext_id}),
    );
    let fid = id(&f);
    assert_eq!(
        c.nn.delete(&format!("/networks/{ext_id}"), &c.admin).status,
        204
    );
    fault(
        &c.nn.get(&format!("/floatingips/{fid}"), &tok),
        404,
        "FloatingIPNotFound",
    );
    assert_eq!(
        c.nn.get(&format!("/subnets/{}", id(&sub)), &c.admin).status,
        404
    );
    assert!(c.ports(&c.admin, &format!("device_id={fid}")).is_empty());
}
