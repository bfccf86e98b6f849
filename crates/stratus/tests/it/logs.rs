//! Logs: `--log-format json` writes one JSON object per line, and a node
//! agent's routine calls (heartbeat, long-poll) stay out of the INFO log.

use std::time::Duration;

use serde_json::Value;

use super::common::Agent;
use super::compute::Cloud;

/// Every non-empty line of `text` as JSON, each with a level and a message.
fn json_lines(text: &str, what: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what} log line is not JSON ({e}): {l}"));
            assert!(v["level"].is_string(), "no level: {l}");
            assert!(v["message"].is_string(), "no message: {l}");
            assert!(v["timestamp"].is_string(), "no timestamp: {l}");
            v
        })
        .collect()
}

#[test]
fn logs_json_format_and_agent_heartbeats_below_info() {
    let c = Cloud::start(&["--no-agent", "--log-format", "json"]);
    let agent = Agent::start(
        &c.server,
        "n1",
        &[
            "--driver",
            "fake",
            "--heartbeat",
            "1",
            "--log-format",
            "json",
        ],
    );
    c.wait_nodes_logged(1, &agent.log);
    // A few heartbeats (one a second) and at least one long-poll.
    std::thread::sleep(Duration::from_secs(3));
    let r = c.req("GET", "/flavors", &c.admin, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r
        .header("x-openstack-request-id")
        .expect("request id")
        .to_string();
    std::thread::sleep(Duration::from_millis(200));

    let log = std::fs::read_to_string(c.server.log_path()).unwrap();
    let lines = json_lines(&log, "controller");
    let line = lines
        .iter()
        .find(|v| v["request_id"] == id.as_str() && v["message"] == "request")
        .unwrap_or_else(|| panic!("no request line for {id} in:\n{log}"));
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/compute/v2.1/flavors", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    let routine: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["level"] == "INFO"
                && v["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/edge/v1/nodes/"))
        })
        .collect();
    assert!(
        routine.is_empty(),
        "agent's routine calls logged at INFO: {routine:?}"
    );

    json_lines(&std::fs::read_to_string(&agent.log).unwrap(), "agent");
}
