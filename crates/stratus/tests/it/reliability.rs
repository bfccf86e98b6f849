//! Reliability against the real binary: a node's report never undoes a
//! newer state, agents keep working across controller restarts, and kill -9
//! in the middle of creates, deletes and quota changes loses nothing.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::common::Agent;
use super::compute::{Cloud, MV};

/// A request that may fail (the controller may be down): the status and
/// body, or `None` when nothing answered.
pub(super) fn try_call(
    base: &str,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("X-Auth-Token", token)
        .header(MV.0, MV.1)
        .header("Content-Type", "application/json");
    let resp = match body {
        Some(b) => agent.run(req.body(b.to_string()).ok()?),
        None => agent.run(req.body(()).ok()?),
    };
    let mut resp = resp.ok()?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Plays a node agent over the agent API: `PUT /edge/v1/nodes/{host}`.
fn heartbeat(c: &Cloud, host: &str, key: &str, observed: u64, instances: Value) -> Value {
    let body = json!({
        "driver": "fake", "vcpus": 8, "memory_mb": 16384, "disk_gb": 100,
        "arch": "x86_64", "agent_key": key, "observed": observed,
        "instances": instances,
    });
    let r = c.server.client_at("/edge/v1").raw(
        "PUT",
        &format!("/nodes/{host}"),
        Some(&c.admin),
        &[],
        Some(body.to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// Waits until the controller hands server `id` to `host`; its generation.
fn assigned_generation(c: &Cloud, host: &str, id: &str) -> u64 {
    let edge = c.server.client_at("/edge/v1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = edge.get(&format!("/nodes/{host}/servers?since=0"), &c.admin);
        assert_eq!(r.status, 200, "{}", r.body);
        if let Some(s) = r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
        {
            assert_eq!(s["task_state"], "spawning");
            return s["generation"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "never assigned to the node");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plays the node reporting a finished spawn, stamped `mark` on the clock
/// of agent `key`.
fn report_spawned(c: &Cloud, host: &str, id: &str, generation: u64, key: &str, mark: u64) {
    let r = c.server.client_at("/edge/v1").raw(
        "POST",
        &format!("/nodes/{host}/servers/{id}/report"),
        Some(&c.admin),
        &[],
        Some(
            json!({"generation": generation, "task": "spawning", "ok": true,
                   "power_state": 1, "agent_key": key, "mark": mark})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

fn server(c: &Cloud, tok: &str, id: &str) -> Value {
    let r = c.req("GET", &format!("/servers/{id}"), tok, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["server"].clone()
}

#[test]
fn reliability_heartbeat_listed_before_a_spawn_settled_never_stops_it() {
    let c = Cloud::start(&["--no-agent"]);
    let key = "agent-key-1";
    heartbeat(&c, "sim", key, 0, json!({}));
    c.wait_nodes(1);
    let (_, tok) = c.project("race");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "racer", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();

    // The controller hands the spawn to the node.
    let generation = assigned_generation(&c, "sim", &id);

    // The node lists its workloads at clock 0 (the spawn is not done yet),
    // finishes the spawn and reports it at clock 1, and the heartbeat with
    // the older listing arrives after the report.
    report_spawned(&c, "sim", &id, generation, key, 1);
    assert_eq!(server(&c, &tok, &id)["status"], "ACTIVE");
    heartbeat(&c, "sim", key, 0, json!({}));
    let s = server(&c, &tok, &id);
    assert_eq!(s["status"], "ACTIVE", "a stale listing stopped the server");
    assert_eq!(s["OS-EXT-STS:power_state"], 1);
    assert_eq!(s["OS-EXT-STS:task_state"], Value::Null);
    // A listing without a clock cannot be ordered either.
    let r = c.server.client_at("/edge/v1").raw(
        "PUT",
        "/nodes/sim",
        Some(&c.admin),
        &[],
        Some(
            json!({"driver": "fake", "vcpus": 8, "memory_mb": 16384, "disk_gb": 100,
                   "arch": "x86_64", "instances": {}})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(server(&c, &tok, &id)["status"], "ACTIVE");

    // A listing of the same agent taken after the report is the truth: the
    // workload is gone, so the server shut down.
    heartbeat(&c, "sim", key, 1, json!({}));
    let s = server(&c, &tok, &id);
    assert_eq!(s["status"], "SHUTOFF");
    assert_eq!(s["OS-EXT-STS:power_state"], 0);
}

/// The node's assignments, asking only for what changed after `changed`
/// when given.
fn assignments(c: &Cloud, host: &str, changed: Option<u64>) -> Value {
    let only = changed.map(|n| format!("&changed={n}")).unwrap_or_default();
    let r = c
        .server
        .client_at("/edge/v1")
        .get(&format!("/nodes/{host}/servers?since=0{only}"), &c.admin);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn assigned_ids(a: &Value) -> Vec<String> {
    let mut ids: Vec<String> = a["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn reliability_a_node_asking_for_changes_gets_exactly_the_servers_written_since() {
    let c = Cloud::start(&["--no-agent"]);
    let key = "agent-key-1";
    heartbeat(&c, "sim", key, 0, json!({}));
    c.wait_nodes(1);
    let (_, tok) = c.project("delta");
    let img = c.image(&tok, "tiny");
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = c.boot(&tok, &format!("d{i}"), &img, "42", json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    let generations: Vec<u64> = ids
        .iter()
        .map(|id| assigned_generation(&c, "sim", id))
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();

    // A full list: every server, and where it was read.
    let full = assignments(&c, "sim", None);
    assert_eq!(assigned_ids(&full), sorted);
    assert_eq!(full.get("partial"), None, "{full}");
    let from = full["changes_from"]
        .as_u64()
        .expect("a position to ask from");

    // Nothing written since: nothing sent.
    let none = assignments(&c, "sim", Some(from));
    assert_eq!(none["partial"], true, "{none}");
    assert!(assigned_ids(&none).is_empty(), "{none}");

    // One server settles: it alone comes back, settled.
    report_spawned(&c, "sim", &ids[1], generations[1], key, 1);
    let one = assignments(&c, "sim", Some(from));
    assert_eq!(assigned_ids(&one), [ids[1].clone()], "{one}");
    assert_eq!(one["servers"][0]["task_state"], Value::Null);
    let from2 = one["changes_from"].as_u64().unwrap();
    assert!(from2 > from);
    assert!(assigned_ids(&assignments(&c, "sim", Some(from2))).is_empty());

    // A stop through the API: that server, with its task.
    let r = c.req(
        "POST",
        &format!("/servers/{}/action", ids[1]),
        &tok,
        Some(json!({"os-stop": null})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let stop = assignments(&c, "sim", Some(from2));
    assert_eq!(assigned_ids(&stop), [ids[1].clone()], "{stop}");
    assert_eq!(stop["servers"][0]["task_state"], "powering-off");

    // A position this store never reached (another database's) gets the
    // whole list, as does an agent that does not ask for changes.
    let other = assignments(&c, "sim", Some(from2 + 1_000_000));
    assert_eq!(other.get("partial"), None);
    assert_eq!(assigned_ids(&other), sorted);
}

#[test]
fn reliability_heartbeat_from_a_restarted_agent_is_newer_than_its_marks() {
    let c = Cloud::start(&["--no-agent"]);
    heartbeat(&c, "sim", "old-agent", 0, json!({}));
    c.wait_nodes(1);
    let (_, tok) = c.project("restarted");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "s", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let generation = assigned_generation(&c, "sim", &id);
    report_spawned(&c, "sim", &id, generation, "old-agent", 7);
    // A new agent process (a new key, its clock back at 0) sees the
    // workload stopped: that listing is newer than anything the old one
    // said.
    heartbeat(
        &c,
        "sim",
        "new-agent",
        0,
        json!({ id.as_str(): {"power_state": 4, "generation": generation} }),
    );
    assert_eq!(server(&c, &tok, &id)["status"], "SHUTOFF");
}

#[test]
fn reliability_agent_keeps_working_across_controller_restarts() {
    let mut c = Cloud::start(&["--no-agent"]);
    let agent = Agent::start(&c.server, "n1", &["--driver", "fake", "--heartbeat", "1"]);
    c.wait_nodes_logged(1, &agent.log);
    let (_, tok) = c.project("restart");
    let img = c.image(&tok, "tiny");
    // Some history, so the agent's poll position is well past 1.
    for i in 0..3 {
        let r = c.boot(&tok, &format!("before-{i}"), &img, "42", json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.body["server"]["id"].as_str().unwrap().to_string();
        c.wait(&tok, &id, "ACTIVE");
    }
    for round in 0..2 {
        c.server.restart();
        // The agent's poll broke with the old process; it polls again
        // within a few seconds.
        std::thread::sleep(Duration::from_secs(4));
        let t0 = Instant::now();
        let r = c.boot(&tok, &format!("after-{round}"), &img, "42", json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        let id = r.body["server"]["id"].as_str().unwrap().to_string();
        c.wait(&tok, &id, "ACTIVE");
        let took = t0.elapsed();
        // A stale poll position makes this wait out the agent's 30 s long
        // poll; normally it takes a fraction of a second. The bound leaves
        // room for a loaded test machine.
        assert!(
            took < Duration::from_secs(5),
            "ACTIVE only after {took:?} following a restart"
        );
        let t0 = Instant::now();
        let r = c.req("DELETE", &format!("/servers/{id}"), &tok, None);
        assert_eq!(r.status, 204, "{}", r.body);
        loop {
            if c.req("GET", &format!("/servers/{id}"), &tok, None).status == 404 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "delete still pending after a restart"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the workload threads were told.
#[derive(Default)]
struct Acks {
    created: Vec<String>,
    deleted: Vec<String>,
    /// Deletes sent whose answer never came (the controller died).
    maybe_deleted: Vec<String>,
    /// The last quota acknowledged and the one in flight at a kill.
    quota_acked: Option<u64>,
    quota_maybe: Vec<u64>,
}

#[test]
fn reliability_kill9_three_times_during_creates_deletes_and_quota_changes() {
    let mut c = Cloud::start(&[
        "--no-agent",
        "--cpu-allocation-ratio",
        "256",
        "--ram-allocation-ratio",
        "256",
        "--disk-allocation-ratio",
        "16",
    ]);
    // Two simulated nodes in one agent: a join token joins one node, so
    // this agent logs in the old way.
    let agent = Agent::start_with_env(
        &c.server,
        "n1",
        &["--driver", "fake", "--heartbeat", "1", "--fake-nodes", "2"],
        &[("OS_PASSWORD", &c.server.admin_password)],
    );
    c.wait_nodes_logged(2, &agent.log);
    let (pid, tok) = c.project("crash9");
    let img = c.image(&tok, "tiny");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 1000, "cores": 1000, "ram": 10000000}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let base = c.nova.base.clone();
    let admin = c.admin.clone();
    let acks = Mutex::new(Acks::default());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // Creators, each deleting every third server it made.
        for t in 0..3 {
            let (base, tok, img, acks, stop) = (&base, &tok, &img, &acks, &stop);
            scope.spawn(move || {
                let mut mine = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let body = json!({"server": {"name": format!("c{t}-{i}"), "imageRef": img,
                                                 "flavorRef": "42", "networks": "none"}});
                    match try_call(base, "POST", "/servers", tok, Some(&body)) {
                        Some((202, v)) => {
                            let id = v["server"]["id"].as_str().unwrap().to_string();
                            acks.lock().unwrap().created.push(id.clone());
                            mine.push(id);
                        }
                        Some(_) => {}
                        None => std::thread::sleep(Duration::from_millis(100)),
                    }
                    if i % 3 == 0
                        && let Some(id) = mine.first().cloned()
                    {
                        match try_call(base, "DELETE", &format!("/servers/{id}"), tok, None) {
                            Some((204, _)) => {
                                acks.lock().unwrap().deleted.push(id);
                                mine.remove(0);
                            }
                            // Still building or already deleting: try later.
                            Some(_) => {}
                            None => {
                                acks.lock().unwrap().maybe_deleted.push(id);
                                mine.remove(0);
                            }
                        }
                    }
                }
            });
        }
        // Quota changes.
        {
            let (base, admin, pid, acks, stop) = (&base, &admin, &pid, &acks, &stop);
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let want = 900 + n % 100;
                    let body = json!({"quota_set": {"instances": want}});
                    let path = format!("/os-quota-sets/{pid}");
                    match try_call(base, "PUT", &path, admin, Some(&body)) {
                        Some((200, _)) => acks.lock().unwrap().quota_acked = Some(want),
                        Some(_) => {}
                        None => {
                            acks.lock().unwrap().quota_maybe.push(want);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1500));
            c.server.stop("-KILL");
            c.server.restart_after_stop();
        }
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
    });
    let acks = acks.into_inner().unwrap();
    eprintln!(
        "{} creates and {} deletes acknowledged across three kills",
        acks.created.len(),
        acks.deleted.len()
    );
    assert!(!acks.created.is_empty() && !acks.deleted.is_empty());

    // Settle: nothing stays in BUILD or DELETING.
    let live = |c: &Cloud| -> Vec<(String, String, Value)> {
        let r = c.req("GET", "/servers/detail", &tok, None);
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["status"].as_str().unwrap().to_string(),
                    s["OS-EXT-STS:task_state"].clone(),
                )
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let servers = loop {
        let all = live(&c);
        if all
            .iter()
            .all(|(_, st, task)| st == "ACTIVE" && task.is_null())
        {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "not settled after 60 s: {:?}",
            all.iter()
                .filter(|(_, st, t)| st != "ACTIVE" || !t.is_null())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let ids: HashSet<&String> = servers.iter().map(|(i, _, _)| i).collect();
    assert_eq!(ids.len(), servers.len(), "a server is listed twice");
    let deleted: HashSet<&String> = acks.deleted.iter().collect();
    let maybe: HashSet<&String> = acks.maybe_deleted.iter().collect();
    for id in &acks.created {
        if deleted.contains(id) {
            assert!(!ids.contains(id), "deleted server {id} came back");
        } else if !maybe.contains(id) {
            assert!(ids.contains(id), "acknowledged server {id} lost");
        }
    }

    // Quota usage and placement equal the live servers (m1.nano: 1 VCPU,
    // 128 MB).
    let n = servers.len() as u64;
    let r = c.req("GET", "/limits", &tok, None);
    let abs = &r.body["limits"]["absolute"];
    assert_eq!(abs["totalInstancesUsed"], n, "{abs}");
    assert_eq!(abs["totalCoresUsed"], n, "{abs}");
    assert_eq!(abs["totalRAMUsed"], n * 128, "{abs}");
    let placement = c.server.client_at("/placement");
    let rps = placement.get("/resource_providers", &c.admin);
    assert_eq!(rps.status, 200, "{}", rps.body);
    let (mut vcpu, mut ram) = (0, 0);
    for rp in rps.body["resource_providers"].as_array().unwrap() {
        let u = placement.get(
            &format!(
                "/resource_providers/{}/usages",
                rp["uuid"].as_str().unwrap()
            ),
            &c.admin,
        );
        assert_eq!(u.status, 200, "{}", u.body);
        vcpu += u.body["usages"]["VCPU"].as_u64().unwrap_or(0);
        ram += u.body["usages"]["MEMORY_MB"].as_u64().unwrap_or(0);
    }
    assert_eq!((vcpu, ram), (n, n * 128), "placement usages");
    // The quota is the last one acknowledged or one whose answer was lost.
    let r = c.req("GET", &format!("/os-quota-sets/{pid}"), &c.admin, None);
    let q = r.body["quota_set"]["instances"].as_u64().unwrap();
    assert!(
        acks.quota_acked == Some(q) || acks.quota_maybe.contains(&q),
        "quota {q}, last acknowledged {:?}",
        acks.quota_acked
    );
    drop(agent);
}

/// Rows in the store's change log, read from the file as a sync reader
/// would.
fn change_log_rows(c: &Cloud) -> i64 {
    let db = rusqlite::Connection::open(c.server.data_dir().join("stratus.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM changes", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn reliability_heartbeats_add_nothing_to_the_change_log() {
    if super::common::on_postgres() {
        // The store suite checks liveness on both engines.
        eprintln!("reads the SQLite file: skipped on PostgreSQL");
        return;
    }
    let mut c = Cloud::start(&["--no-agent"]);
    let agent = Agent::start_with_env(
        &c.server,
        "hb",
        &["--driver", "fake", "--heartbeat", "1", "--fake-nodes", "5"],
        &[("OS_PASSWORD", &c.server.admin_password)],
    );
    c.wait_nodes_logged(5, &agent.log);
    std::thread::sleep(Duration::from_secs(2));
    let before = change_log_rows(&c);
    // More than one flush of the heartbeats (every 15 s), 80 heartbeats.
    std::thread::sleep(Duration::from_secs(17));
    assert_eq!(
        change_log_rows(&c),
        before,
        "heartbeats wrote to the change log"
    );
    let db = rusqlite::Connection::open(c.server.data_dir().join("stratus.db")).unwrap();
    let live: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM liveness WHERE kind = 'compute_node'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(live, 5, "the flush recorded every node's liveness");
    // A restarted controller still knows the nodes were just heard of.
    drop(agent);
    c.server.restart();
    let r = c.req("GET", "/os-services?binary=nova-compute", &c.admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let services = r.body["services"].as_array().unwrap();
    assert_eq!(services.len(), 5, "{}", r.body);
    assert!(services.iter().all(|s| s["state"] == "up"), "{}", r.body);
}

/// The test cloud's store, opened from this process as a second writer
/// (another controller on the same database, or a sync stream) would.
pub(super) fn second_writer(c: &Cloud) -> stratus_store::Store {
    match &c.server.database {
        Some(url) => stratus_store::Store::open_url(url).unwrap(),
        None => stratus_store::Store::open(
            &c.server.data_dir().join("stratus.db"),
            stratus_store::Durability::Full,
        )
        .unwrap(),
    }
}

#[test]
fn reliability_an_unchanged_heartbeat_still_sees_server_changes_from_the_log() {
    use stratus_api::compute::model::Server as ServerDoc;
    let c = Cloud::start(&["--no-agent"]);
    let key = "agent-key-1";
    heartbeat(&c, "sim", key, 0, json!({}));
    c.wait_nodes(1);
    let (_, tok) = c.project("unchanged");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "steady", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    let generation = assigned_generation(&c, "sim", &id);
    report_spawned(&c, "sim", &id, generation, key, 1);
    let running = json!({ id.as_str(): {"power_state": 1, "generation": generation} });
    // The same report again and again: the node's servers are read once,
    // then the answer is reused.
    for observed in 2..5 {
        let reply = heartbeat(&c, "sim", key, observed, running.clone());
        assert_eq!(reply["orphans"], json!([]), "{reply}");
    }
    assert_eq!(server(&c, &tok, &id)["status"], "ACTIVE");

    // The server is marked stopped in the store, as sync from a parent
    // would: the node still runs it, so the next identical heartbeat has
    // to stop it again.
    let store = second_writer(&c);
    store
        .write(|tx| {
            let mut s = tx.fetch::<ServerDoc>(&id)?;
            s.vm_state = "stopped".into();
            tx.update(&s)
        })
        .unwrap();
    let t0 = Instant::now();
    let mut observed = 5;
    loop {
        heartbeat(&c, "sim", key, observed, running.clone());
        observed += 1;
        let s = server(&c, &tok, &id);
        if s["OS-EXT-STS:task_state"] == "powering-off" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "an unchanged heartbeat missed a change to its server: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The server is deleted in the store: the node's unchanged report now
    // lists an orphan.
    store.write(|tx| tx.delete::<ServerDoc>(&id)).unwrap();
    let t0 = Instant::now();
    loop {
        let reply = heartbeat(&c, "sim", key, observed, running.clone());
        observed += 1;
        if reply["orphans"] == json!([id.as_str()]) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "an unchanged heartbeat missed a deleted server: {reply}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reliability_a_change_written_straight_to_the_store_wakes_the_agent() {
    use stratus_api::compute::model::Server as ServerDoc;
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let (_, tok) = c.project("follow");
    let img = c.image(&tok, "tiny");
    let r = c.boot(&tok, "f", &img, "42", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&tok, &id, "ACTIVE");
    // The agent is back in its 30 s long poll. A stop request arrives in
    // the store without any API call to this controller.
    std::thread::sleep(Duration::from_millis(500));
    let store = second_writer(&c);
    store
        .write(|tx| {
            let mut s = tx.fetch::<ServerDoc>(&id)?;
            s.task_state = Some("powering-off".into());
            s.generation += 1;
            tx.update(&s)
        })
        .unwrap();
    let t0 = Instant::now();
    loop {
        let s = server(&c, &tok, &id);
        if s["status"] == "SHUTOFF" && s["OS-EXT-STS:task_state"].is_null() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the agent did not act on a change in the log: {}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second `stratus controller` process on the same store (file or
/// database) as a running cloud; killed when dropped.
pub(super) struct SecondController {
    pub(super) child: std::process::Child,
    pub(super) url: String,
    pub(super) log: std::path::PathBuf,
}

impl SecondController {
    pub(super) fn start(c: &Cloud) -> SecondController {
        Self::start_with(c, &[])
    }

    /// Starts it with `extra` arguments.
    pub(super) fn start_with(c: &Cloud, extra: &[&str]) -> SecondController {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = c.server.data_dir().join("second-controller.log");
        let child = std::process::Command::new(super::common::bin())
            .args(["controller", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(c.server.data_dir())
            .args(
                c.server
                    .database
                    .iter()
                    .flat_map(|d| ["--database", d.as_str()]),
            )
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_call(&url, "GET", "/identity/v3", "", None).is_none_or(|(s, _)| s != 200) {
            assert!(
                Instant::now() < deadline,
                "the second controller did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SecondController { child, url, log }
    }
}

impl Drop for SecondController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /identity/v3/auth/tokens` of `subject` at `base`: its status.
fn validate(base: &str, caller: &str, subject: &str) -> u16 {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    agent
        .get(format!("{base}/identity/v3/auth/tokens"))
        .header("X-Auth-Token", caller)
        .header("X-Subject-Token", subject)
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn reliability_two_controllers_on_one_store_follow_each_others_changes() {
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let b = SecondController::start(&c);
    let (_, tok) = c.project("two");
    // The second controller validates (and caches) the token ...
    assert_eq!(validate(&b.url, &c.admin, &tok), 200);
    assert_eq!(validate(&b.url, &c.admin, &tok), 200);
    // ... which is revoked through the first.
    let r = c.ks.raw(
        "DELETE",
        "/auth/tokens",
        Some(&c.admin),
        &[("X-Subject-Token", tok.as_str())],
        None,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let t0 = Instant::now();
    while validate(&b.url, &c.admin, &tok) != 404 {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "the second controller still accepts a token revoked through the first"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A server created through the second controller is run by the node
    // attached to the first: its agent is woken by the log.
    let tok = c.ks.token("two-user", "pw-12345", Some("two"));
    let img = c.image(&tok, "tiny");
    let body = json!({"server": {"name": "via-b", "imageRef": img, "flavorRef": "42",
                                 "networks": "none"}});
    let (status, v) = try_call(
        &format!("{}/compute/v2.1", b.url),
        "POST",
        "/servers",
        &tok,
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 202, "{v}");
    let id = v["server"]["id"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    loop {
        let s = server(&c, &tok, &id);
        if s["status"] == "ACTIVE" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "a server created through the second controller is {}",
            s["status"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent protocol is versioned: an agent that names no version (one
/// from before versioning), the previous version and the current one are
/// served; any other is refused with a 400 in the API's error shape that
/// names the agent's version and the controller's.
#[test]
fn reliability_agent_protocol_versions_one_release_back() {
    let c = Cloud::start(&["--no-agent"]);
    let send = |protocol: Option<u32>| {
        let mut body = json!({"driver": "fake", "vcpus": 8, "memory_mb": 16384,
            "disk_gb": 100, "arch": "x86_64", "agent_key": "k", "instances": {}});
        if let Some(p) = protocol {
            body["protocol"] = json!(p);
        }
        c.server.client_at("/edge/v1").raw(
            "PUT",
            "/nodes/versioned",
            Some(&c.admin),
            &[],
            Some(body.to_string()),
        )
    };
    let current = stratus_wire::PROTOCOL_VERSION;
    for p in [None, Some(current - 1), Some(current)] {
        let r = send(p);
        assert_eq!(r.status, 200, "protocol {p:?}: {}", r.body);
    }
    for p in [current + 1, 0] {
        let r = send(Some(p));
        assert_eq!(r.status, 400, "protocol {p}: {}", r.body);
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(r.body["error"]["code"], 400, "{}", r.body);
        assert!(
            msg.contains(&format!("version {p} ")) && msg.contains(&current.to_string()),
            "{msg}"
        );
    }
}

/// Simulated nodes (`--fake-nodes`) share one process, one login and one
/// listener, yet each is a node of its own to the controller: servers
/// land on them, power actions and snapshots are carried out and
/// reported, and the console of each server comes from its own node
/// through the shared listener (with that node's key).
#[test]
fn reliability_simulated_nodes_carry_out_tasks_and_answer_consoles() {
    let c = Cloud::start(&["--no-agent"]);
    let agent = Agent::start_with_env(
        &c.server,
        "sim",
        &["--driver", "fake", "--heartbeat", "1", "--fake-nodes", "3"],
        &[("OS_PASSWORD", &c.server.admin_password)],
    );
    c.wait_nodes_logged(3, &agent.log);
    let (_, tok) = c.project("simulated");
    let img = c.image(&tok, "tiny");
    // Anti-affinity: one server on each simulated node.
    let g = c.req(
        "POST",
        "/os-server-groups",
        &tok,
        Some(json!({"server_group": {"name": "spread", "policies": ["anti-affinity"]}})),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    let group = g.body["server_group"]["id"].as_str().unwrap().to_string();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = c.boot(
            &tok,
            &format!("s{i}"),
            &img,
            "1",
            json!({"hints": {"group": group}}),
        );
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(r.body["server"]["id"].as_str().unwrap().to_string());
    }
    let mut hosts = HashSet::new();
    for id in &ids {
        c.wait(&tok, id, "ACTIVE");
        let s = c.req("GET", &format!("/servers/{id}"), &c.admin, None);
        hosts.insert(s.body["server"]["OS-EXT-SRV-ATTR:host"].to_string());
        let r = c.req(
            "POST",
            &format!("/servers/{id}/action"),
            &tok,
            Some(json!({"os-getConsoleOutput": {"length": 10}})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let out = r.body["output"].as_str().unwrap_or_default();
        assert!(out.contains(&format!("instance {id}")), "{out}");
    }
    assert_eq!(hosts.len(), 3, "{hosts:?}");
    let id = &ids[1];
    for (body, status) in [
        (json!({"os-stop": null}), "SHUTOFF"),
        (json!({"os-start": null}), "ACTIVE"),
        (json!({"reboot": {"type": "HARD"}}), "ACTIVE"),
    ] {
        let r = c.req("POST", &format!("/servers/{id}/action"), &tok, Some(body));
        assert_eq!(r.status, 202, "{}", r.body);
        c.wait(&tok, id, status);
    }
    // A snapshot: written by the simulated node, uploaded to the image.
    let r = c.req(
        "POST",
        &format!("/servers/{id}/action"),
        &tok,
        Some(json!({"createImage": {"name": "sim-snap"}})),
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
    loop {
        let i = c.img.get(&format!("/images/{snap}"), &tok);
        let s = c.req("GET", &format!("/servers/{id}"), &tok, None);
        if i.body["status"] == "active" && s.body["server"]["OS-EXT-STS:task_state"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "{} {}", i.body, s.body);
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &ids {
        let r = c.req("DELETE", &format!("/servers/{id}"), &tok, None);
        assert_eq!(r.status, 204, "{}", r.body);
        c.wait_gone(&tok, id);
    }
}
