//! Compute usage across a site's link while servers resize there: after
//! deletes at either end, each controller's usage is exactly what its
//! remaining servers use, whatever step of a resize the delete lands in.

use serde_json::{Value, json};

use super::common::Client;
use super::compute::MV;
use super::sites::{
    Site, create_site, eventually, has_flavor, root_behind_link, site_state, status_at,
    wait_site_node,
};

/// (instances, cores, ram) a project uses, as `/limits` at `base` says.
fn used(base: &str, token: &str) -> (i64, i64, i64) {
    let r = Client {
        base: format!("{base}/compute/v2.1"),
    }
    .get("/limits", token);
    assert_eq!(r.status, 200, "{}", r.body);
    let a = &r.body["limits"]["absolute"];
    let n = |k: &str| a[k].as_i64().unwrap_or_else(|| panic!("{k}: {a}"));
    (
        n("totalInstancesUsed"),
        n("totalCoresUsed"),
        n("totalRAMUsed"),
    )
}

/// (1, vcpus, ram) of a flavor: what one server of it uses.
fn one_of(f: &Value) -> (i64, i64, i64) {
    (1, f["vcpus"].as_i64().unwrap(), f["ram"].as_i64().unwrap())
}

/// A server made at a cut-off site and resized there is adopted by the
/// root mid-resize (VERIFY_RESIZE). The root then reverts it (the site
/// carries that out) and deletes it. The root counted the flavor the
/// site shows; the delete used to release the new flavor of the resize
/// job the adopted copy still carried, so the root's usage went below
/// what its remaining servers use.
#[test]
fn sites_quota_a_server_adopted_mid_resize_reverted_and_deleted_leaves_exact_usage() {
    let (c, link) = root_behind_link();
    let (site_id, token) = create_site(&c, "edge-rq");
    let site = Site::start(&link.url(), &token);
    wait_site_node(&site, &c.admin);
    let r = c.nova.post(
        "/flavors",
        &c.admin,
        json!({"flavor": {"name": "rq-bigger", "ram": 256, "vcpus": 2, "disk": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let big = r.body["flavor"].clone();
    let bigger = big["id"].as_str().unwrap().to_string();
    let small = c.nova.get("/flavors/42", &c.admin).body["flavor"].clone();
    let (_, tok) = c.project("edge-rq-tenant");
    let img = c.image(&tok, "tiny");
    eventually(30, "the flavor and the image reach the site", || {
        has_flavor(&site, &c.admin, "rq-bigger")
            && site
                .at("/image/v2")
                .get(&format!("/images/{img}"), &tok)
                .body["status"]
                == "active"
    });
    // One server made at the root stays throughout.
    let r = c.nova.post(
        "/servers",
        &tok,
        json!({"server": {"name": "keep", "imageRef": img, "flavorRef": "42",
                          "availability_zone": "edge-rq", "networks": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let keep = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(60, "the kept server is ACTIVE at the root", || {
        status_at(&c.server.url, &tok, &keep).is_some_and(|s| s["status"] == "ACTIVE")
    });
    let kept = one_of(&small);

    // Cut off, the site makes a server and resizes it.
    link.cut();
    eventually(20, "the root sees the site unreachable", || {
        site_state(&c, &site_id)["state"] == "unreachable"
    });
    let nova_site = site.at("/compute/v2.1");
    let r = nova_site.raw(
        "POST",
        "/servers",
        Some(&tok),
        &[MV],
        Some(
            json!({"server": {"name": "local", "imageRef": img, "flavorRef": "42",
                              "networks": "none"}})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let local = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(60, "the local server is ACTIVE at the site", || {
        status_at(&site.url, &tok, &local).is_some_and(|s| s["status"] == "ACTIVE")
    });
    let r = nova_site.raw(
        "POST",
        &format!("/servers/{local}/action"),
        Some(&tok),
        &[MV],
        Some(json!({"resize": {"flavorRef": bigger}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(30, "VERIFY_RESIZE at the site", || {
        status_at(&site.url, &tok, &local).is_some_and(|s| s["status"] == "VERIFY_RESIZE")
    });
    let plus = |a: (i64, i64, i64), b: (i64, i64, i64)| (a.0 + b.0, a.1 + b.1, a.2 + b.2);
    assert_eq!(used(&site.url, &tok), plus(kept, one_of(&big)));

    // The link returns: the root adopts it mid-resize and counts the new
    // flavor, as the site does.
    link.mend();
    eventually(60, "the root adopts the server in VERIFY_RESIZE", || {
        status_at(&c.server.url, &tok, &local)
            .is_some_and(|s| s["status"] == "VERIFY_RESIZE" && s["flavor"]["id"] == bigger.as_str())
    });
    assert_eq!(used(&c.server.url, &tok), plus(kept, one_of(&big)));

    // Reverted from the root: both ends count the old flavor again.
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{local}/action"),
        Some(&tok),
        &[MV],
        Some(json!({"revertResize": null}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(60, "ACTIVE with the old flavor at both ends", || {
        [&c.server.url, &site.url].iter().all(|b| {
            status_at(b, &tok, &local)
                .is_some_and(|s| s["status"] == "ACTIVE" && s["flavor"]["id"] == "42")
        })
    });
    assert_eq!(used(&c.server.url, &tok), plus(kept, one_of(&small)));
    assert_eq!(used(&site.url, &tok), plus(kept, one_of(&small)));

    // Deleted at the root; the delete reaches the site.
    let r = c.nova.raw(
        "DELETE",
        &format!("/servers/{local}"),
        Some(&tok),
        &[MV],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(60, "the server is gone at both ends", || {
        status_at(&c.server.url, &tok, &local).is_none()
            && status_at(&site.url, &tok, &local).is_none()
    });
    assert_eq!(used(&c.server.url, &tok), kept, "usage at the root");
    assert_eq!(used(&site.url, &tok), kept, "usage at the site");
}
