//! Boot from volume (Nova's `block_device_mapping_v2` with volume
//! destinations): the real `openstack server create --boot-from-volume`
//! on a real QEMU node, the guest's writes kept by the volume across
//! servers, `delete_on_termination`, extra volumes at boot, and the
//! refusals in Nova's shape.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime};
use super::volume::{vol_client, wait_status};
use super::volume_attach::{cloud, nova_fault};

fn ud(script: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(script)
}

/// `POST /servers` with block device mappings at 2.67 (volume_type in a
/// mapping).
fn boot_bdm(c: &Cloud, name: &str, bdms: Value, extra: Value) -> super::common::Resp {
    boot_as(c, &c.admin, name, bdms, extra)
}

fn boot_as(c: &Cloud, tok: &str, name: &str, bdms: Value, extra: Value) -> super::common::Resp {
    let mut server = json!({
        "name": name, "flavorRef": "1", "networks": "none",
        "block_device_mapping_v2": bdms,
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            server[k] = v;
        }
    }
    c.nova.raw(
        "POST",
        "/servers",
        Some(tok),
        &[("OpenStack-API-Version", "compute 2.67")],
        Some(json!({"server": server}).to_string()),
    )
}

fn wait_volume_gone(c: &Cloud, id: &str) {
    let vc = vol_client(c);
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/volumes/{id}"), &c.admin).status != 404 {
        assert!(Instant::now() < deadline, "volume {id} was not deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a marker 512 MiB into the root disk, past the small boot file
/// system, and prints what is there (a second server prints the first
/// one's marker before writing its own).
const MARK: &str = "#!/bin/sh\necho \"READ[$(dd if=/dev/vda bs=1M skip=512 count=1 2>/dev/null | head -c 16)]\"\necho BFV-MARKER-0001 | dd of=/dev/vda bs=1M seek=512 conv=notrunc 2>/dev/null\nsync\necho BFV-WROTE\n";

#[test]
fn boot_from_volume_cli_keeps_the_guests_writes_across_servers() {
    if cli().is_none() {
        return;
    }
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let Some(os) = Os::new(&c.server) else { return };
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let script = std::env::temp_dir().join(format!("bfv-ud-{}", std::process::id()));
    std::fs::write(&script, MARK).unwrap();

    // The real CLI: a 1 GiB volume made from the image, booted.
    os.ok(&[
        "server",
        "create",
        "--flavor",
        "1",
        "--image",
        "busybox-vm",
        "--boot-from-volume",
        "1",
        "--nic",
        "none",
        "--user-data",
        script.to_str().unwrap(),
        "bfv1",
    ]);
    let first = os.json(&["server", "show", "bfv1"]);
    let id1 = first["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &id1, "ACTIVE");
    assert_eq!(s["image"], "", "a volume-backed server has no image: {s}");
    let vols = s["os-extended-volumes:volumes_attached"]
        .as_array()
        .unwrap();
    assert_eq!(vols.len(), 1, "{s}");
    let vid = vols[0]["id"].as_str().unwrap().to_string();
    let out = console_until(&c, &c.admin, &id1, "BFV-WROTE");
    assert!(out.contains("READ[]") || !out.contains("READ[BFV"), "{out}");
    let vol = wait_status(&vc, &c.admin, &vid, "in-use");
    assert_eq!(vol["bootable"], "true", "{vol}");
    assert_eq!(vol["attachments"][0]["device"], "/dev/vda", "{vol}");
    assert_eq!(vol["attachments"][0]["server_id"], id1.as_str(), "{vol}");
    assert_eq!(
        vol["volume_image_metadata"]["image_id"],
        img.as_str(),
        "{vol}"
    );
    let shown = os.json(&["server", "show", "bfv1"]);
    assert!(
        shown["image"].to_string().contains("booted from volume"),
        "{shown}"
    );

    // The root volume stays while the server runs.
    let r = c.req(
        "DELETE",
        &format!("/servers/{id1}/os-volume_attachments/{vid}"),
        &c.admin,
        None,
    );
    let m = nova_fault(&r, 400, "badRequest");
    assert!(m.contains("root"), "{m}");
    let r = c.req(
        "POST",
        &format!("/servers/{id1}/action"),
        &c.admin,
        Some(json!({"createBackup": {"name": "b", "backup_type": "daily", "rotation": 1}})),
    );
    nova_fault(&r, 400, "badRequest");
    let r = c.req(
        "POST",
        &format!("/servers/{id1}/action"),
        &c.admin,
        Some(json!({"rebuild": {"imageRef": img}})),
    );
    nova_fault(&r, 400, "badRequest");
    // In use: no second server boots from it.
    let r = boot_bdm(
        &c,
        "again",
        json!([{"source_type": "volume", "uuid": vid, "destination_type": "volume", "boot_index": 0}]),
        json!({}),
    );
    nova_fault(&r, 400, "badRequest");

    // Deleting the server keeps the volume (the CLI's default is not to
    // delete on termination), with the guest's marker in it.
    os.ok(&["server", "delete", "--wait", "bfv1"]);
    wait_status(&vc, &c.admin, &vid, "available");

    // The real CLI again: a server booted from the existing volume reads
    // the first one's marker.
    os.ok(&[
        "server",
        "create",
        "--flavor",
        "1",
        "--volume",
        &vid,
        "--nic",
        "none",
        "--user-data",
        script.to_str().unwrap(),
        "bfv2",
    ]);
    let id2 = os.json(&["server", "show", "bfv2"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&c.admin, &id2, "ACTIVE");
    let out = console_until(&c, &c.admin, &id2, "BFV-WROTE");
    assert!(
        out.contains("READ[BFV-MARKER-0001]"),
        "the second server did not find the first one's write:\n{out}"
    );
    os.ok(&["server", "delete", "--wait", "bfv2"]);
    wait_status(&vc, &c.admin, &vid, "available");

    // delete_on_termination, and a blank data volume at boot.
    let r = boot_bdm(
        &c,
        "bfv3",
        json!([
            {"source_type": "image", "uuid": img, "destination_type": "volume",
             "boot_index": 0, "volume_size": 1, "delete_on_termination": true},
            {"source_type": "blank", "destination_type": "volume", "volume_size": 1,
             "boot_index": -1, "delete_on_termination": false}
        ]),
        json!({"user_data": ud("#!/bin/sh\necho DISKS[$(ls /sys/block | tr '\\n' ' ')]\n")}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id3 = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &id3, "ACTIVE");
    let vols = s["os-extended-volumes:volumes_attached"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(vols.len(), 2, "{s}");
    let root = vols
        .iter()
        .find(|v| v["delete_on_termination"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let data = vols
        .iter()
        .find(|v| v["delete_on_termination"] == false)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let dv = wait_status(&vc, &c.admin, &data, "in-use");
    assert_eq!(dv["attachments"][0]["device"], "/dev/vdb", "{dv}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id3}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id3);
    wait_volume_gone(&c, &root);
    wait_status(&vc, &c.admin, &data, "available");
    let _ = std::fs::remove_file(&script);
}

/// The mappings Nova refuses, each a 400 in Nova's shape with nothing
/// made (fake nodes: no guest needed).
#[test]
fn boot_from_volume_refusals_leave_nothing_behind() {
    let c = cloud(Some("fake"));
    let vc = vol_client(&c);
    let vm = image_id(&c, "busybox-vm");
    let ctr = image_id(&c, "busybox");
    let count = || {
        vc.get("/volumes", &c.admin).body["volumes"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0)
    };
    let cases = [
        // A container image is no disk to make a volume from.
        json!([{"source_type": "image", "uuid": ctr, "destination_type": "volume", "boot_index": 0, "volume_size": 1}]),
        // An image to a volume needs a size.
        json!([{"source_type": "image", "uuid": vm, "destination_type": "volume", "boot_index": 0}]),
        // A blank volume cannot be booted.
        json!([{"source_type": "blank", "destination_type": "volume", "boot_index": 0, "volume_size": 1}]),
        // A volume that does not exist.
        json!([{"source_type": "volume", "uuid": "6f1c1b53-0000-4000-8000-000000000000", "destination_type": "volume", "boot_index": 0}]),
        // A volume mapped as a local disk.
        json!([{"source_type": "volume", "uuid": vm, "destination_type": "local", "boot_index": 0}]),
        // Boot indexes with a gap.
        json!([{"source_type": "image", "uuid": vm, "destination_type": "volume", "boot_index": 1, "volume_size": 1}]),
        // An unknown source.
        json!([{"source_type": "floppy", "destination_type": "volume", "boot_index": 0}]),
    ];
    for bdms in cases {
        let r = boot_bdm(&c, "bad", bdms.clone(), json!({}));
        nova_fault(&r, 400, "badRequest");
        assert_eq!(count(), 0, "{bdms} left a volume");
    }
    let r = c.req("GET", "/servers", &c.admin, None);
    assert_eq!(r.body["servers"], json!([]), "{}", r.body);

    // Too big for the node: refused, nothing made.
    let r = boot_bdm(
        &c,
        "huge",
        json!([{"source_type": "image", "uuid": vm, "destination_type": "volume", "boot_index": 0, "volume_size": 100000}]),
        json!({}),
    );
    nova_fault(&r, 400, "badRequest");
    assert_eq!(count(), 0);

    // The quota counts the volumes made for a server: over it, a 413
    // from Cinder's rules becomes Nova's 400 with nothing half-made.
    let (pq, tq) = c.project("bfvq");
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pq}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"volumes": 0}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = boot_as(
        &c,
        &tq,
        "over",
        json!([{"source_type": "image", "uuid": vm, "destination_type": "volume", "boot_index": 0, "volume_size": 1}]),
        json!({}),
    );
    let m = nova_fault(&r, 400, "badRequest");
    assert!(
        m.to_lowercase().contains("quota") || m.contains("exceeded"),
        "{m}"
    );
    let mine = vc.get("/volumes", &tq).body;
    assert_eq!(mine["volumes"], json!([]), "{mine}");
    assert_eq!(
        c.req("GET", "/servers", &tq, None).body["servers"],
        json!([])
    );
}

/// Nova's snapshot of a volume-backed server: `createImage` snapshots its
/// volume (while the VM is paused) and makes an image without data that
/// names the snapshot; a server booted from that image gets a new volume
/// made from the snapshot, holding the first guest's writes.
#[test]
fn volume_backed_snapshot_image_boots_a_server_with_the_guests_writes() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let r = boot_bdm(
        &c,
        "origin",
        json!([{"source_type": "image", "uuid": img, "destination_type": "volume",
                "boot_index": 0, "volume_size": 1, "delete_on_termination": true}]),
        json!({"user_data": ud(MARK)}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id1 = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &id1, "ACTIVE");
    let vid1 = s["os-extended-volumes:volumes_attached"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    console_until(&c, &c.admin, &id1, "BFV-WROTE");

    let r = c.nova.raw(
        "POST",
        &format!("/servers/{id1}/action"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.45")],
        Some(json!({"createImage": {"name": "bfv-snap", "metadata": {"k": "v"}}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let iid = r.body["image_id"].as_str().unwrap().to_string();
    let im = c.img.get(&format!("/images/{iid}"), &c.admin).body;
    assert_eq!(im["status"], "active", "{im}");
    assert_eq!(im["size"], 0, "{im}");
    assert_eq!(im["k"], "v", "{im}");
    assert_eq!(im["root_device_name"], "/dev/vda", "{im}");
    let bdm: Value = serde_json::from_str(im["block_device_mapping"].as_str().unwrap()).unwrap();
    assert_eq!(bdm[0]["boot_index"], 0, "{bdm}");
    assert_eq!(bdm[0]["source_type"], "snapshot", "{bdm}");
    let snap = bdm[0]["snapshot_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sn = vc.get(&format!("/snapshots/{snap}"), &c.admin).body;
        if sn["snapshot"]["status"] == "available" {
            assert_eq!(sn["snapshot"]["volume_id"], vid1.as_str(), "{sn}");
            break;
        }
        assert!(Instant::now() < deadline, "snapshot not made: {sn}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first server runs on.
    let s = c
        .req("GET", &format!("/servers/{id1}"), &c.admin, None)
        .body;
    assert_eq!(s["server"]["status"], "ACTIVE", "{s}");

    // Booting the image makes a new volume from the snapshot.
    let r = c.boot(&c.admin, "copy", &iid, "1", json!({"user_data": ud(MARK)}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id2 = r.body["server"]["id"].as_str().unwrap().to_string();
    let s = c.wait(&c.admin, &id2, "ACTIVE");
    let vols = s["os-extended-volumes:volumes_attached"]
        .as_array()
        .unwrap();
    assert_eq!(vols.len(), 1, "{s}");
    let vid2 = vols[0]["id"].as_str().unwrap().to_string();
    assert_ne!(vid2, vid1);
    let v2 = vc.get(&format!("/volumes/{vid2}"), &c.admin).body;
    assert_eq!(v2["volume"]["snapshot_id"], snap.as_str(), "{v2}");
    let out = console_until(&c, &c.admin, &id2, "BFV-WROTE");
    assert!(
        out.contains("READ[BFV-MARKER-0001]"),
        "the server booted from the snapshot image lacks the first guest's write:\n{out}"
    );

    // Cinder 3.46: a volume made from that image is made from the
    // snapshot it names (before 3.46 the dataless image is not a disk).
    let r = vc.raw(
        "POST",
        "/volumes",
        Some(&c.admin),
        &[("OpenStack-API-Version", "volume 3.46")],
        Some(json!({"volume": {"imageRef": iid, "name": "from-nova-image"}}).to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let vid3 = r.body["volume"]["id"].as_str().unwrap().to_string();
    let v3 = wait_status(&vc, &c.admin, &vid3, "available");
    assert_eq!(v3["snapshot_id"], snap.as_str(), "{v3}");
    assert_eq!(v3["size"], 1, "{v3}");
    let r = vc.delete(&format!("/volumes/{vid3}"), &c.admin);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_volume_gone(&c, &vid3);

    for id in [&id1, &id2] {
        let r = c.req("DELETE", &format!("/servers/{id}"), &c.admin, None);
        assert_eq!(r.status, 204, "{}", r.body);
        c.wait_gone(&c.admin, id);
    }
    // Both were delete_on_termination (the second from the image's
    // mapping); the first has a snapshot, which Cinder does not delete
    // with it, so it stays (as with Nova).
    wait_volume_gone(&c, &vid2);
    wait_status(&vc, &c.admin, &vid1, "available");
}

/// Nova's resize of a volume-backed server: it stays on its node (the
/// root volume stays where it is), the VM restarts with the new flavor's
/// memory, the guest boots again from the same volume and finds its own
/// earlier write; a revert puts the old flavor back; a cold migration
/// (which would move it) stays refused.
#[test]
fn volume_backed_server_resizes_in_place_and_reverts() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let img = image_id(&c, "busybox-vm");
    let r = boot_bdm(
        &c,
        "bfv-resize",
        json!([{"source_type": "image", "uuid": img, "destination_type": "volume",
                "boot_index": 0, "volume_size": 1, "delete_on_termination": true}]),
        json!({"user_data": ud(
            "#!/bin/sh\necho READ[$(dd if=/dev/vda bs=1 skip=$((900*1024*1024)) count=16 2>/dev/null)]\n\
             printf 'BFV-RESIZE-MARK1' | dd of=/dev/vda bs=1 seek=$((900*1024*1024)) conv=fsync 2>/dev/null\necho BFV-WROTE\n"
        )}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    console_until(&c, &c.admin, &id, "BFV-WROTE");
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(body),
        )
    };
    let qemu = || {
        let f = c.server.data_dir().join(format!("agent/vms/{id}/qemu.pid"));
        let pid = std::fs::read_to_string(f).unwrap_or_default();
        std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    assert!(qemu().contains(" -m 512 "), "{}", qemu());

    // A cold migration would move it: still refused.
    let m = nova_fault(&act(json!({"migrate": null})), 409, "conflictingRequest");
    assert!(m.contains("volume"), "{m}");

    let r = act(json!({"resize": {"flavorRef": "2"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let s = c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(s["flavor"]["id"], "2", "{s}");
    assert!(qemu().contains(" -m 2048 "), "{}", qemu());
    // The guest booted again from its volume and read its own write.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(json!({"os-getConsoleOutput": {}})),
        );
        let out = out.body["output"].as_str().unwrap_or_default().to_string();
        if out.contains("READ[BFV-RESIZE-MARK1]") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resized guest did not read its volume:\n{out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(act(json!({"revertResize": null})).status, 202);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], "1", "{s}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !qemu().contains(" -m 512 ") {
        assert!(std::time::Instant::now() < deadline, "{}", qemu());
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // Confirmed the other way round too.
    assert_eq!(act(json!({"resize": {"flavorRef": "84"}})).status, 202);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["flavor"]["id"], "84", "{s}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
}
