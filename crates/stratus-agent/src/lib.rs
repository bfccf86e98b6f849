//! The node agent's workload drivers.
//!
//! A [`Driver`] turns an instance the controller scheduled onto this node
//! into a running workload and answers for it afterwards: power actions,
//! state, console output. The agent loop ([`node`]) talks to the
//! controller over HTTP (the protocol is `stratus-wire`) and calls a driver; every call here is synchronous
//! and may block for seconds (it runs the OCI runtime, unpacks images), so
//! async callers use `spawn_blocking`.
//!
//! The drivers:
//!
//! - [`ContainerDriver`]: OCI containers run by a real OCI runtime (runc;
//!   crun where the host's cgroup setup suits it). Images are unpacked once
//!   per node into a shared read-only rootfs; each instance gets an overlay
//!   on top of it, so its writes survive stop/start like a VM's disk.
//! - [`QemuDriver`]: virtual machines run by QEMU and driven over QMP
//!   (KVM where a guest really boots under it, TCG otherwise).
//! - [`MixedDriver`]: both on one node; each instance goes where its
//!   image says (`container_format` docker/oci: a container; anything
//!   else: a VM).
//! - [`FakeDriver`]: in memory, every call instant, for simulating thousands
//!   of nodes from one process. Never the default; always named as such.
//!
//! All state the container driver needs lives under its state directory, so
//! an agent that restarts finds its instances again with [`Driver::list`].

mod container;
mod container_volumes;
mod fake;
mod host;
mod image;
mod mixed;
pub mod net;
pub mod node;
mod qemu;
mod qmp;
mod runc;
mod snapshot;
mod spec;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use container::{ContainerDriver, find_runtime};
pub use fake::FakeDriver;
pub use image::ImageConfig;
pub use mixed::MixedDriver;
pub use qemu::{Accel, QemuDriver, VmDisk, VmNic, find_qemu};

/// What to run: one Nova server, as the agent received it from the
/// controller.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// Nova server id, also the container id.
    pub uuid: String,
    /// Host name inside the workload.
    pub hostname: String,
    /// Glance image id: the key of the node's image cache.
    pub image_id: String,
    /// Local copy of the image data (a `docker save` tarball or an OCI
    /// image-layout tarball), already downloaded by the caller.
    pub image_file: PathBuf,
    /// Glance's `container_format`: `docker` or `oci` run as a
    /// container; anything else (`bare`, `ovf`, ...) is a VM disk.
    pub container_format: String,
    /// Glance's `disk_format` (`qcow2`, `raw`, ...) of a VM image.
    pub disk_format: String,
    /// CPU limit, in whole CPUs.
    pub vcpus: u32,
    /// Memory limit in MiB (swap is not allowed on top).
    pub memory_mb: u64,
    /// Root disk size in GiB (recorded; not enforced by the container driver).
    pub disk_gb: u64,
    /// Decoded user data; a script starting with `#!` runs at first boot.
    pub user_data: Option<Vec<u8>>,
    /// OpenStack config-drive style `meta_data.json`, written by the caller.
    pub meta_data_json: Vec<u8>,
    /// The network namespace (already wired by [`net::Dataplane`]) the
    /// workload joins; `None` gives it a namespace of its own with only
    /// loopback.
    pub netns: Option<PathBuf>,
    /// Name servers of the workload's subnets; when there are any they
    /// become its `/etc/resolv.conf` (read-only, as Docker gives one).
    pub dns: Vec<String>,
    /// A VM's NICs: a tap per port, made by the dataplane.
    pub vm_nics: Vec<VmNic>,
    /// A volume-backed VM's root disk: the volume's own file (on this
    /// storage node), used in place of a disk made from the image.
    pub root_disk: Option<PathBuf>,
}

impl InstanceSpec {
    /// Whether the image is a VM disk rather than a container image.
    pub fn is_vm(&self) -> bool {
        is_vm_format(&self.container_format)
    }
}

/// Whether an image of Glance `container_format` boots a VM (anything but
/// `docker` and `oci`; an image without one is a bare disk).
pub fn is_vm_format(container_format: &str) -> bool {
    !matches!(container_format, "docker" | "oci")
}

/// Power state as Nova counts it (`nova.compute.power_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    NoState,
    Running,
    Paused,
    Shutdown,
    Crashed,
    Suspended,
}

impl PowerState {
    /// Nova's integer code for this state.
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

/// What this node offers, as reported to the placement service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostResources {
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    /// Machine architecture, e.g. `"x86_64"`.
    pub arch: String,
    pub hypervisor_type: String,
    /// Nova's integer encoding: major * 1_000_000 + minor * 1_000 + patch.
    pub hypervisor_version: u64,
    pub cpu_model: String,
}

/// Why a driver call failed. Messages say what went wrong and are meant for
/// the operator (and, for `InvalidImage`, the image's owner).
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("instance not found: {0}")]
    NotFound(String),
    #[error("invalid image: {0}")]
    InvalidImage(String),
    #[error("runtime error: {0}")]
    Runtime(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A workload driver. Every method blocks; none of them panics on bad input.
/// How far a live migration is, in bytes (QEMU's `query-migrate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationProgress {
    pub memory_total: u64,
    pub memory_processed: u64,
    pub memory_remaining: u64,
    pub disk_total: u64,
    pub disk_processed: u64,
    pub disk_remaining: u64,
}

pub trait Driver: Send + Sync {
    /// `"container"`, `"qemu"`, `"container+qemu"` or `"fake"`.
    fn name(&self) -> &'static str;
    /// Whether it boots VM images.
    fn runs_vms(&self) -> bool {
        false
    }
    /// Whether the instance is a VM.
    fn is_vm(&self, uuid: &str) -> bool {
        let _ = uuid;
        false
    }
    /// The node's capacity (real figures for the container driver).
    fn host_resources(&self) -> HostResources;
    /// Create and start the instance; when it already exists, make sure it
    /// runs (so a retried spawn is harmless).
    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError>;
    /// Start a stopped instance (no-op when running).
    fn start(&self, uuid: &str) -> Result<(), DriverError>;
    /// SIGTERM, then SIGKILL once `timeout` has passed. No-op when stopped.
    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError>;
    /// Soft: graceful stop then start; hard: kill then start.
    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError>;
    /// Freeze every process of the instance.
    fn pause(&self, uuid: &str) -> Result<(), DriverError>;
    fn unpause(&self, uuid: &str) -> Result<(), DriverError>;
    /// Nova's suspend: a VM's state goes to disk and its process ends; a
    /// container is frozen (it has no state to save).
    fn suspend(&self, uuid: &str) -> Result<(), DriverError> {
        self.pause(uuid)
    }
    fn resume(&self, uuid: &str) -> Result<(), DriverError> {
        self.unpause(uuid)
    }
    /// Kill, delete, unmount and remove every file of the instance. `Ok`
    /// when it is already gone.
    fn destroy(&self, uuid: &str) -> Result<(), DriverError>;
    fn power_state(&self, uuid: &str) -> PowerState;
    /// Every instance this driver has on this node, for adoption after an
    /// agent restart and for reaping instances the controller forgot.
    fn list(&self) -> Vec<(String, PowerState)>;
    /// What the workload wrote to stdout/stderr: the last `tail_lines`
    /// lines (all of the last MiB when `None`).
    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError>;
    /// Write a snapshot of the instance's root file system as it is now
    /// to `dest`: an image tarball valid as container_format `docker` and
    /// `oci` (see `snapshot.rs`), booting with its source image's config.
    /// A running instance is paused while its files are read (Nova
    /// quiesces a guest for the same reason) and resumed afterwards.
    fn snapshot(&self, uuid: &str, dest: &Path) -> Result<(), DriverError>;
    /// Nova's rescue: stop the instance and run `rescue` (the same
    /// instance id, hostname and config drive, another image) with the
    /// instance's own root file system mounted read-write at
    /// `/mnt/rescue`. Until [`Driver::unrescue`], power actions, state and
    /// console output are the rescue workload's, and it is what a
    /// restarted agent finds again. Harmless when already rescued.
    fn rescue(&self, rescue: &InstanceSpec) -> Result<(), DriverError> {
        Err(DriverError::Runtime(format!(
            "the {} driver cannot rescue instance {}",
            self.name(),
            rescue.uuid
        )))
    }
    /// Ends a rescue: the rescue workload and its disk go, and the
    /// instance starts again with whatever was changed under
    /// `/mnt/rescue`. Starts the instance when it is not rescued.
    fn unrescue(&self, uuid: &str) -> Result<(), DriverError> {
        Err(DriverError::Runtime(format!(
            "the {} driver cannot unrescue instance {uuid}",
            self.name()
        )))
    }
    /// Steers the live migration `migrate_out` is running for the
    /// instance: cancels it (`abort`; the instance runs on here) or lets
    /// it finish now, whatever the pause.
    fn steer_migration(&self, uuid: &str, abort: bool) -> Result<(), DriverError> {
        let _ = abort;
        Err(DriverError::Runtime(format!(
            "the {} driver runs no live migration of instance {uuid}",
            self.name()
        )))
    }
    /// Makes a VM's NICs `nics` (hot-plugged into a running one); other
    /// drivers get their ports through the instance's namespace.
    fn set_nics(&self, uuid: &str, nics: &[VmNic]) -> Result<(), DriverError> {
        let _ = (uuid, nics);
        Ok(())
    }
    /// Unplugs the NICs `gone` from a VM and keeps the rest, before
    /// their taps go: QEMU exits when a device it resets has lost its tap.
    fn unplug_nics(&self, uuid: &str, gone: &[VmNic]) -> Result<(), DriverError> {
        let _ = (uuid, gone);
        Ok(())
    }
    /// Makes the volumes attached to an instance `disks`: a VM's are
    /// hot-plugged into a running one and on the command line of later
    /// starts; a container's are file systems at `/mnt/volumes/<vdX>`
    /// (see `container_volumes.rs`). Each driver reconciles against what
    /// the workload really has. Drivers that cannot attach volumes
    /// refuse any.
    fn set_volumes(&self, uuid: &str, disks: &[VmDisk]) -> Result<(), DriverError> {
        if disks.is_empty() {
            return Ok(());
        }
        Err(DriverError::Runtime(format!(
            "the {} driver cannot attach volumes to instance {uuid}",
            self.name()
        )))
    }
    /// Runs `read` while the volume file `path`, held open by one of this
    /// driver's running instances, is whole on disk and not written (a VM
    /// is paused: QEMU flushes its caches when it stops the guest), so a
    /// snapshot, backup or upload read meanwhile is one point in time.
    /// `Ok(false)`, without running `read`, when no instance holds it.
    fn quiesced(
        &self,
        path: &Path,
        read: &mut dyn FnMut() -> Result<(), DriverError>,
    ) -> Result<bool, DriverError> {
        let _ = (path, read);
        Ok(false)
    }
    /// Grows the volume file `path` to `bytes` through the running
    /// instance that holds it open (a VM's QEMU grows the image and tells
    /// the guest). `Ok(false)` when no running instance holds it.
    fn grow_volume(&self, path: &Path, bytes: u64) -> Result<bool, DriverError> {
        let _ = (path, bytes);
        Ok(false)
    }
    /// The UNIX socket of the running instance's interactive serial
    /// console, for a remote console (Nova's `serial` type) to join.
    fn serial_console(&self, uuid: &str) -> Result<PathBuf, DriverError> {
        Err(DriverError::Runtime(format!(
            "the {} driver has no serial console for instance {uuid}",
            self.name()
        )))
    }
    /// Live migration, destination side: builds the instance from `spec`
    /// as a spawn would (disk, config drive, taps) and starts it waiting
    /// for a migration stream; the TCP port it listens on.
    fn prepare_incoming(&self, spec: &InstanceSpec) -> Result<u16, DriverError> {
        Err(DriverError::Runtime(format!(
            "the {} driver cannot live-migrate instance {}",
            self.name(),
            spec.uuid
        )))
    }
    /// Live migration, source side: streams the running instance (memory,
    /// devices and disk) to `uri` (`tcp:HOST:PORT`, a destination's
    /// [`Driver::prepare_incoming`]), telling `progress` how far it is;
    /// once the destination runs it, the local copy is removed. On
    /// failure the instance runs on here.
    fn migrate_out(
        &self,
        uuid: &str,
        uri: &str,
        progress: &dyn Fn(&MigrationProgress),
    ) -> Result<(), DriverError> {
        let _ = (uri, progress);
        Err(DriverError::Runtime(format!(
            "the {} driver cannot live-migrate instance {uuid}",
            self.name()
        )))
    }
    /// Nova's resize on the same host: the instance gets new CPU, memory
    /// and disk limits and keeps its root file system. A running
    /// workload is restarted under the new limits (a VM resize reboots
    /// the guest too); a stopped one stays stopped. Not while rescued.
    fn resize(
        &self,
        uuid: &str,
        vcpus: u32,
        memory_mb: u64,
        disk_gb: u64,
    ) -> Result<(), DriverError> {
        let _ = (vcpus, memory_mb, disk_gb);
        Err(DriverError::Runtime(format!(
            "the {} driver cannot resize instance {uuid}",
            self.name()
        )))
    }
    /// The images the node's instances (and rescues) boot from, or `None`
    /// when that cannot be told now (an instance is being built or torn
    /// down): nothing may be pruned then.
    fn images_in_use(&self) -> Option<Vec<String>> {
        None
    }
    /// The images the driver keeps unpacked.
    fn unpacked_images(&self) -> Vec<String> {
        Vec::new()
    }
    /// Removes an unpacked image no instance uses (checked again under
    /// the image's lock); false when it is in use or not there.
    fn remove_image(&self, image_id: &str) -> Result<bool, DriverError> {
        let _ = image_id;
        Ok(false)
    }
    /// Resource use of the instance as Nova's pre-2.48 diagnostics name
    /// it (`cpu0_time` in ns, `memory*` in KiB); empty where the driver
    /// has nothing to measure.
    fn diagnostics(&self, uuid: &str) -> Result<Vec<(String, u64)>, DriverError> {
        let _ = uuid;
        Ok(Vec::new())
    }
}

/// The most of a console log `console_output` reads.
pub(crate) const CONSOLE_MAX: u64 = 1 << 20;

/// A console as Nova's `os-getConsoleOutput` gives it: the last
/// [`CONSOLE_MAX`] bytes of `files` (oldest first; a missing one is
/// empty), whole lines only, then Nova's tail of `tail_lines` (split on
/// newlines, keep the last n pieces; the empty piece after a final
/// newline counts as one).
pub(crate) fn console_tail(
    files: &[PathBuf],
    tail_lines: Option<usize>,
) -> Result<String, DriverError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    let mut truncated = false;
    for path in files {
        let mut f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let len = f.metadata()?.len();
        let start = len.saturating_sub(CONSOLE_MAX);
        truncated |= start > 0;
        f.seek(SeekFrom::Start(start))?;
        f.take(CONSOLE_MAX).read_to_end(&mut buf)?;
    }
    let cut = buf.len().saturating_sub(CONSOLE_MAX as usize);
    let mut text = String::from_utf8_lossy(&buf[cut..]).into_owned();
    if (truncated || cut > 0)
        && let Some(i) = text.find('\n')
    {
        // Drop the partial first line.
        text.drain(..=i);
    }
    Ok(match tail_lines {
        None => text,
        Some(n) => {
            let pieces: Vec<&str> = text.split('\n').collect();
            pieces[pieces.len().saturating_sub(n)..].join("\n")
        }
    })
}

/// The lock of `key` in a map of per-key locks (made on first use).
pub(crate) fn lock_of(
    map: &std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<std::sync::Mutex<()>>>>,
    key: &str,
) -> std::sync::Arc<std::sync::Mutex<()>> {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.to_string())
        .or_default()
        .clone()
}

/// The executable `name` on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Ids become file and cgroup names: keep them to a safe alphabet.
pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_codes() {
        assert_eq!(PowerState::NoState.nova_code(), 0);
        assert_eq!(PowerState::Running.nova_code(), 1);
        assert_eq!(PowerState::Paused.nova_code(), 3);
        assert_eq!(PowerState::Shutdown.nova_code(), 4);
        assert_eq!(PowerState::Crashed.nova_code(), 6);
        assert_eq!(PowerState::Suspended.nova_code(), 7);
    }

    #[test]
    fn console_tail_keeps_whole_lines_across_rotated_files() {
        let dir = std::env::temp_dir().join(format!("stratus-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, cur) = (dir.join("console.log.1"), dir.join("console.log"));
        std::fs::write(&old, b"a\nb\n").unwrap();
        std::fs::write(&cur, b"c\nd\n").unwrap();
        let both = [old.clone(), cur.clone()];
        assert_eq!(console_tail(&both, None).unwrap(), "a\nb\nc\nd\n");
        // Nova's tail: the empty piece after the last newline counts.
        assert_eq!(console_tail(&both, Some(3)).unwrap(), "c\nd\n");
        assert_eq!(console_tail(&[dir.join("none")], None).unwrap(), "");
        // Over the limit: the cut first line goes.
        let big = format!("partial{}\nlast\n", "x".repeat(CONSOLE_MAX as usize));
        std::fs::write(&cur, big).unwrap();
        assert_eq!(console_tail(&[cur], Some(2)).unwrap(), "last\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ids() {
        assert!(valid_id("3f2a-9b_x.1"));
        for bad in ["", "..", ".x", "a/b", "a b", "x\0"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
