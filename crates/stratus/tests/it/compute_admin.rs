//! Nova APIs that clients and Tempest still use at low microversions: the
//! image proxy (`/images`), `os-hosts`, `os-simple-tenant-usage`, the
//! usage audit log, external events, extensions, admin state reset, the
//! legacy `/v2` endpoint and the `name` regex filter.

use serde_json::json;

use super::compute::Cloud;

fn at(
    c: &Cloud,
    mv: &str,
    method: &str,
    path: &str,
    tok: &str,
    body: Option<serde_json::Value>,
) -> super::common::Resp {
    c.nova.raw(
        method,
        path,
        Some(tok),
        &[("OpenStack-API-Version", mv)],
        body.map(|b| b.to_string()),
    )
}

#[test]
fn compute_image_proxy_lists_shows_edits_and_deletes_images() {
    let c = Cloud::start(&["--driver", "fake"]);
    let (_, tok) = c.project("imgs");
    let (_, other) = c.project("others");
    let id = c.image(&tok, "proxy-me");
    let mv = "compute 2.35";
    let r = at(&c, mv, "GET", "/images", &tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<&str> = r.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"proxy-me"), "{names:?}");
    let r = at(&c, mv, "GET", &format!("/images/{id}"), &tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let img = &r.body["image"];
    assert_eq!(img["status"], "ACTIVE");
    assert_eq!(img["progress"], 100);
    assert!(img["OS-EXT-IMG-SIZE:size"].as_u64().unwrap() > 0);
    assert_eq!(img["links"][2]["rel"], "alternate");
    // Another project does not see a private image.
    assert_eq!(
        at(&c, mv, "GET", &format!("/images/{id}"), &other, None).status,
        404
    );
    // Filters: by name and status.
    let r = at(
        &c,
        mv,
        "GET",
        "/images/detail?name=proxy-me&status=ACTIVE",
        &tok,
        None,
    );
    assert_eq!(r.body["images"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = at(&c, mv, "GET", "/images/detail?status=SAVING", &tok, None);
    assert!(
        r.body["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["id"] != json!(id))
    );
    // Metadata is the image's custom properties, seen by the image API.
    let r = at(
        &c,
        mv,
        "POST",
        &format!("/images/{id}/metadata"),
        &tok,
        Some(json!({"metadata": {"os_distro": "busybox"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["metadata"]["os_distro"], "busybox");
    let glance = c.img.get(&format!("/images/{id}"), &tok);
    assert_eq!(glance.body["os_distro"], "busybox");
    let r = at(
        &c,
        mv,
        "PUT",
        &format!("/images/{id}/metadata/arch"),
        &tok,
        Some(json!({"meta": {"arch": "x86_64"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = at(
        &c,
        mv,
        "PUT",
        &format!("/images/{id}/metadata/arch"),
        &tok,
        Some(json!({"meta": {"other": "x"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &c,
        mv,
        "GET",
        &format!("/images/{id}/metadata/arch"),
        &tok,
        None,
    );
    assert_eq!(r.body["meta"]["arch"], "x86_64");
    assert_eq!(
        at(
            &c,
            mv,
            "DELETE",
            &format!("/images/{id}/metadata/arch"),
            &tok,
            None
        )
        .status,
        204
    );
    assert_eq!(
        at(
            &c,
            mv,
            "GET",
            &format!("/images/{id}/metadata/arch"),
            &tok,
            None
        )
        .status,
        404
    );
    // Someone else cannot edit it.
    assert_eq!(
        at(
            &c,
            mv,
            "POST",
            &format!("/images/{id}/metadata"),
            &other,
            Some(json!({"metadata": {"a": "b"}}))
        )
        .status,
        404
    );
    // Gone from 2.36, as in Nova.
    assert_eq!(
        at(&c, "compute 2.36", "GET", "/images", &tok, None).status,
        404
    );
    // Delete through the proxy removes it from the image service.
    assert_eq!(
        at(&c, mv, "DELETE", &format!("/images/{id}"), &tok, None).status,
        204
    );
    assert_eq!(c.img.get(&format!("/images/{id}"), &tok).status, 404);
}

#[test]
fn compute_hosts_usage_audit_log_events_and_reset_state() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "edge-1"]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("usage");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "web-instance-1", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    let mv = "compute 2.1";

    // os-hosts: the compute node and the controller's services.
    let r = at(&c, mv, "GET", "/os-hosts", &c.admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host_name"] == "edge-1" && h["service"] == "compute")
    );
    assert_eq!(
        at(&c, mv, "GET", "/os-hosts?zone=nowhere", &c.admin, None).body["hosts"],
        json!([])
    );
    assert_eq!(at(&c, mv, "GET", "/os-hosts", &tok, None).status, 403);
    let r = at(&c, mv, "GET", "/os-hosts/edge-1", &c.admin, None);
    let rows = r.body["host"].as_array().unwrap();
    assert_eq!(rows[0]["resource"]["project"], "(total)");
    assert_eq!(rows[1]["resource"]["project"], "(used_now)");
    assert_eq!(
        rows[1]["resource"]["memory_mb"], 512,
        "m1.tiny is placed there: {}",
        r.body
    );
    assert!(rows.iter().any(|x| x["resource"]["project"] == json!(pid)));
    assert_eq!(
        at(&c, mv, "GET", "/os-hosts/nope", &c.admin, None).status,
        404
    );
    let r = at(
        &c,
        mv,
        "PUT",
        "/os-hosts/edge-1",
        &c.admin,
        Some(json!({"status": "bogus"})),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        at(&c, mv, "PUT", "/os-hosts/edge-1", &c.admin, Some(json!({}))).status,
        400
    );
    let r = at(
        &c,
        mv,
        "PUT",
        "/os-hosts/edge-1",
        &c.admin,
        Some(json!({"status": "disable"})),
    );
    assert_eq!(r.body["status"], "disabled", "{}", r.body);
    let svc = at(
        &c,
        mv,
        "GET",
        "/os-services?binary=nova-compute",
        &c.admin,
        None,
    );
    assert_eq!(svc.body["services"][0]["status"], "disabled");
    at(
        &c,
        mv,
        "PUT",
        "/os-hosts/edge-1",
        &c.admin,
        Some(json!({"status": "enable"})),
    );
    assert_eq!(
        at(&c, mv, "GET", "/os-hosts/edge-1/reboot", &c.admin, None).status,
        501
    );
    assert_eq!(
        at(&c, mv, "GET", "/os-hosts/nope/reboot", &c.admin, None).status,
        404
    );
    assert_eq!(at(&c, mv, "GET", "/os-hosts", &c.admin, None).status, 200);
    assert_eq!(
        at(&c, "compute 2.43", "GET", "/os-hosts", &c.admin, None).status,
        404,
        "os-hosts leaves at 2.43"
    );

    // Usage: the running server counts for its project.
    let start = "2000-01-01T00:00:00";
    let r = at(
        &c,
        mv,
        "GET",
        &format!("/os-simple-tenant-usage?start={start}&detailed=1"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.body["tenant_usages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["tenant_id"] == json!(pid))
        .cloned()
        .expect("usage for the project");
    assert_eq!(u["server_usages"][0]["instance_id"], json!(id));
    assert!(u["total_hours"].as_f64().unwrap() > 0.0);
    let r = at(
        &c,
        mv,
        "GET",
        &format!("/os-simple-tenant-usage/{pid}?start={start}"),
        &tok,
        None,
    );
    assert_eq!(
        r.body["tenant_usage"]["server_usages"][0]["flavor"], "m1.tiny",
        "{}",
        r.body
    );
    assert_eq!(
        at(&c, mv, "GET", "/os-simple-tenant-usage", &tok, None).status,
        403
    );
    assert_eq!(
        at(
            &c,
            mv,
            "GET",
            "/os-simple-tenant-usage?start=yesterday",
            &c.admin,
            None
        )
        .status,
        400
    );
    assert_eq!(
        at(
            &c,
            mv,
            "GET",
            "/os-simple-tenant-usage?start=2030-01-01T00:00:00&end=2029-01-01T00:00:00",
            &c.admin,
            None
        )
        .status,
        400
    );

    // 2.40 pages usage by server: one server per page, then the next.
    let r = at(
        &c,
        "compute 2.40",
        "GET",
        &format!("/os-simple-tenant-usage?start={start}&limit=1"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["tenant_usages_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker="),
        "{}",
        r.body
    );
    // 2.47 embeds the flavor as it was at boot.
    let r = at(
        &c,
        "compute 2.47",
        "GET",
        &format!("/servers/{id}"),
        &tok,
        None,
    );
    assert_eq!(
        r.body["server"]["flavor"]["original_name"], "m1.tiny",
        "{}",
        r.body
    );
    assert_eq!(r.body["server"]["flavor"]["ram"], 512);
    assert!(r.body["server"]["flavor"].get("id").is_none());
    let r = at(
        &c,
        "compute 2.46",
        "GET",
        &format!("/servers/{id}"),
        &tok,
        None,
    );
    assert_eq!(r.body["server"]["flavor"]["id"], "1");
    // Update answers with the basic view before 2.75 (no extension keys).
    let r = at(
        &c,
        "compute 2.47",
        "PUT",
        &format!("/servers/{id}"),
        &tok,
        Some(json!({"server": {"name": "web-instance-1"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["server"].get("OS-EXT-STS:vm_state").is_none(),
        "{}",
        r.body
    );
    assert_eq!(r.body["server"]["name"], "web-instance-1");
    // 2.52: tags at create time.
    let r = c.nova.raw(
        "POST",
        "/servers",
        Some(&tok),
        &[("OpenStack-API-Version", "compute 2.52")],
        Some(json!({"server": {"name": "tagged", "imageRef": img, "flavorRef": "1", "networks": "none", "tags": ["edge", "a"]}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let tid = r.body["server"]["id"].as_str().unwrap().to_string();
    let r = at(
        &c,
        "compute 2.52",
        "GET",
        &format!("/servers/{tid}/tags"),
        &tok,
        None,
    );
    assert_eq!(r.body["tags"], json!(["edge", "a"]), "{}", r.body);
    let r = c.nova.raw(
        "POST",
        "/servers",
        Some(&tok),
        &[("OpenStack-API-Version", "compute 2.51")],
        Some(json!({"server": {"name": "tagged", "imageRef": img, "flavorRef": "1", "networks": "none", "tags": ["edge"]}}).to_string()),
    );
    assert_eq!(r.status, 400, "tags before 2.52: {}", r.body);
    // 2.50: quota classes trade the network keys for server group ones.
    let r = at(
        &c,
        "compute 2.49",
        "GET",
        "/os-quota-class-sets/default",
        &c.admin,
        None,
    );
    assert!(
        r.body["quota_class_set"].get("floating_ips").is_some(),
        "{}",
        r.body
    );
    assert!(r.body["quota_class_set"].get("server_groups").is_none());
    let r = at(
        &c,
        "compute 2.50",
        "GET",
        "/os-quota-class-sets/default",
        &c.admin,
        None,
    );
    assert!(
        r.body["quota_class_set"].get("floating_ips").is_none(),
        "{}",
        r.body
    );
    assert_eq!(r.body["quota_class_set"]["server_groups"], 10);
    // 2.53: services and hypervisors by uuid.
    let mv53 = "compute 2.53";
    let svc = at(
        &c,
        mv53,
        "GET",
        "/os-services?binary=nova-compute",
        &c.admin,
        None,
    );
    let sid = svc.body["services"][0]["id"]
        .as_str()
        .expect("uuid id")
        .to_string();
    assert!(uuid_like(&sid), "{}", svc.body);
    let r = at(
        &c,
        mv53,
        "PUT",
        &format!("/os-services/{sid}"),
        &c.admin,
        Some(json!({"status": "disabled", "disabled_reason": "maintenance"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["service"]["status"], "disabled");
    assert_eq!(r.body["service"]["disabled_reason"], "maintenance");
    assert_eq!(r.body["service"]["id"], json!(sid));
    let r = at(
        &c,
        mv53,
        "PUT",
        &format!("/os-services/{sid}"),
        &c.admin,
        Some(json!({"status": "enabled", "disabled_reason": "x"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &c,
        mv53,
        "PUT",
        &format!("/os-services/{sid}"),
        &c.admin,
        Some(json!({})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &c,
        mv53,
        "PUT",
        "/os-services/enable",
        &c.admin,
        Some(json!({"host": "edge-1", "binary": "nova-compute"})),
    );
    assert_eq!(r.status, 400, "the old actions are gone: {}", r.body);
    let r = at(
        &c,
        mv53,
        "PUT",
        &format!("/os-services/{sid}"),
        &c.admin,
        Some(json!({"status": "enabled"})),
    );
    assert_eq!(r.body["service"]["status"], "enabled", "{}", r.body);
    let h = at(
        &c,
        mv53,
        "GET",
        "/os-hypervisors?hypervisor_hostname_pattern=edge&with_servers=true",
        &c.admin,
        None,
    );
    assert_eq!(h.status, 200, "{}", h.body);
    let hid = h.body["hypervisors"][0]["id"]
        .as_str()
        .expect("uuid id")
        .to_string();
    assert!(uuid_like(&hid));
    assert!(
        !h.body["hypervisors"][0]["servers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{}",
        h.body
    );
    let r = at(
        &c,
        mv53,
        "GET",
        &format!("/os-hypervisors/{hid}"),
        &c.admin,
        None,
    );
    assert_eq!(
        r.body["hypervisor"]["service"]["id"],
        json!(sid),
        "{}",
        r.body
    );
    assert_eq!(
        at(&c, mv53, "GET", "/os-hypervisors/1", &c.admin, None).status,
        400
    );
    assert_eq!(
        at(
            &c,
            mv53,
            "GET",
            "/os-hypervisors/edge/search",
            &c.admin,
            None
        )
        .status,
        404
    );
    assert_eq!(
        at(
            &c,
            mv53,
            "GET",
            "/os-hypervisors?hypervisor_hostname_pattern=nope",
            &c.admin,
            None
        )
        .status,
        404
    );

    // 2.55: flavor descriptions, set on create and by PUT.
    let r = at(
        &c,
        "compute 2.55",
        "POST",
        "/flavors",
        &c.admin,
        Some(
            json!({"flavor": {"name": "described", "ram": 64, "vcpus": 1, "disk": 1, "description": "small"}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let fid = r.body["flavor"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["flavor"]["description"], "small");
    let r = at(
        &c,
        "compute 2.55",
        "PUT",
        &format!("/flavors/{fid}"),
        &c.admin,
        Some(json!({"flavor": {"description": "tiny"}})),
    );
    assert_eq!(r.body["flavor"]["description"], "tiny", "{}", r.body);
    assert_eq!(
        at(
            &c,
            "compute 2.54",
            "PUT",
            &format!("/flavors/{fid}"),
            &c.admin,
            Some(json!({"flavor": {"description": "x"}}))
        )
        .status,
        405
    );
    assert_eq!(at(&c, "compute 2.54", "POST", "/flavors", &c.admin, Some(json!({"flavor": {"name": "d2", "ram": 64, "vcpus": 1, "disk": 1, "description": "x"}}))).status, 400);
    assert!(
        at(
            &c,
            "compute 2.54",
            "GET",
            &format!("/flavors/{fid}"),
            &tok,
            None
        )
        .body["flavor"]
            .get("description")
            .is_none()
    );
    // 2.57: personality quotas and limits are gone.
    let l = at(&c, "compute 2.57", "GET", "/limits", &tok, None);
    assert!(
        l.body["limits"]["absolute"].get("maxPersonality").is_none(),
        "{}",
        l.body
    );
    let q = at(
        &c,
        "compute 2.57",
        "GET",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        None,
    );
    assert!(
        q.body["quota_set"].get("injected_files").is_none(),
        "{}",
        q.body
    );
    // 2.58: instance actions page by request id, with updated_at.
    let r = at(
        &c,
        "compute 2.58",
        "GET",
        &format!("/servers/{id}/os-instance-actions?limit=1"),
        &tok,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["instanceActions"].as_array().unwrap().len(), 1);
    assert!(
        r.body["instanceActions"][0]["updated_at"].is_string(),
        "{}",
        r.body
    );
    assert!(
        r.body["links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=req-"),
        "{}",
        r.body
    );
    // 2.54 / 2.57: rebuild may set the key pair and the user data.
    let rb = |mv: &str, extra: serde_json::Value| {
        let mut b = json!({"rebuild": {"imageRef": img}});
        for (k, v) in extra.as_object().unwrap() {
            b["rebuild"][k] = v.clone();
        }
        at(
            &c,
            mv,
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(b),
        )
    };
    assert_eq!(rb("compute 2.53", json!({"key_name": null})).status, 400);
    assert_eq!(
        rb("compute 2.56", json!({"user_data": "ZWNobyBoaQo="})).status,
        400
    );
    assert_eq!(rb("compute 2.57", json!({"key_name": "nope"})).status, 400);
    let r = rb(
        "compute 2.57",
        json!({"key_name": null, "user_data": "ZWNobyBoaQo="}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "ACTIVE");
    // 2.61: extra specs inside the flavor; 2.62: where each action event
    // happened; 2.63: no trusted image certificates, refused when asked.
    let r = at(&c, "compute 2.61", "GET", "/flavors/1", &tok, None);
    assert_eq!(r.body["flavor"]["extra_specs"], json!({}), "{}", r.body);
    assert!(
        at(&c, "compute 2.60", "GET", "/flavors/1", &tok, None).body["flavor"]
            .get("extra_specs")
            .is_none()
    );
    let acts = at(
        &c,
        "compute 2.62",
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &c.admin,
        None,
    );
    let req = acts.body["instanceActions"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = at(
        &c,
        "compute 2.62",
        "GET",
        &format!("/servers/{id}/os-instance-actions/{req}"),
        &c.admin,
        None,
    );
    let events = a.body["instanceAction"]["events"]
        .as_array()
        .expect("events");
    assert!(!events.is_empty(), "{}", a.body);
    assert!(
        events
            .iter()
            .all(|e| e["hostId"].is_string() && e.get("host").is_some()),
        "{}",
        a.body
    );
    let s63 = at(
        &c,
        "compute 2.63",
        "GET",
        &format!("/servers/{id}"),
        &tok,
        None,
    );
    assert!(
        s63.body["server"]["trusted_image_certificates"].is_null(),
        "{}",
        s63.body
    );
    assert!(
        s63.body["server"]
            .get("trusted_image_certificates")
            .is_some()
    );
    let r = c.nova.raw(
        "POST",
        "/servers",
        Some(&tok),
        &[("OpenStack-API-Version", "compute 2.63")],
        Some(json!({"server": {"name": "certs", "imageRef": img, "flavorRef": "1", "networks": "none", "trusted_image_certificates": ["abc"]}}).to_string()),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // 2.59: migrations take paging and nothing unknown.
    assert_eq!(
        at(
            &c,
            "compute 2.59",
            "GET",
            "/os-migrations?bogus=1",
            &c.admin,
            None
        )
        .status,
        400
    );
    assert_eq!(
        at(
            &c,
            "compute 2.59",
            "GET",
            "/os-migrations?limit=5",
            &c.admin,
            None
        )
        .body["migrations"],
        json!([])
    );

    // nova-network proxies are gone from 2.44.
    let r = at(
        &c,
        "compute 2.44",
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"addFloatingIp": {"address": "10.0.0.9"}})),
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Audit log: no audit task runs, so every host is "not run".
    let r = at(
        &c,
        mv,
        "GET",
        "/os-instance_usage_audit_log",
        &c.admin,
        None,
    );
    assert_eq!(
        r.body["instance_usage_audit_logs"]["hosts_not_run"],
        json!(["edge-1"]),
        "{}",
        r.body
    );
    assert_eq!(
        at(
            &c,
            mv,
            "GET",
            "/os-instance_usage_audit_log/invalid",
            &c.admin,
            None
        )
        .status,
        400
    );
    assert_eq!(
        at(&c, mv, "GET", "/os-instance_usage_audit_log", &tok, None).status,
        403
    );

    // External events: acknowledged for a known server, 404 for none.
    let ev = |sid: &str| json!({"events": [{"name": "network-changed", "server_uuid": sid}]});
    let r = at(
        &c,
        mv,
        "POST",
        "/os-server-external-events",
        &c.admin,
        Some(ev(&id)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["events"][0]["code"], 200);
    assert_eq!(
        at(
            &c,
            mv,
            "POST",
            "/os-server-external-events",
            &c.admin,
            Some(ev("nope"))
        )
        .status,
        404
    );
    assert_eq!(
        at(
            &c,
            mv,
            "POST",
            "/os-server-external-events",
            &tok,
            Some(ev(&id))
        )
        .status,
        403
    );

    // Admin state reset; members may not.
    let act = |tok: &str, b: serde_json::Value| {
        at(
            &c,
            mv,
            "POST",
            &format!("/servers/{id}/action"),
            tok,
            Some(b),
        )
    };
    assert_eq!(
        act(&tok, json!({"os-resetState": {"state": "error"}})).status,
        403
    );
    assert_eq!(
        act(&c.admin, json!({"os-resetState": {"state": "bogus"}})).status,
        400
    );
    assert_eq!(
        act(&c.admin, json!({"os-resetState": {"state": "error"}})).status,
        202
    );
    c.wait(&c.admin, &id, "ERROR");
    assert_eq!(
        act(&c.admin, json!({"os-resetState": {"state": "active"}})).status,
        202
    );
    c.wait(&tok, &id, "ACTIVE");
    assert_eq!(act(&tok, json!({"restore": null})).status, 409);

    // Name filter is a regular expression (Python re.search).
    let r = at(
        &c,
        mv,
        "GET",
        r"/servers?name=%5E.%2A%5C-instance%5C-%5B0-9%5D%2B%24",
        &tok,
        None,
    );
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = at(&c, mv, "GET", "/servers?name=%5Einstance", &tok, None);
    assert_eq!(r.body["servers"], json!([]));

    // Legacy v2.0 endpoint and the extension list.
    let root = super::common::Client {
        base: format!("{}/compute", c.server.url),
    };
    let v = root.raw("GET", "/", None, &[], None);
    assert_eq!(v.body["versions"][0]["id"], "v2.0", "{}", v.body);
    assert_eq!(v.body["versions"][1]["id"], "v2.1");
    let r = root.raw("GET", "/v2/flavors", Some(&tok), &[], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("openstack-api-version").is_none(),
        "v2.0 has no microversions"
    );
    let ext = at(&c, mv, "GET", "/extensions", &tok, None);
    assert!(
        ext.body["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alias"] == "os-hosts")
    );
    assert_eq!(
        at(&c, mv, "GET", "/extensions/os-nope", &tok, None).status,
        404
    );
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}
