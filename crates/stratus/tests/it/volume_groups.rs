//! Cinder's generic volume groups against the real binary: group types,
//! groups, group snapshots and groups made from a source, driven with the
//! real `openstack volume group ...` commands where the CLI has them and
//! raw HTTP (with `OpenStack-API-Version`) for the rest. Data is real:
//! markers are written into the storage node's qcow2 files with
//! `qemu-io`, and the member snapshots and the volumes made from them are
//! read back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Client, Resp};
use super::compute::Cloud;
use super::volume::{fault, vol_client, vol_file, wait_status, wait_storage};

/// A request at volume microversion `3.minor`.
fn at(v: &Client, minor: u16, method: &str, path: &str, tok: &str, body: Option<Value>) -> Resp {
    let mv = format!("volume 3.{minor}");
    v.raw(
        method,
        path,
        Some(tok),
        &[("OpenStack-API-Version", mv.as_str())],
        body.map(|b| b.to_string()),
    )
}

/// Runs `qemu-io -c CMD` on a qcow2 file (e.g. `write -P 0x5a 0 1M`).
fn qemu_io(file: &Path, cmd: &str) {
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

/// The first MiB of a qcow2 file's guest view.
fn first_mib(file: &Path, scratch: &Path) -> Vec<u8> {
    let r = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(file)
        .arg(scratch)
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "qemu-img convert {}: {}",
        file.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    let mut b = std::fs::read(scratch).unwrap();
    b.truncate(1 << 20);
    let _ = std::fs::remove_file(scratch);
    b
}

fn all_bytes(b: &[u8], x: u8) -> bool {
    b.len() == 1 << 20 && b.iter().all(|y| *y == x)
}

/// Waits until `path`'s `key` resource has status `want` (at 3.14).
fn wait_res(v: &Client, tok: &str, path: &str, key: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = at(v, 14, "GET", path, tok, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let s = r.body[key]["status"].as_str().unwrap_or("").to_string();
        if s == want {
            return r.body[key].clone();
        }
        assert!(!s.starts_with("error"), "{path} went to {s}");
        assert!(Instant::now() < deadline, "{path} stuck in {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gone(v: &Client, tok: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while at(v, 14, "GET", path, tok, None).status != 404 {
        assert!(Instant::now() < deadline, "{path} was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The volumes (detail, at 3.13) of group `gid` that `tok` sees.
fn group_volumes(v: &Client, tok: &str, gid: &str) -> Vec<Value> {
    let r = at(v, 13, "GET", "/volumes/detail", tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["group_id"] == gid)
        .cloned()
        .collect()
}

/// A field of an API answer or of the CLI's `-f json` (`id` or `ID`).
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)))
        .map(|(_, x)| x)
        .unwrap_or(&Value::Null)
}

fn id_of(v: &Value) -> String {
    field(v, "id")
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

#[test]
fn cli_groups_group_snapshots_and_groups_from_source_on_real_files() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let vc = vol_client(&c);
    let tok = &c.admin;
    let scratch = c.server.data_dir().join("scratch.raw");
    // The group commands need a microversion the CLI does not send unasked.
    fn osv<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--os-volume-api-version", "3.14"];
        a.extend_from_slice(args);
        a
    }

    // Group types, with group specs; the default one on demand.
    os.ok(&["volume", "type", "create", "gold"]);
    let gt = os.json(&osv(&["volume", "group", "type", "create", "gt1"]));
    let gt_id = id_of(&gt);
    os.ok(&osv(&[
        "volume",
        "group",
        "type",
        "set",
        "--property",
        "k=v",
        "gt1",
    ]));
    let shown = os.json(&osv(&["volume", "group", "type", "show", "gt1"]));
    assert!(shown.to_string().contains("k"), "{shown}");
    let types = os.json(&osv(&["volume", "group", "type", "list"]));
    assert!(types.to_string().contains("gt1"), "{types}");
    let default = os.json(&osv(&["volume", "group", "type", "list", "--default"]));
    assert!(
        default.to_string().contains("default_group_type"),
        "{default}"
    );

    // A group, a volume made in it and one added to it.
    let g1 = os.json(&osv(&[
        "volume",
        "group",
        "create",
        "--volume-group-type",
        "gt1",
        "--volume-type",
        "gold",
        "--name",
        "g1",
    ]));
    let g1_id = id_of(&g1);
    assert_eq!(field(&g1, "status"), "available", "{g1}");
    let r = at(
        &vc,
        13,
        "POST",
        "/volumes",
        tok,
        Some(
            json!({"volume": {"size": 1, "name": "m1", "volume_type": "gold", "group_id": g1_id}}),
        ),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["volume"]["group_id"], g1_id.as_str());
    let v1 = id_of(&r.body["volume"]);
    wait_status(&vc, tok, &v1, "available");
    let v2 = id_of(&os.json(&["volume", "create", "--size", "1", "--type", "gold", "m2"]));
    wait_status(&vc, tok, &v2, "available");
    os.ok(&osv(&["volume", "group", "add", "volume", "g1", "m2"]));
    os.ok(&osv(&["volume", "group", "remove", "volume", "g1", "m2"]));
    assert_eq!(group_volumes(&vc, tok, &g1_id).len(), 1);
    os.ok(&osv(&["volume", "group", "add", "volume", "g1", "m2"]));
    let r = at(
        &vc,
        25,
        "GET",
        &format!("/groups/{g1_id}?list_volume=True"),
        tok,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let mut listed: Vec<String> = r.body["group"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut want = vec![v1.clone(), v2.clone()];
    want.sort();
    assert_eq!(listed, want);

    // A group snapshot: one real snapshot of each volume, taken together.
    qemu_io(&vol_file(&c, &v1), "write -P 0x5a 0 1M");
    let gs = os.json(&osv(&[
        "volume", "group", "snapshot", "create", "--name", "gs1", "g1",
    ]));
    let gs_id = id_of(&gs);
    let shown = wait_res(
        &vc,
        tok,
        &format!("/group_snapshots/{gs_id}"),
        "group_snapshot",
        "available",
    );
    assert_eq!(shown["group_id"], g1_id.as_str());
    assert_eq!(shown["group_type_id"], gt_id.as_str());
    let snaps = at(&vc, 14, "GET", "/snapshots/detail", tok, None).body["snapshots"].clone();
    let members: Vec<&Value> = snaps
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["group_snapshot_id"] == gs_id.as_str())
        .collect();
    assert_eq!(members.len(), 2, "{snaps}");
    let snap_dir = c.server.data_dir().join("volumes");
    for s in &members {
        assert_eq!(s["status"], "available");
        assert_eq!(s["size"], 1);
        assert!(
            snap_dir
                .join(format!("snapshot-{}.qcow2", id_of(s)))
                .exists()
        );
    }
    let s1 = members
        .iter()
        .find(|s| s["volume_id"] == v1.as_str())
        .map(|s| id_of(s))
        .unwrap();
    let s1_file = snap_dir.join(format!("snapshot-{s1}.qcow2"));
    assert!(
        all_bytes(&first_mib(&s1_file, &scratch), 0x5a),
        "the marker is in the snapshot"
    );
    let listed = os.json(&osv(&["volume", "group", "snapshot", "list"]));
    assert!(listed.to_string().contains("gs1"), "{listed}");
    // A member goes with its group snapshot only.
    let r = vc.delete(&format!("/snapshots/{s1}"), tok);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("group snapshot"));
    // The volume moves on; the snapshot keeps the old bytes.
    qemu_io(&vol_file(&c, &v1), "write -P 0xa5 0 1M");

    // A group from the group snapshot, and one cloned from the group.
    let g2 = os.json(&osv(&[
        "volume",
        "group",
        "create",
        "--group-snapshot",
        "gs1",
        "--name",
        "g2",
    ]));
    let g2_id = id_of(&g2);
    wait_res(&vc, tok, &format!("/groups/{g2_id}"), "group", "available");
    let g3 = os.json(&osv(&[
        "volume",
        "group",
        "create",
        "--source-group",
        "g1",
        "--name",
        "g3",
    ]));
    let g3_id = id_of(&g3);
    let shown = wait_res(&vc, tok, &format!("/groups/{g3_id}"), "group", "available");
    assert_eq!(shown["source_group_id"], g1_id.as_str());
    assert_eq!(shown["group_type"], gt_id.as_str());
    for (gid, marker) in [(&g2_id, 0x5a), (&g3_id, 0xa5)] {
        let vols = group_volumes(&vc, tok, gid);
        assert_eq!(vols.len(), 2, "{vols:?}");
        let mut seen = false;
        for v in &vols {
            let v = wait_status(&vc, tok, &id_of(v), "available");
            let from_v1 = v["snapshot_id"] == s1.as_str() || v["source_volid"] == v1.as_str();
            if from_v1 {
                let bytes = first_mib(&vol_file(&c, &id_of(&v)), &scratch);
                assert!(all_bytes(&bytes, marker), "group {gid}: marker {marker:#x}");
                seen = true;
            }
        }
        assert!(seen, "group {gid} has a copy of m1");
    }

    // Deleting: not while there are group snapshots; then with volumes.
    let err = os.fails(&osv(&["volume", "group", "delete", "--force", "g1"]));
    assert!(err.contains("snapshots"), "{err}");
    os.ok(&osv(&["volume", "group", "snapshot", "delete", "gs1"]));
    wait_gone(&vc, tok, &format!("/group_snapshots/{gs_id}"));
    assert!(!s1_file.exists(), "the member snapshot's file is gone");
    let err = os.fails(&osv(&["volume", "group", "delete", "g3"]));
    assert!(err.contains("delete-volumes"), "{err}");
    let err = os.fails(&osv(&["volume", "group", "type", "delete", "gt1"]));
    assert!(err.contains("in use"), "{err}");
    for (name, gid) in [("g1", &g1_id), ("g2", &g2_id), ("g3", &g3_id)] {
        let vols = group_volumes(&vc, tok, gid);
        os.ok(&osv(&["volume", "group", "delete", "--force", name]));
        wait_gone(&vc, tok, &format!("/groups/{gid}"));
        for v in vols {
            assert!(
                !vol_file(&c, &id_of(&v)).exists(),
                "group {name}'s volume file is gone"
            );
        }
    }
    os.ok(&osv(&["volume", "group", "type", "delete", "gt1"]));
}

#[test]
fn group_rules_tenancy_microversions_and_quota() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let admin = &c.admin;
    let (_pa, ta) = c.project("grpa");
    let (pb, tb) = c.project("grpb");

    // Too old a request: the API is not there.
    assert_eq!(at(&vc, 10, "GET", "/groups", &ta, None).status, 404);
    assert_eq!(at(&vc, 10, "GET", "/group_types", admin, None).status, 404);
    assert_eq!(
        at(&vc, 13, "GET", "/group_snapshots", &ta, None).status,
        404
    );

    // Group types: admins manage them, names are unique.
    let r = at(
        &vc,
        11,
        "POST",
        "/group_types",
        &ta,
        Some(json!({"group_type": {"name": "x"}})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = at(
        &vc,
        11,
        "POST",
        "/group_types",
        admin,
        Some(json!({"group_type": {"name": "gt"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let gt = id_of(&r.body["group_type"]);
    let r = at(
        &vc,
        11,
        "POST",
        "/group_types",
        admin,
        Some(json!({"group_type": {"name": "GT"}})),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = at(&vc, 11, "GET", &format!("/group_types/{gt}"), &ta, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["group_type"].get("group_specs").is_none(),
        "specs are for admins"
    );
    let r = at(&vc, 11, "GET", "/group_types/default", &ta, None);
    assert_eq!(
        r.body["group_type"]["name"], "default_group_type",
        "{}",
        r.body
    );
    for name in ["gold", "silver"] {
        let r = vc.post("/types", admin, json!({"volume_type": {"name": name}}));
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // Bad input.
    let create =
        |tok: &str, g: Value| at(&vc, 13, "POST", "/groups", tok, Some(json!({ "group": g })));
    let r = create(&ta, json!({"group_type": "nope", "volume_types": ["gold"]}));
    assert_eq!(r.status, 404, "{}", r.body);
    fault(&r, "itemNotFound");
    let r = create(&ta, json!({"group_type": gt}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = create(&ta, json!({"group_type": gt, "volume_types": []}));
    assert_eq!(r.status, 400, "{}", r.body);
    let r = create(&ta, json!({"group_type": gt, "volume_types": ["nope"]}));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = create(
        &ta,
        json!({"group_type": gt, "volume_types": ["gold"], "availability_zone": "mars"}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(&vc, 13, "POST", "/groups", &ta, Some(json!({"nope": {}})));
    assert_eq!(r.status, 400, "{}", r.body);

    // A group is its project's: others get a 404, admins see all.
    let r = create(
        &ta,
        json!({"group_type": "gt", "volume_types": ["gold"], "name": "ga"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let g = id_of(&r.body["group"]);
    let r = at(&vc, 58, "GET", &format!("/groups/{g}"), &ta, None);
    assert_eq!(r.body["group"]["status"], "available", "{}", r.body);
    assert!(
        r.body["group"].get("project_id").is_none(),
        "project_id is for admins"
    );
    assert_eq!(
        at(&vc, 13, "GET", &format!("/groups/{g}"), &tb, None).status,
        404
    );
    let r = at(&vc, 13, "GET", "/groups/detail", &tb, None);
    assert_eq!(r.body["groups"], json!([]), "{}", r.body);
    let r = at(
        &vc,
        13,
        "PUT",
        &format!("/groups/{g}"),
        &tb,
        Some(json!({"group": {"name": "x"}})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(&vc, 58, "GET", "/groups/detail?all_tenants=1", admin, None);
    let all = r.body["groups"].as_array().unwrap().clone();
    assert!(
        all.iter()
            .any(|x| x["id"] == g.as_str() && x["project_id"].is_string()),
        "{all:?}"
    );

    // Volumes in the group: of its types only; deleted with it only.
    let r = at(
        &vc,
        13,
        "POST",
        "/volumes",
        &ta,
        Some(json!({"volume": {"size": 1, "volume_type": "silver", "group_id": g}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        13,
        "POST",
        "/volumes",
        &tb,
        Some(json!({"volume": {"size": 1, "volume_type": "gold", "group_id": g}})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(
        &vc,
        13,
        "POST",
        "/volumes",
        &ta,
        Some(json!({"volume": {"size": 1, "volume_type": "gold", "group_id": g}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = id_of(&r.body["volume"]);
    wait_status(&vc, &ta, &v, "available");
    // 3.0 does not show the group; 3.13 does.
    assert!(
        vc.get(&format!("/volumes/{v}"), &ta).body["volume"]
            .get("group_id")
            .is_none()
    );
    let r = vc.delete(&format!("/volumes/{v}"), &ta);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vc.post(
        "/os-volume-transfer",
        &ta,
        json!({"transfer": {"volume_id": v}}),
    );
    assert_eq!(
        r.status, 400,
        "a volume of a group is not transferred: {}",
        r.body
    );
    // A volume of another type cannot be added.
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 1, "volume_type": "silver"}}),
    );
    let other = id_of(&r.body["volume"]);
    wait_status(&vc, &ta, &other, "available");
    let r = at(
        &vc,
        13,
        "PUT",
        &format!("/groups/{g}"),
        &ta,
        Some(json!({"group": {"add_volumes": other}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        13,
        "PUT",
        &format!("/groups/{g}"),
        &ta,
        Some(json!({"group": {}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Delete without delete-volumes: refused while it holds volumes.
    let act = |tok: &str, minor: u16, b: Value| {
        at(
            &vc,
            minor,
            "POST",
            &format!("/groups/{g}/action"),
            tok,
            Some(b),
        )
    };
    let r = act(&ta, 13, json!({"delete": {}}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("delete-volumes"));
    // Replication: the file backend has none (3.38), an honest 400.
    assert_eq!(act(&ta, 37, json!({"enable_replication": {}})).status, 404);
    let r = act(&ta, 38, json!({"enable_replication": {}}));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("not a replication"));
    // reset_status: admins, from 3.20.
    assert_eq!(
        act(&ta, 20, json!({"reset_status": {"status": "error"}})).status,
        403
    );
    assert_eq!(
        act(admin, 19, json!({"reset_status": {"status": "error"}})).status,
        404
    );
    assert_eq!(
        act(admin, 20, json!({"reset_status": {"status": "bogus"}})).status,
        400
    );
    assert_eq!(
        act(admin, 20, json!({"reset_status": {"status": "error"}})).status,
        202
    );
    assert_eq!(
        at(&vc, 20, "GET", &format!("/groups/{g}"), &ta, None).body["group"]["status"],
        "error"
    );
    assert_eq!(
        act(admin, 20, json!({"reset_status": {"status": "available"}})).status,
        202
    );

    // A group snapshot of another project's group: 404; its reset: admins.
    let r = at(
        &vc,
        14,
        "POST",
        "/group_snapshots",
        &tb,
        Some(json!({"group_snapshot": {"group_id": g}})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(
        &vc,
        14,
        "POST",
        "/group_snapshots",
        &ta,
        Some(json!({"group_snapshot": {"group_id": g, "name": "s"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let gs = id_of(&r.body["group_snapshot"]);
    wait_res(
        &vc,
        &ta,
        &format!("/group_snapshots/{gs}"),
        "group_snapshot",
        "available",
    );
    assert_eq!(
        at(&vc, 14, "GET", &format!("/group_snapshots/{gs}"), &tb, None).status,
        404
    );
    let r = at(
        &vc,
        29,
        "GET",
        "/group_snapshots/detail?sort=name:asc&limit=1",
        &ta,
        None,
    );
    assert_eq!(
        r.body["group_snapshots"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    let reset = json!({"reset_status": {"status": "error"}});
    let path = format!("/group_snapshots/{gs}/action");
    assert_eq!(
        at(&vc, 19, "POST", &path, &ta, Some(reset.clone())).status,
        403
    );
    assert_eq!(
        at(&vc, 18, "POST", &path, admin, Some(reset.clone())).status,
        404
    );
    assert_eq!(at(&vc, 19, "POST", &path, admin, Some(reset)).status, 202);
    assert_eq!(
        at(
            &vc,
            14,
            "DELETE",
            &format!("/group_snapshots/{gs}"),
            &ta,
            None
        )
        .status,
        202
    );
    wait_gone(&vc, &ta, &format!("/group_snapshots/{gs}"));

    // With delete-volumes: the group and its volume go.
    let r = act(&ta, 13, json!({"delete": {"delete-volumes": true}}));
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(&vc, &ta, &format!("/groups/{g}"));
    wait_gone(&vc, &ta, &format!("/volumes/{v}"));

    // The groups quota, counted in the write.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pb}"),
        Some(admin),
        Some(json!({"quota_set": {"groups": 1}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = create(&tb, json!({"group_type": gt, "volume_types": ["gold"]}));
    assert_eq!(r.status, 202, "{}", r.body);
    let r = create(&tb, json!({"group_type": gt, "volume_types": ["gold"]}));
    assert_eq!(r.status, 413, "{}", r.body);
    let r = vc.get(&format!("/os-quota-sets/{pb}?usage=True"), &tb);
    assert_eq!(r.body["quota_set"]["groups"]["in_use"], 1, "{}", r.body);
}
