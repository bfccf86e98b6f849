//! The directories Stratus keeps its state in, readable by their owner
//! only: a controller's data dir and an agent's state dir are 0700, the
//! files Stratus writes there 0600 (the store and its `-wal`/`-shm`, the
//! key repositories, `clouds.yaml`, `openrc`, image data, the node's
//! credential). What an older version left readable is fixed at start.
//!
//! No process-wide umask: the container driver's trees (`images/`,
//! `instances/`, `runc/` of an agent) keep the modes their images carry,
//! and are left alone here.
//!
//! Also here: scrubbing credential blobs an older version stored in clear
//! from the store file once they are encrypted (the change log keeps
//! every document, and SQLite keeps freed bytes until they are reused).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Subdirectories of a controller's data dir that hold only what
/// Stratus writes: every file in them is made 0600, every dir 0700.
const CONTROLLER_TREES: &[&str] = &["fernet-keys", "credential-keys", "images"];
/// The same in an agent's state dir.
const AGENT_TREES: &[&str] = &["image-cache", "snapshots"];

/// Creates `dir` (and missing parents) with mode 0700, and makes it 0700
/// if it existed.
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    set_mode(dir, 0o700).with_context(|| format!("securing {}", dir.display()))
}

/// Prepares a controller's data dir before the store opens: the dir
/// 0700, the store file created 0600 (SQLite gives its `-wal` and `-shm`
/// the main file's mode), and everything Stratus wrote there before
/// made owner-only.
pub fn prepare_controller(dir: &Path, store: Option<&Path>) -> anyhow::Result<()> {
    private_dir(dir)?;
    if let Some(store) = store {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(store)
            .with_context(|| format!("creating {}", store.display()))?;
    }
    secure_files(dir);
    for t in CONTROLLER_TREES {
        secure_tree(&dir.join(t));
    }
    let agent = dir.join("agent");
    if agent.is_dir() {
        prepare_agent(&agent)?;
    }
    Ok(())
}

/// Prepares an agent's state dir: 0700, and its own files owner-only.
pub fn prepare_agent(dir: &Path) -> anyhow::Result<()> {
    private_dir(dir)?;
    secure_files(dir);
    for t in AGENT_TREES {
        secure_tree(&dir.join(t));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    let m = fs::symlink_metadata(path)?;
    if m.file_type().is_symlink() || m.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn warn(path: &Path, e: io::Error) {
    tracing::warn!(path = %path.display(), error = %e, "cannot make this readable by its owner only");
}

/// The regular files directly in `dir`: 0600.
fn secure_files(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file())
            && let Err(err) = set_mode(&e.path(), 0o600)
        {
            warn(&e.path(), err);
        }
    }
}

/// `dir` and its subdirectories 0700, the files in them 0600; symbolic
/// links are not followed.
fn secure_tree(dir: &Path) {
    let Ok(m) = fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    if let Err(e) = set_mode(dir, 0o700) {
        warn(dir, e);
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => secure_tree(&e.path()),
            Ok(t) if t.is_file() => {
                if let Err(err) = set_mode(&e.path(), 0o600) {
                    warn(&e.path(), err);
                }
            }
            _ => {}
        }
    }
}

/// Writes `text` to `path` atomically, readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Encrypts the credential blobs of the store (Keystone's
/// `credential_migrate`); when some were in clear, scrubs the clear text
/// from the store file too (again on the next start if that failed).
/// Says what it did.
pub fn migrate_credentials(
    store: &stratus_store::Store,
    keys: &stratus_api::identity::credentials::CredentialKeys,
) -> anyhow::Result<stratus_api::identity::credentials::Migrated> {
    use stratus_api::identity::credentials::{SCRUB_PENDING, migrate};
    let m = migrate(store, keys).map_err(|e| anyhow::anyhow!("encrypting credentials: {e}"))?;
    if m.plaintext > 0 {
        tracing::info!(
            count = m.plaintext,
            "encrypted credentials stored in clear by an older version"
        );
    }
    if store.meta_get(SCRUB_PENDING)?.as_deref() == Some("1") {
        // Only SQLite stores can hold clear text from older versions
        // (PostgreSQL stores are newer than credential encryption).
        if let Some(db) = store.path() {
            scrub_credential_history(db)?;
        }
        store.write(|tx| tx.meta_set(SCRUB_PENDING, "0"))?;
    }
    if m.resealed > 0 {
        tracing::info!(
            count = m.resealed,
            "re-encrypted credentials with the primary credential key"
        );
    }
    if !m.unreadable.is_empty() {
        tracing::error!(ids = ?m.unreadable, "credentials no key in the credential key repository opens");
    }
    Ok(m)
}

/// Removes clear-text credential blobs from what the store file keeps
/// besides the live rows: change-log entries of credentials written in
/// clear get the row's current (encrypted) document, or none once it is
/// gone; then the file is rebuilt (`VACUUM`, with `secure_delete`) so no
/// freed page or cell keeps the old bytes, and the WAL is truncated.
fn scrub_credential_history(db: &Path) -> anyhow::Result<()> {
    let conn =
        rusqlite::Connection::open(db).with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let ctx = || format!("scrubbing clear-text credentials from {}", db.display());
    conn.execute_batch(
        "PRAGMA secure_delete = ON;
         PRAGMA temp_store = MEMORY;
         UPDATE changes SET body = (
             SELECT r.body FROM resources r WHERE r.kind = 'credential' AND r.id = changes.id
         ) WHERE kind = 'credential' AND body LIKE '%\"blob\":%';
         VACUUM;",
    )
    .with_context(ctx)?;
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .with_context(ctx)?;
    if busy != 0 {
        tracing::warn!("the store's WAL could not be emptied now; SQLite overwrites it as it goes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn fixes_what_stratus_wrote_and_leaves_container_trees() {
        let d = std::env::temp_dir().join(format!("stratus-datadir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("fernet-keys")).unwrap();
        fs::create_dir_all(d.join("agent/images/x/rootfs")).unwrap();
        fs::create_dir_all(d.join("agent/image-cache")).unwrap();
        for f in [
            "clouds.yaml",
            "fernet-keys/0",
            "agent/image-cache/i.data",
            "agent/images/x/rootfs/hello",
        ] {
            fs::write(d.join(f), "x").unwrap();
            fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        prepare_controller(&d, Some(&d.join("stratus.db"))).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("stratus.db")), 0o600);
        assert_eq!(mode(&d.join("clouds.yaml")), 0o600);
        assert_eq!(mode(&d.join("fernet-keys")), 0o700);
        assert_eq!(mode(&d.join("fernet-keys/0")), 0o600);
        assert_eq!(mode(&d.join("agent")), 0o700);
        assert_eq!(mode(&d.join("agent/image-cache/i.data")), 0o600);
        assert_eq!(
            mode(&d.join("agent/images/x/rootfs/hello")),
            0o644,
            "an image's own files keep their modes"
        );
        let _ = fs::remove_dir_all(&d);
    }
}
