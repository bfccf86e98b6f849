//! Workload drivers of the Stratus node agent.
//!
//! A [`Driver`] runs the workloads of one node: the [`ContainerDriver`]
//! runs OCI containers from docker or OCI image tarballs with a real OCI
//! runtime (runc; crun where the cgroup setup allows it); the
//! [`FakeDriver`] only pretends, for scale simulations of thousands of
//! nodes in one process, and is never the default.
//!
//! The API is synchronous: drivers call external programs and touch the
//! file system. Async callers use `spawn_blocking`.

mod container;
mod fake;
mod unpack;

use std::path::PathBuf;
use std::time::Duration;

pub use container::{ContainerDriver, find_runtime};
pub use fake::FakeDriver;

/// What a driver needs to start one server's workload.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// The server id; also the container id.
    pub uuid: String,
    pub hostname: String,
    pub image_id: String,
    /// Local copy of the image data (`docker save` or OCI layout tarball).
    pub image_file: PathBuf,
    /// `docker` or `oci`.
    pub container_format: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    /// Decoded user data.
    pub user_data: Option<Vec<u8>>,
    /// OpenStack config-drive `meta_data.json`.
    pub meta_data_json: Vec<u8>,
}

/// Nova's power states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    NoState,
    Running,
    Paused,
    Shutdown,
    Crashed,
    Suspended,
}

impl PowerState {
    /// Nova's numeric code.
    pub fn nova_code(&self) -> u8 {
        match self {
            PowerState::NoState => 0,
            PowerState::Running => 1,
            PowerState::Paused => 3,
            PowerState::Shutdown => 4,
            PowerState::Crashed => 6,
            PowerState::Suspended => 7,
        }
    }
}

/// The node as its agent reports it.
#[derive(Debug, Clone)]
pub struct HostResources {
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub arch: String,
    pub hypervisor_type: String,
    pub hypervisor_version: u64,
    pub cpu_model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("no workload {0} on this node")]
    NotFound(String),
    #[error("the image cannot run: {0}")]
    InvalidImage(String),
    #[error("the container runtime failed: {0}")]
    Runtime(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The workloads of one node.
pub trait Driver: Send + Sync {
    /// `container` or `fake`.
    fn name(&self) -> &'static str;
    fn host_resources(&self) -> HostResources;
    /// Creates and starts a workload; a no-op when it already exists.
    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError>;
    fn start(&self, uuid: &str) -> Result<(), DriverError>;
    /// SIGTERM, then SIGKILL after `timeout`.
    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError>;
    /// Soft: a graceful stop and a start; hard: kill and start.
    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError>;
    fn pause(&self, uuid: &str) -> Result<(), DriverError>;
    fn unpause(&self, uuid: &str) -> Result<(), DriverError>;
    /// Kills and removes a workload and all its files; Ok when it is gone.
    fn destroy(&self, uuid: &str) -> Result<(), DriverError>;
    fn power_state(&self, uuid: &str) -> PowerState;
    /// Every workload this driver has on the node.
    fn list(&self) -> Vec<(String, PowerState)>;
    /// The tail of what the workload wrote to stdout and stderr.
    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError>;
}

/// The CPU model from /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// MemTotal from /proc/meminfo, in MiB.
pub(crate) fn mem_total_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}
