//! The VM driver: instances are QEMU virtual machines, driven through
//! QMP (no libvirt, no parsing of human output).
//!
//! What it keeps under its state directory:
//!
//! ```text
//! vm-images/<image_id>.qcow2  one base per image per node, converted
//!                             from the downloaded image (any backing
//!                             file the upload named is flattened away)
//! vms/<uuid>/
//!   vm.json                   written last at spawn: the VM is whole
//!   disk.qcow2                the root disk: a qcow2 overlay on the base,
//!                             sized to the flavor's root_gb
//!   config/ config.iso        the config drive (label config-2), when
//!                             genisoimage is installed
//!   qmp.sock                  QEMU's QMP socket
//!   qemu.pid  qemu.log        the daemonised QEMU's pid and stderr
//!   console.log(.1)           the serial console, bounded (see below)
//!   saved.state               a suspended VM's memory and devices
//!   rescue.qcow2              while rescued: an overlay on the rescue
//!                             image's base, booted first (the VM's own
//!                             disk is the second disk, as in Nova)
//! ```
//!
//! QEMU runs daemonised (`-daemonize`), in a cgroup of its own with the
//! flavor's CPU and memory limits when cgroup v2 is writable, so it
//! outlives the agent like a container does; a restarted agent finds it
//! by its pid file and socket. Power actions: stop is ACPI powerdown
//! (`system_powerdown`, pressed again every 5 s), then `quit` once the
//! timeout has passed; start
//! runs QEMU again on the same disk; pause is QMP `stop`/`cont`; suspend
//! saves the VM's state to disk with QEMU's migration stream and quits,
//! resume starts QEMU with `-incoming` from that file. The serial console
//! is a file QEMU appends to; once it passes [`CONSOLE_ROTATE`] its tail
//! moves to `console.log.1`, so a chatty guest never fills the disk.
//!
//! Acceleration: KVM only when a guest really runs under it at a usable
//! speed (a boot sector that enters long mode and walks 64 MiB, timed
//! against TCG, see [`probe_accel`]); on machines where `/dev/kvm` exists
//! but guests crawl, TCG.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::qmp::Qmp;
use crate::{
    CONSOLE_MAX, Driver, DriverError, HostResources, InstanceSpec, MigrationProgress, PowerState,
    host, lock_of, valid_id, which,
};

/// A live migration forced to complete may pause the guest this long
/// (ms) for the rest of its memory and disk.
const FORCED_DOWNTIME_MS: u64 = 60_000;

/// A console file this big has its tail moved to `console.log.1`.
const CONSOLE_ROTATE: u64 = 2 << 20;
/// How often a stop presses the power button again.
const POWER_BUTTON_RETRY: Duration = Duration::from_secs(5);
/// How long a live migration may take before it is cancelled.
const LIVE_MIGRATION_TIMEOUT: Duration = Duration::from_secs(1800);

/// The VMs this agent has paused for a moment to copy a volume
/// (`Driver::quiesced`): they count as running, so that no power-state
/// sync takes the pause for the guest's or a user's.
static QUIESCING: std::sync::LazyLock<Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// A set of VM ids a flag is up for, shared by the driver's threads.
struct Flags(std::sync::LazyLock<Mutex<std::collections::HashSet<String>>>);

impl Flags {
    const fn new() -> Flags {
        Flags(std::sync::LazyLock::new(Default::default))
    }

    fn set(&self, uuid: &str, on: bool) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if on {
            s.insert(uuid.to_string());
        } else {
            s.remove(uuid);
        }
    }

    fn get(&self, uuid: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(uuid)
    }
}

/// Live migrations an admin has aborted (`steer_migration`): one still
/// copying its disk stops before its memory is streamed.
static ABORTED: Flags = Flags::new();

/// Live migrations an admin has forced to complete: no bandwidth limit
/// and a long pause allowed, for the disk mirror and the memory alike.
static FORCED: Flags = Flags::new();

/// QEMU's own default for how long a migration may pause the guest.
const DEFAULT_DOWNTIME_MS: u64 = 300;

/// A live migration's `max-bandwidth` when it has no cap: 1 TiB/s.
const NO_BANDWIDTH_CAP: u64 = 1 << 40;

/// QEMU's name for the root disk's drive (the first `-drive if=virtio`).
const ROOT_DRIVE: &str = "virtio0";

/// The block job that mirrors the root disk to a live migration's
/// destination.
const MIRROR_JOB: &str = "migrate-disk";

/// A TCP port P such that P and P + 1 are both free now (a live
/// migration's stream and its disk export).
fn free_port_pair() -> Result<u16, DriverError> {
    for _ in 0..64 {
        let a = std::net::TcpListener::bind("0.0.0.0:0")?;
        let p = a.local_addr()?.port();
        if p < u16::MAX && std::net::TcpListener::bind(("0.0.0.0", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    Err(rt("no two free TCP ports in a row for a live migration"))
}
/// QEMU's own memory on top of the guest's, in the cgroup's limit.
const OVERHEAD_MB: u64 = 256;

/// How guests are accelerated on this node, and the CPU they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM with the host's CPU model (libvirt's host-passthrough).
    Kvm,
    /// KVM with QEMU's default CPU model, where the host's cannot be
    /// passed through (nested KVM that refuses some MSRs).
    KvmBasic,
    /// QEMU's own emulation.
    Tcg,
}

impl Accel {
    const ALL: [Accel; 3] = [Accel::Kvm, Accel::KvmBasic, Accel::Tcg];

    fn flag(self) -> &'static str {
        match self {
            Accel::Kvm | Accel::KvmBasic => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::KvmBasic => "qemu64",
            Accel::Tcg => "max",
        }
    }

    /// Its name in the probe's cache.
    fn key(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::KvmBasic => "kvm-qemu64",
            Accel::Tcg => "tcg",
        }
    }

    /// Nova's `hypervisor_type` for it.
    pub fn hypervisor_type(self) -> &'static str {
        match self {
            Accel::Kvm | Accel::KvmBasic => "KVM",
            Accel::Tcg => "QEMU",
        }
    }
}

/// The cgroups VMs go in: `stratus-vms/<uuid>` under cgroup v2's root,
/// or under v1's memory and cpu hierarchies.
enum Cgroups {
    V2(PathBuf),
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl Cgroups {
    fn find() -> Option<Cgroups> {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            let d = root.join("stratus-vms");
            let ok = fs::create_dir_all(&d).is_ok()
                && fs::write(root.join("cgroup.subtree_control"), "+cpu +memory").is_ok()
                && fs::write(d.join("cgroup.subtree_control"), "+cpu +memory").is_ok();
            return ok.then_some(Cgroups::V2(d));
        }
        let (m, c) = (root.join("memory"), root.join("cpu"));
        if m.join("memory.limit_in_bytes").exists() && c.join("cpu.cfs_quota_us").exists() {
            let (m, c) = (m.join("stratus-vms"), c.join("stratus-vms"));
            if fs::create_dir_all(&m).is_ok() && fs::create_dir_all(&c).is_ok() {
                return Some(Cgroups::V1 { memory: m, cpu: c });
            }
        }
        None
    }
}

/// One NIC of a VM: the tap device on the host (made by the dataplane,
/// on the network's bridge), the port's MAC, and the PCI slot it sits in
/// (from the interface's number, so a NIC keeps its slot across
/// hot-plugs and a live migration's destination lays the devices out as
/// the source has them; 0: QEMU picks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNic {
    pub tap: String,
    pub mac: String,
    #[serde(default)]
    pub slot: u8,
}

impl VmNic {
    fn netdev_id(&self) -> String {
        format!("net-{}", self.tap)
    }

    fn device_id(&self) -> String {
        format!("nic-{}", self.tap)
    }

    /// `-device`'s value, or `device_add`'s arguments as one string.
    fn device(&self) -> String {
        let mut d = format!(
            "virtio-net-pci,netdev={},id={},mac={}",
            self.netdev_id(),
            self.device_id(),
            self.mac
        );
        if self.slot > 0 {
            d.push_str(&format!(",addr={:#x}", self.slot));
        }
        d
    }
}

/// A volume attached to a VM: its qcow2 file and the device name Nova
/// gave it (`/dev/vdb`), which names its QEMU block node and device so
/// a volume keeps them across hot-plugs, restarts and reconciles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmDisk {
    pub volume_id: String,
    pub path: PathBuf,
    pub device: String,
    /// Front-end QoS limits (Cinder's keys: `total_iops_sec`,
    /// `read_bytes_sec`, ...), applied with QEMU's I/O throttling.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub qos: std::collections::BTreeMap<String, u64>,
    /// A volume of another node: its NBD export, which QEMU reaches
    /// itself (TLS with the storage node's key); `path` is then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<stratus_wire::volume::NbdTarget>,
    /// The volume's size in GiB (0: not known); a running guest's disk
    /// smaller than that is grown to it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size_gb: u64,
    /// The volume this one replaces at `device` (Nova's swap volume):
    /// the running guest's disk is copied onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_from: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl VmDisk {
    /// Whether the volume is moving to another storage node's copy of it
    /// (its `swap_from` names itself).
    fn moving(&self) -> bool {
        self.swap_from.as_deref() == Some(self.volume_id.as_str())
    }

    /// Whether `other` names the same place for the volume: the same
    /// local file, or the same NBD server.
    fn same_place(&self, other: &VmDisk) -> bool {
        match (&self.nbd, &other.nbd) {
            (Some(a), Some(b)) => a.host == b.host && a.port == b.port && a.export == b.export,
            (None, None) => self.path == other.path,
            _ => false,
        }
    }

    /// Whether the running guest's disk `b` is at this disk's place.
    fn backed_by(&self, b: &Backing) -> bool {
        match &self.nbd {
            Some(n) => {
                !b.file.starts_with('/')
                    && b.file.contains(&n.host)
                    && b.file.contains(&n.port.to_string())
            }
            None => Path::new(&b.file) == self.path,
        }
    }
}

/// The TLS credentials object of block node `node` (`vol-vdb`:
/// `tls-vdb`).
fn tls_of(node: &str) -> String {
    node.replacen("vol-", "tls-", 1)
}

/// What backs a volume disk of the running VM (QMP `query-block`): its
/// block node, the image's file name and its size in bytes.
#[derive(Debug, Clone)]
struct Backing {
    node: String,
    file: String,
    size: u64,
}

impl VmDisk {
    /// The id of the TLS credentials object of an NBD volume.
    fn tls_id(&self) -> String {
        tls_of(&self.node_name())
    }

    /// The name of the block node a swap copies the disk into: the
    /// device's volume nodes alternate between `vol-vdb` and
    /// `vol-vdb-s`, so the node being replaced keeps its name until it
    /// is gone.
    fn other_node(&self, node: &str) -> String {
        let base = self.node_name();
        if node == base {
            format!("{base}-s")
        } else {
            base
        }
    }

    /// Writes the key file of an NBD volume; the `tls-creds-psk` object
    /// that reads it (`object-add`'s arguments). `None` for a local one.
    fn tls_object(&self, vm_dir: &Path) -> Result<Option<serde_json::Value>, DriverError> {
        self.tls_object_for(vm_dir, &self.node_name())
    }

    /// [`VmDisk::tls_object`] for the volume as block node `node`: the
    /// key file is in the VM's directory (QEMU reads `keys.psk` in
    /// `psk-vdb/`).
    fn tls_object_for(
        &self,
        vm_dir: &Path,
        node: &str,
    ) -> Result<Option<serde_json::Value>, DriverError> {
        let Some(n) = &self.nbd else {
            return Ok(None);
        };
        let dir = vm_dir.join(node.replacen("vol-", "psk-", 1));
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        let file = dir.join("keys.psk");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&file)?;
            std::io::Write::write_all(
                &mut f,
                format!("{}:{}\n", n.psk_identity, n.psk_key).as_bytes(),
            )?;
        }
        Ok(Some(serde_json::json!({
            "qom-type": "tls-creds-psk", "id": tls_of(node), "endpoint": "client",
            "dir": dir.display().to_string(), "username": n.psk_identity,
        })))
    }

    /// `blockdev-add`'s arguments (and `-blockdev`'s, as JSON): the
    /// qcow2 file, or the NBD export over TLS.
    fn blockdev(&self) -> serde_json::Value {
        self.blockdev_as(&self.node_name())
    }

    /// [`VmDisk::blockdev`] as block node `node`.
    fn blockdev_as(&self, node: &str) -> serde_json::Value {
        match &self.nbd {
            Some(n) => serde_json::json!({
                "driver": "nbd", "node-name": node,
                "server": {"type": "inet", "host": n.host, "port": n.port.to_string()},
                "export": n.export, "tls-creds": tls_of(node),
                // A storage node that restarts its daemon: QEMU
                // reconnects rather than failing the guest's I/O at once;
                // an export not there yet (the storage node sees the
                // attach a moment later) is waited for.
                "reconnect-delay": 10,
                "open-timeout": 30,
            }),
            None => serde_json::json!({
                "driver": "qcow2", "node-name": node,
                "file": {"driver": "file", "filename": self.path.display().to_string()},
            }),
        }
    }

    /// `vdb` of `/dev/vdb`.
    fn short(&self) -> &str {
        self.device.rsplit('/').next().unwrap_or(&self.device)
    }

    fn node_name(&self) -> String {
        format!("vol-{}", self.short())
    }

    fn device_id(&self) -> String {
        format!("disk-{}", self.short())
    }

    /// Its PCI slot: after the root disk, the config drive and a rescue
    /// disk (slots 2-4), before the NICs (0x10 on): `vdb` in 0x5 up to
    /// `vdl` in 0xf. A fixed slot keeps the boot disk first for the
    /// firmware and lays a restarted VM out as the running one was.
    fn slot(&self) -> Option<u8> {
        let c = *self.short().strip_prefix("vd")?.as_bytes().first()?;
        (b'b'..=b'l').contains(&c).then(|| 5 + c - b'b')
    }

    /// The guest sees the volume id (its first 20 characters, virtio's
    /// limit) as the disk's serial, as with Nova.
    fn serial(&self) -> String {
        self.volume_id.chars().take(20).collect()
    }

    /// QMP `block_set_io_throttle` arguments for its QoS limits (all
    /// zero: none). A total limit wins over the read and write ones of
    /// the same kind, which QEMU refuses beside it.
    fn throttle(&self) -> serde_json::Value {
        let get = |k: &str| self.qos.get(k).copied().unwrap_or(0);
        let (bps, iops) = (get("total_bytes_sec"), get("total_iops_sec"));
        let pick = |total: u64, k: &str| if total > 0 { 0 } else { get(k) };
        serde_json::json!({
            // The block backend is the virtio-blk-pci proxy's inner
            // device's.
            "id": format!("/machine/peripheral/{}/virtio-backend", self.device_id()),
            "bps": bps,
            "bps_rd": pick(bps, "read_bytes_sec"),
            "bps_wr": pick(bps, "write_bytes_sec"),
            "iops": iops,
            "iops_rd": pick(iops, "read_iops_sec"),
            "iops_wr": pick(iops, "write_iops_sec"),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    uuid: String,
    hostname: String,
    image_id: String,
    vcpus: u32,
    memory_mb: u64,
    disk_gb: u64,
    #[serde(default)]
    nics: Vec<VmNic>,
    #[serde(default)]
    config_drive: bool,
    /// The image a rescue boots from (its overlay is `rescue.qcow2`, the
    /// VM's own disk is then the second disk); none when not rescued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rescue: Option<String>,
    /// Attached volumes (hot-plugged, and on the command line of every
    /// later start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<VmDisk>,
    /// A volume-backed VM's root disk (the volume's file), in place of
    /// `disk.qcow2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    root: Option<PathBuf>,
}

pub struct QemuDriver {
    /// `vms/` and `vm-images/` live here.
    root: PathBuf,
    qemu: PathBuf,
    qemu_img: PathBuf,
    genisoimage: Option<PathBuf>,
    /// Probed in the background when the driver starts (see
    /// [`probe_accel`]); whoever needs it first waits for it.
    accel: Arc<std::sync::OnceLock<Accel>>,
    version: u64,
    /// Where each VM's cgroup is made, when the host lets us.
    cgroup: Option<Cgroups>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    reboot_timeout: Duration,
    /// A live migration's limit in bytes/s, for the memory stream and
    /// the disk mirror each; 0 is none.
    migration_bandwidth: u64,
}

fn rt(msg: impl Into<String>) -> DriverError {
    DriverError::Runtime(msg.into())
}

/// The QEMU system emulator for this machine's architecture.
pub fn find_qemu() -> Option<PathBuf> {
    which(&format!("qemu-system-{}", std::env::consts::ARCH))
}

/// Runs a helper; its stdout, or its stderr in the error.
fn output(cmd: &mut Command, what: &str) -> Result<String, DriverError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| rt(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(rt(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The probe guest (`qemu_probe.S`, assembled): a boot sector that
/// enters long mode, writes to every cache line of 16..80 MiB four times
/// (page walks and memory, what a kernel's decompressor does) and then
/// writes `STRATUS-KVM-OK` to COM1 and halts. Under TCG it takes well
/// under a second; under a nested KVM without hardware paging it takes
/// tens of seconds, and a real kernel appears to hang.
const PROBE_CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0xbf, 0x00, 0x10, 0xb9, 0x00, 0x18, 0x31, 0xc0, 0xfc,
    0xf3, 0xab, 0x66, 0xc7, 0x06, 0x00, 0x10, 0x03, 0x20, 0x00, 0x00, 0x66, 0xc7, 0x06, 0x00, 0x20,
    0x03, 0x30, 0x00, 0x00, 0xbf, 0x00, 0x30, 0x66, 0xb8, 0x83, 0x00, 0x00, 0x00, 0xb9, 0x00, 0x02,
    0x66, 0x89, 0x05, 0x66, 0x05, 0x00, 0x00, 0x20, 0x00, 0x83, 0xc7, 0x08, 0xe2, 0xf2, 0x0f, 0x20,
    0xe0, 0x66, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0x66, 0xb8, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x22,
    0xd8, 0x66, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x66, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f,
    0x30, 0x66, 0x0f, 0x01, 0x16, 0xd0, 0x7c, 0x0f, 0x20, 0xc0, 0x66, 0x0d, 0x01, 0x00, 0x00, 0x80,
    0x0f, 0x22, 0xc0, 0x66, 0xea, 0x7b, 0x7c, 0x00, 0x00, 0x08, 0x00, 0x49, 0xc7, 0xc0, 0x04, 0x00,
    0x00, 0x00, 0x48, 0xc7, 0xc7, 0x00, 0x00, 0x00, 0x01, 0x48, 0x89, 0x3f, 0x48, 0x83, 0xc7, 0x40,
    0x48, 0x81, 0xff, 0x00, 0x00, 0x00, 0x05, 0x72, 0xf0, 0x49, 0xff, 0xc8, 0x75, 0xe4, 0x66, 0xba,
    0xf8, 0x03, 0x48, 0x8d, 0x35, 0x2d, 0x00, 0x00, 0x00, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb,
    0xf8, 0xf4, 0xeb, 0xfd, 0x0f, 0x1f, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00,
    0x17, 0x00, 0xb8, 0x7c, 0x00, 0x00, 0x53, 0x54, 0x52, 0x41, 0x54, 0x55, 0x53, 0x2d, 0x4b, 0x56,
    0x4d, 0x2d, 0x4f, 0x4b, 0x0a, 0x00,
];

fn probe_sector() -> Vec<u8> {
    let mut s = PROBE_CODE.to_vec();
    s.resize(510, 0);
    s.extend_from_slice(&[0x55, 0xaa]);
    s
}

/// How long the probe guest takes to run under `accel` here, if it
/// finishes within `limit`.
pub fn boot_time(qemu: &Path, accel: Accel, scratch: &Path, limit: Duration) -> Option<Duration> {
    if fs::create_dir_all(scratch).is_err() {
        return None;
    }
    let disk = scratch.join("probe.img");
    let out = scratch.join("probe.out");
    let _ = fs::remove_file(&out);
    if fs::write(&disk, probe_sector()).is_err() {
        return None;
    }
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", accel.flag(), "-cpu", accel.cpu()])
        .args(["-display", "none", "-nodefaults"])
        .args(["-no-user-config", "-m", "128", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The probe guest halts and waits forever: it goes with the thread
    // that waits for it, should the agent end first.
    // SAFETY: prctl is async-signal-safe and touches nothing shared.
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    let Ok(mut child) = child else { return None };
    let start = Instant::now();
    let mut took = None;
    while start.elapsed() < limit {
        if fs::read_to_string(&out).is_ok_and(|t| t.contains("STRATUS-KVM-OK")) {
            took = Some(start.elapsed());
            break;
        }
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_file(&disk);
    let _ = fs::remove_file(&out);
    took
}

/// How long a guest has to eject a volume's disk.
const UNPLUG_WAIT: Duration = Duration::from_secs(60);

/// How often an unplug is asked again while the guest has not acted. A
/// request made before the guest's ACPI is up (a guest still booting
/// after a start, reboot, rebuild or unrescue) is lost: the kernel
/// clears the event as it boots, and QEMU sends it again only when asked
/// again, 5 s of guest time after the last request (before that it
/// answers that the device is already being unplugged). Nova's libvirt
/// driver asks again likewise.
const UNPLUG_ASK_AGAIN: Duration = Duration::from_secs(6);

/// `device_del` of `dev`; a request already pending is not an error.
fn ask_unplug(q: &mut Qmp, dev: &str) -> Result<(), DriverError> {
    match q.execute("device_del", Some(serde_json::json!({"id": dev}))) {
        Err(e) if e.to_string().contains("already in the process of unplug") => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Where the probe's answer is kept for other agents of this machine
/// until it reboots (the key names QEMU's binary and the kernel).
const ACCEL_CACHE: &str = "/run/stratus-qemu-accel";

fn accel_key(qemu: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(qemu).ok();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // The probe's own version first: a better probe asks again.
    format!(
        "probe2 {} {} {} {}",
        qemu.display(),
        m.as_ref().map_or(0, |m| m.size()),
        m.as_ref().map_or(0, |m| m.mtime()),
        kernel.trim()
    )
}

/// KVM when `/dev/kvm` is usable and a guest really boots under it; TCG
/// otherwise. `STRATUS_QEMU_ACCEL=tcg|kvm|kvm-qemu64` decides without a
/// probe; a
/// probe's answer is kept in [`ACCEL_CACHE`] for the machine's other
/// agents.
pub fn probe_accel(qemu: &Path, scratch: &Path) -> Accel {
    if let Ok(want) = std::env::var("STRATUS_QEMU_ACCEL")
        && let Some(a) = Accel::ALL.into_iter().find(|a| a.key() == want)
    {
        return a;
    }
    let key = accel_key(qemu);
    if let Ok(text) = fs::read_to_string(ACCEL_CACHE)
        && let Some((k, a)) = text.trim_end().rsplit_once('\t')
        && k == key
        && let Some(a) = Accel::ALL.into_iter().find(|x| x.key() == a)
    {
        return a;
    }
    let found = probe_now(qemu, scratch);
    let tmp = format!("{ACCEL_CACHE}.{}", std::process::id());
    if fs::write(&tmp, format!("{key}\t{}\n", found.key())).is_ok() {
        let _ = fs::rename(&tmp, ACCEL_CACHE);
    }
    found
}

fn probe_now(qemu: &Path, scratch: &Path) -> Accel {
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !usable {
        return Accel::Tcg;
    }
    // KVM must boot the probe and be no slower than three times TCG.
    let tcg = boot_time(qemu, Accel::Tcg, scratch, Duration::from_secs(30));
    let limit = tcg.map_or(Duration::from_secs(10), |t| {
        (t * 3).max(Duration::from_secs(2))
    });
    for a in [Accel::Kvm, Accel::KvmBasic] {
        if let Some(t) = boot_time(qemu, a, scratch, limit) {
            tracing::info!(
                accel = a.key(),
                kvm_ms = t.as_millis() as u64,
                tcg_ms = tcg.map(|t| t.as_millis() as u64),
                "KVM runs guests"
            );
            return a;
        }
    }
    tracing::warn!(
        tcg_ms = tcg.map(|t| t.as_millis() as u64),
        "/dev/kvm is there but a guest does not run under it at a usable speed: VMs use TCG"
    );
    Accel::Tcg
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')))
            != Some(true)
}

impl QemuDriver {
    /// A driver keeping its files under `state_dir`, with QEMU found on
    /// `PATH`; probes the acceleration once.
    pub fn new(state_dir: &Path) -> Result<Self, DriverError> {
        let qemu = find_qemu().ok_or_else(|| {
            rt(format!(
                "qemu-system-{} is not installed (apt-get install qemu-system-x86)",
                std::env::consts::ARCH
            ))
        })?;
        let qemu_img = which("qemu-img")
            .ok_or_else(|| rt("qemu-img is not installed (apt-get install qemu-utils)"))?;
        let root = state_dir.to_path_buf();
        fs::create_dir_all(root.join("vms"))?;
        fs::create_dir_all(root.join("vm-images"))?;
        let accel: Arc<std::sync::OnceLock<Accel>> = Arc::default();
        {
            let (accel, qemu, scratch) = (accel.clone(), qemu.clone(), root.join("vm-probe"));
            std::thread::spawn(move || {
                let a = *accel.get_or_init(|| probe_accel(&qemu, &scratch));
                tracing::info!(accel = a.key(), "VM acceleration");
            });
        }
        let version = output(Command::new(&qemu).arg("--version"), "qemu --version")
            .map(|v| host::version_int(&v))
            .unwrap_or(0);
        let cgroup = Cgroups::find();
        if cgroup.is_none() {
            tracing::warn!("no writable cgroup hierarchy: VMs run without a CPU and memory cgroup");
        }
        let genisoimage = which("genisoimage").or_else(|| which("mkisofs"));
        if genisoimage.is_none() {
            tracing::warn!(
                "genisoimage is not installed (apt-get install genisoimage): VMs get no config drive"
            );
        }
        tracing::info!(qemu = %qemu.display(), "VM driver ready");
        Ok(QemuDriver {
            root,
            qemu,
            qemu_img,
            genisoimage,
            accel,
            version,
            cgroup,
            locks: Mutex::default(),
            image_locks: Mutex::default(),
            reboot_timeout: Duration::from_secs(60),
            migration_bandwidth: 0,
        })
    }

    /// Caps what a live migration out of this node sends, in MiB/s for
    /// its memory and its disk each (Nova's `live_migration_bandwidth`);
    /// 0 is no cap.
    pub fn with_migration_bandwidth(mut self, mib_per_s: u64) -> Self {
        self.migration_bandwidth = mib_per_s.saturating_mul(1 << 20);
        self
    }

    /// The migration parameters a migration starts with: the node's cap
    /// and QEMU's usual pause, or none and a long pause once forced.
    fn migration_parameters(&self, uuid: &str) -> serde_json::Value {
        // No cap is said with a cap no link reaches: QEMU before 8.1
        // reads a `max-bandwidth` of 0 as a cap of nothing (a buffer a
        // tick, about 13 MB/s here), only later ones as no cap.
        let uncapped = |b: u64| if b == 0 { NO_BANDWIDTH_CAP } else { b };
        if FORCED.get(uuid) {
            json!({"max-bandwidth": NO_BANDWIDTH_CAP, "downtime-limit": FORCED_DOWNTIME_MS})
        } else {
            json!({"max-bandwidth": uncapped(self.migration_bandwidth), "downtime-limit": DEFAULT_DOWNTIME_MS})
        }
    }

    /// How long a soft reboot waits for the guest to power off before it
    /// is cut (Nova's `reboot_timeout` idea).
    pub fn with_reboot_timeout(mut self, timeout: Duration) -> Self {
        self.reboot_timeout = timeout;
        self
    }

    /// The acceleration, once probed (waits for the probe).
    pub fn accel(&self) -> Accel {
        *self.accel.wait()
    }

    fn dir(&self, uuid: &str) -> PathBuf {
        self.root.join("vms").join(uuid)
    }

    fn base(&self, image_id: &str) -> PathBuf {
        self.root
            .join("vm-images")
            .join(format!("{image_id}.qcow2"))
    }

    /// Whether this driver has the instance.
    pub fn has(&self, uuid: &str) -> bool {
        valid_id(uuid) && self.dir(uuid).join("vm.json").exists()
    }

    fn record(&self, uuid: &str) -> Result<Record, DriverError> {
        if !valid_id(uuid) {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        let text = match fs::read(self.dir(uuid).join("vm.json")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DriverError::NotFound(uuid.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&text).map_err(|e| rt(format!("vm.json of {uuid}: {e}")))
    }

    fn write_record(&self, r: &Record) -> Result<(), DriverError> {
        let path = self.dir(&r.uuid).join("vm.json");
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(r).map_err(|e| rt(e.to_string()))?,
        )?;
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// The QEMU process of the instance, if it runs.
    fn pid(&self, uuid: &str) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.dir(uuid).join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The pid is ours only if that process is QEMU for this VM.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let mine = String::from_utf8_lossy(&cmdline).contains(&format!("guest={uuid}"));
        (mine && pid_alive(pid)).then_some(pid)
    }

    fn qmp(&self, uuid: &str) -> Result<Qmp, DriverError> {
        Qmp::connect(&self.dir(uuid).join("qmp.sock"))
    }

    /// Makes the base image of `spec` (once per image per node).
    fn ensure_base(&self, spec: &InstanceSpec) -> Result<PathBuf, DriverError> {
        let base = self.base(&spec.image_id);
        let lock = lock_of(&self.image_locks, &spec.image_id);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if base.exists() {
            return Ok(base);
        }
        let format = match spec.disk_format.as_str() {
            "qcow2" | "raw" | "vmdk" | "vdi" | "vhd" | "vhdx" => spec.disk_format.as_str(),
            "" => "raw",
            "vpc" => "vpc",
            other => {
                return Err(DriverError::InvalidImage(format!(
                    "disk_format {other} cannot boot a VM"
                )));
            }
        };
        let format = if format == "vhd" { "vpc" } else { format };
        // What the file really is must be what the image says it is.
        let info = output(
            Command::new(&self.qemu_img)
                .args(["info", "--output=json", "-f", format])
                .arg(&spec.image_file),
            "qemu-img info",
        )
        .map_err(|e| DriverError::InvalidImage(e.to_string()))?;
        let info: serde_json::Value = serde_json::from_str(&info)
            .map_err(|e| DriverError::InvalidImage(format!("qemu-img info: {e}")))?;
        if info.get("backing-filename").is_some() {
            return Err(DriverError::InvalidImage(
                "the image names a backing file; upload it flattened".into(),
            ));
        }
        let tmp = base.with_extension("qcow2.tmp");
        let _ = fs::remove_file(&tmp);
        output(
            Command::new(&self.qemu_img)
                .args(["convert", "-f", format, "-O", "qcow2"])
                .arg(&spec.image_file)
                .arg(&tmp),
            "qemu-img convert",
        )
        .map_err(|e| DriverError::InvalidImage(e.to_string()))?;
        fs::rename(&tmp, &base)?;
        Ok(base)
    }

    fn virtual_size(&self, file: &Path) -> Result<u64, DriverError> {
        let info = output(
            Command::new(&self.qemu_img)
                .args(["info", "--output=json", "-U"])
                .arg(file),
            "qemu-img info",
        )?;
        let v: serde_json::Value = serde_json::from_str(&info).map_err(|e| rt(e.to_string()))?;
        v["virtual-size"]
            .as_u64()
            .ok_or_else(|| rt("qemu-img info gave no virtual size"))
    }

    /// The config drive (ISO 9660, label `config-2`, the OpenStack
    /// layout); false when genisoimage is missing.
    fn config_drive(&self, spec: &InstanceSpec, dir: &Path) -> Result<bool, DriverError> {
        let Some(mkiso) = &self.genisoimage else {
            return Ok(false);
        };
        let tree = dir.join("config");
        for v in ["latest", "2012-08-10"] {
            let d = tree.join("openstack").join(v);
            fs::create_dir_all(&d)?;
            fs::write(d.join("meta_data.json"), &spec.meta_data_json)?;
            fs::write(d.join("network_data.json"), b"{}")?;
            fs::write(d.join("vendor_data.json"), b"{}")?;
            if let Some(u) = &spec.user_data {
                fs::write(d.join("user_data"), u)?;
            }
        }
        output(
            Command::new(mkiso)
                .args(["-o"])
                .arg(dir.join("config.iso"))
                .args(["-ldots", "-allow-lowercase", "-allow-multidot", "-l"])
                .args([
                    "-publisher",
                    "Stratus",
                    "-quiet",
                    "-J",
                    "-r",
                    "-V",
                    "config-2",
                ])
                .arg(&tree),
            "genisoimage",
        )?;
        Ok(true)
    }

    fn build(&self, spec: &InstanceSpec, dir: &Path) -> Result<(), DriverError> {
        if let Some(root) = &spec.root_disk {
            // Volume-backed: the volume is the disk; nothing to make.
            if !root.is_file() {
                return Err(rt(format!("the boot volume {} is missing", root.display())));
            }
            fs::create_dir_all(dir)?;
            let config_drive = self.config_drive(spec, dir)?;
            return self.write_record(&Record {
                uuid: spec.uuid.clone(),
                hostname: spec.hostname.clone(),
                image_id: String::new(),
                vcpus: spec.vcpus.max(1),
                memory_mb: spec.memory_mb.max(64),
                disk_gb: 0,
                nics: spec.vm_nics.clone(),
                config_drive,
                rescue: None,
                volumes: Vec::new(),
                root: Some(root.clone()),
            });
        }
        let base = self.ensure_base(spec)?;
        fs::create_dir_all(dir)?;
        let vsize = self.virtual_size(&base)?;
        let want = spec.disk_gb << 30;
        if want > 0 && want < vsize {
            return Err(DriverError::InvalidImage(format!(
                "the flavor's disk ({} GiB) is smaller than the image ({vsize} bytes)",
                spec.disk_gb
            )));
        }
        let mut create = Command::new(&self.qemu_img);
        create
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(dir.join("disk.qcow2"));
        if want > 0 {
            create.arg(want.to_string());
        }
        output(&mut create, "qemu-img create")?;
        let config_drive = self.config_drive(spec, dir)?;
        self.write_record(&Record {
            uuid: spec.uuid.clone(),
            hostname: spec.hostname.clone(),
            image_id: spec.image_id.clone(),
            vcpus: spec.vcpus.max(1),
            memory_mb: spec.memory_mb.max(64),
            disk_gb: spec.disk_gb,
            nics: spec.vm_nics.clone(),
            config_drive,
            rescue: None,
            volumes: Vec::new(),
            root: None,
        })
    }

    /// Builds the VM as a spawn would and starts QEMU waiting for a live
    /// migration on a TCP port the kernel picks; that port.
    fn prepare_incoming_locked(&self, spec: &InstanceSpec) -> Result<u16, DriverError> {
        let uuid = spec.uuid.as_str();
        let dir = self.dir(uuid);
        if dir.exists() {
            if self.pid(uuid).is_some() {
                // An earlier try's QEMU still waiting for its stream (one
                // aborted while its disk was mirrored is never sent one)
                // is replaced: the controller prepares one try at a time.
                let status = self
                    .qmp(uuid)
                    .and_then(|mut q| q.execute("query-status", None))
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string));
                if status.as_deref() != Some("inmigrate") {
                    return Err(rt(format!("VM {uuid} already runs on this node")));
                }
                tracing::info!(
                    instance = uuid,
                    "an earlier incoming migration still waited: replaced"
                );
                self.kill_locked(uuid)?;
                self.unconfine(uuid);
            }
            // What an earlier, failed try left.
            fs::remove_dir_all(&dir)?;
        }
        self.build(spec, &dir)?;
        let r = self.record(uuid)?;
        self.launch(&r, Some("defer"))?;
        let mut q = self.qmp(uuid)?;
        // The migration stream on port P, the disk (an NBD export of the
        // VM's root drive, written by the source's mirror) on P + 1.
        let port = free_port_pair()?;
        q.execute(
            "nbd-server-start",
            Some(json!({"addr": {"type": "inet", "data": {"host": "0.0.0.0", "port": (port + 1).to_string()}}})),
        )?;
        q.execute(
            "nbd-server-add",
            Some(json!({"device": ROOT_DRIVE, "writable": true})),
        )?;
        q.execute(
            "migrate-incoming",
            Some(json!({"uri": format!("tcp:0.0.0.0:{port}")})),
        )?;
        // The export goes once the migration has ended, either way.
        let sock = dir.join("qmp.sock");
        let id = uuid.to_string();
        std::thread::spawn(move || {
            let deadline = Instant::now() + LIVE_MIGRATION_TIMEOUT;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                let Ok(mut q) = Qmp::connect(&sock) else {
                    return;
                };
                let st = q
                    .execute("query-status", None)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string))
                    .unwrap_or_default();
                if st != "inmigrate" {
                    let _ = q.execute("nbd-server-stop", None);
                    tracing::info!(instance = %id, status = %st, "incoming migration ended; disk export stopped");
                    return;
                }
            }
        });
        Ok(port)
    }

    /// Streams the VM to `uri` with its disk (QEMU's block migration: no
    /// shared storage), then removes the local copy.
    fn migrate_out_locked(
        &self,
        uuid: &str,
        uri: &str,
        progress: &dyn Fn(&MigrationProgress),
    ) -> Result<(), DriverError> {
        self.record(uuid)?;
        if self.pid(uuid).is_none() {
            return Err(rt(format!("VM {uuid} is not running")));
        }
        // The disk first: a mirror of the root drive into the
        // destination's NBD export (port + 1 of the migration's), which
        // keeps it in step once copied; then the memory. (QEMU's block
        // migration, `blk`, is gone from QEMU 9.1 on; the mirror works
        // on every QEMU the agent runs with.)
        let (host, port) = uri
            .strip_prefix("tcp:")
            .and_then(|r| r.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| {
                rt(format!(
                    "cannot migrate to {uri}: a tcp:HOST:PORT address is needed"
                ))
            })?;
        ABORTED.set(uuid, false);
        FORCED.set(uuid, false);
        let start = Instant::now();
        let bytes = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let cancel_mirror = || {
            let _ = self.qmp(uuid).and_then(|mut q| {
                q.execute(
                    "block-job-cancel",
                    Some(json!({"device": MIRROR_JOB, "force": true})),
                )
            });
        };
        self.qmp(uuid)?.execute(
            "drive-mirror",
            Some(json!({
                "job-id": MIRROR_JOB, "device": ROOT_DRIVE,
                "target": format!("nbd:{host}:{}:exportname={ROOT_DRIVE}", port + 1),
                "format": "raw", "sync": "full", "mode": "existing",
                "speed": self.migration_bandwidth,
            })),
        )?;
        let mut disk_total;
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let jobs = self.qmp(uuid)?.execute("query-block-jobs", None)?;
            let Some(job) = jobs
                .as_array()
                .and_then(|a| a.iter().find(|j| j["device"] == MIRROR_JOB))
                .cloned()
            else {
                return Err(rt("the disk mirror to the destination stopped"));
            };
            disk_total = bytes(&job, "len");
            let done = bytes(&job, "offset");
            progress(&MigrationProgress {
                memory_total: 0,
                memory_processed: 0,
                memory_remaining: 0,
                disk_total,
                disk_processed: done,
                disk_remaining: disk_total.saturating_sub(done),
            });
            if ABORTED.get(uuid) {
                cancel_mirror();
                return Err(rt(
                    "the live migration cancelled: aborted while its disk was copied",
                ));
            }
            if job["ready"].as_bool() == Some(true) {
                break;
            }
            if start.elapsed() > LIVE_MIGRATION_TIMEOUT {
                cancel_mirror();
                return Err(rt(format!(
                    "the disk did not copy within {} s; the live migration was cancelled",
                    LIVE_MIGRATION_TIMEOUT.as_secs()
                )));
            }
        }
        if ABORTED.get(uuid) {
            cancel_mirror();
            return Err(rt(
                "the live migration cancelled: aborted while its disk was copied",
            ));
        }
        if let Err(e) = self.qmp(uuid).and_then(|mut q| {
            q.execute(
                "migrate-set-parameters",
                Some(self.migration_parameters(uuid)),
            )?;
            q.execute("migrate", Some(json!({"uri": uri})))
        }) {
            cancel_mirror();
            return Err(e);
        }
        let result = self.stream_out(uuid, start, progress, &|_| (disk_total, disk_total, 0));
        if result.is_err() {
            cancel_mirror();
        }
        result
    }

    /// Follows a `migrate` under way to its end, reporting the memory
    /// figures and the disk's from `disk(query-migrate)` (total, done,
    /// left); once completed the destination runs the VM and this copy
    /// goes.
    fn stream_out(
        &self,
        uuid: &str,
        start: Instant,
        progress: &dyn Fn(&MigrationProgress),
        disk: &dyn Fn(&serde_json::Value) -> (u64, u64, u64),
    ) -> Result<(), DriverError> {
        let bytes = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let info = loop {
            std::thread::sleep(Duration::from_millis(200));
            // A connection per look: QEMU serves one QMP client at a time
            // and power-state reads must not wait behind a long migration.
            let info = self.qmp(uuid)?.execute("query-migrate", None)?;
            let ram = &info["ram"];
            let (disk_total, disk_processed, disk_remaining) = disk(&info);
            progress(&MigrationProgress {
                memory_total: bytes(ram, "total"),
                memory_processed: bytes(ram, "transferred"),
                memory_remaining: bytes(ram, "remaining"),
                disk_total,
                disk_processed,
                disk_remaining,
            });
            match info["status"].as_str().unwrap_or("") {
                "completed" => break info,
                "failed" | "cancelled" => {
                    return Err(rt(format!(
                        "the live migration {}: {}",
                        info["status"].as_str().unwrap_or(""),
                        info["error-desc"].as_str().unwrap_or("no reason given")
                    )));
                }
                _ if start.elapsed() > LIVE_MIGRATION_TIMEOUT => {
                    let _ = self
                        .qmp(uuid)
                        .and_then(|mut q| q.execute("migrate_cancel", None));
                    return Err(rt(format!(
                        "the live migration did not complete within {} s and was cancelled",
                        LIVE_MIGRATION_TIMEOUT.as_secs()
                    )));
                }
                _ => {}
            }
        };
        tracing::info!(
            instance = uuid,
            total_ms = start.elapsed().as_millis() as u64,
            downtime_ms = info["downtime"].as_u64().unwrap_or(0),
            "live migration completed"
        );
        // The destination runs it: this copy goes.
        self.kill_locked(uuid)?;
        self.unconfine(uuid);
        fs::remove_dir_all(self.dir(uuid))?;
        Ok(())
    }

    /// Boots the VM from the rescue image's disk (its own disk second).
    fn rescue_locked(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let uuid = spec.uuid.as_str();
        let mut r = self.record(uuid)?;
        if r.rescue.is_some() {
            // A retried rescue: make sure it runs.
            return self.start_locked(uuid);
        }
        let was_running = self.pid(uuid).is_some();
        let dir = self.dir(uuid);
        self.stop_locked(uuid, self.reboot_timeout)?;
        let _ = fs::remove_file(dir.join("saved.state"));
        let base = self.ensure_base(spec)?;
        let overlay = dir.join("rescue.qcow2");
        let _ = fs::remove_file(&overlay);
        let built = output(
            Command::new(&self.qemu_img)
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&base)
                .arg(&overlay),
            "qemu-img create",
        );
        let result = built.and_then(|_| {
            r.rescue = Some(spec.image_id.clone());
            self.write_record(&r)?;
            self.start_locked(uuid)
        });
        if let Err(e) = result {
            // Back to how it was.
            let _ = self.kill_locked(uuid);
            r.rescue = None;
            let _ = self.write_record(&r);
            let _ = fs::remove_file(&overlay);
            if was_running && let Err(e) = self.start_locked(uuid) {
                tracing::warn!(instance = uuid, error = %e, "could not start again after a failed rescue");
            }
            return Err(e);
        }
        tracing::info!(instance = uuid, rescue_image = %spec.image_id, "VM booted from its rescue disk");
        Ok(())
    }

    /// Makes the VM's NICs what `want` makes of its present ones: hot
    /// (un)plugged into a running VM, on the command line of a stopped
    /// one's next start.
    fn change_nics(
        &self,
        uuid: &str,
        want: impl FnOnce(&[VmNic]) -> Vec<VmNic>,
    ) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.record(uuid)?;
        let nics = want(&r.nics);
        if r.nics == nics {
            return Ok(());
        }
        if self.pid(uuid).is_some() {
            let mut q = self.qmp(uuid)?;
            for gone in r.nics.iter().filter(|n| !nics.contains(n)) {
                QemuDriver::unplug_nic(&mut q, gone);
                tracing::info!(instance = uuid, tap = %gone.tap, "NIC unplugged");
            }
            for new in nics.iter().filter(|n| !r.nics.contains(n)) {
                q.execute(
                    "netdev_add",
                    Some(serde_json::json!({
                        "type": "tap", "id": new.netdev_id(), "ifname": new.tap,
                        "script": "no", "downscript": "no",
                    })),
                )?;
                let mut args = serde_json::json!({
                    "driver": "virtio-net-pci", "netdev": new.netdev_id(),
                    "id": new.device_id(), "mac": new.mac,
                });
                if new.slot > 0 {
                    args["addr"] = format!("{:#x}", new.slot).into();
                }
                if let Err(e) = q.execute("device_add", Some(args)) {
                    let _ = q.execute(
                        "netdev_del",
                        Some(serde_json::json!({"id": new.netdev_id()})),
                    );
                    return Err(e);
                }
                tracing::info!(instance = uuid, tap = %new.tap, "NIC plugged in");
            }
        }
        r.nics = nics;
        self.write_record(&r)
    }

    /// Takes a NIC out of a running VM: asks the guest to eject it, waits a
    /// while for the device to go, then drops its tap backend. A guest that
    /// never ejects it keeps a NIC with no link until its next start.
    fn unplug_nic(q: &mut Qmp, n: &VmNic) {
        let dev = n.device_id();
        if ask_unplug(q, &dev).is_ok() {
            let start = Instant::now();
            let mut asked = start;
            while start.elapsed() < Duration::from_secs(20) {
                let present = q
                    .execute(
                        "qom-list",
                        Some(serde_json::json!({"path": "/machine/peripheral"})),
                    )
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .is_some_and(|l| l.iter().any(|p| p["name"] == dev.as_str()));
                if !present {
                    break;
                }
                if asked.elapsed() >= UNPLUG_ASK_AGAIN {
                    let _ = ask_unplug(q, &dev);
                    asked = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let _ = q.execute("netdev_del", Some(serde_json::json!({"id": n.netdev_id()})));
    }

    /// The ids of the volume disks the running QEMU has.
    fn disk_devices(q: &mut Qmp) -> Result<Vec<String>, DriverError> {
        let l = q.execute(
            "qom-list",
            Some(serde_json::json!({"path": "/machine/peripheral"})),
        )?;
        Ok(l.as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|p| p["name"].as_str())
                    .filter(|n| n.starts_with("disk-"))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Takes a volume disk out of a running VM: `device_del`, asked
    /// again every few seconds (see [`UNPLUG_ASK_AGAIN`]) until the guest
    /// ejects it or [`UNPLUG_WAIT`] is up, then drops its block node. An
    /// error when the guest keeps it (the volume stays attached).
    fn unplug_disk(q: &mut Qmp, dev: &str) -> Result<(), DriverError> {
        ask_unplug(q, dev)?;
        let start = Instant::now();
        let mut asked = start;
        loop {
            if !QemuDriver::disk_devices(q)?.iter().any(|d| d == dev) {
                break;
            }
            if start.elapsed() > UNPLUG_WAIT {
                return Err(rt(format!(
                    "the guest did not release {dev} within {} s",
                    UNPLUG_WAIT.as_secs()
                )));
            }
            if asked.elapsed() >= UNPLUG_ASK_AGAIN {
                let _ = ask_unplug(q, dev);
                asked = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let short = dev.trim_start_matches("disk-");
        // The device's going may take its block node with it; after a
        // swap the node is `vol-vdb-s`.
        for node in [format!("vol-{short}"), format!("vol-{short}-s")] {
            QemuDriver::drop_node(q, &node);
        }
        Ok(())
    }

    /// Deletes block node `node` and its TLS credentials (an NBD
    /// volume's), when there are any.
    fn drop_node(q: &mut Qmp, node: &str) {
        let _ = q.execute("blockdev-del", Some(serde_json::json!({"node-name": node})));
        let _ = q.execute("object-del", Some(serde_json::json!({"id": tls_of(node)})));
    }

    /// What backs each volume disk of the running VM, by device id
    /// (`disk-vdb`).
    fn disk_backings(q: &mut Qmp) -> Result<HashMap<String, Backing>, DriverError> {
        let l = q.execute("query-block", None)?;
        let mut out = HashMap::new();
        for b in l.as_array().into_iter().flatten() {
            let Some(dev) = b["qdev"]
                .as_str()
                .and_then(|p| p.strip_prefix("/machine/peripheral/"))
                .and_then(|p| p.split('/').next())
                .filter(|d| d.starts_with("disk-"))
            else {
                continue;
            };
            let i = &b["inserted"];
            let (Some(node), Some(file)) = (i["node-name"].as_str(), i["file"].as_str()) else {
                continue;
            };
            out.insert(
                dev.to_string(),
                Backing {
                    node: node.to_string(),
                    file: file.to_string(),
                    size: i["image"]["virtual-size"].as_u64().unwrap_or(0),
                },
            );
        }
        Ok(out)
    }

    /// Whether block job `job` is still there, and ready to complete.
    fn job_state(&self, uuid: &str, job: &str) -> Result<Option<bool>, DriverError> {
        let jobs = self.qmp(uuid)?.execute("query-block-jobs", None)?;
        Ok(jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["device"].as_str() == Some(job))
            .map(|j| j["ready"].as_bool().unwrap_or(false)))
    }

    /// Cancels block job `job` (a swap's copy) and waits until it has
    /// gone.
    fn cancel_job(&self, uuid: &str, job: &str) {
        let _ = self.qmp(uuid).and_then(|mut q| {
            q.execute(
                "block-job-cancel",
                Some(serde_json::json!({"device": job, "force": true})),
            )
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !matches!(self.job_state(uuid, job), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Swaps the volume under device `d` of a running VM for `d`'s
    /// (Nova's swap volume): the new volume is opened as a second block
    /// node, QEMU's block mirror copies the old one onto it while the
    /// guest runs and keeps writing (each write goes to both), and
    /// completing the mirror moves the device onto the new node, which
    /// the guest does not notice. The old node is closed after. The
    /// mirror wants a target of the source's size: a larger new volume
    /// is cut to it for the copy and grown back after (the guest sees
    /// the new size then). Any failure cancels the copy and leaves the
    /// old volume in place. Each step opens its own QMP connection, so
    /// a long copy does not keep others off the VM's monitor.
    fn swap_disk(&self, uuid: &str, d: &VmDisk, old: &Backing) -> Result<(), DriverError> {
        let target = d.other_node(&old.node);
        let job = format!("swap-{}", d.short());
        // A copy left by an agent that stopped during it starts over.
        if self.job_state(uuid, &job)?.is_some() {
            self.cancel_job(uuid, &job);
        }
        let mut q = self.qmp(uuid)?;
        QemuDriver::drop_node(&mut q, &target);
        if let Some(tls) = d.tls_object_for(&self.dir(uuid), &target)? {
            q.execute("object-add", Some(tls))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match q.execute("blockdev-add", Some(d.blockdev_as(&target))) {
                Ok(_) => break,
                // The storage node exports the new volume once it has
                // seen the swap.
                Err(_) if d.nbd.is_some() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500))
                }
                Err(e) => {
                    QemuDriver::drop_node(&mut q, &target);
                    return Err(e);
                }
            }
        }
        let size = match QemuDriver::disk_size(&mut q, &target) {
            Ok(n) => n,
            Err(e) => {
                QemuDriver::drop_node(&mut q, &target);
                return Err(e);
            }
        };
        let copy = (|| {
            if size != old.size {
                q.execute(
                    "block_resize",
                    Some(serde_json::json!({"node-name": target, "size": old.size})),
                )?;
            }
            q.execute(
                "blockdev-mirror",
                Some(serde_json::json!({
                    "job-id": job, "device": old.node, "target": target, "sync": "full",
                })),
            )?;
            drop(q);
            // The copy runs at disk speed: a minute per GiB under a
            // slow disk is still waited for.
            let gib = old.size.div_ceil(1 << 30).max(1);
            let deadline = Instant::now() + Duration::from_secs(60 * gib + 60);
            loop {
                match self.job_state(uuid, &job)? {
                    Some(true) => break,
                    Some(false) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(250))
                    }
                    Some(false) => return Err(rt(format!("copying {} timed out", d.device))),
                    None => {
                        return Err(rt(format!(
                            "the copy of {} onto the new volume stopped (a read or write failed)",
                            d.device
                        )));
                    }
                }
            }
            self.qmp(uuid)?
                .execute("job-complete", Some(serde_json::json!({"id": job})))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut q = self.qmp(uuid)?;
                let on = QemuDriver::disk_backings(&mut q)?;
                if on.get(&d.device_id()).is_some_and(|b| b.node == target) {
                    return Ok(());
                }
                drop(q);
                if Instant::now() > deadline || self.job_state(uuid, &job)?.is_none() {
                    return Err(rt(format!(
                        "the guest's {} did not move onto the new volume",
                        d.device
                    )));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })();
        // Whatever the error, what counts is where the guest's disk is:
        // once it is on the new node the swap is done (the job may have
        // gone between two looks).
        let moved = || {
            self.qmp(uuid)
                .and_then(|mut q| QemuDriver::disk_backings(&mut q))
                .is_ok_and(|b| b.get(&d.device_id()).is_some_and(|b| b.node == target))
        };
        if let Err(e) = copy
            && !moved()
        {
            self.cancel_job(uuid, &job);
            if let Ok(mut q) = self.qmp(uuid) {
                // The new volume back at its own size (it was cut to the
                // old one's for the copy), then closed.
                if size != old.size {
                    let _ = q.execute(
                        "block_resize",
                        Some(serde_json::json!({"node-name": target, "size": size})),
                    );
                }
                QemuDriver::drop_node(&mut q, &target);
            }
            return Err(e);
        }
        let mut q = self.qmp(uuid)?;
        QemuDriver::drop_node(&mut q, &old.node);
        tracing::info!(instance = uuid, volume = %d.volume_id, device = %d.device, "volume swapped in");
        Ok(())
    }

    /// Grows the disk on `b` to `bytes` when it is smaller (`block_resize`:
    /// QEMU grows the image and tells the guest); whether it grew.
    fn grow_disk(q: &mut Qmp, b: &Backing, bytes: u64) -> Result<bool, DriverError> {
        if b.size >= bytes {
            return Ok(false);
        }
        q.execute(
            "block_resize",
            Some(serde_json::json!({"node-name": b.node, "size": bytes})),
        )?;
        Ok(true)
    }

    /// The virtual size of block node `node`, in bytes.
    fn disk_size(q: &mut Qmp, node: &str) -> Result<u64, DriverError> {
        let nodes = q.execute(
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        )?;
        nodes
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node-name"].as_str() == Some(node))
            .and_then(|n| n["image"]["virtual-size"].as_u64())
            .ok_or_else(|| rt(format!("block node {node} has no size")))
    }

    /// QEMU's command line for the VM; `incoming` is `-incoming`'s value
    /// (a saved state to load, or `defer` for a live migration).
    fn args(&self, r: &Record, dir: &Path, incoming: Option<&str>) -> Vec<String> {
        let d = |f: &str| dir.join(f).display().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("guest={},debug-threads=on", r.uuid),
            "-uuid".into(),
            r.uuid.clone(),
            "-machine".into(),
            format!("pc,accel={}", self.accel().flag()),
            "-cpu".into(),
            self.accel().cpu().into(),
            "-m".into(),
            r.memory_mb.to_string(),
            "-smp".into(),
            r.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", d("qmp.sock")),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            // The serial port is a socket a remote console joins (one
            // client at a time), and QEMU logs all it writes to the
            // console file whether anyone is joined or not.
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                d("serial.sock"),
                d("console.log")
            ),
            "-serial".into(),
            "chardev:serial0".into(),
        ];
        // Rescued: the rescue disk boots, the VM's own disk comes second.
        let own = match &r.root {
            Some(p) => p.display().to_string(),
            None => d("disk.qcow2"),
        };
        let disks = if r.rescue.is_some() {
            vec![d("rescue.qcow2"), own]
        } else {
            vec![own]
        };
        for disk in disks {
            a.push("-drive".into());
            a.push(format!(
                "file={},format=qcow2,if=virtio,cache=writeback,discard=unmap",
                disk.replace(',', ",,")
            ));
        }
        if r.config_drive {
            a.push("-drive".into());
            a.push(format!(
                "file={},format=raw,if=virtio,readonly=on",
                d("config.iso")
            ));
        }
        for v in &r.volumes {
            if let Ok(Some(tls)) = v.tls_object(dir) {
                a.push("-object".into());
                a.push(tls.to_string());
            }
            a.push("-blockdev".into());
            a.push(v.blockdev().to_string());
            a.push("-device".into());
            let mut dev = format!(
                "virtio-blk-pci,drive={},id={},serial={}",
                v.node_name(),
                v.device_id(),
                v.serial()
            );
            if let Some(slot) = v.slot() {
                dev.push_str(&format!(",addr={slot:#x}"));
            }
            a.push(dev);
        }
        for n in &r.nics {
            a.push("-netdev".into());
            a.push(format!(
                "tap,id={},ifname={},script=no,downscript=no",
                n.netdev_id(),
                n.tap
            ));
            a.push("-device".into());
            a.push(n.device());
        }
        if let Some(from) = incoming {
            a.push("-incoming".into());
            a.push(from.to_string());
        }
        a.extend(["-pidfile".into(), d("qemu.pid"), "-daemonize".into()]);
        a
    }

    /// Runs QEMU for the VM (daemonised, in its cgroup).
    fn launch(&self, r: &Record, incoming: Option<&str>) -> Result<(), DriverError> {
        let dir = self.dir(&r.uuid);
        let _ = fs::remove_file(dir.join("qmp.sock"));
        let _ = fs::remove_file(dir.join("qemu.pid"));
        // A volume file still held by the storage node's export (the
        // server came back to the volume's node a moment ago) is waited
        // for: the export lets it go once the node has seen the move.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = fs::File::create(dir.join("qemu.log"))?;
            let status = Command::new(&self.qemu)
                .args(self.args(r, &dir, incoming))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .status()
                .map_err(|e| rt(format!("running {}: {e}", self.qemu.display())))?;
            if status.success() {
                break;
            }
            let why = fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
            if r.volumes.is_empty() || !why.contains("lock") || Instant::now() > deadline {
                return Err(rt(format!("QEMU did not start: {}", why.trim())));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let pid = self
            .pid(&r.uuid)
            .ok_or_else(|| rt("QEMU started but its pid file names no QEMU"))?;
        self.confine(r, pid);
        if !r.volumes.is_empty() {
            // QEMU's monitor is up once it has daemonised.
            match self.qmp(&r.uuid) {
                Ok(mut q) => QemuDriver::set_throttles(&mut q, &r.volumes),
                Err(e) => {
                    tracing::warn!(instance = %r.uuid, error = %e, "no QMP to throttle volumes")
                }
            }
        }
        Ok(())
    }

    /// Applies each volume's QoS limits (and lifts removed ones).
    fn set_throttles(q: &mut Qmp, disks: &[VmDisk]) {
        for d in disks {
            if let Err(e) = q.execute("block_set_io_throttle", Some(d.throttle())) {
                tracing::warn!(device = %d.device, error = %e, "could not apply the volume's QoS limits");
            }
        }
    }

    fn start_locked(&self, uuid: &str) -> Result<(), DriverError> {
        let r = self.record(uuid)?;
        if self.pid(uuid).is_some() {
            // Running, or paused by a pause: a start leaves it as it is;
            // after a stop that QEMU outlived (`-no-shutdown` is not
            // used, so that is a guest still shutting down) wait it out.
            return Ok(());
        }
        let dir = self.dir(uuid);
        let saved = dir.join("saved.state");
        let incoming = saved.exists();
        let from = format!("exec:cat {}", saved.display());
        self.launch(&r, incoming.then_some(from.as_str()))?;
        if incoming {
            // The saved state loads, then the guest runs on.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match self.qmp(uuid).and_then(|mut q| q.status()) {
                    Ok(s) if s == "running" => break,
                    Ok(s) if s == "paused" || s == "postmigrate" => {
                        self.qmp(uuid)?.execute("cont", None)?;
                        break;
                    }
                    _ if Instant::now() > deadline => {
                        return Err(rt("the saved state did not load within 120 s"));
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            let _ = fs::remove_file(&saved);
        }
        Ok(())
    }

    /// Moves QEMU into its own cgroup with the flavor's limits.
    fn confine(&self, r: &Record, pid: u32) {
        let Some(cg) = &self.cgroup else { return };
        let memory = (r.memory_mb + OVERHEAD_MB) << 20;
        let quota = r.vcpus as u64 * 100_000;
        let result = (|| -> std::io::Result<()> {
            match cg {
                Cgroups::V2(root) => {
                    let d = root.join(&r.uuid);
                    fs::create_dir_all(&d)?;
                    fs::write(d.join("memory.max"), memory.to_string())?;
                    fs::write(d.join("cpu.max"), format!("{quota} 100000"))?;
                    fs::write(d.join("cgroup.procs"), pid.to_string())?;
                }
                Cgroups::V1 { memory: m, cpu } => {
                    let (dm, dc) = (m.join(&r.uuid), cpu.join(&r.uuid));
                    fs::create_dir_all(&dm)?;
                    fs::create_dir_all(&dc)?;
                    fs::write(dm.join("memory.limit_in_bytes"), memory.to_string())?;
                    fs::write(dc.join("cpu.cfs_period_us"), "100000")?;
                    fs::write(dc.join("cpu.cfs_quota_us"), quota.to_string())?;
                    fs::write(dm.join("cgroup.procs"), pid.to_string())?;
                    fs::write(dc.join("cgroup.procs"), pid.to_string())?;
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(instance = %r.uuid, error = %e, "could not put QEMU in its cgroup");
        }
    }

    fn unconfine(&self, uuid: &str) {
        match &self.cgroup {
            Some(Cgroups::V2(root)) => {
                let _ = fs::remove_dir(root.join(uuid));
            }
            Some(Cgroups::V1 { memory, cpu }) => {
                let _ = fs::remove_dir(memory.join(uuid));
                let _ = fs::remove_dir(cpu.join(uuid));
            }
            None => {}
        }
    }

    fn wait_gone(&self, uuid: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.pid(uuid).is_none() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends QEMU now: `quit`, then SIGKILL.
    fn kill_locked(&self, uuid: &str) -> Result<(), DriverError> {
        let Some(pid) = self.pid(uuid) else {
            return Ok(());
        };
        if let Ok(mut q) = self.qmp(uuid) {
            let _ = q.execute("quit", None);
        }
        if !self.wait_gone(uuid, Duration::from_secs(5)) {
            // SAFETY: kill(2) with a pid we checked is this VM's QEMU.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            if !self.wait_gone(uuid, Duration::from_secs(5)) {
                return Err(rt(format!("QEMU {pid} of {uuid} does not die")));
            }
        }
        Ok(())
    }

    fn stop_locked(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        self.record(uuid)?;
        if self.pid(uuid).is_none() {
            return Ok(());
        }
        // A paused guest cannot see the power button.
        let running = self
            .qmp(uuid)
            .and_then(|mut q| q.status())
            .is_ok_and(|s| s == "running");
        if running {
            // Pressed again every few seconds, as Nova's libvirt driver
            // does: a guest still booting misses a press.
            let start = Instant::now();
            while start.elapsed() < timeout {
                let _ = self
                    .qmp(uuid)
                    .and_then(|mut q| q.execute("system_powerdown", None));
                let left = timeout.saturating_sub(start.elapsed());
                if self.wait_gone(uuid, left.min(POWER_BUTTON_RETRY)) {
                    return Ok(());
                }
            }
            tracing::info!(instance = %uuid, "guest ignored the power button; cutting power");
        }
        self.kill_locked(uuid)
    }

    /// Moves a big console file's tail to `console.log.1`.
    fn rotate_console(&self, uuid: &str) {
        let dir = self.dir(uuid);
        let cur = dir.join("console.log");
        let Ok(meta) = fs::metadata(&cur) else { return };
        if meta.len() < CONSOLE_ROTATE {
            return;
        }
        let result = (|| -> std::io::Result<()> {
            let mut f = fs::File::open(&cur)?;
            f.seek(SeekFrom::Start(meta.len() - CONSOLE_MAX))?;
            let mut tail = Vec::new();
            f.read_to_end(&mut tail)?;
            fs::write(dir.join("console.log.1"), &tail)?;
            // QEMU appends (O_APPEND): it goes on at the new end.
            fs::OpenOptions::new().write(true).open(&cur)?.set_len(0)?;
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!(instance = %uuid, error = %e, "could not rotate the console log");
        }
    }

    /// Saves the VM's state to disk and ends QEMU (Nova's suspend).
    fn save_locked(&self, uuid: &str) -> Result<(), DriverError> {
        if self.pid(uuid).is_none() {
            return Ok(());
        }
        let dir = self.dir(uuid);
        let tmp = dir.join("saved.state.tmp");
        let _ = fs::remove_file(&tmp);
        let mut q = self.qmp(uuid)?;
        q.execute("stop", None)?;
        q.execute(
            "migrate",
            Some(json!({"uri": format!("exec:cat > {}", tmp.display())})),
        )?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let m = q.execute("query-migrate", None)?;
            match m["status"].as_str().unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    let _ = q.execute("cont", None);
                    return Err(rt(format!(
                        "saving the VM failed: {}",
                        m["error-desc"].as_str().unwrap_or("unknown")
                    )));
                }
                _ if Instant::now() > deadline => {
                    let _ = q.execute("migrate_cancel", None);
                    let _ = q.execute("cont", None);
                    return Err(rt("saving the VM took over 300 s"));
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        fs::rename(&tmp, dir.join("saved.state"))?;
        drop(q);
        self.kill_locked(uuid)
    }
}

impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn runs_vms(&self) -> bool {
        true
    }

    fn host_resources(&self) -> HostResources {
        let (vcpus, cpu_model) = host::cpus();
        HostResources {
            vcpus,
            memory_mb: host::memory_mb(),
            disk_gb: host::disk_gb(&self.root),
            arch: std::env::consts::ARCH.to_string(),
            // QEMU until the probe has said whether it is KVM.
            hypervisor_type: self
                .accel
                .get()
                .map_or("QEMU", |a| a.hypervisor_type())
                .into(),
            hypervisor_version: self.version,
            cpu_model,
        }
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        if !valid_id(&spec.uuid) {
            return Err(rt(format!("instance id {:?} is not usable", spec.uuid)));
        }
        let lock = lock_of(&self.locks, &spec.uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir(&spec.uuid);
        if dir.join("vm.json").exists() {
            // Ports may have changed since it was built.
            let mut r = self.record(&spec.uuid)?;
            if r.nics != spec.vm_nics && self.pid(&spec.uuid).is_none() {
                r.nics = spec.vm_nics.clone();
                self.write_record(&r)?;
            }
            return self.start_locked(&spec.uuid);
        }
        if dir.exists() {
            // Left half-built by a crash: start over.
            fs::remove_dir_all(&dir)?;
        }
        let t = Instant::now();
        let result = self
            .build(spec, &dir)
            .and_then(|()| self.start_locked(&spec.uuid));
        if let Err(e) = result {
            let _ = self.kill_locked(&spec.uuid);
            if let Ok(log) = fs::read_to_string(dir.join("qemu.log")) {
                tracing::warn!(instance = %spec.uuid, qemu = %log.trim(), "spawn failed");
            }
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::info!(instance = %spec.uuid, elapsed_ms = t.elapsed().as_millis() as u64,
            accel = self.accel().key(), "spawned VM");
        Ok(())
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.start_locked(uuid)
    }

    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_locked(uuid, timeout)
    }

    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        if hard {
            self.kill_locked(uuid)?;
        } else {
            self.stop_locked(uuid, self.reboot_timeout)?;
        }
        // A suspended VM's saved state is dropped by a reboot.
        let _ = fs::remove_file(self.dir(uuid).join("saved.state"));
        self.start_locked(uuid)
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        if self.pid(uuid).is_none() {
            return Err(rt(format!("VM {uuid} is not running")));
        }
        self.qmp(uuid)?.execute("stop", None).map(|_| ())
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        if self.pid(uuid).is_none() {
            return self.start_locked(uuid);
        }
        self.qmp(uuid)?.execute("cont", None).map(|_| ())
    }

    fn suspend(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        self.save_locked(uuid)
    }

    fn resume(&self, uuid: &str) -> Result<(), DriverError> {
        self.unpause(uuid)
    }

    fn prepare_incoming(&self, spec: &InstanceSpec) -> Result<u16, DriverError> {
        if !valid_id(&spec.uuid) {
            return Err(rt(format!("instance id {:?} is not usable", spec.uuid)));
        }
        let lock = lock_of(&self.locks, &spec.uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.prepare_incoming_locked(spec);
        if result.is_err() {
            let _ = self.kill_locked(&spec.uuid);
            self.unconfine(&spec.uuid);
            let _ = fs::remove_dir_all(self.dir(&spec.uuid));
        }
        result
    }

    fn migrate_out(
        &self,
        uuid: &str,
        uri: &str,
        progress: &dyn Fn(&MigrationProgress),
    ) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.migrate_out_locked(uuid, uri, progress)
    }

    fn rescue(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, &spec.uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.rescue_locked(spec)
    }

    fn unrescue(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.record(uuid)?;
        if r.rescue.is_some() {
            // The rescue disk is thrown away: no clean shutdown needed.
            self.kill_locked(uuid)?;
            r.rescue = None;
            self.write_record(&r)?;
            let _ = fs::remove_file(self.dir(uuid).join("rescue.qcow2"));
        }
        self.start_locked(uuid)
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        if !valid_id(uuid) {
            return Ok(());
        }
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.dir(uuid);
        if !dir.exists() {
            return Ok(());
        }
        self.kill_locked(uuid)?;
        self.unconfine(uuid);
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        if !self.has(uuid) {
            return PowerState::NoState;
        }
        self.rotate_console(uuid);
        if self.pid(uuid).is_none() {
            return if self.dir(uuid).join("saved.state").exists() {
                PowerState::Suspended
            } else {
                PowerState::Shutdown
            };
        }
        match self.qmp(uuid).and_then(|mut q| q.status()) {
            Ok(s) => match s.as_str() {
                "running" | "inmigrate" | "prelaunch" | "finish-migrate" => PowerState::Running,
                "paused"
                    if QUIESCING
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(uuid) =>
                {
                    PowerState::Running
                }
                "paused" | "suspended" | "postmigrate" | "save-vm" | "restore-vm" => {
                    PowerState::Paused
                }
                "shutdown" => PowerState::Shutdown,
                "internal-error" | "io-error" | "guest-panicked" => PowerState::Crashed,
                _ => PowerState::NoState,
            },
            // QEMU runs but does not answer: starting, or stuck.
            Err(_) => PowerState::Running,
        }
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        let Ok(entries) = fs::read_dir(self.root.join("vms")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| self.has(id))
            .map(|id| {
                let p = self.power_state(&id);
                (id, p)
            })
            .collect()
    }

    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError> {
        self.record(uuid)?;
        let dir = self.dir(uuid);
        crate::console_tail(
            &[dir.join("console.log.1"), dir.join("console.log")],
            tail_lines,
        )
    }

    /// Without the VM's lock: `migrate_out` holds it for the whole stream
    /// and looks at QEMU's progress on a connection of its own per look.
    fn steer_migration(&self, uuid: &str, abort: bool) -> Result<(), DriverError> {
        self.record(uuid)?;
        let mut q = self.qmp(uuid)?;
        if abort {
            ABORTED.set(uuid, true);
            q.execute("migrate_cancel", None)?;
            tracing::info!(instance = uuid, "live migration cancelled");
        } else {
            // No cap any more, and QEMU pauses the guest for the rest
            // once it fits in the limit; a disk still being mirrored goes
            // at full speed, and the memory after it.
            FORCED.set(uuid, true);
            let _ = q.execute(
                "block-job-set-speed",
                Some(json!({"device": MIRROR_JOB, "speed": 0})),
            );
            q.execute(
                "migrate-set-parameters",
                Some(self.migration_parameters(uuid)),
            )?;
            tracing::info!(instance = uuid, "live migration forced to complete");
        }
        Ok(())
    }

    /// Hot-plugs and unplugs NICs of a running VM (QMP `netdev_add` and
    /// `device_add`; `device_del`, which the guest acknowledges by
    /// ejecting the device, then `netdev_del`); a stopped VM gets them at
    /// its next start.
    fn set_nics(&self, uuid: &str, nics: &[VmNic]) -> Result<(), DriverError> {
        self.change_nics(uuid, |_| nics.to_vec())
    }

    fn unplug_nics(&self, uuid: &str, gone: &[VmNic]) -> Result<(), DriverError> {
        self.change_nics(uuid, |now| {
            now.iter().filter(|n| !gone.contains(n)).cloned().collect()
        })
    }

    /// Makes the VM's volumes `disks`, reconciled against what the
    /// running QEMU has (QMP `qom-list` of its devices), not against our
    /// record: after a crash between a hot-plug and the record's write the
    /// device is found and kept. Plugs with `blockdev-add` (qcow2 over a
    /// file node) and `device_add virtio-blk-pci`; unplugs with
    /// `device_del` (the guest ejects it) and `blockdev-del`. A stopped VM
    /// gets them at its next start.
    fn set_volumes(&self, uuid: &str, disks: &[VmDisk]) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.record(uuid)?;
        let running = self.pid(uuid).is_some();
        // A swap copies the running guest's disk. Without a running VM
        // it is done only if the record says the device moved (the copy
        // finished before the VM stopped); otherwise it fails, and the
        // old volume stays.
        for d in disks.iter().filter(|d| d.swap_from.is_some() && !running) {
            let moved = r.volumes.iter().any(|x| {
                x.device == d.device
                    && x.volume_id == d.volume_id
                    && (!d.moving() || x.same_place(d))
            });
            if !moved {
                return Err(rt(format!(
                    "VM {uuid} is not running: {} cannot be swapped for volume {}",
                    d.device, d.volume_id
                )));
            }
        }
        if running {
            let mut q = self.qmp(uuid)?;
            let present = QemuDriver::disk_devices(&mut q)?;
            for dev in present
                .iter()
                .filter(|d| !disks.iter().any(|x| &x.device_id() == *d))
            {
                QemuDriver::unplug_disk(&mut q, dev)?;
                tracing::info!(instance = uuid, device = %dev, "volume unplugged");
            }
            for d in disks.iter().filter(|d| !present.contains(&d.device_id())) {
                // A swap's new volume is never plugged in fresh: the
                // guest's disk it replaces is gone, so there is nothing
                // to copy.
                if d.swap_from.is_some() {
                    return Err(rt(format!(
                        "VM {uuid} has no {} to swap for volume {}",
                        d.device, d.volume_id
                    )));
                }
                // A block node left by an unplug or a plug cut short.
                let _ = q.execute(
                    "blockdev-del",
                    Some(serde_json::json!({"node-name": d.node_name()})),
                );
                if let Some(tls) = d.tls_object(&self.dir(uuid))? {
                    let _ = q.execute("object-del", Some(serde_json::json!({"id": d.tls_id()})));
                    q.execute("object-add", Some(tls))?;
                }
                // The storage node exports the volume once it has seen
                // the attach: an NBD volume may take a moment to appear.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match q.execute("blockdev-add", Some(d.blockdev())) {
                        Ok(_) => break,
                        // A local file still held by the storage node's
                        // export (its server moved here a moment ago):
                        // the export lets it go once the node has seen it.
                        Err(e)
                            if (d.nbd.is_none() && !e.to_string().contains("lock"))
                                || Instant::now() > deadline =>
                        {
                            if d.nbd.is_some() {
                                let _ = q.execute(
                                    "object-del",
                                    Some(serde_json::json!({"id": d.tls_id()})),
                                );
                            }
                            return Err(e);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(500)),
                    }
                }
                let mut args = serde_json::json!({
                    "driver": "virtio-blk-pci", "drive": d.node_name(),
                    "id": d.device_id(), "serial": d.serial(),
                });
                if let Some(slot) = d.slot() {
                    args["addr"] = format!("{slot:#x}").into();
                }
                if let Err(e) = q.execute("device_add", Some(args)) {
                    let _ = q.execute(
                        "blockdev-del",
                        Some(serde_json::json!({"node-name": d.node_name()})),
                    );
                    return Err(e);
                }
                tracing::info!(instance = uuid, volume = %d.volume_id, device = %d.device, "volume plugged in");
            }
            // A device whose volume changed (a swap) gets the new one.
            let backings = QemuDriver::disk_backings(&mut q)?;
            let mut swaps: Vec<(&VmDisk, &Backing)> = Vec::new();
            for d in disks {
                let Some(b) = backings.get(&d.device_id()) else {
                    continue;
                };
                if b.file.contains(&d.volume_id) {
                    // A volume moving to another storage node: its disk
                    // is copied to the new place unless it is there.
                    if d.moving() && !d.backed_by(b) {
                        swaps.push((d, b));
                    }
                    continue;
                }
                // Only a swap's old volume is copied over; any other
                // volume found at the device stays, and so does the new
                // volume's data.
                if !d.swap_from.as_ref().is_some_and(|o| b.file.contains(o)) {
                    return Err(rt(format!(
                        "{} holds another volume ({}), not {}",
                        d.device, b.file, d.volume_id
                    )));
                }
                swaps.push((d, b));
            }
            drop(q);
            for (d, b) in &swaps {
                self.swap_disk(uuid, d, b)?;
                // The guest writes to the new volume from now on: the
                // record says so at once, so a VM started after a crash
                // opens the new volume, never the stale old one.
                r.volumes.retain(|x| x.device != d.device);
                r.volumes.push((*d).clone());
                self.write_record(&r)?;
            }
            let tidy = (|| -> Result<(), DriverError> {
                let mut q = self.qmp(uuid)?;
                let backings = QemuDriver::disk_backings(&mut q)?;
                for d in disks {
                    let Some(b) = backings.get(&d.device_id()) else {
                        continue;
                    };
                    // The node a swap replaced, when its agent stopped
                    // before closing it (it would keep the old file
                    // locked).
                    QemuDriver::drop_node(&mut q, &d.other_node(&b.node));
                    // A disk smaller than its volume (a swap to a larger
                    // one) grows, and the guest is told. Over NBD a disk
                    // cannot grow.
                    if d.nbd.is_none() && QemuDriver::grow_disk(&mut q, b, d.size_gb << 30)? {
                        tracing::info!(instance = uuid, volume = %d.volume_id, device = %d.device, gib = d.size_gb, "volume grown");
                    }
                }
                QemuDriver::set_throttles(&mut q, disks);
                Ok(())
            })();
            if let Err(e) = tidy {
                // After a swap or a move the guest's disk is the new
                // one: that is the outcome to report (a failure would
                // roll the records back under it); the tidying is done
                // again at the next reconcile.
                if swaps.is_empty() {
                    return Err(e);
                }
                tracing::warn!(instance = uuid, error = %e, "tidying up after a swap failed");
            }
        }
        if r.volumes != disks {
            r.volumes = disks.to_vec();
            self.write_record(&r)?;
        }
        Ok(())
    }

    /// Finds the running VM that has `path` as a volume (or as its
    /// root) and pauses it while `read` runs.
    fn quiesced(
        &self,
        path: &Path,
        read: &mut dyn FnMut() -> Result<(), DriverError>,
    ) -> Result<bool, DriverError> {
        for (uuid, _) in self.list() {
            let lock = lock_of(&self.locks, &uuid);
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            let Ok(r) = self.record(&uuid) else { continue };
            let holds = r.volumes.iter().any(|v| v.path == path) || r.root.as_deref() == Some(path);
            if !holds || self.pid(&uuid).is_none() {
                continue;
            }
            let running = self
                .qmp(&uuid)
                .and_then(|mut q| q.status())
                .is_ok_and(|s| s == "running");
            let quiescing = || QUIESCING.lock().unwrap_or_else(|e| e.into_inner());
            if running {
                quiescing().insert(uuid.clone());
                if let Err(e) = self.qmp(&uuid).and_then(|mut q| q.execute("stop", None)) {
                    quiescing().remove(&uuid);
                    return Err(e);
                }
            }
            let result = read();
            if running {
                let cont = self.qmp(&uuid).and_then(|mut q| q.execute("cont", None));
                quiescing().remove(&uuid);
                cont?;
            }
            return result.map(|()| true);
        }
        Ok(false)
    }

    /// Online extend (Cinder 3.42): QMP `block_resize` of the volume's
    /// node in the running VM that has it; QEMU grows the qcow2 file and
    /// the guest's virtio disk reports the new capacity.
    fn grow_volume(&self, path: &Path, bytes: u64) -> Result<bool, DriverError> {
        for (uuid, _) in self.list() {
            let lock = lock_of(&self.locks, &uuid);
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            let Ok(r) = self.record(&uuid) else { continue };
            if self.pid(&uuid).is_none() {
                continue;
            }
            if r.root.as_deref() == Some(path) {
                return Err(rt(format!(
                    "{} is the root disk of the running VM {uuid}, which cannot grow while it runs",
                    path.display()
                )));
            }
            let Some(d) = r.volumes.iter().find(|v| v.path == path && v.nbd.is_none()) else {
                continue;
            };
            let mut q = self.qmp(&uuid)?;
            let Some(b) = QemuDriver::disk_backings(&mut q)?.remove(&d.device_id()) else {
                continue;
            };
            if QemuDriver::grow_disk(&mut q, &b, bytes)? {
                tracing::info!(instance = %uuid, volume = %d.volume_id, bytes, "volume grown in use");
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn serial_console(&self, uuid: &str) -> Result<PathBuf, DriverError> {
        self.record(uuid)?;
        if self.pid(uuid).is_none() {
            return Err(DriverError::Runtime(format!("VM {uuid} is not running")));
        }
        let sock = self.dir(uuid).join("serial.sock");
        if !sock.exists() {
            // Started before serial consoles were sockets: only a log.
            return Err(DriverError::Runtime(format!(
                "VM {uuid} was started without a serial console socket; stop and start it to get one"
            )));
        }
        Ok(sock)
    }

    /// A qcow2 copy of the root disk as it is now (flattened: it needs
    /// no base). A running guest is paused meanwhile: QEMU flushes its
    /// caches when it stops the guest.
    fn snapshot(&self, uuid: &str, dest: &Path) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        let running = self.pid(uuid).is_some()
            && self
                .qmp(uuid)
                .and_then(|mut q| q.status())
                .is_ok_and(|s| s == "running");
        if running {
            self.qmp(uuid)?.execute("stop", None)?;
        }
        let result = output(
            Command::new(&self.qemu_img)
                .args(["convert", "-U", "-f", "qcow2", "-O", "qcow2"])
                .arg(self.dir(uuid).join("disk.qcow2"))
                .arg(dest),
            "qemu-img convert",
        );
        if running {
            self.qmp(uuid)?.execute("cont", None)?;
        }
        result.map(|_| ())
    }

    fn resize(
        &self,
        uuid: &str,
        vcpus: u32,
        memory_mb: u64,
        disk_gb: u64,
    ) -> Result<(), DriverError> {
        let lock = lock_of(&self.locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = self.record(uuid)?;
        let was_running = self.pid(uuid).is_some();
        if was_running {
            self.stop_locked(uuid, self.reboot_timeout)?;
        }
        let disk = self.dir(uuid).join("disk.qcow2");
        let want = disk_gb << 30;
        // A volume-backed VM's root disk is its volume, which the
        // flavor does not size (as with Nova).
        if r.root.is_none() && want > self.virtual_size(&disk)? {
            output(
                Command::new(&self.qemu_img)
                    .args(["resize", "-q", "-f", "qcow2"])
                    .arg(&disk)
                    .arg(want.to_string()),
                "qemu-img resize",
            )?;
        }
        r.vcpus = vcpus.max(1);
        r.memory_mb = memory_mb.max(64);
        r.disk_gb = disk_gb;
        self.write_record(&r)?;
        if was_running {
            self.start_locked(uuid)?;
        }
        Ok(())
    }

    fn images_in_use(&self) -> Option<Vec<String>> {
        let entries = fs::read_dir(self.root.join("vms")).ok()?;
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let id = e.file_name().to_string_lossy().into_owned();
            match self.record(&id) {
                Ok(r) => {
                    out.push(r.image_id);
                    out.extend(r.rescue);
                }
                // Being built or torn down: nothing may go now.
                Err(_) => return None,
            }
        }
        Some(out)
    }

    fn unpacked_images(&self) -> Vec<String> {
        fs::read_dir(self.root.join("vm-images"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".qcow2"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn remove_image(&self, image_id: &str) -> Result<bool, DriverError> {
        if !valid_id(image_id) {
            return Ok(false);
        }
        let lock = lock_of(&self.image_locks, image_id);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.images_in_use() {
            Some(used) if !used.iter().any(|u| u == image_id) => {}
            _ => return Ok(false),
        }
        match fs::remove_file(self.base(image_id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn diagnostics(&self, uuid: &str) -> Result<Vec<(String, u64)>, DriverError> {
        let r = self.record(uuid)?;
        let mut out = vec![("memory".to_string(), r.memory_mb * 1024)];
        if let Some(pid) = self.pid(uuid) {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                out.push(("memory-rss".into(), kb));
            }
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if let Some((_, rest)) = stat.rsplit_once(") ") {
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime and stime (fields 14 and 15) in clock ticks.
                if let (Some(u), Some(s)) = (f.get(11), f.get(12)) {
                    let ticks = u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
                    out.push(("cpu0_time".into(), ticks * 10_000_000));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sector_is_a_boot_sector_with_its_message() {
        let s = probe_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert!(s.windows(16).any(|w| w == b"STRATUS-KVM-OK\n\0"));
    }

    /// The probe really runs: under TCG (always there with QEMU) it
    /// prints its line.
    #[test]
    fn probe_guest_runs_under_tcg() {
        let Some(qemu) = find_qemu() else {
            eprintln!("skipped: no qemu-system (apt-get install qemu-system-x86)");
            return;
        };
        let dir = std::env::temp_dir().join(format!("stratus-probe-{}", std::process::id()));
        let t = boot_time(&qemu, Accel::Tcg, &dir, Duration::from_secs(60));
        let _ = fs::remove_dir_all(&dir);
        assert!(t.is_some(), "the probe guest printed nothing under TCG");
    }
}
