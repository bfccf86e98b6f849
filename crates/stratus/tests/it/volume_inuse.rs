//! Copies of volumes that a running server is writing: a snapshot with
//! `force`, a clone and a backup of an `in-use` volume are read while the
//! holder is quiesced (a VM is paused, its caches flushed), so they hold
//! what the guest wrote, and the guest runs on afterwards.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime};
use super::volume::{vol_client, vol_file, wait_status};
use super::volume_attach::cloud;

const MARK: &str = "INUSE-MARK-42";

/// The first bytes of a qcow2 file's guest view.
fn head(file: &Path, out: &Path, n: usize) -> Vec<u8> {
    let st = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(file)
        .arg(out)
        .status()
        .expect("qemu-img");
    assert!(st.success(), "qemu-img convert {}", file.display());
    let b = std::fs::read(out).unwrap();
    let _ = std::fs::remove_file(out);
    b[..n].to_vec()
}

fn wait_for(c: &Cloud, path: &str, key: &str, want: &str) -> Value {
    let v = vol_client(c);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = v.get(path, &c.admin);
        let s = r.body[key]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if s == want {
            return r.body[key].clone();
        }
        assert!(!s.starts_with("error"), "{path} went to {s}: {}", r.body);
        assert!(Instant::now() < deadline, "{path} stuck in {s}: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn in_use_volume_snapshot_clone_and_backup_hold_the_guests_writes() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let vc = vol_client(&c);
    let r = vc.post(
        "/volumes",
        &c.admin,
        json!({"volume": {"size": 1, "name": "live"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let vid = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &vid, "available");
    let serial: String = vid.chars().take(20).collect();

    // The guest writes the marker at the start of the volume once it is
    // plugged in, then keeps printing ticks.
    let script = format!(
        "#!/bin/sh\nd=\nwhile [ -z \"$d\" ]; do for s in /sys/block/vd*; do [ \"$(cat $s/serial 2>/dev/null)\" = \"{serial}\" ] && d=${{s##*/}}; done; [ -z \"$d\" ] && sleep 1; done\n[ -b /dev/$d ] || mknod /dev/$d b $(tr ':' ' ' < /sys/block/$d/dev)\nprintf '{MARK}' > /tmp/m\ndd if=/tmp/m of=/dev/$d 2>/dev/null\nsync\necho WROTE-MARK\n(i=0; while true; do i=$((i+1)); echo TICK$i; sleep 1; done) &\n"
    );
    let img = image_id(&c, "busybox-vm");
    let r = c.boot(
        &c.admin,
        "writer",
        &img,
        "1",
        json!({"user_data": base64::engine::general_purpose::STANDARD.encode(script)}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &sid, "ACTIVE");
    let r = c.req(
        "POST",
        &format!("/servers/{sid}/os-volume_attachments"),
        &c.admin,
        Some(json!({"volumeAttachment": {"volumeId": vid}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");
    console_until(&c, &c.admin, &sid, "WROTE-MARK");

    // A snapshot without force is refused; with force it is made.
    let r = vc.post(
        "/snapshots",
        &c.admin,
        json!({"snapshot": {"volume_id": vid, "name": "s"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vc.post(
        "/snapshots",
        &c.admin,
        json!({"snapshot": {"volume_id": vid, "name": "s", "force": true}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    wait_for(&c, &format!("/snapshots/{snap}"), "snapshot", "available");

    // A volume from the snapshot, and a clone of the in-use volume.
    let tmp = c.server.data_dir().join("head.raw");
    for body in [
        json!({"volume": {"size": 1, "snapshot_id": snap}}),
        json!({"volume": {"size": 1, "source_volid": vid}}),
    ] {
        let r = vc.post("/volumes", &c.admin, body);
        assert_eq!(r.status, 202, "{}", r.body);
        let nid = r.body["volume"]["id"].as_str().unwrap().to_string();
        wait_status(&vc, &c.admin, &nid, "available");
        assert_eq!(head(&vol_file(&c, &nid), &tmp, MARK.len()), MARK.as_bytes());
    }

    // A backup of the in-use volume (force), restored into a new volume.
    let r = vc.post(
        "/backups",
        &c.admin,
        json!({"backup": {"volume_id": vid, "force": true}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let bid = r.body["backup"]["id"].as_str().unwrap().to_string();
    wait_for(&c, &format!("/backups/{bid}"), "backup", "available");
    wait_status(&vc, &c.admin, &vid, "in-use");
    let r = vc.post(
        &format!("/backups/{bid}/restore"),
        &c.admin,
        json!({"restore": {"name": "back"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let rid = r.body["restore"]["volume_id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &rid, "available");
    assert_eq!(head(&vol_file(&c, &rid), &tmp, MARK.len()), MARK.as_bytes());

    // The guest was resumed each time: it still ticks, and is ACTIVE.
    let r = c.req(
        "POST",
        &format!("/servers/{sid}/action"),
        &c.admin,
        Some(json!({"os-getConsoleOutput": {}})),
    );
    let out = r.body["output"].as_str().unwrap_or_default().to_string();
    let last = out
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("TICK")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    console_until(&c, &c.admin, &sid, &format!("TICK{}", last + 2));
    let s = c
        .req("GET", &format!("/servers/{sid}"), &c.admin, None)
        .body;
    assert_eq!(s["server"]["status"], "ACTIVE", "{s}");

    // Clean up the VM before the cloud goes (it outlives its agent).
    let r = c.req("DELETE", &format!("/servers/{sid}"), &c.admin, None);
    assert_eq!(r.status, 204, "{}", r.body);
    c.wait_gone(&c.admin, &sid);
}
