//! Volume backups, transfers and uploads to images against the real
//! binary, with real data: markers are written into the storage node's
//! qcow2 files with `qemu-io`, and what comes back (a restored volume, an
//! uploaded image) is compared byte for byte. Backups are chunks held by
//! the controller (`<data dir>/backups/chunks`), counted to show what an
//! incremental backup sends and what a delete frees.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Agent, Client};
use super::compute::Cloud;
use super::volume::{fault, vol_client, vol_file, wait_status, wait_storage};

fn chunk_dir(c: &Cloud) -> PathBuf {
    c.server.data_dir().join("backups").join("chunks")
}

/// The chunk files the controller holds.
fn chunk_count(c: &Cloud) -> usize {
    let Ok(subs) = std::fs::read_dir(chunk_dir(c)) else {
        return 0;
    };
    subs.flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .map(|f| f.flatten().filter(|x| x.file_name().len() == 64).count())
        .sum()
}

/// Runs `qemu-io -c CMD` on a qcow2 file (e.g. `write -P 0x5a 0 1M`).
pub(super) fn qemu_io(file: &Path, cmd: &str) {
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
}

/// The raw bytes of a disk file (any format qemu-img reads) in `out`.
pub(super) fn to_raw(file: &Path, fmt: &str, out: &Path) {
    let r = Command::new("qemu-img")
        .args(["convert", "-U", "-f", fmt, "-O", "raw"])
        .arg(file)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "qemu-img convert {}: {}",
        file.display(),
        String::from_utf8_lossy(&r.stderr)
    );
}

/// Whether two files hold the same bytes (`cmp`), the first `n` bytes
/// when given.
pub(super) fn same_bytes(a: &Path, b: &Path, n: Option<u64>) -> bool {
    let mut cmd = Command::new("cmp");
    cmd.arg("-s");
    if let Some(n) = n {
        cmd.args(["-n", &n.to_string()]);
    }
    cmd.arg(a).arg(b).status().unwrap().success()
}

fn wait_backup(v: &Client, tok: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = v.get(&format!("/backups/{id}"), tok);
        assert_eq!(r.status, 200, "{}", r.body);
        let s = r.body["backup"]["status"].as_str().unwrap().to_string();
        if s == want {
            return r.body["backup"].clone();
        }
        assert!(
            s != "error" || want == "error",
            "backup {id} failed: {}",
            r.body
        );
        assert!(Instant::now() < deadline, "backup {id} stuck in {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn wait_gone(v: &Client, tok: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while v.get(path, tok).status != 404 {
        assert!(Instant::now() < deadline, "{path} was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn new_volume(v: &Client, tok: &str, size: u64, name: &str) -> String {
    let r = v.post(
        "/volumes",
        tok,
        json!({"volume": {"size": size, "name": name}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(v, tok, &id, "available");
    id
}

fn backup(v: &Client, tok: &str, body: Value) -> String {
    let r = v.post("/backups", tok, json!({ "backup": body }));
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["backup"]["id"].as_str().unwrap().to_string()
}

#[test]
fn backup_restore_incremental_and_delete_rules_on_real_data() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pa, ta) = c.project("bka");
    let (_pb, tb) = c.project("bkb");
    let tmp = c.server.data_dir();

    let vol = new_volume(&vc, &ta, 1, "data");
    let file = vol_file(&c, &vol);
    qemu_io(&file, "write -P 0x5a 0 1M");
    qemu_io(&file, "write -P 0x17 512M 64k");
    to_raw(&file, "qcow2", &tmp.join("orig.raw"));

    // A full backup: the volume is `backing-up` while it runs, then back.
    let full = backup(&vc, &ta, json!({"volume_id": vol, "name": "full"}));
    let shown = vc.get(&format!("/volumes/{vol}"), &ta).body;
    let st = shown["volume"]["status"].as_str().unwrap();
    assert!(st == "backing-up" || st == "available", "{shown}");
    let b = wait_backup(&vc, &ta, &full, "available");
    wait_status(&vc, &ta, &vol, "available");
    assert_eq!(b["is_incremental"], false);
    assert_eq!(b["size"], 1);
    assert_eq!(b["object_count"], 2, "two chunks hold data: {b}");
    assert_eq!(chunk_count(&c), 2, "zero chunks are not stored");

    // Incremental: only the changed chunk is sent.
    qemu_io(&file, "write -P 0x33 100M 1M");
    to_raw(&file, "qcow2", &tmp.join("second.raw"));
    let inc = backup(
        &vc,
        &ta,
        json!({"volume_id": vol, "name": "inc", "incremental": true}),
    );
    let b = wait_backup(&vc, &ta, &inc, "available");
    assert_eq!(b["is_incremental"], true);
    assert_eq!(b["object_count"], 3);
    assert_eq!(chunk_count(&c), 3, "one new chunk for one changed region");
    let parent = vc.get(&format!("/backups/{full}"), &ta).body;
    assert_eq!(parent["backup"]["has_dependent_backups"], true);

    // Incremental with no full backup before it: refused, nothing made.
    let other = new_volume(&vc, &ta, 1, "other");
    let r = vc.post(
        "/backups",
        &ta,
        json!({"backup": {"volume_id": other, "incremental": true}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("incremental"));
    assert_eq!(
        vc.get("/backups", &ta).body["backups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Delete order: a backup with dependents stays.
    let r = vc.delete(&format!("/backups/{full}"), &ta);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("Incremental backups exist"));

    // Tenancy and policy.
    assert_eq!(vc.get(&format!("/backups/{full}"), &tb).status, 404);
    assert_eq!(vc.get("/backups/detail", &tb).body["backups"], json!([]));
    let r = vc.post(
        &format!("/backups/{full}/restore"),
        &tb,
        json!({"restore": {}}),
    );
    assert_eq!(r.status, 404);
    for body in [
        json!({"os-reset_status": {"status": "error"}}),
        json!({"os-force_delete": {}}),
    ] {
        let r = vc.post(&format!("/backups/{full}/action"), &ta, body);
        assert_eq!(r.status, 403, "{}", r.body);
        fault(&r, "forbidden");
    }
    assert_eq!(
        vc.get("/backups/detail?all_tenants=1", &c.admin).body["backups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Bad input: 4xx in Cinder's shape, never a 500.
    for body in [
        json!({"nope": {}}),
        json!({"backup": {}}),
        json!({"backup": {"volume_id": "missing"}}),
        json!({"backup": {"volume_id": vol, "incremental": "maybe"}}),
    ] {
        let r = vc.post("/backups", &ta, body.clone());
        assert!(r.status == 400 || r.status == 404, "{body}: {}", r.body);
        assert!(r.body.as_object().unwrap().len() == 1, "{}", r.body);
    }

    // Quota: backups and backup_gigabytes, 413 and nothing recorded.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pa}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"backups": 2}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = vc.post("/backups", &ta, json!({"backup": {"volume_id": other}}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(fault(&r, "overLimit").contains("backups"));
    assert_eq!(
        vc.get(&format!("/volumes/{other}"), &ta).body["volume"]["status"],
        "available"
    );
    let q = vc.get(&format!("/os-quota-sets/{pa}?usage=True"), &ta).body;
    assert_eq!(q["quota_set"]["backups"]["in_use"], 2, "{q}");
    assert_eq!(q["quota_set"]["backup_gigabytes"]["in_use"], 2, "{q}");
    let l = vc.get("/limits", &ta).body;
    assert_eq!(l["limits"]["absolute"]["totalBackupsUsed"], 2, "{l}");

    // The volume goes; its backup brings the data back in a new volume.
    assert_eq!(vc.delete(&format!("/volumes/{vol}"), &ta).status, 202);
    wait_gone(&vc, &ta, &format!("/volumes/{vol}"));
    let r = vc.post(
        &format!("/backups/{inc}/restore"),
        &ta,
        json!({"restore": {"name": "back"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let rest = &r.body["restore"];
    assert_eq!(rest["backup_id"], inc.as_str());
    assert_eq!(rest["volume_name"], "back");
    let restored = rest["volume_id"].as_str().unwrap().to_string();
    let st = vc.get(&format!("/volumes/{restored}"), &ta).body["volume"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(st == "restoring-backup" || st == "available", "{st}");
    let v = wait_status(&vc, &ta, &restored, "available");
    assert_eq!(v["size"], 1);
    wait_backup(&vc, &ta, &inc, "available");
    to_raw(&vol_file(&c, &restored), "qcow2", &tmp.join("restored.raw"));
    assert!(
        same_bytes(&tmp.join("second.raw"), &tmp.join("restored.raw"), None),
        "the restored volume holds the backed-up bytes"
    );

    // Into an existing volume: too small is refused; a bigger one keeps
    // its size and gets the data.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pa}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"backups": 10}})),
    );
    assert_eq!(r.status, 200);
    let big = new_volume(&vc, &ta, 2, "big");
    let r = vc.post(
        &format!("/backups/{full}/restore"),
        &ta,
        json!({"restore": {"volume_id": big}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["restore"]["volume_id"], big.as_str());
    wait_status(&vc, &ta, &big, "available");
    wait_backup(&vc, &ta, &full, "available");
    to_raw(&vol_file(&c, &big), "qcow2", &tmp.join("big.raw"));
    assert_eq!(
        std::fs::metadata(tmp.join("big.raw")).unwrap().len(),
        2 << 30
    );
    assert!(same_bytes(
        &tmp.join("orig.raw"),
        &tmp.join("big.raw"),
        Some(1 << 30)
    ));

    // A backup of a snapshot.
    let r = vc.post("/snapshots", &ta, json!({"snapshot": {"volume_id": big}}));
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{snap}"), &ta).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let sb = backup(&vc, &ta, json!({"volume_id": big, "snapshot_id": snap}));
    let b = wait_backup(&vc, &ta, &sb, "available");
    assert_eq!(b["snapshot_id"], snap.as_str());
    assert_eq!(b["size"], 2);
    assert_eq!(chunk_count(&c), 3, "the snapshot's chunks were all there");

    // Deleting frees the chunks nothing else holds, and only those.
    assert_eq!(vc.delete(&format!("/backups/{inc}"), &ta).status, 202);
    wait_gone(&vc, &ta, &format!("/backups/{inc}"));
    assert_eq!(
        chunk_count(&c),
        2,
        "the 100M chunk was only the incremental's"
    );
    assert_eq!(vc.delete(&format!("/backups/{sb}"), &ta).status, 202);
    assert_eq!(chunk_count(&c), 2, "the full backup still holds both");
    assert_eq!(vc.delete(&format!("/backups/{full}"), &ta).status, 202);
    wait_gone(&vc, &ta, &format!("/backups/{full}"));
    assert_eq!(chunk_count(&c), 0);

    // Admins: reset and force delete.
    let e = backup(&vc, &ta, json!({"volume_id": other}));
    wait_backup(&vc, &ta, &e, "available");
    let r = vc.post(
        &format!("/backups/{e}/action"),
        &c.admin,
        json!({"os-reset_status": {"status": "error"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        vc.get(&format!("/backups/{e}"), &ta).body["backup"]["status"],
        "error"
    );
    let r = vc.post(
        &format!("/backups/{e}/action"),
        &c.admin,
        json!({"os-force_delete": {}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(&vc, &ta, &format!("/backups/{e}"));

    let s = vc.get("/os-services", &c.admin).body;
    assert!(
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["binary"] == "cinder-backup" && x["state"] == "up"),
        "{s}"
    );
}

#[test]
fn backup_outlives_its_storage_node_and_restores_on_another() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let dir2 = c.server.data_dir().join("node2-volumes");
    std::fs::create_dir_all(&dir2).unwrap();
    let agent = Agent::start(
        &c.server,
        "node2",
        &["--driver", "fake", "--volumes", dir2.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = vc.get("/os-services", &c.admin).body;
        let up = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["binary"] == "cinder-volume" && x["state"] == "up")
            .count();
        if up == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "node2 did not register: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Volumes spread over the two nodes (the emptier node first).
    let mut on2 = None;
    let mut on1 = None;
    for i in 0..6 {
        let id = new_volume(&vc, &c.admin, 1, &format!("v{i}"));
        let host =
            vc.get(&format!("/volumes/{id}"), &c.admin).body["volume"]["os-vol-host-attr:host"]
                .as_str()
                .unwrap()
                .to_string();
        if host.starts_with("node2@") {
            on2.get_or_insert(id);
        } else {
            on1.get_or_insert(id);
        }
        if on1.is_some() && on2.is_some() {
            break;
        }
    }
    let (src, dst) = (on2.expect("a volume on node2"), on1.expect("one on node1"));
    let file = dir2.join(format!("volume-{src}.qcow2"));
    qemu_io(&file, "write -P 0xc3 4M 3M");
    let tmp = c.server.data_dir();
    to_raw(&file, "qcow2", &tmp.join("node2.raw"));
    let b = backup(&vc, &c.admin, json!({"volume_id": src}));
    wait_backup(&vc, &c.admin, &b, "available");

    // node2 and everything on it is lost.
    drop(agent);
    std::fs::remove_dir_all(&dir2).unwrap();

    let r = vc.post(
        &format!("/backups/{b}/restore"),
        &c.admin,
        json!({"restore": {"volume_id": dst}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &c.admin, &dst, "available");
    to_raw(&vol_file(&c, &dst), "qcow2", &tmp.join("node1.raw"));
    assert!(same_bytes(
        &tmp.join("node2.raw"),
        &tmp.join("node1.raw"),
        None
    ));
}

#[test]
fn backup_chunk_endpoints_check_who_asks() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (_pa, ta) = c.project("chk");
    let vol = new_volume(&vc, &ta, 1, "v");
    let b = backup(&vc, &ta, json!({"volume_id": vol}));
    wait_backup(&vc, &ta, &b, "available");
    let edge = c.server.client_at("/edge/v1");
    let sha = "0".repeat(64);
    // A member, and an admin outside a restore, may not touch the chunks.
    let r = edge.call(
        "POST",
        &format!("/backups/{b}/missing"),
        Some(&ta),
        Some(json!({"chunks": [sha]})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = edge.call(
        "PUT",
        &format!("/backups/{b}/manifest"),
        Some(&c.admin),
        Some(json!({"generation": 1, "size_bytes": 0, "chunk_size": 4194304, "chunks": []})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(edge.get(&format!("/backups/{b}/manifest"), &ta).status, 403);
    let r = edge.get(&format!("/backups/{b}/chunks/..%2F..%2Fetc"), &c.admin);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = edge.get("/backups/nope/manifest", &c.admin);
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn volume_transfer_moves_volume_snapshots_and_quota() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pa, ta) = c.project("tra");
    let (pb, tb) = c.project("trb");
    let vol = new_volume(&vc, &ta, 2, "gift");
    let r = vc.post("/snapshots", &ta, json!({"snapshot": {"volume_id": vol}}));
    assert_eq!(r.status, 202);
    let snap = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{snap}"), &ta).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }

    let r = vc.post(
        "/os-volume-transfer",
        &ta,
        json!({"transfer": {"volume_id": vol, "name": "t1"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let t = r.body["transfer"].clone();
    let tid = t["id"].as_str().unwrap().to_string();
    let key = t["auth_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 16);
    assert_eq!(
        vc.get(&format!("/volumes/{vol}"), &ta).body["volume"]["status"],
        "awaiting-transfer"
    );
    let shown = vc.get(&format!("/os-volume-transfer/{tid}"), &ta).body;
    assert!(shown["transfer"].get("auth_key").is_none(), "{shown}");
    assert_eq!(
        vc.get("/os-volume-transfer/detail", &ta).body["transfers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        vc.get("/os-volume-transfer", &tb).body["transfers"],
        json!([])
    );
    assert_eq!(
        vc.get(&format!("/os-volume-transfer/{tid}"), &tb).status,
        404
    );
    // A volume awaiting transfer is not deleted or transferred twice.
    assert_eq!(vc.delete(&format!("/volumes/{vol}"), &ta).status, 400);
    let r = vc.post(
        "/os-volume-transfer",
        &ta,
        json!({"transfer": {"volume_id": vol}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Wrong key: 400, nothing moves.
    let r = vc.post(
        &format!("/os-volume-transfer/{tid}/accept"),
        &tb,
        json!({"accept": {"auth_key": "wrongwrongwrong1"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("auth key"));
    let r = vc.post(
        &format!("/os-volume-transfer/{tid}/accept"),
        &tb,
        json!({"accept": {}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // The accepting project's quota: 413, still awaiting.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pb}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"gigabytes": 3}})),
    );
    assert_eq!(r.status, 200);
    let r = vc.post(
        &format!("/os-volume-transfer/{tid}/accept"),
        &tb,
        json!({"accept": {"auth_key": key}}),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    fault(&r, "overLimit");
    assert_eq!(
        vc.get(&format!("/volumes/{vol}"), &ta).body["volume"]["status"],
        "awaiting-transfer"
    );
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pb}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"gigabytes": 4}})),
    );
    assert_eq!(r.status, 200);
    let r = vc.post(
        &format!("/os-volume-transfer/{tid}/accept"),
        &tb,
        json!({"accept": {"auth_key": key}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["transfer"]["volume_id"], vol.as_str());

    // Moved: the volume and its snapshot are the other project's.
    assert_eq!(vc.get(&format!("/volumes/{vol}"), &ta).status, 404);
    let v = vc.get(&format!("/volumes/{vol}"), &tb).body;
    assert_eq!(v["volume"]["status"], "available");
    assert_eq!(v["volume"]["os-vol-tenant-attr:tenant_id"], pb.as_str());
    assert_eq!(vc.get(&format!("/snapshots/{snap}"), &tb).status, 200);
    assert_eq!(vc.get(&format!("/snapshots/{snap}"), &ta).status, 404);
    let used = |p: &str, t: &str, k: &str| {
        vc.get(&format!("/os-quota-sets/{p}?usage=True"), t).body["quota_set"][k]["in_use"].clone()
    };
    assert_eq!(used(&pa, &ta, "volumes"), 0);
    assert_eq!(used(&pa, &ta, "gigabytes"), 0);
    assert_eq!(used(&pb, &tb, "volumes"), 1);
    assert_eq!(used(&pb, &tb, "gigabytes"), 4);
    assert_eq!(
        vc.get(&format!("/os-volume-transfer/{tid}"), &ta).status,
        404
    );

    // Delete cancels.
    let r = vc.post(
        "/os-volume-transfer",
        &tb,
        json!({"transfer": {"volume_id": vol}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let t2 = r.body["transfer"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        vc.get("/os-volume-transfer?all_tenants=1", &c.admin).body["transfers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        vc.delete(&format!("/os-volume-transfer/{t2}"), &ta).status,
        404
    );
    assert_eq!(
        vc.delete(&format!("/os-volume-transfer/{t2}"), &tb).status,
        202
    );
    assert_eq!(
        vc.get(&format!("/volumes/{vol}"), &tb).body["volume"]["status"],
        "available"
    );
    // Bad input.
    for body in [
        json!({}),
        json!({"transfer": {}}),
        json!({"transfer": {"volume_id": "x"}}),
    ] {
        let r = vc.post("/os-volume-transfer", &tb, body.clone());
        assert!(r.status == 400 || r.status == 404, "{body}: {}", r.body);
    }
}

/// Waits until an image is `active`; its record.
fn wait_image(c: &Cloud, tok: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = c.img.get(&format!("/images/{id}"), tok);
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["status"] == "active" {
            return r.body;
        }
        assert!(Instant::now() < deadline, "image stuck: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn download(c: &Cloud, tok: &str, id: &str, out: &Path) {
    let (st, _, data) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), tok, &[], None);
    assert_eq!(st, 200);
    std::fs::write(out, data).unwrap();
}

#[test]
fn upload_volume_to_image_carries_its_bytes_and_image_metadata() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (_pa, ta) = c.project("upl");
    let (_pb, tb) = c.project("upb");
    let tmp = c.server.data_dir();

    // A volume from an image carries volume_image_metadata.
    let img = c.img.post(
        "/images",
        &ta,
        json!({"name": "base", "disk_format": "raw", "container_format": "bare", "os_distro": "testos"}),
    );
    assert_eq!(img.status, 201, "{}", img.body);
    let iid = img.body["id"].as_str().unwrap().to_string();
    let raw: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{iid}/file"),
        &ta,
        &[("Content-Type", "application/octet-stream")],
        Some(raw),
    );
    assert_eq!(st, 204);
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 1, "imageRef": iid}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let vol = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &ta, &vol, "available");
    qemu_io(&vol_file(&c, &vol), "write -P 0x77 300M 1M");
    to_raw(&vol_file(&c, &vol), "qcow2", &tmp.join("vol.raw"));

    // Refusals first: nothing is made.
    let images_before = c.img.get("/images", &ta).body["images"]
        .as_array()
        .unwrap()
        .len();
    for arg in [
        json!({"image_name": "x", "disk_format": "vmdk"}),
        json!({}),
        json!({"image_name": "x", "container_format": "ovf"}),
        json!({"image_name": "x", "force": "perhaps"}),
    ] {
        let r = vc.post(
            &format!("/volumes/{vol}/action"),
            &ta,
            json!({"os-volume_upload_image": arg}),
        );
        assert_eq!(r.status, 400, "{arg}: {}", r.body);
        fault(&r, "badRequest");
    }
    let r = vc.post(
        &format!("/volumes/{vol}/action"),
        &tb,
        json!({"os-volume_upload_image": {"image_name": "x"}}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        c.img.get("/images", &ta).body["images"]
            .as_array()
            .unwrap()
            .len(),
        images_before
    );
    // Other actions still pass through.
    let r = vc.post(
        &format!("/volumes/{vol}/action"),
        &ta,
        json!({"os-set_bootable": {"bootable": true}}),
    );
    // Cinder answers this one 200.
    assert_eq!(r.status, 200, "{}", r.body);

    for fmt in ["raw", "qcow2"] {
        let r = vc.post(
            &format!("/volumes/{vol}/action"),
            &ta,
            json!({"os-volume_upload_image": {"image_name": format!("from-vol-{fmt}"), "disk_format": fmt, "container_format": "bare"}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        let u = &r.body["os-volume_upload_image"];
        assert_eq!(u["id"], vol.as_str());
        assert_eq!(u["status"], "uploading");
        assert_eq!(u["disk_format"], fmt);
        assert_eq!(u["volume_type"]["name"], "__DEFAULT__");
        let new = u["image_id"].as_str().unwrap().to_string();
        let shown = wait_image(&c, &ta, &new);
        wait_status(&vc, &ta, &vol, "available");
        assert_eq!(shown["disk_format"], fmt);
        assert_eq!(
            shown["os_distro"], "testos",
            "volume_image_metadata: {shown}"
        );
        assert_eq!(shown["visibility"], "private");
        let got = tmp.join(format!("downloaded.{fmt}"));
        download(&c, &ta, &new, &got);
        to_raw(&got, fmt, &tmp.join("img.raw"));
        assert!(
            same_bytes(&tmp.join("vol.raw"), &tmp.join("img.raw"), None),
            "the {fmt} image holds the volume's bytes"
        );
        // Not another project's.
        assert_eq!(c.img.get(&format!("/images/{new}"), &tb).status, 404);
    }
}

#[test]
fn cli_backup_transfer_and_image_from_volume() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let vc = vol_client(&c);
    let tmp = c.server.data_dir();

    let v = os.json(&["volume", "create", "--size", "1", "cv"]);
    let vid = v["id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &vid, "available");
    qemu_io(&vol_file(&c, &vid), "write -P 0x42 1M 2M");
    to_raw(&vol_file(&c, &vid), "qcow2", &tmp.join("cv.raw"));

    let b = os.json(&["volume", "backup", "create", "--name", "cb", "cv"]);
    let bid = b["id"].as_str().unwrap().to_string();
    wait_backup(&vc, &c.admin, &bid, "available");
    let listed = os.json(&["volume", "backup", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == bid.as_str() && x["Status"] == "available"),
        "{listed}"
    );
    let shown = os.json(&["volume", "backup", "show", "cb"]);
    assert_eq!(shown["volume_id"], vid.as_str(), "{shown}");
    assert_eq!(shown["object_count"], 1, "{shown}");

    os.ok(&["volume", "delete", "cv"]);
    wait_gone(&vc, &c.admin, &format!("/volumes/{vid}"));
    let r = os.json(&["volume", "backup", "restore", "cb", "cv2"]);
    let rid = r["volume_id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &rid, "available");
    assert_eq!(os.json(&["volume", "show", &rid])["name"], "cv2");
    to_raw(&vol_file(&c, &rid), "qcow2", &tmp.join("cv2.raw"));
    assert!(same_bytes(&tmp.join("cv.raw"), &tmp.join("cv2.raw"), None));
    // Onto an existing volume only with --force (the CLI's own rule).
    os.fails(&["volume", "backup", "restore", "cb", "cv2"]);
    os.ok(&["volume", "backup", "restore", "--force", "cb", "cv2"]);
    wait_status(&vc, &c.admin, &rid, "available");
    wait_backup(&vc, &c.admin, &bid, "available");
    os.ok(&["volume", "backup", "delete", "cb"]);
    wait_gone(&vc, &c.admin, &format!("/backups/{bid}"));
    assert_eq!(chunk_count(&c), 0);

    // Image from a volume.
    let out = os.json(&[
        "image",
        "create",
        "--volume",
        "cv2",
        "--disk-format",
        "qcow2",
        "fromvol",
    ]);
    let iid = out["image_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    wait_image(&c, &c.admin, &iid);
    wait_status(&vc, &c.admin, &rid, "available");
    let img = os.json(&["image", "show", "fromvol"]);
    assert_eq!(img["disk_format"], "qcow2");
    download(&c, &c.admin, &iid, &tmp.join("fromvol.qcow2"));
    to_raw(
        &tmp.join("fromvol.qcow2"),
        "qcow2",
        &tmp.join("fromvol.raw"),
    );
    assert!(same_bytes(
        &tmp.join("cv.raw"),
        &tmp.join("fromvol.raw"),
        None
    ));

    // Transfer from the admin project to another one.
    let (pb, _tb) = c.project("clib");
    let t = os.json(&[
        "volume", "transfer", "request", "create", "--name", "ct", "cv2",
    ]);
    let tid = t["id"].as_str().unwrap().to_string();
    let key = t["auth_key"].as_str().unwrap().to_string();
    let listed = os.json(&["volume", "transfer", "request", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == tid.as_str()),
        "{listed}"
    );
    let as_b = [
        "--os-project-name",
        "clib",
        "--os-username",
        "clib-user",
        "--os-password",
        "pw-12345",
    ];
    let mut wrong = as_b.to_vec();
    wrong.extend([
        "volume",
        "transfer",
        "request",
        "accept",
        "--auth-key",
        "nope",
        &tid,
    ]);
    os.fails(&wrong);
    assert_eq!(
        vc.get(&format!("/volumes/{rid}"), &c.admin).body["volume"]["status"],
        "awaiting-transfer"
    );
    let mut accept = as_b.to_vec();
    accept.extend([
        "volume",
        "transfer",
        "request",
        "accept",
        "--auth-key",
        &key,
        &tid,
    ]);
    os.ok(&accept);
    let v = vc.get(&format!("/volumes/{rid}"), &c.admin).body;
    assert_eq!(
        v["volume"]["os-vol-tenant-attr:tenant_id"],
        pb.as_str(),
        "{v}"
    );
    assert_eq!(v["volume"]["status"], "available");
    let listed = os.json(&["volume", "transfer", "request", "list"]);
    assert_eq!(listed, json!([]));

    // Create and delete cancels (as the new owner).
    let mut create = as_b.to_vec();
    create.extend([
        "volume", "transfer", "request", "create", "-f", "json", &rid,
    ]);
    let t2: Value = serde_json::from_str(&os.ok(&create)).unwrap();
    let t2 = t2["id"].as_str().unwrap().to_string();
    let mut del = as_b.to_vec();
    del.extend(["volume", "transfer", "request", "delete", &t2]);
    os.ok(&del);
    assert_eq!(
        vc.get(&format!("/volumes/{rid}"), &c.admin).body["volume"]["status"],
        "available"
    );
}
