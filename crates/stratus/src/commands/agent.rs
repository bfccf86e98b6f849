//! `stratus agent`: a node agent joining a controller.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_agent::Driver;

use crate::config::{AgentArgs, AgentCmd, DriverArg, VmsArg};

/// The fake node's resources.
fn fake_resources() -> stratus_agent::HostResources {
    stratus_agent::HostResources {
        vcpus: 16,
        memory_mb: 65536,
        disk_gb: 1000,
        arch: "x86_64".into(),
        hypervisor_type: "fake".into(),
        hypervisor_version: 1,
        cpu_model: "fake".into(),
    }
}

/// `--fake-nodes N` (N > 1): N simulated nodes sharing one runtime, one
/// login and one listener (see `stratus_agent::node::sim`).
fn simulate(cmd: &AgentCmd, controller: &str, n: usize) -> anyhow::Result<()> {
    crate::datadir::prepare_agent(&cmd.data_dir)?;
    tracing::warn!(
        nodes = n,
        "using the FAKE driver: workloads are simulated, nothing runs"
    );
    let hosts: Vec<String> = (0..n).map(|i| node_name(&cmd.agent, Some(i))).collect();
    let login = login(cmd, controller, &hosts[0], &cmd.data_dir.join("node-0"))?;
    stratus_agent::node::sim::run(stratus_agent::node::sim::SimConfig {
        controller: controller.to_string(),
        hosts,
        login,
        state_dir: cmd.data_dir.clone(),
        listen: cmd.agent.agent_listen,
        advertise: cmd.agent.agent_url.clone(),
        orphans: cmd.agent.orphans.into(),
        heartbeat: Duration::from_secs(cmd.heartbeat.max(1)),
        resources: fake_resources(),
    })
}

/// The driver the agent runs its workloads with.
pub fn make_driver(
    args: &AgentArgs,
    state_dir: &Path,
    index: Option<usize>,
) -> anyhow::Result<Arc<dyn Driver>> {
    crate::datadir::prepare_agent(state_dir)?;
    match args.driver {
        DriverArg::Fake => {
            let _ = index;
            tracing::warn!("using the FAKE driver: workloads are simulated, nothing runs");
            Ok(Arc::new(stratus_agent::FakeDriver::new(fake_resources())))
        }
        DriverArg::Container => {
            let runtime = match &args.runtime {
                Some(r) => r.clone(),
                None => stratus_agent::find_runtime().context(
                    "no OCI runtime found: install runc (apt-get install runc) or pass --runtime",
                )?,
            };
            let d = stratus_agent::ContainerDriver::new(state_dir, runtime)
                .map_err(|e| anyhow::anyhow!("starting the container driver: {e}"))?;
            let qemu = stratus_agent::find_qemu();
            match (args.vms, qemu) {
                (VmsArg::Off, _) => Ok(Arc::new(d)),
                (VmsArg::On, None) => anyhow::bail!(
                    "--vms on: qemu-system-{} is not installed (apt-get install qemu-system-x86 qemu-utils)",
                    std::env::consts::ARCH
                ),
                (VmsArg::Auto, None) => {
                    tracing::info!(
                        "QEMU is not installed: this node runs containers only (apt-get install qemu-system-x86 qemu-utils for VMs)"
                    );
                    Ok(Arc::new(d))
                }
                (_, Some(_)) => {
                    let vms = stratus_agent::QemuDriver::new(state_dir)
                        .map_err(|e| anyhow::anyhow!("starting the VM driver: {e}"))?
                        .with_migration_bandwidth(args.live_migration_bandwidth);
                    Ok(Arc::new(stratus_agent::MixedDriver::new(Box::new(d), vms)))
                }
            }
        }
    }
}

/// This node's name: `--node-name`, else the machine's host name.
pub fn node_name(args: &AgentArgs, index: Option<usize>) -> String {
    let base = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "node".into())
    });
    match index {
        Some(i) => format!("{base}-{i}"),
        None => base,
    }
}

/// Who the agent in `state_dir` logs in as: the node credential it
/// joined with before; else one it gets now with `--join-token`; else
/// the old way, a password (from `--password-file`, `OS_PASSWORD` or
/// `--password`).
fn login(
    cmd: &AgentCmd,
    controller: &str,
    host: &str,
    state_dir: &Path,
) -> anyhow::Result<stratus_agent::node::Login> {
    if let Some(c) = crate::join::load(state_dir)? {
        anyhow::ensure!(
            c.host == host,
            "{} joined as node {}, not {host}: run with --node-name {} or join again with a token for {host} in another data dir",
            state_dir.display(),
            c.host,
            c.host
        );
        if cmd.join_token.is_some() {
            tracing::info!(
                "this node joined before: its credential is used, the join token is not needed"
            );
        }
        return Ok(stratus_agent::node::Login::Node(c));
    }
    if let Some(t) = &cmd.join_token {
        return Ok(stratus_agent::node::Login::Node(crate::join::join(
            controller, host, t, state_dir,
        )?));
    }
    let password = match (&cmd.password_file, &cmd.password) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the password file {}", f.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, Some(p)) => p.clone(),
        (None, None) => anyhow::bail!(
            "no credentials: pass --join-token (from `stratus admin node-token` on the controller), or --password-file"
        ),
    };
    Ok(stratus_agent::node::Login::Password {
        username: cmd.username.clone(),
        password,
        project: cmd.project.clone(),
    })
}

pub fn run(cmd: AgentCmd) -> anyhow::Result<()> {
    let controller = cmd.controller.trim_end_matches('/').to_string();
    let n = if cmd.agent.driver == DriverArg::Fake {
        cmd.fake_nodes.max(1)
    } else {
        1
    };
    anyhow::ensure!(
        n == 1 || cmd.join_token.is_none(),
        "a join token joins one node: simulate several with --password-file"
    );
    anyhow::ensure!(
        n == 1 || cmd.metrics_listen.is_none(),
        "--metrics-listen serves one node's metrics: not with --fake-nodes"
    );
    if n > 1 {
        return simulate(&cmd, &controller, n);
    }
    let state_dir = cmd.data_dir.clone();
    let driver = make_driver(&cmd.agent, &state_dir, None)?;
    let host = node_name(&cmd.agent, None);
    let metrics = Arc::new(stratus_agent::node::metrics::AgentMetrics::new(&host));
    if let Some(addr) = cmd.metrics_listen {
        stratus_agent::node::metrics::serve(addr, metrics.clone())?;
    }
    let login = login(&cmd, &controller, &host, &state_dir)?;
    stratus_agent::node::run(
        stratus_agent::node::AgentConfig {
            controller,
            host,
            login,
            state_dir,
            listen: cmd.agent.agent_listen,
            advertise: cmd.agent.agent_url.clone(),
            orphans: cmd.agent.orphans.into(),
            tunnel_ip: cmd.agent.tunnel_ip,
            l3: cmd.agent.l3,
            heartbeat: Duration::from_secs(cmd.heartbeat.max(1)),
            metrics,
            volumes: cmd.agent.volumes.clone().map(|dir| {
                stratus_agent::node::volumes::VolumesConfig {
                    dir,
                    max_over_subscription_ratio: cmd.agent.max_over_subscription_ratio,
                    backend_name: cmd.agent.volume_backend.clone(),
                }
            }),
        },
        driver,
    )
}
