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
