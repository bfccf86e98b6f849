//! Cinder microversions 3.7 to 3.64 of backups, transfers and the admin
//! APIs (services, pools, limits, clusters, workers, resource filters,
//! default types) against the real binary: each change is asked for at
//! its microversion and at the one before, through the `openstack` CLI
//! where it has the command (`--os-volume-api-version 3.X`) and HTTP
//! otherwise. Effects are read back, not exit codes.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Client, Resp};
use super::compute::Cloud;
use super::volume::{fault, vol_client, vol_file, wait_status, wait_storage};

/// A request at microversion `3.{mv}`.
fn at(v: &Client, mv: u16, method: &str, path: &str, tok: &str, body: Option<Value>) -> Resp {
    let hv = format!("volume 3.{mv}");
    v.raw(
        method,
        path,
        Some(tok),
        &[("OpenStack-API-Version", hv.as_str())],
        body.map(|b| b.to_string()),
    )
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
        assert!(s != "error", "backup {id} failed: {}", r.body);
        assert!(Instant::now() < deadline, "backup {id} stuck in {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn new_volume(v: &Client, tok: &str, name: &str) -> String {
    let r = v.post(
        "/volumes",
        tok,
        json!({"volume": {"size": 1, "name": name}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(v, tok, &id, "available");
    id
}

/// Runs `qemu-io -c CMD` on a volume's qcow2 file: whether it succeeded
/// (a `read -P` whose pattern does not match fails) and its output.
fn qemu_io(c: &Cloud, vol: &str, cmd: &str) -> (bool, String) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(vol_file(c, vol))
        .output()
        .expect("qemu-io (apt-get install qemu-utils)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn backup_microversions_update_metadata_attributes_count_sort_zone_and_volume_from_backup() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pa, ta) = c.project("bmva");
    let (_pb, tb) = c.project("bmvb");

    let vol = new_volume(&vc, &ta, "src");
    assert!(qemu_io(&c, &vol, "write -P 0x5a 0 1M").0);

    // 3.43: metadata on create; before, it is ignored.
    let r = at(
        &vc,
        43,
        "POST",
        "/backups",
        &ta,
        Some(json!({"backup": {"volume_id": vol, "name": "zeta", "metadata": {"k": "v"}}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let mut keys: Vec<&String> = r.body["backup"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["id", "links", "name"],
        "the summary view: {}",
        r.body
    );
    let b1 = r.body["backup"]["id"].as_str().unwrap().to_string();
    wait_backup(&vc, &ta, &b1, "available");
    let shown = at(&vc, 43, "GET", &format!("/backups/{b1}"), &ta, None).body;
    assert_eq!(shown["backup"]["metadata"], json!({"k": "v"}), "{shown}");
    let old = at(&vc, 42, "GET", &format!("/backups/{b1}"), &ta, None).body;
    assert!(old["backup"].get("metadata").is_none(), "{old}");
    let r = at(
        &vc,
        43,
        "POST",
        "/backups",
        &ta,
        Some(json!({"backup": {"volume_id": vol, "metadata": "nope"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    fault(&r, "badRequest");

    // 3.51: a zone on create; an unknown one is a 400.
    let r = at(
        &vc,
        51,
        "POST",
        "/backups",
        &ta,
        Some(
            json!({"backup": {"volume_id": vol, "name": "alpha", "availability_zone": "atlantis"}}),
        ),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        51,
        "POST",
        "/backups",
        &ta,
        Some(json!({"backup": {"volume_id": vol, "name": "alpha", "availability_zone": "nova"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let b2 = r.body["backup"]["id"].as_str().unwrap().to_string();
    let b = wait_backup(&vc, &ta, &b2, "available");
    assert_eq!(b["availability_zone"], "nova");
    wait_status(&vc, &ta, &vol, "available");

    // 3.9: update name and description; 3.43 also metadata.
    let path = format!("/backups/{b2}");
    let r = at(
        &vc,
        8,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"name": "x"}})),
    );
    assert_eq!(r.status, 404, "no update before 3.9: {}", r.body);
    let r = at(
        &vc,
        9,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"name": "beta", "description": "d"}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["backup"]["name"], "beta");
    assert_eq!(r.body["backup"]["id"], b2.as_str());
    let r = at(
        &vc,
        9,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"metadata": {"a": "b"}}})),
    );
    assert_eq!(r.status, 400, "metadata needs 3.43: {}", r.body);
    let r = at(
        &vc,
        43,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"metadata": {"a": "b"}}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = at(
        &vc,
        9,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"size": 3}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        9,
        "PUT",
        &path,
        &ta,
        Some(json!({"backup": {"name": 7}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        9,
        "PUT",
        &path,
        &tb,
        Some(json!({"backup": {"name": "stolen"}})),
    );
    assert_eq!(r.status, 404, "another project's backup: {}", r.body);
    let shown = at(&vc, 43, "GET", &path, &ta, None).body["backup"].clone();
    assert_eq!(shown["name"], "beta");
    assert_eq!(shown["description"], "d");
    assert_eq!(shown["metadata"], json!({"a": "b"}));

    // 3.18 project and 3.56 user attributes: admins only; 3.64 key id.
    let admin_view = at(&vc, 18, "GET", &path, &c.admin, None).body["backup"].clone();
    assert_eq!(admin_view["os-backup-project-attr:project_id"], pa.as_str());
    assert!(admin_view.get("user_id").is_none(), "{admin_view}");
    let before = at(&vc, 17, "GET", &path, &c.admin, None).body["backup"].clone();
    assert!(before.get("os-backup-project-attr:project_id").is_none());
    let member = at(&vc, 64, "GET", &path, &ta, None).body["backup"].clone();
    assert!(member.get("os-backup-project-attr:project_id").is_none());
    assert!(member.get("user_id").is_none(), "{member}");
    assert_eq!(member["encryption_key_id"], Value::Null);
    let admin_view = at(
        &vc,
        56,
        "GET",
        "/backups/detail?all_tenants=1",
        &c.admin,
        None,
    )
    .body;
    let mine = admin_view["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == b2.as_str())
        .unwrap();
    assert!(mine["user_id"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(mine.get("encryption_key_id").is_none(), "3.64 only: {mine}");

    // 3.37: sort by name; 3.45: count.
    let r = at(&vc, 36, "GET", "/backups?sort=name:asc", &ta, None);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(&vc, 37, "GET", "/backups?sort=name:asc", &ta, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        ids(&r.body["backups"]),
        [b2.clone(), b1.clone()],
        "beta < zeta"
    );
    let r = at(
        &vc,
        37,
        "GET",
        "/backups?sort_key=name&sort_dir=desc",
        &ta,
        None,
    );
    assert_eq!(ids(&r.body["backups"]), [b1.clone(), b2.clone()]);
    let r = at(
        &vc,
        45,
        "GET",
        "/backups/detail?with_count=true&limit=1",
        &ta,
        None,
    );
    assert_eq!(r.body["count"], 2, "{}", r.body);
    assert_eq!(r.body["backups"].as_array().unwrap().len(), 1);
    assert!(
        r.body["backups_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );
    let r = at(&vc, 44, "GET", "/backups?with_count=true", &ta, None);
    assert!(r.body.get("count").is_none(), "{}", r.body);
    let r = at(&vc, 45, "GET", "/backups?with_count=maybe", &ta, None);
    assert_eq!(r.status, 400, "{}", r.body);

    // 3.47: a volume from a backup gets its bytes.
    let r = at(
        &vc,
        47,
        "POST",
        "/volumes",
        &ta,
        Some(json!({"volume": {"backup_id": b1, "snapshot_id": vol}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        47,
        "POST",
        "/volumes",
        &tb,
        Some(json!({"volume": {"backup_id": b1}})),
    );
    assert_eq!(r.status, 404, "another project's backup: {}", r.body);
    let r = at(
        &vc,
        47,
        "POST",
        "/volumes",
        &ta,
        Some(json!({"volume": {"backup_id": b1, "name": "restored"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let nv = r.body["volume"]["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["volume"]["size"], 1, "the backup's size: {}", r.body);
    let v = wait_status(&vc, &ta, &nv, "available");
    assert_eq!(v["name"], "restored");
    wait_backup(&vc, &ta, &b1, "available");
    let (same, read) = qemu_io(&c, &nv, "read -P 0x5a 0 1M");
    assert!(same && !read.contains("verification failed"), "{read}");
    // Before 3.47 `backup_id` is not read: an empty volume.
    let r = at(
        &vc,
        46,
        "POST",
        "/volumes",
        &ta,
        Some(json!({"volume": {"backup_id": b1, "size": 1}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let empty = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &ta, &empty, "available");
    let (same, read) = qemu_io(&c, &empty, "read -P 0x5a 0 1M");
    assert!(!same || read.contains("verification failed"), "{read}");

    // Export and import (admins): the record comes back under a new id,
    // and restores the bytes after the original is deleted (its chunks
    // are still named by the import).
    let exp = format!("/backups/{b1}/export_record");
    assert_eq!(vc.get(&exp, &ta).status, 403);
    let r = vc.get(&exp, &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = r.body["backup-record"].clone();
    assert!(
        rec["backup_service"]
            .as_str()
            .unwrap()
            .starts_with("cinder.backup.drivers")
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut fields: Value =
        serde_json::from_slice(&b64.decode(rec["backup_url"].as_str().unwrap()).unwrap()).unwrap();
    let new_id = "3f1c0a52-7a0b-4e0e-9d3c-5f3c1c0f2b11";
    fields["id"] = json!(new_id);
    let url = b64.encode(fields.to_string());
    let import = |service: &str, url: &str, tok: &str| {
        vc.post(
            "/backups/import_record",
            tok,
            json!({"backup-record": {"backup_service": service, "backup_url": url}}),
        )
    };
    let service = rec["backup_service"].as_str().unwrap();
    assert_eq!(import(service, &url, &ta).status, 403);
    assert_eq!(
        import("cinder.backup.drivers.swift", &url, &c.admin).status,
        400
    );
    assert_eq!(import(service, "not base64!", &c.admin).status, 400);
    assert_eq!(
        import(service, rec["backup_url"].as_str().unwrap(), &c.admin).status,
        400,
        "the id exists"
    );
    let r = import(service, &url, &c.admin);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["backup"]["id"], new_id);
    assert_eq!(vc.delete(&format!("/backups/{b1}"), &ta).status, 202);
    let r = vc.post(
        &format!("/backups/{new_id}/restore"),
        &c.admin,
        json!({"restore": {"name": "from-import"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let rv = r.body["restore"]["volume_id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &rv, "available");
    let (same, read) = qemu_io(&c, &rv, "read -P 0x5a 0 1M");
    assert!(same && !read.contains("verification failed"), "{read}");
}

#[test]
fn cli_backup_set_and_transfers_with_and_without_snapshots() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pb, tb) = c.project("tmvb");

    // `volume backup set --name` at 3.9.
    let vid = new_volume(&vc, &c.admin, "tv");
    let b = os.json(&["volume", "backup", "create", "--name", "cb", "tv"]);
    let bid = b["id"].as_str().unwrap().to_string();
    wait_backup(&vc, &c.admin, &bid, "available");
    wait_status(&vc, &c.admin, &vid, "available");
    os.ok(&[
        "--os-volume-api-version",
        "3.9",
        "volume",
        "backup",
        "set",
        "--name",
        "renamed",
        "--description",
        "by the cli",
        "cb",
    ]);
    let shown = vc.get(&format!("/backups/{bid}"), &c.admin).body["backup"].clone();
    assert_eq!(shown["name"], "renamed");
    assert_eq!(shown["description"], "by the cli");

    // A snapshot of the volume.
    let r = vc.post(
        "/snapshots",
        &c.admin,
        json!({"snapshot": {"volume_id": vid, "name": "ts"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{sid}"), &c.admin).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline, "snapshot stuck");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3.55: `--no-snapshots`; the snapshot stays with the giver.
    let t = os.json(&[
        "--os-volume-api-version",
        "3.55",
        "volume",
        "transfer",
        "request",
        "create",
        "--no-snapshots",
        "--name",
        "bare",
        "tv",
    ]);
    let tid = t["id"].as_str().unwrap().to_string();
    let d = at(
        &vc,
        55,
        "GET",
        &format!("/volume-transfers/{tid}"),
        &c.admin,
        None,
    );
    assert_eq!(d.body["transfer"]["no_snapshots"], true, "{}", d.body);
    assert!(
        d.body["transfer"].get("accepted").is_none(),
        "3.57: {}",
        d.body
    );
    let key = t["auth_key"].as_str().unwrap().to_string();
    // 3.57 lists through `/volume-transfers`.
    let listed = os.json(&[
        "--os-volume-api-version",
        "3.57",
        "volume",
        "transfer",
        "request",
        "list",
    ]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == tid.as_str() && x["Name"] == "bare"),
        "{listed}"
    );
    let d = at(
        &vc,
        57,
        "GET",
        &format!("/volume-transfers/{tid}"),
        &c.admin,
        None,
    );
    assert_eq!(d.status, 200, "{}", d.body);
    let d = &d.body["transfer"];
    assert_eq!(d["no_snapshots"], true);
    assert_eq!(d["accepted"], false);
    assert_eq!(d["destination_project_id"], Value::Null);
    assert!(
        d["links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("/volume-transfers/")
    );
    let r = at(
        &vc,
        57,
        "POST",
        &format!("/volume-transfers/{tid}/accept"),
        &tb,
        Some(json!({"accept": {"auth_key": key}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = vc.get(&format!("/volumes/{vid}"), &c.admin).body["volume"].clone();
    assert_eq!(v["os-vol-tenant-attr:tenant_id"], pb.as_str(), "{v}");
    let s = vc.get(&format!("/snapshots/{sid}"), &c.admin).body["snapshot"].clone();
    assert_ne!(
        s["os-extended-snapshot-attributes:project_id"],
        pb.as_str(),
        "the snapshot stayed: {s}"
    );
    assert_eq!(s["status"], "available", "{s}");
    assert_eq!(vc.get(&format!("/snapshots/{sid}"), &tb).status, 404);

    // Without `no_snapshots` (the default) the snapshots move along.
    let v2 = new_volume(&vc, &c.admin, "tv2");
    let r = vc.post(
        "/snapshots",
        &c.admin,
        json!({"snapshot": {"volume_id": v2, "name": "ts2"}}),
    );
    let s2 = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    while vc.get(&format!("/snapshots/{s2}"), &c.admin).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline, "snapshot stuck");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = at(
        &vc,
        54,
        "POST",
        "/os-volume-transfer",
        &c.admin,
        Some(json!({"transfer": {"volume_id": v2, "no_snapshots": true}})),
    );
    assert_eq!(r.status, 400, "no_snapshots needs 3.55: {}", r.body);
    let r = at(
        &vc,
        55,
        "POST",
        "/os-volume-transfer",
        &c.admin,
        Some(json!({"transfer": {"volume_id": v2, "no_snapshots": "perhaps"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        55,
        "POST",
        "/os-volume-transfer",
        &c.admin,
        Some(json!({"transfer": {"volume_id": v2, "name": "full"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["transfer"]["no_snapshots"], false);
    let (t2, k2) = (
        r.body["transfer"]["id"].as_str().unwrap().to_string(),
        r.body["transfer"]["auth_key"].as_str().unwrap().to_string(),
    );
    let r = vc.post(
        &format!("/os-volume-transfer/{t2}/accept"),
        &tb,
        json!({"accept": {"auth_key": k2}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        vc.get(&format!("/snapshots/{s2}"), &tb).status,
        200,
        "moved"
    );

    // `/volume-transfers` is a 404 before 3.55; 3.59 sorts and pages.
    let r = at(&vc, 54, "GET", "/volume-transfers", &c.admin, None);
    assert_eq!(r.status, 404, "{}", r.body);
    let v3 = new_volume(&vc, &c.admin, "tv3");
    let v4 = new_volume(&vc, &c.admin, "tv4");
    for (v, n) in [(&v3, "b-second"), (&v4, "a-first")] {
        let r = at(
            &vc,
            57,
            "POST",
            "/volume-transfers",
            &c.admin,
            Some(json!({"transfer": {"volume_id": v, "name": n}})),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        assert!(r.body["transfer"]["source_project_id"].is_string());
    }
    let names = |b: &Value| -> Vec<String> {
        b["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = at(
        &vc,
        59,
        "GET",
        "/volume-transfers/detail?sort=name:asc",
        &c.admin,
        None,
    );
    assert_eq!(names(&r.body), ["a-first", "b-second"], "{}", r.body);
    let r = at(
        &vc,
        59,
        "GET",
        "/volume-transfers?sort=name:desc&limit=1",
        &c.admin,
        None,
    );
    assert_eq!(names(&r.body), ["b-second"]);
    assert!(
        r.body["transfers_links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("marker=")
    );
    let r = at(
        &vc,
        59,
        "GET",
        "/volume-transfers?sort=size:asc",
        &c.admin,
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        59,
        "GET",
        &format!("/volume-transfers?volume_id={v3}"),
        &c.admin,
        None,
    );
    assert_eq!(names(&r.body), ["b-second"]);
    // Before 3.59: oldest first, whatever `sort` says.
    let r = at(
        &vc,
        58,
        "GET",
        "/volume-transfers?sort=name:asc",
        &c.admin,
        None,
    );
    assert_eq!(names(&r.body), ["b-second", "a-first"]);
    // A member sees only their own.
    let r = at(&vc, 59, "GET", "/volume-transfers", &tb, None);
    assert_eq!(names(&r.body), Vec::<String>::new());
}

#[test]
fn admin_apis_services_log_pools_limits_clusters_workers_filters_and_default_types() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pm, tm) = c.project("amv");
    let os = cli().and_then(|_| Os::new(&c.server));

    // 3.7 cluster, 3.49 backend_state.
    let s = at(&vc, 7, "GET", "/os-services", &c.admin, None).body;
    let rows = s["services"].as_array().unwrap();
    assert!(
        rows.iter().all(|r| r.get("cluster") == Some(&Value::Null)),
        "{s}"
    );
    assert!(rows.iter().all(|r| r.get("backend_state").is_none()), "{s}");
    let s = at(&vc, 6, "GET", "/os-services", &c.admin, None).body;
    assert!(s["services"][0].get("cluster").is_none());
    let s = at(&vc, 49, "GET", "/os-services", &c.admin, None).body;
    let vol = s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["binary"] == "cinder-volume")
        .unwrap()
        .clone();
    assert_eq!(vol["backend_state"], "up", "{s}");
    assert_eq!(at(&vc, 49, "GET", "/os-services", &tm, None).status, 403);

    // 3.32 log levels: the process's real level; changing it is a 501.
    let r = at(
        &vc,
        31,
        "PUT",
        "/os-services/get-log",
        &c.admin,
        Some(json!({})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(&vc, 32, "PUT", "/os-services/get-log", &tm, Some(json!({})));
    assert_eq!(r.status, 403, "{}", r.body);
    let r = at(
        &vc,
        32,
        "PUT",
        "/os-services/get-log",
        &c.admin,
        Some(json!({"binary": "cinder-api"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rows = r.body["log_levels"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{}", r.body);
    let level = rows[0]["levels"]["stratus"].as_str().unwrap().to_string();
    let want = match std::env::var("STRATUS_LOG")
        .unwrap_or_default()
        .to_lowercase()
        .as_str()
    {
        "debug" => "DEBUG",
        "warn" => "WARNING",
        "error" => "ERROR",
        "trace" => "TRACE",
        _ => "INFO",
    };
    assert_eq!(level, want);
    let r = at(
        &vc,
        32,
        "PUT",
        "/os-services/get-log",
        &c.admin,
        Some(json!({"binary": "cinder-nothing"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        32,
        "PUT",
        "/os-services/set-log",
        &c.admin,
        Some(json!({"level": "LOUD"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let other = if level == "ERROR" { "DEBUG" } else { "ERROR" };
    let r = at(
        &vc,
        32,
        "PUT",
        "/os-services/set-log",
        &c.admin,
        Some(json!({"level": other, "binary": "cinder-api"})),
    );
    assert_eq!(r.status, 501, "{}", r.body);
    fault(&r, "notImplemented");
    if level != "TRACE" {
        let r = at(
            &vc,
            32,
            "PUT",
            "/os-services/set-log",
            &c.admin,
            Some(json!({"level": level, "binary": "cinder-api"})),
        );
        assert_eq!(r.status, 202, "the level it has: {}", r.body);
    }

    // 3.28/3.35 pool filters.
    let pools = at(&vc, 28, "GET", "/scheduler-stats/get_pools", &c.admin, None).body;
    // `#` in a query is `%23`.
    let pool = pools["pools"][0]["name"]
        .as_str()
        .unwrap()
        .replace('#', "%23");
    let q = |mv, query: &str| {
        at(
            &vc,
            mv,
            "GET",
            &format!("/scheduler-stats/get_pools?{query}"),
            &c.admin,
            None,
        )
    };
    assert_eq!(
        q(28, &format!("name={pool}")).body["pools"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(q(28, "name=nowhere").body["pools"], json!([]));
    assert_eq!(
        q(27, "name=nowhere").body["pools"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        q(35, "volume_type=__DEFAULT__").body["pools"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(q(35, "volume_type=missing").status, 404);

    // 3.39 `/limits?project_id=` for admins.
    new_volume(&vc, &tm, "lim");
    let used = |r: Resp| r.body["limits"]["absolute"]["totalVolumesUsed"].clone();
    let path = format!("/limits?project_id={pm}");
    assert_eq!(used(at(&vc, 39, "GET", &path, &c.admin, None)), 1);
    assert_eq!(
        used(at(&vc, 38, "GET", &path, &c.admin, None)),
        0,
        "the admin's own"
    );
    let (_po, to) = c.project("amvo");
    assert_eq!(
        used(at(&vc, 39, "GET", &path, &to, None)),
        0,
        "ignored for members"
    );

    // Clusters (3.7): none.
    assert_eq!(at(&vc, 6, "GET", "/clusters", &c.admin, None).status, 404);
    assert_eq!(at(&vc, 7, "GET", "/clusters", &tm, None).status, 403);
    assert_eq!(
        at(&vc, 7, "GET", "/clusters/detail", &c.admin, None).body,
        json!({"clusters": []})
    );
    assert_eq!(
        at(&vc, 7, "GET", "/clusters?bogus=1", &c.admin, None).status,
        400
    );
    let r = at(&vc, 7, "GET", "/clusters/cl1", &c.admin, None);
    assert_eq!(r.status, 404);
    fault(&r, "itemNotFound");
    let r = at(&vc, 7, "PUT", "/clusters/enable", &c.admin, Some(json!({})));
    assert_eq!(r.status, 400, "{}", r.body);

    // Workers cleanup (3.24).
    assert_eq!(
        at(
            &vc,
            23,
            "POST",
            "/workers/cleanup",
            &c.admin,
            Some(json!({}))
        )
        .status,
        404
    );
    assert_eq!(
        at(&vc, 24, "POST", "/workers/cleanup", &tm, Some(json!({}))).status,
        403
    );
    let r = at(
        &vc,
        24,
        "POST",
        "/workers/cleanup",
        &c.admin,
        Some(json!({"nope": 1})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        24,
        "POST",
        "/workers/cleanup",
        &c.admin,
        Some(json!({"is_up": "sideways"})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        24,
        "POST",
        "/workers/cleanup",
        &c.admin,
        Some(json!({"binary": "cinder-volume"})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"cleaning": [], "unavailable": []}),
        "the node is up"
    );
    // openstacksdk sends every filter, null when not given.
    let r = at(
        &vc,
        24,
        "POST",
        "/workers/cleanup",
        &c.admin,
        Some(json!({"binary": null, "host": null, "is_up": false})),
    );
    assert_eq!(r.status, 202, "{}", r.body);

    // Resource filters (3.33).
    assert_eq!(
        at(&vc, 32, "GET", "/resource_filters", &tm, None).status,
        404
    );
    let r = at(
        &vc,
        33,
        "GET",
        "/resource_filters?resource=backup",
        &tm,
        None,
    );
    assert_eq!(
        r.body,
        json!({"resource_filters": [{"resource": "backup", "filters": ["name", "status", "volume_id", "project_id"]}]})
    );

    // Default types (3.62), admins only.
    let dt = format!("/default-types/{pm}");
    let body = json!({"default_type": {"volume_type": "__DEFAULT__"}});
    assert_eq!(
        at(&vc, 61, "PUT", &dt, &c.admin, Some(body.clone())).status,
        404
    );
    assert_eq!(at(&vc, 62, "PUT", &dt, &tm, Some(body.clone())).status, 403);
    assert_eq!(at(&vc, 62, "GET", &dt, &tm, None).status, 403);
    let r = at(&vc, 62, "GET", &dt, &c.admin, None);
    assert_eq!(r.status, 404, "none yet: {}", r.body);
    let r = at(
        &vc,
        62,
        "PUT",
        &dt,
        &c.admin,
        Some(json!({"default_type": {"volume_type": "missing"}})),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(
        &vc,
        62,
        "PUT",
        &dt,
        &c.admin,
        Some(json!({"default_type": {"kind": "x"}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(
        &vc,
        62,
        "PUT",
        "/default-types/no-such-project",
        &c.admin,
        Some(body.clone()),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(&vc, 62, "PUT", &dt, &c.admin, Some(body.clone()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["default_type"]["project_id"], pm.as_str());
    let tid = r.body["default_type"]["volume_type_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = at(&vc, 62, "GET", &dt, &c.admin, None);
    assert_eq!(r.body["default_type"]["volume_type_id"], tid.as_str());
    let r = at(&vc, 62, "GET", "/default-types", &c.admin, None);
    assert_eq!(
        r.body["default_types"],
        json!([{"project_id": pm, "volume_type_id": tid}])
    );
    assert_eq!(at(&vc, 62, "GET", "/default-types", &tm, None).status, 403);
    assert_eq!(at(&vc, 62, "DELETE", &dt, &c.admin, None).status, 204);
    assert_eq!(at(&vc, 62, "GET", &dt, &c.admin, None).status, 404);
    assert_eq!(at(&vc, 62, "DELETE", &dt, &c.admin, None).status, 404);

    // The CLI's commands for these.
    let Some(os) = os else { return };
    let v = |mv: &'static str, args: &[&'static str]| {
        let mut a = vec!["--os-volume-api-version", mv];
        a.extend(args);
        os.json(&a)
    };
    assert_eq!(
        v("3.7", &["block", "storage", "cluster", "list"]),
        json!([])
    );
    let filters = v("3.33", &["block", "storage", "resource", "filter", "list"]);
    let backup = filters
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["Resource"] == "backup")
        .unwrap_or_else(|| panic!("{filters}"))
        .clone();
    assert!(
        backup["Filters"].to_string().contains("volume_id"),
        "{backup}"
    );
    // (`block storage cleanup` is not used: this openstackclient calls
    // the SDK without the arguments it requires.)
    let levels = v(
        "3.32",
        &[
            "block",
            "storage",
            "log",
            "level",
            "list",
            "--service",
            "cinder-api",
        ],
    );
    assert_eq!(levels[0]["Level"], level.as_str(), "{levels}");
    // `set` to the level it has is done; to another it is refused.
    let set = |lvl: &str| {
        [
            "--os-volume-api-version",
            "3.32",
            "block",
            "storage",
            "log",
            "level",
            "set",
            "--service",
            "cinder-api",
            lvl,
        ]
        .map(str::to_string)
    };
    if ["INFO", "WARNING", "ERROR", "DEBUG"].contains(&level.as_str()) {
        let args = set(&level);
        os.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let args = set(other);
    let out = os.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("501") || out.contains("cannot be changed"),
        "{out}"
    );
}
