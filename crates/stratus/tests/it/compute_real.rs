//! Servers that really run: `stratus up` with its in-process node agent
//! and the container driver (runc), booting the busybox test image built
//! by `scripts/build-test-images`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::compute::Cloud;

pub fn test_images() -> PathBuf {
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

pub fn require_runtime() {
    assert!(
        Command::new("runc").arg("--version").output().is_ok()
            || Command::new("crun").arg("--version").output().is_ok(),
        "an OCI runtime is needed: apt-get install runc (./scripts/test installs it)"
    );
}

pub fn require_qemu() {
    assert!(
        Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok(),
        "QEMU is needed for VM tests: apt-get install qemu-system-x86 qemu-utils genisoimage (./scripts/test installs them)"
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

pub fn image_id(c: &Cloud, name: &str) -> String {
    let r = c.img.get(&format!("/images?name={name}"), &c.admin);
    r.body["images"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("image {name}: {}", r.body))
        .to_string()
}

fn console(c: &Cloud, token: &str, id: &str) -> String {
    try_console(c, token, id).unwrap_or_else(|r| panic!("{r}"))
}

/// The console, or the refusal: in the moment a live migration switches
/// nodes the source's copy is gone before the server shows the
/// destination, and the read answers 409 "no console output yet".
pub(super) fn try_console(c: &Cloud, token: &str, id: &str) -> Result<String, Value> {
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        token,
        Some(json!({"os-getConsoleOutput": {"length": 100}})),
    );
    if r.status == 409 {
        return Err(r.body);
    }
    assert_eq!(r.status, 200, "{}", r.body);
    Ok(r.body["output"].as_str().unwrap().to_string())
}

/// Waits until the console shows `needle`.
pub fn console_until(c: &Cloud, token: &str, id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
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
    let c = cloud(&["--max-attempts", "1", "--vms", "off"]);
    let img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "vm", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"].clone();
        if s["status"] == "ERROR" {
            // No node runs VMs: no valid host, and the details say why.
            let m = s["fault"]["message"].as_str().unwrap();
            assert!(m.starts_with("No valid host was found."), "{s}");
            let d = s["fault"]["details"].as_str().unwrap_or_default();
            assert!(d.contains("runs no VMs"), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An image property or flavor extra spec asking for a kind of workload
/// the image cannot be (a container of a VM disk, a VM of a container
/// image) is refused at once, with the key that asked.
#[test]
fn compute_real_hypervisor_type_an_image_cannot_honour_is_refused() {
    let c = cloud(&["--vms", "off"]);
    let vm_img = image_id(&c, "busybox-vm");
    let r = c.img.raw(
        "PATCH",
        &format!("/images/{vm_img}"),
        Some(&c.admin),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        Some(json!([{"op": "add", "path": "/img_hv_type", "value": "runc"}]).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.boot(&c.admin, "x", &vm_img, "1", json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.to_string().contains("img_hv_type=runc"),
        "{}",
        r.body
    );

    let r = c.req(
        "POST",
        "/flavors/1/os-extra_specs",
        &c.admin,
        Some(json!({"extra_specs": {"capabilities:hypervisor_type": "s== QEMU"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let ct_img = image_id(&c, "busybox");
    let r = c.boot(&c.admin, "y", &ct_img, "1", json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.to_string().contains("capabilities:hypervisor_type"),
        "{}",
        r.body
    );
    // What the image can be is still asked for and booted.
    let r = c.req(
        "POST",
        "/flavors/1/os-extra_specs",
        &c.admin,
        Some(json!({"extra_specs": {"capabilities:hypervisor_type": "runc"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c.boot(&c.admin, "z", &ct_img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
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

/// The pid QEMU of a VM runs as, from the driver's pid file.
fn qemu_pid(c: &Cloud, id: &str) -> Option<u32> {
    let f = c.server.data_dir().join(format!("agent/vms/{id}/qemu.pid"));
    let pid: u32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

/// A VM outlives its agent: after a kill -9 and restart of the whole
/// controller (agent in-process) the same QEMU runs on, ACTIVE, with its
/// console intact; a restart of a stopped VM's agent leaves it stopped.
#[test]
fn compute_real_restart_adopts_running_vms() {
    require_qemu();
    let mut c = cloud(&[]);
    let img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "vm", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "tick 1");
    let before = qemu_pid(&c, &id).expect("QEMU runs");
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.wait_nodes(1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(qemu_pid(&c, &id), Some(before), "adopted, not restarted");
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    let out = console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    assert_eq!(out.matches("STRATUS-TEST-IMAGE OK").count(), 1, "{out}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    assert_eq!(qemu_pid(&c, &id), None, "QEMU gone with the server");
    assert!(!c.server.data_dir().join(format!("agent/vms/{id}")).exists());
}

/// The disk the guest last found its config drive on.
fn last_config_drive(out: &str) -> Option<&str> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("config drive: "))
        .next_back()
}

#[test]
fn compute_real_vm_rescue_boots_the_rescue_disk_first_and_unrescue_its_own() {
    require_qemu();
    let c = cloud(&[]);
    let vm_img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "vm", &vm_img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    // Its own disk is vda, the config drive vdb.
    let out = console_until(&c, &c.admin, &id, "tick 1");
    assert_eq!(last_config_drive(&out), Some("/dev/vdb"), "{out}");
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };
    // A container image cannot rescue a VM.
    let r = act(json!({"rescue": {"rescue_image_ref": image_id(&c, "busybox-oci")}}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("disk image"),
        "{}",
        r.body
    );

    // Rescue: the guest shuts down and boots from the rescue disk, with
    // its own disk second (vdb) and the config drive third.
    let r = act(json!({"rescue": {"rescue_image_ref": vm_img}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["adminPass"].is_string(), "{}", r.body);
    c.wait(&c.admin, &id, "RESCUE");
    let s = settled(&c, &c.admin, &id);
    assert_eq!(s["OS-EXT-STS:vm_state"], "rescued", "{s}");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    let dir = c.server.data_dir().join(format!("agent/vms/{id}"));
    assert!(dir.join("rescue.qcow2").exists());
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = console(&c, &c.admin, &id);
        if last_config_drive(&out) == Some("/dev/vdc") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(last_config_drive(&out), Some("/dev/vdc"), "{out}");
    assert!(
        out.contains("power button: powering off"),
        "shut down first: {out}"
    );

    // Unrescue: the rescue disk goes and the VM boots its own disk.
    let r = act(json!({"unrescue": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "ACTIVE");
    let s = settled(&c, &c.admin, &id);
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert!(!dir.join("rescue.qcow2").exists());
    let deadline = Instant::now() + Duration::from_secs(90);
    let out = loop {
        let out = console(&c, &c.admin, &id);
        if out.matches("STRATUS-TEST-IMAGE OK").count() >= 3 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(out.matches("STRATUS-TEST-IMAGE OK").count() >= 3, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = console(&c, &c.admin, &id);
        if last_config_drive(&out) == Some("/dev/vdb") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(last_config_drive(&out), Some("/dev/vdb"), "{out}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    assert_eq!(qemu_pid(&c, &id), None);
}

/// Polls an image in the image service until it is `status`.
fn image_until(c: &Cloud, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.img.get(&format!("/images/{id}"), &c.admin);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] == status {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "image {id} never became {status}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the server has no task running.
fn settled(c: &Cloud, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.req("GET", &format!("/servers/{id}"), token, None);
        let s = r.body["server"].clone();
        if s["OS-EXT-STS:task_state"].is_null() {
            return s;
        }
        assert!(Instant::now() < deadline, "task never ended: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn compute_real_snapshot_boots_with_the_first_servers_files() {
    let c = cloud(&[]);
    let base = image_id(&c, "busybox");
    let (pid, member) = c.project("snap");
    let (_, stranger) = c.project("other");
    let ud = base64::engine::general_purpose::STANDARD.encode(
        "#!/bin/sh\nmkdir -p /data && echo SNAP-MARKER-42 > /data/snapmarker\nrm /bin/ping\necho FIRST-DONE\n",
    );
    let r = c.boot(&member, "first", &base, "1", json!({"user_data": ud}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&member, &id, "ACTIVE");
    console_until(&c, &member, &id, "FIRST-DONE");
    let act = |token: &str, body: Value| {
        c.req("POST", &format!("/servers/{id}/action"), token, Some(body))
    };

    // Bad bodies, another project, wrong state.
    for bad in [
        json!({"createImage": {}}),
        json!({"createImage": {"name": "x", "bogus": 1}}),
        json!({"createImage": {"name": "x", "metadata": {"": ""}}}),
        json!({"createImage": {"name": "x", "metadata": {"k": 1}}}),
        json!({"createImage": {"name": "a".repeat(256)}}),
        json!({"createImage": {"name": " padded "}}),
        json!({"createImage": "x"}),
        json!({"createBackup": {"name": "b", "backup_type": "daily"}}),
        json!({"createBackup": {"name": "b", "backup_type": "daily", "rotation": -1}}),
    ] {
        let r = act(&member, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = act(&stranger, json!({"createImage": {"name": "theirs"}}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = act(&c.admin, json!({"os-resetState": {"state": "error"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = act(&member, json!({"createImage": {"name": "in-error"}}));
    assert_eq!(r.status, 409, "{}", r.body);
    act(&c.admin, json!({"os-resetState": {"state": "active"}}));

    // A snapshot of the running server.
    let r = act(
        &member,
        json!({"createImage": {"name": "snap-1", "metadata": {"purpose": "test"}}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let loc = r.header("location").expect("Location").to_string();
    let snap = loc.rsplit('/').next().unwrap().to_string();
    let img = image_until(&c, &snap, "active");
    assert_eq!(img["name"], "snap-1");
    assert_eq!(img["owner"], pid.as_str());
    assert_eq!(img["visibility"], "private");
    assert_eq!(img["container_format"], "docker");
    assert_eq!(img["disk_format"], "raw");
    assert_eq!(img["instance_uuid"], id.as_str());
    assert_eq!(img["image_type"], "snapshot");
    assert_eq!(img["base_image_ref"], base.as_str());
    assert_eq!(img["owner_project_name"], "snap");
    assert_eq!(img["purpose"], "test");
    assert!(img["user_id"].is_string(), "{img}");
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(
        s["OS-EXT-STS:power_state"], 1,
        "running again after the pause"
    );
    let acts = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &member,
        None,
    );
    assert!(
        acts.body["instanceActions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "createImage"),
        "{}",
        acts.body
    );
    // The member sees it through Nova's image proxy too (up to 2.35).
    let r = c.nova.raw(
        "GET",
        &format!("/images/{snap}"),
        Some(&member),
        &[("OpenStack-API-Version", "compute 2.35")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["image"]["server"]["id"], id.as_str());

    // One snapshot at a time; an image deleted while its snapshot is
    // under way leaves the server as it was.
    let loc_of = |r: &super::common::Resp| {
        r.header("location")
            .expect("Location")
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    };
    let r = act(&member, json!({"createImage": {"name": "doomed"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let doomed = loc_of(&r);
    let again = act(&member, json!({"createImage": {"name": "too-soon"}}));
    if again.status == 202 {
        // The first one was already done (a very fast node): tidy up.
        settled(&c, &member, &id);
        c.img
            .delete(&format!("/images/{}", loc_of(&again)), &member);
    } else {
        assert_eq!(again.status, 409, "{}", again.body);
    }
    assert_eq!(
        c.img.delete(&format!("/images/{doomed}"), &member).status,
        204
    );
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(c.img.get(&format!("/images/{doomed}"), &member).status, 404);

    // A snapshot of the stopped server; it stays stopped.
    assert_eq!(act(&member, json!({"os-stop": null})).status, 202);
    c.wait(&member, &id, "SHUTOFF");
    let r = act(&member, json!({"createImage": {"name": "snap-stopped"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let stopped_snap = loc_of(&r);
    image_until(&c, &stopped_snap, "active");
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "SHUTOFF", "{s}");

    // Backups rotate: with rotation 1 only the newest stays.
    let mut backups = Vec::new();
    for n in ["b-1", "b-2"] {
        let r = act(
            &member,
            json!({"createBackup": {"name": n, "backup_type": "daily", "rotation": 1}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let b = loc_of(&r);
        image_until(&c, &b, "active");
        settled(&c, &member, &id);
        backups.push(b);
    }
    assert_eq!(
        c.img
            .get(&format!("/images/{}", backups[0]), &member)
            .status,
        404,
        "the older backup was rotated out"
    );
    let b2 = c.img.get(&format!("/images/{}", backups[1]), &member);
    assert_eq!(b2.body["image_type"], "backup", "{}", b2.body);
    assert_eq!(b2.body["backup_type"], "daily", "{}", b2.body);

    // Boot from the running server's snapshot: the file is there, the
    // deleted one is not, the image's own command runs, and the new
    // server runs its own user data.
    let ud2 = base64::engine::general_purpose::STANDARD.encode(
        "#!/bin/sh\necho GOT $(cat /data/snapmarker)\n[ -e /bin/ping ] || echo PING-GONE\n",
    );
    let r = c.boot(&member, "second", &snap, "1", json!({"user_data": ud2}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id2 = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&member, &id2, "ACTIVE");
    let out = console_until(&c, &member, &id2, "STRATUS-TEST-IMAGE OK");
    assert!(out.contains("GOT SNAP-MARKER-42"), "{out}");
    assert!(out.contains("PING-GONE"), "{out}");

    for s in [&id, &id2] {
        assert_eq!(
            c.req("DELETE", &format!("/servers/{s}"), &member, None)
                .status,
            204
        );
        c.wait_gone(&member, s);
    }
}

#[test]
fn compute_real_rescue_mounts_the_servers_disk_and_unrescue_keeps_changes() {
    let mut c = cloud(&[]);
    let img = image_id(&c, "busybox");
    let (pid, member) = c.project("resc");
    let (_, stranger) = c.project("elsewhere");
    c.ks.user(&c.admin, "resc-reader", "pw-12345", Some((&pid, "reader")));
    let reader = c.ks.token("resc-reader", "pw-12345", Some("resc"));
    // The server's first boot writes a marker; the same user data in the
    // rescue container (a fresh disk) reads it under /mnt/rescue and
    // leaves a file there.
    let ud = base64::engine::general_purpose::STANDARD.encode(
        "#!/bin/sh\n\
         if [ -d /mnt/rescue/data ]; then\n\
           echo RESCUE-SEES $(cat /mnt/rescue/data/marker) ON $(hostname)\n\
           echo fixed-in-rescue > /mnt/rescue/data/fixed\n\
         else\n\
           mkdir -p /data && echo MARKER-7 > /data/marker && echo FIRST-BOOT\n\
         fi\n",
    );
    let r = c.boot(&member, "patient", &img, "1", json!({"user_data": ud}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&member, &id, "ACTIVE");
    console_until(&c, &member, &id, "FIRST-BOOT");
    let act = |c: &Cloud, token: &str, body: Value| {
        c.req("POST", &format!("/servers/{id}/action"), token, Some(body))
    };

    // Wrong state, other projects, readers, bad bodies, bad images.
    let r = act(&c, &member, json!({"unrescue": null}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = act(&c, &stranger, json!({"rescue": null}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = act(&c, &reader, json!({"rescue": null}));
    assert_eq!(r.status, 403, "{}", r.body);
    for bad in [
        json!({"rescue": "x"}),
        json!({"rescue": {"bogus": 1}}),
        json!({"rescue": {"adminPass": 5}}),
        json!({"rescue": {"rescue_image_ref": "not-a-uuid"}}),
        json!({"rescue": {"rescue_image_ref": "0b6e3a4e-5c1e-4d53-9d3f-1f2b3c4d5e6f"}}),
        json!({"rescue": {"rescue_image_ref": image_id(&c, "busybox-vm")}}),
    ] {
        let r = act(&c, &member, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    let r = act(&c, &c.admin, json!({"lock": null}));
    assert_eq!(r.status, 202);
    let r = act(&c, &member, json!({"rescue": null}));
    assert_eq!(r.status, 409, "locked: {}", r.body);
    act(&c, &c.admin, json!({"unlock": null}));

    // Rescue: the admin password comes back; RESCUE, running; the console
    // is the rescue container's, which sees the server's disk.
    let r = act(&c, &member, json!({"rescue": {"adminPass": "s3cret-pw"}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["adminPass"], "s3cret-pw");
    c.wait(&member, &id, "RESCUE");
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "RESCUE", "{s}");
    assert_eq!(s["OS-EXT-STS:vm_state"], "rescued", "{s}");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    let out = console_until(&c, &member, &id, "RESCUE-SEES MARKER-7 ON patient");
    assert!(!out.contains("FIRST-BOOT"), "rescue console only: {out}");
    let r = act(&c, &member, json!({"rescue": null}));
    assert_eq!(r.status, 409, "already rescued: {}", r.body);
    let r = act(&c, &member, json!({"os-stop": null}));
    assert_eq!(r.status, 409, "{}", r.body);
    let acts = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &member,
        None,
    );
    assert!(
        acts.body["instanceActions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "rescue"),
        "{}",
        acts.body
    );

    // An agent restart keeps the rescue.
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    let member = c.ks.token("resc-user", "pw-12345", Some("resc"));
    c.wait_nodes(1);
    std::thread::sleep(Duration::from_secs(2));
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "RESCUE", "{s}");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    console_until(&c, &member, &id, "RESCUE-SEES MARKER-7");

    // Unrescue: ACTIVE again on the server's own disk, with the marker
    // and what the rescue wrote; the rescue container and disk are gone.
    let r = act(&c, &member, json!({"unrescue": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&member, &id, "ACTIVE");
    let s = settled(&c, &member, &id);
    assert_eq!(s["status"], "ACTIVE", "{s}");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = console(&c, &member, &id);
        if out.matches("STRATUS-TEST-IMAGE OK").count() >= 2 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains("FIRST-BOOT"), "{out}");
    assert!(!out.contains("RESCUE-SEES"), "{out}");
    assert!(
        out.matches("STRATUS-TEST-IMAGE OK").count() >= 2,
        "started again: {out}"
    );
    let inst = c.server.data_dir().join("agent/instances").join(&id);
    let disk = inst.join("rootfs/data");
    assert_eq!(
        std::fs::read_to_string(disk.join("marker")).unwrap().trim(),
        "MARKER-7"
    );
    assert_eq!(
        std::fs::read_to_string(disk.join("fixed")).unwrap().trim(),
        "fixed-in-rescue"
    );
    assert!(!inst.join("rescue").exists());
    let r = act(&c, &member, json!({"unrescue": null}));
    assert_eq!(r.status, 409, "{}", r.body);

    // From SHUTOFF, with the image named; a rescued server deletes.
    assert_eq!(act(&c, &member, json!({"os-stop": null})).status, 202);
    c.wait(&member, &id, "SHUTOFF");
    let r = act(&c, &member, json!({"rescue": {"rescue_image_ref": img}}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["adminPass"].as_str().map(str::len), Some(12));
    c.wait(&member, &id, "RESCUE");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &member, None)
            .status,
        204
    );
    c.wait_gone(&member, &id);
    assert!(!inst.exists(), "instance directory removed");
}

/// The memory limit (KiB) the server's cgroup has now, read through the
/// diagnostics API.
fn memory_limit_kib(c: &Cloud, id: &str) -> u64 {
    let r = c.req("GET", &format!("/servers/{id}/diagnostics"), &c.admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["memory"]
        .as_u64()
        .unwrap_or_else(|| panic!("no memory limit: {}", r.body))
}

#[test]
fn compute_real_resize_changes_the_cgroup_and_keeps_the_disk() {
    let c = cloud(&[]);
    let img = image_id(&c, "busybox");
    let ud = base64::engine::general_purpose::STANDARD
        .encode("#!/bin/sh\nmkdir -p /data && echo KEEP-ME > /data/keep\n");
    let r = c.boot(&c.admin, "rs", &img, "42", json!({"user_data": ud}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    assert_eq!(memory_limit_kib(&c, &id), 128 * 1024);
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };

    // Up to m1.micro: the running container restarts under 192 MiB.
    assert_eq!(act(json!({"resize": {"flavorRef": "84"}})).status, 202);
    let s = c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(memory_limit_kib(&c, &id), 192 * 1024);
    let inst = c.server.data_dir().join("agent/instances").join(&id);
    assert_eq!(
        std::fs::read_to_string(inst.join("rootfs/data/keep"))
            .unwrap()
            .trim(),
        "KEEP-ME",
        "the root file system is kept"
    );

    // Revert: 128 MiB again, still running, same disk.
    assert_eq!(act(json!({"revertResize": null})).status, 202);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(memory_limit_kib(&c, &id), 128 * 1024);

    // Resize and confirm; an agent restart keeps the new limit.
    assert_eq!(act(json!({"resize": {"flavorRef": "84"}})).status, 202);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(act(json!({"reboot": {"type": "HARD"}})).status, 202);
    c.wait(&c.admin, &id, "ACTIVE");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(memory_limit_kib(&c, &id), 192 * 1024);
    assert!(inst.join("rootfs/data/keep").exists());
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

#[test]
fn compute_real_shelve_keeps_the_disk_in_an_image_and_unshelve_boots_it() {
    let c = cloud(&[]);
    let img = image_id(&c, "busybox");
    let ud = base64::engine::general_purpose::STANDARD
        .encode("#!/bin/sh\nmkdir -p /data && echo SHELVED-DATA > /data/keep\n");
    let r = c.boot(&c.admin, "sh1", &img, "42", json!({"user_data": ud}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    let inst = c.server.data_dir().join("agent/instances").join(&id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !inst.join("rootfs/data/keep").exists() {
        assert!(Instant::now() < deadline, "user data never wrote its file");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A file the user data cannot write again: it must come back from
    // the shelved image.
    std::fs::write(inst.join("rootfs/data/only-once"), "WRITTEN-ONCE\n").unwrap();
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };
    assert_eq!(act(json!({"shelve": null})).status, 202);
    c.wait(&c.admin, &id, "SHELVED_OFFLOADED");
    assert!(!inst.exists(), "the node let the workload and its disk go");
    let r = c.img.get("/images?name=sh1-shelved", &c.admin);
    let shelved = r.body["images"][0]["id"].as_str().unwrap().to_string();

    assert_eq!(act(json!({"unshelve": null})).status, 202);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_eq!(
        std::fs::read_to_string(inst.join("rootfs/data/keep"))
            .unwrap()
            .trim(),
        "SHELVED-DATA",
        "unshelved from the shelved image"
    );
    assert_eq!(
        std::fs::read_to_string(inst.join("rootfs/data/only-once"))
            .unwrap()
            .trim(),
        "WRITTEN-ONCE",
        "unshelved from the shelved image"
    );
    let r = c.img.get("/images?name=sh1-shelved", &c.admin);
    assert_eq!(r.body["images"].as_array().unwrap().len(), 0, "{}", r.body);
    // The node keeps the unpacked shelved image while the server runs
    // from it, and drops it (at a heartbeat) once the server is gone.
    let unpacked = c.server.data_dir().join("agent/images").join(&shelved);
    assert!(unpacked.exists(), "the server's lower layer");
    assert!(
        !c.server
            .data_dir()
            .join("agent/image-cache")
            .join(format!("{shelved}.data"))
            .exists(),
        "the download of a single-use image is removed once booted"
    );
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    let deadline = Instant::now() + Duration::from_secs(40);
    while unpacked.exists() {
        assert!(
            Instant::now() < deadline,
            "the unpacked shelved image was never pruned"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The busybox image (still in the image service) stays cached.
    let busybox = image_id(&c, "busybox");
    assert!(
        c.server
            .data_dir()
            .join("agent/images")
            .join(&busybox)
            .exists()
    );
}

#[test]
fn compute_real_cold_migration_carries_the_disk_to_the_other_node() {
    let c = cloud(&[]);
    // A second real node, heartbeating every second.
    let b = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    let second = c.server.data_dir().join("node-b");
    c.wait_nodes_logged(2, &b.log);
    let img = image_id(&c, "busybox");
    let r = c.boot(
        &c.admin,
        "mv",
        &img,
        "42",
        json!({"availability_zone": "nova:node-b"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    let on_b = second.join("agent/instances").join(&id);
    let on_a = c.server.data_dir().join("agent/instances").join(&id);
    assert!(on_b.exists() && !on_a.exists());
    std::fs::create_dir_all(on_b.join("rootfs/data")).unwrap();
    std::fs::write(on_b.join("rootfs/data/moved"), "CARRIED\n").unwrap();
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };

    // Migrate: it runs on the first node with its files; node-b keeps a
    // stopped copy until the migration is settled.
    let r = act(json!({"migrate": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    assert_ne!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    assert_eq!(
        std::fs::read_to_string(on_a.join("rootfs/data/moved"))
            .unwrap()
            .trim(),
        "CARRIED"
    );
    assert!(on_b.exists(), "the source keeps its copy until confirmed");
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");

    // Revert: back on node-b, running its own copy; the first node lets
    // its copy go (at its next heartbeat).
    assert_eq!(act(json!({"revertResize": null})).status, 202);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    let s = settled(&c, &c.admin, &id);
    assert_eq!(s["OS-EXT-STS:power_state"], 1, "{s}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_a.exists() {
        assert!(Instant::now() < deadline, "the first node kept its copy");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Again, and confirm: node-b lets its copy go.
    let r = act(json!({"migrate": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert!(on_a.join("rootfs/data/moved").exists());
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    c.wait(&c.admin, &id, "ACTIVE");
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_b.exists() {
        assert!(
            Instant::now() < deadline,
            "node-b never removed its copy: {}",
            std::fs::read_to_string(&b.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

/// A VM's disk travels with a cold migration: its user data (run at
/// every boot, from the config drive) writes a mark past the end of the
/// boot file system on the first boot and finds it again on the other
/// node; a resize there grows the disk and the VM's memory; shelve and
/// unshelve keep the disk too.
/// Boots a busybox-vm on node-b whose user data writes a mark at 100 MiB
/// into its disk on the first boot and says FOUND-MARK on later ones
/// (where the disk went, the mark went too); waits for the first write.
fn boot_marked_vm_on_b(c: &Cloud, name: &str) -> String {
    let img = image_id(c, "busybox-vm");
    let script = "#!/bin/sh\n\
        if dd if=/dev/vda bs=512 skip=204800 count=1 2>/dev/null | grep -q CARRIED; then echo FOUND-MARK; \
        else echo CARRIED | dd of=/dev/vda bs=512 seek=204800 conv=notrunc 2>/dev/null; sync; echo WROTE-MARK; fi\n";
    let ud = base64::engine::general_purpose::STANDARD.encode(script);
    let r = c.boot(
        &c.admin,
        name,
        &img,
        "1",
        json!({"availability_zone": "nova:node-b", "user_data": ud}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(c, &c.admin, &id, "WROTE-MARK");
    id
}

#[test]
fn compute_real_vm_cold_migration_carries_its_disk_and_resize_grows_it() {
    require_qemu();
    let c = cloud(&[]);
    let b = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let id = boot_marked_vm_on_b(&c, "vmmv");
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };
    let r = act(json!({"migrate": null}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_ne!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    console_until(&c, &c.admin, &id, "FOUND-MARK");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    c.wait(&c.admin, &id, "ACTIVE");
    let on_b = c.server.data_dir().join("node-b/agent/vms").join(&id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_b.exists() {
        assert!(Instant::now() < deadline, "node-b kept its copy");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Resize on this node: 512 MiB and 1 GiB to 2 GiB and 20 GiB.
    let r = act(json!({"resize": {"flavorRef": "2"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    c.wait(&c.admin, &id, "ACTIVE");
    let host = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"]
        ["OS-EXT-SRV-ATTR:host"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = if host == "node-b" {
        c.server.data_dir().join("node-b/agent/vms").join(&id)
    } else {
        c.server.data_dir().join("agent/vms").join(&id)
    };
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 20u64 << 30, "{info}");
    let pid = std::fs::read_to_string(dir.join("qemu.pid")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains(" -m 2048 "), "{cmdline}");

    // Shelve keeps the disk in an image; unshelve boots a new VM from it
    // (a fresh console) that finds the mark. The guest may still be
    // booting after the resize: the stop presses the power button until
    // the guest hears it.
    assert_eq!(act(json!({"shelve": null})).status, 202);
    c.wait(&c.admin, &id, "SHELVED_OFFLOADED");
    assert!(!dir.exists(), "the VM left its node");
    assert_eq!(act(json!({"unshelve": null})).status, 202);
    c.wait(&c.admin, &id, "ACTIVE");
    let out = console_until(&c, &c.admin, &id, "FOUND-MARK");
    assert!(!out.contains("WROTE-MARK"), "{out}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

/// The highest `tick N` on a console.
fn last_tick(out: &str) -> Option<u64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
}

#[test]
fn compute_real_vm_live_migration_keeps_the_guest_running_and_its_disk() {
    require_qemu();
    let c = cloud(&[]);
    let b = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let id = boot_marked_vm_on_b(&c, "vmlive");
    console_until(&c, &c.admin, &id, "tick 2");
    let live = |token: &str, body: Value| {
        c.nova.raw(
            "POST",
            &format!("/servers/{id}/action"),
            Some(token),
            &[("OpenStack-API-Version", "compute 2.30")],
            Some(json!({ "os-migrateLive": body }).to_string()),
        )
    };
    // Bad requests: a missing block_migration, the node it is on, and a
    // caller who is not an admin.
    let r = live(&c.admin, json!({"host": null}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = live(
        &c.admin,
        json!({"host": "node-b", "block_migration": "auto"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let (_, member) = c.project("live");
    let r = live(&member, json!({"host": null, "block_migration": "auto"}));
    assert!(r.status == 403 || r.status == 404, "{}", r.body);

    // Live: the guest keeps counting; the console is read as it goes.
    let before = console(&c, &c.admin, &id);
    let mut seen = last_tick(&before).unwrap_or(0);
    let r = live(&c.admin, json!({"host": null, "block_migration": "auto"}));
    assert_eq!(r.status, 202, "{}", r.body);
    let start = Instant::now();
    let mut last_new = Instant::now();
    let mut longest = Duration::ZERO;
    let moved = loop {
        let s = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body["server"].clone();
        if let Some(t) = try_console(&c, &c.admin, &id)
            .ok()
            .and_then(|out| last_tick(&out))
            && t > seen
        {
            seen = t;
            longest = longest.max(last_new.elapsed());
            last_new = Instant::now();
        }
        if s["status"] == "ACTIVE" && s["OS-EXT-SRV-ATTR:host"] != "node-b" {
            break s;
        }
        assert_ne!(s["status"], "ERROR", "{s}");
        if start.elapsed() > Duration::from_secs(180) {
            let logs: String = [c.server.log_path(), b.log.clone()]
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            let logs: Vec<&str> = logs
                .lines()
                .filter(|l| l.contains("migrat") || l.contains("WARN") || l.contains("ERROR"))
                .collect();
            panic!("never moved: {s}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(moved["OS-EXT-STS:power_state"], 1, "{moved}");
    assert!(moved["OS-EXT-STS:task_state"].is_null(), "{moved}");
    // The destination's console carries on counting from where the guest
    // was, with no boot in between: the same guest, not a new one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let out = try_console(&c, &c.admin, &id).unwrap_or_default();
        if last_tick(&out).is_some_and(|t| t > seen) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(last_tick(&after).is_some_and(|t| t > seen), "{after}");
    assert!(
        !after.contains("STRATUS-TEST-IMAGE OK"),
        "rebooted: {after}"
    );
    eprintln!(
        "live migration: {:.1} s in all, longest pause between ticks seen {:.1} s",
        start.elapsed().as_secs_f64(),
        longest.as_secs_f64()
    );
    // The source's copy is gone; the record says completed.
    let on_b = c.server.data_dir().join("node-b/agent/vms").join(&id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while on_b.exists() {
        assert!(Instant::now() < deadline, "node-b kept its copy");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = c.nova.raw(
        "GET",
        &format!("/os-migrations?instance_uuid={id}"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.59")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let m = &r.body["migrations"][0];
    assert_eq!(m["migration_type"], "live-migration", "{}", r.body);
    assert_eq!(m["status"], "completed", "{}", r.body);
    assert_eq!(m["source_compute"], "node-b", "{}", r.body);
    let r = c.nova.raw(
        "GET",
        &format!("/servers/{id}/migrations"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.59")],
        None,
    );
    assert_eq!(
        r.body["migrations"],
        json!([]),
        "none in progress: {}",
        r.body
    );
    // The disk came along: after a reboot there, the guest finds its mark.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"reboot": {"type": "HARD"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    console_until(&c, &c.admin, &id, "FOUND-MARK");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

#[test]
fn compute_real_aggregate_image_cache_fetches_ahead() {
    let c = cloud(&[]);
    let img = image_id(&c, "busybox-oci");
    let host = c.req("GET", "/os-hypervisors", &c.admin, None).body["hypervisors"][0]
        ["hypervisor_hostname"]
        .as_str()
        .unwrap()
        .to_string();
    let mv = [("OpenStack-API-Version", "compute 2.81")];
    let r = c.nova.raw(
        "POST",
        "/os-aggregates",
        Some(&c.admin),
        &mv,
        Some(json!({"aggregate": {"name": "edge"}}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let agg = r.body["aggregate"]["id"].as_i64().unwrap();
    let r = c.nova.raw(
        "POST",
        &format!("/os-aggregates/{agg}/action"),
        Some(&c.admin),
        &mv,
        Some(json!({"add_host": {"host": host}}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cached = c
        .server
        .data_dir()
        .join("agent/image-cache")
        .join(format!("{img}.data"));
    assert!(!cached.exists(), "no server used it yet");
    let r = c.nova.raw(
        "POST",
        &format!("/os-aggregates/{agg}/images"),
        Some(&c.admin),
        &mv,
        Some(json!({"cache": [{"id": img}]}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    // The agent fetches it at its next heartbeat (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    while !cached.exists() {
        assert!(
            Instant::now() < deadline,
            "the image was never cached ahead"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And a server from it boots from the cached copy.
    let r = c.boot(&c.admin, "pre", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}

/// The pid of a container under the runc root `root`, if it runs.
fn container_pid(root: &std::path::Path, id: &str) -> Option<i64> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["state", id])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    (v["status"] == "running")
        .then(|| v["pid"].as_i64())
        .flatten()
}

fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn compute_real_instance_ha_restarts_crashed_workloads_and_evacuates_a_dead_node() {
    let c = cloud(&[
        "--instance-ha",
        "on",
        "--service-down-time",
        "15",
        "--evacuate-after",
        "15",
    ]);
    let b = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let hyp = c.req("GET", "/os-hypervisors", &c.admin, None);
    let main = hyp.body["hypervisors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hypervisor_hostname"].as_str().unwrap().to_string())
        .find(|h| h != "node-b")
        .unwrap();
    let img = image_id(&c, "busybox");
    let boot = |name: &str, host: &str, meta: Value| -> String {
        let r = c.boot(
            &c.admin,
            name,
            &img,
            "42",
            json!({"availability_zone": format!("nova:{host}"), "metadata": meta}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.body["server"]["id"].as_str().unwrap().to_string();
        c.wait(&c.admin, &id, "ACTIVE");
        id
    };
    let root_a = c.server.data_dir().join("agent/runc");
    let root_b = c.server.data_dir().join("node-b/agent/runc");
    let kill = |pid: i64| {
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };

    // A workload that dies is started again, and the action says who.
    let crashy = boot("crashy", &main, json!({}));
    let optout = boot("optout", &main, json!({"HA_Enabled": "False"}));
    let first = container_pid(&root_a, &crashy).expect("crashy runs");
    kill(first);
    kill(container_pid(&root_a, &optout).expect("optout runs"));
    eventually(60, "the crashed workload runs again", || {
        container_pid(&root_a, &crashy).is_some_and(|p| p != first)
    });
    c.wait(&c.admin, &crashy, "ACTIVE");
    let r = c.req(
        "GET",
        &format!("/servers/{crashy}/os-instance-actions"),
        &c.admin,
        None,
    );
    let actions = r.body["instanceActions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "start" && a["user_id"] == "instance-ha"),
        "{}",
        r.body
    );
    // One that opted out is left stopped, as Nova shows a guest that
    // shut down.
    c.wait(&c.admin, &optout, "SHUTOFF");
    assert_eq!(container_pid(&root_a, &optout), None);

    // Evacuation is for admins, and only off a node that is down.
    let evac = boot("evac", "node-b", json!({}));
    let stopped = boot("stopped", "node-b", json!({}));
    let act = |id: &str, token: &str, body: Value| {
        c.req("POST", &format!("/servers/{id}/action"), token, Some(body))
    };
    assert_eq!(
        act(&stopped, &c.admin, json!({"os-stop": null})).status,
        202
    );
    c.wait(&c.admin, &stopped, "SHUTOFF");
    let (_, tok) = c.project("ha-tenant");
    let r = act(&evac, &tok, json!({"evacuate": {}}));
    assert!(r.status == 403 || r.status == 404, "{}", r.body);
    let r = act(&evac, &c.admin, json!({"evacuate": {}}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("still in use"), "{}", r.body);
    let r = act(
        &evac,
        &c.admin,
        json!({"evacuate": {"onSharedStorage": true}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let on_b = container_pid(&root_b, &evac).expect("evac runs on node-b");

    // node-b's agent dies (its workloads outlive it, as a dead node's
    // would no longer matter): after --evacuate-after its servers are
    // rebuilt on the other node, a stopped one stays stopped.
    Command::new("kill")
        .args(["-KILL", &b.pid().to_string()])
        .status()
        .unwrap();
    eventually(90, "the servers of node-b are evacuated", || {
        let s = c
            .req("GET", &format!("/servers/{evac}"), &c.admin, None)
            .body["server"]
            .clone();
        s["OS-EXT-SRV-ATTR:host"] == main.as_str() && s["status"] == "ACTIVE"
    });
    let s = c.wait(&c.admin, &stopped, "SHUTOFF");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], main.as_str(), "{s}");
    assert!(container_pid(&root_a, &evac).is_some());
    console_until(&c, &c.admin, &evac, "STRATUS-TEST-IMAGE OK");
    let r = c.req(
        "GET",
        &format!("/os-migrations?instance_uuid={evac}"),
        &c.admin,
        None,
    );
    let m = &r.body["migrations"][0];
    assert_eq!(m["migration_type"], "evacuation", "{}", r.body);
    assert_eq!(m["status"], "done", "{}", r.body);
    assert_eq!(m["source_compute"], "node-b", "{}", r.body);
    assert_eq!(m["dest_compute"], main.as_str(), "{}", r.body);

    // node-b comes back: its stale copy is removed, nothing runs twice.
    assert_eq!(container_pid(&root_b, &evac), Some(on_b));
    let _b2 = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    eventually(60, "node-b removes the evacuated server's old copy", || {
        container_pid(&root_b, &evac).is_none()
    });
    let s = c.wait(&c.admin, &evac, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], main.as_str(), "{s}");
    drop(b);
}
