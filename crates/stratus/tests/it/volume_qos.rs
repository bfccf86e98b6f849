//! Cinder QoS specs through the real `openstack volume qos ...` commands
//! and the API: keys, associations with types, who may manage them, and
//! the refusals.

use serde_json::json;

use super::cli::{Os, cli};
use super::compute::Cloud;
use super::volume::{fault, vol_client, wait_storage};

#[test]
fn qos_specs_with_the_cli_keys_associations_and_refusals() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let vc = vol_client(&c);

    let q = os.json(&[
        "volume",
        "qos",
        "create",
        "--consumer",
        "front-end",
        "--property",
        "total_iops_sec=500",
        "q1",
    ]);
    let qid = q["id"].as_str().unwrap().to_string();
    assert_eq!(q["consumer"], "front-end", "{q}");
    os.ok(&[
        "volume",
        "qos",
        "set",
        "--property",
        "read_bytes_sec=1048576",
        "q1",
    ]);
    let shown = os.json(&["volume", "qos", "show", "q1"]);
    let props = shown["properties"].to_string();
    assert!(
        props.contains("total_iops_sec") && props.contains("read_bytes_sec"),
        "{shown}"
    );
    os.ok(&[
        "volume",
        "qos",
        "unset",
        "--property",
        "read_bytes_sec",
        "q1",
    ]);
    let r = vc.get(&format!("/qos-specs/{qid}"), &c.admin);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["qos_specs"]["specs"],
        json!({"total_iops_sec": "500"})
    );

    // Associated with a type: the type shows it; deleting the specs is
    // refused until forced or disassociated.
    os.ok(&["volume", "type", "create", "gold"]);
    os.ok(&["volume", "qos", "associate", "q1", "gold"]);
    let tid = os.json(&["volume", "type", "show", "gold"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = vc.get(&format!("/types/{tid}"), &c.admin).body;
    assert_eq!(t["volume_type"]["qos_specs_id"], qid.as_str(), "{t}");
    let listed = os.json(&["volume", "qos", "list"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["ID"] == qid.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(row["Associations"].to_string().contains("gold"), "{listed}");
    let r = vc.delete(&format!("/qos-specs/{qid}"), &c.admin);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!fault(&r, "badRequest").is_empty());
    os.ok(&[
        "volume",
        "qos",
        "disassociate",
        "--volume-type",
        "gold",
        "q1",
    ]);
    let t = vc.get(&format!("/types/{tid}"), &c.admin).body;
    assert!(t["volume_type"]["qos_specs_id"].is_null(), "{t}");

    // Bad input: an unknown consumer, a non-numeric front-end limit, a
    // duplicate name, a missing type.
    let r = vc.post(
        "/qos-specs",
        &c.admin,
        json!({"qos_specs": {"name": "q2", "consumer": "sideways"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vc.post(
        "/qos-specs",
        &c.admin,
        json!({"qos_specs": {"name": "q2", "total_iops_sec": "fast"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = vc.post("/qos-specs", &c.admin, json!({"qos_specs": {"name": "q1"}}));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = vc.get(
        &format!("/qos-specs/{qid}/associate?vol_type_id=no-such-type"),
        &c.admin,
    );
    assert_eq!(r.status, 404, "{}", r.body);

    // Members of a project neither read nor change them.
    let (_, member) = c.project("qm");
    assert_eq!(vc.get("/qos-specs", &member).status, 403);
    let r = vc.call(
        "PUT",
        &format!("/qos-specs/{qid}"),
        Some(&member),
        Some(json!({"qos_specs": {"total_iops_sec": "1"}})),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        vc.get(&format!("/qos-specs/{qid}"), &c.admin).body["qos_specs"]["specs"]["total_iops_sec"],
        "500"
    );

    os.ok(&["volume", "qos", "delete", "q1"]);
    assert_eq!(vc.get(&format!("/qos-specs/{qid}"), &c.admin).status, 404);
}

/// One QMP command on a VM's monitor socket; its `return`.
fn qmp(sock: &std::path::Path, cmd: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(sock).expect("QMP socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // the greeting
    let mut answer = |c: &str| -> serde_json::Value {
        writeln!(w, "{}", json!({"execute": c})).unwrap();
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).unwrap() > 0, "QMP closed");
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            if v.get("return").is_some() || v.get("error").is_some() {
                return v;
            }
        }
    };
    answer("qmp_capabilities");
    answer(cmd)["return"].clone()
}

/// Front-end QoS specs reach QEMU: a volume of a type with them is
/// throttled in the VM it is attached to (QEMU's own `query-block`).
#[test]
fn front_end_qos_throttles_the_volume_in_a_real_vm() {
    use super::compute_real::{image_id, require_qemu, require_runtime};
    use super::volume::wait_status;
    require_runtime();
    require_qemu();
    let c = super::volume_attach::cloud(None);
    let vc = vol_client(&c);
    let r = vc.post(
        "/qos-specs",
        &c.admin,
        json!({"qos_specs": {"name": "slow", "consumer": "front-end",
            "total_iops_sec": "150", "read_bytes_sec": "1048576", "write_bytes_sec": "2097152"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let qid = r.body["qos_specs"]["id"].as_str().unwrap().to_string();
    let r = vc.post("/types", &c.admin, json!({"volume_type": {"name": "slow"}}));
    let tid = r.body["volume_type"]["id"].as_str().unwrap().to_string();
    let r = vc.get(
        &format!("/qos-specs/{qid}/associate?vol_type_id={tid}"),
        &c.admin,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let r = vc.post(
        "/volumes",
        &c.admin,
        json!({"volume": {"size": 1, "volume_type": "slow"}}),
    );
    let vid = r.body["volume"]["id"].as_str().unwrap().to_string();
    wait_status(&vc, &c.admin, &vid, "available");

    let img = image_id(&c, "busybox-vm");
    let r = c.boot(&c.admin, "q", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &sid, "ACTIVE");
    let r = c.req(
        "POST",
        &format!("/servers/{sid}/os-volume_attachments"),
        &c.admin,
        Some(json!({"volumeAttachment": {"volumeId": vid}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_status(&vc, &c.admin, &vid, "in-use");

    let sock = c
        .server
        .data_dir()
        .join(format!("agent/vms/{sid}/qmp.sock"));
    let blocks = qmp(&sock, "query-block");
    let dev = blocks
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains("disk-vdb")))
        .cloned()
        .unwrap_or_else(|| panic!("no disk-vdb in {blocks}"));
    let ins = &dev["inserted"];
    let log = std::fs::read_to_string(c.server.log_path()).unwrap_or_default();
    let log: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("QoS") || l.contains("WARN"))
        .collect();
    assert_eq!(ins["iops"], 150, "{dev}\n{}", log.join("\n"));
    // A total limit wins over read and write ones of the same kind; the
    // byte limits are per direction.
    assert_eq!(ins["iops_rd"], 0, "{dev}");
    assert_eq!(ins["bps_rd"], 1048576, "{dev}");
    assert_eq!(ins["bps_wr"], 2097152, "{dev}");
    assert_eq!(ins["bps"], 0, "{dev}");

    // A hard reboot starts QEMU again: the limits are set again.
    let r = c.req(
        "POST",
        &format!("/servers/{sid}/action"),
        &c.admin,
        Some(json!({"reboot": {"type": "HARD"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    c.wait(&c.admin, &sid, "ACTIVE");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let ok = std::panic::catch_unwind(|| {
            qmp(&sock, "query-block")
                .as_array()
                .unwrap()
                .iter()
                .any(|b| {
                    b["qdev"].as_str().is_some_and(|q| q.contains("disk-vdb"))
                        && b["inserted"]["iops"] == 150
                })
        })
        .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no limits after a reboot"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    let r = c.req("DELETE", &format!("/servers/{sid}"), &c.admin, None);
    assert_eq!(r.status, 204, "{}", r.body);
    c.wait_gone(&c.admin, &sid);
}
