//! Secrets at rest and node identities: credential blobs are encrypted in
//! the store with their own rotating keys (and blobs an older version
//! stored in clear are encrypted on start), the data dir is readable by
//! its owner only, and node agents join with a one-time token instead of
//! the admin password, getting a credential that acts for their own node
//! only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::{Agent, Client, Server, bin, node_token};
use super::compute::Cloud;

/// Every file under `dir`, recursively (symbolic links not followed).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(files(&e.path()));
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    out
}

/// Asserts that none of `secrets` is anywhere in the data dir's files
/// (the store, its WAL and shared memory, keys, everything).
fn assert_not_at_rest(s: &Server, secrets: &[&str]) {
    let all = files(s.data_dir());
    if s.database.is_none() {
        assert!(s.data_dir().join("stratus.db").exists());
        assert!(all.iter().any(|f| f.ends_with("stratus.db-wal")), "{all:?}");
    }
    let mut stored: Vec<(String, Vec<u8>)> = all
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read(f).unwrap()))
        .collect();
    // On PostgreSQL the store is not in the data dir: search its tables.
    stored.extend(s.stored_bytes());
    for (what, bytes) in stored {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is stored in clear in {what}"
            );
        }
    }
}

/// (user id, project id, token) of the admin.
fn admin(s: &Server) -> (String, String, String) {
    let r = s.client().login("admin", &s.admin_password, Some("admin"));
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["token"]["user"]["id"].as_str().unwrap().to_string(),
        r.body["token"]["project"]["id"]
            .as_str()
            .unwrap()
            .to_string(),
        r.header("x-subject-token").unwrap().to_string(),
    )
}

fn admin_cmd(s: &Server, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(s.data_dir())
        .args(s.database.iter().flat_map(|d| ["--database", d.as_str()]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "stratus admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn secrets_credential_blobs_are_encrypted_at_rest_and_survive_rotation() {
    let s = Server::start_with(&["--driver", "fake"]);
    let c = s.client();
    let (uid, pid, tok) = admin(&s);
    let generic = "generic-SECRET-3f9a1c77d2";
    let r = c.post(
        "/credentials",
        &tok,
        json!({"credential": {"user_id": uid, "type": "totp", "blob": generic}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["credential"]["blob"], generic);
    let cid = r.body["credential"]["id"].as_str().unwrap().to_string();
    let r = c.post(
        &format!("/users/{uid}/credentials/OS-EC2"),
        &tok,
        json!({"tenant_id": pid}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let access = r.body["credential"]["access"].as_str().unwrap().to_string();
    let secret = r.body["credential"]["secret"].as_str().unwrap().to_string();
    let check = |generic_blob: &str| {
        let r = c.get(&format!("/credentials/{cid}"), &tok);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["credential"]["blob"], generic_blob);
        let r = c.get(&format!("/users/{uid}/credentials/OS-EC2/{access}"), &tok);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["credential"]["secret"], secret.as_str());
        let r = c.get("/credentials?type=ec2", &tok);
        let blob: Value = serde_json::from_str(
            r.body["credentials"][0]["blob"]
                .as_str()
                .expect("ec2 blob listed"),
        )
        .unwrap();
        assert_eq!(blob["secret"], secret.as_str());
    };
    check(generic);
    assert_not_at_rest(&s, &[generic, &secret]);
    // The credential keys are their own repository, not the token keys.
    let keys = s.data_dir().join("credential-keys");
    assert!(keys.join("0").exists() && keys.join("1").exists());
    let primary = std::fs::read(keys.join("1")).unwrap();
    for f in files(&s.data_dir().join("fernet-keys")) {
        assert_ne!(std::fs::read(f).unwrap(), primary);
    }
    // Rotated more often than the repository keeps keys: every rotation
    // re-encrypts, so nothing is left under a retired key, and the
    // running server reads the rows a rotation wrote.
    for _ in 0..4 {
        let out = admin_cmd(&s, &["credential-rotate"]);
        assert!(out.contains("2 credentials re-encrypted"), "{out}");
        check(generic);
    }
    assert!(!keys.join("1").exists(), "the first primary is retired");
    // A blob written after the rotations, and an update.
    let newer = "newer-SECRET-88aa01";
    let r = c.patch(
        &format!("/credentials/{cid}"),
        &tok,
        json!({"credential": {"blob": newer}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    check(newer);
    assert_not_at_rest(&s, &[generic, newer, &secret]);
    let out = admin_cmd(&s, &["credential-migrate"]);
    assert!(out.contains("0 credentials re-encrypted"), "{out}");
    // Keys rotated without re-encrypting (by hand, as Keystone's
    // `credential_rotate` leaves it to `credential_migrate`): rows sealed
    // with the retired primary still read, and the migration re-seals
    // them with the new one.
    let mut idx: Vec<u64> = files(&keys)
        .iter()
        .filter_map(|f| f.file_name()?.to_str()?.parse().ok())
        .collect();
    idx.sort();
    let next = idx.last().unwrap() + 1;
    std::fs::rename(keys.join("0"), keys.join(next.to_string())).unwrap();
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))
        .unwrap();
    use base64::Engine;
    std::fs::write(
        keys.join("0"),
        base64::engine::general_purpose::URL_SAFE.encode(raw),
    )
    .unwrap();
    check(newer);
    let out = admin_cmd(&s, &["credential-migrate"]);
    assert!(out.contains("2 credentials re-encrypted"), "{out}");
    check(newer);
}

#[test]
fn secrets_plaintext_credentials_of_an_older_version_are_encrypted_on_start() {
    if super::common::on_postgres() {
        eprintln!("a test of the SQLite file: skipped on PostgreSQL");
        return;
    }
    let mut s = Server::start_with(&["--driver", "fake"]);
    let (uid, pid, _) = admin(&s);
    s.stop("-TERM");
    // A row as the previous version wrote it: the blob in clear, in the
    // document and in the change log.
    let access = "legacy-access-0001";
    let secret = "legacy-SECRET-0e1d2c3b4a";
    let id: String = {
        use sha2::Digest;
        sha2::Sha256::digest(access.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let body = json!({"id": id, "user_id": uid, "project_id": pid, "type": "ec2",
        "blob": json!({"access": access, "secret": secret, "trust_id": null}).to_string()})
    .to_string();
    {
        let db = rusqlite::Connection::open(s.data_dir().join("stratus.db")).unwrap();
        db.execute(
            "INSERT INTO changes (kind, id, op, body, at_ms) VALUES ('credential', ?1, 'put', ?2, 0)",
            rusqlite::params![id, body],
        )
        .unwrap();
        let seq = db.last_insert_rowid();
        db.execute(
            "INSERT INTO resources (kind, id, owner, parent, name, unique_key, revision, body)
             VALUES ('credential', ?1, ?2, NULL, NULL, NULL, ?3, ?4)",
            rusqlite::params![id, uid, seq, body],
        )
        .unwrap();
    }
    s.restart_after_stop();
    let (_, _, tok) = admin(&s);
    let c = s.client();
    let r = c.get(&format!("/users/{uid}/credentials/OS-EC2/{access}"), &tok);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["credential"]["secret"], secret);
    let r = c.get(&format!("/credentials/{id}"), &tok);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body["credential"]["blob"]
            .as_str()
            .unwrap()
            .contains(secret)
    );
    assert_not_at_rest(&s, &[secret]);
}

/// Paths under `dir` that are not owner-only (0600 files, 0700 dirs),
/// leaving out the container driver's trees.
fn loose(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mode = std::fs::symlink_metadata(dir).unwrap().permissions().mode() & 0o777;
    if mode != 0o700 {
        out.push(format!("{} {mode:o}", dir.display()));
    }
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            if p.parent().is_some_and(|d| d.ends_with("agent"))
                && ["images", "instances", "runc"]
                    .iter()
                    .any(|n| p.ends_with(n))
            {
                continue;
            }
            out.extend(loose(&p));
        } else if t.is_file() {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if mode != 0o600 {
                out.push(format!("{} {mode:o}", p.display()));
            }
        }
    }
    out
}

#[test]
fn secrets_data_dir_is_readable_by_its_owner_only() {
    if super::common::on_postgres() {
        eprintln!("a test of the SQLite file: skipped on PostgreSQL");
        return;
    }
    let mut s = Server::start_with(&["--driver", "fake"]);
    let (uid, _, tok) = admin(&s);
    let r = s.client().post(
        "/credentials",
        &tok,
        json!({"credential": {"user_id": uid, "type": "x", "blob": "b"}}),
    );
    assert_eq!(r.status, 201);
    // An image, so the image store has data too.
    let img = s.image_client();
    let r = img.post(
        "/images",
        &tok,
        json!({"name": "i", "disk_format": "raw", "container_format": "bare"}),
    );
    let iid = r.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = img.bytes(
        "PUT",
        &format!("/images/{iid}/file"),
        &tok,
        &[("Content-Type", "application/octet-stream")],
        Some(vec![7u8; 4096]),
    );
    assert_eq!(st, 204);
    for f in [
        "stratus.db",
        "stratus.db-wal",
        "stratus.db-shm",
        "clouds.yaml",
        "openrc",
    ] {
        assert!(s.data_dir().join(f).exists(), "{f}");
    }
    assert_eq!(loose(s.data_dir()), Vec::<String>::new());
    // A data dir an older version left readable is fixed at start.
    s.stop("-TERM");
    for (p, m) in [
        ("", 0o755),
        ("stratus.db", 0o644),
        ("stratus.db-wal", 0o644),
        ("clouds.yaml", 0o644),
        ("fernet-keys", 0o755),
        ("fernet-keys/0", 0o644),
        ("images", 0o755),
    ] {
        let path = s.data_dir().join(p);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
        }
    }
    s.restart_after_stop();
    assert_eq!(loose(s.data_dir()), Vec::<String>::new());
}

/// The node credential an agent keeps, and a token for it.
fn node_login(s: &Server, agent_dir: &Path) -> (Value, String) {
    let path = agent_dir.join("agent/node-credential.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let cred: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let r = s.client().call(
        "POST",
        "/auth/tokens",
        None,
        Some(
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "id": cred["user_id"], "password": cred["password"]}}},
            "scope": {"project": {"id": cred["project_id"]}}}}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let tok = r.header("x-subject-token").unwrap().to_string();
    (cred, tok)
}

fn join(s: &Server, token: &str, host: &str) -> super::common::Resp {
    Client {
        base: s.url.clone(),
    }
    .call(
        "POST",
        "/edge/v1/join",
        None,
        Some(json!({"join_token": token, "host": host})),
    )
}

#[test]
fn secrets_nodes_join_with_a_one_time_token_and_act_for_themselves_only() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "n1"]);
    let s = &c.server;
    let mut agent = Agent::start(s, "n2", &["--driver", "fake", "--heartbeat", "1"]);
    c.wait_nodes_logged(2, &agent.log);
    // No password in what `ps` shows of the agent, nor in its environment.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(&s.admin_password), "{cmdline}");
    assert!(!cmdline.contains("password"), "{cmdline}");
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(&s.admin_password));

    // The node runs a server; its credential reads the server's image (a
    // private image of another project) but no other private image.
    let (_, ptok) = c.project("p");
    let used = c.image(&ptok, "used");
    let other = c.image(&ptok, "other");
    let r = c.boot(
        &c.admin,
        "on-n2",
        &used,
        "1",
        json!({"availability_zone": "nova:n2"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let sid = r.body["server"]["id"].as_str().unwrap().to_string();
    let srv = c.wait(&c.admin, &sid, "ACTIVE");
    assert_eq!(srv["OS-EXT-SRV-ATTR:host"], "n2");
    let agent_dir = s.data_dir().join("n2");
    let (cred, ntok) = node_login(s, &agent_dir);
    assert_eq!(cred["host"], "n2");
    let (st, _, data) = c
        .img
        .bytes("GET", &format!("/images/{used}/file"), &ntok, &[], None);
    assert_eq!(st, 200);
    assert!(!data.is_empty());
    let (st, _, _) = c
        .img
        .bytes("GET", &format!("/images/{other}/file"), &ntok, &[], None);
    assert_eq!(st, 404, "another project's image the node does not run");
    // It uploads the snapshot its server makes, and nothing else.
    let r = c.req(
        "POST",
        &format!("/servers/{sid}/action"),
        &c.admin,
        Some(json!({"createImage": {"name": "snap"}})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let snap = r
        .header("location")
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.img.get(&format!("/images/{snap}"), &c.admin).body["status"] != "active" {
        assert!(
            Instant::now() < deadline,
            "the node never uploaded the snapshot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = c.img.post(
        "/images",
        &c.admin,
        json!({"name": "q", "disk_format": "raw", "container_format": "bare", "visibility": "public"}),
    );
    let queued = r.body["id"].as_str().unwrap().to_string();
    let (st, _, _) = c.img.bytes(
        "PUT",
        &format!("/images/{queued}/file"),
        &ntok,
        &[("Content-Type", "application/octet-stream")],
        Some(vec![1u8; 16]),
    );
    assert_eq!(st, 403, "an image no server of the node writes");

    // Its own agent endpoints only: not another node's, not admin APIs.
    let edge = Client {
        base: format!("{}/edge/v1/nodes", s.url),
    };
    assert_eq!(edge.get("/n2/servers", &ntok).status, 200);
    assert_eq!(edge.get("/n1/servers", &ntok).status, 403);
    let beat = json!({"driver": "fake", "vcpus": 1, "memory_mb": 1024, "disk_gb": 1});
    assert_eq!(edge.call("PUT", "/n1", Some(&ntok), Some(beat)).status, 403);
    let r = edge.call(
        "POST",
        &format!("/n1/servers/{sid}/report"),
        Some(&ntok),
        Some(json!({"generation": 1, "task": null, "ok": true, "power_state": 1})),
    );
    assert_eq!(r.status, 403);
    let r = s.client().post(
        "/projects",
        &ntok,
        json!({"project": {"name": "by-a-node", "domain_id": "default"}}),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(c.req("GET", "/servers/detail", &ntok, None).status, 403);
    assert_eq!(c.req("GET", "/os-hypervisors", &ntok, None).status, 403);

    // The token was used up; a fresh one expires.
    let used_token = node_token(s, &["--node-name", "n3"]);
    assert_eq!(join(s, &used_token, "n3").status, 201);
    assert_eq!(
        join(s, &used_token, "n3").status,
        401,
        "a join token joins once"
    );
    let expiring = node_token(s, &["--expires", "1"]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        join(s, &expiring, "n4").status,
        401,
        "an expired join token"
    );
    // A token for one node does not join another; one for any node does
    // not take over a node that joined.
    let for_n5 = node_token(s, &["--node-name", "n5"]);
    assert_eq!(join(s, &for_n5, "n6").status, 403);
    let any = node_token(s, &[]);
    assert_eq!(join(s, &any, "n2").status, 409);
    assert_eq!(join(s, &any, "n6").status, 201);
    // The token is stored hashed.
    let stored = s.stored_bytes();
    for t in [&for_n5, &expiring] {
        for (what, bytes) in &stored {
            assert!(
                !bytes.windows(t.len()).any(|w| w == t.as_bytes()),
                "a join token in clear in {what}"
            );
        }
    }
    // An agent given a used token does not start.
    let mut refused = Agent::start_with_env(
        s,
        "n7",
        &["--driver", "fake"],
        &[("STRATUS_JOIN_TOKEN", &used_token)],
    );
    let st = refused
        .wait_exit(Duration::from_secs(30))
        .expect("refused agent exits");
    assert!(!st.success());
    assert!(
        std::fs::read_to_string(&refused.log)
            .unwrap()
            .contains("not valid")
    );

    // Restarted without any token or password, the node logs in with the
    // credential it kept, and runs servers.
    drop(agent);
    agent = Agent::start_with_env(s, "n2", &["--driver", "fake", "--heartbeat", "1"], &[]);
    let r = c.boot(
        &c.admin,
        "again-on-n2",
        &used,
        "1",
        json!({"availability_zone": "nova:n2"}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let id2 = r.body["server"]["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.req("GET", &format!("/servers/{id2}"), &c.admin, None);
        if r.body["server"]["status"] == "ACTIVE" {
            break;
        }
        assert!(
            agent.running() && Instant::now() < deadline,
            "the restarted node never ran the server: {}\n{}",
            r.body,
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn secrets_agents_still_log_in_the_old_way_from_a_password_file() {
    let c = Cloud::start(&["--driver", "fake", "--node-name", "n1"]);
    let s = &c.server;
    let file = s.data_dir().join("agent-password");
    std::fs::write(&file, format!("{}\n", s.admin_password)).unwrap();
    let file = file.to_str().unwrap().to_string();
    let mut agent = Agent::start_with_env(
        s,
        "old",
        &["--driver", "fake", "--password-file", &file],
        &[],
    );
    c.wait_nodes_logged(2, &agent.log);
    assert!(agent.running());
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(&s.admin_password));
    assert!(
        !s.data_dir().join("old/agent/node-credential.json").exists(),
        "no node identity without a join token"
    );
    // Without any credential an agent says what it needs.
    let mut none = Agent::start_with_env(s, "none", &["--driver", "fake"], &[]);
    let st = none.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(!st.success());
    assert!(
        std::fs::read_to_string(&none.log)
            .unwrap()
            .contains("--join-token")
    );
}
