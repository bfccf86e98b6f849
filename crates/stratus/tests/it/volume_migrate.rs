//! Volumes moving between storage nodes with two backends: a second
//! agent keeps its volumes under the backend name `fast`, volume types
//! pick a backend with `volume_backend_name`, and `openstack volume
//! migrate` and `openstack volume set --type --retype-policy on-demand`
//! move a volume's bytes from one node's file to the other's (over the
//! source's NBD export), checked byte for byte.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Agent, Client};
use super::compute::Cloud;
use super::volume::{fault, vol_client, vol_file, wait_storage};
use super::volume_backup::{qemu_io, same_bytes, to_raw};

/// The volume as an admin sees it.
fn show(vc: &Client, c: &Cloud, id: &str) -> Value {
    let r = vc.get(&format!("/volumes/{id}"), &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["volume"].clone()
}

/// Waits for the volume's migration to end; the volume then.
fn wait_migrated(vc: &Client, c: &Cloud, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = show(vc, c, id);
        if v["migration_status"] != "migrating" && !v["migration_status"].is_null() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "volume {id} still migrating: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_no_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts node2: a storage node with backend `fast`, volumes in `dir`.
fn node2(c: &Cloud, dir: &Path) -> Agent {
    Agent::start(
        &c.server,
        "node2",
        &[
            "--driver",
            "fake",
            "--volumes",
            dir.to_str().unwrap(),
            "--volume-backend",
            "fast",
        ],
    )
}

/// A cloud whose own storage node has backend `file` and a second one,
/// `node2`, backend `fast`: (cloud, node2's agent, node2's volume dir,
/// the first node's name).
fn two_backends() -> (Cloud, Agent, PathBuf, String) {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let dir2 = c.server.data_dir().join("node2-volumes");
    std::fs::create_dir_all(&dir2).unwrap();
    let agent = node2(&c, &dir2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = vc.get("/os-services", &c.admin).body;
        let up: Vec<String> = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["binary"] == "cinder-volume" && x["state"] == "up")
            .map(|x| x["host"].as_str().unwrap().to_string())
            .collect();
        if up.len() == 2 {
            assert!(up.contains(&"node2@fast".to_string()), "{s}");
            let first = up.iter().find(|h| h.ends_with("@file")).expect("{s}");
            let node1 = first.trim_end_matches("@file").to_string();
            let t = vc.post(
                "/types",
                &c.admin,
                json!({"volume_type": {"name": "onfile", "extra_specs": {"volume_backend_name": "file"}}}),
            );
            assert_eq!(t.status, 200, "{}", t.body);
            return (c, agent, dir2, node1);
        }
        assert!(Instant::now() < deadline, "node2 did not register: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A volume of the default type on the first node: made with type
/// `onfile` (which only that node offers), then retyped to the default
/// type, which every node offers, so it stays (the record changes only).
fn volume_on_node1(vc: &Client, tok: &str, size: u64, name: &str) -> String {
    let r = vc.post(
        "/volumes",
        tok,
        json!({"volume": {"size": size, "name": name, "volume_type": "onfile"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["volume"]["id"].as_str().unwrap().to_string();
    super::volume::wait_status(vc, tok, &id, "available");
    let r = vc.post(
        &format!("/volumes/{id}/action"),
        tok,
        json!({"os-retype": {"new_type": "__DEFAULT__", "migration_policy": "never"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    id
}

#[test]
fn volume_migrate_and_retype_move_bytes_between_backends() {
    if cli().is_none() {
        return;
    }
    let (c, _agent, dir2, node1) = two_backends();
    let Some(os) = Os::new(&c.server) else { return };
    let vc = vol_client(&c);
    let tmp = c.server.data_dir();
    let file1 = |id: &str| vol_file(&c, id);
    let file2 = |id: &str| dir2.join(format!("volume-{id}.qcow2"));

    // The pools and the scheduler's capabilities name both backends.
    let pools = vc
        .get("/scheduler-stats/get_pools?detail=true", &c.admin)
        .body;
    let names: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"node2@fast#fast"), "{pools}");
    assert!(
        names.contains(&format!("{node1}@file#file").as_str()),
        "{pools}"
    );
    assert!(
        pools["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["capabilities"]["volume_backend_name"] == "fast"),
        "{pools}"
    );

    // Types choose a backend (with and without the `capabilities:`
    // scope), as Cinder's multi-backend setups do.
    os.ok(&[
        "volume",
        "type",
        "create",
        "--property",
        "volume_backend_name=fast",
        "fast",
    ]);
    os.ok(&[
        "volume",
        "type",
        "create",
        "--property",
        "capabilities:volume_backend_name=file",
        "slow",
    ]);
    let f = os.json(&["volume", "create", "--size", "1", "--type", "fast", "vf"]);
    let fid = f["id"].as_str().unwrap().to_string();
    super::volume::wait_status(&vc, &c.admin, &fid, "available");
    assert_eq!(
        show(&vc, &c, &fid)["os-vol-host-attr:host"],
        "node2@fast#fast"
    );
    assert!(file2(&fid).exists());
    let s = os.json(&["volume", "create", "--size", "1", "--type", "slow", "vs"]);
    let sid = s["id"].as_str().unwrap().to_string();
    super::volume::wait_status(&vc, &c.admin, &sid, "available");
    assert_eq!(
        show(&vc, &c, &sid)["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str()
    );

    // A volume of the default type (no backend asked) on the first node
    // moves to node2 with `openstack volume migrate`, its bytes with it.
    let vid = volume_on_node1(&vc, &c.admin, 2, "mv");
    let v = show(&vc, &c, &vid);
    assert_eq!(
        v["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str(),
        "{v}"
    );
    assert!(v["migration_status"].is_null(), "{v}");
    qemu_io(&file1(&vid), "write -P 0x5d 1M 3M");
    qemu_io(&file1(&vid), "write -P 0x17 1536M 1M");
    to_raw(&file1(&vid), "qcow2", &tmp.join("before.raw"));
    os.ok(&["volume", "migrate", "--host", "node2@fast#fast", &vid]);
    let v = wait_migrated(&vc, &c, &vid);
    assert_eq!(v["migration_status"], "success", "{v}");
    assert_eq!(v["os-vol-mig-status-attr:migstat"], "success", "{v}");
    assert_eq!(v["status"], "available", "{v}");
    assert_eq!(v["os-vol-host-attr:host"], "node2@fast#fast", "{v}");
    assert_eq!(v["size"], 2, "{v}");
    to_raw(&file2(&vid), "qcow2", &tmp.join("after.raw"));
    assert!(same_bytes(
        &tmp.join("before.raw"),
        &tmp.join("after.raw"),
        None
    ));
    // The source's file goes; the copy stays thin (zeros not written).
    wait_no_file(&file1(&vid));
    let used = std::fs::metadata(file2(&vid)).unwrap().len();
    assert!(used < 64 << 20, "the copy is {used} bytes");

    // A retype to a type node2 does not offer: `never` is refused and
    // changes nothing; `on-demand` moves the volume back and the type
    // changes once it is there.
    let out = os.fails(&[
        "volume",
        "set",
        "--type",
        "slow",
        "--retype-policy",
        "never",
        &vid,
    ]);
    assert!(out.contains("Retype requires migration"), "{out}");
    assert_eq!(show(&vc, &c, &vid)["volume_type"], "__DEFAULT__");
    os.ok(&[
        "volume",
        "set",
        "--type",
        "slow",
        "--retype-policy",
        "on-demand",
        &vid,
    ]);
    let v = wait_migrated(&vc, &c, &vid);
    assert_eq!(v["migration_status"], "success", "{v}");
    assert_eq!(v["volume_type"], "slow", "{v}");
    assert_eq!(
        v["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str(),
        "{v}"
    );
    to_raw(&file1(&vid), "qcow2", &tmp.join("back.raw"));
    assert!(same_bytes(
        &tmp.join("before.raw"),
        &tmp.join("back.raw"),
        None
    ));
    wait_no_file(&file2(&vid));
    // A retype the node offers changes the record only.
    os.ok(&["volume", "set", "--type", "__DEFAULT__", &vid]);
    let v = show(&vc, &c, &vid);
    assert_eq!(v["volume_type"], "__DEFAULT__", "{v}");
    assert_eq!(
        v["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str(),
        "{v}"
    );

    // The moved volume works where it is: a snapshot of it, and a delete
    // that removes its file.
    os.ok(&["volume", "delete", &fid]);
    super::volume_backup::wait_gone(&vc, &c.admin, &format!("/volumes/{fid}"));
    assert!(!file2(&fid).exists());
}

#[test]
fn volume_migrate_rules_and_a_failed_copy() {
    let (c, agent, dir2, node1) = two_backends();
    let vc = vol_client(&c);
    let (_p, member) = c.project("mig");
    let vid = volume_on_node1(&vc, &member, 1, "m");
    let migrate = |tok: &str, id: &str, body: Value| {
        vc.post(
            &format!("/volumes/{id}/action"),
            tok,
            json!({ "os-migrate_volume": body }),
        )
    };
    // Admins only.
    let r = migrate(&member, &vid, json!({"host": "node2@fast"}));
    assert_eq!(r.status, 403, "{}", r.body);
    // Hosts that are not there, the volume's own, a wrong backend name.
    for host in ["nowhere@file", "node2@file", "node2@fast#other"] {
        let r = migrate(&c.admin, &vid, json!({"host": host}));
        assert_eq!(r.status, 400, "{host}: {}", r.body);
        assert!(
            fault(&r, "badRequest").contains("No available service"),
            "{}",
            r.body
        );
    }
    let r = migrate(&c.admin, &vid, json!({"host": format!("{node1}@file")}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r, "badRequest").contains("must be different"),
        "{}",
        r.body
    );
    let r = migrate(&c.admin, &vid, json!({}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = migrate(
        &c.admin,
        &vid,
        json!({"host": "node2", "lock_volume": "maybe"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    // A type node2 does not offer.
    let r = vc.post(
        "/volumes",
        &member,
        json!({"volume": {"size": 1, "name": "p", "volume_type": "onfile"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let pid = r.body["volume"]["id"].as_str().unwrap().to_string();
    super::volume::wait_status(&vc, &member, &pid, "available");
    let r = migrate(&c.admin, &pid, json!({"host": "node2"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        fault(&r, "badRequest").contains("retype it first"),
        "{}",
        r.body
    );
    // A volume with a snapshot stays.
    let s = vc.post(
        "/snapshots",
        &member,
        json!({"snapshot": {"volume_id": vid, "name": "s"}}),
    );
    assert_eq!(s.status, 202, "{}", s.body);
    let snap = s.body["snapshot"]["id"].as_str().unwrap().to_string();
    let r = migrate(&c.admin, &vid, json!({"host": "node2"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("snapshots"), "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{snap}"), &member).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        vc.delete(&format!("/snapshots/{snap}"), &member).status,
        202
    );
    super::volume_backup::wait_gone(&vc, &member, &format!("/snapshots/{snap}"));

    // A copy that fails (the source's file is gone, so nothing is
    // exported) leaves the volume where it was, usable, and nothing on
    // the destination; the owner sees no host fields. node2 is stopped
    // while the move is asked for (it is still up for the scheduler), so
    // the volume is seen moving before node2 runs the copy.
    let file = vol_file(&c, &vid);
    let kept = c.server.data_dir().join("kept.qcow2");
    std::fs::rename(&file, &kept).unwrap();
    drop(agent);
    let r = migrate(&c.admin, &vid, json!({"host": "node2"}));
    assert_eq!(r.status, 202, "{}", r.body);
    let v = vc.get(&format!("/volumes/{vid}"), &member).body["volume"].clone();
    assert!(v.get("os-vol-host-attr:host").is_none(), "{v}");
    assert_eq!(v["status"], "maintenance", "{v}");
    // Nothing else may change it while it moves.
    let r = migrate(&c.admin, &vid, json!({"host": "node2"}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(vc.delete(&format!("/volumes/{vid}"), &member).status, 400);
    let _agent = node2(&c, &dir2);
    let v = wait_migrated(&vc, &c, &vid);
    assert_eq!(v["migration_status"], "error", "{v}");
    assert_eq!(v["status"], "available", "{v}");
    assert_eq!(
        v["os-vol-host-attr:host"],
        format!("{node1}@file#file").as_str(),
        "{v}"
    );
    assert!(!dir2.join(format!("volume-{vid}.qcow2")).exists());
    // With its file back it moves (once the failed copy is cleaned up).
    std::fs::rename(&kept, &file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = migrate(&c.admin, &vid, json!({"host": "node2@fast"}));
        if r.status == 202 {
            break;
        }
        assert!(
            fault(&r, "badRequest").contains("active migration"),
            "{}",
            r.body
        );
        assert!(Instant::now() < deadline, "{}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = wait_migrated(&vc, &c, &vid);
    assert_eq!(v["migration_status"], "success", "{v}");
    assert_eq!(v["os-vol-host-attr:host"], "node2@fast#fast", "{v}");
    // Lists filter on it (Cinder's `migration_status` resource filter).
    let l = vc.get(
        "/volumes/detail?all_tenants=1&migration_status=success",
        &c.admin,
    );
    assert_eq!(l.status, 200, "{}", l.body);
    let ids: Vec<&str> = l.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![vid.as_str()], "{}", l.body);
    // The admin's reset of the migration status.
    let r = vc.post(
        &format!("/volumes/{vid}/action"),
        &c.admin,
        json!({"os-reset_status": {"migration_status": "none"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(show(&vc, &c, &vid)["migration_status"].is_null());
}

/// A volume in use moves only under a running VM whose node can copy
/// its disk: a container's volume, and a VM's on fake nodes (no
/// `move-volume` feature), are refused, by the migration and by an
/// on-demand retype, and nothing changes.
#[test]
fn volume_migrate_in_use_needs_a_node_that_copies_the_guest_disk() {
    let c = super::volume_attach::cloud(Some("fake"));
    let vc = vol_client(&c);
    let dir2 = c.server.data_dir().join("node2-volumes");
    std::fs::create_dir_all(&dir2).unwrap();
    let _agent = node2(&c, &dir2);
    for (name, backend) in [("onfile", "file"), ("fast", "fast")] {
        let t = vc.post(
            "/types",
            &c.admin,
            json!({"volume_type": {"name": name, "extra_specs": {"volume_backend_name": backend}}}),
        );
        assert_eq!(t.status, 200, "{}", t.body);
    }
    for (image, why) in [
        ("busybox", "is a container"),
        ("busybox-vm", "cannot copy a running guest's disk"),
    ] {
        let vid = super::volume_attach::new_volume(&c, image, Some("onfile"));
        let img = super::compute_real::image_id(&c, image);
        let sid = super::volume_attach::boot(&c, image, &img, json!({}));
        let r = super::volume_attach::attach(&c, &sid, json!({"volumeId": vid}));
        assert_eq!(r.status, 200, "{}", r.body);
        super::volume::wait_status(&vc, &c.admin, &vid, "in-use");
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = loop {
            let r = vc.post(
                &format!("/volumes/{vid}/action"),
                &c.admin,
                json!({"os-migrate_volume": {"host": "node2@fast"}}),
            );
            // node2's storage service registers a moment after it starts.
            if !r.body.to_string().contains("No available service") {
                break r;
            }
            assert!(Instant::now() < deadline, "{}", r.body);
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(r.status, 400, "{}", r.body);
        let m = fault(&r, "badRequest");
        assert!(m.contains(why), "{image}: {m}");
        let r = vc.post(
            &format!("/volumes/{vid}/action"),
            &c.admin,
            json!({"os-retype": {"new_type": "fast", "migration_policy": "on-demand"}}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(fault(&r, "badRequest").contains(why), "{}", r.body);
        let v = show(&vc, &c, &vid);
        assert_eq!(v["status"], "in-use", "{v}");
        assert_eq!(v["volume_type"], "onfile", "{v}");
        assert!(v["migration_status"].is_null(), "{v}");
    }
}
