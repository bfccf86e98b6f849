//! Block storage (Cinder v3) against the real binary: `stratus up`'s own
//! agent is a storage node, so volumes are real qcow2 files made with
//! qemu-img in `<data dir>/volumes`. The real `openstack` CLI drives the
//! lifecycle; raw HTTP checks the rules (tenancy, policy, quota, bad
//! input) and Cinder's error shape.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Client, Resp};
use super::compute::Cloud;

pub(super) fn vol_client(c: &Cloud) -> Client {
    c.server.client_at("/volume/v3")
}

fn vol_dir(c: &Cloud) -> PathBuf {
    c.server.data_dir().join("volumes")
}

pub(super) fn vol_file(c: &Cloud, id: &str) -> PathBuf {
    vol_dir(c).join(format!("volume-{id}.qcow2"))
}

/// `qemu-img info`'s virtual size of a file, in bytes.
fn virtual_size(path: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img info {}", path.display());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Waits until a volume's status is `want` (panics on `error`).
pub(super) fn wait_status(v: &Client, tok: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = v.get(&format!("/volumes/{id}"), tok);
        assert_eq!(r.status, 200, "{}", r.body);
        let s = r.body["volume"]["status"].as_str().unwrap().to_string();
        if s == want {
            return r.body["volume"].clone();
        }
        assert!(!s.starts_with("error"), "volume {id} went to {s}");
        assert!(Instant::now() < deadline, "volume {id} stuck in {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gone(v: &Client, tok: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while v.get(path, tok).status != 404 {
        assert!(Instant::now() < deadline, "{path} was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `stratus up`'s own agent has registered as a storage node
/// (a volume asked for before that is, as in Cinder, made in `error`).
pub(super) fn wait_storage(c: &Cloud) {
    let v = vol_client(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = v.get("/os-services", &c.admin).body;
        if s["services"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["binary"] == "cinder-volume" && x["state"] == "up")
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "no storage node registered: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts Cinder's fault shape and returns the message.
pub(super) fn fault(r: &Resp, name: &str) -> String {
    let f = &r.body[name];
    assert_eq!(f["code"], r.status, "fault {name}: {}", r.body);
    f["message"].as_str().expect("message").to_string()
}

#[test]
fn cli_volume_snapshot_type_lifecycle_on_real_files() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let v = os.json(&["volume", "create", "--size", "1", "v1"]);
    let id = v["id"].as_str().unwrap().to_string();
    let vc = vol_client(&c);
    wait_status(&vc, &c.admin, &id, "available");
    let file = vol_file(&c, &id);
    assert_eq!(virtual_size(&file), 1 << 30, "a 1 GiB qcow2 file");

    let listed = os.json(&["volume", "list"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == id.as_str())
    );
    os.ok(&[
        "volume",
        "set",
        "--name",
        "v1b",
        "--property",
        "tier=fast",
        "v1",
    ]);
    let shown = os.json(&["volume", "show", "v1b"]);
    assert_eq!(shown["properties"]["tier"], "fast", "{shown}");

    // Extend: the file really grows.
    os.ok(&["volume", "set", "--size", "3", "v1b"]);
    wait_status(&vc, &c.admin, &id, "available");
    assert_eq!(os.json(&["volume", "show", "v1b"])["size"], 3);
    assert_eq!(virtual_size(&file), 3 << 30, "extended to 3 GiB");

    // A snapshot is a file of its own; the volume cannot go while it exists.
    let s = os.json(&["volume", "snapshot", "create", "--volume", "v1b", "s1"]);
    let sid = s["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{sid}"), &c.admin).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline, "snapshot stuck");
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap_file = vol_dir(&c).join(format!("snapshot-{sid}.qcow2"));
    assert_eq!(virtual_size(&snap_file), 3 << 30);
    let snaps = os.json(&["volume", "snapshot", "list"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let r = vc.delete(&format!("/volumes/{id}"), &c.admin);
    assert_eq!(r.status, 400);
    assert!(fault(&r, "badRequest").contains("dependent snapshots"));
    os.ok(&["volume", "snapshot", "delete", "s1"]);
    wait_gone(&vc, &c.admin, &format!("/snapshots/{sid}"));
    assert!(!snap_file.exists(), "the snapshot's file is gone");

    // Types with extra specs.
    os.ok(&["volume", "type", "create", "--property", "k=v", "gold"]);
    os.ok(&["volume", "type", "set", "--property", "x=y", "gold"]);
    let types = os.json(&["volume", "type", "list", "--long"]);
    let gold = types
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["Name"] == "gold")
        .unwrap_or_else(|| panic!("{types}"))
        .clone();
    let props = gold["Properties"].to_string();
    assert!(props.contains('k') && props.contains('x'), "{gold}");
    assert!(
        types
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["Name"] == "__DEFAULT__")
    );

    // The volume service in the CLI's cross-service commands.
    let q = os.json(&["quota", "show"]);
    let limit = |name: &str| {
        q.as_array()
            .unwrap()
            .iter()
            .find(|r| r["Resource"] == name)
            .map(|r| r["Limit"].clone())
            .unwrap_or_else(|| panic!("no {name} in {q}"))
    };
    assert_eq!(limit("volumes"), 10);
    assert_eq!(limit("gigabytes"), 1000);
    assert_eq!(limit("snapshots"), 10);
    let zones = os.json(&["availability", "zone", "list", "--volume"]);
    assert!(
        zones
            .as_array()
            .unwrap()
            .iter()
            .any(|z| z["Zone Name"] == "nova" && z["Zone Status"] == "available"),
        "{zones}"
    );
    let limits = os.json(&["limits", "show", "--absolute"]);
    assert!(
        limits
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["Name"] == "total_gigabytes_used" && l["Value"] == 3),
        "{limits}"
    );

    os.ok(&["volume", "delete", "v1b"]);
    wait_gone(&vc, &c.admin, &format!("/volumes/{id}"));
    assert!(!file.exists(), "the volume's file is gone");
    os.ok(&["volume", "type", "delete", "gold"]);
}

#[test]
fn volume_rules_tenancy_policy_quota_and_sources() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (pa, ta) = c.project("vola");
    let (_pb, tb) = c.project("volb");

    // Discovery: the version document declares the exact range.
    let r = vc.call("GET", "/", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["versions"][0]["version"], "3.70");
    assert_eq!(r.body["versions"][0]["min_version"], "3.0");
    let r = vc.raw(
        "GET",
        "/volumes",
        Some(&ta),
        &[("OpenStack-API-Version", "volume 3.99")],
        None,
    );
    assert_eq!(r.status, 406);
    fault(&r, "notAcceptable");

    // Both URL forms; a project id in the URL that is not the token's is refused.
    let r = vc.post(
        &format!("/{pa}/volumes"),
        &ta,
        json!({"volume": {"size": 1, "name": "a1"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let a1 = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &ta, &a1, "available");
    let r = vc.get(&format!("/{pa}/volumes/{a1}"), &tb);
    assert_eq!(r.status, 400, "{}", r.body);

    // Another project sees nothing of it.
    let r = vc.get(&format!("/volumes/{a1}"), &tb);
    assert_eq!(r.status, 404);
    assert!(fault(&r, "itemNotFound").contains(&a1));
    assert_eq!(vc.get("/volumes/detail", &tb).body["volumes"], json!([]));
    let r = vc.post(
        &format!("/volumes/{a1}/action"),
        &tb,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 404);

    // Admin-only actions are refused to members in Cinder's shape.
    for body in [
        json!({"os-reset_status": {"status": "error"}}),
        json!({"os-force_delete": {}}),
    ] {
        let r = vc.post(&format!("/volumes/{a1}/action"), &ta, body);
        assert_eq!(r.status, 403, "{}", r.body);
        fault(&r, "forbidden");
    }
    let r = vc.post("/types", &ta, json!({"volume_type": {"name": "mine"}}));
    assert_eq!(r.status, 403);
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pa}"),
        Some(&ta),
        Some(json!({"quota_set": {"volumes": 100}})),
    );
    assert_eq!(r.status, 403);

    // A private type is invisible to a project it is not shared with.
    let r = vc.post(
        "/types",
        &c.admin,
        json!({"volume_type": {"name": "secret", "os-volume-type-access:is_public": false}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let tid = r.body["volume_type"]["id"].as_str().unwrap().to_string();
    let r = vc.post(
        "/volumes",
        &tb,
        json!({"volume": {"size": 1, "volume_type": "secret"}}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    fault(&r, "itemNotFound");
    assert!(!vc.get("/types", &tb).body.to_string().contains("secret"));
    let r = vc.post(
        &format!("/types/{tid}/action"),
        &c.admin,
        json!({"addProjectAccess": {"project": pa}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(vc.get("/types", &ta).body.to_string().contains("secret"));

    // Quota: over the gigabytes limit is a 413 overLimit and leaves nothing.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pa}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"gigabytes": 3}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let files_before = std::fs::read_dir(vol_dir(&c)).unwrap().count();
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 5, "name": "too-big"}}),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(fault(&r, "overLimit").contains("gigabytes"));
    let listed = vc.get("/volumes", &ta).body["volumes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(listed, 1, "the refused volume was not recorded");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read_dir(vol_dir(&c)).unwrap().count(),
        files_before
    );
    let r = vc.post(
        &format!("/volumes/{a1}/action"),
        &ta,
        json!({"os-extend": {"new_size": 4}}),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(
        vc.get(&format!("/volumes/{a1}"), &ta).body["volume"]["status"],
        "available"
    );
    let q = vc.get(&format!("/os-quota-sets/{pa}?usage=True"), &ta).body;
    assert_eq!(
        q["quota_set"]["gigabytes"],
        json!({"limit": 3, "in_use": 1, "reserved": 0, "allocated": 0})
    );
    let r = vc.get(&format!("/os-quota-sets/{pa}"), &tb);
    assert_eq!(r.status, 403);

    // Bad input: 4xx in Cinder's shape, never a 500.
    for body in [
        json!({"volume": {"size": 0}}),
        json!({"volume": {"size": "x"}}),
        json!({"nope": {}}),
        json!({"volume": {}}),
    ] {
        let r = vc.post("/volumes", &ta, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        fault(&r, "badRequest");
    }
    let r = vc.post(
        &format!("/volumes/{a1}/action"),
        &ta,
        json!({"os-extend": {"new_size": 1}}),
    );
    assert_eq!(r.status, 400);

    // From a snapshot: too small is refused; the copy has the data's size.
    let r = vc.call(
        "PUT",
        &format!("/os-quota-sets/{pa}"),
        Some(&c.admin),
        Some(json!({"quota_set": {"gigabytes": 100}})),
    );
    assert_eq!(r.status, 200);
    let r = vc.post(
        &format!("/volumes/{a1}/action"),
        &ta,
        json!({"os-extend": {"new_size": 2}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &ta, &a1, "available");
    assert_eq!(virtual_size(&vol_file(&c, &a1)), 2 << 30);
    let r = vc.post(
        "/snapshots",
        &ta,
        json!({"snapshot": {"volume_id": a1, "name": "sa"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["snapshot"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while vc.get(&format!("/snapshots/{sid}"), &ta).body["snapshot"]["status"] != "available" {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 1, "snapshot_id": sid}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 4, "snapshot_id": sid}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let from_snap = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &ta, &from_snap, "available");
    assert_eq!(virtual_size(&vol_file(&c, &from_snap)), 4 << 30);

    // From an image: the volume holds the image's bytes.
    let raw: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let img = c.img.post(
        "/images",
        &ta,
        json!({"name": "disk", "disk_format": "raw", "container_format": "bare"}),
    );
    assert_eq!(img.status, 201, "{}", img.body);
    let iid = img.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{iid}/file"),
        &ta,
        &[("Content-Type", "application/octet-stream")],
        Some(raw.clone()),
    );
    assert_eq!(st, 204);
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 1, "imageRef": iid}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let from_img = r.body["volume"]["id"].as_str().unwrap().to_string();
    let shown = wait_status(&vc, &ta, &from_img, "available");
    assert_eq!(shown["bootable"], "true");
    assert_eq!(shown["volume_image_metadata"]["image_id"], iid.as_str());
    let out = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(vol_file(&c, &from_img))
        .arg(c.server.data_dir().join("check.raw"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let back = std::fs::read(c.server.data_dir().join("check.raw")).unwrap();
    assert_eq!(back.len(), 1 << 30);
    assert_eq!(&back[..raw.len()], &raw[..], "the image's bytes");
    assert!(back[raw.len()..].iter().all(|b| *b == 0));

    // Not a disk image: refused, nothing made.
    let img = c.img.post(
        "/images",
        &ta,
        json!({"name": "kernel", "disk_format": "aki", "container_format": "aki"}),
    );
    let oci = img.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{oci}/file"),
        &ta,
        &[("Content-Type", "application/octet-stream")],
        Some(vec![1, 2, 3]),
    );
    assert_eq!(st, 204);
    let r = vc.post(
        "/volumes",
        &ta,
        json!({"volume": {"size": 1, "imageRef": oci}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("not a disk image"));

    // Admins: reset status, force delete, services.
    let r = vc.post(
        &format!("/volumes/{from_img}/action"),
        &c.admin,
        json!({"os-reset_status": {"status": "error"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let r = vc.post(
        &format!("/volumes/{from_img}/action"),
        &c.admin,
        json!({"os-force_delete": {}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(&vc, &ta, &format!("/volumes/{from_img}"));
    assert!(!vol_file(&c, &from_img).exists());
    let s = vc.get("/os-services", &c.admin).body;
    assert!(
        s["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["binary"] == "cinder-volume" && x["state"] == "up"),
        "{s}"
    );
    assert_eq!(vc.get("/os-services", &ta).status, 403);

    // Cascade deletes the snapshot with the volume.
    let r = vc.call(
        "DELETE",
        &format!("/volumes/{a1}?cascade=true"),
        Some(&ta),
        None,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_gone(&vc, &ta, &format!("/volumes/{a1}"));
    wait_gone(&vc, &ta, &format!("/snapshots/{sid}"));
    assert!(!vol_dir(&c).join(format!("snapshot-{sid}.qcow2")).exists());
}
