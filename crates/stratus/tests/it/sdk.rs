//! openstacksdk as an application uses it: `tests/sdk/app.py` connects with
//! the `clouds.yaml` that `stratus up` wrote, creates a key pair and a
//! server, waits for it, reads its console and deletes both. It runs with
//! the Python of the venv that holds the `openstack` CLI (openstacksdk comes
//! with it).

use std::path::PathBuf;
use std::process::Command;

use super::common::Server;

#[test]
fn sdk_application_builds_reads_console_resizes_shelves_and_deletes_a_server() {
    let Some(cli) = super::cli::cli() else { return };
    let python = cli.with_file_name("python");
    assert!(python.exists(), "no python next to {}", cli.display());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let images = root.join("target/test-images");
    assert!(
        images.join("images.tsv").exists(),
        "run scripts/build-test-images first (./scripts/test does)"
    );
    // In a namespace of its own: the server gets a network, a router and
    // a floating IP, all wired for real.
    let s = Server::start_in_netns(&["--import-images", images.to_str().unwrap()]);
    let client = s.compute_client();
    let token = s.client().token("admin", &s.admin_password, Some("admin"));
    // The in-process node reports in shortly after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = client.get("/os-hypervisors", &token);
        if r.body["hypervisors"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no compute node");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let home = s.data_dir().join("sdk-home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(&python)
        .arg(root.join("tests/sdk/app.py"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("OS_CLIENT_CONFIG_FILE", s.data_dir().join("clouds.yaml"))
        .env("OS_CLOUD", "stratus")
        .output()
        .expect("run tests/sdk/app.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sdk app failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("console read, resized, shelved, unshelved, stopped, deleted"),
        "{stdout}"
    );
    // Nothing is left behind: the server and key pair are gone.
    let servers = client.get("/servers?all_tenants=1", &token);
    assert_eq!(
        servers.body["servers"],
        serde_json::json!([]),
        "{}",
        servers.body
    );
    let keys = client.get("/os-keypairs", &token);
    assert_eq!(keys.body["keypairs"], serde_json::json!([]));
}
