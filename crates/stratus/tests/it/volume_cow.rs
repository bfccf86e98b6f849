//! Volumes from images as copy-on-write overlays: the storage node makes
//! a volume from a raw or qcow2 image as a thin qcow2 file whose backing
//! file is the image (a base in `<volumes>/bases`, a hard link to the
//! node's downloaded copy), so nothing is copied; the base stays while a
//! volume names it, even after the image is deleted, and goes with the
//! last one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::Client;
use super::compute::Cloud;
use super::volume::{vol_client, vol_file, wait_status, wait_storage};
use super::volume_backup::{qemu_io, to_raw, wait_gone};

fn info(file: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(file)
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "qemu-img info {}", file.display());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Uploads `data` as an image of `disk_format`; its id.
fn image(c: &Cloud, tok: &str, name: &str, disk_format: &str, data: Vec<u8>) -> String {
    let img = c.img.post(
        "/images",
        tok,
        json!({"name": name, "disk_format": disk_format, "container_format": "bare"}),
    );
    assert_eq!(img.status, 201, "{}", img.body);
    let iid = img.body["id"].as_str().unwrap().to_string();
    let (st, _, body) = c.img.bytes(
        "PUT",
        &format!("/images/{iid}/file"),
        tok,
        &[("Content-Type", "application/octet-stream")],
        Some(data),
    );
    assert_eq!(st, 204, "{}", String::from_utf8_lossy(&body));
    iid
}

fn from_image(vc: &Client, tok: &str, iid: &str) -> String {
    let r = vc.post(
        "/volumes",
        tok,
        json!({"volume": {"size": 1, "imageRef": iid}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["volume"]["id"].as_str().unwrap().to_string()
}

/// The first `n` bytes of a disk file as the guest sees them.
fn guest_bytes(c: &Cloud, file: &Path, n: usize) -> Vec<u8> {
    let out: PathBuf = c.server.data_dir().join("guest.raw");
    to_raw(file, "qcow2", &out);
    let mut b = std::fs::read(&out).unwrap();
    b.truncate(n);
    b
}

#[test]
fn volumes_from_images_are_overlays_on_a_shared_base() {
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let (_p, tok) = c.project("cow");
    let data: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let iid = image(&c, &tok, "disk", "raw", data.clone());
    let a = from_image(&vc, &tok, &iid);
    let b = from_image(&vc, &tok, &iid);
    wait_status(&vc, &tok, &a, "available");
    wait_status(&vc, &tok, &b, "available");
    let dir = vol_file(&c, &a).parent().unwrap().to_path_buf();
    let base = dir.join("bases").join(format!("image-{iid}.raw"));
    for id in [&a, &b] {
        let i = info(&vol_file(&c, id));
        assert_eq!(i["backing-filename"], base.to_str().unwrap(), "{i}");
        assert_eq!(i["virtual-size"], 1u64 << 30, "{i}");
        // Nothing of the image was copied into the volume's file.
        let on_disk = i["actual-size"].as_u64().unwrap();
        assert!(on_disk < 1 << 20, "volume {id} holds {on_disk} bytes");
        assert_eq!(guest_bytes(&c, &vol_file(&c, id), data.len()), data);
    }
    assert_eq!(std::fs::read(&base).unwrap(), data, "the base is the image");

    // A write to one volume lands in its own file: the base and the
    // other volume keep the image's bytes.
    qemu_io(&vol_file(&c, &a), "write -P 0x66 0 2M");
    assert_eq!(std::fs::read(&base).unwrap(), data);
    assert_eq!(guest_bytes(&c, &vol_file(&c, &b), data.len()), data);
    let got = guest_bytes(&c, &vol_file(&c, &a), data.len());
    assert!(got[..2 << 20].iter().all(|x| *x == 0x66));
    assert_eq!(&got[2 << 20..], &data[2 << 20..]);

    // The image goes from the image service: the volumes still read it.
    assert_eq!(c.img.delete(&format!("/images/{iid}"), &tok).status, 204);
    assert_eq!(guest_bytes(&c, &vol_file(&c, &b), data.len()), data);
    // A snapshot and a clone are whole files of their own.
    let s = vc.post(
        "/snapshots",
        &tok,
        json!({"snapshot": {"volume_id": b, "name": "s"}}),
    );
    assert_eq!(s.status, 202, "{}", s.body);
    let sid = s.body["snapshot"]["id"].as_str().unwrap().to_string();
    let r = vc.post(
        "/volumes",
        &tok,
        json!({"volume": {"size": 1, "source_volid": b}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let clone = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &tok, &clone, "available");
    let i = info(&vol_file(&c, &clone));
    assert!(i.get("backing-filename").is_none(), "{i}");
    assert_eq!(guest_bytes(&c, &vol_file(&c, &clone), data.len()), data);

    // The base stays while a volume names it and goes with the last.
    for id in [&a, &b] {
        if id == &b {
            let deadline = Instant::now() + Duration::from_secs(60);
            while vc.get(&format!("/snapshots/{sid}"), &tok).body["snapshot"]["status"]
                != "available"
            {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(100));
            }
            assert_eq!(vc.delete(&format!("/snapshots/{sid}"), &tok).status, 202);
            wait_gone(&vc, &tok, &format!("/snapshots/{sid}"));
        }
        assert_eq!(vc.delete(&format!("/volumes/{id}"), &tok).status, 202);
        wait_gone(&vc, &tok, &format!("/volumes/{id}"));
        if id == &a {
            assert!(base.exists(), "the base went while volume {b} uses it");
        }
    }
    assert!(!base.exists(), "the base outlived its last volume");
    assert_eq!(guest_bytes(&c, &vol_file(&c, &clone), data.len()), data);

    // A qcow2 image that names a file of the host as its backing file
    // is refused by the image service already; the storage node checks
    // again (a unit test of `volume_bases::check_image`).
    let tmp = c.server.data_dir();
    let secret = tmp.join("host-secret");
    std::fs::write(&secret, b"HOST-SECRET").unwrap();
    let evil = tmp.join("evil.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&evil)
        .arg("1M")
        .output()
        .unwrap();
    assert!(out.status.success());
    let img = c.img.post(
        "/images",
        &tok,
        json!({"name": "evil", "disk_format": "qcow2", "container_format": "bare"}),
    );
    let bad = img.body["id"].as_str().unwrap().to_string();
    let (st, _, body) = c.img.bytes(
        "PUT",
        &format!("/images/{bad}/file"),
        &tok,
        &[("Content-Type", "application/octet-stream")],
        Some(std::fs::read(&evil).unwrap()),
    );
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("backing file"));
}
