//! Servers that really run: `stratus up` with its in-process node agent
//! and the container driver (runc), booting the busybox test image built
//! by `scripts/build-test-images`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::compute::Cloud;

fn test_images() -> PathBuf {
    let dir = std::env::var("STRATUS_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-images")
        });
    assert!(
        dir.join("images.tsv").exists(),
        "test images missing in {}: run scripts/build-test-images (./scripts/test does)",
        dir.display()
    );
    dir
}

fn require_runtime() {
    assert!(
        Command::new("runc").arg("--version").output().is_ok()
            || Command::new("crun").arg("--version").output().is_ok(),
        "an OCI runtime is needed: apt-get install runc (./scripts/test installs it)"
    );
}

/// A cloud with the busybox images imported and its node registered.
fn cloud(extra: &[&str]) -> Cloud {
    require_runtime();
    let dir = test_images();
    let mut args = vec!["--import-images", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let c = Cloud::start(&args);
    c.wait_nodes(1);
    c
}

fn image_id(c: &Cloud, name: &str) -> String {
    let r = c.img.get(&format!("/images?name={name}"), &c.admin);
    r.body["images"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("image {name}: {}", r.body))
        .to_string()
}

fn console(c: &Cloud, token: &str, id: &str) -> String {
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        token,
        Some(json!({"os-getConsoleOutput": {"length": 100}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["output"].as_str().unwrap().to_string()
}

/// Waits until the console shows `needle`.
fn console_until(c: &Cloud, token: &str, id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = console(c, token, id);
        if out.contains(needle) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "console never showed {needle:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SCRIPT: &str = "#!/bin/sh\n\
echo USERDATA-RAN\n\
echo MEMLIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)\n\
grep -o '\"uuid\": *\"[^\"]*\"' /openstack/latest/meta_data.json | sed 's/^/META /'\n\
echo persisted > /var/marker 2>/dev/null || echo persisted > /marker\n";

#[test]
fn compute_real_container_lifecycle_console_and_memory_limit() {
    let c = cloud(&[]);
    let img = image_id(&c, "busybox");
    let ud = base64::engine::general_purpose::STANDARD.encode(SCRIPT);
    let r = c.boot(
        &c.admin,
        "bb",
        &img,
        "1",
        json!({"user_data": ud, "metadata": {"role": "test"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    let out = console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    assert!(out.contains("USERDATA-RAN"), "{out}");
    // m1.tiny has 512 MiB: the cgroup says so inside the container.
    assert!(out.contains("MEMLIMIT 536870912"), "{out}");
    assert!(
        out.contains(&format!("META \"uuid\": \"{id}\"")) || out.contains(&id),
        "{out}"
    );
    // Diagnostics come from the container's cgroup: the flavor's memory
    // limit, some memory in use, some CPU time; admins only.
    let d = c.req("GET", &format!("/servers/{id}/diagnostics"), &c.admin, None);
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["memory"], 512 * 1024, "{}", d.body);
    assert!(d.body["memory-rss"].as_u64().unwrap() > 0, "{}", d.body);
    assert!(d.body["cpu0_time"].as_u64().is_some(), "{}", d.body);
    // 2.48's standard shape, from the same measurements.
    let d = c.nova.raw(
        "GET",
        &format!("/servers/{id}/diagnostics"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.48")],
        None,
    );
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["state"], "running", "{}", d.body);
    assert_eq!(d.body["driver"], "container");
    assert_eq!(d.body["memory_details"]["maximum"], 512);
    assert!(d.body["memory_details"]["used"].is_u64(), "{}", d.body);
    let (_, member) = c.project("diag");
    assert_eq!(
        c.req("GET", &format!("/servers/{id}/diagnostics"), &member, None)
            .status,
        403
    );
    // stop / start / reboot / pause / unpause.
    for (body, status) in [
        (json!({"os-stop": null}), "SHUTOFF"),
        (json!({"os-start": null}), "ACTIVE"),
        (json!({"reboot": {"type": "SOFT"}}), "ACTIVE"),
        (json!({"pause": null}), "PAUSED"),
        (json!({"unpause": null}), "ACTIVE"),
    ] {
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body.clone()),
        );
        assert_eq!(r.status, 202, "{body}: {}", r.body);
        let s = c.wait(&c.admin, &id, status);
        let want = match status {
            "SHUTOFF" => 4,
            "PAUSED" => 3,
            _ => 1,
        };
        assert_eq!(s["OS-EXT-STS:power_state"], want, "{body}");
    }
    // The agent is real: the container is in runc's list until deleted.
    let root = c.server.data_dir().join("agent/runc");
    let listed = |id: &str| -> bool {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == id)
    };
    assert!(listed(&id));
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    assert!(!listed(&id), "container still there after delete");
}

#[test]
fn compute_real_vm_image_on_container_node_ends_in_error_with_reason() {
    let c = cloud(&["--max-attempts", "1"]);
    let img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "vm", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"].clone();
        if s["status"] == "ERROR" {
            let m = s["fault"]["message"].as_str().unwrap();
            assert!(m.contains("container"), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn compute_real_restart_adopts_running_containers() {
    let mut c = cloud(&[]);
    let img = image_id(&c, "busybox");
    let r = c.boot(&c.admin, "keep", &img, "42", json!({}));
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    let root = c.server.data_dir().join("agent/runc");
    let pid_of = || -> String {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["state", &id])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["pid"].to_string()
    };
    let before = pid_of();
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.wait_nodes(1);
    // Same process: adopted, not restarted; still ACTIVE, console intact.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pid_of(), before);
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}
