//! Cinder volumes in containers. A volume is a qcow2 file on this node;
//! a container gets a file system, not a block device:
//!
//! 1. `qemu-storage-daemon` opens the qcow2 file and exports the guest
//!    view (raw bytes) as a regular file through FUSE (there is no `nbd`
//!    module on our nodes; `/dev/fuse` and `loop` are);
//! 2. `losetup` makes that file a block device;
//! 3. ext4 is made on it the first time (when `blkid` finds nothing at
//!    all on it: a volume with any signature is never formatted);
//! 4. it is mounted (`nosuid,nodev`) on the instance's `volumes/vdX`,
//!    which the container sees at `/mnt/volumes/vdX`; an ext file system
//!    smaller than the volume (it was extended since) is grown first.
//!
//! A volume extended while mounted ([`grow`]) grows in place: the export
//! file is truncated to the new size (the daemon grows the image), the
//! loop device rereads its size and `resize2fs` grows the mounted file
//! system.
//!
//! The container sees mounts made after it started because its
//! `/mnt/volumes` is an `rbind` with `rslave` propagation of the host's
//! `volumes/` directory, which is made a shared mount point of its own
//! (bound on itself) before the container runs. Containers created
//! before volumes existed lack that mount: attaching to them fails.
//!
//! Layout under `instances/<uuid>/`:
//!
//! ```text
//! volumes/                  shared mount point, /mnt/volumes inside
//!   vdb/                    the volume's file system, mounted from:
//! volume-exports/
//!   vdb.raw                 the FUSE export (the daemon's mount point),
//!                           backing a loop device
//!   vdb.pid                 the daemon's pid file
//! ```
//!
//! The daemons leave the agent's cgroup for `stratus-volumes` (as QEMU
//! goes to `stratus-vms`), so a restart of the agent's service keeps them.
//!
//! Nothing is recorded besides what is there: [`set`] reads the daemons
//! (`/proc/*/cmdline`: a `qemu-storage-daemon` exporting into this
//! instance's `volume-exports/`, and which file it serves), the loop
//! devices (`/sys/block/loop*/loop/backing_file`) and the mounts
//! (`/proc/self/mountinfo`), tears down whatever is not wanted or is
//! broken (a dead daemon, a daemon serving another file), and builds what
//! is missing. So an agent killed at any step converges on its next
//! reconcile, and leaves no daemon, loop device or mount behind.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::container::{helper, is_mounted, unescape_mountinfo};
use crate::{DriverError, VmDisk, runc};

/// Where the volumes appear inside a container.
pub(crate) const MOUNT_DIR: &str = "/mnt/volumes";

fn rt(msg: impl Into<String>) -> DriverError {
    DriverError::Runtime(msg.into())
}

/// The host directory bound at [`MOUNT_DIR`].
pub(crate) fn volumes_dir(inst: &Path) -> PathBuf {
    inst.join("volumes")
}

fn exports_dir(inst: &Path) -> PathBuf {
    inst.join("volume-exports")
}

/// The OCI mount of the instance's volumes (see the module docs).
pub(crate) fn oci_mount(inst: &Path) -> serde_json::Value {
    serde_json::json!({
        "destination": MOUNT_DIR,
        "type": "bind",
        "source": volumes_dir(inst),
        "options": ["rbind", "rslave"],
    })
}

/// Whether the bundle's `config.json` in `bundle` binds [`MOUNT_DIR`].
pub(crate) fn has_mount(bundle: &Path) -> bool {
    fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| {
            v["mounts"]
                .as_array()
                .map(|m| m.iter().any(|m| m["destination"] == MOUNT_DIR))
        })
        .unwrap_or(false)
}

/// Makes `volumes/` a shared mount point of its own, so the mounts made
/// in it later reach the container's `rslave` bind. Idempotent; run
/// before the container starts.
pub(crate) fn prepare(inst: &Path) -> Result<(), DriverError> {
    let d = volumes_dir(inst);
    fs::create_dir_all(&d)?;
    if !is_mounted(&d) {
        helper(
            Command::new("mount").arg("--bind").arg(&d).arg(&d),
            "mount --bind (volumes)",
        )?;
    }
    helper(
        Command::new("mount").arg("--make-shared").arg(&d),
        "mount --make-shared (volumes)",
    )
}

/// `vdb` of `/dev/vdb`, when it is a name a volume may take.
fn short(device: &str) -> Result<&str, DriverError> {
    let s = device.rsplit('/').next().unwrap_or(device);
    let ok = s.len() == 3 && s.starts_with("vd") && (b'b'..=b'z').contains(&s.as_bytes()[2]);
    if ok {
        Ok(s)
    } else {
        Err(rt(format!("bad volume device name {device:?}")))
    }
}

/// What is there for one device name.
#[derive(Debug, Default)]
struct Present {
    /// The daemon exporting `vdX.raw`: its pid and the file it serves.
    daemon: Option<(u32, PathBuf)>,
    /// The FUSE export is mounted on `vdX.raw`.
    export_mounted: bool,
    /// Loop devices backed by `vdX.raw`.
    loops: Vec<String>,
    /// The sources mounted on `volumes/vdX` (normally one loop device).
    mounted: Vec<String>,
}

/// Everything there is of this instance's volumes, by device name.
fn observe(inst: &Path) -> BTreeMap<String, Present> {
    let exports = exports_dir(inst);
    let vols = volumes_dir(inst);
    let mut out: BTreeMap<String, Present> = BTreeMap::new();
    // Files and mount point directories, even when nothing runs.
    for d in [&exports, &vols] {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.split('.').next().unwrap_or_default().to_string();
                if short(&stem).is_ok() {
                    out.entry(stem).or_default();
                }
            }
        }
    }
    let export_of = |p: &str| -> Option<String> {
        let rest = Path::new(p).strip_prefix(&exports).ok()?.to_str()?;
        let stem = rest.strip_suffix(".raw")?;
        short(stem).ok().map(str::to_string)
    };
    // Daemons.
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args
                .first()
                .is_some_and(|a| a.ends_with("qemu-storage-daemon"))
            {
                continue;
            }
            let export = args.iter().find_map(|a| {
                a.split(',')
                    .find_map(|kv| kv.strip_prefix("mountpoint="))
                    .and_then(export_of)
            });
            let file = args.iter().find_map(|a| {
                a.strip_prefix("driver=file,filename=")
                    .and_then(|r| r.split(',').next())
                    .map(PathBuf::from)
                    .or_else(|| nbd_source(a))
            });
            if let (Some(dev), Some(file)) = (export, file) {
                out.entry(dev).or_default().daemon = Some((pid, file));
            }
        }
    }
    // Loop devices.
    if let Ok(rd) = fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) else {
                continue;
            };
            let b = b.trim_end_matches('\n');
            let b = b.strip_suffix(" (deleted)").unwrap_or(b);
            if let Some(dev) = export_of(b) {
                out.entry(dev)
                    .or_default()
                    .loops
                    .push(format!("/dev/{name}"));
            }
        }
    }
    // Mounts: the volumes' file systems and the FUSE exports.
    if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
        for l in info.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let Some(mp) = f.get(4).map(|m| unescape_mountinfo(m)) else {
                continue;
            };
            let source = f
                .iter()
                .position(|x| *x == "-")
                .and_then(|i| f.get(i + 2))
                .map(|s| unescape_mountinfo(s))
                .unwrap_or_default();
            if let Some(dev) = export_of(&mp) {
                out.entry(dev).or_default().export_mounted = true;
            } else if let Some(dev) = Path::new(&mp)
                .strip_prefix(&vols)
                .ok()
                .and_then(|r| r.to_str())
                .and_then(|r| short(r).ok())
            {
                out.entry(dev.to_string()).or_default().mounted.push(source);
            }
        }
    }
    out
}

/// The mount point in instance `inst` of the volume file `path`, when a
/// daemon of the instance serves that file and its file system is
/// mounted.
pub(crate) fn mount_of(inst: &Path, path: &Path) -> Option<PathBuf> {
    observe(inst).into_iter().find_map(|(dev, p)| {
        (p.daemon.as_ref().is_some_and(|(_, f)| f == path) && !p.mounted.is_empty())
            .then(|| volumes_dir(inst).join(dev))
    })
}

/// Runs `read` with the file system at `mount` frozen (`fsfreeze`): the
/// kernel writes it out and flushes the loop device, whose flush reaches
/// the daemon (a FUSE fsync), which writes its qcow2 caches; nothing is
/// written until it thaws.
pub(crate) fn frozen(
    mount: &Path,
    read: &mut dyn FnMut() -> Result<(), DriverError>,
) -> Result<(), DriverError> {
    helper(
        Command::new("fsfreeze").arg("--freeze").arg(mount),
        "fsfreeze --freeze",
    )?;
    let r = read();
    let thaw = helper(
        Command::new("fsfreeze").arg("--unfreeze").arg(mount),
        "fsfreeze --unfreeze",
    );
    r.and(thaw)
}

/// Makes the instance's volumes `disks`: see the module docs.
pub(crate) fn set(inst: &Path, disks: &[VmDisk]) -> Result<(), DriverError> {
    let mut want: BTreeMap<&str, &VmDisk> = BTreeMap::new();
    for d in disks {
        want.insert(short(&d.device)?, d);
        if d.path.to_string_lossy().contains(',') {
            return Err(rt(format!(
                "volume file {} has a ',' in its path",
                d.path.display()
            )));
        }
    }
    if !want.is_empty() && !has_mount(inst) {
        return Err(rt(format!(
            "container {} was created before containers took volumes (it has no {MOUNT_DIR}); rebuild it to attach volumes",
            inst.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    let present = observe(inst);
    // Away with what is not wanted, and with what is broken.
    for (dev, p) in &present {
        match want.get(dev.as_str()) {
            None => teardown(inst, dev, p, false)?,
            Some(d) if !healthy(p, d) => teardown(inst, dev, p, true)?,
            Some(_) => {}
        }
    }
    if want.is_empty() {
        return Ok(());
    }
    prepare(inst)?;
    let present = observe(inst);
    for (dev, d) in want {
        let p = present.get(dev);
        if let Err(e) = setup(inst, dev, d, p) {
            // Half made: undone now, as the attach rolls back.
            if let Some(p) = observe(inst).get(dev)
                && let Err(e2) = teardown(inst, dev, p, true)
            {
                tracing::warn!(device = dev, error = %e2, "could not undo a failed volume attach");
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Takes every volume away (the container is gone or going), and the
/// shared mount of `volumes/` too.
pub(crate) fn remove_all(inst: &Path) -> Result<(), DriverError> {
    for (dev, p) in observe(inst) {
        teardown(inst, &dev, &p, true)?;
    }
    let d = volumes_dir(inst);
    for _ in 0..4 {
        if !is_mounted(&d) {
            break;
        }
        if helper(Command::new("umount").arg(&d), "umount (volumes)").is_err() {
            helper(
                Command::new("umount").arg("-l").arg(&d),
                "umount -l (volumes)",
            )?;
        }
    }
    if is_mounted(&d) {
        return Err(rt(format!("{} is still mounted", d.display())));
    }
    Ok(())
}

/// What a daemon serves: the volume's file, or for a volume of another
/// node `nbd://HOST:PORT/EXPORT`.
fn source(d: &VmDisk) -> PathBuf {
    match &d.nbd {
        Some(n) => PathBuf::from(format!("nbd://{}:{}/{}", n.host, n.port, n.export)),
        None => d.path.clone(),
    }
}

/// The `source` of a daemon's `--blockdev driver=nbd,...` argument.
fn nbd_source(arg: &str) -> Option<PathBuf> {
    let rest = arg.strip_prefix("driver=nbd,")?;
    let get = |k: &str| {
        rest.split(',')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    Some(PathBuf::from(format!(
        "nbd://{}:{}/{}",
        get("server.host")?,
        get("server.port")?,
        get("export")?
    )))
}

/// The daemon runs and serves the wanted volume, and whatever is mounted
/// comes from its loop device.
fn healthy(p: &Present, d: &VmDisk) -> bool {
    p.daemon.as_ref().is_some_and(|(_, f)| f == &source(d))
        && p.export_mounted
        && p.mounted.iter().all(|m| p.loops.contains(m))
}

/// Unmounts, detaches the loop devices, stops the daemon, removes the
/// files. A volume the container still uses cannot be unmounted: unless
/// `force`, that is an error (the detach rolls back).
fn teardown(inst: &Path, dev: &str, p: &Present, force: bool) -> Result<(), DriverError> {
    let mp = volumes_dir(inst).join(dev);
    for _ in 0..8 {
        if !is_mounted(&mp) {
            break;
        }
        if let Err(e) = helper(Command::new("umount").arg(&mp), "umount (volume)") {
            if !force {
                return Err(rt(format!(
                    "the volume at {MOUNT_DIR}/{dev} is in use in the container: {e}"
                )));
            }
            helper(
                Command::new("umount").arg("-l").arg(&mp),
                "umount -l (volume)",
            )?;
        }
    }
    for l in &p.loops {
        helper(Command::new("losetup").arg("-d").arg(l), "losetup -d")?;
    }
    if let Some((pid, _)) = &p.daemon {
        stop_daemon(*pid)?;
    }
    let export = exports_dir(inst).join(format!("{dev}.raw"));
    if is_mounted(&export) {
        // A daemon killed outright leaves its FUSE mount behind.
        helper(
            Command::new("umount").arg("-l").arg(&export),
            "umount -l (export)",
        )?;
    }
    // The key of a volume of another node.
    let _ = fs::remove_dir_all(exports_dir(inst).join(format!("{dev}.psk")));
    for f in [export, exports_dir(inst).join(format!("{dev}.pid"))] {
        match fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(rt(format!("removing {}: {e}", f.display()))),
        }
    }
    if !is_mounted(&mp) {
        let _ = fs::remove_dir(&mp);
    }
    tracing::info!(instance = %inst.display(), device = dev, "volume taken away");
    Ok(())
}

/// SIGTERM (the daemon flushes and ends its export), SIGKILL after 10 s.
fn stop_daemon(pid: u32) -> Result<(), DriverError> {
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !zombie(pid);
    let pid_s = pid.to_string();
    for (sig, wait) in [("-TERM", 10), ("-KILL", 5)] {
        let _ = Command::new("kill")
            .args([sig, &pid_s])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(wait);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !alive() {
            return Ok(());
        }
    }
    Err(rt(format!("qemu-storage-daemon {pid} does not end")))
}

fn zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Builds what is missing of a wanted volume (`p` is healthy or absent).
fn setup(inst: &Path, dev: &str, d: &VmDisk, p: Option<&Present>) -> Result<(), DriverError> {
    let exports = exports_dir(inst);
    fs::create_dir_all(&exports)?;
    let export = exports.join(format!("{dev}.raw"));
    let fresh = p.is_none_or(|p| p.daemon.is_none());
    if fresh {
        if d.nbd.is_none() && !d.path.exists() {
            return Err(rt(format!(
                "the volume's file {} is missing",
                d.path.display()
            )));
        }
        // The FUSE export needs a regular file to mount on.
        fs::File::create(&export)?;
        let pidfile = exports.join(format!("{dev}.pid"));
        let mut cmd = Command::new("qemu-storage-daemon");
        match &d.nbd {
            // Another node's volume: the daemon is the NBD client (TLS
            // with the storage node's key) and exports what it reads.
            Some(n) => {
                let psk = exports.join(format!("{dev}.psk"));
                write_psk(&psk, n)?;
                cmd.arg("--object")
                    .arg(format!(
                        "tls-creds-psk,id=tls0,endpoint=client,dir={},username={}",
                        psk.display(),
                        n.psk_identity
                    ))
                    .arg("--blockdev")
                    .arg(format!(
                        "driver=nbd,node-name=disk,server.type=inet,server.host={},server.port={},export={},tls-creds=tls0",
                        n.host, n.port, n.export
                    ));
            }
            None => {
                cmd.arg("--blockdev")
                    .arg(format!(
                        "driver=file,filename={},node-name=file",
                        d.path.display()
                    ))
                    .args(["--blockdev", "driver=qcow2,file=file,node-name=disk"]);
            }
        }
        cmd.arg("--export")
            .arg(format!(
                "type=fuse,id=export,node-name=disk,mountpoint={},writable=on",
                export.display()
            ))
            .arg("--daemonize")
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The storage node exports another node's volume once it has
        // seen the attach: the first tries may find no export yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = cmd.spawn().map_err(|e| {
                rt(format!(
                    "cannot run qemu-storage-daemon ({e}); apt-get install qemu-system-common"
                ))
            })?;
            let (status, _, err) =
                runc::wait_timeout(child, Duration::from_secs(30), "qemu-storage-daemon")?;
            if status.success() {
                break;
            }
            if d.nbd.is_none() || Instant::now() > deadline {
                return Err(rt(format!(
                    "qemu-storage-daemon for volume {} failed ({status}): {}",
                    d.volume_id,
                    String::from_utf8_lossy(&err).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Some(pid) = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            escape_agent_cgroup(pid);
        }
    }
    let (mut loops, mounted) = match p {
        // Loop devices older than the daemon (left lazily detached while
        // a process held the file system) read a dead export: never
        // reused.
        Some(p) if fresh => {
            for l in &p.loops {
                let _ = helper(Command::new("losetup").arg("-d").arg(l), "losetup -d");
            }
            if !p.mounted.is_empty() {
                return Err(rt(format!(
                    "{MOUNT_DIR}/{dev} is still mounted from an earlier export"
                )));
            }
            (Vec::new(), Vec::new())
        }
        Some(p) => (p.loops.clone(), p.mounted.clone()),
        None => (Vec::new(), Vec::new()),
    };
    // Extra loop devices (a crash between losetup and its answer).
    let keep = mounted.first().cloned().or_else(|| loops.first().cloned());
    for l in loops.iter().filter(|l| Some(*l) != keep.as_ref()) {
        helper(Command::new("losetup").arg("-d").arg(l), "losetup -d")?;
    }
    loops.retain(|l| Some(l) == keep.as_ref());
    let lo = match loops.first() {
        Some(l) => l.clone(),
        None => output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&export),
            "losetup --find",
        )?
        .trim()
        .to_string(),
    };
    if mounted.is_empty() {
        match fs_type(&lo)? {
            // Nothing at all on it: a new volume.
            None => {
                helper(
                    Command::new("mkfs.ext4")
                        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
                        .arg(&lo),
                    "mkfs.ext4",
                )?;
                tracing::info!(volume = %d.volume_id, "made ext4 on a new volume");
            }
            Some(t) if t.starts_with("ext") => {
                if let Err(e) = fit_fs(&lo) {
                    tracing::warn!(volume = %d.volume_id, error = %e,
                        "the volume's file system could not grow to the volume's size; it is mounted as it is");
                }
            }
            Some(_) => {}
        }
        let mp = volumes_dir(inst).join(dev);
        fs::create_dir_all(&mp)?;
        helper(
            Command::new("mount")
                .args(["-o", "nosuid,nodev"])
                .arg(&lo)
                .arg(&mp),
            "mount (volume)",
        )
        .map_err(|e| {
            rt(format!(
                "volume {} holds no file system a container can mount: {e}",
                d.volume_id
            ))
        })?;
        tracing::info!(volume = %d.volume_id, device = %d.device, loop_device = %lo,
            "volume mounted for the container");
    }
    Ok(())
}

/// Moves a daemon out of the agent's cgroup (best effort), so a service
/// manager stopping or restarting the agent's unit does not take the
/// containers' volumes down with it: to `stratus-volumes` at cgroup v2's
/// root, or in v1's `systemd` (and hybrid `unified`) hierarchies.
fn escape_agent_cgroup(pid: u32) {
    let root = Path::new("/sys/fs/cgroup");
    let dirs: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
        vec![root.join("stratus-volumes")]
    } else {
        ["systemd", "unified"]
            .iter()
            .map(|h| root.join(h))
            .filter(|h| h.join("cgroup.procs").exists())
            .map(|h| h.join("stratus-volumes"))
            .collect()
    };
    for d in dirs {
        let r = fs::create_dir_all(&d)
            .and_then(|()| fs::write(d.join("cgroup.procs"), pid.to_string()));
        if let Err(e) = r {
            tracing::warn!(cgroup = %d.display(), error = %e, "could not move qemu-storage-daemon out of the agent's cgroup");
        }
    }
}

/// What `blkid` finds on `dev`: a file system type (`ext4`, or any
/// other signature's type, empty when it has none), or `None` when there
/// is nothing at all on it.
fn fs_type(dev: &str) -> Result<Option<String>, DriverError> {
    let child = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(dev)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| rt(format!("cannot run blkid: {e}")))?;
    let (status, out, _) = runc::wait_timeout(child, Duration::from_secs(60), "blkid")?;
    match status.code() {
        Some(0) => Ok(Some(
            String::from_utf8_lossy(&out)
                .lines()
                .find_map(|l| l.strip_prefix("TYPE="))
                .unwrap_or_default()
                .to_string(),
        )),
        Some(2) => Ok(None),
        c => Err(rt(format!("blkid cannot tell what is on {dev} ({c:?})"))),
    }
}

/// The size in bytes of block device `/dev/NAME`.
fn device_bytes(dev: &str) -> Result<u64, DriverError> {
    let name = dev.rsplit('/').next().unwrap_or(dev);
    fs::read_to_string(format!("/sys/block/{name}/size"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|sectors| sectors * 512)
        .ok_or_else(|| rt(format!("cannot read the size of {dev}")))
}

/// Room a file system may leave at the end of its volume before it is
/// grown (the last block group's slack; extends are whole GiB).
const FIT_SLACK: u64 = 64 << 20;

/// Grows the ext file system on `dev`, not mounted, to the device's size
/// when the volume has grown since (an extend while it was detached, or
/// while it was mounted where it could not grow online): `e2fsck`, then
/// `resize2fs`.
fn fit_fs(dev: &str) -> Result<(), DriverError> {
    let head = output(Command::new("dumpe2fs").arg("-h").arg(dev), "dumpe2fs -h")?;
    let field = |k: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let (Some(count), Some(block)) = (field("Block count:"), field("Block size:")) else {
        return Err(rt(format!("dumpe2fs gives no size for {dev}")));
    };
    if count * block + FIT_SLACK > device_bytes(dev)? {
        return Ok(());
    }
    // resize2fs asks for a file system checked since it was last
    // mounted; 0 and 1 (errors fixed) are fine.
    let child = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(dev)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| rt(format!("cannot run e2fsck: {e}")))?;
    let (status, _, err) = runc::wait_timeout(child, Duration::from_secs(600), "e2fsck")?;
    if !matches!(status.code(), Some(0 | 1)) {
        return Err(rt(format!(
            "e2fsck found errors it cannot fix ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    helper(Command::new("resize2fs").arg(dev), "resize2fs")?;
    tracing::info!(
        device = dev,
        "grew a volume's file system to the volume's size"
    );
    Ok(())
}

/// Grows volume file `path`, which a daemon of instance `inst` serves,
/// to `bytes` while the container has it: the FUSE export is truncated
/// to the new size (the daemon grows the qcow2 image under it), the loop
/// device takes the new capacity (`losetup -c`), and an ext file system
/// on it grows online (`resize2fs` on the mounted file system; where the
/// agent lacks `CAP_SYS_RESOURCE`, which that needs, the file system
/// grows when it is next mounted: [`fit_fs`]). `Ok(false)` when no
/// daemon of `inst` serves `path`.
pub(crate) fn grow(inst: &Path, path: &Path, bytes: u64) -> Result<bool, DriverError> {
    let Some((dev, p)) = observe(inst)
        .into_iter()
        .find(|(_, p)| p.daemon.as_ref().is_some_and(|(_, f)| f == path))
    else {
        return Ok(false);
    };
    if !p.export_mounted {
        return Err(rt(format!(
            "the export of {} is not mounted; the next reconcile rebuilds it",
            path.display()
        )));
    }
    let export = exports_dir(inst).join(format!("{dev}.raw"));
    let f = fs::OpenOptions::new().write(true).open(&export)?;
    if f.metadata()?.len() < bytes {
        f.set_len(bytes)
            .map_err(|e| rt(format!("growing the export of {}: {e}", path.display())))?;
    }
    drop(f);
    for l in &p.loops {
        helper(Command::new("losetup").arg("-c").arg(l), "losetup -c")?;
    }
    if let Some(lo) = p.mounted.first()
        && fs_type(lo)
            .ok()
            .flatten()
            .is_some_and(|t| t.starts_with("ext"))
        && let Err(e) = helper(Command::new("resize2fs").arg(lo), "resize2fs (online)")
    {
        tracing::warn!(volume = %path.display(), error = %e,
            "the volume grew, but its mounted file system cannot grow now: it grows when it is next mounted");
    }
    tracing::info!(instance = %inst.display(), device = %dev, bytes, "volume grown in use");
    Ok(true)
}

/// A helper command's stdout.
fn output(cmd: &mut Command, what: &str) -> Result<String, DriverError> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| rt(format!("cannot run {what}: {e}")))?;
    let (status, out, err) = runc::wait_timeout(child, Duration::from_secs(60), what)?;
    if !status.success() {
        return Err(rt(format!(
            "{what} failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Writes the pre-shared key of NBD target `n` where QEMU's
/// `tls-creds-psk` object reads it (`dir/keys.psk`, `identity:key`),
/// readable by this user only.
pub(crate) fn write_psk(dir: &Path, n: &stratus_wire::volume::NbdTarget) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("keys.psk"))?;
    std::io::Write::write_all(
        &mut f,
        format!("{}:{}\n", n.psk_identity, n.psk_key).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(short("/dev/vdb").unwrap(), "vdb");
        assert_eq!(short("vdl").unwrap(), "vdl");
        for bad in ["/dev/vda", "/dev/sdb", "/dev/vd", "/dev/vdbb", "../x"] {
            assert!(short(bad).is_err(), "{bad}");
        }
    }
}
