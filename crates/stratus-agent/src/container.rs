//! The container driver: instances are OCI containers run by runc.
//!
//! What it keeps under its state directory, and why:
//!
//! ```text
//! images/<image_id>/        unpacked image, shared (see image.rs)
//! instances/<uuid>/
//!   instance.json           written last at spawn: the instance is whole;
//!                           records the image and how its root is made
//!   config.json             the OCI bundle's spec
//!   rootfs/                 overlay mount point (lower = image rootfs)
//!   upper/ work/            the overlay's writable layer: the instance's
//!                           "disk", kept across stop/start
//!   openstack/latest/       config drive (meta_data.json, user_data),
//!                           bind-mounted read-only at /openstack
//!   console.log             the workload's stdout and stderr
//!   runc.log                the runtime's own log of the last run
//!   volumes/ volume-exports/
//!                           attached Cinder volumes, at /mnt/volumes/<vdX>
//!                           inside (see container_volumes.rs)
//!   rescue/                 only while rescued (see below):
//!     rescue.json           written last: the rescue is whole
//!     config.json rootfs/ upper/ work/ console.log runc.log
//!                           the rescue container's bundle, as above
//! runc/                     the runtime's --root: container state, so an
//!                           agent restart finds its containers again
//! ```
//!
//! Power actions map onto the runtime: stop is SIGTERM then SIGKILL; start
//! deletes the stopped container and runs it again on the same bundle (the
//! overlay, and so the instance's writes, stay); pause is the freezer.
//! A snapshot tars the overlay's merged view (the freezer holds a running
//! workload still meanwhile) into an image tarball (`snapshot.rs`) at the
//! path the agent names.
//!
//! Rescue (Nova's `rescue`): the instance's container is stopped and
//! deleted, and a rescue container runs under the same id, from the
//! rescue image (its own overlay, a throwaway "rescue disk"), with the
//! same hostname, resources and config drive, and with the instance's own
//! root (its overlay, mounted on the host) bind-mounted read-write at
//! `/mnt/rescue`. While `rescue/rescue.json` exists, start, stop, state,
//! console output and [`Driver::list`] are the rescue container's, so an
//! agent restart finds the server rescued. A user-data script runs again
//! in the rescue container (it has a fresh disk, as cloud-init in a Nova
//! rescue image would). Unrescue removes the rescue container and its
//! directory and runs the instance again on its root, with whatever was
//! changed under `/mnt/rescue`.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::{self, ImageConfig};
use crate::runc::{self, Runc, Status};
use crate::{
    Driver, DriverError, HostResources, InstanceSpec, PowerState, host, lock_of, valid_id,
};
use crate::{container_volumes, snapshot, spec};

/// Look for an OCI runtime in `PATH`: `runc`, then `crun`.
pub fn find_runtime() -> Option<PathBuf> {
    ["runc", "crun"].into_iter().find_map(crate::which)
}

/// How an instance's root file system is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RootKind {
    /// overlayfs over the cached image rootfs.
    Overlay,
    /// A full copy (where overlayfs is not available).
    Copy,
}

/// `instances/<uuid>/instance.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    image_id: String,
    root: RootKind,
    hostname: String,
    vcpus: u32,
    memory_mb: u64,
    disk_gb: u64,
}

/// `instances/<uuid>/rescue/rescue.json`: the rescue image and how the
/// rescue container's root is made.
#[derive(Debug, Serialize, Deserialize)]
struct RescueRecord {
    image_id: String,
    root: RootKind,
}

/// Where the instance's own root appears inside a rescue container.
const RESCUE_MOUNT: &str = "/mnt/rescue";

/// OCI containers under runc (or crun). See the module docs for the layout.
pub struct ContainerDriver {
    state_dir: PathBuf,
    runc: Runc,
    hypervisor_version: u64,
    /// How long a soft reboot waits for the workload to stop.
    reboot_timeout: Duration,
    /// One lock per image being unpacked, one per instance being changed.
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    instance_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

fn rt(msg: impl Into<String>) -> DriverError {
    DriverError::Runtime(msg.into())
}

/// Run a helper command (mount, umount, cp) with a timeout.
pub(crate) fn helper(cmd: &mut Command, what: &str) -> Result<(), DriverError> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| rt(format!("cannot run {what}: {e}")))?;
    let (status, _, err) = runc::wait_timeout(child, Duration::from_secs(300), what)?;
    if status.success() {
        Ok(())
    } else {
        Err(rt(format!(
            "{what} failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )))
    }
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mountinfo(m) == want)
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cgroup_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

impl ContainerDriver {
    /// A driver keeping its state under `state_dir` (created if missing) and
    /// running containers with `runtime` (see [`find_runtime`]).
    pub fn new(state_dir: &Path, runtime: PathBuf) -> Result<Self, DriverError> {
        fs::create_dir_all(state_dir)?;
        let state_dir = fs::canonicalize(state_dir)?;
        for d in ["images", "instances", "runc"] {
            fs::create_dir_all(state_dir.join(d))?;
        }
        fs::set_permissions(state_dir.join("runc"), fs::Permissions::from_mode(0o700))?;
        let version = Command::new(&runtime)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                rt(format!(
                    "OCI runtime {} cannot be run ({e}); install one: apt-get install runc",
                    runtime.display()
                ))
            })?;
        let (_, out, _) = runc::wait_timeout(version, runc::CALL_TIMEOUT, "runtime --version")?;
        let hypervisor_version = host::version_int(&String::from_utf8_lossy(&out));
        let d = ContainerDriver {
            runc: Runc {
                bin: runtime,
                root: state_dir.join("runc"),
            },
            state_dir,
            hypervisor_version,
            reboot_timeout: Duration::from_secs(60),
            image_locks: Mutex::default(),
            instance_locks: Mutex::default(),
        };
        d.sweep_tmp();
        Ok(d)
    }

    /// How long a soft reboot waits for the workload to exit before it is
    /// killed (60 s, like Nova's `shutdown_timeout`).
    pub fn with_reboot_timeout(mut self, timeout: Duration) -> Self {
        self.reboot_timeout = timeout;
        self
    }

    /// The state directory (canonical).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Remove unpack leftovers of a crashed agent (older than an hour, so
    /// an unpack in progress in another process is left alone).
    fn sweep_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.state_dir.join("images")) else {
            return;
        };
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
            if e.file_name().to_string_lossy().starts_with(".tmp-") && old {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    fn instance_dir(&self, uuid: &str) -> PathBuf {
        self.state_dir.join("instances").join(uuid)
    }

    fn image_dir(&self, image_id: &str) -> PathBuf {
        self.state_dir.join("images").join(image_id)
    }

    fn record(&self, uuid: &str) -> Result<Record, DriverError> {
        if !valid_id(uuid) {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        let data = match fs::read(self.instance_dir(uuid).join("instance.json")) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DriverError::NotFound(uuid.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&data)
            .map_err(|e| rt(format!("instance {uuid}: corrupt instance.json: {e}")))
    }

    /// The unpacked image: from the cache, or unpacked now.
    fn ensure_image(&self, spec: &InstanceSpec) -> Result<(PathBuf, ImageConfig), DriverError> {
        if !valid_id(&spec.image_id) {
            return Err(DriverError::InvalidImage(format!(
                "image id {:?} is not usable as a file name",
                spec.image_id
            )));
        }
        let dir = self.image_dir(&spec.image_id);
        let lock = lock_of(&self.image_locks, &spec.image_id);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cfg) = image::cached_config(&dir) {
            return Ok((dir.join("rootfs"), cfg));
        }
        if dir.exists() {
            // Not complete: cannot happen through rename, but be sure.
            fs::remove_dir_all(&dir)?;
        }
        let t = Instant::now();
        let cfg = image::unpack(&spec.image_file, &spec.container_format, &dir)?;
        tracing::info!(image = %spec.image_id, elapsed_ms = t.elapsed().as_millis() as u64,
            "unpacked container image");
        Ok((dir.join("rootfs"), cfg))
    }

    /// Mount (or copy) the instance's root on `rootfs`, when not already.
    fn mount_root(
        &self,
        dir: &Path,
        lower: &Path,
        kind: RootKind,
    ) -> Result<RootKind, DriverError> {
        let target = dir.join("rootfs");
        if kind == RootKind::Copy {
            return Ok(RootKind::Copy);
        }
        if is_mounted(&target) {
            return Ok(RootKind::Overlay);
        }
        let (l, u, w) = (lower.display(), dir.join("upper"), dir.join("work"));
        let opts = format!(
            "lowerdir={l},upperdir={},workdir={}",
            u.display(),
            w.display()
        );
        // The option syntax has no escapes: ',' and ':' in a path break it.
        let usable = [lower, u.as_path(), w.as_path()]
            .iter()
            .all(|p| !p.to_string_lossy().contains([',', ':']));
        let mounted = usable
            && helper(
                Command::new("mount")
                    .args(["-t", "overlay", "overlay", "-o", &opts])
                    .arg(&target),
                "mount -t overlay",
            )
            .inspect_err(|e| tracing::warn!(error = %e, "overlayfs unavailable; copying the image"))
            .is_ok();
        if mounted {
            return Ok(RootKind::Overlay);
        }
        helper(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", lower.display()))
                .arg(&target),
            "cp -a (image rootfs)",
        )?;
        Ok(RootKind::Copy)
    }

    fn unmount_root(&self, dir: &Path) -> Result<(), DriverError> {
        let target = dir.join("rootfs");
        if !is_mounted(&target) {
            return Ok(());
        }
        if helper(Command::new("umount").arg(&target), "umount").is_err() {
            helper(Command::new("umount").arg("-l").arg(&target), "umount -l")?;
        }
        if is_mounted(&target) {
            return Err(rt(format!("{} is still mounted", target.display())));
        }
        Ok(())
    }

    /// The process arguments: image entrypoint + cmd, behind the user-data
    /// script when there is one to run.
    fn process_args(
        &self,
        spec: &InstanceSpec,
        image: &ImageConfig,
        rootfs: &Path,
    ) -> Result<Vec<String>, DriverError> {
        let mut cmd: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
        if cmd.is_empty() {
            return Err(DriverError::InvalidImage(
                "the image has neither Entrypoint nor Cmd: nothing to run".into(),
            ));
        }
        let script = spec
            .user_data
            .as_deref()
            .is_some_and(|u| u.starts_with(b"#!"));
        if script {
            if fs::symlink_metadata(rootfs.join("bin/sh")).is_ok() {
                // Once per instance, like cloud-init's scripts-user: the
                // marker lives on the instance's own disk.
                let run = "m=/var/lib/cloud/instance/sem/stratus-user-data; \
                    if [ ! -e $m ]; then /openstack/latest/user_data; \
                    mkdir -p ${m%/*} && : > $m; fi; exec \"$@\"";
                let mut v = vec!["/bin/sh".into(), "-c".into(), run.into(), "sh".into()];
                v.append(&mut cmd);
                cmd = v;
            } else {
                tracing::warn!(instance = %spec.uuid,
                    "user_data is a script but the image has no /bin/sh to run it; only written");
            }
        }
        Ok(cmd)
    }

    fn build(&self, spec: &InstanceSpec, dir: &Path) -> Result<(), DriverError> {
        let (lower, image) = self.ensure_image(spec)?;
        for d in ["upper", "work", "rootfs", "openstack/latest"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let latest = dir.join("openstack/latest");
        fs::write(latest.join("meta_data.json"), &spec.meta_data_json)?;
        if let Some(ud) = &spec.user_data {
            fs::write(latest.join("user_data"), ud)?;
            let mode = if ud.starts_with(b"#!") { 0o755 } else { 0o644 };
            fs::set_permissions(latest.join("user_data"), fs::Permissions::from_mode(mode))?;
        }
        let args = self.process_args(spec, &image, &lower)?;
        let (uid, gid) = spec::resolve_user(&lower, &image.user)?;
        let v2 = cgroup_v2();
        let bundle = spec::Bundle {
            openstack_dir: &dir.join("openstack"),
            args,
            uid,
            gid,
            cgroup_ns: Path::new("/proc/self/ns/cgroup").exists(),
            swap_limit: v2
                || Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            resolv_conf: write_resolv_conf(dir, &spec.dns)?,
        };
        let mut config = spec::config(spec, &image, &bundle);
        if let Some(m) = config["mounts"].as_array_mut() {
            m.push(container_volumes::oci_mount(dir));
        }
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(|e| rt(e.to_string()))?,
        )?;
        let root = self.mount_root(dir, &lower, RootKind::Overlay)?;
        let rec = Record {
            image_id: spec.image_id.clone(),
            root,
            hostname: spec.hostname.clone(),
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            disk_gb: spec.disk_gb,
        };
        let tmp = dir.join("instance.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&rec).map_err(|e| rt(e.to_string()))?,
        )?;
        fs::rename(&tmp, dir.join("instance.json"))?;
        Ok(())
    }

    /// The container's status; `None` when the runtime does not know it.
    fn status(&self, uuid: &str) -> Result<Option<Status>, DriverError> {
        match self.runc.state(uuid) {
            Ok(s) => Ok(Some(s)),
            Err(DriverError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Start with the instance lock held.
    fn start_locked(&self, uuid: &str) -> Result<(), DriverError> {
        let rec = self.record(uuid)?;
        let dir = self.instance_dir(uuid);
        match self.status(uuid)? {
            Some(Status::Running) => return Ok(()),
            Some(Status::Paused) => {
                self.runc.call(&["resume", uuid], runc::CALL_TIMEOUT)?;
                return Ok(());
            }
            Some(Status::Created) => {
                self.runc.call(&["start", uuid], runc::CALL_TIMEOUT)?;
                return Ok(());
            }
            Some(Status::Stopped | Status::Unknown) => {
                self.runc
                    .call(&["delete", "--force", uuid], runc::CALL_TIMEOUT)?;
            }
            None => {}
        }
        // After a host reboot the overlay is gone: mount it again.
        self.mount_root(
            &dir,
            &self.image_dir(&rec.image_id).join("rootfs"),
            rec.root,
        )?;
        // Rescued: the rescue container runs, the root above is its
        // /mnt/rescue.
        let bundle = match self.rescue_record(uuid)? {
            Some(r) => {
                let rdir = dir.join("rescue");
                self.mount_root(&rdir, &self.image_dir(&r.image_id).join("rootfs"), r.root)?;
                rdir
            }
            None => dir.clone(),
        };
        if container_volumes::has_mount(&dir) {
            container_volumes::prepare(&dir)?;
        }
        self.runc.run_detached(
            uuid,
            &bundle,
            &bundle.join("console.log"),
            &bundle.join("runc.log"),
        )
    }

    /// The rescue record, when the instance is rescued.
    fn rescue_record(&self, uuid: &str) -> Result<Option<RescueRecord>, DriverError> {
        let path = self.instance_dir(uuid).join("rescue/rescue.json");
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| rt(format!("instance {uuid}: corrupt rescue.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stops the container (however it is run now) and forgets it in the
    /// runtime, so another bundle can run under the same id.
    fn remove_container(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        self.stop_locked(uuid, timeout)?;
        if self.status(uuid)?.is_some() {
            match self
                .runc
                .call(&["delete", "--force", uuid], runc::CALL_TIMEOUT)
            {
                Ok(_) | Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes a rescue directory: its record first (from then on the
    /// instance is not rescued), then its mount and files.
    fn remove_rescue_dir(&self, dir: &Path) -> Result<(), DriverError> {
        let rdir = dir.join("rescue");
        if !rdir.exists() {
            return Ok(());
        }
        match fs::remove_file(rdir.join("rescue.json")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.unmount_root(&rdir)?;
        fs::remove_dir_all(&rdir)?;
        Ok(())
    }

    /// Writes the rescue bundle for `spec` (the rescue image) in
    /// `dir/rescue`, its record last.
    fn build_rescue(
        &self,
        spec: &InstanceSpec,
        rec: &Record,
        dir: &Path,
    ) -> Result<(), DriverError> {
        let (lower, image) = self.ensure_image(spec)?;
        // The instance's own root, to be bind-mounted.
        self.mount_root(dir, &self.image_dir(&rec.image_id).join("rootfs"), rec.root)?;
        let rdir = dir.join("rescue");
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(rdir.join(d))?;
        }
        let args = self.process_args(spec, &image, &lower)?;
        let (uid, gid) = spec::resolve_user(&lower, &image.user)?;
        let v2 = cgroup_v2();
        let bundle = spec::Bundle {
            openstack_dir: &dir.join("openstack"),
            args,
            uid,
            gid,
            cgroup_ns: Path::new("/proc/self/ns/cgroup").exists(),
            swap_limit: v2
                || Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            resolv_conf: write_resolv_conf(dir, &spec.dns)?,
        };
        let mut config = spec::config(spec, &image, &bundle);
        if let Some(m) = config["mounts"].as_array_mut() {
            m.push(serde_json::json!({
                "destination": RESCUE_MOUNT,
                "type": "bind",
                "source": dir.join("rootfs"),
                "options": ["rbind", "rw"],
            }));
        }
        fs::write(
            rdir.join("config.json"),
            serde_json::to_vec_pretty(&config).map_err(|e| rt(e.to_string()))?,
        )?;
        let root = self.mount_root(&rdir, &lower, RootKind::Overlay)?;
        let r = RescueRecord {
            image_id: spec.image_id.clone(),
            root,
        };
        let tmp = rdir.join("rescue.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(&r).map_err(|e| rt(e.to_string()))?,
        )?;
        fs::rename(&tmp, rdir.join("rescue.json"))?;
        Ok(())
    }

    /// Poll until the container is no longer running, up to `timeout`.
    fn wait_stopped(&self, uuid: &str, timeout: Duration) -> Result<bool, DriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.status(uuid)? {
                None | Some(Status::Stopped) => return Ok(true),
                _ if Instant::now() >= deadline => return Ok(false),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn signal(&self, uuid: &str, sig: &str) -> Result<(), DriverError> {
        match self.runc.call(&["kill", uuid, sig], runc::CALL_TIMEOUT) {
            Ok(_) => Ok(()),
            // It stopped on its own between our look and the signal.
            Err(_) if matches!(self.status(uuid)?, None | Some(Status::Stopped)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn stop_locked(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        self.record(uuid)?;
        match self.status(uuid)? {
            None | Some(Status::Stopped) => return Ok(()),
            // A frozen process cannot act on SIGTERM.
            Some(Status::Paused) => {
                self.runc.call(&["resume", uuid], runc::CALL_TIMEOUT)?;
            }
            _ => {}
        }
        if !timeout.is_zero() {
            self.signal(uuid, "TERM")?;
            if self.wait_stopped(uuid, timeout)? {
                return Ok(());
            }
            tracing::info!(instance = uuid, "no exit after SIGTERM; sending SIGKILL");
        }
        self.signal(uuid, "KILL")?;
        if self.wait_stopped(uuid, Duration::from_secs(10))? {
            Ok(())
        } else {
            Err(rt(format!("instance {uuid} still runs 10 s after SIGKILL")))
        }
    }
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn host_resources(&self) -> HostResources {
        let (vcpus, cpu_model) = host::cpus();
        HostResources {
            vcpus,
            memory_mb: host::memory_mb(),
            disk_gb: host::disk_gb(&self.state_dir),
            arch: std::env::consts::ARCH.to_string(),
            hypervisor_type: self
                .runc
                .bin
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "runc".into()),
            hypervisor_version: self.hypervisor_version,
            cpu_model,
        }
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        if !valid_id(&spec.uuid) {
            return Err(rt(format!(
                "instance id {:?} is not usable as a container id",
                spec.uuid
            )));
        }
        let lock = lock_of(&self.instance_locks, &spec.uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.instance_dir(&spec.uuid);
        if dir.join("instance.json").exists() {
            return self.start_locked(&spec.uuid);
        }
        if dir.exists() {
            // Left half-built by a crash: start over.
            container_volumes::remove_all(&dir)?;
            self.unmount_root(&dir)?;
            fs::remove_dir_all(&dir)?;
        }
        let t = Instant::now();
        let built = self.build(spec, &dir);
        let result = built.and_then(|()| self.start_locked(&spec.uuid));
        if let Err(e) = result {
            let _ = self
                .runc
                .call(&["delete", "--force", &spec.uuid], runc::CALL_TIMEOUT);
            // Keep the console and runtime log for the operator only in the
            // log; the instance itself must not half-exist.
            if let Ok(log) = fs::read_to_string(dir.join("console.log")) {
                tracing::warn!(instance = %spec.uuid, console = %log.trim(), "spawn failed");
            }
            if container_volumes::remove_all(&dir).is_ok() && self.unmount_root(&dir).is_ok() {
                let _ = fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
        tracing::info!(instance = %spec.uuid, elapsed_ms = t.elapsed().as_millis() as u64,
            "spawned container");
        Ok(())
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.start_locked(uuid)
    }

    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_locked(uuid, timeout)
    }

    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = if hard {
            Duration::ZERO
        } else {
            self.reboot_timeout
        };
        self.stop_locked(uuid, timeout)?;
        self.start_locked(uuid)
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        match self.status(uuid)? {
            Some(Status::Paused) => Ok(()),
            Some(Status::Running) => self
                .runc
                .call(&["pause", uuid], runc::CALL_TIMEOUT)
                .map(drop),
            s => Err(rt(format!(
                "instance {uuid} is not running ({s:?}); cannot pause"
            ))),
        }
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        match self.status(uuid)? {
            Some(Status::Running) => Ok(()),
            Some(Status::Paused) => self
                .runc
                .call(&["resume", uuid], runc::CALL_TIMEOUT)
                .map(drop),
            s => Err(rt(format!(
                "instance {uuid} is not paused ({s:?}); cannot unpause"
            ))),
        }
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        if !valid_id(uuid) {
            return Ok(());
        }
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = self.status(uuid)? {
            if s == Status::Paused {
                // SIGKILL waits for a thaw under cgroup v1.
                let _ = self.runc.call(&["resume", uuid], runc::CALL_TIMEOUT);
            }
            if s != Status::Stopped {
                let _ = self.runc.call(&["kill", uuid, "KILL"], runc::CALL_TIMEOUT);
                self.wait_stopped(uuid, Duration::from_secs(10))?;
            }
            match self
                .runc
                .call(&["delete", "--force", uuid], runc::CALL_TIMEOUT)
            {
                Ok(_) | Err(DriverError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let dir = self.instance_dir(uuid);
        if dir.exists() {
            // Never remove a directory something is still mounted on.
            container_volumes::remove_all(&dir)?;
            self.remove_rescue_dir(&dir)?;
            self.unmount_root(&dir)?;
            fs::remove_dir_all(&dir)?;
        }
        self.instance_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uuid);
        Ok(())
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        if !valid_id(uuid) {
            return PowerState::NoState;
        }
        match self.status(uuid) {
            Ok(Some(s)) => map_status(s),
            // Defined but not run (stopped and deleted, host rebooted).
            Ok(None) if self.instance_dir(uuid).join("instance.json").exists() => {
                PowerState::Shutdown
            }
            Ok(None) => PowerState::NoState,
            Err(e) => {
                tracing::warn!(instance = uuid, error = %e, "cannot read container state");
                PowerState::NoState
            }
        }
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        let mut out: HashMap<String, PowerState> = HashMap::new();
        if let Ok(rd) = fs::read_dir(self.state_dir.join("instances")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if valid_id(&name) && e.path().join("instance.json").exists() {
                    out.insert(name, PowerState::Shutdown);
                }
            }
        }
        // `runc list` fails as a whole when a container's state goes away
        // while it reads them (a concurrent delete): try again, then ask
        // each instance, so a running container is never taken for a
        // stopped one.
        let mut listed = self.runc.list();
        for _ in 0..3 {
            if listed.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            listed = self.runc.list();
        }
        match listed {
            // Containers without an instance directory are listed too, so
            // the reaper can destroy them.
            Ok(l) => out.extend(l.into_iter().map(|(id, s)| (id, map_status(s)))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers; asking each instance");
                for (id, st) in out.iter_mut() {
                    match self.status(id) {
                        Ok(Some(s)) => *st = map_status(s),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(instance = %id, error = %e, "cannot read container state");
                            *st = PowerState::NoState;
                        }
                    }
                }
            }
        }
        let mut v: Vec<_> = out.into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn snapshot(&self, uuid: &str, dest: &Path) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let rec = self.record(uuid)?;
        let config = image::cached_config(&self.image_dir(&rec.image_id)).ok_or_else(|| {
            rt(format!(
                "the image {} of instance {uuid} is no longer cached on this node",
                rec.image_id
            ))
        })?;
        let dir = self.instance_dir(uuid);
        // A stopped instance's overlay may be gone (host reboot).
        self.mount_root(
            &dir,
            &self.image_dir(&rec.image_id).join("rootfs"),
            rec.root,
        )?;
        let pause = self.status(uuid)? == Some(Status::Running);
        if pause {
            self.runc.call(&["pause", uuid], runc::CALL_TIMEOUT)?;
        }
        let t = Instant::now();
        let written = snapshot::write(&dir.join("rootfs"), &config, dest);
        if pause && let Err(e) = self.runc.call(&["resume", uuid], runc::CALL_TIMEOUT) {
            tracing::warn!(instance = uuid, error = %e, "could not resume after the snapshot");
            written?;
            return Err(e);
        }
        written?;
        tracing::info!(
            instance = uuid,
            paused = pause,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(())
    }

    fn rescue(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        let uuid = spec.uuid.as_str();
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let rec = self.record(uuid)?;
        if self.rescue_record(uuid)?.is_some() {
            // A retried rescue: make sure the rescue container runs.
            return self.start_locked(uuid);
        }
        let was_running = matches!(
            self.status(uuid)?,
            Some(Status::Running | Status::Paused | Status::Created)
        );
        let dir = self.instance_dir(uuid);
        self.remove_container(uuid, self.reboot_timeout)?;
        // A rescue a crash left half-built.
        self.remove_rescue_dir(&dir)?;
        let t = Instant::now();
        let result = self
            .build_rescue(spec, &rec, &dir)
            .and_then(|()| self.start_locked(uuid));
        if let Err(e) = result {
            let _ = self
                .runc
                .call(&["delete", "--force", uuid], runc::CALL_TIMEOUT);
            if let Ok(log) = fs::read_to_string(dir.join("rescue/console.log")) {
                tracing::warn!(instance = uuid, console = %log.trim(), "rescue failed");
            }
            // Back to how it was.
            if let Err(e) = self.remove_rescue_dir(&dir) {
                tracing::warn!(instance = uuid, error = %e, "could not remove the failed rescue");
            } else if was_running && let Err(e) = self.start_locked(uuid) {
                tracing::warn!(instance = uuid, error = %e, "could not start again after a failed rescue");
            }
            return Err(e);
        }
        tracing::info!(instance = uuid, rescue_image = %spec.image_id,
            elapsed_ms = t.elapsed().as_millis() as u64, "rescue container running");
        Ok(())
    }

    fn images_in_use(&self) -> Option<Vec<String>> {
        let mut used = Vec::new();
        if let Ok(rd) = fs::read_dir(self.state_dir.join("instances")) {
            for e in rd.flatten() {
                let dir = e.path();
                let rec: Record =
                    serde_json::from_slice(&fs::read(dir.join("instance.json")).ok()?).ok()?;
                used.push(rec.image_id);
                if let Ok(d) = fs::read(dir.join("rescue/rescue.json")) {
                    let r: RescueRecord = serde_json::from_slice(&d).ok()?;
                    used.push(r.image_id);
                }
            }
        }
        Some(used)
    }

    fn unpacked_images(&self) -> Vec<String> {
        fs::read_dir(self.state_dir.join("images"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| valid_id(n) && !n.starts_with(".tmp-"))
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
        let in_use = self
            .images_in_use()
            .is_none_or(|u| u.iter().any(|i| i == image_id));
        let dir = self.image_dir(image_id);
        if in_use || !dir.exists() {
            return Ok(false);
        }
        fs::remove_dir_all(&dir)?;
        Ok(true)
    }

    /// New limits in the bundle's `config.json` and `instance.json`; a
    /// running container is stopped and started again under them.
    fn resize(
        &self,
        uuid: &str,
        vcpus: u32,
        memory_mb: u64,
        disk_gb: u64,
    ) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut rec = self.record(uuid)?;
        if self.rescue_record(uuid)?.is_some() {
            return Err(rt(format!("instance {uuid} is rescued: unrescue it first")));
        }
        let dir = self.instance_dir(uuid);
        let running = matches!(
            self.status(uuid)?,
            Some(Status::Running | Status::Paused | Status::Created)
        );
        let path = dir.join("config.json");
        let old_config = fs::read(&path)?;
        let old_record = fs::read(dir.join("instance.json"))?;
        let mut config: serde_json::Value = serde_json::from_slice(&old_config)
            .map_err(|e| rt(format!("instance {uuid}: corrupt config.json: {e}")))?;
        spec::set_limits(&mut config, vcpus, memory_mb);
        write_atomic(
            &path,
            &serde_json::to_vec_pretty(&config).map_err(|e| rt(e.to_string()))?,
        )?;
        rec.vcpus = vcpus;
        rec.memory_mb = memory_mb;
        rec.disk_gb = disk_gb;
        write_atomic(
            &dir.join("instance.json"),
            &serde_json::to_vec_pretty(&rec).map_err(|e| rt(e.to_string()))?,
        )?;
        if running {
            let restarted = self
                .stop_locked(uuid, self.reboot_timeout)
                .and_then(|()| self.start_locked(uuid));
            if let Err(e) = restarted {
                // The controller keeps the old flavor: so does the node.
                write_atomic(&path, &old_config)?;
                write_atomic(&dir.join("instance.json"), &old_record)?;
                if let Err(e) = self.start_locked(uuid) {
                    tracing::warn!(instance = uuid, error = %e, "could not start again under the old limits");
                }
                return Err(e);
            }
        }
        tracing::info!(instance = uuid, vcpus, memory_mb, "resized container");
        Ok(())
    }

    fn unrescue(&self, uuid: &str) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        let dir = self.instance_dir(uuid);
        if dir.join("rescue").exists() {
            // The rescue disk is thrown away: no need to wait for a clean
            // shutdown of the rescue workload.
            self.remove_container(uuid, Duration::ZERO)?;
            self.remove_rescue_dir(&dir)?;
        }
        self.start_locked(uuid)
    }

    /// See `container_volumes.rs`: each volume is a file system at
    /// `/mnt/volumes/<vdX>` in the container.
    fn set_volumes(&self, uuid: &str, disks: &[crate::VmDisk]) -> Result<(), DriverError> {
        let lock = lock_of(&self.instance_locks, uuid);
        let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
        self.record(uuid)?;
        container_volumes::set(&self.instance_dir(uuid), disks)
    }

    /// Finds the container whose volume daemon serves `path` and freezes
    /// the volume's file system while `read` runs.
    fn quiesced(
        &self,
        path: &Path,
        read: &mut dyn FnMut() -> Result<(), DriverError>,
    ) -> Result<bool, DriverError> {
        for (uuid, _) in self.list() {
            let lock = lock_of(&self.instance_locks, &uuid);
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mount) = container_volumes::mount_of(&self.instance_dir(&uuid), path) {
                container_volumes::frozen(&mount, read)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Finds the container whose volume daemon serves `path` and grows
    /// the volume there (file, loop device and file system).
    fn grow_volume(&self, path: &Path, bytes: u64) -> Result<bool, DriverError> {
        for (uuid, _) in self.list() {
            let lock = lock_of(&self.instance_locks, &uuid);
            let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
            if container_volumes::grow(&self.instance_dir(&uuid), path, bytes)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Read from the instance's cgroup (`cgroupsPath` /stratus/<uuid>).
    fn diagnostics(&self, uuid: &str) -> Result<Vec<(String, u64)>, DriverError> {
        self.record(uuid)?;
        let read = |p: String| fs::read_to_string(p).ok().map(|s| s.trim().to_string());
        let num = |p: String| read(p).and_then(|s| s.parse::<u64>().ok());
        let (cpu_ns, mem_bytes, limit_bytes) = if cgroup_v2() {
            let base = format!("/sys/fs/cgroup/stratus/{uuid}");
            let cpu = read(format!("{base}/cpu.stat")).and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us * 1000)
            });
            (
                cpu,
                num(format!("{base}/memory.current")),
                num(format!("{base}/memory.max")),
            )
        } else {
            let cg = |c: &str, f: &str| format!("/sys/fs/cgroup/{c}/stratus/{uuid}/{f}");
            (
                num(cg("cpuacct", "cpuacct.usage")),
                num(cg("memory", "memory.usage_in_bytes")),
                num(cg("memory", "memory.limit_in_bytes")),
            )
        };
        let mut out = Vec::new();
        if let Some(ns) = cpu_ns {
            out.push(("cpu0_time".to_string(), ns));
        }
        if let Some(l) = limit_bytes {
            out.push(("memory".to_string(), l / 1024));
            out.push(("memory-actual".to_string(), l / 1024));
        }
        if let Some(m) = mem_bytes {
            out.push(("memory-rss".to_string(), m / 1024));
        }
        Ok(out)
    }

    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError> {
        self.record(uuid)?;
        let mut dir = self.instance_dir(uuid);
        if self.rescue_record(uuid)?.is_some() {
            dir.push("rescue");
        }
        crate::console_tail(&[dir.join("console.log")], tail_lines)
    }
}

/// Writes `data` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), DriverError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

fn map_status(s: Status) -> PowerState {
    match s {
        Status::Running => PowerState::Running,
        Status::Paused => PowerState::Paused,
        Status::Stopped => PowerState::Shutdown,
        Status::Created | Status::Unknown => PowerState::NoState,
    }
}

/// The instance's `resolv.conf` from its subnets' name servers, or `None`
/// (the image's own stays) when they name none.
fn write_resolv_conf(dir: &Path, dns: &[String]) -> Result<Option<PathBuf>, DriverError> {
    if dns.is_empty() {
        return Ok(None);
    }
    let path = dir.join("resolv.conf");
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    fs::write(&path, text)?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }
}
