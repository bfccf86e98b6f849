//! Metrics: `GET /metrics` in the Prometheus text format, for admins on
//! the API listener and for anyone on `--metrics-listen`; the counters
//! move with traffic; a node agent's own `--metrics-listen`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{Agent, Client, Resp};
use super::compute::{Cloud, MV};

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape, parsed and checked as Prometheus text (format 0.0.4): every
/// sample belongs to a family declared by a `# TYPE` line before it, of
/// a known type; names and label names are valid; label values are
/// quoted with the format's escapes; values are numbers.
struct Scrape {
    samples: Vec<Sample>,
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse(text: &str) -> Scrape {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().expect("TYPE name");
                    let kind = parts.next().expect("TYPE type");
                    assert!(valid_name(name), "bad metric name: {line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "unknown type: {line}"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "TYPE given twice: {line}"
                    );
                }
                Some("HELP") => {
                    let name = parts.next().expect("HELP name");
                    assert!(valid_name(name), "bad metric name: {line}");
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).expect("sample without value");
        let name = &line[..name_end];
        assert!(valid_name(name), "bad sample name: {line}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            loop {
                // Label name, `=`, quoted value, then `,` or `}`.
                let start = chars.peek().map(|(i, _)| *i).expect("label");
                if r[start..].starts_with('}') {
                    chars.next();
                    break;
                }
                let eq = r[start..].find('=').expect("label =") + start;
                let key = &r[start..eq];
                assert!(
                    valid_name(key) && !key.starts_with("__"),
                    "bad label name {key:?}: {line}"
                );
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|c| c.1), Some('"'), "unquoted: {line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value").1 {
                        '"' => break,
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c}: {line}"),
                        },
                        c => value.push(c),
                    }
                }
                labels.insert(key.to_string(), value);
                match chars.next().expect("label list end").1 {
                    ',' => {}
                    '}' => break,
                    c => panic!("unexpected {c:?} in labels: {line}"),
                }
            }
            let consumed = chars.peek().map_or(r.len(), |(i, _)| *i);
            rest = &r[consumed..];
        }
        let mut fields = rest.split_whitespace();
        let value: f64 = match fields.next().expect("value") {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
        }
        assert!(fields.next().is_none(), "trailing text: {line}");
        let declared = types.get(name).map(|t| t.as_str()).or_else(|| {
            ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
                let family = name.strip_suffix(suffix)?;
                types
                    .get(family)
                    .filter(|t| *t == "histogram" || *t == "summary")
                    .map(|t| t.as_str())
            })
        });
        assert!(
            declared.is_some(),
            "sample {name} has no # TYPE before it: {line}"
        );
        if name.ends_with("_bucket") {
            assert!(labels.contains_key("le"), "bucket without le: {line}");
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape { samples }
}

impl Scrape {
    /// The value of the sample `name` whose labels include `labels`
    /// (exactly one must match).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(|x| x.as_str()) == Some(*v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().map(|s| s.value)
    }

    /// Like [`Scrape::get`], 0 when absent (a counter not moved yet).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .flat_map(|s| s.labels.values().map(|v| v.as_str()))
    }
}

/// A free address on loopback.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn get_metrics(base: &str, token: Option<&str>) -> Resp {
    Client {
        base: base.to_string(),
    }
    .raw("GET", "/metrics", token, &[], None)
}

/// Scrapes `base` (with `token`), checking the answer's type and format.
fn scrape(base: &str, token: Option<&str>) -> Scrape {
    let r = get_metrics(base, token);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(r.body.as_str().expect("metrics text"))
}

#[test]
fn metrics_count_traffic_for_admins_and_on_the_metrics_listener() {
    let open = free_addr();
    let c = Cloud::start(&["--driver", "fake", "--metrics-listen", &open]);
    c.wait_nodes(1);
    let url = &c.server.url;
    let before = scrape(url, Some(&c.admin));

    // Who may read them: an admin; a member and no token are refused in
    // Keystone's shape.
    let (_, member) = c.project("metrics-p");
    let r = get_metrics(url, Some(&member));
    assert_eq!(r.status, 403, "{}", r.body);
    r.error_message();
    let r = get_metrics(url, None);
    assert_eq!(r.status, 401, "{}", r.body);
    r.error_message();

    // Some traffic: flavors listed, an image uploaded, a server booted.
    for _ in 0..3 {
        let r = c.req("GET", "/flavors", &c.admin, None);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Paths no route takes: counted, but never by their raw path.
    let r = c.req("GET", "/no-such-thing-x1", &c.admin, None);
    assert_eq!(r.status, 404);
    let r = Client { base: url.clone() }.raw("GET", "/nowhere-x2/at-all", None, &[], None);
    assert_eq!(r.status, 404);
    let img = c.image(&c.admin, "metrics-img");
    let uploaded = super::compute::tiny_docker_tar().len() as f64;
    let (st, _, data) = c
        .img
        .bytes("GET", &format!("/images/{img}/file"), &c.admin, &[], None);
    assert_eq!(st, 200);
    let r = c.boot(&c.admin, "metrics-vm", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    // And one no node can hold (more disk than the fake node has).
    let r = c.req(
        "POST",
        "/flavors",
        &c.admin,
        Some(json!({"flavor": {"name": "huge", "ram": 64, "vcpus": 1, "disk": 5000}})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let huge = r.body["flavor"]["id"].as_str().unwrap().to_string();
    let r = c.boot(&c.admin, "too-big", &img, &huge, json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let big = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &big, "ERROR");

    let after = scrape(url, Some(&c.admin));
    let moved = |name: &str, labels: &[(&str, &str)]| {
        after.count(name, labels) - before.count(name, labels)
    };
    let flavors = [
        ("service", "compute"),
        ("route", "/compute/v2.1/flavors"),
        ("method", "GET"),
    ];
    let ok: Vec<_> = flavors.iter().copied().chain([("code", "200")]).collect();
    assert!(moved("stratus_http_requests_total", &ok) >= 3.0);
    assert!(moved("stratus_http_request_duration_seconds_count", &flavors) >= 3.0);
    assert!(
        after.count(
            "stratus_http_request_duration_seconds_bucket",
            &[flavors.as_slice(), &[("le", "+Inf")]].concat()
        ) >= 3.0
    );
    // Routes are templates: the server's polls are under its template,
    // and no label carries an id.
    assert!(
        after.count(
            "stratus_http_requests_total",
            &[("route", "/compute/v2.1/servers/{id}"), ("code", "200")]
        ) >= 1.0,
        "no server route template in {:?}",
        after
            .samples
            .iter()
            .filter(|s| s.name == "stratus_http_requests_total")
            .collect::<Vec<_>>()
    );
    for v in after.label_values() {
        assert!(
            !v.contains(&id)
                && !v.contains(&big)
                && !v.contains(&img)
                && !v.contains("-x1")
                && !v.contains("-x2"),
            "an id or a raw path in a label: {v}"
        );
    }
    assert!(
        after.count(
            "stratus_http_requests_total",
            &[("route", "unmatched"), ("code", "404")]
        ) >= 2.0
    );
    // The refusals were counted under /metrics.
    assert!(
        after.count(
            "stratus_http_requests_total",
            &[("route", "/metrics"), ("code", "403")]
        ) >= 1.0
    );

    assert_eq!(
        after.get("stratus_servers", &[("status", "ACTIVE")]),
        Some(1.0)
    );
    assert!(
        after.get("stratus_changelog_revision", &[]).unwrap()
            > before.get("stratus_changelog_revision", &[]).unwrap()
    );
    assert!(
        after
            .get("stratus_changelog_followed_revision", &[])
            .is_some()
    );
    assert!(moved("stratus_image_data_bytes_total", &[("direction", "in")]) >= uploaded);
    assert!(moved("stratus_image_data_bytes_total", &[("direction", "out")]) >= data.len() as f64);
    assert!(
        moved(
            "stratus_scheduler_decisions_total",
            &[("outcome", "scheduled")]
        ) >= 1.0
    );
    assert!(
        moved(
            "stratus_scheduler_decisions_total",
            &[("outcome", "no_valid_host")]
        ) >= 1.0
    );
    assert_eq!(
        after.get("stratus_servers", &[("status", "ERROR")]),
        Some(1.0)
    );
    assert!(after.get("stratus_scheduler_queue_length", &[]).is_some());
    assert!(
        moved(
            "stratus_store_write_transactions_total",
            &[("outcome", "committed")]
        ) >= 1.0
    );
    assert!(
        after.count(
            "stratus_store_write_transaction_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert_eq!(
        after.get("stratus_nodes", &[("state", "up"), ("status", "enabled")]),
        Some(1.0)
    );
    assert_eq!(
        after.get("stratus_nodes", &[("state", "down"), ("status", "enabled")]),
        Some(0.0)
    );
    let ages: Vec<&Sample> = after
        .samples
        .iter()
        .filter(|s| s.name == "stratus_node_heartbeat_age_seconds")
        .collect();
    assert_eq!(ages.len(), 1, "{ages:?}");
    assert!(ages[0].value >= 0.0 && ages[0].value < 60.0, "{ages:?}");
    // `stratus up`'s own agent shows in the controller's metrics.
    assert!(
        after.count(
            "stratus_agent_tasks_total",
            &[("task", "spawning"), ("outcome", "ok")]
        ) >= 1.0
    );

    // The metrics listener serves them without a token, and nothing else.
    let base = format!("http://{open}");
    let plain = scrape(&base, None);
    assert_eq!(
        plain.get("stratus_servers", &[("status", "ACTIVE")]),
        Some(1.0)
    );
    let r = Client { base: base.clone() }.raw(
        "GET",
        "/compute/v2.1/flavors",
        Some(&c.admin),
        &[MV],
        None,
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn an_agents_metrics_listener_shows_its_heartbeats() {
    let c = Cloud::start(&["--no-agent"]);
    let addr = free_addr();
    let agent = Agent::start(
        &c.server,
        "m1",
        &[
            "--driver",
            "fake",
            "--heartbeat",
            "1",
            "--metrics-listen",
            &addr,
        ],
    );
    c.wait_nodes_logged(1, &agent.log);
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let m = scrape(&base, None);
        if m.count(
            "stratus_agent_heartbeats_total",
            &[("node", "m1"), ("outcome", "sent")],
        ) >= 2.0
        {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeats counted: {:?}",
            m.samples
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        m.get(
            "stratus_agent_long_polls_total",
            &[("node", "m1"), ("outcome", "answered")]
        )
        .is_some()
    );

    // A server on it: a task run, a workload running.
    let img = c.image(&c.admin, "agent-metrics-img");
    let r = c.boot(&c.admin, "on-m1", &img, "1", json!({}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["server"]["id"].as_str().unwrap().to_string();
    c.wait(&c.admin, &id, "ACTIVE");
    let m = scrape(&base, None);
    assert!(
        m.count(
            "stratus_agent_tasks_total",
            &[("task", "spawning"), ("outcome", "ok")]
        ) >= 1.0
    );
    assert_eq!(
        m.get(
            "stratus_agent_workloads",
            &[("node", "m1"), ("power_state", "running")]
        ),
        Some(1.0)
    );
    // Only /metrics is served there.
    let r = Client { base }.raw("GET", "/", None, &[], None);
    assert_eq!(r.status, 404);
}
