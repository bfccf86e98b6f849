//! Volumes of one node used by servers on another: the storage node
//! exports the volume over NBD (TLS with its key, `qemu-storage-daemon`);
//! a VM's QEMU on the other node reads and writes it there, and a
//! container gets it as a file system through a daemon of its node.

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::json;

use super::common::Agent;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime};
use super::volume::{vol_client, vol_file, wait_status};
use super::volume_attach::{attach, cloud, new_volume};

const MARK: &str = "NBD-MARK-7";

/// Whether some process holds the write lock of the qcow2 file (a
/// `qemu-img info` without `-U` then fails).
fn locked(path: &std::path::Path) -> bool {
    !Command::new("qemu-img")
        .arg("info")
        .arg(path)
        .output()
        .expect("qemu-img")
        .status
        .success()
}

/// A VM on node-b running the guest script `script`, with volume `vid`
/// attached: its id.
fn vm_on_b(c: &super::compute::Cloud, name: &str, img: &str, script: &str, vid: &str) -> String {
    let id = super::volume_attach::boot(
        c,
        name,
        img,
        json!({
            "availability_zone": "nova:node-b",
            "user_data": base64::engine::general_purpose::STANDARD.encode(script),
        }),
    );
    let r = attach(c, &id, json!({"volumeId": vid}));
    assert_eq!(r.status, 200, "{}", r.body);
    id
}

/// Detaches volume `vid` from `server` and waits for it to be available.
fn detach(c: &super::compute::Cloud, server: &str, vid: &str) {
    let r = c.req(
        "DELETE",
        &format!("/servers/{server}/os-volume_attachments/{vid}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vol_client(c), &c.admin, vid, "available");
}

/// Waits for the volume file's write lock to go (the export let it go).
fn wait_unlocked(file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while locked(file) {
        assert!(
            Instant::now() < deadline,
            "the export never let the file go"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The pids of the volume export daemons of the cloud in `prefix`.
fn export_daemons(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-storage-daemon")
            && cmd.contains(prefix)
            && cmd.contains("volume-export")
        {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// A guest script: finds the disk whose serial is the volume's, then
/// `body` with the disk as `/dev/$d`.
fn on_volume(volume: &str, body: &str) -> String {
    let serial: String = volume.chars().take(20).collect();
    format!(
        "#!/bin/sh\nd=\nwhile [ -z \"$d\" ]; do for s in /sys/block/vd*; do [ \"$(cat $s/serial 2>/dev/null)\" = \"{serial}\" ] && d=${{s##*/}}; done; [ -z \"$d\" ] && sleep 1; done\n[ -b /dev/$d ] || mknod /dev/$d b $(tr ':' ' ' < /sys/block/$d/dev)\n{body}\n"
    )
}

#[test]
fn volume_nbd_vm_on_another_node_writes_and_reads_over_the_network() {
    require_runtime();
    require_qemu();
    let mut c = cloud(None);
    // node-b keeps no volumes: its VMs reach the cloud's storage node.
    let b = Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let vc = vol_client(&c);
    let vid = new_volume(&c, "shared", None);
    let file = vol_file(&c, &vid);
    let img = image_id(&c, "busybox-vm");

    // A VM on node-b writes the marker into the volume.
    let write = on_volume(
        &vid,
        &format!(
            "printf '{MARK}' > /tmp/m\ndd if=/tmp/m of=/dev/$d conv=fsync 2>/dev/null\necho WROTE-MARK"
        ),
    );
    let writer = vm_on_b(&c, "writer", &img, &write, &vid);
    let v = wait_status(&vc, &c.admin, &vid, "in-use");
    assert_eq!(v["attachments"][0]["server_id"], writer.as_str(), "{v}");
    assert_eq!(v["attachments"][0]["host_name"], "node-b", "{v}");
    console_until(&c, &c.admin, &writer, "WROTE-MARK");
    // The bytes are in the storage node's file, which the export holds.
    let tmp = c.server.data_dir().join("head.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(&file)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success());
    let data = std::fs::read(&tmp).unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert_eq!(&data[..MARK.len()], MARK.as_bytes());
    assert!(locked(&file), "the export holds the volume's file");

    // The controller and the storage node's agent killed and started
    // again: the export daemon (and the VM's connection to it) lives on,
    // and the agent finds it again rather than starting a second one.
    let prefix = c.server.data_dir().display().to_string();
    let daemons = || export_daemons(&prefix);
    let before = daemons();
    assert_eq!(before.len(), 1, "{before:?}");
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    super::volume::wait_storage(&c);
    wait_status(&vc, &c.admin, &vid, "in-use");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemons(), before);
    assert!(locked(&file), "the export holds the volume's file");

    // Detached: the export goes, the file is free again.
    detach(&c, &writer, &vid);
    wait_unlocked(&file);

    // Another VM on node-b reads the first one's writes over NBD.
    let read = on_volume(
        &vid,
        &format!(
            "echo READ-$(dd if=/dev/$d bs={} count=1 2>/dev/null)-END",
            MARK.len()
        ),
    );
    let reader = vm_on_b(&c, "reader", &img, &read, &vid);
    wait_status(&vc, &c.admin, &vid, "in-use");
    console_until(&c, &c.admin, &reader, &format!("READ-{MARK}-END"));

    // The reader, deleted with the volume attached: the volume comes
    // back available and unexported.
    assert_eq!(
        c.req("DELETE", &format!("/servers/{reader}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &reader);
    wait_status(&vc, &c.admin, &vid, "available");
    wait_unlocked(&file);

    // A container on node-b: the volume is a file system at
    // /mnt/volumes/vdb, made through the export on first use.
    let ctr = super::volume_attach::boot(
        &c,
        "ctr",
        &image_id(&c, "busybox"),
        json!({"availability_zone": "nova:node-b"}),
    );
    let r = attach(&c, &ctr, json!({"volumeId": vid}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");
    assert!(locked(&file), "the export holds the volume's file");
    detach(&c, &ctr, &vid);
    let st = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(&file)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success());
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(&tmp)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&tmp);
    assert_eq!(String::from_utf8_lossy(&blkid.stdout).trim(), "ext4");
    for id in [&writer, &ctr] {
        assert_eq!(
            c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
                .status,
            204
        );
        c.wait_gone(&c.admin, id);
    }
}

#[test]
fn volume_nbd_volumes_follow_a_migrated_or_reverted_server() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let b = Agent::start(&c.server, "node-b", &["--heartbeat", "1"]);
    c.wait_nodes_logged(2, &b.log);
    let vc = vol_client(&c);
    let vid = new_volume(&c, "follows", None);
    let file = vol_file(&c, &vid);
    let home = c
        .req("GET", "/os-services?binary=nova-compute", &c.admin, None)
        .body["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["host"].as_str())
        .find(|h| *h != "node-b")
        .unwrap()
        .to_string();
    // Each boot prints what the volume starts with, and writes the
    // marker when it is not there yet.
    let script = on_volume(
        &vid,
        &format!(
            "m=$(dd if=/dev/$d bs={n} count=1 2>/dev/null | tr -d '\\000')\necho \"READ-$m-END\"\nif [ \"$m\" != \"{MARK}\" ]; then printf '{MARK}' > /tmp/m; dd if=/tmp/m of=/dev/$d conv=fsync 2>/dev/null; echo WROTE-MARK; fi",
            n = MARK.len()
        ),
    );
    let id = super::volume_attach::boot(
        &c,
        "mover",
        &image_id(&c, "busybox-vm"),
        json!({
            "availability_zone": format!("nova:{home}"),
            "user_data": base64::engine::general_purpose::STANDARD.encode(script),
        }),
    );
    let r = attach(&c, &id, json!({"volumeId": vid}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");
    console_until(&c, &c.admin, &id, "WROTE-MARK");
    assert!(!locked_by_export(&c, &vid), "a local VM needs no export");

    let act = |body: serde_json::Value| {
        c.nova.raw(
            "POST",
            &format!("/servers/{id}/action"),
            Some(&c.admin),
            &[("OpenStack-API-Version", "compute 2.56")],
            Some(body.to_string()),
        )
    };
    // Migrated to node-b: the guest boots there and finds the marker
    // over NBD.
    let r = act(json!({"migrate": {"host": "node-b"}}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    console_until(&c, &c.admin, &id, &format!("READ-{MARK}-END"));
    assert!(
        locked_by_export(&c, &vid),
        "node-b reaches it through the export"
    );

    // Back to the volume's own node, reverted: the export lets the
    // file go and the guest on node-b reads it again.
    let r = act(json!({"migrate": {"host": home}}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"revertResize": null})).status, 202);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], "node-b", "{s}");
    // Migrated home for good: the QEMU there opens the file itself once
    // the export has let it go.
    let r = act(json!({"migrate": {"host": home}}));
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &id, "VERIFY_RESIZE");
    assert_eq!(act(json!({"confirmResize": null})).status, 204);
    let s = c.wait(&c.admin, &id, "ACTIVE");
    assert_eq!(s["OS-EXT-SRV-ATTR:host"], home.as_str(), "{s}");
    console_until(&c, &c.admin, &id, &format!("READ-{MARK}-END"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while locked_by_export(&c, &vid) {
        assert!(
            Instant::now() < deadline,
            "the export never let the file go"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(locked(&file), "the VM at home holds its volume's file");
    let v = wait_status(&vc, &c.admin, &vid, "in-use");
    assert_eq!(v["attachments"][0]["server_id"], id.as_str(), "{v}");
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    wait_status(&vc, &c.admin, &vid, "available");
}

/// Whether the storage node's export daemon serves volume `vid` now.
fn locked_by_export(c: &super::compute::Cloud, vid: &str) -> bool {
    let sock = c.server.data_dir().join("agent/volume-export/qmp.sock");
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock) else {
        return false;
    };
    use std::io::{BufRead, BufReader, Write};
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-block-exports\"}\n")
        .unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 {
        line.clear();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v.get("return").is_some() {
            answers.push(v);
        }
    }
    let short: String = vid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(30)
        .collect();
    answers[1]["return"]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["id"] == format!("v{short}").as_str()))
}
