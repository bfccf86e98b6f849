//! Keystone v3 behaviour over HTTP, positive and negative.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Server, bin};

fn admin(s: &Server) -> String {
    s.client().token("admin", &s.admin_password, Some("admin"))
}

#[test]
fn discovery_and_request_ids() {
    let s = Server::start();
    let c = s.client();
    let r = c.call("GET", "", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["version"]["id"], "v3.14");
    assert_eq!(
        r.body["version"]["links"][0]["href"],
        format!("{}/identity/v3/", s.url)
    );
    assert!(
        r.header("x-openstack-request-id")
            .unwrap()
            .starts_with("req-")
    );
    let root = super::common::Client {
        base: format!("{}/identity", s.url),
    };
    let r = root.call("GET", "", None, None);
    assert_eq!(r.status, 300);
    assert_eq!(r.body["versions"]["values"][0]["status"], "stable");
    let r = c.call("GET", "/no/such/path", None, None);
    assert_eq!(r.status, 404);
    r.error_message();
    let r = c.call("PUT", "/auth/catalog", None, None);
    assert_eq!(r.status, 405);
    r.error_message();
}

#[test]
fn token_body_roles_catalog_and_nocatalog() {
    let s = Server::start();
    let c = s.client();
    let r = c.login("admin", &s.admin_password, Some("admin"));
    assert_eq!(r.status, 201);
    let tok = r.header("x-subject-token").unwrap().to_string();
    let t = &r.body["token"];
    assert_eq!(t["methods"], json!(["password"]));
    assert_eq!(t["user"]["name"], "admin");
    assert_eq!(
        t["user"]["domain"],
        json!({"id": "default", "name": "Default"})
    );
    assert_eq!(t["project"]["name"], "admin");
    assert_eq!(t["project"]["domain"]["id"], "default");
    let mut roles: Vec<&str> = t["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    roles.sort();
    assert_eq!(
        roles,
        ["admin", "manager", "member", "reader"],
        "implied roles are expanded"
    );
    assert!(t["expires_at"].as_str().unwrap().ends_with('Z'));
    let identity = t["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"] == "identity")
        .expect("identity in catalog");
    let eps = identity["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 3);
    assert!(
        eps.iter()
            .all(|e| e["region_id"] == "RegionOne" && e["url"] == format!("{}/identity", s.url))
    );
    // Validation returns the same token document.
    let v = c.validate(&tok, &tok);
    assert_eq!(v.status, 200);
    assert_eq!(v.header("x-subject-token"), Some(tok.as_str()));
    assert_eq!(v.body["token"]["audit_ids"], t["audit_ids"]);
    let v = c.raw(
        "GET",
        "/auth/tokens?nocatalog",
        Some(&tok),
        &[("X-Subject-Token", &tok)],
        None,
    );
    assert!(v.body["token"].get("catalog").is_none());
    let h = c.raw(
        "HEAD",
        "/auth/tokens",
        Some(&tok),
        &[("X-Subject-Token", &tok)],
        None,
    );
    assert_eq!(h.status, 200);
    let cat = c.get("/auth/catalog", &tok);
    assert_eq!(cat.status, 200);
    assert_eq!(cat.body["catalog"], t["catalog"]);
}

#[test]
fn wrong_password_and_unknown_user_get_the_same_401() {
    let s = Server::start();
    let c = s.client();
    let wrong = c.login("admin", "not-the-password", Some("admin"));
    let unknown = c.login("nobody", "whatever", Some("admin"));
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert_eq!(wrong.error_message(), unknown.error_message());
    // No token at all, or a forged one, is a 401 on any endpoint.
    assert_eq!(c.call("GET", "/projects", None, None).status, 401);
    assert_eq!(c.get("/projects", "gAAAAABforged").status, 401);
}

#[test]
fn bad_input_is_a_clear_400_never_a_500() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let r = c.raw(
        "POST",
        "/projects",
        Some(&tok),
        &[],
        Some("{not json".into()),
    );
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("JSON"), "{}", r.body);
    let r = c.post(
        "/projects",
        &tok,
        json!({"project": {"description": "no name"}}),
    );
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("name"), "{}", r.body);
    let r = c.post("/users", &tok, json!({"user": {"name": 5}}));
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("name"));
    let r = c.post(
        "/auth/tokens",
        &tok,
        json!({"auth": {"identity": {"methods": ["password"]}}}),
    );
    assert_eq!(r.status, 400);
    let r = c.raw(
        "POST",
        "/auth/tokens",
        None,
        &[],
        Some("{\"auth\": {}}".into()),
    );
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("identity"), "{}", r.body);
    let r = c.raw(
        "POST",
        "/projects",
        Some(&tok),
        &[("Content-Type", "text/plain")],
        Some("x".into()),
    );
    assert_eq!(r.status, 415);
    // A scattering of hostile inputs: nothing may answer 5xx.
    let bodies = [
        "",
        "null",
        "[]",
        "{\"project\": []}",
        "{\"project\": {\"name\": \"\"}}",
        "{\"project\": {\"name\": \"x\", \"enabled\": \"yes\"}}",
        "{\"project\": {\"name\": \"x\", \"parent_id\": \"nope\"}}",
        "{\"project\": {\"name\": \"x\", \"tags\": [1]}}",
        "\u{0}",
    ];
    for path in [
        "/projects",
        "/users",
        "/groups",
        "/roles",
        "/domains",
        "/regions",
        "/services",
        "/endpoints",
        "/auth/tokens",
        "/users/x/application_credentials",
    ] {
        for b in bodies {
            let r = c.raw("POST", path, Some(&tok), &[], Some(b.to_string()));
            assert!(
                (400..500).contains(&r.status),
                "POST {path} {b:?} -> {} {}",
                r.status,
                r.body
            );
        }
    }
    for path in [
        "/projects/%00",
        "/users/..%2f",
        "/role_assignments?scope.project.id=x&scope.domain.id=y",
        "/projects?enabled=maybe",
        "/roles/x/implies/y",
    ] {
        let r = c.get(path, &tok);
        assert!(r.status < 500, "GET {path} -> {}", r.status);
    }
}

#[test]
fn conflicts_and_unknown_ids() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    c.create(&tok, "/projects", "project", json!({"name": "p1"}));
    let r = c.post("/projects", &tok, json!({"project": {"name": "p1"}}));
    assert_eq!(r.status, 409);
    r.error_message();
    c.user(&tok, "u1", "pw", None);
    assert_eq!(
        c.post("/users", &tok, json!({"user": {"name": "u1"}}))
            .status,
        409
    );
    assert_eq!(
        c.post("/domains", &tok, json!({"domain": {"name": "default"}}))
            .status,
        409,
        "domain names are case-insensitive"
    );
    for path in [
        "/projects/abc",
        "/users/abc",
        "/groups/abc",
        "/roles/abc",
        "/domains/abc",
        "/regions/abc",
        "/services/abc",
        "/endpoints/abc",
    ] {
        let r = c.get(path, &tok);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.error_message().contains("abc"));
    }
}

#[test]
fn reader_can_read_own_project_and_never_write() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "shop"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "rita", "rpw", Some((pid, "reader")));
    let rt = c.token("rita", "rpw", Some("shop"));
    assert_eq!(c.get(&format!("/projects/{pid}"), &rt).status, 200);
    assert_eq!(c.get(&format!("/users/{uid}"), &rt).status, 200);
    let projects = c.get(&format!("/users/{uid}/projects"), &rt);
    assert_eq!(projects.body["projects"][0]["id"], pid);
    assert_eq!(
        c.get("/auth/projects", &rt).body["projects"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let writes = [
        (
            "POST",
            "/projects".to_string(),
            Some(json!({"project": {"name": "x"}})),
        ),
        (
            "POST",
            "/users".to_string(),
            Some(json!({"user": {"name": "x"}})),
        ),
        (
            "PATCH",
            format!("/projects/{pid}"),
            Some(json!({"project": {"name": "y"}})),
        ),
        ("DELETE", format!("/projects/{pid}"), None),
        (
            "PUT",
            format!(
                "/projects/{pid}/users/{uid}/roles/{}",
                c.role_id(&tok, "admin")
            ),
            None,
        ),
        (
            "POST",
            "/roles".to_string(),
            Some(json!({"role": {"name": "x"}})),
        ),
        (
            "POST",
            "/domains".to_string(),
            Some(json!({"domain": {"name": "x"}})),
        ),
    ];
    for (m, path, body) in writes {
        let r = c.call(m, &path, Some(&rt), body);
        assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
        r.error_message();
    }
    assert_eq!(c.get("/users", &rt).status, 403);
    assert_eq!(c.get("/projects", &rt).status, 403);
    // Nothing changed.
    assert_eq!(
        c.get(&format!("/projects/{pid}"), &tok).body["project"]["name"],
        "shop"
    );
    // Another project's data stays hidden.
    let other = c.create(&tok, "/projects", "project", json!({"name": "other"}));
    assert_eq!(
        c.get(&format!("/projects/{}", other["id"].as_str().unwrap()), &rt)
            .status,
        403
    );
}

#[test]
fn revoked_token_is_refused() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let victim = admin(&s);
    assert_eq!(c.validate(&tok, &victim).status, 200);
    let r = c.raw(
        "DELETE",
        "/auth/tokens",
        Some(&tok),
        &[("X-Subject-Token", &victim)],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(c.validate(&tok, &victim).status, 404);
    assert_eq!(c.get("/projects", &victim).status, 401);
    // Revocation survives a restart.
    let mut s = s;
    s.restart();
    let c = s.client();
    assert_eq!(c.get("/projects", &victim).status, 401);
    assert_eq!(c.get("/projects", &tok).status, 200);
}

#[test]
fn password_change_and_disable_revoke_tokens() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "p"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "bob", "old-pw", Some((pid, "member")));
    let bt = c.token("bob", "old-pw", Some("p"));
    let r = c.post(
        &format!("/users/{uid}/password"),
        &bt,
        json!({"user": {"password": "new-pw", "original_password": "wrong"}}),
    );
    assert_eq!(r.status, 401);
    let r = c.post(
        &format!("/users/{uid}/password"),
        &bt,
        json!({"user": {"password": "new-pw", "original_password": "old-pw"}}),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        c.get(&format!("/users/{uid}"), &bt).status,
        401,
        "old token revoked"
    );
    assert_eq!(c.login("bob", "old-pw", Some("p")).status, 401);
    let bt2 = c.token("bob", "new-pw", Some("p"));
    assert_eq!(c.get(&format!("/users/{uid}"), &bt2).status, 200);
    // Disabling the user kills the new token and further logins.
    let r = c.patch(
        &format!("/users/{uid}"),
        &tok,
        json!({"user": {"enabled": false}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&format!("/users/{uid}"), &bt2).status, 401);
    assert_eq!(c.login("bob", "new-pw", Some("p")).status, 401);
}

#[test]
fn deleting_a_project_revokes_its_tokens() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "temp"}));
    let pid = p["id"].as_str().unwrap();
    c.user(&tok, "carol", "cpw", Some((pid, "member")));
    let ct = c.token("carol", "cpw", Some("temp"));
    assert_eq!(c.validate(&tok, &ct).status, 200);
    assert_eq!(c.delete(&format!("/projects/{pid}"), &tok).status, 204);
    assert_eq!(c.validate(&tok, &ct).status, 404);
    // Unscoped login still works; the project is gone.
    assert_eq!(c.login("carol", "cpw", None).status, 201);
    assert_eq!(c.login("carol", "cpw", Some("temp")).status, 401);
}

#[test]
fn tokens_survive_key_rotation_until_rotated_out() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let old = admin(&s);
    let rotate = || {
        let st = std::process::Command::new(bin())
            .args(["admin", "fernet-rotate", "--data-dir"])
            .arg(s.data_dir())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    };
    rotate();
    // The server picks the rotation up; the old token stays valid, and new
    // tokens are signed with the new primary key.
    std::thread::sleep(Duration::from_millis(2500));
    let fresh = admin(&s);
    assert_eq!(c.validate(&fresh, &old).status, 200);
    rotate();
    rotate();
    // Two more rotations push the old key out (3 keys are kept).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let other = admin(&s);
        let st = c.validate(&other, &old).status;
        if st == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old token still valid after its key was rotated out"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = tok;
}

#[test]
fn restart_reuses_credentials_and_data() {
    let mut s = Server::start();
    let tok = admin(&s);
    let c = s.client();
    c.create(&tok, "/projects", "project", json!({"name": "keep"}));
    let clouds = std::fs::read_to_string(s.data_dir().join("clouds.yaml")).unwrap();
    let status = s.stop("-INT");
    assert!(status.success(), "clean exit on SIGINT: {status:?}");
    s.restart_after_stop();
    let c = s.client();
    assert_eq!(
        std::fs::read_to_string(s.data_dir().join("clouds.yaml")).unwrap(),
        clouds
    );
    let tok2 = admin(&s);
    assert_eq!(
        c.validate(&tok2, &tok).status,
        200,
        "tokens outlive a restart"
    );
    let list = c.get("/projects?name=keep", &tok2);
    assert_eq!(list.body["projects"].as_array().unwrap().len(), 1);
}

#[test]
fn hierarchy_and_filters() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let a = c.create(
        &tok,
        "/projects",
        "project",
        json!({"name": "a", "tags": ["edge"]}),
    );
    let aid = a["id"].as_str().unwrap();
    assert_eq!(a["parent_id"], "default");
    let b = c.create(
        &tok,
        "/projects",
        "project",
        json!({"name": "b", "parent_id": aid}),
    );
    let bid = b["id"].as_str().unwrap();
    let cc = c.create(
        &tok,
        "/projects",
        "project",
        json!({"name": "c", "parent_id": bid}),
    );
    let r = c.get(&format!("/projects/{aid}?subtree_as_list"), &tok);
    let sub: Vec<&str> = r.body["project"]["subtree"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(sub.len(), 2);
    let r = c.get(
        &format!("/projects/{}?parents_as_list", cc["id"].as_str().unwrap()),
        &tok,
    );
    let parents: Vec<&str> = r.body["project"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["project"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(parents, ["b", "a"]);
    assert_eq!(
        c.delete(&format!("/projects/{aid}"), &tok).status,
        403,
        "not a leaf"
    );
    let r = c.get(&format!("/projects?parent_id={aid}"), &tok);
    assert_eq!(r.body["projects"].as_array().unwrap().len(), 1);
    let r = c.get("/projects?tags=edge", &tok);
    assert_eq!(r.body["projects"][0]["name"], "a");
    let r = c.get("/projects?name__contains=dmi", &tok);
    assert_eq!(r.body["projects"][0]["name"], "admin");
    let r = c.patch(
        &format!("/projects/{bid}"),
        &tok,
        json!({"project": {"enabled": false}}),
    );
    assert_eq!(r.status, 403, "b still has an enabled child");
    let cid = cc["id"].as_str().unwrap();
    let r = c.patch(
        &format!("/projects/{cid}"),
        &tok,
        json!({"project": {"enabled": false}}),
    );
    assert_eq!(r.body["project"]["enabled"], false);
    let r = c.get("/projects?enabled=false", &tok);
    assert_eq!(r.body["projects"].as_array().unwrap().len(), 1);
}

#[test]
fn groups_implied_roles_and_effective_assignments() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "proj"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "gina", "gpw", None);
    let g = c.create(&tok, "/groups", "group", json!({"name": "ops"}));
    let gid = g["id"].as_str().unwrap();
    assert_eq!(
        c.put(&format!("/groups/{gid}/users/{uid}"), &tok).status,
        204
    );
    assert_eq!(
        c.call(
            "HEAD",
            &format!("/groups/{gid}/users/{uid}"),
            Some(&tok),
            None
        )
        .status,
        204
    );
    let member = c.role_id(&tok, "member");
    assert_eq!(
        c.put(
            &format!("/projects/{pid}/groups/{gid}/roles/{member}"),
            &tok
        )
        .status,
        204
    );
    // Through the group, gina can log in to the project, with reader implied.
    let r = c.login("gina", "gpw", Some("proj"));
    assert_eq!(r.status, 201);
    let names: Vec<&str> = r.body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"member") && names.contains(&"reader"),
        "{names:?}"
    );
    let r = c.get(
        &format!("/role_assignments?effective&user.id={uid}&include_names"),
        &tok,
    );
    let rows = r.body["role_assignments"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{}", r.body);
    assert!(
        rows.iter().all(
            |a| a["scope"]["project"]["name"] == "proj" && a["links"]["membership"].is_string()
        )
    );
    // Without effective, the group's own assignment is listed.
    let r = c.get(&format!("/role_assignments?group.id={gid}"), &tok);
    assert_eq!(r.body["role_assignments"][0]["role"]["id"], member.as_str());
    // Removing her from the group removes her access at once.
    assert_eq!(
        c.delete(&format!("/groups/{gid}/users/{uid}"), &tok).status,
        204
    );
    assert_eq!(c.login("gina", "gpw", Some("proj")).status, 401);
    // An implication cycle is refused.
    let reader = c.role_id(&tok, "reader");
    let admin_role = c.role_id(&tok, "admin");
    assert_eq!(
        c.put(&format!("/roles/{reader}/implies/{admin_role}"), &tok)
            .status,
        403
    );
    // admin -> manager -> member -> reader.
    let r = c.get("/role_inferences", &tok);
    assert_eq!(r.body["role_inferences"].as_array().unwrap().len(), 3);
}

#[test]
fn rescoping_domain_and_system_scopes() {
    let s = Server::start();
    let c = s.client();
    let r = c.login("admin", &s.admin_password, None);
    assert_eq!(r.status, 201);
    assert!(r.body["token"].get("project").is_none(), "unscoped");
    assert!(r.body["token"].get("catalog").is_none());
    let unscoped = r.header("x-subject-token").unwrap().to_string();
    let body = json!({"auth": {"identity": {"methods": ["token"], "token": {"id": unscoped}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    let r = c.call("POST", "/auth/tokens", None, Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["token"]["project"]["name"], "admin");
    assert_eq!(r.body["token"]["audit_ids"].as_array().unwrap().len(), 2);
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": s.admin_password}}},
        "scope": {"system": {"all": true}}}});
    let r = c.call("POST", "/auth/tokens", None, Some(body));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["token"]["system"], json!({"all": true}));
    let sys = r.header("x-subject-token").unwrap().to_string();
    assert_eq!(
        c.get("/auth/system", &sys).body["system"],
        json!([{"all": true}])
    );
    // No role on the domain yet: a domain-scoped login is refused.
    let body = json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": s.admin_password}}},
        "scope": {"domain": {"id": "default"}}}});
    assert_eq!(
        c.call("POST", "/auth/tokens", None, Some(body.clone()))
            .status,
        401
    );
    let uid = r.body["token"]["user"]["id"].as_str().unwrap().to_string();
    let admin_role = c.role_id(&sys, "admin");
    assert_eq!(
        c.put(
            &format!("/domains/default/users/{uid}/roles/{admin_role}"),
            &sys
        )
        .status,
        204
    );
    let r = c.call("POST", "/auth/tokens", None, Some(body));
    assert_eq!(r.status, 201);
    assert_eq!(r.body["token"]["domain"]["name"], "Default");
}

#[test]
fn application_credentials() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "apps"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "dev", "dpw", Some((pid, "member")));
    let dt = c.token("dev", "dpw", Some("apps"));
    let r = c.post(
        &format!("/users/{uid}/application_credentials"),
        &dt,
        json!({"application_credential": {"name": "ci", "roles": [{"name": "reader"}]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ac = r.body["application_credential"].clone();
    let (acid, secret) = (
        ac["id"].as_str().unwrap().to_string(),
        ac["secret"].as_str().unwrap().to_string(),
    );
    assert_eq!(ac["project_id"], pid);
    // The secret is never shown again.
    let shown = c.get(&format!("/users/{uid}/application_credentials/{acid}"), &dt);
    assert!(shown.body["application_credential"].get("secret").is_none());
    let auth = |secret: &str| json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"id": acid, "secret": secret}}}});
    assert_eq!(
        c.call("POST", "/auth/tokens", None, Some(auth("wrong")))
            .status,
        401
    );
    let r = c.call("POST", "/auth/tokens", None, Some(auth(&secret)));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["token"]["project"]["id"], pid);
    let roles: Vec<&str> = r.body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["reader"], "only the credential's roles");
    let act = r.header("x-subject-token").unwrap().to_string();
    // A restricted credential cannot mint another, and a reader cannot write.
    let r = c.post(
        &format!("/users/{uid}/application_credentials"),
        &act,
        json!({"application_credential": {"name": "x"}}),
    );
    assert_eq!(r.status, 403);
    // By name with the user.
    let by_name = json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {"name": "ci", "secret": secret, "user": {"name": "dev", "domain": {"id": "default"}}}}}});
    assert_eq!(
        c.call("POST", "/auth/tokens", None, Some(by_name)).status,
        201
    );
    // Another user cannot see it.
    let other = c.user(&tok, "eve", "epw", Some((pid, "member")));
    let et = c.token("eve", "epw", Some("apps"));
    assert_eq!(
        c.get(&format!("/users/{uid}/application_credentials"), &et)
            .status,
        403
    );
    let _ = other;
    // Deleting it revokes its tokens.
    assert_eq!(
        c.delete(&format!("/users/{uid}/application_credentials/{acid}"), &dt)
            .status,
        204
    );
    assert_eq!(c.get(&format!("/projects/{pid}"), &act).status, 401);
    assert_eq!(
        c.call("POST", "/auth/tokens", None, Some(auth(&secret)))
            .status,
        401
    );
    // Expiry in the past is refused.
    let r = c.post(
        &format!("/users/{uid}/application_credentials"),
        &dt,
        json!({"application_credential": {"name": "old", "expires_at": "2000-01-01T00:00:00Z"}}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn catalog_crud() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let svc = c.create(
        &tok,
        "/services",
        "service",
        json!({"type": "compute", "name": "nova"}),
    );
    let sid = svc["id"].as_str().unwrap();
    let r = c.post(
        "/endpoints",
        &tok,
        json!({"endpoint": {"service_id": sid, "interface": "sideways", "url": "http://x"}}),
    );
    assert_eq!(r.status, 400);
    let ep = c.create(&tok, "/endpoints", "endpoint", json!({"service_id": sid, "interface": "public", "url": "http://127.0.0.1:1/compute/v2.1", "region_id": "RegionOne"}));
    assert_eq!(ep["region"], "RegionOne");
    let fresh = admin(&s);
    let r = c.validate(&fresh, &fresh);
    let types: Vec<&str> = r.body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"compute"), "{types:?}");
    let reg = c.create(
        &tok,
        "/regions",
        "region",
        json!({"id": "EdgeA", "parent_region_id": "RegionOne"}),
    );
    assert_eq!(reg["parent_region_id"], "RegionOne");
    assert_eq!(
        c.delete("/regions/RegionOne", &tok).status,
        403,
        "region in use"
    );
    assert_eq!(c.delete(&format!("/services/{sid}"), &tok).status, 204);
    let r: Value = c.get("/endpoints", &tok).body;
    assert!(
        r["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["service_id"] != sid)
    );
}

#[test]
fn ec2_and_generic_credentials_belong_to_their_owner() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "s3"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "olga", "opw", Some((pid, "member")));
    let ot = c.token("olga", "opw", Some("s3"));
    let r = c.post(
        &format!("/users/{uid}/credentials/OS-EC2"),
        &ot,
        json!({"tenant_id": pid}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let access = r.body["credential"]["access"].as_str().unwrap().to_string();
    assert!(r.body["credential"]["secret"].is_string());
    let r = c.get(&format!("/users/{uid}/credentials/OS-EC2/{access}"), &ot);
    assert_eq!(r.body["credential"]["tenant_id"], pid);
    // Another user sees nothing of it.
    let vid = c.user(&tok, "vic", "vpw", Some((pid, "member")));
    let vt = c.token("vic", "vpw", Some("s3"));
    assert_eq!(
        c.get(&format!("/users/{uid}/credentials/OS-EC2"), &vt)
            .status,
        403
    );
    assert_eq!(
        c.get("/credentials", &vt).body["credentials"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let r = c.post(
        "/credentials",
        &vt,
        json!({"credential": {"user_id": uid, "type": "totp", "blob": "x"}}),
    );
    assert_eq!(r.status, 403, "cannot make credentials for someone else");
    let r = c.post("/credentials", &vt, json!({"credential": {"user_id": vid, "type": "ec2", "blob": "not json", "project_id": pid}}));
    assert_eq!(r.status, 400);
    assert_eq!(
        c.get("/credentials", &ot).body["credentials"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        c.delete(&format!("/users/{uid}/credentials/OS-EC2/{access}"), &ot)
            .status,
        204
    );
    assert_eq!(
        c.get(&format!("/users/{uid}/credentials/OS-EC2/{access}"), &ot)
            .status,
        404
    );
}

#[test]
fn password_change_needs_the_original_password_not_a_token() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let uid = c.user(&tok, "pam", "first", None);
    let change = |orig: &str, new: &str| {
        c.call(
            "POST",
            &format!("/users/{uid}/password"),
            None,
            Some(json!({"user": {"original_password": orig, "password": new}})),
        )
    };
    assert_eq!(change("wrong", "second").status, 401);
    assert_eq!(change("first", "second").status, 204);
    assert_eq!(c.login("pam", "first", None).status, 401);
    assert_eq!(c.login("pam", "second", None).status, 201);
    let r = c.call(
        "POST",
        "/users/nobody/password",
        None,
        Some(json!({"user": {"original_password": "x", "password": "y"}})),
    );
    assert_eq!(r.status, 401, "unknown users look like wrong passwords");
}

/// A project member's token: no admin, no system scope.
fn member(c: &super::common::Client, admin: &str) -> String {
    let p = c.create(admin, "/projects", "project", json!({"name": "mine"}));
    c.user(
        admin,
        "mo",
        "mpw",
        Some((p["id"].as_str().unwrap(), "member")),
    );
    c.token("mo", "mpw", Some("mine"))
}

#[test]
fn policies_and_oauth_consumers() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let mt = member(&c, &tok);

    // Policies: blob and type, extra attributes kept.
    let p = c.create(
        &tok,
        "/policies",
        "policy",
        json!({"blob": "{\"a\": 1}", "type": "application/json", "project_id": "p1"}),
    );
    let pid = p["id"].as_str().unwrap();
    assert_eq!(p["blob"], "{\"a\": 1}");
    assert_eq!(p["project_id"], "p1");
    assert_eq!(
        p["links"]["self"],
        format!("{}/identity/v3/policies/{pid}", s.url)
    );
    let r = c.patch(
        &format!("/policies/{pid}"),
        &tok,
        json!({"policy": {"type": "text/plain"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.get(&format!("/policies/{pid}"), &tok);
    assert_eq!(r.body["policy"]["type"], "text/plain");
    assert_eq!(r.body["policy"]["blob"], "{\"a\": 1}");
    let r = c.get("/policies?type=text/plain", &tok);
    assert_eq!(r.body["policies"].as_array().unwrap().len(), 1);
    for bad in [
        json!({"policy": {"type": "x"}}),
        json!({"policy": {"blob": 1, "type": "x"}}),
        json!({}),
    ] {
        let r = c.post("/policies", &tok, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        r.error_message();
    }
    assert_eq!(
        c.patch(&format!("/policies/{pid}"), &tok, json!({"policy": {}}))
            .status,
        400
    );
    assert_eq!(c.get("/policies", &mt).status, 403);
    assert_eq!(
        c.post(
            "/policies",
            &mt,
            json!({"policy": {"blob": "b", "type": "t"}})
        )
        .status,
        403
    );
    assert_eq!(c.delete(&format!("/policies/{pid}"), &mt).status, 403);
    assert_eq!(c.delete(&format!("/policies/{pid}"), &tok).status, 204);
    assert_eq!(c.get(&format!("/policies/{pid}"), &tok).status, 404);
    assert_eq!(c.delete(&format!("/policies/{pid}"), &tok).status, 404);

    // OAuth1 consumers: the secret is shown once and cannot be changed.
    let con = c.create(
        &tok,
        "/OS-OAUTH1/consumers",
        "consumer",
        json!({"description": "d1"}),
    );
    let cid = con["id"].as_str().unwrap();
    assert_eq!(con["secret"].as_str().unwrap().len(), 32);
    let r = c.get(&format!("/OS-OAUTH1/consumers/{cid}"), &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["consumer"]["description"], "d1");
    assert_eq!(r.body["consumer"]["links"], con["links"]);
    assert!(r.body["consumer"].get("secret").is_none());
    let r = c.get("/OS-OAUTH1/consumers", &tok);
    let listed = &r.body["consumers"];
    assert_eq!(listed[0]["id"], cid);
    assert!(listed[0].get("secret").is_none());
    let r = c.patch(
        &format!("/OS-OAUTH1/consumers/{cid}"),
        &tok,
        json!({"consumer": {"description": "d2"}}),
    );
    assert_eq!(r.body["consumer"]["description"], "d2");
    let r = c.patch(
        &format!("/OS-OAUTH1/consumers/{cid}"),
        &tok,
        json!({"consumer": {"secret": "mine"}}),
    );
    assert_eq!(r.status, 400);
    r.error_message();
    let r = c.post(
        "/OS-OAUTH1/consumers",
        &tok,
        json!({"consumer": {"description": 5}}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/OS-OAUTH1/consumers", &mt).status, 403);
    assert_eq!(
        c.post("/OS-OAUTH1/consumers", &mt, json!({"consumer": {}}))
            .status,
        403
    );
    assert_eq!(
        c.delete(&format!("/OS-OAUTH1/consumers/{cid}"), &mt).status,
        403
    );
    assert_eq!(
        c.delete(&format!("/OS-OAUTH1/consumers/{cid}"), &tok)
            .status,
        204
    );
    assert_eq!(
        c.get(&format!("/OS-OAUTH1/consumers/{cid}"), &tok).status,
        404
    );
}

#[test]
fn endpoint_groups_and_project_endpoints() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let mt = member(&c, &tok);
    let svc = c.create(
        &tok,
        "/services",
        "service",
        json!({"type": "thing", "name": "things"}),
    );
    let sid = svc["id"].as_str().unwrap();
    let ep = c.create(
        &tok,
        "/endpoints",
        "endpoint",
        json!({"service_id": sid, "interface": "public", "url": "http://x/"}),
    );
    let eid = ep["id"].as_str().unwrap();
    let pid = c.create(&tok, "/projects", "project", json!({"name": "eg"}))["id"]
        .as_str()
        .unwrap()
        .to_string();

    let g = c.create(
        &tok,
        "/OS-EP-FILTER/endpoint_groups",
        "endpoint_group",
        json!({"name": "g", "description": "d", "filters": {"service_id": sid}}),
    );
    let gid = g["id"].as_str().unwrap();
    let base = format!("/OS-EP-FILTER/endpoint_groups/{gid}");
    let r = c.get("/OS-EP-FILTER/endpoint_groups", &tok);
    assert!(r.body["endpoint_groups"].as_array().unwrap().contains(&g));
    assert_eq!(c.get(&base, &tok).body["endpoint_group"], g);
    assert_eq!(c.call("HEAD", &base, Some(&tok), None).status, 200);
    let r = c.get(&format!("{base}/endpoints"), &tok);
    assert_eq!(r.body["endpoints"][0]["id"], eid);
    let r = c.patch(
        &base,
        &tok,
        json!({"endpoint_group": {"name": "g2", "filters": {"service_id": sid, "interface": "admin"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["endpoint_group"]["name"], "g2");
    assert_eq!(
        r.body["endpoint_group"]["filters"],
        json!({"service_id": sid, "interface": "admin"})
    );
    assert_eq!(
        c.get(&format!("{base}/endpoints"), &tok).body["endpoints"],
        json!([])
    );
    for bad in [
        json!({"endpoint_group": {"name": "x"}}),
        json!({"endpoint_group": {"name": "x", "filters": {}}}),
        json!({"endpoint_group": {"name": "x", "filters": {"url": "y"}}}),
        json!({"endpoint_group": {"name": "x", "filters": {"interface": "nope"}}}),
        json!({"endpoint_group": {"filters": {"interface": "public"}}}),
        json!({"endpoint_group": {"name": "x", "filters": {"interface": "public"}, "z": 1}}),
    ] {
        let r = c.post("/OS-EP-FILTER/endpoint_groups", &tok, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        r.error_message();
    }

    // Project associations.
    let assoc = format!("{base}/projects/{pid}");
    assert_eq!(c.get(&assoc, &tok).status, 404);
    assert_eq!(c.put(&assoc, &mt).status, 403);
    assert_eq!(c.put(&assoc, &tok).status, 204);
    let r = c.get(&assoc, &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["project_endpoint_group"]["project_id"], pid);
    assert_eq!(
        c.get(&format!("{base}/projects"), &tok).body["projects"][0]["id"],
        pid
    );
    let r = c.get(
        &format!("/OS-EP-FILTER/projects/{pid}/endpoint_groups"),
        &tok,
    );
    assert_eq!(r.body["endpoint_groups"][0]["id"], gid);
    assert_eq!(c.put(&format!("{base}/projects/nope"), &tok).status, 404);

    // Endpoint <-> project.
    let pe = format!("/OS-EP-FILTER/projects/{pid}/endpoints/{eid}");
    assert_eq!(c.get(&pe, &tok).status, 404);
    assert_eq!(c.put(&pe, &mt).status, 403);
    assert_eq!(c.put(&pe, &tok).status, 204);
    assert_eq!(c.get(&pe, &tok).status, 204);
    let r = c.get(&format!("/OS-EP-FILTER/endpoints/{eid}/projects"), &tok);
    assert_eq!(r.body["projects"][0]["id"], pid);
    let r = c.get(&format!("/OS-EP-FILTER/projects/{pid}/endpoints"), &tok);
    assert_eq!(r.body["endpoints"][0]["id"], eid);
    assert_eq!(
        c.put(
            &format!("/OS-EP-FILTER/projects/{pid}/endpoints/nope"),
            &tok
        )
        .status,
        404
    );
    assert_eq!(c.delete(&pe, &tok).status, 204);
    assert_eq!(c.delete(&pe, &tok).status, 404);

    // Reads are for admins and system readers.
    assert_eq!(c.get("/OS-EP-FILTER/endpoint_groups", &mt).status, 403);
    assert_eq!(c.get(&base, &mt).status, 403);
    assert_eq!(c.delete(&base, &mt).status, 403);
    assert_eq!(c.delete(&assoc, &tok).status, 204);
    assert_eq!(c.delete(&base, &tok).status, 204);
    assert_eq!(c.get(&base, &tok).status, 404);
    assert_eq!(c.delete(&base, &tok).status, 404);
}

#[test]
fn domain_configuration() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let mt = member(&c, &tok);
    let d = c.create(&tok, "/domains", "domain", json!({"name": "cfg"}));
    let did = d["id"].as_str().unwrap();
    let base = format!("/domains/{did}/config");

    // Defaults.
    let r = c.get("/domains/config/default", &tok);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["config"]["identity"]["driver"], "sql");
    assert!(r.body["config"]["ldap"].get("password").is_none());
    let r = c.get("/domains/config/ldap/url/default", &tok);
    assert_eq!(r.body["config"], json!({"url": "ldap://localhost"}));
    assert_eq!(
        c.get("/domains/config/ldap/password/default", &tok).status,
        403
    );
    assert_eq!(c.get("/domains/config/nope/default", &tok).status, 403);
    assert_eq!(c.get("/domains/config/default", &mt).status, 403);

    // Create: sensitive options are kept but never shown.
    assert_eq!(c.get(&base, &tok).status, 404);
    let cfg = json!({"identity": {"driver": "ldap"},
        "ldap": {"url": "ldap://h/", "user_tree_dn": "ou=U", "password": "s3"}});
    let r = c.call("PUT", &base, Some(&tok), Some(json!({"config": cfg})));
    assert_eq!(r.status, 201, "{}", r.body);
    let shown = json!({"identity": {"driver": "ldap"},
        "ldap": {"url": "ldap://h/", "user_tree_dn": "ou=U"}});
    assert_eq!(r.body["config"], shown);
    assert_eq!(c.get(&base, &tok).body["config"], shown);
    assert_eq!(
        c.get(&format!("{base}/ldap/url"), &tok).body["config"],
        json!({"url": "ldap://h/"})
    );
    assert_eq!(c.get(&format!("{base}/ldap/password"), &tok).status, 404);
    assert_eq!(c.get(&format!("{base}/nope"), &tok).status, 403);
    assert_eq!(c.get(&format!("{base}/ldap/nope"), &tok).status, 403);
    assert_eq!(
        c.get(&format!("{base}/identity/list_limit"), &tok).status,
        404
    );
    let r = c.call("PUT", &base, Some(&tok), Some(json!({"config": cfg})));
    assert_eq!(r.status, 200, "a second PUT replaces");
    for bad in [
        json!({"config": {}}),
        json!({"config": {"nope": {"a": 1}}}),
        json!({"config": {"ldap": {}}}),
    ] {
        let r = c.call("PUT", &base, Some(&tok), Some(bad.clone()));
        assert_eq!(r.status, 403, "{bad}: {}", r.body);
        r.error_message();
    }
    let r = c.call("PUT", &base, Some(&tok), Some(json!({"config": 5})));
    assert_eq!(r.status, 400);

    // Updates of the whole, a group, an option.
    let r = c.patch(
        &base,
        &tok,
        json!({"config": {"identity": {"list_limit": 5}}}),
    );
    assert_eq!(
        r.body["config"]["identity"],
        json!({"driver": "ldap", "list_limit": 5})
    );
    let r = c.patch(
        &format!("{base}/ldap"),
        &tok,
        json!({"config": {"ldap": {"url": "ldap://i/"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["config"]["ldap"]["url"], "ldap://i/");
    let r = c.patch(
        &format!("{base}/ldap"),
        &tok,
        json!({"config": {"identity": {"driver": "x"}}}),
    );
    assert_eq!(r.status, 403);
    let r = c.patch(
        &format!("{base}/identity/driver"),
        &tok,
        json!({"config": {"driver": "sql"}}),
    );
    assert_eq!(r.body["config"]["identity"]["driver"], "sql");
    let r = c.patch(
        &format!("{base}/ldap/suffix"),
        &tok,
        json!({"config": {"suffix": "x"}}),
    );
    assert_eq!(r.status, 404, "an unset option cannot be updated");

    // Admin only.
    assert_eq!(c.get(&base, &mt).status, 403);
    assert_eq!(
        c.call("PUT", &base, Some(&mt), Some(json!({"config": cfg})))
            .status,
        403
    );
    assert_eq!(c.delete(&base, &mt).status, 403);
    assert_eq!(c.get("/domains/nope/config", &tok).status, 404);

    // Deletes.
    assert_eq!(
        c.delete(&format!("{base}/identity/driver"), &tok).status,
        204
    );
    assert_eq!(c.get(&format!("{base}/identity/driver"), &tok).status, 404);
    assert_eq!(
        c.delete(&format!("{base}/identity/driver"), &tok).status,
        404
    );
    assert_eq!(c.delete(&format!("{base}/ldap"), &tok).status, 204);
    assert_eq!(c.get(&format!("{base}/ldap"), &tok).status, 404);
    assert_eq!(c.delete(&base, &tok).status, 204);
    assert_eq!(c.get(&base, &tok).status, 404);

    // Security compliance, for the default domain only.
    let r = c.get("/domains/default/config/security_compliance", &mt);
    assert_eq!(r.status, 200);
    assert!(
        r.body["config"]["security_compliance"]
            .as_object()
            .unwrap()
            .contains_key("password_regex")
    );
    assert_eq!(
        c.get(&format!("{base}/security_compliance"), &tok).status,
        403
    );
}

#[test]
fn projects_acting_as_domains() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let mt = member(&c, &tok);
    let p = c.create(
        &tok,
        "/projects",
        "project",
        json!({"name": "dp", "is_domain": true, "domain_id": null}),
    );
    let id = p["id"].as_str().unwrap();
    assert_eq!(p["is_domain"], true);
    assert_eq!(p["domain_id"], Value::Null);
    assert_eq!(p["parent_id"], Value::Null);
    let r = c.get("/projects?is_domain=True", &tok);
    let ids: Vec<&str> = r.body["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&id) && ids.contains(&"default"), "{ids:?}");
    let r = c.get("/projects", &tok);
    assert!(
        !r.body["projects"].to_string().contains(id),
        "not a plain project"
    );
    assert_eq!(
        c.get(&format!("/domains/{id}"), &tok).body["domain"]["name"],
        "dp"
    );
    assert_eq!(
        c.get(&format!("/projects/{id}"), &tok).body["project"]["is_domain"],
        true
    );
    // Projects can live in it.
    c.create(
        &tok,
        "/projects",
        "project",
        json!({"name": "in", "domain_id": id}),
    );
    for bad in [
        json!({"project": {"name": "x", "is_domain": true, "parent_id": id}}),
        json!({"project": {"name": "x", "is_domain": true, "domain_id": "default"}}),
    ] {
        assert_eq!(c.post("/projects", &tok, bad).status, 400);
    }
    assert_eq!(
        c.post(
            "/projects",
            &mt,
            json!({"project": {"name": "y", "is_domain": true}})
        )
        .status,
        403
    );
    assert_eq!(
        c.delete(&format!("/projects/{id}"), &tok).status,
        403,
        "enabled"
    );
    let r = c.patch(
        &format!("/projects/{id}"),
        &tok,
        json!({"project": {"enabled": false}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["project"]["enabled"], false);
    assert_eq!(c.delete(&format!("/projects/{id}"), &tok).status, 204);
    assert_eq!(c.get(&format!("/domains/{id}"), &tok).status, 404);
    assert_eq!(c.get(&format!("/projects/{id}"), &tok).status, 404);
}

/// Password auth of `user` scoped to a trust; returns the response.
fn trust_login(
    c: &super::common::Client,
    user: &str,
    pw: &str,
    trust: &str,
) -> super::common::Resp {
    c.call(
        "POST",
        "/auth/tokens",
        None,
        Some(json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"id": "default"}, "password": pw}}},
            "scope": {"OS-TRUST:trust": {"id": trust}}}})),
    )
}

fn role_names(token: &Value) -> Vec<String> {
    let mut v: Vec<String> = token["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn trusts_delegate_roles_with_impersonation_and_limited_uses() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "tp"}));
    let pid = p["id"].as_str().unwrap().to_string();
    let delegated = c.create(&tok, "/roles", "role", json!({"name": "delegated"}));
    let did = delegated["id"].as_str().unwrap().to_string();
    let kept = c.create(&tok, "/roles", "role", json!({"name": "kept"}));
    let kid = kept["id"].as_str().unwrap().to_string();
    let tor = c.user(&tok, "tor", "tpw", Some((&pid, "member")));
    for rid in [&did, &kid] {
        let r = c.put(&format!("/projects/{pid}/users/{tor}/roles/{rid}"), &tok);
        assert_eq!(r.status, 204);
    }
    let tee = c.user(&tok, "tee", "epw", None);
    let other = c.user(&tok, "oth", "opw", None);
    let tor_tok = c.token("tor", "tpw", Some("tp"));
    let body = |roles: Value, imp: bool, uses: Value| {
        json!({"trust": {"trustor_user_id": tor, "trustee_user_id": tee, "project_id": pid,
            "impersonation": imp, "roles": roles, "remaining_uses": uses}})
    };

    // Only the trustor creates, and only with roles it holds (Keystone: 404 role).
    let r = c.post(
        "/OS-TRUST/trusts",
        &tor_tok,
        body(json!([{"name": "admin"}]), true, json!(null)),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let tee_tok = c.token("tee", "epw", None);
    let r = c.post(
        "/OS-TRUST/trusts",
        &tee_tok,
        body(json!([{"id": did}]), true, json!(null)),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c.post(
        "/OS-TRUST/trusts",
        &tor_tok,
        body(json!([]), true, json!(null)),
    );
    assert_eq!(r.status, 403, "a project trust needs roles: {}", r.body);
    let mut redeleg = body(json!([{"id": did}]), true, json!(null));
    redeleg["trust"]["allow_redelegation"] = json!(true);
    let r = c.post("/OS-TRUST/trusts", &tor_tok, redeleg);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.error_message().contains("redelegation"));

    let t = c.create(
        &tor_tok,
        "/OS-TRUST/trusts",
        "trust",
        body(json!([{"name": "delegated"}]), true, json!(2))["trust"].clone(),
    );
    assert_eq!(t["roles"][0]["name"], "delegated");
    assert_eq!(t["impersonation"], true);
    let r = c.post(
        "/OS-TRUST/trusts",
        &tor_tok,
        body(json!([{"name": "delegated"}]), true, json!(2)),
    );
    assert_eq!(r.status, 409, "same trust twice: {}", r.body);
    let list = c.get(&format!("/OS-TRUST/trusts?trustor_user_id={tor}"), &tor_tok);
    assert_eq!(list.status, 200);
    let trusts = list.body["trusts"].as_array().unwrap();
    assert_eq!(trusts.len(), 1);
    let trust_id = t["id"].as_str().unwrap().to_string();
    assert_eq!(trusts[0]["id"], trust_id.as_str());
    assert_eq!(trusts[0]["remaining_uses"], 2);
    // The trustee sees it too; a third user neither lists nor reads it.
    assert_eq!(
        c.get(
            &format!("/OS-TRUST/trusts/?trustee_user_id={tee}"),
            &tee_tok
        )
        .body["trusts"][0]["id"],
        trust_id.as_str()
    );
    let oth_tok = c.token("oth", "opw", None);
    assert_eq!(
        c.get(&format!("/OS-TRUST/trusts?trustor_user_id={tor}"), &oth_tok)
            .status,
        403
    );
    assert_eq!(
        c.get(&format!("/OS-TRUST/trusts/{trust_id}"), &oth_tok)
            .status,
        403
    );
    assert_eq!(
        c.get("/OS-TRUST/trusts", &tor_tok).status,
        403,
        "listing all is for admins"
    );
    let shown = c.get(&format!("/OS-TRUST/trusts/{trust_id}"), &tee_tok);
    assert_eq!(shown.status, 200);
    assert_eq!(shown.body["trust"]["roles"][0]["id"], did.as_str());
    let roles = c.get(&format!("/OS-TRUST/trusts/{trust_id}/roles"), &tor_tok);
    assert_eq!(roles.body["roles"].as_array().unwrap().len(), 1);
    assert_eq!(
        c.get(
            &format!("/OS-TRUST/trusts/{trust_id}/roles/{did}"),
            &tee_tok
        )
        .status,
        200
    );
    assert_eq!(
        c.get(
            &format!("/OS-TRUST/trusts/{trust_id}/roles/{kid}"),
            &tee_tok
        )
        .status,
        404
    );
    assert_eq!(
        c.call(
            "HEAD",
            &format!("/OS-TRUST/trusts/{trust_id}/roles/{did}"),
            Some(&tee_tok),
            None
        )
        .status,
        200
    );

    // Only the trustee may use it.
    assert_eq!(trust_login(&c, "oth", "opw", &trust_id).status, 403);
    let _ = other;
    // The trustee's token: the trustor as user (impersonation), the
    // delegated role only.
    let r = trust_login(&c, "tee", "epw", &trust_id);
    assert_eq!(r.status, 201, "{}", r.body);
    let tt = r.header("x-subject-token").unwrap().to_string();
    let t = &r.body["token"];
    assert_eq!(t["user"]["id"], tor.as_str());
    assert_eq!(t["project"]["id"], pid.as_str());
    assert_eq!(role_names(t), ["delegated"]);
    assert_eq!(
        t["OS-TRUST:trust"],
        json!({"id": trust_id, "impersonation": true,
            "trustor_user": {"id": tor}, "trustee_user": {"id": tee}})
    );
    let v = c.validate(&tok, &tt);
    assert_eq!(v.status, 200);
    assert_eq!(v.body["token"]["OS-TRUST:trust"]["id"], trust_id.as_str());
    // A trust token cannot be rescoped, nor create trusts or credentials.
    let r = c.call(
        "POST",
        "/auth/tokens",
        None,
        Some(json!({"auth": {"identity": {"methods": ["token"], "token": {"id": tt}}}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c.post(
        "/OS-TRUST/trusts",
        &tt,
        body(json!([{"id": did}]), false, json!(null)),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c.post(
        &format!("/users/{tor}/application_credentials"),
        &tt,
        json!({"application_credential": {"name": "via-trust"}}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Two uses: the second works, the third finds no trust.
    let r = trust_login(&c, "tee", "epw", &trust_id);
    assert_eq!(r.status, 201, "{}", r.body);
    let tt2 = r.header("x-subject-token").unwrap().to_string();
    assert_eq!(trust_login(&c, "tee", "epw", &trust_id).status, 404);
    // Tokens already issued stay valid until the trust goes.
    assert_eq!(c.get(&format!("/projects/{pid}"), &tt).status, 200);
    assert_eq!(c.get(&format!("/projects/{pid}"), &tt2).status, 200);
}

#[test]
fn trust_tokens_end_with_the_trust_or_the_trustor_role() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "tp"}));
    let pid = p["id"].as_str().unwrap().to_string();
    let tor = c.user(&tok, "tor", "tpw", Some((&pid, "member")));
    let tee = c.user(&tok, "tee", "epw", None);
    let member = c.role_id(&tok, "member");
    let tor_tok = c.token("tor", "tpw", Some("tp"));
    let make = |imp: bool| {
        c.create(
            &tor_tok,
            "/OS-TRUST/trusts",
            "trust",
            json!({
            "trustor_user_id": tor, "trustee_user_id": tee, "project_id": pid,
            "impersonation": imp, "roles": [{"id": member}]}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Without impersonation the trustee is the user; implied roles come along.
    let plain = make(false);
    let r = trust_login(&c, "tee", "epw", &plain);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["token"]["user"]["id"], tee.as_str());
    assert_eq!(role_names(&r.body["token"]), ["member", "reader"]);
    assert_eq!(r.body["token"]["OS-TRUST:trust"]["impersonation"], false);
    let plain_tok = r.header("x-subject-token").unwrap().to_string();
    // Deleting the trust revokes its tokens; only the trustor may delete.
    let tee_tok = c.token("tee", "epw", None);
    assert_eq!(
        c.delete(&format!("/OS-TRUST/trusts/{plain}"), &tee_tok)
            .status,
        403
    );
    assert_eq!(
        c.delete(&format!("/OS-TRUST/trusts/{plain}"), &tor_tok)
            .status,
        204
    );
    assert_eq!(c.get(&format!("/projects/{pid}"), &plain_tok).status, 401);
    assert_eq!(
        c.get(&format!("/OS-TRUST/trusts/{plain}"), &tor_tok).status,
        404
    );
    assert_eq!(trust_login(&c, "tee", "epw", &plain).status, 404);

    // The trustor losing the delegated role ends the trust's tokens.
    let imp = make(true);
    let r = trust_login(&c, "tee", "epw", &imp);
    assert_eq!(r.status, 201, "{}", r.body);
    let imp_tok = r.header("x-subject-token").unwrap().to_string();
    assert_eq!(c.get(&format!("/projects/{pid}"), &imp_tok).status, 200);
    let grant = format!("/projects/{pid}/users/{tor}/roles/{member}");
    assert_eq!(c.delete(&grant, &tok).status, 204);
    assert_eq!(c.get(&format!("/projects/{pid}"), &imp_tok).status, 401);
    assert_eq!(trust_login(&c, "tee", "epw", &imp).status, 403);
    assert_eq!(c.put(&grant, &tok).status, 204);
    let r = trust_login(&c, "tee", "epw", &imp);
    assert_eq!(r.status, 201, "{}", r.body);
    let imp_tok = r.header("x-subject-token").unwrap().to_string();
    // Disabling the trustor revokes them too (the revocation event names
    // the trustor, not the token's user).
    let r = c.patch(
        &format!("/users/{tor}"),
        &tok,
        json!({"user": {"enabled": false}}),
    );
    assert_eq!(r.status, 200);
    let r = c.patch(
        &format!("/users/{tor}"),
        &tok,
        json!({"user": {"enabled": true}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(c.get(&format!("/projects/{pid}"), &imp_tok).status, 401);
    // Deleting the trustee deletes its trusts.
    assert_eq!(c.delete(&format!("/users/{tee}"), &tok).status, 204);
    assert_eq!(c.get(&format!("/OS-TRUST/trusts/{imp}"), &tok).status, 404);
}

#[test]
fn access_rules_are_shared_listed_and_kept_while_used() {
    let s = Server::start();
    let c = s.client();
    let tok = admin(&s);
    let p = c.create(&tok, "/projects", "project", json!({"name": "apps"}));
    let pid = p["id"].as_str().unwrap();
    let uid = c.user(&tok, "dev", "dpw", Some((pid, "member")));
    let dt = c.token("dev", "dpw", Some("apps"));
    let rule = json!({"service": "compute", "path": "/v2.1/servers/*/ips", "method": "GET"});
    let mk = |name: &str, rules: Value| {
        c.post(
            &format!("/users/{uid}/application_credentials"),
            &dt,
            json!({"application_credential": {"name": name, "access_rules": rules}}),
        )
    };
    let r = mk("one", json!([rule]));
    assert_eq!(r.status, 201, "{}", r.body);
    let ac1 = r.body["application_credential"].clone();
    let mut shown = ac1["access_rules"][0].clone();
    let rid = shown["id"].as_str().unwrap().to_string();
    shown.as_object_mut().unwrap().remove("id");
    assert_eq!(shown, rule);
    // An identical rule is the same record.
    let r = mk(
        "two",
        json!([rule, {"service": "image", "path": "/v2/images/**", "method": "GET"}]),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ac2 = r.body["application_credential"].clone();
    assert_eq!(ac2["access_rules"][0]["id"], rid.as_str());
    let list = c.get(&format!("/users/{uid}/access_rules"), &dt);
    assert_eq!(list.status, 200);
    assert_eq!(list.body["access_rules"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.get(&format!("/users/{uid}/access_rules/{rid}"), &dt).body["access_rule"]["service"],
        "compute"
    );
    // Bad rules are 400s.
    for bad in [
        json!([{"service": "compute", "path": "no-slash", "method": "GET"}]),
        json!([{"service": "compute", "path": "/x", "method": "FETCH"}]),
        json!([{"service": "compute", "path": "/x", "method": "GET", "extra": 1}]),
    ] {
        assert_eq!(mk("bad", bad).status, 400);
    }
    // Tokens from such a credential show the rules.
    let auth = json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": {
        "id": ac1["id"], "secret": ac1["secret"]}}}});
    let r = c.call("POST", "/auth/tokens", None, Some(auth));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["token"]["application_credential"]["access_rules"][0]["id"],
        rid.as_str()
    );
    // In use: refused; others cannot read or delete them.
    assert_eq!(
        c.delete(&format!("/users/{uid}/access_rules/{rid}"), &dt)
            .status,
        403
    );
    c.user(&tok, "eve", "epw", Some((pid, "member")));
    let et = c.token("eve", "epw", Some("apps"));
    assert_eq!(
        c.get(&format!("/users/{uid}/access_rules"), &et).status,
        403
    );
    assert_eq!(
        c.delete(&format!("/users/{uid}/access_rules/{rid}"), &et)
            .status,
        403
    );
    for ac in [&ac1, &ac2] {
        let id = ac["id"].as_str().unwrap();
        assert_eq!(
            c.delete(&format!("/users/{uid}/application_credentials/{id}"), &dt)
                .status,
            204
        );
    }
    // Unused rules stay until deleted.
    assert_eq!(
        c.get(&format!("/users/{uid}/access_rules"), &dt).body["access_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        c.delete(&format!("/users/{uid}/access_rules/{rid}"), &dt)
            .status,
        204
    );
    assert_eq!(
        c.get(&format!("/users/{uid}/access_rules/{rid}"), &dt)
            .status,
        404
    );
}
