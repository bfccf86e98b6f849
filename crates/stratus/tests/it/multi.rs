//! Several `stratus controller` processes on one store (a SQLite file, or
//! PostgreSQL with `STRATUS_TEST_DATABASE`): creates taken by both at the
//! same time never overcommit a node or a project's quota, and the
//! singleton loops move to another process when their lease holder is
//! killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stratus_api::compute::model::Server as ServerDoc;
use stratus_api::compute::scheduler::waiting;
use stratus_api::placement::{Allocation, Provider};
use stratus_store::Query;

use super::compute::Cloud;
use super::reliability::{SecondController, second_writer, try_call};

/// Plays a node agent heartbeating to the controller at `base`.
fn heartbeat(base: &str, admin: &str, host: &str) {
    let body = json!({
        "driver": "fake", "vcpus": 8, "memory_mb": 16384, "disk_gb": 100,
        "arch": "x86_64", "agent_key": format!("key-{host}"), "observed": 0,
        "instances": {},
    });
    let (status, v) = try_call(
        &format!("{base}/edge/v1"),
        "PUT",
        &format!("/nodes/{host}"),
        admin,
        Some(&body),
    )
    .expect("the controller answers");
    assert_eq!(status, 200, "{v}");
}

/// Creates one server through the compute API at `base`: the status.
fn create(base: &str, tok: &str, name: &str, image: &str, flavor: &str) -> (u16, Value) {
    let body = json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor,
                                 "networks": "none"}});
    try_call(
        &format!("{base}/compute/v2.1"),
        "POST",
        "/servers",
        tok,
        Some(&body),
    )
    .expect("the controller answers")
}

/// Every server of `project` in the store, once none waits for the
/// scheduler any more.
fn settled(store: &stratus_store::Store, project: &str) -> Vec<ServerDoc> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all: Vec<ServerDoc> = store
            .list::<ServerDoc>(&Query::all())
            .unwrap()
            .into_iter()
            .filter(|s| s.project_id == project)
            .collect();
        if !all.iter().any(waiting) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "servers still waiting for the scheduler"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that no provider holds more than its capacity of any class;
/// returns what each holds.
fn assert_within_capacity(store: &stratus_store::Store) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut used: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for a in store.list::<Allocation>(&Query::all()).unwrap() {
        for (rp, classes) in a.allocations {
            for (c, n) in classes {
                *used.entry(rp.clone()).or_default().entry(c).or_default() += n;
            }
        }
    }
    for p in store.list::<Provider>(&Query::all()).unwrap() {
        for (class, inv) in &p.inventories {
            let u = used
                .get(&p.id)
                .and_then(|m| m.get(class))
                .copied()
                .unwrap_or(0);
            assert!(
                u <= inv.capacity(),
                "{} holds {u} {class}, over its capacity {}",
                p.name,
                inv.capacity()
            );
        }
    }
    used
}

#[test]
fn multi_two_controllers_never_overcommit_a_node_or_a_quota() {
    // One node, its agent (fake driver) attached to the first controller.
    let c = Cloud::start(&["--driver", "fake"]);
    c.wait_nodes(1);
    let b = SecondController::start(&c);
    let store = second_writer(&c);
    let node = store
        .list::<Provider>(&Query::all())
        .unwrap()
        .pop()
        .expect("the node's provider");
    let ram = node.inventories["MEMORY_MB"].capacity();
    // A flavor of which exactly four fit on the node.
    let r = c.req(
        "POST",
        "/flavors",
        &c.admin,
        Some(
            json!({"flavor": {"name": "quarter", "id": "quarter", "ram": ram / 4,
                               "vcpus": 1, "disk": 1}}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (pid, tok) = c.project("race");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 100, "cores": 100, "ram": -1}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let img = c.image(&tok, "tiny");

    // 16 creates at once, half through each controller.
    let bases = [c.server.url.clone(), b.url.clone()];
    std::thread::scope(|s| {
        for i in 0..16 {
            let (base, tok, img) = (&bases[i % 2], &tok, &img);
            s.spawn(move || {
                let (status, v) = create(base, tok, &format!("r{i}"), img, "quarter");
                assert_eq!(status, 202, "{v}");
            });
        }
    });
    let servers = settled(&store, &pid);
    assert_eq!(servers.len(), 16);
    let placed = servers.iter().filter(|s| s.host.is_some()).count();
    assert!(
        placed <= 4,
        "{placed} servers of a quarter of the node each were placed on it"
    );
    // And none was refused while there was room.
    assert_eq!(placed, 4, "servers placed on room for four");
    for s in servers.iter().filter(|s| s.host.is_none()) {
        assert_eq!(s.vm_state, "error", "{} is {}", s.id, s.vm_state);
        let fault = s.fault.as_ref().map(|f| f.message.as_str()).unwrap_or("");
        assert!(fault.contains("No valid host"), "{}: {fault}", s.id);
    }
    let used = assert_within_capacity(&store);
    // The agent runs the placed ones, whichever controller took them.
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in servers.iter().filter(|s| s.host.is_some()) {
        while store.fetch::<ServerDoc>(&s.id).unwrap().vm_state != "active" {
            assert!(Instant::now() < deadline, "{} never ran", s.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Both controllers' placement follows the log to the same usage.
    let want = used[&node.id]["MEMORY_MB"];
    for base in &bases {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (status, v) = try_call(
                &format!("{base}/placement"),
                "GET",
                &format!("/resource_providers/{}/usages", node.id),
                &c.admin,
                None,
            )
            .unwrap();
            assert_eq!(status, 200, "{v}");
            if v["usages"]["MEMORY_MB"] == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{base} reports {v}, the store holds {want} MEMORY_MB"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // A project allowed 3 cores, 12 one-core creates at once through both.
    let (pid, tok) = c.project("capped");
    let r = c.req(
        "PUT",
        &format!("/os-quota-sets/{pid}"),
        &c.admin,
        Some(json!({"quota_set": {"instances": 100, "cores": 3, "ram": -1}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let img = c.image(&tok, "tiny");
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..12 {
            let (base, tok, img, accepted) = (&bases[i % 2], &tok, &img, &accepted);
            s.spawn(move || {
                let (status, v) = create(base, tok, &format!("q{i}"), img, "42");
                match status {
                    202 => {
                        accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    403 => assert!(v.to_string().contains("Quota exceeded"), "{v}"),
                    _ => panic!("{status} {v}"),
                }
            });
        }
    });
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(settled(&store, &pid).len(), 3);
    assert_within_capacity(&store);
}

/// Copies server `id` in the store as a new server waiting for the
/// scheduler, written by no controller; its id.
fn orphan(store: &stratus_store::Store, id: &str) -> String {
    let new = uuid_like();
    store
        .write(|tx| {
            let mut s = tx.fetch::<ServerDoc>(id)?;
            s.id = new.clone();
            s.name = format!("orphan-{}", &new[..8]);
            s.host = None;
            s.node = None;
            s.vm_state = "building".into();
            s.task_state = Some("scheduling".into());
            s.generation = 1;
            s.fault = None;
            tx.insert(&s)
        })
        .unwrap();
    new
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "0bad0000-0000-4000-8000-{:08x}{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until server `id` is placed on a node (by any controller).
fn wait_placed(store: &stratus_store::Store, id: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let s = store.fetch::<ServerDoc>(id).unwrap();
        if s.host.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: server {id} is still {} / {:?}",
            s.vm_state,
            s.task_state
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn multi_the_singleton_lease_moves_when_its_holder_is_killed() {
    let mut c = Cloud::start(&["--no-agent"]);
    heartbeat(&c.server.url, &c.admin, "n1");
    c.wait_nodes(1);
    // The first controller took the lease at its start.
    let b = SecondController::start(&c);
    let store = second_writer(&c);
    let (_, tok) = c.project("lease");
    let img = c.image(&tok, "tiny");
    let (status, v) = create(&b.url, &tok, "seed", &img, "42");
    assert_eq!(status, 202, "{v}");
    let seed = v["server"]["id"].as_str().unwrap().to_string();
    wait_placed(&store, &seed, Duration::from_secs(20), "created through b");

    // A server nobody schedules (written straight into the store) is taken
    // by the lease holder's sweep.
    let first = orphan(&store, &seed);
    wait_placed(&store, &first, Duration::from_secs(20), "with both running");
    let holds = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("holds the lease")
    };
    assert!(
        holds(&c.server.log_path()),
        "the first controller did not take the lease at its start"
    );

    // The holder dies without a word; the second controller takes the
    // lease and its loops.
    c.server.stop("-KILL");
    heartbeat(&b.url, &c.admin, "n1");
    let second = orphan(&store, &seed);
    wait_placed(
        &store,
        &second,
        Duration::from_secs(30),
        "after the lease holder was killed",
    );
    assert!(holds(&b.log), "the second controller never took the lease");
}

/// The compute service state of `host` as the controller at `base` sees
/// it (`up` or `down`).
fn service_state(base: &str, admin: &str, host: &str) -> String {
    let (status, v) = try_call(
        &format!("{base}/compute/v2.1"),
        "GET",
        "/os-services?binary=nova-compute",
        admin,
        None,
    )
    .expect("the controller answers");
    assert_eq!(status, 200, "{v}");
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == host)
        .and_then(|s| s["state"].as_str())
        .unwrap_or("missing")
        .to_string()
}

#[test]
fn multi_a_node_heartbeating_to_one_controller_is_up_on_the_other() {
    let c = Cloud::start(&["--no-agent", "--service-down-time", "6"]);
    heartbeat(&c.server.url, &c.admin, "far");
    c.wait_nodes(1);
    let b = SecondController::start_with(&c, &["--service-down-time", "6"]);
    let store = second_writer(&c);
    let (_, tok) = c.project("far");
    let img = c.image(&tok, "tiny");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        // The node heartbeats to the first controller only.
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                heartbeat(&c.server.url, &c.admin, "far");
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        // Well past the down time since the node's record was written.
        std::thread::sleep(Duration::from_secs(10));
        let on_b = service_state(&b.url, &c.admin, "far");
        let (status, v) = create(&b.url, &tok, "via-b", &img, "42");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            on_b, "up",
            "the second controller takes a live node for down"
        );
        assert_eq!(status, 202, "{v}");
        let id = v["server"]["id"].as_str().unwrap().to_string();
        let s = settled(&store, &store.fetch::<ServerDoc>(&id).unwrap().project_id);
        assert!(
            s.iter().all(|s| s.host.as_deref() == Some("far")),
            "a server created through the second controller was not placed: {:?}",
            s.iter().map(|s| &s.fault).collect::<Vec<_>>()
        );
    });
    // It stops heartbeating: both controllers mark it down.
    let deadline = Instant::now() + Duration::from_secs(20);
    for base in [&c.server.url, &b.url] {
        while service_state(base, &c.admin, "far") != "down" {
            assert!(
                Instant::now() < deadline,
                "{base} still has the silent node up"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
