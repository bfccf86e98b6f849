//! The real `openstack` CLI (python-openstackclient) against `stratus up`,
//! using the `clouds.yaml` that `stratus up` wrote.
//!
//! The CLI is found at `$STRATUS_OPENSTACK_CLI`, else `.venv/bin/openstack`
//! in the workspace (the README's test command creates it). Without it these
//! tests fail, unless `STRATUS_SKIP_CLI_TESTS=1` says to skip them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use super::common::Server;

pub(super) fn cli() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("STRATUS_OPENSTACK_CLI") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/openstack");
    if venv.exists() {
        return Some(venv);
    }
    if std::env::var("STRATUS_SKIP_CLI_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipping: STRATUS_SKIP_CLI_TESTS=1 and no openstack CLI found");
        return None;
    }
    panic!(
        "the openstack CLI is missing: run ./scripts/test (it makes .venv), set STRATUS_OPENSTACK_CLI, or STRATUS_SKIP_CLI_TESTS=1"
    );
}

pub(super) struct Os<'a> {
    bin: PathBuf,
    server: &'a Server,
    home: PathBuf,
}

impl<'a> Os<'a> {
    pub(super) fn new(server: &'a Server) -> Option<Os<'a>> {
        let home = server.data_dir().join("cli-home");
        std::fs::create_dir_all(&home).unwrap();
        Some(Os {
            bin: cli()?,
            server,
            home,
        })
    }

    /// Runs `openstack --os-cloud stratus ARGS` with extra env; returns stdout.
    fn run_env(&self, env: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env(
                "OS_CLIENT_CONFIG_FILE",
                self.server.data_dir().join("clouds.yaml"),
            );
        let uses_cloud = !env.iter().any(|(k, _)| *k == "OS_AUTH_TYPE");
        if uses_cloud {
            cmd.env("OS_CLOUD", "stratus");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.args(args).output().expect("run openstack");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub(super) fn ok(&self, args: &[&str]) -> String {
        self.run_env(&[], args)
            .unwrap_or_else(|e| panic!("openstack {args:?} failed:\n{e}"))
    }

    /// Runs a command that must fail; its output.
    pub(super) fn fails(&self, args: &[&str]) -> String {
        match self.run_env(&[], args) {
            Ok(out) => panic!("openstack {args:?} succeeded:\n{out}"),
            Err(e) => e,
        }
    }

    pub(super) fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-f", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("CLI printed JSON")
    }
}

#[test]
fn cli_token_and_project_lifecycle() {
    let s = Server::start();
    let Some(os) = Os::new(&s) else { return };
    let tok = os.json(&["token", "issue"]);
    assert!(tok["id"].as_str().unwrap().starts_with("gAAAAA"));
    let demo = os.json(&["project", "create", "--description", "shop floor", "demo"]);
    let demo_id = demo["id"].as_str().unwrap().to_string();
    let child = os.json(&["project", "create", "--parent", "demo", "child"]);
    assert_eq!(child["parent_id"], demo_id.as_str());
    let list = os.json(&["project", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"demo") && names.contains(&"child") && names.contains(&"admin"),
        "{names:?}"
    );
    let shown = os.json(&["project", "show", "child"]);
    assert_eq!(shown["parent_id"], demo_id.as_str());
    os.ok(&["project", "set", "--disable", "child"]);
    os.ok(&[
        "project",
        "set",
        "--name",
        "demo2",
        "--description",
        "renamed",
        "--disable",
        "demo",
    ]);
    let shown = os.json(&["project", "show", "demo2"]);
    assert_eq!(shown["description"], "renamed");
    assert_eq!(shown["enabled"], false);
    assert!(
        os.run_env(&[], &["project", "delete", "demo2"]).is_err(),
        "a parent cannot be deleted first"
    );
    os.ok(&["project", "delete", "child"]);
    os.ok(&["project", "delete", "demo2"]);
    // (The in-process agent's node project is in its own domain.)
    let list = os.json(&["project", "list", "--domain", "default"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn cli_users_roles_domains_and_application_credentials() {
    let s = Server::start();
    let Some(os) = Os::new(&s) else { return };
    os.ok(&["project", "create", "shop"]);
    let user = os.json(&[
        "user",
        "create",
        "--domain",
        "default",
        "--password",
        "alice-pw",
        "--email",
        "a@example.org",
        "alice",
    ]);
    assert_eq!(user["name"], "alice");
    os.ok(&[
        "role",
        "add",
        "--user",
        "alice",
        "--project",
        "shop",
        "member",
    ]);
    let rows = os.json(&["role", "assignment", "list", "--names", "--user", "alice"]);
    let row = &rows.as_array().unwrap()[0];
    assert_eq!(row["Role"], "member");
    assert_eq!(row["User"], "alice@Default");
    assert_eq!(row["Project"], "shop@Default");
    let as_alice = [
        ("OS_USERNAME", "alice"),
        ("OS_PASSWORD", "alice-pw"),
        ("OS_PROJECT_NAME", "shop"),
    ];
    let tok = os
        .run_env(&as_alice, &["token", "issue", "-f", "json"])
        .expect("alice logs in");
    let tok: Value = serde_json::from_str(&tok).unwrap();
    assert_eq!(tok["user_id"], user["id"]);
    let wrong = [
        ("OS_USERNAME", "alice"),
        ("OS_PASSWORD", "nope"),
        ("OS_PROJECT_NAME", "shop"),
    ];
    let err = os.run_env(&wrong, &["token", "issue"]).unwrap_err();
    assert!(err.contains("401"), "{err}");
    let denied = os
        .run_env(&as_alice, &["project", "create", "nope"])
        .unwrap_err();
    assert!(denied.contains("403"), "{denied}");
    let dom = os.json(&["domain", "create", "--description", "edge sites", "edge"]);
    assert_eq!(dom["name"], "edge");
    let domains = os.json(&["domain", "list"]);
    let mut names: Vec<&str> = domains
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Name"].as_str().unwrap())
        .filter(|n| *n != "stratus_nodes") // the in-process agent's, when it runs
        .collect();
    names.sort();
    assert_eq!(names, ["Default", "edge"], "{domains}");
    let ac = os
        .run_env(
            &as_alice,
            &[
                "application",
                "credential",
                "create",
                "--description",
                "ci",
                "ci-bot",
                "-f",
                "json",
            ],
        )
        .expect("create app cred");
    let ac: Value = serde_json::from_str(&ac).unwrap();
    let (id, secret) = (ac["ID"].as_str().unwrap(), ac["Secret"].as_str().unwrap());
    let auth_url = format!("{}/identity/v3", s.url);
    let with_ac = [
        ("OS_AUTH_TYPE", "v3applicationcredential"),
        ("OS_AUTH_URL", auth_url.as_str()),
        ("OS_APPLICATION_CREDENTIAL_ID", id),
        ("OS_APPLICATION_CREDENTIAL_SECRET", secret),
        ("OS_IDENTITY_API_VERSION", "3"),
    ];
    let tok = os
        .run_env(&with_ac, &["token", "issue", "-f", "json"])
        .expect("auth with the application credential");
    let tok: Value = serde_json::from_str(&tok).unwrap();
    assert_eq!(tok["project_id"], ac["Project ID"]);
    let listed = os
        .run_env(
            &as_alice,
            &["application", "credential", "list", "-f", "json"],
        )
        .unwrap();
    assert!(listed.contains("ci-bot"));
}

#[test]
fn cli_image_lifecycle_sharing_and_format_truth() {
    let s = Server::start();
    let Some(os) = Os::new(&s) else { return };
    let dir = s.data_dir().join("cli-images");
    std::fs::create_dir_all(&dir).unwrap();
    let path = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let qemu = |args: &[&str]| {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (apt-get install qemu-utils)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    qemu(&["create", "-f", "qcow2", &path("disk.qcow2"), "32M"]);
    qemu(&[
        "create",
        "-f",
        "qcow2",
        "-b",
        "/etc/hostname",
        "-F",
        "raw",
        &path("evil.qcow2"),
    ]);

    let img = os.json(&[
        "image",
        "create",
        "--file",
        &path("disk.qcow2"),
        "--disk-format",
        "qcow2",
        "--container-format",
        "bare",
        "--property",
        "os_distro=busybox",
        "--tag",
        "edge",
        "tiny",
    ]);
    assert_eq!(img["status"], "active", "{img}");
    let id = img["id"].as_str().unwrap().to_string();
    let shown = os.json(&["image", "show", "tiny"]);
    assert_eq!(shown["disk_format"], "qcow2");
    assert_eq!(shown["virtual_size"], 32 * 1024 * 1024);
    assert!(
        shown["properties"]["os_distro"] == "busybox" || shown["os_distro"] == "busybox",
        "{shown}"
    );
    let list = os.json(&["image", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["Name"] == "tiny" && i["Status"] == "active"),
        "{list}"
    );

    os.ok(&[
        "image",
        "set",
        "--property",
        "site=edge-7",
        "--min-ram",
        "64",
        "tiny",
    ]);
    let shown = os.json(&["image", "show", "tiny"]);
    assert_eq!(shown["min_ram"], 64);
    assert!(shown.to_string().contains("edge-7"), "{shown}");
    os.ok(&["image", "unset", "--property", "site", "tiny"]);
    assert!(
        !os.json(&["image", "show", "tiny"])
            .to_string()
            .contains("edge-7")
    );

    // Download equals upload, byte for byte.
    os.ok(&["image", "save", "--file", &path("out.qcow2"), "tiny"]);
    assert_eq!(
        std::fs::read(path("out.qcow2")).unwrap(),
        std::fs::read(path("disk.qcow2")).unwrap()
    );

    // A forged qcow2 (backing file pointing at a host file) is refused.
    let err = os
        .run_env(
            &[],
            &[
                "image",
                "create",
                "--file",
                &path("evil.qcow2"),
                "--disk-format",
                "qcow2",
                "--container-format",
                "bare",
                "evil",
            ],
        )
        .unwrap_err();
    assert!(err.contains("backing"), "{err}");
    let list = os.json(&["image", "list"]);
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["Name"] == "evil" && i["Status"] == "active"),
        "{list}"
    );

    // Share with another project; it accepts and then lists the image.
    os.ok(&["project", "create", "partner"]);
    os.ok(&["user", "create", "--password", "bob-pw", "bob"]);
    os.ok(&[
        "role",
        "add",
        "--user",
        "bob",
        "--project",
        "partner",
        "member",
    ]);
    let as_bob = [
        ("OS_USERNAME", "bob"),
        ("OS_PASSWORD", "bob-pw"),
        ("OS_PROJECT_NAME", "partner"),
    ];
    let bob_list = |os: &Os| -> Value {
        serde_json::from_str(
            &os.run_env(&as_bob, &["image", "list", "-f", "json"])
                .unwrap(),
        )
        .unwrap()
    };
    assert!(
        bob_list(&os).as_array().unwrap().is_empty(),
        "not shared yet"
    );
    os.ok(&["image", "set", "--shared", "tiny"]);
    os.ok(&["image", "add", "project", "tiny", "partner"]);
    os.run_env(&as_bob, &["image", "set", "--accept", &id])
        .expect("bob accepts");
    let list = bob_list(&os);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|i| i["ID"] == id.as_str()),
        "{list}"
    );
    let members = os.json(&["image", "member", "list", "tiny"]);
    assert_eq!(members[0]["Status"], "accepted", "{members}");
    // Bob cannot delete it; the owner can.
    assert!(os.run_env(&as_bob, &["image", "delete", &id]).is_err());
    os.ok(&["image", "delete", "tiny"]);
    assert!(os.run_env(&[], &["image", "show", &id]).is_err());
}

/// `openstack server ...` against real containers: create --wait, list,
/// show, stop/start/reboot/pause/unpause, console log, server groups with
/// anti-affinity over two nodes, delete.
#[test]
fn cli_server_lifecycle_console_and_anti_affinity() {
    assert!(
        Command::new("runc").arg("--version").output().is_ok(),
        "runc is needed (apt-get install runc; ./scripts/test installs it)"
    );
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-images");
    assert!(
        images.join("images.tsv").exists(),
        "run scripts/build-test-images first (./scripts/test does)"
    );
    let s = Server::start_with(&[
        "--import-images",
        images.to_str().unwrap(),
        "--node-name",
        "node-a",
    ]);
    let Some(os) = Os::new(&s) else { return };
    // A second node: `stratus agent` with its own container state.
    let agent = super::common::Agent::start(&s, "node-b", &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while os.json(&["hypervisor", "list"]).as_array().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "second node never registered; its log:\n{}",
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let flavors = os.json(&["flavor", "list"]);
    assert!(
        flavors
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["Name"] == "m1.tiny")
    );
    // A user-data script reports the memory limit the container runs under.
    let ud = s.data_dir().join("user-data.sh");
    std::fs::write(
        &ud,
        "#!/bin/sh\necho MEMLIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)\n",
    )
    .unwrap();
    let srv = os.json(&[
        "server",
        "create",
        "--image",
        "busybox",
        "--flavor",
        "m1.tiny",
        "--user-data",
        ud.to_str().unwrap(),
        "--wait",
        "web",
    ]);
    assert_eq!(srv["status"], "ACTIVE", "{srv}");
    let id = srv["id"].as_str().unwrap().to_string();
    let list = os.json(&["server", "list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == id.as_str())
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = os.ok(&["console", "log", "show", "web"]);
        if log.contains("STRATUS-TEST-IMAGE OK") {
            // m1.tiny: 512 MiB, enforced by the container's cgroup.
            assert!(log.contains("MEMLIMIT 536870912"), "{log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "console: {log}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let wait_status = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let shown = os.json(&["server", "show", "web"]);
            if shown["status"] == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {want}: {shown}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    os.ok(&["server", "stop", "web"]);
    wait_status("SHUTOFF");
    os.ok(&["server", "start", "web"]);
    wait_status("ACTIVE");
    os.ok(&["server", "reboot", "--hard", "web"]);
    wait_status("ACTIVE");
    os.ok(&["server", "pause", "web"]);
    wait_status("PAUSED");
    os.ok(&["server", "unpause", "web"]);
    wait_status("ACTIVE");
    // Anti-affinity: two servers, two nodes.
    let grp = os.json(&[
        "server",
        "group",
        "create",
        "--policy",
        "anti-affinity",
        "spread",
    ]);
    let gid = grp["id"].as_str().unwrap().to_string();
    for n in ["g1", "g2"] {
        let made = os.json(&[
            "server",
            "create",
            "--image",
            "busybox",
            "--flavor",
            "m1.nano",
            "--hint",
            &format!("group={gid}"),
            "--wait",
            n,
        ]);
        assert_eq!(made["status"], "ACTIVE", "{made}");
    }
    let h1 = os.json(&["server", "show", "g1"])["OS-EXT-SRV-ATTR:host"].clone();
    let h2 = os.json(&["server", "show", "g2"])["OS-EXT-SRV-ATTR:host"].clone();
    assert!(h1.is_string() && h2.is_string(), "{h1} {h2}");
    assert_ne!(h1, h2, "anti-affinity put both servers on {h1}");
    for n in ["web", "g1", "g2"] {
        os.ok(&["server", "delete", "--wait", n]);
    }
    assert!(os.json(&["server", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn cli_network_subnet_port_and_security_groups() {
    let s = Server::start_with(&["--no-agent"]);
    let Some(os) = Os::new(&s) else { return };
    let net = os.json(&[
        "network",
        "create",
        "--description",
        "app tier",
        "--tag",
        "tier1",
        "appnet",
    ]);
    let net_id = net["id"].as_str().unwrap().to_string();
    assert_eq!(net["mtu"], 1450);
    assert_eq!(net["status"], "ACTIVE");
    let sub = os.json(&[
        "subnet",
        "create",
        "--network",
        "appnet",
        "--subnet-range",
        "10.42.0.0/24",
        "--dns-nameserver",
        "10.42.0.53",
        "appsub",
    ]);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    assert_eq!(sub["gateway_ip"], "10.42.0.1");
    assert_eq!(
        sub["allocation_pools"],
        serde_json::json!([{"start": "10.42.0.2", "end": "10.42.0.254"}])
    );
    assert_eq!(sub["dns_nameservers"], serde_json::json!(["10.42.0.53"]));
    // An invalid range is refused with Neutron's message, and nothing is made.
    let bad = os
        .run_env(
            &[],
            &[
                "subnet",
                "create",
                "--network",
                "appnet",
                "--subnet-range",
                "10.42.0.0/16",
                "other",
            ],
        )
        .expect_err("overlapping subnet refused");
    assert!(bad.contains("overlaps with another subnet"), "{bad}");

    let port = os.json(&[
        "port",
        "create",
        "--network",
        "appnet",
        "--fixed-ip",
        "subnet=appsub,ip-address=10.42.0.10",
        "web1",
    ]);
    assert_eq!(port["fixed_ips"][0]["ip_address"], "10.42.0.10");
    assert!(
        port["mac_address"]
            .as_str()
            .unwrap()
            .starts_with("fa:16:3e:")
    );
    let auto = os.json(&["port", "create", "--network", "appnet", "web2"]);
    assert_eq!(auto["fixed_ips"][0]["ip_address"], "10.42.0.2");
    let taken = os
        .run_env(
            &[],
            &[
                "port",
                "create",
                "--network",
                "appnet",
                "--fixed-ip",
                "ip-address=10.42.0.10",
                "web3",
            ],
        )
        .expect_err("a used address is refused");
    assert!(taken.contains("already allocated"), "{taken}");
    let list = os.json(&["port", "list", "--network", "appnet"]);
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["web1", "web2"]);
    let by_ip = os.json(&["port", "list", "--fixed-ip", "ip-address=10.42.0.10"]);
    assert_eq!(by_ip.as_array().unwrap().len(), 1);
    assert_eq!(by_ip[0]["Name"], "web1");
    let shown = os.json(&["network", "show", "appnet"]);
    assert_eq!(shown["subnets"], serde_json::json!([sub_id]));
    assert_eq!(shown["tags"], serde_json::json!(["tier1"]));
    let tagged = os.json(&["network", "list", "--tags", "tier1"]);
    assert_eq!(tagged.as_array().unwrap().len(), 1, "{tagged}");
    assert!(
        os.json(&["network", "list", "--tags", "other"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    let sg = os.json(&[
        "security",
        "group",
        "create",
        "--description",
        "ssh only",
        "ssh",
    ]);
    let sg_id = sg["id"].as_str().unwrap().to_string();
    let rule = os.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "ssh",
    ]);
    assert_eq!(rule["protocol"], "tcp");
    assert_eq!(rule["port_range_min"], 22);
    assert_eq!(rule["port_range_max"], 22);
    assert_eq!(rule["direction"], "ingress");
    let dup = os
        .run_env(
            &[],
            &[
                "security",
                "group",
                "rule",
                "create",
                "--protocol",
                "tcp",
                "--dst-port",
                "22",
                "ssh",
            ],
        )
        .expect_err("a duplicate rule is refused");
    assert!(dup.contains("already exists"), "{dup}");
    let rules = os.json(&["security", "group", "rule", "list", "ssh"]);
    assert_eq!(
        rules.as_array().unwrap().len(),
        3,
        "two egress rules and ssh: {rules}"
    );
    let groups = os.json(&["security", "group", "list"]);
    let gnames: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["Name"].as_str().unwrap())
        .collect();
    assert!(
        gnames.contains(&"default") && gnames.contains(&"ssh"),
        "{gnames:?}"
    );
    os.ok(&[
        "port",
        "set",
        "--security-group",
        "ssh",
        "--no-security-group",
        "web1",
    ]);
    let web1 = os.json(&["port", "show", "web1"]);
    assert_eq!(web1["security_group_ids"], serde_json::json!([sg_id]));

    // The network is in use: 409, and it is still there.
    let inuse = os
        .run_env(&[], &["network", "delete", "appnet"])
        .expect_err("a network with ports is not deleted");
    assert!(inuse.contains("409") || inuse.contains("in use"), "{inuse}");
    assert_eq!(
        os.json(&["network", "show", "appnet"])["id"],
        net_id.as_str()
    );
    os.ok(&["port", "delete", "web1", "web2"]);
    os.ok(&["security", "group", "delete", "ssh"]);
    os.ok(&["network", "delete", "appnet"]);
    let nets = os.json(&["network", "list"]);
    assert!(nets.as_array().unwrap().is_empty(), "{nets}");
    let subs = os.json(&["subnet", "list"]);
    assert!(subs.as_array().unwrap().is_empty(), "{subs}");
}

/// Servers on networks with the real CLI, in a cloud inside a namespace
/// of its own: `--network`, `--nic net-id=,v4-fixed-ip=`, `--nic
/// port-id=`, `server add/remove network|port|security group`, and a
/// brought port outliving its server.
#[test]
fn cli_servers_on_networks_interfaces_and_security_groups() {
    super::compute_real::require_runtime();
    let images = super::compute_real::test_images();
    let server = Server::start_in_netns(&["--import-images", images.to_str().unwrap()]);
    let Some(os) = Os::new(&server) else { return };
    let addr = |name: &str| os.json(&["server", "show", name])["addresses"].clone();
    let n1 = os.json(&["network", "create", "n1"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    os.ok(&[
        "subnet",
        "create",
        "--network",
        "n1",
        "--subnet-range",
        "10.70.0.0/24",
        "s-n1",
    ]);
    os.ok(&["network", "create", "n2"]);
    os.ok(&[
        "subnet",
        "create",
        "--network",
        "n2",
        "--subnet-range",
        "10.71.0.0/24",
        "s-n2",
    ]);

    os.ok(&[
        "server",
        "create",
        "--image",
        "busybox",
        "--flavor",
        "m1.nano",
        "--network",
        "n1",
        "--wait",
        "a",
    ]);
    let a = addr("a");
    let a_ip = a["n1"][0].as_str().map(str::to_string).unwrap_or_else(|| {
        // openstackclient renders addresses as {network: [ip, ...]}.
        panic!("no address on n1: {a}")
    });
    assert!(a_ip.starts_with("10.70.0."), "{a}");

    let nic = format!("net-id={n1},v4-fixed-ip=10.70.0.20");
    os.ok(&[
        "server", "create", "--image", "busybox", "--flavor", "m1.nano", "--nic", &nic, "--wait",
        "b",
    ]);
    assert_eq!(addr("b")["n1"], serde_json::json!(["10.70.0.20"]));

    let p = os.json(&["port", "create", "--network", "n2", "mine"]);
    let pid = p["id"].as_str().unwrap().to_string();
    let nic = format!("port-id={pid}");
    os.ok(&[
        "server", "create", "--image", "busybox", "--flavor", "m1.nano", "--nic", &nic, "--wait",
        "c",
    ]);
    let port = os.json(&["port", "show", "mine"]);
    assert_eq!(port["device_owner"], "compute:nova");
    assert_eq!(port["status"], "ACTIVE");

    // A second network on a running server: a new interface inside it.
    os.ok(&["server", "add", "network", "a", "n2"]);
    let a = addr("a");
    let a_ip2 = a["n2"][0].as_str().expect("an address on n2").to_string();
    let id = os.json(&["server", "show", "a"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let shown = super::common::in_server_netns(&id, &["ip", "-o", "addr", "show"]).unwrap();
        if shown.contains(&format!("eth1    inet {a_ip2}/24")) || shown.contains(&a_ip2) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "eth1 never got {a_ip2}:\n{shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ifs = os.json(&["port", "list", "--server", "a"]);
    assert_eq!(ifs.as_array().unwrap().len(), 2, "{ifs}");
    os.ok(&["server", "remove", "network", "a", "n2"]);
    assert!(addr("a").get("n2").is_none(), "{}", addr("a"));

    // Security groups on a running server.
    os.ok(&["security", "group", "create", "web"]);
    os.ok(&["server", "add", "security", "group", "a", "web"]);
    let groups = os.json(&["server", "show", "a"])["security_groups"].clone();
    assert!(groups.to_string().contains("web"), "{groups}");
    let ports = os.json(&["port", "list", "--server", "a", "--long"]);
    assert_eq!(ports.as_array().unwrap().len(), 1);
    os.ok(&["server", "remove", "security", "group", "a", "web"]);
    let groups = os.json(&["server", "show", "a"])["security_groups"].clone();
    assert!(!groups.to_string().contains("web"), "{groups}");

    // The brought port stays when its server goes; the made ones go.
    os.ok(&["server", "delete", "--wait", "c", "b"]);
    let port = os.json(&["port", "show", "mine"]);
    assert_eq!(port["device_id"], "");
    assert_eq!(port["status"], "DOWN");
    let left = os.json(&[
        "port",
        "list",
        "--network",
        "n1",
        "--device-owner",
        "compute:nova",
    ]);
    assert_eq!(left.as_array().unwrap().len(), 1, "only a's port: {left}");
}

#[test]
fn cli_router_floating_ip_subnet_pool_and_auto_topology() {
    let s = Server::start_with(&["--no-agent"]);
    let Some(os) = Os::new(&s) else { return };
    let public = os.json(&["network", "create", "--external", "--default", "public"]);
    let public_id = public["id"].as_str().unwrap().to_string();
    assert_eq!(public["router:external"], true);
    assert_eq!(public["is_default"], true);
    os.json(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "172.24.4.0/24",
        "--no-dhcp",
        "public-sub",
    ]);
    os.json(&["network", "create", "appnet"]);
    os.json(&[
        "subnet",
        "create",
        "--network",
        "appnet",
        "--subnet-range",
        "10.42.0.0/24",
        "appsub",
    ]);

    // Router: create, an interface on appsub, the gateway to public.
    let r = os.json(&["router", "create", "r1"]);
    let rid = r["id"].as_str().unwrap().to_string();
    assert_eq!(r["status"], "ACTIVE");
    os.ok(&["router", "add", "subnet", "r1", "appsub"]);
    os.ok(&["router", "set", "--external-gateway", "public", "r1"]);
    let shown = os.json(&["router", "show", "r1"]);
    let gw = &shown["external_gateway_info"];
    assert_eq!(gw["network_id"], public_id.as_str(), "{shown}");
    assert_eq!(gw["enable_snat"], true);
    assert_eq!(gw["external_fixed_ips"][0]["ip_address"], "172.24.4.2");
    let ifs = os.json(&["port", "list", "--router", "r1", "--long"]);
    let owners: Vec<&str> = ifs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Device Owner"].as_str().unwrap_or_default())
        .collect();
    assert!(owners.contains(&"network:router_interface"), "{ifs}");
    // Deleting the router while it has an interface is refused.
    let inuse = os
        .run_env(&[], &["router", "delete", "r1"])
        .expect_err("a router with interfaces is not deleted");
    assert!(
        inuse.contains("still attached") || inuse.contains("409"),
        "{inuse}"
    );

    // Floating IP: create on public, associate with a port, unset.
    let port = os.json(&["port", "create", "--network", "appnet", "vm1"]);
    let fixed = port["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap()
        .to_string();
    let fip = os.json(&["floating", "ip", "create", "public"]);
    let addr = fip["floating_ip_address"].as_str().unwrap().to_string();
    assert!(addr.starts_with("172.24.4."), "{fip}");
    os.ok(&["floating", "ip", "set", "--port", "vm1", &addr]);
    let f = os.json(&["floating", "ip", "show", &addr]);
    assert_eq!(f["port_id"], port["id"]);
    assert_eq!(f["fixed_ip_address"], fixed.as_str());
    assert_eq!(f["router_id"], rid.as_str());
    assert_eq!(f["status"], "ACTIVE");
    os.ok(&["floating", "ip", "unset", "--port", &addr]);
    let f = os.json(&["floating", "ip", "show", &addr]);
    assert_eq!(f["port_id"], Value::Null);
    assert_eq!(f["router_id"], Value::Null);
    os.ok(&["floating", "ip", "delete", &addr]);
    assert!(
        os.json(&["floating", "ip", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Subnet pool: a subnet carved from it.
    let pool = os.json(&[
        "subnet",
        "pool",
        "create",
        "--pool-prefix",
        "10.50.0.0/16",
        "--default-prefix-length",
        "24",
        "--share",
        "--default",
        "pool4",
    ]);
    assert_eq!(pool["default_prefixlen"], 24);
    let carved = os.json(&[
        "subnet",
        "create",
        "--network",
        "appnet",
        "--subnet-pool",
        "pool4",
        "pooled",
    ]);
    assert_eq!(carved["cidr"], "10.50.0.0/24");
    assert_eq!(carved["subnetpool_id"], pool["id"]);
    let carved2 = os.json(&[
        "subnet",
        "create",
        "--network",
        "appnet",
        "--subnet-pool",
        "pool4",
        "--prefix-length",
        "26",
        "pooled2",
    ]);
    assert_eq!(carved2["cidr"], "10.50.1.0/26");

    // Auto-allocated topology: checked, made once, the same on a second
    // call, and deleted.
    os.ok(&[
        "network",
        "auto",
        "allocated",
        "topology",
        "create",
        "--check-resources",
    ]);
    let t1 = os.json(&["network", "auto", "allocated", "topology", "create"]);
    let t2 = os.json(&["network", "auto", "allocated", "topology", "create"]);
    let net = t1["id"].as_str().unwrap().to_string();
    assert_eq!(t2["id"], net.as_str());
    let n = os.json(&["network", "show", &net]);
    assert_eq!(n["name"], "auto_allocated_network");
    let sub = os.json(&["subnet", "list", "--network", &net]);
    assert_eq!(sub[0]["Subnet"], "10.50.2.0/24", "{sub}");
    os.ok(&["network", "auto", "allocated", "topology", "delete"]);
    let gone = os.run_env(&[], &["network", "show", &net]);
    assert!(gone.is_err(), "the auto-allocated network is deleted");
}

/// Polls `openstack console log show NAME` until it shows every needle.
fn console_shows(os: &Os, name: &str, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let out = os
            .run_env(&[], &["console", "log", "show", name])
            .unwrap_or_default();
        if needles.iter().all(|n| out.contains(n)) {
            return out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the console of {name} never showed {needles:?}:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Polls `openstack server show NAME` until its status is `status`.
fn status_becomes(os: &Os, name: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let s = os.json(&["server", "show", name]);
        if s["status"] == status {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never became {status}: {s}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Virtual machines through the real CLI, on a cloud in a network
/// namespace of its own: `busybox-vm` (a qcow2 disk) boots under QEMU,
/// runs its user data from the config drive, takes its port's address by
/// DHCP and pings another VM on the network; stop powers it off by the
/// ACPI button, start, pause, suspend (state saved to disk) and resume
/// work; a snapshot is a qcow2 image that boots; delete leaves no QEMU.
#[test]
fn cli_vms_boot_run_user_data_ping_each_other_and_answer_power_actions() {
    super::compute_real::require_runtime();
    super::compute_real::require_qemu();
    let images = super::compute_real::test_images();
    let server = Server::start_in_netns(&["--import-images", images.to_str().unwrap()]);
    let Some(os) = Os::new(&server) else { return };
    os.ok(&["network", "create", "vmnet"]);
    os.ok(&[
        "subnet",
        "create",
        "--network",
        "vmnet",
        "--subnet-range",
        "10.72.0.0/24",
        "vmsub",
    ]);
    for (port, ip) in [("pa", "10.72.0.11"), ("pb", "10.72.0.12")] {
        let fixed = format!("ip-address={ip}");
        os.ok(&[
            "port",
            "create",
            "--network",
            "vmnet",
            "--fixed-ip",
            &fixed,
            port,
        ]);
    }
    os.ok(&[
        "security", "group", "rule", "create", "--proto", "icmp", "default",
    ]);
    let dir = server.data_dir();
    let ud_a = dir.join("ud-a.sh");
    std::fs::write(&ud_a, "#!/bin/sh\necho VM-USERDATA-RAN\n").unwrap();
    let ud_b = dir.join("ud-b.sh");
    std::fs::write(
        &ud_b,
        "#!/bin/sh\n(for i in $(seq 60); do ping -c 1 -W 1 10.72.0.11 && echo PING-OK && break; sleep 1; done) &\n",
    )
    .unwrap();
    os.ok(&[
        "server",
        "create",
        "--image",
        "busybox-vm",
        "--flavor",
        "m1.tiny",
        "--port",
        "pa",
        "--user-data",
        ud_a.to_str().unwrap(),
        "--wait",
        "va",
    ]);
    console_shows(
        &os,
        "va",
        &[
            "STRATUS-TEST-IMAGE OK",
            "config drive",
            "VM-USERDATA-RAN",
            "dhcp: eth0 10.72.0.11/24",
        ],
    );
    let hv = os.json(&["hypervisor", "list"]);
    let kind = hv[0]["Hypervisor Type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(kind == "QEMU" || kind == "KVM", "{hv}");

    os.ok(&[
        "server",
        "create",
        "--image",
        "busybox-vm",
        "--flavor",
        "m1.tiny",
        "--port",
        "pb",
        "--user-data",
        ud_b.to_str().unwrap(),
        "--wait",
        "vb",
    ]);
    let out = console_shows(&os, "vb", &["PING-OK"]);
    assert!(out.contains("64 bytes from 10.72.0.11"), "{out}");

    // Power actions.
    os.ok(&["server", "stop", "va"]);
    status_becomes(&os, "va", "SHUTOFF");
    console_shows(&os, "va", &["power button: powering off"]);
    os.ok(&["server", "start", "va"]);
    status_becomes(&os, "va", "ACTIVE");
    // A start boots the guest again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let out = console_shows(&os, "va", &["tick"]);
        if out.matches("STRATUS-TEST-IMAGE OK").count() == 2
            && out
                .rsplit("STRATUS-TEST-IMAGE OK")
                .next()
                .unwrap()
                .contains("tick 1")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second boot:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    os.ok(&["server", "pause", "va"]);
    let s = status_becomes(&os, "va", "PAUSED");
    assert_eq!(s["OS-EXT-STS:power_state"], 3, "{s}");
    os.ok(&["server", "unpause", "va"]);
    status_becomes(&os, "va", "ACTIVE");
    os.ok(&["server", "suspend", "va"]);
    status_becomes(&os, "va", "SUSPENDED");
    os.ok(&["server", "resume", "va"]);
    status_becomes(&os, "va", "ACTIVE");
    // Resumed, not booted again: the counter goes on.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let out = console_shows(&os, "va", &["tick"]);
    assert_eq!(out.matches("STRATUS-TEST-IMAGE OK").count(), 2, "{out}");

    // A snapshot is a qcow2 disk image that boots.
    os.ok(&[
        "server", "image", "create", "--name", "va-snap", "--wait", "va",
    ]);
    let img = os.json(&["image", "show", "va-snap"]);
    assert_eq!(img["disk_format"], "qcow2", "{img}");
    assert_eq!(img["container_format"], "bare", "{img}");
    os.ok(&[
        "server", "create", "--image", "va-snap", "--flavor", "m1.tiny", "--nic", "none", "--wait",
        "vc",
    ]);
    console_shows(&os, "vc", &["STRATUS-TEST-IMAGE OK", "tick 1"]);

    let ids: Vec<String> = ["va", "vb", "vc"]
        .iter()
        .map(|n| {
            os.json(&["server", "show", n])["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    os.ok(&["server", "delete", "--wait", "va", "vb", "vc"]);
    for id in ids {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        assert!(
            !ps.contains(&format!("guest={id}")),
            "QEMU of {id} still runs after delete"
        );
    }
}

/// The user data of a VM that, once DHCP has given it an address and the
/// route to 169.254.169.254, fetches its metadata and user data from the
/// metadata service with busybox `wget` and prints them between markers
/// (spelled split in the script, so the user data printed back does not
/// show them), each in one line, so one write: the guest's `tick` lines
/// cannot land inside (the user data's newlines are printed as `|`).
/// `token` makes each VM's user data its own. (`timeout`, not `wget -T`:
/// Debian's busybox-static 1.35 wget crashes on `-T`.)
fn metadata_fetch_script(token: &str) -> String {
    format!(
        "#!/bin/sh\n# {token}\n(for i in $(seq 60); do\n  if timeout 5 wget -q -O /tmp/md http://169.254.169.254/openstack/latest/meta_data.json && timeout 5 wget -q -O /tmp/ud http://169.254.169.254/openstack/latest/user_data; then\n    echo \"MD\"\"-BEGIN $(cat /tmp/md) MD\"\"-END\"\n    printf 'UD''-BEGIN %s UD''-END\\n' \"$(tr '\\n' '|' < /tmp/ud)\"\n    break\n  fi\n  sleep 1\ndone; echo \"MD\"\"-DONE\") &\n"
    )
}

/// What a VM's console shows between the metadata script's markers: the
/// `meta_data.json` it was served, and the user data (newlines as `|`).
fn served_metadata(out: &str) -> (Value, String) {
    let md = out
        .split("MD-BEGIN ")
        .nth(1)
        .and_then(|r| r.split(" MD-END").next())
        .unwrap_or_else(|| panic!("no meta_data.json on the console:\n{out}"));
    let md: Value = serde_json::from_str(md.trim())
        .unwrap_or_else(|e| panic!("meta_data.json {md:?} is not JSON ({e}):\n{out}"));
    let ud = out
        .split("UD-BEGIN ")
        .nth(1)
        .and_then(|r| r.split(" UD-END").next())
        .unwrap_or_else(|| panic!("no user data on the console:\n{out}"));
    (md, ud.to_string())
}

/// The metadata service serves VMs as Neutron does on isolated networks:
/// DHCP routes 169.254.169.254 to the network's DHCP namespace, where the
/// agent answers each VM, known by its source address, with its own
/// `meta_data.json` and user data; a second VM on the network gets its
/// own, not the first's.
#[test]
fn cli_vms_read_their_own_metadata_from_the_metadata_service() {
    super::compute_real::require_runtime();
    super::compute_real::require_qemu();
    let images = super::compute_real::test_images();
    let server = Server::start_in_netns(&["--import-images", images.to_str().unwrap()]);
    let Some(os) = Os::new(&server) else { return };
    os.ok(&["network", "create", "mdnet"]);
    os.ok(&[
        "subnet",
        "create",
        "--network",
        "mdnet",
        "--subnet-range",
        "10.73.0.0/24",
        "mdsub",
    ]);
    let dir = server.data_dir();
    let mut vms = Vec::new();
    for (name, token) in [("ma", "token-of-ma-5d1e"), ("mb", "token-of-mb-93c7")] {
        let ud = dir.join(format!("{name}.sh"));
        let script = metadata_fetch_script(token);
        std::fs::write(&ud, &script).unwrap();
        let s = os.json(&[
            "server",
            "create",
            "--image",
            "busybox-vm",
            "--flavor",
            "m1.tiny",
            "--network",
            "mdnet",
            "--user-data",
            ud.to_str().unwrap(),
            "--wait",
            name,
        ]);
        let id = s["id"].as_str().unwrap().to_string();
        vms.push((name, id, script, token));
    }
    for (name, id, script, token) in &vms {
        let out = console_shows(&os, name, &["MD-DONE"]);
        assert!(
            out.contains("dhcp: route 169.254.169.254/32 via 10.73.0."),
            "{out}"
        );
        let (md, ud) = served_metadata(&out);
        assert_eq!(
            md["uuid"],
            id.as_str(),
            "{name} got another's metadata:\n{out}"
        );
        assert_eq!(md["name"], *name, "{md}");
        assert_eq!(ud, script.replace('\n', "|"), "{name}'s user data:\n{out}");
        assert!(ud.contains(token));
        for (other, other_id, _, other_token) in &vms {
            if other != name {
                assert!(!out.contains(other_id.as_str()), "{name} saw {other}'s id");
                assert!(!out.contains(other_token), "{name} saw {other}'s user data");
            }
        }
    }
    // A caller that is no VM's address gets 404, whatever its headers
    // claim: here the DHCP namespace itself, asking for ma.
    let dhcp_ns = std::fs::read_dir(dir.join("agent/netns"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("stratus-dhcp-"))
        .expect("the network's DHCP namespace");
    let ma = &vms[0].1;
    let code = format!(
        "import urllib.request, urllib.error\nr = urllib.request.Request('http://169.254.169.254/openstack/latest/meta_data.json', headers={{'X-Instance-ID': '{ma}', 'X-Forwarded-For': '10.73.0.2'}})\ntry:\n    print(urllib.request.urlopen(r, timeout=5).status)\nexcept urllib.error.HTTPError as e:\n    print(e.code)"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &dhcp_ns, "python3", "-c", &code])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "404",
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    os.ok(&["server", "delete", "--wait", "ma", "mb"]);
}
