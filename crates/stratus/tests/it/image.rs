//! The image service (Glance v2) against the real binary: data in and out
//! byte for byte, format truth, visibility and members, quotas, the import
//! flow, and uploads that are cut short.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Client, Server};

const PATCH: &str = "application/openstack-images-v2.1-json-patch";
const OCTET: (&str, &str) = ("Content-Type", "application/octet-stream");

/// Deterministic bytes that match no disk-image magic.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v[..4].copy_from_slice(b"DATA");
    v
}

fn qemu_img() -> &'static str {
    assert!(
        Command::new("qemu-img").arg("--version").output().is_ok(),
        "qemu-img is needed (apt-get install qemu-utils; ./scripts/test installs it)"
    );
    "qemu-img"
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha512_hex(data: &[u8]) -> String {
    let out = Command::new("sha512sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn md5_hex(data: &[u8]) -> String {
    let out = Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

struct Cloud {
    s: Server,
    id: Client,
    img: Client,
    admin: String,
}

impl Cloud {
    fn start() -> Cloud {
        let s = Server::start();
        let id = s.client();
        let admin = id.token("admin", &s.admin_password, Some("admin"));
        let img = s.image_client();
        Cloud { s, id, img, admin }
    }

    /// A new project with a user holding `role` on it; returns (project
    /// id, token).
    fn project_user(&self, name: &str, role: &str) -> (String, String) {
        let p = self.id.create(
            &self.admin,
            "/projects",
            "project",
            json!({"name": name, "domain_id": "default"}),
        );
        let pid = p["id"].as_str().unwrap().to_string();
        let user = format!("{name}-user");
        self.id
            .user(&self.admin, &user, "secret-pw-1", Some((&pid, role)));
        let tok = self.id.token(&user, "secret-pw-1", Some(name));
        (pid, tok)
    }

    fn create(&self, tok: &str, body: Value) -> Value {
        let r = self.img.post("/images", tok, body);
        assert_eq!(r.status, 201, "create image: {}", r.body);
        r.body
    }

    fn upload(&self, tok: &str, id: &str, bytes: Vec<u8>) -> (u16, String) {
        let (st, _, body) = self.img.bytes(
            "PUT",
            &format!("/images/{id}/file"),
            tok,
            &[OCTET],
            Some(bytes),
        );
        (st, String::from_utf8_lossy(&body).into_owned())
    }

    fn show(&self, tok: &str, id: &str) -> Value {
        let r = self.img.get(&format!("/images/{id}"), tok);
        assert_eq!(r.status, 200, "show: {}", r.body);
        r.body
    }

    fn patch(&self, tok: &str, id: &str, ops: Value) -> super::common::Resp {
        self.img.raw(
            "PATCH",
            &format!("/images/{id}"),
            Some(tok),
            &[("Content-Type", PATCH)],
            Some(ops.to_string()),
        )
    }

    fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.s.data_dir().join("images/blobs");
        for fan in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(fan.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(f.path());
            }
        }
        out
    }

    fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.s.data_dir().join("images/tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// Glance's fault shape: `{"code": "404 Not Found", "title", "message"}`.
fn glance_error(r: &super::common::Resp) -> String {
    let code = r.body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("error shape: {}", r.body));
    assert!(code.starts_with(&r.status.to_string()), "{}", r.body);
    r.body["message"].as_str().unwrap().to_string()
}

#[test]
fn image_upload_download_patch_and_delete() {
    let c = Cloud::start();
    // Discovery: the catalog has the image service and /image lists v2.
    let r = c.id.get("/auth/catalog", &c.admin);
    assert!(
        r.body["catalog"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["type"] == "image"),
        "{}",
        r.body
    );
    let root = Client {
        base: c.s.url.clone(),
    };
    let r = root.raw("GET", "/image", None, &[], None);
    assert_eq!(r.status, 300, "{}", r.body);
    assert!(
        r.body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["status"] == "CURRENT")
    );
    assert_eq!(c.img.get("/schemas/image", &c.admin).body["name"], "image");

    let created = c.img.post(
        "/images",
        &c.admin,
        json!({"name": "disk", "disk_format": "raw", "container_format": "bare",
               "min_ram": 64, "tags": ["a", "b"], "site": "edge-1"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created
            .header("location")
            .unwrap()
            .ends_with(created.body["id"].as_str().unwrap())
    );
    assert!(
        created
            .header("openstack-image-import-methods")
            .unwrap()
            .contains("glance-direct")
    );
    let img = created.body;
    let id = img["id"].as_str().unwrap().to_string();
    assert_eq!(img["status"], "queued");
    assert_eq!(img["visibility"], "shared");
    assert_eq!(img["site"], "edge-1");
    assert_eq!(img["size"], Value::Null);
    assert_eq!(img["file"], format!("/v2/images/{id}/file"));

    // Nothing to download yet.
    let (st, _, _) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(st, 204);

    let payload = data(3 * 1024 * 1024 + 123, 7);
    let (st, body) = c.upload(&c.admin, &id, payload.clone());
    assert_eq!(st, 204, "{body}");
    let shown = c.show(&c.admin, &id);
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], payload.len());
    assert_eq!(shown["virtual_size"], payload.len());
    assert_eq!(shown["checksum"], md5_hex(&payload));
    assert_eq!(shown["os_hash_algo"], "sha512");
    assert_eq!(shown["os_hash_value"], sha512_hex(&payload));

    // Download equals upload, byte for byte, with Glance's headers.
    let (st, h, got) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(st, 200);
    assert_eq!(got, payload);
    assert_eq!(
        h.get("content-md5").unwrap().to_str().unwrap(),
        md5_hex(&payload)
    );
    assert_eq!(h.get("content-type").unwrap(), "application/octet-stream");
    let (st, h, part) = c.img.bytes(
        "GET",
        &format!("/images/{id}/file"),
        &c.admin,
        &[("Range", "bytes=10-19")],
        None,
    );
    assert_eq!(st, 206);
    assert_eq!(part, &payload[10..20]);
    assert_eq!(
        h.get("content-range").unwrap().to_str().unwrap(),
        format!("bytes 10-19/{}", payload.len())
    );

    // Active images take no more data.
    let (st, body) = c.upload(&c.admin, &id, vec![1, 2, 3]);
    assert_eq!(st, 409, "{body}");

    // JSON-patch updates.
    let r = c.patch(
        &c.admin,
        &id,
        json!([
            {"op": "replace", "path": "/name", "value": "disk2"},
            {"op": "add", "path": "/os_distro", "value": "busybox"},
            {"op": "remove", "path": "/site"},
            {"op": "replace", "path": "/tags", "value": ["x"]},
            {"op": "replace", "path": "/min_disk", "value": 1}
        ]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "disk2");
    assert_eq!(r.body["os_distro"], "busybox");
    assert!(r.body.get("site").is_none());
    assert_eq!(r.body["tags"], json!(["x"]));
    for (ops, status) in [
        (
            json!([{"op": "replace", "path": "/status", "value": "active"}]),
            403,
        ),
        (
            json!([{"op": "replace", "path": "/checksum", "value": "x"}]),
            403,
        ),
        (
            json!([{"op": "replace", "path": "/nope", "value": "x"}]),
            409,
        ),
        (json!([{"op": "remove", "path": "/nope"}]), 409),
        (json!([{"op": "remove", "path": "/name"}]), 403),
        (json!([{"op": "add", "path": "/n", "value": 5}]), 400),
        (
            json!([{"op": "add", "path": "/os_glance_x", "value": "1"}]),
            403,
        ),
        (json!([{"op": "move", "path": "/a", "from": "/b"}]), 400),
        (
            json!([{"op": "replace", "path": "/min_ram", "value": -1}]),
            400,
        ),
        (
            json!([{"op": "replace", "path": "/disk_format", "value": "qcow2"}]),
            403,
        ),
        (json!({"op": "replace"}), 400),
    ] {
        let r = c.patch(&c.admin, &id, ops.clone());
        assert_eq!(r.status, status, "{ops}: {}", r.body);
        glance_error(&r);
    }
    let r = c.img.raw(
        "PATCH",
        &format!("/images/{id}"),
        Some(&c.admin),
        &[],
        Some("[]".into()),
    );
    assert_eq!(r.status, 415, "{}", r.body);

    // Tags.
    assert_eq!(
        c.img
            .put(&format!("/images/{id}/tags/blue"), &c.admin)
            .status,
        204
    );
    assert_eq!(c.show(&c.admin, &id)["tags"], json!(["x", "blue"]));
    assert_eq!(
        c.img
            .delete(&format!("/images/{id}/tags/blue"), &c.admin)
            .status,
        204
    );
    assert_eq!(
        c.img
            .delete(&format!("/images/{id}/tags/blue"), &c.admin)
            .status,
        404
    );

    // Filters, sorting, paging.
    let other = c.create(
        &c.admin,
        json!({"name": "aaa", "disk_format": "qcow2", "container_format": "bare"}),
    );
    let r = c.img.get("/images?status=active", &c.admin);
    let ids: Vec<&str> = r.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let r = c.img.get("/images?sort=name:asc&limit=1", &c.admin);
    assert_eq!(r.body["images"][0]["name"], "aaa");
    let next = r.body["next"].as_str().expect("next link").to_string();
    let r = c.img.get(next.strip_prefix("/v2").unwrap(), &c.admin);
    assert_eq!(r.body["images"][0]["name"], "disk2");
    assert!(r.body.get("next").is_none(), "{}", r.body);
    let r = c.img.get("/images?os_distro=busybox", &c.admin);
    assert_eq!(r.body["images"].as_array().unwrap().len(), 1);
    for bad in [
        "/images?limit=-1",
        "/images?sort_key=bogus",
        "/images?marker=nope",
        "/images?visibility=nope",
    ] {
        let r = c.img.get(bad, &c.admin);
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }

    // Deactivated: admin and owner still download; reactivate works.
    assert_eq!(
        c.img
            .post(
                &format!("/images/{id}/actions/deactivate"),
                &c.admin,
                json!({})
            )
            .status,
        204
    );
    assert_eq!(c.show(&c.admin, &id)["status"], "deactivated");
    assert_eq!(
        c.img
            .post(
                &format!("/images/{id}/actions/reactivate"),
                &c.admin,
                json!({})
            )
            .status,
        204
    );
    let oid = other["id"].as_str().unwrap();
    let r = c.img.post(
        &format!("/images/{oid}/actions/deactivate"),
        &c.admin,
        json!({}),
    );
    assert_eq!(
        r.status, 400,
        "queued images cannot be deactivated: {}",
        r.body
    );

    // The same bytes in a second image are stored once; the data goes when
    // the last image using it goes.
    let twin = c.create(
        &c.admin,
        json!({"name": "twin", "disk_format": "raw", "container_format": "bare"}),
    );
    let twin = twin["id"].as_str().unwrap();
    assert_eq!(c.upload(&c.admin, twin, payload.clone()).0, 204);
    assert_eq!(c.blob_files().len(), 1);

    // Protected images cannot be deleted.
    assert_eq!(
        c.patch(
            &c.admin,
            &id,
            json!([{"op": "replace", "path": "/protected", "value": true}])
        )
        .status,
        200
    );
    let r = c.img.delete(&format!("/images/{id}"), &c.admin);
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        c.patch(
            &c.admin,
            &id,
            json!([{"op": "replace", "path": "/protected", "value": false}])
        )
        .status,
        200
    );
    assert_eq!(c.img.delete(&format!("/images/{id}"), &c.admin).status, 204);
    assert_eq!(c.img.get(&format!("/images/{id}"), &c.admin).status, 404);
    assert_eq!(c.blob_files().len(), 1, "still used by the twin");
    assert_eq!(
        c.img.delete(&format!("/images/{twin}"), &c.admin).status,
        204
    );
    assert!(
        c.blob_files().is_empty(),
        "data removed with its last image"
    );
    let r = c.img.delete(&format!("/images/{twin}"), &c.admin);
    assert_eq!(r.status, 404);
    assert!(glance_error(&r).contains(twin));
}

#[test]
fn image_bad_input_gets_glance_4xx() {
    let c = Cloud::start();
    for (body, status) in [
        (json!({"disk_format": "bogus"}), 400),
        (json!({"container_format": "tarball"}), 400),
        (json!({"status": "active"}), 403),
        (json!({"os_hash_value": "x"}), 403),
        (json!({"os_glance_foo": "x"}), 403),
        (json!({"foo": 1}), 400),
        (json!({"visibility": "everyone"}), 400),
        (json!({"min_disk": "big"}), 400),
        (json!({"id": "not-a-uuid"}), 400),
        (
            json!({"disk_format": "aki", "container_format": "bare"}),
            400,
        ),
        (json!({"name": "x".repeat(256)}), 400),
        (json!(["not", "an", "object"]), 400),
    ] {
        let r = c.img.post("/images", &c.admin, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.body);
        glance_error(&r);
    }
    let r = c
        .img
        .raw("POST", "/images", Some(&c.admin), &[], Some("{nope".into()));
    assert_eq!(r.status, 400);
    let r = c.img.raw(
        "POST",
        "/images",
        Some(&c.admin),
        &[("Content-Type", "text/plain")],
        Some("{}".into()),
    );
    assert_eq!(r.status, 415);
    let r = c.img.raw("GET", "/images", None, &[], None);
    assert_eq!(r.status, 401);
    glance_error(&r);
    let r = c.img.raw("GET", "/images", Some("garbage"), &[], None);
    assert_eq!(r.status, 401);

    // Data needs formats first, and octet-stream.
    let img = c.create(&c.admin, json!({"name": "noformat"}));
    let id = img["id"].as_str().unwrap();
    let (st, body) = c.upload(&c.admin, id, vec![0; 10]);
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("disk_format"), "{body}");
    assert_eq!(c.patch(&c.admin, id, json!([{"op":"add","path":"/disk_format","value":"raw"},{"op":"add","path":"/container_format","value":"bare"}])).status, 200);
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{id}/file"),
        &c.admin,
        &[("Content-Type", "application/json")],
        Some(vec![1]),
    );
    assert_eq!(st, 415);
    assert_eq!(c.show(&c.admin, id)["status"], "queued");
    // Unknown image, unknown path.
    assert_eq!(
        c.img
            .get("/images/00000000-0000-0000-0000-000000000000", &c.admin)
            .status,
        404
    );
    assert_eq!(
        c.upload(&c.admin, "00000000-0000-0000-0000-000000000000", vec![1])
            .0,
        404
    );
    assert_eq!(c.img.get("/nothing-here", &c.admin).status, 404);
    // Range past the end.
    assert_eq!(c.upload(&c.admin, id, data(100, 3)).0, 204);
    let (st, _, _) = c.img.bytes(
        "GET",
        &format!("/images/{id}/file"),
        &c.admin,
        &[("Range", "bytes=500-600")],
        None,
    );
    assert_eq!(st, 416);
    // A duplicate id.
    let r = c.img.post("/images", &c.admin, json!({"id": id}));
    assert_eq!(r.status, 409, "{}", r.body);
}

#[test]
fn image_content_must_match_its_format() {
    let c = Cloud::start();
    let q = qemu_img();
    let dir = c.s.data_dir().join("fmt");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    sh(q, &["create", "-f", "qcow2", &p("good.qcow2"), "64M"]);
    sh(
        q,
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "/etc/passwd",
            "-F",
            "raw",
            &p("evil.qcow2"),
        ],
    );
    sh(q, &["create", "-f", "vmdk", &p("disk.vmdk"), "16M"]);
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();

    let mk = |name: &str, disk: &str| {
        c.create(
            &c.admin,
            json!({"name": name, "disk_format": disk, "container_format": "bare"}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A real qcow2: active, virtual size from the header.
    let good = mk("good", "qcow2");
    let (st, body) = c.upload(&c.admin, &good, read("good.qcow2"));
    assert_eq!(st, 204, "{body}");
    let shown = c.show(&c.admin, &good);
    assert_eq!(shown["virtual_size"], 64 * 1024 * 1024);
    assert_eq!(shown["size"], read("good.qcow2").len());

    // A qcow2 declared raw: refused, the image stays queued, no data kept.
    let liar = mk("liar", "raw");
    let (st, body) = c.upload(&c.admin, &liar, read("good.qcow2"));
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("qcow2"), "{body}");
    assert_eq!(c.show(&c.admin, &liar)["status"], "queued");

    // A qcow2 with a backing file: refused whatever it is declared as.
    for disk in ["qcow2", "raw"] {
        let evil = mk("evil", disk);
        let (st, body) = c.upload(&c.admin, &evil, read("evil.qcow2"));
        assert_eq!(st, 400, "{disk}: {body}");
        assert_eq!(c.show(&c.admin, &evil)["status"], "queued");
    }
    // Raw data declared as qcow2, vmdk declared as qcow2.
    let notq = mk("notq", "qcow2");
    assert_eq!(c.upload(&c.admin, &notq, data(4096, 1)).0, 400);
    assert_eq!(c.upload(&c.admin, &notq, read("disk.vmdk")).0, 400);
    let vm = mk("vm", "vmdk");
    assert_eq!(c.upload(&c.admin, &vm, read("disk.vmdk")).0, 204);
    // Only the two accepted images' data is kept; nothing half-written.
    assert_eq!(c.blob_files().len(), 2);
    assert_eq!(c.tmp_files(), 0);

    // A container image must be a docker-save (or OCI) tarball.
    let docker = c.create(
        &c.admin,
        json!({"name": "ctr", "disk_format": "raw", "container_format": "docker"}),
    );
    let did = docker["id"].as_str().unwrap();
    let (st, body) = c.upload(&c.admin, did, data(10_000, 5));
    assert_eq!(st, 400, "{body}");
}

#[test]
fn image_visibility_and_members() {
    let c = Cloud::start();
    let (pa, ta) = c.project_user("alpha", "member");
    let (pb, tb) = c.project_user("beta", "member");
    let (_pr, tr) = c.project_user("gamma", "reader");

    let private = c.create(&ta, json!({"name": "secret", "visibility": "private"}));
    let pid = private["id"].as_str().unwrap();
    assert_eq!(private["owner"], pa.as_str());
    // Another project never sees a private image.
    assert_eq!(c.img.get(&format!("/images/{pid}"), &tb).status, 404);
    let list = c.img.get("/images", &tb);
    assert!(
        list.body["images"].as_array().unwrap().is_empty(),
        "{}",
        list.body
    );
    assert_eq!(c.img.delete(&format!("/images/{pid}"), &tb).status, 404);
    // Readers read but do not write; only admins publish.
    assert_eq!(c.img.post("/images", &tr, json!({"name": "r"})).status, 403);
    let r = c.patch(
        &ta,
        pid,
        json!([{"op": "replace", "path": "/visibility", "value": "public"}]),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c
        .img
        .post("/images", &ta, json!({"name": "p", "visibility": "public"}));
    assert_eq!(r.status, 403);
    let r = c
        .img
        .post("/images", &ta, json!({"name": "o", "owner": pb}));
    assert_eq!(
        r.status, 403,
        "a member cannot create images for another project"
    );

    // Members only for shared images.
    let r = c.img.post(
        &format!("/images/{pid}/members"),
        &ta,
        json!({"member": pb}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        c.patch(
            &ta,
            pid,
            json!([{"op": "replace", "path": "/visibility", "value": "shared"}])
        )
        .status,
        200
    );
    let r = c.img.post(
        &format!("/images/{pid}/members"),
        &ta,
        json!({"member": pb}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    assert_eq!(
        c.img
            .post(
                &format!("/images/{pid}/members"),
                &ta,
                json!({"member": pb})
            )
            .status,
        409
    );
    // Pending: beta can see it by id, not yet in its list.
    assert_eq!(c.img.get(&format!("/images/{pid}"), &tb).status, 200);
    assert!(
        c.img.get("/images", &tb).body["images"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let pend = c.img.get("/images?member_status=pending", &tb);
    assert_eq!(pend.body["images"].as_array().unwrap().len(), 1);
    // Only beta decides; the owner cannot accept for it.
    let r = c.img.call(
        "PUT",
        &format!("/images/{pid}/members/{pb}"),
        Some(&ta),
        Some(json!({"status": "accepted"})),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c.img.call(
        "PUT",
        &format!("/images/{pid}/members/{pb}"),
        Some(&tb),
        Some(json!({"status": "accepted"})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "accepted");
    let list = c.img.get("/images", &tb);
    assert_eq!(list.body["images"][0]["id"], pid);
    // A member cannot change, share or delete the image.
    assert_eq!(
        c.patch(
            &tb,
            pid,
            json!([{"op": "replace", "path": "/name", "value": "x"}])
        )
        .status,
        403
    );
    assert_eq!(
        c.img
            .post(
                &format!("/images/{pid}/members"),
                &tb,
                json!({"member": pa})
            )
            .status,
        403
    );
    assert_eq!(c.img.delete(&format!("/images/{pid}"), &tb).status, 403);
    let members = c.img.get(&format!("/images/{pid}/members"), &ta);
    assert_eq!(members.body["members"].as_array().unwrap().len(), 1);
    // Removing the member hides the image again.
    assert_eq!(
        c.img
            .delete(&format!("/images/{pid}/members/{pb}"), &ta)
            .status,
        204
    );
    assert_eq!(c.img.get(&format!("/images/{pid}"), &tb).status, 404);

    // Community: visible to all by id and with visibility=community, not
    // in the default list of other projects.
    assert_eq!(
        c.patch(
            &ta,
            pid,
            json!([{"op": "replace", "path": "/visibility", "value": "community"}])
        )
        .status,
        200
    );
    assert_eq!(c.img.get(&format!("/images/{pid}"), &tb).status, 200);
    assert!(
        c.img.get("/images", &tb).body["images"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        c.img.get("/images?visibility=community", &tb).body["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Public, by an admin: everyone lists it.
    assert_eq!(
        c.patch(
            &c.admin,
            pid,
            json!([{"op": "replace", "path": "/visibility", "value": "public"}])
        )
        .status,
        200
    );
    assert_eq!(
        c.img.get("/images", &tr).body["images"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Registers image limits through Keystone's unified limits API.
fn set_limit(c: &Cloud, project: &str, resource: &str, value: i64) {
    let svc = c.id.get("/services?type=image", &c.admin);
    let sid = svc.body["services"][0]["id"].as_str().unwrap().to_string();
    let r = c.id.post(
        "/registered_limits",
        &c.admin,
        json!({"registered_limits": [
        {"service_id": sid, "resource_name": resource, "default_limit": 1000}]}),
    );
    assert!(r.status == 201 || r.status == 409, "{}", r.body);
    let r = c.id.post("/limits", &c.admin, json!({"limits": [
        {"service_id": sid, "project_id": project, "resource_name": resource, "resource_limit": value}]}));
    assert_eq!(r.status, 201, "{}", r.body);
}

#[test]
fn image_quotas_from_unified_limits() {
    let c = Cloud::start();
    let (pa, ta) = c.project_user("quota", "member");
    set_limit(&c, &pa, "image_count_total", 2);
    set_limit(&c, &pa, "image_size_total", 1); // MiB
    let a = c.create(
        &ta,
        json!({"name": "a", "disk_format": "raw", "container_format": "bare"}),
    );
    c.create(&ta, json!({"name": "b"}));
    let r = c.img.post("/images", &ta, json!({"name": "c"}));
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(glance_error(&r).contains("image_count_total"), "{}", r.body);

    let id = a["id"].as_str().unwrap();
    let (st, body) = c.upload(&ta, id, data(2 * 1024 * 1024, 9));
    assert_eq!(st, 413, "{body}");
    assert!(body.contains("image_size_total"), "{body}");
    assert_eq!(c.show(&ta, id)["status"], "queued");
    let (st, body) = c.upload(&ta, id, data(512 * 1024, 9));
    assert_eq!(st, 204, "{body}");
    let usage = c.img.get("/info/usage", &ta);
    assert_eq!(
        usage.body["usage"]["image_count_total"]["usage"], 2,
        "{}",
        usage.body
    );
    assert_eq!(usage.body["usage"]["image_size_total"]["limit"], 1);
    // Admin projects have no limit set: unlimited.
    c.create(&c.admin, json!({"name": "free"}));
}

#[test]
fn image_import_glance_direct() {
    let c = Cloud::start();
    let info = c.img.get("/info/import", &c.admin);
    assert!(
        info.body["import-methods"]["value"]
            .as_array()
            .unwrap()
            .contains(&json!("glance-direct"))
    );
    assert_eq!(c.img.get("/info/stores", &c.admin).status, 200);
    let img = c.create(
        &c.admin,
        json!({"name": "imp", "disk_format": "raw", "container_format": "bare"}),
    );
    let id = img["id"].as_str().unwrap();
    // Import before staging: 409.
    let r = c.img.post(
        &format!("/images/{id}/import"),
        &c.admin,
        json!({"method": {"name": "glance-direct"}}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let payload = data(700_000, 11);
    let (st, _, body) = c.img.bytes(
        "PUT",
        &format!("/images/{id}/stage"),
        &c.admin,
        &[OCTET],
        Some(payload.clone()),
    );
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    assert_eq!(c.show(&c.admin, id)["status"], "uploading");
    let r = c.img.post(
        &format!("/images/{id}/import"),
        &c.admin,
        json!({"method": {"name": "web-download", "uri": "http://x"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = c.img.post(
        &format!("/images/{id}/import"),
        &c.admin,
        json!({"method": {"name": "glance-direct"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.show(&c.admin, id);
        if s["status"] == "active" {
            assert_eq!(s["checksum"], md5_hex(&payload));
            break;
        }
        assert!(Instant::now() < deadline, "import did not finish: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, _, got) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(got, payload);

    // A failed import (wrong format) puts the image back to queued.
    let bad = c.create(
        &c.admin,
        json!({"name": "bad", "disk_format": "qcow2", "container_format": "bare"}),
    );
    let bid = bad["id"].as_str().unwrap();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{bid}/stage"),
        &c.admin,
        &[OCTET],
        Some(data(5000, 2)),
    );
    assert_eq!(st, 204);
    assert_eq!(
        c.img
            .post(
                &format!("/images/{bid}/import"),
                &c.admin,
                json!({"method": {"name": "glance-direct"}})
            )
            .status,
        202
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.show(&c.admin, bid);
        if s["status"] == "queued" {
            assert!(s["os_glance_import_error"].as_str().is_some(), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "failed import not reported: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends headers and part of a body over a raw socket, then hangs up.
fn partial_upload(url: &str, path: &str, token: &str, total: usize, sent: usize) {
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    sock.write_all(&data(sent, 4)).unwrap();
    sock.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(sock);
}

fn wait_status(c: &Cloud, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.show(&c.admin, id);
        if s["status"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "wanted {want}: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn image_cut_uploads_never_become_active() {
    let mut c = Cloud::start();
    let img = c.create(
        &c.admin,
        json!({"name": "cut", "disk_format": "raw", "container_format": "bare"}),
    );
    let id = img["id"].as_str().unwrap().to_string();
    // The client hangs up half way: back to queued, nothing left on disk.
    partial_upload(
        &c.s.url,
        &format!("/image/v2/images/{id}/file"),
        &c.admin,
        4 << 20,
        1 << 20,
    );
    wait_status(&c, &id, "queued");
    assert_eq!(c.tmp_files(), 0);
    assert!(c.blob_files().is_empty());

    // The server is killed mid-upload: after restart the image is queued
    // and the partial file is gone.
    let addr = c.s.url.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "PUT /image/v2/images/{id}/file HTTP/1.1\r\nHost: {addr}\r\nX-Auth-Token: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        c.admin,
        8 << 20
    )
    .unwrap();
    sock.write_all(&data(2 << 20, 4)).unwrap();
    wait_status(&c, &id, "saving");
    c.s.stop("-KILL");
    drop(sock);
    c.s.restart_after_stop();
    c.admin = c.id.token("admin", &c.s.admin_password, Some("admin"));
    assert_eq!(c.show(&c.admin, &id)["status"], "queued");
    assert_eq!(c.tmp_files(), 0);
    // And the upload can be done again, completely.
    let payload = data(1 << 20, 8);
    assert_eq!(c.upload(&c.admin, &id, payload.clone()).0, 204);
    let (_, _, got) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(got, payload);
    // Data of an active image survives a hard kill.
    c.s.stop("-KILL");
    c.s.restart_after_stop();
    c.admin = c.id.token("admin", &c.s.admin_password, Some("admin"));
    let (_, _, got) = c
        .img
        .bytes("GET", &format!("/images/{id}/file"), &c.admin, &[], None);
    assert_eq!(got, payload);
}

/// The images `scripts/build-test-images` builds (the README's test
/// command builds them first).
fn test_images() -> Option<PathBuf> {
    let dir = std::env::var("STRATUS_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-images")
        });
    if dir.join("images.tsv").exists() {
        return Some(dir);
    }
    if std::env::var("STRATUS_SKIP_TEST_IMAGES").is_ok_and(|v| v == "1") {
        eprintln!("skipping: no test images and STRATUS_SKIP_TEST_IMAGES=1");
        return None;
    }
    panic!(
        "test images missing in {}: run scripts/build-test-images (./scripts/test does)",
        dir.display()
    );
}

#[test]
fn image_built_test_images_upload_and_validate() {
    let Some(dir) = test_images() else { return };
    let c = Cloud::start();
    let list = std::fs::read_to_string(dir.join("images.tsv")).unwrap();
    let mut seen = 0;
    for line in list
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, file, disk, container) = (f[0], f[1], f[2], f[3]);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let img = c.create(
            &c.admin,
            json!({"name": name, "disk_format": disk, "container_format": container}),
        );
        let id = img["id"].as_str().unwrap();
        let (st, body) = c.upload(&c.admin, id, bytes.clone());
        assert_eq!(st, 204, "{name}: {body}");
        let shown = c.show(&c.admin, id);
        assert_eq!(shown["status"], "active", "{name}");
        assert_eq!(shown["checksum"], md5_hex(&bytes));
        if container == "docker" || container == "oci" {
            // One flipped byte in the layer: the digests no longer match.
            let mut bad = bytes.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0xff;
            let img = c.create(&c.admin, json!({"name": format!("{name}-bad"), "disk_format": disk, "container_format": container}));
            let (st, body) = c.upload(&c.admin, img["id"].as_str().unwrap(), bad);
            assert_eq!(st, 400, "{name} corrupted: {body}");
        }
        seen += 1;
    }
    assert!(seen >= 3, "{list}");
}

/// Metadata definitions: a namespace with a resource type, an object, a
/// property and tags, read back, changed and deleted; Glance's 4xx for a
/// non-admin writer, unknown names, duplicates, bad bodies and a
/// protected namespace.
#[test]
fn image_metadefs_namespace_crud() {
    let c = Cloud::start();
    let a = &c.admin;
    let md = |p: &str| format!("/metadefs/namespaces{p}");

    let r = c.img.get("/metadefs/resource_types", a);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["resource_types"][0]["name"], "OS::Glance::Image");
    let r = c.img.get("/schemas/metadefs/resource_types", a);
    assert_eq!(r.body["name"], "resource_type_associations");

    let r = c.img.post(
        &md(""),
        a,
        json!({"namespace": "Test::Ns", "visibility": "public", "protected": true,
               "display_name": "Test", "description": "d",
               "resource_type_associations": [{"name": "OS::Nova::Flavor", "prefix": "t:"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["self"], "/v2/metadefs/namespaces/Test::Ns");
    assert_eq!(
        r.body["owner"].as_str().map(str::len),
        Some(32),
        "{}",
        r.body
    );

    let ns = md("/Test::Ns");
    let r = c.img.post(
        &format!("{ns}/objects"),
        a,
        json!({"name": "CPU", "required": ["cores"],
               "properties": {"cores": {"title": "Cores", "type": "integer", "minimum": 1}}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.img.post(
        &format!("{ns}/properties"),
        a,
        json!({"name": "hv", "title": "Hypervisor", "type": "string", "enum": ["kvm", "qemu"]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["enum"], json!(["kvm", "qemu"]));
    let r = c.img.post(
        &format!("{ns}/tags"),
        a,
        json!({"tags": [{"name": "t1"}, {"name": "t2"}]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.img.raw(
        "POST",
        &format!("{ns}/tags"),
        Some(a),
        &[("X-Openstack-Append", "true")],
        Some(json!({"tags": [{"name": "t3"}]}).to_string()),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = c.img.call("POST", &format!("{ns}/tags/t4"), Some(a), None);
    assert_eq!(r.status, 201, "{}", r.body);

    let r = c.img.get(&ns, a);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["objects"][0]["name"], "CPU");
    assert_eq!(r.body["objects"][0]["properties"]["cores"]["minimum"], 1);
    assert_eq!(r.body["properties"]["hv"]["title"], "Hypervisor");
    assert_eq!(r.body["tags"].as_array().unwrap().len(), 4, "{}", r.body);
    assert_eq!(
        r.body["resource_type_associations"][0]["prefix"], "t:",
        "{}",
        r.body
    );
    let r = c
        .img
        .get(&md("?resource_types=OS::Nova::Flavor&limit=1"), a);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["namespaces"][0]["namespace"], "Test::Ns");
    assert!(r.body["next"].as_str().unwrap().contains("marker=Test"));

    // A reader of another project sees the public namespace but may not
    // write anything; a private one is invisible to it.
    let (_, reader) = c.project_user("mdp", "member");
    assert_eq!(c.img.get(&format!("{ns}/objects/CPU"), &reader).status, 200);
    let r = c.img.post(&md(""), &reader, json!({"namespace": "Mine"}));
    assert_eq!(r.status, 403, "{}", r.body);
    glance_error(&r);
    let r = c.img.post(&format!("{ns}/tags/x"), &reader, json!({}));
    assert_eq!(r.status, 403, "{}", r.body);

    // Duplicates are 409s, unknown names 404s, bad bodies 400s.
    let r = c.img.post(&md(""), a, json!({"namespace": "Test::Ns"}));
    assert_eq!(r.status, 409, "{}", r.body);
    glance_error(&r);
    let r = c
        .img
        .post(&format!("{ns}/objects"), a, json!({"name": "CPU"}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = c.img.call("POST", &format!("{ns}/tags/t1"), Some(a), None);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = c.img.post(
        &format!("{ns}/resource_types"),
        a,
        json!({"name": "OS::Nova::Flavor"}),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    for p in [
        md("/Nope"),
        format!("{ns}/objects/nope"),
        format!("{ns}/properties/nope"),
        format!("{ns}/tags/nope"),
    ] {
        let r = c.img.get(&p, a);
        assert_eq!(r.status, 404, "{p}: {}", r.body);
        glance_error(&r);
    }
    for (path, body) in [
        (md(""), json!({"display_name": "no name"})),
        (md(""), json!({"namespace": "x", "visibility": "shared"})),
        (
            format!("{ns}/properties"),
            json!({"name": "p", "title": "P"}),
        ),
        (format!("{ns}/objects"), json!({"name": 5})),
        (format!("{ns}/tags"), json!({"tags": "t"})),
    ] {
        let r = c.img.post(&path, a, body.clone());
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        glance_error(&r);
    }
    let r = c
        .img
        .raw("POST", &md(""), Some(a), &[], Some("{not json".into()));
    assert_eq!(r.status, 400, "{}", r.body);

    // Updates: rename an object, a property and a tag.
    let r = c.img.raw(
        "PUT",
        &format!("{ns}/objects/CPU"),
        Some(a),
        &[],
        Some(json!({"name": "CPU2", "description": "x"}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "CPU2");
    let r = c.img.raw(
        "PUT",
        &format!("{ns}/properties/hv"),
        Some(a),
        &[],
        Some(json!({"name": "hv", "title": "HV", "type": "string"}).to_string()),
    );
    assert_eq!(r.body["title"], "HV", "{}", r.body);
    let r = c.img.raw(
        "PUT",
        &format!("{ns}/tags/t1"),
        Some(a),
        &[],
        Some(json!({"name": "t1b"}).to_string()),
    );
    assert_eq!(r.body["name"], "t1b", "{}", r.body);

    // Protected: nothing is deleted until it is cleared.
    assert_eq!(c.img.delete(&ns, a).status, 403);
    assert_eq!(c.img.delete(&format!("{ns}/tags"), a).status, 403);
    let r = c.img.raw(
        "PUT",
        &ns,
        Some(a),
        &[],
        Some(
            json!({"namespace": "Test::Ns", "visibility": "private", "protected": false})
                .to_string(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["protected"], false);
    assert_eq!(c.img.get(&ns, &reader).status, 404);
    assert_eq!(c.img.delete(&format!("{ns}/tags"), a).status, 204);
    assert_eq!(c.img.get(&format!("{ns}/tags"), a).body["tags"], json!([]));
    assert_eq!(c.img.delete(&format!("{ns}/properties/hv"), a).status, 204);
    assert_eq!(
        c.img
            .delete(&format!("{ns}/resource_types/OS::Nova::Flavor"), a)
            .status,
        204
    );
    assert_eq!(c.img.delete(&ns, a).status, 204);
    assert_eq!(c.img.get(&ns, a).status, 404);
    assert_eq!(c.img.get(&format!("{ns}/objects"), a).status, 404);
}
