//! The storage node's volume and snapshot files: where they are, the
//! ids that name them, `qemu-img`, and reading one at a point in time.
//! Shared by the volume tasks (`volumes.rs`), the backup tasks
//! (`backups.rs`) and volume-backed spawns (`tasks.rs`).

use std::process::Command;

use anyhow::Context;

use super::*;

/// The file of volume `id` in `dir`.
pub(crate) fn volume_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("volume-{id}.qcow2"))
}

/// The file of snapshot `id` in `dir`.
pub(crate) fn snapshot_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("snapshot-{id}.qcow2"))
}

/// Ids become file names: only letters, digits, `-` and `_`.
pub(crate) fn safe_id(id: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "bad volume id {id:?}"
    );
    Ok(id)
}

/// Runs `read` on the volume file `src` as one point in time: while the
/// instance on this node that holds it (a VM, a container) is quiesced
/// (see `Driver::quiesced`), or at once when none does. Readers pass
/// `-U` to `qemu-img`: the holder keeps its lock but does not write.
pub(crate) fn read_quiesced(
    sh: &Shared,
    src: &Path,
    mut read: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let held = sh
        .driver
        .quiesced(src, &mut || {
            read().map_err(|e| crate::DriverError::Runtime(format!("{e:#}")))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !held {
        read()?;
    }
    Ok(())
}

/// Runs `qemu-img ARGS PATH TAIL`, with its stderr in the error.
pub(crate) fn qemu_img(args: &[&str], path: &Path, tail: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("qemu-img")
        .args(args)
        .arg(path)
        .args(tail)
        .output()
        .context("running qemu-img (apt-get install qemu-utils)")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img {} failed: {}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A file's virtual size in bytes (`qemu-img info`).
pub(crate) fn virtual_size(path: &Path) -> anyhow::Result<u64> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .context("running qemu-img info")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img info failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    v["virtual-size"]
        .as_u64()
        .context("qemu-img info gave no virtual size")
}
