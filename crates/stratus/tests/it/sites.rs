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
struct Site {
    child: Child,
    url: String,
    dir: PathBuf,
    log: PathBuf,
}

impl Site {
    fn start(parent_sync: &str, token: &str) -> Site {
        let dir = unique_dir();
        let port = free_port();
        let log = std::env::temp_dir().join(format!("stratus-it-site-{port}.log"));
        let child = Command::new(bin())
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--parent", parent_sync, "--join-token", token])
            .args(["--driver", "fake", "--public-network", "none"])
            .args(["--node-name", &format!("site-node-{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the site");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ks = Client {
            base: format!("{url}/identity/v3"),
        };
        let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !listening() || ks.call("GET", "", None, None).status != 200 {
            assert!(Instant::now() < deadline, "the site did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Site {
            child,
            url,
            dir,
            log,
        }
    }

    fn ks(&self) -> Client {
        self.at("/identity/v3")
    }

    fn at(&self, prefix: &str) -> Client {
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
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
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

fn create_site(c: &Cloud, name: &str) -> (String, String) {
    let edge = c.server.client_at("/edge/v1");
    let r = edge.post("/sites", &c.admin, json!({"site": {"name": name}}));
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.body["join_token"].as_str().unwrap().to_string();
    (r.body["site"]["id"].as_str().unwrap().to_string(), token)
}

fn site_state(c: &Cloud, id: &str) -> Value {
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
