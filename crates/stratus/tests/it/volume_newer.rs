//! Cinder's newer microversions against the real binary, through the real
//! `openstack` CLI where it has the command (`--os-volume-api-version`):
//! the attachments API (3.27, `os-complete` 3.44, `mode` 3.54), user
//! messages (3.3) from a type no backend offers (the capabilities
//! filter), the volume summary (3.12), revert to a snapshot (3.40) and
//! reimage (3.68) checked on the volume's bytes, and the fields and
//! filters later versions add.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::compute_real::image_id;
use super::volume::{fault, vol_client, vol_file, wait_status};
use super::volume_attach::{attach, boot, cloud, new_volume};

fn at(v: &str) -> (&'static str, String) {
    ("OpenStack-API-Version", format!("volume {v}"))
}

/// A request at microversion `v`.
fn call(
    c: &super::common::Client,
    method: &str,
    path: &str,
    tok: &str,
    v: &str,
    body: Option<Value>,
) -> super::common::Resp {
    let (k, val) = at(v);
    c.raw(
        method,
        path,
        Some(tok),
        &[(k, val.as_str())],
        body.map(|b| b.to_string()),
    )
}

/// Runs `qemu-io -c CMD` on a qcow2 file.
fn qemu_io(file: &Path, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(file)
        .output()
        .expect("qemu-io (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether the first MiB of a volume's file is all `byte`.
fn holds_pattern(file: &Path, byte: u8) -> bool {
    // `read -P` fails (non-zero) when the pattern does not match.
    Command::new("qemu-io")
        .args([
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            &format!("read -P {byte:#x} 0 1M"),
        ])
        .arg(file)
        .output()
        .map(|o| {
            o.status.success()
                && !String::from_utf8_lossy(&o.stdout).contains("Pattern verification failed")
        })
        .unwrap_or(false)
}

#[test]
fn volume_attachments_api_reserves_connects_completes_and_deletes() {
    if cli().is_none() {
        return;
    }
    let c = cloud(Some("fake"));
    let Some(os) = Os::new(&c.server) else { return };
    let img = image_id(&c, "busybox-vm");
    let server = boot(&c, "s1", &img, json!({}));
    let vc = vol_client(&c);
    let vol = new_volume(&c, "att", None);

    // Too old a request: the API is not there.
    let r = call(&vc, "GET", "/attachments", &c.admin, "3.26", None);
    assert_eq!(r.status, 404, "{}", r.body);
    fault(&r, "itemNotFound");

    // Reserve (no connector): the volume is reserved for the server.
    let a = os.json(&[
        "--os-volume-api-version",
        "3.54",
        "volume",
        "attachment",
        "create",
        "att",
        "s1",
    ]);
    let aid = a["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("{a}"))
        .to_string();
    assert_eq!(a["Status"], "reserved", "{a}");
    assert_eq!(a["Instance ID"], server.as_str(), "{a}");
    let v = wait_status(&vc, &c.admin, &vol, "reserved");
    assert_eq!(
        v["attachments"],
        json!([]),
        "a reservation is not an attachment yet"
    );
    // A reserved volume cannot be reserved again, nor attached by Nova.
    let r = call(
        &vc,
        "POST",
        "/attachments",
        &c.admin,
        "3.27",
        Some(json!({"attachment": {"volume_uuid": vol, "instance_uuid": server}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    fault(&r, "badRequest");
    let r = attach(&c, &server, json!({"volumeId": vol}));
    assert_eq!(r.status, 400, "{}", r.body);

    // A connector: attaching, and the answer says how to reach the volume.
    let set = os.json(&[
        "--os-volume-api-version",
        "3.54",
        "volume",
        "attachment",
        "set",
        "--host",
        "consumer-1",
        "--mountpoint",
        "/dev/vdq",
        &aid,
    ]);
    assert_eq!(set["Status"], "attaching", "{set}");
    let shown = call(
        &vc,
        "GET",
        &format!("/attachments/{aid}"),
        &c.admin,
        "3.54",
        None,
    );
    assert_eq!(shown.status, 200, "{}", shown.body);
    let info = &shown.body["attachment"]["connection_info"];
    assert_eq!(info["driver_volume_type"], "local", "{info}");
    assert_eq!(info["data"]["name"], format!("volume-{vol}.qcow2"));
    assert_eq!(shown.body["attachment"]["attach_mode"], "rw");
    assert!(vol_file(&c, &vol).exists());

    // Complete needs 3.44; then the volume is in use, attached to it.
    let r = call(
        &vc,
        "POST",
        &format!("/attachments/{aid}/action"),
        &c.admin,
        "3.43",
        Some(json!({"os-complete": null})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    os.ok(&[
        "--os-volume-api-version",
        "3.44",
        "volume",
        "attachment",
        "complete",
        &aid,
    ]);
    let v = wait_status(&vc, &c.admin, &vol, "in-use");
    assert_eq!(v["attachments"][0]["attachment_id"], aid.as_str(), "{v}");
    assert_eq!(v["attachments"][0]["server_id"], server.as_str());
    let listed = os.json(&[
        "--os-volume-api-version",
        "3.27",
        "volume",
        "attachment",
        "list",
        "--volume-id",
        &vol,
    ]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["Status"], "attached", "{listed}");

    // Another project sees none of it.
    let (_p, tok) = c.project("other");
    let r = call(
        &vc,
        "GET",
        &format!("/attachments/{aid}"),
        &tok,
        "3.27",
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = call(&vc, "GET", "/attachments", &tok, "3.27", None);
    assert_eq!(r.body["attachments"], json!([]));
    let r = call(
        &vc,
        "DELETE",
        &format!("/attachments/{aid}"),
        &tok,
        "3.27",
        None,
    );
    assert_eq!(r.status, 404);

    // Delete ends it: the volume is free again.
    os.ok(&[
        "--os-volume-api-version",
        "3.27",
        "volume",
        "attachment",
        "delete",
        &aid,
    ]);
    wait_status(&vc, &c.admin, &vol, "available");

    // Read-only mode (3.54); a bad mode and a mode before 3.54 are 400s.
    let r = call(
        &vc,
        "POST",
        "/attachments",
        &c.admin,
        "3.54",
        Some(
            json!({"attachment": {"volume_uuid": vol, "instance_uuid": server, "mode": "ro", "connector": {"host": "h"}}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["attachment"]["attach_mode"], "ro");
    assert_eq!(r.body["attachment"]["status"], "attaching");
    let ro = r.body["attachment"]["id"].as_str().unwrap().to_string();
    let r = call(
        &vc,
        "DELETE",
        &format!("/attachments/{ro}"),
        &c.admin,
        "3.54",
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["attachments"], json!([]));
    for (v, mode) in [("3.54", "rx"), ("3.53", "ro")] {
        let r = call(
            &vc,
            "POST",
            "/attachments",
            &c.admin,
            v,
            Some(json!({"attachment": {"volume_uuid": vol, "mode": mode}})),
        );
        assert_eq!(r.status, 400, "{v} {mode}: {}", r.body);
    }
    let r = call(
        &vc,
        "POST",
        "/attachments",
        &c.admin,
        "3.27",
        Some(json!({"attachment": {"volume_uuid": vol, "instance_uuid": "not-a-uuid"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // The instance is a server the caller can see.
    let r = call(
        &vc,
        "POST",
        "/attachments",
        &c.admin,
        "3.27",
        Some(
            json!({"attachment": {"volume_uuid": vol, "instance_uuid": "0b0d2f7e-3c1e-4d0a-9a57-5b1f0c4b9d11"}}),
        ),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    wait_status(&vc, &c.admin, &vol, "available");

    // A server's own attach shows here; ending it is the compute API's.
    let r = attach(&c, &server, json!({"volumeId": vol}));
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vol, "in-use");
    let r = call(
        &vc,
        "GET",
        &format!("/attachments/detail?instance_id={server}"),
        &c.admin,
        "3.27",
        None,
    );
    let atts = r.body["attachments"].as_array().unwrap().clone();
    assert_eq!(atts.len(), 1, "{}", r.body);
    assert_eq!(atts[0]["volume_id"], vol.as_str());
    assert_eq!(atts[0]["status"], "attached");
    let nova_att = atts[0]["id"].as_str().unwrap();
    let r = call(
        &vc,
        "DELETE",
        &format!("/attachments/{nova_att}"),
        &c.admin,
        "3.27",
        None,
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(fault(&r, "conflictingRequest").contains("compute API"));
    let r = call(
        &vc,
        "PUT",
        &format!("/attachments/{nova_att}"),
        &c.admin,
        "3.27",
        Some(json!({"attachment": {"connector": {"host": "elsewhere"}}})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = call(
        &vc,
        "POST",
        &format!("/attachments/{nova_att}/action"),
        &c.admin,
        "3.44",
        Some(json!({"os-complete": null})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    // Nothing is rewritten under an attached volume.
    let r = call(
        &vc,
        "POST",
        &format!("/volumes/{vol}/action"),
        &c.admin,
        "3.68",
        Some(json!({"os-reimage": {"image_id": img}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    os.ok(&["server", "remove", "volume", "s1", "att"]);
    wait_status(&vc, &c.admin, &vol, "available");
}

#[test]
fn volume_messages_summary_revert_reimage_and_newer_fields() {
    if cli().is_none() {
        return;
    }
    let c = cloud(Some("fake"));
    let Some(os) = Os::new(&c.server) else { return };
    let vc = vol_client(&c);
    let v = |args: &[&str], ver: &str| {
        let mut a = vec!["--os-volume-api-version", ver];
        a.extend_from_slice(args);
        os.json(&a)
    };

    // A type whose extra specs no backend offers: the volume goes to
    // error, and the project gets a message saying why.
    os.ok(&[
        "volume",
        "type",
        "create",
        "--property",
        "vendor_name=Acme",
        "acme",
    ]);
    os.ok(&[
        "volume",
        "type",
        "create",
        "--property",
        "vendor_name=Stratus",
        "--property",
        "storage_protocol=file",
        "ours",
    ]);
    let bad = os.json(&[
        "volume", "create", "--size", "1", "--type", "acme", "nowhere",
    ]);
    let bad_id = bad["id"].as_str().unwrap().to_string();
    let shown = vc.get(&format!("/volumes/{bad_id}"), &c.admin);
    assert_eq!(shown.body["volume"]["status"], "error", "{}", shown.body);
    let good = new_volume(&c, "fits", Some("ours"));
    assert!(vol_file(&c, &good).exists());

    let msgs = v(&["volume", "message", "list"], "3.3");
    let mine: Vec<&Value> = msgs
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["Resource UUID"] == bad_id.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{msgs}");
    assert_eq!(mine[0]["Event ID"], "VOLUME_VOLUME_001_003", "{msgs}");
    assert!(
        mine[0]["User Message"]
            .as_str()
            .unwrap()
            .contains("Could not find any available weighted backend"),
        "{msgs}"
    );
    let mid = mine[0]["ID"].as_str().unwrap().to_string();
    let r = call(
        &vc,
        "GET",
        &format!("/messages/{mid}"),
        &c.admin,
        "3.2",
        None,
    );
    assert_eq!(r.status, 404, "messages need 3.3: {}", r.body);
    let (_p, tok) = c.project("msgs");
    let r = call(&vc, "GET", &format!("/messages/{mid}"), &tok, "3.3", None);
    assert_eq!(r.status, 404, "another project's message: {}", r.body);
    os.ok(&[
        "--os-volume-api-version",
        "3.3",
        "volume",
        "message",
        "delete",
        &mid,
    ]);
    let r = call(
        &vc,
        "GET",
        &format!("/messages/{mid}"),
        &c.admin,
        "3.3",
        None,
    );
    assert_eq!(r.status, 404);

    // Summary (3.12; metadata 3.36).
    os.ok(&["volume", "set", "--property", "tier=gold", "fits"]);
    let s = v(&["volume", "summary"], "3.36");
    assert_eq!(s["Total Count"], 2, "{s}");
    assert_eq!(s["Total Size"], 2, "{s}");
    assert!(s["Metadata"].to_string().contains("gold"), "{s}");
    let r = call(&vc, "GET", "/volumes/summary", &c.admin, "3.11", None);
    assert_eq!(r.status, 404, "{}", r.body);

    // Revert to the latest snapshot (3.40): the volume's bytes go back.
    let file = vol_file(&c, &good);
    qemu_io(&file, "write -P 0x11 0 1M");
    let s1 = os.json(&["volume", "snapshot", "create", "--volume", "fits", "s1"]);
    let s1 = s1["id"].as_str().unwrap().to_string();
    let wait_snap = |id: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while vc.get(&format!("/snapshots/{id}"), &c.admin).body["snapshot"]["status"]
            != "available"
        {
            assert!(std::time::Instant::now() < deadline, "snapshot {id} stuck");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    wait_snap(&s1);
    qemu_io(&file, "write -P 0x22 0 1M");
    let s2 = os.json(&["volume", "snapshot", "create", "--volume", "fits", "s2"]);
    let s2 = s2["id"].as_str().unwrap().to_string();
    wait_snap(&s2);
    qemu_io(&file, "write -P 0x33 0 1M");
    assert!(holds_pattern(&file, 0x33));
    // Only the latest snapshot; not before 3.40.
    let r = call(
        &vc,
        "POST",
        &format!("/volumes/{good}/action"),
        &c.admin,
        "3.40",
        Some(json!({"revert": {"snapshot_id": s1}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("latest snapshot"));
    let r = call(
        &vc,
        "POST",
        &format!("/volumes/{good}/action"),
        &c.admin,
        "3.39",
        Some(json!({"revert": {"snapshot_id": s2}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    os.ok(&["--os-volume-api-version", "3.40", "volume", "revert", "s2"]);
    wait_status(&vc, &c.admin, &good, "available");
    assert!(
        holds_pattern(&file, 0x22),
        "the volume holds the snapshot's bytes"
    );
    let sn = vc.get(&format!("/snapshots/{s2}"), &c.admin).body;
    assert_eq!(
        sn["snapshot"]["status"], "available",
        "the snapshot is free again: {sn}"
    );

    // Reimage (3.68): the volume takes an image's bytes.
    let raw: Vec<u8> = vec![0x44; 1 << 20];
    let img = c.img.post(
        "/images",
        &c.admin,
        json!({"name": "fill", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(img.status, 201, "{}", img.body);
    let iid = img.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{iid}/file"),
        &c.admin,
        &[("Content-Type", "application/octet-stream")],
        Some(raw),
    );
    assert_eq!(st, 204);
    // Reimaging a reserved volume is for admins (and the compute
    // service): a member is refused on a volume of their own.
    let (_p2, member) = c.project("reimager");
    let r = vc.post(
        "/volumes",
        &member,
        json!({"volume": {"size": 1, "name": "members"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let theirs = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &member, &theirs, "available");
    let r = call(
        &vc,
        "POST",
        &format!("/volumes/{theirs}/action"),
        &member,
        "3.68",
        Some(json!({"os-reimage": {"image_id": iid, "reimage_reserved": true}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    fault(&r, "forbidden");
    let r = call(
        &vc,
        "POST",
        &format!("/volumes/{good}/action"),
        &c.admin,
        "3.68",
        Some(json!({"os-reimage": {"image_id": iid}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let shown = wait_status(&vc, &c.admin, &good, "available");
    assert!(
        holds_pattern(&file, 0x44),
        "the volume holds the image's bytes"
    );
    assert_eq!(shown["bootable"], "true");
    assert_eq!(shown["volume_image_metadata"]["image_id"], iid.as_str());

    // Fields of later versions appear from their version on.
    let old = call(
        &vc,
        "GET",
        &format!("/volumes/{good}"),
        &c.admin,
        "3.0",
        None,
    );
    let new = call(
        &vc,
        "GET",
        &format!("/volumes/{good}"),
        &c.admin,
        "3.70",
        None,
    );
    for k in [
        "volume_type_id",
        "service_uuid",
        "shared_targets",
        "consumes_quota",
        "provider_id",
        "cluster_name",
    ] {
        assert!(old.body["volume"].get(k).is_none(), "{k} at 3.0");
        assert!(
            new.body["volume"].get(k).is_some(),
            "{k} at 3.70: {}",
            new.body
        );
    }
    assert_eq!(new.body["volume"]["multiattach"], false);
    let snap = call(
        &vc,
        "GET",
        &format!("/snapshots/{s2}"),
        &c.admin,
        "3.41",
        None,
    );
    assert!(
        snap.body["snapshot"]["user_id"].is_string(),
        "{}",
        snap.body
    );

    // Filters: like (3.34), count (3.45), times (3.60).
    let r = call(
        &vc,
        "GET",
        "/volumes/detail?name~=IT&with_count=true",
        &c.admin,
        "3.45",
        None,
    );
    let names: Vec<&str> = r.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fits"], "{}", r.body);
    assert_eq!(r.body["count"], 1);
    let r = call(
        &vc,
        "GET",
        "/volumes/detail?created_at=gt:2000-01-01T00:00:00",
        &c.admin,
        "3.60",
        None,
    );
    assert_eq!(r.body["volumes"].as_array().unwrap().len(), 2, "{}", r.body);
    let r = call(
        &vc,
        "GET",
        "/volumes/detail?created_at=lt:2000-01-01T00:00:00",
        &c.admin,
        "3.60",
        None,
    );
    assert_eq!(r.body["volumes"], json!([]), "{}", r.body);
    let r = call(
        &vc,
        "GET",
        "/volumes/detail?created_at=lt:someday",
        &c.admin,
        "3.60",
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // 3.66: a volume in use is snapshotted without force; force=false is refused.
    let r = call(
        &vc,
        "POST",
        "/snapshots",
        &c.admin,
        "3.66",
        Some(json!({"snapshot": {"volume_id": good, "force": false}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Beyond the maximum: 406.
    let r = call(&vc, "GET", "/volumes", &c.admin, "3.71", None);
    assert_eq!(r.status, 406, "{}", r.body);
}
