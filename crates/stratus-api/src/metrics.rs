//! Prometheus metrics of a controller: `GET /metrics` in the Prometheus
//! text format (0.0.4), encoded by `prometheus-client`.
//!
//! Who may read them: on the API listener an admin token (as Nova's and
//! Keystone's admin APIs); with `--metrics-listen` also anyone who reaches
//! that separate address (for a Prometheus scraping a private interface).
//!
//! What they are, by where they are counted:
//! - requests: the access-log middleware counts every request by service,
//!   route template (axum's `MatchedPath`, never the raw path, so no ids
//!   in labels), method and status code, and times it;
//! - the store: every write transaction's wait for the writer, its run
//!   time and outcome, through the store's [`stratus_store::Observer`];
//! - the scheduler counts its decisions (`compute::scheduler`); image
//!   data handlers count the bytes they take and give (`image::data`);
//!   the change-log follower sets the revision it read up to
//!   (`follow`);
//! - at scrape time, from state already in memory or one cheap query
//!   each: the change log's newest revision, the scheduler's queue, nodes
//!   up and down and each node's heartbeat age, servers by status (one
//!   count over the store's state index, `vm_state/task_state`: no
//!   server read).
//!
//! Edge sites, when they land, add their link state and sync lag in
//! [`Metrics::refresh`] (see the note there).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use stratus_store::{Observer, Query, WriteStats};

use crate::compute::model::{ComputeNode, Server, parse_server_state};
use crate::identity::policy::Ctx;
use crate::{ApiError, AppState};

/// The `Content-Type` of the Prometheus text format.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets of API requests, in seconds (a long-poll's 30 s
/// lands in the last).
const REQUEST_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of store transaction times, in seconds (a commit waits for
/// an fsync).
const STORE_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: &'static str,
    route: String,
    method: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    service: &'static str,
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeStateLabels {
    state: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteNodeLabels {
    site: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Appends another registry's encoding to a scrape (see
/// [`Metrics::attach`]).
pub type ExtraEncoder = Arc<dyn Fn(&mut String) + Send + Sync>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Every metric of one controller process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: HistogramFamily<RouteLabels>,
    store: StoreMetrics,
    changelog_revision: Gauge,
    changelog_followed: Gauge,
    scheduler_queue: Gauge,
    scheduler_waiting: Gauge,
    scheduler_decisions: Family<OutcomeLabels, Counter>,
    nodes: Family<NodeStateLabels, Gauge>,
    heartbeat_age: Family<NodeLabels, Gauge<f64, AtomicU64>>,
    site_up: Family<SiteLabels, Gauge>,
    site_lag: Family<SiteLabels, Gauge>,
    site_contact_age: Family<SiteLabels, Gauge<f64, AtomicU64>>,
    site_nodes: Family<SiteNodeLabels, Gauge>,
    servers: Family<StatusLabels, Gauge>,
    image_bytes: Family<DirectionLabels, Counter>,
    /// Other registries encoded after this one (the node agent `stratus
    /// up` runs in its process).
    extra: Mutex<Vec<ExtraEncoder>>,
    /// One scrape at a time: a scrape refreshes the scrape-time gauges,
    /// then encodes them.
    scrape: Mutex<()>,
}

/// The store's write transactions; the store's [`Observer`].
#[derive(Clone)]
struct StoreMetrics {
    writes: Family<OutcomeLabels, Counter>,
    write_seconds: Histogram,
    wait_seconds: Histogram,
}

impl Observer for StoreMetrics {
    fn write_done(&self, w: &WriteStats) {
        self.writes
            .get_or_create(&OutcomeLabels {
                outcome: w.outcome.as_str(),
            })
            .inc();
        self.write_seconds.observe(w.ran.as_secs_f64());
        self.wait_seconds.observe(w.waited.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("stratus");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "API requests answered, by service, route template, method and status code",
            requests.clone(),
        );
        let request_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an API request (to the response head), by service, route template and method",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let store = StoreMetrics {
            writes: Family::default(),
            write_seconds: Histogram::new(STORE_BUCKETS),
            wait_seconds: Histogram::new(STORE_BUCKETS),
        };
        registry.register(
            "store_write_transactions",
            "Store write transactions, by outcome (committed, rolled_back: the request refused it, failed: the database did); writes are serialised, so none is retried",
            store.writes.clone(),
        );
        registry.register_with_unit(
            "store_write_transaction_duration",
            "Time a store write transaction ran, from its first statement to its commit being durable",
            Unit::Seconds,
            store.write_seconds.clone(),
        );
        registry.register_with_unit(
            "store_write_wait_duration",
            "Time a store write waited for the writer (other processes' writes included, on PostgreSQL) before it began",
            Unit::Seconds,
            store.wait_seconds.clone(),
        );
        let changelog_revision = Gauge::default();
        registry.register(
            "changelog_revision",
            "The change log's newest revision (the store's position)",
            changelog_revision.clone(),
        );
        let changelog_followed = Gauge::default();
        registry.register(
            "changelog_followed_revision",
            "The revision this process has followed the change log to (agent wake-ups, caches, placement)",
            changelog_followed.clone(),
        );
        let scheduler_queue = Gauge::default();
        registry.register(
            "scheduler_queue_length",
            "Servers in this process's scheduler queue",
            scheduler_queue.clone(),
        );
        let scheduler_waiting = Gauge::default();
        registry.register(
            "scheduler_waiting_servers",
            "Servers seen waiting for a scheduler in the change log (by any controller)",
            scheduler_waiting.clone(),
        );
        let scheduler_decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "scheduler_decisions",
            "Scheduling decisions of this process: scheduled (claimed on a node) or no_valid_host",
            scheduler_decisions.clone(),
        );
        let nodes = Family::<NodeStateLabels, Gauge>::default();
        registry.register(
            "nodes",
            "Compute nodes by state (up: heard of within service_down_time and not forced down) and status (enabled, disabled)",
            nodes.clone(),
        );
        let heartbeat_age = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "node_heartbeat_age",
            "Time since each node's agent was last heard of",
            Unit::Seconds,
            heartbeat_age.clone(),
        );
        let site_up = Family::<SiteLabels, Gauge>::default();
        registry.register(
            "site_up",
            "Edge sites of this controller: 1 when the site exchanged within site_down_time, else 0",
            site_up.clone(),
        );
        let site_lag = Family::<SiteLabels, Gauge>::default();
        registry.register(
            "site_revision_lag",
            "Change-log revisions the site has not acknowledged yet",
            site_lag.clone(),
        );
        let site_contact_age = Family::<SiteLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "site_contact_age",
            "Time since each site's last exchange",
            Unit::Seconds,
            site_contact_age.clone(),
        );
        let site_nodes = Family::<SiteNodeLabels, Gauge>::default();
        registry.register(
            "site_nodes",
            "Compute nodes of each edge site (and the sites below it) by state, as the site last reported them",
            site_nodes.clone(),
        );
        let servers = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "servers",
            "Servers by status (as the compute API shows it: ACTIVE, BUILD, SHUTOFF, ERROR, ...)",
            servers.clone(),
        );
        let image_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "image_data",
            "Image data taken in (uploads, staging) and given out (downloads)",
            Unit::Bytes,
            image_bytes.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            store,
            changelog_revision,
            changelog_followed,
            scheduler_queue,
            scheduler_waiting,
            scheduler_decisions,
            nodes,
            heartbeat_age,
            site_up,
            site_lag,
            site_contact_age,
            site_nodes,
            servers,
            image_bytes,
            extra: Mutex::new(Vec::new()),
            scrape: Mutex::new(()),
        }
    }

    /// The store's observer: counts and times its write transactions.
    pub fn store_observer(&self) -> Arc<dyn Observer> {
        Arc::new(self.store.clone())
    }

    /// Counts one answered request. `route` is the matched route
    /// template (None: no route matched).
    pub fn request(&self, route: Option<&str>, method: &str, code: u16, took: Duration) {
        let route = route_label(route);
        let service = service_of(&route);
        let method = method_label(method);
        self.request_seconds
            .get_or_create(&RouteLabels {
                service,
                route: route.clone(),
                method,
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                service,
                route,
                method,
                code,
            })
            .inc();
    }

    /// Counts scheduling decisions: `placed` servers claimed on a node,
    /// or `refused` for want of a valid host.
    pub fn scheduled(&self, placed: u64, refused: u64) {
        for (outcome, n) in [("scheduled", placed), ("no_valid_host", refused)] {
            if n > 0 {
                self.scheduler_decisions
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        }
    }

    /// Counts image data taken in from clients.
    pub fn image_bytes_in(&self) -> Counter {
        self.image_bytes
            .get_or_create_owned(&DirectionLabels { direction: "in" })
    }

    /// Counts image data given out to clients.
    pub fn image_bytes_out(&self) -> Counter {
        self.image_bytes
            .get_or_create_owned(&DirectionLabels { direction: "out" })
    }

    /// Notes the revision the change-log follower has read up to.
    pub fn followed(&self, revision: i64) {
        self.changelog_followed.set(revision);
    }

    /// Adds a registry encoded after this one on every scrape (the
    /// in-process node agent's).
    pub fn attach(&self, encode: ExtraEncoder) {
        self.extra
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(encode);
    }

    /// Sets the gauges computed at scrape time. Blocking (store reads).
    fn refresh(&self, state: &AppState) -> Result<(), ApiError> {
        self.changelog_revision.set(state.store.last_revision()?);
        self.scheduler_queue
            .set(state.unscheduled.queue_len() as i64);
        self.scheduler_waiting
            .set(state.unscheduled.waiting_len() as i64);

        let now = crate::timeutil::now_us();
        let nodes = state.store.list::<ComputeNode>(&Query::all())?;
        self.nodes.clear();
        for state_ in ["up", "down"] {
            for status in ["enabled", "disabled"] {
                self.nodes
                    .get_or_create(&NodeStateLabels {
                        state: state_,
                        status,
                    })
                    .set(0);
            }
        }
        self.heartbeat_age.clear();
        for n in &nodes {
            let labels = NodeStateLabels {
                state: if crate::compute::zones::is_up(state, n) {
                    "up"
                } else {
                    "down"
                },
                status: if n.disabled { "disabled" } else { "enabled" },
            };
            self.nodes.get_or_create(&labels).inc();
            let seen = crate::compute::zones::last_seen(state, n);
            self.heartbeat_age
                .get_or_create(&NodeLabels { node: n.id.clone() })
                .set((now - seen).max(0) as f64 / 1e6);
        }

        let counts = state.store.count_states::<Server>()?;
        self.servers.clear();
        for status in ["ACTIVE", "BUILD", "SHUTOFF", "ERROR"] {
            self.servers.get_or_create(&StatusLabels { status }).set(0);
        }
        for (lifted, n) in counts {
            let (vm_state, task) = parse_server_state(&lifted);
            let status = crate::compute::states::status(vm_state, task);
            self.servers
                .get_or_create(&StatusLabels { status })
                .inc_by(n as i64);
        }

        // Edge sites: link state, revisions behind and time since the
        // last exchange, from the sites' in-memory links.
        let revision = state.store.last_revision()?;
        self.site_up.clear();
        self.site_lag.clear();
        self.site_contact_age.clear();
        self.site_nodes.clear();
        for s in state.store.list::<crate::sites::Site>(&Query::all())? {
            let labels = SiteLabels {
                site: s.name.clone(),
            };
            let up = state.sites.shown_state(&s) == crate::sites::state::ACTIVE;
            self.site_up.get_or_create(&labels).set(up as i64);
            for st in ["up", "down"] {
                let n = s.nodes.iter().filter(|n| (n.state == "up") == (st == "up"));
                self.site_nodes
                    .get_or_create(&SiteNodeLabels {
                        site: s.name.clone(),
                        state: st,
                    })
                    .set(n.count() as i64);
            }
            if let Some(l) = state.sites.link(&s.id) {
                self.site_lag
                    .get_or_create(&labels)
                    .set((revision - l.acked).max(0));
                self.site_contact_age
                    .get_or_create(&labels)
                    .set((now - l.last_contact_us).max(0) as f64 / 1e6);
            }
        }
        Ok(())
    }

    /// Refreshes the scrape-time gauges and encodes everything.
    /// Blocking (store reads).
    pub fn scrape(&self, state: &AppState) -> Result<String, ApiError> {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(state)?;
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .map_err(|_| ApiError::internal("The metrics could not be encoded."))?;
        for encode in self.extra.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            encode(&mut out);
        }
        Ok(out)
    }
}

/// A body that counts the data bytes passing through it (image data in
/// and out).
pub struct Counted<B> {
    inner: B,
    counter: Counter,
}

impl<B> Counted<B> {
    pub fn new(inner: B, counter: Counter) -> Self {
        Counted { inner, counter }
    }
}

impl<B> http_body::Body for Counted<B>
where
    B: http_body::Body<Data = axum::body::Bytes> + Unpin,
{
    type Data = axum::body::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The label of a matched route: the template as axum matched it; a
/// nested router's catch-all (its fallback) and no match at all are
/// `unmatched`, so a label never carries a raw path.
fn route_label(route: Option<&str>) -> String {
    match route {
        Some(r) if !r.contains("__private__") => r.to_string(),
        _ => "unmatched".to_string(),
    }
}

/// The method as a label: the methods HTTP defines, anything else
/// `other` (a client inventing methods must not invent series).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The service a route belongs to, from its first path segment.
fn service_of(route: &str) -> &'static str {
    match route.trim_start_matches('/').split('/').next() {
        Some("identity") => "identity",
        Some("compute") => "compute",
        Some("image") => "image",
        Some("placement") => "placement",
        Some("network") => "network",
        Some("volume") => "volume",
        Some("edge") => "edge",
        Some("metrics") => "metrics",
        Some("dashboard") => "dashboard",
        _ => "other",
    }
}

/// `GET /metrics` on the API listener: admins only.
async fn metrics_admin(State(state): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    ctx.require_admin("stratus:metrics")?;
    render(state).await
}

/// `GET /metrics` on the `--metrics-listen` address: no token.
async fn metrics_open(State(state): State<AppState>) -> Result<Response, ApiError> {
    render(state).await
}

async fn render(state: AppState) -> Result<Response, ApiError> {
    let text = tokio::task::spawn_blocking(move || state.metrics.scrape(&state))
        .await
        .map_err(|_| ApiError::internal("The metrics scrape stopped."))??;
    let mut resp = text.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(resp)
}

/// The `/metrics` route of the API listener (admin token required).
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", axum::routing::get(metrics_admin))
}

/// The whole router of the `--metrics-listen` address: `/metrics`
/// without a token, nothing else.
pub fn open_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics_open))
        .fallback(crate::error::not_found_fallback)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_never_carry_a_raw_path() {
        assert_eq!(
            route_label(Some("/compute/v2.1/servers/{server_id}")),
            "/compute/v2.1/servers/{server_id}"
        );
        assert_eq!(route_label(None), "unmatched");
        assert_eq!(
            route_label(Some("/compute/v2.1/{*__private__axum_fallback}")),
            "unmatched"
        );
        assert_eq!(service_of("/image/v2/images"), "image");
        assert_eq!(service_of("/edge/v1/nodes/{host}"), "edge");
        assert_eq!(service_of("unmatched"), "other");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("BREW"), "other");
    }

    #[test]
    fn a_servers_lifted_state_reads_back() {
        use crate::compute::model::server_state;
        let s = server_state("active", Some("rebooting"));
        assert_eq!(parse_server_state(&s), ("active", Some("rebooting")));
        let s = server_state("stopped", None);
        assert_eq!(s, "stopped/");
        assert_eq!(parse_server_state(&s), ("stopped", None));
    }

    #[test]
    fn requests_encode_as_prometheus_text() {
        let m = Metrics::new();
        m.request(
            Some("/compute/v2.1/flavors"),
            "GET",
            200,
            Duration::from_millis(3),
        );
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains("# TYPE stratus_http_requests_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "stratus_http_requests_total{service=\"compute\",route=\"/compute/v2.1/flavors\",method=\"GET\",code=\"200\"} 1\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("# TYPE stratus_http_request_duration_seconds histogram\n"),
            "{out}"
        );
    }
}
