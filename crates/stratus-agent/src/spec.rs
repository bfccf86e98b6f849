//! The OCI runtime spec (`config.json`, runtime-spec 1.0.2) for an instance.
//!
//! Namespaces, mounts, masked and read-only paths follow `runc spec`;
//! capabilities are Docker's default set (see [`CAPS`]); resources come from
//! the flavor.

use std::path::Path;

use serde_json::{Value, json};

use crate::{DriverError, ImageConfig, InstanceSpec};

/// The capabilities a root process gets: Docker's and containerd's default
/// set. `runc spec`'s three (AUDIT_WRITE, KILL, NET_BIND_SERVICE) leave root
/// unable to chown or switch users, which breaks ordinary server images
/// (databases drop privileges at start); this set is what those images are
/// built and tested against.
const CAPS: &[&str] = &[
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
    "CAP_AUDIT_WRITE",
];

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Where the config drive appears inside the container.
pub(crate) const CONFIG_DRIVE: &str = "/openstack";

/// Resolve an image `User` (`name`, `uid`, `uid:gid`, `name:group`) against
/// the rootfs's /etc/passwd and /etc/group. Empty means root.
pub(crate) fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), DriverError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    // name:x:uid:gid:...
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == u || (u.parse::<u32>().is_ok() && f[2] == u)));
    let uid = match u.parse::<u32>() {
        Ok(n) => n,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| {
                DriverError::InvalidImage(format!("image user {u:?} is not in its /etc/passwd"))
            })?,
    };
    let gid = match g {
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => std::fs::read_to_string(rootfs.join("etc/group"))
                .unwrap_or_default()
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    DriverError::InvalidImage(format!("image group {g:?} is not in its /etc/group"))
                })?,
        },
    };
    Ok((uid, gid))
}

/// Inputs that are not in the instance spec.
pub(crate) struct Bundle<'a> {
    /// The instance's `openstack` directory (bind-mounted read-only).
    pub openstack_dir: &'a Path,
    /// The process to run (already including a user-data wrapper).
    pub args: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_ns: bool,
    /// Swap may be limited (cgroup v2, or v1 with memsw accounting).
    pub swap_limit: bool,
    /// A `resolv.conf` to mount at /etc/resolv.conf.
    pub resolv_conf: Option<std::path::PathBuf>,
}

/// The CFS period the CPU quota is counted in (µs).
const CPU_PERIOD: u64 = 100_000;

/// Sets the memory (no swap on top) and CPU limits of a `config.json`
/// made by [`config`].
pub(crate) fn set_limits(config: &mut Value, vcpus: u32, memory_mb: u64) {
    let bytes = memory_mb.saturating_mul(1 << 20) as i64;
    let res = &mut config["linux"]["resources"];
    res["memory"]["limit"] = json!(bytes);
    if res["memory"].get("swap").is_some() {
        res["memory"]["swap"] = json!(bytes);
    }
    let period = res["cpu"]["period"].as_u64().unwrap_or(CPU_PERIOD);
    res["cpu"]["quota"] = json!((vcpus.max(1) as u64 * period) as i64);
    res["cpu"]["period"] = json!(period);
}

pub(crate) fn config(spec: &InstanceSpec, image: &ImageConfig, b: &Bundle) -> Value {
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.retain(|e| !e.starts_with("HOSTNAME="));
    env.push(format!("HOSTNAME={}", spec.hostname));
    let cwd = if image.working_dir.starts_with('/') {
        image.working_dir.clone()
    } else {
        "/".to_string()
    };
    // Root gets the default set; other users start with none effective,
    // as with Docker.
    let caps: Vec<&str> = CAPS.to_vec();
    let effective: Vec<&str> = if b.uid == 0 { caps.clone() } else { Vec::new() };
    let mut namespaces = vec![
        json!({"type": "pid"}),
        match &spec.netns {
            Some(path) => json!({"type": "network", "path": path}),
            None => json!({"type": "network"}),
        },
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if b.cgroup_ns {
        namespaces.push(json!({"type": "cgroup"}));
    }
    let bytes = spec.memory_mb.saturating_mul(1 << 20) as i64;
    let mut memory = json!({"limit": bytes});
    if b.swap_limit {
        memory["swap"] = json!(bytes);
    }
    let period = CPU_PERIOD;
    let mut v = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": b.uid, "gid": b.gid},
            "args": b.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps,
                "effective": effective,
                "permitted": effective,
            },
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            // Executable (user_data runs from here), but never set-uid.
            {"destination": CONFIG_DRIVE, "type": "bind", "source": b.openstack_dir,
             "options": ["rbind", "ro", "nosuid", "nodev"]},
        ],
        "linux": {
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": memory,
                "cpu": {"quota": (spec.vcpus.max(1) as u64 * period) as i64, "period": period},
                "pids": {"limit": 4096},
            },
            "cgroupsPath": format!("/stratus/{}", spec.uuid),
            "namespaces": namespaces,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    });
    if let (Some(r), Some(m)) = (&b.resolv_conf, v["mounts"].as_array_mut()) {
        m.push(
            json!({"destination": "/etc/resolv.conf", "type": "bind", "source": r,
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let d = std::env::temp_dir().join(format!("stratus-agent-spec-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(
            d.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n",
        )
        .unwrap();
        std::fs::write(d.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(resolve_user(&d, "").unwrap(), (0, 0));
        assert_eq!(resolve_user(&d, "www").unwrap(), (33, 34));
        assert_eq!(resolve_user(&d, "33").unwrap(), (33, 34));
        assert_eq!(resolve_user(&d, "1000").unwrap(), (1000, 0));
        assert_eq!(resolve_user(&d, "1000:7").unwrap(), (1000, 7));
        assert_eq!(resolve_user(&d, "www:staff").unwrap(), (33, 50));
        assert!(resolve_user(&d, "nobody").is_err());
        assert!(resolve_user(&d, "www:nogroup").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
