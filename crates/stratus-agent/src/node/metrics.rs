//! A node agent's own Prometheus metrics (`stratus agent
//! --metrics-listen ADDR`): heartbeats sent and failed, tasks run by
//! kind and outcome, workloads by power state (read from the driver at
//! scrape time), and long-polls of the controller, failed ones (each a
//! reconnect) apart. Encoded by `prometheus-client` in the Prometheus
//! text format; every series carries the node's name as `node`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stratus_wire::Task;

use crate::{Driver, PowerState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PowerLabels {
    power_state: &'static str,
}

/// Every metric of one node agent.
pub struct AgentMetrics {
    registry: Registry,
    heartbeats: Family<OutcomeLabels, Counter>,
    tasks: Family<TaskLabels, Counter>,
    workloads: Family<PowerLabels, Gauge>,
    polls: Family<OutcomeLabels, Counter>,
    /// The driver whose workloads are counted (set when the agent runs).
    driver: OnceLock<Arc<dyn Driver>>,
    /// One scrape at a time (it refreshes the workload gauges).
    scrape: Mutex<()>,
}

/// Nova's power states, as label values.
const POWER_STATES: [(PowerState, &str); 6] = [
    (PowerState::NoState, "nostate"),
    (PowerState::Running, "running"),
    (PowerState::Paused, "paused"),
    (PowerState::Shutdown, "shutdown"),
    (PowerState::Crashed, "crashed"),
    (PowerState::Suspended, "suspended"),
];

impl AgentMetrics {
    /// The metrics of the agent of node `host`.
    pub fn new(host: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "stratus_agent",
            [("node".into(), host.to_string().into())].into_iter(),
        );
        let heartbeats = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "heartbeats",
            "Heartbeats (node reports) to the controller: sent (accepted) or failed",
            heartbeats.clone(),
        );
        let tasks = Family::<TaskLabels, Counter>::default();
        registry.register(
            "tasks",
            "Tasks the controller gave this node, run by kind (spawning, powering-off, ...) and outcome (ok, failed)",
            tasks.clone(),
        );
        let workloads = Family::<PowerLabels, Gauge>::default();
        registry.register(
            "workloads",
            "Workloads on this node by power state",
            workloads.clone(),
        );
        let polls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "long_polls",
            "Long-polls of the controller for this node's assignments: answered, or failed (the agent reconnects)",
            polls.clone(),
        );
        // Every outcome shows from the start, at 0.
        for outcome in ["sent", "failed"] {
            let _ = heartbeats.get_or_create_owned(&OutcomeLabels { outcome });
        }
        for outcome in ["answered", "failed"] {
            let _ = polls.get_or_create_owned(&OutcomeLabels { outcome });
        }
        AgentMetrics {
            registry,
            heartbeats,
            tasks,
            workloads,
            polls,
            driver: OnceLock::new(),
            scrape: Mutex::new(()),
        }
    }

    pub(crate) fn set_driver(&self, driver: Arc<dyn Driver>) {
        let _ = self.driver.set(driver);
    }

    pub(crate) fn heartbeat(&self, ok: bool) {
        let outcome = if ok { "sent" } else { "failed" };
        self.heartbeats
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub(crate) fn task(&self, task: &Task, ok: bool) {
        let task = match task {
            Task::Other(_) => "other".to_string(),
            t => t.to_string(),
        };
        let outcome = if ok { "ok" } else { "failed" };
        self.tasks
            .get_or_create(&TaskLabels { task, outcome })
            .inc();
    }

    pub(crate) fn poll(&self, ok: bool) {
        let outcome = if ok { "answered" } else { "failed" };
        self.polls.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts the workloads and encodes everything in the Prometheus text
    /// format.
    pub fn scrape(&self) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        for (_, name) in POWER_STATES {
            self.workloads
                .get_or_create(&PowerLabels { power_state: name })
                .set(0);
        }
        if let Some(d) = self.driver.get() {
            for (_, p) in d.list() {
                let name = POWER_STATES
                    .iter()
                    .find(|(s, _)| *s == p)
                    .map_or("nostate", |(_, n)| *n);
                self.workloads
                    .get_or_create(&PowerLabels { power_state: name })
                    .inc();
            }
        }
        let mut out = String::with_capacity(4096);
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` (no token) on `addr`, on a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Arc<AgentMetrics>) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("agent metrics listener on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "serving the node agent's metrics");
    std::thread::Builder::new()
        .name("agent-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let m = metrics.clone();
                std::thread::spawn(move || answer(stream, &m));
            }
        })?;
    Ok(bound)
}

/// One request: `GET /metrics` gets the metrics, anything else a 404.
fn answer(mut stream: std::net::TcpStream, metrics: &AgentMetrics) {
    use std::io::{BufRead, BufReader, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The rest of the head.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = if path != "/metrics" {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        )
    } else if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        )
    } else {
        (
            "200 OK",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            metrics.scrape(),
        )
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_encode_with_the_node_label() {
        let m = AgentMetrics::new("n1");
        m.heartbeat(true);
        m.task(&Task::Spawning, true);
        let out = m.scrape();
        assert!(
            out.contains("# TYPE stratus_agent_heartbeats_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains("stratus_agent_heartbeats_total{node=\"n1\",outcome=\"sent\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "stratus_agent_tasks_total{node=\"n1\",task=\"spawning\",outcome=\"ok\"} 1\n"
            ),
            "{out}"
        );
    }
}
