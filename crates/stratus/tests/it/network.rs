//! The network service (Neutron v2.0 under `/network`) against the real
//! binary: discovery and the catalog, networks, subnets and ports with
//! Neutron's errors, tenant isolation and shared networks, security
//! groups, quotas, the common query behaviour, and the exact IPAM under
//! concurrent port creation.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::common::{Client, Resp, Server};

pub(super) struct Net {
    pub(super) server: Server,
    pub(super) ks: Client,
    pub(super) nn: Client,
    pub(super) admin: String,
    pub(super) admin_project: String,
}

impl Net {
    pub(super) fn start() -> Net {
        let server = Server::start_with(&["--no-agent"]);
        let ks = server.client();
        let r = ks.login("admin", &server.admin_password, Some("admin"));
        let admin = r.header("x-subject-token").unwrap().to_string();
        let admin_project = r.body["token"]["project"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        Net {
            nn: server.client_at("/network/v2.0"),
            ks,
            admin,
            admin_project,
            server,
        }
    }

    /// A project with a user holding `role`; returns (project id, token).
    pub(super) fn project(&self, name: &str, role: &str) -> (String, String) {
        let p = self.ks.create(
            &self.admin,
            "/projects",
            "project",
            json!({"name": name, "domain_id": "default"}),
        );
        let pid = p["id"].as_str().unwrap().to_string();
        self.ks.user(
            &self.admin,
            &format!("{name}-user"),
            "pw-12345",
            Some((&pid, role)),
        );
        let tok = self
            .ks
            .token(&format!("{name}-user"), "pw-12345", Some(name));
        (pid, tok)
    }

    pub(super) fn put(&self, path: &str, tok: &str, body: Value) -> Resp {
        self.nn.call("PUT", path, Some(tok), Some(body))
    }

    pub(super) fn network(&self, tok: &str, body: Value) -> Value {
        self.nn.create(tok, "/networks", "network", body)
    }

    pub(super) fn subnet(&self, tok: &str, net: &str, cidr: &str) -> Value {
        self.nn.create(
            tok,
            "/subnets",
            "subnet",
            json!({"network_id": net, "cidr": cidr, "ip_version": if cidr.contains(':') {6} else {4}}),
        )
    }
}

/// Asserts a Neutron fault: status and `NeutronError.type`.
pub(super) fn fault(r: &Resp, status: u16, kind: &str) {
    assert_eq!(r.status, status, "expected {status} {kind}: {}", r.body);
    assert_eq!(r.body["NeutronError"]["type"], kind, "{}", r.body);
    assert!(
        r.body["NeutronError"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

pub(super) fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn network_discovery_catalog_and_extensions() {
    let c = Net::start();
    let r = c.ks.login("admin", &c.server.admin_password, Some("admin"));
    let catalog = r.body["token"]["catalog"].as_array().unwrap();
    let net = catalog
        .iter()
        .find(|s| s["type"] == "network")
        .expect("network in the catalog");
    assert_eq!(net["name"], "neutron");
    let url = net["endpoints"][0]["url"].as_str().unwrap();
    assert!(url.ends_with("/network"), "{url}");

    // A cloud whose catalog lacks the service (bootstrapped before it
    // existed) gets it back on its next start.
    let sid = net["id"].as_str().unwrap().to_string();
    assert_eq!(
        c.ks.delete(&format!("/services/{sid}"), &c.admin).status,
        204
    );
    let mut c = c;
    c.server.restart();
    let admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.admin = admin;
    let r = c.ks.login("admin", &c.server.admin_password, Some("admin"));
    let again = r.body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "network")
        .expect("network back in the catalog after a restart");
    assert!(
        again["endpoints"][0]["url"]
            .as_str()
            .unwrap()
            .ends_with("/network")
    );

    let root = c.server.client_at("/network");
    let v = root.get("", &c.admin);
    assert_eq!(v.status, 200);
    assert_eq!(v.body["versions"][0]["id"], "v2.0");
    assert_eq!(v.body["versions"][0]["status"], "CURRENT");
    assert_eq!(root.get("/", &c.admin).status, 200);

    let ext = c.nn.get("/extensions", &c.admin);
    assert_eq!(ext.status, 200);
    let aliases: Vec<&str> = ext.body["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["alias"].as_str().unwrap())
        .collect();
    for a in [
        "security-group",
        "port-security",
        "allowed-address-pairs",
        "quotas",
        "standard-attr-revisions",
        "external-net",
    ] {
        assert!(aliases.contains(&a), "{a} missing from {aliases:?}");
    }
    for a in [
        "router",
        "ext-gw-mode",
        "extraroute",
        "subnet_allocation",
        "default-subnetpools",
        "address-scope",
        "rbac-policies",
        "auto-allocated-topology",
        "tag",
        "standard-attr-tag",
        "subnet-external-network",
    ] {
        assert!(aliases.contains(&a), "{a} missing from {aliases:?}");
    }
    for a in ["dvr", "l3-ha", "qos", "metering", "trunk"] {
        assert!(!aliases.contains(&a), "{a} is listed but not implemented");
    }
    assert_eq!(
        c.nn.get("/extensions/quotas", &c.admin).body["extension"]["alias"],
        "quotas"
    );
    fault(&c.nn.get("/extensions/dvr", &c.admin), 404, "HTTPNotFound");
    // No routers or floating IPs yet: empty lists.
    assert_eq!(c.nn.get("/routers", &c.admin).body, json!({"routers": []}));
    assert_eq!(
        c.nn.get("/floatingips", &c.admin).body,
        json!({"floatingips": []})
    );
    // No token: Keystone's 401 (keystonemiddleware answers it in Neutron).
    let r = c.nn.call("GET", "/networks", None, None);
    assert_eq!(r.status, 401);
}

#[test]
fn network_subnet_port_lifecycle_and_bad_input() {
    let c = Net::start();
    let (_pid, tok) = c.project("alpha", "member");
    let admin = &c.admin;

    // Networks: defaults, and provider attributes only for admins.
    let n = c.network(&tok, json!({"name": "net1", "description": "d"}));
    let nid = n["id"].as_str().unwrap().to_string();
    assert_eq!(n["mtu"], 1450);
    assert_eq!(n["status"], "ACTIVE");
    assert_eq!(n["shared"], false);
    assert_eq!(n["router:external"], false);
    assert_eq!(n["admin_state_up"], true);
    assert_eq!(n["revision_number"], 1);
    assert!(n.get("provider:network_type").is_none(), "{n}");
    let as_admin = c.nn.get(&format!("/networks/{nid}"), admin).body["network"].clone();
    assert_eq!(as_admin["provider:network_type"], "vxlan");
    assert!(as_admin["provider:segmentation_id"].as_u64().is_some());
    fault(
        &c.nn.post(
            "/networks",
            &tok,
            json!({"network": {"name": "x", "provider:network_type": "vlan"}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    fault(
        &c.nn.post(
            "/networks",
            &tok,
            json!({"network": {"name": "x", "shared": true}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    fault(
        &c.nn
            .post("/networks", &tok, json!({"network": {"bogus": 1}})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &c.nn
            .post("/networks", &tok, json!({"network": {"mtu": 9000}})),
        400,
        "InvalidInput",
    );
    let bad_json = c.nn.raw(
        "POST",
        "/networks",
        Some(&tok),
        &[],
        Some("{not json".into()),
    );
    fault(&bad_json, 400, "HTTPBadRequest");
    fault(
        &c.nn.get("/networks/no-such-net", &tok),
        404,
        "NetworkNotFound",
    );
    let up = c.put(
        &format!("/networks/{nid}"),
        &tok,
        json!({"network": {"name": "net1b"}}),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.body["network"]["name"], "net1b");
    assert_eq!(up.body["network"]["revision_number"], 2);

    // Subnets: defaults, normalisation and Neutron's errors.
    let s = c.subnet(&tok, &nid, "10.10.0.0/24");
    let sid = s["id"].as_str().unwrap().to_string();
    assert_eq!(s["gateway_ip"], "10.10.0.1");
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.10.0.2", "end": "10.10.0.254"}])
    );
    assert_eq!(s["enable_dhcp"], true);
    assert_eq!(s["ip_version"], 4);
    let net = c.nn.get(&format!("/networks/{nid}"), &tok).body["network"].clone();
    assert_eq!(net["subnets"], json!([sid]));
    let sub = |body: Value| c.nn.post("/subnets", &tok, json!({"subnet": body}));
    fault(
        &sub(json!({"network_id": nid, "cidr": "10.10.0.128/25", "ip_version": 4})),
        400,
        "InvalidInput",
    );
    fault(
        &sub(json!({"network_id": nid, "cidr": "10.20.0.0/33", "ip_version": 4})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &sub(json!({"network_id": nid, "cidr": "not-a-cidr", "ip_version": 4})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &sub(json!({"network_id": nid, "cidr": "10.20.0.5/24", "ip_version": 4})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &sub(json!({"network_id": nid, "cidr": "10.20.0.0/24", "ip_version": 6})),
        400,
        "InvalidInput",
    );
    fault(
        &sub(
            json!({"network_id": nid, "cidr": "10.20.0.0/24", "ip_version": 4, "gateway_ip": "10.20.0.10",
                     "allocation_pools": [{"start": "10.20.0.5", "end": "10.20.0.20"}]}),
        ),
        409,
        "GatewayConflictWithAllocationPools",
    );
    fault(
        &sub(
            json!({"network_id": nid, "cidr": "10.20.0.0/24", "ip_version": 4,
                     "allocation_pools": [{"start": "10.20.0.5", "end": "10.21.0.20"}]}),
        ),
        400,
        "OutOfBoundsAllocationPool",
    );
    fault(
        &sub(
            json!({"network_id": nid, "cidr": "10.20.0.0/24", "ipv6_ra_mode": "slaac", "ip_version": 4}),
        ),
        400,
        "InvalidInput",
    );
    fault(
        &sub(json!({"network_id": "nope", "cidr": "10.30.0.0/24", "ip_version": 4})),
        404,
        "NetworkNotFound",
    );
    // Nothing half-created by the refusals.
    let subs = c.nn.get(&format!("/subnets?network_id={nid}"), &tok);
    assert_eq!(ids(&subs.body, "subnets"), vec![sid.clone()]);

    let s6 = c.nn.create(
        &tok,
        "/subnets",
        "subnet",
        json!({"network_id": nid, "cidr": "2001:DB8:1::/64", "ip_version": 6,
               "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac",
               "dns_nameservers": ["2001:db8::53"]}),
    );
    assert_eq!(s6["cidr"], "2001:db8:1::/64");
    assert_eq!(s6["gateway_ip"], "2001:db8:1::1");
    let s6id = s6["id"].as_str().unwrap().to_string();

    // Ports: automatic addresses, MAC, default security group.
    let p1 = c.nn.create(&tok, "/ports", "port", json!({"network_id": nid, "name": "p1", "device_owner": "compute:nova", "device_id": "vm-1"}));
    let p1id = p1["id"].as_str().unwrap().to_string();
    let mac = p1["mac_address"].as_str().unwrap().to_string();
    assert!(mac.starts_with("fa:16:3e:"), "{mac}");
    assert_eq!(p1["status"], "DOWN");
    assert_eq!(
        p1["fixed_ips"][0],
        json!({"subnet_id": sid, "ip_address": "10.10.0.2"})
    );
    assert_eq!(p1["fixed_ips"][1]["subnet_id"], s6id);
    assert!(
        p1["fixed_ips"][1]["ip_address"]
            .as_str()
            .unwrap()
            .starts_with("2001:db8:1:0:f816:3eff:fe")
    );
    assert_eq!(p1["security_groups"].as_array().unwrap().len(), 1);
    assert!(p1.get("binding:host_id").is_none());
    let sgs = c.nn.get("/security-groups?name=default", &tok);
    assert_eq!(
        ids(&sgs.body, "security_groups"),
        vec![p1["security_groups"][0].as_str().unwrap().to_string()]
    );

    let port = |body: Value| c.nn.post("/ports", &tok, json!({"port": body}));
    let p2 = port(
        json!({"network_id": nid, "fixed_ips": [{"subnet_id": sid, "ip_address": "10.10.0.50"}]}),
    );
    assert_eq!(p2.status, 201, "{}", p2.body);
    assert_eq!(
        p2.body["port"]["fixed_ips"],
        json!([{"subnet_id": sid, "ip_address": "10.10.0.50"}])
    );
    let p2id = p2.body["port"]["id"].as_str().unwrap().to_string();
    fault(
        &port(json!({"network_id": nid, "fixed_ips": [{"ip_address": "10.10.0.50"}]})),
        409,
        "IpAddressAlreadyAllocated",
    );
    fault(
        &port(
            json!({"network_id": nid, "fixed_ips": [{"subnet_id": sid, "ip_address": "10.99.0.5"}]}),
        ),
        400,
        "InvalidIpForSubnet",
    );
    fault(
        &port(
            json!({"network_id": nid, "fixed_ips": [{"subnet_id": sid, "ip_address": "10.10.0.255"}]}),
        ),
        400,
        "InvalidIpForSubnet",
    );
    fault(
        &port(json!({"network_id": nid, "fixed_ips": [{"ip_address": "192.168.1.1"}]})),
        400,
        "InvalidIpForNetwork",
    );
    fault(
        &port(json!({"network_id": nid, "fixed_ips": [{"ip_address": "nonsense"}]})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &port(json!({"network_id": nid, "mac_address": mac})),
        409,
        "MacAddressInUse",
    );
    fault(
        &port(
            json!({"network_id": nid, "port_security_enabled": false, "security_groups": [p1["security_groups"][0]]}),
        ),
        400,
        "PortSecurityAndIPRequiredForSecurityGroups",
    );
    fault(
        &port(json!({"network_id": nid, "binding:host_id": "node1"})),
        403,
        "PolicyNotAuthorized",
    );
    fault(&port(json!({"network_id": "nope"})), 404, "NetworkNotFound");
    let all = c.nn.get(&format!("/ports?network_id={nid}"), &tok);
    assert_eq!(
        all.body["ports"].as_array().unwrap().len(),
        2,
        "refusals left ports: {}",
        all.body
    );

    // Updating the fixed IPs moves the allocation; the old address is free.
    let up = c.put(&format!("/ports/{p2id}"), &tok, json!({"port": {"fixed_ips": [{"subnet_id": sid, "ip_address": "10.10.0.60"}], "name": "p2"}}));
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.body["port"]["fixed_ips"][0]["ip_address"], "10.10.0.60");
    let p3 = port(
        json!({"network_id": nid, "fixed_ips": [{"ip_address": "10.10.0.50"}], "allowed_address_pairs": [{"ip_address": "10.10.0.200"}]}),
    );
    assert_eq!(p3.status, 201, "{}", p3.body);
    assert_eq!(
        p3.body["port"]["allowed_address_pairs"][0]["mac_address"],
        p3.body["port"]["mac_address"]
    );
    let p3id = p3.body["port"]["id"].as_str().unwrap().to_string();

    // Admins see and set the binding.
    let b = c.put(
        &format!("/ports/{p3id}"),
        admin,
        json!({"port": {"binding:host_id": "node-1"}}),
    );
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["port"]["binding:host_id"], "node-1");
    assert_eq!(b.body["port"]["binding:vif_type"], "bridge");

    // Queries: filters, fixed_ips filters, fields, sorting and paging.
    let r = c.nn.get("/ports?fixed_ips=ip_address%3D10.10.0.60", &tok);
    assert_eq!(ids(&r.body, "ports"), vec![p2id.clone()]);
    let r =
        c.nn.get("/ports?device_id=vm-1&fields=id&fields=name", &tok);
    assert_eq!(r.body["ports"], json!([{"id": p1id, "name": "p1"}]));
    let r = c.nn.get(
        &format!("/ports?network_id={nid}&sort_key=name&sort_dir=desc"),
        &tok,
    );
    let names: Vec<&str> = r.body["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["p2", "p1", ""]);
    let page1 = c.nn.get("/ports?limit=2&sort_key=name&sort_dir=asc", &tok);
    assert_eq!(page1.body["ports"].as_array().unwrap().len(), 2);
    let next = page1.body["ports_links"][0]["href"]
        .as_str()
        .expect("next link")
        .to_string();
    assert_eq!(page1.body["ports_links"][0]["rel"], "next");
    let rest = next.split_once("/network/v2.0").unwrap().1;
    let page2 = c.nn.get(rest, &tok);
    assert_eq!(
        page2.body["ports"].as_array().unwrap().len(),
        1,
        "{}",
        page2.body
    );
    assert_eq!(page2.body["ports"][0]["name"], "p2");
    fault(
        &c.nn.get("/ports?sort_key=nonsense", &tok),
        400,
        "HTTPBadRequest",
    );

    // Tags: set, add, check, filter, remove.
    let t = c.put(
        &format!("/networks/{nid}/tags"),
        &tok,
        json!({"tags": ["red", "blue"]}),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(
        c.nn.put(&format!("/ports/{p1id}/tags/web"), &tok).status,
        201
    );
    assert_eq!(
        c.nn.get(&format!("/ports/{p1id}/tags/web"), &tok).status,
        204
    );
    fault(
        &c.nn.get(&format!("/ports/{p1id}/tags/db"), &tok),
        404,
        "TagNotFound",
    );
    let r = c.nn.get("/networks?tags=red,blue", &tok);
    assert_eq!(ids(&r.body, "networks"), vec![nid.clone()]);
    assert!(
        c.nn.get("/networks?tags=red,green", &tok).body["networks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        c.nn.get("/networks?not-tags-any=blue", &tok).body["networks"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        ids(&c.nn.get("/ports?tags-any=web,db", &tok).body, "ports"),
        vec![p1id.clone()]
    );
    let shown = c.nn.get(&format!("/networks/{nid}"), &tok).body["network"].clone();
    assert_eq!(shown["tags"], json!(["red", "blue"]));
    assert_eq!(
        c.nn.delete(&format!("/networks/{nid}/tags/red"), &tok)
            .status,
        204
    );
    assert_eq!(
        c.nn.get(&format!("/networks/{nid}/tags"), &tok).body["tags"],
        json!(["blue"])
    );
    fault(
        &c.nn.put("/ports/no-port/tags/x", &tok),
        404,
        "PortNotFound",
    );

    // In use: the network and the subnet refuse to go.
    fault(
        &c.nn.delete(&format!("/networks/{nid}"), &tok),
        409,
        "NetworkInUse",
    );
    fault(
        &c.nn.delete(&format!("/subnets/{sid}"), &tok),
        409,
        "SubnetInUse",
    );
    for p in [&p1id, &p2id, &p3id] {
        assert_eq!(c.nn.delete(&format!("/ports/{p}"), &tok).status, 204);
    }
    fault(
        &c.nn.get(&format!("/ports/{p1id}"), &tok),
        404,
        "PortNotFound",
    );
    assert_eq!(c.nn.delete(&format!("/subnets/{sid}"), &tok).status, 204);
    fault(
        &c.nn.get(&format!("/subnets/{sid}"), &tok),
        404,
        "SubnetNotFound",
    );
    assert_eq!(c.nn.delete(&format!("/networks/{nid}"), &tok).status, 204);
    fault(
        &c.nn.get(&format!("/networks/{nid}"), &tok),
        404,
        "NetworkNotFound",
    );
    fault(
        &c.nn.get(&format!("/subnets/{s6id}"), &tok),
        404,
        "SubnetNotFound",
    );
}

#[test]
fn network_tenant_isolation_shared_networks_and_same_cidrs() {
    let c = Net::start();
    let (pa, ta) = c.project("proj-a", "member");
    let (pb, tb) = c.project("proj-b", "member");
    let (_pr, tr) = c.project("proj-r", "reader");

    let priv_a = c.network(&ta, json!({"name": "a-private"}));
    let aid = priv_a["id"].as_str().unwrap().to_string();
    assert_eq!(priv_a["project_id"], pa);
    assert_eq!(priv_a["tenant_id"], pa);
    c.subnet(&ta, &aid, "192.168.50.0/24");

    // B sees nothing of A's and cannot use it.
    assert!(!ids(&c.nn.get("/networks", &tb).body, "networks").contains(&aid));
    fault(
        &c.nn.get(&format!("/networks/{aid}"), &tb),
        404,
        "NetworkNotFound",
    );
    fault(
        &c.nn
            .post("/ports", &tb, json!({"port": {"network_id": aid}})),
        404,
        "NetworkNotFound",
    );
    fault(
        &c.nn.post(
            "/subnets",
            &tb,
            json!({"subnet": {"network_id": aid, "cidr": "10.0.0.0/24", "ip_version": 4}}),
        ),
        404,
        "NetworkNotFound",
    );
    fault(
        &c.nn.delete(&format!("/networks/{aid}"), &tb),
        404,
        "NetworkNotFound",
    );
    assert!(
        c.nn.get("/subnets", &tb).body["subnets"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A member cannot act for another project.
    fault(
        &c.nn.post(
            "/networks",
            &tb,
            json!({"network": {"name": "x", "project_id": pa}}),
        ),
        403,
        "PolicyNotAuthorized",
    );

    // B uses the same CIDR in its own network: overlapping ranges in
    // different projects work, with the same addresses.
    let bnet = c.network(&tb, json!({"name": "b-private"}));
    let bid = bnet["id"].as_str().unwrap().to_string();
    c.subnet(&tb, &bid, "192.168.50.0/24");
    let pa1 =
        c.nn.create(&ta, "/ports", "port", json!({"network_id": aid}));
    let pb1 =
        c.nn.create(&tb, "/ports", "port", json!({"network_id": bid}));
    assert_eq!(pa1["fixed_ips"][0]["ip_address"], "192.168.50.2");
    assert_eq!(pb1["fixed_ips"][0]["ip_address"], "192.168.50.2");
    assert_ne!(pa1["security_groups"], pb1["security_groups"]);

    // A shared network (admin) is visible to and usable by B, not
    // changeable by it.
    let shared = c.network(&c.admin, json!({"name": "shared", "shared": true}));
    let shid = shared["id"].as_str().unwrap().to_string();
    c.subnet(&c.admin, &shid, "172.30.0.0/24");
    assert!(ids(&c.nn.get("/networks?shared=true", &tb).body, "networks").contains(&shid));
    let pb2 =
        c.nn.create(&tb, "/ports", "port", json!({"network_id": shid}));
    assert_eq!(pb2["project_id"], pb);
    assert_eq!(pb2["fixed_ips"][0]["ip_address"], "172.30.0.2");
    fault(
        &c.put(
            &format!("/networks/{shid}"),
            &tb,
            json!({"network": {"name": "mine"}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    fault(
        &c.nn.post(
            "/ports",
            &tb,
            json!({"port": {"network_id": shid, "fixed_ips": [{"ip_address": "172.30.0.9"}]}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    // A subnet on someone else's shared network is the owner's business.
    fault(
        &c.nn.post(
            "/subnets",
            &tb,
            json!({"subnet": {"network_id": shid, "cidr": "172.31.0.0/24", "ip_version": 4}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    // B's port on the shared network is B's: A does not see it; the
    // network's owner (admin) does.
    let pbid = pb2["id"].as_str().unwrap();
    assert!(!ids(&c.nn.get("/ports", &ta).body, "ports").contains(&pbid.to_string()));
    assert!(ids(&c.nn.get("/ports", &c.admin).body, "ports").contains(&pbid.to_string()));
    // Unsharing while another project uses it is refused.
    fault(
        &c.put(
            &format!("/networks/{shid}"),
            &c.admin,
            json!({"network": {"shared": false}}),
        ),
        409,
        "InvalidSharedSetting",
    );

    // Readers read, never write.
    assert_eq!(c.nn.get("/networks", &tr).status, 200);
    fault(
        &c.nn
            .post("/networks", &tr, json!({"network": {"name": "r"}})),
        403,
        "PolicyNotAuthorized",
    );

    // Admins see every network.
    let all = ids(&c.nn.get("/networks", &c.admin).body, "networks");
    for id in [&aid, &bid, &shid] {
        assert!(all.contains(id));
    }
    let r = c.nn.get(&format!("/networks?project_id={pa}"), &c.admin);
    assert_eq!(ids(&r.body, "networks"), vec![aid.clone()]);
}

#[test]
fn network_security_groups_and_rules() {
    let c = Net::start();
    let (pid, tok) = c.project("sgp", "member");
    let (_pb, tb) = c.project("sgq", "member");

    // The default group appears on first listing, with Neutron's rules.
    let l = c.nn.get("/security-groups", &tok);
    assert_eq!(l.status, 200);
    let groups = l.body["security_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{}", l.body);
    let def = &groups[0];
    assert_eq!(def["name"], "default");
    let did = def["id"].as_str().unwrap().to_string();
    let rules = def["security_group_rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4);
    for eth in ["IPv4", "IPv6"] {
        assert!(rules.iter().any(|r| r["direction"] == "egress"
            && r["ethertype"] == eth
            && r["remote_group_id"].is_null()
            && r["protocol"].is_null()));
        assert!(rules.iter().any(|r| r["direction"] == "ingress"
            && r["ethertype"] == eth
            && r["remote_group_id"] == did.as_str()));
    }
    // Listing twice does not make a second one.
    assert_eq!(
        c.nn.get("/security-groups", &tok).body["security_groups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let g = c.nn.create(
        &tok,
        "/security-groups",
        "security_group",
        json!({"name": "web", "description": "w"}),
    );
    let gid = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["project_id"], pid);
    assert_eq!(g["security_group_rules"].as_array().unwrap().len(), 2);
    fault(
        &c.nn.post(
            "/security-groups",
            &tok,
            json!({"security_group": {"name": "default"}}),
        ),
        409,
        "SecurityGroupDefaultAlreadyExists",
    );

    let rule = |body: Value| {
        c.nn.post(
            "/security-group-rules",
            &tok,
            json!({"security_group_rule": body}),
        )
    };
    let ssh = rule(
        json!({"security_group_id": gid, "direction": "ingress", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.7/8"}),
    );
    assert_eq!(ssh.status, 201, "{}", ssh.body);
    // As given, as Neutron keeps it; what is enforced is the normalised
    // prefix.
    assert_eq!(
        ssh.body["security_group_rule"]["remote_ip_prefix"],
        "10.0.0.7/8"
    );
    assert_eq!(
        ssh.body["security_group_rule"]["normalized_cidr"],
        "10.0.0.0/8"
    );
    assert_eq!(ssh.body["security_group_rule"]["ethertype"], "IPv4");
    let ssh_id = ssh.body["security_group_rule"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "protocol": "6", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.0/8"}),
        ),
        409,
        "SecurityGroupRuleExists",
    );
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "protocol": "tcp", "port_range_min": 90, "port_range_max": 80}),
        ),
        400,
        "SecurityGroupInvalidPortRange",
    );
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 80}),
        ),
        400,
        "SecurityGroupInvalidPortValue",
    );
    fault(
        &rule(json!({"security_group_id": gid, "direction": "ingress", "protocol": 300})),
        400,
        "SecurityGroupRuleInvalidProtocol",
    );
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "protocol": 6, "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.0/8"}),
        ),
        409,
        "SecurityGroupRuleExists",
    );
    fault(
        &rule(json!({"security_group_id": gid, "direction": "ingress", "protocol": "bogus"})),
        400,
        "SecurityGroupRuleInvalidProtocol",
    );
    fault(
        &rule(json!({"security_group_id": gid, "direction": "ingress", "port_range_min": 80})),
        400,
        "SecurityGroupProtocolRequiredWithPorts",
    );
    fault(
        &rule(json!({"security_group_id": gid, "direction": "sideways"})),
        400,
        "HTTPBadRequest",
    );
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "ethertype": "IPv6", "remote_ip_prefix": "10.0.0.0/8"}),
        ),
        400,
        "SecurityGroupRuleParameterConflict",
    );
    fault(
        &rule(
            json!({"security_group_id": gid, "direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": did}),
        ),
        400,
        "SecurityGroupRemoteGroupAndRemoteIpPrefix",
    );
    fault(
        &rule(json!({"security_group_id": "nope", "direction": "ingress"})),
        404,
        "SecurityGroupNotFound",
    );
    let icmp = rule(
        json!({"security_group_id": gid, "direction": "ingress", "protocol": "icmp", "port_range_min": 8, "port_range_max": 0}),
    );
    assert_eq!(icmp.status, 201, "{}", icmp.body);
    let rules = c.nn.get(
        &format!("/security-group-rules?security_group_id={gid}"),
        &tok,
    );
    assert_eq!(
        rules.body["security_group_rules"].as_array().unwrap().len(),
        4
    );

    // Another project sees none of it.
    fault(
        &c.nn.get(&format!("/security-groups/{gid}"), &tb),
        404,
        "SecurityGroupNotFound",
    );
    fault(
        &c.nn.post(
            "/security-group-rules",
            &tb,
            json!({"security_group_rule": {"security_group_id": gid, "direction": "ingress"}}),
        ),
        404,
        "SecurityGroupNotFound",
    );

    // In use by a port: refused; the default group is never removed by
    // its project.
    let n = c.network(&tok, json!({"name": "sgnet"}));
    let port = c.nn.create(
        &tok,
        "/ports",
        "port",
        json!({"network_id": n["id"], "security_groups": [gid]}),
    );
    assert_eq!(port["security_groups"], json!([gid]));
    fault(
        &c.nn.delete(&format!("/security-groups/{gid}"), &tok),
        409,
        "SecurityGroupInUse",
    );
    fault(
        &c.nn.delete(&format!("/security-groups/{did}"), &tok),
        409,
        "SecurityGroupCannotRemoveDefault",
    );
    assert_eq!(
        c.nn.delete(&format!("/security-group-rules/{ssh_id}"), &tok)
            .status,
        204
    );
    assert_eq!(
        c.nn.delete(&format!("/ports/{}", port["id"].as_str().unwrap()), &tok)
            .status,
        204
    );
    assert_eq!(
        c.nn.delete(&format!("/security-groups/{gid}"), &tok).status,
        204
    );
    fault(
        &c.nn.get(&format!("/security-groups/{gid}"), &tok),
        404,
        "SecurityGroupNotFound",
    );
    let left = c.nn.get(
        &format!("/security-group-rules?security_group_id={gid}"),
        &tok,
    );
    assert!(
        left.body["security_group_rules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn network_quotas_enforced_and_managed() {
    let c = Net::start();
    let (pid, tok) = c.project("quota-p", "member");
    let r = c.nn.get(&format!("/quotas/{pid}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["quota"]["network"], 100);
    assert_eq!(r.body["quota"]["port"], 500);
    assert_eq!(r.body["quota"]["security_group"], 10);
    assert_eq!(
        c.nn.get(&format!("/quotas/{pid}/default"), &tok).body["quota"]["subnet"],
        100
    );
    fault(
        &c.put(
            &format!("/quotas/{pid}"),
            &tok,
            json!({"quota": {"network": 5}}),
        ),
        403,
        "PolicyNotAuthorized",
    );
    fault(
        &c.nn.get(&format!("/quotas/{}", c.admin_project), &tok),
        403,
        "PolicyNotAuthorized",
    );

    let up = c.put(
        &format!("/quotas/{pid}"),
        &c.admin,
        json!({"quota": {"network": 1, "port": 2}}),
    );
    assert_eq!(up.status, 200, "{}", up.body);
    assert_eq!(up.body["quota"]["network"], 1);
    fault(
        &c.put(
            &format!("/quotas/{pid}"),
            &c.admin,
            json!({"quota": {"network": -5}}),
        ),
        400,
        "HTTPBadRequest",
    );

    let n = c.network(&tok, json!({"name": "only"}));
    fault(
        &c.nn
            .post("/networks", &tok, json!({"network": {"name": "second"}})),
        409,
        "OverQuota",
    );
    assert_eq!(
        c.nn.get("/networks", &tok).body["networks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let nid = n["id"].as_str().unwrap();
    c.subnet(&tok, nid, "10.5.0.0/24");
    c.nn.create(&tok, "/ports", "port", json!({"network_id": nid}));
    c.nn.create(&tok, "/ports", "port", json!({"network_id": nid}));
    fault(
        &c.nn
            .post("/ports", &tok, json!({"port": {"network_id": nid}})),
        409,
        "OverQuota",
    );
    let d = c.nn.get(&format!("/quotas/{pid}/details"), &tok);
    assert_eq!(
        d.body["quota"]["port"],
        json!({"limit": 2, "used": 2, "reserved": 0})
    );
    assert_eq!(d.body["quota"]["network"]["used"], 1);
    // The refused port took no address.
    let avail =
        c.nn.get(&format!("/network-ip-availabilities/{nid}"), &c.admin);
    assert_eq!(
        avail.body["network_ip_availability"]["used_ips"], 2,
        "{}",
        avail.body
    );
    assert_eq!(avail.body["network_ip_availability"]["total_ips"], 253);

    let all = c.nn.get("/quotas", &c.admin);
    assert!(
        all.body["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["project_id"] == pid.as_str())
    );
    assert_eq!(c.nn.delete(&format!("/quotas/{pid}"), &c.admin).status, 204);
    assert_eq!(
        c.nn.get(&format!("/quotas/{pid}"), &tok).body["quota"]["network"],
        100
    );
    c.network(&tok, json!({"name": "second"}));
}

#[test]
fn network_ipam_concurrent_ports_get_distinct_addresses() {
    let c = Net::start();
    let (_pid, tok) = c.project("ipam", "member");
    let n = c.network(&tok, json!({"name": "small"}));
    let nid = n["id"].as_str().unwrap().to_string();
    // A /28: 16 addresses less network, broadcast and gateway = 13.
    let s = c.subnet(&tok, &nid, "10.77.0.0/28");
    let sid = s["id"].as_str().unwrap().to_string();
    let base = c.nn.base.clone();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let tok = tok.clone();
            let nid = nid.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                let nn = Client { base };
                nn.post("/ports", &tok, json!({"port": {"network_id": nid}}))
            })
        })
        .collect();
    let results: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut addrs = HashSet::new();
    let mut refused = 0;
    for r in &results {
        match r.status {
            201 => {
                let f = &r.body["port"]["fixed_ips"];
                assert_eq!(f.as_array().unwrap().len(), 1);
                assert_eq!(f[0]["subnet_id"], sid.as_str());
                assert!(
                    addrs.insert(f[0]["ip_address"].as_str().unwrap().to_string()),
                    "address handed out twice: {f}"
                );
            }
            _ => {
                fault(r, 409, "IpAddressGenerationFailure");
                refused += 1;
            }
        }
    }
    assert_eq!(addrs.len(), 13, "{addrs:?}");
    assert_eq!(refused, 7);
    let expected: HashSet<String> = (2..=14).map(|i| format!("10.77.0.{i}")).collect();
    assert_eq!(addrs, expected);
    // Nothing half-created: exactly the 13 ports exist.
    let ports = c.nn.get(&format!("/ports?network_id={nid}"), &tok);
    assert_eq!(ports.body["ports"].as_array().unwrap().len(), 13);
    // A freed address is handed out again.
    let victim = ports.body["ports"][0].clone();
    assert_eq!(
        c.nn.delete(&format!("/ports/{}", victim["id"].as_str().unwrap()), &tok)
            .status,
        204
    );
    let again =
        c.nn.create(&tok, "/ports", "port", json!({"network_id": nid}));
    assert_eq!(
        again["fixed_ips"][0]["ip_address"],
        victim["fixed_ips"][0]["ip_address"]
    );
    fault(
        &c.nn
            .post("/ports", &tok, json!({"port": {"network_id": nid}})),
        409,
        "IpAddressGenerationFailure",
    );
}

#[test]
fn network_bulk_create_slaac_subnet_delete_and_rule_port_ranges() {
    let c = Net::start();
    let (_pid, tok) = c.project("bulk", "member");

    // Bulk create: one request, a list back, in order.
    let r = c.nn.post(
        "/networks",
        &tok,
        json!({"networks": [{"name": "bulk-a"}, {"name": "bulk-b"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let nets = r.body["networks"].as_array().unwrap();
    assert_eq!(nets.len(), 2);
    assert_eq!(nets[0]["name"], "bulk-a");
    assert_eq!(nets[1]["name"], "bulk-b");
    let (na, nb) = (
        nets[0]["id"].as_str().unwrap().to_string(),
        nets[1]["id"].as_str().unwrap().to_string(),
    );
    let r = c.nn.post(
        "/subnets",
        &tok,
        json!({"subnets": [
            {"network_id": na, "cidr": "10.1.0.0/24", "ip_version": 4},
            {"network_id": nb, "cidr": "10.2.0.0/24", "ip_version": 4},
        ]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["subnets"][1]["network_id"], nb.as_str());
    let r = c.nn.post(
        "/ports",
        &tok,
        json!({"ports": [{"network_id": na}, {"network_id": nb}]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(ids(&r.body, "ports").len(), 2);

    // The tunnel id of a deleted network is not handed out again at once
    // (nodes may still hold its tunnel): ids are picked at random.
    let seg = |id: &str| {
        c.nn.get(&format!("/networks/{id}"), &c.admin).body["network"]["provider:segmentation_id"]
            .as_u64()
            .unwrap()
    };
    let gone = c.network(&tok, json!({"name": "short-lived"}));
    let gone_id = gone["id"].as_str().unwrap();
    let gone_seg = seg(gone_id);
    assert_eq!(
        c.nn.delete(&format!("/networks/{gone_id}"), &tok).status,
        204
    );
    let next = c.network(&tok, json!({"name": "next"}));
    assert_ne!(seg(next["id"].as_str().unwrap()), gone_seg);

    // All or none: a refused item leaves nothing of the others behind.
    let before = ids(&c.nn.get("/ports", &tok).body, "ports").len();
    let r = c.nn.post(
        "/ports",
        &tok,
        json!({"ports": [{"network_id": na}, {"network_id": "no-such-network"}]}),
    );
    fault(&r, 404, "NetworkNotFound");
    assert_eq!(ids(&c.nn.get("/ports", &tok).body, "ports").len(), before);
    let r =
        c.nn.post("/networks", &tok, json!({"networks": {"name": "x"}}));
    fault(&r, 400, "HTTPBadRequest");

    // An auto-address (SLAAC) subnet is deleted with ports on it: their
    // addresses from it go; the network itself stays in use.
    let net6 = c.network(&tok, json!({"name": "v6"}));
    let n6 = net6["id"].as_str().unwrap();
    let s6 = c.nn.create(
        &tok,
        "/subnets",
        "subnet",
        json!({"network_id": n6, "cidr": "2001:db8:1::/64", "ip_version": 6,
               "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
    );
    let s6id = s6["id"].as_str().unwrap();
    let port =
        c.nn.create(&tok, "/ports", "port", json!({"network_id": n6}));
    assert_eq!(port["fixed_ips"][0]["subnet_id"], s6id);
    let pid = port["id"].as_str().unwrap();
    assert_eq!(c.nn.delete(&format!("/subnets/{s6id}"), &tok).status, 204);
    assert_eq!(c.nn.get(&format!("/subnets/{s6id}"), &tok).status, 404);
    let port = c.nn.get(&format!("/ports/{pid}"), &tok).body;
    assert_eq!(port["port"]["fixed_ips"], json!([]), "{port}");
    fault(
        &c.nn.delete(&format!("/networks/{n6}"), &tok),
        409,
        "NetworkInUse",
    );
    // A stateful (DHCPv6) subnet still refuses while a port holds an
    // address from it.
    let s = c.nn.create(
        &tok,
        "/subnets",
        "subnet",
        json!({"network_id": n6, "cidr": "2001:db8:2::/64", "ip_version": 6,
               "ipv6_ra_mode": "dhcpv6-stateful", "ipv6_address_mode": "dhcpv6-stateful"}),
    );
    let sid = s["id"].as_str().unwrap();
    c.nn.create(&tok, "/ports", "port", json!({"network_id": n6}));
    fault(
        &c.nn.delete(&format!("/subnets/{sid}"), &tok),
        409,
        "SubnetInUse",
    );

    // TCP/UDP port ranges need both ends (a single port is min == max).
    let sg = c.nn.create(
        &tok,
        "/security-groups",
        "security_group",
        json!({"name": "r"}),
    );
    let sgid = sg["id"].as_str().unwrap();
    for (min, max) in [(json!(null), json!(6)), (json!(22), json!(null))] {
        let r = c.nn.post(
            "/security-group-rules",
            &tok,
            json!({"security_group_rule": {"security_group_id": sgid, "direction": "ingress",
                   "protocol": "tcp", "port_range_min": min, "port_range_max": max}}),
        );
        fault(&r, 400, "SecurityGroupInvalidPortRange");
    }
    let rule = c.nn.create(
        &tok,
        "/security-group-rules",
        "security_group_rule",
        json!({"security_group_id": sgid, "direction": "ingress", "protocol": "tcp",
               "port_range_min": 22, "port_range_max": 22}),
    );
    assert_eq!(rule["port_range_max"], 22);
    // A prefix with host bits set shows as given, normalised beside it.
    let rule = c.nn.create(
        &tok,
        "/security-group-rules",
        "security_group_rule",
        json!({"security_group_id": sgid, "direction": "ingress",
               "remote_ip_prefix": "10.2.3.124/24"}),
    );
    assert_eq!(rule["remote_ip_prefix"], "10.2.3.124/24");
    assert_eq!(rule["normalized_cidr"], "10.2.3.0/24");
    // The same network under another spelling is the same rule.
    let r = c.nn.post(
        "/security-group-rules",
        &tok,
        json!({"security_group_rule": {"security_group_id": sgid, "direction": "ingress",
               "remote_ip_prefix": "10.2.3.0/24"}}),
    );
    fault(&r, 409, "SecurityGroupRuleExists");
}

/// Asserts a Nova fault: status and the body's `{name: {code}}`.
fn nova_fault(r: &Resp, status: u16, name: &str) {
    assert_eq!(r.status, status, "expected {status}: {}", r.body);
    assert_eq!(r.body[name]["code"], status, "{}", r.body);
}

#[test]
fn network_nova_proxy_apis_security_groups_floating_ips_networks() {
    let c = Net::start();
    let (pid, tok) = c.project("proxy", "member");
    let nova = c.server.client_at("/compute/v2.1");

    // Security groups through Nova, seen by the network service.
    let r = nova.post(
        "/os-security-groups",
        &tok,
        json!({"security_group": {"name": "web", "description": "web servers"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let g = r.body["security_group"].clone();
    let gid = g["id"].as_str().unwrap().to_string();
    assert_eq!(g["tenant_id"], pid.as_str());
    assert_eq!(g["rules"], json!([]), "egress rules are not Nova's");
    nova_fault(
        &nova.post(
            "/os-security-groups",
            &tok,
            json!({"security_group": {"name": "", "description": "x"}}),
        ),
        400,
        "badRequest",
    );
    let rule = |body: Value| {
        nova.post(
            "/os-security-group-rules",
            &tok,
            json!({ "security_group_rule": body }),
        )
    };
    let r = rule(json!({"parent_group_id": gid, "ip_protocol": "tcp",
                        "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let rid = r.body["security_group_rule"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        r.body["security_group_rule"]["ip_range"]["cidr"],
        "10.0.0.0/8"
    );
    assert_eq!(
        r.body["security_group_rule"]["parent_group_id"],
        gid.as_str()
    );
    for bad in [
        json!({"parent_group_id": gid, "ip_protocol": "tcp", "from_port": 22, "to_port": 70000}),
        json!({"parent_group_id": gid, "ip_protocol": "tcp", "from_port": 23, "to_port": 22}),
        json!({"parent_group_id": gid, "ip_protocol": "gre-ish", "from_port": 1, "to_port": 2}),
        json!({"parent_group_id": "not-a-uuid", "ip_protocol": "tcp", "from_port": 1, "to_port": 2}),
        // The same rule again.
        json!({"parent_group_id": gid, "ip_protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8"}),
    ] {
        nova_fault(&rule(bad), 400, "badRequest");
    }
    nova_fault(
        &rule(
            json!({"parent_group_id": "7c9b1e7e-0b0a-4a45-9d50-0d1f1f2f3f4f",
                     "ip_protocol": "tcp", "from_port": 1, "to_port": 2}),
        ),
        404,
        "itemNotFound",
    );
    let shown = nova.get(&format!("/os-security-groups/{gid}"), &tok);
    assert_eq!(shown.status, 200);
    assert_eq!(
        shown.body["security_group"]["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let neutron = c.nn.get(&format!("/security-groups/{gid}"), &tok).body;
    assert!(
        neutron["security_group"]["security_group_rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == rid.as_str() && r["port_range_min"] == 22)
    );
    let listed = nova.get("/os-security-groups", &tok).body;
    assert!(
        listed["security_groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == gid.as_str())
    );
    // Gone from 2.36, as in Nova.
    let r = nova.raw(
        "GET",
        "/os-security-groups",
        Some(&tok),
        &[("OpenStack-API-Version", "compute 2.36")],
        None,
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        nova.delete(&format!("/os-security-group-rules/{rid}"), &tok)
            .status,
        202
    );
    assert_eq!(
        nova.delete(&format!("/os-security-groups/{gid}"), &tok)
            .status,
        202
    );
    assert_eq!(
        c.nn.get(&format!("/security-groups/{gid}"), &tok).status,
        404
    );

    // Floating IPs from a pool (an external network, by name).
    let public = c.network(&c.admin, json!({"name": "public", "router:external": true}));
    c.nn.create(
        &c.admin,
        "/subnets",
        "subnet",
        json!({"network_id": public["id"], "cidr": "172.24.4.0/24", "ip_version": 4, "enable_dhcp": false}),
    );
    let pools = nova.get("/os-floating-ip-pools", &tok).body;
    assert_eq!(pools["floating_ip_pools"], json!([{"name": "public"}]));
    let r = nova.post("/os-floating-ips", &tok, json!({"pool": "public"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let f = r.body["floating_ip"].clone();
    let fid = f["id"].as_str().unwrap().to_string();
    assert!(f["ip"].as_str().unwrap().starts_with("172.24.4."), "{f}");
    assert_eq!(f["pool"], "public");
    assert_eq!(f["instance_id"], Value::Null);
    assert_eq!(f["fixed_ip"], Value::Null);
    nova_fault(
        &nova.post("/os-floating-ips", &tok, json!({"pool": "nope"})),
        404,
        "itemNotFound",
    );
    let listed = nova.get("/os-floating-ips", &tok).body;
    assert_eq!(ids(&listed, "floating_ips"), vec![fid.clone()]);
    assert_eq!(
        c.nn.get(&format!("/floatingips/{fid}"), &tok).body["floatingip"]["floating_ip_address"],
        f["ip"]
    );
    assert_eq!(
        nova.delete(&format!("/os-floating-ips/{fid}"), &tok).status,
        202
    );
    nova_fault(
        &nova.get(&format!("/os-floating-ips/{fid}"), &tok),
        404,
        "itemNotFound",
    );

    // Networks the caller sees, by label; another project's are not found.
    let mine = c.network(&tok, json!({"name": "mine"}));
    let (_, other_tok) = c.project("proxy-other", "member");
    let theirs = c.network(&other_tok, json!({"name": "theirs"}));
    let labels: Vec<String> = nova.get("/os-tenant-networks", &tok).body["networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["label"].as_str().unwrap().to_string())
        .collect();
    assert!(labels.contains(&"mine".to_string()), "{labels:?}");
    assert!(labels.contains(&"public".to_string()), "{labels:?}");
    assert!(!labels.contains(&"theirs".to_string()), "{labels:?}");
    let shown = nova.get(
        &format!("/os-networks/{}", mine["id"].as_str().unwrap()),
        &tok,
    );
    assert_eq!(shown.body["network"]["label"], "mine", "{}", shown.body);
    nova_fault(
        &nova.get(
            &format!("/os-tenant-networks/{}", theirs["id"].as_str().unwrap()),
            &tok,
        ),
        404,
        "itemNotFound",
    );
}

#[test]
fn network_server_ips_password_and_request_id() {
    let c = super::compute::Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("ips");
    let nn = c.server.client_at("/network/v2.0");
    let net = nn.create(&tok, "/networks", "network", json!({"name": "ipsnet"}));
    let nid = net["id"].as_str().unwrap();
    nn.create(
        &tok,
        "/subnets",
        "subnet",
        json!({"network_id": nid, "cidr": "10.30.0.0/24", "ip_version": 4}),
    );
    let img = c.image(&tok, "tiny");
    let r = c.boot(
        &tok,
        "with-ip",
        &img,
        "1",
        json!({"networks": [{"uuid": nid, "fixed_ip": "10.30.0.50"}]}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &sid, "ACTIVE");

    let r = c.req("GET", &format!("/servers/{sid}/ips"), &tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"addresses": {"ipsnet": [{"version": 4, "addr": "10.30.0.50"}]}})
    );
    let r = c.req("GET", &format!("/servers/{sid}/ips/ipsnet"), &tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"ipsnet": [{"version": 4, "addr": "10.30.0.50"}]})
    );
    let r = c.req("GET", &format!("/servers/{sid}/ips/elsewhere"), &tok, None);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["itemNotFound"]["code"], 404);
    let (_, other) = c.project("ips-other");
    let r = c.req("GET", &format!("/servers/{sid}/ips"), &other, None);
    assert_eq!(r.status, 404, "{}", r.body);

    // Nova's own request id header comes with the common one.
    let r = c.req("GET", &format!("/servers/{sid}"), &tok, None);
    let id = r.header("x-openstack-request-id").unwrap().to_string();
    assert_eq!(r.header("x-compute-request-id"), Some(id.as_str()));
    // No guest posted a password: it is empty, and clearing it is fine.
    let r = c.req(
        "GET",
        &format!("/servers/{sid}/os-server-password"),
        &tok,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"password": ""}));
    let r = c.req(
        "DELETE",
        &format!("/servers/{sid}/os-server-password"),
        &tok,
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = c.req(
        "GET",
        &format!("/servers/{sid}/os-server-password"),
        &other,
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // The node agents as the network service's agents: admins see the
    // node, alive; anyone else an empty list (`openstack network agent
    // list` used to get a 404).
    let r = nn.get("/agents", &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let agents = r.body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{}", r.body);
    assert_eq!(agents[0]["alive"], true);
    assert_eq!(agents[0]["admin_state_up"], true);
    assert!(agents[0]["host"].as_str().is_some_and(|h| !h.is_empty()));
    let aid = agents[0]["id"].as_str().unwrap();
    let r = nn.get(&format!("/agents/{aid}"), &c.admin);
    assert_eq!(r.body["agent"]["host"], agents[0]["host"]);
    assert_eq!(nn.get("/agents", &tok).body, json!({"agents": []}));
    assert_eq!(nn.get(&format!("/agents/{aid}"), &tok).status, 404);
}
