//! The container driver: OCI containers run by a real OCI runtime.
//!
//! Layout under the state directory:
//!
//! - `images/<image id>/{rootfs, process.json}`: each image unpacked once,
//!   shared read-only by every container of the node (written to a temp
//!   directory and renamed, so a crash never leaves half an image);
//! - `instances/<server id>/`: `config.json` (the OCI bundle), `rootfs`
//!   (an overlay of the image with `upper`/`work`, so writes survive a
//!   stop and start like a VM's disk), `openstack/latest/` (config-drive
//!   style `meta_data.json` and `user_data`, bind-mounted read-only at
//!   `/openstack`), and `console.log` (the workload's stdout and stderr);
//! - `runc/`: the runtime's own state, so containers are found again
//!   after the agent restarts.
//!
//! Each server gets its own cgroup (`/stratus/<server id>`) with the
//! flavor's memory (no swap beyond it) and CPU quota, and its own PID, IPC,
//! UTS, mount and network namespaces.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::unpack::{ImageProcess, unpack};
use crate::{Driver, DriverError, HostResources, InstanceSpec, PowerState};

/// Looks for `runc`, then `crun`, in PATH.
pub fn find_runtime() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in ["runc", "crun"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

pub struct ContainerDriver {
    state: PathBuf,
    runtime: PathBuf,
    /// Serialises image unpacking.
    images: Mutex<()>,
}

const RUNTIME_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a console log read back.
const CONSOLE_TAIL: u64 = 1 << 20;

impl ContainerDriver {
    pub fn new(state_dir: &Path, runtime: PathBuf) -> Result<Self, DriverError> {
        for d in ["images", "instances", "runc"] {
            fs::create_dir_all(state_dir.join(d))?;
        }
        // Leftovers of an unpack cut short.
        for e in fs::read_dir(state_dir.join("images"))?.flatten() {
            if e.file_name().to_string_lossy().contains(".tmp-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let d = ContainerDriver {
            state: fs::canonicalize(state_dir)?,
            runtime,
            images: Mutex::new(()),
        };
        let v = d.run(&["--version"]).map_err(|e| {
            DriverError::Runtime(format!("{} does not run: {e}", d.runtime.display()))
        })?;
        tracing::info!(runtime = %d.runtime.display(), version = %v.lines().next().unwrap_or(""), "container driver ready");
        Ok(d)
    }

    fn instance_dir(&self, uuid: &str) -> PathBuf {
        self.state.join("instances").join(uuid)
    }

    /// Runs the runtime with a timeout; stdout on success, stderr in the
    /// error otherwise.
    fn run(&self, args: &[&str]) -> Result<String, DriverError> {
        let mut cmd = Command::new(&self.runtime);
        if args.first() != Some(&"--version") {
            cmd.arg("--root").arg(self.state.join("runc"));
        }
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                DriverError::Runtime(format!("cannot run {}: {e}", self.runtime.display()))
            })?;
        wait_output(
            child,
            RUNTIME_TIMEOUT,
            &format!("{} {}", self.runtime.display(), args.join(" ")),
        )
    }

    fn valid_id(uuid: &str) -> Result<(), DriverError> {
        if uuid.is_empty()
            || uuid.len() > 64
            || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        Ok(())
    }

    /// The runtime's status of a container, or None when it has none.
    fn status(&self, uuid: &str) -> Option<String> {
        Self::valid_id(uuid).ok()?;
        let out = self.run(&["state", uuid]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["status"].as_str().map(str::to_string)
    }

    /// Unpacks an image once; returns its rootfs and process.
    fn image(&self, spec: &InstanceSpec) -> Result<(PathBuf, ImageProcess), DriverError> {
        if spec.image_id.is_empty() || spec.image_id.contains('/') || spec.image_id.starts_with('.')
        {
            return Err(DriverError::InvalidImage(format!(
                "bad image id {:?}",
                spec.image_id
            )));
        }
        let _g = self.images.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.state.join("images").join(&spec.image_id);
        if !dir.join("process.json").exists() {
            let tmp = self.state.join("images").join(format!(
                "{}.tmp-{}",
                spec.image_id,
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(tmp.join("rootfs"))?;
            let started = Instant::now();
            let result = unpack(
                &spec.image_file,
                &spec.container_format,
                &tmp.join("rootfs"),
            );
            let process = match result {
                Ok(p) => p,
                Err(e) => {
                    let _ = fs::remove_dir_all(&tmp);
                    return Err(e);
                }
            };
            fs::write(tmp.join("process.json"), process.to_json().to_string())?;
            let _ = fs::remove_dir_all(&dir);
            fs::rename(&tmp, &dir)?;
            tracing::info!(image = %spec.image_id, ms = started.elapsed().as_millis() as u64, "image unpacked");
        }
        let text = fs::read_to_string(dir.join("process.json"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| DriverError::InvalidImage(e.to_string()))?;
        Ok((dir.join("rootfs"), ImageProcess::from_config(&v)))
    }

    fn mounted(path: &Path) -> bool {
        let p = path.to_string_lossy();
        fs::read_to_string("/proc/mounts")
            .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(&*p)))
            .unwrap_or(false)
    }

    /// Mounts the instance's overlay root (or copies the image where
    /// overlayfs is not available).
    fn mount_root(&self, uuid: &str) -> Result<(), DriverError> {
        let dir = self.instance_dir(uuid);
        let root = dir.join("rootfs");
        if Self::mounted(&root) || dir.join("rootfs.copied").exists() {
            return Ok(());
        }
        let lower_link = dir.join("image");
        let lower = fs::read_link(&lower_link)?;
        for d in ["upper", "work", "rootfs"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| DriverError::Runtime(format!("cannot run mount: {e}")));
        let ok = match out {
            Ok(child) => wait_output(child, RUNTIME_TIMEOUT, "mount overlay").is_ok(),
            Err(_) => false,
        };
        if !ok {
            tracing::warn!(
                server = uuid,
                "overlayfs unavailable here; copying the image instead"
            );
            let status = Command::new("cp")
                .args(["-a", "--"])
                .arg(format!("{}/.", lower.display()))
                .arg(&root)
                .status()?;
            if !status.success() {
                return Err(DriverError::Runtime("copying the image root failed".into()));
            }
            File::create(dir.join("rootfs.copied"))?;
        }
        Ok(())
    }

    fn unmount_root(&self, uuid: &str) {
        let root = self.instance_dir(uuid).join("rootfs");
        if Self::mounted(&root) {
            let _ = Command::new("umount").arg("-l").arg(&root).status();
        }
    }

    /// Starts the container from its bundle, stdout and stderr appended
    /// to the console log.
    fn launch(&self, uuid: &str) -> Result<(), DriverError> {
        self.mount_root(uuid)?;
        let dir = self.instance_dir(uuid);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))?;
        let child = Command::new(&self.runtime)
            .arg("--root")
            .arg(self.state.join("runc"))
            .args(["run", "--detach", "--bundle"])
            .arg(&dir)
            .arg(uuid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                DriverError::Runtime(format!("cannot run {}: {e}", self.runtime.display()))
            })?;
        let status = wait_status(child, RUNTIME_TIMEOUT)?;
        if !status.success() {
            let tail = tail(&dir.join("console.log"), 2048).unwrap_or_default();
            let _ = self.run(&["delete", "--force", uuid]);
            return Err(DriverError::Runtime(format!(
                "the runtime could not start the container: {}",
                tail.lines().last().unwrap_or("no output")
            )));
        }
        Ok(())
    }

    /// Waits until the container is stopped, up to `timeout`.
    fn wait_stopped(&self, uuid: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.status(uuid).as_deref() {
                Some("stopped") | None => return true,
                _ => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&self, uuid: &str, signal: &str) {
        let _ = self.run(&["kill", uuid, signal]);
    }

    fn bundle_config(
        &self,
        spec: &InstanceSpec,
        image: &ImageProcess,
        rootfs_has_sh: bool,
    ) -> Value {
        let dir = self.instance_dir(&spec.uuid);
        let mut args: Vec<String> = image
            .entrypoint
            .iter()
            .chain(image.cmd.iter())
            .cloned()
            .collect();
        if args.is_empty() {
            args = vec!["/bin/sh".into()];
        }
        let script = spec
            .user_data
            .as_ref()
            .is_some_and(|u| u.starts_with(b"#!"));
        if script {
            if rootfs_has_sh {
                // As cloud-init runs a user-data script at first boot: run
                // it, then the image's own command.
                let mut wrapped = vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    "/openstack/latest/user_data; exec \"$@\"".to_string(),
                    "sh".to_string(),
                ];
                wrapped.extend(args);
                args = wrapped;
            } else {
                tracing::warn!(server = %spec.uuid, "user_data is a script but the image has no /bin/sh to run it");
            }
        }
        let mut env = image.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        env.push(format!("HOSTNAME={}", spec.hostname));
        let (uid, gid) = resolve_user(
            &image.user,
            &self
                .state
                .join("images")
                .join(&spec.image_id)
                .join("rootfs"),
        );
        let caps = json!([
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE"
        ]);
        let memory = spec.memory_mb as i64 * 1024 * 1024;
        let period: u64 = 100_000;
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid},
                "args": args,
                "env": env,
                "cwd": if image.working_dir.is_empty() { "/".to_string() } else { image.working_dir.clone() },
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": dir.join("rootfs"), "readonly": false},
            "hostname": spec.hostname,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/openstack", "type": "bind", "source": dir.join("openstack"), "options": ["rbind", "ro", "nosuid", "nodev"]}
            ],
            "linux": {
                "cgroupsPath": format!("/stratus/{}", spec.uuid),
                "resources": {
                    "devices": [{"allow": false, "access": "rwm"}],
                    "memory": {"limit": memory, "swap": memory},
                    "cpu": {"quota": spec.vcpus.max(1) as u64 * period, "period": period},
                    "pids": {"limit": 4096}
                },
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}
                ],
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
                ]
            }
        })
    }
}

/// `uid[:gid]` or a user name from the image's /etc/passwd; root when
/// unset or unknown.
fn resolve_user(user: &str, rootfs: &Path) -> (u32, u32) {
    if user.is_empty() {
        return (0, 0);
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let from_passwd = |name: &str| -> Option<(u32, u32)> {
        let text = fs::read_to_string(rootfs.join("etc/passwd")).ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 3 && f[0] == name {
                Some((f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let (uid, pgid) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => from_passwd(u).unwrap_or((0, 0)),
    };
    let gid = g.parse::<u32>().unwrap_or(pgid);
    (uid, gid)
}

fn wait_status(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus, DriverError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DriverError::Runtime(
                "the runtime did not answer in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_output(
    mut child: std::process::Child,
    timeout: Duration,
    what: &str,
) -> Result<String, DriverError> {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let status = wait_status(child, timeout)?;
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(DriverError::Runtime(format!("{what}: {}", err.trim())))
    }
}

/// The last `max` bytes of a file.
fn tail(path: &Path, max: u64) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[allow(unsafe_code)]
fn disk_gb(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to
    // writable memory of the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    let gb = st.f_blocks as u64 * st.f_frsize as u64 / (1024 * 1024 * 1024);
    gb
}

impl Driver for ContainerDriver {
    fn name(&self) -> &'static str {
        "container"
    }

    fn host_resources(&self) -> HostResources {
        let version = self
            .run(&["--version"])
            .ok()
            .and_then(|v| {
                let first = v.lines().next()?.to_string();
                let ver = first
                    .split_whitespace()
                    .nth(2)?
                    .split('+')
                    .next()?
                    .to_string();
                let mut n = 0u64;
                for part in ver.split('.').take(3) {
                    n = n * 1000 + part.parse::<u64>().unwrap_or(0);
                }
                Some(n)
            })
            .unwrap_or(0);
        HostResources {
            vcpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_mb: crate::mem_total_mb(),
            disk_gb: disk_gb(&self.state),
            arch: std::env::consts::ARCH.to_string(),
            hypervisor_type: self
                .runtime
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "runc".into()),
            hypervisor_version: version,
            cpu_model: crate::cpu_model(),
        }
    }

    fn spawn(&self, spec: &InstanceSpec) -> Result<(), DriverError> {
        Self::valid_id(&spec.uuid)?;
        if !matches!(spec.container_format.as_str(), "docker" | "oci") {
            return Err(DriverError::InvalidImage(format!(
                "the container driver runs docker or oci images, not {:?}",
                spec.container_format
            )));
        }
        if self.status(&spec.uuid).is_some() {
            return Ok(());
        }
        let (lower, process) = self.image(spec)?;
        let dir = self.instance_dir(&spec.uuid);
        fs::create_dir_all(dir.join("openstack/latest"))?;
        fs::write(
            dir.join("openstack/latest/meta_data.json"),
            &spec.meta_data_json,
        )?;
        if let Some(u) = &spec.user_data {
            let p = dir.join("openstack/latest/user_data");
            fs::write(&p, u)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        }
        let link = dir.join("image");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&lower, &link)?;
        let has_sh =
            lower.join("bin/sh").exists() || fs::symlink_metadata(lower.join("bin/sh")).is_ok();
        let config = self.bundle_config(spec, &process, has_sh);
        let mut f = File::create(dir.join("config.json"))?;
        f.write_all(config.to_string().as_bytes())?;
        f.sync_all()?;
        self.launch(&spec.uuid)
    }

    fn start(&self, uuid: &str) -> Result<(), DriverError> {
        Self::valid_id(uuid)?;
        match self.status(uuid).as_deref() {
            Some("running") => Ok(()),
            Some("paused") => self.run(&["resume", uuid]).map(|_| ()),
            Some(_) => {
                self.run(&["delete", "--force", uuid])?;
                self.launch(uuid)
            }
            None if self.instance_dir(uuid).join("config.json").exists() => self.launch(uuid),
            None => Err(DriverError::NotFound(uuid.to_string())),
        }
    }

    fn stop(&self, uuid: &str, timeout: Duration) -> Result<(), DriverError> {
        Self::valid_id(uuid)?;
        match self.status(uuid).as_deref() {
            None => return Err(DriverError::NotFound(uuid.to_string())),
            Some("stopped") => return Ok(()),
            Some("paused") => {
                let _ = self.run(&["resume", uuid]);
            }
            _ => {}
        }
        self.kill(uuid, "TERM");
        if !self.wait_stopped(uuid, timeout) {
            tracing::info!(server = uuid, "no exit after SIGTERM; killing");
            self.kill(uuid, "KILL");
            if !self.wait_stopped(uuid, Duration::from_secs(10)) {
                return Err(DriverError::Runtime(format!(
                    "container {uuid} does not stop"
                )));
            }
        }
        Ok(())
    }

    fn reboot(&self, uuid: &str, hard: bool) -> Result<(), DriverError> {
        if hard {
            Self::valid_id(uuid)?;
            if self.status(uuid).as_deref() == Some("paused") {
                let _ = self.run(&["resume", uuid]);
            }
            self.kill(uuid, "KILL");
            self.wait_stopped(uuid, Duration::from_secs(10));
        } else {
            self.stop(uuid, Duration::from_secs(60))?;
        }
        self.start(uuid)
    }

    fn pause(&self, uuid: &str) -> Result<(), DriverError> {
        Self::valid_id(uuid)?;
        match self.status(uuid).as_deref() {
            Some("paused") => Ok(()),
            Some("running") => self.run(&["pause", uuid]).map(|_| ()),
            Some(s) => Err(DriverError::Runtime(format!(
                "cannot pause a {s} container"
            ))),
            None => Err(DriverError::NotFound(uuid.to_string())),
        }
    }

    fn unpause(&self, uuid: &str) -> Result<(), DriverError> {
        Self::valid_id(uuid)?;
        match self.status(uuid).as_deref() {
            Some("running") => Ok(()),
            Some("paused") => self.run(&["resume", uuid]).map(|_| ()),
            Some(s) => Err(DriverError::Runtime(format!(
                "cannot resume a {s} container"
            ))),
            None => Err(DriverError::NotFound(uuid.to_string())),
        }
    }

    fn destroy(&self, uuid: &str) -> Result<(), DriverError> {
        Self::valid_id(uuid)?;
        if self.status(uuid).is_some() {
            self.run(&["delete", "--force", uuid])?;
        }
        self.unmount_root(uuid);
        let dir = self.instance_dir(uuid);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    fn power_state(&self, uuid: &str) -> PowerState {
        match self.status(uuid).as_deref() {
            Some("running") => PowerState::Running,
            Some("paused") => PowerState::Paused,
            Some("stopped") | Some("created") => PowerState::Shutdown,
            Some(_) => PowerState::Crashed,
            None => PowerState::NoState,
        }
    }

    fn list(&self) -> Vec<(String, PowerState)> {
        let Ok(out) = self.run(&["list", "--format", "json"]) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        let id = c["id"].as_str()?.to_string();
                        let p = match c["status"].as_str()? {
                            "running" => PowerState::Running,
                            "paused" => PowerState::Paused,
                            "stopped" | "created" => PowerState::Shutdown,
                            _ => PowerState::Crashed,
                        };
                        Some((id, p))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn console_output(&self, uuid: &str, tail_lines: Option<usize>) -> Result<String, DriverError> {
        Self::valid_id(uuid)?;
        let path = self.instance_dir(uuid).join("console.log");
        if !path.exists() {
            return Err(DriverError::NotFound(uuid.to_string()));
        }
        let text = tail(&path, CONSOLE_TAIL)?;
        Ok(match tail_lines {
            Some(n) => {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(n);
                let mut s = lines[from..].join("\n");
                if !s.is_empty() {
                    s.push('\n');
                }
                s
            }
            None => text,
        })
    }
}
