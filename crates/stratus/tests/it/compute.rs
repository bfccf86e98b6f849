//! The compute service (Nova v2.1) against the real binary: discovery and
//! microversions, flavors, key pairs, quotas, aggregates, server groups,
//! services, and servers on fake-driver nodes (scheduling, quota
//! accounting under concurrency, anti-affinity, crash recovery). Real
//! containers are in `compute_real.rs`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Client, Server};

pub struct Cloud {
    pub server: Server,
    pub nova: Client,
    pub ks: Client,
    pub img: Client,
    pub admin: String,
}

pub const MV: (&str, &str) = ("OpenStack-API-Version", "compute 2.38");

impl Cloud {
    pub fn start(extra: &[&str]) -> Cloud {
        Self::of(Server::start_with(extra))
    }

    /// A cloud running in a network namespace of its own (see
    /// `Server::start_in_netns`).
    pub fn start_in_netns(extra: &[&str]) -> Cloud {
        Self::of(Server::start_in_netns(extra))
    }

    fn of(server: Server) -> Cloud {
        let ks = server.client();
        let admin = ks.token("admin", &server.admin_password, Some("admin"));
        Cloud {
            nova: server.compute_client(),
            img: server.image_client(),
            ks,
            admin,
            server,
        }
    }

    /// A request at microversion 2.38.
    pub fn req(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> super::common::Resp {
        self.nova.raw(
            method,
            path,
            Some(token),
            &[MV],
            body.map(|b| b.to_string()),
        )
    }

    /// A project with a member user; returns (project id, token).
    pub fn project(&self, name: &str) -> (String, String) {
        let p = self.ks.create(
            &self.admin,
            "/projects",
            "project",
            json!({"name": name, "domain_id": "default"}),
        );
        let pid = p["id"].as_str().unwrap().to_string();
        self.ks.user(
            &self.admin,
            &format!("{name}-user"),
            "pw-12345",
            Some((&pid, "member")),
        );
        let tok = self
            .ks
            .token(&format!("{name}-user"), "pw-12345", Some(name));
        (pid, tok)
    }

    /// Uploads a small docker image (the test busybox if built, else a
    /// minimal valid tarball is not needed: fake nodes never read it).
    pub fn image(&self, token: &str, name: &str) -> String {
        let r = self.img.post(
            "/images",
            token,
            json!({"name": name, "disk_format": "raw", "container_format": "docker", "visibility": "private"}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_string();
        let tar = tiny_docker_tar();
        let (st, _, body) = self.img.bytes(
            "PUT",
            &format!("/images/{id}/file"),
            token,
            &[("Content-Type", "application/octet-stream")],
            Some(tar),
        );
        assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
        id
    }

    pub fn boot(
        &self,
        token: &str,
        name: &str,
        image: &str,
        flavor: &str,
        extra: Value,
    ) -> super::common::Resp {
        let mut server =
            json!({"name": name, "imageRef": image, "flavorRef": flavor, "networks": "none"});
        if let Value::Object(o) = extra {
            for (k, v) in o {
                if k == "os:scheduler_hints" {
                    continue;
                }
                server[k] = v;
            }
        }
        let mut body = json!({"server": server});
        if let Some(h) = body["server"].get("hints").cloned() {
            body["os:scheduler_hints"] = h;
            body["server"].as_object_mut().unwrap().remove("hints");
        }
        self.req("POST", "/servers", token, Some(body))
    }

    /// Waits until the server reaches `status` (panics on ERROR unless
    /// that is what is awaited).
    pub fn wait(&self, token: &str, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.req("GET", &format!("/servers/{id}"), token, None);
            assert_eq!(r.status, 200, "{}", r.body);
            let s = &r.body["server"];
            if s["status"] == status {
                return s.clone();
            }
            if s["status"] == "ERROR" {
                panic!("server {id} went to ERROR: {}", s["fault"]);
            }
            assert!(
                Instant::now() < deadline,
                "server {id} never reached {status}: {s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_gone(&self, token: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.req("GET", &format!("/servers/{id}"), token, None);
            if r.status == 404 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {id} never went away: {}",
                r.body
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `n` nodes have registered.
    pub fn wait_nodes(&self, n: usize) {
        self.wait_nodes_logged(n, Path::new("/dev/null"))
    }

    /// Waits until `n` nodes have registered; on failure shows the end of
    /// `log` (a separate agent's output).
    pub fn wait_nodes_logged(&self, n: usize, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.req("GET", "/os-hypervisors", &self.admin, None);
            if r.body["hypervisors"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or(0)
                >= n
            {
                return;
            }
            if Instant::now() >= deadline {
                let tail = |p: &Path| {
                    let out = std::fs::read_to_string(p).unwrap_or_default();
                    let lines: Vec<&str> = out.lines().collect();
                    lines[lines.len().saturating_sub(40)..].join("\n")
                };
                panic!(
                    "only {} nodes registered\nagent log ends:\n{}\nserver log ends:\n{}",
                    r.body,
                    tail(log),
                    tail(&self.server.log_path())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `docker save` tarball with one empty layer: enough for the image
/// service's checks; fake nodes never unpack it.
pub fn tiny_docker_tar() -> Vec<u8> {
    // One directory per call: tests run in parallel threads of one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("stratus-tinyimg-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(dir.join("root/hello"), b"hi\n").unwrap();
    let layer = dir.join("layer.tar");
    let ok = Command::new("tar")
        .args(["-cf"])
        .arg(&layer)
        .arg("-C")
        .arg(dir.join("root"))
        .arg("hello")
        .status()
        .unwrap();
    assert!(ok.success());
    let layer_bytes = std::fs::read(&layer).unwrap();
    let diff = sha256_hex(&layer_bytes);
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Cmd\":[\"/hello\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"sha256:{diff}\"]}}}}"
    );
    let cfg_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("l")).unwrap();
    std::fs::write(out.join(&cfg_name), &config).unwrap();
    std::fs::write(out.join("l/layer.tar"), &layer_bytes).unwrap();
    std::fs::write(
        out.join("manifest.json"),
        format!("[{{\"Config\":\"{cfg_name}\",\"RepoTags\":[\"tiny:latest\"],\"Layers\":[\"l/layer.tar\"]}}]"),
    )
    .unwrap();
    let tarball = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .args(["manifest.json", &cfg_name, "l/layer.tar"])
        .status()
        .unwrap();
    assert!(ok.success());
    let bytes = std::fs::read(&tarball).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Nova's fault shape: `{"<name>": {"code": N, "message": "..."}}`.
fn fault<'a>(r: &'a super::common::Resp, name: &str) -> &'a str {
    let f = &r.body[name];
    assert_eq!(f["code"], r.status, "fault body: {}", r.body);
    f["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {}", r.body))
}

#[test]
fn compute_discovery_microversions_and_faults() {
    let c = Cloud::start(&["--no-agent"]);
    let r = c.nova.call("GET", "", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"]["id"], "v2.1");
    assert_eq!(r.body["version"]["version"], "2.85");
    assert_eq!(r.body["version"]["min_version"], "2.1");
    // Echoed in both headers; `latest` is the maximum.
    let r = c.nova.raw(
        "GET",
        "/flavors",
        Some(&c.admin),
        &[("X-OpenStack-Nova-API-Version", "2.25")],
        None,
    );
    assert_eq!(r.header("x-openstack-nova-api-version"), Some("2.25"));
    assert_eq!(r.header("openstack-api-version"), Some("compute 2.25"));
    let r = c.nova.raw(
        "GET",
        "/flavors",
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute latest")],
        None,
    );
    assert_eq!(r.header("openstack-api-version"), Some("compute 2.85"));
    let r = c.nova.raw(
        "GET",
        "/flavors",
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.99")],
        None,
    );
    assert_eq!(r.status, 406);
    assert!(fault(&r, "notAcceptable").contains("2.99"));
    let r = c.nova.raw(
        "GET",
        "/flavors",
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute two")],
        None,
    );
    assert_eq!(r.status, 400);
    fault(&r, "badRequest");
    // No token: 401 in Nova's shape.
    let r = c.nova.call("GET", "/servers", None, None);
    assert_eq!(r.status, 401);
    // Unknown server: itemNotFound.
    let r = c.req(
        "GET",
        "/servers/6f1b2a47-1111-2222-3333-444455556666",
        &c.admin,
        None,
    );
    assert_eq!(r.status, 404);
    assert!(fault(&r, "itemNotFound").contains("could not be found"));
    // The catalog lists compute.
    let r = c.ks.login("admin", &c.server.admin_password, Some("admin"));
    let cat = r.body["token"]["catalog"].as_array().unwrap();
    assert!(cat.iter().any(|s| s["type"] == "compute"), "{cat:?}");
}

#[test]
fn compute_flavors_defaults_private_access_and_extra_specs() {
    let c = Cloud::start(&["--no-agent"]);
    let (pid, tok) = c.project("fl");
    let (_, other) = c.project("fl2");
    let r = c.req("GET", "/flavors/detail", &tok, None);
    let names: Vec<&str> = r.body["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for n in ["m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let tiny = c.req("GET", "/flavors/1", &tok, None);
    assert_eq!(tiny.body["flavor"]["ram"], 512);
    assert_eq!(tiny.body["flavor"]["swap"], "");
    assert_eq!(tiny.body["flavor"]["os-flavor-access:is_public"], true);
    // Members cannot create flavors.
    let r = c.req(
        "POST",
        "/flavors",
        &tok,
        Some(json!({"flavor": {"name": "x", "ram": 64, "vcpus": 1, "disk": 0}})),
    );
    assert_eq!(r.status, 403);
    fault(&r, "forbidden");
    // A private flavor, shared with one project.
    let r = c.req("POST", "/flavors", &c.admin, Some(json!({"flavor": {"name": "edge.small", "ram": 256, "vcpus": 1, "disk": 1, "id": "edge-1", "os-flavor-access:is_public": false}})));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["flavor"]["os-flavor-access:is_public"], false);
    assert_eq!(c.req("GET", "/flavors/edge-1", &tok, None).status, 404);
    let r = c.req(
        "POST",
        "/flavors/edge-1/action",
        &c.admin,
        Some(json!({"addTenantAccess": {"tenant": pid}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["flavor_access"][0]["tenant_id"], pid.as_str());
    assert_eq!(c.req("GET", "/flavors/edge-1", &tok, None).status, 200);
    assert_eq!(c.req("GET", "/flavors/edge-1", &other, None).status, 404);
    let listed = c.req("GET", "/flavors", &tok, None);
    assert!(
        listed.body["flavors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == "edge-1")
    );
    // Duplicates and bad input.
    let r = c.req(
        "POST",
        "/flavors",
        &c.admin,
        Some(json!({"flavor": {"name": "edge.small", "ram": 256, "vcpus": 1, "disk": 1}})),
    );
    assert_eq!(r.status, 409);
    let r = c.req(
        "POST",
        "/flavors",
        &c.admin,
        Some(json!({"flavor": {"name": "bad", "ram": 0, "vcpus": 1, "disk": 1}})),
    );
    assert_eq!(r.status, 400);
    assert!(fault(&r, "badRequest").contains("ram"));
    // Extra specs.
    let r = c.req(
        "POST",
        "/flavors/edge-1/os-extra_specs",
        &c.admin,
        Some(json!({"extra_specs": {"hw:cpu_policy": "shared", "site": "lab"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.req("GET", "/flavors/edge-1/os-extra_specs/site", &tok, None);
    assert_eq!(r.body["site"], "lab");
    assert_eq!(
        c.req(
            "DELETE",
            "/flavors/edge-1/os-extra_specs/site",
            &c.admin,
            None
        )
        .status,
        200
    );
    assert_eq!(
        c.req("GET", "/flavors/edge-1/os-extra_specs/site", &tok, None)
            .status,
        404
    );
    // Paging by flavor id.
    let r = c.req("GET", "/flavors?limit=2", &tok, None);
    assert_eq!(r.body["flavors"].as_array().unwrap().len(), 2);
    assert!(
        r.body["flavors_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );
    assert_eq!(
        c.req("DELETE", "/flavors/edge-1", &c.admin, None).status,
        202
    );
}

#[test]
fn compute_pinned_cpus_and_huge_pages_fail_with_the_reason_not_silently() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("numa");
    let img = c.image(&tok, "tiny");
    let flavor = |id: &str, specs: Value| {
        let r = c.req(
            "POST",
            "/flavors",
            &c.admin,
            Some(json!({"flavor": {"name": id, "id": id, "ram": 64, "vcpus": 1, "disk": 1}})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let r = c.req(
            "POST",
            &format!("/flavors/{id}/os-extra_specs"),
            &c.admin,
            Some(json!({"extra_specs": specs})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    };
    flavor("pinned", json!({"hw:cpu_policy": "dedicated"}));
    flavor("huge", json!({"hw:mem_page_size": "1GB"}));
    flavor(
        "shared",
        json!({"hw:cpu_policy": "shared", "hw:mem_page_size": "any"}),
    );
    let boot = |name: &str, flavor: &str| {
        let r = c.boot(&tok, name, &img, flavor, json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["server"]["id"].as_str().unwrap().to_string()
    };
    for (flavor, reason) in [
        ("pinned", "hw:cpu_policy=dedicated asks for pinned CPUs"),
        ("huge", "hw:mem_page_size=1GB asks for huge pages"),
    ] {
        let id = boot(flavor, flavor);
        let s = c.wait(&tok, &id, "ERROR");
        let msg = s["fault"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with("No valid host was found."), "{s}");
        assert!(msg.contains(reason), "{s}");
    }
    // What every node can do still boots.
    let id = boot("plain", "shared");
    c.wait(&tok, &id, "ACTIVE");
}

#[test]
fn compute_keypairs_import_generate_and_quota() {
    let c = Cloud::start(&["--no-agent"]);
    let (_, tok) = c.project("kp");
    // Generated: the private key comes back once.
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "gen"}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let private = r.body["keypair"]["private_key"].as_str().unwrap();
    assert!(private.contains("PRIVATE KEY"));
    let public = r.body["keypair"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let fp = r.body["keypair"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    // The fingerprint is what ssh-keygen says.
    let f = std::env::temp_dir().join(format!("kp-{}.pub", std::process::id()));
    std::fs::write(&f, &public).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-l", "-E", "md5", "-f"])
        .arg(&f)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("MD5:{fp}")), "{printed} vs {fp}");
    // x509 (2.2+): a self-signed certificate and its key; importing that
    // certificate gives the same SHA-1 fingerprint; junk is refused.
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "cert", "type": "x509"}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let cert = r.body["keypair"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert_eq!(r.body["keypair"]["type"], "x509");
    let xfp = r.body["keypair"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(xfp.len(), 59, "{xfp}");
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "cert2", "type": "x509", "public_key": cert}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["keypair"]["fingerprint"], json!(xfp));
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "cert3", "type": "x509", "public_key": "nope"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    for n in ["cert", "cert2"] {
        assert_eq!(
            c.req("DELETE", &format!("/os-keypairs/{n}"), &tok, None)
                .status,
            204
        );
    }
    // Import the same public key under another name.
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "imported", "public_key": public}})),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["keypair"]["fingerprint"], fp.as_str());
    assert!(r.body["keypair"].get("private_key").is_none());
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "imported", "public_key": public}})),
    );
    assert_eq!(r.status, 409);
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "junk", "public_key": "ssh-rsa notbase64!!"}})),
    );
    assert_eq!(r.status, 400);
    assert!(fault(&r, "badRequest").contains("Keypair data is invalid"));
    let r = c.req(
        "POST",
        "/os-keypairs",
        &tok,
        Some(json!({"keypair": {"name": "bad/name", "public_key": public}})),
    );
    assert_eq!(r.status, 400);
    let r = c.req("GET", "/os-keypairs", &tok, None);
    assert_eq!(r.body["keypairs"].as_array().unwrap().len(), 2);
    let r = c.req("GET", "/os-keypairs/gen", &tok, None);
    assert_eq!(r.body["keypair"]["type"], "ssh");
    let r = c.req("DELETE", "/os-keypairs/gen", &tok, None);
    assert_eq!(r.status, 204);
    assert_eq!(c.req("GET", "/os-keypairs/gen", &tok, None).status, 404);
}

#[test]
fn compute_quotas_limits_and_over_quota_boot() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("q");
    let r = c.req("GET", &format!("/os-quota-sets/{pid}"), &tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quota_set"]["instances"], 10);
    assert_eq!(r.body["quota_set"]["cores"], 20);
    // 2.36 dropped the network quotas from the view.
    assert!(r.body["quota_set"].get("floating_ips").is_none());
    let r = c.nova.raw(
        "GET",
        &format!("/os-quota-sets/{pid}"),
        Some(&tok),
        &[("X-OpenStack-Nova-API-Version", "2.1")],
        None,
    );
    assert_eq!(r.body["quota_set"]["floating_ips"], 10);
    // Only admins set quotas.
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &tok,
        Some(json!({"quota_set": {"instances": 2}})),
    );
    assert_eq!(r.status, 403);
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 2}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["quota_set"]["instances"], 2);
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": -5}})),
    );
    assert_eq!(r.status, 400);
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "a", &img, "1", json!({"min_count": 2}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = c.boot(&tok, "b", &img, "1", json!({}));
    assert_eq!(r.status, 403);
    let msg = fault(&r, "forbidden");
    assert!(msg.contains("Quota exceeded for instances"), "{msg}");
    let r = c.req("GET", "/limits", &tok, None);
    assert_eq!(r.body["limits"]["absolute"]["totalInstancesUsed"], 2);
    assert_eq!(r.body["limits"]["absolute"]["maxTotalInstances"], 2);
    assert_eq!(r.body["limits"]["absolute"]["totalRAMUsed"], 1024);
    let r = c.req("GET", &format!("/os-quota-sets/{pid}/detail"), &tok, None);
    assert_eq!(r.body["quota_set"]["instances"]["in_use"], 2);
    // Lowering below usage needs force.
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 1}})),
    );
    assert_eq!(r.status, 400);
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 1, "force": true}})),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn compute_server_bad_input_gets_nova_4xx() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("bad");
    let img = c.image(&tok, "tiny");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "nope", "networks": "none"}}),
            400,
            "Flavor nope could not be found",
        ),
        (
            json!({"server": {"name": "x", "imageRef": "8d2c1b2a-0000-4000-8000-000000000000", "flavorRef": "1", "networks": "none"}}),
            400,
            "could not be found",
        ),
        (
            json!({"server": {"name": "x", "imageRef": "not-a-uuid", "flavorRef": "1", "networks": "none"}}),
            400,
            "Invalid imageRef",
        ),
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "1", "networks": "none", "user_data": "***not base64***"}}),
            400,
            "base 64",
        ),
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "1", "networks": "none", "user_data": "A".repeat(70000)}}),
            400,
            "user data",
        ),
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "1", "networks": "none", "key_name": "missing"}}),
            400,
            "Invalid key_name",
        ),
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "1", "networks": "none", "availability_zone": "mars"}}),
            400,
            "availability zone",
        ),
        (
            json!({"server": {"name": "x", "imageRef": img, "flavorRef": "1"}}),
            400,
            "networks",
        ),
        (
            json!({"server": {"name": "", "imageRef": img, "flavorRef": "1", "networks": "none"}}),
            400,
            "name",
        ),
        (json!({"nothing": {}}), 400, "server"),
    ];
    for (body, status, needle) in cases {
        let r = c.req("POST", "/servers", &tok, Some(body.clone()));
        assert_eq!(r.status, status, "{body}: {}", r.body);
        let m = fault(&r, "badRequest");
        assert!(m.contains(needle), "{body}: {m}");
    }
    // An image too big for the flavor's min_ram.
    let r = c.img.raw(
        "PATCH",
        &format!("/images/{img}"),
        Some(&tok),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        Some(json!([{"op": "replace", "path": "/min_ram", "value": 4096}]).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.boot(&tok, "x", &img, "1", json!({}));
    assert_eq!(r.status, 400);
    assert!(fault(&r, "badRequest").contains("memory is too small"));
    // Malformed JSON.
    let r = c
        .nova
        .raw("POST", "/servers", Some(&tok), &[MV], Some("{nope".into()));
    assert_eq!(r.status, 400);
    // Actions on a missing server and bad actions.
    let r = c.req(
        "POST",
        "/servers/6f1b2a47-1111-2222-3333-444455556666/action",
        &tok,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 404);
    fault(&r, "itemNotFound");
}

/// The Nova status of every server of a project, by id.
fn statuses(c: &Cloud, tok: &str) -> Vec<(String, String)> {
    let r = c.req("GET", "/servers/detail", tok, None);
    r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn compute_fifty_concurrent_creates_against_quota_ten() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("burst");
    let img = c.image(&tok, "tiny");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 10, "cores": 100, "ram": 1000000}})),
    );
    assert_eq!(r.status, 200);
    let ok = std::sync::atomic::AtomicUsize::new(0);
    let over = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..50 {
            let (c, tok, img, ok, over) = (&c, &tok, &img, &ok, &over);
            s.spawn(move || {
                let r = c.boot(tok, &format!("b{i}"), img, "42", json!({}));
                match r.status {
                    202 => ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    403 => over.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    other => panic!("unexpected {other}: {}", r.body),
                };
            });
        }
    });
    assert_eq!(ok.load(std::sync::atomic::Ordering::SeqCst), 10);
    assert_eq!(over.load(std::sync::atomic::Ordering::SeqCst), 40);
    let all = statuses(&c, &tok);
    assert_eq!(all.len(), 10);
    for (id, _) in &all {
        c.wait(&tok, id, "ACTIVE");
    }
    let r = c.req("GET", "/limits", &tok, None);
    assert_eq!(r.body["limits"]["absolute"]["totalInstancesUsed"], 10);
    // Deletes release usage.
    for (id, _) in all.iter().take(4) {
        assert_eq!(
            c.req("DELETE", &format!("/servers/{id}"), &tok, None)
                .status,
            204
        );
    }
    for (id, _) in all.iter().take(4) {
        c.wait_gone(&tok, id);
    }
    let r = c.req("GET", "/limits", &tok, None);
    assert_eq!(r.body["limits"]["absolute"]["totalInstancesUsed"], 6);
    assert_eq!(c.boot(&tok, "again", &img, "42", json!({})).status, 202);
}

#[test]
fn compute_lifecycle_actions_and_state_model_on_fake_node() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("life");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "web", &img, "1", json!({"metadata": {"role": "web"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    assert!(r.body["server"]["adminPass"].is_string());
    let s = c.wait(&tok, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:vm_state"], "active");
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert!(s["OS-EXT-STS:task_state"].is_null());
    assert_eq!(s["metadata"]["role"], "web");
    assert_eq!(s["locked"], false);
    assert!(
        s.get("OS-EXT-SRV-ATTR:host").is_none(),
        "non-admin sees no host"
    );
    assert!(!s["hostId"].as_str().unwrap().is_empty());
    let a = c.req("GET", &format!("/servers/{id}"), &c.admin, None);
    assert!(a.body["server"]["OS-EXT-SRV-ATTR:host"].is_string());
    for (action, body, status) in [
        ("os-stop", json!({"os-stop": null}), "SHUTOFF"),
        ("os-start", json!({"os-start": null}), "ACTIVE"),
        ("reboot", json!({"reboot": {"type": "HARD"}}), "ACTIVE"),
        ("pause", json!({"pause": null}), "PAUSED"),
        ("unpause", json!({"unpause": null}), "ACTIVE"),
        ("suspend", json!({"suspend": null}), "SUSPENDED"),
        ("resume", json!({"resume": null}), "ACTIVE"),
    ] {
        let r = c.req("POST", &format!("/servers/{id}/action"), &tok, Some(body));
        assert_eq!(r.status, 202, "{action}: {}", r.body);
        c.wait(&tok, &id, status);
    }
    // A snapshot on a fake node: a tiny valid image, the server's task
    // cleared afterwards.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"createImage": {"name": "fake-snap"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let i = c.img.get(&format!("/images/{snap}"), &tok);
        let s = c.req("GET", &format!("/servers/{id}"), &tok, None);
        if i.body["status"] == "active" && s.body["server"]["OS-EXT-STS:task_state"].is_null() {
            assert_eq!(s.body["server"]["status"], "ACTIVE");
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", i.body, s.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    // Wrong state: 409 with Nova's words.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"os-start": null})),
    );
    assert_eq!(r.status, 409);
    assert!(fault(&r, "conflictingRequest").contains("Cannot 'start' instance"));
    // Lock: the owner cannot stop it, admins can unlock.
    assert_eq!(
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(json!({"lock": null}))
        )
        .status,
        202
    );
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        c.req("GET", &format!("/servers/{id}"), &tok, None).body["server"]["locked"],
        true
    );
    assert_eq!(
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(json!({"unlock": null}))
        )
        .status,
        202
    );
    // Update, metadata, tags.
    let r = c.req(
        "PUT",
        &format!("/servers/{id}"),
        &tok,
        Some(json!({"server": {"name": "web-1", "description": "front"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["server"]["description"], "front");
    let r = c.req(
        "PUT",
        &format!("/servers/{id}/metadata/tier"),
        &tok,
        Some(json!({"meta": {"tier": "1"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.req("GET", &format!("/servers/{id}/metadata"), &tok, None);
    assert_eq!(r.body["metadata"], json!({"role": "web", "tier": "1"}));
    assert_eq!(
        c.req("PUT", &format!("/servers/{id}/tags/blue"), &tok, None)
            .status,
        201
    );
    let r = c.req("GET", "/servers/detail?tags=blue", &tok, None);
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 1);
    let r = c.req("GET", "/servers?name=^web-", &tok, None);
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 1);
    let r = c.req("GET", "/servers?status=SHUTOFF", &tok, None);
    assert_eq!(r.body["servers"].as_array().unwrap().len(), 0);
    // Instance actions recorded, newest first.
    let r = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &tok,
        None,
    );
    let acts: Vec<&str> = r.body["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(acts.last(), Some(&"create"), "{acts:?}");
    assert!(
        acts.contains(&"stop") && acts.contains(&"reboot"),
        "{acts:?}"
    );
    let req = r.body["instanceActions"][0]["request_id"].as_str().unwrap();
    let r = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions/{req}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Rebuild keeps the id and comes back ACTIVE.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"rebuild": {"imageRef": img, "name": "rebuilt"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["server"]["status"], "REBUILD");
    c.wait(&tok, &id, "ACTIVE");
    // Another project cannot see or touch it.
    let (_, other) = c.project("life2");
    assert_eq!(
        c.req("GET", &format!("/servers/{id}"), &other, None).status,
        404
    );
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &other, None)
            .status,
        404
    );
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &tok, None)
            .status,
        204
    );
    c.wait_gone(&tok, &id);
}

#[test]
fn compute_server_groups_aggregates_zones_and_services() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "n1"]);
    // A second node: a real `stratus agent` process with the fake driver.
    let agent = super::common::Agent::start(&c.server, "n2", &["--driver", "fake"]);
    c.wait_nodes_logged(2, &agent.log);
    let (_, tok) = c.project("grp");
    let img = c.image(&tok, "tiny");
    // Anti-affinity spreads two servers over the two nodes; a third fails.
    let r = c.req(
        "POST",
        "/os-server-groups",
        &tok,
        Some(json!({"server_group": {"name": "spread", "policies": ["anti-affinity"]}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let gid = r.body["server_group"]["id"].as_str().unwrap().to_string();
    let mut ids = vec![];
    for n in ["g1", "g2"] {
        let r = c.boot(&tok, n, &img, "1", json!({"hints": {"group": gid}}));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    let hosts: Vec<String> = ids
        .iter()
        .map(|id| {
            c.wait(&tok, id, "ACTIVE");
            c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"]["OS-EXT-SRV-ATTR:host"].as_str().unwrap().to_string()
        })
        .collect();
    assert_ne!(hosts[0], hosts[1], "anti-affinity put both on {}", hosts[0]);
    let r = c.boot(&tok, "g3", &img, "1", json!({"hints": {"group": gid}}));
    let id3 = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.req("GET", &format!("/servers/{id3}"), &tok, None).body["server"].clone();
        if s["status"] == "ERROR" {
            assert!(
                s["fault"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("No valid host"),
                "{s}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.req("GET", &format!("/os-server-groups/{gid}"), &tok, None);
    assert_eq!(
        r.body["server_group"]["members"].as_array().unwrap().len(),
        3
    );
    // An aggregate with a zone: boots into the zone land on its host.
    let r = c.req(
        "POST",
        "/os-aggregates",
        &c.admin,
        Some(json!({"aggregate": {"name": "edge-a", "availability_zone": "edge-a"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let agg = r.body["aggregate"]["id"].as_i64().unwrap();
    let r = c.req(
        "POST",
        &format!("/os-aggregates/{agg}/action"),
        &c.admin,
        Some(json!({"add_host": {"host": "n2"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.req(
        "POST",
        &format!("/os-aggregates/{agg}/action"),
        &c.admin,
        Some(json!({"set_metadata": {"metadata": {"ssd": "true"}}})),
    );
    assert_eq!(r.body["aggregate"]["metadata"]["ssd"], "true");
    let r = c.req("GET", "/os-availability-zone", &tok, None);
    let zones: Vec<&str> = r.body["availabilityZoneInfo"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["zoneName"].as_str().unwrap())
        .collect();
    assert!(
        zones.contains(&"edge-a") && zones.contains(&"nova"),
        "{zones:?}"
    );
    let r = c.boot(
        &tok,
        "z",
        &img,
        "42",
        json!({"availability_zone": "edge-a"}),
    );
    let zid = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&tok, &zid, "ACTIVE");
    assert_eq!(s["OS-EXT-AZ:availability_zone"], "edge-a");
    // Services: disable n2 and new boots avoid it; force-down (2.11).
    let r = c.req("GET", "/os-services?binary=nova-compute", &c.admin, None);
    assert_eq!(r.body["services"].as_array().unwrap().len(), 2);
    let r = c.req(
        "PUT",
        "/os-services/disable-log-reason",
        &c.admin,
        Some(json!({"host": "n2", "binary": "nova-compute", "disabled_reason": "maintenance"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.boot(
        &tok,
        "z2",
        &img,
        "42",
        json!({"availability_zone": "edge-a"}),
    );
    let z2 = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.req("GET", &format!("/servers/{z2}"), &tok, None).body["server"].clone();
        if s["status"] == "ERROR" {
            break;
        }
        assert_ne!(s["status"], "ACTIVE", "booted onto a disabled node");
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.req(
        "PUT",
        "/os-services/force-down",
        &c.admin,
        Some(json!({"host": "n1", "binary": "nova-compute", "forced_down": true})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.req("GET", "/os-services?host=n1", &c.admin, None);
    assert_eq!(r.body["services"][0]["state"], "down");
    assert_eq!(r.body["services"][0]["forced_down"], true);
    // Hypervisors report the node's resources.
    let r = c.req("GET", "/os-hypervisors/detail", &c.admin, None);
    let h = &r.body["hypervisors"][0];
    assert_eq!(h["vcpus"], 16);
    assert_eq!(h["memory_mb"], 65536);
    assert!(h["cpu_info"].is_object());
    assert_eq!(c.req("GET", "/os-hypervisors", &tok, None).status, 403);
}

#[test]
fn compute_kill_during_burst_loses_nothing() {
    // Room (VCPU, RAM, disk) for every server the burst makes on the one
    // simulated node: group commit lets it make several hundred.
    let mut c = Cloud::start(&[
        "--driver",
        "fake",
        "--cpu-allocation-ratio",
        "256",
        "--ram-allocation-ratio",
        "256",
        "--disk-allocation-ratio",
        "16",
    ]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("crash");
    let img = c.image(&tok, "tiny");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 1000, "cores": 1000, "ram": 10000000}})),
    );
    assert_eq!(r.status, 200);
    let accepted = std::sync::Mutex::new(Vec::<String>::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (c, tok, img, accepted, stop) = (&c, &tok, &img, &accepted, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let body = json!({"server": {"name": format!("k{t}-{i}"), "imageRef": img, "flavorRef": "42", "networks": "none"}});
                    let url = format!("{}{}", c.nova.base, "/servers");
                    let resp = ureq::post(&url)
                        .header("X-Auth-Token", tok)
                        .header("OpenStack-API-Version", "compute 2.38")
                        .config()
                        .http_status_as_error(false)
                        .build()
                        .send_json(&body);
                    if let Ok(mut r) = resp
                        && r.status().as_u16() == 202
                    {
                        let v: Value = r.body_mut().read_json().unwrap();
                        accepted.lock().unwrap().push(v["server"]["id"].as_str().unwrap().to_string());
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let _ = Command::new("kill")
            .args(["-KILL", &c.server.pid().to_string()])
            .status();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    let tok = c.ks.token("crash-user", "pw-12345", Some("crash"));
    let accepted = accepted.into_inner().unwrap();
    assert!(!accepted.is_empty());
    eprintln!("{} creates accepted before the kill", accepted.len());
    // Every accepted server exists, none twice, and each gets scheduled.
    let all = statuses(&c, &tok);
    let ids: std::collections::HashSet<&String> = all.iter().map(|(i, _)| i).collect();
    assert_eq!(ids.len(), all.len(), "duplicates");
    for id in &accepted {
        assert!(ids.contains(id), "accepted server {id} lost");
    }
    for (id, _) in &all {
        c.wait(&tok, id, "ACTIVE");
    }
    let r = c.req("GET", "/limits", &tok, None);
    assert_eq!(
        r.body["limits"]["absolute"]["totalInstancesUsed"],
        all.len()
    );
    // Placement holds exactly one allocation per server.
    let hv = c.req("GET", "/os-hypervisors/detail", &c.admin, None);
    assert_eq!(hv.body["hypervisors"][0]["running_vms"], all.len());
}

#[test]
fn placement_api_generations_capacity_and_policy() {
    let c = Cloud::start(&["--no-agent"]);
    let pl = Client {
        base: format!("{}/placement", c.server.url),
    };
    let v = |m: &str| ("OpenStack-API-Version", m.to_string());
    let call = |method: &str, path: &str, tok: &str, ver: &str, body: Option<Value>| {
        let (k, val) = v(&format!("placement {ver}"));
        pl.raw(
            method,
            path,
            Some(tok),
            &[(k, &val)],
            body.map(|b| b.to_string()),
        )
    };
    // Version document without a token; too new a version is a 406 that
    // names the range.
    let r = pl.call("GET", "", None, None);
    assert_eq!(r.body["versions"][0]["max_version"], "1.28");
    let r = call("GET", "/resource_providers", &c.admin, "1.99", None);
    assert_eq!(r.status, 406);
    assert_eq!(r.body["errors"][0]["max_version"], "1.28");
    let r = call(
        "POST",
        "/resource_providers",
        &c.admin,
        "1.20",
        Some(json!({"name": "rp1"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rp = r.body["uuid"].as_str().unwrap().to_string();
    assert_eq!(r.body["generation"], 0);
    let inv = json!({"resource_provider_generation": 0, "inventories": {
        "VCPU": {"total": 4, "allocation_ratio": 2.0}, "MEMORY_MB": {"total": 2048, "reserved": 512}}});
    let r = call(
        "PUT",
        &format!("/resource_providers/{rp}/inventories"),
        &c.admin,
        "1.28",
        Some(inv.clone()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The same generation again: somebody else changed it first.
    let r = call(
        "PUT",
        &format!("/resource_providers/{rp}/inventories"),
        &c.admin,
        "1.28",
        Some(inv),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.body["errors"][0]["code"], "placement.concurrent_update");
    // Capacity: (4 - 0) * 2 = 8 VCPU, 2048 - 512 = 1536 MB.
    let r = call(
        "GET",
        "/allocation_candidates?resources=VCPU:8,MEMORY_MB:1536",
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(
        r.body["allocation_requests"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    let r = call(
        "GET",
        "/allocation_candidates?resources=VCPU:9",
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.body["allocation_requests"].as_array().unwrap().len(), 0);
    let consumer = "9b7a1a2e-1111-4222-8333-944455556666";
    let alloc = |n: u64, gen_: Value| {
        json!({"allocations": {rp.clone(): {"resources": {"VCPU": n}}},
        "project_id": "p", "user_id": "u", "consumer_generation": gen_})
    };
    let r = call(
        "PUT",
        &format!("/allocations/{consumer}"),
        &c.admin,
        "1.28",
        Some(alloc(6, Value::Null)),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let other = "9b7a1a2e-1111-4222-8333-944455556667";
    let r = call(
        "PUT",
        &format!("/allocations/{other}"),
        &c.admin,
        "1.28",
        Some(alloc(3, Value::Null)),
    );
    assert_eq!(r.status, 409, "over capacity: {}", r.body);
    let r = call(
        "PUT",
        &format!("/allocations/{consumer}"),
        &c.admin,
        "1.28",
        Some(alloc(2, Value::Null)),
    );
    assert_eq!(r.status, 409, "stale consumer generation: {}", r.body);
    let r = call(
        "GET",
        &format!("/resource_providers/{rp}/usages"),
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.body["usages"]["VCPU"], 6);
    // Shrinking a class away while it is in use is refused.
    let r = call(
        "DELETE",
        &format!("/resource_providers/{rp}/inventories/VCPU"),
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        call(
            "DELETE",
            &format!("/allocations/{consumer}"),
            &c.admin,
            "1.28",
            None
        )
        .status,
        204
    );
    // Traits.
    assert_eq!(
        call("PUT", "/traits/CUSTOM_GPU", &c.admin, "1.28", None).status,
        201
    );
    let r = call(
        "PUT",
        &format!("/resource_providers/{rp}/traits"),
        &c.admin,
        "1.28",
        Some(json!({"traits": ["CUSTOM_GPU"], "resource_provider_generation": 1})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        "GET",
        "/allocation_candidates?resources=VCPU:1&required=CUSTOM_GPU",
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.body["allocation_requests"].as_array().unwrap().len(), 1);
    let r = call(
        "GET",
        "/allocation_candidates?resources=VCPU:1&required=!CUSTOM_GPU",
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.body["allocation_requests"].as_array().unwrap().len(), 0);
    // Bad input and policy.
    let r = call(
        "GET",
        "/allocation_candidates?resources=VCPU:x",
        &c.admin,
        "1.28",
        None,
    );
    assert_eq!(r.status, 400);
    let (_, member) = c.project("pl");
    assert_eq!(
        call("GET", "/resource_providers", &member, "1.28", None).status,
        403
    );
}

/// The JSON query hint filters on the node's live state: a node that
/// already runs a server no longer has `$vcpus_used < 1`.
#[test]
fn compute_json_query_hint_sees_node_usage() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("jq");
    let img = c.image(&tok, "tiny");
    let idle = json!({"hints": {"query": r#"["<", "$vcpus_used", 1]"#}});
    let r = c.boot(&tok, "first", &img, "42", idle.clone());
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&tok, r.body["server"]["id"].as_str().unwrap(), "ACTIVE");
    let r = c.boot(&tok, "second", &img, "42", idle);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.req("GET", &format!("/servers/{id}"), &tok, None).body["server"].clone();
        if s["status"] == "ERROR" {
            assert!(
                s["fault"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("No valid host"),
                "{s}"
            );
            break;
        }
        assert_ne!(s["status"], "ACTIVE", "the query hint was ignored");
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.boot(
        &tok,
        "roomy",
        &img,
        "42",
        json!({"hints": {"query": r#"[">=", "$free_ram_mb", 128]"#}}),
    );
    c.wait(&tok, r.body["server"]["id"].as_str().unwrap(), "ACTIVE");
    let bad = c.boot(
        &tok,
        "bad",
        &img,
        "42",
        json!({"hints": {"query": "[not json"}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
}

/// Every server of a list walked page by page through the `next` links
/// (ids in the order they came), and how many pages that took.
fn walk_pages(c: &Cloud, tok: &str, first: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut path = first.to_string();
    let mut pages = 0;
    loop {
        let r = c.req("GET", &path, tok, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        pages += 1;
        assert!(pages < 100, "the next links never end");
        ids.extend(
            r.body["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        let Some(next) = r.body["servers_links"][0]["href"].as_str() else {
            return (ids, pages);
        };
        assert_eq!(r.body["servers_links"][0]["rel"], "next");
        path = next
            .split_once("/compute/v2.1")
            .expect("a next link into the compute API")
            .1
            .to_string();
    }
}

#[test]
fn compute_server_list_pages_in_novas_order_with_filters() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (pid, tok) = c.project("pages");
    let img = c.image(&tok, "tiny");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 100, "cores": 1000, "ram": 10000000}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // 30 servers: two batches of ten (one creation time each, so the id
    // breaks the tie) and ten on their own, alternating two names.
    for name in ["alpha", "beta"] {
        let r = c.boot(&tok, name, &img, "42", json!({"max_count": 10}));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for i in 0..10 {
        let name = if i % 2 == 0 { "alpha" } else { "beta" };
        let r = c.boot(&tok, &format!("{name}{i}"), &img, "42", json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
    }
    // Another project's servers never show.
    let (_, other) = c.project("elsewhere");
    let mine: Vec<String> = {
        let r = c.req("GET", "/servers", &tok, None);
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(mine.len(), 30);
    // Nova's order, from the in-memory sort on explicit keys.
    let reference = |filter: &str| -> Vec<String> {
        let r = c.req(
            "GET",
            &format!(
                "/servers?sort_key=created_at&sort_dir=desc&sort_key=id&sort_dir=desc{filter}"
            ),
            &tok,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = reference("");
    assert_eq!(all, mine, "the default order is created_at desc, id desc");
    // Pages of 7: 7, 7, 7, 7, 2, each server once, in that order.
    let (walked, pages) = walk_pages(&c, &tok, "/servers?limit=7");
    assert_eq!(walked, all);
    assert_eq!(pages, 5);
    let (walked, _) = walk_pages(&c, &tok, "/servers/detail?limit=7");
    assert_eq!(walked, all);
    // A filter applied across pages: 15 alphas in pages of 4.
    let alphas = reference("&name=alpha");
    assert_eq!(alphas.len(), 15);
    let (walked, pages) = walk_pages(&c, &tok, "/servers/detail?name=alpha&limit=4");
    assert_eq!(walked, alphas);
    assert_eq!(pages, 4);
    // A full last page still links to an empty one, as Nova's does.
    let (walked, pages) = walk_pages(&c, &tok, "/servers?name=%5Ebeta&limit=5");
    assert_eq!(walked, reference("&name=%5Ebeta"));
    assert_eq!(pages, 4);
    // Markers: one in the middle, one that is no server, one of a server
    // the filter leaves out, one of another project's list.
    let r = c.req("GET", &format!("/servers?marker={}", all[9]), &tok, None);
    let after: Vec<&str> = r.body["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        after,
        all[10..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(r.body.get("servers_links").is_none(), "{}", r.body);
    let beta = all.iter().find(|id| !alphas.contains(id)).unwrap();
    for (who, query) in [
        (
            &tok,
            "marker=00000000-0000-0000-0000-000000000000".to_string(),
        ),
        (&tok, format!("name=alpha&marker={beta}")),
        (&other, format!("marker={}", all[0])),
    ] {
        let r = c.req("GET", &format!("/servers?{query}"), who, None);
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(
            fault(&r, "badRequest"),
            format!("marker [{}] not found", query.rsplit('=').next().unwrap())
        );
    }
    let r = c.req("GET", "/servers?limit=0", &tok, None);
    assert_eq!(r.body["servers"], json!([]));
}
