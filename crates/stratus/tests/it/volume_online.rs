//! Volumes changed while a VM runs on them. Nova's swap volume (`PUT
//! /servers/{id}/os-volume_attachments/{old}` naming another volume):
//! the real VM's disk is copied onto the new volume while the guest runs
//! and writes (QEMU's block mirror), the guest's disk moves over and
//! grows to the new volume's size, the old volume is let go (its file
//! unlocked, `available`). Cinder 3.42's extend of a volume in use: the
//! running guest sees its disk grow. And the rules around both, in each
//! API's error shapes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime};
use super::volume::{vol_client, vol_file, wait_status};
use super::volume_attach::{attach, boot, cloud, new_volume, nova_fault};

/// `qemu-io` on a volume's file, read-only and without taking its lock
/// (a running QEMU may hold it): whether `cmd` succeeded and matched.
fn qemu_io_reads(file: &Path, cmd: &str) -> bool {
    Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c", cmd])
        .arg(file)
        .output()
        .map(|o| {
            o.status.success()
                && !String::from_utf8_lossy(&o.stdout).contains("Pattern verification failed")
        })
        .expect("qemu-io (apt-get install qemu-utils)")
}

/// Whether a process holds the lock on `file` (`qemu-io` without `-U`
/// cannot open it then).
fn locked(file: &Path) -> bool {
    let o = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", "read 0 512"])
        .arg(file)
        .output()
        .expect("qemu-io");
    String::from_utf8_lossy(&o.stderr).contains("lock")
}

/// Nova's swap request, with `token`.
fn swap(c: &Cloud, token: &str, server: &str, old: &str, new: &str) -> super::common::Resp {
    c.nova.raw(
        "PUT",
        &format!("/servers/{server}/os-volume_attachments/{old}"),
        Some(token),
        &[("OpenStack-API-Version", "compute 2.1")],
        Some(json!({"volumeAttachment": {"volumeId": new}}).to_string()),
    )
}

fn attachment_ids(c: &Cloud, server: &str) -> Vec<String> {
    let r = c.req(
        "GET",
        &format!("/servers/{server}/os-volume_attachments"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["volumeAttachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["volumeId"].as_str().unwrap().to_string())
        .collect()
}

fn console(c: &Cloud, id: &str) -> String {
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"os-getConsoleOutput": {}})),
    );
    r.body["output"].as_str().unwrap_or_default().to_string()
}

/// A volume of `gib` GiB made by the admin, once available: its id.
fn volume_of(c: &Cloud, name: &str, gib: u64) -> String {
    let vc = vol_client(c);
    let r = vc.post(
        "/volumes",
        &c.admin,
        json!({"volume": {"size": gib, "name": name}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &id, "available");
    id
}

/// A guest script that finds the disk whose serial is `serial` (a
/// volume's first 20 characters: a swap keeps the device and its
/// serial), prints `SIZE <sectors> END` every second and, with `write`,
/// writes a marker at 2 MiB into it each time.
fn size_reporter(serial: &str, write: bool) -> String {
    let write = if write {
        "echo GUEST-WROTE-THIS | dd of=/dev/${d##*/} bs=512 seek=4096 conv=fsync 2>/dev/null; "
    } else {
        ""
    };
    format!(
        "#!/bin/sh\n(while true; do d=''; for f in /sys/block/vd*; do [ \"$(cat $f/serial 2>/dev/null)\" = {serial} ] && d=$f; done; \
         if [ -n \"$d\" ]; then echo \"SIZE $(cat $d/size) END\"; {write}else echo 'SIZE 0 END'; fi; sleep 1; done) &\n"
    )
}

/// Waits until the guest's last `SIZE` line says `sectors`.
fn guest_size_until(c: &Cloud, id: &str, sectors: u64) {
    let want = format!("SIZE {sectors} END");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = console(c, id);
        let last = out.lines().rev().find(|l| l.starts_with("SIZE"));
        if last.is_some_and(|l| l.trim() == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never saw {want}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A hard reboot of server `id`, until it is ACTIVE again.
pub(super) fn hard_reboot(c: &Cloud, id: &str) {
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"reboot": {"type": "HARD"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, id, "ACTIVE");
}

/// Waits until the guest of `id` has booted a second time (its image
/// prints a marker at each boot).
fn wait_booted_again(c: &Cloud, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while console(c, id).matches("STRATUS-TEST-IMAGE OK").count() < 2 {
        assert!(Instant::now() < deadline, "the guest did not boot again");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A real VM: its volume's data, and what the guest writes during and
/// after the swap, end on the new (larger) volume; the guest sees the new
/// size; the old volume is free; a hard reboot starts QEMU with the new
/// volume; a second swap and a detach after it let every file go.
#[test]
fn volume_swap_moves_a_running_vm_onto_the_new_volume() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let old = new_volume(&c, "old", None);
    // The guest finds the volume by its serial (the old volume's id: a
    // swap keeps the device and its serial), reports its size and keeps
    // writing a marker at 2 MiB into it.
    let serial: String = old.chars().take(20).collect();
    let script = size_reporter(&serial, true);
    let ud = base64::engine::general_purpose::STANDARD.encode(script);
    let id = boot(&c, "vm", &img, json!({"user_data": ud}));
    console_until(&c, &c.admin, &id, "SIZE");
    // 2 GiB: the guest's disk grows once it is on the new volume.
    let new = volume_of(&c, "new", 2);
    let (old_file, new_file) = (vol_file(&c, &old), vol_file(&c, &new));
    // Data the old volume had before it was attached.
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 1M"])
        .arg(&old_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    assert_eq!(attach(&c, &id, json!({"volumeId": old})).status, 200);
    wait_status(&vc, &c.admin, &old, "in-use");
    guest_size_until(&c, &id, 2 * 1024 * 1024);
    assert!(locked(&old_file), "QEMU holds the old volume");

    // Only admins swap.
    let (_, member) = c.project("swap-member");
    let r = swap(&c, &member, &id, &old, &new);
    assert!(r.status == 403 || r.status == 404, "{}", r.body);

    let r = swap(&c, &c.admin, &id, &old, &new);
    assert_eq!(r.status, 202, "{}", r.body);
    let o = wait_status(&vc, &c.admin, &old, "available");
    assert_eq!(o["attachments"], json!([]), "{o}");
    let n = wait_status(&vc, &c.admin, &new, "in-use");
    assert!(n["attachments"].to_string().contains(&id), "{n}");
    assert_eq!(n["attachments"][0]["device"], "/dev/vdb", "{n}");
    assert_eq!(attachment_ids(&c, &id), vec![new.clone()]);
    let shown = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body;
    let attached = shown["server"]["os-extended-volumes:volumes_attached"].to_string();
    assert!(
        attached.contains(&new) && !attached.contains(&old),
        "{shown}"
    );

    // The data came along, the guest sees 2 GiB and writes to the new
    // volume, and the old file is no longer held.
    assert!(
        qemu_io_reads(&new_file, "read -P 0x5a 0 1M"),
        "the old volume's data is on the new one"
    );
    guest_size_until(&c, &id, 4 * 1024 * 1024);
    assert!(!locked(&old_file), "the old volume's file is let go");
    assert!(locked(&new_file), "QEMU holds the new volume");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !qemu_io_reads(&new_file, "read -P 0x47 2M 1") {
        assert!(
            Instant::now() < deadline,
            "the guest's writes reach the new volume"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The old volume is the user's again: attachable, deletable.
    assert_eq!(
        vc.delete(&format!("/volumes/{old}"), &c.admin).status,
        202,
        "the old volume can be deleted"
    );

    // A hard reboot starts QEMU with the new volume.
    hard_reboot(&c, &id);
    let pidf = c.server.data_dir().join(format!("agent/vms/{id}/qemu.pid"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pid = std::fs::read_to_string(&pidf).unwrap_or_default();
        let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmd.contains(&new_file.display().to_string()) {
            assert!(!cmd.contains(&old_file.display().to_string()), "{cmd}");
            break;
        }
        assert!(Instant::now() < deadline, "rebooted QEMU: {cmd}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The guest boots again (a detach needs a running guest's ack). The
    // disk's serial is now the new volume's, as with Nova.
    wait_booted_again(&c, &id);

    // Swapped again (back onto a fresh 2 GiB volume) and detached: the
    // device's block node changes name with each swap, and both go.
    let third = volume_of(&c, "third", 2);
    assert_eq!(swap(&c, &c.admin, &id, &new, &third).status, 202);
    wait_status(&vc, &c.admin, &third, "in-use");
    wait_status(&vc, &c.admin, &new, "available");
    assert!(!locked(&new_file));
    assert!(qemu_io_reads(&vol_file(&c, &third), "read -P 0x5a 0 1M"));
    let r = c.req(
        "DELETE",
        &format!("/servers/{id}/os-volume_attachments/{third}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &third, "available");
    assert!(!locked(&vol_file(&c, &third)), "detached after a swap");
}

/// The rules, on fake nodes: who may swap, which volumes, which servers.
#[test]
fn volume_swap_refusals() {
    let c = cloud(Some("fake"));
    let img = image_id(&c, "busybox-vm");
    let vc = vol_client(&c);
    let s = boot(&c, "swp", &img, json!({}));
    let v = new_volume(&c, "swp", None);
    let other = new_volume(&c, "swp-other", None);
    assert_eq!(attach(&c, &s, json!({"volumeId": v})).status, 200);
    wait_status(&vc, &c.admin, &v, "in-use");

    // A volume that does not exist, or that the server's project does
    // not own: 400 (Nova's answer for a missing volume named in the body).
    let r = swap(&c, &c.admin, &s, &v, "0b1e6e38-0000-4000-8000-000000000000");
    nova_fault(&r, 400, "badRequest");
    let (_, member) = c.project("swap-other-project");
    let theirs = {
        let r = vc.post(
            "/volumes",
            &member,
            json!({"volume": {"size": 1, "name": "theirs"}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["volume"]["id"].as_str().unwrap().to_string()
    };
    wait_status(&vc, &c.admin, &theirs, "available");
    let r = swap(&c, &c.admin, &s, &v, &theirs);
    nova_fault(&r, 400, "badRequest");
    // Smaller than the old volume: 400.
    let big = volume_of(&c, "big", 2);
    let s2 = boot(&c, "swp2", &img, json!({}));
    assert_eq!(attach(&c, &s2, json!({"volumeId": big})).status, 200);
    wait_status(&vc, &c.admin, &big, "in-use");
    let m = nova_fault(&swap(&c, &c.admin, &s2, &big, &other), 400, "badRequest");
    assert!(m.contains("same size or larger"), "{m}");
    // A new volume in use: 400.
    let m = nova_fault(&swap(&c, &c.admin, &s, &v, &big), 400, "badRequest");
    assert!(m.contains("detached"), "{m}");
    // A stopped server: 409.
    let r = c.req(
        "POST",
        &format!("/servers/{s}/action"),
        &c.admin,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &s, "SHUTOFF");
    nova_fault(
        &swap(&c, &c.admin, &s, &v, &other),
        409,
        "conflictingRequest",
    );
    let r = c.req(
        "POST",
        &format!("/servers/{s}/action"),
        &c.admin,
        Some(json!({"os-start": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &s, "ACTIVE");

    // A container's volumes are mounted file systems: 409.
    let ctr = boot(&c, "swp-ctr", &image_id(&c, "busybox"), json!({}));
    let cv = new_volume(&c, "swp-ctr", None);
    assert_eq!(attach(&c, &ctr, json!({"volumeId": cv})).status, 200);
    wait_status(&vc, &c.admin, &cv, "in-use");
    let m = nova_fault(
        &swap(&c, &c.admin, &ctr, &cv, &other),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("container"), "{m}");
    wait_status(&vc, &c.admin, &other, "available");

    // The swap, end to end on the fake node: the old volume is
    // available, the new one in use at the same device.
    assert_eq!(swap(&c, &c.admin, &s, &v, &other).status, 202);
    wait_status(&vc, &c.admin, &v, "available");
    let o = wait_status(&vc, &c.admin, &other, "in-use");
    assert_eq!(o["attachments"][0]["device"], "/dev/vdb", "{o}");
    assert_eq!(attachment_ids(&c, &s), vec![other.clone()]);
    // The old volume is no longer the server's: a swap from it is a 404.
    let r = swap(&c, &c.admin, &s, &v, &other);
    nova_fault(&r, 404, "itemNotFound");
}

/// Waits until no process holds the lock on `file`.
fn wait_unlocked(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while locked(file) {
        assert!(Instant::now() < deadline, "{} stays locked", file.display());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A VM on a node without volumes reaches both volumes over NBD: the
/// copy runs from one export to the other (TLS to both), twice (the
/// device's block node and TLS credentials alternate names), the storage
/// node stops exporting each old volume, and a larger volume over NBD is
/// refused (a disk over NBD cannot grow).
#[test]
fn volume_swap_between_volumes_of_another_node() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let b = super::common::Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let id = boot(
        &c,
        "vm-b",
        &img,
        json!({"availability_zone": "nova:node-b"}),
    );
    // A booted guest (a detach needs its ack).
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    let vols: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| new_volume(&c, n, None))
        .collect();
    let files: Vec<_> = vols.iter().map(|v| vol_file(&c, v)).collect();
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x6b 0 1M"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(attach(&c, &id, json!({"volumeId": vols[0]})).status, 200);
    wait_status(&vc, &c.admin, &vols[0], "in-use");
    assert!(locked(&files[0]), "the export holds the volume");

    let big = volume_of(&c, "n-big", 2);
    let m = nova_fault(
        &swap(&c, &c.admin, &id, &vols[0], &big),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("NBD"), "{m}");

    for pair in [0, 1] {
        let (from, to) = (&vols[pair], &vols[pair + 1]);
        let r = swap(&c, &c.admin, &id, from, to);
        assert_eq!(r.status, 202, "{}", r.body);
        wait_status(&vc, &c.admin, to, "in-use");
        wait_status(&vc, &c.admin, from, "available");
        assert_eq!(attachment_ids(&c, &id), vec![to.clone()]);
        wait_unlocked(&files[pair]);
        assert!(locked(&files[pair + 1]), "the export holds the new volume");
        assert!(
            qemu_io_reads(&files[pair + 1], "read -P 0x6b 0 1M"),
            "the data came along over NBD"
        );
    }
    // A disk over NBD cannot grow: extending it in use is a 400.
    let r = vc.raw(
        "POST",
        &format!("/volumes/{}/action", vols[2]),
        Some(&c.admin),
        &[("OpenStack-API-Version", "volume 3.42")],
        Some(json!({"os-extend": {"new_size": 2}}).to_string()),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_string().contains("NBD"), "{}", r.body);
    let r = c.req(
        "DELETE",
        &format!("/servers/{id}/os-volume_attachments/{}", vols[2]),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = vc.get(&format!("/volumes/{}", vols[2]), &c.admin).body;
        if v["volume"]["status"] == "available" {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&b.log).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("volume") || l.contains("WARN"))
                .collect();
            panic!("detach after the swaps: {v}\nnode-b:\n{}", lines.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_unlocked(&files[2]);
}

/// Cinder 3.42: the real CLI extends a volume a running VM uses; the
/// guest sees the disk grow, the volume stays `in-use` at the new size,
/// and the server gets Nova's `extend_volume` action. Below 3.42 a 400
/// (a container's volume: `it::volume_container`).
#[test]
fn volume_extend_in_use_grows_the_running_guest_disk() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    // The real CLI where there is one, else the same request over HTTP.
    let os = super::cli::cli().and_then(|_| super::cli::Os::new(&c.server));
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let vid = new_volume(&c, "grow", None);
    let serial: String = vid.chars().take(20).collect();
    let script = size_reporter(&serial, false);
    let ud = base64::engine::general_purpose::STANDARD.encode(script);
    let id = boot(&c, "grow-vm", &img, json!({"user_data": ud}));
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
    wait_status(&vc, &c.admin, &vid, "in-use");
    guest_size_until(&c, &id, 2 * 1024 * 1024);

    // Below 3.42 an attached volume does not grow.
    let r = vc.post(
        &format!("/volumes/{vid}/action"),
        &c.admin,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    match &os {
        Some(os) => {
            os.ok(&[
                "--os-volume-api-version",
                "3.42",
                "volume",
                "set",
                "--size",
                "2",
                "grow",
            ]);
        }
        None => {
            let r = vc.raw(
                "POST",
                &format!("/volumes/{vid}/action"),
                Some(&c.admin),
                &[("OpenStack-API-Version", "volume 3.42")],
                Some(json!({"os-extend": {"new_size": 2}}).to_string()),
            );
            assert_eq!(r.status, 202, "{}", r.body);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = vc.get(&format!("/volumes/{vid}"), &c.admin).body;
        if v["volume"]["size"] == 2 && v["volume"]["status"] == "in-use" {
            break v;
        }
        assert!(Instant::now() < deadline, "the volume did not grow: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(v["volume"]["attachments"].to_string().contains(&id), "{v}");
    guest_size_until(&c, &id, 4 * 1024 * 1024);
    let info = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(vol_file(&c, &vid))
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 2u64 << 30, "{info}");
    // Nova's record of it.
    let acts = c.req(
        "GET",
        &format!("/servers/{id}/os-instance-actions"),
        &c.admin,
        None,
    );
    let act = acts.body["instanceActions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "extend_volume")
        .unwrap_or_else(|| panic!("no extend_volume action: {}", acts.body))
        .clone();
    let one = c.req(
        "GET",
        &format!(
            "/servers/{id}/os-instance-actions/{}",
            act["request_id"].as_str().unwrap()
        ),
        &c.admin,
        None,
    );
    let ev = &one.body["instanceAction"]["events"][0];
    assert_eq!(ev["event"], "compute_extend_volume", "{}", one.body);
    assert_eq!(ev["result"], "Success", "{}", one.body);
}

/// A swap the node cannot carry out (the new volume's file is gone from
/// the storage node) fails whole: the old volume stays attached at its
/// device and in use, the guest keeps it, the new volume is `available`
/// again, and a later swap to a good volume works.
#[test]
fn volume_swap_that_fails_keeps_the_old_volume() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    let id = boot(&c, "swap-fail", &img, json!({}));
    console_until(&c, &c.admin, &id, "STRATUS-TEST-IMAGE OK");
    let old = new_volume(&c, "sf-old", None);
    let broken = new_volume(&c, "sf-broken", None);
    let good = new_volume(&c, "sf-good", None);
    let old_file = vol_file(&c, &old);
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x3c 0 1M"])
        .arg(&old_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(attach(&c, &id, json!({"volumeId": old})).status, 200);
    wait_status(&vc, &c.admin, &old, "in-use");
    std::fs::remove_file(vol_file(&c, &broken)).unwrap();

    let r = swap(&c, &c.admin, &id, &old, &broken);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &broken, "available");
    let o = wait_status(&vc, &c.admin, &old, "in-use");
    assert_eq!(o["attachments"][0]["device"], "/dev/vdb", "{o}");
    assert_eq!(o["attachments"][0]["server_id"], id.as_str(), "{o}");
    assert_eq!(attachment_ids(&c, &id), vec![old.clone()]);
    assert!(locked(&old_file), "the guest keeps the old volume");

    let r = swap(&c, &c.admin, &id, &old, &good);
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &good, "in-use");
    wait_status(&vc, &c.admin, &old, "available");
    assert!(qemu_io_reads(&vol_file(&c, &good), "read -P 0x3c 0 1M"));
    assert!(!locked(&old_file));
}

/// Waits for volume `id`'s migration to end; the volume (admin view).
fn migrated(c: &Cloud, id: &str) -> serde_json::Value {
    let vc = vol_client(c);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let v = vc.get(&format!("/volumes/{id}"), &c.admin).body["volume"].clone();
        if v["migration_status"] != "migrating" && !v["migration_status"].is_null() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "volume {id} still migrating: {v}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn migrate(c: &Cloud, id: &str, host: &str) -> super::common::Resp {
    vol_client(c).post(
        &format!("/volumes/{id}/action"),
        &c.admin,
        json!({"os-migrate_volume": {"host": host}}),
    )
}

/// Cinder's migration of a volume in use (`os-migrate_volume`): the
/// running VM's QEMU mirrors the guest's disk onto the destination's
/// copy (here over NBD from node-b), the guest goes on writing, the
/// source's file goes, a hard reboot opens the new place, and the
/// volume moves back home the same way (now from NBD onto the local
/// file). Detached at the end, the file is let go.
#[test]
fn volume_migrate_in_use_moves_the_running_guest_disk() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let vc = vol_client(&c);
    let img = image_id(&c, "busybox-vm");
    // The VM and its volume are on the cloud's own node (node-b joins
    // after them).
    let vid = new_volume(&c, "moving", None);
    let node1 =
        vc.get(&format!("/volumes/{vid}"), &c.admin).body["volume"]["os-vol-host-attr:host"]
            .as_str()
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .to_string();
    let file1 = vol_file(&c, &vid);
    let o = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 1M"])
        .arg(&file1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let serial: String = vid.chars().take(20).collect();
    let ud = base64::engine::general_purpose::STANDARD.encode(size_reporter(&serial, true));
    let id = boot(&c, "vm", &img, json!({"user_data": ud}));
    console_until(&c, &c.admin, &id, "SIZE");
    assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
    wait_status(&vc, &c.admin, &vid, "in-use");
    guest_size_until(&c, &id, 2 * 1024 * 1024);

    let dir_b = c.server.data_dir().join("node-b-volumes");
    std::fs::create_dir_all(&dir_b).unwrap();
    let b = super::common::Agent::start(
        &c.server,
        "node-b",
        &[
            "--heartbeat",
            "1",
            "--volumes",
            dir_b.to_str().unwrap(),
            "--volume-backend",
            "fast",
        ],
    );
    c.wait_nodes_logged(2, &b.log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while migrate(&c, &vid, "node-b@fast").status != 202 {
        assert!(Instant::now() < deadline, "node-b's storage never came up");
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = migrated(&c, &vid);
    assert_eq!(v["migration_status"], "success", "{v}");
    assert_eq!(v["status"], "in-use", "{v}");
    assert_eq!(v["os-vol-host-attr:host"], "node-b@fast#fast", "{v}");
    assert!(v["attachments"].to_string().contains(&id), "{v}");
    let file_b = dir_b.join(format!("volume-{vid}.qcow2"));
    assert!(
        qemu_io_reads(&file_b, "read -P 0x5a 0 1M"),
        "the volume's data is on node-b"
    );
    assert!(
        qemu_io_reads(&file_b, "read -P 0x47 2M 1"),
        "and the guest's"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while file1.exists() {
        assert!(Instant::now() < deadline, "the source's file stayed");
        std::thread::sleep(Duration::from_millis(250));
    }
    // The guest goes on with its disk (now over NBD from node-b).
    let before = console(&c, &id).matches("SIZE 2097152 END").count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while console(&c, &id).matches("SIZE 2097152 END").count() < before + 3 {
        assert!(Instant::now() < deadline, "the guest stopped");
        std::thread::sleep(Duration::from_millis(300));
    }

    // A hard reboot opens the new place.
    hard_reboot(&c, &id);
    wait_booted_again(&c, &id);
    guest_size_until(&c, &id, 2 * 1024 * 1024);

    // Home again: from node-b's export onto the local file.
    assert_eq!(migrate(&c, &vid, &node1).status, 202);
    let v = migrated(&c, &vid);
    assert_eq!(v["migration_status"], "success", "{v}");
    assert_eq!(
        v["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str(),
        "{v}"
    );
    assert!(qemu_io_reads(&file1, "read -P 0x5a 0 1M"));
    assert!(locked(&file1), "QEMU holds the local file again");
    let deadline = Instant::now() + Duration::from_secs(60);
    while file_b.exists() {
        assert!(Instant::now() < deadline, "node-b's file stayed");
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = c.req(
        "DELETE",
        &format!("/servers/{id}/os-volume_attachments/{vid}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "available");
    assert!(!locked(&file1));
    drop(b);
}
