//! Resize, confirm and revert, with their migration records, placement
//! claims and quota usage, on fake nodes (the API and the agent protocol;
//! `compute_real` resizes a real container).

use serde_json::{Value, json};

use super::compute::Cloud;

fn usage(c: &Cloud, tok: &str) -> (i64, i64) {
    let r = c.req("GET", "/limits", tok, None);
    let a = &r.body["limits"]["absolute"];
    (
        a["totalCoresUsed"].as_i64().unwrap(),
        a["totalRAMUsed"].as_i64().unwrap(),
    )
}

fn claim(c: &Cloud, id: &str) -> Value {
    let pl = super::common::Client {
        base: format!("{}/placement", c.server.url),
    };
    let r = pl.raw(
        "GET",
        &format!("/allocations/{id}"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "placement 1.28")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let allocs = r.body["allocations"].as_object().unwrap();
    assert_eq!(allocs.len(), 1, "{}", r.body);
    allocs.values().next().unwrap()["resources"].clone()
}

fn migrations(c: &Cloud, id: &str) -> Vec<Value> {
    let r = c.nova.raw(
        "GET",
        &format!("/os-migrations?instance_uuid={id}"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.59")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["migrations"].as_array().unwrap().clone()
}

#[test]
fn compute_resize_confirm_and_revert() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("rsz");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "r1", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    assert_eq!(usage(&c, &tok), (1, 128));
    let action = |body: Value| c.req("POST", &format!("/servers/{id}/action"), &tok, Some(body));

    // Bad requests are 400s and change nothing.
    for bad in [
        json!({"resize": {}}),
        json!({"resize": {"flavorRef": "nope"}}),
        json!({"resize": {"flavorRef": "42"}}),
        json!({"resize": {"flavorRef": "84", "bogus": 1}}),
        json!({"resize": "84"}),
    ] {
        let r = action(bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body["badRequest"]["message"].is_string(), "{}", r.body);
    }
    // Nothing to confirm or revert yet.
    assert_eq!(action(json!({"confirmResize": null})).status, 409);
    assert_eq!(action(json!({"revertResize": null})).status, 409);

    // Resize to m1.micro: VERIFY_RESIZE with the new flavor.
    let r = action(json!({"resize": {"flavorRef": "84"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "VERIFY_RESIZE");
    assert_eq!(s["flavor"]["id"], "84", "{s}");
    assert_eq!(usage(&c, &tok), (1, 192));
    // Waiting for confirmation, it holds the larger of both flavors.
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 192);
    let m = migrations(&c, &id);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["status"], "finished");
    assert_eq!(m[0]["migration_type"], "resize");
    assert_eq!(m[0]["old_instance_type_id"], 42);
    assert_eq!(m[0]["new_instance_type_id"], 84);
    assert!(m[0]["uuid"].is_string());
    // Members cannot list migrations.
    let r = c.req("GET", "/os-migrations", &tok, None);
    assert_eq!(r.status, 403);
    // Another resize must wait for the confirmation.
    assert_eq!(action(json!({"resize": {"flavorRef": "1"}})).status, 409);

    // Revert: back to m1.nano, ACTIVE.
    let r = action(json!({"revertResize": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], "42", "{s}");
    assert_eq!(usage(&c, &tok), (1, 128));
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 128);
    assert_eq!(migrations(&c, &id)[0]["status"], "reverted");

    // Stop it, resize to m1.tiny and confirm: it stays SHUTOFF.
    assert_eq!(action(json!({"os-stop": null})).status, 202);
    c.wait(&tok, &id, "SHUTOFF");
    let r = action(json!({"resize": {"flavorRef": "1"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let r = action(json!({"confirmResize": null}));
    assert_eq!(r.status, 204, "{}", r.body);
    let s = c.wait(&tok, &id, "SHUTOFF");
    assert_eq!(s["flavor"]["id"], "1");
    assert_eq!(usage(&c, &tok), (1, 512));
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 512);
    let m = migrations(&c, &id);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["status"], "confirmed", "newest first: {m:?}");

    // Instance actions record each step.
    let r = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &tok,
        None,
    );
    let names: Vec<&str> = r.body["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for want in ["resize", "revertResize", "confirmResize"] {
        assert!(names.contains(&want), "{names:?}");
    }

    // Over quota: the project may have 1 core; m1.medium needs 2.
    let pid = c.req("GET", &format!("/servers/{id}"), &tok, None).body["server"]["tenant_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"cores": 1}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = action(json!({"resize": {"flavorRef": "3"}}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body["forbidden"]["message"]
            .as_str()
            .unwrap()
            .contains("Quota exceeded for cores"),
        "{}",
        r.body
    );
    assert_eq!(
        c.req("GET", &format!("/servers/{id}"), &tok, None).body["server"]["status"],
        "SHUTOFF"
    );

    // Deleting a server waiting for confirmation releases everything.
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"cores": 20}})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(action(json!({"resize": {"flavorRef": "2"}})).status, 202);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &tok, None)
            .status,
        204
    );
    c.wait_gone(&tok, &id);
    assert_eq!(usage(&c, &tok), (0, 0));
}
