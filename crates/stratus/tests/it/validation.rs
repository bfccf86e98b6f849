//! Input the real services refuse is refused here too, in each service's
//! own error shape, and nothing of it is stored: quota sets for ids that
//! name no project, `null` where Keystone wants a boolean or a name, and
//! names with control (or, for Nova, non-printable) characters. Valid
//! input, unicode names among it, keeps working.

use serde_json::{Value, json};

use super::common::{Client, Resp};
use super::compute::Cloud;

/// Nova's fault shape (`{"badRequest": {"code": 400, "message"}}`); returns
/// the message.
fn nova_400(r: &Resp) -> String {
    assert_eq!(r.status, 400, "{}", r.body);
    let f = &r.body["badRequest"];
    assert_eq!(f["code"], 400, "fault body: {}", r.body);
    f["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no badRequest in {}", r.body))
        .to_string()
}

/// Keystone's error shape; returns the message.
fn keystone_400(r: &Resp) -> String {
    assert_eq!(r.status, 400, "{}", r.body);
    r.error_message().to_string()
}

/// Glance's fault shape (`{"code": "400 Bad Request", "title", "message"}`).
fn glance_400(r: &Resp) -> String {
    assert_eq!(r.status, 400, "{}", r.body);
    let code = r.body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error shape: {}", r.body));
    assert!(code.starts_with("400"), "{}", r.body);
    r.body["message"].as_str().unwrap().to_string()
}

/// Placement's error shape (`{"errors": [{"status": 400, "detail"}]}`).
fn placement_400(r: &Resp) -> String {
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.body["errors"][0];
    assert_eq!(e["status"], 400, "{}", r.body);
    e["detail"].as_str().unwrap_or_default().to_string()
}

#[test]
fn quota_sets_refuse_ids_that_name_no_project() {
    let c = Cloud::start(&["--no-agent"]);
    // Longer than any project id, within the URI limit (longer URIs get
    // 414 at the edge, checked below).
    let long = "x".repeat(4_000);
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{}", "x".repeat(10_000)),
        &c.admin,
        Some(json!({"quota_set": {"instances": 3}})),
    );
    assert_eq!(r.status, 414, "{}", r.body);
    assert_eq!(r.body["computeFault"]["code"], 414, "{}", r.body);
    // A well-formed id that names nothing yet; a domain takes it later.
    let later = "0123456789abcdef0123456789abcdef";
    for id in ["..", "*", "-1", long.as_str(), later] {
        let path = format!("/os-quota-sets/{id}");
        let r = c.req(
            "PUT",
            &path,
            &c.admin,
            Some(json!({"quota_set": {"instances": 3}})),
        );
        let m = nova_400(&r);
        assert!(m.contains("is not a valid project"), "PUT {id:.20}: {m}");
        for read in [
            path.clone(),
            format!("{path}/detail"),
            format!("{path}/defaults"),
        ] {
            let r = c.req("GET", &read, &c.admin, None);
            let m = nova_400(&r);
            assert!(m.contains("is not a valid project"), "GET {read:.40}: {m}");
        }
        // Nova does not check the project on DELETE: there is nothing to
        // remove, and it answers 202.
        let r = c.req("DELETE", &path, &c.admin, None);
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Nothing was stored under the refused id: once a domain (which
    // Keystone also shows as a project) takes it, its quotas are defaults.
    c.ks.create(
        &c.admin,
        "/domains",
        "domain",
        json!({"name": "late", "explicit_domain_id": later}),
    );
    let r = c.req("GET", &format!("/os-quota-sets/{later}"), &c.admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quota_set"]["instances"], 10, "{}", r.body);

    // A real project still takes, shows and resets its quotas.
    let (pid, tok) = c.project("quota-real");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 7}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quota_set"]["instances"], 7);
    for who in [&c.admin, &tok] {
        let r = c.req("GET", &format!("/os-quota-sets/{pid}"), who, None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["quota_set"]["instances"], 7);
    }
    let r = c.req("GET", &format!("/os-quota-sets/{pid}/detail"), &tok, None);
    assert_eq!(r.body["quota_set"]["instances"]["limit"], 7, "{}", r.body);
    let r = c.req("DELETE", &format!("/os-quota-sets/{pid}"), &c.admin, None);
    assert_eq!(r.status, 202, "{}", r.body);
    let r = c.req("GET", &format!("/os-quota-sets/{pid}"), &c.admin, None);
    assert_eq!(r.body["quota_set"]["instances"], 10);

    // Flavor access is granted only to a project that exists (Nova checks
    // it too); taking access away from one that is gone still works.
    let r = c.req(
        "POST",
        "/flavors",
        &c.admin,
        Some(
            json!({"flavor": {"name": "private-one", "ram": 64, "vcpus": 1, "disk": 1,
            "os-flavor-access:is_public": false}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let fid = r.body["flavor"]["id"].as_str().unwrap().to_string();
    let action = |body: Value| {
        c.req(
            "POST",
            &format!("/flavors/{fid}/action"),
            &c.admin,
            Some(body),
        )
    };
    let r = action(json!({"addTenantAccess": {"tenant": "no-such-project"}}));
    assert!(nova_400(&r).contains("is not a valid project"));
    let r = action(json!({"addTenantAccess": {"tenant": pid}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["flavor_access"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    let r = action(json!({"removeTenantAccess": {"tenant": "no-such-project"}}));
    assert_eq!(r.status, 404, "{}", r.body);

    // A quota class name is at most 255 characters.
    let r = c.req(
        "PUT",
        &format!("/os-quota-class-sets/{}", "c".repeat(256)),
        &c.admin,
        Some(json!({"quota_class_set": {"instances": 3}})),
    );
    assert!(nova_400(&r).contains("255"));
    let r = c.req(
        "PUT",
        &format!("/os-quota-class-sets/{}", "c".repeat(255)),
        &c.admin,
        Some(json!({"quota_class_set": {"instances": 3}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Names of every `kind` (`projects`, `users` ...) the admin can list.
fn names(ks: &Client, admin: &str, kind: &str) -> Vec<String> {
    let r = ks.get(&format!("/{kind}"), admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn identity_refuses_null_booleans_bad_ids_and_control_characters() {
    let c = Cloud::start(&["--no-agent"]);
    let (ks, admin) = (&c.ks, c.admin.as_str());

    // `enabled: null` on create: 400, nothing made.
    for (kind, key) in [
        ("projects", "project"),
        ("users", "user"),
        ("domains", "domain"),
    ] {
        let r = ks.post(
            &format!("/{kind}"),
            admin,
            json!({ key: {"name": format!("null-{key}"), "enabled": null} }),
        );
        let m = keystone_400(&r);
        assert!(m.contains("enabled"), "{kind}: {m}");
        assert!(
            !names(ks, admin, kind).contains(&format!("null-{key}")),
            "{kind}: a refused create was stored"
        );
    }

    // `enabled: null` (and `name: null`) on update: 400, the record as it was.
    let p = ks.create(
        admin,
        "/projects",
        "project",
        json!({"name": "off-project", "enabled": false}),
    );
    let u = ks.create(
        admin,
        "/users",
        "user",
        json!({"name": "off-user", "enabled": false}),
    );
    let d = ks.create(
        admin,
        "/domains",
        "domain",
        json!({"name": "off-domain", "enabled": false}),
    );
    for (kind, key, rec) in [
        ("projects", "project", &p),
        ("users", "user", &u),
        ("domains", "domain", &d),
    ] {
        let path = format!("/{kind}/{}", rec["id"].as_str().unwrap());
        for body in [json!({"enabled": null}), json!({"name": null})] {
            let r = ks.patch(&path, admin, json!({ key: body }));
            keystone_400(&r);
        }
        let r = ks.get(&path, admin);
        assert_eq!(r.body[key]["enabled"], false, "{}", r.body);
        assert_eq!(r.body[key]["name"], rec["name"], "{}", r.body);
    }

    // Ids that cannot be Keystone ids are a 400, not a lookup.
    let r = ks.post(
        "/users",
        admin,
        json!({"user": {"name": "odd-domain", "domain_id": "../default"}}),
    );
    assert!(keystone_400(&r).contains("domain_id"));
    let r = ks.post(
        "/projects",
        admin,
        json!({"project": {"name": "odd-parent", "parent_id": "a/b"}}),
    );
    assert!(keystone_400(&r).contains("parent_id"));

    // Control characters in a name: 400 for every kind, nothing stored.
    for bad in ["nul\0inside", "tab\tinside", "bell\u{7}", "c1\u{85}x"] {
        for (kind, key) in [
            ("projects", "project"),
            ("users", "user"),
            ("roles", "role"),
            ("domains", "domain"),
            ("groups", "group"),
        ] {
            let r = ks.post(&format!("/{kind}"), admin, json!({ key: {"name": bad} }));
            let m = keystone_400(&r);
            assert!(m.contains("name"), "{kind} {bad:?}: {m}");
        }
        let r = ks.patch(
            &format!("/projects/{}", p["id"].as_str().unwrap()),
            admin,
            json!({"project": {"name": bad}}),
        );
        keystone_400(&r);
    }
    for kind in ["projects", "users", "roles", "domains", "groups"] {
        for n in names(ks, admin, kind) {
            assert!(!n.chars().any(char::is_control), "{kind} stored {n:?}");
        }
    }

    // Unicode names (and descriptions) are fine.
    for (kind, key, name) in [
        ("projects", "project", "Проект ü 项目"),
        ("users", "user", "usér 名前 ✓"),
        ("roles", "role", "rôle-角色"),
        ("domains", "domain", "domaine-ドメイン"),
        ("groups", "group", "グループ é"),
    ] {
        let r = ks.post(
            &format!("/{kind}"),
            admin,
            json!({ key: {"name": name, "description": "описание 説明"} }),
        );
        assert_eq!(r.status, 201, "{kind}: {}", r.body);
        assert_eq!(r.body[key]["name"], name);
        assert!(names(ks, admin, kind).contains(&name.to_string()));
    }
}

#[test]
fn compute_names_follow_novas_schema() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("names");
    let img = c.image(&tok, "tiny");
    let servers = |c: &Cloud| -> Vec<String> {
        let r = c.req("GET", "/servers", &tok, None);
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    for bad in [
        Value::from("nul\0inside"),
        Value::from("zero\u{200b}width"),
        Value::from("bom\u{feff}"),
        Value::from("line\u{2028}sep"),
        Value::from(" leading"),
        Value::from("trailing\u{a0}"),
        Value::from("x".repeat(256)),
        Value::from(""),
        Value::Null,
    ] {
        let r = c.boot(&tok, "placeholder", &img, "1", json!({"name": bad}));
        nova_400(&r);
        let r = c.req(
            "POST",
            "/flavors",
            &c.admin,
            Some(json!({"flavor": {"name": bad, "ram": 64, "vcpus": 1, "disk": 1}})),
        );
        nova_400(&r);
        let r = c.req(
            "POST",
            "/os-server-groups",
            &tok,
            Some(json!({"server_group": {"name": bad, "policies": ["affinity"]}})),
        );
        nova_400(&r);
    }
    let m = nova_400(&c.boot(&tok, "x", &img, "1", json!({"name": "a\0b"})));
    assert!(m.contains("printable characters"), "{m}");
    assert!(servers(&c).is_empty(), "{:?}", servers(&c));

    // Printable names of any script, up to 255 characters (not bytes).
    let long = "ä".repeat(255);
    let r = c.boot(&tok, &long, &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let name = "сервер ü 服务器";
    let r = c.boot(&tok, name, &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    let mut got = servers(&c);
    got.sort();
    let mut want = vec![long.clone(), name.to_string()];
    want.sort();
    assert_eq!(got, want);

    // Rename and rebuild refuse what create refuses; the name stays.
    for bad in ["bell\u{7}", "nul\0", " lead"] {
        let r = c.req(
            "PUT",
            &format!("/servers/{id}"),
            &tok,
            Some(json!({"server": {"name": bad}})),
        );
        nova_400(&r);
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(json!({"rebuild": {"imageRef": img, "name": bad}})),
        );
        nova_400(&r);
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(json!({"createImage": {"name": bad}})),
        );
        nova_400(&r);
    }
    let r = c.req("GET", &format!("/servers/{id}"), &tok, None);
    assert_eq!(r.body["server"]["name"], name);
    let r = c.req(
        "PUT",
        &format!("/servers/{id}"),
        &tok,
        Some(json!({"server": {"name": "новое имя"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["name"], "новое имя");
}

#[test]
fn image_and_provider_names_refuse_control_characters() {
    let c = Cloud::start(&["--no-agent"]);
    let (_, tok) = c.project("imgnames");
    let images = || -> Vec<Value> {
        let r = c.img.get("/images", &tok);
        r.body["images"].as_array().unwrap().clone()
    };
    let before = images().len();
    for bad in ["nul\0inside", "tab\tinside", "esc\u{1b}[0m"] {
        let r = c.img.post(
            "/images",
            &tok,
            json!({"name": bad, "disk_format": "raw", "container_format": "bare"}),
        );
        assert!(glance_400(&r).contains("name"), "{}", r.body);
    }
    assert_eq!(images().len(), before, "{:?}", images());
    let r = c.img.post(
        "/images",
        &tok,
        json!({"name": "образ 映像 ü", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let r = c.img.raw(
        "PATCH",
        &format!("/images/{id}"),
        Some(&tok),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        Some(json!([{"op": "replace", "path": "/name", "value": "a\u{1}b"}]).to_string()),
    );
    glance_400(&r);
    let all = images();
    assert_eq!(all.len(), before + 1, "{all:?}");
    let mine = all.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(mine["name"], "образ 映像 ü");

    // Placement: a provider name is a string of up to 200 characters.
    let pl = Client {
        base: format!("{}/placement", c.server.url),
    };
    let call = |method: &str, path: &str, body: Option<Value>| {
        pl.raw(
            method,
            path,
            Some(&c.admin),
            &[("OpenStack-API-Version", "placement 1.20")],
            body.map(|b| b.to_string()),
        )
    };
    let before = call("GET", "/resource_providers", None).body["resource_providers"]
        .as_array()
        .unwrap()
        .len();
    for bad in [
        json!("rp\0x"),
        json!("rp\nx"),
        json!(""),
        json!(7),
        json!("r".repeat(201)),
    ] {
        let r = call("POST", "/resource_providers", Some(json!({"name": bad})));
        placement_400(&r);
    }
    let after = call("GET", "/resource_providers", None);
    assert_eq!(
        after.body["resource_providers"].as_array().unwrap().len(),
        before,
        "{}",
        after.body
    );
    let wide = "ü".repeat(200);
    let r = call("POST", "/resource_providers", Some(json!({"name": wide})));
    assert_eq!(r.status, 200, "{}", r.body);
    let rp = r.body["uuid"].as_str().unwrap().to_string();
    let r = call(
        "PUT",
        &format!("/resource_providers/{rp}"),
        Some(json!({"name": "bad\u{7f}name"})),
    );
    placement_400(&r);
    let r = call("GET", &format!("/resource_providers/{rp}"), None);
    assert_eq!(r.body["name"], wide.as_str());
    let r = call(
        "PUT",
        &format!("/resource_providers/{rp}"),
        Some(json!({"name": "fournisseur 提供者"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
