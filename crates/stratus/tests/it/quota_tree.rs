//! Hierarchical quotas (`--limit-model hierarchical`) and Keystone's
//! strict two-level model, through the real `openstack limit`,
//! `registered limit`, `project` and `quota` commands: limits down a
//! three-level tree, allocation to children, borrowing between siblings
//! and its return, a shared pool under contention, and concurrent creates
//! that never pass a tree's limit.

use serde_json::{Value, json};

use super::cli::Os;
use super::compute::Cloud;

/// A user with the member role on each of `projects`; a token per project.
fn tokens(c: &Cloud, projects: &[&str]) -> Vec<String> {
    let user = c.ks.user(&c.admin, "ops", "pw-12345", None);
    let member = c.ks.role_id(&c.admin, "member");
    projects
        .iter()
        .map(|p| {
            let pid = project_id(c, p);
            let r = c.ks.put(
                &format!("/projects/{pid}/users/{user}/roles/{member}"),
                &c.admin,
            );
            assert_eq!(r.status, 204, "grant: {}", r.body);
            c.ks.token("ops", "pw-12345", Some(p))
        })
        .collect()
}

fn project_id(c: &Cloud, name: &str) -> String {
    let r = c.ks.get(&format!("/projects?name={name}"), &c.admin);
    r.body["projects"][0]["id"].as_str().unwrap().to_string()
}

/// A public image every project can boot.
fn public_image(c: &Cloud) -> String {
    let img = c.image(&c.admin, "tiny");
    let r = c.img.raw(
        "PATCH",
        &format!("/images/{img}"),
        Some(&c.admin),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        Some(json!([{"op": "replace", "path": "/visibility", "value": "public"}]).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    img
}

/// The engine's figures for `servers` of a project.
fn servers_usage(c: &Cloud, project: &str) -> Value {
    let pid = project_id(c, project);
    let r =
        c.ks.get(&format!("/limits/usage?project_id={pid}"), &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["resource_name"] == "servers")
        .cloned()
        .unwrap()
}

fn boot(c: &Cloud, tok: &str, name: &str, img: &str) -> u16 {
    let r = c.boot(tok, name, img, "42", json!({}));
    assert!(
        r.status == 202 || r.status == 403,
        "{}: {}",
        r.status,
        r.body
    );
    r.status
}

fn server_ids(c: &Cloud, tok: &str) -> Vec<String> {
    let r = c.req("GET", "/servers", tok, None);
    r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn delete_one(c: &Cloud, tok: &str) {
    let id = server_ids(c, tok).pop().expect("a server to delete");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), tok, None).status,
        204
    );
    c.wait_gone(tok, &id);
}

/// `openstack limit create --service S --project P --resource-limit N R`.
fn limit_create(os: &Os, service: &str, project: &str, n: &str, resource: &str) {
    os.ok(&limit_args(service, project, n, resource));
}

/// The same, refused; the CLI's output.
fn limit_create_fails(os: &Os, service: &str, project: &str, n: &str, resource: &str) -> String {
    os.fails(&limit_args(service, project, n, resource))
}

fn limit_args<'a>(
    service: &'a str,
    project: &'a str,
    n: &'a str,
    resource: &'a str,
) -> [&'a str; 9] {
    [
        "limit",
        "create",
        "--service",
        service,
        "--project",
        project,
        "--resource-limit",
        n,
        resource,
    ]
}

/// Keystone wants a registered (default) limit before project limits.
fn register_servers(os: &Os) {
    os.ok(&[
        "registered",
        "limit",
        "create",
        "--service",
        "nova",
        "--default-limit",
        "10",
        "servers",
    ]);
}

fn limit_id(os: &Os, project: &str) -> String {
    let l = os.json(&["limit", "list", "--project", project]);
    l[0]["ID"].as_str().unwrap().to_string()
}

#[test]
fn quota_tree_allocation_borrowing_and_limits_through_the_cli() {
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    let r = c.ks.get("/limits/model", &c.admin);
    assert_eq!(r.body["model"]["name"], "hierarchical", "{}", r.body);

    // org -> team-a -> a-dev, org -> team-b: three levels.
    os.ok(&["project", "create", "org"]);
    os.ok(&["project", "create", "--parent", "org", "team-a"]);
    os.ok(&["project", "create", "--parent", "org", "team-b"]);
    os.ok(&["project", "create", "--parent", "team-a", "a-dev"]);
    let toks = tokens(&c, &["a-dev", "team-b"]);
    let (dev, team_b) = (&toks[0], &toks[1]);
    let img = public_image(&c);

    register_servers(&os);
    limit_create(&os, "nova", "org", "6", "servers");
    limit_create(&os, "nova", "team-a", "3", "servers");
    // team-b asks for more than org has left (6 - 3 allocated): refused,
    // and nothing is written.
    let err = limit_create_fails(&os, "nova", "team-b", "4", "servers");
    assert!(err.contains("more than its parent"), "{err}");
    assert!(
        os.json(&["limit", "list", "--project", "team-b"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    limit_create(&os, "nova", "team-b", "2", "servers");
    let org = servers_usage(&c, "org");
    assert_eq!(
        (org["limit"].as_i64(), org["allocated"].as_i64()),
        (Some(6), Some(5)),
        "{org}"
    );
    assert_eq!(org["free"], 1, "{org}");

    // a-dev has no limit: it draws from team-a's 3.
    for i in 0..3 {
        assert_eq!(boot(&c, dev, &format!("d{i}"), &img), 202);
    }
    let a = servers_usage(&c, "team-a");
    assert_eq!(
        (a["in_use"].as_i64(), a["free"].as_i64()),
        (Some(3), Some(0)),
        "{a}"
    );
    let d = servers_usage(&c, "a-dev");
    assert_eq!(d["quota_root"], project_id(&c, "team-a").as_str(), "{d}");
    // Without the parent's consent there is no borrowing.
    assert_eq!(boot(&c, dev, "d3", &img), 403);

    // org lets its children borrow: the fourth server borrows one of
    // team-b's two.
    os.ok(&["project", "set", "--tag", "quota:borrow", "org"]);
    assert_eq!(boot(&c, dev, "d3", &img), 202);
    let a = servers_usage(&c, "team-a");
    assert_eq!(a["borrowed"], 1, "{a}");
    assert_eq!(
        a["loans"][0]["lender"],
        project_id(&c, "team-b").as_str(),
        "{a}"
    );
    let b = servers_usage(&c, "team-b");
    assert_eq!(
        (b["lent"].as_i64(), b["free"].as_i64()),
        (Some(1), Some(1)),
        "{b}"
    );
    // team-b can still use what it has not lent, and no more.
    assert_eq!(boot(&c, team_b, "b0", &img), 202);
    assert_eq!(boot(&c, team_b, "b1", &img), 403);
    // And team-a cannot borrow what team-b now uses.
    assert_eq!(boot(&c, dev, "d4", &img), 403);
    // org's whole tree never holds more than org's limit: 4 + 1 + 1 free
    // of org's own.
    let org = servers_usage(&c, "org");
    assert_eq!(org["free"], 1, "{org}");

    // A freed server returns the loan.
    delete_one(&c, dev);
    let a = servers_usage(&c, "team-a");
    assert_eq!(
        (a["borrowed"].as_i64(), a["in_use"].as_i64()),
        (Some(0), Some(3)),
        "{a}"
    );
    assert_eq!(servers_usage(&c, "team-b")["lent"], 0);
    assert_eq!(boot(&c, team_b, "b1", &img), 202);

    // Nova's own quota API shows the effective limits and the tree figures.
    let out = os.json(&["quota", "show", "--usage", "--compute", "team-a"]);
    let text = out.to_string();
    assert!(
        text.contains("instances") || text.contains("Instances"),
        "{text}"
    );
    let r = c.req(
        "GET",
        &format!("/os-quota-sets/{}/detail", project_id(&c, "team-a")),
        &c.admin,
        None,
    );
    let inst = &r.body["quota_set"]["instances"];
    assert_eq!(
        (inst["limit"].as_i64(), inst["in_use"].as_i64()),
        (Some(3), Some(3)),
        "{inst}"
    );

    // A limit below what the project holds is refused; bad values too.
    let team_a_limit = limit_id(&os, "team-a");
    let err = os.fails(&["limit", "set", "--resource-limit", "1", &team_a_limit]);
    assert!(err.contains("below what it holds"), "{err}");
    let err = os.fails(&["limit", "set", "--resource-limit", "-2", &team_a_limit]);
    assert!(err.contains("-1"), "{err}");
    assert_eq!(
        os.json(&["limit", "show", &team_a_limit])["resource_limit"],
        3
    );
    // Stratus's `force` lowers it anyway (the CLI has no flag for it).
    let r = c.ks.patch(
        &format!("/limits/{team_a_limit}"),
        &c.admin,
        json!({"limit": {"resource_limit": 2, "force": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = servers_usage(&c, "team-a");
    assert_eq!(
        (a["limit"].as_i64(), a["free"].as_i64()),
        (Some(2), Some(0)),
        "{a}"
    );
    // Over its limit now, team-a can create nothing until it is back
    // under (team-b's room is its own: no borrowing while it is in use).
    assert_eq!(boot(&c, dev, "d5", &img), 403);
    let r = c.ks.patch(
        &format!("/limits/{team_a_limit}"),
        &c.admin,
        json!({"limit": {"resource_limit": 3}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Growing a child past its parent's free amount is refused.
    let err = os.fails(&["limit", "set", "--resource-limit", "5", &team_a_limit]);
    assert!(err.contains("more than its parent"), "{err}");
    // The compute quota API keeps the same rule: a-dev given a limit of
    // its own takes it out of team-a's 3.
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{}", project_id(&c, "a-dev")),
        &c.admin,
        Some(json!({"quota_set": {"instances": 9}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);

    // The network service enforces through the same tree: a-dev draws
    // from team-a's one network.
    os.ok(&[
        "registered",
        "limit",
        "create",
        "--service",
        "neutron",
        "--default-limit",
        "100",
        "network",
    ]);
    limit_create(&os, "neutron", "team-a", "1", "network");
    os.ok(&["network", "create", "--project", "a-dev", "n1"]);
    let err = os.fails(&["network", "create", "--project", "a-dev", "n2"]);
    assert!(err.contains("Quota exceeded"), "{err}");
    let r = c.server.client_at("/network/v2.0").get(
        &format!("/quotas/{}/details", project_id(&c, "a-dev")),
        &c.admin,
    );
    let net = &r.body["quota"]["network"];
    assert_eq!(
        net["quota_root"],
        project_id(&c, "team-a").as_str(),
        "{net}"
    );
    assert_eq!(
        (net["used"].as_i64(), net["free"].as_i64()),
        (Some(1), Some(0)),
        "{net}"
    );
}

#[test]
fn quota_shared_pool_keeps_shares_under_contention() {
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    os.ok(&["project", "create", "--tag", "quota:pool", "pool"]);
    os.ok(&["project", "create", "--parent", "pool", "m1"]);
    os.ok(&["project", "create", "--parent", "pool", "m2"]);
    register_servers(&os);
    limit_create(&os, "nova", "pool", "4", "servers");
    let toks = tokens(&c, &["m1", "m2"]);
    let (m1, m2) = (&toks[0], &toks[1]);
    let img = public_image(&c);
    // Nobody waits: m1 may take the whole pool.
    for i in 0..4 {
        assert_eq!(boot(&c, m1, &format!("a{i}"), &img), 202);
    }
    assert_eq!(servers_usage(&c, "m1")["share"], 2);
    // m2 finds it full and now waits for its share.
    assert_eq!(boot(&c, m2, "b0", &img), 403);
    delete_one(&c, m1);
    // m1 is past its share of 2 while m2 waits: the freed room is m2's.
    assert_eq!(boot(&c, m1, "a4", &img), 403);
    assert_eq!(boot(&c, m2, "b0", &img), 202);
    // The pool is full again: m2, under its share, waits once more.
    assert_eq!(boot(&c, m2, "b1", &img), 403);
    delete_one(&c, m1);
    // m2 is under its share and was refused: it waits, so m1 (at 2 of 2
    // now) cannot take the room either.
    assert_eq!(boot(&c, m1, "a5", &img), 403);
    assert_eq!(boot(&c, m2, "b1", &img), 202);
    let pool = servers_usage(&c, "pool");
    assert_eq!(
        (pool["in_use"].as_i64(), pool["free"].as_i64()),
        (Some(4), Some(0)),
        "{pool}"
    );
}

#[test]
fn quota_tree_concurrent_creates_never_pass_the_root_limit() {
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    os.ok(&["project", "create", "root"]);
    os.ok(&["project", "create", "--parent", "root", "left"]);
    os.ok(&["project", "create", "--parent", "root", "right"]);
    os.ok(&["project", "create", "--parent", "left", "deep"]);
    register_servers(&os);
    limit_create(&os, "nova", "root", "7", "servers");
    limit_create(&os, "nova", "right", "3", "servers");
    let toks = tokens(&c, &["root", "left", "right", "deep"]);
    let img = public_image(&c);
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..32 {
            let (c, tok, img, ok) = (&c, &toks[i % toks.len()], &img, &ok);
            s.spawn(move || {
                if boot(c, tok, &format!("s{i}"), img) == 202 {
                    ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), 7);
    let per: Vec<usize> = toks.iter().map(|t| server_ids(&c, t).len()).collect();
    assert_eq!(per.iter().sum::<usize>(), 7, "{per:?}");
    assert!(per[2] <= 3, "right holds {} of its 3", per[2]);
    let root = servers_usage(&c, "root");
    assert_eq!(
        root["in_use"].as_i64().unwrap() + root["allocated"].as_i64().unwrap(),
        4 + 3
    );
}

#[test]
fn quota_strict_two_level_as_keystone() {
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "strict-two-level"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    let r = c.ks.get("/limits/model", &c.admin);
    assert_eq!(r.body["model"]["name"], "strict_two_level", "{}", r.body);
    os.ok(&["project", "create", "parent"]);
    os.ok(&["project", "create", "--parent", "parent", "kid"]);
    // A third level is refused.
    let err = os.fails(&["project", "create", "--parent", "kid", "grandkid"]);
    assert!(err.contains("403") || err.contains("depth"), "{err}");
    register_servers(&os);
    limit_create(&os, "nova", "parent", "3", "servers");
    let err = limit_create_fails(&os, "nova", "kid", "4", "servers");
    assert!(err.contains("bigger than parent"), "{err}");
    limit_create(&os, "nova", "kid", "2", "servers");
    let parent_limit = limit_id(&os, "parent");
    let err = os.fails(&["limit", "set", "--resource-limit", "1", &parent_limit]);
    assert!(err.contains("smaller than child"), "{err}");
    let toks = tokens(&c, &["parent", "kid"]);
    let img = public_image(&c);
    // The parent's 3 cover its own servers and its child's.
    assert_eq!(boot(&c, &toks[1], "k0", &img), 202);
    assert_eq!(boot(&c, &toks[0], "p0", &img), 202);
    assert_eq!(boot(&c, &toks[0], "p1", &img), 202);
    assert_eq!(boot(&c, &toks[1], "k1", &img), 403);
}

#[test]
fn quota_tree_holds_across_two_controllers_on_one_store() {
    // Two API processes on one store (PostgreSQL under
    // STRATUS_TEST_DATABASE): the model is kept in the store, so the
    // second enforces it too, and creates through both never pass a tree.
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    let b = super::reliability::SecondController::start(&c);
    os.ok(&["project", "create", "--tag", "quota:borrow", "top"]);
    os.ok(&["project", "create", "--parent", "top", "x"]);
    os.ok(&["project", "create", "--parent", "top", "y"]);
    os.ok(&["project", "create", "--parent", "x", "x1"]);
    register_servers(&os);
    for (p, n) in [("top", "6"), ("x", "2"), ("y", "3")] {
        limit_create(&os, "nova", p, n, "servers");
    }
    let toks = tokens(&c, &["top", "x1", "y"]);
    let img = public_image(&c);
    let bases = [c.server.url.clone(), b.url.clone()];
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..24 {
            let (base, tok, img, ok) = (&bases[i % 2], &toks[i % 3], &img, &ok);
            s.spawn(move || {
                let body = json!({"server": {"name": format!("t{i}"), "imageRef": img,
                                             "flavorRef": "42", "networks": "none"}});
                let (status, v) = super::reliability::try_call(
                    &format!("{base}/compute/v2.1"),
                    "POST",
                    "/servers",
                    tok,
                    Some(&body),
                )
                .expect("the controller answers");
                match status {
                    202 => {
                        ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    403 => assert!(v.to_string().contains("Quota exceeded"), "{v}"),
                    _ => panic!("{status} {v}"),
                }
            });
        }
    });
    // top keeps 1 of its 6 (2 and 3 allocated); x and y may borrow each
    // other's unused room, but the tree never holds more than 6.
    assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), 6);
    let per: Vec<usize> = toks.iter().map(|t| server_ids(&c, t).len()).collect();
    assert_eq!(per.iter().sum::<usize>(), 6, "{per:?}");
    assert_eq!(per[0], 1, "top's own pool is 1: {per:?}");
    let top = servers_usage(&c, "top");
    assert_eq!(top["free"], 0, "{top}");
}

#[test]
fn quota_flat_compute_follows_keystone_unified_limits() {
    // Under the default (flat) model, Nova's quotas take Keystone's
    // unified limits as Nova's unified-limits driver does: a project's
    // limit over its quota set, a registered limit over the defaults.
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    let r = c.ks.get("/limits/model", &c.admin);
    assert_eq!(r.body["model"]["name"], "flat", "{}", r.body);
    os.ok(&["project", "create", "plain"]);
    os.ok(&["project", "create", "other"]);
    os.ok(&[
        "registered",
        "limit",
        "create",
        "--service",
        "nova",
        "--default-limit",
        "3",
        "servers",
    ]);
    limit_create(&os, "nova", "plain", "1", "servers");
    let shown = os.json(&["quota", "show", "--compute", "plain"]);
    assert!(shown.to_string().contains("\"instances\"") || shown.to_string().contains("Instances"));
    let r = c.req(
        "GET",
        &format!("/os-quota-sets/{}", project_id(&c, "plain")),
        &c.admin,
        None,
    );
    assert_eq!(r.body["quota_set"]["instances"], 1, "{}", r.body);
    let r = c.req(
        "GET",
        &format!("/os-quota-sets/{}", project_id(&c, "other")),
        &c.admin,
        None,
    );
    assert_eq!(r.body["quota_set"]["instances"], 3, "{}", r.body);
    let toks = tokens(&c, &["plain"]);
    let img = public_image(&c);
    assert_eq!(boot(&c, &toks[0], "one", &img), 202);
    assert_eq!(boot(&c, &toks[0], "two", &img), 403);
    let id = limit_id(&os, "plain");
    os.ok(&["limit", "set", "--resource-limit", "2", &id]);
    assert_eq!(boot(&c, &toks[0], "two", &img), 202);
}

#[test]
fn quota_tree_usage_is_the_truth_after_a_kill_during_a_burst() {
    let mut c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    os.ok(&["project", "create", "base"]);
    os.ok(&["project", "create", "--parent", "base", "xa"]);
    os.ok(&["project", "create", "--parent", "base", "yb"]);
    os.ok(&["project", "create", "--parent", "yb", "yb-kid"]);
    register_servers(&os);
    for (p, n) in [("base", "30"), ("xa", "10")] {
        limit_create(&os, "nova", p, n, "servers");
    }
    // Servers are what is counted here: cores and RAM unlimited.
    os.ok(&["quota", "set", "--cores", "-1", "--ram", "-1", "base"]);
    let toks = tokens(&c, &["base", "xa", "yb", "yb-kid"]);
    let img = public_image(&c);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let nova = c.nova.base.clone();
    std::thread::scope(|s| {
        for (t, tok) in toks.iter().enumerate() {
            let (nova, img, stop) = (&nova, &img, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 40 {
                    i += 1;
                    let body = json!({"server": {"name": format!("k{t}-{i}"), "imageRef": img,
                                                 "flavorRef": "42", "networks": "none"}});
                    // Refused, accepted or cut off by the kill: all fine.
                    let _ =
                        super::reliability::try_call(nova, "POST", "/servers", tok, Some(&body));
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
        c.server.stop("-KILL");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        c.server.restart_after_stop();
    });
    // What the engine counts is what exists.
    let count = |i: usize| server_ids(&c, &toks[i]).len() as i64;
    let (n_base, n_xa, n_yb, n_kid) = (count(0), count(1), count(2), count(3));
    let base = servers_usage(&c, "base");
    assert_eq!(
        base["in_use"].as_i64(),
        Some(n_base + n_yb + n_kid),
        "{base}"
    );
    assert_eq!(base["allocated"], 10, "{base}");
    let xa = servers_usage(&c, "xa");
    assert_eq!(xa["in_use"].as_i64(), Some(n_xa), "{xa}");
    assert!(
        n_xa <= 10 && n_base + n_yb + n_kid <= 20,
        "{n_base} {n_xa} {n_yb} {n_kid}"
    );
    // And creating goes on from there, up to the limit exactly.
    let free = base["free"].as_i64().unwrap();
    for i in 0..free {
        assert_eq!(boot(&c, &toks[3], &format!("after{i}"), &img), 202);
    }
    assert_eq!(boot(&c, &toks[3], "over", &img), 403);
}

#[test]
fn quota_tree_a_parent_limit_lowered_under_its_allocations_still_bounds_the_tree() {
    let c = Cloud::start(&["--driver", "fake", "--limit-model", "hierarchical"]);
    let Some(os) = Os::new(&c.server) else { return };
    c.wait_nodes(1);
    os.ok(&["project", "create", "up"]);
    os.ok(&["project", "create", "--parent", "up", "down"]);
    register_servers(&os);
    limit_create(&os, "nova", "up", "4", "servers");
    limit_create(&os, "nova", "down", "4", "servers");
    let toks = tokens(&c, &["down"]);
    let img = public_image(&c);
    assert_eq!(boot(&c, &toks[0], "d0", &img), 202);
    // The parent's limit cannot go under what it allocated ...
    let up_limit = limit_id(&os, "up");
    let err = os.fails(&["limit", "set", "--resource-limit", "2", &up_limit]);
    assert!(err.contains("below what it holds"), "{err}");
    // ... unless forced.
    let r = c.ks.patch(
        &format!("/limits/{up_limit}"),
        &c.admin,
        json!({"limit": {"resource_limit": 2, "force": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // ... and the child, within its own 4, is still held to the parent's 2.
    assert_eq!(boot(&c, &toks[0], "d1", &img), 202);
    assert_eq!(boot(&c, &toks[0], "d2", &img), 403);
}
