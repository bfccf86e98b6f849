//! Configuration: command-line flags, each with an environment variable
//! (`STRATUS_*`) as fallback; flags win.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where and how a serving role runs.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STRATUS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Import the images listed in DIR/images.tsv (as written by
    /// scripts/build-test-images) as public images, once.
    #[arg(long, env = "STRATUS_IMPORT_IMAGES", value_name = "DIR")]
    pub import_images: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub compute: ComputeArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Run no node agent in this process (`up` runs one by default).
    #[arg(long, env = "STRATUS_NO_AGENT")]
    pub no_agent: bool,
    /// Hours of change-log history kept; older entries are compacted away
    /// (a reader further behind, such as a site that was cut off longer,
    /// starts again from a snapshot). 0 keeps everything.
    #[arg(
        long,
        env = "STRATUS_CHANGE_LOG_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub change_log_retention_hours: u64,
    /// The external network `stratus up` makes on first start, `public`
    /// (devstack's range by default), so servers can be given floating
    /// IPs and `networks: auto` works; `none` makes none.
    #[arg(long, env = "STRATUS_PUBLIC_NETWORK", default_value = "172.24.4.0/24")]
    pub public_network: String,
    /// Also serve GET /metrics on this address without a token (for a
    /// Prometheus scraping a private interface). On the API listener
    /// /metrics needs an admin token.
    #[arg(long, env = "STRATUS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The quota model (Keystone's `[unified_limit] enforcement_model`):
    /// `flat`, `strict-two-level` or Stratus's `hierarchical`. Kept in the
    /// store, so every controller process on it enforces the same; left
    /// out, the stored one stays (`flat` at first).
    #[arg(long, env = "STRATUS_LIMIT_MODEL", value_name = "MODEL")]
    pub limit_model: Option<String>,
    #[command(flatten)]
    pub sync: SyncArgs,
}

/// Edge sites: this controller as a parent of sites, or as a site of a
/// parent.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// Serve sites on this address (TLS with this controller's site CA;
    /// sites dial in, so only the parent needs to be reachable).
    #[arg(long, env = "STRATUS_SYNC_LISTEN", value_name = "ADDR")]
    pub sync_listen: Option<SocketAddr>,
    /// Run as a site of the parent whose sync listener is at URL
    /// (https://HOST:PORT). Identity, flavors and images come from the
    /// parent; this controller makes none of its own.
    #[arg(long, env = "STRATUS_PARENT", value_name = "URL")]
    pub parent: Option<String>,
    /// The one-time token from `stratus admin site create`, for the first
    /// start of a site.
    #[arg(long, env = "STRATUS_JOIN_TOKEN", requires = "parent")]
    pub join_token: Option<String>,
    /// Seconds without an exchange after which a site is unreachable.
    #[arg(long, env = "STRATUS_SITE_DOWN_TIME", default_value_t = 90)]
    pub site_down_time: u64,
}

/// Scheduler and placement settings, as operators set them in nova.conf.
#[derive(Args, Debug, Clone)]
pub struct ComputeArgs {
    /// VCPU allocation ratio of new nodes (nova.conf
    /// initial_cpu_allocation_ratio).
    #[arg(long, env = "STRATUS_CPU_ALLOCATION_RATIO", default_value_t = 4.0)]
    pub cpu_allocation_ratio: f64,
    /// MEMORY_MB allocation ratio.
    #[arg(long, env = "STRATUS_RAM_ALLOCATION_RATIO", default_value_t = 1.0)]
    pub ram_allocation_ratio: f64,
    /// DISK_GB allocation ratio.
    #[arg(long, env = "STRATUS_DISK_ALLOCATION_RATIO", default_value_t = 1.0)]
    pub disk_allocation_ratio: f64,
    /// Memory kept back on every node for the host, in MiB.
    #[arg(long, env = "STRATUS_RESERVED_HOST_MEMORY_MB", default_value_t = 512)]
    pub reserved_host_memory_mb: u64,
    /// Disk kept back on every node for the host, in MiB.
    #[arg(long, env = "STRATUS_RESERVED_HOST_DISK_MB", default_value_t = 0)]
    pub reserved_host_disk_mb: u64,
    /// CPUs kept back on every node for the host.
    #[arg(long, env = "STRATUS_RESERVED_HOST_CPUS", default_value_t = 0)]
    pub reserved_host_cpus: u64,
    /// Seconds without a heartbeat after which a node is down.
    #[arg(long, env = "STRATUS_SERVICE_DOWN_TIME", default_value_t = 60)]
    pub service_down_time: u64,
    /// Spread servers over nodes (most free RAM first) or pack them.
    #[arg(
        long,
        env = "STRATUS_SCHEDULER_WEIGHER",
        value_enum,
        default_value = "spread"
    )]
    pub weigher: WeigherArg,
    /// Builds tried per server before it goes to ERROR.
    #[arg(long, env = "STRATUS_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: usize,
    /// Seconds between full power-state syncs of a node whose workloads
    /// and servers did not change (Nova's sync_power_state_interval); a
    /// change on either side syncs at the node's next heartbeat.
    #[arg(long, env = "STRATUS_SYNC_POWER_STATE_INTERVAL", default_value_t = 600)]
    pub sync_power_state_interval: u64,
    /// Instance HA, as Masakari adds it to OpenStack: workloads that stop
    /// by themselves are started again (3 times in 10 minutes at most)
    /// and the servers of a node down for --evacuate-after seconds are
    /// rebuilt on other nodes. `auto` is on for an edge site controller
    /// (--parent) and off elsewhere. Servers with the metadata
    /// HA_Enabled=False are left alone.
    #[arg(long, env = "STRATUS_INSTANCE_HA", value_enum, default_value = "auto")]
    pub instance_ha: InstanceHaArg,
    /// Seconds a node must have been down before instance HA evacuates
    /// its servers (never less than --service-down-time).
    #[arg(long, env = "STRATUS_EVACUATE_AFTER", default_value_t = 120)]
    pub evacuate_after: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceHaArg {
    Auto,
    On,
    Off,
}

/// How big a request the API accepts. A request over a limit is refused
/// with 413, 414 or 431 in the service's fault shape.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Most header fields in one request (Apache's LimitRequestFields).
    #[arg(long, env = "STRATUS_MAX_HEADER_COUNT", default_value_t = 100)]
    pub max_header_count: usize,
    /// Most bytes a request's header fields take together (names, values
    /// and line ends).
    #[arg(long, env = "STRATUS_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Longest request URI (path and query) in bytes, at most 65534
    /// (Apache's LimitRequestLine is 8190).
    #[arg(long, env = "STRATUS_MAX_URI_BYTES", default_value_t = 8 * 1024,
          value_parser = clap::value_parser!(u16).range(1..=65534))]
    pub max_uri_bytes: u16,
    /// Largest request body of the OpenStack APIs, in bytes
    /// (oslo.middleware's max_request_body_size); image data is bounded
    /// by --image-size-cap instead.
    #[arg(long, env = "STRATUS_MAX_BODY_BYTES", default_value_t = 114_688)]
    pub max_body_bytes: u64,
    /// Largest request body of the node agents' API (/edge/v1), whose
    /// heartbeats list every workload of a node.
    #[arg(long, env = "STRATUS_MAX_AGENT_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_agent_body_bytes: u64,
}

impl HttpArgs {
    pub fn limits(&self) -> stratus_api::HttpLimits {
        stratus_api::HttpLimits {
            max_header_count: self.max_header_count.max(1),
            max_header_bytes: self.max_header_bytes,
            max_uri_bytes: usize::from(self.max_uri_bytes),
            max_body_bytes: self.max_body_bytes,
            max_agent_body_bytes: self.max_agent_body_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum WeigherArg {
    Spread,
    Pack,
}

impl ComputeArgs {
    /// The compute options; `site` when this controller is an edge site.
    pub fn config(&self, site: bool) -> stratus_api::compute::ComputeConfig {
        stratus_api::compute::ComputeConfig {
            cpu_allocation_ratio: self.cpu_allocation_ratio,
            ram_allocation_ratio: self.ram_allocation_ratio,
            disk_allocation_ratio: self.disk_allocation_ratio,
            reserved_host_cpus: self.reserved_host_cpus,
            reserved_host_memory_mb: self.reserved_host_memory_mb,
            reserved_host_disk_mb: self.reserved_host_disk_mb,
            service_down_time_s: self.service_down_time,
            weigher: match self.weigher {
                WeigherArg::Spread => stratus_api::compute::Weigher::Spread,
                WeigherArg::Pack => stratus_api::compute::Weigher::Pack,
            },
            max_attempts: self.max_attempts.max(1),
            sync_power_state_interval_s: self.sync_power_state_interval,
            instance_ha: match self.instance_ha {
                InstanceHaArg::Auto => site,
                InstanceHaArg::On => true,
                InstanceHaArg::Off => false,
            },
            evacuate_after_s: self.evacuate_after,
        }
    }
}

/// How a node agent runs its workloads.
#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Workload driver: `container` (an OCI runtime: runc or crun) or
    /// `fake` (in-memory, for scale simulation only).
    #[arg(long, env = "STRATUS_DRIVER", value_enum, default_value = "container")]
    pub driver: DriverArg,
    /// This node's name (default: the machine's host name).
    #[arg(long = "node-name", env = "STRATUS_NODE_NAME")]
    pub node_name: Option<String>,
    /// The agent's listener (the controller asks it for console output).
    #[arg(
        long = "agent-listen",
        env = "STRATUS_AGENT_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub agent_listen: SocketAddr,
    /// URL the controller reaches the agent's listener at.
    #[arg(long = "agent-url", env = "STRATUS_AGENT_URL")]
    pub agent_url: Option<String>,
    /// Workloads no server owns: reap, log or noop (Nova's
    /// running_deleted_instance_action).
    #[arg(long, env = "STRATUS_ORPHANS", value_enum, default_value = "reap")]
    pub orphans: OrphanArg,
    /// This node's VXLAN endpoint address (default: the address it
    /// reaches the controller from; none when that is loopback, so
    /// networks stay on this node).
    #[arg(long = "tunnel-ip", env = "STRATUS_TUNNEL_IP")]
    pub tunnel_ip: Option<std::net::IpAddr>,
    /// Offer to run the cloud's routers (and be the host side of external
    /// networks) on this node. `stratus up`'s own agent always does.
    #[arg(long = "l3", env = "STRATUS_L3")]
    pub l3: bool,
    /// OCI runtime binary (default: runc, then crun, from PATH).
    #[arg(long, env = "STRATUS_OCI_RUNTIME")]
    pub runtime: Option<PathBuf>,
    /// Virtual machines beside containers: `auto` runs them when QEMU is
    /// installed (qemu-system-x86 and qemu-utils), `on` refuses to start
    /// without it, `off` runs containers only.
    #[arg(long, env = "STRATUS_VMS", value_enum, default_value = "auto")]
    pub vms: VmsArg,
    /// Be a storage node: keep volumes (qcow2 files made with qemu-img)
    /// in this directory. `stratus up`'s own agent always is one, in
    /// `<data dir>/volumes` unless this names another.
    #[arg(long, env = "STRATUS_VOLUMES", value_name = "DIR")]
    pub volumes: Option<PathBuf>,
    /// How far thin-provisioned volumes may oversubscribe the volume
    /// directory's filesystem (Cinder's max_over_subscription_ratio).
    #[arg(
        long = "max-over-subscription-ratio",
        env = "STRATUS_MAX_OVER_SUBSCRIPTION_RATIO",
        default_value_t = 20.0
    )]
    pub max_over_subscription_ratio: f64,
    /// The name of this storage node's backend (Cinder's
    /// volume_backend_name): volume types pick backends with the extra
    /// spec `volume_backend_name`, and a volume's host reads
    /// `<node>@<backend>#<backend>`.
    #[arg(
        long = "volume-backend",
        env = "STRATUS_VOLUME_BACKEND",
        value_name = "NAME",
        default_value = "file",
        value_parser = backend_name
    )]
    pub volume_backend: String,
    /// The most a live migration out of this node sends, in MiB/s, for
    /// its memory and its disk each (Nova's live_migration_bandwidth);
    /// 0 is no limit. A forced completion lifts it.
    #[arg(
        long = "live-migration-bandwidth",
        env = "STRATUS_LIVE_MIGRATION_BANDWIDTH",
        value_name = "MIB",
        default_value_t = 0
    )]
    pub live_migration_bandwidth: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmsArg {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    Container,
    Fake,
}

/// `stratus agent`: a node agent joining a controller.
#[derive(Args, Debug, Clone)]
pub struct AgentCmd {
    /// The controller's URL, e.g. http://10.0.0.1:8080.
    #[arg(long, env = "STRATUS_CONTROLLER")]
    pub controller: String,
    /// Directory for the agent's state (images, workloads, the node's
    /// credential).
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./stratus-agent-data")]
    pub data_dir: PathBuf,
    /// A join token from `stratus admin node-token` on the controller: the
    /// node joins with it once and keeps its own credential in the data
    /// dir for later starts (no token or password needed again).
    #[arg(long, env = "STRATUS_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The old way, without a join token: the user the agent logs in as
    /// (needs the admin or service role).
    #[arg(long, env = "OS_USERNAME", default_value = "admin")]
    pub username: String,
    /// File holding the password of --username.
    #[arg(long, env = "STRATUS_AGENT_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// The password of --username. Prefer --join-token, --password-file
    /// or the environment: a password on the command line shows in every
    /// process listing.
    #[arg(long, env = "OS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// The project of --username.
    #[arg(long, env = "OS_PROJECT_NAME", default_value = "admin")]
    pub project: String,
    /// Seconds between heartbeats.
    #[arg(long, env = "STRATUS_HEARTBEAT", default_value_t = 10)]
    pub heartbeat: u64,
    /// Simulate this many nodes with the fake driver (scale tests);
    /// names are NODE-NAME-0 .. NODE-NAME-(N-1).
    #[arg(long, env = "STRATUS_FAKE_NODES", default_value_t = 1)]
    pub fake_nodes: usize,
    /// Serve this agent's metrics (GET /metrics, Prometheus text, no
    /// token) on this address.
    #[arg(long, env = "STRATUS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// The quota model (Keystone's `[unified_limit] enforcement_model`):
    /// `flat`, `strict-two-level` or Stratus's `hierarchical`. Kept in the
    /// store, so every controller process on it enforces the same; left
    /// out, the stored one stays (`flat` at first).
    #[arg(long, env = "STRATUS_LIMIT_MODEL", value_name = "MODEL")]
    pub limit_model: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Settings shared by every command that touches a data directory.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory holding the store, keys and generated client config.
    #[arg(long, env = "STRATUS_DATA_DIR", default_value = "./stratus-data")]
    pub data_dir: PathBuf,
    /// Keep the store in this PostgreSQL database
    /// (postgres://user:password@host:port/db, or postgresql:///db?host=/socket/dir)
    /// instead of the SQLite file DATA_DIR/stratus.db. Several controllers
    /// can share one database (each with the same keys in its data dir).
    #[arg(long, env = "STRATUS_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// Base URL clients use to reach this controller (default: from --listen).
    #[arg(long, env = "STRATUS_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Region advertised in the service catalog.
    #[arg(long, env = "STRATUS_REGION", default_value = "RegionOne")]
    pub region: String,
    /// Token lifetime in seconds.
    #[arg(long, env = "STRATUS_TOKEN_EXPIRATION", default_value_t = 3600)]
    pub token_expiration: u64,
    /// Seconds a verified password login is remembered, so repeated logins
    /// skip the slow hash (wrong passwords never do); 0 disables.
    #[arg(long, env = "STRATUS_LOGIN_CACHE_SECONDS", default_value_t = 600)]
    pub login_cache_seconds: u64,
    /// Largest image the image service accepts, in bytes (Glance's
    /// image_size_cap; default 1 TiB).
    #[arg(long, env = "STRATUS_IMAGE_SIZE_CAP", default_value_t = 1 << 40)]
    pub image_size_cap: u64,
}

impl CommonArgs {
    pub fn public_url(&self, listen: Option<SocketAddr>) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let addr = listen.unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid address"));
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        format!("http://{host}:{}", addr.port())
    }

    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("stratus.db")
    }
}

/// `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, message, fields).
    Json,
}

/// Logs go to stderr, one line per event; `STRATUS_LOG` sets the level
/// (error, warn, info, debug, trace; default info).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let level = std::env::var("STRATUS_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// `--orphans`: what to do with a workload no server owns (Nova's
/// `running_deleted_instance_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OrphanArg {
    /// Destroy it.
    Reap,
    /// Leave it and log a warning.
    Log,
    /// Leave it quietly.
    Noop,
}

impl From<OrphanArg> for stratus_agent::node::OrphanAction {
    fn from(a: OrphanArg) -> Self {
        match a {
            OrphanArg::Reap => Self::Reap,
            OrphanArg::Log => Self::Log,
            OrphanArg::Noop => Self::Noop,
        }
    }
}

/// A backend name: it goes into host strings (`node@backend#pool`), so
/// it holds none of their separators.
fn backend_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a backend name is 1 to 64 letters, digits, '-', '_' or '.'".into())
    }
}
