//! Volumes attached to servers (block storage slice 2): the real
//! `openstack` CLI's `server add volume` / `server remove volume`, both
//! sides' views and states, the refusals in each API's own shape, the
//! legacy Cinder attach actions, and a real QEMU VM whose guest sees the
//! hot-plugged disk come and go (and keeps it across a reboot).

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::compute::Cloud;
use super::compute_real::{console_until, image_id, require_qemu, require_runtime, test_images};
use super::volume::{fault, vol_client, vol_file, wait_status, wait_storage};

/// A cloud with the test images imported and its node registered.
pub(super) fn cloud(driver: Option<&str>) -> Cloud {
    let dir = test_images();
    let mut args = vec!["--import-images", dir.to_str().unwrap()];
    if let Some(d) = driver {
        args.extend(["--driver", d]);
    }
    let c = Cloud::start(&args);
    c.wait_nodes(1);
    wait_storage(&c);
    c
}

pub(super) fn boot(c: &Cloud, name: &str, image: &str, extra: Value) -> String {
    let r = c.boot(&c.admin, name, image, "1", extra);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    id
}

pub(super) fn new_volume(c: &Cloud, name: &str, vtype: Option<&str>) -> String {
    let v = vol_client(c);
    let mut body = json!({"volume": {"size": 1, "name": name}});
    if let Some(t) = vtype {
        body["volume"]["volume_type"] = json!(t);
    }
    let r = v.post("/volumes", &c.admin, body);
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&v, &c.admin, &id, "available");
    id
}

/// Nova's attach at microversion 2.79 (tag and delete_on_termination).
pub(super) fn attach(c: &Cloud, server: &str, body: Value) -> super::common::Resp {
    c.nova.raw(
        "POST",
        &format!("/servers/{server}/os-volume_attachments"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.79")],
        Some(json!({"volumeAttachment": body}).to_string()),
    )
}

/// Asserts Nova's fault shape (`{"<name>": {"code", "message"}}`).
pub(super) fn nova_fault(r: &super::common::Resp, code: u16, name: &str) -> String {
    assert_eq!(r.status, code, "{}", r.body);
    let f = &r.body[name];
    assert_eq!(f["code"], code, "{}", r.body);
    f["message"].as_str().unwrap_or_default().to_string()
}

/// Everything but the guest, on fake nodes (a fake VM takes any volume).
#[test]
fn volume_attach_api_states_and_refusals() {
    let c = cloud(Some("fake"));
    let vm_img = image_id(&c, "busybox-vm");
    let ctr_img = image_id(&c, "busybox");
    let a = boot(&c, "a", &vm_img, json!({}));
    let b = boot(&c, "b", &vm_img, json!({}));
    let ctr = boot(&c, "ctr", &ctr_img, json!({}));
    let vc = vol_client(&c);
    let v1 = new_volume(&c, "v1", None);

    let r = attach(
        &c,
        &a,
        json!({"volumeId": v1, "tag": "data", "delete_on_termination": false}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let att = &r.body["volumeAttachment"];
    assert_eq!(att["device"], "/dev/vdb", "{att}");
    assert_eq!(att["serverId"], a.as_str());
    assert_eq!(att["volumeId"], v1.as_str());
    assert_eq!(att["tag"], "data");
    assert_eq!(att["delete_on_termination"], false);
    let vol = wait_status(&vc, &c.admin, &v1, "in-use");
    let atts = vol["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 1, "{vol}");
    assert_eq!(atts[0]["server_id"], a.as_str());
    assert_eq!(atts[0]["device"], "/dev/vdb");
    assert!(atts[0]["attachment_id"].is_string() && atts[0]["attached_at"].is_string());

    // Both sides show it.
    let l = c.req(
        "GET",
        &format!("/servers/{a}/os-volume_attachments"),
        &c.admin,
        None,
    );
    assert_eq!(
        l.body["volumeAttachments"][0]["volumeId"],
        v1.as_str(),
        "{}",
        l.body
    );
    assert!(
        l.body["volumeAttachments"][0].get("tag").is_none(),
        "no tag at 2.38"
    );
    let s = c.req("GET", &format!("/servers/{a}"), &c.admin, None);
    assert_eq!(
        s.body["server"]["os-extended-volumes:volumes_attached"],
        json!([{"id": v1, "delete_on_termination": false}])
    );

    // Refusals, each in its API's shape.
    let m = nova_fault(&attach(&c, &b, json!({"volumeId": v1})), 400, "badRequest");
    assert!(m.contains("in-use"), "{m}");
    // Containers take volumes too (the fake node takes any).
    let v2 = new_volume(&c, "v2", None);
    let r = attach(&c, &ctr, json!({"volumeId": v2}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &v2, "in-use");
    let r = vc.delete(&format!("/volumes/{v1}"), &c.admin);
    assert_eq!(r.status, 400);
    assert!(fault(&r, "badRequest").contains("in-use"));
    let r = c.req(
        "DELETE",
        &format!("/servers/{b}/os-volume_attachments/{v1}"),
        &c.admin,
        None,
    );
    nova_fault(&r, 404, "itemNotFound");
    let r = attach(&c, &a, json!({"volumeId": "nope"}));
    nova_fault(&r, 404, "itemNotFound");
    let r = attach(&c, &a, json!({"device": "/dev/vdc"}));
    nova_fault(&r, 400, "badRequest");
    let r = attach(&c, &a, json!({"volumeId": v1, "bogus": 1}));
    nova_fault(&r, 400, "badRequest");
    // Another project's volume is not there for this one.
    let (_, other) = c.project("other");
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{a}/os-volume_attachments"),
        Some(&other),
        &[],
        Some(json!({"volumeAttachment": {"volumeId": v1}}).to_string()),
    );
    nova_fault(&r, 404, "itemNotFound");
    // A server in error.
    let v3 = new_volume(&c, "v3", None);
    let r = c.req(
        "POST",
        &format!("/servers/{b}/action"),
        &c.admin,
        Some(json!({"os-resetState": {"state": "error"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let m = nova_fault(
        &attach(&c, &b, json!({"volumeId": v3})),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("attach_volume"), "{m}");
    let r = c.req(
        "POST",
        &format!("/servers/{b}/action"),
        &c.admin,
        Some(json!({"os-resetState": {"state": "active"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    // A server with volumes is not live-migrated yet (its volumes follow
    // a cold move: `it::volume_nbd`).
    let r = c.nova.raw(
        "POST",
        &format!("/servers/{a}/action"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.30")],
        Some(json!({"os-migrateLive": {"host": null, "block_migration": "auto"}}).to_string()),
    );
    let m = nova_fault(&r, 409, "conflictingRequest");
    assert!(m.contains("volumes attached"), "{m}");

    // The asked device when free; the next free one otherwise.
    let r = attach(&c, &a, json!({"volumeId": v3, "device": "/dev/vdd"}));
    assert_eq!(
        r.body["volumeAttachment"]["device"], "/dev/vdd",
        "{}",
        r.body
    );
    wait_status(&vc, &c.admin, &v3, "in-use");

    // Multiattach types let a volume go to a second server.
    let r = vc.post(
        "/types",
        &c.admin,
        json!({"volume_type": {"name": "shared", "extra_specs": {"multiattach": "<is> True"}}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let vm = new_volume(&c, "vm", Some("shared"));
    assert_eq!(
        attach(&c, &a, json!({"volumeId": vm})).body["volumeAttachment"]["device"],
        "/dev/vdc"
    );
    wait_status(&vc, &c.admin, &vm, "in-use");
    // ... but share none: not from a VM to a container, nor back.
    let m = nova_fault(
        &attach(&c, &ctr, json!({"volumeId": vm})),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("container"), "{m}");
    let vs = new_volume(&c, "vs", Some("shared"));
    assert_eq!(attach(&c, &ctr, json!({"volumeId": vs})).status, 200);
    wait_status(&vc, &c.admin, &vs, "in-use");
    let m = nova_fault(
        &attach(&c, &a, json!({"volumeId": vs})),
        409,
        "conflictingRequest",
    );
    assert!(m.contains("container"), "{m}");
    let r = attach(&c, &b, json!({"volumeId": vm}));
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while vc.get(&format!("/volumes/{vm}"), &c.admin).body["volume"]["attachments"]
        .as_array()
        .map(Vec::len)
        != Some(2)
    {
        assert!(Instant::now() < deadline, "second attachment never settled");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Detach: the volume is available again and the server forgets it.
    let r = c.req(
        "DELETE",
        &format!("/servers/{a}/os-volume_attachments/{v1}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let vol = wait_status(&vc, &c.admin, &v1, "available");
    assert_eq!(vol["attachments"], json!([]));
    let r = c.req(
        "GET",
        &format!("/servers/{a}/os-volume_attachments/{v1}"),
        &c.admin,
        None,
    );
    nova_fault(&r, 404, "itemNotFound");

    // Names Nova's pattern takes but no volume slot (Tempest's `xvdb`)
    // are ignored, as Nova's libvirt driver does: the next free slot,
    // here the one v1 left. Names outside the pattern are a 400.
    let vx = new_volume(&c, "vx", None);
    nova_fault(
        &attach(&c, &a, json!({"volumeId": vx, "device": "/dev/sd b"})),
        400,
        "badRequest",
    );
    let r = attach(&c, &a, json!({"volumeId": vx, "device": "/dev/xvdb"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["volumeAttachment"]["device"], "/dev/vdb",
        "{}",
        r.body
    );
    wait_status(&vc, &c.admin, &vx, "in-use");

    // Deleting a server lets its volumes go.
    assert_eq!(
        c.req("DELETE", &format!("/servers/{a}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &a);
    wait_status(&vc, &c.admin, &v3, "available");
    wait_status(&vc, &c.admin, &vx, "available");
    let vol = vc.get(&format!("/volumes/{vm}"), &c.admin).body;
    assert_eq!(vol["volume"]["status"], "in-use", "still on b: {vol}");
    assert_eq!(vol["volume"]["attachments"].as_array().unwrap().len(), 1);

    // Cinder's legacy actions change state only.
    let act = |id: &str, body: Value| {
        vc.post(&format!("/volumes/{id}/action"), &c.admin, body)
            .status
    };
    assert_eq!(act(&v1, json!({"os-reserve": {}})), 202);
    wait_status(&vc, &c.admin, &v1, "attaching");
    assert_eq!(act(&v1, json!({"os-unreserve": {}})), 202);
    wait_status(&vc, &c.admin, &v1, "available");
    assert_eq!(act(&v1, json!({"os-begin_detaching": {}})), 400);
    assert_eq!(
        act(
            &v1,
            json!({"os-attach": {"instance_uuid": b, "mountpoint": "/dev/vdz", "mode": "rw"}})
        ),
        202
    );
    let vol = wait_status(&vc, &c.admin, &v1, "in-use");
    assert_eq!(vol["attachments"][0]["device"], "/dev/vdz");
    assert_eq!(act(&v1, json!({"os-begin_detaching": {}})), 202);
    wait_status(&vc, &c.admin, &v1, "detaching");
    assert_eq!(act(&v1, json!({"os-roll_detaching": {}})), 202);
    wait_status(&vc, &c.admin, &v1, "in-use");
    assert_eq!(act(&v1, json!({"os-detach": {}})), 202);
    wait_status(&vc, &c.admin, &v1, "available");
    assert_eq!(act(&v1, json!({"os-attach": {"mode": "rw"}})), 400);
}

/// The console's last line of disk serials the guest printed.
fn last_serials(out: &str) -> Option<String> {
    // Only what the guest printed since it last booted.
    let boot = out.rfind("STRATUS-TEST-IMAGE OK").unwrap_or(0);
    out[boot..]
        .lines()
        .rev()
        .find(|l| l.starts_with("SERIALS"))
        .map(str::to_string)
}

fn serials_until(c: &Cloud, id: &str, want: bool, serial: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(json!({"os-getConsoleOutput": {"length": 30}})),
        );
        let out = r.body["output"].as_str().unwrap_or_default().to_string();
        if let Some(l) = last_serials(&out)
            && l.contains(serial) == want
        {
            return;
        }
        if Instant::now() > deadline {
            let dir = c.server.data_dir().join(format!("agent/vms/{id}"));
            let log = std::fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            let rec = std::fs::read_to_string(dir.join("vm.json")).unwrap_or_default();
            let st = c.req("GET", &format!("/servers/{id}"), &c.admin, None).body;
            let slog = std::fs::read_to_string(c.server.log_path()).unwrap_or_default();
            let slog: Vec<&str> = slog
                .lines()
                .filter(|l| l.contains("volume") || l.contains("WARN"))
                .collect();
            panic!(
                "the guest never {} {serial}:\n{out}\nqemu.log: {log}\nvm.json: {rec}\ncmdline: {}\nserver: {st}\nlog:\n{}",
                if want { "saw" } else { "lost" },
                qemu_cmdline(c, id),
                slog.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn qemu_cmdline(c: &Cloud, id: &str) -> String {
    let f = c.server.data_dir().join(format!("agent/vms/{id}/qemu.pid"));
    let pid = std::fs::read_to_string(f).unwrap_or_default();
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// A busybox VM named `vm` whose guest prints the serials of its disks
/// (`SERIALS ... END`) every second, booted and printing.
fn boot_serials_guest(c: &Cloud) -> String {
    let img = image_id(c, "busybox-vm");
    let script = "#!/bin/sh\n(while true; do s=''; for f in /sys/block/vd*/serial; do s=\"$s $(cat $f)\"; done; echo \"SERIALS$s END\"; sleep 1; done) &\n";
    let ud = base64::engine::general_purpose::STANDARD.encode(script);
    let id = boot(c, "vm", &img, json!({"user_data": ud}));
    console_until(c, &c.admin, &id, "SERIALS");
    id
}

/// A detach asked right after a hard reboot, while the guest still
/// boots: the first unplug request reaches a guest whose ACPI is not up
/// and is lost; the node asks again until the guest ejects the disk, so
/// the volume ends `available` and the booted guest does not have it.
#[test]
fn volume_detach_while_the_guest_boots() {
    require_runtime();
    require_qemu();
    let c = cloud(None);
    let id = boot_serials_guest(&c);
    let vid = new_volume(&c, "data", None);
    let serial: String = vid.chars().take(20).collect();
    assert_eq!(attach(&c, &id, json!({"volumeId": vid})).status, 200);
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &vid, "in-use");
    serials_until(&c, &id, true, &serial);

    super::volume_online::hard_reboot(&c, &id);
    let r = c.req(
        "DELETE",
        &format!("/servers/{id}/os-volume_attachments/{vid}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = vc.get(&format!("/volumes/{vid}"), &c.admin).body["volume"].clone();
        if v["status"] == "available" {
            assert_eq!(v["attachments"], json!([]), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the detach never ended: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    serials_until(&c, &id, false, &serial);
}

/// A real VM: `server add volume` hot-plugs the qcow2 file (the guest
/// sees a disk with the volume's serial), a hard reboot keeps it (on
/// QEMU's command line), `server remove volume` unplugs it.
#[test]
fn volume_attach_cli_hot_plugs_into_a_real_vm() {
    if cli().is_none() {
        return;
    }
    require_runtime();
    require_qemu();
    let mut c = cloud(None);
    let Some(os) = Os::new(&c.server) else { return };
    let id = boot_serials_guest(&c);
    let vid = new_volume(&c, "data", None);
    let serial: String = vid.chars().take(20).collect();
    serials_until(&c, &id, false, &serial);

    os.ok(&["server", "add", "volume", "vm", "data"]);
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &vid, "in-use");
    serials_until(&c, &id, true, &serial);
    let shown = os.json(&["server", "show", "vm"]);
    assert!(
        shown["volumes_attached"].to_string().contains(&vid),
        "{shown}"
    );
    let vol = os.json(&["volume", "show", "data"]);
    assert_eq!(vol["status"], "in-use", "{vol}");
    assert!(vol["attachments"].to_string().contains(&id), "{vol}");
    let err = os.fails(&["volume", "delete", "data"]);
    assert!(err.contains("in-use") || err.contains("attached"), "{err}");

    // A reboot starts QEMU with the volume on its command line.
    let file = vol_file(&c, &vid);
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &c.admin,
        Some(json!({"reboot": {"type": "HARD"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !qemu_cmdline(&c, &id).contains(&file.display().to_string()) {
        assert!(
            Instant::now() < deadline,
            "rebooted QEMU lacks the volume: {}",
            qemu_cmdline(&c, &id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait(&c.admin, &id, "ACTIVE");
    // The guest booted again (hot-unplug needs a running guest's ack).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &c.admin,
            Some(json!({"os-getConsoleOutput": {}})),
        );
        let out = r.body["output"].as_str().unwrap_or_default();
        let boot = out.rfind("STRATUS-TEST-IMAGE OK");
        if out.matches("STRATUS-TEST-IMAGE OK").count() >= 2
            && boot.is_some_and(|b| out[b..].contains("SERIALS"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not boot again:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    serials_until(&c, &id, true, &serial);

    os.ok(&["server", "remove", "volume", "vm", "data"]);
    let vol = wait_status(&vc, &c.admin, &vid, "available");
    assert_eq!(vol["attachments"], json!([]));
    serials_until(&c, &id, false, &serial);
    let shown = os.json(&["server", "show", "vm"]);
    assert!(
        !shown["volumes_attached"].to_string().contains(&vid),
        "{shown}"
    );
    os.ok(&["volume", "delete", "data"]);

    // A crash of controller and agent (one process) right after an
    // attach was asked: after the restart the attach ends whole, in a
    // guest that ran on (the same QEMU, adopted).
    let v2 = new_volume(&c, "crash", None);
    let serial2: String = v2.chars().take(20).collect();
    let qemu = qemu_cmdline(&c, &id);
    assert!(qemu.contains("qemu"), "QEMU runs: {qemu:?}");
    let r = attach(&c, &id, json!({"volumeId": v2}));
    assert_eq!(r.status, 200, "{}", r.body);
    c.server.stop("-KILL");
    c.server.restart_after_stop();
    c.admin = c.ks.token("admin", &c.server.admin_password, Some("admin"));
    c.wait_nodes(1);
    wait_status(&vol_client(&c), &c.admin, &v2, "in-use");
    serials_until(&c, &id, true, &serial2);
    assert_eq!(
        qemu_cmdline(&c, &id),
        qemu,
        "the VM was adopted, not restarted"
    );
    assert_eq!(
        c.req("DELETE", &format!("/servers/{id}"), &c.admin, None)
            .status,
        204
    );
    c.wait_gone(&c.admin, &id);
    wait_status(&vol_client(&c), &c.admin, &v2, "available");
}

#[test]
fn volume_attach_to_a_shelved_offloaded_server_and_rescue_with_volumes() {
    require_runtime();
    let c = cloud(None);
    let img = image_id(&c, "busybox");
    let vc = vol_client(&c);
    let s = boot(&c, "shelved", &img, json!({}));
    let act = |body: Value| {
        c.req(
            "POST",
            &format!("/servers/{s}/action"),
            &c.admin,
            Some(body),
        )
    };
    assert_eq!(act(json!({"shelve": null})).status, 202);
    c.wait(&c.admin, &s, "SHELVED_OFFLOADED");

    // Attached at once: no node holds the server.
    let v = new_volume(&c, "later", None);
    let r = attach(&c, &s, json!({"volumeId": v}));
    assert_eq!(r.status, 200, "{}", r.body);
    let vol = wait_status(&vc, &c.admin, &v, "in-use");
    assert_eq!(vol["attachments"][0]["server_id"], s.as_str(), "{vol}");
    let r = c.req(
        "GET",
        &format!("/servers/{s}/os-volume_attachments"),
        &c.admin,
        None,
    );
    assert_eq!(
        r.body["volumeAttachments"][0]["volumeId"],
        v.as_str(),
        "{}",
        r.body
    );
    // Detached at once too.
    let r = c.req(
        "DELETE",
        &format!("/servers/{s}/os-volume_attachments/{v}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &v, "available");

    // Attached while offloaded, then unshelved: the volume goes along.
    assert_eq!(attach(&c, &s, json!({"volumeId": v})).status, 200);
    wait_status(&vc, &c.admin, &v, "in-use");
    assert_eq!(act(json!({"unshelve": null})).status, 202);
    c.wait(&c.admin, &s, "ACTIVE");
    let vol = wait_status(&vc, &c.admin, &v, "in-use");
    assert_eq!(vol["attachments"][0]["server_id"], s.as_str(), "{vol}");

    // Rescued with the volume attached; a detach while rescued is a 409.
    assert_eq!(act(json!({"rescue": {}})).status, 200);
    c.wait(&c.admin, &s, "RESCUE");
    let r = c.req(
        "DELETE",
        &format!("/servers/{s}/os-volume_attachments/{v}"),
        &c.admin,
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(act(json!({"unrescue": null})).status, 202);
    c.wait(&c.admin, &s, "ACTIVE");
    wait_status(&vc, &c.admin, &v, "in-use");
}

#[test]
fn volume_attach_update_and_swap_refusals() {
    let c = cloud(Some("fake"));
    let img = image_id(&c, "busybox-vm");
    let vc = vol_client(&c);
    let s = boot(&c, "upd", &img, json!({}));
    let v = new_volume(&c, "upd", None);
    let other = new_volume(&c, "other", None);
    assert_eq!(attach(&c, &s, json!({"volumeId": v})).status, 200);
    wait_status(&vc, &c.admin, &v, "in-use");
    let put = |mv: &str, uri_vol: &str, body: Value| {
        c.nova.raw(
            "PUT",
            &format!("/servers/{s}/os-volume_attachments/{uri_vol}"),
            Some(&c.admin),
            &[("OpenStack-API-Version", mv)],
            Some(json!({"volumeAttachment": body}).to_string()),
        )
    };
    // A volume the server does not have: 404.
    let r = put(
        "compute 2.1",
        "0b1e6e38-0000-4000-8000-000000000000",
        json!({"volumeId": v}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    // A swap: the new volume must exist (the rest: `it::volume_online`).
    let r = put(
        "compute 2.1",
        &v,
        json!({"volumeId": "0b1e6e38-0000-4000-8000-000000000000"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // 2.85: delete_on_termination changes, nothing else does.
    let r = put(
        "compute 2.85",
        &v,
        json!({"volumeId": v, "delete_on_termination": true}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let r = c.nova.raw(
        "GET",
        &format!("/servers/{s}/os-volume_attachments/{v}"),
        Some(&c.admin),
        &[("OpenStack-API-Version", "compute 2.85")],
        None,
    );
    assert_eq!(
        r.body["volumeAttachment"]["delete_on_termination"], true,
        "{}",
        r.body
    );
    let r = put(
        "compute 2.85",
        &v,
        json!({"volumeId": v, "device": "/dev/vdk"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = put(
        "compute 2.85",
        &v,
        json!({"volumeId": v, "delete_on_termination": "yes"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // A member may update at 2.85 but not swap.
    let (_, member) = c.project("upd-member");
    let r = c.nova.raw(
        "PUT",
        &format!("/servers/{s}/os-volume_attachments/{v}"),
        Some(&member),
        &[("OpenStack-API-Version", "compute 2.1")],
        Some(json!({"volumeAttachment": {"volumeId": other}}).to_string()),
    );
    assert!(r.status == 403 || r.status == 404, "{}", r.body);
}
