//! Compute microversions 2.64 to 2.85, as a client asking for them sees
//! them (fake nodes).

use serde_json::{Value, json};

use super::compute::Cloud;

fn at(
    c: &Cloud,
    mv: &str,
    method: &str,
    path: &str,
    tok: &str,
    body: Option<Value>,
) -> super::common::Resp {
    c.nova.raw(
        method,
        path,
        Some(tok),
        &[("OpenStack-API-Version", &format!("compute {mv}"))],
        body.map(|b| b.to_string()),
    )
}

#[test]
fn compute_microversions_64_to_85() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "n1"]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("mv");
    let img = c.image(&tok, "tiny");

    // 2.64: policy and rules instead of policies; metadata gone.
    for bad in [
        json!({"name": "g", "policies": ["affinity"]}),
        json!({"name": "g", "policy": "affinity", "rules": {"max_server_per_host": 2}}),
        json!({"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 0}}),
        json!({"name": "g", "policy": "anti-affinity", "rules": {"other": 1}}),
        json!({"name": "g", "policy": "bogus"}),
    ] {
        let r = at(
            &c,
            "2.64",
            "POST",
            "/os-server-groups",
            &tok,
            Some(json!({"server_group": bad.clone()})),
        );
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = at(
        &c,
        "2.64",
        "POST",
        "/os-server-groups",
        &tok,
        Some(
            json!({"server_group": {"name": "two", "policy": "anti-affinity", "rules": {"max_server_per_host": "2"}}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let g = r.body["server_group"].clone();
    assert_eq!(g["policy"], "anti-affinity");
    assert_eq!(g["rules"], json!({"max_server_per_host": 2}));
    assert!(
        g.get("policies").is_none() && g.get("metadata").is_none(),
        "{g}"
    );
    let gid = g["id"].as_str().unwrap().to_string();
    let r = at(
        &c,
        "2.63",
        "GET",
        &format!("/os-server-groups/{gid}"),
        &tok,
        None,
    );
    assert_eq!(r.body["server_group"]["policies"], json!(["anti-affinity"]));

    // Two members fit on the one node, a third does not.
    let mut ids = vec![];
    for n in ["a1", "a2", "a3"] {
        let r = c.boot(&tok, n, &img, "42", json!({"hints": {"group": gid}}));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    c.wait(&tok, &ids[0], "ACTIVE");
    c.wait(&tok, &ids[1], "ACTIVE");
    let s = c.wait(&tok, &ids[2], "ERROR");
    assert!(
        s["fault"]["message"]
            .as_str()
            .unwrap()
            .contains("No valid host"),
        "{s}"
    );
    let id = ids[0].clone();

    // 2.71: show names the server's groups.
    let r = at(&c, "2.71", "GET", &format!("/servers/{id}"), &tok, None);
    assert_eq!(r.body["server"]["server_groups"], json!([gid]));
    let r = at(&c, "2.70", "GET", &format!("/servers/{id}"), &tok, None);
    assert!(r.body["server"].get("server_groups").is_none());

    // 2.73: lock with a reason; the locked filter.
    let act = |mv: &str, body: Value| {
        at(
            &c,
            mv,
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(body),
        )
    };
    assert_eq!(
        act("2.73", json!({"lock": {"locked_reason": ""}})).status,
        400
    );
    assert_eq!(act("2.73", json!({"lock": {"why": "x"}})).status, 400);
    assert_eq!(
        act("2.73", json!({"lock": {"locked_reason": "backup window"}})).status,
        202
    );
    let r = at(&c, "2.73", "GET", &format!("/servers/{id}"), &tok, None);
    assert_eq!(r.body["server"]["locked"], true);
    assert_eq!(r.body["server"]["locked_reason"], "backup window");
    let r = at(&c, "2.73", "GET", "/servers/detail?locked=true", &tok, None);
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = at(&c, "2.73", "GET", "/servers?locked=nope", &tok, None);
    assert_eq!(r.status, 400);
    assert_eq!(act("2.73", json!({"unlock": null})).status, 202);
    let r = at(&c, "2.73", "GET", &format!("/servers/{id}"), &tok, None);
    assert!(r.body["server"]["locked_reason"].is_null());

    // 2.66: changes-before; since after before is a 400.
    let r = at(
        &c,
        "2.66",
        "GET",
        "/servers?changes-before=2000-01-01T00:00:00Z",
        &tok,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["servers"].as_array().unwrap().is_empty());
    let r = at(
        &c,
        "2.66",
        "GET",
        "/servers?changes-since=2030-01-01T00:00:00Z&changes-before=2000-01-01T00:00:00Z",
        &tok,
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &c,
        "2.66",
        "GET",
        &format!("/servers/{id}/os-instance-actions?changes-before=2000-01-01T00:00:00Z"),
        &tok,
        None,
    );
    assert_eq!(r.body["instanceActions"], json!([]));

    // 2.75: unknown query parameters are 400s; update answers the full
    // view; no swap is 0.
    let r = at(&c, "2.75", "GET", "/servers?bogus=1", &tok, None);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(&c, "2.74", "GET", "/servers?bogus=1", &tok, None);
    assert_eq!(r.status, 200);
    let r = at(
        &c,
        "2.75",
        "PUT",
        &format!("/servers/{id}"),
        &tok,
        Some(json!({"server": {"name": "renamed"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["server"].get("OS-EXT-STS:vm_state").is_some(),
        "{}",
        r.body
    );
    assert_eq!(r.body["server"]["server_groups"], json!([gid]));
    let r = at(&c, "2.75", "GET", "/flavors/42", &tok, None);
    assert_eq!(r.body["flavor"]["swap"], 0);
    let r = at(&c, "2.74", "GET", "/flavors/42", &tok, None);
    assert_eq!(r.body["flavor"]["swap"], "");

    // 2.74: admins may ask for a host; members may not; it must exist.
    let boot = |tok: &str, extra: Value| {
        let mut server =
            json!({"name": "h", "imageRef": img, "flavorRef": "42", "networks": "none"});
        for (k, v) in extra.as_object().unwrap() {
            server[k] = v.clone();
        }
        at(
            &c,
            "2.74",
            "POST",
            "/servers",
            tok,
            Some(json!({"server": server})),
        )
    };
    assert_eq!(boot(&tok, json!({"host": "n1"})).status, 403);
    assert_eq!(boot(&c.admin, json!({"host": "nowhere"})).status, 400);
    assert_eq!(
        boot(&c.admin, json!({"hypervisor_hostname": "nowhere"})).status,
        400
    );
    assert_eq!(
        boot(
            &c.admin,
            json!({"host": "n1", "availability_zone": "nova:n1"})
        )
        .status,
        400
    );
    let r = boot(&c.admin, json!({"host": "n1", "hypervisor_hostname": "n1"}));
    assert_eq!(r.status, 202, "{}", r.body);
    let hid = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &hid, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "n1");

    // 2.76: power-update events need a power tag.
    let ev = |mv: &str, tag: &str| {
        at(
            &c,
            mv,
            "POST",
            "/os-server-external-events",
            &c.admin,
            Some(json!({"events": [{"name": "power-update", "server_uuid": hid, "tag": tag}]})),
        )
    };
    assert_eq!(ev("2.75", "POWER_OFF").status, 400);
    assert_eq!(ev("2.76", "SIDEWAYS").status, 400);
    let r = ev("2.76", "POWER_OFF");
    assert_eq!(r.status, 200, "{}", r.body);

    // 2.77: unshelve into a zone that exists.
    let sact = |mv: &str, body: Value| {
        at(
            &c,
            mv,
            "POST",
            &format!("/servers/{hid}/action"),
            &c.admin,
            Some(body),
        )
    };
    assert_eq!(sact("2.77", json!({"shelve": null})).status, 202);
    c.wait(&c.admin, &hid, "SHELVED_OFFLOADED");
    let r = sact(
        "2.77",
        json!({"unshelve": {"availability_zone": "atlantis"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = sact(
        "2.77",
        json!({"unshelve": {"availability_zone": "nova", "host": "n1"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = sact("2.77", json!({"unshelve": {"availability_zone": "nova"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&c.admin, &hid, "ACTIVE");
    assert_eq!(s["OS-EXT-AZ:availability_zone"], "nova");

    // 2.78: the topology of a container is no NUMA nodes.
    let r = at(
        &c,
        "2.77",
        "GET",
        &format!("/servers/{hid}/topology"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 404);
    let r = at(
        &c,
        "2.78",
        "GET",
        &format!("/servers/{hid}/topology"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, json!({"nodes": [], "pagesize_kb": null}));
    let r = at(
        &c,
        "2.78",
        "GET",
        &format!("/servers/{hid}/topology"),
        &tok,
        None,
    );
    assert_eq!(r.status, 404, "another project's server is not found");

    // 2.80: migrations name their user and project, and filter on them.
    let r = at(
        &c,
        "2.85",
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"resize": {"flavorRef": "84"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let r = at(
        &c,
        "2.80",
        "GET",
        &format!("/os-migrations?project_id={pid}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.body["migrations"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{}", r.body);
    assert_eq!(m[0]["project_id"], pid.as_str());
    assert!(m[0]["user_id"].is_string());
    let r = at(
        &c,
        "2.80",
        "GET",
        "/os-migrations?user_id=nobody",
        &c.admin,
        None,
    );
    assert_eq!(r.body["migrations"], json!([]));
    let r = at(
        &c,
        "2.79",
        "GET",
        "/os-migrations?user_id=nobody",
        &c.admin,
        None,
    );
    assert_eq!(r.status, 400, "not a 2.79 parameter");

    // 2.81: caching images ahead on an aggregate's nodes.
    let r = at(
        &c,
        "2.81",
        "POST",
        "/os-aggregates",
        &c.admin,
        Some(json!({"aggregate": {"name": "edge"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let agg = r.body["aggregate"]["id"].as_i64().unwrap();
    let r = at(
        &c,
        "2.81",
        "POST",
        &format!("/os-aggregates/{agg}/action"),
        &c.admin,
        Some(json!({"add_host": {"host": "n1"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cache = |mv: &str, tok: &str, body: Value| {
        at(
            &c,
            mv,
            "POST",
            &format!("/os-aggregates/{agg}/images"),
            tok,
            Some(body),
        )
    };
    assert_eq!(
        cache("2.80", &c.admin, json!({"cache": [{"id": img}]})).status,
        404
    );
    assert_eq!(
        cache("2.81", &tok, json!({"cache": [{"id": img}]})).status,
        403
    );
    for bad in [
        json!({"cache": []}),
        json!({"cache": [{"id": "not-a-uuid"}]}),
        json!({"cache": [{"id": img}, {"id": img}]}),
        json!({"cache": [{"id": "8a2b3c4d-0000-4000-8000-000000000000"}]}),
        json!({"cache": [{"id": img, "x": 1}]}),
    ] {
        let r = cache("2.81", &c.admin, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = cache("2.81", &c.admin, json!({"cache": [{"id": img}]}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = at(
        &c,
        "2.81",
        "POST",
        "/os-aggregates/99999/images",
        &c.admin,
        Some(json!({"cache": [{"id": img}]})),
    );
    assert_eq!(r.status, 404);

    // 2.84: a failed event says why; 2.83: members filter on states.
    let r = at(&c, "2.83", "GET", "/servers?vm_state=resized", &tok, None);
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = at(&c, "2.82", "GET", "/servers?vm_state=resized", &tok, None);
    assert!(
        r.body["servers"].as_array().unwrap().len() > 1,
        "ignored before 2.83"
    );
    let acts = at(
        &c,
        "2.84",
        "GET",
        &format!("/servers/{}/os-instance-actions", ids[2]),
        &tok,
        None,
    );
    let rid = acts.body["instanceActions"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = at(
        &c,
        "2.84",
        "GET",
        &format!("/servers/{}/os-instance-actions/{rid}", ids[2]),
        &tok,
        None,
    );
    let events = r.body["instanceAction"]["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["result"] == "Error" && e["details"].is_string()),
        "{}",
        r.body
    );

    // 2.82: accelerator events need their request in the tag.
    let r = at(
        &c,
        "2.82",
        "POST",
        "/os-server-external-events",
        &c.admin,
        Some(json!({"events": [{"name": "accelerator-request-bound", "server_uuid": id}]})),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // The version document says 2.85; 2.86 is refused.
    let r = at(&c, "2.85", "GET", "/flavors", &tok, None);
    assert_eq!(r.status, 200);
    let r = at(&c, "2.86", "GET", "/flavors", &tok, None);
    assert_eq!(r.status, 406, "{}", r.body);
}
