//! The storage node's NBD server: volumes attached to VMs on other nodes
//! reach them through one `qemu-storage-daemon` per storage node, which
//! opens each such volume's qcow2 file and exports its guest data over
//! NBD with TLS (a pre-shared key the controller hands only to the nodes
//! whose VMs use this node's volumes). QEMU on the other node is the NBD
//! client itself: no kernel module, no iSCSI target.
//!
//! The daemon runs daemonised, so a restart of the agent leaves the VMs'
//! disks in place; the agent finds it again by its monitor socket. The
//! exports are reconciled against the controller's list after every poll
//! (`VolumeWorkList::exports`): what is listed is exported, the rest goes.
//! The port and the key are kept in the node's state directory, so they
//! stay the same across restarts.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use stratus_wire::volume::NbdServer;

use crate::qmp::Qmp;

/// Writes `text` to a new file only its owner reads (as everything in
/// the data directory).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// One storage node's export daemon.
pub(super) struct Exporter {
    dir: PathBuf,
    port: u16,
    identity: String,
    key: String,
}

/// QEMU's name for volume `id`'s block node and export: `v` and the
/// first 30 hex digits of the id (QEMU allows 31 characters).
fn node_name(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(30)
        .collect();
    format!("v{hex}")
}

impl Exporter {
    /// The exporter kept under `state_dir/volume-export`; `None` when
    /// `qemu-storage-daemon` is not installed (volumes then attach only
    /// on this node).
    pub(super) fn open(state_dir: &Path, host: &str) -> anyhow::Result<Option<Exporter>> {
        let found = Command::new("qemu-storage-daemon")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            tracing::warn!(
                "qemu-storage-daemon is not installed (apt-get install qemu-system-common): this node's volumes attach only to servers on this node"
            );
            return Ok(None);
        }
        let dir = state_dir.join("volume-export");
        super::private_dir(&dir)?;
        let psk = dir.join("psk");
        super::private_dir(&psk)?;
        let key_file = psk.join("keys.psk");
        let identity = format!("stratus-{host}");
        let key = match std::fs::read_to_string(&key_file) {
            Ok(s) => s
                .trim()
                .rsplit_once(':')
                .map(|(_, k)| k.to_string())
                .context("keys.psk holds no key")?,
            Err(_) => {
                let mut raw = [0u8; 32];
                std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
                let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
                let part = key_file.with_extension("part");
                write_private(&part, &format!("{identity}:{key}\n"))?;
                std::fs::rename(&part, &key_file)?;
                key
            }
        };
        let port_file = dir.join("port");
        let port = match std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            Some(p) => p,
            None => {
                let p = std::net::TcpListener::bind("0.0.0.0:0")?
                    .local_addr()?
                    .port();
                write_private(&port_file, &p.to_string())?;
                p
            }
        };
        Ok(Some(Exporter {
            dir,
            port,
            identity,
            key,
        }))
    }

    /// What the controller tells other nodes about this server.
    pub(super) fn server(&self) -> NbdServer {
        NbdServer {
            port: self.port,
            psk_identity: self.identity.clone(),
            psk_key: self.key.clone(),
        }
    }

    /// A monitor connection to the daemon, started when none runs.
    fn monitor(&self) -> anyhow::Result<Qmp> {
        let sock = self.dir.join("qmp.sock");
        if let Ok(q) = Qmp::connect(&sock) {
            return Ok(q);
        }
        let _ = std::fs::remove_file(&sock);
        let out = Command::new("qemu-storage-daemon")
            .arg("--daemonize")
            .arg("--pidfile")
            .arg(self.dir.join("daemon.pid"))
            .arg("--chardev")
            .arg(format!(
                "socket,id=mon,path={},server=on,wait=off",
                sock.display()
            ))
            .args(["--monitor", "chardev=mon"])
            .arg("--object")
            .arg(format!(
                "tls-creds-psk,id=tls0,endpoint=server,dir={}",
                self.dir.join("psk").display()
            ))
            .arg("--nbd-server")
            .arg(format!(
                "addr.type=inet,addr.host=0.0.0.0,addr.port={},tls-creds=tls0",
                self.port
            ))
            .stdin(Stdio::null())
            .output()
            .context("running qemu-storage-daemon")?;
        anyhow::ensure!(
            out.status.success(),
            "qemu-storage-daemon did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        tracing::info!(port = self.port, "volume export daemon started");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Qmp::connect(&sock) {
                Ok(q) => return Ok(q),
                Err(e) if Instant::now() > deadline => {
                    anyhow::bail!("the volume export daemon's monitor: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Exports exactly the volumes `wanted` (files in `vol_dir`).
    pub(super) fn reconcile(&self, vol_dir: &Path, wanted: &[String]) -> anyhow::Result<()> {
        let sock = self.dir.join("qmp.sock");
        if wanted.is_empty() && Qmp::connect(&sock).is_err() {
            // Nothing to export and no daemon: none is started.
            return Ok(());
        }
        let mut q = self.monitor()?;
        // The exports' ids (volume ids shortened by `node_name`).
        let present: Vec<String> = q
            .execute("query-block-exports", None)?
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|e| e["id"].as_str())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let names: Vec<String> = wanted.iter().map(|w| node_name(w)).collect();
        for name in present.iter().filter(|p| !names.contains(p)) {
            // `hard`: a client still connected is cut off (its server's
            // detach is over by now).
            q.execute(
                "block-export-del",
                Some(json!({"id": name, "mode": "hard"})),
            )?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let still = q
                    .execute("query-block-exports", None)?
                    .as_array()
                    .is_some_and(|l| l.iter().any(|e| e["id"] == name.as_str()));
                if !still {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = q.execute("blockdev-del", Some(json!({"node-name": name})));
            tracing::info!(export = %name, "volume export removed");
        }
        // Each missing one; one that fails does not keep the others out.
        let mut failed = Vec::new();
        for id in wanted.iter().filter(|w| !present.contains(&node_name(w))) {
            if let Err(e) = self.export(&mut q, vol_dir, id) {
                failed.push(format!("{e:#}"));
            }
        }
        anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
        Ok(())
    }

    /// Opens volume `id`'s file and exports it under its id.
    fn export(&self, q: &mut Qmp, vol_dir: &Path, id: &str) -> anyhow::Result<()> {
        let safe = super::volume_files::safe_id(id)?;
        let path = super::volume_files::volume_path(vol_dir, safe);
        let name = node_name(id);
        // A node left by an export cut short.
        let _ = q.execute("blockdev-del", Some(json!({"node-name": name})));
        q.execute(
            "blockdev-add",
            Some(json!({
                "driver": "qcow2", "node-name": name,
                "file": {"driver": "file", "filename": path.display().to_string()},
            })),
        )
        .with_context(|| format!("opening volume {id} for its export"))?;
        if let Err(e) = q.execute(
            "block-export-add",
            Some(json!({
                "type": "nbd", "id": name, "node-name": name,
                "name": id, "writable": true,
            })),
        ) {
            let _ = q.execute("blockdev-del", Some(json!({"node-name": name})));
            return Err(e).with_context(|| format!("exporting volume {id}"));
        }
        tracing::info!(volume = %id, port = self.port, "volume exported over NBD");
        Ok(())
    }
}
