//! Resize (confirm, revert) and shelve (unshelve), with their migration
//! records, placement claims, images and quota usage, on fake nodes (the
//! API and the agent protocol; `compute_real` does both to a real
//! container).

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

/// The resources the server holds on its one provider.
fn claim(c: &Cloud, id: &str) -> Value {
    let a = allocations(c, id);
    let allocs = a.as_object().unwrap();
    assert_eq!(allocs.len(), 1, "{a}");
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

fn images_named(c: &Cloud, tok: &str, name: &str) -> Vec<Value> {
    let r = c.img.get(&format!("/images?name={name}"), tok);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["images"].as_array().unwrap().clone()
}

fn allocations(c: &Cloud, id: &str) -> Value {
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
    r.body["allocations"].clone()
}

#[test]
fn compute_shelve_offloads_and_unshelve_boots_the_shelved_image() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("shl");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "keep", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    let action = |body: Value| c.req("POST", &format!("/servers/{id}/action"), &tok, Some(body));

    assert_eq!(action(json!({"unshelve": null})).status, 409);
    let r = action(json!({"shelve": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "SHELVED_OFFLOADED");
    assert_eq!(s["OS-EXT-STS:power_state"], 0, "{s}");
    let admin_view = c.req("GET", &format!("/servers/{id}"), &c.admin, None);
    assert!(
        admin_view.body["server"]["OS-EXT-SRV-ATTR:host"].is_null(),
        "{}",
        admin_view.body
    );
    // It holds nothing on any node, but still counts against the quota.
    assert_eq!(allocations(&c, &id), json!({}));
    assert_eq!(usage(&c, &tok), (1, 128));
    let shelved = images_named(&c, &tok, "keep-shelved");
    assert_eq!(shelved.len(), 1, "{shelved:?}");
    assert_eq!(shelved[0]["status"], "active");
    assert_eq!(shelved[0]["instance_uuid"], id.as_str());
    // Already offloaded; other actions wait for the unshelve.
    assert_eq!(action(json!({"shelveOffload": null})).status, 409);
    assert_eq!(action(json!({"os-start": null})).status, 409);
    assert_eq!(action(json!({"shelve": null})).status, 409);

    // Unshelve: scheduled again, ACTIVE, and the shelved image is gone.
    let r = action(json!({"unshelve": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(s["image"]["id"], img.as_str(), "the server keeps its image");
    assert!(images_named(&c, &tok, "keep-shelved").is_empty());
    assert_eq!(
        allocations(&c, &id).as_object().unwrap().len(),
        1,
        "claimed again"
    );
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
    assert!(
        names.contains(&"shelve") && names.contains(&"unshelve"),
        "{names:?}"
    );

    // Deleting a shelved server deletes its shelved image too.
    assert_eq!(action(json!({"shelve": null})).status, 202);
    c.wait(&tok, &id, "SHELVED_OFFLOADED");
    assert_eq!(images_named(&c, &tok, "keep-shelved").len(), 1);
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &tok, None)
            .status,
        204
    );
    c.wait_gone(&tok, &id);
    assert!(images_named(&c, &tok, "keep-shelved").is_empty());
    assert_eq!(usage(&c, &tok), (0, 0));
}

/// A second node: a `stratus agent` process (fake driver) named `n2`,
/// heartbeating every second.
fn second_node(c: &Cloud) -> super::common::Agent {
    let node =
        super::common::Agent::start(&c.server, "n2", &["--driver", "fake", "--heartbeat", "1"]);
    c.wait_nodes_logged(2, &node.log);
    node
}

fn host_of(c: &Cloud, id: &str) -> String {
    let r = c.req("GET", &format!("/servers/{id}"), &c.admin, None);
    r.body["server"]["OS-EXT-SRV-ATTR:host"]
        .as_str()
        .unwrap_or_else(|| panic!("no host: {}", r.body))
        .to_string()
}

#[test]
fn compute_cold_migration_moves_confirms_and_reverts() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "n1"]);
    let _n2 = second_node(&c);
    let (_, tok) = c.project("mig");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "m1", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    let first = host_of(&c, &id);
    let other = if first == "n1" { "n2" } else { "n1" };
    let admin_act = |body: Value, mv: &str| {
        c.nova.raw(
            "POST",
            &format!("/servers/{id}/action"),
            Some(&c.admin),
            &[("OpenStack-API-Version", mv)],
            Some(body.to_string()),
        )
    };

    // Only admins migrate; bad bodies and impossible hosts are 400s.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"migrate": null})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    for (body, mv) in [
        (json!({"migrate": "n1"}), "compute 2.56"),
        (json!({"migrate": {"host": "nowhere"}}), "compute 2.56"),
        (json!({"migrate": {"host": first}}), "compute 2.56"),
        (json!({"migrate": {"bogus": 1}}), "compute 2.56"),
    ] {
        let r = admin_act(body.clone(), mv);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
    }
    assert_eq!(host_of(&c, &id), first);

    // Migrate and revert: back where it was, ACTIVE.
    let r = admin_act(json!({"migrate": null}), "compute 2.38");
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "VERIFY_RESIZE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(host_of(&c, &id), other);
    // The transfer image is gone once the destination booted it.
    let r = c.img.get("/images?name=m1-migration", &c.admin);
    assert!(
        r.body["images"].as_array().unwrap().is_empty(),
        "{}",
        r.body
    );
    let m = migrations(&c, &id);
    assert_eq!(m[0]["migration_type"], "migration");
    assert_eq!(m[0]["source_compute"], first.as_str());
    assert_eq!(m[0]["dest_compute"], other);
    assert_eq!(m[0]["status"], "finished");
    // Both nodes hold a claim until it is settled.
    let uuid = m[0]["uuid"].as_str().unwrap();
    let held = allocations(&c, uuid);
    assert_eq!(held.as_object().unwrap().len(), 1, "{held}");
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 128);

    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"revertResize": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(host_of(&c, &id), first);
    assert_eq!(migrations(&c, &id)[0]["status"], "reverted");
    assert_eq!(allocations(&c, uuid), json!({}));
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 128);

    // Migrate a stopped server to a named host and confirm: it stays
    // SHUTOFF on the new node.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 202);
    c.wait(&tok, &id, "SHUTOFF");
    let r = admin_act(json!({"migrate": {"host": other}}), "compute 2.56");
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"confirmResize": null})),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let s = c.wait(&tok, &id, "SHUTOFF");
    assert_eq!(s["OS-EXT-STS:power_state"], 4, "{s}");
    assert_eq!(host_of(&c, &id), other);
    let m = migrations(&c, &id);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["status"], "confirmed");
    let uuid = m[0]["uuid"].as_str().unwrap();
    assert_eq!(
        allocations(&c, uuid),
        json!({}),
        "the source claim is released"
    );
    // Starts where it now lives.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"os-start": null})),
    );
    assert_eq!(r.status, 202);
    c.wait(&tok, &id, "ACTIVE");

    // Deleted while waiting for confirmation: both claims go.
    let r = admin_act(json!({"migrate": null}), "compute 2.38");
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let uuid = migrations(&c, &id)[0]["uuid"].as_str().unwrap().to_string();
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &tok, None)
            .status,
        204
    );
    c.wait_gone(&tok, &id);
    for consumer in [uuid.as_str(), id.as_str()] {
        assert_eq!(allocations(&c, consumer), json!({}), "{consumer}");
    }
}

#[test]
fn compute_resize_status_filters_and_reset_state() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("rst");
    let img = c.image(&tok, "tiny");
    let mut ids = vec![];
    for n in ["x1", "x2"] {
        let r = c.boot(&tok, n, &img, "42", json!({}));
        ids.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        c.wait(&tok, id, "ACTIVE");
    }
    let id = ids[0].clone();
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"resize": {"flavorRef": "84"}})),
    );
    assert_eq!(r.status, 202);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let count = |q: &str| {
        c.req("GET", &format!("/servers?{q}"), &tok, None).body["servers"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count("status=VERIFY_RESIZE"), 1);
    assert_eq!(count("status=RESIZE"), 0, "nothing is resizing now");
    assert_eq!(count("status=ACTIVE"), 1);
    assert_eq!(usage(&c, &tok), (2, 128 + 192));

    // An admin resets the server: the resize ends where it stands (the
    // new flavor it shows), the migration in error.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"os-resetState": {"state": "active"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&tok, &id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], "84");
    assert_eq!(migrations(&c, &id)[0]["status"], "error");
    assert_eq!(claim(&c, &id)["MEMORY_MB"], 192);
    assert_eq!(usage(&c, &tok), (2, 128 + 192));
    // Nothing left to confirm; it can be resized again.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"confirmResize": null})),
    );
    assert_eq!(r.status, 409);
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"resize": {"flavorRef": "42"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, &id, "VERIFY_RESIZE");
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"confirmResize": null})),
    );
    assert_eq!(r.status, 204);
    c.wait(&tok, &id, "ACTIVE");
    assert_eq!(usage(&c, &tok), (2, 256));
}
