//! Volumes attached to containers: the node serves the qcow2 file through
//! a `qemu-storage-daemon` FUSE export and a loop device, and the
//! container finds the volume's ext4 at `/mnt/volumes/vdX`. Checked from
//! inside the containers (data written in one is read in another), on
//! the host (daemon, loop device, mounts appear and go), across a
//! `kill -9` of the node, and through the real `openstack` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::compute::Cloud;
use super::compute_real::{image_id, require_runtime};
use super::volume::{vol_client, wait_status};
use super::volume_attach::{attach, boot, cloud, new_volume, nova_fault};

/// The instance directory of container `id`.
fn inst_dir(c: &Cloud, id: &str) -> PathBuf {
    // Canonical, as the agent names it (the directory goes with a delete).
    std::fs::canonicalize(c.server.data_dir().join("agent/instances"))
        .unwrap()
        .join(id)
}

/// The pid of the running container `id`.
fn pid(c: &Cloud, id: &str) -> i64 {
    let root = c.server.data_dir().join("agent/runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["state", id])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(v["status"], "running", "container {id}: {v}");
    v["pid"].as_i64().unwrap()
}

/// Runs `script` with the container's own `sh`, in its mount namespace
/// and root; (success, stdout + stderr).
fn in_ctr(c: &Cloud, id: &str, script: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .args(["-t", &pid(c, id).to_string(), "-m", "-p", "-r", "-w", "--"])
        .args(["/bin/sh", "-c", script])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// What the host has of the volumes under `dir`: mounts (mount points),
/// loop devices (backing files) and `qemu-storage-daemon` command lines.
#[derive(Debug, Default)]
struct HostState {
    mounts: Vec<String>,
    loops: Vec<String>,
    daemons: Vec<String>,
}

impl HostState {
    fn of(dir: &Path) -> HostState {
        let d = format!("{}/", dir.display());
        let mut h = HostState::default();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in info.lines() {
            if let Some(mp) = l.split(' ').nth(4)
                && mp.starts_with(&d)
                && (mp.contains("/volumes/") || mp.contains("/volume-exports/"))
            {
                h.mounts.push(mp.to_string());
            }
        }
        for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
                && b.starts_with(&d)
            {
                h.loops
                    .push(format!("{}: {}", e.file_name().to_string_lossy(), b.trim()));
            }
        }
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.starts_with("qemu-storage-daemon") && cmd.contains(&d) {
                    h.daemons
                        .push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
                }
            }
        }
        h
    }

    fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.loops.is_empty() && self.daemons.is_empty()
    }
}

/// Waits until the host has exactly one volume's worth (the mount of
/// `volumes/<dev>`, the FUSE export, one loop device, one daemon) for
/// instance `id`, or nothing at all.
fn host_until(c: &Cloud, id: &str, dev: Option<&str>) -> HostState {
    let dir = inst_dir(c, id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = HostState::of(&dir);
        let ok = match dev {
            None => h.is_empty(),
            Some(dev) => {
                h.daemons.len() == 1
                    && h.loops.len() == 1
                    && h.loops[0].ends_with(&format!("/volume-exports/{dev}.raw"))
                    && h.mounts
                        .iter()
                        .any(|m| m.ends_with(&format!("/volumes/{dev}")))
                    && h.mounts.len() == 2
            }
        };
        if ok {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "instance {id}: wanted {dev:?} on the host, have {h:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `/mnt/volumes/<dev>` in the container is (or is not) a
/// mount point.
fn mounted_in_ctr(c: &Cloud, id: &str, dev: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, mounts) = in_ctr(c, id, "cat /proc/mounts");
        let has = mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(&format!("/mnt/volumes/{dev}")));
        if has == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{dev} never {} in {id}: {mounts}",
            if want { "mounted" } else { "unmounted" }
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn detach(c: &Cloud, server: &str, vid: &str) {
    let r = c.req(
        "DELETE",
        &format!("/servers/{server}/os-volume_attachments/{vid}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
}

/// Deletes a server and checks that nothing of it stays mounted.
fn delete_server(c: &Cloud, id: &str) {
    let dir = inst_dir(c, id);
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, id);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(&format!("{}/", dir.display())),
        "still mounted under {}: {info}",
        dir.display()
    );
    let h = HostState::of(&dir);
    assert!(h.is_empty(), "{h:#?}");
    assert!(!dir.exists(), "{} is left", dir.display());
}

/// Data written into a volume inside one container is read back inside
/// another; a detach leaves nothing on the host; a server delete takes
/// its volumes' daemon, loop device and mounts along.
#[test]
fn volume_container_data_moves_between_containers() {
    require_runtime();
    let c = cloud(None);
    let img = image_id(&c, "busybox");
    let a = boot(&c, "a", &img, json!({}));
    let b = boot(&c, "b", &img, json!({}));
    let vc = vol_client(&c);
    let vid = new_volume(&c, "data", None);
    assert!(HostState::of(&inst_dir(&c, &a)).is_empty());

    let r = attach(&c, &a, json!({"volumeId": vid}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["volumeAttachment"]["device"], "/dev/vdb");
    let vol = wait_status(&vc, &c.admin, &vid, "in-use");
    assert_eq!(vol["attachments"][0]["device"], "/dev/vdb", "{vol}");
    assert_eq!(vol["attachments"][0]["server_id"], a.as_str(), "{vol}");
    let h = host_until(&c, &a, Some("vdb"));
    assert!(
        h.daemons[0].contains(&format!("volume-{vid}.qcow2")),
        "{h:?}"
    );
    // Out of the agent's cgroup, where the node has one to go to.
    let daemon = h.daemons[0].split(':').next().unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{daemon}/cgroup")).unwrap();
    let v1 = Path::new("/sys/fs/cgroup/systemd/cgroup.procs").exists();
    if v1 || Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(cg.contains("/stratus-volumes"), "{cg}");
    }
    mounted_in_ctr(&c, &a, "vdb", true);
    let (ok, out) = in_ctr(
        &c,
        &a,
        "echo marker-from-a > /mnt/volumes/vdb/marker && sync && grep ' /mnt/volumes/vdb ' /proc/mounts",
    );
    assert!(ok && out.contains("ext4"), "{out}");

    detach(&c, &a, &vid);
    let vol = wait_status(&vc, &c.admin, &vid, "available");
    assert_eq!(vol["attachments"], json!([]));
    host_until(&c, &a, None);
    mounted_in_ctr(&c, &a, "vdb", false);
    let (_, out) = in_ctr(&c, &a, "ls /mnt/volumes/");
    assert!(!out.contains("vdb"), "{out}");

    // Another container, another device name: the file system made in
    // the first is not made again.
    let r = attach(&c, &b, json!({"volumeId": vid, "device": "/dev/vdc"}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");
    host_until(&c, &b, Some("vdc"));
    mounted_in_ctr(&c, &b, "vdc", true);
    let (ok, out) = in_ctr(&c, &b, "cat /mnt/volumes/vdc/marker");
    assert!(ok && out.trim() == "marker-from-a", "{out}");

    // A container stopped and started again keeps its volume.
    for (action, status) in [("os-stop", "SHUTOFF"), ("os-start", "ACTIVE")] {
        let r = c.req(
            "POST",
            &format!("/servers/{b}/action"),
            &c.admin,
            Some(json!({ action: null })),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        c.wait(&c.admin, &b, status);
    }
    let (ok, out) = in_ctr(&c, &b, "cat /mnt/volumes/vdc/marker");
    assert!(
        ok && out.trim() == "marker-from-a",
        "after a restart: {out}"
    );

    // Deleting the server lets the volume go, and everything with it.
    let dir_b = inst_dir(&c, &b);
    delete_server(&c, &b);
    wait_status(&vc, &c.admin, &vid, "available");
    let h = HostState::of(&dir_b);
    assert!(h.is_empty(), "{h:#?}");
    assert!(!dir_b.exists());
    delete_server(&c, &a);
}

/// A node killed outright (controller and agent are one process here)
/// with a volume attached and an attach under way, and the daemon of one
/// volume killed while it is down: after the restart the node finds what
/// is really there, repairs the broken volume and finishes the attach.
/// Killed again right after a detach was asked, it ends the detach; a
/// delete leaves nothing behind.
#[test]
fn volume_container_reconciles_after_a_crash() {
    require_runtime();
    let mut c = cloud(None);
    let img = image_id(&c, "busybox");
    let a = boot(&c, "a", &img, json!({}));
    let v1 = new_volume(&c, "one", None);
    let v2 = new_volume(&c, "two", None);
    let r = attach(&c, &a, json!({"volumeId": v1}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vol_client(&c), &c.admin, &v1, "in-use");
    host_until(&c, &a, Some("vdb"));
    let (ok, out) = in_ctr(&c, &a, "echo kept > /mnt/volumes/vdb/marker && sync");
    assert!(ok, "{out}");

    // The attach of v2 is asked, and the node dies at once.
    let r = attach(&c, &a, json!({"volumeId": v2}));
    assert_eq!(r.status, 200, "{}", r.body);
    c.server.stop("-KILL");
    // While it is down, v1's daemon dies too: its mount is broken.
    let dir = inst_dir(&c, &a);
    let h = HostState::of(&dir);
    for d in h.daemons.iter().filter(|d| d.contains(&v1)) {
        let pid = d.split(':').next().unwrap();
        Command::new("kill").args(["-9", pid]).status().unwrap();
    }
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.wait_nodes(1);
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &v1, "in-use");
    let vol = wait_status(&vc, &c.admin, &v2, "in-use");
    assert_eq!(vol["attachments"][0]["device"], "/dev/vdc", "{vol}");
    // Both volumes whole: one daemon, one loop device and two mounts
    // (file system, FUSE export) each, and v1's data readable again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = HostState::of(&dir);
        let (ok, out) = in_ctr(&c, &a, "cat /mnt/volumes/vdb/marker");
        let live = h
            .daemons
            .iter()
            .filter(|d| {
                let pid = d.split(':').next().unwrap();
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| !s.contains(") Z"))
            })
            .count();
        if ok
            && out.trim() == "kept"
            && live == 2
            && h.daemons.len() == 2
            && h.loops.len() == 2
            && h.mounts.len() == 4
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not repaired: {h:#?}\nin the container: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    mounted_in_ctr(&c, &a, "vdc", true);

    // A detach asked, and the node dies at once again: after the
    // restart the detach ends, and only v2 is left on the host.
    detach(&c, &a, &v1);
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.wait_nodes(1);
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &v1, "available");
    wait_status(&vc, &c.admin, &v2, "in-use");
    host_until(&c, &a, Some("vdc"));
    mounted_in_ctr(&c, &a, "vdb", false);
    delete_server(&c, &a);
    wait_status(&vc, &c.admin, &v2, "available");
    let h = HostState::of(&dir);
    assert!(h.is_empty(), "{h:#?}");
}

/// The real CLI's `server add volume` / `server remove volume` on a
/// container; a multiattach volume is not shared with a container.
#[test]
fn volume_container_cli_add_and_remove() {
    if cli().is_none() {
        return;
    }
    require_runtime();
    let c = cloud(None);
    let Some(os) = Os::new(&c.server) else { return };
    let img = image_id(&c, "busybox");
    let id = boot(&c, "ctr", &img, json!({}));
    let vid = new_volume(&c, "data", None);

    os.ok(&["server", "add", "volume", "ctr", "data"]);
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &vid, "in-use");
    host_until(&c, &id, Some("vdb"));
    mounted_in_ctr(&c, &id, "vdb", true);
    let (ok, out) = in_ctr(
        &c,
        &id,
        "echo cli > /mnt/volumes/vdb/f && cat /mnt/volumes/vdb/f",
    );
    assert!(ok && out.trim() == "cli", "{out}");
    let vol = os.json(&["volume", "show", "data"]);
    assert_eq!(vol["status"], "in-use", "{vol}");
    assert!(vol["attachments"].to_string().contains("/dev/vdb"), "{vol}");
    assert!(vol["attachments"].to_string().contains(&id), "{vol}");
    let shown = os.json(&["server", "show", "ctr"]);
    assert!(
        shown["volumes_attached"].to_string().contains(&vid),
        "{shown}"
    );

    // A volume busy in the container is not taken from under it: the
    // detach rolls back and the volume stays in use and mounted.
    let busy = Command::new("nsenter")
        .args([
            "-t",
            &pid(&c, &id).to_string(),
            "-m",
            "-p",
            "-r",
            "-w",
            "--",
        ])
        .args(["/bin/sh", "-c", "cd /mnt/volumes/vdb && exec sleep 601"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    detach(&c, &id, &vid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = vc.get(&format!("/volumes/{vid}"), &c.admin).body;
        if v["volume"]["status"] == "in-use" {
            break;
        }
        assert!(Instant::now() < deadline, "no roll back: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The sleep runs in the container (nsenter forked it there).
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00601\x00") {
            let pid = e.file_name().to_string_lossy().into_owned();
            Command::new("kill").args(["-9", &pid]).status().unwrap();
        }
    }
    let mut busy = busy;
    let _ = busy.wait();
    host_until(&c, &id, Some("vdb"));
    mounted_in_ctr(&c, &id, "vdb", true);

    os.ok(&["server", "remove", "volume", "ctr", "data"]);
    let vol = wait_status(&vc, &c.admin, &vid, "available");
    assert_eq!(vol["attachments"], json!([]));
    host_until(&c, &id, None);
    mounted_in_ctr(&c, &id, "vdb", false);

    // Multiattach: not with a container on either side.
    let r = vc.post(
        "/types",
        &c.admin,
        json!({"volume_type": {"name": "shared", "extra_specs": {"multiattach": "<is> True"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let shared = new_volume(&c, "shared", Some("shared"));
    let other = boot(&c, "other", &img, json!({}));
    assert_eq!(attach(&c, &id, json!({"volumeId": shared})).status, 200);
    wait_status(&vc, &c.admin, &shared, "in-use");
    let m = nova_fault(
        &attach(&c, &other, json!({"volumeId": shared})),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("container"), "{m}");

    delete_server(&c, &id);
    delete_server(&c, &other);
    wait_status(&vc, &c.admin, &shared, "available");
    assert!(HostState::of(&inst_dir(&c, &id)).is_empty());
}

/// A snapshot (force) of a volume a container is writing holds what was
/// written, even what was never synced: the node freezes the volume's
/// file system while it copies, and thaws it afterwards.
#[test]
fn volume_container_snapshot_in_use_holds_unsynced_writes() {
    require_runtime();
    let c = cloud(None);
    let img = image_id(&c, "busybox");
    let a = boot(&c, "a", &img, json!({}));
    let vc = vol_client(&c);
    let vid = new_volume(&c, "live", None);
    let r = attach(&c, &a, json!({"volumeId": vid}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");
    mounted_in_ctr(&c, &a, "vdb", true);
    // No sync: the bytes sit in the container's page cache.
    let (ok, out) = in_ctr(&c, &a, "echo unsynced-marker > /mnt/volumes/vdb/marker");
    assert!(ok, "{out}");

    let r = vc.post(
        "/snapshots",
        &c.admin,
        json!({"snapshot": {"volume_id": vid, "force": true}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = vc.get(&format!("/snapshots/{snap}"), &c.admin).body;
        if s["snapshot"]["status"] == "available" {
            break;
        }
        assert_ne!(s["snapshot"]["status"], "error", "{s}");
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Thawed: the container writes on.
    let (ok, out) = in_ctr(&c, &a, "echo after > /mnt/volumes/vdb/after && sync");
    assert!(ok, "{out}");

    let r = vc.post(
        "/volumes",
        &c.admin,
        json!({"volume": {"size": 1, "snapshot_id": snap}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let copy = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &copy, "available");
    let r = attach(&c, &a, json!({"volumeId": copy, "device": "/dev/vdc"}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &copy, "in-use");
    mounted_in_ctr(&c, &a, "vdc", true);
    let (ok, out) = in_ctr(&c, &a, "cat /mnt/volumes/vdc/marker; ls /mnt/volumes/vdc");
    assert!(ok && out.contains("unsynced-marker"), "{out}");
    assert!(
        !out.contains("after"),
        "the snapshot has a later write: {out}"
    );
    delete_server(&c, &a);
}

/// The size of the file system at `/mnt/volumes/{dev}` in container
/// `id`, in MiB (busybox `df -m`).
fn fs_mib(c: &Cloud, id: &str, dev: &str) -> u64 {
    let (ok, out) = in_ctr(c, id, &format!("df -m /mnt/volumes/{dev}"));
    assert!(ok, "{out}");
    out.lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in df's answer: {out}"))
}

/// Whether this process (and so the agent it runs) may grow a mounted
/// ext4 (CAP_SYS_RESOURCE, bit 24; some sandboxes drop it).
fn may_resize_online() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

/// Cinder 3.42's extend of a volume a container has mounted, through
/// the real CLI: the volume and its loop device grow while the data
/// stays, the file system grows online (or, where the node may not
/// grow a mounted ext4, at its next mount: after a detach and attach
/// here), and a volume extended while detached has its file system grown
/// when it is mounted.
#[test]
fn volume_container_extend_in_use_grows_the_file_system() {
    if cli().is_none() {
        return;
    }
    require_runtime();
    let c = cloud(None);
    let Some(os) = Os::new(&c.server) else { return };
    let img = image_id(&c, "busybox");
    let id = boot(&c, "grow", &img, json!({}));
    let vc = vol_client(&c);
    let vid = new_volume(&c, "grow", None);
    assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
    wait_status(&vc, &c.admin, &vid, "in-use");
    host_until(&c, &id, Some("vdb"));
    mounted_in_ctr(&c, &id, "vdb", true);
    let (ok, out) = in_ctr(&c, &id, "echo kept > /mnt/volumes/vdb/m && sync");
    assert!(ok, "{out}");
    let before = fs_mib(&c, &id, "vdb");
    assert!(before < 1024, "{before} MiB");

    // Before 3.42 an attached volume does not grow.
    let r = vc.post(
        &format!("/volumes/{vid}/action"),
        &c.admin,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    os.ok(&[
        "--os-volume-api-version",
        "3.42",
        "volume",
        "set",
        "--size",
        "2",
        "grow",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let vol = loop {
        let v = vc.get(&format!("/volumes/{vid}"), &c.admin).body["volume"].clone();
        if v["size"] == 2 && v["status"] == "in-use" {
            break v;
        }
        assert!(
            v["status"] != "error_extending" && Instant::now() < deadline,
            "never grew: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(vol["attachments"][0]["server_id"], id.as_str(), "{vol}");
    // The container keeps its volume, data and all, mounted throughout.
    let (ok, out) = in_ctr(&c, &id, "cat /mnt/volumes/vdb/m");
    assert!(ok && out.trim() == "kept", "{out}");
    let grown = fs_mib(&c, &id, "vdb");
    if may_resize_online() {
        assert!(grown > 1536, "grew online to only {grown} MiB");
    } else {
        assert_eq!(grown, before, "no online resize here");
        detach(&c, &id, &vid);
        wait_status(&vc, &c.admin, &vid, "available");
        host_until(&c, &id, None);
        assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
        wait_status(&vc, &c.admin, &vid, "in-use");
        mounted_in_ctr(&c, &id, "vdb", true);
        let grown = fs_mib(&c, &id, "vdb");
        assert!(grown > 1536, "grew at its next mount to only {grown} MiB");
    }
    let (ok, out) = in_ctr(&c, &id, "cat /mnt/volumes/vdb/m && df -m /mnt/volumes/vdb");
    assert!(ok && out.starts_with("kept"), "{out}");

    // Extended while detached: the file system grows at the next mount.
    detach(&c, &id, &vid);
    wait_status(&vc, &c.admin, &vid, "available");
    host_until(&c, &id, None);
    os.ok(&["volume", "set", "--size", "3", "grow"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/volumes/{vid}"), &c.admin).body["volume"]["size"] != 3 {
        assert!(Instant::now() < deadline, "never grew while detached");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_status(&vc, &c.admin, &vid, "available");
    assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
    wait_status(&vc, &c.admin, &vid, "in-use");
    mounted_in_ctr(&c, &id, "vdb", true);
    let grown = fs_mib(&c, &id, "vdb");
    assert!(grown > 2560, "grew at mount to only {grown} MiB");
    let (ok, out) = in_ctr(&c, &id, "cat /mnt/volumes/vdb/m");
    assert!(ok && out.trim() == "kept", "{out}");

    // Reached over NBD from another node's export it does not grow:
    // `it::volume_nbd` covers that refusal for VMs, the same check.
    delete_server(&c, &id);
    wait_status(&vc, &c.admin, &vid, "available");
}
