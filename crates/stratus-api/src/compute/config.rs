//! What operators set for compute (nova.conf's options), with Nova's
//! defaults.

/// Which hosts the scheduler prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weigher {
    /// Most free RAM first (Nova's default `ram_weight_multiplier` 1.0).
    Spread,
    /// Least free RAM first (a negative multiplier).
    Pack,
}

/// What operators set in nova.conf, with Nova's defaults.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub reserved_host_cpus: u64,
    pub reserved_host_memory_mb: u64,
    pub reserved_host_disk_mb: u64,
    pub service_down_time_s: u64,
    pub weigher: Weigher,
    /// Builds tried per server (Nova's `max_attempts`).
    pub max_attempts: usize,
    /// Seconds between full power-state syncs of a node whose report and
    /// servers did not change (Nova's `sync_power_state_interval`).
    pub sync_power_state_interval_s: u64,
    /// Instance HA: restart workloads that stop by themselves and
    /// evacuate the servers of nodes that stay down (see `ha.rs`).
    pub instance_ha: bool,
    /// Seconds a node must be down before instance HA evacuates it.
    pub evacuate_after_s: u64,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_host_cpus: 0,
            reserved_host_memory_mb: 512,
            reserved_host_disk_mb: 0,
            service_down_time_s: 60,
            weigher: Weigher::Spread,
            max_attempts: 3,
            sync_power_state_interval_s: 600,
            instance_ha: false,
            evacuate_after_s: 120,
        }
    }
}
