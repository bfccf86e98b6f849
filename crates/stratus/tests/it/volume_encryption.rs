//! Volume type encryption (`/types/{id}/encryption`) and the list filter
//! rules of 3.31/3.34 against the real binary, through the real
//! `openstack` CLI (as admin and as a project member) and raw HTTP.
//! Effects are asserted, not exit codes: the CLI exits 0 on some
//! refused requests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cli::{Os, cli};
use super::common::{Client, Resp};
use super::compute::Cloud;
use super::volume::{fault, vol_client, wait_status, wait_storage};

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

/// Runs the CLI as `{project}-user` (what `Cloud::project` makes);
/// stdout parsed as JSON, or the error output.
fn cli_as(c: &Cloud, project: &str, args: &[&str]) -> Result<Value, String> {
    let bin: PathBuf = cli().expect("CLI");
    let home = c.server.data_dir().join("cli-home");
    std::fs::create_dir_all(&home).unwrap();
    let user = format!("{project}-user");
    let out = Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env(
            "OS_CLIENT_CONFIG_FILE",
            c.server.data_dir().join("clouds.yaml"),
        )
        .env("OS_CLOUD", "stratus")
        .env("OS_USERNAME", &user)
        .env("OS_PASSWORD", "pw-12345")
        .env("OS_PROJECT_NAME", project)
        .args(args)
        .args(["-f", "json"])
        .output()
        .expect("run openstack");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_str(&stdout).map_err(|e| format!("not JSON ({e}): {stdout}"))
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {v}"))
        .to_string()
}

/// The names of a CLI listing's rows.
fn names(rows: &Value) -> Vec<String> {
    let mut n: Vec<String> = rows
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {rows}"))
        .iter()
        .map(|r| r["Name"].as_str().unwrap_or_default().to_string())
        .collect();
    n.sort();
    n
}

fn volume_names(vc: &Client, tok: &str) -> Vec<String> {
    let r = vc.get("/volumes", tok);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn volume_type_encryption_cli_http_and_refused_encrypted_volumes() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    let Some(os) = Os::new(&c.server) else { return };
    wait_storage(&c);
    let vc = vol_client(&c);
    let admin = c.admin.as_str();
    let (_pm, member) = c.project("encm");

    // The CLI makes an encrypted type and shows its encryption.
    let t = os.json(&[
        "volume",
        "type",
        "create",
        "--encryption-provider",
        "luks",
        "--encryption-cipher",
        "aes-xts-plain64",
        "--encryption-key-size",
        "256",
        "--encryption-control-location",
        "front-end",
        "--public",
        "enc1",
    ]);
    let tid = id_of(&t);
    let shown = t["encryption"].to_string();
    assert!(
        shown.contains("luks") && shown.contains("aes-xts-plain64"),
        "{t}"
    );
    let r = vc.get(&format!("/types/{tid}/encryption"), admin);
    assert_eq!(r.status, 200, "{}", r.body);
    let e = &r.body;
    assert_eq!(e["provider"], "luks", "{e}");
    assert_eq!(e["cipher"], "aes-xts-plain64", "{e}");
    assert_eq!(e["key_size"], 256, "{e}");
    assert_eq!(e["control_location"], "front-end", "{e}");
    assert_eq!(e["volume_type_id"], tid.as_str(), "{e}");
    assert_eq!(e["deleted"], false, "{e}");
    assert!(e["updated_at"].is_null(), "{e}");
    let enc_id = e["encryption_id"].as_str().unwrap().to_string();
    let r = vc.get(&format!("/types/{tid}/encryption/provider"), admin);
    assert_eq!(r.body, json!({"provider": "luks"}));
    let r = vc.get(&format!("/types/{tid}/encryption/nope"), admin);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(fault(&r, "itemNotFound").contains("does not exist"));
    let s = os.json(&["volume", "type", "show", "--encryption-type", "enc1"]);
    assert!(s["encryption"].to_string().contains("luks"), "{s}");
    // The type's own view is unchanged.
    let r = vc.get(&format!("/types/{tid}"), admin);
    assert_eq!(r.body["volume_type"]["name"], "enc1", "{}", r.body);
    let listed = os.json(&["volume", "type", "list", "--long", "--encryption-type"]);
    assert!(listed.to_string().contains("luks"), "{listed}");

    // The CLI changes it (a PUT naming only what changes).
    os.ok(&[
        "volume",
        "type",
        "set",
        "--encryption-key-size",
        "512",
        "--encryption-control-location",
        "back-end",
        "enc1",
    ]);
    let e = vc.get(&format!("/types/{tid}/encryption"), admin).body;
    assert_eq!(e["key_size"], 512, "{e}");
    assert_eq!(e["control_location"], "back-end", "{e}");
    assert_eq!(e["provider"], "luks", "{e}");
    assert_eq!(e["encryption_id"], enc_id.as_str(), "{e}");
    assert!(e["updated_at"].is_string(), "{e}");

    // Admins only, as Cinder's policy.
    for (m, path) in [
        ("GET", format!("/types/{tid}/encryption")),
        ("GET", format!("/types/{tid}/encryption/provider")),
        ("POST", format!("/types/{tid}/encryption")),
        ("PUT", format!("/types/{tid}/encryption/{enc_id}")),
        ("DELETE", format!("/types/{tid}/encryption/{enc_id}")),
    ] {
        let body = json!({"encryption": {"provider": "x", "control_location": "front-end"}});
        let r = at(&vc, 0, m, &path, &member, Some(body));
        assert_eq!(r.status, 403, "{m} {path}: {}", r.body);
        fault(&r, "forbidden");
    }
    assert_eq!(
        vc.get(&format!("/types/{tid}/encryption"), admin).body["key_size"],
        512
    );

    // Bad input, a second encryption, missing types.
    let plain = vc.post("/types", admin, json!({"volume_type": {"name": "plain"}}));
    assert_eq!(plain.status, 200, "{}", plain.body);
    let pid = id_of(&plain.body["volume_type"]);
    for bad in [
        json!({"encryption": {"control_location": "front-end"}}),
        json!({"encryption": {"provider": "luks"}}),
        json!({"encryption": {"provider": "luks", "control_location": "middle"}}),
        json!({"encryption": {"provider": "luks", "control_location": "front-end", "key_size": "big"}}),
        json!({"encryption": {"provider": "luks", "control_location": "front-end", "cipher": 7}}),
        json!({"provider": "luks", "control_location": "front-end"}),
    ] {
        let r = vc.post(&format!("/types/{pid}/encryption"), admin, bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        fault(&r, "badRequest");
    }
    assert_eq!(
        vc.get(&format!("/types/{pid}/encryption"), admin).body,
        json!({})
    );
    let r = vc.post(
        &format!("/types/{tid}/encryption"),
        admin,
        json!({"encryption": {"provider": "luks", "control_location": "front-end"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("already exists"));
    let r = vc.post(
        "/types/00000000-0000-0000-0000-000000000000/encryption",
        admin,
        json!({"encryption": {"provider": "luks", "control_location": "front-end"}}),
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = vc.get(
        "/types/00000000-0000-0000-0000-000000000000/encryption",
        admin,
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = at(
        &vc,
        0,
        "PUT",
        &format!("/types/{pid}/encryption/provider"),
        admin,
        Some(json!({"encryption": {"cipher": "x"}})),
    );
    assert_eq!(r.status, 404, "no encryption to update: {}", r.body);
    let r = at(
        &vc,
        0,
        "DELETE",
        &format!("/types/{pid}/encryption/provider"),
        admin,
        None,
    );
    assert_eq!(r.status, 404, "no encryption to delete: {}", r.body);

    // Volumes of an encrypted type are refused, by HTTP and the CLI.
    let r = vc.post(
        "/volumes",
        &member,
        json!({"volume": {"size": 1, "name": "secret", "volume_type": "enc1"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let msg = fault(&r, "badRequest");
    assert!(msg.contains("encrypted volumes are not offered"), "{msg}");
    let out = cli_as(
        &c,
        "encm",
        &[
            "volume", "create", "--size", "1", "--type", "enc1", "secret2",
        ],
    );
    assert!(out.is_err(), "{out:?}");
    assert!(
        out.unwrap_err()
            .contains("encrypted volumes are not offered"),
        "the CLI shows why"
    );
    let mine = volume_names(&vc, &member);
    assert!(
        !mine.iter().any(|n| n.starts_with("secret")),
        "no volume was made: {mine:?}"
    );
    // ... and so is a retype to one; the volume keeps its type.
    let r = vc.post(
        "/volumes",
        &member,
        json!({"volume": {"size": 1, "name": "plainvol", "volume_type": "plain"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let vid = id_of(&r.body["volume"]);
    let v = wait_status(&vc, &member, &vid, "available");
    assert_eq!(v["encrypted"], false);
    let r = vc.post(
        &format!("/volumes/{vid}/action"),
        &member,
        json!({"os-retype": {"new_type": "enc1"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("encrypted volumes are not offered"));
    let v = wait_status(&vc, &member, &vid, "available");
    assert_eq!(v["volume_type"], "plain", "{v}");

    // A type with volumes takes no encryption.
    let r = vc.post(
        &format!("/types/{pid}/encryption"),
        admin,
        json!({"encryption": {"provider": "luks", "control_location": "front-end"}}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(fault(&r, "badRequest").contains("Volume type in use"));
    assert_eq!(
        vc.get(&format!("/types/{pid}/encryption"), admin).body,
        json!({})
    );

    // The CLI takes the encryption away; the type then makes volumes.
    os.ok(&["volume", "type", "unset", "--encryption-type", "enc1"]);
    assert_eq!(
        vc.get(&format!("/types/{tid}/encryption"), admin).body,
        json!({})
    );
    let r = vc.post(
        "/volumes",
        &member,
        json!({"volume": {"size": 1, "name": "now", "volume_type": "enc1"}}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &member, &id_of(&r.body["volume"]), "available");
    // ... and being in use, takes none again, also through the CLI's
    // set (which creates when there is none).
    let _ = os.fails(&[
        "volume",
        "type",
        "set",
        "--encryption-provider",
        "luks",
        "--encryption-control-location",
        "front-end",
        "enc1",
    ]);
    assert_eq!(
        vc.get(&format!("/types/{tid}/encryption"), admin).body,
        json!({})
    );

    // Through the CLI's set on a plain type (no encryption yet: the CLI
    // creates one), then the type is deleted with its encryption.
    os.ok(&["volume", "type", "create", "enc2"]);
    os.ok(&[
        "volume",
        "type",
        "set",
        "--encryption-provider",
        "luks2",
        "--encryption-control-location",
        "front-end",
        "enc2",
    ]);
    let s = os.json(&["volume", "type", "show", "--encryption-type", "enc2"]);
    assert!(s["encryption"].to_string().contains("luks2"), "{s}");
    let t2 = id_of(&s);
    os.ok(&["volume", "type", "delete", "enc2"]);
    let r = vc.get(&format!("/types/{t2}/encryption"), admin);
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn volume_lists_refuse_unknown_filters_for_members_from_3_31() {
    if cli().is_none() {
        return;
    }
    let c = Cloud::start(&["--driver", "fake"]);
    wait_storage(&c);
    let vc = vol_client(&c);
    let admin = c.admin.as_str();
    let (_pm, member) = c.project("filt");

    // Something in every list the member reads.
    for name in ["data-1", "logs-1"] {
        let r = vc.post(
            "/volumes",
            &member,
            json!({"volume": {"size": 1, "name": name}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        wait_status(&vc, &member, &id_of(&r.body["volume"]), "available");
    }
    let r = at(
        &vc,
        11,
        "POST",
        "/group_types",
        admin,
        Some(json!({"group_type": {"name": "gt"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let mut groups = Vec::new();
    for name in ["alpha-grp", "beta-grp"] {
        let r = at(
            &vc,
            13,
            "POST",
            "/groups",
            &member,
            Some(
                json!({"group": {"group_type": "gt", "volume_types": ["__DEFAULT__"], "name": name}}),
            ),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        groups.push(id_of(&r.body["group"]));
    }
    let r = at(
        &vc,
        13,
        "POST",
        "/volumes",
        &member,
        Some(json!({"volume": {"size": 1, "name": "member-vol", "group_id": groups[0]}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&vc, &member, &id_of(&r.body["volume"]), "available");
    let r = at(
        &vc,
        14,
        "POST",
        "/group_snapshots",
        &member,
        Some(json!({"group_snapshot": {"group_id": groups[0], "name": "alpha-gs"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let gs = id_of(&r.body["group_snapshot"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = at(
            &vc,
            14,
            "GET",
            &format!("/group_snapshots/{gs}"),
            &member,
            None,
        );
        if r.body["group_snapshot"]["status"] == "available" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Each list: an unknown key is a 400 for a member from 3.31, not
    // before, never for an admin; its own filters and the paging keys
    // pass.
    let lists = [
        ("/volumes/detail", "volumes", "name=data-1"),
        ("/snapshots", "snapshots", "status=available"),
        ("/backups", "backups", "status=available"),
        ("/attachments", "attachments", "status=attached"),
        ("/messages", "messages", "event_id=VOLUME_000001"),
        ("/groups", "groups", "name=alpha-grp"),
        ("/group_snapshots", "group_snapshots", "name=alpha-gs"),
    ];
    for (path, key, good) in lists {
        let r = at(&vc, 31, "GET", &format!("{path}?colour=red"), &member, None);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert_eq!(
            fault(&r, "badRequest"),
            "Invalid filters colour are found in query options.",
            "{path}"
        );
        let before = if path == "/attachments" { 27 } else { 30 };
        let r = at(
            &vc,
            before,
            "GET",
            &format!("{path}?colour=red"),
            &member,
            None,
        );
        assert_eq!(r.status, 200, "{path} before 3.31: {}", r.body);
        let r = at(&vc, 70, "GET", &format!("{path}?colour=red"), admin, None);
        assert_eq!(r.status, 200, "{path} as admin: {}", r.body);
        let q = format!(
            "{path}?{good}&limit=5&sort=created_at:desc&all_tenants=1&with_count=true&offset=0"
        );
        let r = at(&vc, 70, "GET", &q, &member, None);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        assert!(r.body[key].is_array(), "{q}: {}", r.body);
    }

    // Like filters: from 3.34 only; on volumes, groups and group
    // snapshots alike, matching a part of the name.
    let r = at(&vc, 33, "GET", "/volumes?name~=ata", &member, None);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = at(&vc, 34, "GET", "/volumes?name~=ata", &member, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<&str> = r.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["data-1"]);
    let r = at(&vc, 34, "GET", "/groups?name~=LPH", &member, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let got: Vec<&str> = r.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["alpha-grp"], "{}", r.body);
    let r = at(&vc, 34, "GET", "/groups/detail?name~=grp", &member, None);
    assert_eq!(r.body["groups"].as_array().unwrap().len(), 2, "{}", r.body);
    let r = at(
        &vc,
        34,
        "GET",
        "/group_snapshots?name~=pha-g",
        &member,
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["group_snapshots"].as_array().unwrap().len(),
        1,
        "{}",
        r.body
    );
    let r = at(&vc, 34, "GET", "/group_snapshots?name~=zzz", &member, None);
    assert_eq!(r.body["group_snapshots"], json!([]), "{}", r.body);
    // Before 3.34 `name~` is not a filter (admins: ignored).
    let r = at(
        &vc,
        33,
        "GET",
        "/groups?all_tenants=1&name~=LPH",
        admin,
        None,
    );
    assert_eq!(r.body["groups"].as_array().unwrap().len(), 2, "{}", r.body);
    // `resource_filters` says which keys pass.
    let r = at(
        &vc,
        34,
        "GET",
        "/resource_filters?resource=group",
        &member,
        None,
    );
    let f = &r.body["resource_filters"][0]["filters"];
    assert!(
        f.as_array().unwrap().contains(&json!("name~")),
        "{}",
        r.body
    );

    // The CLI's own list commands, as the member, at 3.70: none is
    // refused, and the filters they send work.
    let mv = ["--os-volume-api-version", "3.70"];
    let run = |args: &[&str]| -> Value {
        let mut a: Vec<&str> = mv.to_vec();
        a.extend_from_slice(args);
        cli_as(&c, "filt", &a).unwrap_or_else(|e| panic!("openstack {args:?}: {e}"))
    };
    assert_eq!(
        names(&run(&["volume", "list"])),
        ["data-1", "logs-1", "member-vol"]
    );
    assert_eq!(
        names(&run(&["volume", "list", "--long", "--name", "logs-1"])),
        ["logs-1"]
    );
    // (The CLI pages through with `limit` and `marker`.)
    assert_eq!(
        names(&run(&[
            "volume",
            "list",
            "--status",
            "available",
            "--limit",
            "1"
        ])),
        ["data-1", "logs-1", "member-vol"]
    );
    let snaps = run(&["volume", "snapshot", "list", "--long"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    let snaps = run(&["volume", "snapshot", "list", "--status", "available"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
    assert_eq!(run(&["volume", "backup", "list"]), json!([]));
    assert_eq!(
        run(&["volume", "backup", "list", "--status", "available"]),
        json!([])
    );
    assert_eq!(run(&["volume", "attachment", "list"]), json!([]));
    assert!(run(&["volume", "message", "list"]).is_array());
    assert_eq!(
        names(&run(&["volume", "group", "list"])),
        ["alpha-grp", "beta-grp"]
    );
    assert_eq!(
        run(&["volume", "group", "snapshot", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
