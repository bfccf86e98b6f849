//! Edge sites against the real binary: a root with a sync listener, a
//! site controller (`stratus up --parent ... --join-token ...`, with its
//! own store and its own node agent) that joins it over TLS, takes the
//! root's identity, flavors, images and Fernet keys, and keeps serving
//! them while its link to the root is cut.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Client, bin, free_port, unique_dir};
use super::compute::Cloud;

/// A site controller process; killed (and its data removed) when dropped.
pub(super) struct Site {
    child: Child,
    pub(super) url: String,
    dir: PathBuf,
    log: PathBuf,
    port: u16,
    parent: String,
    extra: Vec<String>,
}

impl Site {
    pub(super) fn start(parent_sync: &str, token: &str) -> Site {
        Self::start_with(parent_sync, token, &[])
    }

    /// Starts a site with `extra` arguments (e.g. its own `--sync-listen`).
    fn start_with(parent_sync: &str, token: &str, extra: &[&str]) -> Site {
        let dir = unique_dir();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("stratus-it-site-{port}.log"));
        let _ = std::fs::remove_file(&log);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(&dir, port, &log, parent_sync, token, &extra);
        Site {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            log,
            port,
            parent: parent_sync.to_string(),
            extra,
        }
    }

    fn spawn(
        dir: &std::path::Path,
        port: u16,
        log: &std::path::Path,
        parent: &str,
        token: &str,
        extra: &[String],
    ) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin())
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .args(["--parent", parent, "--join-token", token])
            .args(["--driver", "fake", "--public-network", "none"])
            .args(["--node-name", &format!("site-node-{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("start the site");
        let ks = Client {
            base: format!("http://127.0.0.1:{port}/identity/v3"),
        };
        let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening() || ks.call("GET", "", None, None).status != 200 {
            assert!(Instant::now() < deadline, "the site did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Kills the site with `sig` and starts it again on the same data
    /// dir, with `token` on its command line.
    fn restart(&mut self, sig: &str, token: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(
            &self.dir,
            self.port,
            &self.log,
            &self.parent,
            token,
            &self.extra,
        );
    }

    fn ks(&self) -> Client {
        self.at("/identity/v3")
    }

    pub(super) fn at(&self, prefix: &str) -> Client {
        Client {
            base: format!("{}{prefix}", self.url),
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// A further node agent (fake driver) joined to a site controller.
struct SiteAgent {
    child: Child,
}

impl SiteAgent {
    fn start(site: &Site, name: &str) -> SiteAgent {
        let out = Command::new(bin())
            .args(["admin", "node-token", "--data-dir"])
            .arg(&site.dir)
            .args(["--node-name", name])
            .output()
            .expect("stratus admin node-token");
        assert!(
            out.status.success(),
            "node-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(site.dir.join(format!("{name}.log")))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["agent", "--controller", &site.url, "--node-name", name])
            .args(["--driver", "fake", "--heartbeat", "1"])
            .arg("--data-dir")
            .arg(site.dir.join(name));
        for (k, _) in std::env::vars() {
            if (k.starts_with("STRATUS_") || k.starts_with("OS_")) && k != "STRATUS_LOG" {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("STRATUS_JOIN_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        SiteAgent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SiteAgent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `sig` to the root (`-STOP` cuts every link to it at once).
fn signal(c: &Cloud, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &c.server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// Polls `f` until it holds, for at most `secs`.
pub(super) fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A root cloud with a sync listener; the listener's URL.
fn root() -> (Cloud, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let c = Cloud::start(&["--sync-listen", &listen, "--driver", "fake"]);
    (c, format!("https://{listen}"))
}

/// A root whose sites are down after 4 s without an exchange, and a link
/// to its sync listener that a test can cut.
pub(super) fn root_behind_link() -> (Cloud, Link) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let c = Cloud::start(&[
        "--sync-listen",
        &listen,
        "--driver",
        "fake",
        "--site-down-time",
        "4",
    ]);
    let link = Link::new(&listen);
    (c, link)
}

/// Waits until the site takes the root's tokens and its one node has
/// registered there.
pub(super) fn wait_site_node(site: &Site, admin: &str) {
    eventually(30, "the site's node registers", || {
        site.ks().validate(admin, admin).status == 200
            && site.at("/compute/v2.1").get("/os-hypervisors", admin).body["hypervisors"]
                .as_array()
                .is_some_and(|h| h.len() == 1)
    });
}

pub(super) fn create_site(c: &Cloud, name: &str) -> (String, String) {
    let edge = c.server.client_at("/edge/v1");
    let r = edge.post("/sites", &c.admin, json!({"site": {"name": name}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["join_token"].as_str().unwrap().to_string();
    (r.body["site"]["id"].as_str().unwrap().to_string(), token)
}

pub(super) fn site_state(c: &Cloud, id: &str) -> Value {
    let r = c
        .server
        .client_at("/edge/v1")
        .get(&format!("/sites/{id}"), &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["site"].clone()
}

#[test]
fn sites_are_made_by_admins_only_and_refuse_bad_names() {
    let (c, _) = root();
    let edge = c.server.client_at("/edge/v1");
    let (_, member) = c.project("not-admin");
    let r = edge.post("/sites", &member, json!({"site": {"name": "edge-x"}}));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    assert_eq!(edge.get("/sites", &member).status, 403);
    assert_eq!(edge.call("GET", "/sites", None, None).status, 401);
    for bad in [
        json!({"site": {"name": ""}}),
        json!({"site": {"name": "nova"}}),
        json!({"site": {}}),
        json!({"name": "x"}),
    ] {
        let r = edge.post("/sites", &c.admin, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    }
    let (_, _) = create_site(&c, "edge-x");
    let r = edge.post("/sites", &c.admin, json!({"site": {"name": "edge-x"}}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(edge.get("/sites/nope", &c.admin).status, 404);
}

#[test]
fn sites_a_root_token_validates_at_a_site_while_its_link_is_cut() {
    let (c, sync) = root();
    let (site_id, token) = create_site(&c, "edge-1");
    assert_eq!(site_state(&c, &site_id)["state"], "joining");
    let site = Site::start(&sync, &token);

    // The site joins, takes the root's identity and keys, and the root's
    // admin token is good there.
    eventually(30, "the site joins and syncs", || {
        site.ks().validate(&c.admin, &c.admin).status == 200
    });
    eventually(10, "the root sees the site active", || {
        site_state(&c, &site_id)["state"] == "active"
    });
    let s = site_state(&c, &site_id);
    assert!(s["certificate_expires_at"].is_string(), "{s}");
    assert!(s["last_contact"].is_string(), "{s}");
    // The join token was for one use.
    let r = c.server.client_at("/edge/v1").post(
        "/sites",
        &c.admin,
        json!({"site": {"name": "edge-1"}}),
    );
    assert_eq!(r.status, 409, "{}", r.body);

    // The site is an availability zone at the root.
    let r = c.nova.get("/os-availability-zone", &c.admin);
    let zones = r.body["availabilityZoneInfo"].as_array().unwrap();
    assert!(
        zones
            .iter()
            .any(|z| z["zoneName"] == "edge-1" && z["zoneState"]["available"] == true),
        "{}",
        r.body
    );

    // Its link shows in the root's metrics.
    let r = c.server.client_at("").get("/metrics", &c.admin);
    assert_eq!(r.status, 200);
    let text = r.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.lines()
            .any(|l| l == "stratus_site_up{site=\"edge-1\"} 1"),
        "{text}"
    );
    eventually(30, "the site's node in the root's metrics", || {
        let r = c.server.client_at("").get("/metrics", &c.admin);
        r.body.as_str().is_some_and(|t| {
            t.lines()
                .any(|l| l == "stratus_site_nodes{site=\"edge-1\",state=\"up\"} 1")
        })
    });
    assert!(
        text.contains("stratus_site_revision_lag{site=\"edge-1\"}"),
        "{text}"
    );

    // Flavors come from the root; the site's own node agent joined the
    // site, not the root.
    let names = |v: &Value| -> Vec<(String, String)> {
        v["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().into(),
                    f["name"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let r = site.at("/compute/v2.1").get("/flavors", &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        names(&r.body),
        names(&c.nova.get("/flavors", &c.admin).body)
    );
    eventually(30, "the site's node registers at the site", || {
        site.at("/compute/v2.1")
            .get("/os-hypervisors", &c.admin)
            .body["hypervisors"]
            .as_array()
            .is_some_and(|h| h.len() == 1)
    });
    let root_nodes = c.nova.get("/os-hypervisors", &c.admin).body["hypervisors"].clone();
    assert!(
        !root_nodes.to_string().contains("site-node-"),
        "the site's node went to the root: {root_nodes}"
    );

    // A user made at the root after the join reaches the site.
    c.ks.user(&c.admin, "alice-edge", "secret-edge-1", None);
    eventually(10, "a new root user logs in at the site", || {
        site.ks().login("alice-edge", "secret-edge-1", None).status == 201
    });
    let alice_token = c.ks.token("alice-edge", "secret-edge-1", None);

    // Cut the link: the root stops answering. The site keeps validating
    // root-issued tokens and logging users in.
    signal(&c, "-STOP");
    assert_eq!(site.ks().validate(&c.admin, &c.admin).status, 200);
    assert_eq!(site.ks().validate(&c.admin, &alice_token).status, 200);
    assert_eq!(
        site.ks().login("alice-edge", "secret-edge-1", None).status,
        201
    );
    let r = site.at("/compute/v2.1").get("/flavors", &alice_token);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_secs(1));
    let r = site.at("/edge/v1").get("/parent", &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["parent"]["site_id"], site_id.as_str());
    signal(&c, "-CONT");

    // A token revoked at the root is refused at the site soon after.
    let r = c.ks.raw(
        "DELETE",
        "/auth/tokens",
        Some(&c.admin),
        &[("X-Subject-Token", alice_token.as_str())],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(15, "the revocation reaches the site", || {
        site.ks().validate(&c.admin, &alice_token).status == 404
    });
}

/// Creates flavor `name` at the root (flavors go down to every site).
fn flavor(c: &Cloud, name: &str) {
    let r = c.nova.post(
        "/flavors",
        &c.admin,
        json!({"flavor": {"name": name, "ram": 64, "vcpus": 1, "disk": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

pub(super) fn has_flavor(site: &Site, admin: &str, name: &str) -> bool {
    let r = site.at("/compute/v2.1").get("/flavors", admin);
    r.status == 200
        && r.body["flavors"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x["name"] == name))
}

#[test]
fn sites_certificates_rotate_and_a_revoked_site_is_refused_until_it_joins_again() {
    let (c, sync) = root();
    let (id, token) = create_site(&c, "edge-rot");
    let mut site = Site::start(&sync, &token);
    eventually(30, "the site joins", || {
        site_state(&c, &id)["state"] == "active"
    });
    let first = site_state(&c, &id)["certificate_fingerprint"].clone();
    assert!(first.is_string(), "{first}");

    // Rotation: the site takes a new certificate over its link, and the
    // link goes on with it.
    let edge = c.server.client_at("/edge/v1");
    let r = edge.post(&format!("/sites/{id}/rotate"), &c.admin, json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(20, "the certificate is rotated", || {
        let fp = site_state(&c, &id)["certificate_fingerprint"].clone();
        fp.is_string() && fp != first
    });
    flavor(&c, "after-rotation");
    eventually(
        20,
        "a change reaches the site over the new certificate",
        || has_flavor(&site, &c.admin, "after-rotation"),
    );

    // Revocation: the link is refused at once; nothing more goes down.
    let r = edge.post(&format!("/sites/{id}/revoke"), &c.admin, json!({}));
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(site_state(&c, &id)["state"], "revoked");
    flavor(&c, "after-revocation");
    eventually(20, "the site sees its link refused", || {
        let p = site.at("/edge/v1").get("/parent", &c.admin).body["parent"].clone();
        p["state"] == "disconnected" && p["last_error"].as_str().is_some_and(|e| e.contains("403"))
    });
    assert!(!has_flavor(&site, &c.admin, "after-revocation"));
    // A member may not rotate, revoke or make tokens.
    let (_, member) = c.project("rot-member");
    for action in ["rotate", "revoke", "token"] {
        let r = edge.post(&format!("/sites/{id}/{action}"), &member, json!({}));
        assert_eq!(r.status, 403, "{action}: {}", r.body);
    }

    // A new token joins it again (its data and cursor kept).
    let r = edge.post(&format!("/sites/{id}/token"), &c.admin, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let again = r.body["join_token"].as_str().unwrap().to_string();
    site.restart("-TERM", &again);
    eventually(30, "the site is back", || {
        site_state(&c, &id)["state"] == "active"
    });
    eventually(20, "the change made while it was revoked arrives", || {
        has_flavor(&site, &c.admin, "after-revocation")
    });
}

#[test]
fn sites_a_site_killed_mid_sync_applies_every_change_exactly_once() {
    let (c, sync) = root();
    let (id, token) = create_site(&c, "edge-kill");
    let mut site = Site::start(&sync, &token);
    eventually(30, "the site joins", || {
        site_state(&c, &id)["state"] == "active"
    });
    // Changes stream down while the site is killed with -9 twice.
    let names: Vec<String> = (0..150).map(|i| format!("kill-{i:03}")).collect();
    for (i, n) in names.iter().enumerate() {
        flavor(&c, n);
        if i == 50 || i == 100 {
            site.restart("-KILL", &token);
        }
    }
    eventually(60, "every change reaches the site", || {
        let r = site
            .at("/compute/v2.1")
            .get("/flavors?limit=1000", &c.admin);
        let got = r.body["flavors"].as_array().map(|f| {
            f.iter()
                .filter(|x| x["name"].as_str().is_some_and(|n| n.starts_with("kill-")))
                .count()
        });
        got == Some(names.len())
    });
    // The site's own change log holds each flavor exactly once: no batch
    // was applied twice, none lost.
    let store = stratus_store::Store::open(
        &site.dir.join("stratus.db"),
        stratus_store::Durability::Full,
    )
    .unwrap();
    let mut seen = std::collections::HashMap::new();
    for ch in store.changes_since(0, 1_000_000).unwrap() {
        if ch.kind == "flavor"
            && let Some(b) = &ch.body
            && b.contains("\"kill-")
        {
            *seen.entry(ch.id.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), names.len());
    assert!(seen.values().all(|n| *n == 1), "applied twice: {seen:?}");
}

#[test]
fn sites_a_root_killed_mid_sync_loses_and_repeats_nothing_either_way() {
    let (mut c, sync) = root();
    let (id, token) = create_site(&c, "edge-rk");
    let site = Site::start(&sync, &token);
    eventually(30, "the site joins", || {
        site_state(&c, &id)["state"] == "active"
    });
    let (_, tok) = c.project("edge-rk-tenant");
    let img = c.image(&tok, "tiny");
    // Servers for the site go down and their states come up, flavors go
    // down, while the root is killed with -9 twice.
    let mut servers = Vec::new();
    let names: Vec<String> = (0..120).map(|i| format!("rk-{i:03}")).collect();
    for (i, n) in names.iter().enumerate() {
        flavor(&c, n);
        if i % 20 == 0 {
            let r = c.nova.post(
                "/servers",
                &tok,
                json!({"server": {"name": n, "imageRef": img, "flavorRef": "42",
                                  "availability_zone": "edge-rk", "networks": "none"}}),
            );
            assert_eq!(r.status, 202, "{}", r.body);
            servers.push(r.body["server"]["id"].as_str().unwrap().to_string());
        }
        if i == 45 || i == 90 {
            c.server.stop("-KILL");
            c.server.restart_after_stop();
            c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
        }
    }
    eventually(90, "every flavor reaches the site", || {
        let r = site
            .at("/compute/v2.1")
            .get("/flavors?limit=1000", &c.admin);
        r.body["flavors"].as_array().map(|f| {
            f.iter()
                .filter(|x| x["name"].as_str().is_some_and(|n| n.starts_with("rk-")))
                .count()
        }) == Some(names.len())
    });
    for s in &servers {
        eventually(90, "every server's state rises to the root", || {
            status_at(&c.server.url, &tok, s).is_some_and(|v| v["status"] == "ACTIVE")
        });
    }
    // Each server was built once at the site, each flavor written once.
    let store = stratus_store::Store::open(
        &site.dir.join("stratus.db"),
        stratus_store::Durability::Full,
    )
    .unwrap();
    let mut seen = std::collections::HashMap::new();
    let mut spawned = std::collections::HashMap::new();
    for ch in store.changes_since(0, 1_000_000).unwrap() {
        if ch.kind == "flavor"
            && let Some(b) = &ch.body
            && b.contains("\"rk-")
        {
            *seen.entry(ch.id.clone()).or_insert(0) += 1;
        }
        if ch.kind == "server"
            && let Some(b) = &ch.body
            && b.contains("\"task_state\":\"spawning\"")
        {
            *spawned.entry(ch.id.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), names.len());
    assert!(seen.values().all(|n| *n == 1), "applied twice: {seen:?}");
    assert_eq!(spawned.len(), servers.len(), "{spawned:?}");
    assert!(
        spawned.values().all(|n| *n == 1),
        "built twice: {spawned:?}"
    );
    let r = site
        .at("/compute/v2.1")
        .get("/servers?all_tenants=1", &c.admin);
    assert_eq!(
        r.body["servers"].as_array().unwrap().len(),
        servers.len(),
        "{}",
        r.body
    );
}

#[test]
fn sites_a_server_made_at_a_connected_site_is_adopted_by_the_root() {
    let (c, sync) = root();
    let (id, token) = create_site(&c, "edge-adopt");
    let site = Site::start(&sync, &token);
    eventually(30, "the site joins", || {
        site_state(&c, &id)["state"] == "active"
    });
    let (_, tok) = c.project("edge-adopt-tenant");
    let img = c.image(&tok, "tiny");
    eventually(30, "the image reaches the site", || {
        site.at("/image/v2")
            .get(&format!("/images/{img}"), &tok)
            .body["status"]
            == "active"
    });
    let r = site.at("/compute/v2.1").raw(
        "POST",
        "/servers",
        Some(&tok),
        &[super::compute::MV],
        Some(
            json!({"server": {"name": "local", "imageRef": img, "flavorRef": "42",
                              "networks": "none"}})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let local = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(30, "the root adopts the server made at the site", || {
        status_at(&c.server.url, &tok, &local).is_some_and(|s| {
            s["status"] == "ACTIVE" && s["OS-EXT-AZ:availability_zone"] == "edge-adopt"
        })
    });
}

#[test]
fn sites_resize_migrate_shelve_and_rescue_asked_at_the_root_are_carried_out_by_the_site() {
    let (c, sync) = root();
    let (site_id, token) = create_site(&c, "edge-act");
    let site = Site::start(&sync, &token);
    let _second = SiteAgent::start(&site, "act-b");
    eventually(30, "the site's two nodes register", || {
        site_state(&c, &site_id)["resources"]["nodes_up"] == 2
    });
    let r = c.nova.post(
        "/flavors",
        &c.admin,
        json!({"flavor": {"name": "act-bigger", "ram": 128, "vcpus": 2, "disk": 1}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let bigger = r.body["flavor"]["id"].as_str().unwrap().to_string();
    let (_, tok) = c.project("edge-act-tenant");
    let img = c.image(&tok, "tiny");
    let r = c.nova.post(
        "/servers",
        &tok,
        json!({"server": {"name": "acted", "imageRef": img, "flavorRef": "42",
                          "availability_zone": "edge-act", "networks": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let at = |base: &str| status_at(base, &c.admin, &id).unwrap();
    eventually(60, "ACTIVE at the root", || {
        at(&c.server.url)["status"] == "ACTIVE"
    });
    let act = |token: &str, body: Value| {
        c.nova.raw(
            "POST",
            &format!("/servers/{id}/action"),
            Some(token),
            &[super::compute::MV],
            Some(body.to_string()),
        )
    };
    let cores_used = || {
        c.nova.get("/limits", &tok).body["limits"]["absolute"]["totalCoresUsed"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(cores_used(), 1);

    // A resize: the site claims on its node and applies it; the root shows
    // VERIFY_RESIZE and the new flavor, and counts it.
    let r = act(&tok, json!({"resize": {"flavorRef": "42"}}));
    assert_eq!(r.status, 400, "the site's refusal comes back: {}", r.body);
    assert!(
        r.body.to_string().contains("must change flavor"),
        "{}",
        r.body
    );
    eventually(30, "the flavor reaches the site", || {
        has_flavor(&site, &c.admin, "act-bigger")
    });
    let r = act(&tok, json!({"resize": {"flavorRef": bigger}}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(30, "VERIFY_RESIZE rises to the root", || {
        let s = at(&c.server.url);
        s["status"] == "VERIFY_RESIZE" && s["flavor"]["id"] == bigger.as_str()
    });
    let r = act(&tok, json!({"confirmResize": null}));
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(30, "ACTIVE with the new flavor at both", || {
        [&c.server.url, &site.url].iter().all(|b| {
            let s = at(b);
            s["status"] == "ACTIVE" && s["flavor"]["id"] == bigger.as_str()
        })
    });
    // Still the new flavor after the root asks something else of it.
    let r = c.nova.raw(
        "PUT",
        &format!("/servers/{id}"),
        Some(&tok),
        &[super::compute::MV],
        Some(json!({"server": {"name": "acted-renamed"}}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(30, "the rename reaches the site", || {
        at(&site.url)["name"] == "acted-renamed"
    });
    assert_eq!(at(&site.url)["flavor"]["id"], bigger.as_str());
    let events = c
        .nova
        .get(&format!("/servers/{id}/os-instance-actions"), &tok);
    let names: Vec<&str> = events.body["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert!(
        names.contains(&"resize") && names.contains(&"confirmResize"),
        "{names:?}"
    );

    // A cold migration (admin): the site's scheduler picks its other node.
    let before = at(&c.server.url)["OS-EXT-SRV-ATTR:host"].clone();
    let r = act(&tok, json!({"migrate": null}));
    assert_eq!(r.status, 403, "a member may not migrate: {}", r.body);
    let r = act(&c.admin, json!({"migrate": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(30, "VERIFY_RESIZE after the migration", || {
        at(&c.server.url)["status"] == "VERIFY_RESIZE"
    });
    let r = act(&c.admin, json!({"confirmResize": null}));
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(
        30,
        "ACTIVE on the site's other node, seen at the root",
        || {
            let s = at(&c.server.url);
            s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] != before
        },
    );

    // Shelve and unshelve.
    let r = act(&tok, json!({"shelve": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(60, "SHELVED_OFFLOADED at the root", || {
        at(&c.server.url)["status"] == "SHELVED_OFFLOADED"
    });
    let r = act(&tok, json!({"unshelve": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(60, "ACTIVE again after unshelve", || {
        at(&c.server.url)["status"] == "ACTIVE"
    });
    // A snapshot's data would have to rise over the link: refused here
    // with the reason, nothing made.
    let images = || {
        c.img.get("/images", &tok).body["images"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = images();
    let r = act(&tok, json!({"createImage": {"name": "snap"}}));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.to_string().contains("edge site"), "{}", r.body);
    assert_eq!(images(), before);

    // Rescue and unrescue.
    let r = act(&tok, json!({"rescue": null}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["adminPass"].is_string(), "{}", r.body);
    eventually(30, "RESCUE at the root", || {
        at(&c.server.url)["status"] == "RESCUE"
    });
    let r = act(&tok, json!({"unrescue": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(30, "ACTIVE after unrescue", || {
        at(&c.server.url)["status"] == "ACTIVE"
    });
    assert_eq!(cores_used(), 2);
}

/// A server's status at a controller (`None` once it is gone).
pub(super) fn status_at(base: &str, token: &str, id: &str) -> Option<Value> {
    let r = Client {
        base: format!("{base}/compute/v2.1"),
    }
    .raw(
        "GET",
        &format!("/servers/{id}"),
        Some(token),
        &[super::compute::MV],
        None,
    );
    match r.status {
        200 => Some(r.body["server"].clone()),
        404 => None,
        s => panic!("GET server {id}: {s} {}", r.body),
    }
}

#[test]
fn sites_a_server_created_at_the_root_runs_at_a_leaf_two_levels_down_and_its_state_rises() {
    let (c, sync) = root();
    // root -> region -> leaf
    let (region_id, token) = create_site(&c, "region-1");
    let region_sync = format!("127.0.0.1:{}", free_port());
    let region = Site::start_with(
        &sync,
        &token,
        &["--no-agent", "--sync-listen", &region_sync],
    );
    eventually(30, "the region joins and syncs", || {
        region.ks().validate(&c.admin, &c.admin).status == 200
    });
    let r = region
        .at("/edge/v1")
        .post("/sites", &c.admin, json!({"site": {"name": "leaf-1"}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let leaf_token = r.body["join_token"].as_str().unwrap().to_string();
    let leaf = Site::start(&format!("https://{region_sync}"), &leaf_token);
    eventually(30, "the leaf's node registers at the leaf", || {
        leaf.ks().validate(&c.admin, &c.admin).status == 200
            && leaf
                .at("/compute/v2.1")
                .get("/os-hypervisors", &c.admin)
                .body["hypervisors"]
                .as_array()
                .is_some_and(|h| h.len() == 1)
    });
    // The leaf is a zone at the root, through the region.
    eventually(30, "the root lists the leaf's zone", || {
        c.nova.get("/os-availability-zone", &c.admin).body["availabilityZoneInfo"]
            .as_array()
            .is_some_and(|z| z.iter().any(|z| z["zoneName"] == "leaf-1"))
    });
    assert_eq!(site_state(&c, &region_id)["state"], "active");

    // A tenant creates a server at the root in the leaf's zone.
    let (_, tok) = c.project("edge-tenant");
    let img = c.image(&tok, "tiny");
    let r = c.nova.post(
        "/servers",
        &tok,
        json!({"server": {"name": "far", "imageRef": img, "flavorRef": "42",
                          "availability_zone": "leaf-1", "networks": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();

    // It runs at the leaf, and its state rises to the root.
    eventually(60, "the server is ACTIVE at the leaf", || {
        status_at(&leaf.url, &c.admin, &id).is_some_and(|s| s["status"] == "ACTIVE")
    });
    eventually(30, "ACTIVE rises to the root", || {
        status_at(&c.server.url, &tok, &id).is_some_and(|s| s["status"] == "ACTIVE")
    });
    let at_root = status_at(&c.server.url, &c.admin, &id).unwrap();
    assert_eq!(
        at_root["OS-EXT-AZ:availability_zone"], "leaf-1",
        "{at_root}"
    );
    assert!(
        at_root["OS-EXT-SRV-ATTR:host"]
            .as_str()
            .is_some_and(|h| h.starts_with("site-node-")),
        "{at_root}"
    );
    assert_eq!(at_root["OS-EXT-STS:power_state"], 1, "{at_root}");
    // The region passed it on; it has no node of its own.
    let at_region = status_at(&region.url, &c.admin, &id).unwrap();
    assert_eq!(at_region["status"], "ACTIVE", "{at_region}");
    // The leaf's node, with the server on it, shows at the root under
    // the region (in the leaf's zone).
    eventually(40, "the leaf's node reaches the root", || {
        let v = site_state(&c, &region_id);
        v["resources"]["nodes_up"] == 1
            && v["resources"]["running_vms"] == 1
            && v["nodes"][0]["zone"] == "leaf-1"
            && v["nodes"][0]["vcpus"].as_u64() > Some(0)
    });

    // Its console log comes up through both links (the root dials
    // nothing): the same text the leaf serves itself.
    let console = |base: &str| {
        Client {
            base: format!("{base}/compute/v2.1"),
        }
        .raw(
            "POST",
            &format!("/servers/{id}/action"),
            Some(&c.admin),
            &[super::compute::MV],
            Some(json!({"os-getConsoleOutput": {"length": 50}}).to_string()),
        )
    };
    let here = console(&leaf.url);
    assert_eq!(here.status, 200, "{}", here.body);
    let r = console(&c.server.url);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["output"], here.body["output"]);
    assert!(r.body["output"].is_string(), "{}", r.body);

    // A stop asked at the root is carried out at the leaf.
    let r = c.nova.post(
        &format!("/servers/{id}/action"),
        &tok,
        json!({"os-stop": null}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(60, "SHUTOFF at the leaf", || {
        status_at(&leaf.url, &c.admin, &id).is_some_and(|s| s["status"] == "SHUTOFF")
    });
    eventually(30, "SHUTOFF rises to the root", || {
        status_at(&c.server.url, &tok, &id)
            .is_some_and(|s| s["status"] == "SHUTOFF" && s["OS-EXT-STS:task_state"].is_null())
    });

    // A delete at the root removes it everywhere.
    let r = c.nova.delete(&format!("/servers/{id}"), &tok);
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(60, "the server is gone at the leaf", || {
        status_at(&leaf.url, &c.admin, &id).is_none()
    });
    eventually(30, "the server is gone at the region", || {
        status_at(&region.url, &c.admin, &id).is_none()
    });
    // A sibling of the region never saw it.
    let (_, other_token) = create_site(&c, "other-1");
    let other = Site::start(&sync, &other_token);
    eventually(30, "the sibling syncs", || {
        other.ks().validate(&c.admin, &c.admin).status == 200
    });
    let r = other
        .at("/compute/v2.1")
        .get("/servers?all_tenants=1", &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["servers"], json!([]), "{}", r.body);
}

/// A TCP proxy between a site and its parent's sync listener that can cut
/// the link: every connection through it is shut down at once and new
/// ones are refused until it is mended. Loopback only; its threads end
/// with the test process.
pub(super) struct Link {
    addr: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Link {
    fn new(target: &str) -> Link {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, cs, target) = (open.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !o.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                {
                    let mut cs = cs.lock().unwrap();
                    cs.push(client.try_clone().unwrap());
                    cs.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Link { addr, open, conns }
    }

    pub(super) fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Cuts the link: open connections drop, new ones are refused.
    pub(super) fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(super) fn mend(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn sites_a_partitioned_site_keeps_running_takes_local_orders_and_converges() {
    let (c, link) = root_behind_link();
    let (site_id, token) = create_site(&c, "edge-p");
    // Instance HA is on at a site by default; a node is down after 12 s
    // (the site's own node heartbeats every 10 s) and evacuated then.
    let site = Site::start_with(
        &link.url(),
        &token,
        &["--service-down-time", "12", "--evacuate-after", "12"],
    );
    wait_site_node(&site, &c.admin);
    let (_, tok) = c.project("edge-p-tenant");
    let img = c.image(&tok, "tiny");
    let boot = |name: &str| -> String {
        let r = c.nova.post(
            "/servers",
            &tok,
            json!({"server": {"name": name, "imageRef": img, "flavorRef": "42",
                              "availability_zone": "edge-p", "networks": "none"}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["server"]["id"].as_str().unwrap().to_string()
    };
    let (keep, stop, gone) = (boot("keep"), boot("stop"), boot("gone"));
    for id in [&keep, &stop, &gone] {
        eventually(60, "ACTIVE at the root", || {
            status_at(&c.server.url, &tok, id).is_some_and(|s| s["status"] == "ACTIVE")
        });
    }
    let launched = status_at(&site.url, &c.admin, &keep).unwrap()["OS-SRV-USG:launched_at"].clone();
    let own_node = status_at(&site.url, &c.admin, &keep).unwrap()["OS-EXT-SRV-ATTR:host"].clone();
    // A second node joins the site, and the root puts a server on it.
    let mut node_b = SiteAgent::start(&site, "site-b");
    eventually(30, "site-b registers at the site", || {
        site.at("/compute/v2.1")
            .get("/os-hypervisors", &c.admin)
            .body["hypervisors"]
            .as_array()
            .is_some_and(|h| h.len() == 2)
    });
    let r = c.nova.post(
        "/servers",
        &c.admin,
        json!({"server": {"name": "moved", "imageRef": img, "flavorRef": "42",
                          "availability_zone": "edge-p:site-b", "networks": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let moved = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(60, "the server on site-b is ACTIVE at the root", || {
        status_at(&c.server.url, &c.admin, &moved).is_some_and(|s| s["status"] == "ACTIVE")
    });
    assert_eq!(
        status_at(&site.url, &c.admin, &moved).unwrap()["OS-EXT-SRV-ATTR:host"],
        "site-b"
    );
    assert_eq!(
        status_at(&c.server.url, &c.admin, &keep).unwrap()["host_status"],
        "UP"
    );

    // The link is cut.
    link.cut();
    eventually(20, "the root sees the site unreachable", || {
        site_state(&c, &site_id)["state"] == "unreachable"
    });
    assert_eq!(
        status_at(&c.server.url, &c.admin, &keep).unwrap()["host_status"],
        "UNKNOWN"
    );
    // The root takes orders for the site meanwhile: a create and a delete.
    let new = boot("new");
    let r = c.nova.delete(&format!("/servers/{gone}"), &tok);
    assert_eq!(r.status, 204, "{}", r.body);
    let lag = site_state(&c, &site_id)["revision_lag"].as_i64().unwrap();
    assert!(lag > 0, "changes for the site are pending: {lag}");
    // An operator on site stops a server with a token the root issued.
    let r = site.at("/compute/v2.1").raw(
        "POST",
        &format!("/servers/{stop}/action"),
        Some(&tok),
        &[super::compute::MV],
        Some(json!({"os-stop": null}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    eventually(30, "the site stops it on its own", || {
        status_at(&site.url, &c.admin, &stop).is_some_and(|s| s["status"] == "SHUTOFF")
    });
    // ... and makes a new one there, which the root does not know of yet.
    let r = site.at("/compute/v2.1").raw(
        "POST",
        "/servers",
        Some(&tok),
        &[super::compute::MV],
        Some(
            json!({"server": {"name": "made-on-site", "imageRef": img, "flavorRef": "42",
                              "networks": "none"}})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let local = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(30, "the site runs the server made there", || {
        status_at(&site.url, &tok, &local).is_some_and(|s| s["status"] == "ACTIVE")
    });
    assert!(status_at(&c.server.url, &c.admin, &local).is_none());
    // One of the site's nodes dies: the site rebuilds its server on the
    // node it has left, on its own.
    node_b.kill();
    eventually(60, "the site re-places the dead node's server", || {
        status_at(&site.url, &c.admin, &moved)
            .is_some_and(|s| s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] == own_node)
    });
    std::thread::sleep(Duration::from_secs(2));
    // Nothing reached the site while cut off, and nothing can be asked of
    // it through the link: a console log request says so.
    assert!(status_at(&site.url, &c.admin, &new).is_none());
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{keep}/action"),
        Some(&c.admin),
        &[super::compute::MV],
        Some(json!({"os-getConsoleOutput": {}}).to_string()),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body["computeFault"]["message"].is_string() || r.body.to_string().contains("site"),
        "{}",
        r.body
    );
    assert!(status_at(&site.url, &c.admin, &gone).is_some());

    // The link returns: everything converges.
    link.mend();
    eventually(60, "the new server runs at the site", || {
        status_at(&c.server.url, &tok, &new).is_some_and(|s| s["status"] == "ACTIVE")
    });
    eventually(30, "the deleted server is gone at the site", || {
        status_at(&site.url, &c.admin, &gone).is_none()
    });
    eventually(30, "the local stop is reported up", || {
        status_at(&c.server.url, &tok, &stop).is_some_and(|s| s["status"] == "SHUTOFF")
    });
    eventually(20, "the site is active again", || {
        site_state(&c, &site_id)["state"] == "active"
    });
    // The server made on site while cut off is the root's too now, in the
    // site's zone, and the root's delete reaches it.
    eventually(30, "the root adopts the server made at the site", || {
        status_at(&c.server.url, &tok, &local).is_some_and(|s| {
            s["status"] == "ACTIVE" && s["OS-EXT-AZ:availability_zone"] == "edge-p"
        })
    });
    let r = c.nova.delete(&format!("/servers/{local}"), &tok);
    assert_eq!(r.status, 204, "{}", r.body);
    eventually(
        30,
        "the root's delete of the adopted server reaches the site",
        || status_at(&site.url, &c.admin, &local).is_none(),
    );
    eventually(30, "the re-placed server is reported up", || {
        status_at(&c.server.url, &c.admin, &moved)
            .is_some_and(|s| s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] == own_node)
    });
    // The server nobody touched ran through it all, never restarted.
    let k = status_at(&site.url, &c.admin, &keep).unwrap();
    assert_eq!(k["status"], "ACTIVE", "{k}");
    assert_eq!(k["OS-SRV-USG:launched_at"], launched, "{k}");
    assert_eq!(
        status_at(&c.server.url, &c.admin, &keep).unwrap()["host_status"],
        "UP"
    );
    // The root sees the site's nodes: the killed one down, the other up
    // and running the site's servers.
    eventually(
        40,
        "the site's nodes and their health reach the root",
        || {
            let v = site_state(&c, &site_id);
            let r = &v["resources"];
            r["nodes"] == 2
                && r["nodes_up"] == 1
                && v["nodes"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n["name"] == "site-b" && n["state"] == "down")
                        && n.iter().any(|n| {
                            n["name"] == own_node
                                && n["state"] == "up"
                                && n["zone"] == "edge-p"
                                && n["running_vms"].as_u64() >= Some(2)
                        })
                })
        },
    );
}

#[test]
fn sites_a_site_is_drained_declared_dead_and_decommissioned() {
    let (c, sync) = root();
    let (id, token) = create_site(&c, "edge-d");
    let site = Site::start(&sync, &token);
    wait_site_node(&site, &c.admin);
    let (_, tok) = c.project("edge-d-tenant");
    let img = c.image(&tok, "tiny");
    let boot = || {
        c.nova.post(
            "/servers",
            &tok,
            json!({"server": {"name": "d", "imageRef": img, "flavorRef": "42",
                              "availability_zone": "edge-d", "networks": "none"}}),
        )
    };
    let r = boot();
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["server"]["id"].as_str().unwrap().to_string();
    eventually(60, "ACTIVE at the root", || {
        status_at(&c.server.url, &tok, &sid).is_some_and(|s| s["status"] == "ACTIVE")
    });
    let edge = c.server.client_at("/edge/v1");
    // Not while it has servers.
    let r = edge.delete(&format!("/sites/{id}"), &c.admin);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 servers"),
        "{}",
        r.body
    );
    // Members may do none of it.
    let (_, member) = c.project("edge-d-member");
    for a in ["drain", "dead"] {
        assert_eq!(
            edge.post(&format!("/sites/{id}/{a}"), &member, json!({}))
                .status,
            403
        );
    }
    assert_eq!(edge.delete(&format!("/sites/{id}"), &member).status, 403);

    // Draining: no new servers, the old one keeps running.
    let r = edge.post(&format!("/sites/{id}/drain"), &c.admin, json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(site_state(&c, &id)["state"], "draining");
    let r = boot();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("draining"),
        "{}",
        r.body
    );
    assert_eq!(
        status_at(&c.server.url, &tok, &sid).unwrap()["status"],
        "ACTIVE"
    );

    // Declared dead: its servers are in ERROR here and its link refused.
    let r = edge.post(&format!("/sites/{id}/dead"), &c.admin, json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["servers_in_error"], 1);
    let s = status_at(&c.server.url, &c.admin, &sid).unwrap();
    assert_eq!(s["status"], "ERROR", "{s}");
    assert!(
        s["fault"]["message"].as_str().unwrap().contains("dead"),
        "{s}"
    );
    eventually(20, "the dead site's link is refused", || {
        let p = site.at("/edge/v1").get("/parent", &c.admin).body["parent"].clone();
        p["last_error"].as_str().is_some_and(|e| e.contains("403"))
    });
    // Its servers can be deleted, then the site.
    assert_eq!(c.nova.delete(&format!("/servers/{sid}"), &tok).status, 204);
    let r = edge.delete(&format!("/sites/{id}"), &c.admin);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(edge.get(&format!("/sites/{id}"), &c.admin).status, 404);
    let zones = c
        .nova
        .get("/os-availability-zone", &c.admin)
        .body
        .to_string();
    assert!(!zones.contains("edge-d"), "{zones}");
}

#[test]
fn sites_image_data_crosses_the_link_once_and_a_cut_fetch_resumes() {
    let (c, sync) = root();
    let (_, token) = create_site(&c, "edge-img");
    let site = Site::start(&sync, &token);
    // 3 MiB that do not compress, as raw/bare data.
    let mut data = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let r = c.img.post(
        "/images",
        &c.admin,
        json!({"name": "blob", "disk_format": "raw", "container_format": "bare", "visibility": "public"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{id}/file"),
        &c.admin,
        &[("Content-Type", "application/octet-stream")],
        Some(data.clone()),
    );
    assert_eq!(st, 204);
    let sha = c.img.get(&format!("/images/{id}"), &c.admin).body["os_hash_value"]
        .as_str()
        .unwrap()
        .to_string();
    let img_at_site = site.at("/image/v2");
    eventually(30, "the image's record reaches the site", || {
        site.ks().validate(&c.admin, &c.admin).status == 200
            && img_at_site.get(&format!("/images/{id}"), &c.admin).body["status"] == "active"
    });
    // A fetch the link cut short left the first MiB.
    let part = site.dir.join("sync/blobs").join(format!("{sha}.part"));
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, &data[..1 << 20]).unwrap();
    let down = || -> u64 {
        site.at("/edge/v1").get("/parent", &c.admin).body["parent"]["bytes_down"]
            .as_u64()
            .unwrap()
    };
    let before = down();
    let (st, _, got) = img_at_site.bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(st, 200);
    assert!(
        got == data,
        "the site served other bytes ({} of {})",
        got.len(),
        data.len()
    );
    let fetched = down() - before;
    assert!(
        (2 << 20..(2 << 20) + (256 << 10)).contains(&fetched),
        "only the missing 2 MiB cross the link: {fetched}"
    );
    // Once there, every node of the site reads it locally.
    let before = down();
    let (st, _, again) =
        img_at_site.bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(st, 200);
    assert!(again == data);
    assert!(
        down() - before < 64 << 10,
        "the data crossed the link twice"
    );
    assert!(!part.exists());

    // Another image, cached on the site ahead of need through Nova 2.81's
    // aggregate image cache, for an aggregate in the site's zone: its data
    // crosses the link with nobody reading it.
    let r = c.img.post(
        "/images",
        &c.admin,
        json!({"name": "ahead", "disk_format": "raw", "container_format": "bare", "visibility": "public"}),
    );
    let ahead = r.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{ahead}/file"),
        &c.admin,
        &[("Content-Type", "application/octet-stream")],
        Some(data[..1 << 20].to_vec()),
    );
    assert_eq!(st, 204);
    let ahead_sha = c.img.get(&format!("/images/{ahead}"), &c.admin).body["os_hash_value"]
        .as_str()
        .unwrap()
        .to_string();
    let mv = [("OpenStack-API-Version", "compute 2.81")];
    let r = c.nova.raw(
        "POST",
        "/os-aggregates",
        Some(&c.admin),
        &mv,
        Some(
            json!({"aggregate": {"name": "edge-img-cache", "availability_zone": "edge-img"}})
                .to_string(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let agg = r.body["aggregate"]["id"].as_i64().unwrap();
    let r = c.nova.raw(
        "POST",
        &format!("/os-aggregates/{agg}/images"),
        Some(&c.admin),
        &mv,
        Some(json!({"cache": [{"id": ahead}]}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let blobs = site.dir.clone();
    eventually(
        30,
        "the site holds the image's data before anyone reads it",
        || walk_has(&blobs, &ahead_sha),
    );
}

/// Whether a file named `name` is anywhere under `dir`.
fn walk_has(dir: &std::path::Path, name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    rd.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            walk_has(&p, name)
        } else {
            p.file_name().and_then(|n| n.to_str()) == Some(name)
        }
    })
}

#[test]
fn sites_a_quota_lease_lets_a_cut_off_site_create_up_to_it_and_no_further() {
    let (c, link) = root_behind_link();
    let (site_id, token) = create_site(&c, "edge-q");
    let site = Site::start(&link.url(), &token);
    wait_site_node(&site, &c.admin);
    let (pid, tok) = c.project("edge-q-tenant");
    let img = c.image(&tok, "tiny");
    // The project may have 4 servers; 2 of them are leased to the site.
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 4}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let edge = c.server.client_at("/edge/v1");
    let lease_path = format!("/quota-leases/edge-q/{pid}");
    let r = edge.call(
        "PUT",
        &lease_path,
        Some(&c.admin),
        Some(json!({"quota_lease": {"instances": 2}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Bad input: an unknown site, a negative amount, a lease past the quota.
    let bad = edge.call(
        "PUT",
        &format!("/quota-leases/nowhere/{pid}"),
        Some(&c.admin),
        Some(json!({"quota_lease": {"instances": 1}})),
    );
    assert_eq!(bad.status, 404, "{}", bad.body);
    let bad = edge.call(
        "PUT",
        &lease_path,
        Some(&c.admin),
        Some(json!({"quota_lease": {"instances": -3}})),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad = edge.call(
        "PUT",
        &lease_path,
        Some(&c.admin),
        Some(json!({"quota_lease": {"instances": 5}})),
    );
    assert_eq!(bad.status, 409, "{}", bad.body);
    let bad = edge.call(
        "PUT",
        &lease_path,
        Some(&tok),
        Some(json!({"quota_lease": {"instances": 1}})),
    );
    assert_eq!(bad.status, 403, "{}", bad.body);
    // The root holds the unspent lease back: 2 of the 4 are left here.
    let root_boot = |name: &str| -> u16 { c.boot(&tok, name, &img, "42", json!({})).status };
    assert_eq!(root_boot("r0"), 202);
    assert_eq!(root_boot("r1"), 202);
    assert_eq!(root_boot("r2"), 403);
    let r = c.req("GET", &format!("/os-quota-sets/{pid}/detail"), &tok, None);
    assert_eq!(
        r.body["quota_set"]["instances"]["reserved"], 2,
        "{}",
        r.body
    );

    // The lease and the image reach the site; then the link is cut.
    eventually(30, "the lease reaches the site", || {
        site.at("/edge/v1").get("/quota-leases", &c.admin).body["quota_leases"]
            .as_array()
            .is_some_and(|l| l.len() == 1)
    });
    eventually(30, "the image reaches the site", || {
        site.at("/image/v2")
            .get(&format!("/images/{img}"), &tok)
            .body["status"]
            == "active"
    });
    link.cut();
    eventually(20, "the root sees the site unreachable", || {
        site_state(&c, &site_id)["state"] == "unreachable"
    });
    let site_boot = |name: &str| -> (u16, Value) {
        let r = site.at("/compute/v2.1").raw(
            "POST",
            "/servers",
            Some(&tok),
            &[super::compute::MV],
            Some(
                json!({"server": {"name": name, "imageRef": img, "flavorRef": "42",
                                  "networks": "none"}})
                .to_string(),
            ),
        );
        (r.status, r.body)
    };
    // Cut off, the site creates up to its lease and is refused beyond it.
    assert_eq!(site_boot("s0").0, 202);
    assert_eq!(site_boot("s1").0, 202);
    let (st, body) = site_boot("s2");
    assert_eq!(st, 403, "{body}");
    assert!(body.to_string().contains("lease"), "{body}");
    let spent_at_site = || {
        site.at("/edge/v1").get("/quota-leases", &c.admin).body["quota_leases"][0]["spent"]
            ["instances"]
            .clone()
    };
    assert_eq!(spent_at_site(), 2);

    // The link returns: the root adopts the site's servers and counts
    // them as the lease's spending; both ends agree.
    link.mend();
    eventually(60, "the root counts the site's spending", || {
        edge.get(&lease_path, &c.admin).body["quota_lease"]["spent"]["instances"] == 2
    });
    assert_eq!(spent_at_site(), 2);
    let r = c.req("GET", &format!("/os-quota-sets/{pid}/detail"), &tok, None);
    let inst = &r.body["quota_set"]["instances"];
    assert_eq!(
        (inst["in_use"].as_i64(), inst["reserved"].as_i64()),
        (Some(4), Some(0)),
        "{inst}"
    );
    // The project is at its 4: neither end can add one.
    assert_eq!(root_boot("r3"), 403);
    assert_eq!(site_boot("s3").0, 403);
}
